"""Review of the day's changes (``git diff 6c7a4e4..``): a ``submit`` answer interrupted as it is built
(``Server._deliver``), and the remote client's TLS handshake failures (``_oip_client``).

Real onnxruntime, real futures, a real loopback TLS model server. Building a caller's ``Prediction`` is
interrupted only by a signal handler's exception (Ctrl-C, a task's time limit) or gevent's ``Timeout``:
``Request.prediction``, the one function that builds it for a future, is patched to raise one once, as
``test_diffreview10`` patches it to run out of memory."""

from __future__ import annotations

from pathlib import Path

import pytest

import inprocserve
from inprocserve import CacheConfig, ModelConfig
from inprocserve._request import Request

from .conftest import ServerFactory, SessionHolder, busy_inputs, version_status, wait_until

BOUND_S = 10.0
"""How long a test waits for an answer: generous; reaching it is the failure."""


class Interrupted(BaseException):
    """What a signal handler raises in the thread that builds an answer (as ``KeyboardInterrupt`` does)."""


def _interrupt_first_answer(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first ``Prediction`` built for a future from now on is interrupted; the others are built. Returns
    the count of interruptions."""
    prediction = Request.prediction
    interrupted: list[int] = []

    def once(self: Request) -> inprocserve.Prediction:
        if not interrupted:
            interrupted.append(1)
            raise Interrupted("a signal handler's exception")
        return prediction(self)

    monkeypatch.setattr(Request, "prediction", once)
    return interrupted


def test_identical_requests_following_one_whose_answer_building_is_interrupted_get_their_answers(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two identical ``submit`` calls in flight: the second follows the first. The first's answer, interrupted
    as it is built, still releases the second, and both futures are answered. (Built before the request was
    recorded, the interruption skipped the recording: the follower waited for good.)"""
    server = make_server(busy_repository, models={"busy": ModelConfig(cache=CacheConfig(share_in_flight=True))})
    inputs = busy_inputs(2)
    held = hold_session.mark(inputs)
    leader = server.submit("busy", inputs)
    assert held.started.wait(BOUND_S)
    follower = server.submit("busy", {name: array.copy() for name, array in inputs.items()})
    interrupted = _interrupt_first_answer(monkeypatch)
    held.let_go()
    assert follower.result(timeout=BOUND_S).version == 1
    assert interrupted
    assert leader.result(timeout=BOUND_S).version == 1
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
