"""The flush policy, stepped by a manual clock: when a request runs at once, how long a free worker waits
for companions, and how recent concurrency is remembered and forgotten."""

from __future__ import annotations

import pytest

from inprocserve import BatchingConfig
from inprocserve._flush_policy import (
    AUTO_DELAY_CAP_S,
    CONCURRENCY_WINDOW_S,
    FlushPolicy,
    RunCost,
    automatic_delay_s,
)
from inprocserve.testing import ManualClock

DELAY_S = 0.002


def policy(
    clock: ManualClock, *, max_rows: int = 16, delay_s: float = DELAY_S, preferred: tuple[int, ...] = ()
) -> FlushPolicy:
    return FlushPolicy(max_rows=max_rows, delay_s=delay_s, preferred_batch_sizes=preferred, clock=clock)


def test_a_lone_caller_never_waits() -> None:
    clock = ManualClock()
    flush = policy(clock)
    for _ in range(5):
        assert flush.arrive(1, 1)  # the only concurrency it has seen is its own request
        clock.advance(0.01)
    assert flush.target_rows() == 1
    wait, _ = flush.wait_s(queued_rows=1, oldest_enqueued_at=clock(), ready_at=clock(), active_rows=1)
    assert wait <= 0


def test_after_concurrent_traffic_a_request_waits_for_its_companions() -> None:
    clock = ManualClock()
    flush = policy(clock)
    for active in range(1, 9):  # eight callers in flight at once
        flush.arrive(active, 1)
    assert flush.target_rows() == 8
    assert not flush.arrive(1, 1)  # one row when eight are expected: queue it, do not run it alone
    assert flush.arrive(8, 8)  # a request that fills the target alone runs at once


def test_the_wait_ends_at_the_delay_or_when_the_target_is_queued() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(8, 8)
    enqueued = clock()
    wait, target = flush.wait_s(queued_rows=3, oldest_enqueued_at=enqueued, ready_at=enqueued, active_rows=8)
    assert (wait, target) == (pytest.approx(DELAY_S), 8)
    clock.advance(DELAY_S / 2)
    wait, _ = flush.wait_s(queued_rows=5, oldest_enqueued_at=enqueued, ready_at=enqueued, active_rows=8)
    assert wait == pytest.approx(DELAY_S / 2)
    clock.advance(DELAY_S / 2)
    wait, _ = flush.wait_s(queued_rows=5, oldest_enqueued_at=enqueued, ready_at=enqueued, active_rows=8)
    assert wait <= 0  # the delay is spent: run what is queued
    wait, _ = flush.wait_s(queued_rows=8, oldest_enqueued_at=clock(), ready_at=clock(), active_rows=8)
    assert wait <= 0  # everyone expected is there: no reason to wait


def test_time_queued_behind_a_busy_runner_is_not_time_spent_waiting() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(8, 8)
    enqueued = clock()
    clock.advance(0.010)  # the request waited 10 ms for a runner to come free
    wait, _ = flush.wait_s(queued_rows=2, oldest_enqueued_at=enqueued, ready_at=clock(), active_rows=8)
    assert wait == pytest.approx(DELAY_S)  # the wait counts from when the runner became free


def test_recent_concurrency_is_remembered_for_one_more_window_then_forgotten() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(12, 12)
    clock.advance(CONCURRENCY_WINDOW_S * 1.1)
    assert not flush.arrive(1, 1)  # a new window, but the last one's peak still counts
    assert flush.target_rows() == 12
    clock.advance(CONCURRENCY_WINDOW_S * 1.1)
    assert flush.arrive(1, 1)  # two quiet windows: back to a lone caller, who never waits
    assert flush.target_rows() == 1


def test_the_target_is_capped_by_the_batch_size_and_rounded_up_to_a_preferred_size() -> None:
    clock = ManualClock()
    capped = policy(clock, max_rows=4)
    capped.arrive(50, 1)
    assert capped.target_rows() == 4
    preferred = policy(clock, preferred=(4, 8))
    preferred.arrive(16, 1)
    wait, target = preferred.wait_s(queued_rows=3, oldest_enqueued_at=clock(), ready_at=clock(), active_rows=16)
    assert target == 4 and wait > 0  # 3 queued: wait for the next preferred size, not the peak of 16
    wait, target = preferred.wait_s(queued_rows=4, oldest_enqueued_at=clock(), ready_at=clock(), active_rows=16)
    assert target == 4 and wait <= 0


def test_without_a_delay_or_after_merging_is_disabled_nothing_waits() -> None:
    clock = ManualClock()
    eager = policy(clock, delay_s=0.0)
    eager.arrive(16, 1)
    assert eager.arrive(16, 1)
    assert eager.wait_s(queued_rows=1, oldest_enqueued_at=clock(), ready_at=clock(), active_rows=16)[0] <= 0
    merging = policy(clock)
    merging.arrive(16, 1)
    merging.disable_merging()
    assert merging.max_rows == 1 and merging.arrive(16, 1)


def test_reset_forgets_recent_traffic() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(16, 16)
    flush.reset()
    assert flush.target_rows() == 0 and flush.arrive(1, 1)


def never_asked() -> float:
    raise AssertionError("the hand-off cost must not be measured when it cannot change the answer")


def test_automatic_delay_follows_the_run_cost_against_a_thread_handoff() -> None:
    config = BatchingConfig()
    cheap = RunCost(fixed_s=0.000_05, per_row_s=0.000_01)
    costly = RunCost(fixed_s=0.001, per_row_s=0.000_01)
    huge = RunCost(fixed_s=1.0, per_row_s=0.0)
    handoff = lambda: 0.000_02  # noqa: E731
    assert automatic_delay_s(config, merge=True, run_cost=cheap, handoff_s=handoff) == 0.0  # < 4 hand-offs
    assert automatic_delay_s(config, merge=True, run_cost=costly, handoff_s=handoff) == 0.001
    assert automatic_delay_s(config, merge=True, run_cost=huge, handoff_s=handoff) == AUTO_DELAY_CAP_S
    assert automatic_delay_s(config, merge=True, run_cost=None, handoff_s=never_asked) == 0.0
    assert automatic_delay_s(config, merge=False, run_cost=huge, handoff_s=never_asked) == 0.0


def test_a_configured_delay_wins_over_the_measured_one() -> None:
    config = BatchingConfig(max_delay_s=0.003)
    assert automatic_delay_s(config, merge=True, run_cost=RunCost(1.0, 0.0), handoff_s=never_asked) == 0.003
