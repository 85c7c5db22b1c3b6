"""Telemetry after a production review: what a backend team reads off its dashboards must be what the
process holds, however many servers it runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from .conftest import HeldSession, ServerFactory, busy_inputs
from .test_telemetry import Otel
from .test_telemetry import otel as otel  # the fixture: one SDK per process


def _gauge(otel: Otel, name: str, model: str) -> dict[int, float]:
    return {
        point.attributes["inprocserve.model.version"]: point.value
        for point in otel.metric_points(name)
        if point.attributes["inprocserve.model.name"] == model
    }


def test_two_servers_of_one_process_add_up_their_queues_and_requests_in_flight(
    otel: Otel, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    # A process may run two servers of the same models (a web app's and a queue consumer's, two Flask apps of
    # one WSGI process). Each reports its own queue and requests in flight for ("busy", 1); the gauge kept the
    # last server's alone, so a backlog on the first read 0 while the second stood idle.
    busy = make_server(busy_repository)
    idle = make_server(busy_repository)
    blocker = hold_session(busy)
    queued = [busy.submit("busy", busy_inputs(1, seed=seed)) for seed in range(3)]
    idle.predict("busy", busy_inputs(1))
    held = busy.status()["models"]["busy"]["versions"]["1"]
    assert (held["in_flight"], held["queued_rows"]) == (4, 3)  # the blocker running, three queued
    try:
        assert _gauge(otel, "inprocserve.requests.in_flight", "busy") == {1: 4.0}
        assert _gauge(otel, "inprocserve.queue.depth", "busy") == {1: 3.0}
    finally:
        blocker.release()
        for future in queued:
            future.result(timeout=60)
