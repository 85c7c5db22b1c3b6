"""A version's run cost: the load's probe, and the cost learned from the batches its workers run.

The cost picks the batcher's rules (the quick models' no-merge rule below 200 µs of fixed cost, the automatic
wait for companions), so a cost measured wrong at load, on a busy host, must not be kept for the version's
life.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import BatchingConfig, InferenceError, ModelConfig, _batching
from inprocserve._flush_policy import AUTO_DELAY_CAP_S, OVERLAP_BELOW_S, RunCost
from inprocserve._loop_batching import RUN_ON_LOOP_UNDER_S
from inprocserve._model import ModelVersion
from inprocserve._run_cost import (
    GENERATION_RUNS,
    RAISE_ABOVE,
    REFIT_EVERY_RUNS,
    REFIT_INTERVAL_S,
    SEEN_AT_LEAST,
    RunCostLearner,
    fit_run_cost,
    probe_run_cost,
)
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import ServerFactory, busy_inputs, run_threads, version_status


@pytest.fixture(autouse=True)
def refit_at_every_chance(monkeypatch: pytest.MonkeyPatch) -> None:
    """A version refits its cost at most once a second (``REFIT_INTERVAL_S``); these tests' traffic would
    wait seconds for the refits it needs. The interval itself is tested with a manual clock below."""
    monkeypatch.setattr(_batching, "REFIT_INTERVAL_S", 0.0)


def line(fixed_s: float, per_row_s: float, rows: range) -> dict[int, float]:
    return {count: fixed_s + per_row_s * count for count in rows}


def test_the_cost_line_is_fitted_under_the_quickest_runs() -> None:
    cost = fit_run_cost(line(0.001, 0.0002, range(1, 9)))
    assert cost is not None
    assert cost.fixed_s == pytest.approx(0.001)
    assert cost.per_row_s == pytest.approx(0.0002)


def test_one_row_count_whose_runs_were_all_slowed_does_not_tilt_the_line() -> None:
    """Eight rows run only while the host was busy: with two row counts the line would pass through them
    (a fixed cost of 0, a quick model's); the median slope over the others does not."""
    quickest = line(0.001, 0.0002, range(1, 9))
    quickest[8] += 0.010
    cost = fit_run_cost(quickest)
    assert cost is not None
    assert cost.fixed_s == pytest.approx(0.001)
    two = fit_run_cost({1: quickest[1], 8: quickest[8]})
    assert two is not None and two.fixed_s == 0.0


def test_a_line_needs_row_counts_that_span_a_factor_of_two_and_never_goes_below_zero() -> None:
    assert fit_run_cost({4: 0.002}) is None
    # a steady loop of 8 callers: batches of 14 and 15 rows; 0.2 ms of noise between them would read as a
    # fixed cost of 0 or of 3 ms
    assert fit_run_cost({14: 0.0036, 15: 0.0025}) is None
    cost = fit_run_cost({1: 0.003, 2: 0.001})  # quicker with more rows: noise, not a negative cost
    assert cost == RunCost(fixed_s=0.003, per_row_s=0.0)


PROBED = RunCost(fixed_s=0.001, per_row_s=0.0001)  # what the load's probe read, in the tests below


def observe(learner: RunCostLearner, costs: dict[int, float], runs: int) -> list[RunCost | None]:
    """Feed ``runs`` runs cycling through ``costs``' row counts; return each refit's answer."""
    counts = list(costs)
    fitted = []
    for index in range(runs):
        rows = counts[index % len(counts)]
        if learner.observe(rows, costs[rows]):
            fitted.append(learner.refit(PROBED))
    return fitted


def test_the_learner_refits_every_so_many_runs_once_two_row_counts_were_seen_often_enough() -> None:
    learner = RunCostLearner()
    assert observe(learner, {1: 0.0012}, REFIT_EVERY_RUNS) == [None]  # one row count, as slow as probed
    # a second row count, seen fewer than SEEN_AT_LEAST times: not yet
    for _ in range(SEEN_AT_LEAST - 1):
        learner.observe(4, 0.0018)
    assert learner.refit(PROBED) is None and learner.refits == 0
    fitted = observe(learner, line(0.001, 0.0002, range(1, 5)), REFIT_EVERY_RUNS)
    assert len(fitted) == 1 and fitted[0] is not None
    assert fitted[0].fixed_s == pytest.approx(0.001) and fitted[0].per_row_s == pytest.approx(0.0002)
    assert (learner.refits, learner.lines) == (1, 1)


def test_a_steady_loop_of_callers_lowers_the_cost_under_its_batches_and_keeps_its_split() -> None:
    """Batches of 15 rows, nearly all, and a few of other sizes, each seen too seldom to fit a line from:
    the cost in use, above them, is scaled down under the quickest; a line is never drawn from the few."""
    learner = RunCostLearner()
    for index in range(REFIT_EVERY_RUNS):
        rows = (5, 10, 13)[index] if index < 3 else 15
        seconds = {5: 0.0028, 10: 0.0033, 13: 0.0068, 15: 0.0030}[rows]
        if learner.observe(rows, seconds):
            cost = learner.refit(RunCost(fixed_s=0.0024, per_row_s=0.0002))  # 5.4 ms for 15 rows
    assert cost is not None
    assert cost.fixed_s + 15 * cost.per_row_s == pytest.approx(0.0030)  # (under the quickest of 15 rows)
    assert cost.fixed_s / cost.per_row_s == pytest.approx(0.0024 / 0.0002)


def test_runs_of_one_row_count_lower_a_cost_probed_too_high() -> None:
    """Eight callers in a steady loop make batches of eight rows, every one: no line can be drawn, but a
    quick model's 36 µs runs of eight rows bound its fixed cost, read as 2 ms at load."""
    learner = RunCostLearner()
    for _ in range(REFIT_EVERY_RUNS - 1):
        assert not learner.observe(8, 0.000036)
    assert learner.observe(8, 0.000036)
    cost = learner.refit(RunCost(fixed_s=0.002, per_row_s=0.0))
    assert cost == RunCost(fixed_s=pytest.approx(0.000036), per_row_s=0.0)
    assert (learner.refits, learner.lines) == (1, 0)  # (status: "load, scaled to runs")
    assert learner.refit(RunCost(fixed_s=0.00002, per_row_s=0.000001)) is None  # under the runs already


def test_runs_of_one_row_count_well_slower_than_the_cost_raise_it_as_far_as_the_quickest_runs_allow() -> None:
    """A model read at load as quicker than it is, under traffic of one row count (an event loop's lone
    requests, one row each): no line can be drawn, but the quickest of many runs is what a run costs. The
    cost is raised to it, its split kept, never above a run seen (of any row count, however seldom)."""
    learner = RunCostLearner()
    probed = RunCost(fixed_s=0.00001, per_row_s=0.000001)  # 11 µs for one row
    for _ in range(REFIT_EVERY_RUNS - 2):
        learner.observe(1, 0.0011)
    learner.observe(3, 0.0012)  # seen once: too seldom to be a cost, still a bound
    assert learner.observe(1, 0.0011)
    cost = learner.refit(probed)
    assert cost is not None
    assert cost.fixed_s + cost.per_row_s * 3 == pytest.approx(0.0012)  # (the bound; one row alone: 1.1 ms)
    assert cost.fixed_s / cost.per_row_s == pytest.approx(10)
    assert (learner.refits, learner.lines) == (1, 0)
    assert learner.refit(cost) is None  # fits the runs now: no refit moves it again


def test_a_cost_close_under_the_runs_or_bounded_only_by_seldom_runs_is_not_raised() -> None:
    learner = RunCostLearner()
    for _ in range(REFIT_EVERY_RUNS):
        learner.observe(1, PROBED.fixed_s * 1.1 + PROBED.per_row_s)  # runs as slow as probed, give or take
    assert learner.refit(PROBED) is None
    seldom = RunCostLearner()
    for rows in range(1, SEEN_AT_LEAST):
        seldom.observe(rows, 0.1)  # each row count seen once: a bound, not a cost
    assert seldom.refit(PROBED) is None
    under = RunCostLearner()
    for _ in range(REFIT_EVERY_RUNS):
        under.observe(2, (PROBED.fixed_s + 2 * PROBED.per_row_s) * RAISE_ABOVE * 0.99)
    assert under.refit(PROBED) is None


def test_the_quickest_runs_are_recent_ones() -> None:
    """Inputs that cost more than the probe's zeros, or a host busier for good: within two generations of
    runs the cost is the one runs have now, not the quickest the version ever made."""
    learner = RunCostLearner()
    observe(learner, line(0.0005, 0.0001, range(1, 9)), REFIT_EVERY_RUNS)
    fitted = observe(learner, line(0.002, 0.0001, range(1, 9)), 2 * GENERATION_RUNS)
    assert fitted[0] is not None and fitted[0].fixed_s == pytest.approx(0.0005)  # (the quicker runs, still recent)
    assert fitted[-1] is not None and fitted[-1].fixed_s == pytest.approx(0.002)


def test_the_probe_takes_the_quickest_of_alternated_runs() -> None:
    """Stalls of the host (here a 20 ms sleep in three of the five timed runs of many rows) are not the cost:
    the quickest run is what a run costs where nothing else runs."""
    calls = {"many": 0}

    def run_many() -> None:
        calls["many"] += 1
        if calls["many"] in (3, 4, 5):
            time.sleep(0.02)

    cost = probe_run_cost(lambda: None, run_many, 8)
    assert calls["many"] == 6  # the first (it sizes the memory), then five alternated with runs of one row
    assert cost.fixed_s + 8 * cost.per_row_s < 0.01


def until_learned(
    batcher: Any, call: Callable[[int], object], most: int = 3000, *, learned: Callable[[], bool] | None = None
) -> Callable[[int], None]:
    """A caller's loop (``call(index)`` each request) until the version learned its run cost from its batches
    (``learned()``, by default :attr:`Batcher.run_cost_learned`), at most ``most`` requests."""
    done = learned or (lambda: batcher.run_cost_learned)

    def caller(index: int) -> None:
        for _ in range(most):
            if done():
                return
            call(index)
        seen = batcher._learner._current  # rows -> [quickest, runs]
        raise AssertionError(f"not learned after {most} requests a caller: {batcher.batches_run} batches, {seen}")

    return caller


def mislead_the_probe(monkeypatch: pytest.MonkeyPatch, *, fixed_s: float, per_row_s: float) -> None:
    """The load's probe reads ``fixed_s + per_row_s * rows``, as a busy host can make it read."""

    def misread(self: ModelVersion, signature: Any, *, batchable: bool) -> RunCost | None:
        return RunCost(fixed_s, per_row_s) if batchable else None

    monkeypatch.setattr(ModelVersion, "_measure_run_cost", misread)


def test_a_model_that_computes_longer_misread_as_quick_at_load_gets_its_rules_from_its_runs(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A hot reload under traffic probes the cost when the host is busiest: the busy model (about 1 ms a
    run) read as a quick one took the quick models' rule, no merging of overlapping callers. Its own
    batches correct it."""
    mislead_the_probe(monkeypatch, fixed_s=0.00001, per_row_s=0.0002)
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))  # adopts the runners
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None and batcher._policy.overlap  # (the probe's rule)
    assert version_status(server, "busy")["run_cost_ms"]["from"] == "load"

    def call(index: int) -> None:
        assert server.predict("busy", busy_inputs(1 + index % 3, index=index))["y"].shape[1] == 512

    # Until the rule changed, not merely until a cost was learned: the first refits, before batches of sizes
    # that span a factor of two were seen often enough to draw a line, may only scale the probe's cost down
    # under the runs, its split (and its quick fixed part) kept.
    assert run_threads(8, until_learned(batcher, call, learned=lambda: not batcher._policy.overlap)) == []
    status = version_status(server, "busy")
    assert status["run_cost_ms"]["from"] == "runs"
    assert status["run_cost_ms"]["fixed"] >= OVERLAP_BELOW_S * 1000, status["run_cost_ms"]
    assert not batcher._policy.overlap
    # (status shows the delay to 3 decimals and the cost to 4: 0.254 for a cost shown as 0.2545, which a relative
    # tolerance of 1e-3 refused)
    assert status["max_delay_ms"] == pytest.approx(
        min(status["run_cost_ms"]["fixed"], AUTO_DELAY_CAP_S * 1000), abs=1e-3
    )


def test_a_quick_model_misread_as_one_that_computes_longer_gets_the_quick_rule_from_its_runs(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    mislead_the_probe(monkeypatch, fixed_s=0.002, per_row_s=0.0)
    server = make_server(repository)
    x = np.ones((1, 4), np.float32)
    server.predict("scale", x)
    batcher = server._registry.routes["scale"].versions[1].batcher
    assert batcher is not None and not batcher._policy.overlap

    def call(index: int) -> None:
        assert server.predict("scale", x)["y"].tolist() == [[2.0] * 4]

    assert run_threads(8, until_learned(batcher, call)) == []
    assert batcher._policy.overlap, version_status(server, "scale")["run_cost_ms"]


def test_a_configured_delay_stays_whatever_the_runs_show(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the cost decides is only what the configuration left to it: a configured ``max_delay_s`` stays."""
    mislead_the_probe(monkeypatch, fixed_s=0.00001, per_row_s=0.0002)
    server = make_server(busy_repository, config=ModelConfig(batching=BatchingConfig(max_delay_s=0.0003)))
    server.predict("busy", busy_inputs(1))
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None

    assert (
        run_threads(8, until_learned(batcher, lambda index: server.predict("busy", busy_inputs(1 + index % 3)))) == []
    )
    assert batcher.run_cost_learned
    assert version_status(server, "busy")["max_delay_ms"] == pytest.approx(0.3)


def test_a_version_its_event_loop_runs_itself_learns_its_run_cost_from_those_runs(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The busy model (about 1 ms a run) read at load as quick enough for an event loop's thread to run: the
    loop then runs every request of its tasks itself, lone ones and its iterations' groups, and no worker runs
    any. Those runs must teach the cost, or every run blocks the loop for the version's life."""
    mislead_the_probe(monkeypatch, fixed_s=0.00001, per_row_s=0.000001)
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None and batcher.runs_within(4, RUN_ON_LOOP_UNDER_S)  # (the probe's rule)

    async def rounds(most: int) -> int:
        """Rounds of 1 to 4 tasks' requests at once (a lone one, or a group) until the loop no longer runs one
        row itself; how many rounds that took."""
        for done in range(most):
            if not batcher.runs_within(1, RUN_ON_LOOP_UNDER_S):
                return done
            tasks = 1 + done % 4
            await asyncio.gather(*(server.apredict("busy", busy_inputs(1, seed=task)) for task in range(tasks)))
        raise AssertionError(f"not learned after {most} rounds: {batcher.batches_run} runs, {batcher.run_cost}")

    rounds_run = asyncio.run(rounds(1000))
    status = version_status(server, "busy")
    assert status["run_cost_ms"]["from"] == "runs"
    assert status["run_cost_ms"]["fixed"] >= OVERLAP_BELOW_S * 1000, (rounds_run, status["run_cost_ms"])


def test_an_event_loops_lone_requests_raise_a_cost_misread_as_quick_and_take_them_off_the_loop(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One task's requests, one row each, on a version read at load as quick enough for its event loop to run:
    every run has one row, so no line can ever be drawn, and a bound only lowers. The quickest of those runs
    (the busy model: about 1 ms) raises the cost, and the loop hands the version's requests to its workers."""
    mislead_the_probe(monkeypatch, fixed_s=0.00001, per_row_s=0.000001)
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None and batcher.runs_within(1, RUN_ON_LOOP_UNDER_S)  # (the probe's rule)

    async def lone_requests(most: int) -> int:
        for done in range(most):
            if not batcher.runs_within(1, RUN_ON_LOOP_UNDER_S):
                return done
            assert (await server.apredict("busy", busy_inputs(1, seed=done)))["y"].shape == (1, 512)
        raise AssertionError(f"not raised after {most} requests: {batcher.run_cost}, {batcher._learner._current}")

    requests = asyncio.run(lone_requests(10 * REFIT_EVERY_RUNS))
    status = version_status(server, "busy")
    assert status["run_cost_ms"]["from"] == "load, scaled to runs", (requests, status["run_cost_ms"])
    assert status["run_cost_ms"]["fixed"] >= OVERLAP_BELOW_S * 1000, status["run_cost_ms"]


def test_a_refit_leaves_a_version_that_stopped_merging_meanwhile_waiting_for_no_companion(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A version stops merging (a request its model cannot merge) without the batcher's lock, so a refit may
    run beside it: the wait the refit sets must not outlive the stop."""
    mislead_the_probe(monkeypatch, fixed_s=0.00001, per_row_s=0.0002)
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None and batcher._policy.max_rows > 1
    automatic = _batching.automatic_delay_s

    def stopped_meanwhile(*args: Any, **kwargs: Any) -> float:
        batcher._disable_merging("its rows cannot be merged")  # (lands between the refit's check and its write)
        return automatic(*args, **kwargs)

    monkeypatch.setattr(_batching, "automatic_delay_s", stopped_meanwhile)
    with batcher._lock:
        for index in range(REFIT_EVERY_RUNS):
            rows = 1 + index % 4
            batcher._observe_run(rows, 0.001 + 0.0001 * rows)
    assert batcher.run_cost_learned and batcher._policy.max_rows == 1
    assert batcher._policy.delay_s == 0.0


def test_only_a_batch_run_whole_that_succeeded_teaches_the_cost(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    """A batch that failed (and the runs that bisect it), or a request run in slices, does not say what a run
    of its rows costs (a failed or stopped run ends early; slices are several runs): the learner sees none."""
    server = make_server(busy_repository, config=ModelConfig(batching=BatchingConfig(max_batch_size=8)))
    server.predict("busy", busy_inputs(1))
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None and batcher._learner is not None
    seen = batcher._learner._current  # rows -> [quickest, runs]
    # (an index outside the busy model's table passes validation and fails in the run)
    failing = [server.submit("busy", busy_inputs(2, index=99)) for _ in range(4)]
    sliced = server.submit("busy", busy_inputs(20))  # three runs of at most 8 rows
    for future in failing:
        with pytest.raises(InferenceError):
            future.result(timeout=30)
    assert sliced.result(timeout=30)["y"].shape == (20, 512)
    assert seen == {}
    server.submit("busy", busy_inputs(3)).result(timeout=30)  # one whole run, by a worker
    assert list(seen) == [3] and seen[3][1] == 1


def test_a_version_refits_its_cost_at_most_once_a_second(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refit's work grows with the batch sizes seen, under the batcher's lock: every 64 runs, but not more
    often than ``REFIT_INTERVAL_S``, whatever the rate of runs."""
    monkeypatch.setattr(_batching, "REFIT_INTERVAL_S", REFIT_INTERVAL_S)
    clock = ManualClock()
    mislead_the_probe(monkeypatch, fixed_s=0.00001, per_row_s=0.0002)
    server = make_server(busy_repository, clock=clock)
    server.predict("busy", busy_inputs(1))
    batcher = server._registry.routes["busy"].versions[1].batcher
    assert batcher is not None and batcher._learner is not None

    def runs(count: int) -> None:
        with batcher._lock:
            for index in range(count):
                rows = 1 + index % 8
                batcher._observe_run(rows, 0.001 + 0.0001 * rows)

    runs(4 * REFIT_EVERY_RUNS)  # (the refit due at 64 runs found each size seen 8 times: nothing to fit)
    assert batcher._learner.refits == 0
    clock.advance(REFIT_INTERVAL_S)
    runs(REFIT_EVERY_RUNS)
    assert batcher._learner.refits == 1
    assert version_status(server, "busy")["run_cost_ms"] == {"fixed": 1.0, "per_row": 0.1, "from": "runs"}
    runs(4 * REFIT_EVERY_RUNS)
    assert batcher._learner.refits == 1
    clock.advance(REFIT_INTERVAL_S * 0.9)
    runs(4 * REFIT_EVERY_RUNS)
    assert batcher._learner.refits == 1
    clock.advance(REFIT_INTERVAL_S * 0.1)
    runs(REFIT_EVERY_RUNS)
    assert batcher._learner.refits == 2
