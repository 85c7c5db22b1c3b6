"""What keeps telemetry cheap on the request path: no span where the SDK would make one that is never
recorded, links only to sampled spans, and per-version recorders whose metric records are complete."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import inject
from opentelemetry.sdk import trace as sdk_trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    ParentBasedTraceIdRatio,
    Sampler,
    SamplingResult,
    StaticSampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import INVALID_SPAN, Link, NonRecordingSpan, SpanContext, TraceFlags

import inprocserve
from inprocserve import _recorder, _telemetry
from inprocserve._recorder import Recorder
from inprocserve._telemetry import start_batch_span, start_request_span, start_shadow_span, unsampled_child_dropped

from .conftest import ServerFactory, wait_until
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


class _ForcedSampling(ParentBased):
    """An application's own rule on top of the SDK's: it samples every span, whatever its parent says."""

    def __init__(self) -> None:
        super().__init__(ALWAYS_ON)

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE)


class _OwnProvider(TracerProvider):
    """An application's own provider: it may make its spans its own way."""


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
        (_ForcedSampling(), (False, False)),  # a subclass of ParentBased decides by its own rule
    ],
)
def test_which_samplers_drop_every_child_of_an_unsampled_parent(sampler: Any, expected: tuple[bool, bool]) -> None:
    assert _telemetry._drops_unsampled_children(TracerProvider(sampler=sampler)) == expected


@pytest.mark.parametrize("provider", [None, object(), _OwnProvider(sampler=ParentBased(ALWAYS_ON))])
def test_only_the_sdks_own_provider_has_its_unsampled_children_dropped(provider: Any) -> None:
    assert _telemetry._drops_unsampled_children(provider) == (False, False)


def test_a_span_that_the_applications_own_sampler_records_is_made_under_an_unsampled_parent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=_ForcedSampling())
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    # (the library's tracer is the API's proxy, bound to the first provider it meets: this test's is not kept)
    monkeypatch.setattr(_telemetry, "_TRACER", provider.get_tracer(_telemetry._SCOPE))
    parent = SpanContext(0x42, 0x43, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(parent)))
    try:
        span = start_request_span("m", {"inprocserve.model.name": "m"})
    finally:
        otel_context.detach(token)
    span.end()
    assert [recorded.name for recorded in exporter.get_finished_spans()] == ["inprocserve.predict"]


class _SequenceIds(IdGenerator):
    """Trace ids spread over the sampler's whole range, in a known sequence (the ones drawn are kept)."""

    def __init__(self) -> None:
        self.drawn: list[int] = []
        self._spans = 0

    def generate_trace_id(self) -> int:
        trace_id = ((len(self.drawn) + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835) & ((1 << 128) - 1)
        self.drawn.append(trace_id)
        return trace_id

    def generate_span_id(self) -> int:
        self._spans += 1
        return self._spans


class _ForcingParentBased(ParentBased):
    """A user's sampler built on the SDK's: it may decide otherwise (here: always sample)."""

    def should_sample(self, *args: Any, **kwargs: Any) -> SamplingResult:
        return SamplingResult(Decision.RECORD_AND_SAMPLE)


@pytest.mark.parametrize(
    "sampler",
    [TraceIdRatioBased(0.25), ParentBased(TraceIdRatioBased(0.25)), ParentBasedTraceIdRatio(0.25)],
)
def test_a_root_request_span_is_made_exactly_when_the_sdk_would_sample_it(sampler: Sampler) -> None:
    """Under a trace-id ratio sampler the library decides a root span first, from a trace id drawn with the
    provider's own generator: the spans recorded are those the SDK's sampler samples, with those trace ids,
    made by the SDK itself; the others are the non-recording spans the SDK would make (that trace id, not
    sampled: what a remote backend's ``traceparent`` carries), made without it."""
    ids = _SequenceIds()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    roots = _telemetry._sampling_of(provider)
    assert roots is not None
    again = _telemetry._sampling_of(provider)  # set up again (threads racing): one id generator, shared
    assert again is not None
    if provider.get_tracer("inprocserve") is provider.get_tracer("inprocserve"):  # (an SDK before 1.3x makes
        assert again._preset is roots._preset  # a tracer per call, each with its own generator: nothing shared)
    made = [roots.start_span("inprocserve.predict", {"inprocserve.model.name": "m"}) for _ in range(400)]
    for span in made:
        span.end()
    assert len(ids.drawn) == 400  # one id per request, the SDK drew none of its own
    sampled = [
        sampler.should_sample(None, trace_id, "inprocserve.predict").decision.is_sampled() for trace_id in ids.drawn
    ]
    assert 50 < sum(sampled) < 150  # a quarter of them, give or take
    for span, trace_id, kept in zip(made, ids.drawn, sampled, strict=True):
        context = span.get_span_context()  # (ended already)
        assert context.is_valid and not context.is_remote and context.trace_id == trace_id
        assert context.trace_flags.sampled == kept
        assert isinstance(span, NonRecordingSpan) != kept
    exported = exporter.get_finished_spans()
    assert [span.context.trace_id for span in exported] == [
        t for t, kept in zip(ids.drawn, sampled, strict=True) if kept
    ]
    first = exported[0]
    assert first.name == "inprocserve.predict" and first.parent is None and first.context.trace_flags.sampled
    assert dict(first.attributes or {}) == {"inprocserve.model.name": "m"}
    assert len({span.get_span_context().span_id for span in made}) == 400  # span ids: the provider's too
    # any other tracer of the provider, and this library's own other spans, draw their ids as before
    provider.get_tracer("another.library").start_span("theirs").end()
    _telemetry._sampling_of(provider)._tracer.start_span("ours").end()  # type: ignore[union-attr]
    assert len(ids.drawn) == 402
    provider.shutdown()


def test_a_local_versions_dropped_root_request_span_is_not_made() -> None:
    """A version that computes in this process sends no span on (no ``traceparent`` to a remote server), so a
    root request span the sampler drops is not made at all (``INVALID_SPAN``: no span id, no objects). The
    sampled ones are the same: the SDK's, with the trace ids drawn, at the sampler's ratio."""
    ids = _SequenceIds()
    exporter = InMemorySpanExporter()
    sampler = ParentBased(TraceIdRatioBased(0.25))
    provider = TracerProvider(sampler=sampler, id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    roots = _telemetry._sampling_of(provider)
    assert roots is not None
    made = [roots.start_span("inprocserve.predict", {"inprocserve.model.name": "m"}, local=True) for _ in range(400)]
    for span in made:
        span.end()
    sampled = [
        sampler.should_sample(None, trace_id, "inprocserve.predict").decision.is_sampled() for trace_id in ids.drawn
    ]
    assert len(ids.drawn) == 400 and 50 < sum(sampled) < 150
    for span, kept in zip(made, sampled, strict=True):
        assert (span is INVALID_SPAN) != kept
    assert [span.context.trace_id for span in exporter.get_finished_spans()] == [
        t for t, kept in zip(ids.drawn, sampled, strict=True) if kept
    ]
    assert ids._spans == sum(sampled)  # span ids drawn for the sampled spans only
    provider.shutdown()


def test_a_local_versions_dropped_batch_spans_are_not_made(
    monkeypatch: pytest.MonkeyPatch, scale: Path, make_server: ServerFactory
) -> None:
    """A batch of a version that computes in this process is never a remote run's parent, so a batch span the
    trace-id ratio sampler drops is not made (no span id drawn for it). The sampled ones are recorded as
    before, one trace id drawn for each batch's decision."""
    ids = _SequenceIds()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.25)), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    server = make_server(scale)
    for _ in range(100):  # (submitted one at a time: a batch of one each, run by a worker, with its own span)
        server.submit("scale", np.ones((1, 4), np.float32)).result(timeout=30)
    batches = [span for span in exporter.get_finished_spans() if span.name == "inprocserve.batch"]
    assert 5 < len(batches) < 60  # a quarter of about 100 batches
    assert ids._spans == len(exporter.get_finished_spans())  # span ids were drawn for recorded spans only
    provider.shutdown()


def test_dropped_shadow_spans_are_not_made(
    monkeypatch: pytest.MonkeyPatch, scale: Path, make_server: ServerFactory
) -> None:
    """A shadow run's span is never a parent nor read for its ids, so one the trace-id ratio sampler drops is
    not made (no span id drawn for it); the sampled ones are recorded, linked to the request they mirror."""
    ids = _SequenceIds()
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.25)), id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    config = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        rollout=inprocserve.RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
    )
    server = make_server(scale, config=config, shadow_budget=1.0)  # (a loaded host's runs stay within it)

    def copies_handled() -> int:  # run, or dropped (the shadow's share of compute time is bounded)
        stats = server.status()["models"]["scale"]["shadow"].get("2", {})
        return int(stats.get("runs", 0) + sum(n for key, n in stats.items() if key.startswith("dropped_")))

    for sent in range(1, 101):  # one at a time: each copy is handled before the next request
        server.predict("scale", np.ones((1, 4), np.float32))
        wait_until(lambda: copies_handled() == sent)  # noqa: B023 (called at once, in the loop)
    runs = server.status()["models"]["scale"]["shadow"]["2"]["runs"]
    shadows = [span for span in exporter.get_finished_spans() if span.name == "inprocserve.shadow"]
    assert runs >= 50 and 0 < len(shadows) < runs  # about a quarter of the runs recorded, the rest dropped
    assert ids._spans == len(exporter.get_finished_spans())  # span ids were drawn for recorded spans only
    provider.shutdown()


# The library's root spans other than a request's: (name, its own attributes, how the library makes one
# linked to ``spans``), for a model "m" of version 3.
_LINKED_ROOTS = {
    "batch": (
        "inprocserve.batch",
        {"inprocserve.model.name": "m", "inprocserve.model.version": 3},
        lambda spans: start_batch_span("m", 3, spans),
    ),
    "shadow": (
        "inprocserve.shadow",
        {"inprocserve.model.name": "m", "inprocserve.shadow.version": 3},
        lambda spans: start_shadow_span("m", 3, next(iter(spans))),
    ),
}


@pytest.mark.parametrize("kind", sorted(_LINKED_ROOTS))
def test_a_batch_or_shadow_span_is_made_by_the_sdk_exactly_when_its_ratio_sampler_samples_it(
    monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A batch (or shadow) span is a root span: under a trace-id ratio sampler the library decides it first,
    as it decides a root request span, even inside a sampled span's context. The spans recorded are the
    SDK's, with their links; a dropped one costs no SDK call, and the spans it would link are never even
    listed."""
    name, attributes, make = _LINKED_ROOTS[kind]
    ids = _SequenceIds()
    exporter = InMemorySpanExporter()
    sampler = ParentBased(TraceIdRatioBased(0.25))
    provider = TracerProvider(sampler=sampler, id_generator=ids)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    request = TracerProvider().get_tracer("web").start_span("a sampled request")
    listed: list[int] = []
    links = _telemetry._links

    def counted_links(spans: Any) -> Any:
        listed.append(1)
        return links(spans)

    monkeypatch.setattr(_telemetry, "_links", counted_links)
    token = otel_context.attach(trace.set_span_in_context(request))
    try:
        made = [make(iter([request, INVALID_SPAN])) for _ in range(200)]
    finally:
        otel_context.detach(token)
    for span in made:
        span.end()
    assert len(ids.drawn) == 200  # one trace id per span, drawn by the provider's generator
    kept = [sampler.should_sample(None, trace_id, name).decision.is_sampled() for trace_id in ids.drawn]
    assert 20 < sum(kept) < 80
    assert len(listed) == sum(kept)  # links gathered for the sampled spans only
    for span, trace_id, sampled in zip(made, ids.drawn, kept, strict=True):
        if not sampled and kind == "shadow":  # nothing reads a shadow span's ids: a dropped one is not made
            assert span is INVALID_SPAN
            continue
        assert span.get_span_context().trace_id == trace_id and span.get_span_context().trace_flags.sampled == sampled
        assert isinstance(span, NonRecordingSpan) != sampled
    exported = exporter.get_finished_spans()
    assert [span.context.trace_id for span in exported] == [t for t, k in zip(ids.drawn, kept, strict=True) if k]
    for span in exported:
        assert span.name == name and span.parent is None  # a root, whatever span is current
        assert [link.context.span_id for link in span.links] == [request.get_span_context().span_id]
        assert dict(span.attributes or {}) == attributes
    provider.shutdown()


def test_a_span_started_while_a_batch_lists_its_links_does_not_take_the_batchs_trace_id() -> None:
    """The trace id drawn for a sampled batch is handed to the SDK's tracer once; a root span that the
    listing of its links starts on the same thread (a span processor, an instrumented ``__iter__``) draws its
    own."""
    ids = _SequenceIds()
    roots = _telemetry._sampling_of(TracerProvider(sampler=TraceIdRatioBased(1.0), id_generator=ids))
    assert roots is not None
    inner: list[Any] = []

    def listing() -> list[Link]:
        inner.append(roots._tracer.start_span("theirs", context=otel_context.Context()))
        return []

    batch = roots.start_span("inprocserve.batch", {}, context=otel_context.Context(), links=listing)
    (first, second) = ids.drawn
    assert batch.get_span_context().trace_id == first and batch.get_span_context().trace_flags.sampled
    assert inner[0].get_span_context().trace_id == second


class _SeededIds(IdGenerator):
    """Random trace and span ids from a seeded generator: two providers given the same seed draw the same."""

    def __init__(self, seed: int) -> None:
        self._random = random.Random(seed)

    def generate_trace_id(self) -> int:
        return self._random.getrandbits(128)

    def generate_span_id(self) -> int:
        return self._random.getrandbits(64)

    def is_trace_id_random(self) -> bool:
        return True


_tracer_off = getattr(sdk_trace, "_disable_tracer_configurator", None)  # (an experimental SDK option)


@pytest.mark.parametrize("tracer_on", [True, False])
def test_root_spans_decided_first_are_those_the_sdk_alone_makes(
    monkeypatch: pytest.MonkeyPatch, tracer_on: bool
) -> None:
    """Side by side with the SDK asked for every span (same sampler, same seeded ids): the same span and
    trace ids, flags and ``traceparent`` a remote backend would receive, and the same spans exported, for
    root request and batch spans; also when the SDK's tracer is switched off, where it makes invalid spans
    (no ``traceparent`` at all). (A dropped shadow span draws no span id, so later ids would differ: the
    test above compares shadow spans with the sampler's decisions.)"""
    if not tracer_on and _tracer_off is None:
        pytest.skip("this OpenTelemetry SDK has no tracer configurator to switch a tracer off")
    options: dict[str, Any] = {} if tracer_on else {"_tracer_configurator": _tracer_off}
    web = TracerProvider().get_tracer("web").start_span("a sampled web request")
    kinds = ["request", "batch"] * 150

    def provider() -> tuple[TracerProvider, InMemorySpanExporter]:
        exporter = InMemorySpanExporter()
        made = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.3)), id_generator=_SeededIds(7), **options)
        made.add_span_processor(SimpleSpanProcessor(exporter))
        return made, exporter

    def seen(span: Any) -> tuple[Any, dict[str, str]]:
        carrier: dict[str, str] = {}
        inject(carrier, context=trace.set_span_in_context(span))
        span.end()
        return span.get_span_context(), carrier

    def the_library(kind: str) -> Any:
        if kind == "request":  # outside any trace
            return start_request_span("m", {"inprocserve.model.name": "m"})
        token = otel_context.attach(trace.set_span_in_context(web))
        try:
            return _LINKED_ROOTS[kind][2](iter([web]))
        finally:
            otel_context.detach(token)

    def the_sdk_alone(tracer: Any, kind: str) -> Any:
        if kind == "request":
            return tracer.start_span("inprocserve.predict", attributes={"inprocserve.model.name": "m"})
        name, attributes, _ = _LINKED_ROOTS[kind]
        return tracer.start_span(
            name, context=otel_context.Context(), links=[Link(web.get_span_context())], attributes=attributes
        )

    ours, our_exports = provider()
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", ours)
    assert _telemetry._root_sampling() is not None  # decided first
    by_us = [seen(the_library(kind)) for kind in kinds]
    theirs, their_exports = provider()
    tracer = theirs.get_tracer(_telemetry._SCOPE)
    by_the_sdk = [seen(the_sdk_alone(tracer, kind)) for kind in kinds]
    assert by_us == by_the_sdk
    assert any(carrier for _, carrier in by_us) == tracer_on  # (a switched-off tracer propagates nothing)

    def exported(exporter: InMemorySpanExporter) -> list[Any]:
        return [
            (
                span.name,
                span.context,
                span.parent,
                span.kind,
                dict(span.attributes or {}),
                [link.context for link in span.links],
            )
            for span in exporter.get_finished_spans()
        ]

    assert exported(our_exports) == exported(their_exports)
    assert len(exported(our_exports)) > (50 if tracer_on else -1)
    ours.shutdown()
    theirs.shutdown()


@pytest.mark.parametrize(
    "sampler",
    [
        ALWAYS_ON,
        ALWAYS_OFF,
        ParentBased(ALWAYS_ON),
        ParentBased(_CoinSampler()),
        _CoinSampler(),
        _ForcingParentBased(TraceIdRatioBased(0.5)),
    ],
)
def test_other_samplers_are_asked_for_every_root_span(sampler: Sampler) -> None:
    assert _telemetry._sampling_of(TracerProvider(sampler=sampler)) is None


def test_a_provider_that_is_not_the_sdks_own_is_asked_for_every_root_span() -> None:
    class Custom(TracerProvider):
        pass

    assert _telemetry._sampling_of(Custom(sampler=TraceIdRatioBased(0.5))) is None
    assert _telemetry._sampling_of(trace.NoOpTracerProvider()) is None


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
    recorder.request_finished(0.004, variant="canary", error=None)
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


_RATIO_SAMPLED_PROCESS = """
import asyncio, sys
import numpy as np
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

sampler = ParentBased(TraceIdRatioBased(0.5))
exporter = InMemorySpanExporter()
provider = TracerProvider(sampler=sampler)
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)

import inprocserve
from inprocserve.testing import build_scale_model, save_model

save_model(build_scale_model(2.0), sys.argv[1], "scale", 1)
with inprocserve.Server(sys.argv[1]) as server:
    x = np.ones((1, 4), np.float32)
    for _ in range(150):
        server.predict("scale", x)

    async def main():
        for _ in range(50):
            await server.apredict("scale", x)
        await asyncio.gather(*(server.apredict("scale", x) for _ in range(50)))

    asyncio.run(main())
from inprocserve import _telemetry
assert _telemetry._root_sampling() is not None  # decided before the SDK is asked
spans = [s for s in exporter.get_finished_spans() if s.name == "inprocserve.predict"]
assert all(s.parent is None and s.attributes["inprocserve.request.rows"] == 1 for s in spans)
assert all(sampler.should_sample(None, s.context.trace_id, s.name).decision.is_sampled() for s in spans)
assert len({s.context.trace_id for s in spans}) == len(spans)
print(len(spans))
"""


def test_root_request_spans_of_a_ratio_sampled_process_are_complete_and_sampled_at_the_ratio(tmp_path: Path) -> None:
    """A process whose SDK samples half of all traces by trace id: predict's and apredict's request spans
    (roots here) are made for about half of the requests, each complete, each one the sampler samples."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _RATIO_SAMPLED_PROCESS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    made = int(done.stdout.split()[-1])
    assert 90 < made < 160  # half of 250, give or take (binomial: 125 +- 8)
