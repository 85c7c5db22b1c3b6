"""Review of the day's changes: an answer handed to a ``submit`` future or an event loop's task that cannot be
built (``Server._deliver``'s ``_resolve``), on each path it is built on.

Real onnxruntime, real asyncio tasks and futures. Building a caller's ``Prediction`` fails only for want of
memory: ``Request.prediction``, the one function that builds it for a future, is patched to raise, as in
``test_loophard``."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import CacheConfig, ModelConfig, _loop_batching, v2
from inprocserve._request import Request
from inprocserve.testing import save_model

from .conftest import ServerFactory, version_status, wait_until
from .test_leftovers10a_v2 import X, _float32_model
from .test_leftovers10b_compatibility import flagged_to_version_2
from .test_loophard import PredictionFailed
from .test_v2_codec import call

BOUND_S = 10.0
"""How long a test waits for an answer: generous; reaching it is the failure."""


def _failing_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every ``Prediction`` built for a future (a ``submit`` caller's, an event loop task's) fails to build."""

    def failing(self: Request) -> inprocserve.Prediction:
        raise PredictionFailed("no memory for the answer")

    monkeypatch.setattr(Request, "prediction", failing)


def _logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]


def test_submit_whose_cached_answer_cannot_be_built_returns_a_future_with_the_error(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``submit`` answered from the cache builds its answer on the caller's thread. Failing, the future gets
    the error and ``submit`` returns it. (``submit`` raised the MemoryError itself, the future it never
    returned holding it too, and the request was recorded answered, then refused.)"""
    server = make_server(scale_repository, models={"scale": ModelConfig(cache=CacheConfig(enabled=True))})
    x = np.ones((1, 4), np.float32)
    server.predict("scale", x)  # kept in the cache
    _failing_answers(monkeypatch)
    future = server.submit("scale", x)
    assert isinstance(future.exception(timeout=BOUND_S), PredictionFailed)


def _started_server(make_server: ServerFactory, repository: Path) -> inprocserve.Server:
    """A server whose ``scale`` runners are adopted and workers started."""
    server = make_server(repository)
    x = np.ones((1, 4), np.float32)
    server.predict("scale", x)
    server.submit("scale", x).result(timeout=BOUND_S)
    return server


@pytest.mark.parametrize("on_loop", [True, False], ids=["run-on-the-loop", "run-by-a-worker"])
def test_an_event_loop_task_whose_answer_cannot_be_built_is_logged_once_as_such(
    scale_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    on_loop: bool,
) -> None:
    """An ``apredict`` request queued the full way (as with a cache), run by the loop itself or by a worker,
    whose answer cannot be built: the task gets the error, and the log says once what failed. (It said the
    loop's run failed, "its request stays queued for the worker", and woke one for nothing; or, from a
    worker, "batch failed unexpectedly", for a batch that ran.)"""
    server = _started_server(make_server, scale_repository)
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)  # the full way, as with a cache
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 10.0 if on_loop else 0.0)
    _failing_answers(monkeypatch)

    async def main() -> Any:
        call = server.apredict("scale", np.ones((1, 4), np.float32))
        return (await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), BOUND_S))[0]

    with caplog.at_level(logging.ERROR):
        got = asyncio.run(main())
        wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
    assert isinstance(got, PredictionFailed), got
    logged = _logged_errors(caplog)
    assert len(logged) == 1 and "answer" in logged[0] and "could not be built" in logged[0], logged


DIMS = (4, 8, 2)


def test_promote_judges_compatibility_against_the_stable_flag_s_version_it_compares_answers_with(
    repository: Path, make_server: ServerFactory
) -> None:
    """A flag-driven rollout's last step set ``m.stable = 2``: every request gets version 2, whose input is
    ``features`` (version 1, configured stable, answers nobody). Version 3 keeps version 2's signature;
    ``promote()`` compares its answers with version 2's and promotes it. (It refused it: "not compatible with
    version 1, which serves now", the signature judged against one version and the answers against another.)"""
    server, _ = flagged_to_version_2(repository, make_server, third_input="features")
    for _ in range(3):
        assert server.predict("m", {"features": np.ones((1, DIMS[0]), np.float32)}).version == 2
    report = server.promote("m", 3, max_abs_diff=1e-6)
    assert (report.from_version, report.to_version) == (2, 3), report.to_dict()


def test_switch_with_a_stable_flag_set_refuses_a_version_that_breaks_the_flag_s_callers(
    repository: Path, make_server: ServerFactory
) -> None:
    """``m.stable = 2`` sends every request to version 2 (input ``features``); version 1 (input ``x``) is the
    configured stable version and answers nobody. ``switch("m", 3)`` to a version taking ``x`` moves no traffic
    now (the flag wins), but once the operator clears the flag every caller goes to version 3 and fails: the
    switch should have been refused as it was before 82352d6. (It is accepted, and status() shows it compatible.)"""
    server, flags = flagged_to_version_2(repository, make_server, third_input="x")
    callers_send = {"features": np.ones((1, DIMS[0]), np.float32)}
    assert server.predict("m", callers_send).version == 2
    try:
        server.switch("m", 3)
    except inprocserve.PromotionRefusedError:
        return  # refused: the flag's callers are safe
    flags.delete("m.stable")  # the rollout's flag retired
    server.predict("m", callers_send)  # InvalidInputError: every caller broken


def test_a_pinned_request_whose_named_output_a_reload_removed_is_told_so_truly(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``/v2/models/m/versions/1/infer`` naming output ``z``, version 1 reloaded by hand without ``z`` just as
    the request is routed: a 400 that names version 1 and its outputs, without saying the version was decided
    request by request. (Since every named output of a pinned version is checked after its run too, the
    message written for a canary's or flags' draw said so of the version the client had pinned.)"""
    save_model(_float32_model(("y", "z")), repository, "m", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    checked = server._predict_checked

    def reloaded_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(server, "_predict_checked", checked)
        save_model(_float32_model(("y",)), repository, "m", 1)
        server.load("m", version=1)  # (on purpose: the compatibility gate holds back a hot reload of it)
        return checked(*args, **kwargs)

    monkeypatch.setattr(server, "_predict_checked", reloaded_first)
    body = json.dumps({"inputs": [X], "outputs": [{"name": "z"}]}).encode()
    status, document, _ = call(endpoints, "POST", "/v2/models/m/versions/1/infer", body)
    assert status == 400, document
    assert document["error"].startswith("output 'z' is not an output of model 'm' version 1"), document
    assert "decided request by request" not in document["error"], document


@pytest.mark.parametrize("how", ["submit", "apredict"])
def test_a_request_whose_answer_cannot_be_built_is_recorded_as_failed(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """A ``submit`` future, or an ``apredict`` task queued the full way, whose answer cannot be built gets the
    error, and the status page counts it as one: a latency error, not an answer. (It was counted answered,
    while a merged task's was counted an error.)"""
    server = _started_server(make_server, scale_repository)
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)  # the full way, as with a cache
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker
    before = version_status(server, "scale")["latency_ms"]
    _failing_answers(monkeypatch)
    x = np.ones((1, 4), np.float32)
    if how == "submit":
        got = server.submit("scale", x).exception(timeout=BOUND_S)
    else:

        async def main() -> Any:
            call = server.apredict("scale", x)
            return (await asyncio.wait_for(asyncio.gather(call, return_exceptions=True), BOUND_S))[0]

        got = asyncio.run(main())
    assert isinstance(got, PredictionFailed), got
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
    after = version_status(server, "scale")["latency_ms"]
    assert (after["count"] - before["count"], after["errors"] - before["errors"]) == (0, 1), (before, after)
