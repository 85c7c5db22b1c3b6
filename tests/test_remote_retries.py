"""Which failures the remote backend retries, against a scripted HTTP server on 127.0.0.1: retries only
where the request cannot have run (503, a refused connection), never after it may have (500, a connection
dropped mid-request) unless the model allows it, and never past the deadline."""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest

import inprocserve
from inprocserve import _oip_client, v2
from inprocserve._batch_execution import BatchExecution
from inprocserve._recorder import Recorder
from inprocserve._remote import RemoteBackend, retry_after_seconds
from inprocserve._remote_model import RemoteModel
from inprocserve._request import Request, Route
from inprocserve._rollout import Decision
from inprocserve.testing import ManualClock

from .conftest import ServerFactory, wait_until

METADATA = {
    "name": "scale",
    "versions": ["1"],
    "platform": "onnxruntime_onnx",
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}],
}

S = TypeVar("S", bound="Scripted")


class Scripted(ThreadingHTTPServer):
    """Answers GETs with metadata, and each POST with the next scripted reply: an HTTP status, "drop"
    (close the connection without answering), "trickle" (a body that never finishes), "trickle headers"
    (headers that never finish), "hang" (no answer), "slow S" (y = 2x after S seconds), (status, headers),
    "deep 500" or "huge integer" (hostile bodies), "float64", "int64" or "narrow" (y of another type, or of 3
    columns), "thrice" (y = 2x repeated three times along a new first axis), "early hints" (a 103 interim
    answer, then y = 2x 0.2 s later), "switch" (a 101 Switching Protocols, then y = 2x 0.2 s later), "flood"
    (y of three million values, whatever the rows), "long 422" (a refusal whose message runs to 6 MB), "error 200"
    (a failure answered with status 200 and the protocol's error document), "json rows" (20 MB of JSON that
    declares y of five million rows, whatever the rows), "echo auth" (a 502 whose message quotes the request's
    Authorization header), "size lies" (y's FP64 bytes, declared as FP32 of the size FP32 takes), "version 2"
    (y = 2x, answered as model version 2's), "envoy R" (Envoy's 503 for an upstream reset of reason R),
    "cut 1.0" (y = 2x as HTTP/1.0, without Content-Length, closed halfway through), "error 200 1.0" (the
    "error 200" document as HTTP/1.0, whole).
    Past the script, it answers y = 2x. Inputs other than those METADATA names are refused with a 400, as a
    server does; with ``hang_gets`` set, GETs are never answered (until teardown); with ``keep_alive_s`` set,
    a POST on a connection idle longer is answered by closing it (a request that crossed the server's close of
    a connection idle past its keep-alive timeout). ``connections`` counts the connections it accepted."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.script: list[int | str | bytes | tuple[int, dict[str, str]]] = []
        self.posts = 0
        self.gets = 0
        self.hang_gets = False
        self.keep_alive_s: float | None = None
        self.keep_alive_header: str | None = None  # sent as Keep-Alive with every answer, if set
        self.connections = 0
        self.lock = threading.Lock()
        self.stop_trickling = threading.Event()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else headers and body, written apart, wait for a delayed ACK
    server: Scripted

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def setup(self) -> None:
        super().setup()
        self.answered_at = time.monotonic()
        with self.server.lock:
            self.server.connections += 1

    def do_GET(self) -> None:
        with self.server.lock:
            self.server.gets += 1
        if self.server.hang_gets:
            self.close_connection = True
            self.server.stop_trickling.wait(60)
            return
        document: dict[str, Any] = {"extensions": ["binary_tensor_data"]} if self.path == "/v2" else METADATA
        self._send(200, json.dumps(document).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        keep_alive_s = self.server.keep_alive_s
        if keep_alive_s is not None and time.monotonic() - self.answered_at > keep_alive_s:
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return
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
        if step == "trickle headers":  # a status line and headers that never end: a byte every 50 ms
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            while not self.server.stop_trickling.wait(0.05):
                try:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                except OSError:  # the client gave up and shut its socket
                    return
            return
        if step == "hang":  # accepts the request and never answers (until teardown)
            self.close_connection = True
            self.server.stop_trickling.wait(60)
            return
        if step in ("early hints", "switch"):  # an interim answer first: what a proxy or gateway may send
            self.send_response_only(*((103, "Early Hints") if step == "early hints" else (101, "Switching Protocols")))
            self.end_headers()
            time.sleep(0.2)  # the model runs; meanwhile the client may take the connection for its next call
            step = 200
        if isinstance(step, str) and step.startswith("slow "):  # answers, after that many seconds
            time.sleep(float(step.split()[1]))
            step = 200
        if isinstance(step, tuple):  # a status with headers
            status, extra = step
            self._send(status, json.dumps({"error": f"scripted {status}"}).encode(), extra)
            return
        if isinstance(step, str) and step.startswith("envoy "):  # a gateway's 503 for its upstream: Envoy's text
            reason = step.removeprefix("envoy ")
            text = f"upstream connect error or disconnect/reset before headers. reset reason: {reason}".encode()
            self.send_response_only(503)
            for name, value in (("server", "envoy"), ("content-type", "text/plain"), ("content-length", len(text))):
                self.send_header(name, str(value))
            self.end_headers()
            self.wfile.write(text)
            return
        if step == "deep 500":  # an error body no JSON parser can take: nested past Python's recursion limit
            self._send(500, b"[" * 200_000, {"Content-Type": "application/json"})
            return
        if step == "flood":  # 6 MB of JSON for an answer of a few numbers
            answer = b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [3000000], "data": [' + b"1," * 2999999
            self._send(200, answer + b"1]}]}", {"Content-Type": "application/json"})
            return
        if step == "long 422":  # a validation error that echoes the inputs back, longer than any answer cap
            message = json.dumps({"error": "x must be >= 0; got " + "-1.0, " * 1_000_000}).encode()
            try:
                self._send(422, message, {"Content-Type": "application/json"})
            except OSError:  # the client read the start, for the message, and closed the connection
                self.close_connection = True
            return
        if isinstance(step, bytes):  # an answer written out by the test
            self._send(200, step, {"Content-Type": "application/json"})
            return
        if step == "json rows":
            answer = b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [5000000, 1], "data": ['
            self._send(200, answer + b"1.5," * 4999999 + b"1.5]}]}", {"Content-Type": "application/json"})
            return
        if step == "echo auth":  # a gateway's failure that quotes the request's credential back
            error = f"upstream refused the request (Authorization: {self.headers.get('Authorization')})"
            self._send(502, json.dumps({"error": error}).encode(), {"Content-Type": "application/json"})
            return
        if step == "error 200":  # a failure said in the body only, as some servers and gateways do
            self._send(200, json.dumps({"error": "CUDA out of memory"}).encode(), {"Content-Type": "application/json"})
            return
        if step == "huge integer":  # an answer holding an integer of more digits than Python converts
            answer = b'{"outputs": [{"name": "y", "datatype": "FP32", "shape": [1], "data": [' + b"9" * 5000 + b"]}]}"
            self._send(200, answer, {"Content-Type": "application/json"})
            return
        if isinstance(step, int) and step != 200:
            self._send(step, json.dumps({"error": f"scripted {step}"}).encode(), {})
            return
        request = v2.decode_infer_request(body, dict(self.headers))
        expected = {spec["name"] for spec in METADATA["inputs"]}
        if set(request.inputs) != expected:
            error = f"unexpected inputs {sorted(request.inputs)}; the model takes {sorted(expected)}"
            self._send(400, json.dumps({"error": error}).encode(), {"Content-Type": "application/json"})
            return
        y = request.inputs["x"] * 2
        if step == "size lies":  # y's FP64 bytes, declared FP32 with the size FP32 takes: half of them claimed
            head = json.dumps(
                {
                    "outputs": [
                        {
                            "name": "y",
                            "datatype": "FP32",
                            "shape": list(y.shape),
                            "parameters": {"binary_data_size": y.size * 4},
                        }
                    ]
                }
            ).encode()
            raw = y.astype(np.float64).tobytes()
            self._send(200, head + raw, {"Inference-Header-Content-Length": str(len(head))})
            return
        if step == "float64":
            y = y.astype(np.float64)
        elif step == "int64":
            y = y.astype(np.int64)
        elif step == "narrow":
            y = y[:, :3]
        elif step == "thrice":
            y = np.stack([y] * 3)
        version = "2" if step == "version 2" else None  # (the version that answered, as Triton says it)
        answer, headers = v2.encode_infer_response({"y": y}, binary=request.binary_output, model_version=version)
        if step in ("cut 1.0", "error 200 1.0"):  # an HTTP/1.0 answer (no Content-Length: it ends at the close)
            self.close_connection = True
            if step == "error 200 1.0":  # whole, but a failure's: the protocol's error document
                answer, headers = json.dumps({"error": "CUDA out of memory"}).encode(), {}
            else:  # closed halfway
                answer = answer[: len(answer) // 2]
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            self.wfile.write(f"HTTP/1.0 200 OK\r\n{head}\r\n".encode() + answer)
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self._send(200, answer, headers)

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        if "Date" in headers:  # a server on another clock: its Date, not one on this host's
            self.send_response_only(status)
        else:
            self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if self.server.keep_alive_header is not None:
            self.send_header("Keep-Alive", self.server.keep_alive_header)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.answered_at = time.monotonic()


def sockets() -> int:
    """How many sockets this process holds open."""
    found = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            found += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
        except OSError:  # (the listing's own descriptor, closed since)
            pass
    return found


def serving(server: S) -> Iterator[S]:
    """``server`` (a :class:`Scripted`) serving on a thread of its own until teardown: a fixture's body."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.stop_trickling.set()
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


@pytest.fixture
def scripted() -> Iterator[Scripted]:
    yield from serving(Scripted())


@pytest.fixture
def backends() -> Iterator[list[RemoteBackend]]:
    made: list[RemoteBackend] = []
    yield made
    for backend in made:
        backend.close()


def backend_for(
    backends: list[RemoteBackend],
    server: Scripted,
    *,
    clock: Any = time.monotonic,
    sleep: Any = lambda _: None,
    **options: Any,
) -> RemoteBackend:
    remote = RemoteModel(url=f"http://127.0.0.1:{server.server_port}", model="scale", **options)
    backend = RemoteBackend("scale", 1, remote, sleep=sleep, clock=clock)
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


def test_a_json_answer_of_the_wrong_rows_is_refused_before_it_is_parsed(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # With a dynamic inner axis no answer length follows from the rows, so up to 1 GiB is read; parsed, JSON
    # takes 11 to 25 times its length (a Python object per number): 20 MB of it took 200 MB and 2 s to be
    # refused on its shape, 1 GiB would take more than 11 GiB.
    monkeypatch.setitem(METADATA, "outputs", [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}])
    backend = backend_for(backends, scripted, binary_tensors=False)
    scripted.script = ["json rows"]
    tracemalloc.start()
    try:
        with pytest.raises(inprocserve.InferenceError, match=r"output 'y' has shape \(5000000, 1\) for a batch of 2"):
            backend.run(backend.runners()[0], FEEDS)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the 20 MB read and joined, and the scripted server's copy (60 MB with every thread's allocations): no
    # parse, which took 200 MB
    assert peak < 100e6
    np.testing.assert_array_equal(backend.run(backend.runners()[0], FEEDS)[0], FEEDS["x"] * 2)  # a right one


def test_a_key_ending_in_an_escaped_shape_does_not_pass_for_an_outputs_shape(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # A JSON answer over 1 MiB has its outputs' names and shapes scanned for before it is parsed: a key whose
    # text ends in a quote and "shape" (written \"shape) was taken for the output's shape, and this valid answer
    # refused as y of shape (9,) for a batch of 2.
    output = {"name": "y", "datatype": "FP32", 'note"shape': [9], "shape": [2, 4], "data": [2] * 8}
    answer = json.dumps({"model_name": "scale", "outputs": [output], "parameters": {"pad": "x" * (2 << 20)}})
    assert '"note\\"shape": [9], "shape": [2, 4]' in answer
    backend = backend_for(backends, scripted, binary_tensors=False)
    scripted.script = [answer.encode()]
    np.testing.assert_array_equal(backend.run(backend.runners()[0], FEEDS)[0], FEEDS["x"] * 2)


def test_a_failure_answered_with_status_200_gives_the_servers_message(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # The error document's message was dropped: the caller read only that the answer had no outputs.
    backend = backend_for(backends, scripted)
    scripted.script = ["error 200"]
    with pytest.raises(inprocserve.InferenceError, match="it says: CUDA out of memory") as caught:
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


def eight_requests(
    backend: RemoteBackend,
    *,
    failed: Callable[[BaseException], None],
    succeeded: Callable[[int], None] = lambda rows: None,
) -> tuple[BatchExecution, list[Request]]:
    """A batch executor on ``backend`` that reports each failed request's error and each answered batch's
    size, and a batch of eight one-row requests for it."""
    execution = BatchExecution(
        backend,
        input_names=["x"],
        output_names=["y"],
        padding=None,
        chunk_rows=64,
        succeeded=lambda batch, results: succeeded(len(batch)),
        failed=lambda request, error: failed(error),
        unbatchable=lambda reason: None,
        clock=time.monotonic,
        telemetry=Recorder("scale", 1),
    )
    route = Route("scale", 1, "stable", "test", "r", [], Decision(1, "stable", "test"))
    return execution, [Request({"x": np.full((1, 4), i, np.float32)}, 1, route, None, None) for i in range(8)]


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (500, inprocserve.RemoteUnavailableError),  # down
        ("drop", inprocserve.RemoteUnavailableError),
        (401, inprocserve.InferenceError),  # refused whoever sends it: no half would pass
        (404, inprocserve.InferenceError),  # the model is not on the server (any more)
        ("huge integer", inprocserve.InferenceError),  # ran the rows, but its answer cannot be read
        ("narrow", inprocserve.InferenceError),  # ran the rows, but answered another output than declared
    ],
)
def test_a_batch_the_server_fails_as_a_whole_is_not_bisected(
    scripted: Scripted, backends: list[RemoteBackend], failure: int | str, error: type[Exception]
) -> None:
    # Bisecting a failed batch finds the request whose input fails it; a server that is down, or refuses the
    # caller, fails every part, and each part would send rows again, which it may have run already.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=100)
    failed: list[BaseException] = []
    execution, batch = eight_requests(backend, failed=failed.append)
    scripted.script = [failure] * 20
    execution.execute(backend.runners()[0], batch)
    assert scripted.posts == 1
    assert len(failed) == 8 and all(type(caught) is error for caught in failed)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (500, inprocserve.RemoteUnavailableError),
        ("drop", inprocserve.RemoteUnavailableError),  # may have run: retry_after_send is off
        (401, inprocserve.InferenceError),
        ("narrow", inprocserve.InferenceError),  # ran the rows
    ],
)
def test_an_event_loops_merged_request_the_server_fails_as_a_whole_is_sent_once(
    scripted: Scripted, failure: int | str, error: type[Exception]
) -> None:
    # Eight tasks of one loop iteration share one call (apredict merges them). When the server fails that
    # call as a whole, each task gets the error: their rows are not sent again one by one, as a batch of
    # synchronous callers' requests is not bisected either.
    import asyncio

    server = inprocserve.Server()
    try:
        remote = RemoteModel(
            url=f"http://127.0.0.1:{scripted.server_port}", model="scale", retries=0, failure_threshold=100
        )
        server.load("scale", remote=remote)

        async def main() -> list[Any]:
            await server.apredict("scale", np.ones((1, 4), np.float32))  # (adopts the runners)
            scripted.script = [failure] * 20
            sent = scripted.posts
            answers = await asyncio.gather(
                *(server.apredict("scale", np.full((1, 4), i, np.float32)) for i in range(8)),
                return_exceptions=True,
            )
            assert scripted.posts - sent == 1
            return answers

        answers = asyncio.run(main())
        assert all(type(answer) is error for answer in answers)
    finally:
        server.close()


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (500, inprocserve.RemoteUnavailableError),
        ("drop", inprocserve.RemoteUnavailableError),  # may have run: retry_after_send is off
        ("narrow", inprocserve.InferenceError),  # ran the rows
    ],
)
def test_a_scoring_jobs_request_the_server_fails_as_a_whole_is_not_sent_again_chunk_by_chunk(
    make_server: ServerFactory, repository: Path, scripted: Scripted, failure: int | str, error: type[Exception]
) -> None:
    """predict_many sends several chunks in one request; one that failed with an InferenceError was scored
    again chunk by chunk (to find the chunk a model refuses), which for a remote server sent every row again:
    64 rows failed with a 500 or a dropped connection were sent once more in 8 requests, and answered, though
    the server may have run them (retry_after_send is off), and a server failing already got 9 calls."""
    server = make_server(repository)
    remote = RemoteModel(
        url=f"http://127.0.0.1:{scripted.server_port}", model="scale", retries=0, failure_threshold=100
    )
    server.load("scale", remote=remote)
    server.predict("scale", np.ones((1, 4), np.float32))
    scripted.script = [failure]
    sent = scripted.posts
    with pytest.raises(error) as caught:
        list(server.predict_many("scale", np.ones((64, 4), np.float32), batch_rows=8))
    assert scripted.posts - sent == 1
    assert type(caught.value) is error
    # every row of the request failed, not only its first chunk's (the note said "rows 1..8")
    assert "predict_many: failed at input rows 1..64 (1-based)" in caught.value.__notes__


def test_an_interim_answer_is_read_past_and_never_answers_the_next_call(
    make_server: ServerFactory, repository: Path, scripted: Scripted
) -> None:
    # 103 Early Hints (sent by some proxies and gateways) came back as the answer, an InferenceError "answered
    # 103", and the connection went back to the pool with the real answer still to come on it: the next call
    # read that answer as its own, so its caller got the first caller's rows.
    server = make_server(repository)
    remote = RemoteModel(url=f"http://127.0.0.1:{scripted.server_port}", model="scale", concurrency=1)
    server.load("scale", remote=remote)
    scripted.script = ["early hints"]
    first = server.predict("scale", {"x": np.full((1, 4), 1, np.float32)})["y"]
    second = server.predict("scale", {"x": np.full((1, 4), 5, np.float32)})["y"]
    assert first.tolist() == [[2.0] * 4]
    assert second.tolist() == [[10.0] * 4]
    # A 101 (never asked for) leaves no HTTP on the connection: the call fails, and the connection is dropped.
    scripted.script = ["switch"]
    with pytest.raises(inprocserve.RemoteUnavailableError, match="answered 101"):
        server.predict("scale", {"x": np.full((1, 4), 1, np.float32)})
    time.sleep(0.3)  # the 101's late answer has come, on a connection no call takes again
    assert server.predict("scale", {"x": np.full((1, 4), 7, np.float32)})["y"].tolist() == [[14.0] * 4]


def test_an_answer_longer_than_the_batchs_outputs_can_take_is_not_read_to_its_end(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # An answer is decoded after it is read, outside the call's deadline: a one-row call answered with 40 MB
    # of JSON held its callers 9 s past a 0.5 s deadline, and took a gigabyte, to find the rows were wrong.
    backend = backend_for(backends, scripted, retries=0)
    scripted.script = ["flood"]
    with pytest.raises(inprocserve.RemoteUnavailableError, match=r"longer than .* outputs of a batch of 2 rows"):
        backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    (answer,) = backend.run(backend.runners()[0], FEEDS)  # an answer of the batch's size is taken, as before
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def test_a_refusal_longer_than_any_answer_is_still_the_callers_error(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # A 422 is judged by its status, whatever its length: read to the batch's answer cap, a long one was an
    # answer "too long", a RemoteUnavailableError counted against the server, and three opened the circuit.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=3)
    for _ in range(4):
        connections = scripted.connections
        scripted.script = ["long 422"]
        with pytest.raises(inprocserve.InvalidInputError, match=r"answered 422: .*x must be >= 0"):
            backend.run(backend.runners()[0], FEEDS, timeout_s=5)
        # the half-read connection was not used again: the GET of the model's readiness that follows a refusal
        # opened a new one
        assert scripted.connections == connections + 1
    assert backend.status()["circuit"] == "closed"
    assert backend.status()["failures"] == 0
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def test_a_refusal_cut_at_the_error_read_still_gives_its_message(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # Only the first 64 KiB of an error answer are read: a longer {"error": "..."} is no JSON document then,
    # and the caller got 200 bytes of its JSON text ('answered 422: {"error": "x must...') for the message.
    backend = backend_for(backends, scripted, retries=0)
    scripted.script = ["long 422"]
    with pytest.raises(inprocserve.InvalidInputError) as caught:
        backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    message = str(caught.value)
    assert "answered 422: x must be >= 0; got -1.0, -1.0, " in message and '{"error"' not in message
    assert len(message.split("answered 422: ")[1]) == 500  # as long as a whole message is cut to


def test_a_metadata_document_too_long_is_refused_as_it_is_read(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Metadata is read at load, and parsed after it is read: a gigabyte of it held the load for a minute (and
    # the memory for ten times its size) to find whether the model has inputs.
    monkeypatch.setitem(METADATA, "platform", "x" * (17 << 20))
    with pytest.raises(inprocserve.ModelLoadError, match="longer than 16777216 bytes"):
        backend_for(backends, scripted)
    assert scripted.gets == 2  # GET /v2, then the metadata once: as long again if asked again


def test_a_connection_idle_near_a_servers_keep_alive_timeout_is_not_used_again(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server closes a connection idle past its keep-alive timeout (gunicorn's 2 s, uvicorn's 5 s), and a call
    # sent on it as it did was answered by the close: a RemoteUnavailableError counted against the server, for
    # one call in 30 against uvicorn at that idle time. Such a call cannot be sent again safely (the server may
    # have read it), so a connection idle that long is not used: a new one is opened.
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.2, raising=False)  # (1 s: below those servers' timeouts)
    scripted.keep_alive_s = 0.3
    backend = backend_for(backends, scripted, retries=0)
    for _ in range(3):  # calls closer together than that keep the connection, as before
        (answer,) = backend.run(backend.runners()[0], FEEDS)
    assert scripted.connections == 1
    time.sleep(0.4)
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert scripted.connections == 2
    assert backend.status()["failures"] == 0


def test_a_connection_is_used_again_up_to_the_keep_alive_timeout_the_server_announced(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server that says its keep-alive timeout (Keep-Alive: timeout=5: Node, nginx, Apache) keeps a connection
    # that long: closed after the default second idle, calls 1 to 2 s apart each opened a new connection (a TLS
    # handshake over https). It is used up to a second before the timeout said (half of it, if shorter).
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.2)  # (1 s)
    scripted.keep_alive_s = 2.0
    # (used up to 1 s idle: not timeout=1's 0.5 s, which a loaded machine overslept from 0.35 s)
    scripted.keep_alive_header = "timeout=2, max=100"
    backend = backend_for(backends, scripted, retries=0)
    backend.run(backend.runners()[0], FEEDS)
    time.sleep(0.35)  # past the default, within what the server said
    backend.run(backend.runners()[0], FEEDS)
    assert scripted.connections == 1  # (was 2)
    time.sleep(1.1)  # past what the server said: a new connection, never one the server closes
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert scripted.connections == 2
    assert backend.status()["failures"] == 0


def stop_taking_connections(server: Scripted) -> list[socket.socket]:
    """The server's host stops answering connection attempts (down, or its port black-holed): the server no
    longer accepts, and its accept queue is filled, so the kernel drops further attempts unanswered. Returns
    the sockets that fill the queue (to close at the end)."""
    server.shutdown()  # (the listening socket stays open)
    queued = []
    for _ in range(server.request_queue_size + 4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.server_address)
        queued.append(filler)
    return queued


def test_a_host_that_answers_no_connection_attempt_is_unavailable_and_opens_the_circuit(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A connection attempt left unanswered for connect_timeout_s was a DeadlineExceededError "no answer ...
    # within the request's 5 s" after 0.2 s, and, the caller's deadline being the shorter, it never counted
    # for the circuit: every request waited out connect timeouts, for as long as the host was down.
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.01)  # (the connection prepare() left is not used again)
    backend = backend_for(backends, scripted, retries=1, connect_timeout_s=0.2, timeout_s=30, failure_threshold=2)
    queued = stop_taking_connections(scripted)
    try:
        time.sleep(0.05)
        for _ in range(2):
            with pytest.raises(inprocserve.RemoteUnavailableError, match=r"connect_timeout_s = 0\.2 s") as caught:
                backend.run(backend.runners()[0], FEEDS, timeout_s=5)
            assert "is unavailable: cannot connect" in str(caught.value)
        assert backend.status()["circuit"] == "open"
        with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
            backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    finally:
        for filler in queued:
            filler.close()


def test_a_connect_cut_short_by_the_callers_deadline_is_the_callers_timeout(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.01)
    backend = backend_for(backends, scripted, retries=0, connect_timeout_s=5, timeout_s=30, failure_threshold=1)
    queued = stop_taking_connections(scripted)
    try:
        time.sleep(0.05)
        with pytest.raises(inprocserve.DeadlineExceededError, match=r"request's 0\.2 s"):
            backend.run(backend.runners()[0], FEEDS, timeout_s=0.2)
        assert backend.status()["circuit"] == "closed"  # (no sign of the server's health in 0.2 s)
    finally:
        for filler in queued:
            filler.close()


def test_a_credential_the_server_quotes_back_is_never_shown_nor_logged(
    scripted: Scripted, backends: list[RemoteBackend], caplog: pytest.LogCaptureFixture
) -> None:
    # The server's message goes into the error (a web client's 503 body), last_error (status, the health
    # reason, the readiness probe's body) and the circuit's warning: a gateway that quoted the request's
    # Authorization header back put the token in all of them.
    token = "Bearer s3cr3t-t0ken-8c1f"
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, headers={"Authorization": token})
    scripted.script = ["echo auth"]
    with caplog.at_level("WARNING", logger="inprocserve._remote"):
        with pytest.raises(inprocserve.RemoteUnavailableError, match="answered 502") as caught:
            backend.run(backend.runners()[0], FEEDS)
        with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast") as fast:
            backend.run(backend.runners()[0], FEEDS)
    assert "Authorization: ***" in str(caught.value)
    shown = [str(caught.value), str(fast.value), str(backend.status()), str(backend.health()), caplog.text]
    assert "failed 1 calls in a row" in caplog.text  # (the circuit's warning, with the last error)
    for text in shown:
        assert "s3cr3t" not in text


def test_a_binary_answer_whose_sizes_do_not_add_up_to_its_data_is_refused(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # A server that wrote y's FP64 bytes but declared FP32 with the size FP32 takes: the first half of the
    # bytes was read as FP32 values and the rest ignored, so the callers got garbage numbers, silently.
    backend = backend_for(backends, scripted, retries=0)
    scripted.script = ["size lies"]
    with pytest.raises(inprocserve.InferenceError, match="binary_data_size add up to 32") as caught:
        backend.run(backend.runners()[0], FEEDS)
    assert not isinstance(caught.value, inprocserve.InvalidInputError)  # the answer's fault: no bisecting
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def test_an_answer_of_another_model_version_than_the_one_pinned_is_refused(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # A gateway between that routes by model name only (a rewrite that drops /versions/3) has the default
    # version answer: a canary pinned to version 3 was served by version 2, silently, its answers said so.
    backend = backend_for(backends, scripted, retries=0, version="3")
    scripted.script = ["version 2"]
    with pytest.raises(inprocserve.InferenceError, match="answered by model version '2', not the '3' asked for"):
        backend.run(backend.runners()[0], FEEDS)
    (answer,) = backend.run(backend.runners()[0], FEEDS)  # an answer that names no version is taken
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    unpinned = backend_for(backends, scripted, retries=0)
    scripted.script = ["version 2"]
    (answer,) = unpinned.run(unpinned.runners()[0], FEEDS)  # the server picks the version: any is the one
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def test_a_batch_too_large_for_the_server_is_sent_in_halves(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=100)
    failed: list[BaseException] = []
    succeeded: list[int] = []
    execution, batch = eight_requests(backend, failed=failed.append, succeeded=succeeded.append)
    scripted.script = [413]  # refused before it ran: its halves may fit
    execution.execute(backend.runners()[0], batch)
    assert scripted.posts == 3 and succeeded == [4, 4] and not failed


def test_a_probe_that_dies_of_something_else_does_not_keep_the_circuit_open(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    clock = ManualClock()
    backend = backend_for(backends, scripted, clock=clock, retries=0, failure_threshold=1, cooloff_s=10)
    scripted.script = [500]
    with pytest.raises(inprocserve.RemoteUnavailableError):
        backend.run(backend.runners()[0], FEEDS)
    clock.advance(10)
    with pytest.raises(inprocserve.InvalidInputError, match="no value for input\\(s\\) 'x'"):
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


def test_a_server_that_trickles_its_headers_cannot_hold_the_call_past_its_deadline(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # Each header byte arrives well within the read timeout, and http.client reads headers with no check
    # between reads: only the watchdog, shutting the socket at the deadline, ends this call.
    backend = backend_for(backends, scripted, concurrency=1, timeout_s=30)
    scripted.script = ["trickle headers"]
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            backend.run(backend.runners()[0], FEEDS, timeout_s=0.5)
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    caller.join(timeout=20)  # a hang detector, not a latency bound: the server trickles until teardown
    assert not caller.is_alive(), "the call outlived its 0.5 s deadline by 20 s"
    (error,) = outcome
    assert isinstance(error, inprocserve.DeadlineExceededError)
    assert "request's 0.5 s" in str(error)
    (answer,) = backend.run(backend.runners()[0], FEEDS)  # the one connection slot was given back
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def answer_a_few(backend: RemoteBackend) -> None:
    """Calls answered at the server's usual pace: its running average of answer times no longer weighs a
    first call that set up the connection (slow on a loaded machine) much."""
    for _ in range(8):
        backend.run(backend.runners()[0], FEEDS)


def hang_with_short_deadline(backend: RemoteBackend, timeout_s: float = 0.2) -> inprocserve.DeadlineExceededError:
    with pytest.raises(inprocserve.DeadlineExceededError) as caught:
        backend.run(backend.runners()[0], FEEDS, timeout_s=timeout_s)
    return caught.value


def test_a_hung_server_opens_the_circuit_though_callers_deadlines_are_short(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # Every caller's deadline (0.2 s) is shorter than timeout_s, so each timeout is the caller's; but a
    # server that holds call after call far longer than it usually answers, answering none, is failing,
    # and failing fast beats every request waiting out its whole deadline.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=2, timeout_s=30, concurrency=2)
    answer_a_few(backend)  # the server's usual answer time: a few ms
    scripted.script = ["hang", "hang"]
    for _ in range(2):
        assert "counted as a failure of the server" in str(hang_with_short_deadline(backend))
    assert backend.status()["circuit"] == "open"
    with pytest.raises(inprocserve.RemoteUnavailableError, match="failing fast"):
        backend.run(backend.runners()[0], FEEDS, timeout_s=0.2)
    assert scripted.posts == 8 + 2  # (the calls answered, the two hangs; none sent while open)


def test_before_its_first_answer_a_slow_server_is_not_judged_by_callers_deadlines(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # A cold server (a first inference that loads or compiles) is slower than these callers allow; that
    # must not fail fast the patient callers behind them.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30, concurrency=2)
    scripted.script = ["slow 0.4", "slow 0.4", "slow 0.4"]
    for _ in range(3):
        assert "counted" not in str(hang_with_short_deadline(backend))
    assert backend.status()["circuit"] == "closed"
    (answer,) = backend.run(backend.runners()[0], FEEDS)  # a patient caller is answered
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def test_calls_caught_in_one_stall_count_once(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=2, timeout_s=30, concurrency=2)
    answer_a_few(backend)
    scripted.script = ["hang", "hang"]
    errors: list[BaseException] = []
    # (2 s, not 0.2: on a loaded machine the second call was sent after the first one's deadline had passed)
    callers = [threading.Thread(target=lambda: errors.append(hang_with_short_deadline(backend, 2.0))) for _ in range(2)]
    posts = scripted.posts
    for caller in callers:
        caller.start()
    wait_until(lambda: scripted.posts == posts + 2)
    assert all(caller.is_alive() for caller in callers), "a deadline passed before both calls were sent"
    for caller in callers:
        caller.join(timeout=20)
    assert len(errors) == 2
    assert sum("counted" in str(error) for error in errors) == 1  # one stall, one failure
    assert backend.status()["circuit"] == "closed"
    scripted.script = ["hang"]
    hang_with_short_deadline(backend)  # a second stall, after the first was counted
    assert backend.status()["circuit"] == "open"


def test_deadlines_too_short_to_tell_a_hang_never_count(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30, concurrency=2)
    backend.run(backend.runners()[0], FEEDS)  # a few ms: 4x that is far less than 0.05 s
    scripted.script = ["hang", "hang"]
    for _ in range(2):
        with pytest.raises(inprocserve.DeadlineExceededError) as caught:
            backend.run(backend.runners()[0], FEEDS, timeout_s=0.05)  # under the 0.1 s floor
        assert "counted" not in str(caught.value)
    assert backend.status()["circuit"] == "closed"


@pytest.mark.parametrize("reply", ["hang", 504])
def test_a_short_deadline_handled_late_is_judged_by_the_time_the_caller_allowed(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch, reply: str | int
) -> None:
    """On a loaded machine a 0.05 s deadline was handled 0.1 s or more after the send, and that wait, not the
    caller's 0.05 s, was compared with the hang floor: counted as the server's hang, it opened the circuit.
    The same for the server's 504 within that deadline (a timeout it honoured)."""
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30, concurrency=2)
    backend.run(backend.runners()[0], FEEDS)
    http = backend._http()

    class LateToTell:
        """The transport, telling of its timeout 0.2 s late (a thread that waited for the GIL, say)."""

        def request(self, *args: Any, **kwargs: Any) -> Any:
            try:
                return http.request(*args, **kwargs)
            finally:
                time.sleep(0.2)

    monkeypatch.setattr(backend, "_http", LateToTell)
    scripted.script = [reply, reply]
    for _ in range(2):
        with pytest.raises(inprocserve.DeadlineExceededError) as caught:
            backend.run(backend.runners()[0], FEEDS, timeout_s=0.05)
        assert "counted" not in str(caught.value)
    assert backend.status()["circuit"] == "closed"


def test_callers_in_a_hurry_do_not_open_the_circuit_for_everyone(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30, concurrency=2)
    scripted.script = ["slow 0.3"]
    backend.run(backend.runners()[0], FEEDS)  # this server usually takes 0.3 s
    scripted.script = ["slow 0.3", "slow 0.3"]
    for _ in range(2):  # 0.05 s is far less than four times its usual answer time
        with pytest.raises(inprocserve.DeadlineExceededError) as caught:
            backend.run(backend.runners()[0], FEEDS, timeout_s=0.05)
        assert "counted" not in str(caught.value)
    assert backend.status()["circuit"] == "closed"


def test_a_504_counts_against_the_server_when_its_own_timeout_ran_out(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1)
    scripted.script = [504]
    with pytest.raises(inprocserve.DeadlineExceededError, match="answered 504"):
        backend.run(backend.runners()[0], FEEDS)  # sent timeout_s itself: the server could not make it
    assert backend.status()["circuit"] == "open"


def test_a_429_is_not_a_failure_of_the_server(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1)
    scripted.script = [(429, {"Retry-After": "7"})]
    with pytest.raises(inprocserve.RemoteUnavailableError, match=r"overloaded.*asks for 7 s"):
        backend.run(backend.runners()[0], FEEDS)
    assert backend.status()["circuit"] == "closed"  # shedding load is not being down
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_is_honoured_within_the_deadline(
    scripted: Scripted, backends: list[RemoteBackend], status: int
) -> None:
    clock = ManualClock()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    backend = backend_for(backends, scripted, clock=clock, sleep=sleep, retries=2, timeout_s=10)
    scripted.script = [(status, {"Retry-After": "1"})]
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert waits and waits[0] >= 1  # not the 50 ms backoff: the server said when
    for asked in ("30", "5"):  # past the call's 10 s; or within it, but too long for a batch worker to sleep
        scripted.script = [(status, {"Retry-After": asked})]
        with pytest.raises(inprocserve.RemoteUnavailableError, match=f"answered {status}"):
            backend.run(backend.runners()[0], FEEDS)
    assert len(waits) == 1 and scripted.posts == 4


@pytest.mark.parametrize("skew_s", [60.0, -60.0])
def test_a_retry_after_date_is_read_on_the_servers_clock(
    scripted: Scripted, backends: list[RemoteBackend], skew_s: float
) -> None:
    # The server's clock runs a minute ahead of this host's (or behind it) and it asks for one second, as an
    # HTTP date on its own clock. Measured against this host's clock that was 61 s (not waited for: the call
    # failed) or none at all (the overloaded server was called again at once).
    waits: list[float] = []
    backend = backend_for(backends, scripted, sleep=waits.append, retries=2, timeout_s=10)
    servers_now = time.time() + skew_s
    scripted.script = [
        (503, {"Date": formatdate(servers_now, usegmt=True), "Retry-After": formatdate(servers_now + 1, usegmt=True)})
    ]
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert waits == [1.0]


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("120", 120.0),
        (" 5 ", 5.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: no wait
        ("9" * 400, 1e9),  # no 400-digit float, no exception
        ("²", None),
        ("-3", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00", None),  # a date without its zone
        (None, None),
    ],
)
def test_retry_after_values_are_read_safely(header: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(header) == seconds


@pytest.mark.parametrize(
    ("date", "seconds"),
    [
        ("Wed, 21 Oct 2015 07:27:58 GMT", 2.0),  # the server's own clock: 2 s, whatever this host's says
        ("Wed, 21 Oct 2015 07:28:05 GMT", 0.0),  # a date already past on the server's clock: no wait
        ("yesterday", 0.0),  # no valid Date: measured on this host's clock (the date is long past)
        ("Wed, 21 Oct 2015 07:27:58", 0.0),  # a Date without its zone: likewise
    ],
)
def test_a_retry_after_date_is_measured_from_the_answers_date(date: str, seconds: float) -> None:
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT", date=date) == seconds


@pytest.mark.parametrize(("step", "said"), [("int64", "of numpy type int64"), ("narrow", r"of shape \[2, 3\]")])
def test_outputs_unlike_the_declared_ones_are_an_inference_error(
    scripted: Scripted, backends: list[RemoteBackend], step: str, said: str
) -> None:
    backend = backend_for(backends, scripted)
    scripted.script = [step]
    with pytest.raises(
        inprocserve.InferenceError, match=f"output 'y' is {said}.*declares y: tensor\\(float\\)"
    ) as caught:
        backend.run(backend.runners()[0], FEEDS)
    assert not isinstance(caught.value, inprocserve.InvalidInputError)  # the server's fault: no bisecting


def test_an_output_of_another_float_width_is_converted_to_the_declared_type(
    scripted: Scripted, backends: list[RemoteBackend], caplog: pytest.LogCaptureFixture
) -> None:
    # MLServer's scikit-learn runtime answers FP64 where model-settings.json commonly declares FP32.
    backend = backend_for(backends, scripted)
    scripted.script = ["float64", "float64"]
    with caplog.at_level("WARNING", logger="inprocserve._remote"):
        for _ in range(2):
            (answer,) = backend.run(backend.runners()[0], FEEDS)
            assert answer.dtype == np.float32
            np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    (warning,) = [r for r in caplog.records if "converting it" in r.getMessage()]  # logged once
    assert "as float64" in warning.getMessage()


@pytest.mark.parametrize(
    ("declared", "step", "x", "said"),
    [
        ("INT32", "int64", 1.5e9, r"int64 with values from 3000000000 to 3000000000, past int32's"),
        ("INT32", "int64", -1.5e9, r"int64 with values from -3000000000 to -3000000000, past int32's"),
        ("FP16", "float64", 4e4, r"float64 with finite values up to 80000 in magnitude, past float16's largest"),
    ],
)
def test_an_output_of_another_width_whose_values_the_declared_type_cannot_hold_is_an_inference_error(
    scripted: Scripted,
    backends: list[RemoteBackend],
    monkeypatch: pytest.MonkeyPatch,
    declared: str,
    step: str,
    x: float,
    said: str,
) -> None:
    # Narrowed with astype, 3e9 wraps to -1294967296 in int32 and 8e4 becomes inf in float16: other values
    # than the server answered, with nothing but a warning to say so.
    monkeypatch.setitem(METADATA, "outputs", [{"name": "y", "datatype": declared, "shape": [-1, 4]}])
    backend = backend_for(backends, scripted)
    scripted.script = [step]
    feeds = {"x": np.full((2, 4), x, np.float32)}
    with pytest.raises(inprocserve.InferenceError, match=f"output 'y' is answered as {said}") as caught:
        backend.run(backend.runners()[0], feeds)
    assert not isinstance(caught.value, inprocserve.InvalidInputError)  # the server's answer: no bisecting
    scripted.script = [step]  # values the declared type holds are converted, as before
    (answer,) = backend.run(backend.runners()[0], {"x": np.full((2, 4), [1, -3, 0.5, 7], np.float32)})
    assert answer.dtype == v2.numpy_dtype(declared, tensor="y")
    np.testing.assert_array_equal(answer, np.full((2, 4), [2, -6, 1, 14]))


def test_a_call_that_hangs_while_others_are_answered_does_not_count(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # One request stuck (a slow input, a lost packet) while the server answers everyone else: not a hang.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30, concurrency=2)
    backend.run(backend.runners()[0], FEEDS)
    scripted.script = ["hang"]
    errors: list[BaseException] = []
    # (2 s: with 0.2 s a loaded machine answered the other call only after the hung one's deadline)
    stuck = threading.Thread(target=lambda: errors.append(hang_with_short_deadline(backend, 2.0)))
    stuck.start()
    wait_until(lambda: scripted.posts == 2)
    backend.run(backend.runners()[1], FEEDS)  # answered while the other call hangs
    assert stuck.is_alive(), "the hung call's deadline passed before the other call was answered"
    stuck.join(timeout=20)
    (error,) = errors
    assert "counted" not in str(error)
    assert backend.status()["circuit"] == "closed"


class LabelServer(ThreadingHTTPServer):
    """A model server whose model answers text labels (BYTES, shape [-1, 1], as scikit-learn classifiers on
    MLServer do), each POST with ``answer(rows)``: a list of (name, element count) BYTES outputs of 2-byte
    elements, sent as binary tensors; each row of ``columns`` labels, the output declared of ``declared`` shape."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), LabelHandler)
        self.answer: Callable[[int], list[tuple[str, int]]] = lambda rows: [("label", rows)]
        self.declared = [-1, 1]
        self.columns = 1


class LabelHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: LabelServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(200)
        for name, value in {**headers, "Content-Length": str(len(body))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        metadata = {
            **METADATA,
            "outputs": [{"name": "label", "datatype": "BYTES", "shape": self.server.declared}],
        }
        document = {"extensions": ["binary_tensor_data"]} if self.path == "/v2" else metadata
        self._send(json.dumps(document).encode(), {"Content-Type": "application/json"})

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        request = json.loads(body[: int(self.headers.get(v2.HEADER_LENGTH, len(body)))])
        rows = request["inputs"][0]["shape"][0]
        element = (2).to_bytes(4, "little") + b"ab"
        columns = self.server.columns
        outputs = [(name, count, element * (count * columns)) for name, count in self.server.answer(rows)]
        header = json.dumps(
            {
                "model_name": "scale",
                "outputs": [
                    {
                        "name": name,
                        "datatype": "BYTES",
                        "shape": [count, columns],
                        "parameters": {"binary_data_size": len(data)},
                    }
                    for name, count, data in outputs
                ],
            }
        ).encode()
        body = b"".join([header, *(data for _, _, data in outputs)])
        self._send(body, {"Content-Type": "application/octet-stream", v2.HEADER_LENGTH: str(len(header))})


@pytest.fixture
def label_server() -> Iterator[LabelServer]:
    server = LabelServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def refused_once_read(call: Callable[[], Any]) -> inprocserve.InprocserveError:
    """What ``call`` (a 0.5 s call answered with millions of labels) is refused with, within 1.5 s, once its
    answer's header was read within the deadline: on a loaded machine the answer (built and read in this
    process) sometimes came after it, "(not read yet)", or not even its header did, "no answer from ...",
    which proves nothing of the decoding and is run again (at most five times: an answer never read in time
    fails the test). A call that decodes past its deadline is answered, and fails every round."""
    for _ in range(5):
        started = time.monotonic()
        with pytest.raises(inprocserve.InprocserveError) as caught:
            call()
        assert time.monotonic() - started < 1.5
        if not re.search(r"\(not read yet\)|^model .*: no answer from ", str(caught.value)):
            break
    return caught.value


def test_an_answer_of_millions_of_text_elements_is_refused_on_its_shapes_before_it_is_decoded(
    label_server: LabelServer, make_server: ServerFactory, tmp_path: Path
) -> None:
    # Text outputs have no byte cap of their batch (their elements have no fixed size), and decoding takes about
    # 1 us per element, holding the GIL, after the deadline: a one-row call answered with 96 MB of 2-byte labels
    # held its caller 17 s past a 0.5 s deadline to find the answer had 16 million rows.
    server = make_server(tmp_path)
    remote = RemoteModel(url=f"http://127.0.0.1:{label_server.server_port}", model="scale", retries=0)
    server.load("scale", remote=remote)
    x = np.ones((1, 4), np.float32)
    assert server.predict("scale", {"x": x})["label"].tolist() == [["ab"]]
    label_server.answer = lambda rows: [("label", 4_000_000)]
    refused = refused_once_read(lambda: server.predict("scale", {"x": x}, timeout_s=0.5))
    assert isinstance(refused, inprocserve.InferenceError), repr(refused)
    assert "output 'label' has shape (4000000, 1) for a batch of 1" in str(refused)
    # an output the metadata does not declare is not decoded either (it was, then dropped)
    label_server.answer = lambda rows: [("label", rows), ("debug", 4_000_000)]
    started = time.monotonic()
    assert server.predict("scale", {"x": x}, timeout_s=0.5)["label"].tolist() == [["ab"]]
    assert time.monotonic() - started < 1.5


def test_an_answer_that_fits_the_batch_but_takes_past_the_deadline_to_decode_is_a_deadline_error(
    label_server: LabelServer, make_server: ServerFactory, tmp_path: Path
) -> None:
    # Declared [-1, -1], one row of 4 million labels fits a one-row batch (the other axis is dynamic): it was
    # decoded in full, 1.9 s (more on a busy host) after a 0.5 s deadline, and the caller got it.
    label_server.declared = [-1, -1]
    server = make_server(tmp_path)
    remote = RemoteModel(url=f"http://127.0.0.1:{label_server.server_port}", model="scale", retries=0)
    server.load("scale", remote=remote)
    x = np.ones((1, 4), np.float32)
    assert server.predict("scale", {"x": x})["label"].tolist() == [["ab"]]
    label_server.columns = 4_000_000
    refused = refused_once_read(lambda: server.predict("scale", {"x": x}, timeout_s=0.5))
    assert isinstance(refused, inprocserve.DeadlineExceededError), repr(refused)
    assert re.search(r"'label' of shape \[1, 4000000\].*to decode", str(refused)), str(refused)
    label_server.columns = 3
    assert server.predict("scale", {"x": x}, timeout_s=0.5)["label"].tolist() == [["ab"] * 3]


def raised_within(call: Callable[[], Any], hang_s: float = 10.0) -> tuple[BaseException | None, float]:
    """What ``call`` raised on a thread of its own, and how long it took; fails past ``hang_s`` (a hang
    detector, not a latency bound)."""
    outcome: list[BaseException] = []

    def target() -> None:
        try:
            call()
        except BaseException as exc:
            outcome.append(exc)

    caller = threading.Thread(target=target, daemon=True)
    started = time.monotonic()
    caller.start()
    caller.join(timeout=hang_s)
    assert not caller.is_alive(), f"the call still ran after {hang_s} s"
    return (outcome[0] if outcome else None), time.monotonic() - started


def stall_resolving(monkeypatch: pytest.MonkeyPatch, host: str) -> tuple[threading.Event, list[int]]:
    """Make ``socket.getaddrinfo`` stall for ``host`` until the returned event is set, as a DNS server that
    drops queries does (a stalled DNS server cannot be run here: the OS resolver is stood in for); returns the
    event and a one-item list counting the lookups stalled at the moment."""
    real = socket.getaddrinfo
    release = threading.Event()
    stalled = [0]

    def getaddrinfo(name: Any, *args: Any, **kwargs: Any) -> Any:
        if name == host and not release.is_set():
            stalled[0] += 1
            release.wait(30)
            stalled[0] -= 1
        return real(name, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return release, stalled


def test_a_stalled_name_resolution_ends_at_the_callers_deadline(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # urllib3 resolves the host before its connect timeout starts, and no watchdog can end a lookup (no socket
    # yet): a stalled resolver held the predict, and its connection slot, for as long as it stalled.
    remote = RemoteModel(url=f"http://localhost:{scripted.server_port}", model="scale", concurrency=1, retries=0)
    backend = RemoteBackend("scale", 1, remote)
    backends.append(backend)
    backend.prepare()
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # each call opens a connection, so resolves the host
    release, stalled = stall_resolving(monkeypatch, "localhost")
    try:
        for _ in range(2):  # the second: the one connection slot was given back
            error, took_s = raised_within(lambda: backend.run(backend.runners()[0], FEEDS, timeout_s=0.3))
            assert took_s < 2.0
            assert isinstance(error, inprocserve.DeadlineExceededError), error
            assert "request's 0.3 s" in str(error)
        assert stalled[0] == 1  # one lookup, shared by the calls, holds one thread while the resolver stalls
    finally:
        release.set()
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


def test_connections_that_churn_to_a_host_name_that_resolves_slowly_hold_no_more_threads_or_sockets(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new connection to a host name resolves it on a thread of its own (see ``_Resolver``): with every
    call opening a connection, from 4 callers, and each lookup taking 20 ms, at most one lookup per host runs
    at a time, and once the calls end the client holds its watchdog thread and no more sockets than its pool's."""
    remote = RemoteModel(url=f"http://localhost:{scripted.server_port}", model="scale", concurrency=4, retries=0)
    backend = RemoteBackend("scale", 1, remote)
    backends.append(backend)
    backend.prepare()
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # each call opens a connection, so resolves the host
    real = socket.getaddrinfo

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", slow)

    def ours() -> list[str]:
        return [t.name for t in threading.enumerate() if t.name.startswith("inprocserve-")]

    backend.run(backend.runners()[0], FEEDS)
    threads_before, sockets_before = len(ours()), sockets()
    peak = [0]

    def call(_: int) -> None:
        for _ in range(25):
            backend.run(backend.runners()[0], FEEDS)
            peak[0] = max(peak[0], sum(1 for name in ours() if name.startswith("inprocserve-resolve-")))

    callers = [threading.Thread(target=call, args=(n,)) for n in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(30)
    assert peak[0] <= 1  # one lookup per host at a time, however many connections wait for it
    # kept: the pool's connections, at most `concurrency`, each with its end in the test's server
    wait_until(lambda: len(ours()) <= threads_before and sockets() <= sockets_before + 2 * 4)


def serving_each_connection(handle: Callable[[socket.socket, threading.Event], None]) -> Iterator[int]:
    """A loopback port whose server runs ``handle(connection, stop)`` on a thread of its own for each connection
    (``stop`` is set at teardown): the body of a fixture that yields the port."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn, stop), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield listener.getsockname()[1]
    stop.set()
    listener.close()


@pytest.fixture
def handshake_dripper() -> Iterator[int]:
    """A port whose server answers each connection's TLS ClientHello a byte every 50 ms: the start of a
    handshake record of 16 KiB that never ends (until teardown)."""

    def drip(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.recv(4096)  # the ClientHello
            for byte in b"\x16\x03\x03\x40\x00" + b"\x02" * 16384:
                if stop.wait(0.05):
                    return
                try:
                    conn.sendall(bytes([byte]))
                except OSError:  # the client gave up and closed
                    return

    yield from serving_each_connection(drip)


def test_a_tls_handshake_dripped_a_byte_at_a_time_ends_at_the_calls_timeout(handshake_dripper: int) -> None:
    # CPython bounds a handshake as a whole by the socket's timeout, which urllib3 sets to the connect timeout
    # (capped by the call's whole timeout_s): a connection opened late in a call, after waiting for the one
    # slot, had its handshake run past the call's timeout by up to that much, while the watchdog only got
    # the socket once the handshake was over.
    client = _oip_client.HttpClient(
        f"https://127.0.0.1:{handshake_dripper}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    try:
        holder = threading.Thread(target=raised_within, args=(lambda: client.request("GET", "/v2", timeout_s=1.0),))
        holder.start()  # takes the one connection slot: its handshake drips until its 1 s run out
        time.sleep(0.05)
        error, took_s = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
        holder.join()
    finally:
        client.close()
    assert isinstance(error, _oip_client.TransportError), error
    assert error.timed_out
    assert took_s < 1.5  # (was 1.95: the 0.95 s waited for the slot, then a 1 s handshake)


@pytest.mark.parametrize("binary", [True, False])
def test_an_http_1_0_answer_cut_by_a_close_is_a_transport_failure(
    scripted: Scripted, backends: list[RemoteBackend], binary: bool
) -> None:
    # Without a Content-Length, an answer ends where the connection closes: one closed halfway looked whole,
    # and was an InferenceError (the model's fault, for every caller), not the failure a reset connection is.
    backend = backend_for(backends, scripted, retries=2, binary_tensors=binary)
    scripted.script = ["cut 1.0"]
    with pytest.raises(inprocserve.RemoteUnavailableError, match="connection closed before the answer's end"):
        backend.run(backend.runners()[0], FEEDS)
    assert scripted.posts == 1  # (the model may have run: not sent again, but with retry_after_send)
    assert backend.status()["consecutive_failures"] == 1
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)


@pytest.mark.parametrize(("allowed", "posts", "retries"), [(False, 1, 0), (True, 3, 2)])
def test_a_gateways_503_for_an_upstream_reset_after_the_request_went_is_retried_only_when_allowed(
    scripted: Scripted, backends: list[RemoteBackend], allowed: bool, posts: int, retries: int
) -> None:
    # Envoy answers 503 when the model server's connection is reset before its answer: the request was
    # forwarded, and the model may have run. It was retried as a 503 that cannot have run, though
    # retry_after_send = false promises a request that may have run is not sent again (as a reset is not).
    backend = backend_for(backends, scripted, retries=2, retry_after_send=allowed)
    scripted.script = ["envoy connection termination"] * 3
    with pytest.raises(inprocserve.RemoteUnavailableError, match="reset reason: connection termination"):
        backend.run(backend.runners()[0], FEEDS)
    assert scripted.posts == posts  # allowed: within the retry budget, and counted as retries
    assert backend.status()["retries"] == retries


def test_a_gateways_503_for_an_upstream_it_could_not_reach_is_retried(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    backend = backend_for(backends, scripted, retries=2)
    scripted.script = ["envoy connection failure", "envoy overflow"]  # never forwarded: it cannot have run
    (answer,) = backend.run(backend.runners()[0], FEEDS)
    np.testing.assert_array_equal(answer, FEEDS["x"] * 2)
    assert scripted.posts == 3
    assert backend.status()["retries"] == 2


def test_a_whole_http_1_0_answer_that_is_not_the_models_outputs_is_still_an_inference_error(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    backend = backend_for(backends, scripted, retries=2)
    scripted.script = ["error 200 1.0"]
    with pytest.raises(inprocserve.InferenceError, match="CUDA out of memory") as caught:
        backend.run(backend.runners()[0], FEEDS)
    assert type(caught.value) is inprocserve.InferenceError
    assert backend.status()["consecutive_failures"] == 0


def test_a_name_not_resolved_within_connect_timeout_s_is_a_server_that_cannot_be_reached(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = RemoteModel(
        url=f"http://localhost:{scripted.server_port}", model="scale", retries=1, connect_timeout_s=0.2
    )
    backend = RemoteBackend("scale", 1, remote, sleep=lambda _: None)
    backends.append(backend)
    backend.prepare()
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # each call opens a connection, so resolves the host
    release, _ = stall_resolving(monkeypatch, "localhost")
    try:
        with pytest.raises(inprocserve.RemoteUnavailableError, match=r"resolving 'localhost' took longer than 0\.2"):
            backend.run(backend.runners()[0], FEEDS)  # (retried once: it cannot have run)
    finally:
        release.set()
    assert backend.status()["retries"] == 1
    assert backend.status()["consecutive_failures"] == 1


def test_a_server_that_cuts_every_answer_opens_the_circuit(scripted: Scripted, backends: list[RemoteBackend]) -> None:
    backend = backend_for(backends, scripted, retries=0, failure_threshold=2)
    scripted.script = ["cut 1.0", "cut 1.0"]
    for _ in range(2):
        with pytest.raises(inprocserve.RemoteUnavailableError, match="connection closed before the answer's end"):
            backend.run(backend.runners()[0], FEEDS)
    assert backend.status()["circuit"] == "open"


def test_a_host_name_with_an_empty_label_is_a_server_that_cannot_be_reached(backends: list[RemoteBackend]) -> None:
    # A typo in the URL's host (two dots) makes getaddrinfo raise UnicodeError, not OSError: the resolver's
    # thread died of it and the call failed with a bare AssertionError, where urllib3 said what was wrong.
    remote = RemoteModel(url="http://models..internal:8000", model="scale", retries=0, connect_timeout_s=1)
    backend = RemoteBackend("scale", 1, remote, sleep=lambda _: None)
    backends.append(backend)
    with pytest.raises(inprocserve.InprocserveError, match=r"models\.\.internal.*label empty or too long"):
        backend.prepare()


def test_closing_the_backend_ends_a_call_stalled_resolving_the_host_at_once(
    scripted: Scripted, backends: list[RemoteBackend], monkeypatch: pytest.MonkeyPatch
) -> None:
    # close() ends the calls in flight at once: one waiting on a stalled name server has no socket for the
    # watchdog to shut, and held the close (a server's shutdown) for the whole connect_timeout_s
    remote = RemoteModel(url=f"http://localhost:{scripted.server_port}", model="scale", retries=0, connect_timeout_s=8)
    backend = RemoteBackend("scale", 1, remote, sleep=lambda _: None)
    backends.append(backend)
    backend.prepare()
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # each call opens a connection, so resolves the host
    release, stalled = stall_resolving(monkeypatch, "localhost")
    try:
        closer = threading.Timer(0.3, backend.close)
        closer.start()
        error, took_s = raised_within(lambda: backend.run(backend.runners()[0], FEEDS, timeout_s=20))
        closer.join()
        assert stalled[0] == 1  # (it was waiting on the lookup)
        assert isinstance(error, inprocserve.ServerClosedError), error
        assert took_s < 3.0
    finally:
        release.set()
