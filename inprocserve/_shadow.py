"""Shadow traffic: a copy of a request runs on other versions after the caller has its answer.

Shadow work must not slow or fail the caller. An idle session is not spare CPU: on a small host one
caller keeps every core busy, and a shadow running beside it takes their time. So shadows run on a CPU
budget: the shadow thread may run for at most ``budget`` of each second of wall-clock time (a token bucket
holding one second's allowance), measured as the wall time of its own runs. A copy that finds the budget
spent, the serving version backlogged or no idle session on the shadow version is dropped at once and
counted; nothing waits or polls. Jobs are queued (bounded, drops counted) for one background thread that
sleeps on a condition while there is nothing to do. Shadow errors are logged and counted, never raised.
Each shadow answer is compared with the primary one (largest absolute difference; argmax agreement for
classifier-shaped outputs) and handed to an optional callback so applications can log it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry.trace import Status, StatusCode

from . import _fork
from ._errors import ConfigurationError
from ._request import Request, Route
from ._telemetry import ATTR_SHADOW_AGREEMENT, ATTR_SHADOW_DIFF, METRICS, add_safely, record_safely, start_shadow_span

__all__ = ["ShadowComparison", "ShadowRunner", "compare_outputs"]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.02
"""Share of wall-clock time shadow runs may take (20 ms per second)."""


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """How one shadow answer compared with the answer the caller got."""

    model: str
    primary_version: int
    shadow_version: int
    request_id: str
    max_abs_diff: float | None
    """Largest absolute difference over the numeric outputs both versions produced (None if none)."""
    label_agreement: float | None
    """Share of rows whose argmax agrees, over outputs shaped [rows, classes] (None if there are none)."""
    error: str | None
    """Why the shadow run failed, if it did (the caller was never affected)."""
    latency_s: float


def compare_outputs(primary: Mapping[str, Any], shadow: Mapping[str, Any]) -> tuple[float | None, float | None]:
    """(max absolute difference, argmax agreement) between two answers to the same request."""
    diffs, agreements = [], []
    for name, expected in primary.items():
        got = shadow.get(name)
        if not isinstance(expected, np.ndarray) or not isinstance(got, np.ndarray) or expected.shape != got.shape:
            continue
        if expected.dtype.kind not in "biuf" or got.dtype.kind not in "biuf" or expected.size == 0:
            continue
        diffs.append(float(np.max(np.abs(expected.astype(np.float64) - got.astype(np.float64)))))
        if expected.ndim == 2 and expected.shape[1] >= 2:
            agreements.append(float(np.mean(np.argmax(expected, axis=1) == np.argmax(got, axis=1))))
    return (max(diffs) if diffs else None), (float(np.mean(agreements)) if agreements else None)


@dataclass
class ShadowStats:
    runs: int = 0
    errors: int = 0
    dropped_full: int = 0
    dropped_busy: int = 0
    dropped_budget: int = 0
    compared: int = 0
    max_abs_diff: float = 0.0
    total_abs_diff: float = 0.0
    agreement_total: float = 0.0
    agreement_runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "errors": self.errors,
            "dropped_queue_full": self.dropped_full,
            "dropped_no_spare_capacity": self.dropped_busy,
            "dropped_over_budget": self.dropped_budget,
            "max_abs_diff": self.max_abs_diff if self.compared else None,
            "mean_max_abs_diff": self.total_abs_diff / self.compared if self.compared else None,
            "label_agreement": self.agreement_total / self.agreement_runs if self.agreement_runs else None,
        }


@dataclass(slots=True)
class _Job:
    model: str
    request_id: str
    arrays: Mapping[str, np.ndarray]
    rows: int
    primary: Mapping[str, Any]
    primary_version: Any
    shadow: Any
    primary_span: Any


class ShadowRunner:
    """Runs shadow jobs on one background thread within a CPU budget. Thread-safe; the thread starts on
    first use and ends on :meth:`close`.

    Args:
        max_queued: Jobs that may wait for the thread; more are dropped (``dropped_queue_full``).
        on_result: Called with every comparison (errors it raises are logged).
        budget: Largest share of wall-clock time shadow runs may take, in (0, 1]; 1 runs every shadow
            the idle-session check lets through.
        clock: Monotonic clock of the budget.
    """

    def __init__(
        self,
        *,
        max_queued: int = 256,
        on_result: Callable[[ShadowComparison], None] | None = None,
        budget: float = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < budget <= 1:
            raise ConfigurationError(f"shadow_budget must be a share of time in (0, 1], got {budget}")
        self.max_queued = max_queued
        self.on_result = on_result
        self.budget = budget
        self._clock = clock
        self._tokens = budget  # seconds of shadow running allowed now; holds at most one second's allowance
        self._refilled_at = clock()
        self._stats: dict[tuple[str, int], ShadowStats] = {}
        self._over_budget_attributes: dict[tuple[str, int], dict[str, Any]] = {}
        self._reset()
        _fork.register(self)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._jobs: deque[_Job] = deque()
        self._thread: threading.Thread | None = None
        self._closed = False

    def _after_fork_in_child(self) -> None:
        closed = self._closed
        self._reset()
        self._closed = closed

    def offer(
        self,
        model: str,
        request_id: str,
        arrays: Mapping[str, np.ndarray],
        rows: int,
        primary: Mapping[str, Any],
        primary_version: Any,
        shadows: Sequence[Any],
        *,
        primary_span: Any = None,
    ) -> None:
        """Queue a copy of a finished request for each shadow version; never blocks, drops when full."""
        with self._cond:
            if self._closed:
                return
            if not self._within_budget():  # checked before queueing: a dropped copy costs the caller one lock
                for shadow in shadows:
                    self._drop_over_budget(model, shadow.version)
                return
            for shadow in shadows:
                if len(self._jobs) >= self.max_queued:
                    self._stat(model, shadow.version).dropped_full += 1
                    add_safely(METRICS.shadow_dropped, 1, _attributes(model, shadow.version, "queue_full"))
                    continue
                self._jobs.append(_Job(model, request_id, arrays, rows, primary, primary_version, shadow, primary_span))
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="inprocserve-shadow", daemon=True)
                self._thread.start()
            self._cond.notify()

    def admit(self, model: str, versions: tuple[int, ...]) -> bool:
        """Whether copies of a request may be made for ``versions`` now; if not, they are counted as dropped
        over budget. Asked while routing, so a request over budget never builds or queues a copy."""
        if self._tokens + (self._clock() - self._refilled_at) * self.budget > 0:
            return True  # read without the lock: offer() checks again, under it
        with self._mutex:  # the condition's own lock, entered without the Condition wrapper's cost
            for version in versions:
                self._drop_over_budget(model, version)
        return False

    def _stat(self, model: str, version: int) -> ShadowStats:
        stats = self._stats.get((model, version))
        if stats is None:  # not setdefault: that would build a ShadowStats on every call
            stats = self._stats[(model, version)] = ShadowStats()
        return stats

    def _within_budget(self) -> bool:
        """Refill the token bucket for the time gone by; whether a shadow may start now (lock held)."""
        now = self._clock()
        self._tokens = min(self.budget, self._tokens + (now - self._refilled_at) * self.budget)
        self._refilled_at = now
        return self._tokens > 0

    def _drop_over_budget(self, model: str, version: int) -> None:
        self._stat(model, version).dropped_budget += 1
        key = (model, version)
        attributes = self._over_budget_attributes.get(key)
        if attributes is None:  # built once per model and version: this runs for most requests of a busy caller
            attributes = self._over_budget_attributes[key] = _attributes(model, version, "over_budget")
        add_safely(METRICS.shadow_dropped, 1, attributes)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                if not self._within_budget():  # spent by the jobs before this one
                    self._drop_over_budget(job.model, job.shadow.version)
                    continue
            started = self._clock()
            try:
                self._run(job)
            except Exception:  # the shadow thread must outlive any bug in one job
                logger.exception("shadow run of model %r failed unexpectedly", job.model)
            finally:
                with self._cond:
                    self._tokens -= self._clock() - started  # may go below zero: the next runs wait longer

    def _run(self, job: _Job) -> None:
        from ._rollout import Decision

        shadow_batcher = job.shadow.batcher
        primary_batcher = job.primary_version.batcher
        if shadow_batcher is None:
            return
        version = job.shadow.version
        reason = f"shadow copy of request {job.request_id}"
        route = Route(job.model, version, "shadow", reason, job.request_id, [], Decision(version, "shadow", reason))
        request = Request(dict(job.arrays), job.rows, route, None, None)
        span = start_shadow_span(job.model, job.shadow.version, job.primary_span)
        started = time.monotonic()
        try:  # spare capacity only: no backlog on the serving version, an idle shadow session, right now
            ran = (primary_batcher is None or primary_batcher.queued_rows == 0) and shadow_batcher.run_if_idle(request)
        except Exception as exc:  # retired meanwhile, or any other refusal: not the caller's problem
            self._record(job, None, f"{type(exc).__name__}: {exc}", started, span)
            return
        if not ran:
            with self._cond:
                self._stat(job.model, job.shadow.version).dropped_busy += 1
            add_safely(METRICS.shadow_dropped, 1, _attributes(job.model, job.shadow.version, "no_spare_capacity"))
            span.set_attributes({"inprocserve.shadow.dropped": True})
            span.end()
            return
        if request.error is not None:
            self._record(job, None, f"{type(request.error).__name__}: {request.error}", started, span)
        else:
            self._record(job, request.outputs, None, started, span)

    def _record(
        self, job: _Job, outputs: Mapping[str, Any] | None, error: str | None, started: float, span: Any
    ) -> None:
        diff, agreement = compare_outputs(job.primary, outputs) if outputs is not None else (None, None)
        if span.is_recording():
            if diff is not None:
                span.set_attribute(ATTR_SHADOW_DIFF, diff)
            if agreement is not None:
                span.set_attribute(ATTR_SHADOW_AGREEMENT, agreement)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error[:256]))
        span.end()
        result = "error" if error is not None else ("disagree" if agreement is not None and agreement < 1 else "agree")
        add_safely(METRICS.shadow, 1, _attributes(job.model, job.shadow.version, result))
        if diff is not None:
            record_safely(METRICS.shadow_diff, diff, _attributes(job.model, job.shadow.version))
        comparison = ShadowComparison(
            model=job.model,
            primary_version=job.primary_version.version,
            shadow_version=job.shadow.version,
            request_id=job.request_id,
            max_abs_diff=diff,
            label_agreement=agreement,
            error=error,
            latency_s=time.monotonic() - started,
        )
        with self._cond:
            stats = self._stat(job.model, job.shadow.version)
            stats.runs += 1
            if error is not None:
                stats.errors += 1
            if diff is not None:
                stats.compared += 1
                stats.max_abs_diff = max(stats.max_abs_diff, diff)
                stats.total_abs_diff += diff
            if agreement is not None:
                stats.agreement_total += agreement
                stats.agreement_runs += 1
        if error is not None:
            logger.info(
                "shadow version %s of model %r failed (caller unaffected): %s", job.shadow.version, job.model, error
            )
        if self.on_result is not None:
            try:
                self.on_result(comparison)
            except Exception:
                logger.exception("the on_shadow callback raised")

    def pending(self) -> int:
        return len(self._jobs)

    def status(self, model: str) -> dict[str, Any]:
        with self._cond:
            return {str(v): s.to_dict() for (m, v), s in self._stats.items() if m == model}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._jobs.clear()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)


def _attributes(model: str, version: int, result: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"inprocserve.model.name": model, "inprocserve.shadow.version": version}
    if result is not None:
        attributes["inprocserve.shadow.result"] = result
    return attributes
