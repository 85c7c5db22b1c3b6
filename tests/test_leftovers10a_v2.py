"""The Open Inference Protocol endpoints, leftovers of the tenth review: which outputs of an answer the protocol
cannot carry, when the version that answered was reloaded or unloaded while the request ran."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import RemoteModel, v2
from inprocserve.testing import save_model

from .conftest import HELD_MARK, ServerFactory, SessionHolder, wait_until
from .test_remote_retries import METADATA, Scripted
from .test_remote_retries import scripted as scripted  # (the fixture: a scripted model server)
from .test_v2_codec import call
from .test_v2_review import _float8_model

X = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.5, -2.0]}


def _float32_model(outputs: tuple[str, ...] = ("y", "z")) -> Any:
    """``y = x`` and ``z = x``, both FLOAT: the float8 model's outputs, y now a tensor the protocol carries (or
    only those of ``outputs``)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    declared = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2]) for name in outputs]
    nodes = [helper.make_node("Identity", ["x"], [name]) for name in outputs]
    graph = helper.make_graph(nodes, "float32", [x], declared)
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


def test_a_float8_output_of_a_version_loaded_and_unloaded_during_the_request_is_not_sent_as_uint8(
    repository: Path, make_server: ServerFactory, hold_session: SessionHolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Version 2 (z, and y float8: a new output) is loaded by hand just as the request is routed (after the
    # endpoint read the model's versions, which had only version 1, z alone), answers it, and is unloaded while
    # it runs: found in neither reading of the versions, its y went out as UINT8 bits.
    save_model(_float32_model(("z",)), repository, "m", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    checked = server._predict_checked

    def loaded_first(*args: Any, **kwargs: Any) -> Any:
        save_model(_float8_model(), repository, "m", 2)
        assert server.load("m", version=2) == 2
        return checked(*args, **kwargs)

    monkeypatch.setattr(server, "_predict_checked", loaded_first)
    inputs = {"x": np.array([[HELD_MARK, -2.0]], dtype=np.float32)}
    held = hold_session.mark(inputs)
    x = {"name": "x", "datatype": "FP32", "shape": [1, 2], "data": inputs["x"].ravel().tolist()}
    with ThreadPoolExecutor(2) as pool:
        answered = pool.submit(call, endpoints, "POST", "/v2/models/m/infer", json.dumps({"inputs": [x]}).encode())
        assert held.started.wait(10)
        unloaded = pool.submit(server.unload, "m", 2)
        wait_until(lambda: 2 not in server._registry.routes["m"].versions)
        held.let_go()
        status, document, _ = answered.result(timeout=10)
        unloaded.result(timeout=10)
    assert (status, document["model_version"]) == (200, "2"), document
    assert [(o["name"], o["datatype"]) for o in document["outputs"]] == [("z", "FP32")], document  # (y left out)


LONE_SURROGATE_ANSWER = b'{"outputs":[{"name":"y","datatype":"BYTES","shape":[1,1],"data":["ok \\ud800"]}]}'
"""A model server's answer whose text holds a lone surrogate: JSON can write one (``"\\ud800"``), UTF-8 cannot."""


@pytest.mark.parametrize("binary", [False, True])
def test_text_a_model_server_answers_that_utf8_cannot_encode_is_its_error_not_a_crash_of_the_endpoint(
    scripted: Scripted, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, binary: bool
) -> None:
    # A remote version's BYTES output read from JSON as a str holding a lone surrogate (no text onnxruntime can
    # answer: it fails the run of a string that is not UTF-8) was handed on as an answer: the /v2 endpoint,
    # after recording the request as answered, raised UnicodeEncodeError out of handle() as it wrote the answer's
    # binary tensor, and predict's caller got a text that its own UTF-8 encoding of the answer failed on.
    monkeypatch.setitem(METADATA, "outputs", [{"name": "y", "datatype": "BYTES", "shape": [-1, 1]}])
    server = make_server()
    remote = RemoteModel(url=f"http://127.0.0.1:{scripted.server_port}", model="scale", retries=0)
    server.load("scale", remote=remote, config=inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    endpoints = v2.Endpoints(lambda: server)
    scripted.script = [LONE_SURROGATE_ANSWER] * 2
    x = {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.0, 3.0, 4.0]}
    body = json.dumps({"inputs": [x], "parameters": {"binary_data_output": binary}}).encode()
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", body)
    assert status == 500 and "output 'y'" in document["error"] and "not valid Unicode" in document["error"], document
    with pytest.raises(inprocserve.InferenceError, match="not valid Unicode"):
        server.predict("scale", np.ones((1, 4), np.float32))
    latency = server.status()["models"]["scale"]["versions"]["1"]["latency_ms"]
    assert (latency["count"], latency["errors"]) == (0, 2), latency  # (each recorded once, as an error)


def test_a_pinned_request_whose_named_output_a_reload_made_float8_is_recorded_as_refused(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Named outputs of a pinned version were checked against it before the run only, and its answer was not
    # checked again: version 1 reloaded by hand (y now float8) just as the request was routed, the encoder
    # refused y after the request was recorded as answered (a 400 counted in latency as a success).
    save_model(_float32_model(), repository, "m", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    checked = server._predict_checked
    predict = server.predict

    def reloaded_first(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(server, "_predict_checked", checked)
        monkeypatch.setattr(server, "predict", predict)
        save_model(_float8_model(), repository, "m", 1)
        server.load("m", version=1)  # (on purpose: the compatibility gate holds back a hot reload of it)
        return (checked if "check" in kwargs else predict)(*args, **kwargs)

    monkeypatch.setattr(server, "_predict_checked", reloaded_first)
    monkeypatch.setattr(server, "predict", reloaded_first)
    body = json.dumps({"inputs": [X], "outputs": [{"name": "y"}]}).encode()
    status, document, _ = call(endpoints, "POST", "/v2/models/m/versions/1/infer", body)
    assert (status, document["error"]) == (
        400,
        "output 'y' of model 'm' is a tensor(float8e4m3fn), which the protocol has no datatype for; "
        "ask for the model's other outputs with 'outputs'",
    )
    latency = server.status()["models"]["m"]["versions"]["1"]["latency_ms"]
    assert (latency["count"], latency["errors"]) == (0, 1), latency
