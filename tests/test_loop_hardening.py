"""apredict's merged way when the loop's own thread is interrupted (a signal handler raising a
``BaseException`` that is no ``Exception``: gevent's ``Timeout``, a task queue's time limit, Ctrl-C) in the
middle of its bookkeeping: no task may be left waiting forever, nor past its own deadline; and what the
merged way records of tasks that give up."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _loop_batching

from .conftest import ServerFactory, SessionHolder, busy_inputs, version_status, wait_until
from .test_interrupted_callers import Interrupted, interrupted_at


def _outcome(task: asyncio.Task[Any]) -> Any:
    """What a task got: its answer's first value, its error, or "waiting"."""
    if not task.done():
        return "waiting"
    return task.exception() or task.result()["y"][0, 0]


def test_a_flush_interrupted_as_it_starts_a_group_leaves_no_task_waiting(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    """One loop iteration made two groups (requests with a deadline and without are kept apart). The loop's
    thread interrupted as the end-of-iteration flush starts the first: that group's task gets the
    interruption, the other group is still run. (Both were dropped: their tasks waited forever, or until
    their own deadline.)"""
    server = make_server(scale_repository)
    server.predict("scale", np.ones((1, 4), np.float32))  # adopts the runners: the merged way applies

    async def main() -> tuple[list[Any], list[Any]]:
        tasks = [
            asyncio.ensure_future(server.apredict("scale", np.full((1, 4), 1.0, np.float32))),
            asyncio.ensure_future(server.apredict("scale", np.full((1, 4), 2.0, np.float32), timeout_s=60)),
        ]
        with interrupted_at(_loop_batching._LoopState._start.__code__):
            await asyncio.sleep(0)  # each task made its request
            await asyncio.sleep(0)  # the iteration's flush ran
        await asyncio.wait(tasks, timeout=5)
        first = [_outcome(task) for task in tasks]
        for task in tasks:
            task.cancel()
        later = asyncio.gather(*(server.apredict("scale", np.full((1, 4), i, np.float32)) for i in range(3)))
        return first, [answer["y"][0, 0] for answer in await asyncio.wait_for(later, 10)]

    first, later = asyncio.run(main())
    assert isinstance(first[0], Interrupted), first
    assert first[1] == 4.0, first
    assert later == [0.0, 2.0, 4.0]
    batcher = server._registry.routes["scale"].default.batcher
    assert batcher is not None
    wait_until(lambda: batcher.in_flight == 0 and batcher.queued_rows == 0)


def test_a_flush_interrupted_as_it_runs_a_queued_request_still_wakes_the_other_versions(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests queued the full way (two models with a cache) in one iteration: the flush tries to run each
    version's lone request on the loop, and wakes a worker where it did not. Interrupted as it tries the
    first, the second version's worker was never woken: its task waited until other traffic came."""
    from inprocserve.testing import build_scale_model, save_model

    save_model(build_scale_model(2.0), repository, "a", 1)
    save_model(build_scale_model(3.0), repository, "b", 1)
    cached = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True))
    server = make_server(repository, models={"a": cached, "b": cached})
    x = np.ones((1, 4), np.float32)
    server.predict("a", x)  # (starts the workers: they are parked when the requests below come)
    server.predict("b", x)
    batchers = [server._registry.routes[name].default.batcher for name in ("a", "b")]
    for batcher in batchers:
        assert batcher is not None
        server.submit(batcher.model, x + 1).result(timeout=10)
        wait_until(lambda batcher=batcher: len(batcher._idle) == batcher._pool.size)

    from inprocserve._batching import Batcher

    async def main() -> list[Any]:
        tasks = [asyncio.ensure_future(server.apredict(name, x * 5)) for name in ("a", "b")]
        with interrupted_at(Batcher.run_lone_here.__code__):
            await asyncio.sleep(0)  # each task made its request
            await asyncio.sleep(0)  # the iteration's flush ran
        await asyncio.wait(tasks, timeout=5)
        return [_outcome(task) for task in tasks]

    first, second = asyncio.run(main())
    assert first == 10.0  # (its batcher was woken as the interruption passed)
    assert second == 15.0


@pytest.mark.parametrize("step", range(len(inspect.getsourcelines(_loop_batching._Group._arm)[0])))
def test_a_task_interrupted_as_its_groups_timer_is_armed_leaves_the_others_deadlines(
    step: int, busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A task joins its iteration's group with the earliest deadline of it, and the loop's thread is
    interrupted as the group's timer is armed again for it: the task that joined before it is still answered
    at its own deadline. (Interrupted once the old timer was cancelled and before the new one was armed, the
    group had no timer: its tasks waited behind the run ahead of them, however long.)"""
    arm = _loop_batching._Group._arm
    line = inspect.getsourcelines(arm)[1] + step  # interrupted at the first line run past this one
    server = make_server(busy_repository)
    blocker = hold_session(server)  # the merged request waits behind it until the test lets it go

    async def hurried() -> Any:
        with interrupted_at(arm.__code__, after_line=line):
            return await server.apredict("busy", busy_inputs(1, index=1), timeout_s=0.05)

    async def main() -> list[Any]:
        patient = asyncio.ensure_future(server.apredict("busy", busy_inputs(1, index=0), timeout_s=0.3))
        interrupted = asyncio.ensure_future(hurried())
        later = asyncio.ensure_future(server.apredict("busy", busy_inputs(1, index=2), timeout_s=60))
        await asyncio.wait([patient], timeout=3)
        got = [_outcome(patient), _outcome(interrupted), blocker.done()]
        blocker.let_go()
        got.append((await asyncio.wait_for(later, 20))["picked"].tolist())
        return got

    patient, interrupted, blocker_done, later = asyncio.run(main())
    blocker.release()
    assert isinstance(patient, inprocserve.DeadlineExceededError), patient
    assert isinstance(interrupted, Interrupted)
    assert not blocker_done  # answered at its deadline, not when the run ahead of it was done
    assert later == [[4.0, 5.0]]
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)


def test_a_group_timer_interrupted_as_it_answers_a_task_still_answers_the_others_at_their_deadlines(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """The group's timer fires for two tasks due at once, and the loop's thread is interrupted (a signal
    handler raised) as it answers the first: every task still gets its deadline's error at its deadline, the
    run ahead of theirs still going. (The timer was armed again only after the loop over its tasks: the
    other task due then, and the one due later, waited for that run, however long.)"""
    server = make_server(busy_repository)
    blocker = hold_session(server)  # the merged request waits behind it until the test lets it go

    async def main() -> list[Any]:
        tasks = [
            asyncio.ensure_future(server.apredict("busy", busy_inputs(1, index=i), timeout_s=timeout_s))
            for i, timeout_s in enumerate((0.05, 0.05, 0.3))
        ]
        with interrupted_at(_loop_batching._expire.__code__):
            await asyncio.wait(tasks, timeout=3)
        got = [_outcome(task) for task in tasks]
        blocker.let_go()
        return [*got, blocker.done()]

    *got, blocker_done = asyncio.run(main())
    blocker.release()
    assert all(isinstance(outcome, inprocserve.DeadlineExceededError) for outcome in got), got
    assert not blocker_done
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)


def test_a_deadline_passing_as_a_worker_hands_the_answer_over_agrees_with_what_is_recorded(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A request queued the full way is answered by a worker, which records it (the status page's latency),
    then posts the answer to the loop. The task's deadline passing in between gave the task
    ``DeadlineExceededError`` while the page counted an answer: now the task gets the answer it was
    recorded with."""
    server = make_server(busy_repository)
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)  # the full way, as with a cache
    answered = server._answered

    def slow_after_recording(*args: Any, **kwargs: Any) -> None:
        answered(*args, **kwargs)
        time.sleep(0.8)  # the task's deadline passes before the answer is posted

    monkeypatch.setattr(server, "_answered", slow_after_recording)
    before = version_status(server, "busy")["latency_ms"]

    async def main() -> Any:
        try:
            return await server.apredict("busy", busy_inputs(1, index=1), timeout_s=0.5)
        except inprocserve.DeadlineExceededError as exc:
            return exc

    got = asyncio.run(main())
    after = version_status(server, "busy")["latency_ms"]
    recorded = (after["count"] - before["count"], after["errors"] - before["errors"])
    assert recorded == (1, 0)  # the worker recorded the answer before the deadline
    assert isinstance(got, inprocserve.Prediction), got
    assert got["picked"].tolist() == [[2.0, 3.0]]


def test_the_tasks_of_a_failed_run_on_the_loop_are_not_shed_when_queued_again(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, hold_session: SessionHolder
) -> None:
    """The loop runs its iteration's group itself (a free session, a short run), and the run fails (one
    task's input fails in onnxruntime): each task is queued again on its own, to find whose input it was.
    Meanwhile other callers filled the queue: the tasks whose inputs were fine got ``QueueFullError``,
    though they were admitted, and ran, once; a worker's failed merged run readmits its tasks."""
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 10.0)  # the group runs on the loop
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_queue_rows=8))
    server = make_server(busy_repository, models={"busy": config})
    server.predict("busy", busy_inputs(1))  # adopts the runners; the session is then free
    hand_over = _loop_batching._LoopState._hand_over
    others: list[Any] = []

    def others_fill_the_queue(self: Any, *args: Any, **kwargs: Any) -> None:
        if not others:  # the run failed: another caller holds the session, and another fills the queue
            others.append(hold_session(server, rows=2))
            others.append(server.submit("busy", busy_inputs(8, seed=3)))
        hand_over(self, *args, **kwargs)
        others[0].let_go()  # (the tasks are queued again, or refused: the queue may drain now)

    monkeypatch.setattr(_loop_batching._LoopState, "_hand_over", others_fill_the_queue)

    async def main() -> list[Any]:
        calls = [server.apredict("busy", busy_inputs(1, index=i)) for i in (1, 99)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(main())
    others[0].release()
    others[1].result(timeout=20)
    assert others, "the loop's run did not fail"
    assert isinstance(results[0], inprocserve.Prediction), results[0]  # (QueueFullError)
    assert isinstance(results[1], inprocserve.InvalidInputError), results[1]


def test_a_task_whose_request_a_worker_queued_again_meanwhile_still_withdraws_it_when_cancelled(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, hold_session: SessionHolder
) -> None:
    """The loop queues its group as one request; before the loop has set the tasks' withdrawal hooks, a busy
    worker takes it, its run fails (one task's input), and the worker queues each task again on its own,
    with hooks of their own. The loop's late hooks overwrote those, then were taken back: a task cancelled
    afterwards left its request in the queue, counted against ``max_queue_rows``, until a worker came."""
    server = make_server(busy_repository)
    blocker = hold_session(server)  # the worker is busy: it takes the group's request once done, unwoken
    handed, resume = threading.Event(), threading.Event()
    watch = _loop_batching._Merged.withdraw_when_given_up
    hand_over = _loop_batching._LoopState._hand_over

    def late(self: Any, *args: Any) -> None:  # (the loop's thread, just after it queued the group)
        blocker.let_go()
        handed.wait(20)
        watch(self, *args)

    def handing_over(self: Any, *args: Any, **kwargs: Any) -> None:  # (the worker's thread, its run failed)
        hand_over(self, *args, **kwargs)
        handed.set()
        resume.wait(20)  # the tasks' requests stay queued until the test is done looking

    monkeypatch.setattr(_loop_batching._Merged, "withdraw_when_given_up", late)
    monkeypatch.setattr(_loop_batching._LoopState, "_hand_over", handing_over)

    async def main() -> tuple[int, list[Any]]:
        tasks = [asyncio.ensure_future(server.apredict("busy", busy_inputs(1, index=i))) for i in (1, 99)]
        await asyncio.sleep(0)  # each task made its request
        await asyncio.sleep(0)  # the iteration's flush queued them, and the worker queued them again
        assert handed.is_set()
        tasks[0].cancel()
        await asyncio.sleep(0)  # the cancelled task takes its cancellation
        await asyncio.sleep(0)
        queued = version_status(server, "busy")["queued_rows"]
        resume.set()
        return queued, await asyncio.gather(*tasks, return_exceptions=True)

    try:
        queued, results = asyncio.run(main())
    finally:
        resume.set()
        handed.set()
    blocker.release()
    assert [type(r).__name__ for r in results] == ["CancelledError", "InvalidInputError"]
    assert queued == 1  # the other task's request alone (the cancelled one's was left: 2)
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)


def test_a_task_interrupted_once_it_joined_its_group_is_not_run_nor_counted_answered(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    """The loop's thread interrupted (a signal handler raised) once a task's request joined its iteration's
    group, as it arranges the iteration's flush: the task never awaits it, so the group runs without it.
    (Its rows ran for nobody, and the status page counted it answered while its task got the interruption.)"""
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))  # adopts the runners: the merged way applies
    before = version_status(server, "busy")

    async def main() -> list[Any]:
        with interrupted_at(_loop_batching._LoopState._flush_at_iteration_end.__code__):
            tasks = [asyncio.ensure_future(server.apredict("busy", busy_inputs(1, index=i))) for i in range(2)]
            await asyncio.sleep(0)  # each task made its request
        await asyncio.wait(tasks, timeout=10)
        return [task.exception() or task.result()["picked"].tolist() if task.done() else "waiting" for task in tasks]

    first, second = asyncio.run(main())
    assert isinstance(first, Interrupted)
    assert second == [[2.0, 3.0]]
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    after = version_status(server, "busy")
    assert after["rows_run"] - before["rows_run"] == 1
    latency = (
        after["latency_ms"]["count"] - before["latency_ms"]["count"],
        after["latency_ms"]["errors"] - before["latency_ms"]["errors"],
    )
    assert latency == (1, 1)
