"""The limit on one run of a model version (``pool.max_run_s``), kept at no measurable cost to a plain run.

A run with a deadline already has run options of its own and an alarm on the backend's watchdog, which the
limit only brings forward. A plain run (no deadline, no stop signal: nearly every run) shares one
``RunOptions`` and touches no lock; an alarm of its own would cost it a fresh ``RunOptions``, a heap push and
a hook on the closing signal, about 2 µs a run. Here each thread keeps a ``RunOptions`` of its own across its
runs instead (a thread runs one at a time), and a run only notes when it started. One sweep on the watchdog
thread, due when the oldest run noted would pass the limit (and at least once per limit while the version
lives), sets ``terminate`` on the options of each run past it: onnxruntime stops that run at its next
operator, and the thread builds new options for its next run. A sweep that finds no run in flight comes no
more, until the next run starts (``sweeping`` tells that run whether to start one: a read per run).

A sweep may read a run just as it ends: it then stops the thread's next run on those options instead. That
run fails at its first operator, finds that the stop was meant for the one before (``RunSlot.cut`` holds the
start of the run stopped) and runs again on new options (:meth:`OnnxruntimeBackend.run`).

The sweep is safe on any OS thread (armed ``anywhere``): under gevent's patch the watchdog runs it on an OS
thread of its own while a greenlet is inside onnxruntime, so the lock it takes is one of the OS's
(``_native.allocate_lock``), held for a few instructions by either side.

Every version's sweeps share one watchdog, the process's (:func:`sweeper`): a sweep comes at most once per
limit while a version runs, so one thread serves them all. With a watchdog of its own, each loaded version
kept a thread from its warm-up on (a fleet of 16 workers serving 100 versions: 1,600 idle threads, against
a container's process limit).
"""

from __future__ import annotations

import functools
import time
import weakref
from collections.abc import Callable
from typing import Any

from . import _fork, _native
from ._deadlines import Watchdog
from ._thread_values import ThreadValue

__all__ = ["RunLimit", "RunSlot", "sweeper"]


SWEEPER_THREAD = "inprocserve-run-limits"

_sweeper_lock = _native.allocate_lock()
_sweeper: tuple[bool, Watchdog] | None = None  # (whether gevent's patch was applied when made, the watchdog)


def _after_fork_in_child() -> None:
    global _sweeper_lock
    _sweeper_lock = _native.allocate_lock()  # (another thread of the parent may have held it at the fork)


_fork.at_fork_in_child(_after_fork_in_child)  # (uWSGI's workers too)


def sweeper() -> Watchdog:
    """The process's watchdog for every version's sweeps, made at first use; its daemon thread starts with
    the first sweep armed and lives as long as the process (as the clean-up's thread), idle between
    sweeps. A fork's child starts it afresh (the watchdog's own fork hook), as each backend there makes a
    new ``RunLimit``. Made again once gevent's patch is applied (a watchdog picks its thread and lock kinds
    when made; the earlier one still serves the sweeps armed on it). Called as a sweep is armed, never by a
    fork hook: the package's hooks (a backend's, which makes its ``RunLimit`` anew) run before this module's
    renews the lock, and a child forked while another thread of the parent held it hung in them."""
    global _sweeper
    patched = _native.patched()
    with _sweeper_lock:
        if _sweeper is None or _sweeper[0] != patched:
            _sweeper = (patched, Watchdog(SWEEPER_THREAD))
        return _sweeper[1]


class RunSlot:
    """One thread's run options and the run it has in flight (``started``: its ``time.monotonic()``, ``None``
    between runs); ``cut``: the start of the run a sweep stopped on these options (then spent)."""

    __slots__ = ("__weakref__", "cut", "options", "started")

    def __init__(self, options: Any) -> None:
        self.options = options
        self.started: float | None = None
        self.cut: float | None = None


class RunLimit:
    """Stops any plain run of one backend that passes ``limit_s``, through its ``watchdog``. Thread-safe.

    Args:
        limit_s: The limit on one run, in seconds.
        make_options: Builds fresh ``RunOptions``.
        watchdog: What runs the sweeps (the process's :func:`sweeper`, as each is armed, if omitted).
    """

    def __init__(self, limit_s: float, make_options: Callable[[], Any], *, watchdog: Watchdog | None = None) -> None:
        self.limit_s = limit_s
        self._given = watchdog
        self._make_options = make_options
        self._lock = _native.allocate_lock()  # (taken by the sweep on the watchdog's OS thread under gevent too)
        # (not a threading.local: a version unloaded leaves its limit to the garbage collector, which must not
        # free a threading.local: see _thread_values)
        self.current: ThreadValue[RunSlot | None] = ThreadValue(None, os_threads=True)
        """``current.get()``: the calling OS thread's :class:`RunSlot`, ``None`` until :meth:`slot` made it."""
        self._slots: weakref.WeakSet[RunSlot] = weakref.WeakSet()  # (a thread's slot goes with the thread)
        self.sweeping = False  # whether a sweep is armed (read by every run, set under the lock)
        self._alarm: Any = None  # the sweep armed, the watchdog it is armed on and when it is due (under the lock)
        self._watchdog: Watchdog | None = None
        self._due = 0.0
        self._closed = False

    def slot(self) -> RunSlot:
        """The calling thread's slot, made on its first run and watched by the sweeps from then on."""
        slot = self.current.get()
        if slot is not None:
            return slot
        slot = RunSlot(self._make_options())
        with self._lock:
            if self._closed:
                slot.options.terminate = True  # (the backend's run raises its closed error)
            self._slots.add(slot)
        self.current.set(slot)
        return slot

    def start(self) -> None:
        """Have a sweep come within the limit, unless one is due: a run started (noted in its slot first)
        and read that none was. ``sweeping`` is set only once the sweep is armed, under the lock (the
        watchdog's is taken inside it, never the other way round): an arm that raised (a signal handler's
        exception, a thread that could not start) leaves it clear, and the next run arms one."""
        with self._lock:
            if self._alarm is None and not self._closed:
                self._arm(time.monotonic() + self.limit_s)

    def _arm(self, due: float) -> None:
        """Arm the sweep for ``due`` (a ``time.monotonic()``); the caller holds the lock, and no sweep is armed."""
        sweep = functools.partial(_sweep_if_alive, weakref.ref(self))  # (a pending sweep never holds a closed limit)
        self._watchdog = self._given if self._given is not None else sweeper()
        self._alarm = self._watchdog.arm(max(due - time.monotonic(), 0.001), sweep, unlocked=True, anywhere=True)
        self._due = due
        self.sweeping = True

    def renew(self, slot: RunSlot) -> None:
        """New options for ``slot``, whose options a sweep stopped."""
        slot.options = self._make_options()
        slot.cut = None
        if self._closed:
            slot.options.terminate = True

    def _sweep(self) -> None:
        """Stop every run past the limit; come again when the oldest other run would pass it, or not at all
        when none is in flight. ``sweeping`` is cleared before the slots are read: a run that starts meanwhile
        is read here, or reads it cleared and arms a sweep itself, a whole limit from its start; the sweep
        that comes sooner is kept (else a run read here was cut up to a limit late)."""
        with self._lock:
            self._alarm = None
            self.sweeping = False
            if self._closed:
                return
            slots = list(self._slots)
        now = time.monotonic()
        due = None
        for slot in slots:
            started = slot.started
            if started is None or slot.cut == started:
                continue
            if now - started >= self.limit_s:
                slot.cut = started
                slot.options.terminate = True
            else:
                due = started + self.limit_s if due is None else min(due, started + self.limit_s)
        if due is None:
            return
        with self._lock:
            armed = self._armed()  # (a run armed one meanwhile: the sooner is kept)
            if self._closed or (armed is not None and self._due <= due):
                return
            if armed is not None and self._watchdog is not None:
                self._watchdog.disarm(armed)
                self._alarm = None
            self._arm(due)

    def _armed(self) -> Any:
        """The sweep armed now, if any (the caller holds the lock)."""
        return self._alarm

    def close(self) -> None:
        """Stop every run in flight now, and any later one at once; disarm the sweep. Idempotent."""
        with self._lock:
            self._closed = True
            slots = list(self._slots)
            if self._alarm is not None and self._watchdog is not None:
                self._watchdog.disarm(self._alarm)
                self._alarm = None
                self.sweeping = False
        for slot in slots:
            slot.options.terminate = True


def _sweep_if_alive(limit: weakref.ref[RunLimit]) -> None:
    """A sweep armed on the shared watchdog: that of ``limit``, unless it was collected meanwhile."""
    alive = limit()
    if alive is not None:
        alive._sweep()
