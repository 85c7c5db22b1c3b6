"""A real ``gunicorn -k gevent --preload`` on 127.0.0.1, its workers warmed by the documented hook.

The master imports inprocserve (the ``--preload``'ed app, and ``gunicorn.conf.py``'s
``from inprocserve.gunicorn import post_worker_init``) and each worker monkey-patches itself after the fork:
the recipe of ``examples/flask_fraud`` with gunicorn's gevent worker (docs/deployment.md, "gunicorn's gevent
worker").
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.ports import listening_socket

HERE = Path(__file__).parent


def _call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def test_gevent_workers_of_a_preloaded_app_answer_concurrent_requests(tmp_path: Path) -> None:
    """2 gevent workers, ``--preload``, eager, the ``post_worker_init`` hook: 40 concurrent requests each get
    their own answer, and no worker times out. (Before, every worker hung on its first requests, until
    gunicorn's ``--timeout`` killed it, and the next one hung the same way.)"""
    pytest.importorskip("gevent")
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    listener = listening_socket()  # handed to gunicorn: no other process can take its port first
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    env = {
        **os.environ,
        "INPROCSERVE_TEST_REPOSITORY": str(repository),
        "INPROCSERVE_TEST_MASTER_REPORT": str(tmp_path / "master.jsonl"),
        "INPROCSERVE_TEST_CONTROL_INTERVAL_S": "0.5",
        "INPROCSERVE_TEST_EAGER": "1",
        "INPROCSERVE_TEST_HOOK": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", ""), *sys.path]),
    }
    command = [
        sys.executable, "-m", "gunicorn", "--config", str(HERE / "gunicorn_fleet_conf.py"),
        "--preload", "--worker-class", "gevent", "--workers", "2", "--timeout", "10", "--graceful-timeout", "10",
        "--bind", f"fd://{listener.fileno()}", "--log-level", "info", "gunicorn_fleet_app:app",
    ]  # fmt: skip
    log_path = tmp_path / "gunicorn.log"
    with open(log_path, "wb") as log:
        with listener:
            master = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=HERE, pass_fds=[listener.fileno()]
            )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if _call(f"{base}/-/inprocserve/ready")[0] == 200:
                        break
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
                assert master.poll() is None and time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.1)

            def score(i: int) -> tuple[int, Any]:
                return _call(f"{base}/score", {"rows": [[float(i)] * 4]})

            with ThreadPoolExecutor(40) as pool:
                answers = list(pool.map(score, range(40)))
            assert [status for status, _ in answers] == [200] * 40, answers
            assert [answer["y"] for _, answer in answers] == [[[2.0 * i] * 4] for i in range(40)]
            # Both workers serve before the SIGTERM: gunicorn keeps a worker on the master's signal handlers until
            # it installs its own, and a SIGTERM then is swallowed whatever the app (a bare WSGI app's gevent
            # workers waited out the graceful timeout 9 times of 10 when stopped right after a first answer).
            pids = {answer["pid"] for _, answer in answers}
            deadline = time.monotonic() + 30
            while len(pids) < 2:
                assert time.monotonic() < deadline, (pids, log_path.read_text())
                with ThreadPoolExecutor(8) as pool:
                    pids |= {answer["pid"] for _, answer in pool.map(score, range(8))}
        finally:
            master.terminate()  # (right after the workers' first answers: a deploy soon after a start)
            stopping = time.monotonic()
            try:
                code = master.wait(timeout=30)
            except subprocess.TimeoutExpired:
                master.kill()
                code = master.wait()
            stopped_in_s = time.monotonic() - stopping
    text = log_path.read_text(errors="replace")
    assert code == 0, text
    # Every worker heard the SIGTERM: none was left to the graceful timeout (10 s). (The order of the deferred
    # warm-up and gunicorn's signal handlers is tested in tests/test_gevent.py.)
    assert stopped_in_s < 8, text
    assert "WORKER TIMEOUT" not in text, text
    assert "Traceback" not in text, text
