"""Leftovers of the eleventh review: shadow comparisons of integers against floats, decided by the versions'
output types; and apredict's loop batcher answering merged tasks when the loop's thread is interrupted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _inflight, _loop_batching
from inprocserve.testing import save_model

from .conftest import ServerFactory, SessionHolder, version_status, wait_until
from .test_batch_execution_interrupted import MARK, GeventLikeTimeout, stopped_runs
from .test_cache_hardening import build_zipmap_classifier
from .test_inflight import sharing
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_leftovers10a_shadow import shadowed_regressors
from .test_loophard import BOUND_S, _merged_server, _outcome, _rows, _settled
from .test_loophard2 import _canary_server, _row
from .test_shadow_hardening import stats

__all__ = ["stopped_runs"]  # (the fixture, imported for pytest)


@pytest.mark.parametrize("stable_integers", [False, True])
def test_the_same_two_regressors_are_compared_the_same_way_whatever_the_sampled_values(
    repository: Path, make_server: ServerFactory, *, stable_integers: bool
) -> None:
    # A float regressor (1.5 * x) shadowed by a version answering it truncated to int64, or the other way round.
    # A request whose prices are all whole numbers (x = 2, 4: 3.0, 6.0) was compared as labels (agreement 1.0,
    # no difference); the next one (x = 1, 2, 3: 1.5, 3.0, 4.5) by its difference (0.5, no agreement): the
    # status flipped between the two, and a guard on either had nothing to measure on some requests. Both
    # measures are now kept on every request, as the two versions' output types (int64 against float) say.
    server, seen = shadowed_regressors(repository, make_server, stable_integers=stable_integers)
    server.predict("price", np.array([[2.0], [4.0]], np.float32))
    wait_until(lambda: len(seen) == 1)
    server.predict("price", np.array([[1.0], [2.0], [3.0]], np.float32))
    wait_until(lambda: len(seen) == 2)
    assert [(c.max_abs_diff, c.label_agreement, c.mismatch) for c in seen] == [
        (0.0, 1.0, None),
        (0.5, pytest.approx(1 / 3), None),
    ]
    figures = stats(server, "price")
    assert (figures["max_abs_diff"], figures["label_agreement"]) == (0.5, pytest.approx(3 / 5))


# -- apredict's loop batcher: the loop's thread interrupted as it answers merged tasks -----------------------


def test_a_merged_task_recorded_as_answered_when_the_loop_is_interrupted_gets_that_answer(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks' requests run merged on a worker; the loop's thread is interrupted (a signal handler raising,
    as gevent's ``Timeout`` or Ctrl-C would) as it answers the first, after that task was recorded as
    answered (its latency, its span and metrics) but before its future was given the answer. (The drain's
    clean-up then refused it with the interruption and recorded it again: answered, then refused; the
    status counted a success the caller never got.) It gets the answer it was recorded with; the task after
    it gets the interruption."""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    before = version_status(server, "scale")
    # (just past the first task's recording, its latency noted and its span and metrics recorded: where a signal
    # handler runs as that call returns)
    after_line = line_of(_loop_batching._LoopState._answer, "telemetry.plain_answered(")

    async def main() -> list[Any]:
        calls = [server.apredict("scale", x) for x in _rows(1.0, 2.0)]
        with interrupted_at(_loop_batching._LoopState._answer.__code__, after_line=after_line):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert got[0] == 2.0 and isinstance(got[1], Interrupted), got
    _settled(server)
    latency, earlier = version_status(server, "scale")["latency_ms"], before["latency_ms"]
    assert (latency["count"] - earlier["count"], latency["errors"] - earlier["errors"]) == (1, 0)


def test_a_request_routed_off_the_loop_and_stopped_names_the_version_that_ran(
    repository: Path, make_server: ServerFactory, stopped_runs: list[type[BaseException]]
) -> None:
    """A task's request whose flags may block is predicted on a thread of the loop's executor, and its run is
    stopped by a ``BaseException`` (gevent's ``Timeout``) raised inside it. The task's ``InferenceError``
    names the model and the version that ran. (Its ``version`` was the one the caller asked for, ``None`` here:
    an application that reports errors by version could not tell which version's run was stopped.)"""
    server, _flags = _canary_server(make_server, repository)
    context = {"user_id": "u1"}
    stopped_runs.append(GeventLikeTimeout)

    async def main() -> tuple[Any, Any]:
        try:
            first: Any = await asyncio.wait_for(server.apredict("scale", _row(MARK), context=context), BOUND_S)
        except inprocserve.InferenceError as exc:
            first = exc
        later = await asyncio.wait_for(server.apredict("scale", _row(1.0), context=context), BOUND_S)
        return first, later

    first, later = asyncio.run(main())
    assert not stopped_runs, "no run was stopped"
    assert isinstance(first, inprocserve.InferenceError), first
    assert first.version == later.version, (first.version, later.version)  # (the same user: the same version)


# -- the cache: an answer that cannot be copied ----------------------------------------------------------------


def test_identical_requests_following_an_answer_that_cannot_be_copied_run_by_themselves(
    repository: Path, make_server: ServerFactory, hold_session: SessionHolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached classifier's ZipMap answer that cannot be copied (the copy patched to raise what ``deepcopy``
    raises for an object holding a lock: the only way to reach it with onnxruntime's outputs) is not kept, and
    cannot be handed to the two identical requests that followed its run either: they are not given the
    leader's answer (as docs/performance.md said) but run by themselves, one after the other, and each gets its
    own run's answer."""
    save_model(build_zipmap_classifier(), repository, "classifier", 1)
    server = make_server(repository, config=sharing(None, cache=True))
    x = np.array([[0.0, 1.0]], np.float32)
    held = hold_session.mark({"x": x})
    leader = server.submit("classifier", {"x": x.copy()})
    wait_until(held.started.is_set)
    followers = [server.submit("classifier", {"x": x.copy()}) for _ in range(2)]
    wait_until(lambda: cache_status(server)["shared"] == 2)

    def refused(value: Any) -> Any:
        raise TypeError("cannot pickle '_thread.lock' object")

    monkeypatch.setattr(_inflight, "_copied", refused)
    runs = len(hold_session.rows)
    held.let_go()
    answers = [future.result(timeout=BOUND_S) for future in (leader, *followers)]
    assert [answer["probs"].tolist() for answer in answers] == [answers[0]["probs"].tolist()] * 3
    assert hold_session.rows[runs:] == [1, 1]  # (one run each for the followers)
    assert cache_status(server)["entries"] == 0


def cache_status(server: inprocserve.Server) -> dict[str, Any]:
    """The ``classifier`` model's version 1's cache figures."""
    figures: dict[str, Any] = server.status()["models"]["classifier"]["versions"]["1"]["cache"]
    return figures
