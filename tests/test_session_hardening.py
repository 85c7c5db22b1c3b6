"""Sessions against what deployments do to their files: two models in one folder, weights in a subfolder,
weights rewritten in place, a disk too full for the optimized graph; and settings onnxruntime would take
without complaint but never honour (an arena shrunk without an arena, a misspelt provider)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inprocserve import ConfigurationError, ModelConfig, ModelLoadError, PoolConfig, _racy
from inprocserve._integrity import external_data_locations, file_sha256
from inprocserve._ort_backend import OnnxruntimeBackend, registered_providers
from inprocserve._ort_rules import check_provider_names
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, past_the_tick, run_python, version_status, within_one_tick

CACHE = ModelConfig(pool=PoolConfig(optimized_model_cache=True))
_THIS_CHECKOUT = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}


def save_with_weights_in(folder: Path, location: str, *, seed: int) -> Path:
    """y = x @ W.T, with W kept in ``location`` (relative to ``folder``) as ``onnx.save_model`` writes it.
    The optimizer folds the Transpose into a new weight, which a cached graph then holds itself: only the
    cache's key can tell that the file it came from changed."""
    weights = np.random.default_rng(seed).standard_normal((8, 16)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]), helper.make_node("MatMul", ["x", "wt"], ["y"])],
        "weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [numpy_helper.from_array(weights, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=location, size_threshold=0
    )
    return path


def answer_of(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]  # type: ignore[no-any-return]


def graphs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".optimized-" in p.name)


# -- the optimized-graph cache of two models in one folder -------------------------------------------------


def test_two_models_of_one_folder_each_get_their_own_cached_graph(tmp_path: Path, make_server: ServerFactory) -> None:
    onnx.save_model(build_scale_model(2.0), str(tmp_path / "double.onnx"))
    onnx.save_model(build_scale_model(3.0), str(tmp_path / "triple.onnx"))
    past_the_tick(tmp_path / "triple.onnx")
    x = np.ones((1, 4), np.float32)
    for _ in range(2):  # the first start writes the graphs, the second loads them
        server = make_server()
        server.load("double", path=tmp_path / "double.onnx", config=CACHE)
        server.load("triple", path=tmp_path / "triple.onnx", config=CACHE)
        assert server.predict("double", x)["y"].tolist() == [[2.0] * 4]
        assert server.predict("triple", x)["y"].tolist() == [[3.0] * 4]
        server.close()
    assert [name.split(".")[0] for name in graphs(tmp_path)] == ["double", "triple"]


def test_a_graph_named_as_earlier_releases_named_it_is_never_loaded_and_is_deleted(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # Earlier releases named every graph model.optimized-<onnxruntime>-<options>-<folder digest>.onnx, whatever
    # the model file: in a folder of several models that name was shared, so such a file must never be loaded
    # now, nor stay there for ever.
    onnx.save_model(build_scale_model(2.0), str(tmp_path / "double.onnx"))
    past_the_tick(tmp_path / "double.onnx")

    def serve() -> list[list[float]]:
        server = make_server()
        try:
            server.load("double", path=tmp_path / "double.onnx", config=CACHE)
            return server.predict("double", np.ones((1, 4), np.float32))["y"].tolist()  # type: ignore[no-any-return]
        finally:
            server.close()

    assert serve() == [[2.0] * 4]
    (graph,) = graphs(tmp_path)  # double.optimized-<onnxruntime>-<options>-<source>.onnx
    old = "model" + graph[len("double") :].rsplit("-", 1)[0] + "-0123456789ab.onnx"
    (tmp_path / graph).unlink()
    (tmp_path / old).write_bytes(build_scale_model(7.0).SerializeToString())  # the graph of another model
    assert serve() == [[2.0] * 4]
    assert graphs(tmp_path) == [graph]


# -- external data in a subfolder ---------------------------------------------------------------------------


def test_a_release_that_changes_only_weights_in_a_subfolder_is_served_after_a_restart_with_the_cache(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    path = save_with_weights_in(repository / "mlp" / "1", "data/weights.bin", seed=1)
    release = save_with_weights_in(tmp_path / "release", "data/weights.bin", seed=2)  # same model.onnx bytes
    x = np.ones((2, 16), np.float32)
    make_server(repository, config=CACHE).close()  # caches the graph of seed 1
    os.replace(release.parent / "data" / "weights.bin", path.parent / "data" / "weights.bin")  # deployed
    served = make_server(repository, config=CACHE).predict("mlp", x)["y"]
    np.testing.assert_allclose(served, answer_of(path, x), rtol=1e-5)


def test_refresh_reloads_a_version_whose_weights_in_a_subfolder_changed(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    path = save_with_weights_in(repository / "mlp" / "1", "data/weights.bin", seed=1)
    release = save_with_weights_in(tmp_path / "release", "data/weights.bin", seed=2)
    x = np.ones((2, 16), np.float32)
    server = make_server(repository)
    before = server.predict("mlp", x)["y"]
    assert server.refresh() == []  # nothing changed: nothing reloads
    os.replace(release.parent / "data" / "weights.bin", path.parent / "data" / "weights.bin")
    assert server.refresh() == []
    served = server.predict("mlp", x)["y"]
    assert not np.allclose(served, before)
    np.testing.assert_allclose(served, answer_of(path, x), rtol=1e-5)


# -- a file system of whole-second times --------------------------------------------------------------------


def test_a_model_copied_over_within_the_second_its_graph_was_cached_is_served_itself_after_a_restart(
    whole_second_folder: Path, make_server: ServerFactory
) -> None:
    # On a file system whose times tick in whole seconds, a model.onnx of the same size copied over in the
    # second its graph was cached keeps its inode, size and times, which key the graph: every later start
    # (a restart, each new worker) loaded the graph of the model it replaced, and served its answers.
    repository = whole_second_folder / "models"
    x = np.ones((1, 4), np.float32)

    def cache_then_copy_over() -> tuple[os.stat_result, os.stat_result]:
        shutil.rmtree(repository, ignore_errors=True)
        path = save_model(build_scale_model(2.0), repository, "m", 1)
        before = path.stat()
        make_server(repository, config=CACHE).close()
        path.write_bytes(build_scale_model(5.0).SerializeToString())  # (truncated and written: same inode)
        return before, path.stat()

    within_one_tick(cache_then_copy_over)
    with make_server(repository, config=CACHE) as restarted:
        assert restarted.predict("m", x)["y"].tolist() == [[5.0] * 4]
    # a start in a later tick than the copy caches the graph, which then answers for the copy
    model = repository / "m" / "1" / "model.onnx"
    probe = whole_second_folder / "probe"
    while (probe.write_bytes(b""), probe.stat().st_mtime_ns)[1] <= model.stat().st_ctime_ns:
        threading.Event().wait(0.05)  # (until the file system's clock is a tick past the copy)
    with make_server(repository, config=CACHE) as later:
        assert later.predict("m", x)["y"].tolist() == [[5.0] * 4]
    assert [name for name in graphs(model.parent) if name.endswith(".onnx")]
    with make_server(repository, config=CACHE) as cached:
        assert cached.predict("m", x)["y"].tolist() == [[5.0] * 4]


# -- partial graphs -----------------------------------------------------------------------------------------

_WORKER = """
import sys, inprocserve
from inprocserve import ModelConfig, PoolConfig
inprocserve.Server(sys.argv[1], config=ModelConfig(pool=PoolConfig(optimized_model_cache=True))).close()
"""


def test_a_partial_graph_left_by_a_process_that_died_is_deleted_once_an_hour_old(
    repository: Path, make_server: ServerFactory
) -> None:
    folder = save_model(build_scale_model(2.0), repository, "m", 1).parent
    left = folder / "model.optimized-1.0.0-0-0.onnx.4242-1.partial"
    recent = folder / "model.optimized-1.0.0-0-1.onnx.4243-1.partial"
    for partial in (left, recent):
        partial.write_bytes(b"half a graph")
    two_hours_ago = time.time() - 7200
    os.utime(left, (two_hours_ago, two_hours_ago))
    make_server(repository, config=CACHE).close()
    assert not left.exists()
    assert recent.exists()


def test_a_graph_being_written_by_another_worker_is_kept_however_old_its_time_looks(
    repository: Path, make_server: ServerFactory
) -> None:
    # A wall clock stepped forward (a VM resumed, NTP correcting a wrong boot time), or a file server whose
    # clock is behind, makes a partial graph being written look hours old: another worker's load deleted it
    # as left by a dead process, and the graph its writer built was never cached.
    model = save_model(build_mlp_model((256, 2048, 2048, 2048, 4)), repository, "m", 1)
    for _ in range(10):  # (a build that ended before the worker was stopped is tried again)
        if (caught := _stopped_while_building(model.parent)) is not None:
            break
    else:
        raise AssertionError("10 workers each finished building before they could be stopped")
    worker, partial = caught
    try:
        two_hours_ago = time.time() - 7200
        os.utime(partial, (two_hours_ago, two_hours_ago))
        make_server(repository, config=CACHE).close()  # another worker starts
        assert partial.exists()
    finally:
        worker.send_signal(signal.SIGCONT)
        assert worker.wait(timeout=60) == 0
    assert [name for name in graphs(model.parent) if name.endswith(".onnx")]


def _stopped_while_building(folder: Path) -> tuple[subprocess.Popen[bytes], Path] | None:
    """A worker process loading the repository, stopped (SIGSTOP) while its partial graph exists."""
    worker = subprocess.Popen([sys.executable, "-c", _WORKER, str(folder.parent.parent)], env=_THIS_CHECKOUT)
    partials: list[Path] = []
    while worker.poll() is None and not (partials := sorted(folder.glob("*.partial"))):
        threading.Event().wait(0.001)
    worker.send_signal(signal.SIGSTOP)
    if worker.poll() is None and partials and partials[0].exists():
        return worker, partials[0]
    worker.send_signal(signal.SIGCONT)
    assert worker.wait(timeout=60) == 0
    for graph in folder.glob("*.optimized-*.onnx"):  # (cached, the next worker would load it and write none)
        graph.unlink()
    return None


# -- a cache that cannot be written -------------------------------------------------------------------------

_FULL_DISK = """
import logging, resource, signal, sys, time
from pathlib import Path
import numpy as np, inprocserve
from inprocserve import ModelConfig, PoolConfig
from inprocserve.testing import build_mlp_model, save_model

logging.basicConfig(level=logging.WARNING, format="%(message)s")
root = Path(sys.argv[1])
model = save_model(build_mlp_model((64, 256, 4)), root, "mlp", 1)  # 70 KB
probe = root / "probe"  # (a load in the timestamp tick the model was written in caches no graph: none to fail)
while (probe.write_bytes(b""), probe.stat().st_mtime_ns)[1] <= model.stat().st_ctime_ns:
    time.sleep(0.001)
probe.unlink()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
# writes past 8 KB fail: a full disk (the hard limit kept: where the host set one, only root may raise it again)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
with inprocserve.Server(root, config=ModelConfig(pool=PoolConfig(optimized_model_cache=True))) as server:
    print(server.predict("mlp", np.ones((1, 64), np.float32))["y"].shape)
    print(sorted(p.name for p in (root / "mlp" / "1").iterdir()))
"""


def test_a_version_loads_without_the_cache_when_its_graph_cannot_be_written(tmp_path: Path) -> None:
    result = run_python(_FULL_DISK, str(tmp_path / "models"))
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["(1, 4)", "['model.onnx']"]  # served, and no partial graph left
    assert "without caching its optimized graph" in result.stderr


def unknown_operator_model() -> onnx.ModelProto:
    """A model onnxruntime refuses for its own reasons: its one node's operator exists nowhere."""
    graph = helper.make_graph(
        [helper.make_node("NoSuchOp", ["x"], ["y"], domain="com.example")],
        "broken",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    model.ir_version = 9
    return model


def test_a_model_that_fails_for_its_own_reasons_is_built_once_with_the_cache(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The retry without the cache is for a graph that could not be written; onnxruntime refuses this model
    # before writing anything, and building it again only doubled the failed load's time. (Raised from a
    # retry, the error would carry the first attempt's as its context.)
    onnx.save_model(unknown_operator_model(), str(tmp_path / "broken.onnx"))
    with (
        caplog.at_level(logging.WARNING, logger="inprocserve"),
        pytest.raises(ModelLoadError, match="NoSuchOp") as raised,
    ):
        make_server().load("broken", path=tmp_path / "broken.onnx", config=CACHE)
    assert raised.value.__cause__ is not None and raised.value.__cause__.__context__ is None
    assert "without caching" not in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]  # no partial graph left


def test_a_version_loads_without_the_cache_when_its_partial_graph_cannot_be_created(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # What a name too long for the file system, or a folder that refuses new files, does: here a folder
    # stands where this thread's partial graph would be created.
    onnx.save_model(build_scale_model(2.0), str(tmp_path / "scale.onnx"))
    backend = OnnxruntimeBackend(tmp_path / "scale.onnx", CACHE.pool, model="scale", version=1)
    planted = tmp_path / f"{backend.optimized_path().name}.{os.getpid()}-{threading.get_ident()}.partial"
    backend.close()
    planted.mkdir()
    server = make_server()
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.load("scale", path=tmp_path / "scale.onnx", config=CACHE)  # on this thread
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"].tolist() == [[2.0] * 4]
    assert "the optimized graph is not cached" in caplog.text
    assert graphs(tmp_path) == [planted.name]  # nothing cached, and the folder left alone


# -- settings onnxruntime would not honour ------------------------------------------------------------------


def test_arena_shrinkage_without_an_arena_is_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"pool\.arena_shrinkage.*pool\.memory_arena"):
        PoolConfig(memory_arena=False, arena_shrinkage=True)


def test_arena_shrinkage_without_an_arena_in_config_toml_names_the_file(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = repository / "scale" / "config.toml"
    config.write_text("[pool]\nmemory_arena = false\narena_shrinkage = true\n")
    (problem,) = make_server(repository).refresh()
    assert str(config) in problem and "pool.arena_shrinkage" in problem and "pool.memory_arena" in problem


def test_a_misspelt_provider_fails_the_version_and_names_the_provider_meant(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text(
        textwrap.dedent("""\
            [pool]
            providers = ["CUDAExecutionProvder", "CPUExecutionProvider"]
        """)
    )
    server = make_server(repository)
    version = server.status()["models"]["scale"]["versions"]["1"]
    assert version["state"] == "failed"
    assert "pool.providers names 'CUDAExecutionProvder'" in version["error"]
    assert "did you mean 'CUDAExecutionProvider'?" in version["error"]


def test_options_for_a_provider_onnxruntime_does_not_know_are_refused(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    onnx.save_model(build_scale_model(2.0), str(tmp_path / "scale.onnx"))
    pool = PoolConfig(provider_options={"CudaExecutionProvider": {"arena_extend_strategy": "kSameAsRequested"}})
    with pytest.raises(ModelLoadError, match=r"pool\.provider_options names 'CudaExecutionProvider'") as raised:
        make_server().load("scale", path=tmp_path / "scale.onnx", config=ModelConfig(pool=pool))
    assert isinstance(raised.value.__cause__, ConfigurationError)
    assert "CUDAExecutionProvider" in str(raised.value)


def test_known_providers_pass_the_check(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    pool = PoolConfig(providers=("CPUExecutionProvider",), provider_options={"CPUExecutionProvider": {}})
    server = make_server(repository, config=ModelConfig(pool=pool))
    assert version_status(server, "scale")["state"] == "ready"


def test_plugin_providers_the_application_registered_pass_the_check() -> None:
    # onnxruntime lists a registered plugin provider among its devices, never in get_all_providers():
    # NvTensorRTRTXExecutionProvider exists only as a plugin. No plugin library can be registered here, so the
    # names are those onnxruntime.get_ep_devices() gives once the application has registered one.
    plugin = "NvTensorRTRTXExecutionProvider"
    assert plugin not in ort.get_all_providers()
    pool = PoolConfig(providers=(plugin, "CPUExecutionProvider"), provider_options={plugin: {"device_id": "0"}})
    check_provider_names(pool, known=ort.get_all_providers(), registered=[plugin, "CPUExecutionProvider"])
    with pytest.raises(ConfigurationError, match="register_execution_provider_library"):  # not registered
        check_provider_names(pool, known=ort.get_all_providers(), registered=registered_providers())


def test_every_provider_onnxruntime_has_a_device_for_loads(repository: Path, make_server: ServerFactory) -> None:
    if not hasattr(ort, "get_ep_devices"):  # onnxruntime 1.17.3, the floor (make oldest)
        pytest.skip("this onnxruntime lists no execution-provider devices (get_ep_devices)")
    names = tuple(dict.fromkeys(device.ep_name for device in ort.get_ep_devices()))
    assert names and set(names) <= set(registered_providers())
    save_model(build_scale_model(2.0), repository, "scale", 1)
    pool = PoolConfig(providers=names, provider_options={name: {} for name in names})
    assert version_status(make_server(repository, config=ModelConfig(pool=pool)), "scale")["state"] == "ready"
    with pytest.raises(ConfigurationError, match=r"'NoSuchExecutionProvider'.*did you mean"):
        check_provider_names(
            PoolConfig(providers=("NoSuchExecutionProvider",)),
            known=ort.get_all_providers(),
            registered=registered_providers(),
        )


# -- long model file names ------------------------------------------------------------------------------------


def test_a_model_file_with_a_long_name_gets_its_graph_cached_on_the_first_start(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The graph is named after the model file, and its partial file adds ".<pid>-<thread>.partial": a stem of
    # 190 bytes pushed that past the 255-byte limit, so every start failed to write the graph and built twice.
    names = ["L" * 190 + ".onnx", "ü" * 95 + "a.onnx", "ü" * 95 + "b.onnx"]  # (2 bytes a character: 191)
    for factor, name in enumerate(names, start=2):
        onnx.save_model(build_scale_model(float(factor)), str(tmp_path / name))
    past_the_tick(tmp_path / names[-1])
    x = np.ones((1, 4), np.float32)
    for _ in range(2):  # the first start writes the graphs, the second loads them
        server = make_server()
        with caplog.at_level(logging.WARNING, logger="inprocserve"):
            for factor, name in enumerate(names, start=2):
                server.load(f"m{factor}", path=tmp_path / name, config=CACHE)
                assert server.predict(f"m{factor}", x)["y"].tolist() == [[float(factor)] * 4]
        server.close()
    assert "without caching" not in caplog.text
    cached = graphs(tmp_path)
    assert len(cached) == 3 and all(len(name.encode()) <= 255 for name in cached)
    assert not any(name.endswith(".partial") for name in cached)
    assert all(name.startswith(("LLLL", "üüüü")) for name in cached)


# -- a repository of many versions --------------------------------------------------------------------------


def test_a_poll_of_more_than_256_versions_walks_no_model_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refresh stamps every version at every poll, in the same order: a cache of the last 256 files walked
    # evicted each file just before the poll came back to it, and every poll walked every model file again
    # (a cached answer is the very tuple the first walk built; a new walk builds a new one). The files are
    # taken for a release copied long before (a file changed seconds ago is walked again until it settles).
    monkeypatch.setattr(_racy, "CHANGED_LONG_AGO_S", -60.0)
    files = [save_with_weights_in(tmp_path / str(version), "weights.bin", seed=0) for version in range(1, 301)]
    walked = [external_data_locations(path) for path in files]
    assert walked[0] == ("weights.bin",)
    again = [external_data_locations(path) for path in files]
    assert all(second is first for second, first in zip(again, walked, strict=True))
    digests = [file_sha256(path) for path in files]  # (checked again by every forked worker)
    again_digests = [file_sha256(path) for path in files]
    assert all(second is first for second, first in zip(again_digests, digests, strict=True))
