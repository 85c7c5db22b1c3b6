"""The batcher: merges concurrent requests for one model version into batched backend runs.

* **Idle: run now, on the caller's thread.** A synchronous caller that finds the queue empty and a runner
  free runs its own request on its own thread: no queue and no thread hand-off, so a lightly loaded server
  adds almost nothing to a raw run.
* **Busy: accumulate.** Otherwise the request is queued. One worker thread per runner takes up to
  ``max_batch_size`` rows of compatible requests the moment its runner is free — or a little later, when
  the flush policy (``_flush_policy.py``) expects companions worth waiting for.
* How a batch runs (stacking, chunking, bisecting a failed batch) is ``_batch_execution.py``; how a
  request is answered is ``Request.complete`` (``_request.py``); the runners come from the backend
  (``_backend.py``) through a :class:`~inprocserve._pool.RunnerPool`.

docs/batching.md explains the policy with measurements. The lock, queue and threads are private to
:class:`Batcher`; nothing is held while a model runs.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import CancelledError, Future
from typing import Any

from . import _fork
from ._backend import Backend, raised_by_signal_handler
from ._batch_execution import BatchExecution
from ._batch_ops import group_key
from ._batch_queue import BatchQueue
from ._config import BatchingConfig
from ._deadlines import Watchdog
from ._errors import DeadlineExceededError, InferenceError, QueueFullError, ServerClosedError, VersionRetiredError
from ._flush_policy import OVERLAP_BELOW_S, FlushPolicy, RunCost, automatic_delay_s
from ._pool import RunnerPool, keep_inherited
from ._recorder import Recorder
from ._request import (
    ABANDONED,
    DONE,
    QUEUED,
    RUNNING,
    BatchTiming,
    Finisher,
    Request,
    complete_batch,
    let_go_of_future,
)
from ._run_cost import REFIT_INTERVAL_S, RunCostLearner
from ._stats import BatchSizeHistogram
from ._wake_relay import RELAY

__all__ = ["Batcher"]

logger = logging.getLogger(__name__)

_allocate_lock = threading.Lock


def _gevent_locks() -> None:
    """gevent patched the process after this module was imported: use its locks (see _fork)."""
    global _allocate_lock
    _allocate_lock = threading.Lock


_fork.on_monkey_patch(_gevent_locks)


# How long closing a drained batcher waits for each worker to exit (see close).
_WORKER_EXIT_S = 5.0


class _WithdrawIfCancelled:
    """A ``submit`` future's done-callback: a request cancelled while queued leaves the queue now. It lets
    go of the request once called: a future keeps its callbacks, and a caller keeping its futures must not
    keep their requests' inputs too. ``alarm``: the request's deadline on the batcher's watchdog (see
    :meth:`Batcher._expire_queued`), disarmed once the future is done."""

    __slots__ = ("alarm", "batcher", "request")

    def __init__(self, batcher: Batcher, request: Request) -> None:
        self.batcher: Batcher | None = batcher
        self.request: Request | None = request
        self.alarm: Any = None

    def __call__(self, future: Future[Any]) -> None:
        batcher, request, alarm = self.batcher, self.request, self.alarm
        self.batcher = self.request = self.alarm = None
        if alarm is not None and batcher is not None:
            batcher._deadlines.disarm(alarm)
        # (answered: DONE already, the common case)
        if batcher is not None and request is not None and request.state == QUEUED and future.cancelled():
            if batcher.withdraw(request, CancelledError()):
                # As a worker taking it would: concurrent.futures.wait and as_completed count a cancelled
                # future done only once notified, and no worker takes a withdrawn request.
                future.set_running_or_notify_cancel()

    def expire(self) -> None:
        """The deadline alarm (the watchdog's thread). It holds this, not the request: a disarmed alarm stays
        in the watchdog's heap until it comes up, and must not keep an answered request's inputs and outputs
        that long."""
        batcher, request = self.batcher, self.request
        if batcher is not None and request is not None:
            batcher._expire_queued(request, self)


class Batcher:
    """Queue and worker threads for one model version.

    Thread-safe. Threads start lazily on first use (and again in a forked child); :meth:`close` stops them.

    Args:
        backend: Where batches run; one worker per runner.
        config: Batching settings.
        input_names / output_names: The model's signature, in order.
        batchable: Whether rows of several requests may be stacked on axis 0, and a large request's rows be
            run in slices: each row's answer is its own, whatever rows share its run.
        has_dynamic_inner_axes: Whether any input has a dynamic axis besides axis 0 (requests must then be
            grouped by shape).
        run_cost: The model's cost per run measured at load; sets the automatic ``max_delay_s``. Corrected from the
            batches run (``RunCostLearner``).
        deliver: Called on the thread that completed a request, to resolve its future (if any).
        clock: A monotonic clock.
    """

    def __init__(
        self,
        backend: Backend,
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
        self.model = backend.model
        self.version = backend.version
        self._config = config
        self._deliver = deliver
        self._clock = clock
        self._padding = config.padding if batchable else None
        self._merge = batchable and config.enabled
        self._unbatchable_reason: str | None = None
        # Group keys are needed only when requests can differ in a non-batch axis (or are padded on one).
        self._keyed = self._merge and (config.padding is not None or has_dynamic_inner_axes)
        self.run_cost = run_cost
        # Corrects run_cost from the batches the workers and event loops run (a model whose rows weigh alike, run
        # here): the load's probe is a few runs, noise on a busy host, and the cost picks the flush rules below.
        self._learner = (
            RunCostLearner()
            if run_cost is not None
            and run_cost.row_elements is None
            and self._padding is None
            and backend.kind == "onnxruntime"
            else None
        )
        # Whether a run computes in this process. A remote backend's run waits on the network, where a stalled
        # server could hold it until its deadline: an event loop never runs such a request itself.
        self.runs_in_process = backend.kind == "onnxruntime"
        # this version's metric attributes, built once (and its dropped root spans not made, when local)
        self.telemetry = Recorder(self.model, self.version, local=self.runs_in_process)
        self._policy = FlushPolicy(
            max_rows=config.max_batch_size if self._merge else 1,
            delay_s=automatic_delay_s(config, merge=self._merge, run_cost=run_cost),
            preferred_batch_sizes=config.preferred_batch_sizes or (),
            runners=backend.concurrency,
            overlap=run_cost is not None and run_cost.fixed_s < OVERLAP_BELOW_S,
            clock=clock,
        )
        self._execution = BatchExecution(
            backend,
            input_names=input_names,
            output_names=output_names,
            padding=self._padding,
            # Only a model with a batch axis, whose rows are independent, can run a large request in slices;
            # others take it whole (batching.max_request_rows bounds it).
            chunk_rows=config.max_batch_size if batchable else None,
            succeeded=self._succeeded,
            failed=self._fail,
            unbatchable=self._disable_merging,
            clock=clock,
            telemetry=self.telemetry,
        )
        self._pool = RunnerPool(backend)
        # Answers a queued ``submit`` future at its deadline (see _expire_queued); its thread starts with the
        # first such future, and close() stops it.
        self._deadlines = Watchdog(f"inprocserve-queue-deadlines-{self.model}-v{self.version}")
        self._reset_state()
        _fork.register(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._queue = BatchQueue()
        self._refit_at = -math.inf  # when the run cost may next be refitted (see _observe_run)
        self._idle: list[Any] = []  # wake locks of parked workers
        self._filler: Any = None  # wake lock of the worker waiting for companions
        self._fill_target = 0
        self._workers: list[threading.Thread] = []
        self.adopted = False
        """Whether this process's runners are adopted (the first request of a process adopts them): a plain
        attribute, read on every lone request (a property's call costs it more than the read)."""
        self._beside_runner: Any = None  # the runner that run_beside runs on, once adopted
        self._closing = False
        self._in_flight = 0  # callers' requests accepted and not yet answered (Request.callers each)
        self._active_rows = 0  # rows queued or running
        self._drained = threading.Condition(self._lock)
        self.batches_run = 0
        self.rows_run = 0

    def _after_fork_in_child(self) -> None:
        closing = self._closing
        if self._beside_runner is not None:  # the parent's: destroying it here could hang (see RunnerPool)
            keep_inherited(self._beside_runner)
        self._reset_state()  # queued requests belong to the parent's threads; the pool resets itself
        self._policy.reset()
        self._execution.batch_sizes = BatchSizeHistogram()
        self._closing = closing

    # -- observation ---------------------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queue.rows

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @property
    def idle(self) -> bool:
        """Whether no rows are queued or running (a plain read: a hint)."""
        return self._active_rows == 0

    @property
    def stacks_freely(self) -> bool:
        """Whether any requests' rows may be stacked into one run as they are (merging on, no grouping by
        shape, no padding): then an event loop may merge its tasks' requests before queueing them."""
        return self._merge and not self._keyed

    @property
    def max_rows(self) -> int:
        """The most rows one run takes (``max_batch_size``; 1 once merging is off)."""
        return self._policy.max_rows

    @property
    def max_delay_s(self) -> float:
        """The effective longest wait for companions (configured, or derived from the run cost)."""
        return self._policy.delay_s

    @property
    def batch_sizes(self) -> BatchSizeHistogram:
        return self._execution.batch_sizes

    # -- caller side --------------------------------------------------------------------------------------

    def submit(self, request: Request, *, run_inline: bool, readmit: bool = False) -> None:
        """Queue ``request`` — or, with ``run_inline``, run it now on this thread when a runner is idle.

        ``readmit``: the request was accepted already, as part of a running request that is still counted
        in flight (a failed merged request's caller, queued again on its own): it is queued even while the
        batcher is closing, and never shed, since :meth:`close` is still waiting for it.

        Raises:
            QueueFullError: the queue already holds ``max_queue_rows`` rows.
            VersionRetiredError: the batcher is closing.
        """
        if self._keyed:
            request.key = group_key(request.arrays, self._padding)
        request.queued_on = self
        if request.deliver is None:
            request.deliver = self._deliver
        pool = self._pool
        if not self.adopted:
            self._adopt_runners()
        rows = request.rows
        abandoned: list[tuple[Request, BaseException]] = []  # (given-up requests dropped to make room)
        try:
            with self._lock:
                if self._closing and not readmit:
                    raise self._retired()
                active = self._active_rows + rows
                # (a request readmitted is no arrival: its callers arrived with the merged request, which is
                # still counted in flight, and counted again they made the callers seem to overlap less)
                runs_now = not readmit and self._policy.arrive(
                    active, rows, self._in_flight + request.callers, idle=not self._queue.rows and pool.has_free()
                )
                runner = pool.checkout() if run_inline and runs_now and not self._queue.rows else None
                if runner is not None:
                    self._in_flight += request.callers
                    self._active_rows = active
                    request.state = RUNNING
                    request.runner = runner  # (no call since the checkout: no signal handler runs in between)
                else:
                    queue = self._queue
                    # an empty queue takes any one caller's request, however large; never several callers' at once
                    if (
                        queue.rows + rows > self._config.max_queue_rows
                        and (queue.rows or request.callers > 1)  # (rows: given-up requests may linger in it)
                        and not readmit
                        and (
                            not self._drop_abandoned_locked(abandoned)
                            or queue.rows + rows > self._config.max_queue_rows
                        )
                    ):
                        raise QueueFullError(
                            f"model {self.model!r} version {self.version}: the queue holds {queue.rows} rows "
                            f"and max_queue_rows is {self._config.max_queue_rows}; retry later",
                            model=self.model,
                            version=self.version,
                        )
                    request.enqueued_at = self._clock()
                    # Counted, then queued: a signal handler that raises in the caller's thread (the only place
                    # the append can be cut short is as it begins) must leave no request run but never counted
                    # (counts below zero: close() would wait its whole timeout), nor one counted but never queued.
                    self._in_flight += request.callers
                    self._active_rows = active
                    rows_before = queue.rows
                    try:
                        queue.append(request)
                    except BaseException:
                        if queue.rows == rows_before:  # (BatchQueue.append counts its rows and queues in one go)
                            self._in_flight -= request.callers
                            self._active_rows -= rows
                        raise
                    if not self._workers:
                        self._start_workers()
                    if self._filler is not None:
                        # the worker waiting for companions decides again once they are queued, or once an
                        # arrival finds no reason to wait (the callers overlap now, enough rows came at once, or
                        # companions were seen not to come: FlushPolicy.companions_come)
                        if queue.rows >= self._fill_target or runs_now:
                            filler, self._filler = self._filler, None  # (cleared first: see _wait_for_companions)
                            filler.release()
                    elif self._idle and pool.has_free() and not getattr(request.future, "defer_wake", False):
                        self._wake_parked()
            if abandoned:  # (empty but for a refusal that found given-up requests: no call per request)
                _answer_dropped(abandoned)
            if runner is None:  # queued
                if request.future is not None:
                    self._withdraw_when_given_up(request)
                return
            self._run_inline(runner, request)
        except BaseException:  # interrupted as the lock was let go, or in _run_inline's own clean-up
            # first: a worker taking the request would wait for its future's lock with the batcher's lock held
            let_go_of_future(request.future)  # (interrupted as the future's done-callback was added)
            _answer_dropped(abandoned)  # (a refusal: answered after the lock was let go)
            if request.runner is not None:
                self._finish_inline(request, ran=False)
            else:  # (a refusal, or queued and interrupted before a worker was started or woken for it)
                self._nudge()
            raise

    def _drop_abandoned_locked(self, dropped: list[tuple[Request, BaseException]]) -> bool:
        """With the lock held, as a request is about to be refused for a full queue that no worker is taking
        (a parked worker and a free runner): withdraw the queued requests nobody is left to answer, appending
        each with what it is answered to ``dropped``; whether any was. An event loop's task cancelled from
        outside while its loop was stopped, or a loop closed, never withdraws its request (that runs on the
        loop), and the loop never wakes a worker for what it queued in its last iteration (its flush never
        ran): the rows stayed counted against ``max_queue_rows``, and a live caller got ``QueueFullError``
        from a queue holding nothing live. Only while the queue is stuck: a busy worker takes them soon."""
        if not (self._idle and self._pool.has_free() and self._filler is None):
            return False
        found = False
        for queued in list(self._queue):
            given_up = getattr(queued.future, "abandoned", None)
            error = None if queued.state != QUEUED or given_up is None else given_up()
            if error is not None:
                self._withdraw_locked(queued)
                dropped.append((queued, error))
                found = True
        return found

    def _withdraw_when_given_up(self, request: Request) -> None:
        """Have a queued request whose caller may give up without waiting (a cancelled ``submit`` future, an
        ``apredict`` task cancelled or past its deadline) withdrawn from the queue the moment it does: left
        there until a worker took it, it counted against ``max_queue_rows`` (a live caller got
        ``QueueFullError`` from a queue holding nothing live) and held its inputs. Outside the lock: a future
        cancelled already calls the hook at once."""
        future = request.future
        if type(future) is Future:
            callback = _WithdrawIfCancelled(self, request)
            deadline = request.deadline
            if deadline is not None:
                # (unlocked: it answers the future, whose caller's callbacks run)
                callback.alarm = self._deadlines.arm(max(0.0, deadline - self._clock()), callback.expire, unlocked=True)
            future.add_done_callback(callback)
        else:  # an event loop's stand-in (``_loop_batching``), which tells its task's giving up
            watch = getattr(future, "withdraw_when_given_up", None)
            if watch is not None:
                watch(self, request)

    def withdraw(self, request: Request, error: BaseException) -> bool:
        """A queued request's caller gave up (``error``: what it got, a cancellation or its deadline): stop
        counting it, drop it from the queue, and answer it with ``error`` (recorded once, as when a worker
        finds it cancelled; its future is done already). Nothing if it left the queue meanwhile (False)."""
        with self._lock:
            if request.state != QUEUED or request.queued_on is not self:
                return False
            self._withdraw_locked(request)
        request.complete(None, error)
        return True

    def _expire_queued(self, request: Request, callback: _WithdrawIfCancelled) -> None:
        """A queued ``submit`` future's deadline passed (the watchdog's thread): withdraw its request and
        answer it now, as :meth:`predict`'s caller and an ``apredict`` task are answered at theirs. Left
        queued until a session would take it, it was answered that late and counted against
        ``max_queue_rows`` meanwhile (a live caller got ``QueueFullError`` from a queue of expired requests)."""
        future = request.future
        with self._lock:
            if request.state != QUEUED or request.queued_on is not self or future is None:
                return
            left = request.deadline - self._clock() if request.deadline is not None else 0.0
            if left > 0:  # (an injected clock behind the watchdog's): look again then
                callback.alarm = self._deadlines.arm(left, callback.expire, unlocked=True)
                return
            # Under the lock, as a worker taking it does: a future cancelled meanwhile is notified and
            # recorded as cancelled; any other can no longer be cancelled.
            error: BaseException = self._expired_error() if future.set_running_or_notify_cancel() else CancelledError()
            self._withdraw_locked(request)
        request.complete(None, error)

    def _withdraw_locked(self, request: Request) -> None:
        request.state = DONE  # (skipped by whoever takes a batch; counted once, by the caller)
        self._queue.withdraw(request)
        self._in_flight -= request.callers
        self._active_rows -= request.rows
        self._notify_if_drained()

    def wake(self, *, wait: bool = True) -> None:
        """Wake a parked worker if requests are queued and a runner is free: the deferred wake of requests
        whose future has ``defer_wake`` set (an event loop queues a whole iteration's requests, then calls this).
        ``wait=False``: nothing if the lock is held (called where this thread may hold it: a finalizer).
        """
        if not self._lock.acquire(wait):
            return
        try:
            if self._queue.rows and self._pool.has_free() and self._idle and self._filler is None:
                self._wake_parked()
        finally:
            self._lock.release()

    def runs_within(self, rows: int, max_run_s: float, arrays: Mapping[str, Any] | None = None) -> bool:
        """Whether a run of ``rows`` rows (of ``arrays``) should take at most ``max_run_s`` by the version's
        measured run cost, in this process (never for a remote backend, whose run is a network call that may
        stall): what an event loop's thread may run itself. For a model with a dynamic inner axis, the cost
        was measured with that axis of size 1: a request's rows are weighed by its inputs' sizes, and without
        ``arrays`` it is not taken to run within any time (see :meth:`RunCost.rows_of`)."""
        cost = self.run_cost
        return (
            cost is not None
            and self.runs_in_process
            and cost.fixed_s + cost.per_row_s * cost.rows_of(rows, arrays) <= max_run_s
        )

    def run_lone_here(self, max_run_s: float, *, accept: Callable[[Any], bool]) -> bool:
        """Run the queue's only request on this thread, now, if a runner is free and its run should take at
        most ``max_run_s`` by the version's measured run cost; else return False and leave it queued.

        An event loop calls this at the end of an iteration that queued a request (``Future.defer_wake``):
        a run that short costs the loop less than handing the request to a worker and being woken for the
        answer. More than one request queued means companions to batch: the worker takes them. Only a
        request whose future ``accept`` takes is run (the loop's own: another caller's future may have
        callbacks that must not run on the loop's thread). A remote backend's request never runs here
        (:attr:`runs_in_process`).
        """
        if self.run_cost is None or not self.runs_in_process:
            return False
        with self._lock:
            queue = self._queue
            only = queue.only()
            if only is None or self._closing or self._filler is not None or not self._pool.has_free():
                return False
            if not accept(only.future):
                return False
            if not self.runs_within(only.rows, max_run_s, only.arrays):
                return False
            batch, expired = self._take_batch()
            runner = self._pool.checkout() if batch else None
            if runner is not None:
                batch[0].runner = runner  # (no call since the checkout: no signal handler runs in between)
        try:
            for request in expired:  # found expired or cancelled as it was taken: answered like a worker does
                if isinstance(request.error, CancelledError):
                    request.complete(None, request.error)
                else:
                    self._fail(request, self._expired_error())
            if runner is not None:
                batch[0].queue_wait_s = max(0.0, self._clock() - batch[0].enqueued_at)
                self._run_inline(runner, batch[0])
        except BaseException as exc:  # the loop's thread interrupted (a signal handler raised), or the run stopped
            lone = batch[0] if runner is not None else None
            if lone is not None and lone.runner is not None:  # before the run began
                self._finish_inline(lone, ran=False)
                # (a task's time limit is its loop's tasks' answer: a task that runs asyncio.run is stopped)
                stopped = isinstance(exc, Exception) and raised_by_signal_handler(exc)
                lone.complete(None, exc if stopped else self._interrupted_error())
            elif lone is not None and lone.outputs is None and lone.error is None:
                # Stopped inside its run (gevent's Timeout): _run_inline gave the runner back and raised before
                # answering it, and its task waited for good. (A request run in slices is answered there.)
                stopped = isinstance(exc, Exception) and raised_by_signal_handler(exc)
                lone.complete(None, exc if stopped else self._run_interrupted_error(exc))
            raise
        if runner is not None:
            request = batch[0]
            timing = request.batch  # it was queued: a batch of one, recorded like a worker's
            runs = getattr(timing, "runs", None)  # (run in slices: each slice's session.run, as a worker's)
            if runs:
                self.telemetry.runs_finished(runs, queue_wait_s=request.queue_wait_s)
            elif timing is not None:
                self.telemetry.batch_finished(
                    timing.rows, timing.compute_s, inline=False, queue_wait_s=request.queue_wait_s
                )
        return True

    def _run_inline(self, runner: Any, request: Request) -> None:
        """Run one request on the calling thread with a runner already taken, give the runner back (one
        lock round trip for all the bookkeeping), then answer it."""
        execution = self._execution
        if not execution.runs_alone(request):  # a large request runs in slices, like a worker's batch
            try:
                execution.execute(runner, [request], inline=True)  # (answered: counted finished there)
            finally:  # also when the caller's thread is interrupted between two slices
                self._finish_inline(request, ran=False)
            return
        outputs: dict[str, Any] | None = None
        error: BaseException | None = None
        finished = False
        try:
            outputs, error = execution.run_alone(runner, request)
            finished = True
        finally:  # also when the caller's thread is interrupted: the runner and the counts are given back
            abandoned = self._finish_inline(request, ran=finished and error is None)
        try:
            if not abandoned:
                request.complete(outputs, error)  # (a copy of the error, without its traceback)
        finally:
            # The error's traceback leads back to this frame, which keeps its locals once it returns: a cycle
            # holding the frames below too (the dispatch's version, its sessions) until the collector's pass.
            error = None

    def run_plain(
        self,
        arrays: dict[str, Any],
        rows: int,
        *,
        parent: Any,
        timing: BatchTiming | None,
        deadline: float | None = None,
        callers: int = 1,
        from_loop: bool = False,
    ) -> dict[str, Any] | None:
        """Run a lone request's rows now, on this thread, if a runner is idle, nothing is queued and recent
        traffic suggests no companions to wait for (what :meth:`submit` runs inline); else return ``None``
        having changed nothing, and the caller takes the full way (:meth:`submit`). ``from_loop``: an event
        loop's request (one task's alone in its iteration, or a group), which is all its loop has until the
        loop runs again: no companion from there can join it, so recent traffic never holds it back (see
        :meth:`_wait_for_companions`).

        This is :meth:`Server.predict`'s shortest way for a plain request (no cache, drift or shadows): no
        :class:`Request`, one lock round trip to take a runner and one to give it back with the counts. The
        run is stopped at ``deadline`` (on this batcher's clock). Its error (``InprocserveError``, or a bug's
        exception) is raised, after the counts are given back; so is an interruption of the caller's thread.
        Before this process's runners are adopted (:attr:`adopted`) it returns ``None``. ``callers``: how many
        callers' requests the rows carry (an event loop's merged requests), counted in flight.
        """
        execution = self._execution
        if not self.adopted or (execution.chunk_rows is not None and rows > execution.chunk_rows):
            return None
        pool, queue = self._pool, self._queue  # (queue: read again in the finally, where mypy takes it for empty)
        if self._queue.rows or not pool.free:  # busy (read without the lock: a hint, checked below)
            return None
        runner = None
        ran = False
        run_s = None  # how long an event loop's own run took: its runs teach the run cost (see _observe_run)
        try:
            with self._lock:
                if self._closing or self._queue.rows:
                    return None
                active = self._active_rows + rows
                if not self._policy.arrive(active, rows, self._in_flight + callers) and not from_loop:
                    self._policy.withdraw(callers)  # (the full way follows: its arrival is the one counted)
                    return None
                free = pool.free  # (RunnerPool.checkout, written out: with subscripts, see there)
                if not free:
                    self._policy.withdraw(callers)  # (as above)
                    return None
                taken = free[-1]
                del free[-1]
                self._in_flight += callers
                self._active_rows = active
                runner = taken  # (no call since the runner was read: no signal handler can run in between)
            timeout_s = None if deadline is None else deadline - self._clock()
            if from_loop and self._learner is not None:
                started = time.perf_counter()
                outputs = execution.run_plain(runner, arrays, rows, parent=parent, timing=timing, timeout_s=timeout_s)
                run_s = time.perf_counter() - started
            else:
                outputs = execution.run_plain(runner, arrays, rows, parent=parent, timing=timing, timeout_s=timeout_s)
            ran = True
        finally:  # also when the run failed or the caller's thread is interrupted (as the lock was let go too)
            if runner is not None:
                with self._lock:
                    # No call until the runner and the counts are back: a pending signal handler runs as a
                    # call begins, and one that raises here would lose them (nothing cleans up after this).
                    free = pool.free
                    if free is not None:
                        free += (runner,)
                    self._in_flight -= callers
                    self._active_rows -= rows
                    if ran:
                        self.batches_run += 1
                        self.rows_run += rows
                    if self._closing:
                        self._notify_if_drained()
                    if queue.rows and self._idle and self._filler is None:  # (_wake_for_queued's test)
                        self._wake_parked()
                    if run_s is not None:  # (last: a call, where a signal handler may raise)
                        self._observe_run(rows, run_s)
        return outputs

    def _finish_inline(self, request: Request, *, ran: bool) -> bool:
        """Give back the runner taken to run ``request`` on this thread and count the request finished (and
        its run, if it ``ran``), unless done already; returns whether its caller gave up on it.

        Idempotent, and with no call before both are done: a signal handler that raises (Ctrl-C, a job's time
        limit) runs as a call begins, so an interruption here leaves everything as it was, for the caller's
        own clean-up (:meth:`submit`) to run this again; a runner given back twice would be lent to two runs
        at once, and one never given back would leave every later request waiting for it."""
        with self._lock:
            runner = request.runner
            if runner is not None:
                free = self._pool.free
                if free is not None:
                    free += (runner,)
                request.runner = None
            state = request.state
            if state != DONE:  # (_count_finished's counting, written out: a call here could be interrupted)
                callers, rows = request.callers, request.rows
                self._in_flight -= callers
                self._active_rows -= rows
                if ran:
                    self.batches_run += 1
                    self.rows_run += rows
                request.state = DONE
                if self._closing:
                    self._notify_if_drained()
            self._wake_for_queued()
        return state == ABANDONED

    def _nudge(self) -> None:
        """Start or wake a worker for what is queued: after a submit cut short by an interruption between
        queueing its request and waking a worker for it, which left the request queued, counted, and run by
        nobody (every later lone request queued behind it, as the queue was not empty)."""
        with self._lock:
            queue = self._queue
            if not queue.rows or self._closing:  # (close() answers or refuses what is queued)
                return
            if not self._workers:
                self._start_workers()
            if self._filler is not None:
                if queue.rows >= self._fill_target:
                    filler, self._filler = self._filler, None  # (cleared first: see _wait_for_companions)
                    filler.release()
            elif self._idle and self._pool.has_free():
                self._wake_parked()

    def _wake_for_queued(self) -> None:
        """With the lock held: wake a parked worker for what queued while a runner was lent inline."""
        if self._queue.rows and self._idle and self._filler is None:
            self._wake_parked()

    def _wake_parked(self) -> None:
        """With the lock held: wake the last parked worker. Taken with subscripts, not ``list.pop()``, after
        which a signal handler could run and lose the worker taken (parked for good)."""
        idle = self._idle
        wake = idle[-1]
        del idle[-1]
        wake.release()

    def _interrupted_error(self) -> InferenceError:
        return InferenceError(
            f"model {self.model!r} version {self.version}: the thread that was to run this request was "
            "interrupted (a signal handler raised) before the run; retry",
            model=self.model,
            version=self.version,
        )

    def _run_interrupted_error(self, cause: BaseException) -> InferenceError:
        error = InferenceError(
            f"model {self.model!r} version {self.version}: the run was interrupted by {type(cause).__name__}; retry",
            model=self.model,
            version=self.version,
        )
        error.__cause__ = cause
        return error

    def _retired(self) -> VersionRetiredError:
        return VersionRetiredError(
            f"model {self.model!r} version {self.version} is no longer serving",
            model=self.model,
            version=self.version,
        )

    def run_if_idle(self, request: Request) -> bool:
        """Run ``request`` on this thread if a runner is free and nothing is queued; else return False
        without queueing it (shadow traffic uses this, so it never takes a runner that others wait for).

        Raises:
            VersionRetiredError: the batcher is closing.
        """
        if self._keyed:
            request.key = group_key(request.arrays, self._padding)
        request.queued_on = self
        if request.deliver is None:
            request.deliver = self._deliver
        if not self.adopted:
            self._adopt_runners()
        try:
            with self._lock:
                if self._closing:
                    raise self._retired()
                runner = None if self._queue.rows else self._pool.checkout()
                if runner is None:
                    return False
                self._in_flight += 1
                self._active_rows += request.rows
                request.state = RUNNING
                request.runner = runner
            self._run_inline(runner, request)
        except BaseException:  # interrupted before, or in, _run_inline's own clean-up (see submit)
            if request.runner is not None:
                self._finish_inline(request, ran=False)
            raise
        return True

    def run_beside(self, request: Request) -> None:
        """Run ``request`` now, on this thread, as an extra run of the backend's first runner, outside the
        pool's count (batch scoring's own lane: its caller decides that the runner may run concurrently and
        that a core is left for it). Counted in flight like any request, so :meth:`close` waits for it.

        Raises:
            VersionRetiredError: the batcher is closing.
        """
        request.queued_on = self
        if request.deliver is None:
            request.deliver = self._deliver
        if not self.adopted:
            with self._lock:
                if self._closing:  # before building runners: a closed backend has none
                    raise self._retired()
            self._adopt_runners()
        counted = False
        try:
            with self._lock:
                if self._closing:
                    raise self._retired()
                runner = self._beside_runner
                self._in_flight += 1
                self._active_rows += request.rows
                request.state = RUNNING
                counted = True
            self._execution.execute(runner, [request], inline=True)
        except BaseException:  # the thread interrupted before the request was answered (also as the lock was
            if counted:  # let go, where a signal handler runs): give its counts back
                self._uncount_unanswered(request)
            raise

    def _uncount_unanswered(self, request: Request) -> None:
        """Stop counting a running request that will never be answered (its thread was interrupted)."""
        with self._lock:
            if request.state != DONE:
                self._count_finished(request, ran=False)

    def wait(self, request: Request) -> None:
        """Block until ``request`` is answered or its deadline passes (synchronous callers only).

        Raises:
            DeadlineExceededError: the deadline passed first; the request is withdrawn from the queue,
                or, if it was already running, its answer is dropped.
            BaseException: the caller's thread was interrupted while it waited (a signal handler raised,
                e.g. ``KeyboardInterrupt``); the request is given up the same way, and the callers of its
                batch are still answered.
        """
        deadline = request.deadline
        try:
            if deadline is None:  # the common case, spelled out: this is the hot path of every predict
                request.waiter.acquire()
                if request.baton is RELAY:
                    RELAY.passed(request)  # its place in the wake relay goes to the next caller
                return
            if request.wait(deadline - self._clock()):
                return
        except BaseException:
            self.interrupted(request)
            raise
        if self._give_up(request):  # answered as the deadline passed: the answer is being handed over now
            try:
                request.wait(None)
            except BaseException:
                self.interrupted(request)
                raise
            return
        raise DeadlineExceededError(
            f"model {self.model!r} version {self.version}: no answer within the request's deadline",
            model=self.model,
            version=self.version,
        )

    def _give_up(self, request: Request) -> bool:
        """A synchronous caller stops waiting for ``request``: a queued one is withdrawn, a running one is
        marked abandoned (its answer is dropped, and it is not queued in the wake relay).
        Returns True, having changed nothing, if it was answered already (its answer is being handed over)."""
        with self._lock:
            state = request.state
            if state != DONE:
                request.state = ABANDONED
            if state == QUEUED:
                self._queue.withdraw(request)
                self._active_rows -= request.rows
                self._in_flight -= 1
                self._notify_if_drained()
        return state == DONE

    def interrupted(self, request: Request) -> None:
        """The caller's thread was interrupted while it waited: give the request up. If it was answered
        already, it is (or is about to be) queued in the wake relay, or was woken and holds a place there:
        it leaves the relay, handing on the place it holds, so that no caller after it waits for a wake
        that never comes. Twice is harmless (this caller may have handed its place on already)."""
        if self._give_up(request):
            RELAY.leave(request)

    # -- workers -----------------------------------------------------------------------------------------

    def _start_workers(self) -> None:
        for index in range(self._pool.size):
            thread = threading.Thread(
                target=self._work,
                name=f"inprocserve-{self.model}-v{self.version}-{index}-{os.getpid()}",
                daemon=True,
            )
            thread.start()
            self._workers.append(thread)  # once started: interrupted as start() begins, it is not kept, never run

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
        pool = self._pool
        queue = self._queue
        if queue.rows and pool.has_free():
            if self._policy.delay_s and self._wait_for_companions(wake, ready_at):
                return ready_at  # companions arrived (or close): decide again
            runner = pool.checkout() if queue.rows else None
            if runner is None:
                return ready_at  # the wait released the lock: another thread took the work or the runner
            batch, expired = self._take_batch()
            if queue.rows and pool.has_free() and self._idle and self._filler is None:
                self._wake_parked()  # more than one batch waits: another runner can help
            lock.release()
            timing = None
            try:
                for request in expired:
                    if isinstance(request.error, CancelledError):
                        request.complete(None, request.error)  # closes its span; the future is cancelled already
                    else:
                        self._fail(request, self._expired_error())
                if batch:
                    timing = self._execution.execute(runner, batch)
            except BaseException:  # never let a worker die silently
                logger.exception("inprocserve worker for %r v%s failed", self.model, self.version)
            finally:
                lock.acquire()
                pool.checkin(runner)
            if timing is not None:
                self._observe_run(timing.rows, timing.compute_s)
            return self._clock()
        if self._closing and not queue.rows:
            for other in self._idle:  # let parked workers see the close too
                other.release()
            self._idle.clear()
            return None
        self._idle.append(wake)
        lock.release()
        wake.acquire()
        lock.acquire()
        return self._clock()

    def _observe_run(self, rows: int, seconds: float) -> None:
        """With the lock held: a run of ``rows`` rows, whole, succeeded in ``seconds``; refit the run cost when
        the learner says it is due, at most once every ``REFIT_INTERVAL_S``.

        A worker's batches teach the run cost (:meth:`_step`), and so do the runs an event loop makes itself
        (:meth:`run_plain`): a version read at load as quick enough for the loop to run
        (``RUN_ON_LOOP_UNDER_S``) has every request of a loop run there, and none by a worker; without these, a
        misread was kept for the version's life, and each run blocked the loop for as long as it really took."""
        learner = self._learner
        if learner is not None and learner.observe(rows, seconds):
            now = self._clock()
            if now >= self._refit_at:
                self._refit_at = now + REFIT_INTERVAL_S
                self._learn_run_cost(learner)

    def _learn_run_cost(self, learner: RunCostLearner) -> None:
        """With the lock held: take the run cost that the recent runs show, and the flush rules it picks."""
        cost = learner.refit(self.run_cost) if self.run_cost is not None else None
        if cost is None:
            return
        self.run_cost = cost
        policy = self._policy
        policy.overlap = cost.fixed_s < OVERLAP_BELOW_S
        if policy.max_rows > 1:  # (a version that stopped merging waits for no companion, whatever its cost)
            policy.delay_s = automatic_delay_s(self._config, merge=True, run_cost=cost)
            if policy.max_rows == 1:  # (it stopped just now, without this lock: its own 0 stands)
                policy.delay_s = 0.0

    @property
    def run_cost_source(self) -> str:
        """Where :attr:`run_cost` comes from: ``"load"`` (the load's probe), ``"runs"`` (a line fitted to this
        version's runs) or ``"load, scaled to runs"`` (the probe's, its split kept, scaled down under runs
        quicker than it or up to runs well slower)."""
        learner = self._learner
        if learner is None or not learner.refits:
            return "load"
        return "runs" if learner.lines else "load, scaled to runs"

    @property
    def run_cost_learned(self) -> bool:
        """Whether :attr:`run_cost` was learned from this version's runs (else it is the load's probe)."""
        learner = self._learner
        return learner is not None and learner.refits > 0

    def _wait_for_companions(self, wake: Any, ready_at: float) -> bool:
        """With the lock held: if the flush policy expects more rows soon, wait for them (releasing the lock).

        Returns True when woken early (the queue reached the target, or close) so the caller decides
        again, and False when there is nothing to wait for or the wait ran out: then it runs what is queued.

        Never for an event loop's group (a request of several callers: what one loop iteration gathered):
        its loop's next group comes only after the loop runs again, so the companions the recent peak
        promised were not coming. Held for them, 8 tasks after a 64-row request waited the whole
        ``max_delay_s``, and 64 tasks on one loop made 36,000-38,000 req/s against 52,000 run at once.
        """
        if self._filler is not None or self._closing:
            return False
        oldest = self._queue.oldest()
        if oldest is None or oldest.callers > 1:  # (an event loop's group: see above)
            return False
        remaining, target = self._policy.wait_s(
            queued_rows=self._queue.rows,
            oldest_enqueued_at=oldest.enqueued_at,
            ready_at=ready_at,
            active_rows=self._active_rows,
        )
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
            # Not blocking: whoever cleared _filler released it under the lock, before this thread took the
            # lock back, unless a signal handler raised in that thread between the two (then nothing comes).
            wake.acquire(blocking=False)
        return False

    def _take_batch(self) -> tuple[list[Request], list[Request]]:
        """With the lock held: pop the next batch of compatible requests, and the expired ones."""
        now = self._policy.roll(self._active_rows)
        batch, expired = self._queue.take(max_rows=self._policy.max_rows, merge=self._merge, now=now)
        for request in expired:
            self._in_flight -= request.callers
            self._active_rows -= request.rows
        if expired or (not batch and not self._queue):
            self._notify_if_drained()
        return batch, expired

    def _expired_error(self) -> DeadlineExceededError:
        return DeadlineExceededError(
            f"model {self.model!r} version {self.version}: the request's deadline passed while it was queued; "
            "it was not run",
            model=self.model,
            version=self.version,
        )

    def _adopt_runners(self) -> None:
        runners = self._pool.adopt()  # builds them on first use in this process (may take a while)
        with self._lock:
            if self._closing:  # closed meanwhile: a closed batcher keeps no runner (its caller is refused next)
                return
            self._pool.lend(runners)
            if self._beside_runner is None:
                self._beside_runner = runners[0]
            self.adopted = True

    @property
    def unbatchable_reason(self) -> str | None:
        """Why requests stopped sharing runs and being run in slices while serving (``None``: they did not)."""
        return self._unbatchable_reason

    def disable_merging(self, reason: str) -> None:
        """The model's outputs turned out to have no batch axis (``reason`` says how): from now on each
        request runs alone, whole, and is never stacked with others."""
        self._disable_merging(reason)

    def _disable_merging(self, reason: str) -> None:
        # (also with batching.enabled off, where a large request was still run in slices: the first reason
        # is kept for status() and logged once)
        if self._unbatchable_reason is None:
            self._unbatchable_reason = reason
            self._merge = False
            self._execution.chunk_rows = None
            self._policy.disable_merging()
            logger.warning(
                "model %r version %s: %s; requests now run one at a time, each whole",
                self.model,
                self.version,
                reason,
            )

    # -- answers ---------------------------------------------------------------------------------------------

    def _succeeded(self, batch: list[Request], results: list[dict[str, Any]]) -> None:
        """Count a batch that ran, then answer each request whose caller still waits."""
        if len(batch) == 1:  # the common case at low load: no lists, no relay
            self._complete(batch[0], results[0], None, ran=True)
            return
        dropped: list[int] | None = None
        rows = callers = 0
        with self._lock:
            for index, request in enumerate(batch):
                if request.state == ABANDONED:  # its caller gave up while it ran
                    if dropped is None:
                        dropped = []
                    dropped.append(index)
                request.state = DONE
                rows += request.rows
                callers += request.callers
            self._in_flight -= callers
            self._active_rows -= rows
            self.batches_run += 1
            self.rows_run += rows
            if self._closing:
                self._notify_if_drained()
        if dropped is not None:
            batch = [request for index, request in enumerate(batch) if index not in dropped]
            results = [outputs for index, outputs in enumerate(results) if index not in dropped]
        complete_batch(batch, results)

    def _complete(
        self, request: Request, outputs: dict[str, Any] | None, error: BaseException | None, *, ran: bool = False
    ) -> None:
        """Count one request that was running as finished, then answer it unless its caller gave up;
        ``ran``: it ran as a batch of its own (count the batch).

        A failed request that carries several callers' requests (an event loop's) is answered first: its
        deliver hook queues each caller's request again on its own, and only then is it counted finished, so
        that :meth:`close` never finds the batcher drained in between."""
        if error is not None and request.callers > 1:
            try:
                request.complete(outputs, error)
            finally:  # counted even if the hook failed: close() must not wait for it forever
                with self._lock:
                    self._count_finished(request, ran=ran)
            return
        with self._lock:
            abandoned = self._count_finished(request, ran=ran)
        if not abandoned:
            request.complete(outputs, error)

    def _count_finished(self, request: Request, *, ran: bool) -> bool:
        """With the lock held: count a running request as finished (and its run, if it ``ran`` as a batch of
        its own); returns whether its caller gave up on it meanwhile."""
        abandoned = request.state == ABANDONED
        callers, rows = request.callers, request.rows
        # the counts and DONE with no call between (see _finish_inline): an interrupted clean-up can run again
        self._in_flight -= callers
        self._active_rows -= rows
        if ran:
            self.batches_run += 1
            self.rows_run += rows
        request.state = DONE
        if self._closing:
            self._notify_if_drained()
        return abandoned

    def _fail(self, request: Request, error: BaseException) -> None:
        if request.state == DONE:  # expired or cancelled while queued: no longer counted as in flight
            # completed even when its future was cancelled: the server's hook still frees its followers
            request.complete(None, error)
            return
        self._complete(request, None, error)

    # -- shutdown --------------------------------------------------------------------------------------------

    def wait_until_idle(self, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until no request is in flight: after :meth:`close` gave up waiting and
        the backend stopped the runs still going (they end at onnxruntime's next operator). A process that
        exits right after a close may otherwise finalize while a thread is still inside a run, which
        onnxruntime answers by aborting it."""
        with self._lock:
            return self._drained.wait_for(lambda: self._in_flight == 0, timeout_s)

    def hold_open(self, callers: int) -> bool:
        """Count ``callers`` in flight while their requests, which ran once and failed, are queued again one by
        one (:meth:`let_go` ends it): an event loop's group whose run failed, handed over as a worker's failed
        merged run is, so that each is readmitted (queued even while closing, never shed) with :meth:`close`
        still waiting for them. False, holding nothing, when the batcher is closing already."""
        with self._lock:
            if self._closing:
                return False
            self._in_flight += callers
            return True

    def let_go(self, callers: int) -> None:
        """End a :meth:`hold_open` of ``callers``."""
        with self._lock:
            self._in_flight -= callers
            if self._closing:
                self._notify_if_drained()

    def _notify_if_drained(self) -> None:
        if self._in_flight == 0:
            self._drained.notify_all()

    def close(self, *, timeout_s: float | None = None) -> bool:
        """Stop taking requests, let queued and running ones finish, stop the workers. Idempotent.

        Requests still queued after ``timeout_s`` get :class:`ServerClosedError`. Returns whether everything
        drained in time. The backend is its owner's to close, after this.
        """
        with self._lock:
            self._closing = True
            for wake in self._idle:
                wake.release()
            self._idle.clear()
            filler, self._filler = self._filler, None
            if filler is not None:
                filler.release()
            if self._queue and not self._workers:
                self._start_workers()
            drained = self._drained.wait_for(lambda: self._in_flight == 0, timeout_s)
            leftovers = self._queue.clear()
            for request in leftovers:
                request.state = DONE
                self._in_flight -= request.callers
                self._active_rows -= request.rows
            workers = list(self._workers)
            if drained:  # the backend owns the runners; a closed batcher keeps no reference (a runner kept
                # here kept an unloaded version's weights in memory until the garbage collector's next full pass)
                self._pool.release()
                self._beside_runner = None
        for request in leftovers:
            self._fail(
                request,
                ServerClosedError(
                    f"model {self.model!r} version {self.version} closed before the request ran",
                    model=self.model,
                    version=self.version,
                ),
            )
        self._deadlines.close()  # (nothing is queued any more)
        current = threading.current_thread()
        for thread in workers:
            if thread is not current:
                # Bounded even when drained: a worker may be running the done-callback of a caller's future,
                # which may call into the server (status(), load()) and wait for the lock that whoever closes
                # this batcher holds (a hot reload). It exits once the callback returns.
                thread.join(timeout=_WORKER_EXIT_S if drained else 1.0)
                if thread.is_alive():
                    logger.warning(
                        "model %r version %s: worker %s is still busy (a future's done-callback may be running "
                        "on it); not waiting for it",
                        self.model,
                        self.version,
                        thread.name,
                    )
        if drained:
            with self._lock:  # again: a worker gives its runner back after its batch's callers are answered, so
                self._pool.release()  # the release above could come first (and the runner outlived the unload)
        return drained


def _answer_dropped(dropped: list[tuple[Request, BaseException]]) -> None:
    """Answer the given-up requests ``Batcher._drop_abandoned_locked`` withdrew (emptying the list: once)."""
    while dropped:
        request, error = dropped.pop()
        request.complete(None, error)
