"""Review of the day's last loop-batching commits: apredict's event-loop batcher where the loop's thread is
interrupted (Ctrl-C's ``KeyboardInterrupt``, gevent's ``Timeout``: a signal handler raising) a second time as
the first interruption is cleaned up.

Real onnxruntime and real asyncio tasks, every wait bounded (reaching the bound is the failure: a task left
waiting). A trace function raises at the exact line where a pending signal handler would run."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from inprocserve import ModelConfig, RolloutConfig, _loop_batching

from .conftest import ServerFactory
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_leftovers14 import SHORT_BOUND_S, three_tasks_interrupted_as_the_first_is_recorded
from .test_loophard import _merged_server, _outcome, _rows, _settled
from .test_telemetry import Otel
from .test_telemetry import otel as otel

__all__ = ["otel"]  # (the fixture, imported for pytest)

_CLEAN_UP = _loop_batching._LoopState._drain_interrupted
_REFUSED = _loop_batching._Group.refused


def test_a_merged_task_refused_as_the_clean_up_is_interrupted_again_is_recorded_once(
    otel: Otel,
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Two tasks merged into one worker's run, with an SDK and every span sampled. The loop's thread is
    interrupted as the drain begins handing out their answer, and again (a second Ctrl-C, an outer gevent
    ``Timeout``) as the drain's clean-up has just recorded the first task's refusal, before that task got its
    error. Both tasks get the interruption, and each is recorded once: two spans, each ended once, and two
    refused requests in the duration metric. (The clean-up, run once more, refused the first task again: its
    span ended twice and its refusal counted twice.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    otel.spans.clear()  # (the set-up's requests)
    recorded = line_of(_REFUSED, 'logger.exception("inprocserve: recording a refused')
    fired: list[bool] = []

    def interrupted_again(self: Any, *args: Any) -> None:
        if fired:
            return _CLEAN_UP(self, *args)
        fired.append(True)
        with interrupted_at(_REFUSED.__code__, after_line=recorded):  # (past the recording, no exporter error)
            return _CLEAN_UP(self, *args)

    monkeypatch.setattr(_loop_batching._LoopState, "_drain_interrupted", interrupted_again)

    def refused_counts() -> int:
        return sum(
            point.count
            for point in otel.metric_points("inprocserve.request.duration")
            if point.attributes.get("error.type") == "Interrupted"
        )

    before = refused_counts()  # (cumulative over the process)

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0)]
        with interrupted_at(_loop_batching._LoopState._answered.__code__):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), SHORT_BOUND_S)

    with caplog.at_level(logging.WARNING):
        got = [_outcome(result) for result in asyncio.run(main())]
    assert fired == [True], "the drain's clean-up was not called"
    assert all(isinstance(outcome, Interrupted) for outcome in got), got
    assert not [r.getMessage() for r in caplog.records if "ended span" in r.getMessage()], "a span ended twice"
    assert len(otel.finished("inprocserve.predict")) == 2
    assert refused_counts() - before == 2
    _settled(server)


_ANSWER = _loop_batching._LoopState._answer
_RECORD_ANSWERED = _loop_batching._LoopState._record_answered


def test_a_merged_task_answered_as_its_late_recording_is_interrupted_again_has_its_span_ended(
    otel: Otel,
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three tasks merged into one worker's run, with an SDK and every span sampled. The loop's thread is
    interrupted as it records the first task (its latency recorded, its span not yet ended), and again (a
    second Ctrl-C, an outer gevent ``Timeout``) as the late recording of that task, which it answered, begins.
    That task gets its answer, the two after it the interruption, and all three spans are exported, each ended
    once. (The answered task's span was never ended, and so never exported: a trace with a request missing.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    otel.spans.clear()  # (the set-up's requests)
    fired: list[bool] = []

    def interrupted_again(*args: Any, **kwargs: Any) -> None:
        if fired:
            return _RECORD_ANSWERED(*args, **kwargs)
        fired.append(True)
        with interrupted_at(_RECORD_ANSWERED.__code__):
            return _RECORD_ANSWERED(*args, **kwargs)

    monkeypatch.setattr(_loop_batching._LoopState, "_record_answered", staticmethod(interrupted_again))

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0, 3.0)]
        with interrupted_at(_ANSWER.__code__, after_line=line_of(_ANSWER, "latency.record(elapsed_s")):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), SHORT_BOUND_S)

    with caplog.at_level(logging.WARNING):
        got = [_outcome(result) for result in asyncio.run(main())]
    assert fired == [True], "the late recording was not called"
    assert got[0] == 2.0 and all(isinstance(outcome, Interrupted) for outcome in got[1:]), got
    assert not [r.getMessage() for r in caplog.records if "ended span" in r.getMessage()], "a span ended twice"
    spans = otel.finished("inprocserve.predict")
    assert len(spans) == 3, [(span.name, span.attributes) for span in spans]
    _settled(server)


class InterruptedAgain(BaseException):
    """The second interruption (a second Ctrl-C, an outer gevent ``Timeout``), told apart from the first."""


def test_a_merged_task_answered_as_its_late_note_is_interrupted_again_leaves_the_first_interruption_raised(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stable version named (``rollout.stable``): three tasks merged into one worker's run, the loop's thread
    interrupted as it records the first (its latency recorded), and again as that answered task's late note to
    the router begins. The first task gets its answer and is counted served; the two after it get the first
    interruption, which is the one raised. (They got the second: the late note, interrupted, raised its own.)"""
    stable_named = ModelConfig(rollout=RolloutConfig(stable=1))
    server = _merged_server(lambda repository: make_server(repository, config=stable_named), scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    router = server._registry.routes["scale"].router
    served_many = router.served_many
    fired: list[bool] = []

    def interrupted_again(*args: Any, **kwargs: Any) -> None:
        if fired:
            return served_many(*args, **kwargs)
        fired.append(True)
        raise InterruptedAgain

    monkeypatch.setattr(router, "served_many", interrupted_again)

    got, served = three_tasks_interrupted_as_the_first_is_recorded(server)
    assert fired == [True], "the late note was not made"
    assert _outcome(got[0]) == 2.0 and [type(outcome) for outcome in got[1:]] == [Interrupted] * 2, got
    assert served == 1
