"""Waking the synchronous callers of finished batches: first answered, first woken, a few at a time.

A caller of ``predict`` whose request went through a queue blocks on a lock until its batch is answered. How
those callers are woken decides the tail of their latency under load:

* Waking every caller of a batch at once makes dozens of threads fight for the GIL at the same instant.
* Waking them as a chain, one batch at a time (the worker wakes the first, each caller wakes the next of its
  batch once it runs), was what this library did before. Under load every finished batch starts a chain of
  its own, and the chains of newer batches take turns for the GIL with the tails of older ones: the last
  callers of a batch wait for the callers of later batches. At 64 client threads on mlp-small (2-core
  machine, ``benchmarks/coalescing.py``) the p99 was three to four times the median.

So the callers of every batch of the process join one queue, in the order they were answered, and at most
``WAKING_AT_ONCE`` of them are being woken at any moment: a caller holds one of those places from the moment
it is woken until it runs, and then hands it to the next in the queue (:meth:`WakeRelay.passed`). Answered
first means woken first, whatever the batch or the model, and a few wake-ups overlap, which hides part of
each one's latency without a stampede.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _fork

if TYPE_CHECKING:
    from ._request import Request

__all__ = ["DONE_WAKING", "RELAY", "WAKING_AT_ONCE", "WakeRelay"]

# Callers being woken at once. Measured on the project's 2-core machine, mlp-small, the same server
# switched between designs in one process (docs/batching.md, "How a request flows"): 6 to 8 gave the
# lowest p99 at 8, 32 and 64 client threads, at the throughput of the chain; 1 starved the queue's tail, and
# 16 began to crowd the GIL again.
WAKING_AT_ONCE = 8


class _DoneWaking:
    """The baton of a caller with no place to hand on: answered alone, or its place handed on already."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<done waking>"


DONE_WAKING = _DoneWaking()


class WakeRelay:
    """The queue of answered synchronous callers waiting to be woken, and how many are being woken.

    A request enters with :meth:`add` once its answer is stored (its ``baton`` is then this relay); its
    caller, once awake, calls :meth:`passed` exactly once, and a caller that gives up (its thread was
    interrupted) calls :meth:`leave` instead, whether or not it was woken. Thread-safe.
    """

    __slots__ = ("__weakref__", "_lock", "_queue", "_waking", "limit")

    def __init__(self, limit: int = WAKING_AT_ONCE) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._lock = threading.Lock()
        self._queue: deque[Request] = deque()  # answered, not yet woken, in the order they were answered
        self._waking = 0  # callers woken that have not yet passed their place on
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        # The parent's blocked callers are not in the child, and the lock may have been held by one of
        # its threads at the fork.
        self._lock = threading.Lock()
        self._queue = deque()
        self._waking = 0

    def add(self, requests: Sequence[Request]) -> None:
        """Queue the callers of ``requests`` (answered: their outputs are stored) and wake as many as there
        are free places. A request whose caller gave up already (:meth:`leave` came first) is skipped."""
        wake: list[Request] = []
        with self._lock:
            queue = self._queue
            for request in requests:
                if request.baton is None:
                    request.baton = self
                    queue.append(request)
            while self._waking < self.limit and queue:
                wake.append(queue.popleft())
                self._waking += 1
        for request in wake:
            request.waiter.release()

    def passed(self, request: Request) -> None:
        """``request``'s caller is awake: it hands its place to the next caller in the queue."""
        with self._lock:
            if request.baton is not self:  # handed on already
                return
            request.baton = DONE_WAKING
            if not self._queue:
                self._waking -= 1
                return
            following = self._queue.popleft()
        following.waiter.release()

    def leave(self, request: Request) -> None:
        """``request``'s caller gave up (its thread was interrupted) once its request was answered, or is
        about to be: it is taken out of the queue if it was not woken yet, and hands its place on if it
        was; one not queued yet is never queued (see :meth:`add`). Calling it again changes nothing."""
        with self._lock:
            if request.baton is None:  # not queued yet: add() will skip it
                request.baton = DONE_WAKING
                return
            if request.baton is not self:  # handed on already, or answered alone
                return
            request.baton = DONE_WAKING
            try:
                self._queue.remove(request)
                return  # never woken: it held no place
            except ValueError:
                pass
            if not self._queue:
                self._waking -= 1
                return
            following = self._queue.popleft()
        following.waiter.release()

    def counts(self) -> tuple[int, int]:
        """(callers queued, callers being woken): for tests."""
        with self._lock:
            return len(self._queue), self._waking


RELAY = WakeRelay()  # one per process: the GIL that every woken caller needs is the process's
