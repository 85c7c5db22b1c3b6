"""The Open Inference Protocol served by the Flask extension: the real tritonclient over loopback HTTP
(werkzeug's server on an ephemeral 127.0.0.1 port), and every error path through Flask's test client."""

from __future__ import annotations

import http.client
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
import tritonclient.http as triton
from flask import Flask
from inprocserve_flask import Inprocserve
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server

import inprocserve
from inprocserve import v2
from inprocserve._log_limit import LogLimit
from inprocserve.testing import build_add_model, build_mlp_model, build_scale_model, save_model
from inprocserve.web import _process as web_process  # (its log limit: a fresh minute for one test)

ALL_VERSIONS = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)
    save_model(build_add_model(), folder, "add", 1)
    save_model(build_mlp_model((16, 32, 3), seed=7), folder, "mlp", 1)
    return folder


def make_app(repository: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_MODEL_CONFIG=ALL_VERSIONS, INPROCSERVE_V2_PROTOCOL=True
    )
    app.config.update(config)
    Inprocserve(app)
    return app


@pytest.fixture
def app(repository: Path) -> Iterator[Flask]:
    application = make_app(repository)
    yield application
    Inprocserve.close(application)


@pytest.fixture
def client(app: Flask) -> Iterator[triton.InferenceServerClient]:
    """tritonclient talking to the app under a real HTTP server on loopback."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="v2-http", daemon=True)
    thread.start()
    triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{server.server_port}", network_timeout=30)
    yield triton_client
    triton_client.close()
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def direct(repository: Path, model: str, version: int, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The same model run by onnxruntime itself, with no inprocserve in between."""
    session = onnxruntime.InferenceSession(str(repository / model / str(version) / "model.onnx"))
    return list(session.run(None, feeds))


def tensor(name: str, array: np.ndarray, *, binary: bool) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(array.shape), v2.datatype_of(array.dtype))
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("scale") and client.is_model_ready("scale", "1")
    assert not client.is_model_ready("nope") and not client.is_model_ready("scale", "7")
    assert client.get_server_metadata()["extensions"] == ["binary_tensor_data", "parameters"]
    assert client.get_model_metadata("mlp") == {
        "name": "mlp",
        "versions": ["1"],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 16]}],
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, 3]}],
    }
    assert client.get_model_metadata("scale", "1")["versions"] == ["1", "2"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'") as caught:
        client.get_model_metadata("nope")
    assert caught.value.status() == "404"


@pytest.mark.parametrize(
    "binary",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["binary-in-out", "binary-in-json-out", "json-in-binary-out", "json-in-out"],
)
def test_infer_through_tritonclient_equals_onnxruntime(
    client: triton.InferenceServerClient, repository: Path, binary: tuple[bool, bool]
) -> None:
    binary_in, binary_out = binary
    x = np.random.default_rng(1).standard_normal((5, 16)).astype(np.float32)
    result = client.infer(
        "mlp", [tensor("x", x, binary=binary_in)], outputs=[triton.InferRequestedOutput("y", binary_data=binary_out)]
    )
    np.testing.assert_allclose(result.as_numpy("y"), direct(repository, "mlp", 1, {"x": x})[0], rtol=1e-6)
    response = result.get_response()
    assert ("binary_data_size" in response["outputs"][0].get("parameters", {})) is binary_out
    assert response["model_version"] == "1"

    feeds = {"a": x[:, :3].copy(), "b": x[:, 3:6].copy(), "n": np.arange(5, dtype=np.int64).reshape(5, 1)}
    result = client.infer("add", [tensor(name, array, binary=binary_in) for name, array in feeds.items()])
    total, count = direct(repository, "add", 1, feeds)
    np.testing.assert_allclose(result.as_numpy("total"), total, rtol=1e-6)
    assert result.as_numpy("count").dtype == np.int64 and result.as_numpy("count").tolist() == count.tolist()


def test_versions_ids_and_errors_through_tritonclient(client: triton.InferenceServerClient) -> None:
    x = np.ones((1, 4), np.float32)
    pinned = client.infer("scale", [tensor("x", x, binary=True)], model_version="1", request_id="req-9")
    assert pinned.as_numpy("y").tolist() == [[1.0] * 4] and pinned.get_response()["id"] == "req-9"
    assert client.infer("scale", [tensor("x", x, binary=False)]).as_numpy("y").tolist() == [[2.0] * 4]
    with pytest.raises(InferenceServerException, match="expected size 4 on axis 1") as caught:
        client.infer("scale", [tensor("x", np.ones((1, 3), np.float32), binary=True)])
    assert caught.value.status() == "400"
    with pytest.raises(InferenceServerException, match="sent as BYTES, but the model takes FP32"):
        client.infer("scale", [tensor("x", np.array([["1"] * 4], dtype=object), binary=True)])


def test_a_wrong_method_is_a_json_405(app: Flask) -> None:
    response = app.test_client().delete("/v2/models/scale")
    assert response.status_code == 405 and list(response.json) == ["error"]
    assert response.headers["Allow"] == "GET, HEAD, OPTIONS"


def test_bad_limits_fail_at_init_app(repository: Path) -> None:
    # (a ConfigurationTypeError, a TypeError too, naming the setting)
    with pytest.raises(TypeError, match=r"INPROCSERVE_V2_LIMITS must be an inprocserve\.v2\.Limits or None, got dict"):
        make_app(repository, INPROCSERVE_V2_LIMITS={"max_body_bytes": 10})


def test_off_by_default(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_V2_PROTOCOL=False)
    assert app.test_client().get("/v2/health/live").status_code == 404
    Inprocserve.close(app)


def infer_json(*inputs: dict[str, Any], **extra: Any) -> bytes:
    return json.dumps({"inputs": list(inputs), **extra}).encode()


X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("/v2/models/nope/infer", infer_json(X), {}, 404, "unknown model 'nope'"),
        ("/v2/models/scale/versions/9/infer", infer_json(X), {}, 404, "no servable version 9"),
        # (was clamped: "no servable version 1000000000000000000")
        ("/v2/models/scale/versions/99999999999999999999/infer", infer_json(X), {}, 400, "'99999999999999999999'"),
        ("/v2/models/scale/versions/0000000000000000009/infer", infer_json(X), {}, 404, "no servable version 9"),
        ("/v2/models/scale/infer", infer_json({**X, "datatype": "FLOAT"}), {}, 400, "unknown datatype 'FLOAT'"),
        ("/v2/models/scale/infer", infer_json({**X, "shape": [2, 4]}), {}, 400, "shape \\[2, 4\\] needs 8"),
        ("/v2/models/scale/infer", infer_json({**X, "shape": [1, 2], "data": [1, 2]}), {}, 400, "expected size 4"),
        ("/v2/models/scale/infer", infer_json({**X, "shape": [1, -4]}), {}, 400, "ints >= 0"),
        (
            "/v2/models/scale/infer",
            infer_json({**X, "data": [[[[[[[1, 2, 3, 4]]]]]]]}),
            {},
            400,
            "nested deeper than 4",
        ),
        ("/v2/models/scale/infer", b" " * 5000, {}, 400, "over the 4096 allowed"),
        ("/v2/models/scale/infer", infer_json(X), {"X-Request-Timeout-Ms": "0"}, 504, "time budget was spent"),
        ("/v2/models/scale/ready", b"", {}, 405, "use GET"),
    ],
)
def test_error_paths_answer_json_with_the_right_status(
    repository: Path, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    app = make_app(repository, INPROCSERVE_V2_LIMITS=v2.Limits(max_body_bytes=4096, max_json_depth=4))
    response = app.test_client().post(path, data=body, headers=headers)
    Inprocserve.close(app)
    assert response.status_code == status
    assert list(response.json) == ["error"]
    assert re.search(message, response.json["error"]), response.json


def build_video_model() -> Any:
    """A model over [batch, channels, frames, height, width], every size dynamic (a video or 3-D model's input)."""
    from onnx import TensorProto, helper

    dims = ["batch", "channels", "frames", "height", "width"]
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "video",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("binary", [False, True])
def test_an_empty_tensor_of_sizes_past_numpy_s_reach_is_a_400(tmp_path: Path, *, binary: bool) -> None:
    # 0 elements, so under max_elements, but numpy cannot shape even an empty array of [1, 0, 2**24, 2**24, 2**24]
    # FP32 (its other sizes pass the address space): a ValueError, answered 500 with a traceback logged each time
    save_model(build_video_model(), tmp_path / "models", "video", 1)
    app = make_app(tmp_path / "models")
    shape = [1, 0, 2**24, 2**24, 2**24]
    tensor = {"name": "x", "shape": shape, "datatype": "FP32"}
    if binary:
        body = infer_json({**tensor, "parameters": {"binary_data_size": 0}})
        headers = {v2.HEADER_LENGTH: str(len(body))}
    else:
        body, headers = infer_json({**tensor, "data": []}), {}
    client = app.test_client()
    response = client.post("/v2/models/video/infer", data=body, headers=headers)
    empty = client.post("/v2/models/video/infer", data=infer_json({**tensor, "shape": [1, 0, 64, 64, 64], "data": []}))
    Inprocserve.close(app)
    assert response.status_code == 400, response.data
    assert "is empty, but its other sizes make more than 16777216" in response.json["error"]
    assert empty.status_code == 200 and empty.json["outputs"][0]["shape"] == [1, 0, 64, 64, 64]


def test_a_body_nested_too_deeply_for_the_json_parser_is_a_400(repository: Path) -> None:
    # 100,000 levels: past the parser's limit on every Python (3.13's parses several thousand, and how many
    # depends on how deep the stack already is; 3.11's and 3.12's under 1,000)
    body = b"[" * 100_000 + b"]" * 100_000
    app = make_app(repository, INPROCSERVE_V2_LIMITS=v2.Limits(max_body_bytes=len(body)))
    response = app.test_client().post("/v2/models/scale/infer", data=body)
    Inprocserve.close(app)
    assert (response.status_code, response.json) == (400, {"error": "the request JSON is nested too deeply to parse"})


def test_not_ready_is_503(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not onnx")
    app = make_app(tmp_path / "models")
    web = app.test_client()
    ready = web.get("/v2/health/ready")
    assert ready.status_code == 503 and ready.headers["Retry-After"] == "1" and "broken" in ready.json["error"]
    model = web.get("/v2/models/broken/ready")
    assert model.status_code == 503 and model.json["ready"] is False and "cannot load" in model.json["error"]
    assert web.get("/v2/health/live").status_code == 200
    Inprocserve.close(app)


def test_the_app_s_user_routes_the_rollout(repository: Path) -> None:
    rollout = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
    )
    models = {"scale": inprocserve.ModelConfig(rollout=rollout, version_policy=inprocserve.VersionPolicy.all())}
    app = make_app(repository, INPROCSERVE_MODELS=models)
    web = app.test_client()
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    with app.app_context():
        from inprocserve_flask import server

        expected = {u: server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": u}) for u in "abcdefgh"}
    for user, prediction in expected.items():
        response = web.post("/v2/models/scale/infer", data=body, headers={**headers, "X-User-Id": user})
        decoded = v2.decode_infer_response(response.data, response.headers)
        assert decoded.parameters["inprocserve_variant"] == prediction.variant
        assert decoded.model_version == str(prediction.version)
    assert {p.variant for p in expected.values()} == {"canary", "stable"}, "pick users that land on both sides"
    Inprocserve.close(app)


def test_the_predict_span_is_a_child_of_the_web_request_span(app: Flask) -> None:
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):  # the global provider can be set once per process
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)})
    try:
        with trace.get_tracer("tests").start_as_current_span("POST /v2/models/scale/infer") as web:
            assert app.test_client().post("/v2/models/scale/infer", data=body, headers=headers).status_code == 200
        spans = [span for span in exporter.get_finished_spans() if span.name == "inprocserve.predict"]
    finally:
        exporter.shutdown()
    assert len(spans) == 1
    assert spans[0].parent is not None and spans[0].parent.span_id == web.get_span_context().span_id


def post_chunked(app: Flask, chunks: bytes) -> tuple[int, bytes]:
    """POST raw chunked-encoding bytes to /v2/models/scale/infer over a real HTTP server, then half-close (as a
    client that stops sending does) and read the answer."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="v2-http", daemon=True)
    thread.start()
    try:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as connection:
            connection.sendall(
                b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n" + chunks
            )
            connection.shutdown(socket.SHUT_WR)
            response = http.client.HTTPResponse(connection)
            response.begin()
            return response.status, response.read()
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is no number
        b"40\r\n" + infer_json(X)[:20],  # the client goes away mid-chunk (it half-closes, to read the answer)
    ],
)
def test_a_broken_chunked_body_is_a_json_400_not_a_500(app: Flask, chunks: bytes) -> None:
    # The server raises from the body's read (werkzeug's and gunicorn's alike): it was a 500 in HTML and an
    # error logged with its traceback, for what a client sent.
    status, body = post_chunked(app, chunks)
    assert status == 400, body
    assert "the request body cannot be read to its end" in json.loads(body)["error"]


def test_a_chunked_body_over_flask_s_max_content_length_is_still_flask_s_413(repository: Path) -> None:
    app = make_app(repository, MAX_CONTENT_LENGTH=16)
    body = infer_json(X)
    status, answer = post_chunked(app, b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    Inprocserve.close(app)
    assert status == 413 and "MAX_CONTENT_LENGTH" in json.loads(answer)["error"], answer  # (JSON, not werkzeug's page)


def test_readiness_probes_answer_503_at_once_while_the_worker_warms_up(tmp_path: Path) -> None:
    # In eager mode each worker builds its server on a thread after the fork. /-/inprocserve/ready answered
    # 503 "warming" then, but /v2/health/ready and the model's ready waited for the whole warm-up (a probe,
    # and a worker thread, held for as long as the models take to load and warm), then answered 200.
    folder = tmp_path / "models"
    save_model(build_mlp_model((256, 1024, 1024, 2), seed=1), folder, "slow", 1)
    slow_warmup = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(rows=256, runs=200))
    app = make_app(folder, INPROCSERVE_EAGER=True, INPROCSERVE_MODEL_CONFIG=slow_warmup)
    state = app.extensions["inprocserve"]
    warm = threading.Thread(target=Inprocserve.warm, args=(app,))  # what each forked worker does
    warm.start()
    try:
        while not state.holder.building and not state.started:  # bounded: the thread builds at once
            time.sleep(0.001)
        client = app.test_client()
        for path in ("/v2/health/ready", "/v2/models/slow/ready", "/v2/models/slow/versions/1/ready"):
            response = client.get(path)
            assert response.status_code == 503, (path, response.json, state.started)
            assert "warming up" in response.json["error"] and response.headers["Retry-After"] == "1"
    finally:
        warm.join(timeout=120)
    assert app.test_client().get("/v2/health/ready").status_code == 200
    Inprocserve.close(app)


def test_a_worker_whose_server_cannot_be_built_answers_503_without_naming_its_files(
    repository: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The repository gone at a worker's first request (a release swapping folders): every /v2 URL answered
    500 with the error's text, which names the repository's absolute path, to any client; the readiness
    probe got a 500 with no Retry-After. Now a 503 saying only that, with Retry-After, and the log says why; the
    readiness URLs answer their documents ("ready": false), which a client reads."""
    monkeypatch.setattr(
        web_process, "_UNBUILT", LogLimit()
    )  # (another test's line within the minute would hold this one)
    app = make_app(repository)
    moved = repository.with_name("elsewhere")
    repository.rename(moved)
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    try:
        client = app.test_client()
        with caplog.at_level("ERROR", logger="inprocserve"):
            said = "the model server could not start in this worker (its log says why); retry later"
            for method, path, document in (
                ("GET", "/v2/health/ready", {"ready": False, "error": said}),  # readiness keeps its "ready"
                ("GET", "/v2/models/scale/ready", {"name": "scale", "ready": False, "error": said}),
                (
                    "GET",
                    "/v2/models/scale/versions/1/ready",
                    {"name": "scale", "version": "1", "ready": False, "error": said},
                ),
                ("GET", "/v2/models/scale", {"error": said}),
                ("POST", "/v2/models/scale/infer", {"error": said}),
            ):
                answer = client.open(path, method=method, json=body)
                assert answer.status_code == 503, answer.get_data(as_text=True)
                assert answer.headers["Retry-After"] == "1"
                assert answer.get_json() == document
                assert str(tmp_root := repository.parent) not in answer.get_data(as_text=True), tmp_root
        told = [r.getMessage() for r in caplog.records if "cannot be built" in r.getMessage()]
        assert len(told) == 1 and str(repository) in told[0]  # the operator's log names it, once a minute
        moved.rename(repository)
        answer = client.post("/v2/models/scale/infer", json=body)  # built at the next request once it is back
        assert answer.status_code == 200, answer.get_data(as_text=True)
    finally:
        if moved.exists():
            moved.rename(repository)
        Inprocserve.close(app)


def test_an_inference_header_length_that_is_no_number_of_bytes_is_named_as_the_fault(app: Flask) -> None:
    # int() read "1_04" as 104 and "+104" too, and a JSON part cut short by such a length was blamed on the JSON
    # ("the request JSON is malformed"), where the same lengths in Content-Length are named as the fault
    head = json.dumps({"inputs": [{**X, "data": None, "parameters": {"binary_data_size": 16}}]}).encode()
    head = head.replace(b'"data": null, ', b"")
    body = head + np.array([1, 2, 3, 4], "<f4").tobytes()
    text = str(len(head))
    client = app.test_client()
    for length in (f"{text[0]}_{text[1:]}", f"+{text}", f"{text[:-1]}_{text[-1]}", "1_0"):
        response = client.post("/v2/models/scale/infer", data=body, headers={v2.HEADER_LENGTH: length})
        assert response.status_code == 400, (length, response.json)
        assert response.json == {"error": f"{v2.HEADER_LENGTH} must be a number of bytes, got {length!r}"}
    answered = client.post("/v2/models/scale/infer", data=body, headers={v2.HEADER_LENGTH: f" {text} "})
    assert answered.status_code == 200 and answered.json["outputs"][0]["data"] == [2, 4, 6, 8], answered.json


def test_a_content_length_that_is_no_number_of_bytes_is_named_as_the_fault(app: Flask) -> None:
    """werkzeug passes on a Content-Length of "-1", "abc" or "+86" (gunicorn refuses them itself): the body was
    read as empty and the client told its JSON was malformed. A length of leading zeros is a length."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="v2-http", daemon=True)
    thread.start()
    body = infer_json(X)

    def post(length: str) -> tuple[bytes, Any]:
        with socket.create_connection(("127.0.0.1", server.server_port), timeout=30) as connection:
            connection.sendall(
                b"POST /v2/models/scale/infer HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                + f"Content-Length: {length}\r\n\r\n".encode()
                + body
            )
            answer = b""
            while chunk := connection.recv(65536):
                answer += chunk
        head, _, document = answer.partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0], json.loads(document)

    try:
        for length in ("-1", "abc", f"+{len(body)}"):
            status, document = post(length)
            assert status.endswith(b"400 BAD REQUEST"), (length, status)
            assert document == {"error": f"Content-Length {length!r} is not a number of bytes; send the body's length"}
        status, document = post(f"{len(body):020d}")  # 20 digits: was taken for 10**18 bytes, past the limit
        assert status.endswith(b"200 OK") and document["outputs"][0]["data"] == [2, 4, 6, 8], document
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v2/models/scale/infer", "POST, OPTIONS"),
        ("/v2/models/scale/versions/1/infer", "POST, OPTIONS"),
        ("/v2/models/scale", "GET, HEAD, OPTIONS"),
        ("/v2/models/scale/ready", "GET, HEAD, OPTIONS"),
        ("/v2/health/live", "GET, HEAD, OPTIONS"),
        ("/v2", "GET, HEAD, OPTIONS"),
    ],
)
def test_options_answers_what_each_protocol_path_takes(app: Flask, path: str, allow: str) -> None:
    # Flask answered OPTIONS itself with every method the /v2 routes list (GET, PUT, DELETE for infer): a CORS
    # preflight still gets a 200, and Allow is now the path's own; a wrong method's 405 says the same
    client = app.test_client()
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": allow.split(", ")[0]}
    response = client.options(path, headers=preflight)
    assert (response.status_code, response.headers["Allow"]) == (200, allow), response.get_data(as_text=True)
    wrong = client.open(path, method="GET" if allow.startswith("POST") else "POST")
    assert (wrong.status_code, wrong.headers["Allow"]) == (405, allow)


@pytest.mark.parametrize("how", ["nested", "again"])
def test_the_v2_blueprint_nested_in_a_teams_own_or_registered_again_is_refused(repository: Path, how: str) -> None:
    # A team mounting everything under its own /ml blueprint took the /v2 blueprint from app.blueprints and
    # nested it (or registered it again under a prefix and another name): a second copy whose routes answered
    # /ml/v2/... with the protocol's 404 for a path it does not know (it reads the request's whole path),
    # so standard clients pointed at /ml found no model at all, and nothing said the copy could not work.
    from flask import Blueprint

    app = make_app(repository)
    try:
        if how == "nested":
            ml = Blueprint("ml", __name__)
            ml.register_blueprint(app.blueprints["inprocserve_v2"])
            with pytest.raises(ValueError, match=r"registered by Inprocserve.init_app, once, at the root"):
                app.register_blueprint(ml, url_prefix="/ml")
        else:
            with pytest.raises(ValueError, match=r"cannot be registered again or nested"):
                app.register_blueprint(app.blueprints["inprocserve_v2"], url_prefix="/ml", name="ml_v2")
        client = app.test_client()
        assert client.get("/ml/v2/health/live").status_code == 404
        response = client.get("/v2/health/live")
        assert response.status_code == 200 and response.json == {"live": True}
    finally:
        Inprocserve.close(app)


def test_the_v2_blueprint_registered_on_another_app_is_refused_at_registration(repository: Path) -> None:
    # An app of one's own (an internal gateway) given the /v2 blueprint taken from the app that has the
    # extension: it was registered without a word, then every /v2 path there failed, finding no extension on
    # that app, where standard clients were pointed.
    from flask import Flask

    app = make_app(repository)
    try:
        gateway = Flask("gateway")
        with pytest.raises(ValueError, match=r"cannot be registered again or nested.*\(here on app 'gateway'"):
            gateway.register_blueprint(app.blueprints["inprocserve_v2"])
        assert gateway.test_client().get("/v2/health/live").status_code == 404
        response = app.test_client().get("/v2/health/live")
        assert response.status_code == 200 and response.json == {"live": True}
    finally:
        Inprocserve.close(app)
