"""What a version's run costs, measured at load and corrected from the runs it makes.

The cost per run, ``fixed_s + per_row_s * rows``, picks the batcher's rules: its fixed part is the automatic
wait for companions and decides whether overlapping callers of a quick model run as they come
(``OVERLAP_BELOW_S``); the whole cost says which runs an event loop may make itself. A load times a few runs
of made-up rows, once, and on a busy host those few timings are noise: beside two busy loops, a test model
whose fixed cost is about 1.3 ms read 0.08-1.41 ms over eight loads, three of them under the quick models'
line. The cost was then kept for the version's life, and a hot reload under traffic, when the host is busiest,
was the likeliest moment to draw a wrong one.

So the load's probe takes the quickest of alternated runs (load only ever slows a run), and every batch the
version's workers (or an event loop's thread) run is a measurement too: :class:`RunCostLearner` keeps the
quickest run seen of each row count over the recent runs, and refits the cost from them every
``REFIT_EVERY_RUNS`` runs, at most once every ``REFIT_INTERVAL_S``. Hundreds of runs of many sizes say
more than ten at load.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

from ._flush_policy import RunCost

__all__ = [
    "GENERATION_RUNS",
    "RAISE_ABOVE",
    "REFIT_EVERY_RUNS",
    "REFIT_INTERVAL_S",
    "SEEN_AT_LEAST",
    "RunCostLearner",
    "fit_run_cost",
    "probe_run_cost",
]

PROBE_PAIRS = 5  # alternated runs of 1 and of a few rows, timed at load (one pair for a slow model)
REFIT_EVERY_RUNS = 64  # the learner refits the cost this often
REFIT_INTERVAL_S = 1.0  # ... and at most this often: a refit's work grows with the batch sizes seen
GENERATION_RUNS = 1024  # the quickest runs are kept over the last one to two generations of this many runs
SEEN_AT_LEAST = 16  # runs of a row count before its quickest is taken as its cost
RAISE_ABOVE = 1.5  # a cost is raised to the runs only once every row count seen often ran this much slower


def probe_run_cost(run_one: Callable[[], object], run_many: Callable[[], object], rows: int) -> RunCost:
    """Split a run's cost into a fixed and a per-row part from alternated runs of 1 row (``run_one``) and of
    ``rows`` rows (``run_many``): the quickest of each. Alternated, a stall of the host slows one pair, not
    every run of one size; and the quickest, not the median, is what the run costs where nothing else runs.
    The first pair (also the one that sizes the session's memory for both shapes) is not counted. Errors of
    the runs propagate."""

    def timed(run: Callable[[], object]) -> float:
        start = time.perf_counter()
        run()
        return time.perf_counter() - start

    first = timed(run_one) + timed(run_many)
    pairs = PROBE_PAIRS if first < 0.05 else 1  # keep the load of a slow model short
    one = many = math.inf
    for _ in range(pairs):
        one = min(one, timed(run_one))
        many = min(many, timed(run_many))
    return fit_run_cost({1: one, rows: many}) or RunCost(fixed_s=one, per_row_s=0.0)


def fit_run_cost(quickest: dict[int, float]) -> RunCost | None:
    """The cost line under the quickest runs by row count: its slope is the median of the slopes from the
    smallest row count to each larger one, so one row count whose quickest run was slowed (all its runs made
    while the host was busy) does not tilt it. ``None`` unless the row counts span a factor of two or more:
    a line through nearby counts only (14 and 15 rows, as a steady loop of callers makes) multiplies their
    noise by 14 where it meets zero rows, its fixed part."""
    if len(quickest) < 2:
        return None
    low = min(quickest)
    if max(quickest) < 2 * low:
        return None
    base = quickest[low]
    slopes = [(seconds - base) / (rows - low) for rows, seconds in quickest.items() if rows != low]
    per_row = max(0.0, statistics.median(slopes))
    return RunCost(fixed_s=max(0.0, base - per_row * low), per_row_s=per_row)


class RunCostLearner:
    """Learns a version's run cost from the batches it runs.

    Keeps the quickest run of each row count, and how many were seen, over the last one to two generations
    of ``GENERATION_RUNS`` runs (recent: a host that became busier for good, or inputs that cost more than the
    probe's zeros, show in the cost within two generations). Every ``REFIT_EVERY_RUNS`` runs it refits the
    cost from the row counts seen ``SEEN_AT_LEAST`` times or more: the quickest of a few runs is hardly quicker
    than any (in a steady loop of 8 callers, batches of 14 rows, seen 3 times, read 3.6 ms at their quickest
    and batches of 15, seen 1,018 times, 2.5 ms). Until such runs span enough row counts, the cost in use
    stands, scaled to the runs (:func:`_scaled_to_runs`): lowered where a run was quicker than it says, raised
    where every row count seen often ran well slower.

    Not thread-safe: its owner (the batcher) calls it with its lock held. :meth:`observe` is on a worker's
    path after every batch: a counter, a dictionary read and a list update.
    """

    __slots__ = ("_current", "_previous", "_runs", "lines", "refits")

    def __init__(self) -> None:
        # rows -> [the quickest run's seconds, runs seen], this generation and the one before
        self._current: dict[int, list[float]] = {}
        self._previous: dict[int, list[float]] = {}
        self._runs = 0
        self.refits = 0  # how many refits gave a cost
        self.lines = 0  # how many of them fitted a line (the others lowered the cost in use under the runs)

    def observe(self, rows: int, seconds: float) -> bool:
        """A run of ``rows`` rows took ``seconds`` (a whole batch in one run, and it succeeded). Returns
        whether the cost is due a refit (:meth:`refit`)."""
        seen = self._current.get(rows)
        if seen is None:
            self._current[rows] = [seconds, 1.0]
        else:
            seen[1] += 1.0
            if seconds < seen[0]:
                seen[0] = seconds
        runs = self._runs = self._runs + 1
        if runs % REFIT_EVERY_RUNS:
            return False
        if runs % GENERATION_RUNS == 0:
            self._previous, self._current = self._current, {}
        return True

    def refit(self, cost: RunCost) -> RunCost | None:
        """The cost the recent runs show, from ``cost`` (the one in use), or ``None`` when they show nothing
        new: a line fitted to the row counts seen ``SEEN_AT_LEAST`` times if they span enough
        (:func:`fit_run_cost`), lowered under every quickest run seen if it is above one (a run of ``rows``
        rows costs at most its quickest, the fixed part included, however few were seen); else ``cost``
        scaled to the runs (:func:`_scaled_to_runs`)."""
        current, previous = self._current, self._previous
        quickest: dict[int, float] = {}
        often: dict[int, float] = {}
        for rows in current.keys() | previous.keys():
            now, before = current.get(rows), previous.get(rows)
            seconds = quickest[rows] = min(now[0] if now else math.inf, before[0] if before else math.inf)
            if (now[1] if now else 0.0) + (before[1] if before else 0.0) >= SEEN_AT_LEAST:
                often[rows] = seconds
        fitted = fit_run_cost(often)
        learned = (_under(fitted, quickest) or fitted) if fitted is not None else _scaled_to_runs(cost, quickest, often)
        if learned is not None:
            self.refits += 1
            self.lines += fitted is not None
        return learned


def _scaled_to_runs(cost: RunCost, quickest: dict[int, float], often: dict[int, float]) -> RunCost | None:
    """``cost`` scaled to the runs when no line can be drawn, its split kept (which part was wrong, runs of
    one row count cannot tell), or ``None`` when it fits them: lowered under every quickest run;
    or, when every row count seen ``often`` ran at least ``RAISE_ABOVE`` times slower than it says, raised as
    far as the quickest runs allow. The quickest of many runs is what a run costs: a cost below it was misread
    (a model read at load as quicker than it is, whose event loop then runs every request itself, one row
    each, blocking for as long as each really takes) or the host got busier for good."""
    scale = _room(cost, quickest)
    if scale >= 1.0 and (not often or _room(cost, often) < RAISE_ABOVE):
        return None
    return _scaled(cost, scale)


def _under(cost: RunCost, quickest: dict[int, float]) -> RunCost | None:
    """``cost`` scaled down to pass under every run of ``quickest``, or ``None`` when it does already. Which of
    its parts was too high a bound cannot tell: both shrink alike."""
    scale = _room(cost, quickest)
    return None if scale >= 1.0 else _scaled(cost, scale)


def _room(cost: RunCost, runs: dict[int, float]) -> float:
    """The most ``cost`` may be scaled by and stay under every run of ``runs`` (seconds by row count)."""
    return min(
        (seconds / max(cost.fixed_s + cost.per_row_s * rows, 1e-9) for rows, seconds in runs.items()), default=math.inf
    )


def _scaled(cost: RunCost, scale: float) -> RunCost:
    return RunCost(fixed_s=cost.fixed_s * scale, per_row_s=cost.per_row_s * scale)
