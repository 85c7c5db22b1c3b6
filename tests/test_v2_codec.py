"""The Open Inference Protocol codec and endpoints (inprocserve.v2), with real servers and real models.

The plug-ins' tests drive the same endpoints with tritonclient over HTTP; here every decoding rule and
hostile-input cap is checked on its own, plus the endpoints against a real Server.
"""

from __future__ import annotations

import gzip
import json
import re
import struct
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import v2
from inprocserve.testing import build_add_model, build_scale_model, save_model
from inprocserve.v2._client_codec import decode_checked_response

from .conftest import HeldSession, ServerFactory, busy_inputs, rollout, version_status, wait_until

NUMERIC = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64"]


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    dtype = v2.DATATYPES[datatype]
    values = np.arange(int(np.prod(shape))).reshape(shape)
    if datatype == "BYTES":
        return np.array([f"tëxt {i}" for i in values.reshape(-1)], dtype=object).reshape(shape)
    if datatype == "BOOL":
        return values % 2 == 1
    return values.astype(dtype)


def header(body: bytes, json_length: int | None = None) -> dict[str, str]:
    return {} if json_length is None else {v2.HEADER_LENGTH: str(json_length)}


def request_json(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


def x_input(data: Any = None, shape: Any = (1, 4), datatype: str = "FP32", **extra: Any) -> dict[str, Any]:
    tensor = {"name": "x", "shape": list(shape), "datatype": datatype, **extra}
    if data is not None:
        tensor["data"] = data
    return tensor


# -- datatypes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_every_datatype_maps_to_numpy_and_back(datatype: str) -> None:
    assert v2.datatype_of(v2.numpy_dtype(datatype, tensor="t")) == datatype


@pytest.mark.parametrize(
    ("onnx_type", "datatype"),
    [("tensor(float)", "FP32"), ("tensor(double)", "FP64"), ("tensor(int64)", "INT64"), ("tensor(string)", "BYTES")],
)
def test_onnx_types_map_to_datatypes(onnx_type: str, datatype: str) -> None:
    assert v2.datatype_of_onnx(onnx_type) == datatype


def test_an_unknown_datatype_names_the_known_ones() -> None:
    with pytest.raises(inprocserve.InvalidInputError, match=r"unknown datatype 'FP8'; use one of BOOL, .*BYTES"):
        v2.numpy_dtype("FP8", tensor="x")
    with pytest.raises(TypeError, match="complex"):
        v2.datatype_of(np.dtype(np.complex64))


# -- round trips -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", [*NUMERIC, "BYTES"])
def test_every_datatype_survives_a_request_round_trip(datatype: str, binary: bool) -> None:
    array = sample(datatype)
    body, headers = v2.encode_infer_request({"t": array}, binary=binary)
    assert (v2.HEADER_LENGTH in headers) is binary
    decoded = v2.decode_infer_request(body, headers)
    assert decoded.datatypes == {"t": datatype}
    assert decoded.inputs["t"].dtype == array.dtype and decoded.inputs["t"].shape == array.shape
    assert decoded.inputs["t"].tolist() == array.tolist()


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
@pytest.mark.parametrize("datatype", ["BOOL", "INT64", "FP16", "FP64", "BYTES"])
def test_every_datatype_survives_a_response_round_trip(datatype: str, binary: bool) -> None:
    array = sample(datatype, (3,))
    body, headers = v2.encode_infer_response({"out": array}, binary=binary, model_name="m", model_version=3)
    response = v2.decode_infer_response(body, headers)
    assert (response.model_name, response.model_version) == ("m", "3")
    assert response.outputs["out"].tolist() == array.tolist()


def test_a_client_reads_a_servers_answer_that_names_a_key_twice() -> None:
    """Only a client's request may not repeat a key (a proxy in front of this server may have read the other
    value); an answer from a model server was refused as "the request JSON is ambiguous ... send each key
    once", blaming a request the caller never wrote, where it was read before."""
    output = b'{"name": "out", "datatype": "FP32", "shape": [1], "data": [1.0]}'
    body = b'{"model_name": "m", "model_name": "m", "outputs": [%s]}' % output
    response = v2.decode_infer_response(body, {"Content-Type": "application/json"})
    assert response.model_name == "m" and response.outputs["out"].tolist() == [1.0]


def test_the_binary_layout_is_the_extension_s() -> None:
    """Little-endian numbers, BOOL as one byte, BYTES as a 4-byte length then the bytes, in input order."""
    body, headers = v2.encode_infer_request(
        {"f": np.array([1.5], np.float32), "b": np.array([True, False]), "s": np.array(["hé"], dtype=object)}
    )
    length = int(headers[v2.HEADER_LENGTH])
    document = json.loads(body[:length])
    assert [t["parameters"]["binary_data_size"] for t in document["inputs"]] == [4, 2, 7]
    assert body[length:] == struct.pack("<f", 1.5) + b"\x01\x00" + struct.pack("<I", 3) + "hé".encode()


def test_json_data_may_be_nested_and_parameters_are_carried() -> None:
    body = request_json(
        x_input([[1, 2, 3, 4]]),
        id="r-1",
        parameters={"timeout": 250_000, "user_id": 42, "custom": "kept"},
        outputs=[{"name": "y", "parameters": {"binary_data": True}}, {"name": "z"}],
    )
    request = v2.decode_infer_request(body, {})
    assert request.inputs["x"].tolist() == [[1.0, 2.0, 3.0, 4.0]]
    assert request.id == "r-1" and request.timeout_s == 0.25 and request.user_id == "42"
    assert request.parameters["custom"] == "kept"
    assert request.outputs == (v2.RequestedOutput("y", True), v2.RequestedOutput("z", None))


@pytest.mark.parametrize(
    ("data", "shape", "datatype", "nested"),
    [
        ([[1, 2], [3, 4], [5, 6], [7, 8]], [2, 4], "FP32", [4, 2]),  # rows and features mixed up
        ([[1, 2, 3, 4]], [4], "FP32", [1, 4]),
        ([[[1, 2, 3, 4]]], [1, 4], "INT64", [1, 1, 4]),
        ([["a", "b"], ["c", "d"]], [4], "BYTES", [2, 2]),
    ],
)
def test_json_data_nested_other_than_its_shape_is_refused_naming_both(
    data: Any, shape: list[int], datatype: str, nested: list[int]
) -> None:
    # The values were taken in order and laid out as the shape says: a client with its rows and features
    # mixed up had an answer computed on scrambled inputs. The protocol takes data flat or in its natural form.
    body = request_json(x_input(data, shape=shape, datatype=datatype))
    expected = rf"input 'x': 'data' is nested as \[{', '.join(map(str, nested))}\], but the tensor's shape is"
    with pytest.raises(inprocserve.InvalidInputError, match=expected) as refused:
        v2.decode_infer_request(body, {})
    assert "send the values flat, in row-major order, or nested as the shape says" in str(refused.value)


def test_an_empty_request_body_is_refused_as_empty_not_as_malformed_json() -> None:
    # ("the request JSON is malformed: Expecting value: line 1 column 1 (char 0)", for JSON no one sent: under
    # granian, a chunked body whose framing it cannot read arrives so)
    with pytest.raises(inprocserve.InvalidInputError, match="the request body is empty; send the inference") as no:
        v2.decode_infer_request(b"", {})
    assert "JSON is malformed" not in str(no.value)


def test_a_server_answer_nested_other_than_its_shape_is_read_in_order() -> None:
    # (Triton reads nested data so: a remote server's answer is read, not refused)
    answer = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [4], "data": [[1, 2], [3, 4]]}]}
    response = v2.decode_infer_response(json.dumps(answer).encode(), {})
    assert response.outputs["y"].tolist() == [1.0, 2.0, 3.0, 4.0]


def test_requested_outputs_choose_what_is_sent_and_how() -> None:
    outputs = {"a": np.ones(2, np.float32), "b": np.zeros(2, np.int64)}
    body, headers = v2.encode_infer_response(
        outputs, [v2.RequestedOutput("b", True)], binary=False, model_name="m", request_id="r"
    )
    document = json.loads(body[: int(headers[v2.HEADER_LENGTH])])
    assert [o["name"] for o in document["outputs"]] == ["b"] and document["id"] == "r"
    assert v2.decode_infer_response(body, headers).outputs["b"].tolist() == [0, 0]
    with pytest.raises(inprocserve.InvalidInputError, match="'c' is not an output of model 'm'; outputs: a, b"):
        v2.encode_infer_response(outputs, [v2.RequestedOutput("c")], model_name="m")


# -- hostile input -------------------------------------------------------------------------------------------------


def binary_body(raw: bytes, size: int, *, shape: Any = (1, 4), datatype: str = "FP32") -> tuple[bytes, dict[str, str]]:
    head = request_json(x_input(shape=shape, datatype=datatype, parameters={"binary_data_size": size}))
    return head + raw, header(head, len(head))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: (b"[1, 2]", {}), "must be a JSON object with an 'inputs' list"),
        (lambda: (b"{not json", {}), "malformed"),
        (lambda: (b"\xff\xfe{}", {}), "malformed"),
        (lambda: (b"[" * 100_000 + b"]" * 100_000, {}), "nested too deeply"),
        (lambda: (request_json(), {}), "at least one tensor"),
        (lambda: (request_json(x_input([1, 2, 3, 4], datatype="FLOAT32")), {}), "unknown datatype 'FLOAT32'"),
        (lambda: (request_json(x_input([1, 2, 3, 4], shape=[1, -4])), {}), "ints >= 0"),
        (lambda: (request_json(x_input([1], shape=[1, True])), {}), "ints >= 0"),
        (lambda: (request_json(x_input([1], shape=[2**62, 2**62])), {}), "more than"),
        (lambda: (request_json(x_input([1], shape=[1] * 17)), {}), "17 dimensions"),
        (lambda: (request_json(x_input([1, 2, 3])), {}), "holds 3 values but shape \\[1, 4\\] needs 4"),
        (lambda: (request_json(x_input([[1, 2], [3]], shape=[4])), {}), "rectangular"),
        (lambda: (request_json(x_input([1.5, 2, 3, 4], datatype="INT32")), {}), "not INT32"),
        (lambda: (request_json(x_input([True, False, True, True], datatype="FP32")), {}), "not FP32"),
        (lambda: (request_json(x_input([300, 1, 0, 1], datatype="UINT8")), {}), "do not fit in UINT8"),
        (lambda: (request_json(x_input(["a", "b", "c", "d"])), {}), "holds text, which is not FP32"),
        (lambda: (request_json(x_input([1e6, 1, 2, 3], datatype="FP16")), {}), "too large for FP16"),
        (lambda: (request_json(x_input([1, 2, 3, 4], datatype="BYTES")), {}), "must be 4 strings"),
        (lambda: (request_json(x_input(_nested(40), shape=[1])), {}), "nested deeper than 32 levels"),
        (lambda: (request_json(x_input(shape=[1, 4])), {}), "neither 'data' nor a binary_data_size"),
        (lambda: (request_json(x_input([1, 2, 3, 4]), x_input([1, 2, 3, 4])), {}), "appears twice"),
        (lambda: (request_json(x_input([1, 2, 3, 4]), id=7), {}), "'id' must be a string"),
        (lambda: (request_json(x_input([1, 2, 3, 4]), parameters={"a": {"b": 1}}), {}), "string, number or boolean"),
        (lambda: (request_json(x_input([1, 2, 3, 4]), parameters={"timeout": -1}), {}), "timeout must be"),
        (lambda: (request_json(x_input([1, 2, 3, 4]), parameters={"timeout": 10**400}), {}), "timeout must be"),
        (lambda: (b'{"inputs": [{"data": [' + b"1" * 5000 + b"]}]}", {}), "more than 4300 digits, which no"),
        # a repeated key: json keeps the last, Triton's rapidjson (and many proxies) the first
        (lambda: (b'{"inputs": [], "inputs": []}', {}), "ambiguous: an object names the key 'inputs' twice"),
        (
            lambda: (request_json(x_input([1, 2, 3, 4])).replace(b'"name": "x"', b'"name": "x", "name": "z"'), {}),
            "names the key 'name' twice; send each key once",
        ),
        (lambda: (request_json(x_input([1, 2, 3, 4]), parameters={"user_id": 1.5}), {}), "user_id must be"),
        (
            lambda: (request_json(x_input([1, 2, 3, 4], parameters={"shared_memory_region": "r"})), {}),
            "shared memory extension is not supported",
        ),
        (
            lambda: (
                request_json(x_input([1, 2, 3, 4]), outputs=[{"name": "y", "parameters": {"classification": 2}}]),
                {},
            ),
            "classification extension is not supported",
        ),
        (lambda: (request_json(x_input([1, 2, 3, 4]), outputs=[{"name": "y"}, {"name": "y"}]), {}), "requested twice"),
        (lambda: binary_body(b"\0" * 15, 15), "needs 16 bytes, but binary_data_size is 15"),
        (lambda: binary_body(b"\0" * 16, 17), "runs past the end of the binary section"),
        (lambda: binary_body(b"\0" * 16, -1), "binary_data_size must be an int >= 0"),
        (
            lambda: binary_body(b"\0" * 20, 16),
            "the binary section has 20 bytes but the inputs' binary_data_size add up to 16",
        ),
        (lambda: binary_body(struct.pack("<I", 9) + b"abc", 7, shape=[1], datatype="BYTES"), "runs past its data"),
        (lambda: binary_body(struct.pack("<I", 2) + b"\xff\xfe", 6, shape=[1], datatype="BYTES"), "not UTF-8"),
        (
            lambda: binary_body(struct.pack("<I", 1) + b"a", 5, shape=[2], datatype="BYTES"),
            "ends before its 2 elements",
        ),
        (lambda: binary_body(struct.pack("<I", 1) + b"ab", 6, shape=[1], datatype="BYTES"), "1 bytes left over"),
        (lambda: (request_json(x_input([1, 2, 3, 4])), {v2.HEADER_LENGTH: "x"}), "must be a number of bytes"),
        (lambda: (request_json(x_input([1, 2, 3, 4])), {v2.HEADER_LENGTH: "99999"}), "outside the body"),
        (lambda: (b" " * (64 * 2**20 + 1), {}), "more than the 67108864 allowed"),
    ],
)
def test_hostile_requests_get_a_typed_error_that_says_what_to_fix(
    make: Callable[[], tuple[bytes, dict[str, str]]], message: str
) -> None:
    body, headers = make()
    with pytest.raises(inprocserve.InvalidInputError, match=message):
        v2.decode_infer_request(body, headers)


def _nested(depth: int) -> Any:
    value: Any = 1.0
    for _ in range(depth):
        value = [value]
    return value


def test_limits_are_configurable_and_validated() -> None:
    limits = v2.Limits(max_elements=10, max_tensors=1, max_json_depth=1, max_body_bytes=400)
    with pytest.raises(inprocserve.InvalidInputError, match="more than 10 tensor elements"):
        v2.decode_infer_request(request_json(x_input([0] * 12, shape=[3, 4])), {}, limits=limits)
    with pytest.raises(inprocserve.InvalidInputError, match="2 inputs, more than the 1 allowed"):
        v2.decode_infer_request(request_json(x_input([0] * 4), {**x_input([0] * 4), "name": "z"}), {}, limits=limits)
    with pytest.raises(inprocserve.InvalidInputError, match="nested deeper than 1"):
        v2.decode_infer_request(request_json(x_input([[0] * 4])), {}, limits=limits)
    assert v2.decode_infer_request(request_json(x_input([0] * 4)), {}, limits=limits).inputs["x"].shape == (1, 4)
    with pytest.raises(inprocserve.ConfigurationError, match="max_elements must be an int >= 1"):
        v2.Limits(max_elements=0)


# -- endpoints against a real server --------------------------------------------------------------------------------


def build_text_model() -> Any:
    """``echo = Identity(text)`` on a string tensor: BYTES in, BYTES out."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["echo"])],
        "text",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [helper.make_tensor_value_info("echo", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.fixture
def served(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    save_model(build_add_model(), repository, "add", 1)
    save_model(build_text_model(), repository, "text", 1)
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    return make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))


def call(
    endpoints: v2.Endpoints, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None, **kw: Any
) -> tuple[int, Any, v2.Response]:
    stream = memoryview(body)
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = bytes(stream[position : position + size])
        position += len(chunk)
        return chunk

    response = endpoints.handle(method, path, headers or {}, read, **kw)
    if response.headers.get("Content-Type") == "application/json":
        return response.status, json.loads(response.body), response
    return response.status, None, response


def test_metadata_health_and_readiness(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served, required_models=["scale", "add"])
    assert call(endpoints, "GET", "/v2")[1]["extensions"] == ["binary_tensor_data", "parameters"]
    assert call(endpoints, "GET", "/v2/health/live")[:2] == (200, {"live": True})
    assert call(endpoints, "GET", "/v2/health/ready")[:2] == (200, {"ready": True})
    assert call(endpoints, "GET", "/v2/models/add")[1] == {
        "name": "add",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [
            {"name": "a", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "b", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "n", "datatype": "INT64", "shape": [-1, 1]},
        ],
        "outputs": [
            {"name": "total", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "count", "datatype": "INT64", "shape": [-1, 1]},
        ],
    }
    assert call(endpoints, "GET", "/v2/models/scale/versions/1")[1]["versions"] == ["1", "2"]
    assert call(endpoints, "GET", "/v2/models/scale/versions/1/ready")[:2] == (
        200,
        {"name": "scale", "version": "1", "ready": True},
    )
    status, document, _ = call(endpoints, "GET", "/v2/models/broken/ready")
    assert status == 503 and document["ready"] is False and "model 'broken' is not ready" in document["error"]
    status, document, _ = call(v2.Endpoints(lambda: served), "GET", "/v2/health/ready")
    assert status == 503 and "broken" in document["error"]
    status, document, _ = call(endpoints, "GET", "/v2/models/broken/versions/1/ready")
    assert status == 503 and "cannot load" in document["error"]
    for path in (
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/scale/versions/9",
        "/v2/models/scale/versions/9/ready",
        "/v2/models/scale/x",
        "/v2/models",
        "/v1/models/scale",
    ):
        status, document, _ = call(endpoints, "GET", path)
        assert status == 404 and set(document) == {"error"}, path
    assert call(endpoints, "GET", "/v2/models/scale/versions/one")[0] == 400
    status, _, response = call(endpoints, "DELETE", "/v2/models/scale")
    assert status == 405 and response.headers["Allow"] == "GET, HEAD, OPTIONS"
    assert call(endpoints, "GET", "/v2/models/scale/infer")[0] == 405


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_answers_as_predict_does(served: inprocserve.Server, binary: bool) -> None:
    endpoints = v2.Endpoints(lambda: served)
    inputs = {
        "a": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b": np.ones((2, 3), np.float32),
        "n": np.array([[1], [5]]),
    }
    body, headers = v2.encode_infer_request(inputs, binary=binary, binary_output=binary, request_id="abc")
    status, _, response = call(endpoints, "POST", "/v2/models/add/infer", body, headers)
    assert status == 200
    decoded = v2.decode_infer_response(response.body, response.headers)
    direct = served.predict("add", inputs)
    assert decoded.id == "abc" and decoded.model_version == "1"
    assert decoded.parameters["inprocserve_variant"] == "default"
    for name in ("total", "count"):
        assert decoded.outputs[name].dtype == direct[name].dtype
        np.testing.assert_array_equal(decoded.outputs[name], direct[name])


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_text_goes_in_and_out_as_bytes(served: inprocserve.Server, binary: bool) -> None:
    body, headers = v2.encode_infer_request({"text": np.array(["héllo", ""], dtype=object)}, binary=binary)
    status, _, response = call(v2.Endpoints(lambda: served), "POST", "/v2/models/text/infer", body, headers)
    assert status == 200
    assert v2.decode_infer_response(response.body, response.headers).outputs["echo"].tolist() == ["héllo", ""]


def test_bytes_that_are_not_text_go_binary_and_are_refused_as_json() -> None:
    # JSON carries BYTES as text: bytes that are not UTF-8 would be sent with U+FFFD for each bad byte.
    image = np.array([b"\xff\xd8\xff\xe0"], dtype=object)
    body, _ = v2.encode_infer_request({"image": image}, binary=True)
    assert body.endswith(struct.pack("<I", 4) + b"\xff\xd8\xff\xe0")
    with pytest.raises(
        inprocserve.InvalidInputError, match="input 'image': BYTES element #0 is bytes that are not UTF-8"
    ):
        v2.encode_infer_request({"image": image}, binary=False)
    body, _ = v2.encode_infer_request({"text": np.array(["x", "héllo".encode()], dtype=object)}, binary=False)
    assert json.loads(body)["inputs"][0]["data"] == ["x", "héllo"]


@pytest.mark.parametrize(
    ("path", "headers", "answer", "message"),
    [
        ("/v2/models/scale/versions/\u00b2/infer", {}, 400, "version must be a positive integer"),  # isdigit() is True
        # more digits than int() takes: said so, not clamped to a version of 10**18 that is not served
        ("/v2/models/scale/versions/" + "9" * 5000 + "/infer", {}, 400, "positive integer of at most 18 digits"),
        ("/v2/models/scale/infer", {"Content-Length": "9" * 5000}, 400, "over the .* allowed"),
    ],
)
def test_hostile_paths_and_headers_get_a_4xx(
    served: inprocserve.Server, path: str, headers: dict[str, str], answer: int, message: str
) -> None:
    body, encoded = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    status, document, _ = call(v2.Endpoints(lambda: served), "POST", path, body, {**encoded, **headers})
    assert status == answer and re.search(message, document["error"])


def test_a_content_length_that_is_no_number_is_refused_by_name(served: inprocserve.Server) -> None:
    """It was ignored (the body read up to the limit), so a server that passed "-1" on had the client told its
    JSON was malformed; the Django plug-in already refused it, as HTTP does."""
    body, encoded = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    for length in ("\u00b2", "-1", "+12", "abc"):
        headers = {**encoded, "Content-Length": length}
        status, document, _ = call(v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", body, headers)
        assert (status, document) == (
            400,
            {"error": f"Content-Length {length!r} is not a number of bytes; send the body's length"},
        )


def test_a_version_in_the_path_pins_it(served: inprocserve.Server) -> None:
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    for path, factor in (("/v2/models/scale/versions/1/infer", 1.0), ("/v2/models/scale/infer", 2.0)):
        _, _, response = call(v2.Endpoints(lambda: served), "POST", path, body, headers)
        assert v2.decode_infer_response(response.body, response.headers).outputs["y"].tolist() == [[factor] * 4]


def test_bad_requests_to_a_real_model_are_400s_that_say_why(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served)
    cases = {
        "input 'x' was sent as BYTES, but the model takes FP32": {"x": np.array([["1"] * 4], dtype=object)},
        "input 'x': expected size 4 on axis 1": {"x": np.ones((1, 3), np.float32)},
        "missing input\\(s\\) 'x'": {"z": np.ones((1, 4), np.float32)},
    }
    for message, inputs in cases.items():
        body, headers = v2.encode_infer_request(inputs)
        status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", body, headers)
        assert status == 400 and set(document) == {"error"}
        assert re.search(message, document["error"]), document
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)}, outputs=["nope"])
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", body, headers)
    assert status == 400 and "'nope' is not an output of model 'scale'" in document["error"]


def test_compressed_bodies_are_inflated_within_the_cap(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served, limits=v2.Limits(max_body_bytes=10_000))
    body, headers = v2.encode_infer_request({"x": np.ones((2, 4), np.float32)})
    # (x-gzip: the older name, which RFC 9110 section 8.4.1.3 asks recipients to take as gzip)
    raw = zlib.compressobj(wbits=-15)  # deflate without zlib's header: some clients send it for "deflate"
    raw_deflate = raw.compress(body) + raw.flush()
    packings = (
        ("gzip", gzip.compress(body)),
        ("deflate", zlib.compress(body)),
        ("deflate", raw_deflate),
        ("deflate", gzip.compress(body)),  # gzip under the wrong name: taken, as before
        ("x-gzip", gzip.compress(body)),
    )
    for encoding, packed in packings:
        status, _, response = call(
            endpoints, "POST", "/v2/models/scale/infer", packed, {**headers, "Content-Encoding": encoding}
        )
        assert status == 200, response.body
    bomb = gzip.compress(b" " * 10_000_000)  # 10 MB of JSON whitespace in about 10 kB
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 400 and "over the 10000 allowed" in document["error"]
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", b"xx", {"Content-Encoding": "gzip"})
    assert status == 400 and "cannot be decompressed" in document["error"]
    cut = raw_deflate[: len(raw_deflate) // 2]
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", cut, {"Content-Encoding": "deflate"})
    assert status == 400 and "the deflate request body is truncated" in document["error"]
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", body, {"Content-Encoding": "br"})
    assert status == 400 and "'br' is not supported" in document["error"]


def test_an_oversized_body_is_refused_before_it_is_read(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served, limits=v2.Limits(max_body_bytes=100))

    def never(size: int) -> bytes:
        raise AssertionError("the body was read")

    response = endpoints.handle("POST", "/v2/models/scale/infer", {"content-length": "101"}, never)
    assert response.status == 400 and b"over the 100 allowed" in response.body
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", b" " * 5000)  # no Content-Length
    assert status == 400 and "5000" not in document["error"] and "over the 100 allowed" in document["error"]


def test_json_over_its_own_cap_is_refused_before_it_is_parsed_and_binary_tensors_are_not_held_to_it() -> None:
    limits = v2.Limits(max_json_bytes=200)
    unparsable = b"{" + b" " * 300  # (malformed JSON: a parse would have said so, not the cap)
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"JSON is 301 bytes or more, over the 200 allowed \(Limits"
    ):
        v2.decode_infer_request(unparsable, {}, limits=limits)
    data = np.arange(400, dtype=np.float32).reshape(100, 4)
    body, headers = binary_body(data.tobytes(), data.nbytes, shape=data.shape)
    assert len(body) > 1600
    assert np.array_equal(v2.decode_infer_request(body, headers, limits=limits).inputs["x"], data)
    with pytest.raises(inprocserve.InvalidInputError, match="binary data"):
        v2.decode_infer_request(request_json(x_input(data.ravel().tolist(), shape=data.shape)), {}, limits=limits)
    with pytest.raises(inprocserve.ConfigurationError, match="max_json_bytes must be an int >= 1"):
        v2.Limits(max_json_bytes=0)


def test_a_json_body_over_the_json_cap_is_refused_before_it_is_read(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served, limits=v2.Limits(max_json_bytes=200))

    def never(size: int) -> bytes:
        raise AssertionError("the body was read")

    response = endpoints.handle("POST", "/v2/models/scale/infer", {"content-length": "201"}, never)
    assert response.status == 400 and b"over the 200 allowed (Limits.max_json_bytes)" in response.body
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", b" " * 5000)  # no Content-Length
    assert status == 400 and "over the 200 allowed (Limits.max_json_bytes)" in document["error"]
    bomb = gzip.compress(b" " * 10_000)
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", bomb, {"Content-Encoding": "gzip"})
    assert status == 400 and "over the 200 allowed (Limits.max_json_bytes)" in document["error"]
    x = np.ones((32, 4), np.float32)
    body, headers = v2.encode_infer_request({"x": x}, binary=True)
    assert len(body) > 200 and int(headers[v2.HEADER_LENGTH]) <= 200
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", body, headers)
    assert status == 200, document


def test_deadlines_come_from_the_app_and_the_timeout_parameter(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served)
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    status, document, _ = call(endpoints, "POST", "/v2/models/scale/infer", body, headers, budget_s=lambda: -0.5)
    assert status == 504 and "time budget was spent" in document["error"]
    generous = call(endpoints, "POST", "/v2/models/scale/infer", body, headers, budget_s=lambda: 30.0)
    assert generous[0] == 200


def test_the_user_id_parameter_routes_when_the_app_knows_no_user(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rollout = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
    )
    config = inprocserve.ModelConfig(rollout=rollout, version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository, models={"scale": config})
    x = np.ones((1, 4), np.float32)
    variants = {user: server.predict("scale", x, context={"user_id": user}).variant for user in map(str, range(64))}
    canary = next(user for user, variant in variants.items() if variant == "canary")
    stable = next(user for user, variant in variants.items() if variant != "canary")
    endpoints = v2.Endpoints(lambda: server)

    def variant(user_parameter: str, app_context: dict[str, str]) -> str:
        body, headers = v2.encode_infer_request({"x": x}, parameters={"user_id": user_parameter})
        _, _, response = call(endpoints, "POST", "/v2/models/scale/infer", body, headers, context=lambda: app_context)
        return str(v2.decode_infer_response(response.body, response.headers).parameters["inprocserve_variant"])

    assert variant(canary, {}) == "canary" and variant(stable, {}) == variants[stable]
    assert variant(canary, {"user_id": stable}) == variants[stable]  # the app's own user wins


def test_a_closed_server_answers_503(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served)
    served.close()
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    status, document, response = call(endpoints, "POST", "/v2/models/scale/infer", body, headers)
    assert status == 503 and set(document) == {"error"} and "closed" in document["error"]
    status, document, response = call(endpoints, "GET", "/v2/health/ready")
    assert status == 503 and response.headers["Retry-After"] == "1" and "closed" in document["error"]


def test_concurrent_protocol_requests_are_coalesced_and_their_timeouts_kept(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository)
    endpoints = v2.Endpoints(lambda: server)
    # the only session is held until five threads queued (a busy run ending before them failed this under load)
    blocker = hold_session(server, rows=4096)
    before = version_status(server, "busy")["batches_run"]
    answers: dict[int, tuple[int, Any, v2.Response]] = {}

    def send(index: int, parameters: dict[str, Any] | None = None) -> None:
        body, headers = v2.encode_infer_request(busy_inputs(1, seed=index), parameters=parameters)
        answers[index] = call(endpoints, "POST", "/v2/models/busy/infer", body, headers)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    wait_until(lambda: version_status(server, "busy")["queued_rows"] >= 4)
    send(4, {"timeout": 1000})  # 1 ms, spent while it waits behind the busy session
    assert not blocker.done(), "the held blocker was let go (at_most_s) before the 1 ms request was answered"
    blocker.release()
    for thread in threads:
        thread.join(timeout=60)
    batches = version_status(server, "busy")["batches_run"] - before
    assert answers[4][0] == 504 and list(answers[4][1]) == ["error"]
    for index in range(4):
        status, _, response = answers[index]
        assert status == 200
        expected = server.predict("busy", busy_inputs(1, seed=index))["y"]
        outputs = v2.decode_infer_response(response.body, response.headers).outputs
        np.testing.assert_allclose(outputs["y"], expected, rtol=1e-5)
    assert batches <= 2, f"the four queued requests should run as one batch (plus the blocker), ran {batches}"


WEIRD_VALUES: list[Any] = [None, True, -1, 0, 2**70, 1.5, "", "x", "BYTES", [], [[]], [None], {}, {"a": []}, [1, "a"]]
WEIRD_VALUES += [[[1, 2], [3]], 1e308, -1e308]


def _paths(document: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [path]
    items = (
        document.items() if isinstance(document, dict) else enumerate(document) if isinstance(document, list) else ()
    )
    for key, value in items:
        found += _paths(value, (*path, key))
    return found


def test_mangled_requests_only_ever_raise_invalid_input() -> None:
    """Seeded fuzzing, bounded: valid requests with a JSON node replaced by a strange value, or with bytes
    flipped, dropped or inserted. Every outcome is a decoded request or an InvalidInputError, never a crash
    (and, with warnings as errors, never a numpy overflow warning)."""
    rng = np.random.default_rng(5)
    arrays = [np.ones((2, 3), np.float32), np.array(["ab", "c"], dtype=object), np.array([True, False])]
    arrays += [np.arange(4, dtype=np.int64), np.ones((2, 2), np.float16)]
    bases = []
    for binary in (True, False):
        for array in arrays:
            body, headers = v2.encode_infer_request(
                {"t": array, "u": np.zeros(2, np.uint8)}, binary=binary, outputs=["y"], parameters={"timeout": 5}
            )
            length = int(headers.get(v2.HEADER_LENGTH, len(body)))
            bases.append((json.loads(body[:length]), body[length:], binary))
    for _ in range(1500):
        document, tail, binary = bases[rng.integers(len(bases))]
        document = json.loads(json.dumps(document))
        path = _paths(document)[1:][rng.integers(len(_paths(document)) - 1)]
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = json.loads(json.dumps(WEIRD_VALUES[rng.integers(len(WEIRD_VALUES))]))
        head = json.dumps(document).encode()
        body = bytearray(head + tail)
        if rng.random() < 0.3:
            position = int(rng.integers(len(body)))
            body[position : position + 1] = bytes(rng.integers(0, 256, int(rng.integers(0, 3)), dtype=np.uint8))
        try:
            v2.decode_infer_request(bytes(body), {v2.HEADER_LENGTH: str(len(head))} if binary else {})
        except inprocserve.InvalidInputError:
            pass


def test_a_null_in_an_answer_s_float_data_is_nan_as_mlserver_writes_it() -> None:
    # MLServer (orjson) and KServe's Python server write NaN as null: JSON has no number for it.
    document = {
        "model_name": "m",
        "outputs": [
            {"name": "y", "datatype": "FP32", "shape": [2, 2], "data": [[None, 2.0], [3, None]]},
            {"name": "n", "datatype": "INT64", "shape": [1], "data": [None]},
        ],
    }
    with pytest.raises(inprocserve.InvalidInputError, match=r"output 'n': 'data' holds null \(a missing value"):
        v2.decode_infer_response(json.dumps(document).encode(), {})
    document["outputs"].pop()
    y = v2.decode_infer_response(json.dumps(document).encode(), {}).outputs["y"]
    assert y.dtype == np.float32 and np.isnan(y[0, 0]) and np.isnan(y[1, 1]) and y[0, 1] == 2.0 and y[1, 0] == 3.0


@pytest.mark.parametrize("data", [[None, 2.0], [True, None], ["1.5", None]])
def test_a_null_in_a_request_is_refused_as_a_missing_value(data: list[Any]) -> None:
    body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": data}]}).encode()
    with pytest.raises(inprocserve.InvalidInputError, match=r"input 'x': 'data' holds null \(a missing value"):
        v2.decode_infer_request(body, {})


@pytest.mark.parametrize("data", [[None, 10**400], [1.0, 10**400]])
def test_a_number_no_float_holds_in_an_answer_is_refused_with_the_library_s_error(data: list[Any]) -> None:
    document = {"outputs": [{"name": "y", "datatype": "FP32", "shape": [2], "data": data}]}
    with pytest.raises(inprocserve.InvalidInputError, match="output 'y'"):  # (an OverflowError escaped)
        v2.decode_infer_response(json.dumps(document).encode(), {})


@pytest.mark.parametrize(
    ("elements", "problem"),
    [
        (struct.pack("<I", 2) + b"\xff\xfe", "output 'label': BYTES element #0 is not UTF-8 text"),
        (struct.pack("<I", 9) + b"ab", "output 'label': a BYTES element of 9 bytes runs past its data"),
        (struct.pack("<I", 1) + b"ab", "output 'label': 1 bytes left over after its 1 BYTES elements"),
    ],
)
def test_errors_in_an_answer_s_binary_text_name_the_output(elements: bytes, problem: str) -> None:
    header = json.dumps(
        {
            "outputs": [
                {"name": "label", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": len(elements)}}
            ]
        }
    ).encode()
    headers = {"Inference-Header-Content-Length": str(len(header))}
    with pytest.raises(inprocserve.InvalidInputError, match=re.escape(problem)):
        v2.decode_infer_response(header + elements, headers)


def test_bytes_that_json_cannot_carry_are_refused_not_replaced() -> None:
    # As JSON, each byte that is not UTF-8 became U+FFFD: two different images were sent as the same text.
    images = np.array([b"\xff\xd8\xff\xe0", b"\xfe\xd9\xfa\xe1"], dtype=object)
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"input .img.: BYTES element #0 is bytes that are not UTF-8"
    ):
        v2.encode_infer_request({"img": images}, binary=False)
    body, _ = v2.encode_infer_request({"img": images}, binary=True)  # binary tensors carry any bytes
    assert body.endswith(b"\x04\x00\x00\x00\xff\xd8\xff\xe0\x04\x00\x00\x00\xfe\xd9\xfa\xe1")
    body, _ = v2.encode_infer_request({"t": np.array([b"t\xc3\xa9xt", "x"], dtype=object)}, binary=False)
    assert json.loads(body)["inputs"][0]["data"] == ["t\u00e9xt", "x"]  # UTF-8 bytes: their text, as it is
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"output .y.: BYTES element #1 is bytes that are not UTF-8"
    ):
        v2.encode_infer_response({"y": np.array([b"ok", b"\xff"], dtype=object)}, binary=False, model_name="m")


@pytest.mark.parametrize("refused", ["shape", "budget-spent"])
def test_a_refused_infer_request_leaves_no_reference_cycle(served: inprocserve.Server, refused: str) -> None:
    """An infer request refused for its tensors' shape (400), or whose time budget was spent (504), left its
    error in a reference cycle with the frames that raised it (a local held it), which held the request's
    body and decoded inputs until the collector's next full pass: under a stream of such requests, a
    process's memory grew by every refused body between passes."""
    import gc

    endpoints = v2.Endpoints(lambda: served)
    width = 5 if refused == "shape" else 4
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [2, width], "data": [1.0] * 2 * width}]})
    budget = {"budget_s": lambda: 0.0} if refused == "budget-spent" else {}
    expected = 400 if refused == "shape" else 504
    assert call(endpoints, "POST", "/v2/models/scale/infer", body.encode(), **budget)[0] == expected
    gc.collect()
    gc.disable()
    try:
        assert call(endpoints, "POST", "/v2/models/scale/infer", body.encode(), **budget)[0] == expected
        assert gc.collect() == 0  # (nothing left for the collector: freed as the answer was made)
    finally:
        gc.enable()


@pytest.mark.parametrize("datatype", ["FP32", "FP64"])
def test_large_floats_as_javascript_and_go_write_them_are_numbers(datatype: str) -> None:
    # JSON.stringify([1e20, 2.5]) is '[100000000000000000000,2.5]' (so is Go's encoding/json below 1e21): Python
    # reads an int past uint64, which numpy cannot hold; it was refused as "values of mixed or unsupported types"
    body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"%s","data":[100000000000000000000,2.5]}]}'
    x = v2.decode_infer_request(body % datatype.encode(), {}).inputs["x"]
    assert x.dtype == v2.DATATYPES[datatype] and x.tolist() == [x.dtype.type(1e20), 2.5]


@pytest.mark.parametrize(("datatype", "digits"), [("FP16", 21), ("FP32", 40), ("FP64", 400)])
def test_an_integer_past_the_float_datatype_is_too_large_not_a_type_mistake(datatype: str, digits: int) -> None:
    body = b'{"inputs":[{"name":"x","shape":[2],"datatype":"%s","data":[%s,1]}]}' % (datatype.encode(), b"9" * digits)
    with pytest.raises(inprocserve.InvalidInputError, match=f"input 'x': values are too large for {datatype}"):
        v2.decode_infer_request(body, {})


@pytest.mark.parametrize(("datatype", "literal"), [("FP32", "1e400"), ("FP64", "-1e400"), ("FP16", "2E999")])
def test_a_literal_past_any_float_is_refused_not_read_as_infinity(datatype: str, literal: str) -> None:
    # Python's json reads 1e400 as inf: it was served as Infinity, while 1e39 (past FP32 only) was refused
    body = json.dumps({"inputs": [x_input(["LITERAL", 1, 2], shape=[3], datatype=datatype)]})
    with pytest.raises(inprocserve.InvalidInputError, match="input 'x': 'data' holds a number too large for any"):
        v2.decode_infer_request(body.replace('"LITERAL"', literal).encode(), {})


def test_the_infinity_tokens_still_mean_infinity() -> None:
    # (each token accounts for one infinite value, whichever tensor holds it)
    body = b"""{"id": "Infinity", "inputs": [
        {"name": "a", "shape": [2], "datatype": "FP32", "data": [Infinity, -Infinity]},
        {"name": "b", "shape": [2], "datatype": "FP64", "data": [1e400, 1]}]}"""
    request = v2.decode_infer_request(body.replace(b"1e400", b"-Infinity"), {})
    assert request.inputs["a"].tolist() == [np.inf, -np.inf] and request.inputs["b"].tolist() == [-np.inf, 1]
    for words in (b'"x"', b'"Infinity"', b'"-Infinity, Infinity"'):
        # the word in a string is no token: an id or a parameter of "Infinity" let the 1e400 pass as infinity
        with pytest.raises(inprocserve.InvalidInputError, match="input 'b': 'data' holds a number too large"):
            v2.decode_infer_request(body.replace(b'"Infinity"', words), {})


@pytest.mark.parametrize(
    "body",
    [
        # an Infinity token elsewhere (a parameter of the request or of a tensor, another input) let it pass
        b'{"parameters": {"scale": Infinity}, '
        b'"inputs": [{"name": "b", "datatype": "FP32", "shape": [1], "data": [1e400]}]}',
        b'{"inputs": [{"name": "b", "datatype": "FP32", "shape": [1], "data": [1e400], '
        b'"parameters": {"p": -Infinity}}]}',
        b"""{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [Infinity]},
            {"name": "b", "datatype": "FP32", "shape": [2, 1], "data": [[1e400], [2]]}]}""",
    ],
)
def test_a_literal_past_any_float_is_refused_whatever_infinity_tokens_the_request_holds(body: bytes) -> None:
    with pytest.raises(inprocserve.InvalidInputError, match="input 'b': 'data' holds a number too large"):
        v2.decode_infer_request(body, {})


def test_the_input_whose_data_holds_a_literal_past_any_float_is_the_one_named() -> None:
    # (an infinity was matched to any token in the document: the error named the input with the token)
    body = b"""{"inputs": [{"name": "a", "datatype": "FP32", "shape": [1], "data": [1e400]},
        {"name": "b", "datatype": "FP32", "shape": [1], "data": [Infinity]}]}"""
    with pytest.raises(inprocserve.InvalidInputError, match="input 'a': 'data' holds a number too large"):
        v2.decode_infer_request(body, {})


@pytest.mark.parametrize(
    "parameters",
    [{"sequence_id": 7, "sequence_start": True, "sequence_end": False}, {"sequence_id": "abc"}, {"sequence_end": True}],
)
def test_a_request_of_a_sequence_is_refused_not_answered_without_its_state(parameters: dict[str, Any]) -> None:
    # tritonclient's infer(sequence_id=7, sequence_start=True) sends these; they were ignored, so a client of a
    # stateful model got answers computed without the sequence's state, while the docs promise a 400
    with pytest.raises(inprocserve.InvalidInputError, match="the sequence extension is not supported"):
        v2.decode_infer_request(request_json(x_input([1, 2, 3, 4]), parameters=parameters), {})
    stateless = {"sequence_id": 0, "sequence_start": False, "sequence_end": False}  # (what "no sequence" looks like)
    assert v2.decode_infer_request(request_json(x_input([1, 2, 3, 4]), parameters=stateless), {}).inputs["x"].size == 4


@pytest.mark.parametrize("binary", [True, False])
def test_decoding_a_long_text_answer_checks_in_with_its_caller_as_it_goes(binary: bool) -> None:
    # The remote backend stops decoding at its caller's deadline through ``checkpoint``: one row of a BYTES
    # output declared [-1, -1] fits any one-row batch, and 4 million such labels took 1.9 s to decode after a
    # 0.5 s deadline, since nothing asked the clock between the first element and the last.
    labels = np.array([["ab"] * 300_000], dtype=object)
    body, headers = v2.encode_infer_response({"label": labels}, binary=binary, model_name="m")
    calls: list[int] = []

    def checkpoint() -> None:
        calls.append(1)
        if len(calls) > 3:
            raise TimeoutError("the caller's deadline passed")

    with pytest.raises(TimeoutError):
        decode_checked_response(body, headers, checkpoint=checkpoint)
    calls.clear()
    decoded = decode_checked_response(body, headers, checkpoint=lambda: calls.append(1))
    assert decoded.outputs["label"].shape == (1, 300_000)
    assert len(calls) >= 300_000 // 65_536


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_parsing_a_long_json_answer_of_numbers_checks_in_with_its_caller_as_it_goes(dtype: type) -> None:
    # json.loads is one call that holds the GIL: a one-row answer of 10 million FP32 as JSON (a dynamic
    # non-batch axis) took 2 s to parse past a 0.5 s deadline, every other thread of the process stalled.
    row = np.arange(300_000).astype(dtype).reshape(1, -1)  # about 2 MB of JSON
    body, headers = v2.encode_infer_response({"y": row}, model_name="m")
    calls: list[int] = []

    def checkpoint() -> None:
        calls.append(1)
        if len(calls) > 3:  # (once before the parse, once before the output: the rest are the parse's)
            raise TimeoutError("the caller's deadline passed")

    with pytest.raises(TimeoutError):
        decode_checked_response(body, headers, checkpoint=checkpoint)
    decoded = decode_checked_response(body, headers, checkpoint=lambda: None)
    np.testing.assert_array_equal(decoded.outputs["y"], row)
    assert decoded.outputs["y"].dtype == dtype


def test_an_answer_of_an_empty_tensor_past_numpy_s_reach_is_an_invalid_answer() -> None:
    # a remote server's answer (the remote backend reads it with this codec): numpy cannot shape even an empty
    # array of [1, 0, 2**24, 2**24, 2**24], and its ValueError escaped as no error of the library's
    answer = {
        "model_name": "m",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [1, 0] + [2**24] * 3, "data": []}],
    }
    with pytest.raises(inprocserve.InvalidInputError, match="is empty, but its other sizes make more than 16777216"):
        v2.decode_infer_response(json.dumps(answer).encode(), {})


def test_a_large_json_answer_is_written_in_slices_not_a_python_number_per_element_at_once() -> None:
    # Written in one json.dumps, a JSON answer held a Python float per element, then its text, then its bytes,
    # in one call holding the GIL: 16 Mi FP32 outputs took 14 s and a 1.76 GiB peak for a 323 MB answer under
    # gunicorn, every other thread of the worker stalled. Written in slices, it holds about its text twice.
    answer = {"y": np.random.default_rng(0).random((2, 1 << 19)).astype(np.float32)}
    tracemalloc.start()
    try:
        body, headers = v2.encode_infer_response(answer, model_name="m", model_version=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * len(body), (peak, len(body))
    decoded = v2.decode_infer_response(body, headers)
    assert np.array_equal(decoded.outputs["y"], answer["y"]) and decoded.model_version == "1"


def _python_lines_to_decode(body: bytes) -> int:
    """How many lines of Python decoding ``body`` runs (the same on any machine), whether it is refused or not."""
    lines = 0

    def trace(frame: Any, event: str, arg: Any) -> Any:
        nonlocal lines
        lines += event == "line"
        return trace

    sys.settrace(trace)
    try:
        v2.decode_infer_request(body, {})
    except inprocserve.InvalidInputError:
        pass
    finally:
        sys.settrace(None)
    return lines


_LONG_LIST = b'"tags":[%s0],' % (b"0," * (1 << 14))


@pytest.mark.parametrize(
    ("plain", "hostile"),
    [
        # an infinity: the whole text was parsed again, a hook per number
        ((b"id", b"", b"2.5"), (b"id", b"", b"Infinity")),
        # the word true anywhere: every number was walked in Python, one by one
        ((b"id", b"", b"2.5"), (b"true", b"", b"2.5")),
        # and so was a long list under a key the protocol does not have
        ((b"id", _LONG_LIST, b"2.5"), (b"true", _LONG_LIST, b"2.5")),
        # a float written as an integer past uint64 (as JavaScript writes 1e20): each number converted in Python
        ((b"id", b"", b"2.5"), (b"id", b"", b"100000000000000000000")),
    ],
)
def test_an_infinity_or_the_word_true_costs_a_large_request_no_python_step_per_number(
    plain: tuple[bytes, bytes, bytes], hostile: tuple[bytes, bytes, bytes]
) -> None:
    # 16 Mi FP32 in a 64 MB body took 6 s to decode; with one Infinity among them 24 s and 0.6 GiB more, with
    # "id": "true" 18 s, the GIL held throughout: any client could make any large request cost several times more.
    # Counted in lines of Python run (the same on any machine): the decoding of the plain request runs a few
    # hundred, whatever its size.
    rows = 1 << 14
    body = b'{"id":"%s",%s"inputs":[{"name":"x","datatype":"FP32","shape":[%d,2],"data":[%s1.5,%s]}]}'

    def python_lines(request_id: bytes, extra: bytes, last: bytes) -> int:
        return _python_lines_to_decode(body % (request_id, extra, rows + 1, b"1.5,2.5," * rows, last))

    assert python_lines(*hostile) < python_lines(*plain) + 1000 < 2 * rows


def test_true_among_numbers_is_refused_beside_a_long_list_under_another_key() -> None:
    # (past a few thousand values outside the data, the data itself is looked at for bools)
    body = b'{%s"inputs":[{"name":"x","datatype":"FP32","shape":[2],"data":[1.5,true]}]}' % _LONG_LIST
    with pytest.raises(inprocserve.InvalidInputError, match="input 'x': 'data' mixes true/false with numbers"):
        v2.decode_infer_request(body, {})


def test_a_float_among_many_integers_is_refused_without_a_python_step_per_number() -> None:
    # (each value's type was looked at in Python: one 1.5 after 12 Mi INT32 took the refusal 1.8 s more)
    rows = 1 << 15
    body = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[%d],"data":[%s%s]}]}'
    with pytest.raises(inprocserve.InvalidInputError, match="input 'x': 'data' holds numbers with a fraction"):
        v2.decode_infer_request(body % (rows + 1, b"1," * rows, b"1.5"), {})
    assert (
        _python_lines_to_decode(body % (rows + 1, b"1," * rows, b"1.5"))
        < _python_lines_to_decode(body % (rows + 1, b"1," * rows, b"2")) + 1000
    )


def test_an_object_among_many_integers_is_refused_without_a_python_step_per_number() -> None:
    # (what the data holds was told by looking at each value's type in Python: a step per number, the refusal of
    # a body of millions a good part longer than its decoding)
    rows = 1 << 15
    body = b'{"inputs":[{"name":"x","datatype":"INT32","shape":[%d],"data":[%s%s]}]}'
    with pytest.raises(inprocserve.InvalidInputError, match="input 'x': 'data' holds values of mixed or unsupported"):
        v2.decode_infer_request(body % (rows + 1, b"1," * rows, b"{}"), {})
    assert (
        _python_lines_to_decode(body % (rows + 1, b"1," * rows, b"{}"))
        < _python_lines_to_decode(body % (rows + 1, b"1," * rows, b"2")) + 1000
    )


@pytest.mark.parametrize(
    ("extra", "shown"),
    [
        ({"parameters": {"binary_data_output": None}}, "binary_data_output must be true or false, got null"),
        ({"parameters": {"binary_data_output": "true"}}, 'binary_data_output must be true or false, got "true"'),
        ({"parameters": {"timeout": True}}, "timeout must be a number of microseconds >= 0, got true"),
        ({"parameters": {"user_id": False}}, "user_id must be a string or an integer, got false"),
        (
            {"outputs": [{"name": "y", "parameters": {"binary_data": "no"}}]},
            'binary_data must be true or false, got "no"',
        ),
    ],
)
def test_a_refused_json_value_is_shown_as_json(extra: dict[str, Any], shown: str) -> None:
    # A JavaScript client that sent "binary_data_output": null was told "got None", Python's word for a value
    # it never wrote (and true, false, strings came back as True, False, 'true').
    with pytest.raises(inprocserve.InvalidInputError, match=re.escape(shown) + "$"):
        v2.decode_infer_request(request_json(x_input([1, 2, 3, 4]), **extra), {})


def test_a_refused_shape_is_shown_as_json() -> None:
    with pytest.raises(inprocserve.InvalidInputError, match=re.escape("got [1, null, true]")):
        v2.decode_infer_request(request_json(x_input([1, 2, 3, 4], shape=[1, None, True])), {})


def build_two_output_model() -> Any:
    """y = x and z = x: an earlier version that still has an output its successor dropped."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [None, 4]) for name in ("y", "z")]
    nodes = [helper.make_node("Identity", ["x"], [name]) for name in ("y", "z")]
    graph = helper.make_graph(nodes, "two_outputs", [x], outputs)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_output_only_a_version_that_does_not_answer_has_is_refused_before_the_model_runs(
    repository: Path, make_server: ServerFactory
) -> None:
    # Version 1 (loaded, version_policy "all", but not routed: the latest answers) still has output z, which
    # version 2 dropped: a request for z passed the early check (some loaded version has it), version 2 ran, and
    # the 400 came after the run, with its cost and a latency recorded, where the docs promise it before.
    save_model(build_two_output_model(), repository, "m", 1)
    save_model(build_scale_model(2.0), repository, "m", 2)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    endpoints = v2.Endpoints(lambda: server)
    body = request_json(x_input([1, 2, 3, 4]), outputs=[{"name": "z"}])
    status, document, _ = call(endpoints, "POST", "/v2/models/m/infer", body)
    assert status == 400 and "output 'z' is not an output of model 'm' (version 2 answers" in document["error"]
    assert "pin version 1" in document["error"]
    assert server.status()["models"]["m"]["versions"]["2"]["rows_run"] == 0  # refused before the model ran
    status, document, _ = call(endpoints, "POST", "/v2/models/m/versions/1/infer", body)  # pinned: answered
    assert status == 200 and [output["name"] for output in document["outputs"]] == ["z"]


def test_under_a_canary_an_output_only_the_other_version_has_is_refused_naming_the_version_that_answered(
    repository: Path, make_server: ServerFactory
) -> None:
    # Under a canary the version is the request's, decided as it runs: a client asking for z, which only the
    # canary has, was refused by the stable version's answer as "not an output of model 'm'" while the same
    # request from another user was answered, with nothing saying which version answered or what to pin.
    save_model(build_scale_model(2.0), repository, "m", 1)
    save_model(build_two_output_model(), repository, "m", 2)
    server = make_server(repository, config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 0}))
    endpoints = v2.Endpoints(lambda: server)
    body = request_json(x_input([1, 2, 3, 4]), outputs=[{"name": "z"}])
    status, document, _ = call(endpoints, "POST", "/v2/models/m/infer", body)
    assert status == 400 and "model 'm' version 1, which answered this request" in document["error"]
    assert "pin version 2, which has it" in document["error"]


@pytest.mark.parametrize(
    ("data", "datatype", "said"),
    [
        ([None, 2.0], "FP32", "null (a missing value: JSON has no NaN; send such a tensor in binary)"),
        ([1, None], "INT64", "null (a missing value"),
        ([1.5, 2], "INT64", "numbers with a fraction or an exponent (1.5, 2.0, 1e3): send whole numbers"),
        ([2.0, 3.0], "INT32", "numbers with a fraction or an exponent"),
        ([True, False], "FP32", "true/false, which is not FP32"),
        (["a", "b"], "FP32", "text, which is not FP32"),
        ([[1], "b"], "FP32", "'data' must be a list of numbers"),
    ],
)
def test_a_refused_value_is_named_so_the_client_knows_what_to_send(data: list[Any], datatype: str, said: str) -> None:
    """A ``null`` (KServe's client writes NaN so) and a float in an integer tensor both read "values of mixed
    or unsupported types", which named neither."""
    body = json.dumps({"inputs": [{"name": "x", "shape": [2], "datatype": datatype, "data": data}]}).encode()
    with pytest.raises(inprocserve.InvalidInputError) as refused:
        v2.decode_infer_request(body, {})
    assert said in str(refused.value)
