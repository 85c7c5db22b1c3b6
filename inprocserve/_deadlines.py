"""Request deadlines: the accepted range of ``timeout_s``, and the watchdog that stops a run at its deadline.

A deadline is enforced on every path a request can take. A queued request is dropped when its deadline
passes; a request that is running (on a worker, or inline on its caller's thread) is stopped by setting
onnxruntime's ``RunOptions.terminate`` from one watchdog thread, which onnxruntime checks between the
operators of the graph. Control therefore returns within the deadline plus the operator running at that
moment (plus a thread wake-up).

The watchdog is one thread with a heap of deadlines, not a ``threading.Timer`` per request: arming and
disarming it costs a heap push and a flag under a lock, and a request without a deadline never touches it.

Under gevent's ``monkey.patch_all()`` that thread is a real OS thread all the same (see ``_native``): a greenlet
would not run while the worker's one OS thread is inside onnxruntime, and no run was ever stopped. It calls
there only what is safe on any OS thread: a locked action (a flag set) and one armed ``anywhere``; any other
action is handed to the hub of the greenlet that armed it, and runs on a greenlet of its own (it may take
gevent's locks, which a foreign OS thread must not block on).
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import math
import numbers
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _fork, _native

__all__ = ["MAX_TIMEOUT_S", "Watchdog", "check_timeout"]

_COMPACT_AT = 1024  # cancelled heap entries tolerated before arm() compacts the heap
_MAX_WAIT_S = threading.TIMEOUT_MAX / 2  # the longest wait a lock takes (half: room for monotonic()'s value)

logger = logging.getLogger(__name__)

MAX_TIMEOUT_S = 1e6
"""Timeouts at or above this many seconds (about 11.6 days), and ``math.inf``, mean "no deadline"."""


def check_timeout(timeout_s: object) -> float | None:
    """Validate a ``timeout_s`` argument; return the timeout in seconds, or ``None`` for no deadline.

    Accepted: ``None``, or a real number > 0. ``math.inf`` and anything >= :data:`MAX_TIMEOUT_S` mean no
    deadline (no lock, timer or clock on this machine can represent such waits).

    Raises:
        TypeError: ``timeout_s`` is not a number (``bool`` included).
        ValueError: ``timeout_s`` is NaN, zero or negative.
    """
    if timeout_s is None:
        return None
    if type(timeout_s) is float and 0 < timeout_s < MAX_TIMEOUT_S:  # the common case: no ABC check
        return timeout_s
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, numbers.Real):
        raise TypeError(f"timeout_s must be a number of seconds or None, got {type(timeout_s).__name__}")
    try:
        seconds = float(timeout_s)
    except OverflowError:  # an int beyond float's range
        seconds = math.inf if timeout_s > 0 else -math.inf  # type: ignore[operator]
    if not seconds > 0:  # also catches NaN
        raise ValueError(f"timeout_s must be > 0 (or None or math.inf for no deadline), got {timeout_s!r}")
    return None if seconds >= MAX_TIMEOUT_S else seconds


class _Alarm:
    """One armed deadline; ``fired`` tells the run that its stop came from the watchdog."""

    __slots__ = ("action", "cancelled", "fired", "unlocked")

    def __init__(self, action: Callable[[], None], *, unlocked: bool = False) -> None:
        self.action = action
        self.cancelled = False
        self.fired = False
        self.unlocked = unlocked


def _call_logged(action: Callable[[], None]) -> None:
    """An action handed to a hub, on its greenlet: logged as the watchdog's thread logs what it calls."""
    try:
        action()
    except Exception:
        logger.exception("a deadline's action raised")


class Watchdog:
    """Calls an action when its deadline passes, from one lazily started daemon thread.

    Thread-safe. The owner closes it (idempotent); in a forked child it starts afresh. Deadlines are in
    ``time.monotonic`` seconds: the caller converts from its own clock by passing a delay.
    """

    def __init__(self, name: str = "inprocserve-deadlines") -> None:
        self._name = name
        self._reset_state()
        _fork.register(self)

    def _reset_state(self) -> None:
        native = _native.patched()  # gevent's patch: an OS thread of its own all the same (module's docstring)
        self._lock: Any = _native.allocate_lock() if native else threading.Lock()
        self._wake: Any = _native.Condition(self._lock) if native else threading.Condition(self._lock)
        self._thread_class: Any = _native.Thread if native else functools.partial(threading.Thread, daemon=True)
        self._current_thread: Callable[[], object] = _native.current_thread if native else threading.current_thread
        self._via_hub = native  # unlocked actions not safe anywhere go to a hub
        self._heap: list[tuple[float, int, _Alarm]] = []
        self._counter = itertools.count()
        self._thread: Any = None
        self._closed = False
        self._cancelled = 0  # cancelled entries possibly still in the heap
        self._sleeping_until = math.inf  # when the thread will wake by itself (inf: only when notified)

    def _after_fork_in_child(self) -> None:
        closed = self._closed
        self._reset_state()  # the parent's thread does not exist here
        self._closed = closed

    def arm(
        self, delay_s: float, action: Callable[[], None], *, unlocked: bool = False, anywhere: bool = False
    ) -> _Alarm:
        """Call ``action`` (on the watchdog thread) ``delay_s`` from now unless :meth:`disarm` comes first.
        ``unlocked``: call it without the watchdog's lock (an action that may run callers' code, which could
        arm another alarm); else it runs under the lock, which only a cheap action may (a flag set).
        ``anywhere``: an unlocked action that is safe on any OS thread (it takes no lock but ``_native``'s and
        touches nothing of gevent's): under gevent's patch it too runs on the watchdog's thread, while a
        greenlet may be inside onnxruntime, instead of on a greenlet (see the module's docstring).

        A delay longer than a lock can wait (half of ``threading.TIMEOUT_MAX``: centuries) is cut to that.

        Raises:
            ValueError: ``delay_s`` is NaN or infinite (no deadline: do not arm at all).
        """
        if not math.isfinite(delay_s):
            raise ValueError(
                f"a deadline's delay must be a finite number of seconds, got {delay_s!r} "
                "(a clock that returned NaN or infinity? for no deadline, do not arm the watchdog)"
            )
        alarm = _Alarm(action, unlocked=unlocked)
        if unlocked and self._via_hub and not anywhere:
            alarm.action = _native.via_hub(functools.partial(_call_logged, action))
        due = time.monotonic() + min(delay_s, _MAX_WAIT_S)
        with self._lock:
            if self._closed:  # a closing owner: nothing left to stop, the run proceeds unbounded
                return alarm
            if self._cancelled > _COMPACT_AT and 2 * self._cancelled > len(self._heap):
                self._heap = [entry for entry in self._heap if not entry[2].cancelled]
                heapq.heapify(self._heap)
                self._cancelled = 0
            heapq.heappush(self._heap, (due, next(self._counter), alarm))
            if self._thread is None:
                thread = self._thread_class(target=self._loop, name=self._name)
                thread.start()  # then kept: an interruption as start() begins (a signal handler) keeps none
                self._thread = thread
            elif due < self._sleeping_until:  # wake the thread only if it would sleep past this alarm
                self._wake.notify()
        return alarm

    def disarm(self, alarm: _Alarm) -> None:
        """Cancel an alarm. A lazy delete: the entry stays in the heap until it comes up, or until
        cancelled entries are the majority of a large heap and :meth:`arm` compacts it (so the heap stays
        bounded by the alarms really pending, whatever the timeouts)."""
        alarm.cancelled = True
        if not alarm.fired:
            # No lock: the count only decides when arm() compacts, so a lost increment does not matter.
            self._cancelled += 1

    def _loop(self) -> None:
        """Sleep until the earliest alarm is due, fire it unless cancelled, repeat.

        A cancelled alarm is dropped when it comes up, and then every cancelled alarm behind it at once;
        one that is not due is never removed on a notify. So a request that finishes in time costs this
        thread no wake-up of its own: with steady traffic it wakes about twice per timeout period.
        """
        try:
            self._serve()
        except Exception:
            logger.exception("the deadline watchdog %r failed; the next deadline starts it again", self._name)
        finally:  # should anything escape, the next arm() starts a new thread rather than none ever again
            with self._lock:
                if self._thread is self._current_thread() and not self._closed:
                    self._thread = None
                    self._sleeping_until = math.inf

    def _serve(self) -> None:
        heap_pop = heapq.heappop
        with self._lock:
            while not self._closed:
                heap = self._heap  # arm() may replace it (compaction) while this thread waits
                now = time.monotonic()
                if heap and heap[0][0] <= now:
                    alarm = heap_pop(heap)[2]
                    if alarm.cancelled:
                        self._cancelled = max(0, self._cancelled - 1)
                    else:
                        alarm.fired = True
                        if alarm.unlocked:
                            self._lock.release()
                        try:
                            alarm.action()  # (a locked one sets a flag: cheap enough to run under the lock)
                        except Exception:
                            logger.exception("a deadline's action raised; the watchdog carries on")
                        finally:
                            if alarm.unlocked:
                                self._lock.acquire()
                        if alarm.unlocked:
                            continue  # (arm() may have replaced the heap meanwhile)
                    while heap and heap[0][2].cancelled:
                        heap_pop(heap)
                        self._cancelled = max(0, self._cancelled - 1)
                    continue
                self._sleeping_until = heap[0][0] if heap else math.inf
                self._wake.wait(None if not heap else min(heap[0][0] - now, _MAX_WAIT_S))
                self._sleeping_until = -math.inf  # awake: arm() need not notify

    def close(self) -> None:
        """Stop the thread; pending alarms never fire. Idempotent."""
        with self._lock:
            self._closed = True
            self._heap.clear()
            self._cancelled = 0
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not self._current_thread():
            thread.join(timeout=1.0)
