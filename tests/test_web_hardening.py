"""Hardening of the protocol endpoints and the web helpers against hostile or mistaken requests, with real
servers and real models: no file paths to unauthenticated callers, tensor headers checked against the
model before any data is decoded, strict JSON and gzip rules, and admin bodies that never cause a 500."""

from __future__ import annotations

import gzip
import io
import json
import logging
import re
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rapidjson

import inprocserve
import inprocserve._model
from inprocserve import v2, web
from inprocserve._control import CONTROL_FILENAME
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .conftest import ServerFactory
from .test_remote_retries import Scripted

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


def call(endpoints: v2.Endpoints, method: str, path: str, body: bytes = b"", headers: Any = None) -> Any:
    stream = memoryview(body)
    position = 0

    def read(size: int) -> bytes:
        nonlocal position
        chunk = bytes(stream[position : position + size])
        position += len(chunk)
        return chunk

    response = endpoints.handle(method, path, headers or {}, read)
    return response.status, json.loads(response.body) if response.body else None, response


def never_read(size: int) -> bytes:
    raise AssertionError("the body was read")


@pytest.fixture
def served(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_add_model(), repository, "add", 1)
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    few_rows = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_request_rows=8))
    return make_server(repository, models={"scale": few_rows})


# -- 1. no file paths in what unauthenticated callers see ----------------------------------------------------------


@pytest.mark.parametrize("path", ["/v2/models/broken/ready", "/v2/models/broken/versions/1/ready"])
def test_a_model_s_readiness_names_its_load_error_without_the_path(
    served: inprocserve.Server, repository: Path, path: str
) -> None:
    status, document, response = call(v2.Endpoints(lambda: served), "GET", path)
    assert status == 503 and response.headers["Retry-After"] == "1"
    assert "cannot load" in document["error"] and "not a valid ONNX model" in document["error"]
    assert str(repository) not in response.body.decode() and str(repository.parent) not in response.body.decode()


def test_a_worker_that_never_read_its_control_file_answers_503_and_its_models_are_not_ready(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """It refuses every request that does not pin a version (ControlStateUnknownError) until its watcher
    reads the file: another worker can answer, so a 503 with Retry-After, as the plug-ins answer it (it was a
    500, with a warning per request), and the model is not ready (it said ready)."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / CONTROL_FILENAME).write_text("{ damaged")
    server = make_server(repository, control_interval_s=60)
    endpoints = v2.Endpoints(lambda: server)
    body = json.dumps({"inputs": [X]}).encode()
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        status, document, response = call(endpoints, "POST", "/v2/models/scale/infer", body)
    assert status == 503 and response.headers["Retry-After"] == "1" and "control file" in document["error"]
    assert not [record for record in caplog.records if record.name.startswith("inprocserve.v2")]
    status, document, response = call(endpoints, "GET", "/v2/models/scale/ready")
    assert status == 503 and document["ready"] is False and response.headers["Retry-After"] == "1"
    assert "control file" in document["error"] and str(repository) not in document["error"]
    assert call(endpoints, "GET", "/v2/models/scale/versions/1/ready")[0] == 200  # a pinned version is served
    assert call(endpoints, "POST", "/v2/models/scale/versions/1/infer", body)[0] == 200
    (repository / CONTROL_FILENAME).unlink()  # (an absent file is revision 0)
    server.sync_control()
    assert call(endpoints, "GET", "/v2/models/scale/ready")[0] == 200
    assert call(endpoints, "POST", "/v2/models/scale/infer", body)[0] == 200


def test_model_metadata_reads_status_without_paths(served: inprocserve.Server, repository: Path) -> None:
    for path in ("/v2/models/scale", "/v2/models/broken"):
        _, _, response = call(v2.Endpoints(lambda: served), "GET", path)
        assert str(repository) not in response.body.decode()


@pytest.mark.parametrize(
    "path",
    ["/v2/health/ready", "/v2/models/scale", "/v2/models/scale/ready", "/v2/models/scale/versions/1/ready"],
)
def test_probes_and_model_metadata_read_only_what_they_answer(
    served: inprocserve.Server, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    # Unauthenticated and polled by load balancers: each call built the whole status (every version's
    # histograms and backend facts, every string searched for paths), 1.5 ms with one model, 5 ms with fifty.
    built: list[str] = []
    full_status = inprocserve._model.ModelVersion.status

    def status(self: inprocserve._model.ModelVersion) -> dict[str, Any]:
        built.append(self.name)
        return full_status(self)

    monkeypatch.setattr(inprocserve._model.ModelVersion, "status", status)
    assert call(v2.Endpoints(lambda: served, required_models=["scale"]), "GET", path)[0] == 200
    assert call(v2.Endpoints(lambda: served), "GET", path)[0] == (503 if path == "/v2/health/ready" else 200)
    assert built == []
    assert served.readiness(["scale"]).ready and built == []
    served.status()
    assert sorted(built) == ["add", "scale"]  # (what is counted)


def test_the_brief_status_is_the_public_status_cut(
    served: inprocserve.Server, repository: Path, make_server: ServerFactory
) -> None:
    # The probes read a brief status built apart from status(): each of its facts must stay what
    # status(include_paths=False) says, loaded, failed, reloaded-and-failed and unknown models alike.
    (repository / "scale" / "1" / "model.onnx").write_bytes(b"not a model any more")  # a failed reload
    scripted = Scripted()
    threading.Thread(target=scripted.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    (repository / "remote" / "1").mkdir(parents=True)
    (repository / "remote" / "1" / "remote.toml").write_text(
        f'url = "http://127.0.0.1:{scripted.server_port}"\nmodel = "scale"\nretries = 0\nfailure_threshold = 1\n'
    )
    served.refresh()
    scripted.script = [500]  # its circuit opens: loaded, serving and unhealthy
    with pytest.raises(inprocserve.RemoteUnavailableError):
        served.predict("remote", np.ones((1, 4), np.float32))
    scripted.shutdown()
    scripted.server_close()

    def steady(value: Any) -> Any:
        """The value, its open circuit's countdown ("calls fail fast for 4.3 s more") left out: read again
        for the brief status a moment later, it had moved past a tenth (4.4 s) on a loaded machine."""
        if isinstance(value, dict):  # ("unhealthy": {version: why})
            return {key: steady(item) for key, item in value.items()}
        return re.sub(r"for \d+\.\d s more", "for ... s more", value) if isinstance(value, str) else value

    def same(server: inprocserve.Server) -> None:
        public = server.status(include_paths=False)
        for models in (None, ["scale"], ["broken", "nosuch"]):
            brief = server._brief_status(models, signatures=True)
            assert brief["closed"] == public["closed"] and brief["control"] == public["control"]
            assert set(brief["models"]) == set(public["models"]) & set(models or public["models"])
            for name, model in brief["models"].items():
                whole = public["models"][name]
                for key, value in model.items():
                    if key != "versions":
                        expected = None if key in ("rollout", "shadow") else whole[key]
                        assert steady(value) == steady(expected), (name, key)
                assert set(model["versions"]) == set(whole["versions"])
                for number, entry in model["versions"].items():
                    whole_entry = whole["versions"][number]
                    assert {key: steady(v) for key, v in entry.items()} == {
                        key: steady(whole_entry[key]) for key in entry
                    }, (name, number)

    assert served.status()["models"]["scale"]["versions"]["1"]["reload_error"]
    assert served.status()["models"]["remote"]["unhealthy"]
    same(served)
    (repository / CONTROL_FILENAME).write_text("{ damaged")
    unread = make_server(repository, control_interval_s=60)
    same(unread)
    unread.close()
    same(unread)


# -- 3. tensor headers are checked against the model before any data is decoded -------------------------------------


def binary_request(tensor: dict[str, Any], raw: bytes) -> tuple[bytes, dict[str, str]]:
    head = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": len(raw)}}]}).encode()
    return head + raw, {v2.HEADER_LENGTH: str(len(head))}


def test_bytes_sent_to_a_numeric_input_are_refused_before_they_are_decoded(served: inprocserve.Server) -> None:
    # element lengths that run past the data: decoding them would fail with a message about the lengths
    body, headers = binary_request(
        {"name": "x", "shape": [1, 4], "datatype": "BYTES"}, struct.pack("<I", 0xFFFFFFFF) + b"abcd"
    )
    status, document, _ = call(v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", body, headers)
    assert status == 400
    assert document["error"] == (
        "model 'scale' version 1: input 'x' was sent as BYTES, but the model takes FP32 with shape [-1, 4]; "
        "send numbers as FP32"
    )


@pytest.mark.parametrize(
    ("tensor", "message"),
    [
        # data that does not even match its own shape: the header is refused first
        ({**X, "shape": [9, 4]}, r"the request has 9 rows, more than the 8 allowed per request"),
        ({**X, "shape": [1, 5]}, r"input 'x': expected size 4 on axis 1 \(the model takes FP32 with shape \[-1, 4\]\)"),
        ({**X, "shape": [4]}, r"input 'x': expected 2 dimensions"),
        ({**X, "name": "z"}, r"missing input\(s\) 'x'; unknown input\(s\) 'z'; the model takes x: tensor\(float\)"),
        ({**X, "datatype": "BOOL"}, r"sent as BOOL, which cannot be converted to FP32 without losing meaning"),
    ],
)
def test_a_tensor_that_cannot_fit_the_model_is_refused_by_its_header(
    served: inprocserve.Server, tensor: dict[str, Any], message: str
) -> None:
    body = json.dumps({"inputs": [{**tensor, "data": ["not", "numbers"]}]}).encode()
    status, document, _ = call(v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", body)
    assert status == 400
    assert document["error"].startswith("model 'scale' version 1: "), document
    assert __import__("re").search(message, document["error"]), document


def test_floats_for_an_integer_input_are_refused_by_the_header(served: inprocserve.Server) -> None:
    inputs = [
        {"name": "a", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "b", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]},
        {"name": "n", "shape": [1, 1], "datatype": "FP64", "data": ["x"]},  # not even numbers
    ]
    status, document, _ = call(
        v2.Endpoints(lambda: served), "POST", "/v2/models/add/infer", json.dumps({"inputs": inputs}).encode()
    )
    assert status == 400 and "input 'n' was sent as FP64, which cannot be converted to INT64" in document["error"]


def test_safe_conversions_still_pass_the_header_check(served: inprocserve.Server) -> None:
    inputs = [
        {"name": "a", "shape": [2, 3], "datatype": "INT32", "data": [1, 2, 3, 4, 5, 6]},  # int -> float: safe
        {"name": "b", "shape": [2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 6]},  # same kind
        {"name": "n", "shape": [2, 1], "datatype": "INT8", "data": [1, 2]},
    ]
    status, document, _ = call(
        v2.Endpoints(lambda: served), "POST", "/v2/models/add/infer", json.dumps({"inputs": inputs}).encode()
    )
    assert status == 200, document
    assert document["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0, 10.0, 12.0]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [("/v2/models/nope/infer", 404, "unknown model 'nope'"), ("/v2/models/scale/versions/7/infer", 404, "version 7")],
)
def test_an_unknown_model_or_version_is_refused_before_the_body_is_read(
    served: inprocserve.Server, path: str, status: int, message: str
) -> None:
    response = v2.Endpoints(lambda: served).handle("POST", path, {}, never_read)
    assert response.status == status and message in json.loads(response.body)["error"]


def test_text_elements_have_their_own_lower_cap() -> None:
    assert v2.Limits().max_bytes_elements < v2.Limits().max_elements
    limits = v2.Limits(max_bytes_elements=3)
    text = {"name": "t", "shape": [2, 2], "datatype": "BYTES", "data": ["a", "b", "c", "d"]}
    numbers = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [1, 2, 3, 4]}
    with pytest.raises(inprocserve.InvalidInputError, match="more than 3 BYTES \\(text\\) elements"):
        v2.decode_infer_request(json.dumps({"inputs": [text]}).encode(), {}, limits=limits)
    assert v2.decode_infer_request(json.dumps({"inputs": [numbers]}).encode(), {}, limits=limits).inputs["x"].size == 4
    with pytest.raises(inprocserve.ConfigurationError, match="max_bytes_elements must be an int >= 1"):
        v2.Limits(max_bytes_elements=0)


def test_the_check_sees_every_header_before_any_data_is_decoded() -> None:
    seen: list[v2.TensorHeader] = []
    bad = {"name": "t", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}
    head = json.dumps({"inputs": [X, bad]}).encode()
    body = head + struct.pack("<I", 99) + b"a"  # a BYTES element that runs past its data

    def refuse(tensors: Any) -> None:
        seen.extend(tensors)
        raise inprocserve.InvalidInputError("refused by the check")

    with pytest.raises(inprocserve.InvalidInputError, match="refused by the check"):
        v2.decode_infer_request(body, {v2.HEADER_LENGTH: str(len(head))}, check=refuse)
    assert seen == [v2.TensorHeader("x", "FP32", (1, 4)), v2.TensorHeader("t", "BYTES", (1,))]


# -- 7. protocol details -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "datatype"),
    [
        ([True, 2, 3, 4], "INT32"),
        ([1.5, 2, False, 4], "FP32"),
        ([[1, 2], [3, True]], "INT64"),
        ([0, 1, 1, True], "UINT8"),
    ],
)
def test_true_and_false_are_never_numbers(data: list[Any], datatype: str) -> None:
    tensor = {
        "name": "x",
        "shape": [4] if not isinstance(data[0], list) else [2, 2],
        "datatype": datatype,
        "data": data,
    }
    body = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": True}}).encode()
    with pytest.raises(inprocserve.InvalidInputError, match=f"mixes true/false with numbers, which is not {datatype}"):
        v2.decode_infer_request(body, {})


def test_true_and_false_elsewhere_in_a_request_are_fine() -> None:
    text = {"name": "t", "shape": [2], "datatype": "BYTES", "data": ["true", "false"]}
    flags = {"name": "b", "shape": [2], "datatype": "BOOL", "data": [True, False]}
    numbers = {"name": "x", "shape": [2], "datatype": "INT32", "data": [1, 0]}
    body = json.dumps(
        {"inputs": [text, flags, numbers], "outputs": [{"name": "y", "parameters": {"binary_data": True}}]}
    ).encode()
    request = v2.decode_infer_request(body, {})
    assert request.inputs["x"].tolist() == [1, 0] and request.inputs["b"].tolist() == [True, False]


def test_data_after_the_gzip_stream_is_refused(served: inprocserve.Server) -> None:
    endpoints = v2.Endpoints(lambda: served)
    body = json.dumps({"inputs": [X]}).encode()
    for tail in (b"garbage", gzip.compress(b" ")):  # junk, or a second gzip member
        status, document, _ = call(
            endpoints, "POST", "/v2/models/scale/infer", gzip.compress(body) + tail, {"Content-Encoding": "gzip"}
        )
        assert status == 400 and f"has {len(tail)} bytes after the end of its compressed data" in document["error"]
    status, _, _ = call(endpoints, "POST", "/v2/models/scale/infer", gzip.compress(body), {"Content-Encoding": "gzip"})
    assert status == 200


def test_nan_and_infinity_outputs_are_written_as_triton_writes_them(served: inprocserve.Server) -> None:
    """Triton's JSON writer (rapidjson's kWriteNanAndInfFlag) writes NaN, Infinity and -Infinity, and its
    clients read them back; JSON itself has no such numbers (docs/protocol.md says to ask for binary outputs
    when a strict JSON parser reads the answer)."""
    tensor = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [float("nan"), float("inf"), -np.inf, 1]}
    status, _, response = call(
        v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", json.dumps({"inputs": [tensor]}).encode()
    )
    assert status == 200
    assert b'"data":[NaN,Infinity,-Infinity,2.0]' in response.body
    data = rapidjson.loads(response.body)["outputs"][0]["data"]  # as tritonclient reads it
    assert np.isnan(data[0]) and data[1:] == [np.inf, -np.inf, 2.0]


# -- 6. admin bodies ------------------------------------------------------------------------------------------------


def test_a_percent_too_large_for_a_float_is_a_400(served: inprocserve.Server) -> None:
    body = b'{"version": 1, "percent": ' + b"9" * 400 + b"}"
    answer = web.admin_answer(served, "canary", "scale", body, actor="test")
    assert answer.status == 400 and '"percent" must be a number in 0..100' in answer.body["message"]
    assert len(answer.body["message"]) < 200


def test_an_overflow_anywhere_in_an_admin_action_is_a_400(served: inprocserve.Server) -> None:
    answer = web.admin_answer(served, "canary", "scale", {"version": 1, "percent": 10**400}, actor="test")
    assert answer.status == 400


def test_the_canary_answer_echoes_what_was_applied(served: inprocserve.Server) -> None:
    answer = web.admin_answer(served, "canary", "scale", b'{"version": 1, "percent": 25}', actor="test")
    assert answer.status == 200 and answer.body["canary_percent"] == 25.0
    answer = web.admin_answer(served, "canary", "scale", b'{"version": null, "percent": 50}', actor="test")
    assert answer.status == 400 and "removes the canary and takes no percent (got 50)" in answer.body["message"]
    assert served.status()["models"]["scale"]["control"]["canary_version"] == 1  # nothing changed
    answer = web.admin_answer(served, "canary", "scale", b'{"version": null}', actor="test")
    assert answer.status == 200
    assert (answer.body["canary_version"], answer.body["canary_percent"]) == (None, 0)


def test_a_negative_zero_percent_is_applied_and_echoed_as_zero(served: inprocserve.Server) -> None:
    """``-0.0`` lies in 0..100: taken, and shown as 0 wherever it is echoed (never a "-0.0 %" canary)."""
    answer = web.admin_answer(served, "canary", "scale", b'{"version": 1, "percent": -0.0}', actor="test")
    assert answer.status == 200 and json.dumps(answer.body["canary_percent"]) == "0.0"
    assert json.dumps(served.status()["models"]["scale"]["control"]["canary_percent"]) == "0.0"


# -- 8. tokens ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("configured", ["secret\n", "  secret ", "secret"])
def test_the_configured_token_is_stripped_like_the_supplied_one(configured: str) -> None:
    assert web.check_token("Bearer secret", configured)
    assert not web.check_token("Bearer secret2", configured)
    assert not web.check_token("Bearer ", "   ")


@pytest.mark.parametrize(
    ("token", "problem"),
    [
        ("s\u00e9cret", "printable ASCII"),
        ("sec\x00ret", "printable ASCII"),
        ("   ", "blank"),
        (42, "must be a string"),
        (None, None),
        ("", None),
        ("a-long_random.token~", None),
    ],
)
def test_token_problems(token: object, problem: str | None) -> None:
    found = web.token_problem(token)
    assert found is None if problem is None else problem in (found or "")


def test_the_header_check_follows_a_reload_made_while_the_body_was_read(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    # The versions that may answer are looked up when the headers are checked, not when the request came
    # in: a reload during a slow upload may have replaced the version with one of another signature.
    from inprocserve.v2._endpoints import _signature_check

    save_model(build_scale_model(2.0, features=4), repository, "scale", 1)
    server = make_server(repository)
    check = _signature_check(server, "scale", None)  # the request came in: its body is still arriving
    staged = save_model(build_scale_model(2.0, features=3), tmp_path, "scale", 1)
    staged.replace(repository / "scale" / "1" / "model.onnx")
    # (a rewrite in place with another signature is held back by the compatibility gate: loaded on purpose)
    assert len(server.refresh()) == 1
    server.load("scale", version=1)
    check([v2.TensorHeader("x", "FP32", (1, 3))])  # fits the version serving now
    with pytest.raises(inprocserve.InvalidInputError, match="expected size 3 on axis 1"):
        check([v2.TensorHeader("x", "FP32", (1, 4))])


def test_integers_for_an_unsigned_input_pass_the_header_check(repository: Path, make_server: ServerFactory) -> None:
    # JSON clients send INT64 for a uint8 image input: the header check must let predict check the range.
    from onnx import TensorProto, helper

    from inprocserve.testing import _model

    to_float = _model(
        [helper.make_node("Cast", ["pixels"], ["y"], to=TensorProto.FLOAT)],
        [helper.make_tensor_value_info("pixels", TensorProto.UINT8, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    save_model(to_float, repository, "image", 1)
    endpoints = v2.Endpoints(lambda: make_server(repository))
    tensor = {"name": "pixels", "shape": [1, 2], "datatype": "INT64", "data": [7, 255]}
    status, document, _ = call(endpoints, "POST", "/v2/models/image/infer", json.dumps({"inputs": [tensor]}).encode())
    assert status == 200 and document["outputs"][0]["data"] == [7.0, 255.0]
    tensor["data"] = [7, 256]
    status, document, _ = call(endpoints, "POST", "/v2/models/image/infer", json.dumps({"inputs": [tensor]}).encode())
    assert status == 400 and "do not fit in uint8" in document["error"]


# -- integers past int64, user ids as parameters, outputs the protocol cannot carry ---------------------------------


@pytest.mark.parametrize(
    ("data", "answer"),
    [
        ([2**64 - 1, 2], [2**64 - 1, 2]),  # numpy alone makes this list float64, which rounds the first
        ([2**63, 0], [2**63, 0]),
    ],
)
def test_json_integers_past_int64_reach_a_uint64_tensor_exactly(data: list[int], answer: list[int]) -> None:
    tensor = {"name": "x", "shape": [2], "datatype": "UINT64", "data": data}
    decoded = v2.decode_infer_request(json.dumps({"inputs": [tensor]}).encode(), {}).inputs["x"]
    assert decoded.dtype == np.uint64 and decoded.tolist() == answer


@pytest.mark.parametrize(
    ("data", "datatype", "message"),
    [
        ([2**64, 2], "UINT64", "do not fit in UINT64"),
        ([-1, 2**63], "UINT64", "do not fit in UINT64"),
        ([2**63, 1], "INT64", "do not fit in INT64"),
        ([2**64 - 1, 1.5], "UINT64", "numbers with a fraction or an exponent"),
    ],
)
def test_json_integers_out_of_range_or_mixed_with_floats_are_still_refused(
    data: list[Any], datatype: str, message: str
) -> None:
    tensor = {"name": "x", "shape": [2], "datatype": datatype, "data": data}
    with pytest.raises(inprocserve.InvalidInputError, match=message):
        v2.decode_infer_request(json.dumps({"inputs": [tensor]}).encode(), {})


@pytest.mark.parametrize(
    ("user_id", "message"),
    [
        ("u" * 257, "parameter user_id: .* is not a user id"),
        ("\u202eevil", "parameter user_id: .* is not a user id"),
        ("", "parameter user_id: .* is not a user id"),
        (10**300, "parameter user_id: an integer of 997 bits is not a user id"),
    ],
)
def test_the_user_id_parameter_is_held_to_the_user_header_s_rule(
    served: inprocserve.Server, user_id: Any, message: str
) -> None:
    body = json.dumps({"inputs": [X], "parameters": {"user_id": user_id}}).encode()
    status, document, _ = call(v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", body)
    assert status == 400 and re.search(message, document["error"]), document
    good = json.dumps({"inputs": [X], "parameters": {"user_id": " user-7 "}}).encode()
    assert call(v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", good)[0] == 200


def test_an_unknown_output_is_refused_before_the_model_runs(served: inprocserve.Server) -> None:
    runs = served.status()["models"]["scale"]["versions"]["1"]["batches_run"]
    body = json.dumps({"inputs": [X], "outputs": [{"name": "nope"}]}).encode()
    status, document, _ = call(v2.Endpoints(lambda: served), "POST", "/v2/models/scale/infer", body)
    assert status == 400 and document["error"] == "output 'nope' is not an output of model 'scale'; outputs: y"
    assert served.status()["models"]["scale"]["versions"]["1"]["batches_run"] == runs


def build_zipmap_model() -> Any:
    """Probabilities as a tensor and as a ZipMap (a sequence of maps), as skl2onnx's classifiers answer, and
    a sequence of two tensors."""
    from onnx import TensorProto, helper

    float_map = helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    graph = helper.make_graph(
        [
            helper.make_node("Identity", ["x"], ["probabilities"]),
            helper.make_node("ZipMap", ["x"], ["zipped"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]),
            helper.make_node("SequenceConstruct", ["x", "x"], ["pair"]),  # equal tensors: numpy would stack them
        ],
        "zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
            helper.make_value_info("zipped", helper.make_sequence_type_proto(float_map)),
            helper.make_value_info(
                "pair",
                helper.make_sequence_type_proto(helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", 2])),
            ),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)])
    model.ir_version = 8
    return model


def test_sequence_outputs_are_left_out_of_answers_and_refused_when_asked_for(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_zipmap_model(), repository, "classifier", 1)
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    tensor = {"name": "x", "shape": [2, 2], "datatype": "FP32", "data": [0.25, 0.75, 0.5, 0.5]}
    for binary in (False, True):
        body = json.dumps({"inputs": [tensor], "parameters": {"binary_data_output": binary}}).encode()
        response = endpoints.handle("POST", "/v2/models/classifier/infer", {}, io.BytesIO(body).read)
        assert response.status == 200
        outputs = v2.decode_infer_response(response.body, response.headers).outputs
        assert list(outputs) == ["probabilities"] and outputs["probabilities"].tolist() == [[0.25, 0.75], [0.5, 0.5]]
    runs = server.status()["models"]["classifier"]["versions"]["1"]["batches_run"]
    for name in ("zipped", "pair"):
        body = json.dumps({"inputs": [tensor], "outputs": [{"name": name}]}).encode()
        status, document, _ = call(endpoints, "POST", "/v2/models/classifier/infer", body)
        assert status == 400 and f"output '{name}' of model 'classifier' is a sequence or map" in document["error"]
    assert server.status()["models"]["classifier"]["versions"]["1"]["batches_run"] == runs  # refused before a run
    with pytest.raises(inprocserve.InvalidInputError, match="is a sequence or map"):  # the codec on its own
        v2.encode_infer_response(
            server.predict("classifier", np.ones((1, 2), np.float32)), [v2.RequestedOutput("zipped")]
        )
