"""The flush policy, stepped by a manual clock: when a request runs at once, how long a free worker waits
for companions, and how recent concurrency is remembered and forgotten."""

from __future__ import annotations

import pytest

from inprocserve import BatchingConfig
from inprocserve._flush_policy import (
    AUTO_DELAY_CAP_S,
    CHECKED_WAIT_S,
    CONCURRENCY_WINDOW_S,
    FlushPolicy,
    RunCost,
    automatic_delay_s,
)
from inprocserve.testing import ManualClock

DELAY_S = 0.002


def policy(
    clock: ManualClock,
    *,
    max_rows: int = 16,
    delay_s: float = DELAY_S,
    preferred: tuple[int, ...] = (),
    runners: int = 1,
    overlap: bool = True,
) -> FlushPolicy:
    return FlushPolicy(
        max_rows=max_rows,
        delay_s=delay_s,
        preferred_batch_sizes=preferred,
        runners=runners,
        overlap=overlap,
        clock=clock,
    )


def wait_if_free_now(
    flush: FlushPolicy, clock: ManualClock, *, queued_rows: int, active_rows: int
) -> tuple[float, int]:
    """``flush.wait_s`` for a worker free now, whose oldest queued request arrived now."""
    return flush.wait_s(queued_rows=queued_rows, oldest_enqueued_at=clock(), ready_at=clock(), active_rows=active_rows)


def test_a_lone_caller_never_waits() -> None:
    clock = ManualClock()
    flush = policy(clock)
    for _ in range(5):
        assert flush.arrive(1, 1, 1)  # the only concurrency it has seen is its own request
        clock.advance(0.01)
    assert flush.target_rows() == 1
    wait, _ = wait_if_free_now(flush, clock, queued_rows=1, active_rows=1)
    assert wait <= 0


def test_after_concurrent_traffic_a_request_waits_for_its_companions() -> None:
    clock = ManualClock()
    flush = policy(clock)
    for active in range(1, 9):  # eight callers in flight at once
        flush.arrive(active, 1, active)
    assert flush.target_rows() == 8
    assert not flush.arrive(1, 1, 1)  # one row when eight are expected: queue it, do not run it alone
    assert flush.arrive(8, 8, 1)  # a request that fills the target alone runs at once


def test_the_wait_ends_at_the_delay_or_when_the_target_is_queued() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(8, 8, 8)
    enqueued = clock()
    wait, target = flush.wait_s(queued_rows=3, oldest_enqueued_at=enqueued, ready_at=enqueued, active_rows=8)
    assert (wait, target) == (pytest.approx(DELAY_S), 8)
    clock.advance(DELAY_S / 2)
    wait, _ = flush.wait_s(queued_rows=5, oldest_enqueued_at=enqueued, ready_at=enqueued, active_rows=8)
    assert wait == pytest.approx(DELAY_S / 2)
    clock.advance(DELAY_S / 2)
    wait, _ = flush.wait_s(queued_rows=5, oldest_enqueued_at=enqueued, ready_at=enqueued, active_rows=8)
    assert wait <= 0  # the delay is spent: run what is queued
    wait, _ = wait_if_free_now(flush, clock, queued_rows=8, active_rows=8)
    assert wait <= 0  # everyone expected is there: no reason to wait


def test_time_queued_behind_a_busy_runner_is_not_time_spent_waiting() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(8, 8, 8)
    enqueued = clock()
    clock.advance(0.010)  # the request waited 10 ms for a runner to come free
    wait, _ = flush.wait_s(queued_rows=2, oldest_enqueued_at=enqueued, ready_at=clock(), active_rows=8)
    assert wait == pytest.approx(DELAY_S)  # the wait counts from when the runner became free


def test_recent_concurrency_is_remembered_for_one_more_window_then_forgotten() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(12, 12, 12)
    clock.advance(CONCURRENCY_WINDOW_S * 1.1)
    assert not flush.arrive(1, 1, 1)  # a new window, but the last one's peak still counts
    assert flush.target_rows() == 12
    clock.advance(CONCURRENCY_WINDOW_S * 1.1)
    assert flush.arrive(1, 1, 1)  # two quiet windows: back to a lone caller, who never waits
    assert flush.target_rows() == 1


def test_a_burst_long_past_is_forgotten_at_the_next_arrival() -> None:
    """A quiet window or more since the last one: the burst before it is not recent traffic, and the next
    lone caller runs at once (kept as the previous window whatever the gap, it waited for companions)."""
    clock = ManualClock()
    flush = policy(clock)
    for active in range(1, 13):
        flush.arrive(active, 1, active)
    clock.advance(CONCURRENCY_WINDOW_S * 10)
    assert flush.arrive(1, 1, 1)
    assert flush.target_rows() == 1
    assert flush.overlapping()  # (the twelve callers of the burst no longer weigh on the mean)
    wait, _ = wait_if_free_now(flush, clock, queued_rows=1, active_rows=1)
    assert wait <= 0


def test_a_worker_opening_a_window_long_after_a_burst_forgets_it() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(12, 1, 12)
    clock.advance(CONCURRENCY_WINDOW_S * 2.5)
    flush.roll(0)
    assert flush.target_rows() == 0 and flush.overlapping()


def test_a_wait_for_companions_that_do_not_come_is_not_made_again() -> None:
    """Independent arrivals (light traffic from many clients) make a peak of two now and then, but the next
    request comes long after the delay: once companions were seen not to come, requests run as they come."""
    clock = ManualClock()
    flush = policy(clock, overlap=False)
    assert not flush.arrive(2, 1, 2)  # two in flight at once: the peak promises a companion (nothing known yet)
    ran_at_once = []
    for _ in range(5):
        clock.advance(DELAY_S * 5)  # the next request, long after the delay (the peak is still recent)
        ran_at_once.append(flush.arrive(1, 1, 1))
    assert flush.target_rows() == 2
    assert ran_at_once == [True] * 5  # (each waited the whole delay for the companion the peak promised)
    wait, _ = wait_if_free_now(flush, clock, queued_rows=1, active_rows=1)
    assert wait <= 0


def test_companions_that_come_within_the_delay_keep_the_wait() -> None:
    """Callers answered together come back together (a closed loop): the companions come within the delay,
    whether the policy waited for them or, having seen them not come before, did not."""
    clock = ManualClock()
    flush = policy(clock, overlap=False)
    flush.arrive(2, 1, 2)
    clock.advance(DELAY_S * 5)
    assert flush.arrive(1, 1, 1)  # missed once: runs at once
    for _ in range(3):  # now they come, a tenth of the delay after each moment the policy wanted one
        clock.advance(DELAY_S / 10)
        flush.arrive(1, 1, 1)
    clock.advance(DELAY_S / 10)
    assert not flush.arrive(1, 1, 1)  # came 3 times, missed once: worth waiting again
    wait, target = wait_if_free_now(flush, clock, queued_rows=1, active_rows=1)
    assert wait > 0 and target == 2


def test_a_request_queued_behind_a_busy_runner_says_nothing_about_companions() -> None:
    """It waits for the runner, not for companions: whether one came after it tells nothing about waiting.
    (Counted, two callers of a model that computes for longer than the delay, each queued behind the other's
    run, looked like companions that did not come, and stopped being merged.)"""
    clock = ManualClock()
    flush = policy(clock, overlap=False)
    flush.arrive(2, 2, 2)  # a peak of two
    for _ in range(3):
        flush.arrive(2, 1, 2, idle=False)  # queued behind the other caller's run
        clock.advance(DELAY_S * 5)  # the run
    assert flush.companions_come()
    assert not flush.arrive(1, 1, 1)  # a runner free: it waits for the companion the peak promises


def test_a_wish_for_companions_before_a_quiet_spell_is_no_miss_after_it() -> None:
    """The policy wanted a companion, then nothing came for seconds: the new traffic starts with nothing
    known, and the first wait it promises is made (counted a miss, it was skipped)."""
    clock = ManualClock()
    flush = policy(clock, overlap=False)
    assert not flush.arrive(2, 1, 2)  # wants a companion
    clock.advance(CONCURRENCY_WINDOW_S * 40)
    flush.arrive(2, 1, 2)  # a new peak of two, long after
    assert flush.companions_come()
    assert not flush.arrive(1, 1, 1)


def test_a_short_wait_is_made_whether_companions_came_or_not() -> None:
    """Under ``CHECKED_WAIT_S`` (a quick model's automatic delay) a wait in vain costs little: not checked."""
    clock = ManualClock()
    flush = policy(clock, delay_s=CHECKED_WAIT_S / 2, overlap=False)
    flush.arrive(2, 1, 2)
    for _ in range(5):
        clock.advance(0.01)
        assert not flush.arrive(1, 1, 1)


def test_whether_companions_came_is_forgotten_with_the_windows() -> None:
    clock = ManualClock()
    flush = policy(clock, overlap=False)
    flush.arrive(2, 1, 2)
    for _ in range(2):
        clock.advance(DELAY_S * 5)
        assert flush.arrive(1, 1, 1)  # missed, twice
    clock.advance(CONCURRENCY_WINDOW_S * 3)
    flush.arrive(2, 1, 2)  # a new peak, long after: nothing known about companions any more
    clock.advance(DELAY_S / 10)
    assert not flush.arrive(1, 1, 1)


def test_the_target_is_capped_by_the_batch_size_and_rounded_up_to_a_preferred_size() -> None:
    clock = ManualClock()
    capped = policy(clock, max_rows=4)
    capped.arrive(50, 1, 50)
    assert capped.target_rows() == 4
    preferred = policy(clock, preferred=(4, 8))
    preferred.arrive(16, 1, 16)
    wait, target = wait_if_free_now(preferred, clock, queued_rows=3, active_rows=16)
    assert target == 4 and wait > 0  # 3 queued: wait for the next preferred size, not the peak of 16
    wait, target = wait_if_free_now(preferred, clock, queued_rows=4, active_rows=16)
    assert target == 4 and wait <= 0


def test_a_preferred_size_never_makes_a_wait_that_recent_traffic_does_not_promise() -> None:
    """Preferred sizes end a wait early: a lone request queued while idle runs at once, and a queue short
    of the peak waits for the next preferred size only as far as the peak."""
    clock = ManualClock()
    lone = policy(clock, preferred=(4, 8), overlap=False)
    lone.arrive(1, 1, 1)
    wait, _ = wait_if_free_now(lone, clock, queued_rows=1, active_rows=1)
    assert wait <= 0  # (it waited the whole delay for 4 rows that nothing promised)
    six = policy(clock, preferred=(4, 8), overlap=False)
    six.arrive(6, 1, 6)
    wait, target = wait_if_free_now(six, clock, queued_rows=5, active_rows=6)
    assert target == 6 and wait > 0  # the peak, not the 8 it cannot reach
    wait, target = wait_if_free_now(six, clock, queued_rows=6, active_rows=6)
    assert wait <= 0


def test_without_a_delay_or_after_merging_is_disabled_nothing_waits() -> None:
    clock = ManualClock()
    eager = policy(clock, delay_s=0.0)
    eager.arrive(16, 1, 16)
    assert eager.arrive(16, 1, 16)
    assert wait_if_free_now(eager, clock, queued_rows=1, active_rows=16)[0] <= 0
    merging = policy(clock)
    merging.arrive(16, 1, 16)
    merging.disable_merging()
    assert merging.max_rows == 1 and merging.arrive(16, 1, 16)


def test_reset_forgets_recent_traffic() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(16, 16, 16)
    flush.reset()
    assert flush.target_rows() == 0 and flush.arrive(1, 1, 1)


def test_callers_no_more_than_one_past_the_runners_run_as_they_come() -> None:
    """Two callers of a quick model on one runner: each one's own work overlaps the other's run, so neither
    waits to be merged; a third caller, or two more than two runners, do."""
    clock = ManualClock()
    two_callers = policy(clock)
    for _ in range(10):
        assert two_callers.arrive(2, 1, 2)  # the other caller's request is running: run (or queue) at once
    assert two_callers.target_rows() == 2
    wait, _ = wait_if_free_now(two_callers, clock, queued_rows=1, active_rows=2)
    assert wait <= 0  # a free worker runs the one queued request: its companion is busy with its own work
    three_callers = policy(clock)
    for _ in range(3):
        three_callers.arrive(3, 1, 3)
    assert not three_callers.arrive(3, 1, 3)
    wait, target = wait_if_free_now(three_callers, clock, queued_rows=1, active_rows=3)
    assert (wait, target) == (pytest.approx(DELAY_S), 3)
    two_runners = policy(clock, runners=2)
    for _ in range(3):
        assert two_runners.arrive(3, 1, 3)
    for _ in range(6):
        two_runners.arrive(5, 1, 5)
    assert not two_runners.arrive(5, 1, 5)


def test_a_model_that_computes_longer_merges_even_two_callers() -> None:
    """Without ``overlap`` (a fixed cost per run of OVERLAP_BELOW_S or more) a second caller's request is
    worth waiting for: merged, it saves a fixed cost larger than any overlap of the callers' own work."""
    clock = ManualClock()
    flush = policy(clock, overlap=False)
    for _ in range(10):
        flush.arrive(2, 1, 2)
    assert not flush.overlapping() and not flush.arrive(1, 1, 2)
    wait, target = wait_if_free_now(flush, clock, queued_rows=1, active_rows=2)
    assert (wait, target) == (pytest.approx(DELAY_S), 2)


def test_light_traffic_from_many_threads_runs_as_it_comes() -> None:
    """Requests that mostly find nothing else in flight, now and then meeting two or three others: the mean,
    not the peak, says whether companions come. By the peak, each such request waited for one in vain."""
    clock = ManualClock()
    flush = policy(clock)
    for index in range(40):
        met = 4 if index % 10 == 0 else 1
        flush.arrive(met, 1, met)
    assert flush.target_rows() == 4 and flush.overlapping()  # (by the peak, each would wait for four rows)
    assert flush.arrive(1, 1, 1)
    wait, _ = wait_if_free_now(flush, clock, queued_rows=1, active_rows=1)
    assert wait <= 0


def test_callers_are_counted_apart_from_their_rows() -> None:
    """One caller's large request is no crowd: its rows make the target, its caller the overlap."""
    clock = ManualClock()
    one_caller = policy(clock)
    one_caller.arrive(12, 12, 1)
    assert one_caller.target_rows() == 12 and one_caller.arrive(3, 3, 1)
    wait, _ = wait_if_free_now(one_caller, clock, queued_rows=3, active_rows=3)
    assert wait <= 0


def test_an_arrival_withdrawn_is_not_counted() -> None:
    """A request refused the shortest way arrives again the full way: counted once."""
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(3, 1, 3)
    flush.withdraw(3)
    flush.arrive(2, 1, 2)
    assert flush.overlapping()  # (counted twice, the 3 made the mean 2.5: more than one past the runner)


def test_the_overlap_of_callers_is_forgotten_with_the_windows() -> None:
    clock = ManualClock()
    flush = policy(clock)
    flush.arrive(8, 1, 8)
    clock.advance(CONCURRENCY_WINDOW_S * 1.1)
    flush.roll(0)  # a window opened by a worker, before any arrival: the last one's callers still count
    assert not flush.overlapping()
    clock.advance(CONCURRENCY_WINDOW_S * 1.1)
    flush.arrive(2, 1, 2)  # eight callers, two windows ago: two now
    assert flush.overlapping()


def test_the_automatic_delay_is_the_run_cost_capped() -> None:
    """Not weighed against a thread hand-off measured at start-up: that probe drew 3 or 25 µs on one
    machine from one process to the next, and the same model waited in some processes and never in others."""
    config = BatchingConfig()
    cheap = RunCost(fixed_s=0.000_05, per_row_s=0.000_01)
    costly = RunCost(fixed_s=0.001, per_row_s=0.000_01)
    huge = RunCost(fixed_s=1.0, per_row_s=0.0)
    assert automatic_delay_s(config, merge=True, run_cost=cheap) == 0.000_05
    assert automatic_delay_s(config, merge=True, run_cost=costly) == 0.001
    assert automatic_delay_s(config, merge=True, run_cost=huge) == AUTO_DELAY_CAP_S
    assert automatic_delay_s(config, merge=True, run_cost=None) == 0.0
    assert automatic_delay_s(config, merge=False, run_cost=huge) == 0.0


def test_a_configured_delay_wins_over_the_measured_one() -> None:
    config = BatchingConfig(max_delay_s=0.003)
    assert automatic_delay_s(config, merge=True, run_cost=RunCost(1.0, 0.0)) == 0.003
