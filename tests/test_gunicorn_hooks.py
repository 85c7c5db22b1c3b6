"""``inprocserve.gunicorn``'s hooks under a real gunicorn, with the configuration the docs give and an app that
configures no logging of its own (gunicorn's defaults: its error log on stderr)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from inprocserve.testing import build_scale_model, save_model

from .ports import listening_socket
from .processes import stop_process

APP = """
import os

import inprocserve

def build():
    server = inprocserve.Server()
    server.load("fraud", path=os.environ["FRAUD_MODEL"])  # a broken file: ModelLoadError in the worker

inprocserve.build_after_fork(build, background=False)

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"up"]
"""
CONF = "from inprocserve.gunicorn import post_worker_init  # noqa: F401\n"


@pytest.mark.parametrize("model", ["broken", "good"])
def test_the_warm_up_says_in_gunicorns_log_how_it_went(tmp_path: Path, model: str) -> None:
    # The hook's lines went to the "inprocserve.gunicorn" logger, which an app that configures no logging
    # never shows: a worker whose model failed to load said nothing, while "keeps to core(s)" reached the log.
    pytest.importorskip("gunicorn")
    fraud = save_model(build_scale_model(2.0), tmp_path / "models", "fraud")
    if model == "broken":
        fraud.write_bytes(b"not an onnx model")
    (tmp_path / "warm_app.py").write_text(APP)
    (tmp_path / "gunicorn.conf.py").write_text(CONF)
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "FRAUD_MODEL": str(fraud), "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    listener = listening_socket()
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", "--config", str(tmp_path / "gunicorn.conf.py"), "--workers", "1"]
    command += ["--bind", f"fd://{listener.fileno()}", "--chdir", str(tmp_path), "warm_app:app"]
    log = tmp_path / "gunicorn.log"
    with listener, log.open("w") as out:
        master = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=[listener.fileno()])
    try:
        deadline = time.monotonic() + 60  # (bounded: the worker's boot and its warm-up)
        while True:  # the worker answers once the hook has returned
            assert master.poll() is None, f"gunicorn stopped (exit code {master.returncode}):\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    assert response.read() == b"up"
                break
            except OSError:  # (not listening yet)
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
    finally:
        stop_process(master)
    said = log.read_text()
    if model == "broken":
        assert "inprocserve warm-up failed" in said and "fraud" in said, said
    else:
        assert "inprocserve servers warm in" in said, said
