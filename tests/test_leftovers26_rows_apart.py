"""A model whose two inputs leave axis 0 unnamed (``a[?, 4]``, ``b[?, 4]``): their rows need to match only
where the version may merge or slice requests, on a real server and a model built with ``onnx.helper``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve.testing import save_model

from .conftest import ServerFactory

FEEDS = {"a": np.ones((1, 4), np.float32), "b": np.arange(12, dtype=np.float32).reshape(3, 4)}


def _two_sums(rows_a: str | None = None, rows_b: str | None = None) -> onnx.ModelProto:
    """``ya = sum(a, axis 1)`` and ``yb = sum(b, axis 1)``: each input's rows are its own output's."""
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceSum", ["a", "axes"], ["ya"], keepdims=1),
            helper.make_node("ReduceSum", ["b", "axes"], ["yb"], keepdims=1),
        ],
        "two_sums",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [rows_a, 4]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [rows_b, 4]),
        ],
        [
            helper.make_tensor_value_info("ya", TensorProto.FLOAT, [rows_a, 1]),
            helper.make_tensor_value_info("yb", TensorProto.FLOAT, [rows_b, 1]),
        ],
        initializer=[axes],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _served(repository: Path, make_server: ServerFactory, setting: str, model: onnx.ModelProto) -> inprocserve.Server:
    save_model(model, repository, "two", 1)
    (repository / "two" / "config.toml").write_text(f'[batching]\nrows_independent = "{setting}"\n')
    return make_server(repository)


def test_never_merged_nor_sliced_a_request_is_taken_as_onnxruntime_takes_it(
    repository: Path, make_server: ServerFactory
) -> None:
    model = _two_sums()
    raw = ort.InferenceSession(model.SerializeToString()).run(None, FEEDS)  # (onnxruntime itself takes it)
    server = _served(repository, make_server, "no", model)
    result = server.predict("two", FEEDS)
    np.testing.assert_array_equal(result["ya"], raw[0])
    np.testing.assert_array_equal(result["yb"], raw[1])
    assert result["yb"].shape == (3, 1)
    # the same as with the rows named apart, which was served already
    assert server.predict("two", {"a": FEEDS["b"], "b": FEEDS["a"]})["yb"].shape == (1, 1)


@pytest.mark.parametrize("setting", ["check", "yes"])
@pytest.mark.parametrize("names", [(None, None), ("b1", "b2")])
def test_where_requests_may_be_merged_their_inputs_rows_must_match(
    repository: Path, make_server: ServerFactory, setting: str, names: tuple[str | None, str | None]
) -> None:
    server = _served(repository, make_server, setting, _two_sums(*names))
    with pytest.raises(inprocserve.InvalidInputError, match="input 'b': has 3 rows but the other inputs have 1"):
        server.predict("two", FEEDS)
    same = {"a": FEEDS["b"], "b": FEEDS["b"]}
    assert server.predict("two", same)["ya"].shape == (3, 1)
