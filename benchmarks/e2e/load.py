"""A closed-loop HTTP/1.1 load client with N keep-alive connections on one asyncio loop.

Raw sockets and pre-built requests keep the client's own cost at a few tens of microseconds per request, so
that on a 2-core machine it takes as little CPU as possible from the server it measures; the client's CPU
time is measured and reported next to every point, so a reader can see when it, not the server, limited the
rate. Every loop is bounded in time: a point ends at its deadline, and a request that gets no answer within
``timeout_s`` counts as an error and closes its connection.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class LoadError(RuntimeError):
    """The server answered something the client cannot use (an error status, no Content-Length)."""


@dataclass
class LoadPoint:
    """What one closed-loop run measured, warm-up excluded."""

    connections: int
    requests: int
    errors: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    client_cpu_s: float
    client_cpu_share: float  # client CPU seconds / wall seconds: near 1.0 means the client was the bottleneck
    first_error: str | None = None
    checked: int = 0  # answers compared with the expected output
    extra: dict[str, Any] = field(default_factory=dict)


def build_request(path: str, body: bytes | None, *, host: str) -> bytes:
    method = "POST" if body is not None else "GET"
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Connection: keep-alive"]
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, _, headers = head.partition(b"\r\n")
    status = int(status_line.split(b" ", 2)[1])
    chunked = False
    for line in headers.split(b"\r\n"):
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            return status, await reader.readexactly(int(value))
        if name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if not chunked:
        raise LoadError(f"response with neither Content-Length nor chunked encoding (status {status}): {head[:200]!r}")
    parts = []
    for _ in range(100_000):  # bounded: a body of more chunks than this is not one of ours
        size = int((await reader.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # no trailers are sent: this is the blank line that ends the body
            return status, b"".join(parts)
        parts.append(await reader.readexactly(size + 2))
        parts[-1] = parts[-1][:-2]
    raise LoadError("chunked response longer than 100,000 chunks")


async def _connection(
    host: str,
    port: int,
    request: bytes,
    *,
    warm_until: float,
    end: float,
    timeout_s: float,
    latencies: list[float],
    errors: list[str],
    check: Callable[[bytes], None] | None,
) -> int:
    """One keep-alive connection sending ``request`` back to back until ``end``; returns answers checked."""
    clock = time.perf_counter
    checked = 0
    writer: asyncio.StreamWriter | None = None
    try:
        while clock() < end:
            if writer is None:
                reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout_s)
            start = clock()
            writer.write(request)
            try:
                status, body = await asyncio.wait_for(_read_response(reader), timeout_s)
            except (TimeoutError, asyncio.IncompleteReadError, ConnectionError, LoadError) as exc:
                errors.append(repr(exc))
                writer.close()
                writer = None
                continue
            done = clock()
            if status != 200:
                errors.append(f"HTTP {status}: {body[:200]!r}")
                continue
            if check is not None and checked < 3:
                check(body)
                checked += 1
            if start >= warm_until:
                latencies.append(done - start)
    except (TimeoutError, ConnectionError, OSError) as exc:  # could not connect: counted, the point goes on
        errors.append(repr(exc))
    finally:
        if writer is not None:
            writer.close()
    return checked


def run_load(
    port: int,
    path: str,
    bodies: list[bytes | None],
    *,
    connections: int,
    seconds: float,
    warmup_s: float,
    timeout_s: float = 10.0,
    check: Callable[[int, bytes], None] | None = None,
    host: str = "127.0.0.1",
) -> LoadPoint:
    """``connections`` connections, connection i sending ``bodies[i % len(bodies)]`` to ``path`` back to back
    for ``warmup_s + seconds``; latencies and the rate count only requests started after the warm-up."""

    async def main() -> tuple[float, float, int]:
        begin = time.perf_counter()
        warm_until = begin + warmup_s
        end = warm_until + seconds
        cpu_before = time.process_time()
        jobs = []
        for index in range(connections):
            body = bodies[index % len(bodies)]
            request = build_request(path, body, host=f"{host}:{port}")
            checker = None if check is None else functools.partial(check, index % len(bodies))
            jobs.append(
                _connection(
                    host,
                    port,
                    request,
                    warm_until=warm_until,
                    end=end,
                    timeout_s=timeout_s,
                    latencies=latencies,
                    errors=errors,
                    check=checker,
                )
            )
        checked = sum(await asyncio.gather(*jobs))
        finished = time.perf_counter()
        # the measured window: from the end of the warm-up to the last answer (requests still in flight at the
        # deadline complete after it, so the window is the deadline or later)
        return max(finished - warm_until, 1e-9), time.process_time() - cpu_before, checked

    latencies: list[float] = []
    errors: list[str] = []
    elapsed, cpu_s, checked = _run(main())
    values = np.sort(np.asarray(latencies)) if latencies else np.asarray([float("nan")])
    return LoadPoint(
        connections=connections,
        requests=len(latencies),
        errors=len(errors),
        seconds=elapsed,
        throughput=len(latencies) / elapsed,
        p50_ms=float(np.percentile(values, 50) * 1000),
        p99_ms=float(np.percentile(values, 99) * 1000),
        client_cpu_s=cpu_s,
        client_cpu_share=cpu_s / (elapsed + warmup_s),
        first_error=errors[0] if errors else None,
        checked=checked,
    )


def _run(coroutine: Any) -> Any:
    try:  # the client's own per-request cost is lower on uvloop; plain asyncio otherwise
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)


def json_rows(rows: list[np.ndarray]) -> list[bytes]:
    """Request bodies: ``{"x": [[...]]}`` for each one-row input."""
    return [json.dumps({"x": row.tolist()}).encode() for row in rows]
