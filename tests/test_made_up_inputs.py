"""The made-up requests of zeros that the library runs on its own (the thread probe at load, the quantize
comparison) reach a model whose dynamic inner axes need more than one step, as the warm-up's do.

A convolution of kernel 5 over a dynamic time axis fails on 1 step ("Invalid input shape: {1}"). Its warm-up
already tried longer axes; the thread probe did not (the model got every core, however short its run) and
``quantize`` refused to compare it at all.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import InvalidInputError, ModelConfig, PoolConfig
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


# -- inputs' lengths that the model needs alike, named apart in the file -----------------------------------


def _save(
    repository: Path, name: str, nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: Any = ()
) -> None:
    helper = onnx.helper
    graph = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    save_model(model, repository, name, 1)


def _floats(name: str, *shape: Any) -> Any:
    return onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, list(shape))


@pytest.fixture(scope="module")
def sequences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models whose inputs' sequence axes are named apart, as a legacy ``torch.onnx.export`` given
    ``dynamic_axes`` as lists names them (``input_ids_dynamic_axes_2``, ``attention_mask_dynamic_axes_2``)."""
    repository = tmp_path_factory.mktemp("sequences")
    make = onnx.helper.make_node
    # token ids times their mask: one length
    _save(
        repository,
        "masked",
        [make("Mul", ["ids", "mask"], ["y"])],
        [
            _floats("ids", "ids_dynamic_axes_1", "ids_dynamic_axes_2"),
            _floats("mask", "mask_dynamic_axes_1", "mask_dynamic_axes_2"),
        ],
        [_floats("y", "y_dynamic_axes_1", "y_dynamic_axes_2")],
    )
    # a query and its mask, a document and its mask: two lengths, each shared by a pair
    _save(
        repository,
        "query_document",
        [make("Mul", ["query", "query_mask"], ["q"]), make("Mul", ["document", "document_mask"], ["d"])],
        [
            _floats("query", "b1", "lq"),
            _floats("query_mask", "b2", "lqm"),
            _floats("document", "b3", "ld"),
            _floats("document_mask", "b4", "ldm"),
        ],
        [_floats("q", "b5", "lq"), _floats("d", "b6", "ld")],
    )
    # the first `len(b)` steps of a, plus b: a may be longer than b, not shorter (not one length)
    shape = [make("Shape", ["b"], ["b_length"], start=1, end=2)]
    starts = onnx.numpy_helper.from_array(np.array([0], np.int64), "starts")
    axes = onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")
    _save(
        repository,
        "prefix",
        [*shape, make("Slice", ["a", "starts", "b_length", "axes"], ["head"]), make("Add", ["head", "b"], ["y"])],
        [_floats("a", "batch", "la"), _floats("b", "batch", "lb")],
        [_floats("y", "batch", "lb")],
        [starts, axes],
    )
    # an image's height and width: two lengths, free of each other
    _save(
        repository,
        "image",
        [make("ReduceSum", ["x", "spatial"], ["y"], keepdims=0)],
        [_floats("x", "batch", 3, "height", "width")],
        [_floats("y", "batch", 3)],
        [onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "spatial")],
    )
    return repository


def test_sequence_axes_the_model_needs_alike_refuse_a_request_whose_lengths_differ(
    sequences: Path, make_server: ServerFactory
) -> None:
    # before, onnxruntime found them apart: "Attempting to broadcast an axis", an InferenceError (a 500)
    server = make_server(sequences)
    ids, mask = np.ones((2, 5), np.float32), np.ones((2, 4), np.float32)
    with pytest.raises(InvalidInputError, match=r"must be of one length .*'ids' axis 1 = 5, 'mask' axis 1 = 4"):
        server.predict("masked", {"ids": ids, "mask": mask})
    np.testing.assert_array_equal(server.predict("masked", {"ids": ids, "mask": 2 * ids})["y"], 2 * ids)
    futures = [
        server.submit("masked", {"ids": np.full((1, n), n, np.float32), "mask": np.ones((1, n), np.float32)})
        for n in (2, 3, 3, 7)
    ]
    assert [future.result(timeout=30)["y"].tolist() for future in futures] == [[[n] * n] for n in (2, 3, 3, 7)]
    status = server.status()["models"]["masked"]["versions"]["1"]
    assert [spec["shape"] for spec in status["signature"]["inputs"]] == [
        ["ids_dynamic_axes_1", "ids_dynamic_axes_2"],
        ["mask_dynamic_axes_1", "mask_dynamic_axes_2"],
    ]  # (as the file names them)


def test_each_pair_of_lengths_is_tied_apart_from_the_other(sequences: Path, make_server: ServerFactory) -> None:
    server = make_server(sequences)
    ones = functools.partial(np.ones, dtype=np.float32)
    inputs = {
        "query": ones((1, 3)),
        "query_mask": ones((1, 3)),
        "document": ones((1, 8)),
        "document_mask": ones((1, 8)),
    }
    answer = server.predict("query_document", inputs)  # a query and a document of their own lengths
    assert answer["q"].shape == (1, 3) and answer["d"].shape == (1, 8)
    with pytest.raises(InvalidInputError, match=r"'document' axis 1 = 8, 'document_mask' axis 1 = 7"):
        server.predict("query_document", {**inputs, "document_mask": ones((1, 7))})
    with pytest.raises(InvalidInputError, match=r"'query' axis 1 = 3, 'query_mask' axis 1 = 4"):
        server.predict("query_document", {**inputs, "query_mask": ones((1, 4))})


def test_lengths_that_need_not_be_alike_are_not_tied(sequences: Path, make_server: ServerFactory) -> None:
    server = make_server(sequences)
    # a longer than b runs (only a shorter one fails, inside onnxruntime): not refused by the library
    answer = server.predict("prefix", {"a": np.arange(5, dtype=np.float32)[None], "b": np.ones((1, 3), np.float32)})
    assert answer["y"].tolist() == [[1.0, 2.0, 3.0]]
    assert server.predict("image", np.ones((2, 3, 4, 9), np.float32))["y"].tolist() == [[36.0] * 3] * 2
