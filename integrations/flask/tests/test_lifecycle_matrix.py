"""Every signal docs/deployment.md names for gunicorn, sent to a real gunicorn over loopback, in the setups that
take different paths through the library.

Where the package is first imported decides which code a new worker runs: without ``--preload`` and without a
hook file importing ``inprocserve.gunicorn``, each worker imports it itself, after the fork, inside whatever
the master was doing (a ``HUP`` reload, a ``TTIN``, a replacement after a crash, a binary upgrade's new
master); with ``--preload`` and the hook file the master imported it, and each fork runs its fork hooks and
the EAGER build instead. A ``kill -HUP`` of the first setup once shut the whole server down (an import-time
check called a function defined further down the module: "Worker failed to boot"), although the second setup
served through every signal. After each event of each setup: a worker of the current
generation answers with the model's own answer and version, the master lives, and the log holds no
traceback. The other cells (``sync`` and ``gevent`` workers, uvicorn's worker class, ``--preload`` or the
hook file alone, EAGER without them) were run by hand and passed the same checks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.lifecycle import WORKERS, Gunicorn, alive, children, die_with_pytest, until
from tests.ports import reserved_port
from tests.processes import keep_gunicorns_apart

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

ROOT = Path(__file__).resolve().parents[3]
# (the binary upgrade executes the master again as it was started: through gunicorn's script, as the deployment
# page says; started as ``python -m gunicorn`` the new master cannot import Flask)
GUNICORN = Path(sys.executable).with_name("gunicorn")
APP = """
import os
from flask import Flask
from inprocserve_flask import Inprocserve, predict

app = Flask(__name__)
app.config["INPROCSERVE_REPOSITORY"] = os.environ["INPROCSERVE_TEST_REPOSITORY"]
app.config["INPROCSERVE_EAGER"] = os.environ["INPROCSERVE_TEST_EAGER"] == "1"
Inprocserve(app)

@app.post("/score")
def score():
    result = predict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]})
    return {"y": result["y"].tolist(), "version": result.version, "pid": os.getpid()}
"""
HOOK_FILE = "from inprocserve.gunicorn import post_fork, post_worker_init, pre_fork  # noqa: F401\n"


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def _start(*options: str, hook: bool, eager: bool) -> Gunicorn:
        repository = tmp_path / "models"
        save_model(build_scale_model(2.0), repository, "scale", 1)
        (tmp_path / "matrix_app.py").write_text(APP)
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text(HOOK_FILE if hook else "")
        env = {
            **os.environ,
            "INPROCSERVE_TEST_REPOSITORY": str(repository),
            "INPROCSERVE_TEST_EAGER": "1" if eager else "0",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(ROOT / "integrations" / "flask" / "src")]),
        }
        keep_gunicorns_apart(env)
        port = reserved_port()
        command = [str(GUNICORN), "--config", str(conf), "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}"]
        command += ["--chdir", str(tmp_path), "--graceful-timeout", "10", *options, "matrix_app:app"]
        log = tmp_path / "gunicorn.log"
        with log.open("wb") as out:  # (a session of its own: whatever is left at the end is stopped as one group)
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_pytest,
            )
        server = Gunicorn(process, port, log)
        started.append(server)
        until(server.answer, "the first workers serve", log)
        server.check("start")
        return server

    yield _start
    for server in started:
        for master in {server.process.pid, server.master}:
            if alive(master):
                os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in (server.process.pid, server.master)) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.killpg(server.process.pid, signal.SIGKILL)  # (anything left: a worker the stop missed)
        except OSError:
            pass
        server.process.wait(timeout=30)


SETUPS = {
    # each worker imports the package itself, inside the master's reload, TTIN, replacement, or the new master's
    "lazy import: gthread, no --preload, no hook file": ("gthread", (), False, False),
    # the master imported it: every fork runs the library's fork hooks, the pre_fork/post_fork core choice, and
    # the EAGER build in post_worker_init; the binary upgrade forks a child of it that executes gunicorn again
    "EAGER: gthread, --preload, the hook file": ("gthread", ("--preload",), True, True),
    # each worker runs EAGER's start-up check as it loads the app, which tells a worker started later apart
    "EAGER: sync, no --preload, no hook file": ("sync", (), False, True),
}


@pytest.mark.parametrize("setup", SETUPS)
def test_every_signal_of_the_deployment_page_leaves_gunicorn_serving(
    start: Callable[..., Gunicorn], setup: str
) -> None:
    worker_class, options, hook, eager = SETUPS[setup]
    server = start("--worker-class", worker_class, *options, hook=hook, eager=eager)
    first = server.settled()

    os.kill(server.master, signal.SIGHUP)  # a reload: new workers, then the old ones stop
    until(
        lambda: server.answered_by_a_worker_of(lambda: server.workers() - first), "a reloaded worker serves", server.log
    )
    reloaded = until(lambda: (pids := server.settled()) and not pids & first and pids, "only new workers", server.log)
    server.check("HUP")

    os.kill(server.master, signal.SIGTTIN)  # one more worker
    added = until(
        lambda: len(pids := server.workers()) == WORKERS + 1 and pids - reloaded, "a worker added", server.log
    )
    until(lambda: server.answered_by_a_worker_of(lambda: added), "the added worker serves", server.log)
    server.check("TTIN")
    os.kill(server.master, signal.SIGTTOU)  # and one less (the oldest)
    server.settled()
    until(server.answer, "the workers left serve", server.log)
    server.check("TTOU")

    crashed = until(server.answer, "a worker serves", server.log)["pid"]
    os.kill(crashed, signal.SIGKILL)  # a crash (or the OOM killer): gunicorn starts a replacement
    until(lambda: crashed not in (pids := server.settled()) and pids, "a replacement worker", server.log)
    until(lambda: server.answered_by_a_worker_of(lambda: server.workers() - {crashed}), "it serves", server.log)
    server.check("a worker SIGKILLed")
    # (its death is logged at ERROR by gunicorn: "Worker (pid:N) was sent SIGKILL! Perhaps out of memory?")

    old = server.master
    os.kill(old, signal.SIGUSR2)  # a binary upgrade: a new master, executed anew, with workers of its own

    def new_master_with_workers() -> int | None:
        return next((pid for pid in children(old) if len(children(pid)) == WORKERS), None)

    new = until(new_master_with_workers, "a new master with its workers", server.log)
    until(lambda: server.answered_by_a_worker_of(lambda: children(new)), "the new master's workers serve", server.log)
    old_workers = children(old) - {new}
    os.kill(old, signal.SIGTERM)  # the deployment page's next step, once the new workers are ready
    server.process.wait(timeout=30)
    server.master = new
    # (connections the old workers had taken are answered by them: every request after they are gone is the new's)
    until(lambda: not any(alive(pid) for pid in old_workers), "the old workers stopped", server.log)
    for _ in range(10):
        body = server.answer()
        assert body is not None and body["pid"] in children(new), (body, server.log.read_text(errors="replace"))
    server.check("USR2, then TERM of the old master")

    upgraded = server.settled()
    os.kill(new, signal.SIGHUP)  # the new master reloads in turn
    until(lambda: (pids := server.settled()) and not pids & upgraded and pids, "the new master reloaded", server.log)
    until(server.answer, "its reloaded workers serve", server.log)
    server.check("HUP of the new master")


def test_max_requests_recycling_of_workers_that_import_the_package_themselves(start: Callable[..., Gunicorn]) -> None:
    """``--max-requests`` without ``--preload`` or a hook file: each recycled worker imports the package as it
    loads the app, started by the master's loop after the first workers (age above ``--workers``)."""
    server = start("--worker-class", "sync", "--max-requests", "20", hook=False, eager=False)
    seen: set[int] = set()
    for _ in range(120):
        body = until(server.answer, "every request answered", server.log, 30)
        seen.add(body["pid"])
    assert len(seen) > WORKERS + 2, seen  # (recycled: 120 requests at 20 a worker)
    server.check("--max-requests recycling")
