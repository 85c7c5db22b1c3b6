"""A Django async view under a real uvicorn: concurrent HTTP requests share batches on uvicorn's event loop,
clients that hang up mid-request have their requests withdrawn, and a sync view's long run holds up no other
request."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import django
import numpy as np
import pytest
from asgi_serving import Served, bursts_until_shared, call, scale_version, serve

from inprocserve.testing import build_mlp_model, save_model

CLIENTS = 32


@pytest.fixture(params=["asyncio", "uvloop"])
def uvicorn_port(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[int]:
    """uvicorn serving the test project's ASGI application on a loopback socket with an ephemeral port, on
    the standard event loop and on uvloop (the one ``uvicorn[standard]`` picks)."""
    pytest.importorskip("uvicorn")
    loop = request.param
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (it is in the dev extra)")
    served = serve("uvicorn", tmp_path, loop=loop)
    try:
        yield served.port
    finally:
        served.stop()


def test_concurrent_requests_to_an_async_view_share_batches(uvicorn_port: int) -> None:
    """Requests that reach uvicorn together share runs (bursts go on until one does, for at most 30 s)."""

    def rows_run() -> tuple[int, int]:
        status, models = call(uvicorn_port, "GET", "/-/inprocserve/models")
        assert status == 200
        version = models["models"]["scale"]["versions"]["1"]
        return version["rows_run"], version["batches_run"]

    bursts_until_shared(uvicorn_port, rows_run, clients=CLIENTS)


def test_invalid_input_through_uvicorn_is_a_400_and_the_server_keeps_serving(uvicorn_port: int) -> None:
    status, body = call(uvicorn_port, "POST", "/ascore", {"rows": [[1, 2]]})
    assert status == 400 and body["error"] == "invalid_input"
    assert call(uvicorn_port, "POST", "/ascore", {"rows": [[1, 1, 1, 1]]}) == (200, {"y": [[2.0] * 4], "version": 1})


# Of the 4→1024→...→1024→4 MLP with six hidden layers: a run of 0.25-1.25 s here, longer than any probe below
# and than Django's cancellation of a hung-up request's task on a loaded host (with three hidden layers, a
# run of 2 x SLOW_ROWS beside a full test run and other work ended first). 2 x SLOW_ROWS stays within the
# default max_request_rows (4,096).
SLOW_ROWS = 2000


@pytest.fixture
def slow_uvicorn(tmp_path: Path) -> Iterator[Served]:
    """uvicorn (asyncio's loop) serving the test project with ``scale`` a model slow enough that a request can
    be seen running and queued: 2,000 rows take 0.25-1.25 s."""
    pytest.importorskip("uvicorn")
    save_model(build_mlp_model((4, *[1024] * 6, 4), softmax=False), tmp_path / "models", "scale", 1)
    served = serve("uvicorn", tmp_path)
    try:
        yield served
    finally:
        served.stop()


def _posted(served: Served, path: str, rows: np.ndarray) -> socket.socket:
    """A connection that has sent ``POST path`` with ``rows`` and reads nothing back."""
    body = json.dumps({"rows": rows.tolist()}).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(body)}"
    connection = socket.create_connection(("127.0.0.1", served.port), timeout=30)
    connection.sendall(head.encode() + b"\r\n\r\n" + body)
    return connection


def _wait_for(served: Served, done: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The ``scale`` version's status once ``done`` holds for it (at most 30 s)."""
    deadline = time.monotonic() + 30
    while not done(version := scale_version(served)):
        assert time.monotonic() < deadline, version
        time.sleep(0.002)
    return version


@pytest.mark.skipif(
    django.VERSION < (5, 0),
    reason="Django cancels a view's task when its client hangs up since 5.0; 4.2's ASGI handler stops listening "
    "for http.disconnect once it has read the body, so the requests of clients that left run (docs/django.md)",
)
def test_clients_that_hang_up_mid_request_have_their_requests_withdrawn(slow_uvicorn: Served) -> None:
    """A long run going on, two clients' requests queued behind it, and all three clients hang up: Django
    cancels each view's task, the queued requests leave the queue at once (they never run, and hold no room
    in ``max_queue_rows`` while the run goes on), the counts go back to 0, nothing is logged (no "Task
    exception was never retrieved", no "coroutine ... was never awaited"), and the next request is answered."""
    rng = np.random.default_rng(0)
    connections = [_posted(slow_uvicorn, "/ascore", rng.standard_normal((2 * SLOW_ROWS, 4), dtype=np.float32))]
    try:
        _wait_for(slow_uvicorn, lambda version: version["in_flight"] == 1 and version["queued_rows"] == 0)  # running
        for _ in range(2):
            connections.append(_posted(slow_uvicorn, "/ascore", rng.standard_normal((64, 4), dtype=np.float32)))
        _wait_for(slow_uvicorn, lambda version: version["queued_rows"] == 128)
    finally:
        for connection in connections:
            connection.close()
    withdrawn = _wait_for(slow_uvicorn, lambda version: version["queued_rows"] == 0)
    assert withdrawn["batches_run"] == 0, "the queued requests left the queue only once the long run had ended"
    version = _wait_for(slow_uvicorn, lambda version: version["in_flight"] == 0)
    assert (version["batches_run"], version["rows_run"]) == (1, 2 * SLOW_ROWS), version  # the long run alone
    status, body = slow_uvicorn.call("POST", "/ascore", {"rows": [[1, 1, 1, 1]]})
    assert status == 200 and len(body["y"]) == 1, body
    time.sleep(0.2)  # (asyncio logs a task's unretrieved exception when the task is collected)
    output = slow_uvicorn.output()
    assert "Traceback" not in output and "never retrieved" not in output and "never awaited" not in output, output


def test_a_sync_view_running_a_long_prediction_holds_up_no_other_request(slow_uvicorn: Served) -> None:
    """Under ASGI, Django runs each synchronous view through ``sync_to_async(thread_sensitive=True)`` inside a
    context of the request's own (``ThreadSensitiveContext``): a sync view blocked in ``predict`` for a long run
    leaves the event loop and other requests' sync views free (docs/django.md, "Example")."""
    rows = np.random.default_rng(1).standard_normal((SLOW_ROWS * 2, 4), dtype=np.float32)
    expected = slow_uvicorn.call("POST", "/score", {"rows": rows[:1].tolist()})
    assert expected[0] == 200, expected
    connection = _posted(slow_uvicorn, "/score", rows)
    try:
        deadline = time.monotonic() + 30
        while scale_version(slow_uvicorn)["in_flight"] == 0:  # the sync view's run has begun
            assert time.monotonic() < deadline
            time.sleep(0.002)
        # another request's sync view (the health endpoint) and an async view are answered meanwhile
        assert slow_uvicorn.call("GET", "/-/inprocserve/health") == (200, {"status": "ok"})
        assert slow_uvicorn.call("GET", "/loop")[0] == 200
        assert scale_version(slow_uvicorn)["in_flight"] == 1, "the long run ended before the others were answered"
        connection.settimeout(30)
        answer = connection.recv(64)
        assert answer.startswith(b"HTTP/1.1 200"), answer
    finally:
        connection.close()
