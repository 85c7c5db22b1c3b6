"""apredict's event-loop batcher where an answer is handed from a worker's thread to the loop: a failure, a
cancellation or an interruption in that hand-over must leave no task waiting, neither forever nor past its own
deadline, and every other task of the batch answered.

Real onnxruntime and real asyncio tasks. Where the window can only be reached from inside the library (building
the caller's ``Prediction`` failing: a ``MemoryError`` in practice), the one function that builds it is patched
to raise, and the test says so."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _loop_batching
from inprocserve._request import Request

from .conftest import ServerFactory, busy_inputs, version_status, wait_until
from .test_batch_execution_interrupted import MARK, GeventLikeTimeout, stopped_runs
from .test_interrupted_callers import Interrupted, interrupted_at

__all__ = ["stopped_runs"]  # (the fixture, imported for pytest)

BOUND_S = 10.0
"""How long a test waits for its tasks: generous; reaching it is the failure (a task left waiting)."""


def _rows(*firsts: float) -> list[np.ndarray]:
    """One ``[1, 4]`` request per value, each filled with it."""
    return [np.full((1, 4), first, np.float32) for first in firsts]


def _outcome(result: Any) -> Any:
    """A task's answer's first value, or its error."""
    return result if isinstance(result, BaseException) else float(result["y"][0, 0])


def _merged_server(make_server: ServerFactory, repository: Path) -> inprocserve.Server:
    """A server whose ``scale`` version takes merged requests, with its workers started and parked: requests an
    iteration queues are taken together by the worker its flush wakes."""
    server = make_server(repository)
    server.predict("scale", np.ones((1, 4), np.float32))  # adopts the runners: the merged way applies
    server.submit("scale", np.ones((1, 4), np.float32)).result(timeout=BOUND_S)  # starts the workers
    batcher = server._registry.routes["scale"].default.batcher
    assert batcher is not None
    wait_until(lambda: len(batcher._idle) == batcher._pool.size)
    return server


def _settled(server: inprocserve.Server) -> None:
    """Nothing of the test's requests is left in flight or queued."""
    wait_until(lambda: (lambda s: (s["in_flight"], s["queued_rows"]))(version_status(server, "scale")) == (0, 0))


class PredictionFailed(MemoryError):
    """What building one caller's ``Prediction`` raises here (a ``MemoryError`` is what it can raise)."""


def test_a_task_whose_answer_fails_to_build_gets_an_error_and_its_batch_mates_their_answers(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tasks' requests queued the full way (as with a cache) run as one batch on a worker; building the
    second one's ``Prediction`` fails (``Request.prediction`` patched to raise: the only way to reach it). The
    others get their answers; the second one gets an error, at the latest at its own deadline. (It waited
    forever: its answer was claimed from its deadline before the failure, and nothing posted it.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)  # the full way, as with a cache
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    prediction = Request.prediction

    def failing_for_the_second(self: Request) -> inprocserve.Prediction:
        if self.arrays["x"][0, 0] == 2.0:
            raise PredictionFailed("no memory for the answer")
        return prediction(self)

    monkeypatch.setattr(Request, "prediction", failing_for_the_second)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x, timeout_s=0.5) for x in _rows(1.0, 2.0, 3.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), 5.0)  # (10 deadlines)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert got[0] == 2.0 and got[2] == 6.0, got
    assert isinstance(got[1], inprocserve.InprocserveError | MemoryError), got
    _settled(server)


def test_a_merged_task_whose_answer_fails_to_build_leaves_its_batch_mates_their_answers(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three tasks' requests merged into one run; building the second one's ``Prediction`` as the loop cuts
    each task's rows out fails (``prediction_of`` patched to raise: the only way to reach it). The first and
    third get their answers, the second the error. (The third got the second one's error, though its rows had
    run, and the status page counted it refused after its run.)"""
    server = _merged_server(make_server, scale_repository)
    prediction_of = _loop_batching.prediction_of

    def failing_for_the_second(outputs: Any, *args: Any) -> inprocserve.Prediction:
        if outputs["y"][0, 0] == 4.0:
            raise PredictionFailed("no memory for the answer")
        return prediction_of(outputs, *args)

    monkeypatch.setattr(_loop_batching, "prediction_of", failing_for_the_second)
    before = version_status(server, "scale")["latency_ms"]

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0, 3.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert got[0] == 2.0 and got[2] == 6.0, got
    assert isinstance(got[1], MemoryError), got
    after = version_status(server, "scale")["latency_ms"]
    # as each task got it: two answers, one error (the third was counted neither answered nor failed)
    assert (after["count"] - before["count"], after["errors"] - before["errors"]) == (2, 1), (before, after)
    _settled(server)


@pytest.mark.parametrize("merged", [True, False], ids=["merged", "full-way"])
@pytest.mark.parametrize("kind", [GeventLikeTimeout, SystemExit, KeyboardInterrupt])
def test_a_batch_stopped_on_a_worker_by_a_base_exception_answers_its_tasks(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    stopped_runs: list[type[BaseException]],
    kind: type[BaseException],
    merged: bool,
) -> None:
    """A worker's run of three tasks' requests (merged into one request, or queued one by one the full way)
    is stopped by a ``BaseException`` raised inside it: no task waits forever. Each is answered (its rows run
    again on their own) or gets an ``InferenceError`` naming the interruption, and the version still serves."""
    server = _merged_server(make_server, scale_repository)
    if not merged:
        monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    stopped_runs.append(kind)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(MARK, 2.0, 3.0)]
        first = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)
        later = await asyncio.wait_for(server.apredict("scale", _rows(5.0)[0]), BOUND_S)
        return [*first, later]

    got = [_outcome(result) for result in asyncio.run(main())]
    assert not stopped_runs, "no run was stopped"
    for index, expected in enumerate([2 * MARK, 4.0, 6.0, 10.0]):
        outcome = got[index]
        if isinstance(outcome, inprocserve.InferenceError):
            assert f"interrupted by {kind.__name__}" in str(outcome), outcome
        else:
            assert outcome == expected, got
    _settled(server)


def test_a_drain_interrupted_as_it_answers_merged_tasks_leaves_no_task_waiting(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two merged requests of one loop iteration (tasks with a deadline and without are kept apart) run in one
    worker's batch, whose answers reach the loop in one drain. The loop's thread is interrupted (a signal
    handler raising gevent's ``Timeout``, say) as that drain begins answering the first: its tasks get the
    interruption, the other request's tasks their answers. (All four waited forever: the interruption left
    the first request's tasks unanswered, and the second's answers in the inbox until some later answer
    woke the loop.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0)]
        calls += [server.apredict("scale", x, timeout_s=60) for x in _rows(3.0, 4.0)]
        with interrupted_at(_loop_batching._LoopState._answered.__code__):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    interrupted = [isinstance(outcome, Interrupted) for outcome in got]
    assert interrupted in ([True, True, False, False], [False, False, True, True]), got
    assert [outcome for outcome in got if not isinstance(outcome, Interrupted)] in ([2.0, 4.0], [6.0, 8.0]), got
    _settled(server)


def _worker_batch_whose_first_recording_fails(
    make_server: ServerFactory, scale_repository: Path, monkeypatch: pytest.MonkeyPatch
) -> inprocserve.Server:
    """A server whose apredict requests go the full way and run on a worker, and whose recording of the
    request marked ``MARK`` (``Server._answered``, patched: the only way to reach it) raises after recording."""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)  # the full way, as with a cache
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    answered = server._answered

    def failing_for_the_first(request: Request, *args: Any, **kwargs: Any) -> None:
        answered(request, *args, **kwargs)
        if request.arrays["x"][0, 0] == MARK:
            raise RuntimeError("recording the answer failed")

    monkeypatch.setattr(server, "_answered", failing_for_the_first)
    return server


@pytest.mark.parametrize("kind", [RuntimeError, SystemExit])
def test_a_failed_batch_whose_first_hand_over_fails_still_answers_the_other_tasks(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    stopped_runs: list[type[BaseException]],
    kind: type[BaseException],
) -> None:
    """Three tasks' requests queued one by one run as one worker's batch, which fails as a whole (the runner
    raises a plain error, or a ``BaseException`` stops it); what follows the first request's failure (the
    server's recording of it, ``Server._answered``, patched to raise: the only way to reach it) fails. Its
    task still gets its error, and the other two theirs. (They waited forever: the batch's failure was never
    handed to them, as a successful batch's answers are when one hand-over fails.)"""
    server = _worker_batch_whose_first_recording_fails(make_server, scale_repository, monkeypatch)
    stopped_runs.append(kind)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(MARK, 2.0, 3.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert not stopped_runs, "no run was stopped"
    expected = "interrupted by SystemExit" if kind is SystemExit else "stopped from inside the run"
    assert all(isinstance(outcome, Exception) and expected in str(outcome) for outcome in got), got
    _settled(server)


def test_a_request_the_loop_runs_itself_stopped_by_a_base_exception_answers_its_task(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    stopped_runs: list[type[BaseException]],
) -> None:
    """A request queued the full way that the loop's end-of-iteration flush runs itself (its version idle, its
    run short) is stopped by a ``BaseException`` raised inside the run (gevent's ``Timeout``): the flush passes
    it on (asyncio logs it), and the task gets an error, as a worker's run stopped so answers its callers."""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)  # the full way, as with a cache
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 10.0)  # the flush runs it on the loop
    stopped_runs.append(GeventLikeTimeout)

    async def main() -> Any:
        try:
            return await asyncio.wait_for(server.apredict("scale", _rows(MARK)[0]), 3.0)  # (a run of 1 row)
        except (inprocserve.InprocserveError, GeventLikeTimeout) as exc:
            return exc

    got = _outcome(asyncio.run(main()))
    assert not stopped_runs, "no run was stopped"
    assert isinstance(got, inprocserve.InprocserveError | GeventLikeTimeout), got
    _settled(server)


def test_a_group_the_loop_runs_itself_stopped_by_a_base_exception_answers_its_tasks(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    stopped_runs: list[type[BaseException]],
) -> None:
    """An iteration's group of three tasks that the loop runs itself (its version idle, its run short) is
    stopped by a ``BaseException`` raised inside the run (gevent's ``Timeout``): each task gets the
    interruption, and the version still serves the loop's next requests."""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 10.0)  # the flush runs the group on the loop
    stopped_runs.append(GeventLikeTimeout)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(MARK, 2.0, 3.0)]
        first = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)
        calls = [server.apredict("scale", x) for x in _rows(4.0, 5.0)]
        return [*first, *await asyncio.wait_for(asyncio.gather(*calls), BOUND_S)]

    got = [_outcome(result) for result in asyncio.run(main())]
    assert not stopped_runs, "no run was stopped"
    assert all(isinstance(outcome, GeventLikeTimeout | inprocserve.InferenceError) for outcome in got[:3]), got
    assert got[3:] == [8.0, 10.0], got
    _settled(server)


def test_a_batch_past_its_deadline_whose_first_hand_over_fails_gives_the_others_their_deadline(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    stopped_runs: list[type[BaseException]],
) -> None:
    """Three tasks' requests queued one by one run as one worker's batch, which fails with an error about the
    batch as a whole (its deadline passed in the run); what follows the first request's failure (the server's
    recording of it, ``Server._answered``, patched to raise: the only way to reach it) fails. The other two
    still get the deadline's error. (They got the recording's ``RuntimeError``, logged as the batch failing
    unexpectedly.)"""
    server = _worker_batch_whose_first_recording_fails(make_server, scale_repository, monkeypatch)
    stopped_runs.append(inprocserve.DeadlineExceededError)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(MARK, 2.0, 3.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert not stopped_runs, "no run was stopped"
    assert all(isinstance(outcome, inprocserve.DeadlineExceededError) for outcome in got), got
    _settled(server)


def test_a_group_timer_leaves_a_claimed_answer_to_its_worker_without_spinning_the_loop(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks with a deadline merged into one worker's run, which fails (the second's input fails in
    onnxruntime): each is queued again on its own. The first one's answer is recorded by its worker, which is
    then slow to post it (``Server._answered`` patched to sleep: the only way to hold that window open)
    while the group's deadline passes: the answer is the task's, and the group's timer, finding it claimed,
    waits for it. (The timer armed itself again for that same past deadline, each iteration of the loop:
    the loop spun at full speed, thousands of times, until the answer came.)"""
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))  # adopts the runners: the merged way applies
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    answered = server._answered

    def slow_after_recording_the_first(request: Request, *args: Any, **kwargs: Any) -> None:
        answered(request, *args, **kwargs)
        if request.error is None and request.callers == 1:  # (the first task's own run, once handed over)
            wait_until(lambda: bool(fired), timeout_s=5.0)  # the group's deadline passes before the answer is posted
            time.sleep(0.2)  # (and the loop goes on meanwhile)

    monkeypatch.setattr(server, "_answered", slow_after_recording_the_first)
    expire = _loop_batching._Group._expire
    fired: list[float] = []

    def counted(self: Any, when: float) -> None:
        fired.append(when)
        expire(self, when)

    monkeypatch.setattr(_loop_batching._Group, "_expire", counted)

    async def main() -> list[Any]:
        calls = [server.apredict("busy", busy_inputs(1, index=i), timeout_s=0.5) for i in (1, 99)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = asyncio.run(main())
    assert isinstance(got[0], inprocserve.Prediction), got
    assert isinstance(got[1], inprocserve.InvalidInputError | inprocserve.DeadlineExceededError), got
    assert len(fired) <= 3, f"the group's timer fired {len(fired)} times"
