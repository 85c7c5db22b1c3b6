"""Review of the day's last changes to the remote client (1d9b301..): the deadline's watch let go of a socket
that an answer marked ``Connection: close`` was still being read over, and answers the response decoder's
true/false scan must still take."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _oip_client
from inprocserve._remote import RemoteBackend
from inprocserve._remote_model import RemoteModel
from inprocserve._request import Request

from .conftest import ServerFactory, busy_inputs, version_status, wait_until
from .test_diffreview11 import Interrupted
from .test_remote_retries import FEEDS, Scripted, backend_for, raised_within, serving_each_connection
from .test_remote_retries import backends as backends  # (the fixtures: backends closed at teardown,
from .test_remote_retries import scripted as scripted  # and a scripted model server)


@pytest.fixture
def stalls_after_a_byte() -> Iterator[int]:
    """A port whose server answers each request at once with a 200 of 10 bytes marked ``Connection: close``,
    sends one byte of its body 0.8 s later, then nothing more (until teardown)."""

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.recv(4096)  # the request (a GET: no body)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\n")
            if stop.wait(0.8):
                return
            try:
                conn.sendall(b"{")
            except OSError:  # the client gave up and closed
                return
            stop.wait(10)

    yield from serving_each_connection(answer)


def test_an_answer_marked_connection_close_that_stalls_ends_at_the_calls_timeout(stalls_after_a_byte: int) -> None:
    # http.client closes a connection whose answer says Connection: close as soon as its headers are read (the
    # answer's file keeps the socket open for its body): WatchedConnection.close() let the deadline's watch go
    # of the socket then, so a body that stalled was bounded only by the read timeout of the read under way,
    # a whole timeout_s more, not by the call's deadline.
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{stalls_after_a_byte}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    try:
        error, took_s = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
    finally:
        client.close()
    assert isinstance(error, _oip_client.TransportError), error
    assert error.timed_out
    assert took_s < 1.4  # (was 1.8: the byte at 0.8 s, then a read that waited its whole 1 s timeout)


def answer(*outputs: dict[str, Any], **document: Any) -> bytes:
    return json.dumps({"model_name": "scale", "outputs": list(outputs), **document}).encode()


def test_true_and_false_outside_numeric_data_do_not_refuse_an_answer(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # The decoder looks for true/false among an answer's numbers once its text says true or false anywhere:
    # a BOOL output, the text "true" in a BYTES output, and a parameter set to true are all a valid answer.
    backend = backend_for(backends, scripted, binary_tensors=False)
    y = {"name": "y", "datatype": "FP32", "shape": [2, 4], "data": [[2.0] * 4, [2.0] * 4]}
    flags = {"name": "flag", "datatype": "BOOL", "shape": [2], "data": [True, False]}
    words = {"name": "word", "datatype": "BYTES", "shape": [2], "data": ["true", "false"]}
    scripted.script = [answer(y, flags, words, parameters={"cached": True, "note": "true"})]
    np.testing.assert_array_equal(backend.run(backend.runners()[0], FEEDS)[0], FEEDS["x"] * 2)


def test_a_deadline_that_passed_before_a_failed_connection_was_closed_still_fails_the_call_as_late() -> None:
    # Watch.release (a connection closed) forgets the socket, not that the deadline fired.
    from inprocserve._call_watchdog import CallWatchdog

    watchdog = CallWatchdog(name="diffreview12")
    try:
        watch = watchdog.watch(0.05)
        a, b = socket.socketpair()
        with a, b:
            watch.arm(a)
            time.sleep(0.2)
            assert a.recv(1) == b""  # shut by the deadline
            watch.release(a)
        assert watch.end()
    finally:
        watchdog.close()


def test_a_submit_whose_answer_building_is_interrupted_for_good_is_counted_the_error_its_caller_gets(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Building a ``submit`` answer interrupted by a signal handler's exception, and again when it is tried
    once more: the future gets an ``InferenceError`` naming the interruption, and ``status()`` counts that
    request an error. (It was recorded before the second try, as answered: a success its caller never saw.)"""
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))

    def interrupted(self: Request) -> inprocserve.Prediction:
        raise Interrupted("a signal handler's exception")

    monkeypatch.setattr(Request, "prediction", interrupted)
    future = server.submit("busy", busy_inputs(2))
    with pytest.raises(inprocserve.InferenceError, match="building the answer was interrupted by Interrupted"):
        future.result(timeout=10)
    monkeypatch.undo()
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    latency = version_status(server, "busy")["latency_ms"]
    assert (latency["count"], latency["errors"]) == (1, 1), latency  # (the predict answered; this submit)


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("RECORD_LAYER_FAILURE", "[SSL: RECORD_LAYER_FAILURE] record layer failure (_ssl.c:1006)"),
        (None, "[SSL] record layer failure (_ssl.c:1000)"),  # (a Python built before OpenSSL had that reason)
    ],
    ids=["reason-known", "reason-unknown"],
)
def test_a_plain_http_server_behind_an_https_url_is_told_so_with_openssl_3_2(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch, reason: Any, message: str
) -> None:
    """OpenSSL 3.2 and later say "record layer failure" where 3.0 said "wrong version number" of a plain HTTP
    answer to the ClientHello (as urllib3 found: urllib3/urllib3#3271). Here, the 3.0 error is re-raised as 3.2
    raises it: that was not taken for a server that does not speak TLS, so the load was tried ``retries`` more
    times, each a bad request in the server's log, and said nothing of the URL's scheme."""
    handshake = ssl.SSLSocket.do_handshake

    def as_openssl_3_2(self: ssl.SSLSocket, *args: Any) -> None:
        try:
            handshake(self, *args)
        except ssl.SSLError as exc:
            if exc.reason != "WRONG_VERSION_NUMBER":
                raise
            newer = ssl.SSLError(1, message)
            newer.reason, newer.library = reason, "SSL"  # (as _ssl.c sets them)
            raise newer from None

    monkeypatch.setattr(ssl.SSLSocket, "do_handshake", as_openssl_3_2)
    remote = RemoteModel(url=f"https://127.0.0.1:{scripted.server_port}", model="scale", retries=2)
    backend = RemoteBackend("scale", 1, remote)
    backends.append(backend)
    with pytest.raises(inprocserve.ModelLoadError, match="record layer failure") as caught:
        backend.prepare()
    assert "is its URL http://?" in str(caught.value)
    assert (scripted.connections, backend.status()["retries"]) == (1, 0)
