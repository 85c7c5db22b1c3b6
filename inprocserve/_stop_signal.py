"""Stop the runs one thread has in flight, from another thread: how a closing server ends a shadow run.

A shadow run is not a caller's request: nobody waits for its answer, so a server that closes (or a process
that exits) need not wait it out. Waiting is not even safe at exit: onnxruntime aborts the process
(``std::terminate``, SIGABRT) when the interpreter finalizes while a thread is still inside one of its runs.

The shadow thread runs its work inside :func:`stop_with`; a backend that can stop a run early (onnxruntime
between two operators, through its ``RunOptions.terminate``) reads ``THIS_THREAD.signal``, the signal of the
thread it runs on and hooks its stop on it for the run's time. :meth:`StopSignal.stop` then ends every run
hooked on it, and any run started afterwards at once. A thread-local rather than an argument: the run passes
through the batcher and the backend seam (``Backend.run``), which third-party backends implement too, and a
backend that knows nothing of it runs as before. Runs on other threads (callers', batcher workers') have no
signal and are never stopped by it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import cast

from . import _fork

__all__ = ["THIS_THREAD", "StopSignal", "stop_with"]


class StopSignal:
    """Stops the runs hooked on it, once :meth:`stop` is called. Thread-safe; :meth:`stop` is idempotent."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._actions: dict[int, Callable[[], None]] = {}
        self._next = 0
        self.stopped = False

    def hook(self, action: Callable[[], None]) -> Callable[[], None]:
        """Call ``action`` (cheap, on the stopping thread) when :meth:`stop` is called, or now if it was;
        returns what to call once the run is over (then ``action`` is never called)."""
        with self._lock:
            if not self.stopped:
                key = self._next
                self._next += 1
                self._actions[key] = action
                return functools.partial(self._unhook, key)
        action()
        return _nothing

    def _unhook(self, key: int) -> None:
        with self._lock:  # (stop() may be swapping the dict)
            self._actions.pop(key, None)

    def stop(self) -> None:
        """Stop every run hooked on this signal now, and every one hooked later at once."""
        with self._lock:
            self.stopped = True
            actions, self._actions = list(self._actions.values()), {}
        for action in actions:
            action()


def _nothing() -> None:
    pass


class _Local(threading.local):
    signal: StopSignal | None = None


THIS_THREAD = _Local()
"""``THIS_THREAD.signal``: the signal that may stop runs on the reading thread (``None``: none may be stopped
early). An attribute to read, not a function to call: every onnxruntime run reads it. Its readers import it
by name, so each renews its own name when gevent patches the process (see :func:`_gevent_local`)."""


def _gevent_local() -> None:
    """gevent patched the process after this module was imported: ``THIS_THREAD`` of gevent's ``local``, one
    per greenlet. Made before, it was one per OS thread, shared by every greenlet: the shadow thread's signal,
    set for the whole of its life, was every request's, and once two shadowed servers had closed, a stopped
    one was left there for good: every later run of the process failed at once as closed (see _fork)."""
    global THIS_THREAD
    THIS_THREAD = cast(_Local, type("_Local", (threading.local,), {"signal": None})())


_fork.on_monkey_patch(_gevent_local)


@contextmanager
def stop_with(signal: StopSignal) -> Iterator[None]:
    """Run the block's work on this thread under ``signal``."""
    outer, THIS_THREAD.signal = THIS_THREAD.signal, signal
    try:
        yield
    finally:
        THIS_THREAD.signal = outer
