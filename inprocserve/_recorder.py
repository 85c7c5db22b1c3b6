"""The telemetry of one model version: what the request path records, with everything it can build once
built once (see :class:`Recorder`). Names, instruments and spans live in ``_telemetry.py``."""

from __future__ import annotations

import inspect
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import _internal as _metrics_state
from opentelemetry.trace import Span, set_span_in_context

from . import _fork
from ._errors import DeadlineExceededError
from ._telemetry import (
    ATTR_CACHE_RESULT,
    ATTR_ERROR_TYPE,
    ATTR_MODEL,
    ATTR_OUTCOME,
    ATTR_VARIANT,
    ATTR_VERSION,
    CACHE_RESULTS,
    METRICS,
    Metrics,
    _telemetry_failed,
    outcome,
    start_request_span,
)

__all__ = ["Recorder"]

_Record = tuple[metrics.Histogram, float, Mapping[str, Any]]  # a histogram record left to the recording thread


class Recorder:
    """The telemetry of one model version, bound once so the request path builds nothing.

    The OpenTelemetry SDK copies, validates and hashes the attributes of every metric record (about ten
    microseconds per record, more per attribute) and makes a span id and asks the sampler for every span.
    A recorder holds the attribute dicts of its version, built once (those of finished requests once per
    variant and error class), and records only what each event adds:

    * per request: ``inprocserve.request.duration``, and ``inprocserve.requests.deadline_exceeded`` if it
      missed its deadline;
    * per batch run by a worker: ``inprocserve.batch.size`` and ``inprocserve.batch.duration`` once per
      ``session.run`` (a request larger than ``max_batch_size`` runs in slices: one record per slice), and
      ``inprocserve.batch.queue_wait`` once (how long its longest-waiting request waited: what the flush policy
      bounds, and what grows when the sessions cannot keep up). A request run at once on its caller's
      thread (a lone request on an idle server) is not a batch: its rows and compute time are on its span,
      and its time in ``inprocserve.request.duration``.

    Each request's own queue wait is on its span (``inprocserve.request.queue_wait_s``). A histogram record
    per request for it would double the metric cost of every queued request (earlier releases recorded
    ``inprocserve.request.queue_wait`` so; docs/observability.md says what a dashboard reads instead).

    The histogram records (durations, batch metrics) are left to the process's recording thread
    (:class:`~inprocserve._record_thread.RecordingThread`, owned by ``Metrics``): the request's or worker's
    thread appends ``(histogram, value, attributes)`` to this version's queue and returns, and every
    ``_WAKE_EVERY``-th record wakes the thread, which records the backlog in one go, while request threads
    wait in ``session.run`` without the GIL. Nothing is lost or changed: every record reaches the SDK once,
    with its own value and attributes; the metric reader records what is left before each collection
    (``Metrics.flush``), so an export holds every request finished before it; the queue is bounded (past
    ``_MAX_PENDING`` records the thread that adds one records the backlog itself, as it does when no
    server is open and so no recording thread runs). A sampled request's duration is recorded on its own
    thread, in its span's context, which the SDK's exemplars read (a trace-based exemplar filter keeps it,
    with the span's trace and span ids); the records left to the thread carry none.

    A lone request, run at once on its caller's thread while the version was idle, never queued
    (``request_finished`` with ``lone``), records its duration on that thread too, never through the
    recording thread: nobody else waits in ``session.run`` then, for the thread's backlog to use the GIL
    meanwhile, and the caller would wait for the whole backlog when its run ends (with the SDK, 1 % of
    traces sampled and one caller on mlp-small, a p99 of 1.2-1.8 ms against 0.26-0.33 ms). It does not
    record it at once either: its record joins the pending ones, and every ``_LONE_RECORDS``-th lone request
    records all of them, in a row. The SDK's record costs about three times as much alone between two runs
    as in a row (its code and data are cold again after each run): one caller of mlp-small with only a meter
    provider spent 57 µs of CPU per request recording each at once, 48 recording them 32 at a time (a
    scratch run), and with 1 % of traces sampled 66 against 56 µs as made here (docs/observability.md, "Cost").
    The counters (deadline misses, sheds, cache lookups) are plain integers the SDK reads at collection
    (see :class:`~inprocserve._tally.Tally`).

    Thread-safe: the cached dicts are only read after they are built, and never changed.

    Args:
        model: The model name.
        version: The version number.
        metrics: The instruments (the process's ``METRICS`` if omitted).
        local: The version computes in this process: a dropped root request span is not made (see
            :func:`~inprocserve._telemetry.start_request_span`).
    """

    __slots__ = (
        "__weakref__",
        "_cache_attributes",
        "_draining",
        "_finished",
        "_metrics",
        "_pending",
        "_wake_sent",
        "attributes",
        "local",
        "model",
        "span_attributes",
        "version",
    )

    def __init__(self, model: str, version: int, *, metrics: Metrics | None = None, local: bool = False) -> None:
        self.model = model
        self.version = version
        self.local = local
        self._metrics = metrics if metrics is not None else METRICS
        self.attributes: Mapping[str, Any] = {ATTR_MODEL: model, ATTR_VERSION: version}
        self.span_attributes: Mapping[str, Any] = {ATTR_MODEL: model}
        self._finished: dict[tuple[str | None, type[BaseException] | None], Mapping[str, Any]] = {}
        self._cache_attributes: dict[str, Mapping[str, Any]] = {
            result: {ATTR_MODEL: model, ATTR_VERSION: version, ATTR_CACHE_RESULT: result} for result in CACHE_RESULTS
        }
        self._pending: deque[_Record] = deque()  # (histogram, value, attributes) not yet recorded
        self._draining = threading.Lock()  # held by the one thread that records the pending records
        self._wake_sent = False  # the recording thread was woken for the records pending now
        self._metrics.add_recorder(self)
        _fork.register(self)
        # a version unloaded between two collections still delivers what it holds, at the next collection
        # (nothing recorded, nor any Python code run, in the garbage collection: see Metrics.watch_pending)
        self._metrics.watch_pending(self, self._pending)

    def _after_fork_in_child(self) -> None:
        # the metric reader's thread may have held the lock at the fork, and its durations are the parent's
        self._draining = threading.Lock()
        self._pending.clear()
        self._wake_sent = False

    def start_request_span(self, since: float | None = None) -> Span:
        """The span of one request to this version (``INVALID_SPAN`` without an SDK, or when it would not be
        recorded for certain: see :func:`start_request_span`, which this calls with ``local``)."""
        return start_request_span(self.model, self.span_attributes, since, local=self.local)

    def finished_attributes(self, variant: str | None, error: BaseException | None) -> Mapping[str, Any]:
        """The attributes of ``inprocserve.request.duration``: model, version, variant, outcome and, for a
        failed request, ``error.type`` (the exception's class name)."""
        key = (variant, None if error is None else type(error))
        attributes = self._finished.get(key)
        if attributes is None:
            built: dict[str, Any] = {ATTR_MODEL: self.model, ATTR_VERSION: self.version}
            if variant is not None:
                built[ATTR_VARIANT] = variant
            built[ATTR_OUTCOME] = outcome(error)
            if error is not None:
                built[ATTR_ERROR_TYPE] = type(error).__name__
            attributes = built
            if len(self._finished) < _MAX_CACHED_ATTRIBUTE_SETS:  # variants x error classes: bounded anyway
                self._finished[key] = attributes
        return attributes

    def request_finished(
        self,
        duration_s: float,
        *,
        variant: str | None,
        error: BaseException | None,
        span: Span | None = None,
        lone: bool = False,
    ) -> None:
        """Record one finished request: its duration (from the call to the answer) and a deadline miss.
        ``span``: the request's span, if it was sampled: its duration is recorded on this
        thread, in that span's context, which the SDK's exemplars read. ``lone``: a lone request run on its
        caller's thread, which records the pending records itself, never through the recording thread (see
        the class docstring). No-op until the application installs a meter provider."""
        if _metrics_state._METER_PROVIDER is None:
            return
        metrics = self._metrics
        if error is not None and isinstance(error, DeadlineExceededError):
            metrics.deadlines.add(1, self.attributes)  # (a plain counter: nothing here can raise)
        try:  # the SDK and the application's views and readers run in these calls: they never cost an answer
            if span is not None and _RECORD_TAKES_CONTEXT:
                attributes = self.finished_attributes(variant, error)
                metrics.request_duration.record(duration_s, attributes, context=set_span_in_context(span))
            elif span is not None:
                metrics.request_duration.record(duration_s, self.finished_attributes(variant, error))
            else:
                self._pending.append((metrics.request_duration, duration_s, self.finished_attributes(variant, error)))
                if lone:
                    self._lone_pended()
                else:
                    self._pended()
        except Exception:
            _telemetry_failed("recording a metric")

    def batch_finished(self, rows: int, compute_s: float, *, inline: bool, queue_wait_s: float | None = None) -> None:
        """Record one ``session.run`` of ``rows`` rows that took ``compute_s``, started ``queue_wait_s``
        after its longest-waiting request was queued (left to the recording thread, like durations);
        nothing for a request run ``inline`` on its caller's thread (see the class docstring)."""
        if inline or _metrics_state._METER_PROVIDER is None:
            return
        metrics, attributes, pending = self._metrics, self.attributes, self._pending
        pending.append((metrics.batch_size, rows, attributes))
        pending.append((metrics.batch_duration, compute_s, attributes))
        if queue_wait_s is not None:
            pending.append((metrics.batch_queue_wait, queue_wait_s, attributes))
        try:  # (a backlog may be recorded here, on the worker's thread: the SDK runs in it)
            self._pended()
        except Exception:
            _telemetry_failed("recording a metric")

    def runs_finished(self, runs: Sequence[tuple[int, float]], *, queue_wait_s: float) -> None:
        """Record a batch a worker ran: ``inprocserve.batch.size`` and ``.duration`` once for each of its
        ``session.run`` calls ``(rows, seconds)`` (a request run in slices makes one per slice, a bisected batch
        one per run), and ``inprocserve.batch.queue_wait`` once (left to the recording thread, like durations)."""
        if _metrics_state._METER_PROVIDER is None:
            return
        metrics, attributes, pending = self._metrics, self.attributes, self._pending
        for rows, seconds in runs:
            pending.append((metrics.batch_size, rows, attributes))
            pending.append((metrics.batch_duration, seconds, attributes))
        pending.append((metrics.batch_queue_wait, queue_wait_s, attributes))
        try:  # (a backlog may be recorded here, on the worker's thread: the SDK runs in it)
            self._pended()
        except Exception:
            _telemetry_failed("recording a metric")

    def _pended(self) -> None:
        """Records were queued: ``_WAKE_EVERY`` of them wake the recording thread, once until it drains them
        (without a thread they are recorded here), and a backlog past ``_MAX_PENDING`` is recorded here."""
        size = len(self._pending)
        if size >= _WAKE_EVERY:
            if size > _MAX_PENDING:  # the recording thread is starved of the GIL: record them here
                self.flush()
            elif not self._wake_sent:  # one wake until the thread drains (racing threads may send two)
                self._wake_sent = True
                if not self._metrics.wake_recording():  # no thread (no server open): record them here
                    self._wake_sent = False
                    self.record_pending()

    def _lone_pended(self) -> None:
        """A lone request's duration was queued: ``_LONE_RECORDS`` pending records are recorded here, on this
        thread, in one go (see the class docstring); nothing wakes the recording thread."""
        if len(self._pending) >= _LONE_RECORDS:
            self.record_pending()

    def record_pending(self) -> None:
        """Record everything pending now, unless another thread is recording it (that one takes these too)."""
        if self._draining.acquire(blocking=False):
            try:
                self._wake_sent = False  # what is appended from now on may wake the thread again
                _record(self._pending, len(self._pending))
            finally:
                self._draining.release()

    def flush(self, timeout_s: float = 1.0) -> None:
        """Record everything pending now (the metric reader calls this before each collection, through
        ``Metrics``), waiting up to ``timeout_s`` for a thread that is recording it now."""
        if self._draining.acquire(timeout=timeout_s):
            try:
                self._wake_sent = False
                _record(self._pending, len(self._pending))
            finally:
                self._draining.release()

    def cache_lookup(self, result: str) -> None:
        """Count one lookup in the version's prediction cache: ``hit``, ``miss`` or ``shared`` (it followed
        an identical request in flight)."""
        if _metrics_state._METER_PROVIDER is not None:
            self._metrics.cache.add(1, self._cache_attributes[result])

    def shed(self) -> None:
        """Count one request refused with ``OverloadedError``."""
        if _metrics_state._METER_PROVIDER is not None:
            self._metrics.shed.add(1, self.attributes)


def _record(pending: deque[_Record], count: int) -> None:
    """Record up to ``count`` pending records, oldest first; one the SDK fails to record is dropped (logged
    once), never left to fail every later drain."""
    for _ in range(count):
        try:
            histogram, value, attributes = pending.popleft()
        except IndexError:
            return
        try:
            histogram.record(value, attributes)
        except Exception:
            _telemetry_failed("recording a metric")


_MAX_CACHED_ATTRIBUTE_SETS = 1_000
# OpenTelemetry 1.28 gave ``Histogram.record`` the context to read exemplars from; before it there were none.
_RECORD_TAKES_CONTEXT = "context" in inspect.signature(metrics.Histogram.record).parameters
# This many pending records of a version (durations, and three per batch) wake the recording thread, once
# until it drains them: one wake (a few microseconds) per this many records or more, and a backlog it records
# in about a millisecond.
_WAKE_EVERY = 64
# A thread that finds more than this many records pending waits for whoever records them and records them
# itself: memory stays bounded even when the recording thread seldom gets the GIL.
_MAX_PENDING = 4_096
# A lone request's thread records the pending records itself once this many are queued: the SDK's record of
# one duration cost about 18 µs between two runs of a small model (its code and data cold again after each
# run), and about 6 µs each for the ones after it in a row (scratch runs: 8 in a row saved 6.6 µs a request,
# 16 saved 9, 32 saved 9; each run of them holds the caller about 6 µs a record).
_LONE_RECORDS = 16
