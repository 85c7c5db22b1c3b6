"""Telemetry of one request: its span closed and its metrics recorded, with attribute sets built once per
model / version / variant / outcome rather than per request."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from opentelemetry.metrics import _internal as _metrics_state
from opentelemetry.trace import INVALID_SPAN, set_span_in_context

from ._errors import DeadlineExceededError, OverloadedError
from ._recorder import _RECORD_TAKES_CONTEXT, Recorder
from ._request import BatchTiming, Request
from ._rollout import Decision
from ._telemetry import METRICS, _telemetry_failed, end_request_span, metering, outcome

__all__ = ["UNKNOWN_MODEL", "RequestTelemetry"]

UNKNOWN_MODEL = "_unknown"
"""The ``inprocserve.model.name`` of a request refused because no loaded model has the name it asked for:
the caller's string (``/v2/models/<anything>/infer``) would give every metric one series per name sent."""


class RequestTelemetry:
    """Closes request spans and records request metrics for one server. Thread-safe (the attribute cache
    is a dict filled idempotently)."""

    def __init__(self) -> None:
        self._cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.served: Callable[[str], bool] = _any_name
        """Whether the server has served a model of that name: a refusal of any other name is recorded as
        :data:`UNKNOWN_MODEL` (the server sets it to a lookup of the names it has routed)."""
        self.served_version: Callable[[tuple[str, int]], bool] = _any_version
        """Whether the server has served that ``(name, version)``: a refusal of another version number is
        recorded without one (the server sets it to a lookup of the versions it has routed)."""

    def cache_result(self, recorder: Recorder, result: str) -> None:
        """Count a cache lookup: ``hit``, ``miss`` or ``shared`` (followed an identical request in flight)."""
        recorder.cache_lookup(result)

    def answered(
        self, request: Request, error: BaseException | None, elapsed_s: float, recorder: Recorder | None
    ) -> None:
        """Close the request's span and record its metrics: through the answering version's ``recorder``
        (attribute sets built once; durations left to the recording thread, except a lone request's, never
        queued), or, for a version already unloaded, directly."""
        route = request.route
        model, version, variant = route.model, route.version, route.variant
        queue_wait_s = request.queue_wait_s if request.batch is not None else None
        sampled = _sampled(request.span)  # (asked before the span ends: an ended span records nothing)
        _end_span(request.span, route.decision, version, request.rows, queue_wait_s, request.batch, error)
        if recorder is not None:  # each request's queue wait is on its span; the metric is per batch
            # a synchronous caller's request never queued ran (or was answered) on the caller's thread, which
            # records it there, in a row with others (see Recorder)
            lone = request.future is None and not request.enqueued_at
            recorder.request_finished(
                elapsed_s, variant=variant, error=error, span=request.span if sampled else None, lone=lone
            )
            return
        if not metering():
            return
        if isinstance(error, DeadlineExceededError):
            METRICS.deadlines.add(1, self.attributes(model, version))
        context = set_span_in_context(request.span) if sampled else None
        _record_duration(elapsed_s, self.attributes(model, version, variant, error, finished=True), context)

    def plain_answered(
        self,
        span: Any,
        decision: Decision,
        version: int,
        rows: int,
        timing: BatchTiming | None,
        error: BaseException | None,
        elapsed_s: float,
        recorder: Recorder,
        queue_wait_s: float = 0.0,
        *,
        lone: bool = False,
    ) -> None:
        """Close the span and record the metrics of a request that had no :class:`Request` of its own: one
        that took :meth:`Server.predict`'s shortest way (``lone``: run at once on its caller's thread, which
        records its duration itself, see :class:`Recorder`), or one of the requests an event loop merged into
        one (``queue_wait_s``: how long theirs waited in the queue). The same span attributes and metrics as
        :meth:`answered` gives a request run inline or in a batch."""
        if span is INVALID_SPAN:  # no span (no SDK, or one that would not be recorded): no span to end, no
            # exemplar; and without a meter provider nothing to record either (two calls saved of a lone
            # predict's every answer: 0.4-0.5 µs between two runs of a small model)
            if _metrics_state._METER_PROVIDER is not None:
                recorder.request_finished(elapsed_s, variant=decision.variant, error=error, lone=lone)
            return
        sampled = _sampled(span)  # (asked before the span ends: an ended span records nothing)
        _end_span(span, decision, version, rows, None if timing is None else queue_wait_s, timing, error)
        recorder.request_finished(
            elapsed_s, variant=decision.variant, error=error, span=span if sampled else None, lone=lone
        )

    def refused(
        self,
        span: Any,
        started: float,
        model: str,
        version: int | None,
        decision: Decision | None,
        error: BaseException,
        *,
        counted: bool = True,
    ) -> None:
        """Close the span of a request refused before it was queued, and record it: under its model's name
        if this server has served that name, else under :data:`UNKNOWN_MODEL`, and with the version it asked
        for only if this server has served that version of that model (metric attributes stay bounded
        whatever names and numbers callers send). ``counted=False``: the span only, no metrics (a batch
        scoring job's request turned away by a full queue, which the job sends again: nobody was refused)."""
        variant = None if decision is None else decision.variant
        sampled = _sampled(span)  # (asked before the span ends)
        _end_span(span, decision, version, 0, None, None, error)
        if not counted or not isinstance(model, str) or not metering():
            return
        if decision is None:  # refused before routing: the name and version are the caller's, unchecked
            if not self.served(model):
                model, version = UNKNOWN_MODEL, None
            elif version is not None and not self.served_version((model, version)):
                version = None
        if isinstance(error, OverloadedError):
            METRICS.shed.add(1, self.attributes(model, version))
        elif isinstance(error, DeadlineExceededError):
            METRICS.deadlines.add(1, self.attributes(model, version))
        attributes = self.attributes(model, version, variant, error, finished=True)
        context = set_span_in_context(span) if sampled else None
        _record_duration(time.perf_counter() - started, attributes, context)

    def attributes(
        self,
        model: str,
        version: int | None,
        variant: str | None = None,
        error: BaseException | None = None,
        *,
        finished: bool = False,
    ) -> dict[str, Any]:
        """Metric attributes; a finished request's also carry its outcome, and error.type if it failed."""
        error_type = None if error is None else type(error).__name__
        key = (model, version, variant, finished, error_type)
        attributes = self._cache.get(key)
        if attributes is None:
            attributes = {"inprocserve.model.name": model}
            if version is not None:
                attributes["inprocserve.model.version"] = version
            if variant is not None:
                attributes["inprocserve.rollout.variant"] = variant
            if finished:
                attributes["inprocserve.outcome"] = outcome(error)
            if error_type is not None:
                attributes["error.type"] = error_type  # semantic convention: the exception's class
            if len(self._cache) < 10_000:  # bounded: model x version x variant x error class
                self._cache[key] = attributes
        return attributes


def _any_version(model_version: tuple[str, int]) -> bool:
    return True


def _any_name(model: str) -> bool:
    return True


def _record_duration(elapsed_s: float, attributes: dict[str, Any], context: Any) -> None:
    """Record a request's duration in ``context`` (a sampled span's, for exemplars); the SDK and the
    application's views and readers run in this call, and never cost a caller its answer or its error."""
    try:
        if context is not None and _RECORD_TAKES_CONTEXT:
            METRICS.request_duration.record(elapsed_s, attributes, context=context)
        else:
            METRICS.request_duration.record(elapsed_s, attributes)
    except Exception:
        _telemetry_failed("recording a metric")


def _sampled(span: Any) -> bool:
    """Whether ``span`` is a sampled, still open span (whose request's duration is recorded in its context,
    for the SDK's exemplars: a span recorded but not sampled gets none)."""
    return (
        span is not None
        and span is not INVALID_SPAN
        and bool(span.is_recording())
        and bool(span.get_span_context().trace_flags.sampled)
    )


def _end_span(
    span: Any,
    decision: Decision | None,
    version: int | None,
    rows: int,
    queue_wait_s: float | None,
    batch: BatchTiming | None,
    error: BaseException | None,
) -> None:
    """Close a request span with its routing (``decision``: ``None`` for a request refused before routing)."""
    end_request_span(
        span,
        version=version,
        variant=None if decision is None else decision.variant,
        reason=None if decision is None else decision.reason,
        rows=rows,
        queue_wait_s=queue_wait_s,
        batch=batch,
        flags=() if decision is None else decision.flags,
        provider=None if decision is None else decision.provider,
        error=error,
    )
