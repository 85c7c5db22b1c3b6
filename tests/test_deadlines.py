"""Deadlines on every path: a request running on its caller's thread or on a worker is stopped by
onnxruntime at its deadline, and ``timeout_s`` accepts the same values in predict, submit and apredict."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, ModelConfig
from inprocserve.testing import ManualClock

from .conftest import ServerFactory, busy_inputs, occupy, version_status, wait_until

# On the busy model 2000 rows take a few hundred milliseconds or more, about a hundred times these budgets.
LONG_ROWS = 2000
MAX_ROWS = 4096  # the most one request may carry (batching.max_request_rows)
BUDGET_S = 0.02
STOPPED = "deadline passed while it ran; onnxruntime stopped the run"
# Whole requests in one run; one thread per session, so the load needs no timing probe of a huge batch.
BIG_BATCHES = ModelConfig(batching=BatchingConfig(max_batch_size=4096), pool=inprocserve.PoolConfig(intra_op_threads=1))


def test_an_inline_run_on_an_idle_server_is_stopped_at_its_deadline(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))  # idle: the next request runs on this thread
    with pytest.raises(inprocserve.DeadlineExceededError, match=STOPPED) as info:
        server.predict("busy", busy_inputs(LONG_ROWS), timeout_s=BUDGET_S)
    assert (info.value.model, info.value.version) == ("busy", 1)
    status = version_status(server, "busy")
    assert status["in_flight"] == 0 and status["rows_run"] == 1  # the stopped run is not counted as run
    # The session is fine afterwards, with and without a deadline.
    assert server.predict("busy", busy_inputs(2))["y"].shape == (2, 512)
    assert server.predict("busy", busy_inputs(2), timeout_s=60)["y"].shape == (2, 512)


@pytest.mark.parametrize("io_binding", [False, True], ids=["run", "io-binding"])
def test_an_unchunked_inline_run_is_stopped_too(
    busy_repository: Path, make_server: ServerFactory, io_binding: bool
) -> None:
    """One long onnxruntime run: only the watchdog (RunOptions.terminate) can stop it, with or without
    I/O binding (the GPU path, which a CPU session can take too)."""
    pool = inprocserve.PoolConfig(intra_op_threads=1, io_binding=io_binding)
    server = make_server(busy_repository, config=dataclasses.replace(BIG_BATCHES, pool=pool))
    server.predict("busy", busy_inputs(1))
    with pytest.raises(inprocserve.DeadlineExceededError, match=STOPPED):
        server.predict("busy", busy_inputs(LONG_ROWS), timeout_s=BUDGET_S)


@pytest.mark.parametrize("config", [ModelConfig(), BIG_BATCHES], ids=["in-slices", "whole"])
def test_a_run_on_a_worker_is_stopped_at_its_deadline(
    busy_repository: Path, make_server: ServerFactory, config: ModelConfig
) -> None:
    server = make_server(busy_repository, config=config)
    server.submit("busy", busy_inputs(1)).result(timeout=60)  # starts the worker thread: it is idle now
    # The budget must outlast the idle worker's wake-up (else the request expires queued, which another test
    # covers) but not the run: a quarter of what the whole run takes on this machine, whatever its speed.
    # (the median of three: one timed run slowed by the other test process made the budget outlast the run)
    # A run answered within it ran more than four times faster than its timing, on a machine whose load fell
    # meanwhile (CI beside other test processes): timed again, up to three times.
    for _attempt in range(3):
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            server.predict("busy", busy_inputs(MAX_ROWS))
            timings.append(time.perf_counter() - started)
        took = statistics.median(timings)
        run_before = version_status(server, "busy")["rows_run"]
        future = server.submit("busy", busy_inputs(MAX_ROWS), timeout_s=took / 4)
        try:
            future.result(timeout=120)
        except inprocserve.DeadlineExceededError as exc:
            assert STOPPED in str(exc), str(exc)
            break
    else:
        pytest.fail("three runs each answered within a quarter of their timed length: never past a deadline")
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert version_status(server, "busy")["rows_run"] == run_before  # the stopped run is not counted


def test_a_merged_batch_runs_on_while_one_request_in_it_has_time(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    """A batch is stopped only when every request in it is past its deadline: here one request has a
    millisecond left when the batch starts and the other has no deadline, so the batch runs to the end."""
    clock = ManualClock()
    server = make_server(busy_repository, config=BIG_BATCHES, clock=clock)
    blocker = occupy(server)
    hurried = server.submit("busy", busy_inputs(10), timeout_s=1.0)
    patient = server.submit("busy", busy_inputs(LONG_ROWS))
    clock.advance(0.999)
    blocker.result(timeout=60)
    assert patient.result(timeout=60)["y"].shape == (LONG_ROWS, 512)
    assert hurried.result(timeout=60)["y"].shape == (10, 512)
    assert version_status(server, "busy")["batches_run"] == 2  # the blocker, then both together


ONE_ROW = np.ones((1, 4), np.float32)


def _predict(server: inprocserve.Server, timeout: Any) -> Any:
    return server.predict("scale", ONE_ROW, timeout_s=timeout)


def _submit(server: inprocserve.Server, timeout: Any) -> Any:
    return server.submit("scale", ONE_ROW, timeout_s=timeout).result(timeout=60)


def _apredict(server: inprocserve.Server, timeout: Any) -> Any:
    return asyncio.run(server.apredict("scale", ONE_ROW, timeout_s=timeout))


CALLS: dict[str, Callable[[inprocserve.Server, Any], Any]] = {
    "predict": _predict,
    "submit": _submit,
    "apredict": _apredict,
}


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize("timeout", [math.inf, 1e308, 1e12, 1e6, 3600, 2**70, 10**400])
def test_huge_timeouts_mean_no_deadline(
    scale_repository: Path, make_server: ServerFactory, call: Callable[..., Any], timeout: Any
) -> None:
    server = make_server(scale_repository)
    assert call(server, timeout)["y"].tolist() == [[2.0, 2.0, 2.0, 2.0]]


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        (math.nan, ValueError),
        (0, ValueError),
        (-1.0, ValueError),
        (-math.inf, ValueError),
        (-(10**400), ValueError),
        ("1", TypeError),
        (True, TypeError),
        (np.float64(math.nan), ValueError),
    ],
)
def test_invalid_timeouts_are_refused_the_same_everywhere(
    scale_repository: Path, make_server: ServerFactory, call: Callable[..., Any], timeout: Any, error: type
) -> None:
    server = make_server(scale_repository)
    with pytest.raises(error, match="timeout_s"):
        call(server, timeout)
    assert version_status(server, "scale")["in_flight"] == 0


def test_numpy_numbers_are_accepted_as_timeouts(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    assert server.predict("scale", ONE_ROW, timeout_s=np.float32(30))["y"].shape == (1, 4)


def test_many_callers_with_deadlines_all_get_an_answer_or_a_deadline_error(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    """Mixed long and short requests with deadlines from 8 threads: each gets its answer or a
    DeadlineExceededError, nothing else, and nothing stays in flight."""
    server = make_server(busy_repository, config=ModelConfig(pool=inprocserve.PoolConfig(size=2)))
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        for round_ in range(6):
            rows = 400 if (index + round_) % 3 == 0 else 2
            try:
                result = server.predict("busy", busy_inputs(rows, seed=index), timeout_s=0.01 + 0.01 * index)
                assert result["y"].shape == (rows, 512)
                outcome = "answered"
            except inprocserve.DeadlineExceededError:
                outcome = "deadline"
            with lock:
                outcomes.append(outcome)

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 48
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert server.predict("busy", busy_inputs(1))["y"].shape == (1, 512)


# -- the watchdog on its own ---------------------------------------------------------------------------------


def test_the_watchdog_fires_due_alarms_only_and_stays_bounded() -> None:
    from inprocserve._deadlines import Watchdog

    watchdog = Watchdog("test-watchdog")
    try:
        fired = threading.Event()
        never = threading.Event()
        late = watchdog.arm(3600, never.set)
        soon = watchdog.arm(0.001, fired.set)  # earlier than the head: the thread is woken for it
        assert fired.wait(timeout=30) and soon.fired
        cancelled = watchdog.arm(0.05, never.set)
        watchdog.disarm(cancelled)
        # Thousands of disarmed long alarms (requests that finished well within a long timeout) do not pile up.
        for _ in range(5000):
            watchdog.disarm(watchdog.arm(3600, never.set))
        assert len(watchdog._heap) < 2100
        watchdog.disarm(late)
    finally:
        watchdog.close()
    assert not never.is_set()
    assert watchdog._thread is not None and not watchdog._thread.is_alive()
    watchdog.close()  # idempotent
    assert not watchdog.arm(0.001, never.set).fired  # closed: arming is a no-op
