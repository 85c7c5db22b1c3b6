"""Event-loop-native delivery for ``Server.apredict``: many tasks on one loop, one cross-thread wake per batch.

The plain way to await a thread's work (``asyncio.wrap_future`` on a ``concurrent.futures.Future``) costs one
``loop.call_soon_threadsafe`` per request: a write to the loop's self-pipe, a wake of the loop's thread, and a
chain of callbacks per answer. With dozens of tasks on one loop that per-request hand-off, not the model, is
what limits throughput. Here, instead:

* **Submitting.** ``apredict`` routes and validates on the loop exactly as ``predict`` does and queues the
  request in the version's batcher, but asks it not to wake a worker. The first such request of a loop
  iteration schedules one ``loop.call_soon`` that, after every task of the iteration has queued its request,
  wakes a parked worker if a session is free (a busy one takes the queue when its batch is done). So all the
  requests of one iteration are queued before a worker looks, and they merge into one batch; while that
  batch runs, the next iterations keep queueing, so batches grow with the load. An idle loop's lone request
  is handed over at the end of the very iteration that made it: no added wait. If it is the only request
  queued, a session is free and its run should take under ``RUN_ON_LOOP_UNDER_S`` (by the version's
  measured run cost; a small model's one-row run), the loop runs it itself there and resolves the task at
  once: a worker's hand-off and the loop's wake for the answer would cost the loop more than the run.
* **Answering.** Each request still travels through the batcher on its own (so deadlines, cancellation,
  shedding, bisection of a failing batch, rollouts and telemetry are the ones ``predict`` has), but its answer
  is posted to a per-loop inbox instead of resolving a thread future. The worker holds the loop's wake until
  it has posted the last answer of the batch (``wake_after_batch``), then calls ``call_soon_threadsafe``
  once; the loop resolves every posted answer in one callback. A batch of 64 answers wakes the loop once.
* **Deadlines and cancellation** are the task's: ``timeout_s`` arms one loop timer that answers the task with
  :class:`DeadlineExceededError`; a cancelled or timed-out task's request is dropped if it has not started,
  and its rows are discarded if it has (its batch-mates are not affected).

Only callers on one long-lived event loop gain: ASGI servers (uvicorn, daphne, hypercorn) running Django async
views or Starlette/FastAPI endpoints, and plain asyncio workers. Flask's async views run each request on a
loop of its own, and synchronous views have no loop: they take the ordinary paths.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Mapping
from concurrent.futures import InvalidStateError
from typing import TYPE_CHECKING, Any

from ._errors import DeadlineExceededError
from ._request import wake_after_batch

if TYPE_CHECKING:
    from ._batching import Batcher
    from ._prediction import Prediction
    from ._server import Server

__all__ = ["apredict", "loop_wakes"]

# An iteration that queued one request, on an idle version whose run of it should take at most this long,
# runs it on the loop: a worker's hand-off and the loop's wake for the answer cost the loop more (about
# 140 µs of its CPU per request at one task, measured on the project's 2-core machine).
RUN_ON_LOOP_UNDER_S = 200e-6

_states_lock = threading.Lock()
_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
_last: _LoopState | None = None  # the state used last (see _state_of)


def _forget_loops() -> None:
    """In a forked child: the parent's in-flight answers never come (its batchers start afresh), and the
    lock may have been held by a thread that does not exist here."""
    global _states_lock, _states, _last
    _states_lock = threading.Lock()
    _states = weakref.WeakKeyDictionary()
    _last = None


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_forget_loops)


class _LoopState:
    """One event loop's inbox of answers posted by worker threads, and its batchers waiting to be woken.

    Worker threads append to ``_inbox`` and call ``_wake`` (see ``_LoopFuture._post``); everything else runs
    on the loop's thread.
    """

    __slots__ = ("__weakref__", "_flush_due", "_inbox", "_loop", "_pending", "_running_here", "_wake_due", "wakes")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # the state is a value of a dict weakly keyed by this loop
        self._inbox: deque[tuple[asyncio.Future[Any], Any, BaseException | None]] = deque()
        self._wake_due = False  # a drain is scheduled: later posts need not wake the loop again
        self._pending: list[Batcher] = []  # batchers that got requests this iteration, not yet woken
        self._flush_due = False
        self._running_here = False  # the loop's thread is running a request itself (see _flush)
        self.wakes = 0  # cross-thread wakes of this loop so far (for tests and benchmarks)

    # -- submitting (loop thread) --------------------------------------------------------------------------

    def queued(self, batcher: Batcher) -> None:
        """``batcher`` has a request queued without a wake: wake it at the end of this iteration."""
        if batcher not in self._pending:
            self._pending.append(batcher)
        if not self._flush_due:
            self._flush_due = True
            loop = self._loop()
            assert loop is not None  # called on the loop's own thread
            loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_due = False
        pending = self._pending
        self._pending = []
        for batcher in pending:
            ran = False
            self._running_here = True  # answers posted meanwhile (any batcher's) are drained below, unwoken
            try:
                ran = batcher.run_lone_here(RUN_ON_LOOP_UNDER_S, accept=self._owns)
            finally:
                self._running_here = False
                if self._inbox:
                    self._drain()
                if not ran:
                    batcher.wake()

    def _owns(self, future: Any) -> bool:
        """Whether ``future`` is the stand-in future of a request of this loop."""
        return type(future) is _LoopFuture and future._state is self

    # -- answering (worker threads post through _LoopFuture, the loop drains) --------------------------------

    def _wake(self) -> None:
        self.wakes += 1
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed or gone: nobody is left to answer
            self._inbox.clear()

    def _drain(self) -> None:
        self._wake_due = False
        inbox = self._inbox
        while inbox:
            waiter, value, error = inbox.popleft()
            if waiter.done():  # cancelled, or its deadline answered it
                continue
            if error is None:
                waiter.set_result(value)
            else:
                waiter.set_exception(error)


class _LoopFuture:
    """Stands in for the ``concurrent.futures.Future`` of a request: the batcher and the server resolve it on
    a worker thread, and it posts the answer to its loop's inbox instead of waking the loop itself.

    It offers exactly the calls the batcher and ``Server._deliver`` make on a request's future.
    """

    __slots__ = ("_answered", "_state", "_waiter")

    defer_wake = True  # the batcher leaves waking a worker to the loop's end-of-iteration flush

    def __init__(self, waiter: asyncio.Future[Any], state: _LoopState) -> None:
        self._waiter = waiter
        self._state = state
        self._answered = False

    def set_running_or_notify_cancel(self) -> bool:
        # Read across threads on purpose: a plain flag read under the GIL. A task cancelled just after
        # this check has its answer dropped on the loop instead.
        return not self._waiter.done()

    def done(self) -> bool:
        return self._answered

    def cancelled(self) -> bool:
        return self._waiter.cancelled()

    def set_result(self, value: Any) -> None:
        self._post(value, None)

    def set_exception(self, error: BaseException | None) -> None:
        self._post(None, error)

    def _post(self, value: Any, error: BaseException | None) -> None:
        # Called once per answered request, on a worker thread. The inbox belongs to the state, but posting
        # is written out here: one call fewer per request.
        if self._answered:
            raise InvalidStateError("already answered")
        self._answered = True
        waiter = self._waiter
        if waiter.done():  # cancelled by its task meanwhile: tell the server, as a cancelled Future does
            raise InvalidStateError("cancelled")
        state = self._state
        state._inbox.append((waiter, value, error))
        # Append first, then test the flags: a drain that cleared the flag before this append either sees
        # the item or is followed by the drain this call schedules; while the loop's thread runs a request
        # itself, it drains the inbox right after (a worker that saw the flag set appended before it drains).
        if state._running_here:
            return
        if not state._wake_due:
            state._wake_due = True
            if not wake_after_batch(state._wake):
                state._wake()


def _state_of(loop: asyncio.AbstractEventLoop) -> _LoopState:
    """The state of ``loop`` (created on first use). The most recent one is kept at hand: nearly every call
    comes from the same loop as the one before, and a weak dictionary lookup costs a Python call."""
    global _last
    state = _last
    if state is not None and state._loop() is loop:
        return state
    state = _states.get(loop)
    if state is None:
        with _states_lock:
            state = _states.get(loop)
            if state is None:
                state = _states[loop] = _LoopState(loop)
    _last = state  # a plain reference swap: a thread that reads a stale one only misses the shortcut
    return state


def loop_wakes(loop: asyncio.AbstractEventLoop) -> int:
    """How many times worker threads have woken ``loop`` to deliver answers (0 for a loop never used)."""
    state = _states.get(loop)
    return 0 if state is None else state.wakes


def _expire(waiter: asyncio.Future[Any], model: str, version: int | None, timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            DeadlineExceededError(f"model {model!r}: no answer within {timeout_s:g}s", model=model, version=version)
        )


def apredict(
    server: Server,
    model: str,
    inputs: Any,
    *,
    version: int | None,
    context: Mapping[str, Any] | None,
    timeout_s: float | None,
) -> Awaitable[Prediction]:
    """``Server.apredict``: route, validate and queue on the running loop now; return what to await for the
    answer, which arrives in the loop's inbox.

    Without a deadline that is the loop future itself, so a request costs no coroutine of its own; with one,
    a coroutine that arms and disarms the deadline's timer. Raises, at once, what :meth:`Server.predict`
    raises for a request refused before queueing; the awaitable raises the rest.
    """
    loop = asyncio.get_running_loop()
    state = _last
    if state is None or state._loop() is not loop:
        state = _state_of(loop)
    waiter: asyncio.Future[Prediction] = loop.create_future()
    handle = _LoopFuture(waiter, state)
    future: Any = handle  # stands in for a concurrent.futures.Future (typing.cast would cost a call)
    _request, target = server._dispatch(model, inputs, version, context, timeout_s, future, inline=False)
    batcher = target.batcher
    if not handle._answered and batcher is not None:  # queued, not answered by the cache: wake at iteration end
        if not state._flush_due or batcher not in state._pending:
            state.queued(batcher)
    if timeout_s is None:
        return waiter
    return _with_deadline(loop, waiter, model, version, timeout_s)


async def _with_deadline(
    loop: asyncio.AbstractEventLoop,
    waiter: asyncio.Future[Prediction],
    model: str,
    version: int | None,
    timeout_s: float,
) -> Prediction:
    timer = loop.call_later(timeout_s, _expire, waiter, model, version, timeout_s)
    try:
        return await waiter
    finally:
        timer.cancel()
