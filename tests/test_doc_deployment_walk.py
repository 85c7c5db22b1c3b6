"""docs/deployment.md's commands as a platform engineer runs them: each is taken from the page and run for
real (a real uWSGI over loopback), so a command the page gives that fails where it says it works fails here."""

from __future__ import annotations

import importlib.metadata
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

from .ports import reserved_port
from .processes import stop_process
from .test_doc_snippets_docsa import blocks, section

HERE = Path(__file__).parent
PYUWSGI = shutil.which("uwsgi", path=str(Path(sys.executable).parent))

APP = """
import os

import numpy as np
from flask import Flask
from inprocserve_flask import Inprocserve, predict

app = Flask(__name__)
app.config.update(INPROCSERVE_REPOSITORY=os.environ["MODELS"], INPROCSERVE_EAGER=True)
Inprocserve(app)


@app.post("/score")
def score():
    return {"pid": os.getpid(), "version": predict("m", np.ones((1, 4), np.float32)).version}
"""


def _pyuwsgi_command() -> str:
    """The uWSGI section's command for pyuwsgi: the one after a comment that names pyuwsgi, else its only one."""
    (block,) = blocks("docs/deployment.md", "## uWSGI", "bash")
    lines = [line for line in block.splitlines() if line.strip()]
    commands = [line for line in lines if line.startswith("uwsgi ")]
    for before, line in itertools.pairwise(lines):
        if before.startswith("#") and "pyuwsgi" in before and line.startswith("uwsgi "):
            return line
    assert len(commands) == 1, f"the uWSGI section's commands, none marked for pyuwsgi: {commands}"
    return commands[0]


def _score(port: int) -> int | None:
    """The pid of the worker that answered, or None when none did."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/score", data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return int(json.loads(answer.read())["pid"])
    except (OSError, ValueError, KeyError):  # (URLError is an OSError)
        return None


def _served_by(port: int, process: subprocess.Popen[bytes], log: Path, timeout_s: float = 60) -> set[int]:
    """The workers that answer, once two different ones did (uWSGI's master is still running)."""
    seen: set[int] = set()
    deadline = time.monotonic() + timeout_s
    while len(seen) < 2:
        assert process.poll() is None, f"uWSGI exited with status {process.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, f"no two workers answered within {timeout_s} s:\n{log.read_text()[-3000:]}"
        pid = _score(port)
        if pid is None:
            time.sleep(0.1)
        else:
            seen.add(pid)
    return seen


@pytest.mark.skipif(PYUWSGI is None, reason="pyuwsgi is not installed next to this Python (it is in the dev extra)")
def test_the_uwsgi_command_for_pyuwsgi_survives_a_reload(tmp_path: Path) -> None:
    """SIGHUP to uWSGI's master (a full reload) executes uWSGI again. pyuwsgi ran the interpreter's real path, the
    base Python of its virtual environment, which has no pyuwsgi: uWSGI exited with status 1 ("No module named
    'pyuwsgi'") and nothing served any more. The page's command for pyuwsgi serves on, with new workers."""
    save_model(build_mlp_model((4, 8, 2)), tmp_path / "models", "m")
    (tmp_path / "reload_app.py").write_text(APP)
    port = reserved_port()
    command = _pyuwsgi_command().replace(":8000", f"127.0.0.1:{port}").replace("app:app", "reload_app:app")
    command = command.replace("--processes 4", "--processes 2").replace("--threads 16", "--threads 4")
    command = command.replace("uwsgi ", f"exec {shlex.quote(str(PYUWSGI))} ", 1)
    # The packages under test from this checkout (the reload's Python finds the rest in its environment, or
    # nothing: what the page's command must mend); VIRTUAL_ENV as an activated environment sets it.
    paths = [str(Path(inprocserve.__file__).resolve().parents[1]), str(HERE.parent / "integrations/flask/src")]
    environ = dict(
        os.environ,
        MODELS=str(tmp_path / "models"),
        VIRTUAL_ENV=sys.prefix,
        PYTHONPATH=os.pathsep.join([str(tmp_path), *paths]),
    )
    log = tmp_path / "uwsgi.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            ["bash", "-c", command], cwd=tmp_path, env=environ, stdout=output, stderr=subprocess.STDOUT
        )
    try:
        before = _served_by(port, process, log)
        process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while b"binary reloading" not in log.read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.05)
        after = _served_by(port, process, log)
        assert not after & before, (before, after)  # (new workers: the reload happened)
    finally:
        stop_process(process)


def test_every_worker_class_of_the_table_is_one_gunicorn_has_or_says_it_has_none() -> None:
    """The worker-class table names classes a reader passes to ``-k``: each must be one the installed gunicorn
    has, or its row must say that gunicorn has none. gunicorn 27 dropped ``eventlet``, which the table listed
    as one not tested (``-k eventlet``: "Error: class uri 'eventlet' invalid or not found", status 1)."""
    workers = pytest.importorskip("gunicorn.workers")
    version = importlib.metadata.version("gunicorn")
    table = section("docs/deployment.md", "## gunicorn's worker classes")
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert rows, "the worker-class table is gone"
    for row in rows:
        first_cell = row.split("|")[1]
        for name in re.findall(r"`(?:-k )?(\w+)", first_cell):
            if name in workers.SUPPORTED_WORKERS:
                continue
            assert "has no such worker" in row, (
                f"the table names -k {name}, which gunicorn {version} does not have, and its row does not say so: {row}"
            )
