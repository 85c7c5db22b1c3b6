"""A remote version across its life in a process, against the scripted server of test_remote_retries: served
in a forked worker (gunicorn ``--preload``) whose remote stalls or was redeployed since the fork, closed with
calls in flight, and with scalar (0-d) inputs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, ModelConfig, RemoteModel, WarmupConfig
from inprocserve._remote import RemoteBackend

from . import test_remote_retries
from .conftest import ServerFactory, run_in_forked_child, wait_until
from .test_remote_retries import FEEDS, METADATA, Scripted, backend_for

# (no run at load: the scripted server counts every post; a remote version's rows are not checked at load)
QUIET = ModelConfig(warmup=WarmupConfig(enabled=False), batching=BatchingConfig(enabled=False))


# The scripted model server and the backends closed after each test, as test_remote_retries.py has them.
scripted = test_remote_retries.scripted
backends = test_remote_retries.backends


def call_in_thread(call: Callable[[], object]) -> tuple[threading.Thread, list[BaseException]]:
    """Start ``call`` on a thread of its own; the list gets what it raises."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=run)
    caller.start()
    return caller, errors


def load_remote(server: inprocserve.Server, scripted: Scripted, config: ModelConfig = QUIET, **options: Any) -> None:
    remote = RemoteModel(url=f"http://127.0.0.1:{scripted.server_port}", model="scale", **options)
    server.load("scale", remote=remote, config=config)


def outcome(call: Any) -> str:
    """What a call did, in words: its answer, or the type of what it raised and the start of the message."""
    try:
        return f"answered {call()}"
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc)[:300]}"


def test_a_forked_worker_serves_with_the_signature_it_was_forked_with_and_reads_no_metadata(
    make_server: ServerFactory, repository: Path, scripted: Scripted
) -> None:
    # gunicorn --preload: the version is loaded in the master, the worker forks. The worker needs new
    # connections, not the metadata again: a metadata read on its first request ran on the caller's thread,
    # outside its deadline, as a ModelLoadError; with GETs that hang, every request waited timeout_s for it.
    server = make_server(repository)
    load_remote(server, scripted, timeout_s=3)
    assert server.predict("scale", {"x": FEEDS["x"]})["y"].tolist() == (FEEDS["x"] * 2).tolist()
    scripted.hang_gets = True
    gets = scripted.gets

    def in_the_worker() -> str:
        answers = [
            outcome(lambda: server.predict("scale", {"x": FEEDS["x"]}, timeout_s=2)["y"][0, 0]) for _ in range(2)
        ]
        return "; ".join(answers)

    assert run_in_forked_child(in_the_worker) == "answered 2.0; answered 2.0"
    assert scripted.gets == gets  # the worker asked the server for nothing but inferences


def test_a_forked_worker_whose_remote_was_redeployed_with_other_inputs_gets_typed_errors(
    make_server: ServerFactory, repository: Path, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The remote renamed its input after the master loaded the version. A worker that re-read the metadata
    # swapped the backend's signature under the version's, which still validates requests: every request
    # died of a bare KeyError. Now the worker validates and sends what the master loaded, and the server's
    # own refusal comes back typed, as it does in the master.
    server = make_server(repository)
    load_remote(server, scripted)
    monkeypatch.setitem(METADATA, "inputs", [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}])

    def in_the_worker() -> str:
        sent_as_loaded = outcome(lambda: server.predict("scale", {"x": FEEDS["x"]}, timeout_s=5))
        sent_as_renamed = outcome(lambda: server.predict("scale", {"features": FEEDS["x"]}, timeout_s=5))
        return f"{sent_as_loaded}\n{sent_as_renamed}"

    loaded, renamed = run_in_forked_child(in_the_worker).split("\n")
    assert loaded.startswith("InvalidInputError: model 'scale' version 1: the remote server refused the inputs")
    assert "unexpected inputs ['x']; the model takes ['features']" in loaded  # the server's own words
    assert renamed.startswith("InvalidInputError: model 'scale' version 1: missing input(s) 'x'")
    assert outcome(lambda: server.predict("scale", {"x": FEEDS["x"]})).startswith("InvalidInputError")  # as here


def test_closing_the_backend_ends_calls_in_flight_as_closed_without_blaming_the_server(
    scripted: Scripted,
    backends: list[RemoteBackend],
) -> None:
    # Closing ends the calls in flight at once; they used to come back as the server's own timeout
    # ("no answer ... within its timeout_s of 10 s") and open the circuit.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, retry_after_send=True)
    scripted.script = ["hang"]
    caller, errors = call_in_thread(lambda: backend.run(backend.runners()[0], FEEDS))
    wait_until(lambda: scripted.posts == 1)
    backend.close()
    caller.join(timeout=20)
    assert not caller.is_alive(), "close() left the call in flight"
    (error,) = errors
    assert isinstance(error, inprocserve.ServerClosedError)
    assert "closed while this call was in flight" in str(error)
    status = backend.status()
    assert (status["circuit"], status["consecutive_failures"], status["failures"]) == ("closed", 0, 0)
    assert scripted.posts == 1  # not retried, though retries after sending are allowed


def test_server_close_with_a_remote_call_in_flight_tells_the_caller_it_closed(
    make_server: ServerFactory, repository: Path, scripted: Scripted
) -> None:
    server = make_server(repository)
    load_remote(server, scripted, retries=0, failure_threshold=1)
    scripted.script = ["hang"]
    caller, errors = call_in_thread(lambda: server.predict("scale", {"x": FEEDS["x"]}))
    wait_until(lambda: scripted.posts == 1)
    started = time.monotonic()
    server.close(timeout_s=0.5)  # a worker's graceful-shutdown budget, shorter than the call
    caller.join(timeout=20)
    assert not caller.is_alive() and time.monotonic() - started < 15
    (error,) = errors
    assert isinstance(error, inprocserve.ServerClosedError), repr(error)  # an HTTP plug-in's 503, not a 504


def test_a_remote_model_with_scalar_inputs_loads_and_answers(
    make_server: ServerFactory, repository: Path, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 0-d input has no rows to count: taking shape[0] of it failed the load's warm-up with an IndexError.
    monkeypatch.setitem(METADATA, "inputs", [{"name": "x", "datatype": "FP32", "shape": []}])
    monkeypatch.setitem(METADATA, "outputs", [{"name": "y", "datatype": "FP32", "shape": []}])
    server = make_server(repository)
    load_remote(server, scripted, config=ModelConfig())  # warmed up and batching enabled: the defaults
    answer = server.predict("scale", {"x": np.float32(3.0)}, timeout_s=10)
    assert answer["y"].shape == () and float(answer["y"]) == 6.0


def test_bytes_that_json_cannot_carry_are_refused_not_sent_changed(
    make_server: ServerFactory, repository: Path, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A server without the binary tensor extension (MLServer 1.7) gets JSON tensors, which carry a BYTES
    # element as text: an encoded image went with each byte that is not UTF-8 replaced by U+FFFD, and the
    # model answered for those other bytes as if for the image.
    monkeypatch.setitem(METADATA, "inputs", [{"name": "x", "datatype": "BYTES", "shape": [-1]}])
    monkeypatch.setitem(METADATA, "outputs", [{"name": "y", "datatype": "BYTES", "shape": [-1]}])
    server = make_server(repository)
    load_remote(server, scripted, binary_tensors=False)
    assert server.predict("scale", {"x": np.array([b"ab"], dtype=object)})["y"].tolist() == ["abab"]
    jpeg = b"\xff\xd8\xff\xe0\x00\x10JFIF"
    posts = scripted.posts
    with pytest.raises(inprocserve.InvalidInputError, match="input 'x': element #0 is bytes that are not UTF-8"):
        server.predict("scale", {"x": np.array([jpeg], dtype=object)})
    assert scripted.posts == posts  # nothing was sent


@pytest.mark.parametrize(
    ("x_shape", "y_shape", "x"),
    [([], [-1], np.array(3.0, np.float32)), ([2, 4], [-1, 2, 4], np.full((2, 4), 3.0, np.float32))],
)
def test_an_unbatchable_remote_models_output_rows_are_not_held_to_its_input_rows(
    scripted: Scripted,
    backends: list[RemoteBackend],
    monkeypatch: pytest.MonkeyPatch,
    x_shape: list[int],
    y_shape: list[int],
    x: np.ndarray,
) -> None:
    # A scalar in and a list of any length out (top-k with k as the input), or fixed-size inputs: each request
    # runs alone, and the first axis of an output has nothing to do with rows of a batch.
    monkeypatch.setitem(METADATA, "inputs", [{"name": "x", "datatype": "FP32", "shape": x_shape}])
    monkeypatch.setitem(METADATA, "outputs", [{"name": "y", "datatype": "FP32", "shape": y_shape}])
    backend = backend_for(backends, scripted)
    scripted.script = ["thrice"]
    (answer,) = backend.run(backend.runners()[0], {"x": x})
    np.testing.assert_array_equal(answer, np.stack([x * 2] * 3))


def test_closing_the_backend_ends_a_wait_before_a_retry_at_once(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # The call waits for the server's Retry-After (up to 1 s) when close() comes: it used to sleep it out, then
    # tell the caller that the backend "is closed", as if the call had never started.
    backend = backend_for(backends, scripted, sleep=None, retries=2)
    scripted.script = [(503, {"Retry-After": "1"})]
    caller, errors = call_in_thread(lambda: backend.run(backend.runners()[0], FEEDS))
    wait_until(lambda: backend.status()["retries"] == 1)  # answered 503: waiting before its retry
    closed_at = time.monotonic()
    backend.close()
    caller.join(timeout=20)
    assert not caller.is_alive()
    assert time.monotonic() - closed_at < 0.8  # not the second its wait had left (a loose bound: a busy host)
    (error,) = errors
    assert isinstance(error, inprocserve.ServerClosedError) and "closed while this call was in flight" in str(error)
    assert scripted.posts == 1 and backend.status()["failures"] == 0


def test_a_remote_whose_metadata_declares_huge_rows_fails_its_load_before_sending_any(
    make_server: ServerFactory, scripted: Scripted, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A typo in the server's metadata ([-1, 100000000] for [-1, 100]) made every worker's load send made-up
    # rows of 400 MB each (warm-up, run cost): 6.1 GiB and 24 s per worker; at 1e9 each was killed for memory.
    monkeypatch.setitem(METADATA, "inputs", [{"name": "x", "datatype": "FP32", "shape": [-1, 100_000_000]}])
    server = make_server()
    with pytest.raises(inprocserve.ModelLoadError) as caught:
        load_remote(server, scripted, ModelConfig())
    message = str(caught.value)
    assert "input 'x'" in message and "400000000 bytes" in message and "max_row_bytes = 16777216" in message
    assert scripted.posts == 0

    # rows that large on purpose: the limit is the version's to raise
    monkeypatch.setitem(METADATA, "inputs", [{"name": "x", "datatype": "FP32", "shape": [-1, 4_000_000]}])
    with pytest.raises(inprocserve.ModelLoadError, match="16000000 bytes"):
        load_remote(server, scripted, max_row_bytes=8_000_000)
    load_remote(server, scripted, max_row_bytes=16_000_000)
    assert "scale" in server.models and scripted.posts == 0
