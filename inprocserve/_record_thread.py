"""The thread that records request durations for the request path (see :class:`RecordingThread`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from . import _fork

__all__ = ["RecordingThread"]

_log = logging.getLogger(__name__)


class RecordingThread:
    """Runs ``record`` (record every pending duration) on a thread of its own, when woken.

    The OpenTelemetry SDK spends several microseconds of Python per metric record, and a request's thread
    that records its own duration pays them on the request path. With this thread, it appends the duration
    to its version's pending queue and returns; every ``wake_every``-th pending duration wakes the thread,
    which records the whole backlog in one go (one wake per many requests, never one per request). The
    thread records with the GIL while request threads wait in ``session.run`` without it, and back to back,
    with the SDK's code and data warm in the CPU's caches.

    The thread starts on the first :meth:`wake` after :meth:`open` (so only once requests are recorded
    with an SDK installed), and :meth:`close` stops and joins it after a last ``record``. A forked child
    starts its own on its first wake (the parent's does not exist there).

    Thread-safe.

    Args:
        record: Records what is pending; called on this thread (its exceptions are logged, not raised).
        name: The thread's name.
    """

    def __init__(self, record: Callable[[], None], *, name: str) -> None:
        self._record = record
        self._name = name
        self._reset()
        _fork.register(self)

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._open = 0  # how many users (servers) want the thread; none: wake() refuses
        self._closing = False

    def _after_fork_in_child(self) -> None:
        opened = self._open  # the child's servers are the parent's: still open, their thread not yet made
        self._reset()
        self._open = opened

    def open(self) -> None:
        """One more user (a server): from now on :meth:`wake` starts the thread if it is not running."""
        with self._lock:
            self._open += 1

    def close(self, timeout_s: float | None = 10.0) -> None:
        """One user fewer; when it was the last, stop the thread (it records what is pending first) and join
        it, up to ``timeout_s``. Idempotent once no user is left."""
        with self._lock:
            self._open = max(0, self._open - 1)
            if self._open or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._closing = True
            self._wake.set()
        thread.join(timeout_s)
        if thread.is_alive():  # still recording (a stuck exporter?): no second one starts until it ends
            _log.warning("the metric recording thread did not stop within %s s", timeout_s)
            return
        with self._lock:
            self._closing = False

    def wake(self) -> bool:
        """Have the thread record what is pending (starting it if needed); False when it cannot: no user is
        open, or the interpreter is shutting down. The caller then records itself."""
        thread = self._thread
        if thread is None:
            with self._lock:
                if not self._open or self._closing:
                    return False
                if self._thread is None:
                    thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                    try:
                        thread.start()
                    except RuntimeError:  # at interpreter shutdown no thread can start
                        return False
                    self._thread = thread
        self._wake.set()
        return True

    @property
    def running(self) -> bool:
        """Whether the thread is started and not closed."""
        return self._thread is not None

    def _run(self) -> None:
        wake = self._wake
        while True:
            wake.wait()
            wake.clear()
            closing = self._closing
            try:
                self._record()
            except Exception:  # an SDK that fails must not stop the recording of the next requests
                _log.exception("recording request durations failed")
            if closing:
                with self._lock:  # a close that stopped waiting for it left this to the thread
                    self._closing = False
                return
