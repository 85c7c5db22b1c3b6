"""OpenTelemetry spans and metrics: every name and attribute key lives here.

The library uses only ``opentelemetry-api``; the application chooses the SDK and exporters. With no SDK
configured, spans are no-op objects (well under a microsecond) and attribute work is skipped, because it
is guarded by ``span.is_recording()``. Attribute keys use the project namespace ``inprocserve.`` except
where OpenTelemetry's semantic conventions define one (``error.type``, ``feature_flag.*``). Metric
attributes are bounded: model, version, variant, outcome (six values, see ``outcome``), error class — never
user or request ids. Histograms carry bucket boundaries made for their units, as advisories a View overrides.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent import futures
from typing import TYPE_CHECKING, Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_state
from opentelemetry.trace import (
    INVALID_SPAN,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    get_current_span,
)

if TYPE_CHECKING:
    from ._recorder import Recorder

from . import _fork
from ._errors import (
    ControlStateUnknownError,
    DeadlineExceededError,
    InprocserveError,
    InvalidInputError,
    ModelNotFoundError,
    OverloadedError,
    ServerClosedError,
)
from ._flags import _value_shown
from ._record_thread import RecordingThread
from ._tally import Tally
from ._thread_values import ThreadValue
from ._weak_members import EndNotes, WeakMembers

_log = logging.getLogger(__name__)

__all__ = [
    "BATCH_SIZE_BUCKETS",
    "DURATION_BUCKETS_S",
    "METRICS",
    "OUTCOMES",
    "SHADOW_DIFF_BUCKETS",
    "SPAN_BATCH",
    "SPAN_PREDICT",
    "SPAN_SHADOW",
    "Metrics",
    "end_request_span",
    "outcome",
    "resident_memory_bytes",
    "end_safely",
    "start_batch_span",
    "start_request_span",
    "start_shadow_span",
    "unsampled_child_dropped",
]

_SCOPE = "inprocserve"

# -- span names and attribute keys ------------------------------------------------------------------------
SPAN_PREDICT = "inprocserve.predict"
SPAN_BATCH = "inprocserve.batch"
SPAN_SHADOW = "inprocserve.shadow"

ATTR_MODEL = "inprocserve.model.name"
ATTR_VERSION = "inprocserve.model.version"
ATTR_VARIANT = "inprocserve.rollout.variant"
ATTR_REASON = "inprocserve.rollout.reason"
ATTR_REQUEST_ROWS = "inprocserve.request.rows"
ATTR_QUEUE_WAIT = "inprocserve.request.queue_wait_s"
ATTR_COMPUTE = "inprocserve.batch.compute_s"
ATTR_BATCH_ROWS = "inprocserve.batch.rows"
ATTR_BATCH_REQUESTS = "inprocserve.batch.requests"
ATTR_OUTCOME = "inprocserve.outcome"
ATTR_SHADOW_VERSION = "inprocserve.shadow.version"
ATTR_SHADOW_DIFF = "inprocserve.shadow.max_abs_diff"
ATTR_SHADOW_AGREEMENT = "inprocserve.shadow.label_agreement"
ATTR_ERROR_TYPE = "error.type"  # semantic convention
ATTR_CACHE_RESULT = "inprocserve.cache.result"
CACHE_RESULTS = ("hit", "miss", "shared")

EVENT_FLAG = "feature_flag.evaluation"  # semantic convention (feature flags)
ATTR_FLAG_KEY = "feature_flag.key"
ATTR_FLAG_VARIANT = "feature_flag.result.variant"
ATTR_FLAG_PROVIDER = "feature_flag.provider.name"

# -- histogram bucket boundaries (advisory: an application's View for the instrument wins) ------------------
# Durations from 50 µs to 10 s in a 1-2-3-5 series: neighbouring boundaries are at most 2x apart, so
# Prometheus' histogram_quantile (linear within a bucket) is within 2x of the true quantile in that range.
# The SDK's default boundaries (0, 5, 10, 25 ... 10000) were made for milliseconds: every request in
# seconds fell into the first bucket and every quantile read about 5 s.
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005,
    0.001, 0.002, 0.003, 0.005,
    0.01, 0.02, 0.03, 0.05,
    0.1, 0.2, 0.3, 0.5,
    1.0, 2.0, 3.0, 5.0, 10.0,
)  # fmt: skip
# Rows per session.run: powers of two from 1 (a lone request) past the default max_batch_size (64) to 4096,
# since one request may bring many rows (up to max_request_rows).
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**exponent) for exponent in range(13))
# Largest absolute difference between a shadow's answer and the primary's: 0 (identical) and decades from
# float32 rounding (1e-6) to answers that have nothing in common (100).
SHADOW_DIFF_BUCKETS: tuple[float, ...] = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0)

# -- request outcomes (the bounded values of inprocserve.outcome) ------------------------------------------
OUTCOME_OK = "ok"
OUTCOME_CLIENT_ERROR = "client_error"  # the caller must change the request: InvalidInputError, ModelNotFoundError
OUTCOME_OVERLOADED = "overloaded"  # shed at capacity (OverloadedError): retry later, add capacity
OUTCOME_UNAVAILABLE = "unavailable"  # closing (ServerClosedError), or not yet following its control file: retry
OUTCOME_DEADLINE = "deadline_exceeded"  # no answer within the caller's timeout_s
OUTCOME_SERVER_ERROR = "server_error"  # the model or the library failed: InferenceError, anything unexpected
OUTCOMES = (
    OUTCOME_OK,
    OUTCOME_CLIENT_ERROR,
    OUTCOME_OVERLOADED,
    OUTCOME_UNAVAILABLE,
    OUTCOME_DEADLINE,
    OUTCOME_SERVER_ERROR,
)

_MAX_ATTRIBUTE_CHARS = 256  # flag values and reasons are cut, so no attribute grows without bound


# The API's proxy tracer forwards to the SDK's once the application installs a provider (even after this
# import) and caches it; asking the SDK for a tracer on every span would cost more than the span.
_TRACER = trace.get_tracer(_SCOPE)


def tracing() -> bool:
    """Whether the application installed a tracer provider. Until it does, even a no-op span costs more
    than this check, so the request path skips spans altogether."""
    return trace._TRACER_PROVIDER is not None


def metering() -> bool:
    """Whether the application installed a meter provider (metric records are skipped until then)."""
    return _metrics_state._METER_PROVIDER is not None


def outcome(error: BaseException | None) -> str:
    """The outcome of a request, one of ``OUTCOMES``: who has to act on a failure, not which class it was
    (that is ``error.type``). Alerts on model errors count ``server_error`` only, so callers' bad requests
    (their 4xx) never page the model's owners."""
    if error is None:
        return OUTCOME_OK
    if isinstance(error, (InvalidInputError, ModelNotFoundError)):
        return OUTCOME_CLIENT_ERROR
    if isinstance(error, OverloadedError):
        return OUTCOME_OVERLOADED
    if isinstance(error, ServerClosedError | ControlStateUnknownError):  # (retry elsewhere, or later)
        return OUTCOME_UNAVAILABLE
    if isinstance(error, DeadlineExceededError):
        return OUTCOME_DEADLINE
    if isinstance(error, (TypeError, ValueError)) and not isinstance(error, InprocserveError):
        return OUTCOME_CLIENT_ERROR  # misuse of the API (a bad argument), as docs/errors.md describes
    if isinstance(error, (asyncio.CancelledError, futures.CancelledError)):
        return OUTCOME_CLIENT_ERROR  # the caller gave up (a task cancelled, a client gone): nothing failed
    return OUTCOME_SERVER_ERROR


def resident_memory_bytes() -> int | None:
    """The process's resident set size now, from ``/proc/self/statm`` (Linux); ``None`` where that file
    does not exist or cannot be read (the per-version memory figure is then not reported)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        with open("/proc/self/statm", "rb") as statm:
            fields = statm.read().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _short(value: object) -> str:
    """``str(value)`` cut to an attribute's length. A value with no text is named by its type: a flag value
    of a list holding an int of 5000 digits (or an object whose ``__str__`` raises, from a hand-written
    provider) raised here, and the request's span was never ended (lost from its trace)."""
    try:
        text = str(value)
    except Exception:
        return f"{type(value).__name__} (which cannot be shown)"
    return text if len(text) <= _MAX_ATTRIBUTE_CHARS else text[: _MAX_ATTRIBUTE_CHARS - 1] + "…"


def start_request_span(
    model: str, attributes: Mapping[str, Any] | None = None, since: float | None = None, *, local: bool = False
) -> Span:
    """The span of one predict/submit/apredict call: a child of whatever span is current.

    No span is made (``INVALID_SPAN`` is returned) when the SDK would make a non-recording one for certain
    under an unsampled parent (see :func:`unsampled_child_dropped`); a root span that a trace-id ratio
    sampler drops is made without the SDK (see :class:`_RootSampling`). ``attributes`` (``{ATTR_MODEL:
    model}`` if omitted) lets a caller pass a dict it built once per model. ``since``: when the call began
    (``time.perf_counter()``), if it routed and validated the request before it asked for its span: the span
    starts then (the clock is read only for a span the SDK makes). ``local``: the request's version computes
    in this process, so its span is never sent on (no ``traceparent`` to a remote model server): a root span
    the trace-id ratio sampler drops is not made either (``INVALID_SPAN``, as under an unsampled parent;
    a dropped span's ids and objects cost a lone predict of a small model 7 µs of its CPU). A span
    processor or sampler that raises costs the request its span (``INVALID_SPAN``, the failure logged),
    never its answer."""
    if trace._TRACER_PROVIDER is None:
        return INVALID_SPAN
    try:
        parent = get_current_span().get_span_context()
        if parent.is_valid:
            if not parent.trace_flags.sampled and unsampled_child_dropped(remote=parent.is_remote):
                return INVALID_SPAN
        else:
            roots = _root_sampling()
            if roots is not None:
                return roots.start_span(
                    SPAN_PREDICT,
                    attributes if attributes is not None else {ATTR_MODEL: _short(model)},
                    since,
                    local=local,
                )
        # (a name not yet resolved is the caller's string, of any length: cut like every other attribute value)
        return _TRACER.start_span(
            SPAN_PREDICT,
            kind=SpanKind.INTERNAL,
            attributes=attributes if attributes is not None else {ATTR_MODEL: _short(model)},
            start_time=None if since is None else _wall_ns(since),
        )
    except Exception:
        _telemetry_failed("starting a request span")
        return INVALID_SPAN


def _wall_ns(since: float) -> int:
    """The wall-clock time (ns since the epoch, as spans take it) of the ``time.perf_counter()`` reading
    ``since``."""
    return time.time_ns() - round((time.perf_counter() - since) * 1e9)


class _RootSampling:
    """Root spans (of requests outside any trace, of batches, of shadow runs) under the OpenTelemetry SDK's
    ``TraceIdRatioBased`` root sampler (alone, or as the root sampler of ``ParentBased``: what
    ``OTEL_TRACES_SAMPLER=parentbased_traceidratio`` installs), decided before the SDK is asked for a span.

    That sampler's decision depends on the trace id alone (its low 64 bits against the sampler's ``bound``).
    So the library draws the id with the provider's own id generator and compares it as the sampler would.
    For a trace the sampler drops, the library makes the non-recording span the SDK would make (that trace
    id, a span id from the same generator, not sampled), without the SDK's tracer, sampler call and sampling
    result: a remote backend still receives a ``traceparent`` that says "not sampled". A span it samples is
    made by the SDK's own tracer for this scope, whose id generator hands out the id already drawn, so the
    SDK's sampler decides the same and the span is the SDK's: same trace id, sampler attributes, processors
    and limits. That sampler reads neither links nor attributes, so a batch's links (one per sampled
    request it served) are gathered only for a batch it samples, before the id is handed over (listing them
    may start other spans). While the SDK's tracer is switched off (its experimental tracer configurator),
    the SDK makes the span, as it would (an invalid one). (The SDK's optional self-monitoring metrics count
    no dropped root spans.)
    """

    __slots__ = ("_bound", "_enabled", "_ids", "_preset", "_random", "_tracer")

    def __init__(self, tracer: Any, preset: _PresetTraceIds, bound: int) -> None:
        self._tracer = tracer
        self._preset = preset
        self._ids = preset.ids
        self._bound = bound
        # the SDK's tracer may be switched off, and on again, at any time (its experimental tracer configurator):
        # then it makes an invalid span of its own, which it must be left to make
        self._enabled: Callable[[], bool] | None = getattr(tracer, "_is_enabled", None)
        random_ids = getattr(self._ids, "is_trace_id_random", None)
        # an API before the random-trace-id flag (1.30, 1.31: the floors) has no such flag, and its SDK sets none
        random_flag = getattr(TraceFlags, "RANDOM_TRACE_ID", 0)
        self._random = TraceFlags(random_flag if random_ids is not None and random_ids() else 0)

    def start_span(
        self,
        name: str,
        attributes: Mapping[str, Any],
        since: float | None = None,
        *,
        context: Context | None = None,
        links: Callable[[], Sequence[Link]] | None = None,
        local: bool = False,
    ) -> Span:
        """A root span named ``name``: the SDK's if its sampler samples it, else a non-recording one made
        here (``INVALID_SPAN`` if ``local``: nothing would read its ids, see :func:`start_request_span`).
        ``context``: passed to the SDK's tracer (``Context()`` for a span that must not take the current span
        as its parent); ``links``: called for a sampled span only."""
        enabled = self._enabled
        if enabled is not None and not enabled():
            span: Span = self._tracer.start_span(name, context=context, kind=SpanKind.INTERNAL)
            return span
        ids = self._ids
        trace_id = ids.generate_trace_id()
        if trace_id & _TRACE_ID_LIMIT >= self._bound:
            if local:
                return INVALID_SPAN
            span_id = ids.generate_span_id()
            return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=self._random))
        listed = None if links is None else links()  # (before the id is preset: listing may start spans too)
        preset = self._preset.preset
        preset.set(trace_id)
        try:
            span = self._tracer.start_span(
                name,
                context=context,
                kind=SpanKind.INTERNAL,
                attributes=attributes,
                links=listed,
                start_time=None if since is None else _wall_ns(since),
            )
        finally:
            preset.set(None)
        return span


class _PresetTraceIds:
    """The id generator of this library's SDK tracer: the provider's, except that a root span's trace id
    drawn in advance on this thread (``_RootSampling``) is used once."""

    def __init__(self, ids: Any) -> None:
        self.ids = ids
        # the trace id drawn in advance on this thread (not a threading.local: see _thread_values)
        self.preset: ThreadValue[int | None] = ThreadValue(None)

    def generate_trace_id(self) -> int:
        trace_id = self.preset.get()
        if trace_id is None:
            return int(self.ids.generate_trace_id())
        self.preset.set(None)
        return trace_id

    def generate_span_id(self) -> int:
        return int(self.ids.generate_span_id())

    def is_trace_id_random(self) -> bool:
        method = getattr(self.ids, "is_trace_id_random", None)
        return bool(method()) if method is not None else False


_TRACE_ID_LIMIT = (1 << 64) - 1  # the sampler compares the trace id's low 64 bits with its bound
# (provider, its _RootSampling or None): computed once per tracer provider (one is installed per process)
_root_rule: tuple[object, _RootSampling | None] = (None, None)
_root_rule_lock = threading.Lock()


def _root_sampling() -> _RootSampling | None:
    """The installed provider's :class:`_RootSampling`, or ``None`` when the SDK is to be asked for every
    root span (a provider or sampler other than the SDK's own, or a root sampler that is not
    ``TraceIdRatioBased``)."""
    global _root_rule
    provider = trace._TRACER_PROVIDER
    rule = _root_rule
    if rule[0] is not provider:
        with _root_rule_lock:  # threads making their first root spans together set it up once
            rule = _root_rule
            if rule[0] is not provider:
                rule = _root_rule = (provider, _sampling_of(provider))
    return rule[1]


def _sampling_of(provider: object) -> _RootSampling | None:
    """The :class:`_RootSampling` of ``provider``, or ``None`` (see :func:`_root_sampling`). Safe to call
    again for the same provider: the id generator installed the first time is kept and shared."""
    try:
        from opentelemetry.sdk.trace import Tracer as SdkTracer
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.sampling import ParentBased, ParentBasedTraceIdRatio, TraceIdRatioBased
    except ImportError:
        return None
    if type(provider) is not SdkTracerProvider:  # a subclass may make its spans its own way
        return None
    sdk_tracer = provider.get_tracer(_SCOPE)  # (the one the API's proxy tracer uses: cached per scope)
    if type(sdk_tracer) is not SdkTracer or not hasattr(sdk_tracer, "id_generator"):
        return None  # (a disabled provider's no-op tracer)
    sampler = getattr(sdk_tracer, "sampler", None)  # what the tracer decides with
    # exactly the SDK's samplers: a subclass may decide otherwise (force-sample an attribute, say)
    root = getattr(sampler, "_root", None) if type(sampler) in (ParentBased, ParentBasedTraceIdRatio) else sampler
    if type(root) is not TraceIdRatioBased or not isinstance(root.bound, int):
        return None
    with _preset_lock:
        installed: Any = sdk_tracer.id_generator
        preset = installed if isinstance(installed, _PresetTraceIds) else _PresetTraceIds(installed)
        setattr(sdk_tracer, "id_generator", preset)  # noqa: B010  # (typed as the SDK's IdGenerator)
    return _RootSampling(sdk_tracer, preset, root.bound)


_preset_lock = threading.Lock()


# What the installed SDK sampler does with a child of an unsampled parent: (provider, local, remote) where
# local/remote say "drops it for certain". Computed once per tracer provider (one is installed per process).
_sampling_rule: tuple[object, bool, bool] = (None, False, False)


def unsampled_child_dropped(*, remote: bool) -> bool:
    """Whether the installed tracer provider's sampler drops every child of an unsampled parent (a remote
    one: from a ``traceparent`` header; else local), whatever its name, attributes or trace id.

    True only for the OpenTelemetry SDK's ``ParentBased`` sampler whose sampler for that case is the static
    drop sampler (``ALWAYS_OFF``: the SDK's default, and what ``ParentBased(TraceIdRatioBased(r))`` uses),
    and for ``ALWAYS_OFF`` itself: exactly these classes, of the SDK's own provider (a subclass may decide
    otherwise). Then the SDK would make a non-recording span that nothing reads, at the cost of a span id
    and a sampler call, so the library makes none. With any other sampler (a custom one
    may record children of unsampled parents, or decide at random) the SDK is asked for every span.
    """
    global _sampling_rule
    provider = trace._TRACER_PROVIDER
    rule = _sampling_rule
    if rule[0] is not provider:
        rule = _sampling_rule = (provider, *_drops_unsampled_children(provider))
    return rule[2] if remote else rule[1]


def _drops_unsampled_children(provider: object) -> tuple[bool, bool]:
    try:
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.sampling import Decision, ParentBased, ParentBasedTraceIdRatio, StaticSampler
    except ImportError:  # a provider that is not the SDK's: ask it for every span
        return False, False
    if type(provider) is not SdkTracerProvider:  # a subclass may make its spans its own way
        return False, False
    sampler = getattr(provider, "sampler", None)

    # exactly the SDK's samplers: a subclass may decide otherwise (force-sample a debug header, say)
    def drops(candidate: object) -> bool:
        return type(candidate) is StaticSampler and getattr(candidate, "_decision", None) is Decision.DROP

    if drops(sampler):
        return True, True
    if type(sampler) in (ParentBased, ParentBasedTraceIdRatio):
        return (
            drops(getattr(sampler, "_local_parent_not_sampled", None)),
            drops(getattr(sampler, "_remote_parent_not_sampled", None)),
        )
    return False, False


def end_request_span(
    span: Span,
    *,
    version: int | None,
    variant: str | None,
    reason: str | None,
    rows: int,
    queue_wait_s: float | None,
    batch: Any,
    flags: Sequence[tuple[str, Any]],
    provider: str | None,
    error: BaseException | None,
) -> None:
    """Close a request's span with what became of the request. A failure in the SDK or in one of the
    application's span processors (``on_end`` raising) is logged, never raised: the request's answer is in,
    and its caller, and the other callers answered by the same thread, must still get theirs."""
    if span is INVALID_SPAN:
        return
    try:
        if span.is_recording():
            attributes: dict[str, Any] = {ATTR_REQUEST_ROWS: rows, ATTR_OUTCOME: outcome(error)}
            if version is not None:
                attributes[ATTR_VERSION] = version
            if variant is not None:
                attributes[ATTR_VARIANT] = variant
            if reason is not None:
                attributes[ATTR_REASON] = _short(reason)
            if queue_wait_s is not None:
                attributes[ATTR_QUEUE_WAIT] = queue_wait_s
            if batch is not None:
                attributes[ATTR_COMPUTE] = batch.compute_s
                attributes[ATTR_BATCH_ROWS] = batch.rows
            span.set_attributes(attributes)
            for key, value in flags:
                # (a value that is not text is shown cut short: str() of a million-item list or dict in the
                # wrong flag cost every traced request 60-100 ms, before its text was cut here)
                shown = value if isinstance(value, str) else _value_shown(value)
                event = {ATTR_FLAG_KEY: key, ATTR_FLAG_VARIANT: _short(shown)}
                if provider:
                    event[ATTR_FLAG_PROVIDER] = provider
                span.add_event(EVENT_FLAG, event)
            if error is not None:
                span.set_attribute(ATTR_ERROR_TYPE, type(error).__name__)
                span.record_exception(error, attributes={"exception.message": _short(error)})
                span.set_status(Status(StatusCode.ERROR, _short(error)))
        span.end()
    except Exception:
        _telemetry_failed("closing a request span")


def end_safely(span: Span, action: str) -> None:
    """``span.end()``, where the application's span processors run: their failure is logged (once per
    ``action``) and never fails what the library was doing."""
    try:
        span.end()
    except Exception:
        _telemetry_failed(action)


def add_safely(counter: Any, amount: float, attributes: Mapping[str, Any]) -> None:
    """``counter.add``, where the SDK and the application's views and readers run: their failure is logged
    (once) and never fails what the library was doing (loading a model, running a shadow, reading a flag)."""
    try:
        counter.add(amount, attributes)
    except Exception:
        _telemetry_failed("recording a metric")


def record_safely(histogram: Any, value: float, attributes: Mapping[str, Any]) -> None:
    """``histogram.record``, guarded like :func:`add_safely`."""
    try:
        histogram.record(value, attributes)
    except Exception:
        _telemetry_failed("recording a metric")


_failures_logged: set[str] = set()


def _telemetry_failed(action: str) -> None:
    """Log a failure of the OpenTelemetry SDK or of the application's span processors while ``action``:
    with its traceback the first time in this process, then at debug level (it would recur per request)."""
    if action in _failures_logged:
        _log.debug("%s failed; telemetry of this request is incomplete", action, exc_info=True)
        return
    _failures_logged.add(action)
    _log.exception(
        "%s failed (an OpenTelemetry span processor or exporter raised); requests are still answered, "
        "and later failures of this kind are logged at debug level",
        action,
    )


def start_batch_span(model: str, version: int, request_spans: Iterable[Span | None], *, local: bool = False) -> Span:
    """The span of one executed batch: a root span with a link to every request span it served (one batch
    serves many traces, so it cannot have one parent). Under a trace-id ratio root sampler a batch it drops
    costs no SDK call and no link (see :class:`_RootSampling`); ``local``: the version computes in this
    process, where nothing reads a dropped batch span's ids (they go to a remote server as its run's
    ``traceparent`` otherwise): ``INVALID_SPAN`` is returned for it, as :func:`start_request_span` does."""
    return _start_root_span(SPAN_BATCH, {ATTR_MODEL: model, ATTR_VERSION: version}, request_spans, local=local)


def _start_root_span(
    name: str, attributes: Mapping[str, Any], linked: Iterable[Span | None], *, local: bool = False
) -> Span:
    """A root span (never a child of the current span) linked to the sampled spans among ``linked`` (read
    once, and only for a span that may be recorded: pass a generator to defer the work of listing them)."""
    try:
        roots = _root_sampling()
        if roots is not None:
            return roots.start_span(name, attributes, context=Context(), links=lambda: _links(linked), local=local)
        return _TRACER.start_span(
            name, context=Context(), kind=SpanKind.INTERNAL, links=_links(linked), attributes=attributes
        )
    except Exception:  # a span processor or sampler raised: no span, and the batch or shadow still runs
        _telemetry_failed(f"starting an {name} span")
        return INVALID_SPAN


def _links(spans: Iterable[Span | None]) -> list[Link]:
    """Links to the sampled spans among ``spans``: a link to a span that no backend received leads nowhere,
    and each costs the SDK an object and a slot in the span's bounded link list."""
    links = []
    for span in spans:
        if span is not None:
            context = span.get_span_context()
            if context.trace_flags.sampled:
                links.append(Link(context))
    return links


def end_batch_span(span: Span, *, rows: int, requests: int, compute_s: float, error: BaseException | None) -> None:
    """Close a batch span (a span processor that raises loses the span, never the batch's metrics)."""
    try:
        if span.is_recording():
            span.set_attributes({ATTR_BATCH_ROWS: rows, ATTR_BATCH_REQUESTS: requests, ATTR_COMPUTE: compute_s})
            if error is not None:
                span.set_attribute(ATTR_ERROR_TYPE, type(error).__name__)
                span.set_status(Status(StatusCode.ERROR, _short(error)))
        span.end()
    except Exception:
        _telemetry_failed("closing an inprocserve.batch span")


def start_shadow_span(model: str, version: int, primary: Span | None) -> Span:
    """The span of one shadow run: a root span linked to the request span it mirrors, if that is sampled.
    Nothing reads its ids (a remote shadow version's call takes its batch span's ``traceparent``), so one that
    the trace-id ratio sampler drops is not made: ``INVALID_SPAN``, as for a local version's batch."""
    return _start_root_span(
        SPAN_SHADOW,
        {ATTR_MODEL: model, ATTR_SHADOW_VERSION: version},
        () if primary is None else (primary,),
        local=True,
    )


class Metrics:
    """The library's instruments (OpenTelemetry metrics API), created once per process.

    Instruments from the API's proxy meter start recording as soon as the application installs an SDK
    meter provider, even if that happens after the server was created. Every histogram carries advisory
    bucket boundaries chosen for what it measures; a View the application registers for the instrument
    overrides them.

    Args:
        meter: Where to create the instruments; the global meter provider's ``inprocserve`` meter if omitted.
    """

    def __init__(self, meter: metrics.Meter | None = None) -> None:
        meter = meter if meter is not None else metrics.get_meter(_SCOPE)
        self.request_duration = meter.create_histogram(
            "inprocserve.request.duration",
            unit="s",
            description="Time from predict() to its answer",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.batch_queue_wait = meter.create_histogram(
            "inprocserve.batch.queue_wait",
            unit="s",
            description="Time the longest-waiting request of a batch waited for the batch to start",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        self.batch_size = meter.create_histogram(
            "inprocserve.batch.size",
            unit="{row}",
            description="Rows per executed session.run",
            explicit_bucket_boundaries_advisory=BATCH_SIZE_BUCKETS,
        )
        self.batch_duration = meter.create_histogram(
            "inprocserve.batch.duration",
            unit="s",
            description="Time of one executed session.run (each slice of a request run in slices is one)",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
        )
        # Counted on the request path: plain integers the SDK reads at collection (see Tally)
        self.shed = Tally(
            meter, "inprocserve.requests.shed", unit="{request}", description="Requests refused with OverloadedError"
        )
        self.deadlines = Tally(
            meter,
            "inprocserve.requests.deadline_exceeded",
            unit="{request}",
            description="Requests past their deadline",
        )
        self.shadow = meter.create_counter(
            "inprocserve.shadow.comparisons", unit="{comparison}", description="Shadow runs by result"
        )
        self.shadow_diff = meter.create_histogram(
            "inprocserve.shadow.max_abs_diff",
            description="Largest absolute difference, shadow vs primary answer",
            explicit_bucket_boundaries_advisory=SHADOW_DIFF_BUCKETS,
        )
        self.shadow_dropped = meter.create_counter(
            "inprocserve.shadow.dropped",
            unit="{request}",
            description="Shadow copies dropped, by why: queue_full, no_spare_capacity, over_budget, too_large",
        )
        self.flag_failures = meter.create_counter(
            "inprocserve.flags.failures", unit="{evaluation}", description="Flag evaluations that failed or timed out"
        )
        self.cache = Tally(
            meter,
            "inprocserve.cache.requests",
            unit="{request}",
            description="Cache lookups by result (hit, miss, shared)",
        )
        self.lifecycle = meter.create_counter(
            "inprocserve.model.lifecycle", unit="{event}", description="Model versions loaded, failed, unloaded"
        )
        self.incompatible = meter.create_counter(
            "inprocserve.model.incompatible",
            unit="{version}",
            description="New versions held back from the default because their signature breaks callers",
        )
        self._gauges: list[Callable[[], Iterable[tuple[str, float, dict[str, Any]]]]] = []
        # (not a WeakSet: walked before a fork and at each collection while versions load: see _weak_members)
        self._recorders: WeakMembers[Recorder] = WeakMembers()
        self._recording = RecordingThread(self.record_pending, name="inprocserve-metrics")
        # recorders' locks a forking thread took (see hold_records; not a threading.local: see _thread_values)
        self._held_for_fork: ThreadValue[Sequence[threading.Lock]] = ThreadValue(())
        # pending records of recorders the garbage collector took, for the next flush (see watch_pending)
        self._orphans: deque[deque[Any]] = deque()
        self._pending_of: dict[int, deque[Any]] = {}  # each recorder's pending records, by its key
        self._collected = EndNotes()  # the recorders the collector took
        self._orphans_draining = threading.Lock()  # held by the one thread that records them
        _fork.register(self)
        meter.create_observable_gauge(
            "inprocserve.queue.depth", callbacks=[self._observe("queue")], unit="{row}", description="Rows queued"
        )
        meter.create_observable_gauge(
            "inprocserve.requests.in_flight",
            callbacks=[self._observe("in_flight")],
            unit="{request}",
            description="Requests accepted and not yet answered",
        )
        meter.create_observable_gauge(
            "inprocserve.drift.psi",
            callbacks=[self._observe("psi")],
            description="Population stability index of a feature over the last drift window",
        )
        meter.create_observable_gauge(
            "inprocserve.drift.ks",
            callbacks=[self._observe("ks")],
            description="Kolmogorov-Smirnov statistic of a feature over the last drift window",
        )
        meter.create_observable_gauge(
            "inprocserve.cache.bytes",
            callbacks=[self._observe("cache_bytes")],
            unit="By",
            description="Bytes the prediction cache's answers hold (bounded by cache.max_bytes)",
        )
        meter.create_observable_gauge(
            "inprocserve.model.failed_versions",
            callbacks=[self._observe("failed_versions")],
            unit="{version}",
            description="Versions of a model that failed to load and have not loaded since",
        )
        meter.create_observable_gauge(
            "inprocserve.model.memory",
            callbacks=[self._observe("memory")],
            unit="By",
            description="Growth of the process's resident memory while a model version loaded and warmed up",
        )

    def add_recorder(self, recorder: Recorder) -> None:
        """Flush ``recorder``'s pending records before every collection (kept while it is alive)."""
        self._recorders.add(recorder)

    def hold_records(self) -> None:
        """Before a fork: wait for any thread recording a version's backlog to finish (up to a second each),
        and keep others from starting until :meth:`release_records`. The SDK's aggregations take locks of
        their own while a record is made, and a child forked mid-record would inherit them held: its first
        record of that metric would wait forever. (A record a request's thread makes at that moment is not
        waited for: docs/observability.md says to set the SDK up after the fork.)"""
        # kept as each is taken: an exception here (a signal handler's), which the fork ignores, must not leave
        # one held for good; per forking thread
        held: list[threading.Lock] = []
        self._held_for_fork.set(held)
        if self._orphans_draining.acquire(timeout=_FORK_WAIT_S):
            held.append(self._orphans_draining)
        for recorder in list(self._recorders):
            lock = recorder._draining
            if lock.acquire(timeout=_FORK_WAIT_S):
                held.append(lock)

    def release_records(self) -> None:
        """After a fork, in the parent: let recording go on (see :meth:`hold_records`)."""
        held = self._held_for_fork.get()
        self._held_for_fork.set(())
        for lock in held:
            lock.release()

    def _after_fork_in_child(self) -> None:
        self._held_for_fork = ThreadValue(())  # (each recorder makes itself a new lock in the child)
        self._adopt_collected()
        self._orphans = deque()  # (the parent's to record)
        self._orphans_draining = threading.Lock()

    def watch_pending(self, recorder: Recorder, pending: deque[Any]) -> None:
        """Keep the records still pending in ``recorder`` once it is garbage-collected (a version unloaded or
        replaced between two collections), for the next :meth:`flush` to record.

        Nothing of it runs in the collection but C: the recorder's end is noted (:class:`EndNotes`), and its
        records are adopted by the next flush, or the next
        recorder made. The collector runs wherever it happens to: on any thread, maybe inside the SDK's
        ``Histogram.record`` while it holds the lock of the very instrument these records go to (recording
        them there waited for that lock on the thread that held it: the thread hung for good, and with it
        every thread that then recorded a request duration); or inside ``sys._current_frames()``, where
        Python code (a finalizer) may hand the GIL to a thread that then starts or ends and waits, with the
        GIL, for the runtime lock that call holds (CPython gh-106883: the process deadlocked)."""
        if self._collected:
            self._adopt_collected()
        self._pending_of[self._collected.watch(recorder)] = pending

    def _adopt_collected(self) -> None:
        """Move the pending records of the recorders the collector took to the orphans (normal code)."""
        for key in self._collected.take():
            pending = self._pending_of.pop(key, None)
            if pending:
                self._orphans.append(pending)

    def _record_orphans(self, timeout_s: float | None) -> None:
        """Record the adopted records (:meth:`watch_pending`), waiting up to ``timeout_s`` for a thread that
        records them now (``None``: skip them then; that thread takes them)."""
        if self._collected:
            self._adopt_collected()
        if not self._orphans:
            return
        lock = self._orphans_draining
        if not (lock.acquire(blocking=False) if timeout_s is None else lock.acquire(timeout=timeout_s)):
            return
        try:
            orphans = self._orphans
            while orphans:
                pending = orphans.popleft()
                for _ in range(len(pending)):
                    histogram, value, attributes = pending.popleft()
                    record_safely(histogram, value, attributes)
        finally:
            lock.release()

    def flush(self) -> None:
        """Record what every recorder holds: called by the SDK's collection, through the observable gauges'
        callback (the SDK runs those before it reads the synchronous instruments), so each export holds
        every request finished before it."""
        # The recorders are taken first: held here, none is collected until they are flushed. Taken after the
        # orphans, a recorder the collector took between the two (a retired version's, freed by the cyclic
        # collector at whatever allocation) was in neither, and its records missed this export.
        recorders = list(self._recorders)
        self._record_orphans(timeout_s=_FORK_WAIT_S)
        for recorder in recorders:
            recorder.flush()

    def record_pending(self) -> None:
        """Record what every recorder holds, skipping one that another thread is recording now (the
        recording thread's turn)."""
        recorders = list(self._recorders)  # (first: see flush)
        self._record_orphans(timeout_s=None)
        for recorder in recorders:
            recorder.record_pending()

    def wake_recording(self) -> bool:
        """Have the recording thread record the pending durations; False if there is none (no server open)."""
        return self._recording.wake()

    @property
    def recording(self) -> bool:
        """Whether the recording thread is running."""
        return self._recording.running

    def add_source(self, source: Callable[[], Iterable[tuple[str, float, dict[str, Any]]]]) -> None:
        """Register a callable yielding (gauge kind, value, attributes) for the observable gauges. Each
        ``Server`` registers one from its start to its close: while one is registered, the recording thread
        may run (see :class:`RecordingThread`), and the last removal closes it."""
        self._gauges.append(source)
        self._recording.open()

    def remove_source(self, source: Callable[[], Iterable[tuple[str, float, dict[str, Any]]]]) -> None:
        """Undo :meth:`add_source` (idempotent: of two threads removing one source, one closes its use of
        the recording thread; the check and the removal were two steps, and the second caller's raised)."""
        try:
            self._gauges.remove(source)  # (one step, atomic under the GIL)
        except ValueError:  # removed already
            return
        self._recording.close()

    def _observe(self, kind: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        # Two servers of one process may serve the same model version: the SDK keeps one value per attribute
        # set of a gauge, the last observed, so the first server's queue read 0 while the second stood idle.
        # Their rows queued, requests in flight and bytes held add up; a drift score is not a quantity: the
        # worst of them is the one to alert on.
        combine: Callable[[float, float], float] = max if kind in _WORST_OF else _add

        def callback(options: CallbackOptions) -> Iterable[Observation]:
            if kind == "queue":  # the first gauge's callback: once per collection
                self.flush()
            combined: dict[frozenset[tuple[str, Any]], list[Any]] = {}  # attribute set -> [value, attributes]
            for source in list(self._gauges):
                for gauge, value, attributes in source():
                    if gauge == kind:
                        key = frozenset(attributes.items())
                        entry = combined.get(key)
                        if entry is None:
                            combined[key] = [value, attributes]
                        else:
                            entry[0] = combine(entry[0], value)
            return [Observation(value, attributes) for value, attributes in combined.values()]

        return callback


_WORST_OF = frozenset({"psi", "ks", "failed_versions"})  # gauges whose values of several servers are not added:
# the largest is kept (two servers of one process failing the same version are one version failing)


def _add(first: float, second: float) -> float:
    return first + second


METRICS = Metrics()
_FORK_WAIT_S = 1.0  # how long a fork waits for a backlog being recorded (a stuck exporter is not waited for)
if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(before=METRICS.hold_records, after_in_parent=METRICS.release_records)
