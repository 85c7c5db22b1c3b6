"""Which failures the remote backend retries, against a scripted HTTP server on 127.0.0.1: retries only
where the request cannot have run (503, a refused connection), never after it may have (500, a connection
dropped mid-request) unless the model allows it, and never past the deadline."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import v2
from inprocserve._batch_execution import BatchExecution
from inprocserve._recorder import Recorder
from inprocserve._remote import RemoteBackend
from inprocserve._remote_model import RemoteModel
from inprocserve._request import Request, Route
from inprocserve._rollout import Decision
from inprocserve.testing import ManualClock

METADATA = {
    "name": "scale",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}


class Scripted(ThreadingHTTPServer):
    """Answers GETs with metadata, and each POST with the next scripted reply: an HTTP status, "drop"
    (close the connection without answering), "trickle" (a body that never finishes), "deep 500" or "huge
    integer" (hostile bodies). Past the script, it answers y = 2x."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[int | str] = []
        self.posts = 0
        self.lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body, written apart, wait for a delayed ACK
    server: Scripted

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        document: dict[str, Any] = {"extensions": ["binary_tensor_data"]} if self.path == "/v2" else METADATA
        self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.posts += 1
            step = self.server.script.pop(0) if self.server.script else 200
        if step == "drop":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        if step == "trickle":  # a body that never finishes: one byte every 50 ms, for at most 30 s
            self.close_connection = True
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            for _ in range(600):
                try:
                    self.wfile.write(b" ")
                except OSError:
                    return
                time.sleep(0.05)
            return
        if step == "deep 500":  # an error body no JSON parser can take: nested past Python's recursion limit
            self._send(500, b"[" * 200_000, {"Content-Type": "application/json"})
            return
        if step == "huge integer":  # an answer holding an integer of more digits than Python converts
            answer = b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [' + b"9" * 5000 + b"]}]}"
            self._send(200, answer, {"Content-Type": "application/json"})
            return
        if step != 200:
            self._send(int(step), json.dumps({"error": f"scripted {step}"}).encode(), {})
            return
        request = v2.decode_infer_request(body, dict(self.headers))
        answer, headers = v2.encode_infer_response({"y": request.inputs["x"] * 2}, binary=request.binary_output)
        self._send(200, answer, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    server = Scripted()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def backends() -> Iterator[list[RemoteBackend]]:
    made: list[RemoteBackend] = []
    yield made
    for backend in made:
        backend.close()


def backend_for(
    backends: list[RemoteBackend], server: Scripted, *, clock: Any = time.monotonic, **options: Any
) -> RemoteBackend:
    remote = RemoteModel(url=f"http://127.0.0.1:{server.server_port}", model="scale", **options)
    backend = RemoteBackend("scale", 1, remote, sleep=lambda _: None, clock=clock)
    backends.append(backend)
    backend.prepare()
    return backend


FEEDS = {"x": np.ones((2, 4), np.float32)}


def test_503_is_retried_within_the_retry_budget(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=2)
    scripted.script = [503, 503]
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert scripted.posts == 3
    scripted.script = [503, 503, 503]
    with pytest.raises(inprocserve.RemoteUnavailableError, match="answered 503: scripted 503"):
        backend.run(backend.runners()[0], FEEDS)
    assert scripted.posts == 6
    assert backend.status()["retries"] == 4


def test_500_is_not_retried(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=3)
    scripted.script = [500]
    with pytest.raises(inprocserve.RemoteUnavailableError, match="answered 500"):
        backend.run(backend.runners()[0], FEEDS)
    assert scripted.posts == 1


@pytest.mark.parametrize(("allowed", "posts"), [(False, 1), (True, 2)])
def test_a_dropped_connection_is_retried_only_when_allowed(
    scripted: Scripted, backends: list[RemoteBackend], allowed: bool, posts: int
) -> None:
    backend = backend_for(backends, scripted, retries=3, retry_after_send=allowed)
    scripted.script = ["drop"]
    if allowed:
        backend.run(backend.runners()[0], FEEDS)
    else:
        with pytest.raises(inprocserve.RemoteUnavailableError, match="connection failed"):
            backend.run(backend.runners()[0], FEEDS)
    assert scripted.posts == posts


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, inprocserve.InvalidInputError),
        (422, inprocserve.InvalidInputError),
        (404, inprocserve.InferenceError),
        (504, inprocserve.DeadlineExceededError),
        (502, inprocserve.RemoteUnavailableError),
    ],
)
def test_statuses_map_to_the_error_tree(
    scripted: Scripted, backends: list[RemoteBackend], status: int, error: type[Exception]
) -> None:
    backend = backend_for(backends, scripted)
    scripted.script = [status]
    with pytest.raises(error, match=f"answered {status}: scripted {status}") as caught:
        backend.run(backend.runners()[0], FEEDS)
    assert type(caught.value) is error
    assert scripted.posts == 1


def test_the_circuit_counts_only_server_failures(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=2)
    scripted.script = [400, 400, 400, 500]
    for _ in range(3):
        with pytest.raises(inprocserve.InvalidInputError):
            backend.run(backend.runners()[0], FEEDS)
    with pytest.raises(inprocserve.RemoteUnavailableError):
        backend.run(backend.runners()[0], FEEDS)
    assert backend.status()["circuit"] == "closed"
    scripted.script = [500]
    with pytest.raises(inprocserve.RemoteUnavailableError):
        backend.run(backend.runners()[0], FEEDS)
    assert backend.status()["circuit"] == "open"
    with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
        backend.run(backend.runners()[0], FEEDS)
    assert scripted.posts == 5


def test_an_answer_without_the_models_outputs_is_an_inference_error(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = backend_for(backends, scripted)
    monkeypatch.setitem(METADATA, "outputs", [{"name": "z", "datatype": "FP32", "shape": [-1, 4]}])
    backend.prepare()
    with pytest.raises(inprocserve.InferenceError, match="no output 'z'") as caught:
        backend.run(backend.runners()[0], FEEDS)
    assert not isinstance(caught.value, inprocserve.InvalidInputError)  # not the request's fault: no bisecting


def test_hostile_answers_get_the_librarys_errors_and_count_for_the_circuit(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1)
    scripted.script = ["huge integer"]
    with pytest.raises(inprocserve.InferenceError, match="not an inference response") as caught:
        backend.run(backend.runners()[0], FEEDS)
    assert not isinstance(caught.value, inprocserve.InvalidInputError)
    assert backend.status()["circuit"] == "closed"
    scripted.script = ["deep 500"]
    with pytest.raises(inprocserve.RemoteUnavailableError, match="answered 500"):
        backend.run(backend.runners()[0], FEEDS)
    assert backend.status()["circuit"] == "open"  # counted as the server failure it is


@pytest.mark.parametrize("failure", [500, "drop"])
def test_a_batch_the_server_fails_as_a_whole_is_not_bisected(
    scripted: Scripted, backends: list[RemoteBackend], failure: int | str
) -> None:
    # Bisecting a failed batch finds the request whose input fails it; a server that is down fails every
    # part, and each part would send rows again, which it may have run already.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=100)
    failed: list[BaseException] = []
    execution = BatchExecution(
        backend,
        input_names=["x"],
        output_names=["y"],
        padding=None,
        chunk_rows=64,
        succeeded=lambda batch, results: None,
        failed=lambda request, error: failed.append(error),
        unbatchable=lambda reason: None,
        clock=time.monotonic,
        telemetry=Recorder("scale", 1),
    )
    route = Route("scale", 1, "stable", "test", "r", [], Decision(1, "stable", "test"))
    batch = [Request({"x": np.full((1, 4), i, np.float32)}, 1, route, None, None) for i in range(8)]
    scripted.script = [failure]
    execution.execute(backend.runners()[0], batch)
    assert scripted.posts == 1
    assert len(failed) == 8 and all(isinstance(error, inprocserve.RemoteUnavailableError) for error in failed)


def test_a_probe_that_dies_of_something_else_does_not_keep_the_circuit_open(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    clock = ManualClock()
    backend = backend_for(backends, scripted, clock=clock, retries=0, failure_threshold=1, cooloff_s=10)
    scripted.script = [500]
    with pytest.raises(inprocserve.RemoteUnavailableError):
        backend.run(backend.runners()[0], FEEDS)
    clock.advance(10)
    with pytest.raises(KeyError):
        backend.run(backend.runners()[0], {"wrong": FEEDS["x"]})  # the probe fails before any call
    (answer,) = backend.run(backend.runners()[0], FEEDS)  # the next call may probe
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert backend.status()["circuit"] == "closed"


def test_a_server_that_trickles_its_answer_cannot_hold_the_call_past_its_deadline(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    backend = backend_for(backends, scripted, concurrency=1)
    scripted.script = ["trickle"]
    with pytest.raises(inprocserve.DeadlineExceededError, match=r"request's 0\.5 s"):
        backend.run(backend.runners()[0], FEEDS, timeout_s=0.5)  # every read gets a byte within 50 ms
    (answer,) = backend.run(backend.runners()[0], FEEDS)  # the one connection slot was given back
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
