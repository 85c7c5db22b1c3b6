"""The coalescer: merges concurrent requests for one model version into batched ``session.run`` calls.

Flush policy (see docs/batching.md):

* A caller that finds the queue empty and a session free runs its own request on its own thread: no
  queue, no thread hand-off, so a lightly loaded server adds almost nothing to a raw ``run``.
* Otherwise the request is queued. One worker thread per session takes whatever is queued the moment its
  session is free — up to ``max_batch_size`` rows of compatible requests — so requests accumulate only
  while every session is busy. With ``max_delay_ms`` > 0 an idle worker may wait that long for companions.
* A merged batch that fails is bisected until the failing request(s) are found; the others still get
  their answers.

The lock, queue and threads are private to :class:`Batcher`; nothing is held while a model runs.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np

from . import _fork
from ._batch_ops import BatchShapeError, group_key, pad_and_stack, split_outputs, stack_inputs
from ._config import BatchingConfig
from ._errors import DeadlineExceededError, InprocserveError, QueueFullError, ServerClosedError
from ._sessions import SessionPool

__all__ = ["Batcher", "Request", "VersionRetiredError"]

logger = logging.getLogger(__name__)

_QUEUED, _RUNNING, _DONE, _ABANDONED = range(4)
_allocate_lock = threading.Lock


class VersionRetiredError(ServerClosedError):
    """This version stopped taking requests (unloaded or replaced); the server routes the request again."""


class Request:
    """One caller's request: validated inputs, where to deliver the answer, and its state."""

    __slots__ = (
        "arrays",
        "deadline",
        "enqueued_at",
        "error",
        "future",
        "key",
        "meta",
        "outputs",
        "rows",
        "state",
        "waiter",
    )

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        rows: int,
        meta: Any,
        deadline: float | None,
        future: Future[Any] | None,
    ) -> None:
        self.arrays = arrays
        self.rows = rows
        self.meta = meta
        self.deadline = deadline
        self.future = future
        self.key: Any = None
        self.state = _QUEUED
        self.outputs: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.enqueued_at = 0.0
        # A synchronous caller blocks on this lock until the answer is in (cheapest wake-up CPython has).
        self.waiter: Any = None
        if future is None:
            self.waiter = _allocate_lock()
            self.waiter.acquire()


Finisher = Callable[[Request], None]


class Batcher:
    """Queue and worker threads for one model version.

    Thread-safe. Threads start lazily on first use (and again in a forked child).

    Args:
        pool: The sessions to run on; one worker per session.
        config: Batching settings.
        input_names / output_names: The model's signature, in order.
        batchable: Whether rows of several requests may be stacked on axis 0.
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
        self._max_rows = config.max_batch_size if self._merge else 1
        # Only a model with a batch axis can run a large request in slices; others take it whole.
        self._chunk_rows = config.max_batch_size if batchable else None
        self._delay_s = config.max_delay_ms / 1000.0
        preferred = config.preferred_batch_sizes
        self._fill_target = min(preferred) if preferred else config.max_batch_size
        if batchable and not config.enabled:
            logger.debug("model %r version %s: batching disabled by config", self.model, self.version)
        self._batches_run = itertools.count()
        self._reset_state()
        _fork.register(self)

    def _reset_state(self) -> None:
        self._lock = threading.Lock()
        self._queue: deque[Request] = deque()
        self._queued_rows = 0
        self._free_slots = self._pool.size
        self._idle: list[Any] = []  # wake locks of parked workers
        self._filler: Any = None  # wake lock of a worker waiting up to max_delay for companions
        self._workers: list[threading.Thread] = []
        self._closing = False
        self._in_flight = 0  # requests accepted and not yet answered
        self._drained = threading.Condition(self._lock)

    def _after_fork_in_child(self) -> None:
        closing = self._closing
        self._reset_state()  # queued requests belong to the parent's threads
        self._closing = closing

    # -- caller side --------------------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, request: Request, *, run_inline: bool) -> None:
        """Queue ``request`` (or, with ``run_inline``, run it now on this thread when a session is idle).

        Raises:
            QueueFullError: the queue already holds ``max_queue_rows`` rows.
            VersionRetiredError: the batcher is closing.
        """
        if self._merge:
            request.key = group_key(request.arrays, self._padding)
        with self._lock:
            if self._closing:
                raise VersionRetiredError(
                    f"model {self.model!r} version {self.version} is no longer serving",
                    model=self.model,
                    version=self.version,
                )
            if run_inline and self._free_slots and not self._queue:
                self._free_slots -= 1
                self._in_flight += 1
                request.state = _RUNNING
                inline = True
            else:
                if self._queued_rows + request.rows > self._config.max_queue_rows and self._queue:
                    raise QueueFullError(
                        f"model {self.model!r} version {self.version}: the queue holds {self._queued_rows} rows "
                        f"and max_queue_rows is {self._config.max_queue_rows}; retry later",
                        model=self.model,
                        version=self.version,
                    )
                request.enqueued_at = self._clock()
                self._queue.append(request)
                self._queued_rows += request.rows
                self._in_flight += 1
                inline = False
                if not self._workers:
                    self._start_workers()
                if self._filler is not None:
                    if self._queued_rows >= self._fill_target:
                        self._filler.release()
                        self._filler = None
                elif self._idle and self._free_slots:
                    self._idle.pop().release()
        if inline:
            try:
                self._execute([request])
            finally:
                with self._lock:
                    self._free_slots += 1
                    if self._queue and self._idle and self._filler is None:
                        self._idle.pop().release()

    def wait(self, request: Request) -> None:
        """Block until ``request`` is answered or its deadline passes (synchronous callers only).

        Raises:
            DeadlineExceededError: the deadline passed first; the request is withdrawn from the queue,
                or, if it was already running, its answer is dropped.
        """
        if request.deadline is None:
            request.waiter.acquire()
            return
        remaining = request.deadline - self._clock()
        if remaining > 0 and request.waiter.acquire(timeout=remaining):
            return
        with self._lock:
            if request.state == _DONE:
                return
            if request.state == _QUEUED:
                self._queued_rows -= request.rows
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
        lock = self._lock
        lock.acquire()
        try:
            while True:
                if self._queued_rows and self._free_slots:
                    if self._delay_s and self._should_wait_for_companions(wake):
                        continue  # woke up (filled or timed out); re-check under the lock
                    self._free_slots -= 1
                    batch, expired = self._take_batch()
                    if self._queued_rows and self._free_slots and self._idle and self._filler is None:
                        self._idle.pop().release()  # more than one batch waits: another session can help
                    lock.release()
                    try:
                        for request in expired:
                            self._fail(
                                request,
                                DeadlineExceededError(
                                    f"model {self.model!r} version {self.version}: the request's deadline passed "
                                    "while it was queued; it was not run",
                                    model=self.model,
                                    version=self.version,
                                ),
                            )
                        if batch:
                            self._execute(batch)
                    except BaseException:  # never let a worker die silently
                        logger.exception("inprocserve worker for %r v%s failed", self.model, self.version)
                    finally:
                        lock.acquire()
                        self._free_slots += 1
                    continue
                if self._closing and not self._queued_rows:
                    for other in self._idle:  # let parked workers see the close too
                        other.release()
                    self._idle.clear()
                    return
                self._idle.append(wake)
                lock.release()
                wake.acquire()
                lock.acquire()
        finally:
            lock.release()

    def _should_wait_for_companions(self, wake: Any) -> bool:
        """With the lock held: wait (releasing it) while the queue is short and the oldest is young."""
        if self._queued_rows >= self._fill_target or self._filler is not None or self._closing:
            return False
        oldest = next((r for r in self._queue if r.state == _QUEUED), None)
        if oldest is None:
            return False
        remaining = oldest.enqueued_at + self._delay_s - self._clock()
        if remaining <= 0:
            return False
        self._filler = wake
        self._lock.release()
        woke = wake.acquire(timeout=remaining)
        self._lock.acquire()
        if not woke:
            if self._filler is wake:
                self._filler = None
            else:  # released just after the timeout: consume it so the lock stays acquired for next time
                wake.acquire()
        return True

    def _take_batch(self) -> tuple[list[Request], list[Request]]:
        """With the lock held: pop the next batch of compatible requests, and the expired ones."""
        queue = self._queue
        now = self._clock()
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
                expired.append(request)
                continue
            future = request.future
            if future is not None and not future.set_running_or_notify_cancel():
                request.state = _DONE  # the caller cancelled: drop it before it runs
                self._in_flight -= 1
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

    # -- running a batch -------------------------------------------------------------------------------------

    def _execute(self, batch: list[Request]) -> None:
        session = self._pool.acquire()
        try:
            self._run_isolating(session, batch)
        except InprocserveError as exc:  # the pool or session failed as a whole
            for request in batch:
                self._fail(request, exc)
        finally:
            self._pool.release(session)

    def _run_isolating(self, session: Any, batch: list[Request]) -> None:
        """Run ``batch``; if it fails, bisect so only the failing request(s) get the error."""
        try:
            results = self._run(session, batch)
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
        for request, outputs in zip(batch, results, strict=True):
            self._complete(request, outputs, None)

    def _run(self, session: Any, batch: list[Request]) -> list[dict[str, Any]]:
        rows = [request.rows for request in batch]
        if len(batch) == 1 and self._chunk_rows is not None and batch[0].rows > self._chunk_rows:
            return [self._run_in_chunks(session, batch[0])]
        crop = None
        if self._padding is not None and len(batch) > 1:
            feeds, lengths = pad_and_stack([r.arrays for r in batch], self._input_names, self._padding)
            crop = (self._padding.outputs, lengths)
        else:
            feeds = stack_inputs([r.arrays for r in batch], self._input_names)
        outputs = self._pool.run(session, feeds)
        if len(batch) == 1:
            return [dict(zip(self._output_names, outputs, strict=True))]
        return split_outputs(outputs, self._output_names, rows, crop=crop)

    def _run_in_chunks(self, session: Any, request: Request) -> dict[str, Any]:
        """A request larger than ``max_batch_size`` runs in slices that are stitched back together."""
        step = self._chunk_rows
        assert step is not None
        parts = [
            self._pool.run(session, {name: array[start : start + step] for name, array in request.arrays.items()})
            for start in range(0, request.rows, step)
        ]
        return {name: np.concatenate([part[index] for part in parts]) for index, name in enumerate(self._output_names)}

    def _disable_merging(self, reason: str) -> None:
        if self._merge:
            self._merge = False
            self._max_rows = 1
            self._chunk_rows = None
            logger.warning(
                "model %r version %s: %s; its outputs have no batch axis, so requests now run one at a time",
                self.model,
                self.version,
                reason,
            )

    def _complete(self, request: Request, outputs: dict[str, Any] | None, error: BaseException | None) -> None:
        request.outputs = outputs
        request.error = error
        with self._lock:
            abandoned = request.state == _ABANDONED  # its caller gave up while it ran
            request.state = _DONE
            self._in_flight -= 1
            if self._closing:
                self._notify_if_drained()
        if abandoned:
            return
        if request.future is None:
            request.waiter.release()
        else:
            self._deliver(request)

    def _fail(self, request: Request, error: BaseException) -> None:
        if request.state == _DONE:  # expired or cancelled while queued: not counted as in flight anymore
            request.error = error
            if request.future is None:
                request.waiter.release()
            elif not request.future.done():
                self._deliver(request)
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
            drained = self._drained.wait_for(lambda: self._in_flight == 0, timeout_s)
            leftovers = [r for r in self._queue if r.state == _QUEUED]
            self._queue.clear()
            self._queued_rows = 0
            workers = list(self._workers)
        for request in leftovers:
            request.state = _DONE
            with self._lock:
                self._in_flight -= 1
            self._fail(
                request,
                ServerClosedError(
                    f"model {self.model!r} version {self.version} closed before the request ran",
                    model=self.model,
                    version=self.version,
                ),
            )
        current = threading.current_thread()
        for thread in workers:
            if thread is not current:
                thread.join(timeout=1.0 if not drained else None)
        return drained
