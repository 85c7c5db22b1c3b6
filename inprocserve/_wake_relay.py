"""Waking the synchronous callers of finished batches: first answered, first woken, a few at a time.

A caller of ``predict`` whose request went through a queue blocks on a lock until its batch is answered. How
those callers are woken decides the tail of their latency under load:

* Waking every caller of a batch at once makes dozens of threads fight for the GIL at the same instant.
* Waking them as a chain, one batch at a time (the worker wakes the first, each caller wakes the next of its
  batch once it runs), was what this library did before. Under load every finished batch starts a chain of
  its own, and the chains of newer batches take turns for the GIL with the tails of older ones: the last
  callers of a batch wait for the callers of later batches. At 64 client threads on mlp-small (the
  project's 2-core machine, a one-off measurement) the p99 was three to four times the median, nearly all
  of it spent between the start of a request's batch and its caller's wake.

So the callers of every batch of the process join one queue, in the order they were answered, and at most
``WAKING_AT_ONCE`` of them are being woken at any moment: a caller holds one of those places from the moment
it is woken until it runs, and then hands it to the next in the queue (:meth:`WakeRelay.passed`). Answered
first means woken first, whatever the batch or the model, and a few wake-ups overlap, which hides part of
each one's latency without a stampede.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _fork

if TYPE_CHECKING:
    from ._request import Request

__all__ = ["DONE_WAKING", "HEAL_INTERVAL_S", "RELAY", "WAKING_AT_ONCE", "WakeRelay"]

# Callers being woken at once. In a first one-off comparison on the project's 2-core machine (mlp-small, one
# server, this number switched between rounds in one process), 6 to 8 gave the lowest p99 at 8, 32 and 64
# client threads; 1 starved the queue's tail, and more than 16 crowded the GIL again (at 32 and 64 threads,
# waking every caller of a batch at once lost 12-15 % of the throughput). Measured again on 2026-12-07 with
# benchmarks/wake_relay_size.py (4 against 8, paired rounds; benchmarks/results/wake_relay_size*.md), 4 made
# mlp-small 1.01x, 1.07x and 1.04x the requests/s at 8, 32 and 64 threads (1.04x, 1.06x and 1.12x in a run
# before it) and mlp-large 1.03x and 1.05x at 8 and 64, with a lower p99 at every point, fairness level or
# better and fewer context switches per request; 2 did no better than 4 in two busier runs that day.
WAKING_AT_ONCE = 4
# How often the relay's watcher looks for places never handed on (see WakeRelay): a place held across two of
# its looks (one to two intervals) is taken back. Far beyond any wake-up, so in practice only a caller that
# was interrupted where no clean-up runs loses its place.
HEAL_INTERVAL_S = 1.0

logger = logging.getLogger(__name__)


class _DoneWaking:
    """The baton of a caller with no place to hand on: answered alone, its place handed on or taken back,
    or its caller gave up."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<done waking>"


DONE_WAKING = _DoneWaking()


class WakeRelay:
    """The queue of answered synchronous callers waiting to be woken, and the callers being woken.

    A request enters with :meth:`add` once its answer is stored (its ``baton`` is then this relay); its
    caller, once awake, calls :meth:`passed` exactly once, and a caller that gives up (its thread was
    interrupted) calls :meth:`leave` instead, whether or not it was woken. Thread-safe.

    An interruption can land anywhere in Python code, between any two of its steps, and a place never handed
    back would be lost for the whole process. So a hand-over first records the caller it goes to on the
    handing caller's request (its ``baton``), in one step, before it changes anything else: :meth:`leave`,
    called by an interrupted caller's clean-up, finishes whatever part of the hand-over the interruption
    left undone. And where a caller was interrupted outside any clean-up (its place is held, and never
    handed on), a watcher thread, running while any caller is queued or being woken and looking every
    ``heal_interval_s``, takes back each place held across two of its looks (and finishes a hand-over that
    was cut short with no clean-up after it); a caller that was only slow to wake then finds its place
    taken back, and hands nothing on.
    """

    __slots__ = (
        "__weakref__",
        "_held_last_look",
        "_holders",
        "_lock",
        "_queue",
        "_watcher",
        "_watcher_failed",
        "heal_interval_s",
        "limit",
        "places_taken_back",
    )

    def __init__(self, limit: int = WAKING_AT_ONCE, *, heal_interval_s: float = HEAL_INTERVAL_S) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        if not heal_interval_s > 0:
            raise ValueError(f"heal_interval_s must be positive, got {heal_interval_s}")
        self.limit = limit
        self.heal_interval_s = heal_interval_s
        self.places_taken_back = 0  # places never handed back and taken back by the watcher, so far
        self._lock = threading.Lock()
        self._queue: deque[Request] = deque()  # answered, not yet woken, in the order they were answered
        self._holders: set[Request] = set()  # woken, their places not yet handed on
        self._held_last_look: set[Request] = set()  # the holders when the watcher last looked
        self._watcher: threading.Thread | None = None  # while any caller is queued or being woken
        self._watcher_failed = False  # a start failed (logged once)
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        # The parent's blocked callers and its watcher are not in the child, and the lock may have been held
        # by one of its threads at the fork. The answered requests they hold are kept, never freed here: their
        # outputs are onnxruntime's arrays, freed under a lock a parent's worker may have held (_fork.keep).
        _fork.keep(self._queue, self._holders, self._held_last_look)
        self._lock = threading.Lock()
        self._queue = deque()
        self._holders = set()
        self._held_last_look = set()
        self._watcher = None

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
            holders = self._holders
            while len(holders) < self.limit and queue:
                request = queue.popleft()
                holders.add(request)
                wake.append(request)
            started = self._watcher is not None or self._start_watcher()
        for request in wake:
            try:
                request.waiter.release()
            except RuntimeError:  # the watcher woke it first (this thread was held up for seconds)
                pass
        if not started and not self._watcher_failed:
            self._watcher_failed = True
            logger.warning(
                "inprocserve: the wake relay's watcher thread could not be started (trying again with each "
                "batch): places of callers interrupted outside any clean-up are not taken back meanwhile"
            )

    def passed(self, request: Request) -> None:
        """``request``'s caller is awake: it hands its place to the next caller in the queue."""
        with self._lock:
            if request.baton is self:
                self._hand_on(request)
            else:  # handed on already (or taken back), or in the middle of it: finish it
                self._finish_hand_over(request)

    def leave(self, request: Request) -> None:
        """``request``'s caller gave up (its thread was interrupted) once its request was answered, or is
        about to be: it is taken out of the queue if it was not woken yet, and hands its place on if it
        was, finishing a hand-over that the interruption cut short; one not queued yet is never queued (see
        :meth:`add`). Calling it again changes nothing."""
        with self._lock:
            baton = request.baton
            if baton is None:  # not queued yet: add() will skip it
                request.baton = DONE_WAKING
            elif baton is self:
                if request in self._holders:
                    self._hand_on(request)
                else:  # never woken (it holds no place), or its place was just freed
                    request.baton = DONE_WAKING
                    with contextlib.suppress(ValueError):
                        self._queue.remove(request)
            else:
                self._finish_hand_over(request)

    def _hand_on(self, request: Request) -> None:
        """With the lock held: ``request`` (a holder) hands its place to the first caller queued, or frees
        it. Each step can be cut short by an interruption; the caller's clean-up finishes it
        (:meth:`_finish_hand_over`)."""
        queue = self._queue
        if queue:
            request.baton = queue[0]  # recorded first: from here on, the clean-up knows whom to wake
            following = queue.popleft()
            self._holders.add(following)
            self._holders.discard(request)
            following.waiter.release()
        else:
            self._holders.discard(request)
        request.baton = DONE_WAKING

    def _finish_hand_over(self, request: Request) -> None:
        """With the lock held: finish a hand-over of ``request``'s place to the caller recorded as its baton
        (a no-op when it was finished: its baton is ``DONE_WAKING``)."""
        following = request.baton
        if following is DONE_WAKING or following is None or following is self:
            return
        if following.baton is self:  # it has not run yet (nor lost its place): the place is its own now
            if following in self._queue:  # cut short before it was taken out of the queue
                self._queue.remove(following)
            self._holders.add(following)
        self._holders.discard(request)
        # Woken already: a second release is never waited for (the caller took its wake, or takes this one).
        with contextlib.suppress(RuntimeError):
            following.waiter.release()
        request.baton = DONE_WAKING

    def _start_watcher(self) -> bool:
        """With the lock held: start the watcher; whether it started. A failed start (no thread left to the
        process) leaves the next :meth:`add` to try again: the callers are woken either way."""
        watcher = threading.Thread(target=self._watch, name="inprocserve-wake-relay", daemon=True)
        try:
            watcher.start()
        except RuntimeError:
            return False
        self._watcher = watcher
        self._held_last_look = set()
        return True

    def _watch(self) -> None:
        """Every ``heal_interval_s``: take back each place held since the last look (its caller was
        interrupted where no clean-up runs, and never hands it on) and wake the callers queued behind it;
        return once no caller is queued or being woken (the next :meth:`add` starts a watcher again)."""
        while True:
            time.sleep(self.heal_interval_s)
            wake: list[Request] = []
            with self._lock:
                stale = self._holders & self._held_last_look
                for holder in list(stale):
                    baton = holder.baton
                    if baton is not self and baton is not DONE_WAKING and baton is not None:
                        self._finish_hand_over(holder)  # a hand-over cut short, its clean-up never run
                stale &= self._holders
                for holder in stale:
                    holder.baton = DONE_WAKING  # (one that was only slow hands nothing on)
                    self._holders.discard(holder)
                    wake.append(holder)  # (one cut short before its own wake gets it; again is harmless)
                while len(self._holders) < self.limit and self._queue:
                    request = self._queue.popleft()
                    self._holders.add(request)
                    wake.append(request)
                self._held_last_look = set(self._holders)
                self.places_taken_back += len(stale)
                done = not self._holders and not self._queue
                if done:
                    self._watcher = None
            if stale:
                logger.warning(
                    "inprocserve: %d caller(s) woken for an answer did not hand their place on within %.1f s "
                    "(interrupted?); taken back",
                    len(stale),
                    self.heal_interval_s,
                )
            for request in wake:
                with contextlib.suppress(RuntimeError):  # (woken already)
                    request.waiter.release()
            if done:
                return

    def counts(self) -> tuple[int, int]:
        """(callers queued, callers being woken): for tests."""
        with self._lock:
            return len(self._queue), len(self._holders)


RELAY = WakeRelay()  # one per process: the GIL that every woken caller needs is the process's
