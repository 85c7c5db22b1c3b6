"""Sessions against what deployments do to their files: two models in one folder, weights in a subfolder,
weights rewritten in place, a disk too full for the optimized graph; and settings onnxruntime would take
without complaint but never honour (an arena shrunk without an arena, a misspelt provider)."""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from inprocserve import ConfigurationError, ModelConfig, ModelLoadError, PoolConfig
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, run_python, version_status

CACHE = ModelConfig(pool=PoolConfig(optimized_model_cache=True))


def save_with_weights_in(folder: Path, location: str, *, seed: int) -> Path:
    """An MLP whose weights live in ``location`` (relative to ``folder``), as ``onnx.save_model`` writes it."""
    (folder / location).parent.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    onnx.save_model(
        build_mlp_model((16, 32, 4), seed=seed, softmax=False),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
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
