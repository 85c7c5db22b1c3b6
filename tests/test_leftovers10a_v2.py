"""The Open Inference Protocol endpoints, leftovers of the tenth review: which outputs of an answer the protocol
cannot carry, when the version that answered was reloaded or unloaded while the request ran."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import v2
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .test_v2_codec import call
from .test_v2_review import _float8_model

X = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}


def _float32_model() -> Any:
    """``y = x`` and ``z = x``, both FLOAT: the float8 model's outputs, y now a tensor the protocol carries."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 2])
    nodes = [helper.make_node("Identity", ["x"], ["y"]), helper.make_node("Identity", ["x"], ["z"])]
    graph = helper.make_graph(nodes, "float32", [x], [y, z])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def reloaded_as_it_is_routed(server: inprocserve.Server, repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reload of ``m`` version 1, changed to give y as FLOAT, just as the next request is handed to
    ``predict`` (after the endpoint read the model's versions): it is answered by the new copy."""
    checked = server._predict_checked

    def reloaded_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(server, "_predict_checked", checked)
        save_model(_float32_model(), repository, "m", 1)
        server.load("m", version=1)  # (on purpose: the compatibility gate holds back a hot reload of it)
        return checked(*args, **kwargs)

    monkeypatch.setattr(server, "_predict_checked", reloaded_first)


def test_an_output_that_was_float8_before_a_reload_is_sent_as_the_copy_that_answered_gives_it(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Which outputs the protocol cannot carry was read from the version's copies before and after the run: y,
    # float8 in the copy a hot reload replaced just before the request was routed, was left out of the answer
    # of the new copy (FP32 numbers). (A request naming y is refused before its run, by the copy serving then.)
    save_model(_float8_model(), repository, "m", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    reloaded_as_it_is_routed(server, repository, monkeypatch)
    status, document, _ = call(endpoints, "POST", "/v2/models/m/infer", json.dumps({"inputs": [X]}).encode())
    assert status == 200, document
    assert [(o["name"], o["datatype"], o["data"]) for o in document["outputs"]] == [
        ("y", "FP32", [1.5, -2.0]),
        ("z", "FP32", [1.5, -2.0]),
    ]
