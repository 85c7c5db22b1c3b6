"""What keeps telemetry cheap on the request path: no span where the SDK would make one that is never
recorded, links only to sampled spans, and per-version recorders whose metric records are complete."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, NonRecordingSpan, SpanContext, TraceFlags

import inprocserve
from inprocserve import _recorder, _telemetry
from inprocserve._recorder import Recorder
from inprocserve._telemetry import start_batch_span, start_request_span, unsampled_child_dropped

from .conftest import ServerFactory
from .test_telemetry import Otel

# The process-wide SDK (providers can be set once per process) and the scale repository, as fixtures:
from .test_telemetry import otel as otel
from .test_telemetry import scale as scale


class _CoinSampler(Sampler):
    """A user sampler that may record a child of an unsampled parent."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE)

    def get_description(self) -> str:
        return "coin"


@pytest.mark.parametrize(
    ("sampler", "expected"),
    [
        (ParentBased(TraceIdRatioBased(0.01)), (True, True)),
        (ParentBased(ALWAYS_ON), (True, True)),
        (ParentBased(ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON), (False, True)),
        (ParentBased(ALWAYS_ON, remote_parent_not_sampled=_CoinSampler()), (True, False)),
        (ParentBased(ALWAYS_ON, local_parent_not_sampled=StaticSampler(Decision.DROP)), (True, True)),
        (ALWAYS_OFF, (True, True)),
        (ALWAYS_ON, (False, False)),
        (TraceIdRatioBased(0.01), (False, False)),  # a child's trace id is its parent's: may be sampled
        (_CoinSampler(), (False, False)),
        (None, (False, False)),
        (object(), (False, False)),
    ],
)
def test_which_samplers_drop_every_child_of_an_unsampled_parent(sampler: Any, expected: tuple[bool, bool]) -> None:
    assert _telemetry._drops_unsampled_children(sampler) == expected


def _parent(*, sampled: bool, remote: bool = True) -> Iterator[None]:
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    span = NonRecordingSpan(SpanContext(0x1234, 0x5678, is_remote=remote, trace_flags=flags))
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        otel_context.detach(token)


@pytest.fixture
def unsampled_parent() -> Iterator[None]:
    yield from _parent(sampled=False)


def test_no_span_under_an_unsampled_parent(otel: Otel, unsampled_parent: None) -> None:
    # The process's provider samples like the SDK's default, ParentBased(ALWAYS_ON).
    assert unsampled_child_dropped(remote=True) and unsampled_child_dropped(remote=False)
    assert start_request_span("m") is INVALID_SPAN


def test_a_sampled_parent_still_gets_a_complete_request_span(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale)
    for sampled in (False, True, False):
        for _ in _parent(sampled=sampled):
            assert server.predict("scale", np.ones((2, 4), np.float32))["y"].shape == (2, 4)
    (span,) = otel.finished("inprocserve.predict")
    assert span.parent is not None and span.parent.span_id == 0x5678 and span.context.trace_id == 0x1234
    attributes = dict(span.attributes or {})
    assert attributes["inprocserve.model.name"] == "scale"
    assert attributes["inprocserve.model.version"] == 2
    assert attributes["inprocserve.request.rows"] == 2
    assert attributes["inprocserve.outcome"] == "ok"


def test_a_batch_span_links_only_to_sampled_request_spans(otel: Otel) -> None:
    sampled = otel.tracer.start_span("sampled")
    unsampled = NonRecordingSpan(SpanContext(0x99, 0x98, is_remote=False, trace_flags=TraceFlags(TraceFlags.DEFAULT)))
    batch = start_batch_span("m", 1, [sampled, INVALID_SPAN, unsampled, None])
    batch.end()
    sampled.end()
    (finished,) = otel.finished("inprocserve.batch")
    assert [link.context.span_id for link in finished.links] == [sampled.get_span_context().span_id]


def _points(otel: Otel, name: str, model: str) -> list[Any]:
    return [p for p in otel.metric_points(name) if p.attributes["inprocserve.model.name"] == model]


def test_a_recorder_records_requests_with_their_outcome(otel: Otel) -> None:
    recorder = Recorder("recorded", 3)
    recorder.request_finished(0.004, variant="canary", error=None, queue_wait_s=0.001)
    recorder.request_finished(0.002, variant="canary", error=None)
    recorder.request_finished(0.5, variant="stable", error=inprocserve.DeadlineExceededError("late"))
    durations = {
        (p.attributes["inprocserve.rollout.variant"], p.attributes["inprocserve.outcome"]): p
        for p in _points(otel, "inprocserve.request.duration", "recorded")
    }
    ok = durations["canary", "ok"]
    assert ok.count == 2 and ok.sum == pytest.approx(0.006) and ok.attributes["inprocserve.model.version"] == 3
    assert "error.type" not in ok.attributes
    late = durations["stable", "deadline_exceeded"]
    assert late.count == 1 and late.attributes["error.type"] == "DeadlineExceededError"
    (wait,) = _points(otel, "inprocserve.request.queue_wait", "recorded")
    assert wait.count == 1 and wait.sum == pytest.approx(0.001)
    (deadline,) = _points(otel, "inprocserve.requests.deadline_exceeded", "recorded")
    assert deadline.value == 1
    recorder.shed()
    (shed,) = _points(otel, "inprocserve.requests.shed", "recorded")
    assert shed.value == 1 and dict(shed.attributes) == {
        "inprocserve.model.name": "recorded",
        "inprocserve.model.version": 3,
    }


def test_a_recorder_records_worker_batches_not_lone_inline_runs(otel: Otel) -> None:
    recorder = Recorder("batches", 1)
    recorder.batch_finished(1, 0.001, inline=True)
    assert not _points(otel, "inprocserve.batch.size", "batches")
    recorder.batch_finished(8, 0.003, inline=False, queue_wait_s=0.002)
    recorder.batch_finished(2, 0.001, inline=False, queue_wait_s=0.0005)
    (size,) = _points(otel, "inprocserve.batch.size", "batches")
    assert size.count == 2 and size.sum == 10 and size.max == 8
    (duration,) = _points(otel, "inprocserve.batch.duration", "batches")
    assert duration.count == 2 and duration.sum == pytest.approx(0.004)
    (wait,) = _points(otel, "inprocserve.batch.queue_wait", "batches")
    assert wait.count == 2 and wait.max == pytest.approx(0.002)


def test_a_recorder_builds_each_attribute_set_once(otel: Otel) -> None:
    recorder = Recorder("cached", 1)
    first = recorder.finished_attributes("stable", ValueError("bad"))
    assert recorder.finished_attributes("stable", ValueError("other")) is first
    assert first["inprocserve.outcome"] == "client_error" and first["error.type"] == "ValueError"
    assert recorder.finished_attributes("stable", None) is not first


def test_durations_from_many_threads_are_all_recorded_by_the_next_collection(otel: Otel) -> None:
    recorder = Recorder("threads", 1)
    barrier = threading.Barrier(8)

    def finish_requests(index: int) -> None:
        barrier.wait()
        for _ in range(500):
            recorder.request_finished(0.001 * (index + 1), variant="stable", error=None)

    threads = [threading.Thread(target=finish_requests, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    (point,) = _points(otel, "inprocserve.request.duration", "threads")
    assert point.count == 4000
    assert point.sum == pytest.approx(sum(0.001 * (index + 1) * 500 for index in range(8)))
    assert point.min == pytest.approx(0.001) and point.max == pytest.approx(0.008)


def test_a_collection_records_what_another_thread_left_pending(otel: Otel) -> None:
    recorder = Recorder("pending", 1)
    with recorder._draining:  # another thread is recording: this one leaves its duration pending
        recorder.request_finished(0.25, variant="stable", error=None)
        collecting = threading.Thread(target=otel.metric_points, args=("inprocserve.request.duration",))
        collecting.start()  # the collection waits for the recording thread, then records what is left
    collecting.join(timeout=60)
    (point,) = _points(otel, "inprocserve.request.duration", "pending")
    assert point.count == 1 and point.sum == pytest.approx(0.25)


def test_a_recorder_counts_cache_lookups_by_result(otel: Otel) -> None:
    recorder = Recorder("cache", 2)
    for result in ("hit", "hit", "miss", "shared"):
        recorder.cache_lookup(result)
    counts = {
        p.attributes["inprocserve.cache.result"]: p.value for p in _points(otel, "inprocserve.cache.requests", "cache")
    }
    assert counts == {"hit": 2, "miss": 1, "shared": 1}
    with pytest.raises(KeyError):
        recorder.cache_lookup("stale")  # a bounded set of values: a typo fails loudly


def test_a_backlog_stays_bounded_while_the_recording_thread_waits(otel: Otel) -> None:
    recorder = Recorder("backlog", 1)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:  # a recording thread that does not get to run (the GIL went elsewhere)
        with recorder._draining:
            held.set()
            release.wait(timeout=30)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(timeout=30)
    total = _recorder._MAX_PENDING + 100
    timer = threading.Timer(0.2, release.set)
    timer.start()
    for _ in range(total):
        recorder.request_finished(0.001, variant="stable", error=None)
    holder.join(timeout=30)
    timer.join(timeout=30)
    assert len(recorder._pending) <= _recorder._MAX_PENDING
    (point,) = _points(otel, "inprocserve.request.duration", "backlog")
    assert point.count == total
