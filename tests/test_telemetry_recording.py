"""Metric records off the request path: the recording thread that records request durations and batch
metrics for the servers of the process, and the counters kept in plain integers. Every record must reach
the SDK once, with its own value and attributes, before the collection that follows it; the thread is
closed with the last server and made afresh in a forked child."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import inprocserve
from inprocserve import _recorder
from inprocserve._record_thread import RecordingThread
from inprocserve._recorder import Recorder
from inprocserve._tally import Tally
from inprocserve._telemetry import METRICS
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, race_rounds, run_in_forked_child, run_python, wait_until
from .test_telemetry import Otel

# The process-wide SDK (providers can be set once per process) and the scale repository, as fixtures:
from .test_telemetry import otel as otel
from .test_telemetry import scale as scale

THREAD = "inprocserve-metrics"


def _count(otel: Otel, name: str, model: str) -> tuple[int, float]:
    points = [p for p in otel.metric_points(name) if p.attributes["inprocserve.model.name"] == model]
    return sum(p.count for p in points), sum(p.sum for p in points)


def _recording_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == THREAD]


def _unsampled() -> Any:
    """The context of a web request whose trace is not sampled: requests made in it have no span (the SDK
    would not record one), so their durations are left to the recording thread, as most are in production
    (a sampled request's is recorded on its own thread, for exemplars)."""
    parent = SpanContext(trace_id=0x1234, span_id=0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    return trace.use_span(NonRecordingSpan(parent))


def _queued(server: inprocserve.Server, requests: int, *, sampled: bool = False) -> None:
    """Send ``requests`` requests through the queue (answered by a worker), not the lone caller's way, which
    records its own; unsampled, their durations are left to the recording thread."""
    with contextlib.nullcontext() if sampled else _unsampled():
        futures = [server.submit("scale", np.ones((1, 4), np.float32)) for _ in range(requests)]
    for future in futures:
        future.result(timeout=30)


def test_every_request_is_recorded_once_by_the_next_collection(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale)
    clients, each = 8, 3 * _recorder._WAKE_EVERY  # enough to wake the recording thread many times
    barrier = threading.Barrier(clients)
    failures: list[BaseException] = []
    before, _ = _count(otel, "inprocserve.request.duration", "scale")

    def client() -> None:
        try:
            barrier.wait(timeout=30)
            with _unsampled():
                for turn in range(each):
                    if turn % 2:
                        server.predict("scale", np.ones((1, 4), np.float32))
                    else:  # (through the queue: on a loaded machine every predict ran alone, recorded at once)
                        server.submit("scale", np.ones((1, 4), np.float32)).result(timeout=30)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not failures
    assert METRICS.recording  # the requests woke it: the request threads left their durations to it
    count, total = _count(otel, "inprocserve.request.duration", "scale")
    assert count - before == clients * each
    assert total > 0


def test_a_collection_records_what_no_thread_has_recorded_yet(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale)
    before, _ = _count(otel, "inprocserve.request.duration", "scale")
    requests = _recorder._WAKE_EVERY // 2  # too few to wake the recording thread: all still pending
    _queued(server, requests)
    count, _ = _count(otel, "inprocserve.request.duration", "scale")
    assert count - before == requests


def test_a_lone_request_records_its_own_duration_at_once(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    """A lone caller's sampled request (this SDK samples every trace), run on its own thread while the version
    is idle, records its duration there at once, in its span's context: none is left for the recording
    thread, whose backlog the caller would otherwise wait for once in ``_WAKE_EVERY`` requests. (Unsampled,
    it waits to be recorded in a row: see the next test.)"""
    server = make_server(scale)
    version = server._registry.routes["scale"].default
    assert version.batcher is not None
    pending = version.batcher.telemetry._pending
    before, _ = _count(otel, "inprocserve.request.duration", "scale")
    for _ in range(2 * _recorder._WAKE_EVERY):
        server.predict("scale", np.ones((1, 4), np.float32))
        assert not pending
    _queued(server, 3)  # answered by a worker: left to the recording thread (or the next collection)
    count, _ = _count(otel, "inprocserve.request.duration", "scale")
    assert count - before == 2 * _recorder._WAKE_EVERY + 3


def test_a_lone_callers_unsampled_durations_are_recorded_by_its_own_thread_in_a_row(
    otel: Otel, scale: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Most requests are not sampled. A lone caller's duration then waits with the pending records, and
    every ``_LONE_RECORDS``-th lone request records them all, on its own thread (the SDK's records cost a
    third as much in a row as one alone between two runs); the recording thread is never woken for them,
    and a collection in between still counts every request."""
    server = make_server(scale)
    version = server._registry.routes["scale"].default
    assert version.batcher is not None
    recorder = version.batcher.telemetry
    pending = recorder._pending
    before, _ = _count(otel, "inprocserve.request.duration", "scale")
    recorded_by: set[str] = set()
    record_pending = Recorder.record_pending

    def noting_thread(self: Recorder) -> None:
        if self is recorder:
            recorded_by.add(threading.current_thread().name)
        record_pending(self)

    monkeypatch.setattr(Recorder, "record_pending", noting_thread)
    with _unsampled():
        for sent in range(1, 2 * _recorder._LONE_RECORDS + 4):
            server.predict("scale", np.ones((1, 4), np.float32))
            assert len(pending) == sent % _recorder._LONE_RECORDS, sent
            assert not recorder._wake_sent
    assert recorded_by == {threading.current_thread().name}
    count, _ = _count(otel, "inprocserve.request.duration", "scale")  # (the last 3 recorded by the collection)
    assert count - before == 2 * _recorder._LONE_RECORDS + 3
    assert not pending


def test_a_sampled_request_duration_carries_its_span_as_exemplar(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    """Each request's span here is sampled (the SDK's default sampler): its duration is recorded in its
    span's context, and the SDK's trace-based exemplar filter keeps that span's ids with the value, for a
    lone request and for one answered by a worker alike."""
    server = make_server(scale)

    def exemplar_spans() -> dict[int, int]:  # (the SDK keeps one exemplar per bucket, until it collects)
        return {
            exemplar.span_id: exemplar.trace_id
            for point in otel.metric_points("inprocserve.request.duration")
            if point.attributes["inprocserve.model.name"] == "scale"
            for exemplar in point.exemplars
        }

    exemplar_spans()
    for send in (
        lambda: server.predict("scale", np.ones((1, 4), np.float32)),  # lone: run on this thread
        lambda: _queued(server, 1, sampled=True),  # answered by a worker
    ):
        otel.spans.clear()
        send()
        (span,) = otel.finished("inprocserve.predict")
        assert exemplar_spans() == {span.context.span_id: span.context.trace_id}


def test_each_record_keeps_its_own_value_and_attributes(otel: Otel) -> None:
    recorder = Recorder("own-values", 4)
    values = [0.001 * (index + 1) for index in range(3 * _recorder._WAKE_EVERY + 5)]
    for index, value in enumerate(values):
        recorder.request_finished(value, variant="canary" if index % 2 else "stable", error=None)
        recorder.batch_finished(index + 1, value, inline=False, queue_wait_s=value / 2)
    points = {
        p.attributes["inprocserve.rollout.variant"]: p
        for p in otel.metric_points("inprocserve.request.duration")
        if p.attributes["inprocserve.model.name"] == "own-values"
    }
    assert points["stable"].count + points["canary"].count == len(values)
    assert points["canary"].sum == pytest.approx(sum(values[1::2]))
    assert points["stable"].min == pytest.approx(values[0]) and points["canary"].max == pytest.approx(max(values[1::2]))
    (size,) = [
        p
        for p in otel.metric_points("inprocserve.batch.size")
        if p.attributes["inprocserve.model.name"] == "own-values"
    ]
    assert size.count == len(values) and size.sum == sum(range(1, len(values) + 1))
    (wait,) = [
        p
        for p in otel.metric_points("inprocserve.batch.queue_wait")
        if p.attributes["inprocserve.model.name"] == "own-values"
    ]
    assert wait.sum == pytest.approx(sum(values) / 2)


def test_the_recording_thread_is_closed_with_the_last_server(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    users = METRICS._recording._open  # servers other tests left open (none, unless one leaked)
    first, second = make_server(scale), make_server(scale)
    _queued(first, 2 * _recorder._WAKE_EVERY)
    assert METRICS.recording and len(_recording_threads()) == 1  # one thread for every server
    (thread,) = _recording_threads()
    first.close()
    assert METRICS.recording and thread.is_alive()  # the second server still uses it
    second.close()
    if users == 0:
        assert not METRICS.recording
        thread.join(timeout=30)
        assert not thread.is_alive()


def test_the_thread_stops_after_recording_what_is_pending() -> None:
    recorded: list[int] = []
    pending = [1, 2, 3]

    def record() -> None:
        while pending:
            recorded.append(pending.pop(0))

    recording = RecordingThread(record, name="test-recording")
    assert not recording.wake()  # nobody opened it: the caller records itself
    recording.open()
    assert recording.wake() and recording.running
    recording.close()
    assert not recording.running and recorded == [1, 2, 3]
    assert not [thread for thread in threading.enumerate() if thread.name == "test-recording"]
    recording.close()  # idempotent
    recording.open()
    pending.append(4)
    assert recording.wake()  # a server opened later gets a new thread
    recording.close()
    assert recorded == [1, 2, 3, 4]


def test_a_thread_that_outlives_the_close_is_never_doubled(caplog: pytest.LogCaptureFixture) -> None:
    release, started = threading.Event(), threading.Event()
    calls: list[int] = []

    def record() -> None:  # the first record hangs (a stuck exporter) until released
        calls.append(1)
        started.set()
        release.wait(timeout=30)

    recording = RecordingThread(record, name="test-stuck-recording")
    recording.open()
    assert recording.wake()
    assert started.wait(timeout=10)
    with caplog.at_level("WARNING", logger="inprocserve"):
        recording.close(timeout_s=0.05)  # it is still in record(): the close stops waiting
    assert "did not stop" in caplog.text
    recording.open()
    assert not recording.wake()  # the stuck one still runs: no second thread, the caller records
    assert len([t for t in threading.enumerate() if t.name == "test-stuck-recording"]) == 1
    release.set()
    (thread,) = [t for t in threading.enumerate() if t.name == "test-stuck-recording"]
    thread.join(timeout=30)
    assert not thread.is_alive()
    assert recording.wake()  # once it ended, a new one starts
    recording.close()


def test_a_failing_record_is_logged_and_the_thread_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[int] = []
    failed, recorded = threading.Event(), threading.Event()

    def record() -> None:
        calls.append(1)
        if len(calls) == 1:
            failed.set()
            raise RuntimeError("exporter broke")
        recorded.set()

    recording = RecordingThread(record, name="test-failing")
    recording.open()
    try:
        assert recording.wake()
        assert failed.wait(timeout=30)
        assert recording.wake()  # set after the failing call cleared the wake: never lost
        assert recorded.wait(timeout=30)
    finally:
        recording.close()
    assert "recording request durations failed" in caplog.text
    assert "exporter broke" in caplog.text


def test_a_source_removed_by_two_threads_at_once_is_removed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two closes of one server's telemetry (its close() and the exit's clean-up) may remove its source
    together: the one that finds it gone returns, and the recording thread is closed once for it."""

    def source() -> list[tuple[str, float, dict[str, Any]]]:
        return []

    class RemovedMeanwhile(list):  # type: ignore[type-arg]
        """A look for the source lets the other thread remove it first (where the race opened)."""

        def __contains__(self, item: object) -> bool:
            found = list.__contains__(self, item)
            if found:
                list.remove(self, item)  # (the other thread's removal)
            return found

    recording = RecordingThread(lambda: None, name="test-two-removals")
    recording.open()
    recording.open()  # (another server's use: must stay open)
    monkeypatch.setattr(METRICS, "_recording", recording)
    monkeypatch.setattr(METRICS, "_gauges", RemovedMeanwhile([source]))
    METRICS.remove_source(source)  # raised ValueError when checked and removed in two steps
    METRICS.remove_source(source)  # (the other thread's call, after: nothing left to do)
    assert list(METRICS._gauges) == [] and recording._open == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_records_on_a_thread_of_its_own(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    server = make_server(scale)
    _queued(server, 2 * _recorder._WAKE_EVERY)  # the parent's recording thread runs at the fork
    assert METRICS.recording
    parent_count, _ = _count(otel, "inprocserve.request.duration", "scale")

    def in_the_child() -> str:
        started = not METRICS.recording  # the parent's thread does not exist here
        _queued(server, 3 * _recorder._WAKE_EVERY)
        threads = len(_recording_threads())
        count, _ = _count(otel, "inprocserve.request.duration", "scale")
        server.close()
        return f"{started} {threads} {count}"

    report = run_in_forked_child(in_the_child, timeout_s=30).split()
    started, threads, count = report
    assert started == "True" and threads == "1"
    # the SDK's aggregation came with the fork; the child adds its own requests, each once
    assert int(count) == parent_count + 3 * _recorder._WAKE_EVERY
    after, _ = _count(otel, "inprocserve.request.duration", "scale")
    assert after == parent_count  # the child's requests are not the parent's


def test_a_child_forked_while_the_recording_thread_records_can_record(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    """A fork waits for a backlog being recorded: a child forked mid-record would inherit the SDK's locks
    held by the parent's recording thread, and hang at its first record of that metric."""
    server = make_server(scale)
    server.predict("scale", np.ones((1, 4), np.float32))
    recorder = server._routes["scale"].default.batcher.telemetry

    def in_the_child() -> str:
        for _ in range(100):
            recorder.request_finished(0.001, variant=None, error=None)
        otel.reader.get_metrics_data()  # records what is pending, and collects
        return "recorded"

    for turn in range(race_rounds(20, 60)):
        for _ in range(2000):  # a backlog: every 64th record wakes the recording thread, which records it
            recorder.request_finished(0.001, variant=None, error=None)
        time.sleep(0.001 * (turn % 5))  # (forks land at different points of its recording)
        assert run_in_forked_child(in_the_child, timeout_s=10) == "recorded"


def test_a_fork_hook_interrupted_midway_leaves_no_recorder_locked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The fork ignores an exception in its hook (a signal handler's, while the hook waits), then calls the
    parent's: a lock taken before the exception is released all the same."""
    taken, interrupted = Recorder("fork-hook-taken", 1), Recorder("fork-hook-interrupted", 1)

    class Interrupted:
        def acquire(self, timeout: float = -1) -> bool:
            raise KeyboardInterrupt

    monkeypatch.setattr(interrupted, "_draining", Interrupted())
    monkeypatch.setattr(METRICS, "_recorders", [taken, interrupted])
    with pytest.raises(KeyboardInterrupt):
        METRICS.hold_records()
    assert taken._draining.locked()
    METRICS.release_records()
    assert not taken._draining.locked()


def test_counters_are_exact_from_many_threads(otel: Otel) -> None:
    recorder = Recorder("tally", 5)
    barrier = threading.Barrier(8)

    def count() -> None:
        barrier.wait(timeout=30)
        for index in range(1000):
            recorder.cache_lookup("hit" if index % 4 else "miss")
            recorder.shed()

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    cache = {
        p.attributes["inprocserve.cache.result"]: p.value
        for p in otel.metric_points("inprocserve.cache.requests")
        if p.attributes["inprocserve.model.name"] == "tally"
    }
    assert cache == {"hit": 6000, "miss": 2000}
    (shed,) = [
        p for p in otel.metric_points("inprocserve.requests.shed") if p.attributes["inprocserve.model.name"] == "tally"
    ]
    assert shed.value == 8000


def test_a_tally_reports_a_cumulative_sum_like_a_counter() -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        tally = Tally(provider.get_meter("test"), "test.events", unit="{event}", description="events")
        tally.add(2, {"k": "a"})
        same = {"k": "a"}
        tally.add(1, same)  # an equal attribute set, another dict: the same series
        tally.add(5, {"k": "b"})
        with pytest.raises(ValueError, match="only grows"):
            tally.add(-1, {"k": "a"})
        data = reader.get_metrics_data()
        assert data is not None
        (metric,) = data.resource_metrics[0].scope_metrics[0].metrics
        assert metric.name == "test.events" and metric.unit == "{event}" and metric.data.is_monotonic
        assert {p.attributes["k"]: p.value for p in metric.data.data_points} == {"a": 3, "b": 5}
        tally.add(1, {"k": "b"})
        data = reader.get_metrics_data()
        assert data is not None
        points = data.resource_metrics[0].scope_metrics[0].metrics[0].data.data_points
        assert {p.attributes["k"]: p.value for p in points} == {"a": 3, "b": 6}
        assert tally.total({"k": "b"}) == 6 and tally.total({"k": "c"}) == 0
    finally:
        provider.shutdown()


def test_requests_the_loop_runs_itself_are_recorded_as_predict_records_them(
    otel: Otel, tmp_path: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    from inprocserve import _loop_batching

    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 1.0)  # the bound is not under test
    # nor is the streak a task gets answered at once for: on a loaded machine three calls outlast 1 ms, and
    # the last one then joins a group, which the loop runs as a batch of one (recorded as a batch)
    monkeypatch.setattr(_loop_batching, "LONE_STREAK_S", 60.0)
    # A model name of its own: the counts are read by name from a provider every test of the module shares,
    # and another test's server of "scale", freed by the collector meanwhile, sends the records it still held
    # (one batch more, in a CI run on a loaded machine)
    model = "scale-on-the-loop"
    save_model(build_scale_model(2.0), tmp_path, model, 1)
    server = make_server(tmp_path)
    x = np.ones((2, 4), np.float32)

    def settled() -> None:
        # A request a worker answered has its batch recorded, and its runner given back, only after the
        # answer: the next request found the runner taken and went the full way (a batch of one, recorded as a
        # batch), and the counts were read before the last record (seen in CI, two workers on two cores)
        batcher = server._registry.loaded[model][1].batcher
        assert batcher is not None
        wait_until(lambda: not batcher.adopted or batcher._pool.has_free())

    async def one_by_one() -> None:
        for _ in range(3):
            settled()
            await server.apredict(model, x)

    async def together() -> None:
        await asyncio.gather(*(server.apredict(model, x) for _ in range(3)))

    asyncio.run(one_by_one())  # (the first request of a process adopts the runners the full way)
    settled()
    METRICS.flush()
    before, before_rows = _count(otel, "inprocserve.batch.size", model)
    requests_before, _ = _count(otel, "inprocserve.request.duration", model)

    asyncio.run(one_by_one())  # each alone on its loop: answered at once, like predict's lone request
    METRICS.flush()
    count, rows = _count(otel, "inprocserve.batch.size", model)
    assert (count, rows) == (before, before_rows)  # not batches: each one's rows are on its span
    assert _count(otel, "inprocserve.request.duration", model)[0] - requests_before == 3

    asyncio.run(together())  # one iteration's three requests: merged, run by the loop as one batch
    METRICS.flush()
    count, rows = _count(otel, "inprocserve.batch.size", model)
    assert (count - before, rows - before_rows) == (1, 6)
    assert _count(otel, "inprocserve.request.duration", model)[0] - requests_before == 6


_RETIRED_WHILE_RECORDING = """
import gc
from opentelemetry import metrics
from opentelemetry.sdk.metrics import Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import AggregationTemporality, InMemoryMetricReader
from inprocserve._recorder import Recorder

reader = InMemoryMetricReader(preferred_temporality={Histogram: AggregationTemporality.DELTA})
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
serving = Recorder("fraud", 2)
recorded = 0
for threshold in range(1, 200):
    retired = Recorder("fraud", 1)  # a version unloaded with durations its queued requests left pending
    for _ in range(5):
        retired.request_finished(0.01, variant="stable", error=None)
    held = [retired]
    held.append(held)  # in a reference cycle, as a retired version is: freed by the cyclic collector
    del retired, held
    gc.set_threshold(threshold)  # the collector runs somewhere in the next requests' recording
    for variant in ("stable", "canary", "shadow"):
        serving.request_finished(0.01, variant=variant, error=None, lone=True)
        serving.record_pending()  # (recorded here, in the SDK's Histogram.record, where the collector runs)
    gc.set_threshold(700)
    gc.collect()
    data = reader.get_metrics_data()  # (deltas: the next records make their aggregations again)
    for metric in data.resource_metrics[0].scope_metrics[0].metrics:
        if metric.name == "inprocserve.request.duration":
            points = metric.data.data_points
            recorded += sum(p.count for p in points if p.attributes["inprocserve.model.version"] == 1)
print(recorded)
"""


def test_a_retired_versions_durations_reach_the_next_collection_wherever_the_collector_frees_it() -> None:
    # The garbage collector frees a retired version's recorder on whatever thread it runs on, at whatever
    # allocation: here, at every point of a request's recording in turn, inside the SDK's Histogram.record
    # too, where it holds the lock of the instrument the retired version's durations go to. Recording them
    # there hung that thread for good (and every thread recording a duration after it).
    try:
        result = run_python(_RETIRED_WHILE_RECORDING, timeout_s=60)
    except subprocess.TimeoutExpired:
        pytest.fail("recording a request's duration hung while the collector freed a retired version's recorder")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(199 * 5)  # every pending duration of every retired recorder, once
