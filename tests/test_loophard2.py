"""apredict's event-loop batcher where a failure or an interruption lands in a window the first hardening pass
(tests/test_loophard.py) left: a request routed off the loop (its flags may block), a drain interrupted as it
sends a merged request's tasks the full way, a refusal that itself fails. No task may wait forever, and the
loop must go on serving.

Real onnxruntime and real asyncio tasks, every wait bounded (reaching the bound is the failure: a task left
waiting). Where a window can only be reached from inside the library, the one function involved is patched,
and the test says so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, ModelConfig, _loop_batching
from inprocserve._request import Request
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, version_status, wait_until
from .test_batch_execution_interrupted import MARK, GeventLikeTimeout, stopped_runs
from .test_interrupted_callers import Interrupted, interrupted_at
from .test_loop_batching import HeldFlags, save_column_max, warm
from .test_loophard import _merged_server, _outcome, _settled

__all__ = ["stopped_runs"]  # (the fixture, imported for pytest)

BOUND_S = 10.0
"""How long a test waits for its tasks: generous; reaching it is the failure (a task left waiting)."""


def _row(first: float) -> np.ndarray:
    """One ``[1, 4]`` request filled with ``first``."""
    return np.full((1, 4), first, np.float32)


def _canary_server(make_server: ServerFactory, repository: Path) -> tuple[inprocserve.Server, HeldFlags]:
    """A server whose ``scale`` model rolls out version 2 to half its users through a provider that may block:
    an event loop's request to it is routed on the loop's executor (``predict`` on a thread)."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    flags = HeldFlags({"scale.canary.percent": 50})
    flags.go.set()  # (answers at once: only where it is read matters here)
    config = ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        rollout=inprocserve.RolloutConfig(
            strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
        ),
    )
    return make_server(repository, config=config, flags=flags, flag_timeout_s=30), flags


@pytest.mark.parametrize("timeout_s", [None, 5.0], ids=["no-deadline", "deadline"])
@pytest.mark.parametrize("kind", [GeventLikeTimeout, SystemExit, KeyboardInterrupt])
def test_a_request_routed_off_the_loop_stopped_by_a_base_exception_leaves_the_loop_serving(
    repository: Path,
    make_server: ServerFactory,
    stopped_runs: list[type[BaseException]],
    kind: type[BaseException],
    timeout_s: float | None,
) -> None:
    """A task's request whose flags may block is predicted on a thread of the loop's executor; its run there is
    stopped by a ``BaseException`` raised inside it (the backend's run raises it). The task gets an
    ``InferenceError`` naming the interruption, as a worker's run stopped so answers its callers, and the loop
    goes on to answer its next request. (The exception was set on the task's future and asyncio raised it out
    of the loop: ``asyncio.run`` died of ``SystemExit`` or ``KeyboardInterrupt`` raised on another thread.)"""
    server, _flags = _canary_server(make_server, repository)
    context = {"user_id": "u1"}
    stopped_runs.append(kind)

    async def main() -> list[Any]:
        got: list[Any] = []
        first = server.apredict("scale", _row(MARK), context=context, timeout_s=timeout_s)
        try:
            got.append(await asyncio.wait_for(first, BOUND_S))
        except Exception as exc:
            got.append(exc)
        later = server.apredict("scale", _row(1.0), context=context, timeout_s=timeout_s)
        got.append(await asyncio.wait_for(later, BOUND_S))
        return got

    died = None
    try:
        first, later = asyncio.run(main())
    except BaseException as exc:  # (caught: a KeyboardInterrupt would end pytest, asyncio's ends as a cancellation)
        died = repr(exc)
    assert died is None, f"the task, and with it the event loop, died of {died}, raised on the executor's thread"
    assert not stopped_runs, "no run was stopped"
    assert isinstance(first, inprocserve.InferenceError), first
    assert f"interrupted by {kind.__name__}" in str(first), first
    assert later["y"][0, 0] in (1.0, 2.0), later


def test_a_merged_answer_whose_refusal_fails_still_answers_its_tasks_and_the_rest_of_the_drain(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two merged requests of one loop iteration (tasks with a deadline and without are kept apart) run in one
    worker's batch, whose answers reach the loop in one drain. Answering the first fails (a bug:
    ``_LoopState._answered`` patched to raise for it), and so does recording its tasks' refusal (the request
    telemetry's ``refused`` patched to raise, as a broken metrics or span exporter would: the only way to
    reach that window). Its tasks still get the error, and the other request's tasks their answers. (All four
    waited forever: the refusal raised before any task was given its error, and the drain stopped with the
    other answer still in the inbox, until some later answer woke the loop.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    answered = _loop_batching._LoopState._answered

    def failing_for_the_first(self: Any, merged: Any, request: Request) -> None:
        if merged.members[0].arrays["x"][0, 0] == 1.0:
            raise RuntimeError("answering the merged request failed")
        answered(self, merged, request)

    def broken_exporter(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(_loop_batching._LoopState, "_answered", failing_for_the_first)
    monkeypatch.setattr(type(server._telemetry), "refused", broken_exporter)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", _row(first)) for first in (1.0, 2.0)]
        calls += [server.apredict("scale", _row(first), timeout_s=60) for first in (3.0, 4.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert [str(outcome) for outcome in got[:2]] == ["answering the merged request failed"] * 2, got
    assert got[2:] == [6.0, 8.0], got
    _settled(server)


def test_a_drain_interrupted_as_it_sends_merged_tasks_the_full_way_leaves_the_one_queued_again_its_answer(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks' requests merged into one worker's run, whose outputs cannot be cut per task (a model without
    a real batch axis): the loop, handing the answer out, sends each task the full way. The loop's thread is
    interrupted (a signal handler raising) just after the first task's request is queued again, before its
    worker is due to be woken. That task gets its answer, from its own run; the second the interruption, and
    nothing is left queued. (The first got the interruption too, though its request was queued again, and that
    request stayed queued, counted in flight on an idle version, with no worker woken for it.)"""
    save_column_max(repository)
    trusted = BatchingConfig(max_delay_s=0.0, rows_independent="yes")  # (the run's check is under test)
    server = make_server(repository, config=ModelConfig(batching=trusted))
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop

    async def main() -> list[Any]:
        await warm(server, "total", np.ones((1, 2), np.float32))
        calls = [server.apredict("total", np.full((1, 2), first, np.float32)) for first in (1.0, 2.0)]
        with interrupted_at(_loop_batching._LoopState.queued.__code__):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert got[0] == 1.0 and isinstance(got[1], Interrupted), got
    wait_until(lambda: (lambda s: (s["in_flight"], s["queued_rows"]))(version_status(server, "total")) == (0, 0))


def test_a_drain_whose_refusal_fails_hands_out_the_rest_of_its_answers(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two merged requests of one loop iteration run in one worker's batch, whose answers reach the loop in one
    drain. Handing out the first fails after its tasks got their answers, and so does every refusal of it
    (``_Group.answered``, which ``_Group.refused`` ends with, patched to raise for that group: a bug, the only
    way to reach that window). The other request's tasks still get their answers, in the loop's next
    iteration. (They waited forever: the drain stopped with their answer in the inbox, and no later answer
    came to wake the loop.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    answered = _loop_batching._Group.answered

    def failing_for_the_first(self: Any) -> None:
        if self.members and self.members[0].arrays["x"][0, 0] == 1.0:
            raise RuntimeError("a bug in the group's bookkeeping")
        answered(self)

    monkeypatch.setattr(_loop_batching._Group, "answered", failing_for_the_first)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", _row(first)) for first in (1.0, 2.0)]
        calls += [server.apredict("scale", _row(first), timeout_s=60) for first in (3.0, 4.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert got == [2.0, 4.0, 6.0, 8.0], got
    _settled(server)
