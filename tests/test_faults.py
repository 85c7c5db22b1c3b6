"""Faults and abuse the server must survive: callers that cancel, close() under load, fork after deadlines
were used. Each test checks every caller's outcome and that nothing is left in flight."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve

from .conftest import ServerFactory, busy_inputs, occupy, run_in_forked_child, version_status, wait_until

STOPPED = "onnxruntime stopped the run"


def test_cancelled_callers_under_load_never_disturb_the_others(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository)
    problems: list[str] = []

    def caller(index: int) -> None:
        futures = []
        for round_ in range(40):
            value = float(index * 100 + round_)
            future = server.submit("scale", np.full((1, 4), value, np.float32))
            futures.append((value, future, round_ % 2 == 0 and future.cancel()))
        for value, future, cancelled in futures:
            if cancelled:
                if not future.cancelled():
                    problems.append(f"{value}: cancelled future resolved")
                continue
            answer = future.result(timeout=30)["y"]
            if answer.tolist() != [[2 * value] * 4]:
                problems.append(f"{value}: wrong answer {answer.tolist()}")

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    assert problems == []
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"].tolist() == [[2.0] * 4]


def test_asyncio_callers_cancelled_while_their_request_runs_leave_nothing_behind(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(busy_repository)

    async def main() -> None:
        running = asyncio.ensure_future(server.apredict("busy", busy_inputs(2000)))
        await asyncio.get_running_loop().run_in_executor(
            None, wait_until, lambda: version_status(server, "busy")["queued_rows"] == 0
        )
        waiting = [asyncio.ensure_future(server.apredict("busy", busy_inputs(1, seed=i))) for i in range(6)]
        await asyncio.sleep(0)
        running.cancel()  # already running: its answer is dropped when it comes
        for task in waiting[::2]:
            task.cancel()  # still queued: dropped before its batch runs
        done = await asyncio.gather(running, *waiting, return_exceptions=True)
        assert isinstance(done[0], asyncio.CancelledError)
        outcomes = [type(d).__name__ for d in done[1:]]
        assert outcomes == ["CancelledError", "Prediction"] * 3

    asyncio.run(main())
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert server.predict("busy", busy_inputs(1))["y"].shape == (1, 512)


def test_close_under_load_answers_or_refuses_every_caller(busy_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(busy_repository)
    outcomes: list[str] = []
    lock = threading.Lock()
    allowed = {"answered", "ServerClosedError", "DeadlineExceededError"}
    started = threading.Barrier(7)

    def record(outcome: str) -> None:
        with lock:
            outcomes.append(outcome)

    def caller(index: int) -> None:
        started.wait(timeout=30)
        for round_ in range(200):
            timeout = None if (index + round_) % 2 else 0.5
            try:
                if index % 3 == 0:
                    server.predict("busy", busy_inputs(50, seed=round_), timeout_s=timeout)
                elif index % 3 == 1:
                    server.submit("busy", busy_inputs(50, seed=round_), timeout_s=timeout).result(timeout=30)
                else:
                    asyncio.run(server.apredict("busy", busy_inputs(50, seed=round_), timeout_s=timeout))
                record("answered")
            except inprocserve.InprocserveError as exc:
                record(type(exc).__name__)
                if isinstance(exc, inprocserve.ServerClosedError):
                    return

    threads = [threading.Thread(target=caller, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    started.wait(timeout=30)
    wait_until(lambda: len(outcomes) >= 12)
    server.close(timeout_s=30)
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a caller hung across close()"
    assert set(outcomes) <= allowed, set(outcomes) - allowed
    assert outcomes.count("ServerClosedError") >= 1
    with pytest.raises(inprocserve.ServerClosedError):
        server.predict("busy", busy_inputs(1))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_deadlines_work_in_a_child_forked_after_they_were_used(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    """The watchdog thread of the parent does not exist in a forked child: the child starts its own."""
    # Whole requests in one run (no slices: between slices the deadline is checked without the watchdog).
    whole = inprocserve.ModelConfig(
        batching=inprocserve.BatchingConfig(max_batch_size=4096), pool=inprocserve.PoolConfig(intra_op_threads=1)
    )
    server = make_server(busy_repository, config=whole)
    with pytest.raises(inprocserve.DeadlineExceededError, match=STOPPED):
        server.predict("busy", busy_inputs(2000), timeout_s=0.02)  # the parent's watchdog is running now
    blocker = occupy(server)  # and a worker thread is busy at the moment of the fork

    def in_the_child() -> str:
        report: list[Any] = []
        server.predict("busy", busy_inputs(1))  # builds the child's own session first
        try:
            server.predict("busy", busy_inputs(2000), timeout_s=0.02)
            report.append("answered")
        except inprocserve.DeadlineExceededError as exc:
            report.append("stopped" if STOPPED in str(exc) else str(exc))
        report.append(server.predict("busy", busy_inputs(3), timeout_s=60)["y"].shape[0])
        report.append(server.submit("busy", busy_inputs(2000), timeout_s=0.02).exception(timeout=60) is not None)
        server.close()
        return repr(report)

    report_text = run_in_forked_child(in_the_child)
    assert report_text == "['stopped', 3, True]"
    blocker.result(timeout=60)
    assert server.predict("busy", busy_inputs(1), timeout_s=60)["y"].shape == (1, 512)
