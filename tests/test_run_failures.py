"""How a run that onnxruntime fails reaches the client: its words without its build's source paths, and an
allocation it could not make as a typed error that says what to bound (``_ort_rules.translate_run_error``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

import inprocserve
from inprocserve import v2
from inprocserve.testing import save_model

from .conftest import ServerFactory


def build_reshape_model() -> onnx.ModelProto:
    """``y = reshape(x, shape)``, ``x`` float ``[batch, 6]`` and ``shape`` the two dimensions the caller wants:
    a shape of another size fails the run inside onnxruntime (its Reshape kernel's check)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "reshape",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 6]),
            helper.make_tensor_value_info("shape", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["p", "q"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def infer(endpoints: v2.Endpoints, model: str, body: dict[str, object]) -> tuple[int, dict[str, object]]:
    data = json.dumps(body).encode()
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = data[position : position + size]
        position += len(chunk)
        return chunk

    response = endpoints.handle("POST", f"/v2/models/{model}/infer", {"Content-Type": "application/json"}, read)
    return response.status, json.loads(response.body)


def test_a_failed_run_tells_the_client_what_failed_without_onnxruntimes_source_paths(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_reshape_model(), repository, "reshape", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    status, document = infer(
        endpoints,
        "reshape",
        {
            "inputs": [
                {"name": "x", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]},
                {"name": "shape", "shape": [2], "datatype": "INT64", "data": [1, 7]},
            ]
        },
    )
    assert status == 500
    message = str(document["error"])
    assert "cannot be reshaped to the requested shape. Input shape:{1,6}, requested shape:{1,7}" in message
    assert "onnxruntime_src" not in message and ".h:" not in message and "::" not in message, message
    # the library's own callers read the same words
    try:
        server.predict("reshape", {"x": np.ones((1, 6), np.float32), "shape": np.array([1, 7], np.int64)})
    except inprocserve.InferenceError as exc:
        assert "onnxruntime_src" not in str(exc) and str(exc).endswith("requested shape:{1,7}"), str(exc)
    else:
        raise AssertionError("the run did not fail")
