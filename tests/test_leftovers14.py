"""apredict's event-loop batcher where an interruption (Ctrl-C's ``KeyboardInterrupt``, gevent's ``Timeout``: a
signal handler raising on the loop's thread) lands a second time as the first one is cleaned up, or as a merged
task's answer is recorded, and where recording refused tasks fails for a whole group.

Real onnxruntime and real asyncio tasks, every wait bounded (reaching the bound is the failure: a task left
waiting). A trace function raises at the exact line where a pending signal handler would run."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from inprocserve import ModelConfig, RolloutConfig, Server, _loop_batching
from inprocserve._request import Request

from .conftest import ServerFactory
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_loophard import _merged_server, _outcome, _rows, _settled
from .test_telemetry import Otel
from .test_telemetry import otel as otel

__all__ = ["otel"]  # (the fixture, imported for pytest)

SHORT_BOUND_S = 3.0
"""How long a test waits for its tasks (their answers take milliseconds): reaching it is the failure."""


_CLEAN_UP = _loop_batching._LoopState._drain_interrupted


@pytest.mark.parametrize(
    "second",
    [None, line_of(_CLEAN_UP, "loop = self._loop()")],
    ids=["as-the-clean-up-begins", "as-it-schedules-the-next-drain"],
)
def test_a_drain_interrupted_again_as_it_cleans_up_leaves_no_task_waiting(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, second: int | None
) -> None:
    """Two merged requests of one loop iteration run in one worker's batch, whose answers reach the loop in one
    drain. The loop's thread is interrupted as the drain begins answering the first, and again (a second
    Ctrl-C, an outer gevent ``Timeout``) as the drain's clean-up begins, or just before it schedules the drain
    of the answers left in the inbox. The first request's tasks get the interruption, the other's their
    answers. (The second request's tasks waited until some later answer woke the loop, forever here; and with
    the clean-up stopped as it began, the first request's tasks too.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    fired: list[bool] = []

    def interrupted_again(self: Any, *args: Any) -> None:
        # (a trace function that raises is unset: the second interruption's is set as the clean-up is called)
        if fired:
            return _CLEAN_UP(self, *args)
        fired.append(True)
        with interrupted_at(_CLEAN_UP.__code__, after_line=second):
            return _CLEAN_UP(self, *args)

    monkeypatch.setattr(_loop_batching._LoopState, "_drain_interrupted", interrupted_again)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0)]
        calls += [server.apredict("scale", x, timeout_s=60) for x in _rows(3.0, 4.0)]
        with interrupted_at(_loop_batching._LoopState._answered.__code__):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), SHORT_BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert fired == [True], "the drain's clean-up was not called"
    interrupted = [isinstance(outcome, Interrupted) for outcome in got]
    assert interrupted in ([True, True, False, False], [False, False, True, True]), got
    assert [outcome for outcome in got if not isinstance(outcome, Interrupted)] in ([2.0, 4.0], [6.0, 8.0]), got
    _settled(server)


def test_a_broken_exporter_refusing_a_merged_group_is_logged_once(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four tasks merged into one worker's run; handing out the answer fails (a bug: ``_LoopState._answered``
    patched to raise), and recording each task's refusal fails too (the request telemetry's ``refused`` patched
    to raise, as a broken span or metrics exporter would). Each task gets the error, and the broken exporter
    is logged once, with its traceback. (It was logged once per task: up to 64 tracebacks for one group.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop

    def failing(self: Any, merged: Any, request: Request) -> None:
        raise RuntimeError("answering the merged request failed")

    def broken_exporter(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the exporter broke")

    monkeypatch.setattr(_loop_batching._LoopState, "_answered", failing)
    monkeypatch.setattr(type(server._telemetry), "refused", broken_exporter)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0, 3.0, 4.0)]
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), SHORT_BOUND_S)

    with caplog.at_level(logging.ERROR, logger=_loop_batching.__name__):
        got = asyncio.run(main())
    assert [str(outcome) for outcome in got] == ["answering the merged request failed"] * 4, got
    logged = [record for record in caplog.records if "recording a refused request" in record.getMessage()]
    assert len(logged) == 1, [record.getMessage() for record in logged]
    assert logged[0].exc_info is not None and "the exporter broke" in str(logged[0].exc_info[1])
    _settled(server)


_ANSWER = _loop_batching._LoopState._answer


@pytest.mark.parametrize(
    "recorded",
    ["latency.record(elapsed_s", "member.span, decision, version"],
    ids=["before-its-span-ends", "just-after-its-span-ended"],
)
def test_a_merged_task_answered_as_its_recording_is_interrupted_has_its_span_ended_once(
    otel: Otel,
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    recorded: str,
) -> None:
    """Three tasks merged into one worker's run, with an SDK and every span sampled. The loop's thread is
    interrupted as it records the first task: its latency recorded but its span not yet ended, or just after
    its span was ended (before the task was counted recorded). That task gets its answer, the two after it the
    interruption, and all three spans are exported, each ended once. (The first task's span was never ended,
    and so never exported: a trace with a request missing.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    otel.spans.clear()  # (the set-up's requests)
    answer = _ANSWER

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0, 3.0)]
        with interrupted_at(answer.__code__, after_line=line_of(answer, recorded)):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), SHORT_BOUND_S)

    with caplog.at_level(logging.WARNING):
        got = [_outcome(result) for result in asyncio.run(main())]
    assert got[0] == 2.0 and all(isinstance(outcome, Interrupted) for outcome in got[1:]), got
    assert not [r.getMessage() for r in caplog.records if "ended span" in r.getMessage()], "a span ended twice"
    spans = otel.finished("inprocserve.predict")
    assert len(spans) == 3, [(span.name, span.attributes) for span in spans]
    errors = sorted(str((span.attributes or {}).get("error.type")) for span in spans)
    assert errors == ["Interrupted", "Interrupted", "None"], errors  # (the first as it was answered)
    _settled(server)


def test_a_merged_task_answered_as_its_recording_is_interrupted_is_counted_served_and_credited(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stable version named (``rollout.stable``) and no flags: three tasks merged into one worker's run, and
    the loop's thread interrupted as it records the first (its latency recorded). That task gets its answer,
    and is counted served on the status page and credited with its outcome, as every answered task is. (It was
    counted served nowhere and its outcome credited to no variant, though its caller had the answer.)"""
    stable_named = ModelConfig(rollout=RolloutConfig(stable=1))
    server = _merged_server(lambda repository: make_server(repository, config=stable_named), scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop

    got, served = three_tasks_interrupted_as_the_first_is_recorded(server)
    assert _outcome(got[0]) == 2.0 and all(isinstance(outcome, Interrupted) for outcome in got[1:]), got
    assert (served, server.record_outcome(got[0].request_id, 1.0)) == (1, "stable")


def three_tasks_interrupted_as_the_first_is_recorded(server: Server) -> tuple[list[Any], int]:
    """Three tasks of one loop merged into one worker's run, the loop's thread interrupted as it records the
    first (its latency recorded): what each task got, and how many more the stable variant counts served."""

    def served() -> int:
        count: int = server.status()["models"]["scale"]["rollout"]["variants"]["stable"]["served"]
        return count

    before = served()

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0, 3.0)]
        with interrupted_at(_ANSWER.__code__, after_line=line_of(_ANSWER, "latency.record(elapsed_s")):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), SHORT_BOUND_S)

    got = asyncio.run(main())
    _settled(server)
    return got, served() - before
