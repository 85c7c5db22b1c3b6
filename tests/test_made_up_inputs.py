"""The made-up requests of zeros that the library runs on its own (the thread probe at load, the quantize
comparison) reach a model whose dynamic inner axes need more than one step, as the warm-up's do.

A convolution of kernel 5 over a dynamic time axis fails on 1 step ("Invalid input shape: {1}"). Its warm-up
already tried longer axes; the thread probe did not (the model got every core, however short its run) and
``quantize`` refused to compare it at all.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import ModelConfig, PoolConfig
from inprocserve.__main__ import main
from inprocserve._ort_rules import usable_cores
from inprocserve.testing import save_model

from .conftest import ServerFactory

onnx = pytest.importorskip("onnx")


def build_time_convolution_model(kernel: int = 5) -> Any:
    """``x[batch, 4, time]`` through a convolution of 8 filters of ``kernel`` steps, the largest response of
    each over time: ``y[batch, 8]`` (an audio or sensor detector's shape)."""
    helper, tp = onnx.helper, onnx.TensorProto
    filters = np.random.default_rng(5).standard_normal((8, 4, kernel)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "filters"], ["responses"]),
            helper.make_node("ReduceMax", ["responses"], ["y"], axes=[2], keepdims=0),
        ],
        "time_convolution",
        [helper.make_tensor_value_info("x", tp.FLOAT, ["batch", 4, "time"])],
        [helper.make_tensor_value_info("y", tp.FLOAT, ["batch", 8])],
        [onnx.numpy_helper.from_array(filters, "filters")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def convolution(tmp_path: Path) -> Path:
    return save_model(build_time_convolution_model(), tmp_path / "models", "detector", 1)


def test_a_fast_convolution_over_time_gets_one_thread_like_any_fast_model(
    convolution: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    if usable_cores() == 1:
        pytest.skip("this process may use one core: every model gets one thread, probed or not")
    caplog.set_level("INFO", logger="inprocserve")
    server = make_server(convolution.parents[2], models={"detector": ModelConfig(pool=PoolConfig(size=1))})
    status = server.status()["models"]["detector"]["versions"]["1"]
    assert status["error"] is None
    # A run of a few microseconds: one thread (a second would cost a wake-up per operator). The probe's run of
    # one step failed and the model got the whole budget.
    assert status["intra_op_threads"] == 1
    assert any(
        "run takes" in record.getMessage() and "using 1 intra-op thread" in record.getMessage()
        for record in caplog.records
    )
    x = np.random.default_rng(0).standard_normal((2, 4, 9)).astype(np.float32)
    assert server.predict("detector", x)["y"].shape == (2, 8)


def test_quantize_compares_a_convolution_over_time_on_steps_it_runs_on(
    convolution: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "detector-int8.onnx"
    assert main(["quantize", "--json", "--seconds", "0.02", "--sample", "32", str(convolution), str(target)]) == 0
    out, err = capfd.readouterr()
    report = json.loads(out)
    assert target.is_file()
    # compared and timed with 16 steps, the first of 1, 2, 16, 64 that a kernel of 5 runs on
    assert report["sample_shapes"] == {"x": [32, 4, 16]}
    assert report["sample_rows"] == 32
    assert set(report["speed"]) == {"batch_1", "batch_64"}
    assert 0 <= report["accuracy"]["y"]["max_abs_diff"] < 1.0
    assert "onnxruntime" not in err  # (the failed tries print no error line of the runtime's)

    assert main(["quantize", "--seconds", "0.02", "--sample", "8", str(convolution), str(target)]) == 0
    assert "compared on made-up inputs (random floats, zeros elsewhere): x [8, 4, 16]" in capfd.readouterr().out
