"""Lists of numbers are read as what they say: a True among numbers is refused (numpy reads it as 1), and
integers past int64 reach a uint64 input exactly (numpy reads a list holding one as float64).

Lists are what a web view passes on from a JSON body, so these are the values a client sends.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from inprocserve import InvalidInputError
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

UINT64_MAX = 2**64 - 1


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_scale_model(2.0), tmp_path, "scale", 1)  # x[batch, 4] float32
    for name, element in (("ids", TensorProto.INT64), ("hashes", TensorProto.UINT64)):
        graph = helper.make_graph(
            [helper.make_node("Identity", ["x"], ["y"])],
            name,
            [helper.make_tensor_value_info("x", element, ["batch", 2])],
            [helper.make_tensor_value_info("y", element, ["batch", 2])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        save_model(model, tmp_path, name, 1)
    return tmp_path


@pytest.mark.parametrize(
    ("model", "value"),
    [
        ("scale", [[1.0, True, 3.0, 4.0]]),  # (was answered as if it were 1.0)
        ("scale", [[1.0, 2.0, 3.0, 4.0], [0.5, 0.5, np.bool_(False), 0.5]]),
        ("ids", [[7, False]]),
        ("ids", [(7, 8), (True, 9)]),
        ("scale", ((1.0, True, 3.0, 4.0),)),  # (a tuple at the top was not looked at)
    ],
)
def test_a_flag_among_numbers_is_refused(
    repository: Path, make_server: ServerFactory, model: str, value: list[object]
) -> None:
    server = make_server(repository)
    with pytest.raises(InvalidInputError, match=r"input 'x': a list that mixes True/False into numbers"):
        server.predict(model, value)
    # the same numbers without the flag, and an array of them, are answered
    assert server.predict("scale", [[1.0, 1.0, 3.0, 4.0]])["y"].tolist() == [[2.0, 2.0, 6.0, 8.0]]
    assert server.predict("ids", np.array([[7, True]]))["y"].tolist() == [[7, 1]]  # (an array's dtype is int)


def test_integers_past_int64_reach_a_uint64_input_exactly(repository: Path, make_server: ServerFactory) -> None:
    server = make_server(repository)
    for value in ([[UINT64_MAX, 5]], [[2**63, 1], [2**63 + 1, 0]], [[np.uint64(UINT64_MAX), 3]]):
        answer = server.predict("hashes", value)["y"]
        assert answer.dtype == np.uint64 and answer.tolist() == [[int(v) for v in row] for row in value]
    # out of range: said so, with the range (was "got float64" and "integers held as Python objects")
    with pytest.raises(InvalidInputError, match=r"values from 1 to 18446744073709551616 do not fit in uint64"):
        server.predict("hashes", [[2**64, 1]])
    with pytest.raises(InvalidInputError, match=r"values from -1 to 1 do not fit in uint64"):
        server.predict("hashes", [[-1, 1]])
    with pytest.raises(InvalidInputError, match=r"values from 1 to 9223372036854775808 do not fit in int64"):
        server.predict("ids", [[2**63, 1]])
    with pytest.raises(InvalidInputError, match=r"expected dtype int64, got float64"):
        server.predict("ids", [[1.5, 2]])  # (floats are still refused as floats)


def test_integers_past_uint64_reach_a_float_input_as_floats(repository: Path, make_server: ServerFactory) -> None:
    """JavaScript's JSON.stringify writes 1e20 as 100000000000000000000, which numpy reads as an object: a float
    input refused it as "numbers held as Python objects", though it is well within float32 (the Open Inference
    Protocol's codec took the same value)."""
    server = make_server(repository)
    for row in ([10**20, 2, 3, 4], [2**64, 1.5, np.float32(3), np.int64(4)], [-(2**70), 0, 0, 0]):
        answer = server.predict("scale", [row])["y"]
        assert answer.dtype == np.float32 and answer.tolist() == [[2 * np.float32(float(v)) for v in row]]
    with pytest.raises(InvalidInputError, match=r"input 'x': holds an integer beyond the range of any float"):
        server.predict("scale", [[10**400, 1, 2, 3]])
    with pytest.raises(InvalidInputError, match=r"beyond the range of float32"):  # a float64, past float32
        server.predict("scale", [[10**39, 1, 2, 3]])
    with pytest.raises(InvalidInputError, match=r"element #0 is bool"):  # (a flag is still no number)
        server.predict("scale", [[True, 10**20, 1, 2]])
