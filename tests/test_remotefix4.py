"""The remote backend, against the scripted server of :mod:`tests.test_remote_retries` (and its TLS listener of
:mod:`tests.test_remotefix3`): answers the decoder took though they do not say one thing, a model's URL given
as the server's, a certificate retried as if trying again could make it trusted, and a connection closed
while the deadline's watchdog could still shut its socket."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import numpy as np
import pytest
import urllib3

import inprocserve
from inprocserve import _call_watchdog, _oip_client
from inprocserve._remote import RemoteBackend
from inprocserve._remote_model import RemoteModel

from .test_remote_retries import FEEDS, Scripted, backend_for
from .test_remote_retries import backends as backends  # (the fixtures: backends closed at teardown,
from .test_remote_retries import scripted as scripted  # and a scripted model server)
from .test_remotefix3 import TlsScripted
from .test_remotefix3 import certificate as certificate  # (a self-signed certificate, trusted through
from .test_remotefix3 import tls_scripted as tls_scripted  # SSL_CERT_FILE, and a TLS scripted server)

Y = [2.0] * 8  # y = 2x for FEEDS' two rows of four ones


def answer(*outputs: dict[str, Any], **document: Any) -> bytes:
    return json.dumps({"model_name": "scale", "outputs": list(outputs), **document}).encode()


def y(data: Any = Y, name: str = "y") -> dict[str, Any]:
    return {"name": name, "datatype": "FP32", "shape": [2, 4], "data": data}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        # Two outputs named y: the last one silently won, whichever the model meant.
        (answer(y(), y([9.0] * 8)), r"output 'y' appears twice in the answer"),
        # A JSON true among FP32 numbers was read as 1.0: a server's bug passed as a value.
        (answer(y([True, *Y[1:]])), r"output 'y': 'data' mixes true/false with numbers, which is not FP32"),
        # A 'parameters' that is not an object was handed on as the answer's parameters.
        (answer(y(), parameters=[1, 2]), r"the answer's 'parameters' must be a JSON object, got a list"),
        # Data longer or shorter than the shape says (refused already: pinned here).
        (answer(y([*Y, 2.0])), r"output 'y': 'data' holds 9 values but shape \[2, 4\] needs 8"),
        (answer(y(Y[:7])), r"output 'y': 'data' holds 7 values but shape \[2, 4\] needs 8"),
    ],
    ids=["duplicate-name", "bool-in-fp32", "parameters-list", "data-too-long", "data-too-short"],
)
def test_an_answer_that_does_not_say_one_thing_is_the_answers_error(
    scripted: Scripted, backends: list[RemoteBackend], body: bytes, said: str
) -> None:
    backend = backend_for(backends, scripted, binary_tensors=False)
    scripted.script = [body]
    with pytest.raises(inprocserve.InferenceError, match="the answer is not an inference response: " + said) as e:
        backend.run(backend.runners()[0], FEEDS)
    assert not isinstance(e.value, inprocserve.InvalidInputError)  # the server's fault: no bisecting
    # and a right answer still passes
    scripted.script = [answer(y(), parameters={"note": "ok"})]
    np.testing.assert_array_equal(backend.run(backend.runners()[0], FEEDS)[0], FEEDS["x"] * 2)


@pytest.mark.parametrize(
    "url",
    [
        "http://models.internal:8000/v2/models/scale",
        "http://models.internal:8000/v2/models/scale/versions/3/",
        "http://models.internal:8000/v2/models/scale/infer",
        "http://models.internal:8000/gateway/v2/models/other",
        "http://models.internal:8000/v2",
    ],
)
def test_a_models_url_given_as_the_servers_is_refused_with_the_base_url_to_give(url: str) -> None:
    # The model's path was appended to it: .../v2/models/scale/v2/models/scale, a 404 at load that said only
    # "is the model loaded there, under this name and version?".
    with pytest.raises(inprocserve.ConfigurationError, match=r"RemoteModel url: .*the server's base URL") as e:
        RemoteModel(url=url, model="scale")
    assert "http://models.internal:8000" in str(e.value)
    # a gateway's prefix that only looks alike still passes
    assert RemoteModel(url="http://h:1/ml/v2-gateway", model="scale").url == "http://h:1/ml/v2-gateway"


def test_a_certificate_the_system_does_not_trust_is_not_retried(
    tls_scripted: TlsScripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Taken for a server that could not be reached, it was tried retries + 1 times, with backoff between: no
    # retry can make a certificate trusted, and each one held the caller (and the load) for nothing.
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # each call opens a connection, so shakes hands
    slept: list[float] = []
    remote = RemoteModel(url=f"https://127.0.0.1:{tls_scripted.server_port}", model="scale", retries=3)
    backend = RemoteBackend("scale", 1, remote, sleep=slept.append)
    backends.append(backend)
    backend.prepare()  # trusted (SSL_CERT_FILE): loads
    monkeypatch.delenv("SSL_CERT_FILE")  # (read as each connection's context is made)
    with pytest.raises(inprocserve.RemoteUnavailableError, match=r"certificate verify failed.*SSL_CERT_FILE"):
        backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    assert slept == []
    unloaded = RemoteBackend("scale", 1, remote, sleep=slept.append)
    backends.append(unloaded)
    with pytest.raises(inprocserve.ModelLoadError, match=r"certificate verify failed.*SSL_CERT_FILE"):
        unloaded.prepare()
    assert slept == []


def test_a_connection_urllib3_closes_after_a_failure_is_never_shut_by_the_calls_deadline(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # urllib3 closes a connection that failed (urlopen's finally) before the call's watch ends: a deadline
    # passing in between shut the socket down as it was closed, and CPython reads its descriptor for that
    # after letting go of the GIL, so the number, freed and given to another connection meanwhile, shut that
    # one. Here the close is held past the deadline: the socket is let go of by then, never shut.
    being_closed: list[Any] = []
    shut: list[Any] = []  # (only sockets shut as they were closed: a deadline that passes sooner may shut one)
    real_shut = _call_watchdog._shut
    monkeypatch.setattr(
        _call_watchdog, "_shut", lambda sock: (sock in being_closed and shut.append(sock), real_shut(sock))
    )
    real_close = urllib3.connection.HTTPConnection.close
    closing = threading.Event()

    def slow_close(self: Any) -> None:
        if self.sock is not None and closing.is_set():
            being_closed.append(self.sock)
            time.sleep(0.5)  # past the call's 0.2 s deadline, as a thread preempted here would be
        real_close(self)

    monkeypatch.setattr(urllib3.connection.HTTPConnection, "close", slow_close)
    backend = backend_for(backends, scripted, retries=0)
    scripted.script = ["drop"]  # the request read, the connection closed without an answer: urllib3 closes it
    closing.set()
    with pytest.raises(inprocserve.InprocserveError):
        backend.run(backend.runners()[0], FEEDS, timeout_s=0.2)
    closing.clear()
    assert being_closed
    assert shut == []
    np.testing.assert_array_equal(backend.run(backend.runners()[0], FEEDS)[0], FEEDS["x"] * 2)
