"""The coalescer: merges concurrent requests for one model version into batched ``session.run`` calls.

Flush policy (docs/batching.md explains it with measurements):

* **Idle: run now, on the caller's thread.** A synchronous caller that finds the queue empty and a session
  free runs its own request on its own thread: no queue and no thread hand-off, so a lightly loaded server
  adds almost nothing to a raw ``run``.
* **Busy: accumulate.** Otherwise the request is queued. One worker thread per session takes up to
  ``max_batch_size`` rows of compatible requests the moment its session is free.
* **Wait only for companions that are coming.** Right after a batch returns, its callers come back one by
  one (each needs the GIL). Running the first one alone would pay the model's fixed cost per run for one row,
  and the rest would form a second, ragged batch. So while recent traffic showed more concurrent rows than
  are queued, a free session waits for them — at most ``max_delay_s`` (by default the model's own fixed
  cost per run, measured at load) — and stops waiting the moment they are all there. A lone caller never
  waits: the recent concurrency it sees is its own single request.
* A merged batch that fails is bisected until the failing request(s) are found; the others still get
  their answers.

The lock, queue and threads are private to :class:`Batcher`; nothing is held while a model runs.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError, Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _fork
from ._batch_ops import BatchShapeError, group_key, pad_and_stack, split_outputs, stack_inputs
from ._config import BatchingConfig
from ._deadlines import Watchdog
from ._errors import DeadlineExceededError, InprocserveError, QueueFullError, ServerClosedError
from ._request import Route
from ._sessions import SessionPool, abandon_inherited
from ._stats import BatchSizeHistogram
from ._telemetry import METRICS, end_batch_span, metering, start_batch_span, tracing

__all__ = ["Batcher", "Request", "RunCost", "VersionRetiredError", "finish_detached", "wake_after_batch"]

logger = logging.getLogger(__name__)

_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)
_allocate_lock = threading.Lock
_CONCURRENCY_WINDOW_S = 0.25  # recent concurrency = the peak over the last one or two such windows
_AUTO_DELAY_CAP_S = 0.005  # the automatic wait for companions never exceeds this
# Merging through the queue costs a thread hand-off or two; it pays only when the fixed cost it saves is
# clearly larger than that.
_WAIT_WHEN_FIXED_COST_OVER_HANDOFFS = 4

_handoff_lock = threading.Lock()
_handoff_s: float | None = None


def handoff_cost_s() -> float:
    """How long waking a blocked thread takes on this machine (median of a short ping-pong, cached).

    Tens of microseconds on small virtual machines, a few on bare metal: it decides whether waiting to
    merge requests can beat running them as they come.
    """
    global _handoff_s
    with _handoff_lock:
        if _handoff_s is None:
            ping, pong = _allocate_lock(), _allocate_lock()
            ping.acquire()
            pong.acquire()
            rounds = 40

            def echo() -> None:
                for _ in range(rounds):
                    ping.acquire()
                    pong.release()

            thread = threading.Thread(target=echo, name="inprocserve-handoff-probe", daemon=True)
            thread.start()
            samples = []
            for _ in range(rounds):
                start = time.perf_counter()
                ping.release()
                pong.acquire()
                samples.append((time.perf_counter() - start) / 2)
            thread.join()
            samples.sort()
            _handoff_s = samples[len(samples) // 2]
        return _handoff_s


class VersionRetiredError(ServerClosedError):
    """This version stopped taking requests (unloaded or replaced); the server routes the request again."""


@dataclass(frozen=True, slots=True)
class RunCost:
    """A model's measured cost per ``session.run``: ``fixed_s + per_row_s * rows``."""

    fixed_s: float
    per_row_s: float


class BatchTiming:
    """Shared by the requests of one executed batch, for their spans and metrics."""

    __slots__ = ("compute_s", "rows")

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.compute_s = 0.0


class Request:
    """One caller's request: validated inputs, where to deliver the answer, and its state."""

    __slots__ = (
        "arrays",
        "batch",
        "baton",
        "cache_key",
        "deadline",
        "enqueued_at",
        "error",
        "future",
        "key",
        "outputs",
        "queue_wait_s",
        "route",
        "rows",
        "span",
        "started",
        "state",
        "waiter",
    )

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        rows: int,
        route: Route,
        deadline: float | None,
        future: Future[Any] | None,
    ) -> None:
        self.arrays = arrays
        self.rows = rows
        self.route = route
        self.deadline = deadline
        self.future = future
        self.key: Any = None
        self.state = _QUEUED
        self.outputs: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.enqueued_at = 0.0
        self.baton: Any = None  # the waiter this caller wakes once it is awake (see Batcher._complete_batch)
        self.span: Any = None  # the request's OpenTelemetry span, linked from the batch span
        self.cache_key: bytes | None = None  # set when this request runs for identical ones in flight
        self.started = 0.0  # perf_counter() when the caller asked
        self.queue_wait_s = 0.0
        self.batch: BatchTiming | None = None
        # A synchronous caller blocks on this lock until the answer is in (the cheapest wake-up CPython has).
        self.waiter: Any = None
        if future is None:
            self.waiter = _allocate_lock()
            self.waiter.acquire()


Finisher = Callable[[Request], None]


class _HeldWakes(threading.local):
    wakes: list[Callable[[], None]] | None = None


_held = _HeldWakes()


def wake_after_batch(wake: Callable[[], None]) -> bool:
    """While this thread hands out a batch's answers, hold ``wake`` until the last one is handed out (so an
    event loop awaiting many of them is woken once, not once per answer). Returns False, without holding
    it, when no batch is being handed out here: then the caller wakes the loop itself."""
    wakes = _held.wakes
    if wakes is None:
        return False
    wakes.append(wake)
    return True


def finish_detached(request: Request, outputs: Any, error: BaseException | None, deliver: Finisher) -> None:
    """Answer a request that never went through a batcher (a cache hit, or a follower of an identical
    request in flight): the waiting caller wakes, or its future resolves."""
    request.outputs = outputs
    request.error = error
    request.state = _DONE
    _answer(request, deliver)


def _answer(request: Request, deliver: Finisher) -> None:
    """Wake the synchronous caller, or resolve the future, of a finished request."""
    if request.future is None:
        request.waiter.release()
    else:
        deliver(request)


class Batcher:
    """Queue and worker threads for one model version.

    Thread-safe. Threads start lazily on first use (and again in a forked child).

    Args:
        pool: The sessions to run on; one worker per session.
        config: Batching settings.
        input_names / output_names: The model's signature, in order.
        batchable: Whether rows of several requests may be stacked on axis 0.
        has_dynamic_inner_axes: Whether any input has a dynamic axis besides axis 0 (requests must then be
            grouped by shape).
        run_cost: The model's measured cost per run; sets the automatic ``max_delay_s``.
        deliver: Called on the thread that completed a request, to resolve its future (if any).
        clock: A monotonic clock.
    """

    def __init__(
        self,
        pool: SessionPool,
        config: BatchingConfig,
        *,
        input_names: Sequence[str],
        output_names: Sequence[str],
        batchable: bool,
        has_dynamic_inner_axes: bool = True,
        run_cost: RunCost | None = None,
        deliver: Finisher,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = pool.model
        self.version = pool.version
        self._pool = pool
        self._config = config
        self._input_names = tuple(input_names)
        self._output_names = tuple(output_names)
        self._deliver = deliver
        self._clock = clock
        self._padding = config.padding if batchable else None
        self._merge = batchable and config.enabled
        # Group keys are needed only when requests can differ in a non-batch axis (or are padded on one).
        self._keyed = self._merge and (config.padding is not None or has_dynamic_inner_axes)
        self._max_rows = config.max_batch_size if self._merge else 1
        # Only a model with a batch axis can run a large request in slices; others take it whole.
        self._chunk_rows: int | None = config.max_batch_size if batchable else None
        if config.max_delay_s is not None:
            self._delay_s = config.max_delay_s
        elif run_cost is not None and run_cost.fixed_s > _WAIT_WHEN_FIXED_COST_OVER_HANDOFFS * handoff_cost_s():
            self._delay_s = min(run_cost.fixed_s, _AUTO_DELAY_CAP_S)
        else:
            self._delay_s = 0.0
        if not self._merge:
            self._delay_s = 0.0
        self.run_cost = run_cost
        self._preferred = config.preferred_batch_sizes
        self._metric_attributes: dict[str, Any] = {
            "inprocserve.model.name": self.model,
            "inprocserve.model.version": self.version,
        }
        # Stops runs whose deadline passes (its thread starts with the first request that has a deadline).
        self._watchdog = Watchdog(f"inprocserve-deadlines-{self.model}-v{self.version}")
        self._reset_state()
        _fork.register(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Request] = deque()
        self._queued_rows = 0
        # Sessions not running a batch right now; ``None`` until this process has built them (after fork).
        self._free: list[Any] | None = None
        self._idle: list[Any] = []  # wake locks of parked workers
        self._filler: Any = None  # wake lock of the worker waiting for companions
        self._fill_target = 0
        self._workers: list[threading.Thread] = []
        self._closing = False
        self._in_flight = 0  # requests accepted and not yet answered
        self._active_rows = 0  # rows queued or running
        self._window_start = self._clock()
        self._window_peak = 0
        self._previous_peak = 0
        self._drained = threading.Condition(self._lock)
        self.batches_run = 0
        self.rows_run = 0
        self.batch_sizes = BatchSizeHistogram()

    def _after_fork_in_child(self) -> None:
        closing = self._closing
        abandon_inherited(self._free)
        self._reset_state()  # queued requests belong to the parent's threads
        self._closing = closing

    # -- observation ---------------------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def max_delay_s(self) -> float:
        """The effective longest wait for companions (configured, or derived from the run cost)."""
        return self._delay_s

    def _target_rows(self) -> int:
        """Rows worth waiting for: the recent peak of concurrent rows, capped by the batch size."""
        peak = max(self._window_peak, self._previous_peak)
        return peak if peak < self._max_rows else self._max_rows

    def _roll_window(self, now: float) -> None:
        if now - self._window_start > _CONCURRENCY_WINDOW_S:
            self._previous_peak = self._window_peak
            self._window_peak = self._active_rows
            self._window_start = now

    # -- caller side --------------------------------------------------------------------------------------

    def submit(self, request: Request, *, run_inline: bool) -> None:
        """Queue ``request`` — or, with ``run_inline``, run it now on this thread when a session is idle.

        Raises:
            QueueFullError: the queue already holds ``max_queue_rows`` rows.
            VersionRetiredError: the batcher is closing.
        """
        if self._keyed:
            request.key = group_key(request.arrays, self._padding)
        if self._free is None:
            self._adopt_sessions()
        rows = request.rows
        with self._lock:
            if self._closing:
                raise self._retired()
            now = self._clock()
            if now - self._window_start > _CONCURRENCY_WINDOW_S:
                self._roll_window(now)
            active = self._active_rows + rows
            if active > self._window_peak:
                self._window_peak = active
            if run_inline and self._free and not self._queue and (not self._delay_s or rows >= self._target_rows()):
                session = self._free.pop()
                self._in_flight += 1
                self._active_rows = active
                request.state = _RUNNING
            else:
                if self._queued_rows + rows > self._config.max_queue_rows and self._queue:
                    raise QueueFullError(
                        f"model {self.model!r} version {self.version}: the queue holds {self._queued_rows} rows "
                        f"and max_queue_rows is {self._config.max_queue_rows}; retry later",
                        model=self.model,
                        version=self.version,
                    )
                request.enqueued_at = now
                self._queue.append(request)
                self._queued_rows += rows
                self._in_flight += 1
                self._active_rows = active
                if not self._workers:
                    self._start_workers()
                if self._filler is not None:
                    if self._queued_rows >= self._fill_target:
                        self._filler.release()
                        self._filler = None
                elif self._idle and self._free and not getattr(request.future, "defer_wake", False):
                    self._idle.pop().release()
                return
        self._run_inline(session, request)

    def wake(self) -> None:
        """Wake a parked worker if requests are queued and a session is free: the deferred wake of requests
        whose future has ``defer_wake`` set (an event loop queues a whole iteration's requests, then calls this).
        """
        with self._lock:
            if self._queued_rows and self._free and self._idle and self._filler is None:
                self._idle.pop().release()

    def _run_inline(self, session: Any, request: Request) -> None:
        """Run one request on the calling thread with a session already taken, then give it back."""
        try:
            self._execute(session, [request], inline=True)
        finally:
            with self._lock:
                self._free.append(session)  # type: ignore[union-attr]
                if self._queue and self._idle and self._filler is None:
                    self._idle.pop().release()

    def _retired(self) -> VersionRetiredError:
        return VersionRetiredError(
            f"model {self.model!r} version {self.version} is no longer serving",
            model=self.model,
            version=self.version,
        )

    def run_if_idle(self, request: Request) -> bool:
        """Run ``request`` on this thread if a session is free and nothing is queued; else return False
        without queueing it (shadow traffic uses this, so it never takes a session that others wait for).

        Raises:
            VersionRetiredError: the batcher is closing.
        """
        if self._keyed:
            request.key = group_key(request.arrays, self._padding)
        if self._free is None:
            self._adopt_sessions()
        with self._lock:
            if self._closing:
                raise self._retired()
            if not self._free or self._queue:
                return False
            session = self._free.pop()
            self._in_flight += 1
            self._active_rows += request.rows
            request.state = _RUNNING
        self._run_inline(session, request)
        return True

    def wait(self, request: Request) -> None:
        """Block until ``request`` is answered or its deadline passes (synchronous callers only).

        Raises:
            DeadlineExceededError: the deadline passed first; the request is withdrawn from the queue,
                or, if it was already running, its answer is dropped.
        """
        if request.deadline is None:
            request.waiter.acquire()
            if request.baton is not None:
                request.baton.release()
            return
        remaining = request.deadline - self._clock()
        if remaining > 0 and request.waiter.acquire(timeout=remaining):
            if request.baton is not None:
                request.baton.release()
            return
        with self._lock:
            if request.state == _DONE:
                if request.baton is not None:
                    request.baton.release()
                return
            if request.state == _QUEUED:
                self._queued_rows -= request.rows
                self._active_rows -= request.rows
                self._in_flight -= 1
                self._notify_if_drained()
            request.state = _ABANDONED
        raise DeadlineExceededError(
            f"model {self.model!r} version {self.version}: no answer within the request's deadline",
            model=self.model,
            version=self.version,
        )

    # -- workers -----------------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        for index in range(self._pool.size):
            thread = threading.Thread(
                target=self._work,
                name=f"inprocserve-{self.model}-v{self.version}-{index}-{os.getpid()}",
                daemon=True,
            )
            self._workers.append(thread)
            thread.start()

    def _work(self) -> None:
        wake = _allocate_lock()
        wake.acquire()
        self._lock.acquire()
        ready_at: float | None = self._clock()  # when this worker became free: waiting for companions starts
        try:
            while ready_at is not None:
                try:
                    ready_at = self._step(wake, ready_at)
                except Exception:  # a bug here must not kill the worker and strand its callers
                    logger.exception("inprocserve worker for %r v%s hit an error", self.model, self.version)
        finally:
            self._lock.release()

    def _step(self, wake: Any, ready_at: float) -> float | None:
        """One step of a worker, with the lock held on entry and on exit: run a batch, or wait for work.

        Returns when the worker became free again (``ready_at`` of the next step), or None to exit.
        """
        lock = self._lock
        if self._queued_rows and self._free:
            if self._delay_s and self._wait_for_companions(wake, ready_at):
                return ready_at  # companions arrived (or close): decide again
            if not (self._queued_rows and self._free):
                return ready_at  # the wait released the lock: another thread took the work or the session
            session = self._free.pop()
            batch, expired = self._take_batch()
            if self._queued_rows and self._free and self._idle and self._filler is None:
                self._idle.pop().release()  # more than one batch waits: another session can help
            lock.release()
            try:
                for request in expired:
                    if isinstance(request.error, CancelledError):
                        self._deliver(request)  # closes its span; the future is cancelled already
                    else:
                        self._fail(request, self._expired_error())
                if batch:
                    self._execute(session, batch)
            except BaseException:  # never let a worker die silently
                logger.exception("inprocserve worker for %r v%s failed", self.model, self.version)
            finally:
                lock.acquire()
                self._free.append(session)
            return self._clock()
        if self._closing and not self._queued_rows:
            for other in self._idle:  # let parked workers see the close too
                other.release()
            self._idle.clear()
            return None
        self._idle.append(wake)
        lock.release()
        wake.acquire()
        lock.acquire()
        return self._clock()

    def _wait_for_companions(self, wake: Any, ready_at: float) -> bool:
        """With the lock held: if more rows are expected soon, wait for them (releasing the lock).

        Returns True when woken early (the queue reached the target, or close) so the caller decides
        again, and False when there is nothing to wait for or the wait ran out: then it runs what is queued.
        The wait lasts at most ``max_delay`` after the later of the oldest request's arrival and the moment
        the session became free: time spent queued behind a busy session is not time spent waiting for
        companions.
        """
        if self._filler is not None or self._closing:
            return False
        now = self._clock()
        self._roll_window(now)
        target = self._target_rows()
        if self._preferred:
            target = min([size for size in self._preferred if size >= self._queued_rows] or [target])
        if self._queued_rows >= target:
            return False
        oldest = next((r for r in self._queue if r.state == _QUEUED), None)
        if oldest is None:
            return False
        remaining = max(oldest.enqueued_at, ready_at) + self._delay_s - now
        if remaining <= 0:
            return False
        self._filler = wake
        self._fill_target = target
        self._lock.release()
        woke = wake.acquire(timeout=remaining)
        self._lock.acquire()
        if woke:
            return True
        if self._filler is wake:
            self._filler = None
        else:  # released just as the wait timed out: consume it so the lock is held for the next wait
            wake.acquire()
        return False

    def _take_batch(self) -> tuple[list[Request], list[Request]]:
        """With the lock held: pop the next batch of compatible requests, and the expired ones."""
        queue = self._queue
        now = self._clock()
        self._roll_window(now)
        batch: list[Request] = []
        expired: list[Request] = []
        skipped: list[Request] = []
        rows = 0
        key: Any = None
        limit = self._max_rows
        while queue and len(skipped) < 64:
            request = queue[0]
            if request.state != _QUEUED:  # abandoned by a caller whose deadline passed
                queue.popleft()
                continue
            if batch and request.key != key:
                skipped.append(queue.popleft())
                continue
            if rows and rows + request.rows > limit:
                break
            queue.popleft()
            self._queued_rows -= request.rows
            if request.deadline is not None and request.deadline <= now:
                request.state = _DONE
                self._in_flight -= 1
                self._active_rows -= request.rows
                expired.append(request)
                continue
            future = request.future
            if future is not None and not future.set_running_or_notify_cancel():
                request.state = _DONE  # the caller cancelled: drop it before it runs
                request.error = CancelledError()
                self._in_flight -= 1
                self._active_rows -= request.rows
                expired.append(request)  # its telemetry is closed with the expired ones
                continue
            request.state = _RUNNING
            key = request.key
            batch.append(request)
            rows += request.rows
            if rows >= limit or not self._merge:
                break
        if skipped:
            queue.extendleft(reversed(skipped))
        if expired or (not batch and not queue):
            self._notify_if_drained()
        return batch, expired

    def _expired_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"model {self.model!r} version {self.version}: the request's deadline passed while it was queued; "
            "it was not run",
            model=self.model,
            version=self.version,
        )

    # -- running a batch -------------------------------------------------------------------------------------

    def _adopt_sessions(self) -> None:
        sessions = self._pool.sessions()  # builds them on first use in this process (may take a while)
        with self._lock:
            if self._free is None:
                self._free = list(sessions)

    def _execute(self, session: Any, batch: list[Request], *, inline: bool = False) -> None:
        """Run a batch and record its telemetry. A request run ``inline`` (alone, on its caller's thread)
        gets no separate batch span: its request span already carries the compute time and rows, and with
        an SDK installed each span costs tens of microseconds."""
        started = self._clock()
        timing = BatchTiming(batch[0].rows if len(batch) == 1 else sum(request.rows for request in batch))
        for request in batch:
            request.queue_wait_s = max(0.0, started - request.enqueued_at) if request.enqueued_at else 0.0
            request.batch = timing
        span = (
            None
            if inline or not tracing()
            else start_batch_span(self.model, self.version, [request.span for request in batch])
        )
        try:
            self._run_isolating(session, batch)
        except Exception as exc:  # a bug, or the session failed as a whole: fail the batch, keep the worker
            logger.exception("model %r version %s: batch failed unexpectedly", self.model, self.version)
            for request in batch:
                if request.state != _DONE:
                    self._fail(request, exc)
        if span is not None:
            failed = all(request.error is not None for request in batch)
            end_batch_span(
                span,
                rows=timing.rows,
                requests=len(batch),
                compute_s=timing.compute_s,
                error=batch[0].error if failed else None,
            )
        self.batch_sizes.record(timing.rows)
        if metering():
            METRICS.batch_size.record(timing.rows, self._metric_attributes)
            METRICS.batch_duration.record(timing.compute_s, self._metric_attributes)

    def _run_isolating(self, session: Any, batch: list[Request]) -> None:
        """Run ``batch``; if it fails, bisect so only the failing request(s) get the error."""
        try:
            results = self._run(session, batch)
        except DeadlineExceededError as exc:  # every request in it is past its deadline: no bisection
            for request in batch:
                self._fail(request, exc)
            return
        except InprocserveError as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            middle = len(batch) // 2
            self._run_isolating(session, batch[:middle])
            self._run_isolating(session, batch[middle:])
            return
        except BatchShapeError as exc:
            self._disable_merging(str(exc))
            for request in batch:
                self._run_isolating(session, [request])
            return
        self._complete_batch(batch, results)

    def _time_left(self, batch: list[Request]) -> float | None:
        """Seconds until the run of ``batch`` must stop: until the latest deadline in it, so a merged batch
        is stopped only once every request in it is past its deadline (``None``: one has no deadline)."""
        if len(batch) == 1:
            deadline = batch[0].deadline
            return None if deadline is None else deadline - self._clock()
        latest = 0.0
        for request in batch:
            if request.deadline is None:
                return None
            latest = max(latest, request.deadline)
        return latest - self._clock()

    def _run(self, session: Any, batch: list[Request]) -> list[dict[str, Any]]:
        timeout_s = self._time_left(batch)
        if len(batch) == 1:
            request = batch[0]
            if self._chunk_rows is not None and request.rows > self._chunk_rows:
                return [self._run_in_chunks(session, request)]
            started = time.perf_counter()
            outputs = self._pool.run(session, request.arrays, timeout_s=timeout_s, watchdog=self._watchdog)
            if request.batch is not None:
                request.batch.compute_s = time.perf_counter() - started
            return [dict(zip(self._output_names, outputs, strict=True))]
        crop = None
        if self._padding is not None:
            feeds, lengths = pad_and_stack([r.arrays for r in batch], self._input_names, self._padding)
            crop = (self._padding.outputs, lengths)
        else:
            feeds = stack_inputs([r.arrays for r in batch], self._input_names)
        started = time.perf_counter()
        outputs = self._pool.run(session, feeds, timeout_s=timeout_s, watchdog=self._watchdog)
        if batch[0].batch is not None:
            batch[0].batch.compute_s = time.perf_counter() - started
        return split_outputs(outputs, self._output_names, [r.rows for r in batch], crop=crop)

    def _run_in_chunks(self, session: Any, request: Request) -> dict[str, Any]:
        """A request larger than ``max_batch_size`` runs in slices that are stitched back together."""
        step = self._chunk_rows
        assert step is not None
        parts = []
        for start in range(0, request.rows, step):
            chunk = {name: array[start : start + step] for name, array in request.arrays.items()}
            left = None if request.deadline is None else request.deadline - self._clock()
            parts.append(self._pool.run(session, chunk, timeout_s=left, watchdog=self._watchdog))
        return {name: np.concatenate([part[index] for part in parts]) for index, name in enumerate(self._output_names)}

    def _disable_merging(self, reason: str) -> None:
        if self._merge:
            self._merge = False
            self._max_rows = 1
            self._chunk_rows = None
            self._delay_s = 0.0
            logger.warning(
                "model %r version %s: %s; its outputs have no batch axis, so requests now run one at a time",
                self.model,
                self.version,
                reason,
            )

    def _complete_batch(self, batch: list[Request], results: list[dict[str, Any]]) -> None:
        """Hand a successful batch its answers.

        Synchronous callers are woken as a chain: this thread wakes the first, and each caller wakes the
        next as soon as it runs. Waking all of them at once would make dozens of threads fight over the GIL
        at the same moment; the chain keeps two in play and measurably shortens the time until the last
        caller is back (docs/batching.md).
        """
        if len(batch) == 1:  # the common case at low load: no lists, no chain
            self._complete(batch[0], results[0], None, ran=True)
            return
        futures = []
        waiters: list[Request] = []
        rows = 0
        with self._lock:
            for request, outputs in zip(batch, results, strict=True):
                request.outputs = outputs
                abandoned = request.state == _ABANDONED  # its caller gave up while it ran
                request.state = _DONE
                rows += request.rows
                if abandoned:
                    continue
                if request.future is not None:
                    futures.append(request)
                else:
                    waiters.append(request)
            for index in range(len(waiters) - 1):
                waiters[index].baton = waiters[index + 1].waiter
            self._in_flight -= len(batch)
            self._active_rows -= rows
            self.batches_run += 1
            self.rows_run += rows
            if self._closing:
                self._notify_if_drained()
        if waiters:
            waiters[0].waiter.release()
        if futures:
            held: list[Callable[[], None]] = []  # answers bound for an event loop wake it once, after the last
            outer, _held.wakes = _held.wakes, held
            try:
                for request in futures:
                    self._deliver(request)
            finally:
                _held.wakes = outer
                for wake in held:
                    wake()

    def _complete(
        self, request: Request, outputs: dict[str, Any] | None, error: BaseException | None, *, ran: bool = False
    ) -> None:
        """Answer one request that was running; ``ran``: it ran as a batch of its own (count it)."""
        request.outputs = outputs
        request.error = error
        with self._lock:
            abandoned = request.state == _ABANDONED  # its caller gave up while it ran
            request.state = _DONE
            self._in_flight -= 1
            self._active_rows -= request.rows
            if ran:
                self.batches_run += 1
                self.rows_run += request.rows
            if self._closing:
                self._notify_if_drained()
        if not abandoned:
            _answer(request, self._deliver)

    def _fail(self, request: Request, error: BaseException) -> None:
        if request.state == _DONE:  # expired or cancelled while queued: no longer counted as in flight
            request.error = error
            if request.future is None or not request.future.done():
                _answer(request, self._deliver)
            return
        self._complete(request, None, error)

    # -- shutdown --------------------------------------------------------------------------------------------

    def _notify_if_drained(self) -> None:
        if self._in_flight == 0:
            self._drained.notify_all()

    def close(self, *, timeout_s: float | None = None) -> bool:
        """Stop taking requests, let queued and running ones finish, stop the workers. Idempotent.

        Requests still queued after ``timeout_s`` get :class:`ServerClosedError`. Returns whether everything
        drained in time.
        """
        with self._lock:
            self._closing = True
            for wake in self._idle:
                wake.release()
            self._idle.clear()
            if self._filler is not None:
                self._filler.release()
                self._filler = None
            if self._queue and not self._workers:
                self._start_workers()
            drained = self._drained.wait_for(lambda: self._in_flight == 0, timeout_s)
            leftovers = [r for r in self._queue if r.state == _QUEUED]
            self._queue.clear()
            self._queued_rows = 0
            for request in leftovers:
                request.state = _DONE
                self._in_flight -= 1
                self._active_rows -= request.rows
            workers = list(self._workers)
            if drained:
                self._free = []  # the pool owns the sessions; a closed batcher keeps no reference
        for request in leftovers:
            self._fail(
                request,
                ServerClosedError(
                    f"model {self.model!r} version {self.version} closed before the request ran",
                    model=self.model,
                    version=self.version,
                ),
            )
        self._watchdog.close()
        current = threading.current_thread()
        for thread in workers:
            if thread is not current:
                thread.join(timeout=None if drained else 1.0)
        return drained
