"""The circuit breaker, stepped with a ManualClock: opens at the threshold, fails fast while cooling off,
lets exactly one probe through when half-open, and closes or re-opens on the probe's outcome."""

from __future__ import annotations

import threading

import pytest

from inprocserve._circuit import CircuitBreaker
from inprocserve.testing import ManualClock


def test_opens_after_consecutive_failures_only() -> None:
    breaker = CircuitBreaker(failure_threshold=3, cooloff_s=10, clock=ManualClock())
    for _ in range(2):
        assert breaker.acquire()
        breaker.failure()
    assert breaker.acquire()
    breaker.success()  # a success in between resets the count
    for _ in range(2):
        assert breaker.acquire()
        breaker.failure()
    assert breaker.state == "closed"
    assert breaker.acquire()
    breaker.failure()
    assert breaker.state == "open"
    assert breaker.times_opened == 1
    assert not breaker.acquire()


def test_half_open_lets_one_probe_through_and_closes_on_success() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cooloff_s=10, clock=clock)
    breaker.failure()
    clock.advance(9.9)
    assert breaker.state == "open"
    assert breaker.retry_in_s() == pytest.approx(0.1)
    assert not breaker.acquire()
    clock.advance(0.1)
    assert breaker.state == "half_open"
    assert breaker.acquire()  # the probe
    assert not breaker.acquire()  # everyone else still fails fast while it is out
    breaker.success()
    assert breaker.state == "closed"
    assert breaker.consecutive_failures == 0
    assert breaker.acquire() and breaker.acquire()


def test_a_failed_probe_opens_for_another_cooloff() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=2, cooloff_s=5, clock=clock)
    breaker.failure()
    breaker.failure()
    clock.advance(5)
    assert breaker.acquire()
    breaker.failure()
    assert breaker.state == "open"
    assert breaker.times_opened == 2
    clock.advance(4.9)
    assert not breaker.acquire()
    clock.advance(0.1)
    assert breaker.acquire()


def test_a_released_probe_lets_the_next_call_probe() -> None:
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cooloff_s=1, clock=clock)
    breaker.failure()
    clock.advance(1)
    assert breaker.acquire()
    breaker.release()  # the probe ran out of its caller's time: no verdict on the server
    assert breaker.state == "half_open"
    assert breaker.acquire()


def test_a_call_granted_before_the_circuit_opened_cannot_end_the_probe() -> None:
    """A slow call that started while the circuit was closed reports back after a probe went out: its
    report must neither let a second probe through nor count as the probe's verdict."""
    clock = ManualClock()
    breaker = CircuitBreaker(failure_threshold=1, cooloff_s=10, clock=clock)
    late: list[str | None] = []
    granted = threading.Event()
    report, released, failed = threading.Event(), threading.Event(), threading.Event()

    def slow_call() -> None:
        late.append(breaker.acquire())  # granted while closed
        granted.set()
        report.wait(5)
        breaker.release()  # it ended on its caller's deadline, after the probe went out
        released.set()
        failed.wait(5)
        breaker.failure()  # another slow call's server error arrives late too

    worker = threading.Thread(target=slow_call)
    worker.start()
    granted.wait(5)
    breaker.failure()  # opens the circuit
    clock.advance(10)
    assert breaker.acquire() == "probe"
    report.set()
    released.wait(5)
    assert late == ["call"]
    assert breaker.acquire() is None  # the probe is still out: everyone else fails fast
    failed.set()
    worker.join(5)
    assert breaker.times_opened == 1 and breaker.state == "half_open"  # not the probe's verdict
    assert breaker.acquire() is None
    breaker.success()  # the probe's own verdict closes the circuit
    assert breaker.state == "closed"


@pytest.mark.parametrize("arguments", [{"failure_threshold": 0}, {"failure_threshold": True}, {"cooloff_s": 0}])
def test_invalid_settings(arguments: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        CircuitBreaker(**arguments)  # type: ignore[arg-type]
