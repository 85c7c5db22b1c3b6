"""A closing server stops its shadow run in flight instead of waiting it out: ``close()`` returns at once, and
a process that exits with a server nobody closed (a web worker's) exits cleanly, where onnxruntime used to
abort it (SIGABRT) for a thread still inside a run."""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, VersionPolicy
from inprocserve._remote import RemoteBackend
from inprocserve._stop_signal import StopSignal, stop_with
from inprocserve.testing import build_scale_model, save_model

from . import test_remote_retries
from .conftest import ServerFactory, SessionHolder, count_batch_runs, run_python, wait_until
from .test_remote_retries import FEEDS, Scripted, backend_for

# The scripted model server and the backends closed after each test, as test_remote_retries.py has them.
scripted = test_remote_retries.scripted
backends = test_remote_retries.backends

WIDTH = 256
LONG_RUN_S = 12.0  # what the shadow run would take if nobody stopped it: more than close() ever waited (5 s)


def build_chain_model(layers: int = 400, width: int = WIDTH) -> onnx.ModelProto:
    """``y = x @ W @ W ... @ W`` (``layers`` MatMuls sharing one small weight): a run's cost grows with its
    rows, made of many short operators (onnxruntime stops a run between two), and the model loads fast."""
    rng = np.random.default_rng(0)
    weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x" if k == 0 else f"h{k - 1}", "w"], [f"h{k}"]) for k in range(layers)]
    nodes.append(helper.make_node("Identity", [f"h{layers - 1}"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "chain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def save_versions(repository: Path) -> None:
    """Version 1 answers at once; version 2, its shadow, runs long."""
    save_model(build_scale_model(1.0, features=WIDTH), repository, "chain", 1)
    save_model(build_chain_model(), repository, "chain", 2)


def shadowed() -> ModelConfig:
    return ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
        version_policy=VersionPolicy.all(),
        batching=inprocserve.BatchingConfig(max_request_rows=1 << 20),
    )


def long_request(server: inprocserve.Server, seconds: float) -> np.ndarray:
    """Inputs whose run on version 2 takes about ``seconds`` on this host (timed on a small run first)."""
    probe = np.ones((256, WIDTH), np.float32)
    server.predict("chain", probe, version=2)  # (warm)
    started = time.perf_counter()
    server.predict("chain", probe, version=2)
    elapsed = max(time.perf_counter() - started, 1e-4)
    rows = min(math.ceil(256 * seconds / elapsed), 1 << 20)
    return np.ones((rows, WIDTH), np.float32)


def start_long_shadow_run(server: inprocserve.Server) -> None:
    """Answer a request on version 1, and wait until its shadow copy runs on version 2."""
    assert server.predict("chain", long_request(server, LONG_RUN_S)).version == 1
    wait_until(lambda: server._shadow._running is not None, timeout_s=5)
    time.sleep(0.2)  # inside onnxruntime's run by now


# shadow_budget=1.0 stops no shadow run (documented for hosts with idle cores), and the queue takes a copy of
# any size: the copy of the long request is queued and run whole.
SERVER_ARGS: dict[str, Any] = {"shadow_budget": 1.0, "shadow_queue_bytes": 1 << 32}


def test_close_stops_the_shadow_run_in_flight_instead_of_waiting_it_out(
    repository: Path, make_server: ServerFactory
) -> None:
    save_versions(repository)
    comparisons: list[inprocserve.ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, **SERVER_ARGS)
    start_long_shadow_run(server)
    started = time.monotonic()
    server.close()
    assert time.monotonic() - started < 3.0
    assert not server._shadow._thread.is_alive()  # type: ignore[union-attr]
    # a stopped run is no comparison and no error of the shadow version: it simply did not finish
    assert comparisons == []
    shadow = server._shadow.status("chain").get("2", {})
    assert shadow.get("runs", 0) == 0 and shadow.get("errors", 0) == 0


_EXIT_WITH_SHADOW_IN_FLIGHT = """
import sys, time
from pathlib import Path
import inprocserve
from tests.test_shadow_close import SERVER_ARGS, save_versions, shadowed, start_long_shadow_run

repository = Path(sys.argv[1])
save_versions(repository)
server = inprocserve.Server(repository, config=shadowed(), **SERVER_ARGS)
start_long_shadow_run(server)
print("exiting with a shadow run in flight at", time.time(), flush=True)
"""


def test_a_process_that_exits_with_a_shadow_run_in_flight_exits_cleanly_and_promptly(tmp_path: Path) -> None:
    # A web worker's server: nothing closes it, it is cleaned up at interpreter exit.
    result = run_python(_EXIT_WITH_SHADOW_IN_FLIGHT, str(tmp_path), timeout_s=120)
    assert "terminate called" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    exited = time.time()
    assert "exiting with a shadow run in flight" in result.stdout
    # the run is stopped, not waited out (the 5 s wait for it is what let it outlast the exit)
    assert exited - float(result.stdout.split()[-1]) < 4.0


def plain_versions() -> ModelConfig:
    return ModelConfig(
        version_policy=VersionPolicy.all(), batching=inprocserve.BatchingConfig(max_request_rows=1 << 20)
    )


@pytest.mark.parametrize("timeout_s", [None, 600.0])
def test_a_caller_s_run_still_in_flight_when_close_gives_up_waiting_is_stopped(
    repository: Path, make_server: ServerFactory, timeout_s: float | None
) -> None:
    """close(timeout_s=...) stopped waiting for a long run (a hostile trip count's loop, a huge request), but
    the run went on holding its session; at exit onnxruntime aborted the process, or a worker thread kept it
    alive. The run is stopped at its next operator and its caller gets ServerClosedError."""
    save_versions(repository)
    server = make_server(repository, config=plain_versions())
    rows = long_request(server, LONG_RUN_S)
    got: list[BaseException] = []

    def call() -> None:
        try:
            server.predict("chain", rows, version=2, timeout_s=timeout_s)
        except BaseException as exc:
            got.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: version_in_flight(server) > 0, timeout_s=5)
    time.sleep(0.2)  # inside onnxruntime's run by now
    started = time.monotonic()
    server.close(timeout_s=0.5)
    caller.join(timeout=LONG_RUN_S)
    assert not caller.is_alive() and time.monotonic() - started < LONG_RUN_S / 2
    assert len(got) == 1 and isinstance(got[0], inprocserve.ServerClosedError), got
    assert "stopped serving (unloaded, replaced, or its server closed) while the run was in flight" in str(got[0])


def test_a_run_still_in_flight_when_an_unload_gives_up_waiting_is_stopped_and_no_shadow_error(
    repository: Path, make_server: ServerFactory
) -> None:
    """An unload (or a hot reload's retirement) that gives up waiting stops the version's runs too: a caller's
    run gets an error that says the version stopped serving (the server still serves), and a shadow copy
    cut off so is neither compared nor counted as an error of the shadow version (which fed its alert)."""
    save_versions(repository)
    comparisons: list[inprocserve.ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, **SERVER_ARGS)
    start_long_shadow_run(server)
    server.unload("chain", 2, timeout_s=0.5)
    wait_until(lambda: server._shadow._running is None, timeout_s=LONG_RUN_S / 2)
    assert comparisons == []
    shadow = server._shadow.status("chain").get("2", {})
    assert shadow.get("runs", 0) == 0 and shadow.get("errors", 0) == 0
    assert server.predict("chain", np.ones((1, WIDTH), np.float32)).version == 1  # still serving


def version_in_flight(server: inprocserve.Server) -> int:
    status = server.status()["models"].get("chain")
    return 0 if status is None else int(status["versions"]["2"]["in_flight"])


def counting_loop_body() -> onnx.GraphProto:
    """A Loop's body that adds one to a float per step: work a step at a time, whose count a client picks."""
    return helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "one"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, []),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, []),
        ],
        [numpy_helper.from_array(np.array(1.0, np.float32), "one")],
    )


def build_loop_model() -> onnx.ModelProto:
    """``y = x`` after a Loop of ``max(n)`` steps (``x`` float[batch, 4], ``n`` int64[batch, 1]): a generation
    length, a trip count a client chooses; the batch's run time grows with its largest value."""
    body = counting_loop_body()
    nodes = [
        helper.make_node("ReduceMax", ["n"], ["steps"], keepdims=0),
        helper.make_node("Loop", ["steps", "true", "zero"], ["total"], body=body),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "loop",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(True), "true"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_merged_batch_stopped_by_a_retirement_is_not_bisected(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every request of a merged batch that a retirement stopped gets its error at once: the batch was bisected
    as if one request's input had failed it, 2N-1 runs sent to a closed backend for nothing."""
    save_model(build_loop_model(), repository, "loop", 1)
    server = make_server(repository, config=ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    runs = count_batch_runs(monkeypatch)

    def request(steps: int) -> dict[str, np.ndarray]:
        return {"x": np.ones((1, 4), np.float32), "n": np.array([[steps]], np.int64)}

    blocker = server.submit("loop", request(1_000_000))  # (the session busy while the batch below queues)
    wait_until(lambda: runs == [1], timeout_s=5)
    batch = [server.submit("loop", request(steps)) for steps in (1, 2, 10**10, 3)]
    blocker.result(timeout=30)
    wait_until(lambda: len(runs) == 2, timeout_s=5)  # the four merged, in flight for hours
    assert runs == [1, 4]
    server.close(timeout_s=0.3)
    for future in batch:
        with pytest.raises(inprocserve.ServerClosedError):
            future.result(timeout=10)
    assert runs == [1, 4]


def build_loop_ignoring_model() -> onnx.ModelProto:
    """The loop model's inputs and output, without the loop: ``y = x``, ``n`` read and ignored."""
    nodes = [
        helper.make_node("Cast", ["n"], ["n_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["n_float", "zero"], ["nothing"]),
        helper.make_node("Add", ["x", "nothing"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "no-loop",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("n", TensorProto.INT64, ["batch", 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_single_long_shadow_run_is_stopped_when_an_unload_gives_up_waiting(
    repository: Path, make_server: ServerFactory
) -> None:
    """A shadow run without a time limit (shadow_budget=1.0) has run options of its own and no deadline alarm:
    an unload that gave up waiting left it running (a loop whose trip count a client chose: hours), then
    compared and counted it as a run of the version retired."""
    save_model(build_loop_ignoring_model(), repository, "loop", 1)
    save_model(build_loop_model(), repository, "loop", 2)
    comparisons: list[inprocserve.ShadowComparison] = []
    config = ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
        version_policy=VersionPolicy.all(),
        warmup=inprocserve.WarmupConfig(enabled=False),
    )
    server = make_server(repository, config=config, on_shadow=comparisons.append, **SERVER_ARGS)
    inputs = {"x": np.ones((1, 4), np.float32), "n": np.array([[10**10]], np.int64)}
    assert server.predict("loop", inputs).version == 1
    wait_until(lambda: server._shadow._running is not None, timeout_s=5)
    time.sleep(0.2)  # inside onnxruntime's run by now
    started = time.monotonic()
    server.unload("loop", 2, timeout_s=0.5)
    wait_until(lambda: server._shadow._running is None, timeout_s=3)
    assert time.monotonic() - started < 3.0
    assert comparisons == []
    shadow = server._shadow.status("loop").get("2", {})
    assert shadow.get("runs", 0) == 0 and shadow.get("errors", 0) == 0


_EXIT_AFTER_CLOSE_WITH_A_RUN_IN_FLIGHT = """
import sys, threading, time
from pathlib import Path
import inprocserve
from tests.test_shadow_close import LONG_RUN_S, long_request, plain_versions, save_versions

repository = Path(sys.argv[1])
save_versions(repository)
server = inprocserve.Server(repository, config=plain_versions())
rows = long_request(server, LONG_RUN_S)
threading.Thread(target=lambda: server.predict("chain", rows, version=2), daemon=True).start()
time.sleep(1.0)
server.close(timeout_s=0.5)
print("exiting after close at", time.time(), flush=True)
"""


def test_a_process_that_exits_after_close_gave_up_on_a_run_exits_cleanly(tmp_path: Path) -> None:
    result = run_python(_EXIT_AFTER_CLOSE_WITH_A_RUN_IN_FLIGHT, str(tmp_path), timeout_s=120)
    assert "terminate called" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    assert time.time() - float(result.stdout.split()[-1]) < 4.0


def shadowed_scale(repository: Path) -> ModelConfig:
    """Version 1 of ``scale`` answers, version 2 shadows it."""
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    return ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
        version_policy=VersionPolicy.all(),
    )


def test_a_shadow_thread_still_inside_a_run_leaves_the_sessions_to_the_process_end(
    repository: Path,
    hold_session: SessionHolder,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The at-exit cleanup closes no session while the shadow thread is still inside one (onnxruntime aborts
    # the process then), and says which run it abandoned. The shadow run is held in the backend, where the
    # stop signal cannot reach it (a backend that cannot stop a run early).
    from inprocserve import _shadow

    monkeypatch.setattr(_shadow, "STOP_WAIT_S", 0.1)
    server = make_server(repository, config=shadowed_scale(repository), shadow_budget=1.0)
    inputs = {"x": np.ones((1, 4), np.float32)}
    hold_session.mark(inputs).let_go()  # the caller's run goes on at once
    shadow_run = hold_session.mark(inputs, at_most_s=30)  # its copy's run on version 2 is held
    try:
        assert server.predict("scale", inputs).version == 1
        assert shadow_run.started.wait(10)
        with caplog.at_level(logging.WARNING, logger="inprocserve._shadow"):
            server._finalizer()  # what interpreter exit runs for a server nobody closed (see _reaper)
        versions = server._registry.loaded["scale"]
        assert [versions[1].state, versions[2].state] == ["ready", "ready"]
        assert "shadow version 2 of model 'scale' is still running the copy of request" in caplog.text
    finally:
        shadow_run.let_go()


def test_close_does_not_wait_for_an_on_shadow_callback_that_hangs_and_says_so(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An application's on_shadow that writes to a log sink that hangs: close() waited STOP_WAIT_S (5 s) for
    # it, every time, and said nothing. The callback touches no session: close() goes on at once, says so.
    # (No timed assert: STOP_WAIT_S outlasts the callback here, so a close() that waited for it finds it
    # returned and says nothing, where one that leaves it running says so.)
    monkeypatch.setattr("inprocserve._shadow.STOP_WAIT_S", 60.0)
    held, release = threading.Event(), threading.Event()

    def hold(_comparison: inprocserve.ShadowComparison) -> None:
        held.set()
        release.wait(20)

    server = make_server(repository, config=shadowed_scale(repository), on_shadow=hold, shadow_budget=1.0)
    server.predict("scale", np.ones((1, 4), np.float32))
    assert held.wait(10)
    try:
        with caplog.at_level(logging.WARNING, logger="inprocserve._shadow"):
            server.close()
        assert "the on_shadow callback has not returned" in caplog.text  # (said at once: before, after 5 s, nothing)
    finally:
        release.set()


def test_a_remote_shadow_call_ends_at_once_when_its_server_closes(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    # A shadow run on a remote version is an HTTP call: the close ends it as it ends an onnxruntime run,
    # without blaming the remote server.
    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30)
    scripted.script = ["hang"]
    signal = StopSignal()
    errors: list[BaseException] = []

    def shadow_call() -> None:
        with stop_with(signal):
            try:
                backend.run(backend.runners()[0], FEEDS)
            except BaseException as exc:
                errors.append(exc)

    caller = threading.Thread(target=shadow_call)
    caller.start()
    wait_until(lambda: scripted.posts == 1)
    signal.stop()
    caller.join(timeout=3)
    assert not caller.is_alive(), "the stop left the call in flight"
    (error,) = errors
    assert isinstance(error, inprocserve.ServerClosedError), repr(error)
    status = backend.status()
    assert (status["circuit"], status["consecutive_failures"], status["failures"]) == ("closed", 0, 0)


def test_a_remote_call_ended_by_its_version_s_retirement_says_so(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    """A remote version's call cut off by its backend's close (the version unloaded or replaced) said only
    that the server closed: a shadow copy cut off so was counted as the shadow version's error, which
    onnxruntime's runs stopped by a retirement no longer are."""
    from inprocserve._errors import VersionRetiredError

    backend = backend_for(backends, scripted, retries=0, failure_threshold=1, timeout_s=30)
    scripted.script = ["hang"]
    errors: list[BaseException] = []

    def call() -> None:
        try:
            backend.run(backend.runners()[0], FEEDS)
        except BaseException as exc:
            errors.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: scripted.posts == 1)
    backend.close()
    caller.join(timeout=5)
    assert not caller.is_alive(), "the close left the call in flight"
    (error,) = errors
    assert isinstance(error, VersionRetiredError), repr(error)
