"""The deadline watchdog survives bad delays: one NaN, infinite or huge delay never disables it for the
rest of the process (it used to busy-loop on NaN and die on an overflow, leaving later deadlines unenforced)."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve._deadlines import Watchdog
from inprocserve.testing import ManualClock

from .conftest import ServerFactory

GENEROUS_S = 30.0


@pytest.fixture
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog("test-deadline-watchdog")
    yield dog
    dog.close()


def _fires(watchdog: Watchdog) -> bool:
    fired = threading.Event()
    watchdog.arm(0.001, fired.set)
    return fired.wait(timeout=GENEROUS_S)


@pytest.mark.parametrize("delay", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_delay_is_refused_and_later_alarms_fire(watchdog: Watchdog, delay: float) -> None:
    never = threading.Event()
    with pytest.raises(ValueError, match="finite number of seconds"):
        watchdog.arm(delay, never.set)
    assert _fires(watchdog)
    assert not never.is_set()


@pytest.mark.parametrize("delay", [1e300, 1e12, float(threading.TIMEOUT_MAX)])
def test_a_huge_delay_waits_as_long_as_a_wait_can_and_later_alarms_fire(watchdog: Watchdog, delay: float) -> None:
    never = threading.Event()
    far = watchdog.arm(delay, never.set)
    assert _fires(watchdog)
    assert watchdog._thread is not None and watchdog._thread.is_alive()
    assert not far.fired and not never.is_set()


def test_an_action_that_raises_does_not_stop_the_watchdog(watchdog: Watchdog, caplog: pytest.LogCaptureFixture) -> None:
    raised = threading.Event()

    def broken() -> None:
        raised.set()
        raise RuntimeError("boom")

    watchdog.arm(0.001, broken)
    assert raised.wait(timeout=GENEROUS_S)
    assert _fires(watchdog)
    assert any("deadline's action raised" in record.getMessage() for record in caplog.records)


class _FailingOnce:
    """A condition whose first wait fails, as anything unforeseen in the watchdog's thread might."""

    def __init__(self, condition: threading.Condition) -> None:
        self._condition = condition
        self.failed = threading.Event()
        self.thread: threading.Thread | None = None

    def wait(self, timeout: float | None = None) -> bool:
        if not self.failed.is_set():
            self.thread = threading.current_thread()
            self.failed.set()
            raise RuntimeError("unforeseen")
        return self._condition.wait(timeout)

    def notify(self) -> None:
        self._condition.notify()


def test_a_watchdog_whose_thread_died_starts_a_new_one_on_the_next_arm(
    watchdog: Watchdog, caplog: pytest.LogCaptureFixture
) -> None:
    failing = _FailingOnce(watchdog._wake)
    watchdog._wake = failing  # type: ignore[assignment]
    watchdog.arm(3600, lambda: None)  # the thread starts, goes to sleep for it, and fails
    assert failing.failed.wait(timeout=GENEROUS_S) and failing.thread is not None
    failing.thread.join(timeout=GENEROUS_S)
    assert _fires(watchdog)
    assert any("watchdog" in record.getMessage() and "failed" in record.getMessage() for record in caplog.records)


def test_a_server_on_a_manual_clock_keeps_enforcing_deadlines(repository: Path, make_server: ServerFactory) -> None:
    """The reported path: ``clock.advance(nan)`` used to poison every later deadline of the server."""
    from inprocserve.testing import build_scale_model, save_model

    save_model(build_scale_model(), repository, "scale")
    clock = ManualClock()
    server = make_server(repository, clock=clock)
    with pytest.raises(ValueError, match="finite number of seconds"):
        clock.advance(math.nan)
    x: Any = np.ones((2, 4), np.float32)
    for _ in range(3):
        assert server.predict("scale", x, timeout_s=1.0)["y"].tolist() == [[2.0] * 4] * 2
        clock.advance(0.1)


def test_an_unlocked_action_may_arm_another_alarm(watchdog: Watchdog) -> None:
    """An action armed ``unlocked`` runs without the watchdog's lock: it may run callers' code (a follower's
    future's callbacks), which may arm another alarm, and the watchdog carries on."""
    fired = threading.Event()
    watchdog.arm(0.001, lambda: watchdog.arm(0.001, fired.set), unlocked=True)
    assert fired.wait(timeout=GENEROUS_S)
    assert _fires(watchdog)
