"""OpenTelemetry spans and metrics: every name and attribute key lives here.

The library uses only ``opentelemetry-api``; the application chooses the SDK and exporters. With no SDK
configured, spans are no-op objects (well under a microsecond) and attribute work is skipped, because it
is guarded by ``span.is_recording()``. Attribute keys use the project namespace ``inprocserve.`` except
where OpenTelemetry's semantic conventions define one (``error.type``, ``feature_flag.*``). Metric
attributes are bounded: model, version, variant, outcome — never user or request ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.metrics import _internal as _metrics_state
from opentelemetry.trace import INVALID_SPAN, Link, Span, SpanKind, Status, StatusCode

__all__ = [
    "METRICS",
    "SPAN_BATCH",
    "SPAN_PREDICT",
    "SPAN_SHADOW",
    "Metrics",
    "end_request_span",
    "start_batch_span",
    "start_request_span",
    "start_shadow_span",
    "tracer",
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

EVENT_FLAG = "feature_flag.evaluation"  # semantic convention (feature flags)
ATTR_FLAG_KEY = "feature_flag.key"
ATTR_FLAG_VARIANT = "feature_flag.result.variant"
ATTR_FLAG_PROVIDER = "feature_flag.provider.name"

_MAX_ATTRIBUTE_CHARS = 256  # flag values and reasons are cut, so no attribute grows without bound


# The API's proxy tracer forwards to the SDK's once the application installs a provider (even after this
# import) and caches it; asking the SDK for a tracer on every span would cost more than the span.
_TRACER = trace.get_tracer(_SCOPE)


def tracer() -> trace.Tracer:
    return _TRACER


def tracing() -> bool:
    """Whether the application installed a tracer provider. Until it does, even a no-op span costs more
    than this check, so the request path skips spans altogether."""
    return trace._TRACER_PROVIDER is not None


def metering() -> bool:
    """Whether the application installed a meter provider (metric records are skipped until then)."""
    return _metrics_state._METER_PROVIDER is not None


def _short(value: object) -> str:
    text = str(value)
    return text if len(text) <= _MAX_ATTRIBUTE_CHARS else text[: _MAX_ATTRIBUTE_CHARS - 1] + "…"


def start_request_span(model: str) -> Span:
    """The span of one predict/submit/apredict call: a child of whatever span is current."""
    if trace._TRACER_PROVIDER is None:
        return INVALID_SPAN
    return _TRACER.start_span(SPAN_PREDICT, kind=SpanKind.INTERNAL, attributes={ATTR_MODEL: model})


def end_request_span(
    span: Span,
    *,
    version: int | None,
    variant: str | None,
    reason: str | None,
    rows: int,
    queue_wait_s: float | None,
    batch: Any,
    flags: Sequence[tuple[str, str]],
    provider: str | None,
    error: BaseException | None,
) -> None:
    if span is INVALID_SPAN:
        return
    if span.is_recording():
        attributes: dict[str, Any] = {ATTR_REQUEST_ROWS: rows, ATTR_OUTCOME: "ok" if error is None else "error"}
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
            event = {ATTR_FLAG_KEY: key, ATTR_FLAG_VARIANT: _short(value)}
            if provider:
                event[ATTR_FLAG_PROVIDER] = provider
            span.add_event(EVENT_FLAG, event)
        if error is not None:
            span.set_attribute(ATTR_ERROR_TYPE, type(error).__name__)
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, _short(error)))
    span.end()


def start_batch_span(model: str, version: int, request_spans: Iterable[Span | None]) -> Span:
    """The span of one executed batch: a root span with a link to every request span it served (one batch
    serves many traces, so it cannot have one parent)."""
    links = [Link(span.get_span_context()) for span in request_spans if span is not None]
    return _TRACER.start_span(
        SPAN_BATCH,
        context=Context(),
        kind=SpanKind.INTERNAL,
        links=links,
        attributes={ATTR_MODEL: model, ATTR_VERSION: version},
    )


def end_batch_span(span: Span, *, rows: int, requests: int, compute_s: float, error: BaseException | None) -> None:
    if span.is_recording():
        span.set_attributes({ATTR_BATCH_ROWS: rows, ATTR_BATCH_REQUESTS: requests, ATTR_COMPUTE: compute_s})
        if error is not None:
            span.set_attribute(ATTR_ERROR_TYPE, type(error).__name__)
            span.set_status(Status(StatusCode.ERROR, _short(error)))
    span.end()


def start_shadow_span(model: str, version: int, primary: Span | None) -> Span:
    links = [Link(primary.get_span_context())] if primary is not None else []
    return tracer().start_span(
        SPAN_SHADOW,
        context=Context(),
        kind=SpanKind.INTERNAL,
        links=links,
        attributes={ATTR_MODEL: model, ATTR_SHADOW_VERSION: version},
    )


class Metrics:
    """The library's instruments (OpenTelemetry metrics API), created once per process.

    Instruments from the API's proxy meter start recording as soon as the application installs an SDK
    meter provider, even if that happens after the server was created.
    """

    def __init__(self) -> None:
        meter = metrics.get_meter(_SCOPE)
        self.request_duration = meter.create_histogram(
            "inprocserve.request.duration", unit="s", description="Time from predict() to its answer"
        )
        self.queue_wait = meter.create_histogram(
            "inprocserve.request.queue_wait", unit="s", description="Time a request waited for its batch to start"
        )
        self.batch_size = meter.create_histogram(
            "inprocserve.batch.size", unit="{row}", description="Rows per executed session.run"
        )
        self.batch_duration = meter.create_histogram(
            "inprocserve.batch.duration", unit="s", description="Time of one session.run of a merged batch"
        )
        self.shed = meter.create_counter(
            "inprocserve.requests.shed", unit="{request}", description="Requests refused with OverloadedError"
        )
        self.deadlines = meter.create_counter(
            "inprocserve.requests.deadline_exceeded", unit="{request}", description="Requests past their deadline"
        )
        self.shadow = meter.create_counter(
            "inprocserve.shadow.comparisons", unit="{comparison}", description="Shadow runs by result"
        )
        self.shadow_diff = meter.create_histogram(
            "inprocserve.shadow.max_abs_diff", description="Largest absolute difference, shadow vs primary answer"
        )
        self.shadow_dropped = meter.create_counter(
            "inprocserve.shadow.dropped",
            unit="{request}",
            description="Shadow copies dropped (queue full, no capacity)",
        )
        self.flag_failures = meter.create_counter(
            "inprocserve.flags.failures", unit="{evaluation}", description="Flag evaluations that failed or timed out"
        )
        self.cache = meter.create_counter(
            "inprocserve.cache.requests", unit="{request}", description="Cache lookups by result (hit, miss, shared)"
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

    def add_source(self, source: Callable[[], Iterable[tuple[str, float, dict[str, Any]]]]) -> None:
        """Register a callable yielding (gauge kind, value, attributes) for the observable gauges."""
        self._gauges.append(source)

    def remove_source(self, source: Callable[[], Iterable[tuple[str, float, dict[str, Any]]]]) -> None:
        if source in self._gauges:
            self._gauges.remove(source)

    def _observe(self, kind: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            for source in list(self._gauges):
                for gauge, value, attributes in source():
                    if gauge == kind:
                        yield Observation(value, attributes)

        return callback


METRICS = Metrics()
