"""A Django async view under a real uvicorn: concurrent HTTP requests share batches on uvicorn's event loop."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.ports import listening_socket

TESTS = Path(__file__).parent
CLIENTS = 32
REQUESTS = 192


def call(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = None if body is None else json.dumps(body)
        headers = {} if body is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def uvicorn_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    """uvicorn serving the test project's ASGI application on a loopback socket with an ephemeral port, on
    the standard event loop and on uvloop (the one ``uvicorn[standard]`` picks)."""
    pytest.importorskip("uvicorn")
    loop = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (it is in the dev extra)")
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (tmp_path / "asgi_settings.py").write_text(
        f"from testproject_settings import *  # noqa: F403\nINPROCSERVE = {{'REPOSITORY': {str(repository)!r}}}\n"
    )
    listener = listening_socket()
    port = listener.getsockname()[1]
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "asgi_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), *sys.path]),
    }
    command = [sys.executable, "-m", "uvicorn", "--factory", "django.core.asgi:get_asgi_application"]
    command += ["--fd", str(listener.fileno()), "--loop", loop, "--log-level", "warning", "--no-access-log"]
    with listener:  # closed here once uvicorn holds its own copy (and if it could not be started)
        process = subprocess.Popen(command, env=environment, pass_fds=[listener.fileno()], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded: until uvicorn answers, it exits, or a minute passes
            if process.poll() is not None:
                raise AssertionError(f"uvicorn exited: {process.stderr.read().decode() if process.stderr else ''}")
            try:
                if call(port, "GET", "/-/inprocserve/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("uvicorn did not answer within 60 s")
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()


def test_concurrent_requests_to_an_async_view_share_batches(uvicorn_port: int) -> None:
    def score(index: int) -> tuple[int, Any]:
        return call(uvicorn_port, "POST", "/ascore", {"rows": [[index, index, index, index]]})

    with ThreadPoolExecutor(CLIENTS) as clients:
        answers = list(clients.map(score, range(REQUESTS)))
    for index, (status, body) in enumerate(answers):
        assert status == 200, body
        assert body == {"y": [[2.0 * index] * 4], "version": 1}
    status, models = call(uvicorn_port, "GET", "/-/inprocserve/models")
    assert status == 200
    version = models["models"]["scale"]["versions"]["1"]
    assert version["rows_run"] == REQUESTS
    # requests that arrived in the same iteration of uvicorn's event loop ran together
    assert version["batches_run"] < REQUESTS


def test_invalid_input_through_uvicorn_is_a_400_and_the_server_keeps_serving(uvicorn_port: int) -> None:
    status, body = call(uvicorn_port, "POST", "/ascore", {"rows": [[1, 2]]})
    assert status == 400 and body["error"] == "invalid_input"
    assert call(uvicorn_port, "POST", "/ascore", {"rows": [[1, 1, 1, 1]]}) == (200, {"y": [[2.0] * 4], "version": 1})
