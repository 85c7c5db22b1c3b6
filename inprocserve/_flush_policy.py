"""When a free worker runs what is queued: the batcher's flush policy, pure and clock-steppable.

* **Idle: run now.** A request that finds a runner free and nothing queued runs at once — unless recent
  traffic showed more concurrent rows than it brings and waiting for them is worth it.
* **Callers of a quick model that overlap are not merged.** For a model whose fixed cost per run is under
  ``OVERLAP_BELOW_S`` (what a caller's own work between two requests costs, its Python and a thread
  hand-off, on the machines measured), while the requests arriving recently found, on average, at most one
  caller's request more in flight than the version has runners (their own included): each caller's own
  work then overlaps another caller's run, so a runner is seldom idle for long, and waiting to merge their
  requests would make each wait for the others' work instead, to save a fixed cost smaller than that work
  (``benchmarks/batch_delay.py``). Their requests run as they come. An average, not a peak: requests of
  light traffic from many threads meet now and then, and waiting for a companion each time made them
  slower for nothing. A model that computes longer is merged as before: a second caller's run saves a
  fixed cost far larger than any overlap.
* **Wait only for companions that are coming.** Right after a batch returns, its callers come back one by
  one (each needs the GIL). Running the first alone would pay the model's fixed cost per run for one row,
  and the rest would form a second, ragged batch. So while recent traffic showed more concurrent rows than
  are queued, a free worker waits for them — at most ``max_delay_s`` (by default the model's fixed cost per
  run, measured at load) — and stops waiting the moment they are there. A lone caller never waits: the
  recent concurrency it sees is its own request.
* **A wait that costs is started only while companions come.** A recent peak of concurrent rows promises
  companions when callers answered together come back together (a closed loop, a cohort); arrivals that
  are independent of each other (light traffic from many clients) make peaks too, and a request that waited
  for a companion there waited the whole delay in vain (mlp-large at 50 requests a second: a p50 of 9.35 ms
  against 7.30 ms checked, ``benchmarks/results/batch_delay-mlp-large.md``). So each time the policy would
  wait with a runner free, the next arrival tells whether a companion came within ``delay_s`` (whether or
  not the wait was made), and a wait of ``CHECKED_WAIT_S`` or longer is made only while such companions came
  at least as often as not, over the recent windows. A shorter wait (a quick model's automatic one) costs
  less in vain than this bookkeeping would save and is left to the overlap rule above.
* **Recent concurrency** is the peak of rows queued or running, the mean of callers' requests in flight
  that arriving requests found, and whether companions came, over the last one or two windows of
  ``CONCURRENCY_WINDOW_S``.

No threads, locks or I/O here: the batcher calls it with its own lock held, and tests step a manual clock
through its decisions.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._config import BatchingConfig

__all__ = ["CHECKED_WAIT_S", "CONCURRENCY_WINDOW_S", "OVERLAP_BELOW_S", "FlushPolicy", "RunCost", "automatic_delay_s"]

CONCURRENCY_WINDOW_S = 0.25  # recent concurrency = the peak over the last one or two such windows
AUTO_DELAY_CAP_S = 0.005  # the automatic wait for companions never exceeds this
OVERLAP_BELOW_S = 0.0002  # a fixed cost per run under this: callers that overlap run as they come
CHECKED_WAIT_S = 0.0002  # a wait for companions this long or longer is made only while companions come


@dataclass(frozen=True, slots=True)
class RunCost:
    """A model's measured cost per run: ``fixed_s + per_row_s * rows``."""

    fixed_s: float
    per_row_s: float
    row_elements: Mapping[str, int] | None = None
    """For a model with a dynamic axis besides the batch axis (a sequence length), the elements of one row of
    each input as measured (every dynamic axis of size 1): a request's rows count as many measured rows as
    its largest input holds elements for (see :meth:`rows_of`). ``None``: a row is a row."""

    def rows_of(self, rows: int, arrays: Mapping[str, Any] | None) -> float:
        """How many measured rows ``rows`` rows of ``arrays`` amount to (``inf`` when they cannot be told)."""
        measured = self.row_elements
        if measured is None:
            return rows
        if arrays is None:
            return math.inf
        return max(
            (getattr(array, "size", 0) / max(measured.get(name, 1), 1) for name, array in arrays.items()), default=rows
        )


def automatic_delay_s(config: BatchingConfig, *, merge: bool, run_cost: RunCost | None) -> float:
    """The longest wait for companions: ``max_delay_s`` if configured, else the model's fixed cost per run
    (capped): waiting longer than a second run would cost cannot pay. Never any without merging.

    Not weighed against a thread hand-off measured at start-up, as it was: that probe read 2.7-3.1 µs in
    four processes of six and 25 µs in the other two on one machine, so mlp-small (a fixed cost of 24-74 µs,
    against four hand-offs) waited in some processes and never in others, and a process's throughput at 64
    callers depended on which it drew. Whether waiting pays at all is the concurrency's question
    (:meth:`FlushPolicy.overlapping`), asked anew every window."""
    if not merge:
        return 0.0
    if config.max_delay_s is not None:
        return config.max_delay_s
    if run_cost is not None:
        return min(run_cost.fixed_s, AUTO_DELAY_CAP_S)
    return 0.0


class FlushPolicy:
    """Decides whether a request runs now and how long a free worker waits for companions.

    Not thread-safe: its owner (the batcher) calls it with its lock held.

    Args:
        max_rows: The most rows one run takes (1 when requests are not merged).
        delay_s: The longest wait for companions (0: never wait).
        preferred_batch_sizes: Batch sizes worth waiting for, smallest first (empty: the recent peak).
        runners: How many runs the version makes at once (its backend's concurrency).
        overlap: Whether callers that overlap run as they come (a quick model's: see the module's docstring).
        clock: A monotonic clock.
    """

    __slots__ = (
        "_arrivals",
        "_callers_seen",
        "_came",
        "_clock",
        "_missed",
        "_previous_arrivals",
        "_previous_callers_seen",
        "_previous_came",
        "_previous_missed",
        "_previous_peak",
        "_wanted_at",
        "_window_peak",
        "_window_start",
        "delay_s",
        "max_rows",
        "overlap",
        "preferred",
        "runners",
    )

    def __init__(
        self,
        *,
        max_rows: int,
        delay_s: float,
        preferred_batch_sizes: Sequence[int] = (),
        runners: int = 1,
        overlap: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_rows = max_rows
        self.delay_s = delay_s
        self.preferred = tuple(sorted(preferred_batch_sizes))
        self.runners = runners
        self.overlap = overlap
        self._clock = clock
        self._window_start = clock()
        self.reset()

    def reset(self) -> None:
        """Forget recent traffic (a forked child starts afresh)."""
        self._window_start = self._clock()
        self._window_peak = self._previous_peak = 0
        self._callers_seen = self._arrivals = self._previous_callers_seen = self._previous_arrivals = 0
        # whether companions came within delay_s of a moment the policy would have waited for them
        self._came = self._missed = self._previous_came = self._previous_missed = 0
        self._wanted_at = -1.0  # the last such moment, until the next arrival tells (-1: none pending)

    def disable_merging(self) -> None:
        """One request per run from now on: nothing to wait for."""
        self.max_rows = 1
        self.delay_s = 0.0

    def now(self) -> float:
        return self._clock()

    def arrive(self, active_rows: int, rows: int, callers: int, *, idle: bool = True) -> bool:
        """A request of ``rows`` rows arrived, making ``active_rows`` queued or running and ``callers`` callers'
        requests in flight (its own included). Returns whether it may run at once on an idle runner (nothing
        recent suggests companions worth waiting for). ``idle``: a runner is free and nothing is queued, so
        that a wait for companions would be this request's (a request queued behind a busy runner waits for
        the runner, not for companions: whether any came after it says nothing about waiting)."""
        now = self._clock()
        if now - self._window_start > CONCURRENCY_WINDOW_S:
            self._roll(now, active_rows)
        elif active_rows > self._window_peak:
            self._window_peak = active_rows
        self._callers_seen += callers
        self._arrivals += 1
        if self._wanted_at >= 0.0:  # the policy wanted companions: did one come within the delay?
            if now - self._wanted_at <= self.delay_s:
                self._came += 1
            else:
                self._missed += 1
            self._wanted_at = -1.0
        if not self.delay_s:
            return True
        peak = self._window_peak if self._window_peak > self._previous_peak else self._previous_peak
        if rows >= (peak if peak < self.max_rows else self.max_rows) or self.overlapping():  # (target_rows, inline)
            return True
        if idle:
            self._wanted_at = now
        return not self.companions_come()

    def withdraw(self, callers: int) -> None:
        """Uncount the arrival just counted (``callers`` in flight), which arrives again another way (the owner
        calls this under the lock it held for :meth:`arrive`)."""
        self._callers_seen -= callers
        self._arrivals -= 1
        self._wanted_at = -1.0  # (its own wish for companions, if any, is its arrival's again)

    def companions_come(self) -> bool:
        """Whether a wait for companions is worth making: one shorter than ``CHECKED_WAIT_S`` always is; a
        longer one while, over the recent windows, a companion came within ``delay_s`` of the moments the
        policy wanted one at least as often as not (or nothing is known yet)."""
        if self.delay_s < CHECKED_WAIT_S:
            return True
        return self._came + self._previous_came >= self._missed + self._previous_missed

    def overlapping(self) -> bool:
        """Whether callers overlap (see ``overlap``): the requests that arrived recently found, on average, at
        most one caller's request more in flight than runners. They run as they come."""
        if not self.overlap:
            return False
        seen = self._callers_seen + self._previous_callers_seen
        return seen <= (self.runners + 1) * (self._arrivals + self._previous_arrivals)

    def _roll(self, now: float, active_rows: int) -> None:
        """Open a new window at ``now`` (``active_rows`` queued or running), the current one becoming the
        previous; or, a whole quiet window or more after the current one ended, forgetting it too: a burst
        long past is not recent traffic. (Kept as the previous window whatever the gap, a burst seconds or
        hours ago held the next lone request for companions for up to ``delay_s``.)"""
        if now - self._window_start > 2 * CONCURRENCY_WINDOW_S:
            self._previous_peak = self._previous_callers_seen = self._previous_arrivals = 0
            self._previous_came = self._previous_missed = 0
            self._wanted_at = -1.0  # (a wish for companions before the quiet is no miss of the new traffic)
        else:
            self._previous_peak = self._window_peak
            self._previous_callers_seen = self._callers_seen
            self._previous_arrivals = self._arrivals
            self._previous_came, self._previous_missed = self._came, self._missed
        self._window_peak = active_rows
        self._callers_seen = self._arrivals = self._came = self._missed = 0
        self._window_start = now

    def roll(self, active_rows: int) -> float:
        """Start a new window if the current one is over (``active_rows`` opens it). Returns the time."""
        now = self._clock()
        if now - self._window_start > CONCURRENCY_WINDOW_S:
            self._roll(now, active_rows)
        return now

    def target_rows(self) -> int:
        """Rows worth waiting for: the recent peak of concurrent rows, capped by the batch size."""
        peak = self._window_peak if self._window_peak > self._previous_peak else self._previous_peak
        return peak if peak < self.max_rows else self.max_rows

    def wait_s(
        self, *, queued_rows: int, oldest_enqueued_at: float, ready_at: float, active_rows: int
    ) -> tuple[float, int]:
        """How long a worker, free since ``ready_at``, should wait for companions before running the
        ``queued_rows`` rows queued (the oldest since ``oldest_enqueued_at``), and the row count that ends the
        wait early. A wait of 0 or less: run now.

        The wait lasts at most ``delay_s`` after the later of the oldest request's arrival and the moment the
        worker became free: time spent queued behind a busy runner is not time spent waiting for companions.
        """
        if not self.delay_s:
            return 0.0, queued_rows
        now = self.roll(active_rows)
        if self.overlapping():
            return 0.0, queued_rows
        target = self.target_rows()
        if self.preferred:
            # a preferred size ends a wait early; it never makes one that recent traffic does not promise (a
            # lone request queued while idle waited the whole delay_s for the first preferred size)
            ends_at = min([size for size in self.preferred if size >= queued_rows] or [target])
            target = ends_at if ends_at < target else target
        if queued_rows >= target:
            return 0.0, target
        self._wanted_at = now
        if not self.companions_come():
            return 0.0, queued_rows
        start = oldest_enqueued_at if oldest_enqueued_at > ready_at else ready_at
        return start + self.delay_s - now, target
