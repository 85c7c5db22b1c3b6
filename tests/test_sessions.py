"""Providers, thread budget, error translation: the onnxruntime-facing rules.

The GPU path cannot run on these machines (no GPU): provider construction is a pure function of the
configuration and of whether CUDA is usable, and is tested here with that flag given both ways.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import InferenceError, InvalidInputError, ModelConfig, ModelLoadError, PoolConfig, _ort_backend
from inprocserve._ort_backend import onnxruntime_error_types, session_options
from inprocserve._ort_rules import RUN_ERROR_MAP, resolve_providers, thread_budget, translate_run_error, usable_cores
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory, run_in_forked_child, version_status


def test_auto_uses_cuda_only_when_usable() -> None:
    config = PoolConfig()
    assert resolve_providers(config, device_id=0, cuda_usable=False) == ["CPUExecutionProvider"]
    assert resolve_providers(config, device_id=1, cuda_usable=True) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


def test_explicit_providers_are_honoured_with_the_device_id() -> None:
    config = PoolConfig(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    assert resolve_providers(config, device_id=3, cuda_usable=True) == [
        ("TensorrtExecutionProvider", {"device_id": 3}),
        ("CUDAExecutionProvider", {"device_id": 3}),
        "CPUExecutionProvider",
    ]


def test_provider_options_reach_each_session_with_its_device() -> None:
    config = PoolConfig(
        size=2,
        share_session=False,
        device_ids=(0, 1),
        provider_options={
            "CUDAExecutionProvider": {"enable_cuda_graph": 1, "arena_extend_strategy": "kSameAsRequested"}
        },
    )
    first = resolve_providers(config, device_id=config.device_ids[0], cuda_usable=True)
    second = resolve_providers(config, device_id=config.device_ids[1], cuda_usable=True)
    assert first[0] == (
        "CUDAExecutionProvider",
        {"enable_cuda_graph": "1", "arena_extend_strategy": "kSameAsRequested", "device_id": 0},
    )
    assert second[0][1]["device_id"] == 1
    assert first[1] == "CPUExecutionProvider"


def test_require_gpu_raises_instead_of_falling_back() -> None:
    with pytest.raises(ModelLoadError, match="require_gpu"):
        resolve_providers(PoolConfig(require_gpu=True), device_id=0, cuda_usable=False)
    assert resolve_providers(PoolConfig(require_gpu=True), device_id=0, cuda_usable=True)[0][0] == (
        "CUDAExecutionProvider"
    )


def test_thread_budget_never_oversubscribes_the_cores() -> None:
    cores = usable_cores()
    for size in (1, 2, 4, 64):
        threads = thread_budget(PoolConfig(size=size, share_session=False))
        assert threads >= 1
        assert size * threads <= max(cores, size)
    assert thread_budget(PoolConfig(intra_op_threads=3)) == 3


def test_session_options_turn_spinning_off_by_default() -> None:
    options = session_options(PoolConfig(size=1, intra_op_threads=2))
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(PoolConfig(allow_spinning=True))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.parametrize("spinning", [False, True])
def test_a_small_model_gets_one_thread_unless_threads_spin(
    spinning: bool, scale_repository: Path, make_server: ServerFactory
) -> None:
    """One thread for a model that runs in microseconds: without spinning, a second thread would cost a
    wake-up per operator. Spinning threads cost none, so with them every model gets the budget."""
    config = ModelConfig(pool=PoolConfig(allow_spinning=spinning))
    server = make_server(scale_repository, models={"scale": config})
    status = server.status()["models"]["scale"]["versions"]["1"]
    assert status["intra_op_threads"] == (thread_budget(config.pool) if spinning else 1)


def test_every_onnxruntime_error_type_is_mapped() -> None:
    assert set(onnxruntime_error_types()) <= set(RUN_ERROR_MAP), (
        "onnxruntime has exception types the error map does not know: "
        f"{sorted(set(onnxruntime_error_types()) - set(RUN_ERROR_MAP))}"
    )


@pytest.mark.parametrize("name", sorted(onnxruntime_error_types()))
def test_each_onnxruntime_error_becomes_an_inference_error(name: str) -> None:
    error_type = onnxruntime_error_types()[name]
    translated = translate_run_error(error_type("boom"), model="m", version=2)
    assert isinstance(translated, InferenceError)
    assert (translated.model, translated.version) == ("m", 2)
    assert "boom" in str(translated)
    if name == "InvalidArgument":
        assert isinstance(translated, InvalidInputError)


def test_two_onnxruntime_builds_installed_together_are_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The GPU wheel cannot be installed here; its metadata can, which is all the check reads (a dist-info
    # folder on sys.path, as pip would leave it beside the CPU build's).
    import logging
    import sys

    from inprocserve import _ort_backend
    from inprocserve._ort_rules import onnxruntime_builds

    assert [build.split()[0] for build in onnxruntime_builds()] == ["onnxruntime"]
    info = tmp_path / "onnxruntime_gpu-1.20.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.20.1\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert onnxruntime_builds()[1] == "onnxruntime-gpu 1.20.1"
    monkeypatch.setattr(_ort_backend, "_cuda_usable", None)  # ask again, as a new process would
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        assert _ort_backend._probe_cuda(tmp_path / "unused.onnx") is False  # this onnxruntime has no CUDA
    assert "and onnxruntime-gpu 1.20.1 are installed together" in caplog.text
    assert "keep one" in caplog.text


def test_the_rows_one_thread_runs_in_time_follow_the_line_through_two_runs() -> None:
    from inprocserve._ort_backend import AUTO_THREADS_SERIAL_BELOW_S, one_thread_rows

    def cost(rows: int) -> float:  # mlp-small on a 2-core host, one thread: 78 µs a row alone, 64 rows 1.25 ms
        return 0.000078 + (rows - 1) * (0.00125 - 0.000078) / 63

    rows = one_thread_rows(0.000078, 0.00125, 64)
    assert cost(rows) <= AUTO_THREADS_SERIAL_BELOW_S < cost(rows + 1)
    assert rows == 50
    assert one_thread_rows(AUTO_THREADS_SERIAL_BELOW_S, 0.1, 64) == 0  # one row alone takes too long
    assert one_thread_rows(0.0001, 0.00005, 64) == 63  # (noise: more rows read quicker) every run short of 64
    assert one_thread_rows(0.0001, 0.0002, 1) == 0


LONG_BATCHES = ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4096, max_request_rows=4096))


@pytest.fixture
def wide_repository(tmp_path: Path) -> Path:
    """A model whose run costs by its rows: tens of µs for one, tens of ms for 4,096 on one thread."""
    repository = tmp_path / "models"
    save_model(build_mlp_model((256, 512, 256, 10), seed=1), repository, "wide", 1)
    return repository


@pytest.fixture
def short_runs_on_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The wide model takes the budget, and a one-thread session for its short runs: the line between one and
    several threads moved to 2 ms, which its 4,096-row batch takes well over on one thread on any host, and
    one row well under (the rule under test, not this host's speed). Two usable cores, whatever this host has:
    with one (a CI runner pinned or quota'd to one CPU) the budget is one thread, nothing is timed, no version
    gets a one-thread session, and these tests were skipped there."""
    monkeypatch.setattr("inprocserve._ort_rules.usable_cores", lambda: 2)
    monkeypatch.setattr(_ort_backend, "AUTO_THREADS_SERIAL_BELOW_S", 0.002)


def test_a_version_given_several_threads_runs_its_short_runs_on_a_one_thread_session(
    wide_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    short_runs_on_one_thread: None,
) -> None:
    """Without spinning, each parallel operator of a short run waits for the pool's threads to wake, which
    costs as much as the work split: a version whose largest batch needs more than one thread runs the
    short ones (a lone request's row) on a session of one thread, and its long ones on the budget."""
    server = make_server(wide_repository, models={"wide": LONG_BATCHES})
    status = version_status(server, "wide")
    short = status["backend_status"]["one_thread_up_to_rows"]
    assert status["intra_op_threads"] == thread_budget(PoolConfig())
    assert short is not None and 1 <= short < 4096, status["backend_status"]

    backend = server._registry.routes["wide"].versions[1].backend
    one_thread = backend._one_thread
    ran: list[int] = []

    class Counted:
        """The one-thread session's binding, counting the rows of each run it makes."""

        def run(self, names: Any, feeds: Any, options: Any) -> Any:
            ran.append(len(feeds["x"]))
            return one_thread._sess.run(names, feeds, options)

    monkeypatch.setattr(backend, "_one_thread", type("Session", (), {"_sess": Counted()})())
    rows = np.random.default_rng(0).standard_normal((short + 1, 256)).astype(np.float32)
    lone = server.predict("wide", rows[:1])["y"]
    whole = server.predict("wide", rows)["y"]
    assert ran == [1]  # the lone row on one thread; short + 1 rows on the budget's session
    np.testing.assert_allclose(lone, whole[:1], rtol=1e-5, atol=1e-6)
    server.close()
    assert backend._one_thread is None


@pytest.mark.parametrize(
    "pool", [PoolConfig(intra_op_threads=2), PoolConfig(allow_spinning=True)], ids=["threads set", "spinning"]
)
def test_no_one_thread_session_where_threads_are_configured_or_spin(
    pool: PoolConfig,
    wide_repository: Path,
    make_server: ServerFactory,
    short_runs_on_one_thread: None,
) -> None:
    config = ModelConfig(batching=LONG_BATCHES.batching, pool=pool)
    server = make_server(wide_repository, models={"wide": config})
    assert version_status(server, "wide")["backend_status"]["one_thread_up_to_rows"] is None


def test_no_one_thread_session_for_a_version_too_large_to_hold_twice(
    wide_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    short_runs_on_one_thread: None,
) -> None:
    monkeypatch.setattr(_ort_backend, "ONE_THREAD_SESSION_MAX_BYTES", 1024)
    server = make_server(wide_repository, models={"wide": LONG_BATCHES})
    status = version_status(server, "wide")
    assert status["intra_op_threads"] == thread_budget(PoolConfig())
    assert status["backend_status"]["one_thread_up_to_rows"] is None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_worker_builds_its_own_one_thread_session(
    wide_repository: Path, make_server: ServerFactory, short_runs_on_one_thread: None
) -> None:
    """gunicorn --preload: the parent's sessions are never used in the child, the one-thread one included;
    the child builds its own, with the rows the parent chose, and answers short and long runs alike."""
    server = make_server(wide_repository, models={"wide": LONG_BATCHES})
    backend = server._registry.routes["wide"].versions[1].backend
    parents = backend._one_thread
    short = backend._one_thread_rows
    rows = np.random.default_rng(0).standard_normal((short + 1, 256)).astype(np.float32)
    expected = server.predict("wide", rows)["y"]

    def in_the_child() -> str:
        lone = server.predict("wide", rows[:1])["y"]
        whole = server.predict("wide", rows)["y"]
        own = backend._one_thread is not None and backend._one_thread is not parents
        same = np.allclose(lone, expected[:1], rtol=1e-5, atol=1e-6) and np.allclose(whole, expected, rtol=1e-5)
        status = server.status()["models"]["wide"]["versions"]["1"]["backend_status"]["one_thread_up_to_rows"]
        server.close()
        return f"{own} {same} {status}"

    assert run_in_forked_child(in_the_child, timeout_s=60).split() == ["True", "True", str(short)]


def test_a_version_whose_weights_lie_in_a_subfolder_counts_them_against_the_second_copy(
    tmp_path: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, short_runs_on_one_thread: None
) -> None:
    """The one-thread session holds the weights again, wherever the model keeps them (``data/weights.bin``)."""
    onnx = pytest.importorskip("onnx")
    repository = tmp_path / "models"
    folder = repository / "wide" / "1"
    (folder / "data").mkdir(parents=True)
    onnx.save_model(
        build_mlp_model((256, 512, 256, 10), seed=1),
        folder / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="data/weights.bin",
        size_threshold=0,
    )
    assert (folder / "model.onnx").stat().st_size < 64 * 1024 < (folder / "data" / "weights.bin").stat().st_size
    monkeypatch.setattr(_ort_backend, "ONE_THREAD_SESSION_MAX_BYTES", 64 * 1024)
    server = make_server(repository, models={"wide": LONG_BATCHES})
    status = version_status(server, "wide")
    assert status["intra_op_threads"] == thread_budget(PoolConfig())
    assert status["backend_status"]["one_thread_up_to_rows"] is None


def test_a_cached_optimized_graph_is_not_counted_as_weights_a_second_session_holds(
    wide_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, short_runs_on_one_thread: None
) -> None:
    """The cached graph is written beside the model at its first load: counted, a version that fits twice
    got a one-thread session on its first start and none on the next."""
    model_bytes = (wide_repository / "wide" / "1" / "model.onnx").stat().st_size
    monkeypatch.setattr(_ort_backend, "ONE_THREAD_SESSION_MAX_BYTES", model_bytes * 3 // 2)
    cached = ModelConfig(batching=LONG_BATCHES.batching, pool=PoolConfig(optimized_model_cache=True))
    for _start in range(2):
        server = make_server(wide_repository, models={"wide": cached})
        assert version_status(server, "wide")["backend_status"]["one_thread_up_to_rows"] is not None
        server.close()
    assert list((wide_repository / "wide" / "1").glob("*.optimized-*"))  # (the second start loaded it)


def test_no_one_thread_session_where_rows_differ_beyond_their_count(
    tmp_path: Path, make_server: ServerFactory, short_runs_on_one_thread: None
) -> None:
    """A sequence model's row of 512 steps is no short run, and the probe's made-up rows had one step each:
    a version whose inputs have a dynamic axis besides the rows keeps one session (the budget's)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((256, 512)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.standard_normal((512, 256)).astype(np.float32), "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("MatMul", ["r", "w2"], ["s"]),
        helper.make_node("ReduceMean", ["s"], ["y"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "steps",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "steps", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 256])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, tmp_path / "models", "steps", 1)
    server = make_server(tmp_path / "models", models={"steps": LONG_BATCHES})
    status = version_status(server, "steps")
    assert status["intra_op_threads"] == thread_budget(PoolConfig())  # (the largest batch needs the budget)
    assert status["backend_status"]["one_thread_up_to_rows"] is None
    assert server.predict("steps", np.ones((1, 512, 256), np.float32))["y"].shape == (1, 256)
