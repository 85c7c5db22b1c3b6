"""Event-loop-native delivery for ``Server.apredict``: many tasks on one loop, one cross-thread wake per batch.

The plain way to await a thread's work (``asyncio.wrap_future`` on a ``concurrent.futures.Future``) costs one
``loop.call_soon_threadsafe`` per request: a write to the loop's self-pipe, a wake of the loop's thread, and a
chain of callbacks per answer. With dozens of tasks on one loop that per-request hand-off, not the model, is
what limits throughput. Here, instead:

* **Lone requests.** A request made while nothing else is due in the loop's iteration has nobody to merge
  with (``_LoopState.alone``; on uvloop, whose queue Python cannot read, recent traffic decides): it takes
  ``predict``'s shortest way (``Server._predict_plain``: a run under ``RUN_ON_LOOP_UNDER_S``, or a hit in the
  version's cache), and
  ``apredict`` returns its answer without suspending the task (for at most ``LONE_STREAK_S`` per iteration:
  a task that calls again and again still yields to the loop).
* **Merging.** ``apredict`` routes and validates on the loop exactly as ``predict`` does. A request to a plain
  version (``Server._plain_route``: no cache, drift, sharing, rollout or shadow) whose requests stack as they
  are, is not queued on its own: it joins this iteration's group for its version (``_Member``, ``_Group``;
  requests with a deadline and without are kept apart). The first request of a loop iteration schedules one
  ``loop.call_soon`` that runs after every task of the iteration has made its request. It runs each group on
  the loop itself if a session is free and the run is short (under ``RUN_ON_LOOP_UNDER_S`` by the version's
  measured run cost), and otherwise stacks its rows into one :class:`Request` (``Request.callers`` tasks,
  answered through ``_Merged``) queued without a wake, then wakes a parked worker once. The answer comes back
  as one request's; the loop cuts each task's rows out and records each task as the full way would. An idle
  version of a model cheaper per row than the loop's own work per request (``LOOP_WORK_PER_REQUEST_S``) gets
  its first group as two runs that never share a batch, so that the loop answers one half while the session
  runs the other.
* **Submitting one by one.** Any other request is queued in the version's batcher on its own, asking it not
  to wake a worker; the same end-of-iteration callback wakes one (a busy one takes the queue when its batch
  is done), or, if it is the only request queued and its run should take under ``RUN_ON_LOOP_UNDER_S``, runs
  it on the loop and resolves the task at once.
* **Answering.** A request queued on its own keeps everything ``predict`` gives it (deadlines, cancellation,
  shedding, bisection of a failing batch, rollouts, telemetry), but its answer is posted to a per-loop inbox
  instead of resolving a thread future; a merged request's tasks get the same (docs/batching.md, "Async
  callers", says where they differ: a merged run that fails is retried task by task, the full way, unless
  the failure is about the run as a whole, as for a remote server that is down). The
  worker holds the loop's wake until it has posted the last answer of the batch (``wake_after_batch``), then
  calls ``call_soon_threadsafe`` once; the loop resolves every posted answer in one callback. A batch of 64
  answers wakes the loop once.
* **Deadlines and cancellation** are the task's: ``timeout_s`` arms one loop timer that answers the task with
  :class:`DeadlineExceededError`; a cancelled or timed-out task's request is dropped if it has not started
  (a merged one once all its tasks gave up), and its rows are discarded if it has (its batch-mates are not
  affected).

Only callers on one long-lived event loop gain: ASGI servers (uvicorn, daphne, hypercorn, granian) running Django
async views or Starlette/FastAPI endpoints, and plain asyncio workers. Flask's async views run each request on a
loop of its own, and synchronous views have no loop: they take the ordinary paths.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import CancelledError, InvalidStateError
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import INVALID_SPAN

from . import _fork
from ._backend import is_whole_batch, raised_by_signal_handler
from ._errors import DeadlineExceededError, InferenceError, RemoteUnavailableError, ServerClosedError
from ._flag_reader import forbid_waiting_when
from ._flags import WaitOffLoop
from ._prediction import Prediction, prediction_of
from ._request import QUEUED, BatchTiming, Request, Route, drop_tracebacks, own_error, wake_after_batch
from ._telemetry import metering, tracing

if TYPE_CHECKING:
    from ._batching import Batcher
    from ._model import ModelVersion
    from ._registry import Routes
    from ._rollout import Decision, Router
    from ._server import Server, _Opened

__all__ = ["apredict", "loop_wakes"]

logger = logging.getLogger(__name__)

# An iteration that queued one request, on an idle version whose run of it should take at most this long,
# runs it on the loop: a worker's hand-off and the loop's wake for the answer cost the loop more (about
# 140 µs of its CPU per request at one task, measured on the project's 2-core machine).
RUN_ON_LOOP_UNDER_S = 200e-6

# The loop's own work per merged request (its task, the call, and the answer), about 15-20 µs on the project's
# 2-core machine. A model whose run costs less per row than this keeps the loop, not the session, busy: an
# idle version's first group is then split in two runs, so that the loop answers one half's tasks while the
# session runs the other half (see _LoopState._start).
LOOP_WORK_PER_REQUEST_S = 15e-6
_NEVER = float("inf")
_ANSWER = object()  # a task's answer claimed by the worker posting it (see _LoopState._claims)
_SPLIT_FROM_ROWS = 16  # a group smaller than this runs whole: halves this small run inefficiently
_NOTE_TRIES = 3  # calls of served_many for one batch's notes, the first and after interruptions (_noted_served)
# How long lone requests may be answered at once, on the loop, in one iteration (see _LoopState.alone): a task
# that calls again and again yields to the loop after about this long, as a callback that runs this long would.
LONE_STREAK_S = 0.001

# Each loop's state is kept on the loop itself (an attribute): the state's inbox and groups hold the loop's
# futures, which hold the loop, so loop and state are one cycle that the garbage collector frees together
# once the application lets go of the loop (closed with answers still due, say). A loop that takes no
# attributes has its state in a dictionary weakly keyed by the loop instead: there, a state still holding
# answers would keep its loop, which is why answers to a closed loop are dropped, not kept (_LoopState.post).
_STATE_ATTRIBUTE = "_inprocserve_loop_state"
_states_lock = threading.Lock()
_states: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _LoopState] = weakref.WeakKeyDictionary()
# the state used last, weakly (see _state_of): a shortcut must not keep a closed loop's state, and its loop
_last: weakref.ref[_LoopState] | None = None
_generation = 0  # bumped in a forked child: states made before the fork are not used there


def _forget_loops() -> None:
    """In a forked child: the parent's in-flight answers never come (its batchers start afresh), and the
    lock may have been held by a thread that does not exist here."""
    global _states_lock, _states, _last, _generation
    _states_lock = threading.Lock()
    _states = weakref.WeakKeyDictionary()
    _last = None
    _generation += 1


_fork.at_fork_in_child(_forget_loops)
_fork.on_monkey_patch(_forget_loops)


class _LoopState:
    """One event loop's inbox of answers posted by worker threads, its batchers waiting to be woken, and the
    requests of this iteration waiting to be merged (``_groups``).

    Worker threads append to ``_inbox`` and call ``_wake`` (see :meth:`post`); everything else runs on the
    loop's thread.
    """

    __slots__ = (
        "__weakref__",
        "_claims",
        "_flush_due",
        "_generation",
        "_groups",
        "_inbox",
        "_iteration_requests",
        "_last_flush_requests",
        "_loop",
        "_pending",
        "_plain_futures",
        "_ready",
        "_route_memo",
        "_routing",
        "_running_here",
        "_streak",
        "_streak_task",
        "_streak_until",
        "_wake_due",
        "_withdrawals",
        "wakes",
    )

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # (the loop holds the state: see _STATE_ATTRIBUTE)
        self._generation = _generation
        # answers to hand out: (a task's future, or a _Merged request's stand-in; value; error)
        self._inbox: deque[tuple[Any, Any, BaseException | None]] = deque()
        self._wake_due = False  # a drain is scheduled: later posts need not wake the loop again
        # A queued request's hook that withdraws it from its queue, by the future its task awaits (see
        # withdraw_when_given_up): a plain asyncio future, which the task awaits for less than it would a
        # subclass of its own that could hold the hook (about 0.9 µs per request, a tenth of the loop's work).
        self._withdrawals: dict[asyncio.Future[Any], Callable[[asyncio.Future[Any]], object]] = {}
        # Who answers a task whose request a worker is finishing: the answer (_ANSWER, set as the worker records
        # it: _LoopFuture.given_error) or the task's deadline (its error, set by _expire), whichever comes
        # first (dict.setdefault: one atomic step under the GIL). Until the answer is drained.
        self._claims: dict[asyncio.Future[Any], Any] = {}
        self._pending: list[Batcher] = []  # batchers that got requests this iteration, not yet woken
        # requests of this iteration to merge, per version, with and without a deadline (see join)
        self._groups: dict[tuple[Batcher, bool], _Group] = {}
        self._flush_due = False
        self._running_here = False  # the loop's thread is running a request itself (see _flush)
        self._routing = False  # apredict is routing a request on the loop: no flag provider may be waited for
        # (server, model, Server._plain_route's answer) for this iteration's requests with no version or
        # context (see _joined): one routing per model and iteration while its published routes stay the same
        self._route_memo: tuple[Server, str, tuple[Routes, ModelVersion, Decision]] | None = None
        self.wakes = 0  # cross-thread wakes of this loop so far (for tests and benchmarks)
        # asyncio's own loops keep the callbacks due in this iteration in a deque: while it is empty, a request
        # has nobody to merge with (see alone). Another loop (uvloop) keeps none that Python can read: there,
        # recent traffic decides (see alone).
        ready = getattr(loop, "_ready", None)
        self._ready: deque[Any] | None = ready if type(ready) is deque else None
        # asyncio's own loops make a plain asyncio.Future for create_future: apredict makes it without the
        # Python call (a loop that makes its own, uvloop's or a subclass's, is asked)
        make = getattr(type(loop), "create_future", None)
        self._plain_futures = make is asyncio.BaseEventLoop.create_future
        self._streak: asyncio.Handle | None = None  # scheduled by the first lone request answered at once
        self._streak_until = 0.0  # (perf_counter) until when more may be, before the loop runs it
        # the task that made that request (for a loop without a readable queue), weakly
        self._streak_task: weakref.ref[asyncio.Task[Any]] | None = None
        self._iteration_requests = 0  # requests joined or queued in this iteration, for its flush
        self._last_flush_requests = 0  # how many the last end-of-iteration flush merged or queued

    # -- lone requests (loop thread) -----------------------------------------------------------------------

    def alone(self) -> bool:
        """Whether a request made now has nobody to merge with: no other callback is due in this iteration of
        the loop (so no other task makes a request before the end-of-iteration flush would run), and none
        was made yet (its flush would be due). Then ``apredict`` runs it at once, on the loop, as
        :meth:`Server.predict` runs a lone request on its caller's thread, and its task goes on without
        waiting for another iteration.

        A task that calls again and again does not keep the loop: the first request answered at once
        schedules a callback (:meth:`answered_alone`), and until it runs, after the loop polled for I/O, more
        are answered at once only for ``LONE_STREAK_S``; the next one joins a group, and its task waits for
        the flush."""
        ready = self._ready
        if ready is None:
            return self._alone_by_traffic()
        if not ready:
            return True
        return len(ready) == 1 and ready[0] is self._streak and time.perf_counter() < self._streak_until

    def _alone_by_traffic(self) -> bool:
        """:meth:`alone` for a loop whose queue of due callbacks Python cannot read (uvloop): a request is
        taken as alone unless the loop shows company: a flush is due (a request of this iteration joined a
        group or was queued), the last flush served several requests (traffic that merges: this one joins
        it; once a flush serves one request alone, lone requests are answered at once again), or another
        task (or a caller outside any task) made a request answered at once since the loop last went on.
        Wrong at the first request of a burst: its task may then be answered at once for up to
        ``LONE_STREAK_S`` (runs under ``RUN_ON_LOOP_UNDER_S`` each) before the rest of the burst merges. Under
        steady traffic from many HTTP clients (uvicorn or hypercorn on uvloop) requests reach the loop one or
        two an iteration, and most are answered at once: 110-117 of 192 from 32 clients (docs/batching.md,
        "Which servers and views get this path"), each a short run on an idle version, not a wait."""
        if self._flush_due or self._last_flush_requests > 1:
            return False
        if self._streak is None:
            return True
        task = asyncio.current_task()
        streak_task = self._streak_task
        return (
            task is not None
            and streak_task is not None
            and task is streak_task()
            and time.perf_counter() < self._streak_until
        )

    def answered_alone(self, started: float) -> None:
        """A request made at ``started`` (``time.perf_counter``) was answered at once (see :meth:`alone`)."""
        if self._streak is None:
            loop = self._loop()
            assert loop is not None  # called on the loop's own thread
            self._streak = loop.call_soon(self._streak_ended)
            self._streak_until = started + LONE_STREAK_S
            if self._ready is None:
                task = asyncio.current_task()  # (weakly: a loop closed before the streak ends must not keep it)
                self._streak_task = None if task is None else weakref.ref(task)

    def _streak_ended(self) -> None:
        self._streak = None
        self._streak_task = None

    # -- submitting (loop thread) --------------------------------------------------------------------------

    def queued(self, batcher: Batcher) -> None:
        """``batcher`` has a request queued without a wake: wake it at the end of this iteration."""
        if batcher not in self._pending:
            self._pending.append(batcher)
        self._iteration_requests += 1
        self._flush_at_iteration_end()

    def join(
        self, server: Server, routes: Routes, target: ModelVersion, timeout_s: float | None, member: _Member
    ) -> None:
        """Add a task's request to this iteration's group for ``target``: merged with the others at the end of
        the iteration. Requests with a deadline are merged only with requests with one (each ``timeout_s``
        may differ: a deadline propagated from a web request's header differs for every request). A merged
        request is dropped unrun once the latest of its tasks' deadlines has passed, like any queued request
        past its deadline; until then it runs whole (each task's own loop timer answers it at its deadline)."""
        batcher = target.batcher
        assert batcher is not None
        key = (batcher, timeout_s is None)
        group = self._groups.get(key)
        if group is None:
            loop = self._loop()
            assert loop is not None  # called on the loop's own thread
            group = self._groups[key] = _Group(self, server, routes, target, batcher, loop)
        group.add(member)
        self._iteration_requests += 1
        self._flush_at_iteration_end()

    def _flush_at_iteration_end(self) -> None:
        if not self._flush_due:
            loop = self._loop()
            assert loop is not None  # called on the loop's own thread
            # Scheduled, then marked: the loop's thread interrupted between the two (a signal handler raised)
            # leaves a flush scheduled twice at worst. Marked first, it left one due that never came, and no
            # later request on this loop was ever flushed.
            loop.call_soon(_FlushCall(self))
            self._flush_due = True

    def _flush(self) -> None:
        self._flush_due = False
        self._route_memo = None
        self._last_flush_requests, self._iteration_requests = self._iteration_requests, 0
        groups = deque(self._groups.items())
        self._groups = {}
        pending = deque(self._pending)
        self._pending = []
        queued: list[Batcher] = []
        try:
            while groups:
                _key, group = groups.popleft()
                try:
                    if self._start(group) and group.batcher not in queued:
                        queued.append(group.batcher)
                except BaseException as exc:  # a bug, no memory to stack, or an interruption: no task may wait forever
                    if isinstance(exc, Exception) and not raised_by_signal_handler(exc):  # (a time limit: no bug)
                        logger.exception("inprocserve: merged requests to %r failed", group.target.name)
                    # A part queued before it failed (its tasks' withdrawal hooks are set) is answered by its
                    # run: its batcher is woken below. Refused too, it stayed queued, woken by nobody.
                    withdrawals = self._withdrawals
                    if group.batcher not in queued and any(m.waiter in withdrawals for m in group.members):
                        queued.append(group.batcher)
                    group.refused(
                        [m for m in group.members if not m.waiter.done() and m.waiter not in withdrawals], exc
                    )
                    if not isinstance(exc, Exception):
                        raise
            woken = deque(batcher for batcher in queued if batcher not in pending)
            while pending:
                batcher = pending.popleft()
                ran = False
                self._running_here = True  # answers posted meanwhile (any batcher's) are drained below, unwoken
                try:
                    ran = batcher.run_lone_here(RUN_ON_LOOP_UNDER_S, accept=self._owns)
                except Exception as exc:  # a bug: its request stays queued for the worker woken below
                    if not raised_by_signal_handler(exc):  # (the loop's task stopped by its time limit: no bug)
                        logger.exception("inprocserve: running a request of %r on the loop failed", batcher.model)
                finally:
                    self._running_here = False
                    if self._inbox:
                        self._drain()
                    if not ran:
                        batcher.wake()
            while woken:
                woken.popleft().wake()
        except BaseException:
            # The loop's thread interrupted (a signal handler raised a BaseException: gevent's Timeout, Ctrl-C,
            # a task queue's time limit): the group it was starting got the interruption, and what it had not
            # come to yet is flushed in the next iteration. Dropped, those groups' tasks waited forever (or
            # until their own deadline), and the requests queued for the batchers not yet woken until other
            # traffic came.
            for key, group in groups:
                self._groups.setdefault(key, group)
            for batcher in (*pending, *queued):
                if batcher not in self._pending:
                    self._pending.append(batcher)
            if self._groups or self._pending:
                self._flush_at_iteration_end()
            raise

    def _flush_lost(self) -> None:
        """The loop dropped this iteration's flush unrun: closed (asyncio empties its queue of due callbacks)
        after it stopped in the iteration that queued requests. Their batchers were never woken: a worker is
        woken now (unless a batcher's lock is held: this may run inside a garbage collection), and drops them
        as requests of a closed loop. Left unwoken, a version with no other traffic kept them queued, counted
        against ``max_queue_rows`` and in flight, holding the loop and their inputs."""
        pending = self._pending
        self._pending = []
        for batcher in pending:
            try:
                batcher.wake(wait=False)
            except Exception:  # a bug: the next request queued wakes one anyway
                logger.exception("inprocserve: waking a worker for %r failed", batcher.model)

    def _owns(self, future: Any) -> bool:
        """Whether ``future`` is the stand-in future of a request of this loop."""
        return type(future) is _LoopFuture and future._state is self

    # -- merged requests (loop thread) ----------------------------------------------------------------------

    def _start(self, group: _Group) -> bool:
        """Run an iteration's group of requests: here, now, if the version is idle and the run is short (see
        ``RUN_ON_LOOP_UNDER_S``); else queued as requests of up to ``max_batch_size`` rows, each carrying
        several tasks' rows. Returns whether anything was queued (the batcher is to be woken)."""
        members = group.members
        for member in members:  # (a loop, not any() over a generator: a generator's step per task costs more)
            if member.waiter.done():  # cancelled, or their deadline answered them
                break
        else:
            member = None
        if member is not None:
            gone = [member for member in members if member.waiter.done()]
            group.refused(gone, None)
            members = group.members = [member for member in members if not member.waiter.done()]
            group.rows = sum(member.rows for member in members)
            if not members:
                return False
        batcher = group.batcher
        limit = batcher.max_rows
        if group.rows <= limit and batcher.runs_within(group.rows, RUN_ON_LOOP_UNDER_S) and self._run_here(group):
            return False
        # Split an idle version's group in two runs when the loop's work on a request outweighs the session's:
        # while the session runs the second half, the loop answers the first half's tasks, whose next requests
        # queue behind it, and loop and session keep working side by side from then on (a version that is busy
        # already is in that rhythm: its group runs whole).
        cost = batcher.run_cost
        split = (
            cost is not None
            and cost.per_row_s < LOOP_WORK_PER_REQUEST_S
            and group.rows >= _SPLIT_FROM_ROWS
            and batcher.idle
        )
        if split:
            limit = min(limit, (group.rows + 1) // 2)
        queued = False
        chunk: list[_Member] = []
        rows = 0
        for member in members:
            if rows and rows + member.rows > limit:
                queued = self._queue(group, chunk, rows, alone=split) or queued
                chunk, rows = [], 0
            chunk.append(member)
            rows += member.rows
        return self._queue(group, chunk, rows, alone=split) or queued

    def _run_here(self, group: _Group) -> bool:
        """Run ``group`` on the loop's thread if a runner is idle and nothing is queued, and answer its tasks;
        False, having done nothing, if not."""
        members = group.members
        timing = BatchTiming(group.rows)
        self._running_here = True  # answers posted meanwhile are drained below, unwoken
        try:
            outputs = group.batcher.run_plain(
                _stacked(members),
                group.rows,
                parent=members[0].span if len(members) == 1 else None,
                timing=timing,
                deadline=_latest_deadline(members),
                callers=len(members),
                from_loop=True,
            )
        except Exception as exc:  # the run failed: each task's own run says whose input it was
            self._ran_here(group, timing)
            # (its traceback holds this frame, whose members hold the tasks' futures: set on a lone task's
            # future, it kept the task's inputs in a cycle until the collector's next full pass; a copy, as an
            # unexpected error was logged with its traceback, which a buffering log handler formats later)
            self._failed(group, members, own_error(exc), timing, 0.0)
            return True
        finally:
            self._running_here = False
            if self._inbox:
                self._drain()
        if outputs is None:  # busy after all, or companions expected: queue it
            return False
        self._ran_here(group, timing)
        if self._rows_kept(group, members, outputs, group.rows):
            self._answer(group, members, outputs, None, timing, 0.0)
        return True

    @staticmethod
    def _ran_here(group: _Group, timing: BatchTiming) -> None:
        """Record the loop's run of a group as a batch (a worker's run of it would be one)."""
        group.batcher.telemetry.batch_finished(group.rows, timing.compute_s, inline=False, queue_wait_s=0.0)

    def _queue(self, group: _Group, members: list[_Member], rows: int, *, alone: bool = False) -> bool:
        """Queue ``members`` as one request of ``rows`` rows, without waking a worker; whether it was queued.
        ``alone``: it runs as a batch of its own, never stacked with other requests."""
        target = group.target
        first = members[0]
        decision = first.decision  # (the telemetry of each task uses its own)
        merged = _Merged(self, group, members)
        try:
            arrays = _stacked(members)
        except Exception as exc:  # no memory for the stacked copy: each task goes on its own, unstacked
            self._queue_failed(group, members, exc)
            return False
        request = Request(
            arrays,
            rows,
            Route(target.name, target.version, decision.variant, decision.reason, "", (), decision),
            _latest_deadline(members),
            merged,  # type: ignore[arg-type]  # stands in for a concurrent.futures.Future
            deliver=merged.deliver,
        )
        request.callers = len(members)
        if alone:
            request.key = object()  # (the queue stacks only requests with equal keys)
        if len(members) == 1:
            request.span = first.span
        elif tracing():
            request.member_spans = [member.span for member in members]
        try:
            group.batcher.submit(request, run_inline=False)
        except ServerClosedError:  # the version retired since routing (or the server closed): route each again
            self._hand_over(group, members)
            return False
        except Exception as exc:  # shed (QueueFullError): one by one, as many as fit are queued
            self._queue_failed(group, members, exc)
            return False
        return True

    def _queue_failed(self, group: _Group, members: list[_Member], error: BaseException) -> None:
        """``members`` could not be queued as one request: several are sent the full way one by one, a lone
        one is refused with ``error``. The loop's task stopped by its time limit as they were stacked or queued
        (a signal handler's exception) is no refusal to go around: each gets it (sent the full way, they were
        answered, and the task ran on past its soft limit)."""
        if len(members) > 1 and not raised_by_signal_handler(error):
            self._hand_over(group, members)
        else:
            group.refused(members, error)

    def _answered(self, merged: _Merged, request: Request) -> None:
        """The answer of a queued merged request (posted by the worker that finished it)."""
        error = request.error
        if error is None:
            group, members, outputs = merged.group, merged.members, request.outputs
            if outputs is not None and self._rows_kept(group, members, outputs, request.rows):
                self._answer(group, members, outputs, None, request.batch, request.queue_wait_s)
        else:
            self._failed(merged.group, merged.members, error, request.batch, request.queue_wait_s)

    def _rows_kept(self, group: _Group, members: list[_Member], outputs: dict[str, Any], rows: int) -> bool:
        """Whether every output of a run of several tasks' stacked rows has one row per input row, so that each
        task's rows can be cut out. If not, the model's outputs have no batch axis: its batcher stops stacking
        requests, each task is sent the full way to run alone, and False is returned."""
        if len(members) == 1:
            return True
        for name, array in outputs.items():
            shape = getattr(array, "shape", ())
            if shape[:1] != (rows,):
                group.batcher.disable_merging(f"output {name!r} has shape {shape} for a batch of {rows} rows")
                self._hand_over(group, members, ran=True)
                return False
        return True

    def _failed(
        self,
        group: _Group,
        members: list[_Member],
        error: BaseException,
        timing: BatchTiming | None,
        queue_wait_s: float,
    ) -> None:
        """A merged run failed: a failure of the run itself (not its deadline, a close or a cancellation) may
        be one task's input, so several tasks are each handed to the full way, where a failing batch is
        bisected down to the request that fails."""
        if len(members) > 1 and _isolable(error):
            self._hand_over(group, members, ran=True)
        else:
            self._answer(group, members, None, error, timing, queue_wait_s)

    def _answer(
        self,
        group: _Group,
        members: list[_Member],
        outputs: dict[str, Any] | None,
        error: BaseException | None,
        timing: BatchTiming | None,
        queue_wait_s: float,
    ) -> None:
        """Answer each task from its rows of ``outputs`` (or with ``error``), recording each request as the
        full way does: latency, span, metrics, its id and the router's note."""
        target = group.target
        model, version = target.name, target.version
        server = group.server
        telemetry, ids, router, routing = server._telemetry, server._ids, group.routes.router, group.routes.state
        recorder, latency = group.batcher.telemetry, target.latency
        metered = metering()  # (else an unsampled request has nothing to record)
        # each task's rows of each output: one output (the usual case) spelled out, a dict comprehension costs
        only = None if outputs is None or len(outputs) != 1 or len(members) == 1 else next(iter(outputs.items()))
        now = time.perf_counter()
        start = 0
        request_ids = ids.take(len(members))
        noted = 0  # the tasks, from the first, noted as served together (below): each once it is recorded
        try:
            for index, member in enumerate(members):
                decision = member.decision
                elapsed_s = now - member.started
                waiter = member.waiter
                request_id = request_ids[index]
                end = start + member.rows
                answer = None
                got: BaseException | None
                if waiter.done():  # cancelled, or answered by its own deadline meanwhile: recorded with what it got
                    got = _given(waiter)
                elif outputs is None:
                    got = error
                else:
                    got = None
                    if only is not None:
                        part = {only[0]: only[1][start:end]}
                    elif len(members) == 1:
                        part = outputs
                    else:
                        part = {name: array[start:end] for name, array in outputs.items()}
                    try:
                        answer = prediction_of(part, model, version, decision.variant, decision.reason, request_id)
                    except Exception as exc:  # (no memory for it): this task gets the error, the others their answers
                        # (raised on, the task after it got this task's error, though its rows had run, and was
                        # counted refused once its run was counted; a copy: the traceback holds this frame)
                        logger.exception("inprocserve: answering a merged request to %r failed", model)
                        got = own_error(exc)
                try:
                    # (each task's latency as the loop goes: recorded together after it, one interruption there
                    # dropped the whole batch's records, though every task had its answer)
                    latency.record(elapsed_s, failed=got is not None)
                    if metered or member.span is not INVALID_SPAN:
                        telemetry.plain_answered(
                            member.span, decision, version, member.rows, timing, got, elapsed_s, recorder, queue_wait_s
                        )
                    noted = index + 1
                finally:
                    # (also if the loop's thread is interrupted, a signal handler raising, once the task was
                    # recorded: it gets what it was recorded with. Left unanswered, the drain's clean-up refused
                    # it with the interruption and recorded it again: its success on the status page, an error for
                    # its caller)
                    if waiter.done():
                        pass
                    elif answer is not None:
                        waiter.set_result(answer)
                    else:
                        assert got is not None
                        waiter.set_exception(own_error(got) if len(members) > 1 else got)  # (each task its own)
                start = end
        except BaseException:
            # The loop's thread interrupted (a signal handler raised) before the tasks from ``noted`` on were
            # recorded: those answered (in the ``finally`` above) or given up meanwhile are recorded and noted as
            # served here; the drain's clean-up refuses, and so records, the others. (Left, their spans were never
            # ended, and so never exported, and an answered task was counted served nowhere and its outcome
            # credited to no variant.) Here, not in the loop: the loop's work per task stays as it is.
            late = [index for index in range(noted, len(members)) if members[index].waiter.done()]
            answered, progress = [members[i] for i in late], [0]
            try:
                try:
                    self._record_answered(group, answered, timing, queue_wait_s, now, progress, metered=metered)
                except BaseException:  # interrupted again (a second Ctrl-C, an outer gevent Timeout): once more,
                    # from the first not recorded, and the first is raised. (Left, the tasks from there on had
                    # their answers but their spans were never ended.)
                    self._record_answered(group, answered, timing, queue_wait_s, now, progress, metered=metered)
            finally:
                try:
                    _noted_served(router, [request_ids[i] for i in late], answered, routing)
                except Exception:
                    raise
                except BaseException:  # interrupted again as it noted them (each still noted: see _noted_served):
                    # the first is raised. (Raised on, the drain's clean-up gave the tasks not yet answered this
                    # second interruption.)
                    pass
            raise
        finally:
            _noted_served(router, request_ids, members[:noted], routing)  # (each noted as served once recorded)
        group.answered()

    @staticmethod
    def _record_answered(
        group: _Group,
        members: list[_Member],
        timing: BatchTiming | None,
        queue_wait_s: float,
        now: float,
        progress: list[int],
        *,
        metered: bool,
    ) -> None:
        """:meth:`_answer`'s recording (span and metrics) of ``members``, whose tasks are answered already, from
        the ``progress[0]``-th on; ``progress[0]`` counts each one recorded (a call again after an interruption
        goes on from there)."""
        telemetry, version, recorder = group.server._telemetry, group.target.version, group.batcher.telemetry
        said = False
        while progress[0] < len(members):
            member = members[progress[0]]
            waiter, span = member.waiter, member.span
            # ended (an SDK span's end time is set): interrupted once it was recorded. (Not is_recording(): a
            # span that a sampler kept out, never recording, still has its metrics to record.)
            if (metered or span is not INVALID_SPAN) and getattr(span, "end_time", None) is None:
                got = _given(waiter) if waiter.cancelled() or waiter.exception() is not None else None
                try:
                    telemetry.plain_answered(
                        span,
                        member.decision,
                        version,
                        member.rows,
                        timing,
                        got,
                        now - member.started,
                        recorder,
                        queue_wait_s,
                    )
                except Exception as exc:  # a broken exporter: logged once, the others still recorded
                    if not said and not raised_by_signal_handler(exc):
                        said = True
                        logger.exception("inprocserve: recording a merged request to %r failed", group.target.name)
            progress[0] += 1

    def _hand_over(self, group: _Group, members: list[_Member], *, on_loop: bool = True, ran: bool = False) -> None:
        """Send each task's request the full way (routed again if its version retired meanwhile), as it would
        have gone unmerged; its span, start and deadline carry over. ``on_loop=False``: called on a worker's
        thread (``_Merged.deliver``, the merged request still counted in flight): each is queued again on the
        version that ran it, even while it closes, a refusal is posted to the loop and a batcher woken directly.
        ``ran``: on the loop, the tasks' merged request ran (and failed, or gave outputs that cannot be split):
        they were admitted once, so they are queued again as a worker's are, held in flight meanwhile
        (:meth:`Batcher.hold_open`), not shed behind a queue that filled since."""
        batcher = group.target.batcher
        held = False
        try:
            if on_loop and ran and batcher is not None:
                held = batcher.hold_open(len(members))
            self._hand_over_each(group, members, on_loop=on_loop, readmit=not on_loop or held)
        finally:
            if held:
                batcher.let_go(len(members))  # type: ignore[union-attr]  # (held: not None)

    def _hand_over_each(self, group: _Group, members: list[_Member], *, on_loop: bool, readmit: bool) -> None:
        """:meth:`_hand_over`'s work."""
        from ._server import _Opened  # (the server imports this module)

        server, target = group.server, group.target
        for member in members:
            opened = _Opened(
                member.started,
                member.span,
                member.deadline,
                group.routes,
                target,
                member.decision,
                member.arrays,
                member.rows,
            )
            handle = _LoopFuture(member.waiter, self, group)
            try:
                _request, answering = server._dispatch(
                    target.name,
                    member.arrays,
                    member.version,
                    member.context,
                    None,
                    handle,  # type: ignore[arg-type]  # stands in for a concurrent.futures.Future
                    inline=False,
                    opened=opened,
                    readmit=readmit,
                )
            except Exception as exc:  # refused (and recorded so): the task gets the error
                # (its traceback holds this frame and _dispatch's, which hold the task's future and inputs: a
                # cycle that kept them until the collector's next full pass)
                drop_tracebacks(exc)
                if on_loop:
                    if not member.waiter.done():
                        member.waiter.set_exception(exc)
                else:
                    self.post(member.waiter, None, exc)
                continue
            if not handle._answered and answering.batcher is not None:
                if on_loop:
                    self.queued(answering.batcher)
                else:
                    try:
                        answering.batcher.wake()
                    except Exception:  # a bug: the worker that runs the next batch takes it anyway
                        logger.exception("inprocserve: waking a worker for %r failed", target.name)
        if on_loop:  # those refused above are answered: the group's deadline timer may be done with
            group.answered()
        else:
            self.post(group, None, None)

    # -- giving up (a task cancelled, or answered by its deadline) -------------------------------------------

    def withdraw_when_given_up(
        self, waiter: asyncio.Future[Any], hook: Callable[[asyncio.Future[Any]], object]
    ) -> None:
        """Call ``hook(waiter)`` once the task awaiting ``waiter`` gives up before its answer comes: cancelled
        (``Server.apredict`` catches its cancellation: :func:`given_up`) or answered by its own deadline
        (:func:`_expire`); or now, if it did already. Its queued request then leaves the queue at once, instead
        of counting against ``max_queue_rows`` and holding its inputs until a worker takes it. From any thread
        (a request queued by a worker: :meth:`_hand_over`); :meth:`answered_first` takes the hook back. (A
        merged request's hook is set by :meth:`_Merged.withdraw_when_given_up` itself, never over a newer one.)"""
        self._withdrawals[waiter] = hook
        if waiter.done():  # (gave up before the hook was set: a repeated call is harmless, see Batcher.withdraw)
            self.gave_up(waiter)

    def answered_first(
        self, waiter: asyncio.Future[Any], hook: Callable[[asyncio.Future[Any]], object] | None = None
    ) -> None:
        """``waiter``'s request was answered (or taken to run): its task's giving up withdraws nothing now.
        Kept, the hook (it holds the request, and so its inputs and outputs) would stay until the loop goes.
        ``hook``: only if that one is still set (not a newer request's)."""
        if hook is None or self._withdrawals.get(waiter) is hook:
            self._withdrawals.pop(waiter, None)

    def gave_up(self, waiter: asyncio.Future[Any]) -> None:
        """The task awaiting ``waiter`` gave up: withdraw its queued request (once; nothing if none is)."""
        hook = self._withdrawals.pop(waiter, None)  # (atomic: a worker that sets the hook meanwhile may call too)
        if hook is not None:
            try:
                hook(waiter)
            except Exception:  # a bug: the request is still dropped when a worker takes it
                logger.exception("inprocserve: withdrawing a given-up request failed")

    # -- answering (worker threads post, the loop drains) ----------------------------------------------------

    def closed(self) -> bool:
        """Whether the loop is closed (or gone): nobody is left to answer, or to run its requests for."""
        loop = self._loop()
        return loop is None or loop.is_closed()

    def post(self, sink: Any, value: Any, error: BaseException | None) -> None:
        """Hand an answer to the loop (any thread): it wakes the loop once per batch of answers, or not at all
        while the loop's thread runs a request itself (it drains the inbox right after). An answer to a closed
        loop is dropped, with any still in the inbox: nobody is left to take them, and kept they would keep
        the loop, its tasks' inputs and outputs in memory (a loop closed before a drain it had scheduled ran
        leaves ``_wake_due`` set: without this, every later answer would pile up)."""
        if self.closed():
            self._inbox.clear()
            self._claims.clear()  # (nobody is left to answer: the claims' futures are let go with the answers)
            self._wake_due = False
            return
        self._inbox.append((sink, value, error))
        # Append first, then test the flags: a drain that cleared the flag before this append either sees
        # the item or is followed by the drain this call schedules; while the loop's thread runs a request
        # itself, it drains the inbox right after (a worker that saw the flag set appended before it drains).
        if self._running_here:
            return
        if not self._wake_due:
            self._wake_due = True
            try:
                if not wake_after_batch(self._wake):
                    self._wake()
            except BaseException:  # the loop's own thread interrupted (a signal handler raised) before the wake
                # was arranged: not marked due, the next answer wakes the loop (marked, no answer ever did)
                self._wake_due = False
                raise

    def _wake(self) -> None:
        self.wakes += 1
        loop = self._loop()
        try:
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(_DrainCall(self))
        except RuntimeError:  # the loop is closed or gone: nobody is left to answer
            self._inbox.clear()
            self._wake_due = False

    def _drain(self) -> None:
        self._wake_due = False
        inbox = self._inbox
        sink: Any = None
        value: Any = None
        error: BaseException | None = None
        try:
            while inbox:
                sink, value, error = inbox.popleft()
                if type(sink) is _Merged:
                    try:
                        self._answered(sink, value)
                    except Exception as exc:  # a bug: the answer is lost, but no task may wait forever
                        if not raised_by_signal_handler(exc):  # (the loop's task stopped by its time limit: no bug)
                            logger.exception(
                                "inprocserve: answering merged requests to %r failed", sink.group.target.name
                            )
                        self._refuse_merged(sink, exc)
                elif type(sink) is _Group:  # a task of it that went the full way was answered (see _LoopFuture)
                    sink.answered()
                else:
                    if self._claims:
                        self._claims.pop(sink, None)
                    if not sink.done():  # (done: cancelled, or its deadline answered it)
                        if error is None:
                            sink.set_result(value)
                        else:
                            sink.set_exception(error)
                sink = None
        except BaseException as exc:
            # The loop's thread interrupted (a signal handler raised: gevent's Timeout, Ctrl-C) as it answered
            # ``sink``: its tasks get the interruption (a lone task its answer), and the answers still in the
            # inbox are drained in the next iteration. Left, that request's tasks waited forever, and the
            # others until some later answer woke the loop.
            recorded: set[Any] = set()  # the tasks whose refusal is recorded: run once more, not recorded again
            try:
                self._drain_interrupted(sink, value, error, exc, recorded)
            except BaseException:  # interrupted again as it cleaned up (a second Ctrl-C, an outer gevent Timeout:
                # as it began, or before it scheduled the next drain): once more, and the first is raised. Left,
                # ``sink``'s tasks or the answers still in the inbox waited until some later answer woke the loop.
                self._drain_interrupted(sink, value, error, exc, recorded)
            raise

    def _refuse_merged(self, sink: _Merged, exc: BaseException, recorded: set[Any] | None = None) -> None:
        """Give ``sink``'s tasks ``exc``, which stopped the hand-out of their answer (a bug, or an interruption).
        A task sent the full way before it (its withdrawal hook is set: queued again) is answered by its run, as
        in _flush: its batcher is woken at the end of the iteration. (Refused, it got ``exc`` though its request
        was queued, and no worker was woken for it.)"""
        group, withdrawals, claims = sink.group, self._withdrawals, self._claims
        if any(m.waiter in withdrawals for m in sink.members):
            self.queued(group.batcher)
        # (one a worker took at once and answered is claimed: its answer is on its way; refused, it got ``exc``
        # though its request had run and was recorded as answered)
        refused = [m for m in sink.members if not m.waiter.done() and m.waiter not in withdrawals]
        group.refused([m for m in refused if m.waiter not in claims], exc, recorded=recorded)

    def _drain_interrupted(
        self, sink: Any, value: Any, error: BaseException | None, exc: BaseException, recorded: set[Any]
    ) -> None:
        """:meth:`_drain`'s clean-up after ``exc`` interrupted it as it handed ``sink`` its answer (``value``,
        ``error``; ``sink`` is ``None`` if it was handed over). ``recorded``: the futures of the tasks whose
        refusal was recorded, shared by a run interrupted and the run after it."""
        try:
            if type(sink) is _Merged:
                self._refuse_merged(sink, exc, recorded)
            elif type(sink) is _Group:
                sink.answered()
            elif sink is not None:
                self._claims.pop(sink, None)
                if not sink.done():
                    if error is None:
                        sink.set_result(value)
                    else:
                        sink.set_exception(error)
        finally:
            # (also if handing ``sink`` its answer fails again: the answers after it are handed out in the next
            # iteration; left in the inbox, they waited until some later answer woke the loop, maybe forever)
            if self._inbox and not self._wake_due:
                loop = self._loop()
                if loop is not None and not loop.is_closed():
                    loop.call_soon(_DrainCall(self))
                    self._wake_due = True


class _FlushCall:
    """The end-of-iteration flush as the loop's callback, which notices if the loop drops it unrun (closed:
    :meth:`_LoopState._flush_lost`). One per iteration that made requests, not one per request."""

    __slots__ = ("ran", "state")

    def __init__(self, state: _LoopState) -> None:
        self.state = state
        self.ran = False

    def __call__(self) -> None:
        self.ran = True
        self.state._flush()

    def __del__(self) -> None:
        if not self.ran:
            self.state._flush_lost()


class _DrainCall:
    """The drain of the inbox as the loop's callback (one per cross-thread wake), which empties the inbox if
    the loop drops it unrun: a loop closed after a worker posted its last answers (its tasks gave up, and it
    stopped) kept them, and with them the answers' arrays and the tasks' inputs, in the cycle of the loop and
    its state until the garbage collector's next full pass."""

    __slots__ = ("ran", "state")

    def __init__(self, state: _LoopState) -> None:
        self.state = state
        self.ran = False

    def __call__(self) -> None:
        self.ran = True
        self.state._drain()

    def __del__(self) -> None:
        if not self.ran:
            state = self.state
            state._inbox.clear()
            state._wake_due = False


class _Member(NamedTuple):
    """One task's request in a :class:`_Group`: validated, its span started, waiting to be merged. (A tuple:
    built once per request on the loop, for a fraction of a class's construction cost, like ``Route``.)"""

    waiter: asyncio.Future[Any]
    arrays: dict[str, Any]
    rows: int
    decision: Decision
    span: Any
    started: float
    deadline: float | None
    version: int | None  # as the caller asked (None: routed), and its context: to route it again
    context: Mapping[str, Any] | None
    timeout_s: float | None
    expires_at: float  # on the loop's clock (inf: no deadline); its group's timer answers it then


_new_member = tuple.__new__
_Future = asyncio.Future


class _Group:
    """The requests one loop iteration made to one version that takes merged requests (see ``apredict``)."""

    __slots__ = ("batcher", "expires_at", "loop", "members", "routes", "rows", "server", "state", "target", "timer")

    def __init__(
        self,
        state: _LoopState,
        server: Server,
        routes: Routes,
        target: ModelVersion,
        batcher: Batcher,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.state = state
        self.server = server
        self.routes = routes
        self.target = target
        self.batcher = batcher
        self.loop = loop
        self.members: list[_Member] = []
        self.rows = 0
        # One loop timer answers the group's tasks at their deadlines (one timer and no coroutine per task):
        # armed for the earliest deadline still to come, cancelled once every task is answered.
        self.timer: asyncio.TimerHandle | None = None
        self.expires_at = _NEVER

    def add(self, member: _Member) -> None:
        self.members.append(member)
        self.rows += member.rows
        if member.expires_at < self.expires_at:
            self._arm(member.expires_at)

    def _arm(self, when: float) -> None:
        # Armed, then the previous timer cancelled: the loop's thread interrupted in between (a signal handler
        # raised) leaves two timers, each answering only the tasks due by its own time (see _expire). Cancelled
        # first, an interruption before the new one was armed left the group without a timer: its tasks
        # waited past their deadlines for the run ahead of theirs, however long.
        previous = self.timer
        self.timer = self.loop.call_at(when, self._expire, when)
        self.expires_at = when
        if previous is not None:
            previous.cancel()

    def _expire(self, when: float) -> None:
        """The timer armed for ``when`` fired: answer each task past its deadline with
        ``DeadlineExceededError``, and arm the timer again for the next deadline of a task still waiting. A
        timer an interruption left behind (see :meth:`_arm`) answers the tasks due by its own time, and leaves
        the group's timer armed."""
        # Loops fire timers up to a clock tick early (uvloop rounds to whole milliseconds): due by its own time.
        # (By the group's next deadline, a timer left behind answered tasks whose deadline was still to come.)
        now = max(self.loop.time(), when)
        own = when == self.expires_at
        if own:
            self.timer = None
            self.expires_at = _NEVER
        claimed: list[asyncio.Future[Any]] = []  # tasks whose answer a worker is posting: theirs, not the timer's
        try:
            for member in self.members:
                if member.expires_at <= now and not member.waiter.done():
                    assert member.timeout_s is not None
                    _expire(self.state, member.waiter, self.target.name, member.version, member.timeout_s)
                    if not member.waiter.done():
                        claimed.append(member.waiter)
        finally:
            # (interrupted too, a signal handler raising as a task was answered: the others keep a timer; left
            # without, they waited past their deadlines, or forever) A claimed task's answer is on its way:
            # armed for its deadline again, the timer fired at once, every iteration, until it came (the loop
            # spun at full speed meanwhile).
            if own:
                following = min(
                    (m.expires_at for m in self.members if not m.waiter.done() and m.waiter not in claimed),
                    default=_NEVER,
                )
                if following < _NEVER:
                    self._arm(following)

    def answered(self) -> None:
        """Some tasks were answered: once all are, the timer is not needed (and would keep them alive)."""
        if self.timer is not None and all(member.waiter.done() for member in self.members):
            self.timer.cancel()
            self.timer = None
            self.expires_at = _NEVER

    def refused(self, members: list[_Member], error: BaseException | None, *, recorded: set[Any] | None = None) -> None:
        """``members`` were refused before they were queued: record each, and give each task the error. With
        ``error=None``, each task gave up already (cancelled, or its deadline answered it): recorded with
        what ended it. ``recorded``: the futures of tasks recorded already (skipped), each one recorded here
        added, for a call again after an interruption."""
        target = self.target
        said = False  # a broken exporter is logged once per call, with the first failure's traceback
        for member in members:
            waiter = member.waiter
            if recorded is not None and waiter in recorded:
                # recorded by a call an interruption stopped before the task got its error (the drain's
                # clean-up, run once more): recorded again, its span ended twice and its refusal counted twice
                if not waiter.done() and error is not None:
                    waiter.set_exception(own_error(error))
                continue
            ended = error
            if ended is None:
                ended = CancelledError() if waiter.cancelled() else waiter.exception() or CancelledError()
                # given up, as a synchronous caller's request given up in the queue: in the version's latency
                # errors on the status page (left out, only the full way's given-up tasks were counted)
                target.latency.record(time.perf_counter() - member.started, failed=True)
            try:
                self.server._telemetry.refused(
                    member.span, member.started, target.name, target.version, member.decision, ended
                )
                if recorded is not None:
                    recorded.add(waiter)
            except Exception as exc:  # a broken exporter: the task still gets its error. (Raised on, no task of
                # the group was answered, and a drain refusing them stopped with other answers still in its inbox.)
                # (once: per task, one broken exporter logged up to 64 tracebacks for one group)
                if not said and not raised_by_signal_handler(exc):  # (the loop's task stopped by its time limit)
                    said = True
                    logger.exception("inprocserve: recording a refused request to %r failed", target.name)
            if not waiter.done():
                # each task its own copy, without the traceback of the frame that caught it: that frame holds
                # the members, and so this future (a cycle that kept the task's inputs until the collector's
                # next full pass: a lone task refused by a full queue, 1 of 1)
                waiter.set_exception(ended if error is None else own_error(error))
        self.answered()


class _Merged:
    """Stands in for the future of one queued request that carries several tasks' requests
    (``Request.callers``): the batcher asks it whether to run at all (not once every task gave up) and whether
    to wake a worker (the loop does, at the end of the iteration); the worker that finishes it posts the
    request to the loop's inbox (:meth:`deliver`), where each task is answered from its rows."""

    __slots__ = ("_left", "group", "members", "state")

    defer_wake = True

    def __init__(self, state: _LoopState, group: _Group, members: list[_Member]) -> None:
        self.state = state
        self.group = group
        self.members = members

    def set_running_or_notify_cancel(self) -> bool:
        # A plain read of each task's future from the worker's thread, as _LoopFuture does: a task that gives
        # up just after is answered with nothing on the loop. Not for a closed loop: nobody would get it.
        return any(not member.waiter.done() for member in self.members) and not self.state.closed()

    def abandoned(self) -> BaseException | None:
        """What the request is answered with if nobody is left to take its answer (every task gave up, or the
        loop closed), else ``None``: read from another thread, under the batcher's lock, to drop it from a
        queue no worker was woken for (``Batcher._drop_abandoned_locked``)."""
        if self.state.closed() or all(member.waiter.done() for member in self.members):
            return CancelledError()
        return None

    def withdraw_when_given_up(self, batcher: Batcher, request: Request) -> None:
        """Queued: withdraw ``request`` from ``batcher`` once every task has given up (see
        :meth:`_LoopState.withdraw_when_given_up`)."""
        state = self.state
        self._left = 0
        hook = functools.partial(self._gave_up, batcher, request)
        # A worker may have taken the request since the batcher let go of its lock, its run failed, and each
        # task been queued again on its own with a hook of its own (deliver): that newer hook is kept. (This
        # one replaced it, and was then taken back below: a task cancelled later left its request queued.)
        # Set here, not by state.withdraw_when_given_up (a call per task): only where no hook is (dict.setdefault:
        # one atomic step under the GIL); a task not done now gives up no sooner than the loop's thread, this
        # one, goes on, so none needs its hook called at once.
        withdrawals = state._withdrawals
        for member in self.members:
            waiter = member.waiter
            if not waiter.done() and withdrawals.setdefault(waiter, hook) is hook:
                self._left += 1
        if request.state != QUEUED:  # taken meanwhile (the lock was let go): see _LoopFuture's
            for member in self.members:
                state.answered_first(member.waiter, hook)

    def _gave_up(self, batcher: Batcher, request: Request, waiter: asyncio.Future[Any]) -> None:
        self._left -= 1
        if self._left == 0 and all(member.waiter.done() for member in self.members):
            batcher.withdraw(request, CancelledError())  # (each task is recorded with what it got)

    def deliver(self, request: Request) -> None:
        """The request's deliver hook (``Request.complete``, on the thread that finished it). A failed run of
        several tasks' rows sends each task the full way right here, on the worker's thread, before the batcher
        counts the merged request finished (``Batcher._complete``): a ``close()`` waiting meanwhile waits for
        them too."""
        state = self.state
        drop = state._withdrawals.pop  # (answered_first's work, without a call per task)
        for member in self.members:  # answered: no longer withdrawn (see _LoopFuture._post)
            drop(member.waiter, None)
        error = request.error
        if error is not None and len(self.members) > 1 and _isolable(error):
            state._hand_over(self.group, self.members, on_loop=False)
            return
        state.post(self, request, None)


class _LoopFuture:
    """Stands in for the ``concurrent.futures.Future`` of a request: the batcher and the server resolve it on
    a worker thread, and it posts the answer to its loop's inbox instead of waking the loop itself.

    It offers exactly the calls the batcher and ``Server._deliver`` make on a request's future.
    """

    __slots__ = ("_answered", "_group", "_state", "_waiter")

    defer_wake = True  # the batcher leaves waking a worker to the loop's end-of-iteration flush

    def __init__(self, waiter: asyncio.Future[Any], state: _LoopState, group: _Group | None = None) -> None:
        self._waiter = waiter
        self._state = state
        self._answered = False
        self._group = group  # a merged group this task left for the full way: told once it is answered

    def set_running_or_notify_cancel(self) -> bool:
        # Read across threads on purpose: a plain flag read under the GIL. A task cancelled just after
        # this check has its answer dropped on the loop instead. Not for a closed loop: nobody would get it.
        return not self._waiter.done() and not self._state.closed()

    def done(self) -> bool:
        return self._answered

    def cancelled(self) -> bool:
        return self._waiter.cancelled()

    def abandoned(self) -> BaseException | None:
        """What the request is answered with if nobody is left to take its answer (its task gave up, or the
        loop closed), else ``None`` (see :meth:`_Merged.abandoned`)."""
        waiter = self._waiter
        if waiter.done():
            return _given(waiter)
        return CancelledError() if self._state.closed() else None

    def withdraw_when_given_up(self, batcher: Batcher, request: Request) -> None:
        """Queued: withdraw ``request`` from ``batcher`` as soon as its task gives up (see
        :meth:`_LoopState.withdraw_when_given_up`)."""
        waiter, state = self._waiter, self._state
        state.withdraw_when_given_up(waiter, lambda waiter: batcher.withdraw(request, _given(waiter)))
        if request.state != QUEUED:
            # Taken by a worker since the batcher let go of its lock, maybe answered already: _post took the
            # hook back before it was set, and kept it would keep the request until the loop goes.
            state.answered_first(waiter)

    def when_given_up(self, callback: Callable[[BaseException], None]) -> None:
        """Call ``callback`` on the loop once the task is done, with what it got if that is not its answer
        (cancelled, or answered by its deadline): a follower of an identical request in flight is let go
        then (``Sharing``)."""
        self._waiter.add_done_callback(lambda waiter: callback(_given(waiter)))

    def given_error(self) -> BaseException | None:
        """What the task got already, if its own deadline or a cancellation answered it before its request
        finished (read across threads, like ``set_running_or_notify_cancel``): its request is recorded so.
        Else the answer about to be recorded and posted is claimed as the task's: a deadline passing
        meanwhile leaves the task to it (see :func:`_expire`)."""
        waiter = self._waiter
        if waiter.done():
            return _given(waiter)
        claimed = self._state._claims.setdefault(waiter, _ANSWER)
        return None if claimed is _ANSWER else claimed

    def set_result(self, value: Any) -> None:
        self._post(value, None)

    def set_exception(self, error: BaseException | None) -> None:
        self._post(None, error)

    def _post(self, value: Any, error: BaseException | None) -> None:
        # Called once per answered request, on a worker thread.
        if self._answered:
            raise InvalidStateError("already answered")
        self._answered = True
        waiter = self._waiter
        self._state.answered_first(waiter)  # answered: no longer withdrawn if its task gives up
        if waiter.done():  # cancelled by its task meanwhile: tell the server, as a cancelled Future does
            self._state._claims.pop(waiter, None)
            if self._group is not None:
                self._state.post(self._group, None, None)
            raise InvalidStateError("cancelled")
        self._state.post(waiter, value, error)
        if self._group is not None:  # after the answer: its group's deadline timer may be done with
            self._state.post(self._group, None, None)


def _noted_served(router: Router, request_ids: Sequence[str], served: Sequence[_Member], routing: Any) -> None:
    """``router.served_many`` of a merged batch's answered tasks, called again for the rest if an interruption
    (a signal handler raising: gevent's ``Timeout``, Ctrl-C on the loop's thread) stopped it before it noted
    them all: one as it began noted none, and the whole batch's served counts and credited outcomes were lost.
    The first interruption is raised once all are noted (after ``_NOTE_TRIES`` calls at most)."""
    progress = [0]
    interruption: BaseException | None = None
    for _ in range(_NOTE_TRIES):
        done = progress[0]
        try:
            router.served_many(request_ids[done:], served[done:], routing, progress)
        except Exception:
            raise
        except BaseException as exc:
            if interruption is None:
                interruption = exc
            continue
        break
    if interruption is not None:
        raise interruption


def _stacked(members: list[_Member]) -> dict[str, Any]:
    """The inputs of ``members`` as one request's: each input's rows stacked in order."""
    if len(members) == 1:
        return members[0].arrays
    return {name: np.concatenate([member.arrays[name] for member in members]) for name in members[0].arrays}


def _isolable(error: BaseException) -> bool:
    """Whether a merged run's ``error`` may come from one task's input (bisecting finds whose), rather than
    apply to every task alike: its deadline, a close, a cancellation, or what the batcher never bisects
    either (``BatchExecution._run_isolating``): a remote server that is down (``RemoteUnavailableError``),
    or that refused the caller or ran the rows and answered unreadably (``is_whole_batch``). Sending each
    task's rows again then only doubles the calls to a failing server, and sends rows it may have run
    (a connection dropped after the request was sent), which ``retry_after_send = false`` promises not to."""
    if isinstance(error, (DeadlineExceededError, ServerClosedError, CancelledError, RemoteUnavailableError)):
        return False
    # (nor the loop's thread stopped by its task's time limit as it ran the group: Celery's soft_time_limit
    # under asyncio.run; handed over, the group was answered on the workers and the time limit swallowed)
    return not is_whole_batch(error) and not raised_by_signal_handler(error)


def _latest_deadline(members: list[_Member]) -> float | None:
    """The deadline of a merged request: the latest of its tasks' (``None`` if one has none), so it is not run
    only once every task is past its own; each task's own deadline is its loop timer's."""
    latest = 0.0
    for member in members:
        if member.deadline is None:
            return None
        latest = max(latest, member.deadline)
    return latest


def _routing_on_this_thread() -> bool:
    """Whether the calling thread runs an event loop that is routing an ``apredict`` request now (a flag
    reader must not make it wait: see ``forbid_waiting_when``)."""
    loop = asyncio._get_running_loop()
    if loop is None:
        return False
    state = _kept_state(loop)
    return state is not None and state._routing


forbid_waiting_when(_routing_on_this_thread)


def _state_of(loop: asyncio.AbstractEventLoop) -> _LoopState:
    """The state of ``loop`` (created on first use). The most recent one is kept at hand: nearly every call
    comes from the same loop as the one before, and a weak dictionary lookup costs a Python call."""
    global _last
    last = _last
    state = None if last is None else last()
    if state is not None and state._loop() is loop:
        return state
    state = _kept_state(loop)
    if state is None:
        with _states_lock:
            state = _kept_state(loop)
            if state is None:
                state = _LoopState(loop)
                try:
                    setattr(loop, _STATE_ATTRIBUTE, state)
                except AttributeError:  # a loop class with no room for it
                    _states[loop] = state
    _last = weakref.ref(state)  # a plain reference swap: a thread that reads a stale one only misses the shortcut
    return state


def _kept_state(loop: asyncio.AbstractEventLoop) -> _LoopState | None:
    """The state kept for ``loop`` in this process (not one inherited from before a fork), or ``None``."""
    state = getattr(loop, _STATE_ATTRIBUTE, None)
    if state is None:
        state = _states.get(loop)
    return state if type(state) is _LoopState and state._generation == _generation else None


def loop_wakes(loop: asyncio.AbstractEventLoop) -> int:
    """How many times worker threads have woken ``loop`` to deliver answers (0 for a loop never used)."""
    state = _kept_state(loop)
    return 0 if state is None else state.wakes


def _given(waiter: asyncio.Future[Any]) -> BaseException:
    """What a task that was answered before its run finished got: its deadline's error, or cancellation."""
    if waiter.cancelled():
        return CancelledError()
    return waiter.exception() or CancelledError()


def _expire(
    state: _LoopState,
    waiter: asyncio.Future[Any],
    model: str,
    version: int | None,
    timeout_s: float,
    answered: list[bool] | None = None,
) -> None:
    if answered is not None and answered[0]:
        # A thread answered the request by its deadline (it was recorded so there), and the answer is on its
        # way to the loop (call_soon_threadsafe): it is the task's, not this deadline
        return
    if not waiter.done() and state._inbox:
        # An answer a worker posted before the deadline fired, not yet drained (its wake was behind this timer
        # in the loop's queue): it is the task's, and its request was recorded so on the worker's thread. The
        # task was told its deadline passed while the metrics counted the request answered.
        state._drain()
    if waiter.done():
        return
    late = DeadlineExceededError(f"model {model!r}: no answer within {timeout_s:g}s", model=model, version=version)
    if state._claims.setdefault(waiter, late) is not late:
        # A worker recorded its request answered (before this deadline: see _LoopFuture.given_error), and is
        # posting the answer: it is the task's. (Answered here, the task got this error while the status page
        # and the metrics counted an answer.)
        return
    try:
        waiter.set_exception(late)
    finally:
        state._claims.pop(waiter, None)
        del late
    state.gave_up(waiter)


def given_up(awaited: object) -> None:
    """``Server.apredict``'s task was cancelled while it awaited ``awaited`` (what :func:`apredict` returned):
    its request, if queued, leaves the queue now (see :meth:`_LoopState.withdraw_when_given_up`). On the loop."""
    loop = asyncio._get_running_loop()
    state = None if loop is None else _kept_state(loop)
    if state is not None and isinstance(awaited, asyncio.Future):
        state.gave_up(awaited)


def apredict(
    server: Server,
    model: str,
    inputs: Any,
    *,
    version: int | None,
    context: Mapping[str, Any] | None,
    timeout_s: float | None,
) -> Prediction | Awaitable[Prediction]:
    """``Server.apredict``: route, validate and queue on the running loop now; return what to await for the
    answer, which arrives in the loop's inbox; or the answer itself, for a lone request answered at once
    (``_LoopState.alone``: no other task could have joined it; its run is short).

    That is the loop future itself, so a request costs no coroutine of its own; a merged request's deadline
    is kept by its group's timer, another's by a coroutine that arms and disarms a timer of its own. Raises,
    at once, what :meth:`Server.predict` raises for a request refused before queueing (and a lone request's
    failed run); the awaitable raises the rest.
    """
    loop = asyncio.get_running_loop()
    last = _last
    state = None if last is None else last()
    if state is None or state._loop() is not loop:
        state = _state_of(loop)
    opened = None
    waiter: asyncio.Future[Prediction] | None = None
    state._routing = True  # (until it returns: see _routing_on_this_thread)
    try:
        # alone()'s usual answer under load, without its call: other callbacks are due in this iteration
        ready = state._ready
        tried = False if ready and (len(ready) > 1 or ready[0] is not state._streak) else state.alone()
        if tried:
            started = time.perf_counter()
            state._running_here = True  # answers posted meanwhile (another version's) are drained below, unwoken
            try:
                answer, opened = server._predict_plain(model, inputs, version, context, timeout_s, RUN_ON_LOOP_UNDER_S)
            except Exception:  # its run failed: a task that retries at once still yields to the loop in time
                state.answered_alone(started)
                raise
            finally:
                state._running_here = False
                if state._inbox:
                    state._drain()
            if answer is not None:
                state.answered_alone(started)
                return answer
        waiter = _Future(loop=loop) if state._plain_futures else loop.create_future()
        if opened is not None:
            if _join_opened(server, state, loop, waiter, opened, version, context, timeout_s):
                return waiter
        elif not tried and _joined(server, state, loop, waiter, model, inputs, version, context, timeout_s):
            return waiter  # (its group's timer keeps its deadline)
        # (tried and nothing opened: not a plain request, or refused: the full way routes it, or raises)
        handle = _LoopFuture(waiter, state)
        future: Any = handle  # stands in for a concurrent.futures.Future (typing.cast would cost a call)
        try:
            _request, target = server._dispatch(
                model, inputs, version, context, timeout_s, future, inline=False, opened=opened
            )
            batcher = target.batcher
            if not handle._answered and batcher is not None:  # queued, not answered by the cache: wake at the end
                if not state._flush_due or batcher not in state._pending:
                    state.queued(batcher)
                else:  # (already due to be woken: counted, for what the flush tells of this iteration's traffic)
                    state._iteration_requests += 1
        except BaseException:
            # Raised once its request was queued (the loop's thread interrupted by a signal handler, a task
            # queue's time limit, as the router noted it or its wake was arranged), the task never awaits it:
            # it leaves the queue now, as an interrupted predict's does. Left there, no worker was woken for
            # it, its rows stayed counted, and identical requests following it waited forever. (Nothing if
            # it was not queued.)
            waiter.cancel()
            state.gave_up(waiter)
            raise
        if timeout_s is None:
            return waiter
        return _with_deadline(state, loop, waiter, model, version, timeout_s)
    except WaitOffLoop:  # its routing must wait for a flag provider: never on the loop, which would stall
        return _off_loop(server, state, loop, model, inputs, version, context, timeout_s)
    except BaseException as exc:
        if waiter is not None and not waiter.done():
            # Raised once its request joined its iteration's group (as the flush was arranged): the task never
            # awaits it, so it is given up, and the group runs without it. Left in, its rows ran for nobody and
            # it was recorded answered while its task got the interruption.
            waiter.cancel()
        if opened is not None and opened.lead is not None:
            # Raised before the full way took the lead over (the loop's thread interrupted as _dispatch began):
            # identical requests already follow it, and waited for good. (Nothing if it ended or was taken over.)
            server._sharing.finish(opened.target, opened.lead, None, exc)
        raise
    finally:
        state._routing = False


def _off_loop(
    server: Server,
    state: _LoopState,
    loop: asyncio.AbstractEventLoop,
    model: str,
    inputs: Any,
    version: int | None,
    context: Mapping[str, Any] | None,
    timeout_s: float | None,
) -> Awaitable[Prediction]:
    """``predict`` on a thread of the loop's default executor, in the caller's context (its trace), within
    the request's deadline counted from now: time spent waiting for a free thread counts, and the task gets
    ``DeadlineExceededError`` at the deadline even if no thread took the call yet. A task cancelled before a
    thread takes the call withdraws it."""
    started = time.perf_counter()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    answered = [False]  # set by the thread once predict returned or raised: see _expire

    def call() -> Prediction:
        reader: object = None  # (None: no note is read for it; an interruption before routing names the one asked)
        try:
            # (in the try: an interruption as it began left the call as it was, out of the loop's executor into
            # the task and out of asyncio.run, where one a moment later gave the task an InferenceError)
            reader = server._noting_routes()  # (the routed version noted on an interruption, for this call only)
            return predict()
        except Exception:
            raise
        except BaseException as exc:  # gevent's Timeout, SystemExit, KeyboardInterrupt out of the run, on this
            # thread: the task gets an error, as a worker's run stopped so answers its callers. Passed on as it
            # is, asyncio raised it out of the loop (run_until_complete died of another thread's exception).
            error = InferenceError(
                f"model {model!r}: the run was interrupted by {type(exc).__name__}; retry",
                model=model,
                version=server._routed_version(exc, version, reader),  # (the version it ran on, once routed)
            )
            try:  # (this frame joins its traceback: its local would hold it, and the inputs, in a cycle)
                raise error from exc
            finally:
                del error
        finally:
            answered[0] = True
            server._stop_noting()  # (left set, it names no one's request: every call makes a new reader)

    def predict() -> Prediction:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            late = DeadlineExceededError(
                f"model {model!r}: no answer within {timeout_s:g}s (no thread was free to route it)",
                model=model,
                version=version,
            )
            server._refused_early(model, version, late, started)
            try:  # (this frame joins its traceback: its local would hold it, and the inputs, in a cycle)
                raise late
            finally:
                del late
        return server.predict(model, inputs, version=version, context=context, timeout_s=left)

    try:
        answer = loop.run_in_executor(None, contextvars.copy_context().run, call)
    except RuntimeError as exc:  # the loop's default executor is shut down: the loop is ending
        closed = ServerClosedError(
            f"model {model!r}: the event loop's default executor is shut down ({exc}); this request needs it "
            "to wait for its flag provider",
            model=model,
            version=version,
        )
        server._refused_early(model, version, closed, started)
        try:  # (this frame joins its traceback: its local would hold it, and the inputs, in a cycle)
            raise closed from None
        finally:
            del closed
    if timeout_s is None:
        return answer
    # the deadline answers a future of its own: the executor's, answered later, must find nothing to undo
    waiter: asyncio.Future[Prediction] = loop.create_future()
    answer.add_done_callback(functools.partial(_pass_on, waiter))
    waiter.add_done_callback(functools.partial(_withdraw, answer))
    return _with_deadline(state, loop, waiter, model, version, timeout_s, answered)


def _withdraw(answer: asyncio.Future[Prediction], waiter: asyncio.Future[Prediction]) -> None:
    if waiter.cancelled():  # its task was cancelled: a call no thread took yet is dropped
        answer.cancel()


def _pass_on(waiter: asyncio.Future[Prediction], answer: asyncio.Future[Prediction]) -> None:
    if answer.cancelled():
        if not waiter.done():
            waiter.cancel()
        return
    error = answer.exception()  # (taken even when the deadline answered first: asyncio would log it unread)
    if waiter.done():
        return
    if error is not None:
        waiter.set_exception(error)
    else:
        waiter.set_result(answer.result())


def _joined(
    server: Server,
    state: _LoopState,
    loop: asyncio.AbstractEventLoop,
    waiter: asyncio.Future[Prediction],
    model: str,
    inputs: Any,
    version: int | None,
    context: Mapping[str, Any] | None,
    timeout_s: float | None,
) -> bool:
    """Join the request to this iteration's group for its version, to be merged with the others, if it is
    a plain request (``Server._plain_route``: no cache, drift, rollout or shadow) to a version whose requests
    stack as they are, and fits one run; else return False having done nothing: the full way takes it (and
    raises what it refuses, naming the model)."""
    started = time.perf_counter()
    # A request with no version or context is routed as the iteration's first one to its model was, while
    # the model's published routes are the same snapshot (Routes: replaced whole): with no rollout, flag
    # provider or shadow (Server._plain_route takes no other), its decision depends on them alone.
    memo = state._route_memo
    plain = None
    if memo is not None and memo[1] is model and memo[0] is server and version is None and context is None:
        plain = memo[2]
        if server._registry.routes.get(model) is not plain[0]:
            plain = None
    remember = plain is None and version is None and context is None
    if plain is None:
        plain = server._plain_route(model, version, context)
        if plain is None:
            return False
    routes, target, decision = plain
    batcher, signature = target.batcher, target.signature
    assert batcher is not None and signature is not None  # (checked by _plain_route)
    if not batcher.stacks_freely:
        return False
    try:
        arrays, rows = signature.validate(inputs, max_rows=target.max_request_rows, reject_nan=target.reject_nan)
    except Exception as exc:
        if raised_by_signal_handler(exc):  # the task's time limit as its inputs were converted: the full way,
            raise  # which validates them again, answered the call and the task ran on past its soft limit
        return False
    if rows > batcher.max_rows:  # runs in slices: the full way
        return False
    # (no tracer provider: no span, as start_request_span answers; _telemetry.tracing()'s test inlined, not two calls)
    span = INVALID_SPAN if trace._TRACER_PROVIDER is None else batcher.telemetry.start_request_span(since=started)
    if timeout_s is None:
        deadline, expires_at = None, _NEVER
    else:
        deadline, expires_at = server._clock() + timeout_s, loop.time() + timeout_s
    # (tuple.__new__: the named tuple's own __new__ is a Python call)
    member = _new_member(
        _Member, (waiter, arrays, rows, decision, span, started, deadline, version, context, timeout_s, expires_at)
    )
    if remember:  # (only once it joins: the flush due then clears it; kept after a refusal, nothing cleared it,
        # and the loop held the server, closed or not, and its versions until another iteration's flush)
        state._route_memo = (server, model, plain)
    group = state._groups.get((batcher, timeout_s is None))
    if group is None or not state._flush_due:  # the iteration's first request to this version: join makes its group
        state.join(server, routes, target, timeout_s, member)
    else:  # (join's work, without its calls, for the iteration's later requests)
        group.members.append(member)
        group.rows += rows
        if expires_at < group.expires_at:
            group._arm(expires_at)
        state._iteration_requests += 1
    return True


def _join_opened(
    server: Server,
    state: _LoopState,
    loop: asyncio.AbstractEventLoop,
    waiter: asyncio.Future[Prediction],
    opened: _Opened,
    version: int | None,
    context: Mapping[str, Any] | None,
    timeout_s: float | None,
) -> bool:
    """Like :func:`_joined`, for a lone request that ``Server._predict_plain`` routed, validated and started
    but did not run (the version was busy, or its run is long): it joins this iteration's group if its version
    takes merged requests and it fits one run; else False, and the full way continues from ``opened`` (as it
    does for a miss of the version's cache, which it shares with identical requests and stores)."""
    batcher = opened.target.batcher
    assert batcher is not None  # (checked by _plain_route)
    target = opened.target
    if target.cache is not None or target.drift is not None or opened.decision.shadows:
        return False  # (a merged group's answers feed no cache, drift monitoring or shadows)
    if not opened.routes.state.trivial and opened.decision.variant != "pinned":
        return False  # (as _joined: only plain versions' requests are merged; a rollout's go the full way)
    if not batcher.adopted or target.config.cache.share_in_flight:
        return False  # (a process's first request adopts the runners; identical requests share runs)
    if not batcher.stacks_freely or opened.rows > batcher.max_rows:
        return False
    expires_at = _NEVER if timeout_s is None else loop.time() + timeout_s
    member = _Member(
        waiter,
        opened.arrays,
        opened.rows,
        opened.decision,
        opened.span,
        opened.started,
        opened.deadline,
        version,
        context,
        timeout_s,
        expires_at,
    )
    state.join(server, opened.routes, opened.target, timeout_s, member)
    return True


async def _with_deadline(
    state: _LoopState,
    loop: asyncio.AbstractEventLoop,
    waiter: asyncio.Future[Prediction],
    model: str,
    version: int | None,
    timeout_s: float,
    answered: list[bool] | None = None,
) -> Prediction:
    timer = loop.call_later(timeout_s, _expire, state, waiter, model, version, timeout_s, answered)
    try:
        return await waiter
    except asyncio.CancelledError:  # its task was cancelled (Task.cancel cancelled the waiter): withdraw it
        state.gave_up(waiter)
        raise
    finally:
        timer.cancel()
        # This frame joins the traceback of the error the waiter holds (its deadline's, its run's): kept, the
        # waiter (and the timer, which holds it) made a cycle with it, which held the caller's frames and the
        # request's inputs until the collector's next full pass.
        del timer, waiter
