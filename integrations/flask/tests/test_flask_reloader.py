"""``flask run --debug`` for real: the reloader's file watcher loads the app too, but never serves it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.ports import reserved_port

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/<pid>/maps")

DEVELOPMENT_APP = """
import os

from flask import Flask
from inprocserve_flask import Inprocserve

app = Flask(__name__)
app.config["INPROCSERVE_REPOSITORY"] = os.environ["INPROCSERVE_TEST_REPOSITORY"]
Inprocserve(app)
Inprocserve.warm(app)  # docs/flask.md: the development server builds at start-up
"""


def _children(pid: int) -> list[int]:
    """The processes whose parent is ``pid``, from every process's ``/proc/<pid>/stat``: the kernel's own list
    (``/proc/<pid>/task/<pid>/children``) exists only where it was built with CONFIG_PROC_CHILDREN, which
    some kernels (minimal and micro-VM builds, sandboxes) are not."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # (it exited meanwhile)
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:  # (after the name, which may hold anything: state, ppid)
            children.append(int(entry.name))
    return sorted(children)


def _has_onnxruntime(pid: int) -> bool:
    return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def test_flask_run_debug_builds_the_server_only_in_the_process_that_serves(tmp_path: Path) -> None:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    (tmp_path / "devapp.py").write_text(DEVELOPMENT_APP)
    port = reserved_port()  # `flask run` takes a port number only
    env = {**os.environ, "INPROCSERVE_TEST_REPOSITORY": str(tmp_path / "models")}
    command = [sys.executable, "-m", "flask", "--app", "devapp", "run", "--debug", "--port", str(port)]
    with open(tmp_path / "flask.log", "wb") as log:
        watcher = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(port, watcher, tmp_path / "flask.log")
        [serving] = _children(watcher.pid)
        assert _has_onnxruntime(serving)  # warm built the server in the process that serves, before any request
        # The watcher loaded the app as well, but never serves: it builds nothing (it held every model, and
        # the server's threads, for as long as the development server ran).
        assert not _has_onnxruntime(watcher.pid)
    finally:
        _stop(watcher)


def test_flask_run_without_the_reloader_builds_at_start_up(tmp_path: Path) -> None:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    (tmp_path / "devapp.py").write_text(DEVELOPMENT_APP)
    port = reserved_port()  # `flask run` takes a port number only
    env = {**os.environ, "INPROCSERVE_TEST_REPOSITORY": str(tmp_path / "models")}
    command = [sys.executable, "-m", "flask", "--app", "devapp", "run", "--debug", "--no-reload", "--port", str(port)]
    with open(tmp_path / "flask.log", "wb") as log:
        server = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_until_up(port, server, tmp_path / "flask.log")
        assert _children(server.pid) == [] and _has_onnxruntime(server.pid)  # one process: it serves, it builds
    finally:
        _stop(server)


def _wait_until_up(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:  # (health answers without building anything)
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/inprocserve/health", timeout=5):
                return
        except OSError:  # (refused, reset, or timed out: the watcher listens before its child has the app)
            pass
        if time.monotonic() > deadline or process.poll() is not None:
            raise AssertionError(log.read_text())
        time.sleep(0.1)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stop the serving child first (the reloader's watcher then exits with its status), then the process."""
    if process.poll() is None:
        for child in _children(process.pid):
            os.kill(child, signal.SIGTERM)
        process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
