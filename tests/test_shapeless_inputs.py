"""Inputs and outputs that the model file declares with no shape (any rank), which onnxruntime reports as
``[]`` as it reports a scalar: served at any rank, told apart from true scalars, on real onnxruntime."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from inprocserve import InvalidInputError
from inprocserve.__main__ import main
from inprocserve._declared_shapes import Shapeless, shapeless_tensors
from inprocserve.testing import save_model

from .conftest import ServerFactory

_Shape = list[int | str] | None


def relu(shape: _Shape) -> onnx.ModelProto:
    """``y = relu(x)``, with ``x`` and ``y`` declared of ``shape`` (``None``: no shape at all)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model


def projection() -> onnx.ModelProto:
    """``y = x @ w`` with ``w[3, 2]`` a 1 KiB-padded initializer ahead of the inputs, ``x`` declared with no
    shape: it runs on ``[..., 3]`` arrays only, and fails on a scalar."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    w = numpy_helper.from_array(np.arange(6, dtype=np.float32).reshape(3, 2), "w")
    pad = numpy_helper.from_array(np.zeros(256, dtype=np.float32), "unused")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "projection", [x], [y], [w, pad])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model


@pytest.fixture
def relus(repository: Path) -> Path:
    save_model(relu(None), repository, "anyrank")
    save_model(relu([]), repository, "scalar")
    return repository


def test_the_file_tells_a_tensor_of_no_shape_from_a_scalar(tmp_path: Path) -> None:
    inputs = [
        helper.make_tensor_value_info("free", TensorProto.FLOAT, None),
        helper.make_tensor_value_info("one", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["batch", 3]),
        helper.make_tensor_value_info("texts", TensorProto.STRING, None),
    ]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)]
    weights = [numpy_helper.from_array(np.ones((64, 64), np.float32), "big")]
    graph = helper.make_graph([], "g", inputs, outputs, weights)
    path = tmp_path / "model.onnx"
    path.write_bytes(helper.make_model(graph, ir_version=9).SerializeToString())
    assert shapeless_tensors(path) == Shapeless(frozenset({"free", "texts"}), frozenset({"out"}))
    path.write_bytes(b"\x3a\xff\xff")  # (a graph field that runs past the end: nothing is claimed)
    assert shapeless_tensors(path) == Shapeless()


def test_an_input_declared_with_no_shape_takes_arrays_of_any_rank(relus: Path, make_server: ServerFactory) -> None:
    server = make_server(relus)
    grid = np.array([[1, -2, 3], [-4, 5, -6]], np.float32)
    assert server.predict("anyrank", grid)["y"].tolist() == [[1, 0, 3], [0, 5, 0]]
    assert server.predict("anyrank", {"x": [-1.0, 2.0, -3.0, 4.0, 5.0]})["y"].tolist() == [0, 2, 0, 4, 5]
    assert server.predict("anyrank", np.float32(-7))["y"].tolist() == 0.0
    with pytest.raises(InvalidInputError, match=r"input 'x': expected numbers of dtype float32"):
        server.predict("anyrank", np.array([["a", "b"]], dtype=object))  # its dtype is still checked
    with pytest.raises(InvalidInputError, match=r"the model takes x: tensor\(float\) \[any rank\]"):
        server.predict("anyrank", {"z": grid})


def test_a_scalar_input_still_refuses_an_array(relus: Path, make_server: ServerFactory) -> None:
    server = make_server(relus)
    assert server.predict("scalar", np.float32(-7))["y"].tolist() == 0.0
    with pytest.raises(InvalidInputError, match=r"input 'x': expected 0 dimensions \[\], got 2 \(shape \[2, 3\]\)"):
        server.predict("scalar", np.ones((2, 3), np.float32))


def test_requests_of_any_rank_run_unbatched_each_with_its_own_answer(relus: Path, make_server: ServerFactory) -> None:
    server = make_server(relus)
    status = server.status()["models"]["anyrank"]["versions"]["1"]
    assert status["signature"]["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": None}]
    assert status["signature"]["outputs"] == [{"name": "y", "type": "tensor(float)", "shape": None}]
    assert status["signature"]["batchable"] is False
    shapes = [(2, 3), (5,), (2, 3), (1, 4, 2)]
    arrays = [np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 3 * i for i, shape in enumerate(shapes)]
    futures = [server.submit("anyrank", array) for array in arrays]
    for array, future in zip(arrays, futures, strict=True):
        np.testing.assert_array_equal(future.result(timeout=10)["y"], np.maximum(array, 0))


def test_a_model_that_needs_a_rank_warms_up_on_its_warmup_file(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(projection(), repository, "projection")
    np.save(path.parent.parent / "warmup.npy", np.ones((2, 3), np.float32))
    (path.parent.parent / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npy"\n')
    server = make_server(repository)
    assert server.predict("projection", [[1.0, 1.0, 1.0]])["y"].tolist() == [[6.0, 9.0]]
    assert server.predict("projection", np.ones((2, 4, 3), np.float32))["y"].shape == (2, 4, 2)


def self_product() -> onnx.ModelProto:
    """``y = x @ transpose(x)``, ``x`` declared with no shape: runs on any array of one axis or more, and
    fails on a scalar (a MatMul needs a rank)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, None)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Transpose", ["x"], ["xt"]), helper.make_node("MatMul", ["x", "xt"], ["y"])]
    graph = helper.make_graph(nodes, "self_product", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model


def test_a_model_that_needs_a_rank_warms_up_on_a_made_up_request_of_more_axes(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The warm-up made an input of any rank up as a scalar only, which a MatMul refuses: the version never
    loaded, though every real request of one axis or more runs; then it loaded unwarmed, with a warning. It
    tries made-up arrays of more axes, and loads warmed, with nothing to warn of."""
    save_model(self_product(), repository, "product")
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(repository)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert server.predict("product", [[1.0, 2.0]])["y"].tolist() == [[5.0]]


def summed_with_a_product() -> onnx.ModelProto:
    """``y = a + b`` (float[batch, seq] and float[batch, width]: lengths named apart that must agree) and ``z = s @
    transpose(s)``, ``s`` declared with no shape: it needs one axis or more."""
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["y"]),
            helper.make_node("Transpose", ["s"], ["st"]),
            helper.make_node("MatMul", ["s", "st"], ["z"]),
        ],
        "summed_with_a_product",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", "width"]),
            helper.make_tensor_value_info("s", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, None),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_lengths_that_must_agree_are_found_beside_an_input_that_needs_a_rank(
    repository: Path, make_server: ServerFactory
) -> None:
    """The load's runs that find which lengths must agree made the input of any rank up as a scalar, which
    its MatMul refuses: every one failed, the lengths were left free, and a request whose two lengths
    differed failed inside onnxruntime, a 500 for the client's mistake. They run it with the axes the
    warm-up found, and the request is refused saying which lengths must agree."""
    save_model(summed_with_a_product(), repository, "summed")
    server = make_server(repository)
    s = np.ones((1, 2), np.float32)
    answer = server.predict("summed", {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 3), np.float32), "s": s})
    assert answer["y"].tolist() == [[2.0, 2.0, 2.0]]
    with pytest.raises(InvalidInputError, match="these axes must be of one length"):
        server.predict("summed", {"a": np.ones((1, 3), np.float32), "b": np.ones((1, 4), np.float32), "s": s})


@pytest.mark.parametrize("warmup", ["enabled = false", 'inputs_file = "warmup.npz"'])
def test_lengths_that_must_agree_are_found_beside_an_input_that_needs_a_rank_with_no_made_up_warm_up(
    warmup: str,
    repository: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the warm-up switched off, or read from ``warmup.inputs_file``, no made-up warm-up found the rank
    that the input of any rank needs: the runs that find which lengths must agree made it up as a scalar,
    which its MatMul refuses, every one failed, and the lengths were left free (a request whose lengths
    differ failed inside onnxruntime: a 500 for the client's mistake). They take its rank from the file's
    array, or search the ranks as the warm-up does."""
    save_model(summed_with_a_product(), repository, "summed")
    (repository / "summed" / "config.toml").write_text(f"[warmup]\n{warmup}\n")
    s = np.ones((1, 2), np.float32)
    a = np.ones((1, 3), np.float32)
    np.savez(repository / "summed" / "warmup.npz", a=a, b=a, s=s)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server = make_server(repository)
    assert not [r.getMessage() for r in caplog.records if "no made-up request of one length ran" in r.getMessage()]
    assert server.predict("summed", {"a": a, "b": a, "s": s})["y"].tolist() == [[2.0, 2.0, 2.0]]
    with pytest.raises(InvalidInputError, match=r"must be of one length .*'a' axis 1 = 3, 'b' axis 1 = 4"):
        server.predict("summed", {"a": a, "b": np.ones((1, 4), np.float32), "s": s})


@pytest.mark.parametrize("warmup", ["", "[warmup]\nenabled = false\n"])
def test_a_fast_model_that_needs_a_rank_gets_one_thread_like_any_fast_model(
    warmup: str,
    repository: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread probe, which times a made-up run before any session is built (so before the warm-up),
    made an input of any rank up as a scalar: a MatMul refused it, the probe failed, and a model whose run
    takes microseconds got the whole thread budget (a wake-up per operator on each run). It tries the ranks
    the warm-up tries."""
    # Two usable cores, whatever this host has: on one (a CI runner pinned or quota'd to one CPU) every model
    # gets one thread unprobed, and this test was skipped there.
    monkeypatch.setattr("inprocserve._ort_rules.usable_cores", lambda: 2)
    save_model(self_product(), repository, "product")
    (repository / "product" / "config.toml").write_text(f"{warmup}[pool]\nsize = 1\n")
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server = make_server(repository)
    status = server.status()["models"]["product"]["versions"]["1"]
    assert status["error"] is None
    assert status["intra_op_threads"] == 1
    assert any("using 1 intra-op thread" in record.getMessage() for record in caplog.records)
    assert server.predict("product", [[1.0, 2.0]])["y"].tolist() == [[5.0]]


def test_a_model_no_made_up_request_runs_fails_its_load_naming_the_input_and_the_warmup_file(
    repository: Path, make_server: ServerFactory
) -> None:
    """A model that needs a last axis of 3 runs on no made-up request; its version fails to load (a version
    that fails every made-up request may as well be broken: it must never replace one that serves), and
    the error says which input has no shape and how to load it. It quotes the failure of the last rank tried,
    which got past the model's need of a rank: it quoted the scalar's, which said only that a MatMul needs
    one ("left_num_dims and right_num_dims must be >= 1"), though every array of 1 to 4 axes had more."""
    save_model(relu(None), repository, "projection", 1)
    save_model(projection(), repository, "projection", 2)
    server = make_server(repository)
    assert server.predict("projection", [[-1.0, 2.0]]).version == 1  # version 1 serves on
    error = server.status()["models"]["projection"]["versions"]["2"]["error"]
    assert error.startswith("model 'projection' version 2 failed its warm-up run: [ONNXRuntimeError]"), error
    assert "and with 'x' of 1 to 4 axes (declared with no shape: any rank)" in error, error
    assert "warmup.inputs_file" in error, error
    assert "must be >= 1" not in error, error
    quoted = (
        "MatMul dimension mismatch (on the warm-up's made-up request of zeros, x [1, 1, 1, 1], of the last rank it "
        "tried, after x [], and again with its dynamic inner axes 2, 16, 64 long, and with 'x' of 1 to 4 axes"
    )
    assert quoted in error, error


def test_quantize_compares_a_model_that_needs_a_rank_on_arrays_it_runs_on(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """``quantize`` made an input of any rank up as a scalar (onnxruntime reports it as ``[]``, as a scalar),
    which a MatMul refuses, and refused to compare the model at all ("it does not run on the synthesized
    inputs ... x []"). It tries the ranks the warm-up tries."""
    pytest.importorskip("onnx")
    path = save_model(self_product(), tmp_path / "models", "product")
    target = tmp_path / "product-int8.onnx"
    assert main(["quantize", "--json", "--seconds", "0.02", "--sample", "32", str(path), str(target)]) == 0
    report = json.loads(capfd.readouterr().out)
    assert report["sample_shapes"] == {"x": [32]}  # (rank 1, the first after a scalar: x @ x.T is then a dot)
    assert target.is_file()


def test_inspect_shows_an_input_of_any_rank(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = save_model(relu(None), tmp_path, "anyrank")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "x: tensor(float) [any rank]" in out
    assert "batchable: no (runs unbatched: input x: tensor(float) [any rank] declares no shape" in out
    assert main(["inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": None}]


def test_the_flask_plug_in_and_v2_serve_an_input_of_any_rank(relus: Path) -> None:
    from flask import Flask, request
    from inprocserve_flask import Inprocserve, predict

    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(relus), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(app)

    @app.post("/relu/<name>")
    def score(name: str) -> object:
        return {"y": predict(name, {"x": request.get_json()["x"]})["y"].tolist()}

    try:
        web = app.test_client()
        grid = web.post("/relu/anyrank", json={"x": [[1, -2, 3], [-4, 5, -6]]})
        refused = web.post("/relu/scalar", json={"x": [[1, -2, 3], [-4, 5, -6]]})
        metadata = web.get("/v2/models/anyrank").json
        infers = {
            tuple(shape): web.post(
                "/v2/models/anyrank/infer",
                json={"inputs": [{"name": "x", "shape": shape, "datatype": "FP32", "data": data}]},
            )
            for shape, data in (([2, 3], [1, -2, 3, -4, 5, -6]), ([5], [-1, 2, -3, 4, 5]))
        }
        scalar = web.post(
            "/v2/models/scalar/infer",
            json={"inputs": [{"name": "x", "shape": [2, 3], "datatype": "FP32", "data": [1, -2, 3, -4, 5, -6]}]},
        )
    finally:
        Inprocserve.close(app)
    assert grid.status_code == 200 and grid.json == {"y": [[1, 0, 3], [0, 5, 0]]}
    assert refused.status_code == 400 and "expected 0 dimensions" in refused.json["message"], refused.json
    assert metadata["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1]}]  # (the protocol has no "any rank")
    assert infers[(2, 3)].status_code == 200, infers[(2, 3)].json
    assert infers[(2, 3)].json["outputs"][0]["shape"] == [2, 3]
    assert infers[(2, 3)].json["outputs"][0]["data"] == [1, 0, 3, 0, 5, 0]
    assert infers[(5,)].status_code == 200, infers[(5,)].json
    assert infers[(5,)].json["outputs"][0]["data"] == [0, 2, 0, 4, 5]
    assert scalar.status_code == 400 and "expected 0 dimensions" in scalar.json["error"]
