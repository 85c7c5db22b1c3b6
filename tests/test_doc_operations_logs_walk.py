"""docs/operations.md, "Under gunicorn", **Logs.**: the library's warnings reach gunicorn's error log only once
gunicorn.conf.py gives the ``inprocserve`` logger tree a handler, and the page's ``logger_class`` does, each line
once, where ``--error-logfile`` sends gunicorn's own lines and at its ``--log-level``. Run as the on-call
engineer would: a Flask app under gunicorn with two workers, whose model's ``config.toml`` holds a typo
(``stabel``) that every worker warns of when it loads the model, and whose model folder holds a stray file that
the Flask plug-in's check in the master warns of."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .ports import listening_socket
from .processes import stop_process
from .test_doc_snippets_docsa import blocks

HERE = Path(__file__).parent
WORKERS = 2
TYPO_WARNING = "[rollout] stabel (stable?)"
MASTER_WARNING = "repository check before the workers start: "
GUNICORN_LINE = r"\[[^]]+\] \[(\d+)\] \[WARNING\] "

APP = """
import os

from flask import Flask
from inprocserve_flask import Inprocserve

app = Flask(__name__)
app.config.update(INPROCSERVE_REPOSITORY=os.environ["MODELS"], INPROCSERVE_EAGER=True)
Inprocserve(app)
"""

CONF = """
from inprocserve.gunicorn import post_worker_init  # noqa: F401

worker_class = "gthread"
"""


def logconfig() -> str:
    """The ``logger_class`` of the page's **Logs.** paragraph."""
    (block,) = [code for code in blocks("docs/operations.md", "## Under gunicorn (and other pre-forking servers)")
                if "logger_class" in code]  # fmt: skip
    return block


EXAMPLE_CONF = HERE.parent / "examples" / "flask_fraud" / "gunicorn.conf.py"


def gunicorn_logs(
    tmp_path: Path, conf: str, *options: str, warm: Callable[[Path, Path], bool] | None = None
) -> tuple[str, str]:
    """gunicorn's stderr and stdout once both workers are warm (each logged its warm-up line, or ``warm``
    says so, given the paths of both), run with ``options`` besides."""
    models = tmp_path / "models"
    save_model(build_scale_model(1.0), models, "fraud", 1)
    (models / "fraud" / "config.toml").write_text("[rollout]\nstabel = 1\n")
    (models / "fraud" / "notes.txt").write_text("a stray file\n")
    (tmp_path / "logs_app.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(conf)
    paths = [str(Path(inprocserve.__file__).resolve().parents[1]), str(HERE.parent / "integrations/flask/src")]
    environ = {**os.environ, "MODELS": str(models), "PYTHONPATH": os.pathsep.join([str(tmp_path), *paths])}
    listener = listening_socket()
    port = listener.getsockname()[1]
    stderr, stdout = tmp_path / "stderr.log", tmp_path / "stdout.log"
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--preload", "-w", str(WORKERS)]
    command += ["--threads", "2", "-b", f"fd://{listener.fileno()}", *options, "logs_app:app"]
    with listener, open(stderr, "wb") as errors, open(stdout, "wb") as output:
        master = subprocess.Popen(
            command, cwd=tmp_path, env=environ, pass_fds=[listener.fileno()], stdout=output, stderr=errors
        )
    try:
        deadline = time.monotonic() + 60
        while not (warm or _warm)(stderr, stdout):
            assert master.poll() is None, stderr.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the workers did not get warm:\n{stderr.read_text()[-3000:]}"
            time.sleep(0.1)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/inprocserve/ready", timeout=10) as answer:
            assert answer.status == 200
    finally:
        stop_process(master)
    return stderr.read_text(), stdout.read_text()


def _warm(stderr: Path, stdout: Path) -> bool:
    return stderr.read_text().count("inprocserve servers warm in") >= WORKERS


def test_without_a_handler_the_workers_warnings_reach_no_log(tmp_path: Path) -> None:
    stderr, stdout = gunicorn_logs(tmp_path, CONF)
    assert TYPO_WARNING not in stderr + stdout
    assert re.search(r"worker \d+: inprocserve servers warm in \d+\.\d\ds", stderr)


def test_the_pages_logconfig_dict_puts_every_warning_in_the_error_log_once(tmp_path: Path) -> None:
    stderr, stdout = gunicorn_logs(tmp_path, CONF + logconfig())
    warnings = [line for line in stderr.splitlines() if TYPO_WARNING in line]
    pids = [re.match(GUNICORN_LINE, line) for line in warnings]
    assert all(pids), warnings  # (gunicorn's format, as the page shows it)
    assert len({match.group(1) for match in pids if match}) == WORKERS, warnings
    assert len(warnings) == WORKERS, warnings  # (once each: not again by the root handler)
    (master,) = [line for line in stderr.splitlines() if MASTER_WARNING in line]
    assert re.match(GUNICORN_LINE, master), master
    assert TYPO_WARNING not in stdout
    assert MASTER_WARNING not in stdout


@pytest.mark.parametrize("source", ["page", "example"])
def test_the_library_logs_where_error_logfile_says_at_log_level(tmp_path: Path, source: str) -> None:
    """``--error-logfile FILE --log-level warning`` (the demo runs at ``warning``): each worker's warning is in
    FILE, nothing is on stderr or stdout, and the models' INFO lines are not logged. The ``error_console``
    handler a ``logconfig_dict`` names wrote to stderr whatever ``--error-logfile`` said, at a fixed INFO."""
    conf = CONF + logconfig() if source == "page" else EXAMPLE_CONF.read_text()
    error_log = tmp_path / "error.log"

    def warm(stderr: Path, stdout: Path) -> bool:  # (the warm-up line is INFO: each worker's warning instead)
        # (or on stderr, where the error_console handler wrote them: then the assertions below say so at once)
        logged = error_log.read_text() if error_log.exists() else ""
        return max(logged.count(TYPO_WARNING), stderr.read_text().count(TYPO_WARNING)) >= WORKERS

    stderr, stdout = gunicorn_logs(
        tmp_path, conf, "--error-logfile", str(error_log), "--log-level", "warning", warm=warm
    )
    logged = error_log.read_text()
    warnings = [line for line in logged.splitlines() if TYPO_WARNING in line]
    assert len(warnings) == WORKERS and all(re.match(GUNICORN_LINE, line) for line in warnings), logged
    (master,) = [line for line in logged.splitlines() if MASTER_WARNING in line]
    assert re.match(GUNICORN_LINE, master), master
    assert TYPO_WARNING not in stderr + stdout and MASTER_WARNING not in stderr + stdout, stderr + stdout
    assert "[INFO]" not in logged and " ready in " not in logged + stderr + stdout, logged
