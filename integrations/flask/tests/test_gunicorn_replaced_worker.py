"""A real gunicorn (no --preload, EAGER) whose worker is replaced while the repository is mid-change.

Without ``--preload`` every worker runs the plug-in's start-up check when it loads the app. A worker
replaced while a ``config.toml`` was saved with a typo failed that check, and gunicorn halted the whole
server ("Worker failed to boot"): every later connection was refused. A replaced worker now starts,
serves what loads, and serves the model once the file is valid again; a first start still fails.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from inprocserve import web
from inprocserve.testing import build_scale_model, save_model
from tests.ports import reserved_port
from tests.processes import stop_process

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

ROOT = Path(__file__).resolve().parents[3]
APP = """
import os
from flask import Flask
from inprocserve_flask import Inprocserve, predict

app = Flask(__name__)
app.config["INPROCSERVE_REPOSITORY"] = os.environ["INPROCSERVE_TEST_REPOSITORY"]
app.config["INPROCSERVE_EAGER"] = os.environ["INPROCSERVE_TEST_EAGER"] == "1"
app.config["INPROCSERVE_POLL_INTERVAL_S"] = float(os.environ["INPROCSERVE_TEST_POLL"]) or None
Inprocserve(app)

@app.post("/score")
def score():
    return {"version": predict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]}).version, "pid": os.getpid()}
"""
GOOD = "[batching]\nmax_batch_size = 8\n"
TYPO = "[batching\nmax_batch_size = 8\n"  # the editor saved it half-way through a change


def _call(base: str, path: str) -> tuple[int, Any]:
    request = urllib.request.Request(base + path, data=b"" if path == "/score" else None)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _until(check: Any, what: str, log: Path, seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:  # (not listening yet)
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {seconds}s:\n{log.read_text()}")


def _children(pid: int) -> set[int]:
    """The pids of the processes ``pid`` started that are running (gunicorn's master: its workers)."""
    return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def _gunicorn(
    tmp_path: Path, repository: Path, worker_class: str, *, hook: bool, eager: bool, poll: bool = True
) -> tuple[list[str], dict[str, str], str]:
    """The command, environment and base URL of a 1-worker gunicorn without --preload serving the app."""
    (tmp_path / "eager_app.py").write_text(APP)
    conf = tmp_path / "gunicorn.conf.py"
    conf.write_text("from inprocserve.gunicorn import post_worker_init  # noqa: F401\n" if hook else "")
    plugin = ROOT / "integrations" / "flask" / "src"
    env = {
        **os.environ,
        "INPROCSERVE_TEST_REPOSITORY": str(repository),
        "INPROCSERVE_TEST_EAGER": "1" if eager else "0",
        "INPROCSERVE_TEST_POLL": "0.2" if poll else "0",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(plugin)]),
    }
    port = reserved_port()  # (a number, not a socket: some tests start gunicorn twice on it)
    command = [sys.executable, "-m", "gunicorn", "--config", str(conf), "--workers", "1", "--bind", f"127.0.0.1:{port}"]
    command += ["--worker-class", worker_class, "--chdir", str(tmp_path), "eager_app:app"]
    return command, env, f"http://127.0.0.1:{port}"


@pytest.mark.parametrize("setup", ["sync, hook file", "gthread, no hook file", "gthread, hook file, no polling"])
def test_a_worker_replaced_while_a_config_toml_is_broken_does_not_stop_gunicorn(tmp_path: Path, setup: str) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config_toml = repository / "scale" / "config.toml"
    hook, poll = "no hook file" not in setup, "no polling" not in setup
    command, env, base = _gunicorn(tmp_path, repository, setup.split(",")[0], hook=hook, eager=True, poll=poll)
    log = tmp_path / "gunicorn.log"

    # a first start on a broken repository still fails, fast and loudly
    config_toml.write_text(TYPO)
    with log.open("w") as out:
        first = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=60)
    assert first.returncode == 3 and "not valid TOML" in log.read_text(), log.read_text()

    config_toml.write_text(GOOD)
    with log.open("w") as out:
        master = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        status, body = _until(lambda: _call(base, "/score"), "the first worker serves", log)
        assert status == 200 and body["version"] == 1, body
        first_worker = body["pid"]
        config_toml.write_text(TYPO)
        os.kill(first_worker, signal.SIGKILL)  # a crash: gunicorn replaces the worker, which loads the app now

        def replaced_and_not_ready() -> Any:
            status, body = _call(base, "/-/inprocserve/ready")
            return status == 503 and "not valid TOML" in str(body) and (status, body)

        _until(replaced_and_not_ready, "the replacement worker answers /ready 503 naming the broken file", log)
        assert master.poll() is None, log.read_text()
        assert _call(base, "/score")[0] == 404  # the model is not served meanwhile (as in lazy mode)
        # fixed: the next refresh (poll_interval_s) serves the model; without polling, the worker's own retries
        # (1 s, then twice as long each time) do: it served the model nothing until it was replaced again
        config_toml.write_text(GOOD)
        status, body = _until(
            lambda: (r := _call(base, "/score"))[0] == 200 and r, "the model is served again", log, 40
        )
        assert body["pid"] != first_worker and master.poll() is None, log.read_text()
        assert "was started after the server's first 1, and the repository check failed" in log.read_text()
    finally:
        stop_process(master)


def test_a_worker_replaced_while_the_repository_folder_is_gone_does_not_stop_gunicorn(tmp_path: Path) -> None:
    """A release swapped in by two renames (or a network mount briefly gone): the folder is missing for a
    moment. Lazy mode too: the plug-in refuses a repository that is not a folder at init_app."""
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    aside = tmp_path / "models-previous"
    command, env, base = _gunicorn(tmp_path, repository, "gthread", hook=False, eager=False)
    log = tmp_path / "gunicorn.log"
    repository.rename(aside)
    with log.open("w") as out:  # a first start without the folder still fails
        first = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, env=env, timeout=60)
    assert first.returncode == 3 and "is not a folder" in log.read_text(), log.read_text()
    aside.rename(repository)
    with log.open("w") as out:
        master = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        status, body = _until(lambda: _call(base, "/score"), "the first worker serves", log)
        assert status == 200, body
        repository.rename(aside)
        os.kill(body["pid"], signal.SIGKILL)
        _until(lambda: "is not a folder" in log.read_text(), "the replacement worker says what it found", log)
        assert _call(base, "/score")[0] == 500 and master.poll() is None, log.read_text()  # no server meanwhile
        # not ready, said as a 503 that names no file (the probe answered a 500 and logged a traceback each time)
        status, text = _call(base, "/-/inprocserve/ready")
        assert status == 503 and json.loads(text)["error"] == web.NO_SERVER and str(tmp_path) not in text, text
        status, text = _call(base, "/-/inprocserve/models")
        assert (status, json.loads(text)) == (503, {"error": web.NO_SERVER}), text
        aside.rename(repository)
        _until(lambda: _call(base, "/score")[0] == 200, "the replacement worker builds its server", log)
        assert master.poll() is None and log.read_text().count("repository check failed") == 1, log.read_text()
    finally:
        stop_process(master)


@pytest.mark.parametrize("mode", ["EAGER, --preload", "lazy, no --preload"])
def test_a_worker_replaced_without_a_check_while_a_config_toml_is_broken_serves_the_model_once_fixed(
    tmp_path: Path, mode: str
) -> None:
    """With --preload the check runs once, in the master, and in lazy mode never: a worker started later (a
    crash, --max-requests) builds from whatever is on disk. Built while a config.toml had a typo, without
    polling, it answered 404 for that model until it was replaced in turn; it now retries until it loads."""
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config_toml = repository / "scale" / "config.toml"
    config_toml.write_text(GOOD)
    eager = "EAGER" in mode
    command, env, base = _gunicorn(tmp_path, repository, "gthread", hook=False, eager=eager, poll=False)
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        extra = ["--preload"] if eager else []
        master = subprocess.Popen([*command, *extra], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _, body = _until(lambda: (r := _call(base, "/score"))[0] == 200 and r, "the first worker serves", log)
        config_toml.write_text(TYPO)
        os.kill(body["pid"], signal.SIGKILL)
        _until(lambda: (r := _call(base, "/-/inprocserve/ready"))[0] == 503 and "TOML" in str(r[1]), "503", log)
        config_toml.write_text(GOOD)
        _until(lambda: _call(base, "/score")[0] == 200, "the model is served again", log, 40)
        assert master.poll() is None, log.read_text()
    finally:
        stop_process(master)


STOPPED_CHECK_CONF = """
import signal

class StartUpTimeLimit(Exception):
    pass

def _start_up_time_limit(signum, frame):
    raise StartUpTimeLimit("the worker took too long to start")

def post_fork(server, worker):
    if worker.age > 1:  # a replacement worker: its start-up time limit comes as its check reads a model
        signal.signal(signal.SIGALRM, _start_up_time_limit)
"""
STOPPED_CHECK_APP = """
import signal
import onnx

_read = onnx.load
_stopped = []

def _read_until_stopped(*args, **kwargs):
    if callable(signal.getsignal(signal.SIGALRM)) and not _stopped:
        _stopped.append(True)
        signal.raise_signal(signal.SIGALRM)
    return _read(*args, **kwargs)

onnx.load = _read_until_stopped
"""


def test_a_signal_handlers_exception_in_a_replaced_workers_check_does_not_stop_gunicorn(tmp_path: Path) -> None:
    """The check raised a signal handler's exception as it is (not as a failed check): the replaced worker
    failed to load its app, and gunicorn halted the whole server ("Worker failed to boot")."""
    pytest.importorskip("onnx")
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    command, env, base = _gunicorn(tmp_path, repository, "gthread", hook=False, eager=True, poll=False)
    (tmp_path / "eager_app.py").write_text(STOPPED_CHECK_APP + APP)
    (tmp_path / "gunicorn.conf.py").write_text(STOPPED_CHECK_CONF)
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        master = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        status, body = _until(lambda: _call(base, "/score"), "the first worker serves", log)
        assert status == 200, body
        os.kill(body["pid"], signal.SIGKILL)  # a crash: gunicorn replaces the worker, which loads the app now
        _until(lambda: "StartUpTimeLimit" in log.read_text() or master.poll() is not None, "the check stopped", log)
        status, replaced = _until(
            lambda: master.poll() is None and (r := _call(base, "/score"))[0] == 200 and r, "the new worker serves", log
        )
        assert replaced["pid"] != body["pid"] and master.poll() is None, log.read_text()
        assert "a signal handler's exception stopped the check" in log.read_text(), log.read_text()
    finally:
        stop_process(master)


@pytest.mark.parametrize("setup", ["no hook file", "hook file"])
def test_a_hup_reload_without_preload_starts_new_workers_that_serve(tmp_path: Path, setup: str) -> None:
    """``kill -HUP`` of a gunicorn without --preload: each new worker imports the package inside the master's
    reload, and the import's check for "a worker started after the first ones" called a function defined
    further down the module (``NameError``): the worker failed to boot and gunicorn shut down, master and
    all ("Reason: Worker failed to boot"), on the recipe the deployment page gives."""
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    command, env, base = _gunicorn(tmp_path, repository, "gthread", hook=setup == "hook file", eager=False)
    log = tmp_path / "gunicorn.log"
    with log.open("w") as out:
        master = subprocess.Popen([*command, "--workers", "2"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        _until(lambda: (r := _call(base, "/score"))[0] == 200 and r, "a worker serves", log)
        # Both workers' pids, not the one that answered: the other, old, answered after the HUP as "new" while
        # the new workers failed to boot, and the test passed on the NameError (one run in two here).
        before = _until(lambda: len(pids := _children(master.pid)) == 2 and pids, "two workers", log)
        os.kill(master.pid, signal.SIGHUP)

        def a_new_worker_serves() -> Any:
            status, body = _call(base, "/score")
            return status == 200 and body["pid"] not in before and body

        _until(a_new_worker_serves, "a worker started by the reload serves", log, 40)
        assert master.poll() is None, log.read_text()
        assert "Worker failed to boot" not in log.read_text() and "NameError" not in log.read_text(), log.read_text()
    finally:
        stop_process(master)
