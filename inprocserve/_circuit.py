"""A circuit breaker: stop calling a remote server that keeps failing, and probe it again after a cool-off.

Without one, every request to a server that is down waits for its connect timeout (or its whole deadline)
before failing, and the web threads pile up behind it. With it, after ``failure_threshold`` consecutive
failures the circuit *opens*: calls fail at once for ``cooloff_s``. Then it is *half-open*: one call goes
through as a probe; its success closes the circuit, its failure opens it for another cool-off.

Pure state under one lock, no I/O and no threads; time comes from the injectable ``clock``, so tests step a
:class:`~inprocserve.testing.ManualClock` instead of sleeping.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

__all__ = ["CircuitBreaker", "CircuitState", "Ticket"]

CircuitState = Literal["closed", "open", "half_open"]
Ticket = Literal["call", "probe"] | None
"""What :meth:`CircuitBreaker.acquire` grants: an ordinary call, the half-open circuit's one probe, or nothing."""


class CircuitBreaker:
    """Counts consecutive failures of calls to one remote endpoint and decides whether the next may go.

    Thread-safe: every method takes the breaker's lock for a few field updates only.

    Args:
        failure_threshold: Consecutive failures that open the circuit (>= 1).
        cooloff_s: How long an open circuit fails calls at once before it lets a probe through (> 0).
        clock: Monotonic seconds (``time.monotonic``; a ``ManualClock`` in tests).
        on_open: Called (outside the lock) each time the circuit opens, with the consecutive failures: at the
            threshold, and again after each failed probe.
        on_close: Called (outside the lock) when a success closes an open circuit.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        cooloff_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        on_open: Callable[[int], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        if isinstance(failure_threshold, bool) or not isinstance(failure_threshold, int) or failure_threshold < 1:
            raise ValueError(f"failure_threshold must be an int >= 1, got {failure_threshold!r}")
        if not cooloff_s > 0:
            raise ValueError(f"cooloff_s must be > 0, got {cooloff_s!r}")
        self._threshold = failure_threshold
        self._cooloff_s = float(cooloff_s)
        self._clock = clock
        self._lock = threading.Lock()
        self._failures = 0
        self._opened_at: float | None = None
        self._probing = False
        self._probe_owner: int | None = None  # the thread holding the probe: only its report ends the probe
        self._opened_count = 0
        self._on_open = on_open
        self._on_close = on_close

    def acquire(self) -> Ticket:
        """Whether a call may go now: ``"call"`` (closed), ``"probe"`` or ``None`` (fail fast). In the half-open
        state only one caller gets ``"probe"`` until it reports back with :meth:`success`, :meth:`failure` or
        :meth:`release`; whoever holds a probe must report back, even when the call dies of something else."""
        with self._lock:
            if self._opened_at is None:
                return "call"
            if self._clock() - self._opened_at < self._cooloff_s or self._probing:
                return None
            self._probing = True
            self._probe_owner = threading.get_ident()
            return "probe"

    def _holds_probe(self) -> bool:
        """Whether this thread holds the probe (a call granted before the circuit opened, ending now on
        another thread, must not end the probe or count as its verdict). Call with the lock held."""
        return self._probing and self._probe_owner == threading.get_ident()

    def release(self) -> None:
        """The acquired call ended without saying anything about the server's health (the caller's own
        deadline, a bad request): let the next call probe instead."""
        with self._lock:
            if self._holds_probe():
                self._probing = False

    def success(self) -> None:
        """The server answered: close the circuit and forget earlier failures."""
        with self._lock:
            closed = self._opened_at is not None
            self._failures = 0
            self._opened_at = None
            self._probing = False
        if closed and self._on_close is not None:
            self._on_close()

    def failure(self) -> None:
        """The server could not answer. Opens the circuit at the threshold, or again after a failed probe."""
        with self._lock:
            self._failures += 1
            failures = self._failures
            probe = self._holds_probe()
            opened = probe or (self._opened_at is None and self._failures >= self._threshold)
            if opened:
                self._opened_at = self._clock()
                self._opened_count += 1
            if probe:
                self._probing = False
        if opened and self._on_open is not None:
            self._on_open(failures)

    @property
    def state(self) -> CircuitState:
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "open" if self._clock() - self._opened_at < self._cooloff_s else "half_open"

    def retry_in_s(self) -> float:
        """Seconds until an open circuit lets a probe through (0 when closed or half-open)."""
        with self._lock:
            if self._opened_at is None:
                return 0.0
            return max(0.0, self._cooloff_s - (self._clock() - self._opened_at))

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    @property
    def times_opened(self) -> int:
        """How often the circuit has opened since this breaker was made."""
        with self._lock:
            return self._opened_count
