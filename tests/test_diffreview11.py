"""Review of the day's changes (``git diff 6c7a4e4..``): a ``submit`` answer interrupted as it is built
(``Server._deliver``), and the remote client's TLS handshake failures (``_oip_client``).

Real onnxruntime, real futures, a real loopback TLS model server. Building a caller's ``Prediction`` is
interrupted only by a signal handler's exception (Ctrl-C, a task's time limit) or gevent's ``Timeout``:
``Request.prediction``, the one function that builds it for a future, is patched to raise one once, as
``test_diffreview10`` patches it to run out of memory."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import (
    BatchingConfig,
    CacheConfig,
    ModelConfig,
    RolloutConfig,
    VersionPolicy,
    _loop_batching,
    _oip_client,
)
from inprocserve._remote import RemoteBackend
from inprocserve._remote_model import RemoteModel
from inprocserve._request import Request
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory, SessionHolder, busy_inputs, version_status, wait_until
from .test_loop_batching import save_column_max, warm
from .test_loophard import PredictionFailed, _outcome
from .test_remote_retries import FEEDS, Scripted, scripted, serving
from .test_remotefix3 import TlsScripted, backends, certificate, tls_backend

__all__ = ["backends", "certificate", "scripted"]  # (fixtures of test_remotefix3, used here)

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


class CountedTls(TlsScripted):
    """:class:`TlsScripted` that counts the connections it accepted, each a TLS handshake begun."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(context)
        self.accepted = 0

    def get_request(self) -> tuple[Any, Any]:
        with self.lock:
            self.accepted += 1
        return super().get_request()


@pytest.fixture
def counted_tls(certificate: ssl.SSLContext) -> Iterator[CountedTls]:
    yield from serving(CountedTls(certificate))


def test_a_load_refused_for_an_untrusted_certificate_shakes_hands_once(
    counted_tls: CountedTls, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate the system does not trust is refused at once: trying again cannot change it. (Taken for a
    connection that could not be opened, it was tried ``retries`` more times, each a handshake and a backoff.)"""
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(inprocserve.ModelLoadError, match="certificate verify failed"):
        tls_backend(backends, counted_tls, retries=2)
    assert (counted_tls.accepted, backends[0].status()["retries"]) == (1, 0)


def test_a_call_refused_for_an_untrusted_certificate_is_not_retried(
    counted_tls: CountedTls, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server whose certificate stops being trusted (its certificate replaced by one of another CA) fails a
    call at its first handshake, not after ``retries`` more, and the error says why."""
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # each call opens a connection, so shakes hands
    backend = tls_backend(backends, counted_tls, retries=2)
    backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    accepted = counted_tls.accepted
    monkeypatch.delenv("SSL_CERT_FILE")  # (read as each connection's TLS context is made)
    with pytest.raises(inprocserve.RemoteUnavailableError, match="certificate verify failed"):
        backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    assert (counted_tls.accepted - accepted, backend.status()["retries"]) == (1, 0)


def test_a_certificate_for_another_host_is_not_said_to_be_untrusted(
    counted_tls: CountedTls, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trusted certificate that does not name the URL's host (made for 127.0.0.1, reached as ``localhost``)
    fails the load saying so, without the advice to trust its CA: trusted already, that changes nothing."""
    remote = RemoteModel(url=f"https://localhost:{counted_tls.server_port}", model="scale", retries=0)
    backend = RemoteBackend("scale", 1, remote)
    try:
        with pytest.raises(inprocserve.ModelLoadError, match="certificate verify failed: Hostname mismatch") as e:
            backend.prepare()
    finally:
        backend.close()
    assert "SSL_CERT_FILE" not in str(e.value)
    assert "the host in the URL" in str(e.value)


@pytest.mark.parametrize("taken_at_once", [False, True])
def test_a_drain_failing_as_it_sends_merged_tasks_the_full_way_leaves_the_one_queued_again_its_answer(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, *, taken_at_once: bool
) -> None:
    """As ``test_loophard2``'s interrupted drain, but the drain fails with an ``Exception`` (no memory to
    arrange the wake) just after the first task's request is queued again: that task gets its own run's
    answer, the second the error, and nothing is left queued. (The first got the error too, though its
    request was queued again, and that request stayed queued, counted in flight, with no worker woken.)
    ``taken_at_once``: a worker still busy takes the request queued again and answers it before the failure
    (a CI run on a loaded host did: the task's answer was on its way, and it was refused all the same)."""
    save_column_max(repository)
    trusted = BatchingConfig(max_delay_s=0.0, rows_independent="yes")
    server = make_server(repository, config=ModelConfig(batching=trusted))
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    queued = _loop_batching._LoopState.queued
    failed: list[int] = []

    def fails_once(self: _loop_batching._LoopState, batcher: Any) -> None:
        if not failed:
            failed.append(1)
            if taken_at_once:
                queued(self, batcher)
                batcher.wake()
                wait_until(lambda: bool(self._claims))  # its answer recorded and on its way to the loop
            raise PredictionFailed("no memory to arrange the wake")
        queued(self, batcher)

    async def main() -> list[Any]:
        await warm(server, "total", np.ones((1, 2), np.float32))
        calls = [server.apredict("total", np.full((1, 2), first, np.float32)) for first in (1.0, 2.0)]
        monkeypatch.setattr(_loop_batching._LoopState, "queued", fails_once)
        return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert failed
    assert got[0] == 1.0 and isinstance(got[1], PredictionFailed), got
    wait_until(lambda: (lambda s: (s["in_flight"], s["queued_rows"]))(version_status(server, "total")) == (0, 0))


def test_promote_refusing_an_incompatible_version_says_how_to_make_it_stable_anyway(
    repository: Path, make_server: ServerFactory
) -> None:
    """``promote()`` refuses a version whose input another name took, and says how to make it stable anyway:
    ``switch(..., force=True)``. (It said "pass force=True to switch anyway", which ``promote()`` does not
    take: the call the message pointed to raised ``TypeError``.)"""
    dims = (4, 8, 2)
    save_model(build_mlp_model(dims, input_name="x"), repository, "m", 1)
    save_model(build_mlp_model(dims, seed=1, input_name="features"), repository, "m", 2)
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1))
    server = make_server(repository, config=config, control_interval_s=None)
    with pytest.raises(inprocserve.PromotionRefusedError, match="not compatible with version 1") as caught:
        server.promote("m", 2, max_abs_diff=1e-6)
    assert "switch('m', 2, force=True)" in str(caught.value), caught.value
    with pytest.raises(inprocserve.PromotionRefusedError, match="pass force=True to switch anyway"):
        server.switch("m", 2)


def test_a_submit_future_whose_answer_building_keeps_being_interrupted_gets_an_error(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a ``submit`` caller's answer interrupted each time it is tried (on the worker's thread, as
    gevent's ``Timeout`` in a greenlet would): the future gets an ``InferenceError`` that says so, and the
    version settles. (It was left unset: its caller waited for good.)"""
    server = make_server(scale_repository)
    x = np.ones((1, 4), np.float32)
    server.submit("scale", x).result(timeout=BOUND_S)  # (its worker started)

    def interrupted(self: Request) -> inprocserve.Prediction:
        raise Interrupted("a signal handler's exception")

    monkeypatch.setattr(Request, "prediction", interrupted)
    error = server.submit("scale", x).exception(timeout=BOUND_S)
    assert isinstance(error, inprocserve.InferenceError), error
    assert "interrupted by Interrupted" in str(error), error
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)


def test_a_timeout_just_past_the_bound_is_refused_with_the_value_given() -> None:
    """``timeout_s = 1000000001`` is refused; the message quotes it as given. (Rounded to one digit, it read
    "must be at most 1e+09 s ..., got 1e+09": a value the bound allows.)"""
    with pytest.raises(inprocserve.ConfigurationError, match=r"at most 1e\+09 s .*got 1000000001\b"):
        RemoteModel(url="http://127.0.0.1:8000", model="scale", timeout_s=1_000_000_001)


def test_a_plain_http_server_behind_an_https_url_fails_the_load_at_the_first_handshake(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    """An ``https://`` URL of a server that speaks plain HTTP (a wrong scheme in ``remote.toml``): the handshake
    fails the same way every time, so the load fails at the first. (Taken for a connection that could not be
    opened, it was tried ``retries`` more times, each a bad request in the server's log.)"""
    remote = RemoteModel(url=f"https://127.0.0.1:{scripted.server_port}", model="scale", retries=2)
    backend = RemoteBackend("scale", 1, remote)
    backends.append(backend)
    with pytest.raises(inprocserve.ModelLoadError, match="the TLS handshake failed") as caught:
        backend.prepare()
    assert "is its URL http://?" in str(caught.value)
    assert (scripted.connections, backend.status()["retries"]) == (1, 0)
