"""A set of objects held weakly, walked while other threads add to it.

``weakref.WeakSet`` is walked by a Python generator: a thread that adds a member (a version loading, a thread
making its first per-thread value) between two steps of another thread's walk makes that walk raise
"RuntimeError: Set changed size during iteration". The walks here run before a fork (holding the metric
recorders' locks), at each metric collection and in finalizers, where a lock of their own could be held by
the very thread the collector interrupts; so instead of a lock, the members are copied in one C call, which
no other thread can interleave with.
"""

from __future__ import annotations

import functools
import itertools
import weakref
from collections.abc import Iterator
from typing import Generic, TypeVar

__all__ = ["EndNotes", "WeakMembers"]

T = TypeVar("T")


class WeakMembers(Generic[T]):
    """Objects held weakly (each leaves when it is freed), known by identity. Thread-safe without a lock:
    iterating walks a copy taken at once."""

    __slots__ = ("_refs",)

    def __init__(self) -> None:
        self._refs: dict[int, weakref.ref[T]] = {}

    def add(self, member: T) -> None:
        key, refs = id(member), self._refs
        # The callback runs as the member is freed, before its id can be another object's: ``refs.pop(key,
        # the weakref)``, C alone (a partial of a builtin), no Python frame. A collection may run it inside
        # ``sys._current_frames()``, holding the runtime's lock; Python code there may hand the GIL to a thread
        # that then starts or ends, and waits for that lock with the GIL: the process deadlocked (CPython
        # gh-106883), within seconds of objects registered for fork hooks dropped in cycles, as a lambda did.
        refs[key] = weakref.ref(member, functools.partial(refs.pop, key))

    def __iter__(self) -> Iterator[T]:
        for held in list(self._refs.values()):
            member = held()
            if member is not None:
                yield member

    def __len__(self) -> int:
        return sum(1 for _ in self)


class EndNotes:
    """Which of the objects watched were freed, noted in C alone (a partial of ``dict.__setitem__`` as each
    weak reference's callback: no Python frame runs in a collection, see :meth:`WeakMembers.add`), and read
    in normal code by :meth:`take`, which acts on them there."""

    __slots__ = ("_ended", "_keys", "_watching")

    def __init__(self) -> None:
        self._ended: dict[int, object] = {}  # key -> the dead weak reference (changed in C)
        self._watching: dict[int, weakref.ref[object]] = {}  # key -> the weak reference that notes its end
        self._keys = itertools.count()

    def watch(self, thing: object) -> int:
        """Note ``thing``'s end when it is freed; returns the key :meth:`take` will give for it."""
        key = next(self._keys)
        self._watching[key] = weakref.ref(thing, functools.partial(self._ended.__setitem__, key))
        return key

    def __bool__(self) -> bool:
        """Whether a watched object was freed since the last :meth:`take` (a read per call: cheap)."""
        return bool(self._ended)

    def take(self) -> list[int]:
        """The keys of the objects freed since the last call, each given to one caller only."""
        taken = []
        for key in list(self._ended):
            if self._ended.pop(key, None) is not None:
                self._watching.pop(key, None)
                taken.append(key)
        return taken
