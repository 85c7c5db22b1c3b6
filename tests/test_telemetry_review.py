"""Telemetry after a production review: what a backend team reads off its dashboards must be what the
process holds, however many servers it runs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import HeldSession, ServerFactory, busy_inputs, pin_run_cost, version_status, wait_until
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


def _batch_counts(otel: Otel, name: str, model: str) -> int:
    return sum(point.count for point in otel.metric_points(name) if point.attributes["inprocserve.model.name"] == model)


def _batch_points(otel: Otel, name: str, model: str) -> tuple[int, float, float]:
    """The (count, sum, max) of a batch histogram for ``model``'s version 1."""
    (point,) = [point for point in otel.metric_points(name) if point.attributes["inprocserve.model.name"] == model]
    return point.count, point.sum, point.max


def test_batch_size_and_duration_record_each_run_of_a_request_run_in_slices(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    # inprocserve.batch.size is "rows per executed session.run": a queued request larger than max_batch_size runs
    # in slices of at most that many rows, and was recorded as one run of all its rows (10 rows, under a limit of
    # 4), beside a status() batch_size that counted its three runs.
    save_model(build_scale_model(2.0), repository, "sliced_runs", 1)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4))
    server = make_server(repository, config=config)
    server.submit("sliced_runs", np.ones((10, 4), np.float32)).result(timeout=30)
    # (the worker records the batch once it has answered it: its queue wait is recorded with its runs)
    wait_until(lambda: _batch_counts(otel, "inprocserve.batch.queue_wait", "sliced_runs") == 1)
    assert _batch_points(otel, "inprocserve.batch.size", "sliced_runs") == (3, 10, 4)  # runs of 4, 4 and 2 rows
    runs, _, _ = _batch_points(otel, "inprocserve.batch.duration", "sliced_runs")
    assert runs == 3
    waits, _, _ = _batch_points(otel, "inprocserve.batch.queue_wait", "sliced_runs")
    assert waits == 1  # one batch, however many runs


def test_a_bisected_batch_records_each_of_its_runs(
    otel: Otel, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    # A merged batch that fails is bisected until only the failing request gets the error: 2 requests, one with an
    # index out of bounds, make three session.run calls (2 rows, then 1 and 1). They were recorded as one run of 2
    # rows (and status()'s batch_size, which counts runs, counted one).
    server = make_server(busy_repository)

    def sizes() -> tuple[int, float]:
        points = [
            p for p in otel.metric_points("inprocserve.batch.size") if p.attributes["inprocserve.model.name"] == "busy"
        ]
        return sum(p.count for p in points), sum(p.sum for p in points)

    runs_before, rows_before = sizes()
    waits_before = _batch_counts(otel, "inprocserve.batch.queue_wait", "busy")
    status_before = version_status(server, "busy")["batch_size"]["batches"]
    blocker = hold_session(server, rows=1)
    good = server.submit("busy", busy_inputs(1, index=3))
    poisoned = server.submit("busy", busy_inputs(1, index=99))
    blocker.release()
    assert good.result(timeout=60)["picked"].tolist() == [[6.0, 7.0]]
    with pytest.raises(inprocserve.InvalidInputError):
        poisoned.result(timeout=60)
    wait_until(lambda: _batch_counts(otel, "inprocserve.batch.queue_wait", "busy") == waits_before + 2)
    runs, rows = sizes()
    assert (runs - runs_before, rows - rows_before) == (4, 5)  # the blocker's run of 1 row, then 2, 1 and 1
    assert version_status(server, "busy")["batch_size"]["batches"] - status_before == 4


def build_gram_model() -> onnx.ModelProto:
    """``y = x @ x.T`` on ``x[batch, 4]``: ``y[batch, k]`` with ``k`` the rows run together, so the rows are not
    independent (the load check sees it; ``rows_independent = "yes"`` skips that check)."""
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["x"], ["t"]), helper.make_node("MatMul", ["x", "t"], ["y"])],
        "gram",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "k"])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_slices_whose_outputs_do_not_stitch_run_the_request_whole(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    # A queued request larger than max_batch_size whose slices' outputs have different inner lengths (here the
    # rows of each slice: 4, 4 and 2) could not be stitched: numpy's concatenate raised a plain ValueError on the
    # worker, which the caller got ("all the input array dimensions except for the concatenation axis must match
    # exactly") and which the request metrics recorded as client_error, hidden from ModelErrorRateHigh though the
    # caller could do nothing about it. Like a slice whose rows do not match, the request now runs again whole.
    save_model(build_gram_model(), repository, "gram", 1)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4, rows_independent="yes"))
    server = make_server(repository, config=config)
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    answer = server.submit("gram", x).result(timeout=30)
    np.testing.assert_allclose(answer["y"], x @ x.T)
    assert server.status()["models"]["gram"]["versions"]["1"]["unbatchable_reason"]  # (logged once)
    outcomes = {
        point.attributes["inprocserve.outcome"]
        for point in otel.metric_points("inprocserve.request.duration")
        if point.attributes["inprocserve.model.name"] == "gram"
    }
    assert outcomes == {"ok"}


def test_a_request_an_event_loop_runs_in_slices_records_each_run(
    otel: Otel, repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # apredict queues a request and its loop runs it itself, at the end of the iteration, when its measured run
    # cost is short: a request larger than max_batch_size then runs in slices on the loop's thread (status()
    # counts its three runs) and inprocserve.batch.size recorded one run of all 10 rows.
    pin_run_cost(monkeypatch, fixed_s=0.00001, per_row_s=0.000001)  # quick enough for the loop to run it itself
    save_model(build_scale_model(2.0), repository, "loop_sliced", 1)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4))
    server = make_server(repository, config=config)

    async def requests() -> None:  # (a few: now and then a worker takes one, and records it right)
        for _ in range(5):
            await server.apredict("loop_sliced", np.ones((10, 4), np.float32))

    asyncio.run(requests())
    wait_until(lambda: _batch_counts(otel, "inprocserve.batch.queue_wait", "loop_sliced") == 5)
    assert version_status(server, "loop_sliced")["batch_size"]["batches"] == 15  # each ran in slices
    assert _batch_points(otel, "inprocserve.batch.size", "loop_sliced") == (15, 50, 4)
