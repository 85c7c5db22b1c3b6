"""A Django async view under a real uvicorn: concurrent HTTP requests share batches on uvicorn's event loop."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from asgi_serving import call, serve

CLIENTS = 32
REQUESTS = 192


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
