"""The FlagReader: every flag read of a server goes through it, so a flag problem never reaches a caller.

It evaluates a routing decision within a time budget, turns whatever goes wrong into a fallback (the stable
decision) and counts it, and logs each kind of problem at most once a minute. Providers that may block on
I/O are evaluated on a few daemon worker threads that the reader owns: the work in flight to a provider is
bounded (``max_workers`` running plus ``max_queued`` waiting), evaluations that timed out before they
started are dropped, requests answer at once while every worker is stuck in a hung provider, and
:meth:`FlagReader.close` stops the workers, so a hung flag service can neither pile up threads nor delay
interpreter exit.
"""

from __future__ import annotations

import asyncio
import logging
import numbers
import threading
import time
from collections import deque
from collections.abc import Callable, Container, Mapping
from concurrent.futures import CancelledError, Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import AbstractContextManager, nullcontext
from typing import Any, TypeVar

import numpy as np

from . import _fork
from ._backend import raised_by_signal_handler
from ._config_checks import is_number, shown
from ._errors import ConfigurationError, InvalidInputError
from ._flags import (
    ContextRefusedError,
    EnvFlags,
    FileFlags,
    FlagProvider,
    FlagTypeError,
    InMemoryFlags,
    MustAsk,
    OpenFeatureFlags,
    WaitOffLoop,
    _described,
    _said,
    _value_shown,
)
from ._request import drop_tracebacks
from ._telemetry import ATTR_FLAG_PROVIDER, METRICS, add_safely
from ._thread_values import ThreadValue

__all__ = ["DECISION_FALLBACK", "FlagReader", "UnusableFlag", "forbid_waiting_when"]


def _never() -> bool:
    return False


_waiting_forbidden: Callable[[], bool] = _never


def forbid_waiting_when(check: Callable[[], bool]) -> None:
    """Have a decision that must wait for a blocking provider's worker raise :class:`WaitOffLoop` instead,
    whenever ``check()`` says the calling thread must not wait (the event loop's path registers it)."""
    global _waiting_forbidden
    _waiting_forbidden = check


logger = logging.getLogger(__name__)

T = TypeVar("T")

_LOG_EVERY_S = 60.0
MAX_FLAG_TIMEOUT_S = 60.0
"""Longest budget of one flag decision: a request waits that long for it, and a wait past a lock's limit
(an infinite one) would fail every decision with an ``OverflowError``."""
_IDLE_WORKER_EXIT_S = 30.0  # an idle worker ends; the next blocking evaluation starts one again
_UNUSABLE_KEPT = 64  # distinct flag keys whose last problem status() shows
# What a provider raises on the request's own thread (or greenlet) that is its failure: an Exception, or an
# asyncio CancelledError (a BaseException) of its own, raised by a call that cannot be cancelled from
# outside (a synchronous one). Any other BaseException there is the caller's: gevent's Timeout and
# greenlet.kill()'s GreenletExit land in whatever call the greenlet waits in, a provider's I/O too, and
# must end the request as they would anywhere else (as must KeyboardInterrupt, SystemExit, GeneratorExit,
# and the library's own MustAsk and WaitOffLoop). On a worker thread nothing but the provider raises.
_PROVIDER_FAILURES = (Exception, asyncio.CancelledError)
DECISION_FALLBACK = "the stable decision answers"  # what a routing decision falls back to, for the warning


class UnusableFlag(Exception):
    """A flag's value cannot be used (wrong type, unknown strategy, version not loaded, out of range)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class _ProviderInvalidInput(Exception):
    """An :class:`InvalidInputError` a provider raised of its own (see :meth:`FlagReader._read`): the provider's
    failure, counted and answered by the fallback as any other, never the request's 400. ``error`` is what it
    raised, which the log describes."""

    def __init__(self, error: InvalidInputError) -> None:
        super().__init__(str(error))
        self.error = error


class FlagReader:
    """Evaluates flags for routers: typed reads, a time budget, failure counting, rate-limited logs.

    Thread-safe. Counters (``failures``, ``timeouts``, ``busy``, ``unusable``) only grow.

    Args:
        provider: Where flag values come from.
        timeout_s: The budget of one decision; past it the fallback answers.
        max_workers: Threads evaluating a ``blocking`` provider (started lazily, daemon, owned here).
        max_queued: Evaluations that may wait for a worker (each waits at most ``timeout_s``, and is
            dropped unrun when that passes). Beyond it, or when every worker has been stuck in the provider
            for longer than ``timeout_s``, the fallback answers at once and is counted as ``busy``.
        clock: Monotonic clock of the budget check and the log rate limit.
    """

    def __init__(
        self,
        provider: FlagProvider,
        *,
        timeout_s: float = 0.05,
        max_workers: int = 2,
        max_queued: int = 256,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (is_number(timeout_s) and 0 < timeout_s <= MAX_FLAG_TIMEOUT_S):  # (NaN fails > too)
            raise ConfigurationError(
                f"flag_timeout_s must be > 0 and <= {MAX_FLAG_TIMEOUT_S:.0f} (seconds), got {timeout_s!r}"
            )
        if max_workers < 1 or max_queued < 0:
            raise ConfigurationError(f"max_workers must be >= 1 and max_queued >= 0, got {max_workers}, {max_queued}")
        self.provider = provider
        # A blocking provider that remembers flags (OpenFeatureFlags' static ones) may answer a decision with
        # no hand-off to a worker: a hand-off costs a request hundreds of microseconds here.
        self._remembered_only: Callable[[], AbstractContextManager[None]] | None = getattr(
            provider, "remembered_only", None
        )
        # Per thread (not threading.locals: a closed server leaves its reader to the garbage collector, which
        # must not free one, see _thread_values): whether this thread tries a decision from remembered flags,
        # and the decision a worker runs (see abandoned)
        self._trying_here: ThreadValue[bool] = ThreadValue(default=False)
        self._job: ThreadValue[Future[Any] | None] = ThreadValue(None)
        # A built-in provider whose values are the same for every context, in an object it replaces whole on
        # a change (OpenFeatureFlags: what it remembers; EnvFlags: the texts of its variables): a router
        # decides from them, read once per object
        # (Router._flagged_plan), instead of reading five or more flags per request. (Not a subclass: it
        # may answer otherwise.)
        self._frozen: Callable[[], Container[str] | None] | None = (
            provider._frozen_values  # type: ignore[attr-defined]
            if type(provider) in (InMemoryFlags, FileFlags, EnvFlags, OpenFeatureFlags)
            else None
        )
        self.frozen_values = None if self._frozen is None else self._frozen_unless_closed
        self.timeout_s = timeout_s
        self.max_workers = max_workers
        self.max_queued = max_queued
        self._clock = clock
        self.failures = 0
        self.timeouts = 0
        self.busy = 0
        self.unusable = 0
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last_log: dict[str, float] = {}
        self._closed = False
        self._reset_workers()
        _fork.register(self)

    def _reset_workers(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._jobs: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._workers: set[threading.Thread] = set()
        self._running: dict[threading.Thread, float] = {}  # worker -> when it entered the provider
        self._idle = 0
        self._given_up: set[Future[Any]] = set()  # running decisions whose caller answered without them

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._reset_workers()  # the parent's workers did not survive the fork

    # -- evaluation ----------------------------------------------------------------------------------------

    def run(self, decide: Callable[[], T], fallback: Callable[[str], T], *, effect: str = DECISION_FALLBACK) -> T:
        """Run ``decide`` (which reads flags) within the budget; on any problem return ``fallback(reason)``.
        ``effect``: what the fallback does, for the warning logged ("the stable decision answers").

        A blocking provider's decision is first tried on this thread, from the flags the provider remembers,
        and taken again on a worker when a flag must be evaluated (or it must draw: see
        :meth:`before_draw`)."""
        started = self._clock()
        try:
            if self.provider.blocking:
                if self._remembered_only is not None and not self._closed:  # every flag remembered?
                    self._trying_here.set(True)
                    try:
                        with self._remembered_only():
                            return decide()
                    except MustAsk:
                        pass
                    finally:
                        self._trying_here.set(False)
                if _waiting_forbidden():  # an event loop's routing: it must not wait; a worker routes it
                    raise WaitOffLoop
                on_worker = True
            else:
                on_worker = False
                result = decide()
        except (UnusableFlag, FlagTypeError) as exc:
            return fallback(self.note_unusable(exc, effect))
        except InvalidInputError:  # the request's own mistake (a key that cannot be text), not the provider's
            raise
        except _PROVIDER_FAILURES as exc:  # any provider failure means: stable (other BaseExceptions: the caller's)
            if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit as the provider ran:
                raise  # the task's own exception, no provider failure (answered stable, the task ran on past it)
            return fallback(self.note_failure(exc, effect))
        if on_worker:  # (outside the except above: what interrupts the wait is the caller's, never counted)
            return self._run_on_worker(decide, fallback, effect)
        if self._clock() - started > self.timeout_s:
            self._count(
                "timeouts", f"flag provider {self.provider.name!r} took longer than {self.timeout_s:g}s", effect
            )
            return fallback("flag provider too slow")
        return result

    def _run_on_worker(self, decide: Callable[[], T], fallback: Callable[[str], T], effect: str) -> T:
        future: Future[T] = Future()
        try:
            with self._cond:
                if self._closed:
                    return fallback("flag reader closed")
                accepted = len(self._jobs) < self.max_queued + self._idle and not self._all_stuck()
                unstarted = None
                if accepted:
                    self._jobs.append((future, decide))
                    if self._idle >= len(self._jobs):
                        self._cond.notify()
                    elif len(self._workers) < self.max_workers:
                        unstarted = self._start_worker()
                        if unstarted is not None and not self._workers:  # (nobody would ever take the job)
                            self._jobs.remove((future, decide))
                            accepted = False
        except BaseException:
            # The caller's (Ctrl-C landing in Thread.start()'s wait for a new worker to run): its decision,
            # queued, must never run for nobody (a bandit's draw would be remembered for its key for good).
            future.cancel()
            raise
        if not accepted:
            why = (
                f"all {self.max_workers} workers are stuck" if unstarted is None else f"no worker thread ({unstarted})"
            )
            self._count("busy", f"flag provider {self.provider.name!r}: {why}", effect)
            return fallback("flag provider busy")
        # The provider's exception is taken, never raised here: whatever is raised while this waits (gevent's
        # Timeout or GreenletExit, KeyboardInterrupt) is the caller's, and ends the request.
        try:
            exc: BaseException | None = future.exception(timeout=self.timeout_s)
        except FutureTimeout:
            if future.cancelled():  # (close() dropped it just as its budget ran out)
                return fallback("flag reader closed")
            if not future.done():
                if not future.cancel():  # still queued: dropped, the provider never sees it
                    self._give_up(future)  # running: it must leave no trace (see abandoned)
                self._count(
                    "timeouts", f"flag provider {self.provider.name!r} took longer than {self.timeout_s:g}s", effect
                )
                return fallback("flag provider timed out")
            exc = future.exception()  # it finished between the timeout and the check: in time after all
        except CancelledError:  # close() dropped it while it waited (the provider's own is returned, not raised)
            return fallback("flag reader closed")
        except BaseException:
            if not future.cancel():  # (the caller gave up: still queued, it is dropped unrun)
                self._give_up(future)
            raise
        if exc is None:
            return future.result()
        if isinstance(exc, UnusableFlag | FlagTypeError):
            return fallback(self.note_unusable(exc, effect))
        if isinstance(exc, InvalidInputError):  # the request's own mistake, as in run()
            # (this frame joins the error's traceback: none of its locals may lead back to the error, or the
            # caller's frames, and the request's inputs in them, stay in a cycle until the collector's next pass)
            del future
            try:
                raise exc
            finally:
                del exc
        return fallback(self.note_failure(exc, effect))

    def _give_up(self, future: Future[Any]) -> None:
        """Mark the running decision of ``future`` abandoned, before its caller's fallback answers (which
        forgets whatever the decision left: see :meth:`abandoned`)."""
        with self._cond:
            if not future.done():  # (done: the worker has, or soon will have, taken it out; never kept)
                self._given_up.add(future)

    def abandoned(self) -> bool:
        """Whether the decision running on this thread (a worker's) was given up by its caller: it ran past
        the budget, and the caller answered with the fallback (the stable version). A draw that leaves a
        trace (a bandit's arm remembered for the request's key) must check this under the same lock as the
        fallback's forgetting of it: the fallback runs once this is true, so a draw made after it would be
        remembered for good, and the key's outcomes credited to an arm that never served it."""
        future = self._job.get()
        return future is not None and future in self._given_up

    def _frozen_unless_closed(self) -> Container[str] | None:
        """The provider's frozen values (see ``__init__``); None once closed, when decisions answer as
        ``run`` does then."""
        if self._closed:
            return None
        try:
            return self._frozen()  # type: ignore[misc]
        except Exception:  # (a flag file that failed to load: the flag-reading path counts it and answers)
            return None

    def plan_reads(self, values: Container[str]) -> AbstractContextManager[None]:
        """Within this (on this thread), reads answer as the frozen ``values`` a plan is made for say: from
        what the provider remembers, or raise :class:`MustAsk` (a plan never asks the provider to
        evaluate); from ``values`` itself when it holds what the flags are read from (``EnvFlags``' texts:
        a plan is a function of the values it is kept for)."""
        reads = getattr(values, "reads", None)
        if reads is not None:
            return reads()  # type: ignore[no-any-return]
        return self._remembered_only() if self._remembered_only is not None else nullcontext()

    def before_draw(self) -> None:
        """Called by a decision before a draw that leaves a trace (a bandit's arm, kept for outcomes by key):
        a try on the request's thread stops here (``MustAsk``), since it may yet be abandoned for a flag
        that must be evaluated, and the draw would then be made twice. The worker's decision draws."""
        if self._trying_here.get():
            raise MustAsk

    def _all_stuck(self) -> bool:
        """Whether every worker has been inside the provider for longer than the budget (lock held): then the
        provider is hung, and queueing more evaluations would only make each request wait out its budget."""
        if len(self._running) < self.max_workers:
            return False
        limit = time.monotonic() - self.timeout_s
        return all(started < limit for started in self._running.values())

    def _start_worker(self) -> str | None:
        """Start one more worker (with the lock held: it waits for it before it takes a job); why it could not
        be started (a process's thread limit), or None. Only a started thread is counted as a worker."""
        worker = threading.Thread(target=self._work, name="inprocserve-flags", daemon=True)
        try:
            worker.start()
        except RuntimeError as exc:  # ("can't start new thread": a later request tries again)
            return str(exc)
        self._workers.add(worker)
        return None

    def _work(self) -> None:
        me = threading.current_thread()
        with self._cond:  # (its starter counts it too, unless interrupted in start() once the thread ran)
            self._workers.add(me)
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._idle += 1
                    woken = self._cond.wait(_IDLE_WORKER_EXIT_S)
                    self._idle -= 1
                    if not woken and not self._jobs:
                        self._workers.discard(me)
                        return
                if self._closed:
                    self._workers.discard(me)
                    return
                future, decide = self._jobs.popleft()
                if not future.set_running_or_notify_cancel():
                    continue  # its caller gave up waiting before a worker was free
                self._running[me] = time.monotonic()
            self._job.set(future)  # (see abandoned)
            try:
                future.set_result(decide())
            except BaseException as exc:  # (only the provider raises here: SystemExit too is its failure)
                # delivered to the caller, who counts it; the worker lives on (without this thread's frames:
                # the caller raises a request's own mistake, and another thread's stack is not its traceback)
                future.set_exception(drop_tracebacks(exc))
            finally:
                self._job.set(None)
                with self._cond:
                    self._running.pop(me, None)
                    self._given_up.discard(future)
            # Kept until the next job, the future held what the caller raised (and so the caller's frames, with
            # its request's inputs), and ``decide`` the request's context and the versions it was routed among.
            del future, decide

    # -- problems ------------------------------------------------------------------------------------------

    def note_unusable(self, exc: Exception, effect: str = DECISION_FALLBACK) -> str:
        """Count a flag value that cannot be used, remember why for status(); returns the reason to show.
        ``effect``: what is done instead, for the warning."""
        key = exc.key if isinstance(exc, UnusableFlag) else "?"  # a FlagTypeError raised outside the typed reads
        said = _said(exc)
        reason = f"unusable flag: {said}"
        with self._lock:
            if key in self._problems or len(self._problems) < _UNUSABLE_KEPT:
                self._problems[key] = said
        self._count("unusable", f"{reason} (provider {self.provider.name!r})", effect)
        return reason

    def note_failure(self, exc: BaseException, effect: str = DECISION_FALLBACK) -> str:
        """Count a provider failure (absorbed by ``run``, or where it happened: a shadow flag); returns the
        reason."""
        # (the message is made only when logged, once a minute: a provider's error may carry megabytes of text,
        # and a failing provider fails every request)
        if isinstance(exc, _ProviderInvalidInput):
            exc = exc.error
        self._count("failures", lambda: f"flag provider {self.provider.name!r} failed: {_described(exc)}", effect)
        return "flag provider failed"

    def _count(self, counter: str, message: str | Callable[[], str], effect: str) -> None:
        """Count a problem, and log ``message`` (made here, if a callable) with ``effect`` at most every
        ``_LOG_EVERY_S`` per counter."""
        add_safely(
            METRICS.flag_failures,
            1,
            {ATTR_FLAG_PROVIDER: self.provider.name, "inprocserve.flags.failure": counter.rstrip("s")},
        )
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
            now = self._clock()
            if now - self._last_log.get(counter, -float("inf")) < _LOG_EVERY_S:
                return
            self._last_log[counter] = now
            count = getattr(self, counter)
        logger.warning("%s; %s (%d %s so far)", message() if callable(message) else message, effect, count, counter)

    # -- typed reads (called inside ``decide``) ------------------------------------------------------------

    # Any provider may be hand-written (FlagProvider is a protocol), and one whose backend hands back raw
    # strings would turn the kill switch on with "false": every typed read checks the type it got.

    def boolean(self, key: str, default: bool, context: Mapping[str, Any], used: list[tuple[str, Any]]) -> bool:
        value = self._read(self.provider.get_boolean, key, default, context, used)
        if value is True or value is False:
            return value
        if isinstance(value, np.bool_):  # a provider backed by numpy data
            return bool(value)
        raise UnusableFlag(key, f"flag {key!r} must be a boolean (true or false), got {_value_shown(value)}")

    def number(self, key: str, default: float, context: Mapping[str, Any], used: list[tuple[str, Any]]) -> float:
        value: object = self._read(self.provider.get_number, key, default, context, used)
        if type(value) is float:
            return value
        if not isinstance(value, bool | np.bool_) and isinstance(value, numbers.Real):  # numpy numbers too
            try:
                return float(value)
            except OverflowError:  # (an int past any float: the flag's problem, not the provider's)
                raise UnusableFlag(key, f"flag {key!r} must be a number a float can hold, got {shown(value)}") from None
        raise UnusableFlag(key, f"flag {key!r} must be a number, got {_value_shown(value)}")

    def string(self, key: str, default: str, context: Mapping[str, Any], used: list[tuple[str, Any]]) -> str:
        value = self._read(self.provider.get_string, key, default, context, used)
        if isinstance(value, str):
            return value
        raise UnusableFlag(key, f"flag {key!r} must be a string, got {_value_shown(value)}")

    def obj(self, key: str, default: Any, context: Mapping[str, Any], used: list[tuple[str, Any]]) -> Any:
        value = self._read(self.provider.get_object, key, default, context, used)
        if isinstance(value, np.ndarray):  # (a hand-written provider's: its truth value raises, where a list's is read)
            raise UnusableFlag(key, f"flag {key!r} must be a list or an object, got a numpy array {shown(value)}")
        return value

    @staticmethod
    def _read(
        getter: Callable[[str, Any, Mapping[str, Any]], Any],
        key: str,
        default: Any,
        context: Mapping[str, Any],
        used: list[tuple[str, Any]],
    ) -> Any:
        """One flag read: a value of the wrong type is the flag's problem (``UnusableFlag``), not the provider's;
        an ``InvalidInputError`` is the request's only where OpenFeatureFlags refused the request's context
        (``ContextRefusedError``, also through a user's provider that hands the read to one), else the provider's
        own failure (a subclass's own code, or what a provider calls, raising the library's error type). The value
        is noted as read: only the few requests whose spans are recorded need it as text."""
        try:
            value = getter(key, default, context)
        except FlagTypeError as exc:  # the provider answered; the flag is wrong
            raise UnusableFlag(key, _said(exc)) from exc
        except InvalidInputError as exc:
            if isinstance(exc, ContextRefusedError):
                raise
            raise _ProviderInvalidInput(exc) from None
        used.append((key, value))
        return value

    # -- status and shutdown -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        with self._lock:
            problems = dict(self._problems)
        with self._cond:
            workers = len(self._workers)
        return {
            "provider": self.provider.name,
            "blocking": self._blocking(),
            "failures": self.failures,
            "timeouts": self.timeouts,
            "busy": self.busy,
            "unusable": self.unusable,
            "unusable_flags": problems,
            "workers": workers,
            "source_error": self._source_error(),
        }

    def _source_error(self) -> str | None:
        """Why the provider's source last failed to load, while its earlier values answer (a ``FileFlags``
        file that became invalid or unreadable: requests never see that failure, so status must show it)."""
        provider = self.provider
        return provider.last_error if isinstance(provider, FileFlags) else None

    def _blocking(self) -> bool | None:
        """Whether decisions may be handed to the workers (None: the provider could not say)."""
        try:
            return bool(self.provider.blocking)
        except Exception:
            return None

    def close(self) -> None:
        """Stop the workers: queued evaluations are dropped, idle workers end now, and a worker stuck in a
        hung provider ends when the provider returns (it is a daemon thread, so it never delays exit).
        Later blocking evaluations answer the fallback at once. Idempotent."""
        with self._cond:
            self._closed = True
            for future, _ in self._jobs:
                future.cancel()
            self._jobs.clear()
            self._cond.notify_all()
            workers = [w for w in self._workers if w is not threading.current_thread()]
        deadline = time.monotonic() + self.timeout_s  # idle workers leave at once; hung ones are not waited for
        for worker in workers:
            worker.join(timeout=max(0.0, deadline - time.monotonic()))
