"""The end-to-end benchmark's HTTP load client reads what real servers send (Content-Length and chunked
bodies), checks answers, and counts error statuses instead of timing them."""

from __future__ import annotations

import asyncio
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

from e2e.load import build_request, run_load


class TinyServer:
    """An HTTP/1.1 keep-alive server on 127.0.0.1 that echoes the request body, alternating between a
    Content-Length body and a chunked one, or answers every request with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.requests = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length) if length else b"{}"
                self.requests += 1
                if self.status != 200:
                    writer.write(f"HTTP/1.1 {self.status} Oops\r\nContent-Length: 2\r\n\r\n{{}}".encode())
                elif self.requests % 2:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                else:
                    half = len(body) // 2
                    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]))
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks + b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        async def stop() -> None:
            self._server.close()
            await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture
def echo() -> Iterator[TinyServer]:
    server = TinyServer()
    yield server
    server.close()


def test_reads_content_length_and_chunked_answers_and_checks_them(echo: TinyServer) -> None:
    bodies: list[bytes | None] = [b'{"x": [[1.0, 2.0]]}', b'{"x": [[3.0, 4.0]]}']
    seen: list[tuple[int, bytes]] = []

    def check(index: int, raw: bytes) -> None:
        seen.append((index, raw))
        assert raw == bodies[index]

    point = run_load(echo.port, "/predict", bodies, connections=2, seconds=0.2, warmup_s=0.05, check=check)
    assert point.errors == 0, point.first_error
    assert point.requests > 0
    assert point.checked == len(seen) > 0
    assert {index for index, _ in seen} == {0, 1}  # connection i sends body i, and is checked against it
    assert echo.requests >= point.requests  # warm-up requests are sent but not counted


def test_error_statuses_are_counted_not_timed() -> None:
    server = TinyServer(status=503)
    try:
        point = run_load(server.port, "/predict", [b"{}"], connections=1, seconds=0.1, warmup_s=0.0)
    finally:
        server.close()
    assert point.requests == 0
    assert point.errors == server.requests > 0
    assert point.first_error is not None and "HTTP 503" in point.first_error


def test_a_wrong_answer_stops_the_run(echo: TinyServer) -> None:
    def check(index: int, raw: bytes) -> None:
        raise AssertionError("differs")

    with pytest.raises(AssertionError, match="differs"):
        run_load(echo.port, "/predict", [b"{}"], connections=1, seconds=0.1, warmup_s=0.0, check=check)


def test_requests_without_a_body_are_gets() -> None:
    assert build_request("/ping", None, host="h").startswith(b"GET /ping HTTP/1.1\r\n")
    post = build_request("/predict", b"{}", host="h")
    assert post.startswith(b"POST /predict HTTP/1.1\r\n") and post.endswith(b"Content-Length: 2\r\n\r\n{}")
