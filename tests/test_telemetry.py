"""Spans and metrics through the OpenTelemetry SDK: in memory, and exported over OTLP/HTTP to a receiver
on loopback that decodes the protobuf payload, as a collector or Jaeger would receive it."""

from __future__ import annotations

import http.server
import io
import itertools
import json
import subprocess
import sys
import threading
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from opentelemetry import metrics, trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import ExplicitBucketHistogramAggregation, View
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import inprocserve
import inprocserve._errors
from inprocserve import InMemoryFlags, ModelConfig, RolloutConfig, VersionPolicy
from inprocserve._telemetry import (
    BATCH_SIZE_BUCKETS,
    DURATION_BUCKETS_S,
    OUTCOMES,
    SHADOW_DIFF_BUCKETS,
    Metrics,
    outcome,
    resident_memory_bytes,
)
from inprocserve.testing import build_gather_model, build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, HeldSession, ServerFactory, busy_inputs, occupy, version_status, wait_until


class _Switchboard(SpanProcessor):
    """Lets one test plug in an extra span processor (the OTLP exporter) on the process-wide provider; the
    otel fixture plugs its in-memory exporter in the same way, only while a test holds it."""

    def __init__(self) -> None:
        self.extra: SpanProcessor | None = None

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        if self.extra is not None:
            self.extra.on_start(span, parent_context)

    def on_end(self, span: ReadableSpan) -> None:
        if self.extra is not None:
            self.extra.on_end(span)


class Otel:
    def __init__(self) -> None:
        self.spans = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.switchboard = _Switchboard()
        # The global providers can be set once per process: a test that ran first in this process (under
        # pytest-xdist, any file) may have set an SDK tracer provider already; spans reach it as well.
        provider = trace.get_tracer_provider()
        if not isinstance(provider, TracerProvider):
            provider = TracerProvider()
            trace.set_tracer_provider(provider)
        # The provider stays for the rest of the process, whatever test files run next in it (under
        # pytest-xdist, any): the spans of theirs are not kept (thousands a file, never read).
        self.keeper = SimpleSpanProcessor(self.spans)
        self.keeping = _Switchboard()
        provider.add_span_processor(self.keeping)
        provider.add_span_processor(self.switchboard)
        assert not isinstance(metrics.get_meter_provider(), MeterProvider), (
            "a meter provider was set in this process before the otel fixture's: set it in a child process"
        )
        metrics.set_meter_provider(MeterProvider(metric_readers=[self.reader]))
        self.tracer = trace.get_tracer("tests")

    def finished(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans.get_finished_spans() if span.name == name]

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        points = []
        for resource in data.resource_metrics if data else []:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        points.extend(metric.data.data_points)
        return points


_OTEL: Otel | None = None


@pytest.fixture
def otel() -> Iterator[Otel]:
    global _OTEL
    if _OTEL is None:  # the global providers can be set once per process
        _OTEL = Otel()
    _OTEL.spans.clear()
    _OTEL.keeping.extra = _OTEL.keeper
    yield _OTEL
    _OTEL.keeping.extra = None
    _OTEL.switchboard.extra = None
    _OTEL.spans.clear()


@pytest.fixture
def scale(repository: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


def test_predict_span_is_a_child_of_the_web_request_span(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    server = make_server(scale)
    with otel.tracer.start_as_current_span("GET /score", kind=SpanKind.SERVER) as web:
        server.predict("scale", np.ones((3, 4), np.float32))
    (predict,) = otel.finished("inprocserve.predict")
    assert predict.parent is not None and predict.parent.span_id == web.get_span_context().span_id
    assert predict.context.trace_id == web.get_span_context().trace_id
    assert predict.kind == SpanKind.INTERNAL
    attributes = dict(predict.attributes or {})
    assert attributes["inprocserve.model.name"] == "scale"
    assert attributes["inprocserve.model.version"] == 2
    assert attributes["inprocserve.rollout.variant"] == "default"
    assert attributes["inprocserve.rollout.reason"] == "latest ready version"
    assert attributes["inprocserve.request.rows"] == 3
    assert attributes["inprocserve.batch.rows"] == 3
    assert attributes["inprocserve.batch.compute_s"] > 0
    assert attributes["inprocserve.request.queue_wait_s"] >= 0
    assert attributes["inprocserve.outcome"] == "ok"


def test_a_batch_span_links_to_every_request_it_served(
    otel: Otel, busy_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(busy_repository)
    blocker = occupy(server)
    parents = []
    futures = []
    for i in range(6):
        with otel.tracer.start_as_current_span(f"GET /item/{i}", kind=SpanKind.SERVER) as web:
            parents.append(web.get_span_context())
            futures.append(server.submit("busy", busy_inputs(1, seed=i)))
    blocker.result(timeout=60)
    for future in futures:
        future.result(timeout=60)
    wait_until(lambda: len(otel.finished("inprocserve.predict")) == 7)
    requests = {span.parent.span_id: span for span in otel.finished("inprocserve.predict") if span.parent}
    assert {p.span_id for p in parents} <= set(requests)
    # the worker ends the batch span after it has answered the batch: the callers may have their answers first
    wait_until(lambda: any(len(span.links) == 6 for span in otel.finished("inprocserve.batch")))
    merged = [span for span in otel.finished("inprocserve.batch") if len(span.links) == 6]
    assert len(merged) == 1, [len(span.links) for span in otel.finished("inprocserve.batch")]
    batch = merged[0]
    assert batch.parent is None  # links, not a fake parent
    assert {link.context.span_id for link in batch.links} == {requests[p.span_id].context.span_id for p in parents}
    assert dict(batch.attributes or {})["inprocserve.batch.requests"] == 6
    assert dict(batch.attributes or {})["inprocserve.batch.rows"] == 6


def test_a_batchs_compute_time_counts_every_run_of_it(otel: Otel, repository: Path, make_server: ServerFactory) -> None:
    """A queued request larger than max_batch_size runs in slices, and a failing batch's run raises: both
    ran, so the batch span's compute time and the batch.duration histogram (a record per run) are more than
    zero."""
    save_model(build_scale_model(2.0), repository, "sliced", 1)
    save_model(build_gather_model(table_rows=10), repository, "failing", 1)
    server = make_server(repository, config=ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4)))
    server.submit("sliced", np.ones((40, 4), np.float32)).result(timeout=60)
    with pytest.raises(inprocserve.InprocserveError):
        server.submit("failing", {"index": np.array([0, 10], np.int64)}).result(timeout=60)
    wait_until(lambda: len(otel.finished("inprocserve.batch")) == 2)
    for span in otel.finished("inprocserve.batch"):
        assert dict(span.attributes or {})["inprocserve.batch.compute_s"] > 0, span.attributes
    durations = {
        point.attributes["inprocserve.model.name"]: point
        for point in otel.metric_points("inprocserve.batch.duration")
        if point.attributes["inprocserve.model.name"] in ("sliced", "failing")
    }
    assert sorted(durations) == ["failing", "sliced"]
    assert all(point.sum > 0 for point in durations.values())
    # one record per session.run: the 40 rows ran in 10 slices of 4, the failing request in one run
    assert (durations["sliced"].count, durations["failing"].count) == (10, 1)


def test_errors_set_status_and_record_the_exception(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    server = make_server(scale)
    with pytest.raises(inprocserve.InvalidInputError):
        server.predict("scale", np.ones((1, 5), np.float32))
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("nope", np.ones((1, 4), np.float32))
    spans = otel.finished("inprocserve.predict")
    assert len(spans) == 2
    for span, error in zip(spans, ("InvalidInputError", "ModelNotFoundError"), strict=True):
        assert span.status.status_code == StatusCode.ERROR
        assert dict(span.attributes or {})["error.type"] == error
        assert [event.name for event in span.events] == ["exception"]


def test_flag_evaluations_are_span_events(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 100})
    config = ModelConfig(
        version_policy=VersionPolicy.all(),
        rollout=RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    server = make_server(scale, flags=flags, config=config)
    result = server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u1"})
    assert result.variant == "canary"
    (span,) = otel.finished("inprocserve.predict")
    events = [dict(event.attributes or {}) for event in span.events if event.name == "feature_flag.evaluation"]
    keys = {event["feature_flag.key"]: event for event in events}
    assert keys["scale.canary.percent"]["feature_flag.result.variant"] == "100.0"
    assert keys["scale.canary.percent"]["feature_flag.provider.name"] == "in-memory"
    assert keys["scale.kill"]["feature_flag.result.variant"] == "False"  # each value read, as text
    assert keys["scale.shadow.versions"]["feature_flag.result.variant"] == "[]"
    assert dict(span.attributes or {})["inprocserve.rollout.variant"] == "canary"
    flags.set("scale.kill", True)
    assert server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u1"}).variant == "stable"
    killed = otel.finished("inprocserve.predict")[-1]
    events = [dict(event.attributes or {}) for event in killed.events if event.name == "feature_flag.evaluation"]
    assert {event["feature_flag.key"]: event["feature_flag.result.variant"] for event in events} == {
        "scale.stable": "1.0",
        "scale.kill": "True",
    }
    assert {event["feature_flag.provider.name"] for event in events} == {"in-memory"}


def test_a_flag_value_with_no_text_still_ends_the_requests_span(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    # (a JSON flags file parses an int of 5000 digits; its str() raises, and the span was never ended)
    flags = InMemoryFlags({"scale.shadow.versions": [10**5000]})
    server = make_server(
        scale, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=ModelConfig(rollout=RolloutConfig(stable=1))
    )
    result = server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u1"})
    assert result.version == 1 and "shadows off: unusable flag" in result.reason
    (span,) = otel.finished("inprocserve.predict")
    events = [dict(event.attributes or {}) for event in span.events if event.name == "feature_flag.evaluation"]
    shown = {event["feature_flag.key"]: event["feature_flag.result.variant"] for event in events}
    assert shown["scale.shadow.versions"] == "list (which cannot be shown)"


def test_a_huge_flag_value_is_shown_in_the_span_at_a_cost_that_does_not_grow_with_it(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    # (str() of the whole value was made before it was cut: 100 ms a traced request for a million keys)
    flags = InMemoryFlags({"scale.shadow.versions": {str(i): 2 for i in range(1_000_000)}})
    server = make_server(
        scale, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=ModelConfig(rollout=RolloutConfig(stable=1))
    )
    server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u1"})
    otel.spans.clear()
    tracemalloc.start()
    try:
        server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u1"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    (span,) = otel.finished("inprocserve.predict")
    events = [dict(event.attributes or {}) for event in span.events if event.name == "feature_flag.evaluation"]
    shown = {event["feature_flag.key"]: event["feature_flag.result.variant"] for event in events}
    assert str(shown["scale.shadow.versions"]).startswith("{'0': 2, '1': 2, ")
    assert peak < 1_000_000, peak


def test_shadow_runs_get_their_own_span_linked_to_the_request(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    config = ModelConfig(
        version_policy=VersionPolicy.all(),
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
    )
    server = make_server(scale, config=config)
    server.predict("scale", np.ones((1, 4), np.float32))
    wait_until(lambda: len(otel.finished("inprocserve.shadow")) == 1)
    (shadow,) = otel.finished("inprocserve.shadow")
    (request,) = otel.finished("inprocserve.predict")
    assert [link.context.span_id for link in shadow.links] == [request.context.span_id]
    assert dict(shadow.attributes or {})["inprocserve.shadow.max_abs_diff"] == pytest.approx(1.0)


def test_every_instrument_records(
    otel: Otel, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    config = ModelConfig(batching=inprocserve.BatchingConfig(max_queue_rows=4, max_request_rows=3000))
    server = make_server(busy_repository, config=config)
    blocker = hold_session(server)
    with pytest.raises(inprocserve.DeadlineExceededError):
        server.predict("busy", busy_inputs(1), timeout_s=0.001)
    queued = [server.submit("busy", busy_inputs(1)) for _ in range(4)]
    with pytest.raises(inprocserve.QueueFullError):
        server.predict("busy", busy_inputs(1))
    gauges = {p.attributes["inprocserve.model.version"]: p.value for p in otel.metric_points("inprocserve.queue.depth")}
    assert gauges[1] > 0  # observed while requests were queued
    blocker.release()
    for future in queued:
        future.result(timeout=60)
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    durations = otel.metric_points("inprocserve.request.duration")
    outcomes: dict[str, int] = {}
    for point in durations:  # cumulative over the process: other tests' points are there too
        if point.attributes["inprocserve.model.name"] == "busy":
            outcome = point.attributes["inprocserve.outcome"]
            outcomes[outcome] = outcomes.get(outcome, 0) + point.count
    assert outcomes["ok"] >= 5 and outcomes["overloaded"] >= 1 and outcomes["deadline_exceeded"] >= 1
    for point in durations:  # bounded attributes only
        assert set(point.attributes) <= {
            "inprocserve.model.name",
            "inprocserve.model.version",
            "inprocserve.rollout.variant",
            "inprocserve.outcome",
            "error.type",
        }
        assert point.attributes["inprocserve.outcome"] in OUTCOMES
    assert sum(p.value for p in otel.metric_points("inprocserve.requests.shed")) >= 1
    assert sum(p.value for p in otel.metric_points("inprocserve.requests.deadline_exceeded")) >= 1
    assert max(p.max for p in otel.metric_points("inprocserve.batch.size")) >= 4
    assert sum(p.count for p in otel.metric_points("inprocserve.batch.duration")) >= 2
    waits = [
        p
        for p in otel.metric_points("inprocserve.batch.queue_wait")
        if p.attributes["inprocserve.model.name"] == "busy"
    ]
    assert sum(p.count for p in waits) >= 1 and max(p.max for p in waits) > 0  # the queued ones waited for the blocker
    events = {p.attributes["inprocserve.model.event"] for p in otel.metric_points("inprocserve.model.lifecycle")}
    assert "loaded" in events
    assert otel.metric_points("inprocserve.requests.in_flight")


def test_flag_failures_and_shadow_metrics(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    class Broken(InMemoryFlags):
        name = "broken"

        def get_number(self, key: str, default: float, context: Any) -> float:
            raise RuntimeError("down")

    server = make_server(scale, flags=Broken())
    server.predict("scale", np.ones((1, 4), np.float32))
    failures = [
        p
        for p in otel.metric_points("inprocserve.flags.failures")
        if p.attributes["feature_flag.provider.name"] == "broken"
    ]
    assert failures and failures[0].value >= 1
    config = ModelConfig(
        version_policy=VersionPolicy.all(),
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
    )
    shadowed = make_server(scale, config=config)
    shadowed.predict("scale", np.ones((1, 4), np.float32))
    wait_until(lambda: bool(otel.metric_points("inprocserve.shadow.comparisons")))
    results = {p.attributes["inprocserve.shadow.result"] for p in otel.metric_points("inprocserve.shadow.comparisons")}
    assert "agree" in results


class _Receiver(http.server.BaseHTTPRequestHandler):
    requests: ClassVar[list[ExportTraceServiceRequest]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        type(self).requests.append(message)
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def test_otlp_http_export_to_a_loopback_receiver(otel: Otel, busy_repository: Path, make_server: ServerFactory) -> None:
    _Receiver.requests = []
    receiver = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=receiver.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    exporter = OTLPSpanExporter(endpoint=f"http://127.0.0.1:{receiver.server_address[1]}/v1/traces", timeout=10)
    processor = BatchSpanProcessor(exporter, schedule_delay_millis=50)
    otel.switchboard.extra = processor
    try:
        server = make_server(busy_repository)
        blocker = occupy(server)
        futures = []
        for i in range(4):
            with otel.tracer.start_as_current_span(f"POST /score/{i}", kind=SpanKind.SERVER):
                futures.append(server.submit("busy", busy_inputs(1, seed=i)))
        with otel.tracer.start_as_current_span("POST /bad", kind=SpanKind.SERVER):
            bad = server.submit("busy", busy_inputs(1, index=99))
        blocker.result(timeout=60)
        for future in futures:
            future.result(timeout=60)
        with pytest.raises(inprocserve.InvalidInputError):
            bad.result(timeout=60)
        wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
        assert processor.force_flush(10_000)
    finally:
        otel.switchboard.extra = None
        processor.shutdown()
        receiver.shutdown()
        receiver.server_close()
    spans = [
        span
        for request in _Receiver.requests
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]
    by_id = {span.span_id: span for span in spans}
    web = {span.span_id: span for span in spans if span.name.startswith("POST ")}
    predicts = [span for span in spans if span.name == "inprocserve.predict" and span.parent_span_id in web]
    assert len(predicts) == 5  # web request span -> predict span, for each request
    for span in predicts:
        assert span.trace_id == web[span.parent_span_id].trace_id
        attributes = {kv.key: kv.value for kv in span.attributes}
        assert attributes["inprocserve.model.name"].string_value == "busy"
        assert attributes["inprocserve.model.version"].int_value == 1
    failed = [span for span in predicts if web[span.parent_span_id].name == "POST /bad"]
    assert failed[0].status.code == failed[0].status.STATUS_CODE_ERROR
    batches = [span for span in spans if span.name == "inprocserve.batch" and len(span.links) == 5]
    assert len(batches) == 1 or any(len(s.links) >= 2 for s in spans if s.name == "inprocserve.batch")
    linked = {link.span_id for span in spans if span.name == "inprocserve.batch" for link in span.links}
    assert {span.span_id for span in predicts} <= linked  # every request is linked from a batch that ran it
    assert all(link_target in by_id for link_target in linked)


def test_drift_gauges(otel: Otel, repository: Path, make_server: ServerFactory) -> None:
    from inprocserve._drift import drain

    save_model(build_scale_model(1.0), repository, "drifty", 1)
    config = ModelConfig(drift=inprocserve.DriftConfig(capture_reference=100, window=100))
    server = make_server(repository, config=config)
    rng = np.random.default_rng(0)
    for mean in (0.0, 0.0, 2.0):
        server.predict("drifty", rng.normal(mean, 1, (100, 4)).astype(np.float32))
        assert drain()
    points = [
        p for p in otel.metric_points("inprocserve.drift.psi") if p.attributes["inprocserve.model.name"] == "drifty"
    ]
    features = {p.attributes["inprocserve.drift.feature"]: p.value for p in points}
    assert features["x[0]"] > 0.2
    assert otel.metric_points("inprocserve.drift.ks")


def test_apredict_spans_follow_the_callers_task(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    import asyncio

    server = make_server(scale)

    async def handle(i: int) -> int:
        with otel.tracer.start_as_current_span(f"task {i}") as parent:
            await server.apredict("scale", np.ones((1, 4), np.float32))
            return parent.get_span_context().span_id

    async def main() -> list[int]:
        return await asyncio.gather(*(handle(i) for i in range(5)))

    parents = asyncio.run(main())
    spans = otel.finished("inprocserve.predict")
    assert sorted(span.parent.span_id for span in spans if span.parent) == sorted(parents)


def test_merged_apredict_requests_keep_a_span_each_linked_from_their_batch(
    otel: Otel, busy_repository: Path, make_server: ServerFactory
) -> None:
    """Tasks whose requests the loop merged into one queued request: each still has its own span in its own
    trace, with its own rows, and the batch span links to every one of them and counts them."""
    import asyncio

    server = make_server(busy_repository)
    blocker = occupy(server)

    async def handle(i: int) -> int:
        with otel.tracer.start_as_current_span(f"GET /item/{i}", kind=SpanKind.SERVER) as web:
            await server.apredict("busy", busy_inputs(1 + i % 2, seed=i))
            return web.get_span_context().span_id

    async def main() -> list[int]:
        return await asyncio.gather(*(handle(i) for i in range(4)))

    parents = asyncio.run(main())
    blocker.result(timeout=60)
    wait_until(lambda: len(otel.finished("inprocserve.predict")) == 5)
    requests = {span.parent.span_id: span for span in otel.finished("inprocserve.predict") if span.parent}
    assert set(parents) <= set(requests)
    for i, parent in enumerate(parents):
        attributes = dict(requests[parent].attributes or {})
        assert attributes["inprocserve.request.rows"] == 1 + i % 2
        assert attributes["inprocserve.batch.rows"] == 6
        assert attributes["inprocserve.request.queue_wait_s"] > 0
        assert attributes["inprocserve.outcome"] == "ok"
    # the worker ends the batch span after it has answered the batch: the tasks may have their answers first
    wait_until(lambda: any(len(span.links) == 4 for span in otel.finished("inprocserve.batch")))
    (batch,) = [span for span in otel.finished("inprocserve.batch") if len(span.links) == 4]
    assert {link.context.span_id for link in batch.links} == {requests[p].context.span_id for p in parents}
    assert dict(batch.attributes or {})["inprocserve.batch.requests"] == 4
    assert dict(batch.attributes or {})["inprocserve.batch.rows"] == 6


def test_histograms_carry_boundaries_made_for_their_units(otel: Otel, scale: Path, make_server: ServerFactory) -> None:
    server = make_server(scale)
    server.predict("scale", np.ones((3, 4), np.float32))
    (point, *_) = otel.metric_points("inprocserve.request.duration")
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS_S
    # a request of well under a second lands in a bucket below 1 s, not in the SDK default's first (le=5)
    assert sum(point.bucket_counts[: DURATION_BUCKETS_S.index(1.0) + 1]) >= 1
    # (the predict above ran on the shortest way, no batch: this one is queued and run by a worker. Without it
    # the test passed only after other tests in its process had recorded batches, and failed alone)
    server.submit("scale", np.ones((3, 4), np.float32)).result(timeout=30)
    (point, *_) = otel.metric_points("inprocserve.batch.size")
    assert tuple(point.explicit_bounds) == BATCH_SIZE_BUCKETS


def test_duration_boundaries_span_50us_to_10s_at_most_2x_apart() -> None:
    # histogram_quantile interpolates inside a bucket: within 2x of the truth only if neighbours are <= 2x apart
    assert DURATION_BUCKETS_S[0] == 0.00005 and DURATION_BUCKETS_S[-1] == 10.0
    ratios = [high / low for low, high in itertools.pairwise(DURATION_BUCKETS_S)]
    assert all(1 < ratio <= 2 for ratio in ratios), ratios
    assert BATCH_SIZE_BUCKETS[0] == 1 and BATCH_SIZE_BUCKETS[-1] >= 64  # the default max_batch_size
    assert SHADOW_DIFF_BUCKETS[0] == 0  # identical answers have a bucket of their own


def _local_points(provider: MeterProvider, reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


def test_an_application_view_overrides_the_advisory_boundaries() -> None:
    reader = InMemoryMetricReader()
    view = View(
        instrument_name="inprocserve.request.duration",
        aggregation=ExplicitBucketHistogramAggregation(boundaries=(0.1, 1.0)),
    )
    provider = MeterProvider(metric_readers=[reader], views=[view])
    try:
        instruments = Metrics(meter=provider.get_meter("inprocserve"))
        instruments.request_duration.record(0.003, {"inprocserve.model.name": "m"})
        instruments.batch_queue_wait.record(0.003, {"inprocserve.model.name": "m"})
        instruments.shadow_diff.record(0.0, {"inprocserve.model.name": "m"})
        (duration,) = _local_points(provider, reader, "inprocserve.request.duration")
        assert tuple(duration.explicit_bounds) == (0.1, 1.0)  # the application's View wins
        (wait,) = _local_points(provider, reader, "inprocserve.batch.queue_wait")
        assert tuple(wait.explicit_bounds) == DURATION_BUCKETS_S  # no View: the advisory boundaries
        (diff,) = _local_points(provider, reader, "inprocserve.shadow.max_abs_diff")
        assert tuple(diff.explicit_bounds) == SHADOW_DIFF_BUCKETS
        assert diff.bucket_counts[0] == 1  # an identical shadow answer counts in le=0
    finally:
        provider.shutdown()


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (None, "ok"),
        (inprocserve.InvalidInputError("bad"), "client_error"),
        (inprocserve.ModelNotFoundError("none"), "client_error"),
        (TypeError("inputs must be a mapping"), "client_error"),
        (inprocserve.QueueFullError("full"), "overloaded"),
        (inprocserve.OverloadedError("busy"), "overloaded"),
        (inprocserve.ServerClosedError("closed"), "unavailable"),
        (inprocserve.ControlStateUnknownError("the control file is damaged"), "unavailable"),
        (inprocserve.DeadlineExceededError("late"), "deadline_exceeded"),
        (inprocserve.InferenceError("onnxruntime failed"), "server_error"),
        (inprocserve.ModelLoadError("corrupt"), "server_error"),
        (inprocserve.ConfigurationError("bad setting"), "server_error"),
        (RuntimeError("a bug"), "server_error"),
    ],
)
def test_outcome_says_who_has_to_act(error: BaseException | None, expected: str) -> None:
    assert outcome(error) == expected
    assert expected in OUTCOMES


def test_every_library_error_has_an_outcome() -> None:
    for name in inprocserve._errors.__all__:
        error_class = getattr(inprocserve._errors, name)
        assert outcome(error_class("x")) in OUTCOMES


def build_multiple_of_3_model() -> onnx.ModelProto:
    """Accepts [batch, 4] but runs only when batch is a multiple of 3: other batches fail inside onnxruntime
    (a Reshape error, which the library translates to InferenceError: a server error, not the caller's)."""
    shape = numpy_helper.from_array(np.array([3, -1], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Flatten", ["r"], ["y"])],
        "multiple_of_3",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", None])],
        [shape],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def _outcomes(otel: Otel, model: str) -> dict[tuple[str, str | None], int]:
    counts: dict[tuple[str, str | None], int] = {}
    for point in otel.metric_points("inprocserve.request.duration"):
        if point.attributes["inprocserve.model.name"] == model:
            key = (point.attributes["inprocserve.outcome"], point.attributes.get("error.type"))
            counts[key] = counts.get(key, 0) + point.count
    return counts


def test_request_metrics_separate_client_errors_from_server_errors(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_multiple_of_3_model(), repository, "triples", 1)
    config = ModelConfig(
        batching=inprocserve.BatchingConfig(max_batch_size=3), warmup=inprocserve.WarmupConfig(enabled=False)
    )
    server = make_server(repository, config=config)
    server.predict("triples", np.ones((3, 4), np.float32))
    with pytest.raises(inprocserve.InvalidInputError):
        server.predict("triples", np.ones((3, 5), np.float32))
    with pytest.raises(inprocserve.InferenceError) as failed:
        server.predict("triples", np.ones((1, 4), np.float32))
    assert type(failed.value) is inprocserve.InferenceError
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("triples", np.ones((3, 4), np.float32), version=7)
    server.close()
    with pytest.raises(inprocserve.ServerClosedError):
        server.predict("triples", np.ones((3, 4), np.float32))
    assert _outcomes(otel, "triples") == {
        ("ok", None): 1,
        ("client_error", "InvalidInputError"): 1,
        ("server_error", "InferenceError"): 1,
        ("client_error", "ModelNotFoundError"): 1,
        ("unavailable", "ServerClosedError"): 1,
    }
    spans = {dict(span.attributes or {})["inprocserve.outcome"] for span in otel.finished("inprocserve.predict")}
    assert spans == {"ok", "client_error", "server_error", "unavailable"}


def build_heavy_model(mebibytes: int) -> onnx.ModelProto:
    """y = table[index] with a table of ``mebibytes`` MiB of float32: a model whose weights are its memory,
    and whose runs cost next to nothing."""
    rows = mebibytes * 1024 * 1024 // (4 * 4)
    table = np.arange(rows * 4, dtype=np.float32).reshape(rows, 4)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "index"], ["y"], axis=0)],
        "heavy",
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(table, "table")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


_MEMORY_CHILD = """
import json, sys
import inprocserve
with inprocserve.Server(sys.argv[1]) as server:
    models = server.status()["models"]
    print(json.dumps({name: models[name]["versions"]["1"]["memory_bytes"] for name in ("heavy", "light")}))
"""


@pytest.mark.skipif(resident_memory_bytes() is None, reason="resident memory is read from /proc/self/statm (Linux)")
def test_a_hot_reload_counts_the_replaced_copy_as_unloaded(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "reloaded", 1)
    server = make_server(repository)
    for factor in (2.0, 3.0):  # version 1's file rewritten: each refresh swaps in a new copy, the old one drains
        save_model(build_scale_model(factor), repository, "reloaded", 1)
        server.refresh()
    assert server.predict("reloaded", np.ones((1, 4), np.float32))["y"][0, 0] == 3.0
    events = {
        p.attributes["inprocserve.model.event"]: p.value
        for p in otel.metric_points("inprocserve.model.lifecycle")
        if p.attributes["inprocserve.model.name"] == "reloaded"
    }
    assert events == {"loaded": 3, "unloaded": 2}  # one copy in memory: loaded - unloaded
    server.close()
    events = {
        p.attributes["inprocserve.model.event"]: p.value
        for p in otel.metric_points("inprocserve.model.lifecycle")
        if p.attributes["inprocserve.model.name"] == "reloaded"
    }
    assert events == {"loaded": 3, "unloaded": 3}


def test_model_memory_is_the_resident_growth_while_a_version_loads(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_heavy_model(64), repository, "heavy", 1)
    save_model(build_scale_model(1.0), repository, "light", 1)
    # The sizes, in a new process: in this one, memory that earlier tests freed can take the new weights
    # without the resident set growing (the allocator keeps freed memory for reuse), and the growth read
    # there may be near zero.
    done = subprocess.run(
        [sys.executable, "-c", _MEMORY_CHILD, str(repository)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    sizes = json.loads(done.stdout.strip().splitlines()[-1])
    assert sizes["heavy"] >= 32 * 2**20, sizes  # the 64 MiB of weights, held at least once by its session(s)
    assert 0 <= sizes["light"] < sizes["heavy"]
    # The gauge reports what status() says, in this process too.
    server = make_server(repository)
    heavy = version_status(server, "heavy")["memory_bytes"]
    light = version_status(server, "light")["memory_bytes"]
    assert heavy is not None and light is not None and min(heavy, light) >= 0
    gauges = {
        point.attributes["inprocserve.model.name"]: point.value
        for point in otel.metric_points("inprocserve.model.memory")
        if point.attributes["inprocserve.model.name"] in {"heavy", "light"}
    }
    assert gauges == {"heavy": heavy, "light": light}


def test_the_cache_bytes_gauge_says_what_the_cache_holds(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0, features=16), repository, "wide", 1)
    cached = ModelConfig(cache=inprocserve.CacheConfig(enabled=True, max_bytes=64 * 2**10))
    server = make_server(repository, models={"wide": cached})
    for value in range(5):  # five answers of 16 KiB: three fit
        server.predict("wide", np.full((256, 16), value, np.float32))
    held = version_status(server, "wide")["cache"]["bytes"]
    assert 48 * 2**10 < held <= 64 * 2**10
    gauges = [
        point.value
        for point in otel.metric_points("inprocserve.cache.bytes")
        if point.attributes["inprocserve.model.name"] == "wide"
    ]
    assert gauges == [held]


def test_the_failed_versions_gauge_counts_a_version_failing_until_it_loads(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """What the ModelLoadFailed alert reads: the lifecycle counter's ``failed`` could not say a version still
    fails (one failed for good is not tried again, so its count never grows) nor that it loaded since (a copy
    in place fails once, then loads under the same count)."""
    save_model(build_scale_model(1.0), repository, "m", 1)
    save_model(build_scale_model(1.0), repository, "fine", 1)
    (repository / "m" / "2").mkdir()
    (repository / "m" / "2" / "model.onnx").write_bytes(b"half a model")
    server = make_server(repository, control_interval_s=None)

    def failing() -> dict[str, float]:
        return {
            point.attributes["inprocserve.model.name"]: point.value
            for point in otel.metric_points("inprocserve.model.failed_versions")
            if point.attributes["inprocserve.model.name"] in {"m", "fine"}
        }

    assert failing() == {"m": 1, "fine": 0}
    (repository / "m" / "2" / "model.onnx").unlink()
    save_model(build_scale_model(2.0), repository, "m", 2)
    assert server.refresh() == []
    assert failing() == {"m": 0, "fine": 0}


def _failed_versions(otel: Otel, name: str) -> float | None:
    values = [
        point.value
        for point in otel.metric_points("inprocserve.model.failed_versions")
        if point.attributes["inprocserve.model.name"] == name
    ]
    return values[0] if values else None


def test_the_failed_versions_gauge_leaves_out_a_version_the_policy_would_not_serve(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """Version 2 corrupt, then version 3 released and serving under ``latest``: version 2's failure stays
    recorded (its files unchanged, it is not tried again), but it would not serve if it loaded, and the alert on
    the gauge stayed on for good after a release that happened. Under ``all`` it would serve: still counted."""
    save_model(build_scale_model(1.0), repository, "m", 1)
    (repository / "m" / "2").mkdir()
    (repository / "m" / "2" / "model.onnx").write_bytes(b"half a model")
    server = make_server(repository, control_interval_s=None)
    assert _failed_versions(otel, "m") == 1
    save_model(build_scale_model(3.0), repository, "m", 3)
    assert server.refresh() == []
    assert server.predict("m", np.ones((1, 4), np.float32))["y"].tolist() == [[3.0] * 4]
    assert _failed_versions(otel, "m") == 0
    (repository / "m" / "config.toml").write_text('version_policy = "all"\n')
    server.refresh()
    assert _failed_versions(otel, "m") == 1


def test_the_failed_versions_gauge_leaves_out_a_model_unloaded_by_hand(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """refresh() neither loads nor forgets the versions of a model unloaded by hand: its failure counted, the
    alert stayed on for a model taken out of service on purpose."""
    save_model(build_scale_model(1.0), repository, "m", 1)
    (repository / "m" / "2").mkdir()
    (repository / "m" / "2" / "model.onnx").write_bytes(b"half a model")
    server = make_server(repository, control_interval_s=None)
    assert _failed_versions(otel, "m") == 1
    server.unload("m")
    server.refresh()
    assert _failed_versions(otel, "m") in (0, None)


def test_requests_for_unknown_models_share_one_metric_series(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """A caller's model name becomes a metric attribute only for a loaded model: each name sent for a model
    that is not loaded would otherwise add a series for the life of the process."""
    from inprocserve._request_telemetry import UNKNOWN_MODEL

    save_model(build_scale_model(2.0), repository, "known", 1)
    server = make_server(repository)
    names = [f"user-chosen-{index}" for index in range(25)]
    for name in names:
        with pytest.raises(inprocserve.ModelNotFoundError):
            server.predict(name, np.ones((1, 4), np.float32))
        with pytest.raises(inprocserve.ModelNotFoundError):
            server.submit(name, np.ones((1, 4), np.float32), version=3).result(timeout=30)
    from inprocserve import v2

    endpoints = v2.Endpoints(lambda: server)
    body = json.dumps({"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1] * 4}]}).encode()
    for number in range(9, 34):  # a known model: its own name, but not the caller's version numbers
        with pytest.raises(inprocserve.ModelNotFoundError):
            server.predict("known", np.ones((1, 4), np.float32), version=number)
        path = f"/v2/models/known/versions/{number}/infer"  # (refused before predict, by its URL)
        assert endpoints.handle("POST", path, {}, io.BytesIO(body).read).status == 404
        path = f"/v2/models/{names[number % len(names)]}/versions/{number}/infer"
        assert endpoints.handle("POST", path, {}, io.BytesIO(body).read).status == 404
    points = otel.metric_points("inprocserve.request.duration")
    seen = {point.attributes["inprocserve.model.name"] for point in points}
    assert not seen & set(names)
    assert _outcomes(otel, UNKNOWN_MODEL)[("client_error", "ModelNotFoundError")] >= 2 * len(names)
    assert _outcomes(otel, "known") == {("client_error", "ModelNotFoundError"): 50}
    versions = {
        (point.attributes["inprocserve.model.name"], point.attributes.get("inprocserve.model.version"))
        for point in points
        if point.attributes["inprocserve.model.name"] in {"known", UNKNOWN_MODEL}
    }
    assert versions == {("known", None), (UNKNOWN_MODEL, None)}  # one series each, whatever numbers were sent
    server.predict("known", np.ones((1, 4), np.float32), version=1)  # a version it serves keeps its number
    assert {
        point.attributes.get("inprocserve.model.version")
        for point in otel.metric_points("inprocserve.request.duration")
        if point.attributes["inprocserve.model.name"] == "known"
    } == {None, 1}


def test_v2_requests_refused_before_predict_are_recorded_like_its_refusals(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """The /v2 endpoints check a request's tensor headers before predict sees it: client-error alerts must
    still count those refusals, under the model's name (or the one name for models that are not loaded)."""
    from inprocserve import v2
    from inprocserve._request_telemetry import UNKNOWN_MODEL

    save_model(build_scale_model(2.0), repository, "v2refused", 1)
    endpoints = v2.Endpoints(lambda: make_server(repository))
    wrong_shape = json.dumps({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "FP32", "data": [1] * 5}]})
    body = wrong_shape.encode()
    unknown = ("client_error", "ModelNotFoundError")
    unknown_before = _outcomes(otel, UNKNOWN_MODEL).get(unknown, 0)
    assert endpoints.handle("POST", "/v2/models/v2refused/infer", {}, io.BytesIO(body).read).status == 400
    assert endpoints.handle("POST", "/v2/models/v2-no-such-model/infer", {}, io.BytesIO(body).read).status == 404
    assert _outcomes(otel, "v2refused") == {("client_error", "InvalidInputError"): 1}
    assert _outcomes(otel, UNKNOWN_MODEL).get(unknown, 0) == unknown_before + 1


def test_a_regression_shadow_past_its_max_abs_diff_disagrees(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """A regression model's shadow differs by numbers, not labels: without a bound every finite difference
    counted as ``agree``, so the ShadowDisagrees alert could never fire for one, however far off it was.
    ``rollout.shadow.max_abs_diff`` sets the bound."""
    for version, factor in ((1, 1.0), (2, 1.01), (3, 1.0)):  # version 2 is 1 % off, version 3 equal
        save_model(build_scale_model(factor), repository, "regressor", version)
    config = inprocserve.ModelConfig(
        rollout=inprocserve.RolloutConfig(
            stable=1, shadow=inprocserve.ShadowConfig(versions=(2, 3), max_abs_diff=0.001)
        ),
        version_policy=inprocserve.VersionPolicy.all(),
    )
    comparisons: list[inprocserve.ShadowComparison] = []
    server = make_server(repository, config=config, on_shadow=comparisons.append, shadow_budget=1.0)
    for _ in range(4):
        server.predict("regressor", np.ones((1, 4), np.float32))
    wait_until(lambda: len(comparisons) == 8)
    counted = {
        (point.attributes["inprocserve.shadow.version"], point.attributes["inprocserve.shadow.result"]): point.value
        for point in otel.metric_points("inprocserve.shadow.comparisons")
        if point.attributes["inprocserve.model.name"] == "regressor"
    }
    assert counted == {(2, "disagree"): 4, (3, "agree"): 4}
    shadow = server.status()["models"]["regressor"]["shadow"]
    assert (shadow["2"]["over_max_abs_diff"], shadow["3"]["over_max_abs_diff"]) == (4, 0)
    assert shadow["2"]["max_abs_diff"] == pytest.approx(0.01, rel=1e-3)


def _sheds_and_overloaded(otel: Otel, model: str) -> tuple[int, int]:
    """The shed counter and the requests finished "overloaded", for ``model`` (cumulative over the process)."""
    shed = sum(
        p.value
        for p in otel.metric_points("inprocserve.requests.shed")
        if p.attributes["inprocserve.model.name"] == model
    )
    overloaded = sum(
        p.count
        for p in otel.metric_points("inprocserve.request.duration")
        if p.attributes["inprocserve.model.name"] == model and p.attributes["inprocserve.outcome"] == "overloaded"
    )
    return shed, overloaded


def test_a_batch_job_waiting_for_room_in_the_queue_sheds_nobody(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    from .conftest import BUSY_WIDTH, build_busy_model

    save_model(build_busy_model(BUSY_WIDTH), repository, "nightly", 1)
    config = ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=8, max_queue_rows=8, max_request_rows=3000))
    server = make_server(repository, config=config)
    before = _sheds_and_overloaded(otel, "nightly")
    blocker = occupy(server, "nightly")
    others = [server.submit("nightly", busy_inputs(4, seed=seed)) for seed in (1, 2)]  # the queue is now full
    answers = list(server.predict_many("nightly", busy_inputs(20)))  # it waits for room, retrying its requests
    assert [len(answer["y"]) for answer in answers] == [8, 8, 4]
    assert blocker.done() and all(other.done() for other in others)
    # the job refused nobody, however often the queue turned its requests away
    assert _sheds_and_overloaded(otel, "nightly") == before
    # a caller refused by the full queue is still counted
    blocker = occupy(server, "nightly")
    others = [server.submit("nightly", busy_inputs(4, seed=seed)) for seed in (1, 2)]
    with pytest.raises(inprocserve.QueueFullError):
        server.predict("nightly", busy_inputs(1))
    assert _sheds_and_overloaded(otel, "nightly") == (before[0] + 1, before[1] + 1)


def test_a_batch_job_that_gives_up_on_a_full_queue_counts_one_shed(
    otel: Otel, repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from .conftest import BUSY_WIDTH, build_busy_model

    monkeypatch.setattr("inprocserve._scoring._QUEUE_FULL_PATIENCE_S", 0.0)  # gives up at the first retry
    save_model(build_busy_model(BUSY_WIDTH), repository, "impatient", 1)
    config = ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=8, max_queue_rows=8, max_request_rows=3000))
    server = make_server(repository, config=config)
    before = _sheds_and_overloaded(otel, "impatient")
    blocker = occupy(server, "impatient")  # a quarter of a second: far longer than the job's one retry
    others = [server.submit("impatient", busy_inputs(4, seed=seed)) for seed in (1, 2)]
    with pytest.raises(inprocserve.QueueFullError):
        list(server.predict_many("impatient", busy_inputs(20)))
    assert _sheds_and_overloaded(otel, "impatient") == (before[0] + 1, before[1] + 1)  # the job's refusal, once
    blocker.result(timeout=60)
    for other in others:
        other.result(timeout=60)


SERIES_OF_RELEASES = """
import shutil, sys
from pathlib import Path
import numpy as np
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.metrics.view import View

BY_MODEL = {"inprocserve.model.name", "inprocserve.rollout.variant", "inprocserve.outcome", "error.type"}
HISTOGRAMS = ("inprocserve.request.duration", "inprocserve.batch.size", "inprocserve.batch.duration",
              "inprocserve.batch.queue_wait")
views = [View(instrument_name=name, attribute_keys=BY_MODEL) for name in HISTOGRAMS] if sys.argv[2] == "view" else []
reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader], views=views))

import inprocserve
from inprocserve.testing import build_scale_model, save_model

if sys.argv[3:] == ["collect-midway"]:  # the cyclic collector runs between a flush's orphans and its recorders
    import gc
    from inprocserve import _telemetry
    record_orphans = _telemetry.Metrics._record_orphans
    def collecting(self, timeout_s):
        record_orphans(self, timeout_s)
        gc.collect()
    _telemetry.Metrics._record_orphans = collecting
    gc.disable()

repository = Path(sys.argv[1])
save_model(build_scale_model(1.0), repository, "scale", 1)
server = inprocserve.Server(repository, poll_interval_s=None)
for version in range(1, 11):  # ten releases, each hot-reloaded
    if version > 1:
        save_model(build_scale_model(float(version)), repository, "scale", version)
        shutil.rmtree(repository / "scale" / str(version - 1))
        server.refresh()
    for _ in range(3):
        server.predict("scale", np.ones((1, 4), np.float32))
durations = [
    metric
    for resource in reader.get_metrics_data().resource_metrics
    for scope in resource.scope_metrics
    for metric in scope.metrics
    if metric.name == "inprocserve.request.duration"
]
print(len(durations[0].data.data_points))
server.close()
"""


def test_each_released_version_keeps_its_series_and_the_view_the_docs_give_keeps_one_per_model(
    tmp_path: Path,
) -> None:
    """A worker that hot-reloads at every release exports one more set of series per version for its life
    (the SDK keeps every attribute set); docs/observability.md gives a View that drops the version from the
    histograms. Both halves as the docs say, each in a process of its own (a meter provider is set once)."""
    series = {}
    for views in ("none", "view"):
        repository = tmp_path / views
        repository.mkdir()
        run = subprocess.run(
            [sys.executable, "-c", SERIES_OF_RELEASES, str(repository), views],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert run.returncode == 0, run.stderr
        series[views] = int(run.stdout.strip())
    assert series == {"none": 10, "view": 1}


def test_a_retired_version_s_records_reach_the_export_the_collector_takes_its_recorder_during(
    tmp_path: Path,
) -> None:
    """The records of retired versions (their recorders freed by the cyclic garbage collector, which runs at
    whatever allocation) reach the export being collected when the collector runs in the middle of the flush
    before it: a flush that took its recorders after recording the orphans found such a recorder in neither, and
    its records missed that export (1 version's series of 10; a test run under load once saw 6)."""
    run = subprocess.run(
        [sys.executable, "-c", SERIES_OF_RELEASES, str(tmp_path), "none", "collect-midway"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert int(run.stdout.strip()) == 10


def test_a_shadow_copy_stopped_by_close_is_a_dropped_span_and_no_dropped_count(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    """docs/observability.md's span table: a copy stopped by the server's close is marked dropped on its span,
    and the metric, which says why copies drop, counts none of them (not one of its four reasons)."""
    from .test_shadow_close import SERVER_ARGS, save_versions, shadowed, start_long_shadow_run

    save_versions(repository)
    server = make_server(repository, config=shadowed(), **SERVER_ARGS)
    start_long_shadow_run(server)
    server.close()
    (shadow,) = otel.finished("inprocserve.shadow")
    assert (shadow.attributes or {}).get("inprocserve.shadow.dropped") is True
    dropped = otel.metric_points("inprocserve.shadow.dropped")
    assert not [point for point in dropped if point.attributes["inprocserve.model.name"] == "chain" and point.value]
    document = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    (row,) = [line for line in document.splitlines() if line.startswith("| `inprocserve.shadow.dropped` | shadow |")]
    assert "counts no copy of a retired version or a closing server" in row, row


def test_which_misuses_of_predict_the_outcomes_table_says_are_recorded(
    otel: Otel, scale: Path, make_server: ServerFactory
) -> None:
    """docs/observability.md's outcomes table: misuse of the API is a ``client_error``, except what is refused
    before a request starts (a model that is not a string, a timeout of 0 or less), which no request records."""
    server = make_server(scale)
    rows = np.ones((1, 4), np.float32)

    def recorded() -> Counter[tuple[str, str]]:
        return Counter(
            {
                (str(point.attributes.get("inprocserve.outcome")), str(point.attributes.get("error.type"))): point.count
                for point in otel.metric_points("inprocserve.request.duration")
                if point.attributes.get("inprocserve.model.name") in ("scale", "_unknown")
            }
        )

    refused: dict[str, Counter[tuple[str, str]]] = {}
    for name, call in {
        "version": lambda: server.predict("scale", rows, version="1"),  # type: ignore[arg-type]
        "model": lambda: server.predict(1, rows),  # type: ignore[arg-type]
        "timeout_s": lambda: server.predict("scale", rows, timeout_s=0.0),
    }.items():
        before = recorded()
        with pytest.raises((TypeError, ValueError)):
            call()
        refused[name] = recorded() - before
    assert refused == {
        "version": Counter({("client_error", "TypeError"): 1}),
        "model": Counter(),
        "timeout_s": Counter(),
    }
    document = (Path(__file__).resolve().parent.parent / "docs" / "observability.md").read_text()
    (row,) = [line for line in document.splitlines() if line.startswith("| `client_error` |")]
    assert "a `model` that is not a string, or a `timeout_s` of 0 or less, is refused before any request" in row, row
