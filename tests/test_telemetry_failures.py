"""Telemetry never costs a request its answer. An application's span processor (or exporter) that raises
when a span starts or ends is the application's bug, but the request must still be answered: its caller,
and every other caller answered by the same thread (a batch's futures, an event loop's merged tasks), must
get theirs, and the batch its metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

import inprocserve
from inprocserve import BatchingConfig, CacheConfig, ModelConfig, _telemetry
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, version_status, wait_until
from .test_telemetry import Otel
from .test_telemetry import otel as otel

TASKS = 8


class RaisingProcessor(SpanProcessor):
    """Raises in ``on_end`` for every request span (as a buggy exporter's processor would)."""

    def __init__(self) -> None:
        self.raised = 0
        self.armed = True

    def on_end(self, span: ReadableSpan) -> None:
        if self.armed and span.name == "inprocserve.predict":
            self.raised += 1
            raise RuntimeError("a span processor's bug")


@pytest.fixture
def raising(otel: Otel) -> Iterator[RaisingProcessor]:
    processor = RaisingProcessor()
    otel.switchboard.extra = processor
    yield processor  # (the otel fixture unplugs it)


def rows(count: int) -> list[np.ndarray]:
    return [np.full((1, 4), float(index), np.float32) for index in range(count)]


@contextlib.contextmanager
def runner_held(server: inprocserve.Server, model: str) -> Iterator[None]:
    """Keep the version's only runner out of its pool: what is submitted meanwhile queues, and runs as one
    batch once it is back."""
    batcher = server._registry.routes[model].default.batcher
    assert batcher is not None
    with batcher._lock:
        runner = batcher._pool.checkout()
    assert runner is not None and not batcher._pool.has_free()
    try:
        yield
    finally:
        with batcher._lock:
            batcher._pool.checkin(runner)
            batcher._wake_for_queued()


def parked(server: inprocserve.Server, model: str) -> bool:
    batcher = server._registry.routes[model].default.batcher
    assert batcher is not None
    return len(batcher._idle) == len(batcher._workers)  # (none yet: the first queued request starts them)


def test_a_lone_predict_is_answered(
    raising: RaisingProcessor,
    scale_repository: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = make_server(scale_repository)
    monkeypatch.setattr(_telemetry, "_failures_logged", set())  # (a process logs the first one only)
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        for _ in range(3):
            np.testing.assert_allclose(server.predict("scale", np.ones((1, 4), np.float32))["y"], np.full((1, 4), 2.0))
    assert raising.raised == 3
    # said once, with its traceback, not once per request
    logged = [record for record in caplog.records if "closing a request span failed" in record.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None


@pytest.mark.parametrize("way", ["merged (a plain version)", "one request each (a version with a cache)"])
def test_every_task_of_a_batch_is_answered(
    raising: RaisingProcessor, scale_repository: Path, make_server: ServerFactory, way: str
) -> None:
    cache = CacheConfig(enabled=way.startswith("one request"))
    server = make_server(scale_repository, config=ModelConfig(cache=cache, batching=BatchingConfig(max_delay_s=0)))
    raising.armed = False
    server.predict("scale", np.ones((1, 4), np.float32))
    raising.armed = True

    async def batch() -> list[inprocserve.Prediction]:
        wait_until(lambda: parked(server, "scale"))
        # created in one iteration: queued together, run as one batch, answered by one thread
        tasks = [asyncio.ensure_future(server.apredict("scale", row)) for row in rows(TASKS)]
        _, pending = await asyncio.wait(tasks, timeout=20)
        assert not pending, f"{len(pending)} of {TASKS} tasks never answered"
        return [task.result() for task in tasks]

    answers = asyncio.run(batch())
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(answer["y"], np.full((1, 4), 2.0 * index))
    assert raising.raised >= TASKS
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)


def test_every_future_of_a_batch_is_resolved(
    raising: RaisingProcessor, scale_repository: Path, make_server: ServerFactory
) -> None:
    config = ModelConfig(cache=CacheConfig(enabled=True), batching=BatchingConfig(max_delay_s=0))
    server = make_server(scale_repository, config=config)
    raising.armed = False
    server.predict("scale", np.ones((1, 4), np.float32))
    raising.armed = True
    batches = version_status(server, "scale")["batches_run"]
    with runner_held(server, "scale"):
        futures = [server.submit("scale", row) for row in rows(TASKS)]
    for index, future in enumerate(futures):
        np.testing.assert_allclose(future.result(timeout=20)["y"], np.full((1, 4), 2.0 * index))
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
    assert version_status(server, "scale")["batches_run"] == batches + 1


def test_a_failure_after_an_answer_leaves_the_other_futures_of_its_batch_answered(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever follows an answer on the worker (telemetry, the cache, drift, shadows) failing for one
    # request: that request still gets its answer, and so does every request after it in the batch.
    config = ModelConfig(cache=CacheConfig(enabled=True), batching=BatchingConfig(max_delay_s=0))
    server = make_server(scale_repository, config=config)
    server.predict("scale", np.ones((1, 4), np.float32))
    answered = server._telemetry.answered
    calls: list[int] = []

    def fails_the_third(*args: object, **kwargs: object) -> None:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("a bug after the answer")
        answered(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(server._telemetry, "answered", fails_the_third)
    batches = version_status(server, "scale")["batches_run"]
    with runner_held(server, "scale"):
        futures = [server.submit("scale", row) for row in rows(TASKS)]
    for index, future in enumerate(futures):
        np.testing.assert_allclose(future.result(timeout=20)["y"], np.full((1, 4), 2.0 * index))
    assert len(calls) >= 3
    assert version_status(server, "scale")["batches_run"] == batches + 1  # one batch: answered by one thread


class RaisingOn(SpanProcessor):
    """Raises when a span named ``name`` starts or ends (``hook``), as a processor written for other spans may:
    one that reads ``span.parent`` fails on the library's batch spans, which are roots."""

    def __init__(self, name: str, hook: str) -> None:
        self.name, self.hook = name, hook
        self.raised = 0

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.hook == "start" and span.name == self.name:
            self.raised += 1
            raise AttributeError("'NoneType' object has no attribute 'span_id'")

    def on_end(self, span: ReadableSpan) -> None:
        if self.hook == "end" and span.name == self.name:
            self.raised += 1
            raise RuntimeError("a span processor's bug")


def _batch_rows_recorded(otel: Otel) -> float:
    return sum(
        point.sum
        for point in otel.metric_points("inprocserve.batch.size")
        if point.attributes["inprocserve.model.name"] == "raising"
    )


@pytest.mark.parametrize(
    ("name", "hook"),
    [("inprocserve.predict", "start"), ("inprocserve.batch", "start"), ("inprocserve.batch", "end")],
)
def test_a_span_processor_that_raises_costs_no_answer_and_no_batch_metric(
    otel: Otel, repository: Path, make_server: ServerFactory, name: str, hook: str
) -> None:
    save_model(build_scale_model(2.0), repository, "raising", 1)
    server = make_server(repository, config=ModelConfig(batching=BatchingConfig(max_delay_s=0)))
    server.predict("raising", np.ones((1, 4), np.float32))  # (adopts the runners, before the processor)
    processor = RaisingOn(name, hook)
    otel.switchboard.extra = processor
    before = _batch_rows_recorded(otel)
    np.testing.assert_allclose(server.predict("raising", np.ones((1, 4), np.float32))["y"], np.full((1, 4), 2.0))
    with runner_held(server, "raising"):
        futures = [server.submit("raising", row) for row in rows(TASKS)]
    for index, future in enumerate(futures):
        np.testing.assert_allclose(future.result(timeout=20)["y"], np.full((1, 4), 2.0 * index))
    wait_until(lambda: version_status(server, "raising")["in_flight"] == 0)
    assert processor.raised >= 1
    # the batch's metrics, whatever became of its span (the worker records them just after it answers)
    wait_until(lambda: _batch_rows_recorded(otel) >= before + TASKS)
    assert _batch_rows_recorded(otel) == before + TASKS
