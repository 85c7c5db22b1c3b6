"""Input shapes read from a model file before any session: what onnxruntime's sessions report, unread weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from inprocserve._declared_shapes import Shape, declared_tensors
from inprocserve.testing import build_add_model, build_gather_model, build_mlp_model, build_sum_model, save_model


def input_shapes(path: Path) -> list[Shape | None]:
    return [declared.shape for declared in declared_tensors(path)[0]]


def as_onnxruntime_reports(path: Path) -> list[tuple[int | None, ...]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [tuple(dim if isinstance(dim, int) else None for dim in node.shape) for node in session.get_inputs()]


@pytest.mark.parametrize(
    "model",
    [
        build_mlp_model((16, 32, 4)),
        build_add_model(sequence=True),
        build_add_model(),
        build_gather_model(),
        build_sum_model(fixed_batch=3),
    ],
    ids=["mlp", "sequence", "add", "gather", "fixed"],
)
def test_the_shapes_are_those_onnxruntime_reports(model: object, repository: Path) -> None:
    path = save_model(model, repository, "m", 1)
    assert input_shapes(path) == as_onnxruntime_reports(path)


def test_inputs_declared_after_large_weights_are_read(repository: Path) -> None:
    # the weights come first in the file (protobuf writes fields by number): they are sought past, not read
    weights = numpy_helper.from_array(np.zeros((2048, 2048), np.float32), "w")  # 16 MiB inline
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 2048])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2048])],
        [weights],
    )
    path = save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), repository, "m", 1
    )
    assert input_shapes(path) == [(None, None, 2048)]


def test_inputs_without_a_tensor_shape_and_scalars(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["b"])],
        "g",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, None),  # rank unknown
            helper.make_tensor_sequence_value_info("s", TensorProto.FLOAT, None),
            helper.make_tensor_value_info("scalar", TensorProto.FLOAT, []),
            helper.make_tensor_value_info("unnamed", TensorProto.FLOAT, [None, 3, "n"]),
        ],
        [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)],
    )
    path = tmp_path / "model.onnx"
    onnx.save(helper.make_model(graph, ir_version=9), path)
    assert input_shapes(path) == [None, None, (), (None, 3, None)]


def test_a_file_cut_short_or_not_onnx_is_a_value_error(repository: Path, tmp_path: Path) -> None:
    path = save_model(build_mlp_model((16, 32, 4)), repository, "m", 1)
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(path.read_bytes()[:-9])
    text = tmp_path / "text.onnx"
    text.write_bytes(b"this is not a model\n" * 4)
    for bad in (cut, text):
        with pytest.raises(ValueError):
            input_shapes(bad)
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert input_shapes(empty) == []  # (declares nothing: onnxruntime's load says what is wrong with it)
