"""Per-thread values of objects that come and go, kept without a ``threading.local`` of their own.

In CPython 3.11 a ``threading.local`` freed by a garbage collection that runs inside ``sys._current_frames()``
deadlocks the whole process: the local's clean-up waits for the runtime lock that call holds, with the GIL
(CPython gh-106883; 3.12 collects only between bytecodes). Sampling profilers and APM agents call it from a
thread of their own many times a second. And the objects that kept per-thread state here (a loaded version's
run limit, a flag provider, a telemetry's tracer) are freed by the collector, not by reference counts: a
version unloaded by a hot reload, or a closed server, left its ``threading.local`` for whichever collection
came next, so a reload under such a profiler could stop a worker for good.

So this module holds the process's only such locals, never freed: one for OS threads, one for callers
(greenlets under gevent's patch), each with a dict per thread of every :class:`ThreadValue`'s value, by the
value's key. A value goes with its thread (the thread's dict with the thread's local state), or with its
:class:`ThreadValue`: a freed one's end is noted in C alone, and its values are taken out of every thread's
dict when the next one is made (dict operations, no runtime lock).

No Python code of this module runs in a collection: any that a collection inside ``sys._current_frames()``
runs (a ``weakref.finalize``, a weak set's callback) may hand the GIL to another thread while the runtime
lock is held, and a thread that starts or ends then waits for that lock with the GIL: the same deadlock, by
chance rather than for certain (the case gh-106883 first reported; reproduced within seconds with owners
dropped in cycles while two threads started and ended threads). Other clean-ups of the library and of other
libraries still run Python code there; only 3.12 removes the rest.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar

from . import _fork, _native
from ._weak_members import EndNotes, WeakMembers

__all__ = ["ThreadValue"]

T = TypeVar("T")


class _Values(dict):  # type: ignore[type-arg]
    """One thread's values, by :class:`ThreadValue` key."""

    __slots__ = ("__weakref__",)


class _Store:
    """A never-freed ``threading.local`` whose ``values`` is a :class:`_Values` per thread, and every
    thread's dict, weakly (so that the values of a :class:`ThreadValue` freed are taken out of them all).

    The dicts are :class:`WeakMembers`, walked on a copy: a ``WeakSet`` walked while another thread added its
    first value raised "changed size during iteration" (and its callback, run by a collection, was Python
    code: see the module's docstring)."""

    def __init__(self, local_class: type) -> None:
        self.dicts: WeakMembers[_Values] = WeakMembers()
        self.renew(local_class)

    def renew(self, local_class: type) -> None:
        """Start over with a local of ``local_class`` (gevent's, once it patched ``threading``)."""
        self.local: Any = type("_PerThread", (local_class,), {"values": None})()

    def values(self) -> _Values:
        """The calling thread's dict, made on first use."""
        values: _Values | None = self.local.values
        if values is None:
            values = self.local.values = _Values()
            self.dicts.add(values)
        return values

    def forget(self, key: int) -> None:
        for values in self.dicts:
            values.pop(key, None)


_OS_THREADS = _Store(_native.original_local())
_CALLERS = _Store(threading.local)

_freed = EndNotes()  # the ThreadValues freed, whose values are still to be taken out of the threads' dicts


def _forget_freed() -> None:
    """Take the values of the ThreadValues freed since the last call out of every thread's dict (normal code:
    never a finalizer)."""
    for key in _freed.take():
        _OS_THREADS.forget(key)
        _CALLERS.forget(key)


def _callers_patched() -> None:
    """gevent patched the process after this module was imported: callers are greenlets from now on."""
    _CALLERS.renew(threading.local)


_fork.on_monkey_patch(_callers_patched)


class ThreadValue(Generic[T]):
    """One value per thread, ``default`` until the thread sets one: an attribute of a ``threading.local``
    without one (see the module's docstring). Thread-safe.

    Args:
        default: What :meth:`get` answers on a thread that set nothing.
        os_threads: Keep one value per OS thread, also under gevent's patch (where greenlets share their
            thread's); by default one per caller, a greenlet under the patch.
    """

    __slots__ = ("__weakref__", "_default", "_key", "_store")

    def __init__(self, default: T, *, os_threads: bool = False) -> None:
        if _freed:
            _forget_freed()
        self._default = default
        self._store = _OS_THREADS if os_threads else _CALLERS
        # Its end is noted by C alone (EndNotes), and its values taken out when the next one is made. A
        # collection may free it inside ``sys._current_frames()``, holding the runtime's lock: Python code
        # there (a ``weakref.finalize``) may hand the GIL to a thread that then starts or ends, and waits for
        # that lock with the GIL, and the process deadlocked (CPython gh-106883), within seconds of owners
        # dropped in cycles.
        self._key = _freed.watch(self)

    def get(self) -> T:
        """The calling thread's value."""
        values: _Values | None = self._store.local.values
        if values is None:
            return self._default
        value: T = values.get(self._key, self._default)
        return value

    def set(self, value: T) -> None:
        """Make ``value`` the calling thread's."""
        values: _Values | None = self._store.local.values
        if values is None:
            values = self._store.values()
        values[self._key] = value
