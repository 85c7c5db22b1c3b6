"""Pool options: one shared session, arena settings, the memory pattern, the optimized-graph cache."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from inprocserve import ConfigurationError, InvalidInputError, ModelConfig, PoolConfig
from inprocserve._config import load_model_config
from inprocserve._ort_backend import OnnxruntimeBackend
from inprocserve._ort_rules import thread_budget, usable_cores
from inprocserve.testing import build_add_model, build_gather_model, build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, past_the_tick, run_threads, version_status

CPU = "CPUExecutionProvider"


def test_a_shared_session_serves_concurrent_batches(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(build_mlp_model((16, 32, 4), seed=1), repository, "mlp", 1)
    config = ModelConfig(pool=PoolConfig(size=3))  # on the CPU the default shares one session
    server = make_server(repository, config=config)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = [np.random.default_rng(i).standard_normal((1, 16)).astype(np.float32) for i in range(24)]

    def call(index: int) -> None:
        for _ in range(30):
            got = server.predict("mlp", inputs[index])["y"]
            np.testing.assert_allclose(got, reference.run(None, {"x": inputs[index]})[0], rtol=1e-5, atol=1e-6)

    assert run_threads(24, call) == []
    assert version_status(server, "mlp")["pool_size"] == 3
    assert version_status(server, "mlp")["shared_session"] is True
    separate = make_server(repository, config=ModelConfig(pool=PoolConfig(size=2, share_session=False)))
    assert version_status(separate, "mlp")["shared_session"] is False
    # the thread budget is not divided when the pool shares one session
    assert thread_budget(PoolConfig(size=4)) == usable_cores()
    assert thread_budget(PoolConfig(size=4, share_session=False)) == max(1, usable_cores() // 4)


def test_arena_settings_load_and_serve(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_mlp_model((16, 32, 4)), repository, "mlp", 1)
    for pool in (PoolConfig(memory_arena=False), PoolConfig(arena_shrinkage=True)):
        server = make_server(repository, config=ModelConfig(pool=pool))
        assert server.predict("mlp", np.ones((100, 16), np.float32))["y"].shape == (100, 4)
        server.close()


def cached_graph_served(
    repository: Path, make_server: ServerFactory
) -> tuple[Path, ModelConfig, np.ndarray, list[Path]]:
    """A model served once with the optimized-graph cache on, then closed: its path, that config, its answer
    to two rows of ones, and the cached graphs written beside it."""
    path = save_model(build_mlp_model((16, 32, 4), seed=2), repository, "mlp", 1)
    past_the_tick(path)
    config = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
    first = make_server(repository, config=config)
    expected = first.predict("mlp", np.ones((2, 16), np.float32))["y"]
    first.close()
    return path, config, expected, [p for p in path.parent.iterdir() if p.name.startswith("model.optimized-")]


def test_the_optimized_graph_is_cached_and_reused(repository: Path, make_server: ServerFactory) -> None:
    path, config, expected, cached = cached_graph_served(repository, make_server)
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    second = make_server(repository, config=config)  # loads the cached graph, does not rewrite it
    np.testing.assert_allclose(second.predict("mlp", np.ones((2, 16), np.float32))["y"], expected, rtol=1e-6)
    assert cached[0].stat().st_mtime_ns == written
    second.close()
    time.sleep(0.01)
    save_model(build_mlp_model((16, 32, 4), seed=3), repository, "mlp", 1)  # a newer model.onnx
    os.utime(path)
    past_the_tick(path)
    third = make_server(repository, config=config)
    assert not np.allclose(third.predict("mlp", np.ones((2, 16), np.float32))["y"], expected)
    (rebuilt,) = [p for p in path.parent.iterdir() if p.name.startswith("model.optimized-")]
    assert rebuilt != cached[0]  # re-optimized from the new model; the old graph is deleted


def test_a_release_copied_with_its_old_modification_time_is_not_served_from_the_cache(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    # cp -p, rsync -a and tar keep a file's modification time: older than the cached graph of the last release.
    path = save_model(build_mlp_model((16, 32, 4), seed=2), repository, "mlp", 1)
    release = save_model(build_mlp_model((16, 32, 4), seed=3), tmp_path, "mlp", 1)
    os.utime(release, ns=(10**18, 10**18))  # made long ago
    config = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
    make_server(repository, config=config).close()  # caches the graph of seed 2
    expected = ort.InferenceSession(str(release), providers=["CPUExecutionProvider"]).run(
        None, {"x": np.ones((2, 16), np.float32)}
    )[0]
    shutil.copy2(release, path)  # the new release, with its old modification time
    served = make_server(repository, config=config).predict("mlp", np.ones((2, 16), np.float32))["y"]
    np.testing.assert_allclose(served, expected, rtol=1e-5)


def test_a_model_rewritten_in_place_with_its_size_and_modification_time_is_not_served_from_the_cache(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """cp -p over the file keeps its inode, and a model of the same size its size: only the ctime tells."""
    path = save_model(build_scale_model(2.0), repository, "scale", 1)
    config = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
    make_server(repository, config=config).close()  # caches the graph of the factor 2
    before = path.stat()
    release = save_model(build_scale_model(5.0), tmp_path, "scale", 1)
    assert release.stat().st_size == before.st_size
    time.sleep(0.01)  # (a coarse ctime clock)
    path.write_bytes(release.read_bytes())  # in place: the same inode
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert (path.stat().st_ino, path.stat().st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    served = make_server(repository, config=config).predict("scale", np.ones((1, 4), np.float32))["y"]
    assert served.tolist() == [[5.0] * 4]  # the old graph answered 2.0


def test_a_cached_graph_that_does_not_load_is_rebuilt_not_a_failed_version(
    repository: Path, make_server: ServerFactory
) -> None:
    path = save_model(build_mlp_model((16, 32, 4), seed=2), repository, "mlp", 1)
    past_the_tick(path)
    config = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
    make_server(repository, config=config).close()
    (cached,) = [p for p in path.parent.iterdir() if p.name.startswith("model.optimized-")]
    whole = cached.stat().st_size
    cached.write_bytes(cached.read_bytes()[: whole // 2])  # half a graph (a crash, a full disk)
    server = make_server(repository, config=config)
    assert server.status()["models"]["mlp"]["versions"]["1"]["state"] == "ready"
    assert server.predict("mlp", np.ones((2, 16), np.float32))["y"].shape == (2, 4)
    (rebuilt,) = [p for p in path.parent.iterdir() if p.name.startswith("model.optimized-")]
    assert rebuilt.stat().st_size == whole  # written again, whole


@pytest.mark.filterwarnings("ignore::UserWarning")  # onnxruntime warns as it falls back to the CPU
def test_require_gpu_refuses_a_session_onnxruntime_built_on_the_cpu(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The one mock here stands for what this machine lacks, a GPU: the probe says CUDA works. onnxruntime
    # then builds the session on the CPU (as it does when a GPU session fails to build: out of memory, a
    # device that does not exist), and require_gpu must make that a failed load, not a silent CPU version.
    from inprocserve import _ort_backend

    monkeypatch.setattr(_ort_backend, "_cuda_listed", lambda: True)
    monkeypatch.setattr(_ort_backend, "_probe_cuda", lambda path: True)
    save_model(build_mlp_model((16, 32, 4)), repository, "mlp", 1)
    server = make_server(repository, config=ModelConfig(pool=PoolConfig(require_gpu=True, size=2, device_ids=(0, 7))))
    version = server.status()["models"]["mlp"]["versions"]["1"]
    assert (
        version["state"] == "failed" and "require_gpu is set, but onnxruntime built the session on" in version["error"]
    )


def test_io_binding_leaves_string_tensors_to_the_plain_run(repository: Path, make_server: ServerFactory) -> None:
    from onnx import TensorProto, helper

    from inprocserve.testing import _model

    identity = _model(
        [helper.make_node("Identity", ["x"], ["y"])],
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 2])],
    )
    save_model(identity, repository, "text", 1)
    server = make_server(repository, config=ModelConfig(pool=PoolConfig(io_binding=True)))
    answer = server.predict("text", np.array([["a", "b"]], dtype=object))["y"]
    assert answer.tolist() == [["a", "b"]]


def test_io_binding_path_gives_the_same_answers(repository: Path, make_server: ServerFactory) -> None:
    """I/O binding is off by default (test below); asked for here, it runs with the CPU provider."""
    path = save_model(build_mlp_model((16, 32, 4), seed=4), repository, "mlp", 1)
    server = make_server(repository, config=ModelConfig(pool=PoolConfig(io_binding=True)))
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    np.testing.assert_allclose(server.predict("mlp", x)["y"], reference.run(None, {"x": x})[0], rtol=1e-6)
    futures = [server.submit("mlp", x[i : i + 1]) for i in range(5)]  # merged batches too
    for i, future in enumerate(futures):
        np.testing.assert_allclose(
            future.result(timeout=10)["y"], reference.run(None, {"x": x[i : i + 1]})[0], rtol=1e-6
        )
    status = version_status(server, "mlp")
    assert status["io_binding"] is True
    assert version_status(make_server(repository), "mlp")["io_binding"] is False  # default on the CPU


def test_io_binding_refuses_an_index_out_of_range_as_the_clients_error(
    repository: Path, make_server: ServerFactory
) -> None:
    """onnxruntime's ``run_with_iobinding`` raises a bare ``RuntimeError("Error in execution: ...")`` that drops
    the status code: an index past the table (its INVALID_ARGUMENT) was an InferenceError, a 500 counted against
    the server, where the plain run's was the client's InvalidInputError (a 400)."""
    save_model(build_gather_model(table_rows=10), repository, "gather", 1)
    server = make_server(repository, config=ModelConfig(pool=PoolConfig(io_binding=True)))
    with pytest.raises(InvalidInputError, match=r"model 'gather' version 1 failed to run: .*out of data bounds"):
        server.predict("gather", np.array([11]))
    np.testing.assert_array_equal(server.predict("gather", np.array([2]))["rows"], [[8, 9, 10, 11]])


def test_io_binding_is_off_by_default_on_a_gpu_too(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was on by default for GPU sessions. Measured on an H200 (onnxruntime-gpu 1.31.1), it was slower at
    every size: one row of mlp-large 162 µs a request against 92 µs for a plain run, 1,024 rows 3.3 against
    2.1 ms, 1,024 rows of 16 KiB in and out 10.0 against 6.9 ms (benchmarks/results/gpu_check.md; each input
    and output an OrtValue allocated on the device for each run). Off unless asked for. The GPU is mocked
    (the sessions report CUDA first): this machine has none."""
    monkeypatch.setattr(ort.InferenceSession, "get_providers", lambda self: ["CUDAExecutionProvider", CPU])
    save_model(build_mlp_model(), repository, "mlp", 1)
    status = version_status(make_server(repository), "mlp")
    assert status["providers"][0] == "CUDAExecutionProvider", status
    assert status["io_binding"] is False, status


def test_io_binding_answers_each_strided_input_with_its_own_values(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Inputs that are views with a stride (columns of one table) are bound as contiguous copies, which must
    live until the run ends: onnxruntime before 1.30 (the project supports 1.17.3 on) binds an input without
    keeping it, as done here, and input ``a`` was answered with input ``c``'s values."""
    from onnx import TensorProto, helper

    from inprocserve.testing import _model

    def bind_without_keeping(self: ort.IOBinding, name: str, ortvalue: ort.OrtValue) -> None:
        self._iobinding.bind_ortvalue_input(name, ortvalue._ortvalue)  # onnxruntime 1.17.3 to 1.29's body

    monkeypatch.setattr(ort.IOBinding, "bind_ortvalue_input", bind_without_keeping)
    names = ["a", "b", "c"]
    identity = _model(
        [helper.make_node("Identity", [name], [f"{name}_out"]) for name in names],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 4]) for name in names],
        [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, ["batch", 4]) for name in names],
    )
    save_model(identity, repository, "three", 1)
    server = make_server(repository, config=ModelConfig(pool=PoolConfig(io_binding=True)))
    table = np.arange(48, dtype=np.float32).reshape(2, 24)
    inputs = {name: table[:, index::3][:, :4] for index, name in enumerate(names)}  # every third column
    for _ in range(20):
        answer = server.predict("three", inputs)
        for name in names:
            np.testing.assert_array_equal(answer[f"{name}_out"], inputs[name])


def test_shared_weights_serve_a_model_with_external_data(tmp_path: Path, make_server: ServerFactory) -> None:
    import onnx

    model = build_mlp_model((64, 128, 4), seed=6)
    folder = tmp_path / "models" / "mlp" / "1"
    folder.mkdir(parents=True)
    onnx.save_model(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (folder / "weights.bin").stat().st_size > 30_000
    reference = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    server = make_server(tmp_path / "models", config=ModelConfig(pool=PoolConfig(shared_weights=True)))
    x = np.random.default_rng(1).standard_normal((3, 64)).astype(np.float32)
    np.testing.assert_allclose(server.predict("mlp", x)["y"], reference.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def cached_graphs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("model.optimized-"))


def test_a_graph_built_while_the_model_file_changed_is_not_kept(
    repository: Path, make_server: ServerFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deploy replaces model.onnx while this process optimizes the old one: that graph is the old model's
    # and must not be saved under the new files' name.
    from inprocserve import _ort_backend

    path = save_model(build_mlp_model((16, 32, 4), seed=2), repository, "mlp", 1)
    release = save_model(build_mlp_model((16, 32, 4), seed=3), tmp_path, "mlp", 1)
    real = _ort_backend._ort()

    class DeployDuringBuild:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def InferenceSession(self, *args: object, **kwargs: object) -> object:
            session = real.InferenceSession(*args, **kwargs)
            if not deployed:
                deployed.append(shutil.copy2(release, path))  # lands before the graph is moved into place
            return session

    deployed: list[object] = []
    config = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
    monkeypatch.setattr(_ort_backend, "_ort", DeployDuringBuild)
    make_server(repository, config=config).close()
    assert deployed and not [name for name in cached_graphs(path.parent) if name.endswith(".partial")]
    monkeypatch.undo()
    x = np.ones((2, 16), np.float32)
    expected = ort.InferenceSession(str(release), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    served = make_server(repository, config=config).predict("mlp", x)["y"]  # from the cache, if one was kept
    np.testing.assert_allclose(served, expected, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")  # onnxruntime warns as it falls back to the CPU
def test_a_graph_onnxruntime_built_on_the_cpu_is_not_kept_for_the_gpu(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The mock stands for the GPU this machine lacks (see the require_gpu test above).
    from inprocserve import _ort_backend

    monkeypatch.setattr(_ort_backend, "_cuda_listed", lambda: True)
    monkeypatch.setattr(_ort_backend, "_probe_cuda", lambda path: True)
    path = save_model(build_mlp_model((16, 32, 4)), repository, "mlp", 1)
    pool = PoolConfig(optimized_model_cache=True, size=2, device_ids=(0, 7))
    make_server(repository, config=ModelConfig(pool=pool)).close()
    assert cached_graphs(path.parent) == []


def test_hosts_with_other_cpus_sharing_a_folder_keep_their_own_graphs(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inprocserve import _ort_backend

    path = save_model(build_mlp_model((16, 32, 4)), repository, "mlp", 1)
    past_the_tick(path)
    config = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
    for cpu in ("x86_64 avx2 fma", "x86_64 avx512f avx2 fma", "x86_64 avx2 fma"):
        monkeypatch.setattr(_ort_backend, "cpu_instruction_sets", lambda cpu=cpu: cpu)
        make_server(repository, config=config).close()
    assert len(cached_graphs(path.parent)) == 2  # one per CPU; the first host's graph was reused, not deleted


def test_partial_graphs_left_by_dead_processes_are_deleted(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(build_mlp_model((16, 32, 4)), repository, "mlp", 1)
    old = path.with_name("model.optimized-x.onnx.123-456.partial")
    fresh = path.with_name("model.optimized-y.onnx.789-1.partial")  # another process may be writing it now
    for partial in (old, fresh):
        partial.write_bytes(b"half a graph")
    os.utime(old, (time.time() - 7200,) * 2)
    make_server(repository, config=ModelConfig(pool=PoolConfig(optimized_model_cache=True))).close()
    assert not old.exists() and fresh.exists()


# -- memory pattern -------------------------------------------------------------------------------------


def memory_pattern_of(path: Path, pool: PoolConfig) -> bool:
    """Whether the sessions the backend builds for ``path`` plan allocations per input shape, as onnxruntime
    reads its options back."""
    backend = OnnxruntimeBackend(path, pool, model=path.parent.parent.name, version=1)
    try:
        patterns = {session.get_session_options().enable_mem_pattern for session in backend.runners()}
        assert len(patterns) == 1
        return patterns.pop()
    finally:
        backend.close()


@pytest.mark.parametrize("share_session", [None, False])
def test_a_model_with_a_dynamic_sequence_axis_keeps_no_plan_per_length(
    repository: Path, share_session: bool | None
) -> None:
    # onnxruntime keeps one memory plan per distinct input shape for a session's life: lengths that clients
    # pick (2,000 of them grew a worker by 2.1 MB, 8,000 by 6.3 MB) would grow it for good
    text = save_model(build_add_model(sequence=True), repository, "text", 1)
    table = save_model(build_mlp_model((16, 32, 4)), repository, "table", 1)
    pool = PoolConfig(size=2, share_session=share_session)
    assert memory_pattern_of(text, pool) is False
    assert memory_pattern_of(table, pool) is True  # the batch axis alone: at most max_batch_size plans


def test_the_memory_pattern_setting_overrides_the_inputs(repository: Path) -> None:
    text = save_model(build_add_model(sequence=True), repository, "text", 1)
    table = save_model(build_mlp_model((16, 32, 4)), repository, "table", 1)
    assert memory_pattern_of(text, PoolConfig(memory_pattern=True)) is True
    assert memory_pattern_of(table, PoolConfig(memory_pattern=False)) is False


def test_memory_pattern_in_config_toml(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_add_model(sequence=True), repository, "text", 1)
    config = repository / "text" / "config.toml"
    for text, expected in (("false", False), ("true", True), ('"auto"', "auto")):
        config.write_text(f"[pool]\nmemory_pattern = {text}\n")
        assert load_model_config(config).pool.memory_pattern == expected
    with pytest.raises(ConfigurationError, match=r'pool\.memory_pattern must be true, false or "auto"'):
        PoolConfig(memory_pattern="off")  # type: ignore[arg-type]
    config.write_text('[pool]\nmemory_pattern = "false"\n')
    (problem,) = make_server(repository).refresh()
    assert str(config) in problem and "pool.memory_pattern" in problem and "'false'" in problem


def test_a_model_with_an_input_of_any_rank_keeps_no_plan_per_shape(repository: Path) -> None:
    # an input the file declares without a shape takes whatever shape a client sends; onnxruntime keeps a plan
    # per shape for it as for any other tensor (4,000 new shapes of a 40-node model grew a session by 7.3 MB
    # with the pattern, 0.2 MB without); a sequence input is planned for no run, whatever the setting
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = save_model(model, repository, "any_rank", 1)
    assert memory_pattern_of(path, PoolConfig()) is False


def test_a_damaged_cached_graph_is_deleted_and_the_model_file_served(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # (a graph another build wrote, or overwritten on disk: the version must still load, from model.onnx, and
    # the bad graph go, or every start would try it first)
    _path, config, expected, (cached,) = cached_graph_served(repository, make_server)
    stat = cached.stat()
    # (a whole ONNX file that onnxruntime refuses: a file that does not parse is deleted before any build)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"])], "bad", [x], [y])
    bad = helper.make_model(graph).SerializeToString()
    cached.write_bytes(bad)
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # (as it was: only its content is bad)
    second = make_server(repository, config=config)
    np.testing.assert_allclose(second.predict("mlp", np.ones((2, 16), np.float32))["y"], expected, rtol=1e-6)
    assert f"the cached graph {cached.name} does not load, but model.onnx does; deleting the graph" in caplog.text
    assert not cached.exists() or cached.read_bytes() != bad  # (deleted; the next session may cache a good one)
