"""Real OS threads and locks, also in a process that gevent's ``monkey.patch_all()`` patched.

The watchdog that stops an onnxruntime run at its deadline must run while the run does. Under gevent's patch
a thread is a greenlet of the one OS thread that serves them all, and no greenlet runs while that thread is
inside onnxruntime: a deadline, ``pool.max_run_s`` or a shadow's runaway limit never stopped a run (a request
that asked for a loop of 10**11 steps ran past 30 s under a limit of 1 s). All a stop needs is
``RunOptions.terminate = True``, a flag on a C object, which any OS thread may set. So under the patch the
watchdog keeps an OS thread of its own, made with the functions gevent keeps aside (``monkey.get_original``),
and the state that thread shares with greenlets is guarded by such original locks, held briefly and never
across a switch. Without the patch these are ``_thread``'s own.
"""

from __future__ import annotations

import _thread
import functools
import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["Condition", "Thread", "allocate_lock", "current_thread", "original_local", "patched", "via_hub"]


def patched() -> bool:
    """Whether gevent has patched ``threading`` in this process (its threads are greenlets)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    try:
        return bool(monkey.is_module_patched("threading"))
    except Exception:  # another gevent than the one this was written for: take it as not patched
        return False


def via_hub(action: Callable[[], None]) -> Callable[[], None]:
    """Under gevent's patch: what calls ``action`` on a greenlet of its own, in the hub of the greenlet that
    calls this (safe from any OS thread: what the watchdog's thread calls when an action is due)."""
    hub = importlib.import_module("gevent").get_hub()
    return functools.partial(hub.loop.run_callback_threadsafe, _spawn, action)


def _spawn(action: Callable[[], None]) -> None:
    # (in the hub, which may not block itself: the action may wait on gevent's locks)
    importlib.import_module("gevent").spawn_raw(action)


def _original(name: str) -> Any:
    if patched():
        return sys.modules["gevent.monkey"].get_original("_thread", name)
    return getattr(_thread, name)


def allocate_lock() -> Any:
    """A lock of the OS, whether or not gevent patched ``_thread``: taken by a greenlet, it blocks every
    greenlet of its OS thread until released, so it may only be held for a few instructions, never across a
    switch (no I/O, no gevent lock, no thread start of gevent's under it)."""
    return _original("allocate_lock")()


def original_local() -> type:
    """``_thread._local``, whose values are one OS thread's, whether or not gevent patched ``_thread`` (its
    greenlets then share their thread's)."""
    local_class: type = _original("_local")
    return local_class


_running: dict[int, Thread] = {}  # the OS thread id of each running Thread


class Thread:
    """A daemon OS thread running ``target``; a real one under gevent's patch (not in ``threading.enumerate``,
    nor joined at exit: its owner stops it, as it would a daemon thread)."""

    def __init__(self, target: Callable[[], None], name: str) -> None:
        self.name = name
        self._target = target
        self._start = _original("start_new_thread")
        self._get_ident = _original("get_ident")
        self._done = allocate_lock()

    def start(self) -> None:
        self._done.acquire()
        try:
            self._start(self._run, ())
        except BaseException:
            self._done.release()
            raise

    def _run(self) -> None:
        ident = self._get_ident()
        _running[ident] = self
        try:
            self._target()
        finally:
            _running.pop(ident, None)
            self._done.release()

    def join(self, timeout: float) -> None:
        """Wait until the thread's target returned, for at most ``timeout`` seconds."""
        if self._done.acquire(timeout=timeout):
            self._done.release()


def current_thread() -> Thread | None:
    """The :class:`Thread` this code runs on, or ``None`` (a thread or greenlet of someone else's)."""
    return _running.get(_original("get_ident")())


class Condition:
    """``notify`` and ``wait`` for one waiting thread, on OS locks (``threading.Condition`` takes its waiters'
    locks from the patched ``threading``). Both are called with ``lock`` held; a wait may also end early (a
    notify that came while the thread was not waiting), so the waiter checks what it waits for again."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self._bell = allocate_lock()  # held while nothing was notified; released by notify, taken by wait
        self._bell.acquire()

    def notify(self) -> None:
        if self._bell.locked():  # (only notify releases it, under the lock: no race between check and release)
            self._bell.release()

    def wait(self, timeout: float | None = None) -> None:
        self._lock.release()
        try:
            self._bell.acquire(timeout=-1 if timeout is None else timeout)
        finally:
            self._lock.acquire()
