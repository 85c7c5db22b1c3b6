"""Runs the clean-up of a server nobody closed on a thread of its own, not where the collector freed it.

The garbage collector runs a ``weakref.finalize`` callback on whatever thread allocates when it collects,
at whatever point that thread is: inside a batcher worker holding its batcher's lock, inside the
OpenTelemetry SDK holding an instrument's lock. A clean-up that takes those locks, or joins the thread it
runs on or one waiting for it, hangs that thread for good (and the collector with it: no other thread
collects while one is collecting). So a finalizer only hands its clean-up over here (``SimpleQueue.put`` is
reentrant: safe from a finalizer, on any thread), and one thread runs it. At interpreter exit the clean-ups
of what is still alive run on the main thread there and then, and the clean-ups handed over before are
waited for, so that no thread is left inside onnxruntime when the interpreter finalizes. That is this
module's own exit hook, not ``weakref.finalize``'s: that one runs before or after this one depending on
whether any ``weakref.finalize`` was made before this module was imported (Django's request handler makes
one), and a clean-up it handed over after this hook waited would be left to a daemon thread the
interpreter stops mid-way (onnxruntime aborts the process then, SIGABRT).

The hand-over runs in C alone: the weak reference's callback is ``functools.partial(SimpleQueue.put, job)``,
no Python frame (a ``weakref.finalize`` runs its own ``__call__`` in Python). On Python 3.11 a collection may
run inside ``sys._current_frames()`` (a sampling profiler's call), holding the runtime's lock; Python code
there may hand the GIL to a thread that then starts or ends and waits for that lock with the GIL, and the
process deadlocks (CPython gh-106883; docs/operations.md, "Python 3.11 and sampling profilers").
"""

from __future__ import annotations

import atexit
import functools
import itertools
import logging
import os
import queue
import signal
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, NoReturn

from . import _fork

__all__ = ["Closing", "start", "watch"]

logger = logging.getLogger(__name__)

# How long interpreter exit waits for the clean-ups handed over before it (each bounds its own waits).
_EXIT_WAIT_S = 30.0

_Job = tuple[Callable[..., None], tuple[Any, ...], int]  # (clean-up, its arguments, its Watch's key)
_jobs: queue.SimpleQueue[_Job | threading.Event] = queue.SimpleQueue()
_thread: threading.Thread | None = None
_starting = threading.Lock()
_watched: dict[int, Watch] = {}  # key -> every armed Watch, for the exit hook (each holds its weak reference)
_keys = itertools.count()
_pid = os.getpid()  # the process the above belong to (see _after_fork_in_child)


def start() -> None:
    """Start the clean-up thread, if it is not running (from a server's constructor, and in a forked child
    from its fork hook: never from a finalizer, as starting a thread takes locks)."""
    global _thread
    _after_fork_in_child()  # (a server's fork hook may call this before this module's own hook has run)
    with _starting:
        if _thread is None or not _thread.is_alive():
            _thread = threading.Thread(target=_run, args=(_jobs,), name="inprocserve-cleanup", daemon=True)
            _thread.start()


class Watch:
    """``cleanup(*args)`` armed to run on the clean-up thread when the watched object is collected, and at
    interpreter exit on the main thread if the object is still alive then; once, never after :meth:`detach`.
    The arguments must not lead back to the object (or it is never collected)."""

    __slots__ = ("_job", "_key", "_ref")

    def __init__(self, obj: object, cleanup: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._key = next(_keys)
        self._job: _Job | None = (cleanup, args, self._key)
        self._ref: weakref.ref[Any] | None = None
        self._arm(obj)

    def _arm(self, obj: object) -> None:
        """Hand the job to the current queue when ``obj`` is freed: ``_jobs.put(job, the dead reference)``
        (taken for ``put``'s ``block``, which a ``SimpleQueue`` ignores), C alone (see the module's
        docstring)."""
        assert self._job is not None
        self._ref = weakref.ref(obj, functools.partial(_jobs.put, self._job))
        _watched[self._key] = self

    def detach(self) -> None:
        """Never run the clean-up (the object was closed by its owner)."""
        self._job = self._ref = None  # (a weak reference freed before its object calls nothing)
        _watched.pop(self._key, None)

    def __call__(self) -> None:
        """Run the clean-up now, on this thread, if its object is still alive and it has not run or been
        detached (the exit hook's call); else nothing (a collected object's clean-up is the thread's)."""
        job, ref = self._job, self._ref
        obj = None if ref is None else ref()  # (held meanwhile: it cannot be collected and handed over too)
        self.detach()
        # The weak reference freed before its object calls nothing: one kept alive here while the clean-up
        # ran still had its callback, and a collection during the clean-up that freed an object dropped in a
        # cycle handed the same clean-up to the clean-up thread too (it ran twice, at once).
        del ref
        if job is not None and obj is not None:
            del obj
            cleanup, args, _ = job
            cleanup(*args)

    def _rearm(self) -> None:
        """In a forked child (or once gevent patched the process): hand the job to the new queue; one whose
        object is gone already was handed to the old queue (the parent's: not run here), and is dropped."""
        obj = None if self._ref is None else self._ref()
        if obj is None or self._job is None:
            self.detach()
        else:
            self._arm(obj)


class Closing:
    """Who closes one server: its owner's ``close()`` or the clean-up of a server nobody closed (at interpreter
    exit, on the main thread, while a ``close()`` may be running on another: a daemon thread's, a signal
    handler's). The first to :meth:`begin` closes it; the other :meth:`wait` s for that to end instead of
    running the clean-up a second time alongside it (it retired the versions ``close()`` had not reached
    yet, under it). Thread-safe; the claim is one non-blocking acquire, in C (no lock is waited for: a
    signal handler's ``close()`` may run on a thread inside :meth:`begin`)."""

    __slots__ = ("_claimed", "_done", "_owner", "_pid")

    def __init__(self) -> None:
        self._claimed = threading.Lock()  # (acquired once, for good; in a forked child, see after_fork_in_child)
        self._done = threading.Event()
        self._owner: int | None = None
        self._pid = os.getpid()  # the process the above belong to

    def begin(self) -> bool:
        """Claim the closing: True for the first caller, who must call :meth:`end` when done."""
        if not self._claimed.acquire(blocking=False):
            return False
        self._owner = threading.get_ident()
        return True

    def end(self) -> None:
        self._done.set()

    def after_fork_in_child(self) -> bool:
        """In a forked child (from its server's fork hook): True if a closing begun in the parent had not ended
        at the fork, on a thread the child does not have. Nothing here would ever end it: the child's
        ``close()`` waited its whole ``timeout_s`` for it, and its exit's clean-up ``_EXIT_WAIT_S``, then gave
        up. So the claim is free again, for whichever of those comes first in the child. A closing begun by
        the thread that forked is kept: that thread goes on closing in the child too. Not in a forked child
        (gevent's monkey-patching runs the fork hooks again in the same process: see _fork): nothing changes,
        as the thread that is closing is there."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        ended = self._done.is_set()
        self._done = threading.Event()  # (a thread of the parent's may have held its lock at the fork)
        if ended:
            self._done.set()
            return False
        if not self._claimed.locked() or self._owner == threading.get_ident():
            return False
        self._claimed = threading.Lock()
        self._owner = None
        return True

    def wait(self, timeout_s: float | None) -> bool:
        """Wait up to ``timeout_s`` (``None``: until it ends) for the closing begun by the other caller; False
        if it is still running. True at once on the thread that is closing (a ``close()`` from a signal
        handler run inside that thread's clean-up would otherwise wait for itself)."""
        if self._owner == threading.get_ident():
            return True
        return self._done.wait(timeout_s)


def watch(obj: object, cleanup: Callable[..., None], *args: Any) -> Watch:
    """A :class:`Watch` of ``obj``: ``cleanup(*args)`` runs on the clean-up thread when ``obj`` is collected,
    and at interpreter exit on the main thread if ``obj`` is still alive then (or, once, when the watch is
    called; never after it is detached). Called from a constructor, not a finalizer."""
    watched = Watch(obj, cleanup, args)
    start()
    return watched


def _run(jobs: queue.SimpleQueue[_Job | threading.Event]) -> None:
    while True:
        job = jobs.get()
        if isinstance(job, threading.Event):
            job.set()
            continue
        cleanup, args, key = job
        _watched.pop(key, None)
        try:
            cleanup(*args)
        except Exception:  # a failed clean-up must not stop the ones after it
            logger.exception("cleaning up a server nobody closed failed")
        del job, cleanup, args  # (nothing of the server outlives its clean-up here)


def _at_exit() -> None:
    try:
        _clean_up_at_exit()
    except (KeyboardInterrupt, SystemExit) as interruption:
        _exit_now(interruption)


def _exit_now(interruption: KeyboardInterrupt | SystemExit) -> NoReturn:
    """Interrupted while the exit's clean-up waits for the servers' threads (Ctrl-C again, as the first one's
    exit drained the queued requests; or gunicorn's quit signal, whose handler raises ``SystemExit``): leave
    now, as asked, and do not finalize the interpreter. With those threads still inside onnxruntime, that
    aborted the process: "terminate called without an active exception", SIGABRT, a core dump."""
    if isinstance(interruption, SystemExit):
        code = interruption.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
    else:
        status = 128 + signal.SIGINT  # 130: what a shell reports for a command ended by Ctrl-C
    try:
        logger.warning(
            "interrupted while closing inprocserve's servers at exit: exiting now (status %d), without waiting "
            "for the requests still running",
            status,
        )
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        if isinstance(interruption, KeyboardInterrupt) and os.name == "posix":  # (Windows: os.kill terminates)
            # Ended by SIGINT itself, as Python ends a process whose Ctrl-C nobody caught: a shell running it
            # in a loop or a script stops there (it goes on after a command that exits 130 of its own accord),
            # and a supervisor sees a process stopped by a signal (systemd: a clean stop), not one that failed.
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
    except BaseException:  # (interrupted again, or a closed stream: leave all the same)
        pass
    os._exit(status)  # (SIGINT blocked on this thread: the status a shell shows for a command ended by Ctrl-C)


def _clean_up_at_exit() -> None:
    for watched in reversed(list(_watched.values())):  # (newest first, as weakref.finalize's hook would)
        try:
            watched()
        except Exception:
            logger.exception("cleaning up a server nobody closed failed")
    thread = _thread
    if thread is None or not thread.is_alive():
        return
    done = threading.Event()
    _jobs.put(done)
    if not done.wait(_EXIT_WAIT_S):
        logger.error("the clean-up of a server nobody closed is still running after %gs; exiting anyway", _EXIT_WAIT_S)


def _after_fork_in_child() -> None:
    """In a forked child, once, before anything else here: a lock, a queue and no clean-up thread of its own.
    Fork hooks run in the order registered, and _fork's (a server's, that calls start()) before this
    module's: a thread started there on the parent's queue waited on it for good, and the child's clean-ups
    never ran (a dropped server's threads lived on; the child's exit waited _EXIT_WAIT_S for nothing)."""
    global _pid
    if _pid == os.getpid():
        return
    _pid = os.getpid()
    _start_afresh()


def _start_afresh() -> None:
    """A lock, a queue and no clean-up thread of its own: in a forked child, and once gevent has patched the
    process (made before it, the queue was a real one, on which the clean-up greenlet blocked every other
    greenlet of the process for good: see _fork)."""
    global _starting, _jobs, _thread
    _thread = None
    _starting = threading.Lock()  # (a thread of the parent's may have held it at the fork)
    # The parent's queued clean-ups are the parent's servers: not run here, nor freed (see _fork.keep).
    _fork.keep(_jobs)
    _jobs = queue.SimpleQueue()
    for watched in list(_watched.values()):  # (their weak references' callbacks put on the old queue)
        watched._rearm()


atexit.register(_at_exit)
_fork.at_fork_in_child(_after_fork_in_child)
_fork.on_monkey_patch(_start_afresh)
