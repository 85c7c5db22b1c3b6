"""Telemetry after a production review: what a backend team reads off its dashboards must be what the
process holds, however many servers it runs."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

import inprocserve

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


def _version_row_numbers(page: str, version: int) -> list[str]:
    """The numeric cells of a version's row in the versions table: answered, errors, p50, p90, p99, batches and
    rows per batch."""
    row = re.search(rf"<tr><td>v{version}\b.*?</tr>", page)
    assert row is not None
    return re.findall(r'<td class="n">([^<]*)</td>', row.group(0))


def test_the_status_page_counts_every_run_of_a_request_larger_than_a_batch(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # A request larger than max_batch_size runs in slices of at most that many rows. The page's batch-size
    # chart counted each run, its "batches" column one per request: "1 batch of 10 rows" for a version whose
    # runs hold at most 4, which read as if max_batch_size were not applied.
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4))
    server = make_server(scale_repository, config=config)
    server.predict("scale", np.ones((10, 4), np.float32))  # runs of 4, 4 and 2 rows
    status = server.status()
    assert status["models"]["scale"]["versions"]["1"]["batch_size"]["histogram"] == {"1": 0, "2": 1, "3-4": 2}
    numbers = _version_row_numbers(inprocserve.render_status_page(status), 1)
    assert numbers[5:] == ["3", "3.3"]  # three runs, of 10 / 3 rows on average


def test_a_request_run_in_slices_is_one_batch_in_batches_run_and_a_run_per_slice_in_batch_size(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # docs/repository.md, "Status": rows_run / batches_run is rows per batch; batch_size counts session.run calls
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4))
    server = make_server(scale_repository, config=config)
    server.predict("scale", np.ones((10, 4), np.float32))
    server.submit("scale", np.ones((10, 4), np.float32)).result(timeout=30)
    entry = server.status()["models"]["scale"]["versions"]["1"]
    assert (entry["batches_run"], entry["rows_run"], entry["batch_size"]["batches"]) == (2, 20, 6)
