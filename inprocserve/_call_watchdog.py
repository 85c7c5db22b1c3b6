"""Shut down the socket of an HTTP call that outlives its deadline: the one bound a read timeout cannot give.

A socket timeout caps each read, not a call. ``http.client`` reads the status line and the headers one
line at a time, with no hook between reads, so a server (or a broken proxy) that sends them a byte at a time,
each within the read timeout, holds the caller for as long as it likes: 20 s for a 0.5 s deadline in a
review's script. The watchdog keeps every call in flight in a heap ordered by deadline; one thread sleeps
until the earliest and shuts that call's socket down, which ends a blocked read or write at once with an
error the caller reports as its timeout.

The cost per call is one heap push and two short lock holds; the thread wakes about once per deadline, not
once per call, because calls that ended are dropped lazily: when they reach the top of the heap, or all at
once when the heap has doubled since it last held only live calls (so calls that end long before their
deadline, the usual case, hold no memory for the length of a timeout: 30 s of 2,000 calls/s kept 60,000
ended entries, about 12 MB, before).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import socket
import threading
import time
from typing import Any

__all__ = ["CallWatchdog", "Watch"]

logger = logging.getLogger(__name__)

_STOP_JOIN_S = 5.0
_COMPACT_FROM = 64  # below this many entries the heap is never swept: ended ones cost nothing worth it


class Watch:
    """One call's deadline, and the socket to shut down when it passes.

    Thread-safe: the caller's thread arms and ends it, the watchdog's thread fires it, both under the
    watchdog's lock.
    """

    __slots__ = ("_ended", "_fired", "_lock", "_owners", "_sock", "deadline")

    def __init__(self, deadline: float, lock: threading.Lock, owners: dict[int, Watch] | None = None) -> None:
        self.deadline = deadline
        self._lock = lock
        # which watch each socket serves now (by id, under the lock): a pool may hand a connection to another
        # call before this one ends (urllib3 gives it back as the last byte is read), and a late fire of this
        # watch must not shut the other call's socket
        self._owners: dict[int, Watch] = {} if owners is None else owners
        self._sock: Any = None
        self._fired = False
        self._ended = False

    def arm(self, sock: Any) -> None:
        """The call now talks over ``sock`` (a new or a reused connection); shut at once if already late."""
        if sock is None:
            return
        with self._lock:
            if self._ended:
                return
            before = self._sock
            if before is not None and before is not sock and self._owners.get(id(before)) is self:
                del self._owners[id(before)]  # (a second connection, or a TLS one over the first: one entry each)
            self._sock = sock
            self._owners[id(sock)] = self
            if self._fired:
                _shut(sock)

    def end(self) -> bool:
        """The call is over: never touch its socket again (the pool may hand it to another call next).
        Returns whether the deadline fired first. Idempotent."""
        with self._lock:
            self._ended = True
            sock, self._sock = self._sock, None
            if sock is not None and self._owners.get(id(sock)) is self:
                del self._owners[id(sock)]
            return self._fired

    def release(self, sock: Any) -> None:
        """``sock`` is being closed: no watch of this watchdog may shut it from now on. Under the lock, so a
        shutdown of it under way ends first: closed while a watch still named it, a deadline firing as it was
        closed could shut whatever another thread was given under its descriptor's number next (CPython reads
        the descriptor for ``shutdown()`` after letting go of the GIL)."""
        if sock is None:
            return
        with self._lock:
            owner = self._owners.pop(id(sock), None)
            for watch in (self, owner):
                if watch is not None and watch._sock is sock:
                    watch._sock = None

    @property
    def fired(self) -> bool:
        return self._fired

    def fire(self) -> None:
        """End the call now, as its deadline would (its owner stops it: a closing server's shadow call)."""
        with self._lock:
            self._fire()

    def _fire(self) -> None:  # called with the lock held
        if self._ended:
            return
        self._fired = True
        if self._sock is not None and self._owners.get(id(self._sock)) is self:  # (not handed to another call)
            _shut(self._sock)


class CallWatchdog:
    """Fires each :class:`Watch` at its deadline. Its thread starts with the first watch and stops in
    :meth:`close`.

    Thread-safe. Not fork-safe by itself: its owner drops it in a forked child (the thread does not exist
    there) and builds a new one.

    Args:
        name: The thread's name (it shows in thread dumps).
    """

    def __init__(self, *, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap: list[tuple[float, int, Watch]] = []
        self._owners: dict[int, Watch] = {}  # the watch each socket in use serves (see Watch)
        self._order = itertools.count()  # ties on the deadline never compare two Watch objects
        self._compact_at = _COMPACT_FROM  # the heap's size at which ended entries are dropped all at once
        self._thread: threading.Thread | None = None
        self._closed = False

    def watch(self, timeout_s: float) -> Watch:
        """Start watching a call that must end within ``timeout_s``; :meth:`Watch.end` it when it does."""
        deadline = time.monotonic() + timeout_s
        watch = Watch(deadline, self._lock, self._owners)
        with self._lock:
            if self._closed:
                return watch  # never fires: the owner's calls fail on their own once it is closed
            heap = self._heap
            if len(heap) >= self._compact_at:
                self._drop_ended()
            heapq.heappush(heap, (deadline, next(self._order), watch))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            elif self._heap[0][2] is watch:
                self._wake.notify()  # earlier than what the thread sleeps towards
        return watch

    def _drop_ended(self) -> None:
        """With the lock held: drop every ended call from the heap (in place: the thread holds the list), and
        wait until the heap doubles again before the next sweep, so each push pays O(1) amortised."""
        heap = self._heap
        heap[:] = [entry for entry in heap if not entry[2]._ended]
        heapq.heapify(heap)
        self._compact_at = max(_COMPACT_FROM, 2 * len(heap))

    def close(self) -> None:
        """Stop the thread, and end the calls still running at once (their owner is closing: none may outlive
        it, and none is left without its time limit). Idempotent."""
        with self._lock:
            self._closed = True
            for _, _, watch in self._heap:
                watch._fire()
            self._heap.clear()
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_STOP_JOIN_S)

    def forget(self) -> None:
        """In a forked child: the thread is the parent's and does not run here; stop accepting watches."""
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._heap = []
        self._owners = {}
        self._compact_at = _COMPACT_FROM
        self._thread = None
        self._closed = True

    @property
    def watched(self) -> int:
        """Entries in the heap, ended ones not yet dropped included (for tests and status)."""
        with self._lock:
            return len(self._heap)

    def _run(self) -> None:
        heap = self._heap
        with self._lock:
            while not self._closed:
                now = time.monotonic()
                while heap and (heap[0][2]._ended or heap[0][0] <= now):
                    heapq.heappop(heap)[2]._fire()
                if heap:
                    self._wake.wait(heap[0][0] - now)
                else:
                    self._wake.wait()


def _shut(sock: Any) -> None:
    # The plain socket's shutdown, also for a TLS socket: SSLSocket.shutdown would drop its SSL object
    # under the thread reading from it. Both directions, so a blocked send ends as well as a blocked read.
    try:
        if isinstance(sock, socket.socket):
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        else:  # a TLS-in-TLS transport (through an HTTPS proxy) has its own
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # closed already, or never connected: nothing to end
        pass
    except Exception:  # never let one odd socket stop the watchdog's thread
        logger.exception("could not shut down the socket of a call past its deadline")
