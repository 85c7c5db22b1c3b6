"""The Open Inference Protocol served by the Django app: the real tritonclient over loopback HTTP (Django's
WSGI handler under werkzeug's server on an ephemeral 127.0.0.1 port), and every error path through
Django's test client."""

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
from django.core.checks import run_checks
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings
from inprocserve_django import get_server, reset_server
from inprocserve_django.server import building, warm_after_fork
from tritonclient.utils import InferenceServerException
from werkzeug.serving import make_server

import inprocserve
from inprocserve import v2
from inprocserve.testing import build_add_model, build_mlp_model, build_scale_model, save_model

ALL_VERSIONS = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)
    save_model(build_add_model(), folder, "add", 1)
    save_model(build_mlp_model((16, 32, 3), seed=7), folder, "mlp", 1)
    return folder


@pytest.fixture
def served(repository: Path) -> Iterator[Path]:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "CONFIG": ALL_VERSIONS, "V2_PROTOCOL": True}):
        yield repository
    reset_server()


@pytest.fixture
def client(served: Path) -> Iterator[triton.InferenceServerClient]:
    """tritonclient talking to the Django project under a real HTTP server on loopback."""
    server = make_server("127.0.0.1", 0, WSGIHandler(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="v2-http", daemon=True)
    thread.start()
    triton_client = triton.InferenceServerClient(url=f"127.0.0.1:{server.server_port}", network_timeout=30)
    yield triton_client
    triton_client.close()
    server.shutdown()
    thread.join(timeout=10)
    server.server_close()


def direct(repository: Path, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """The same model run by onnxruntime itself, with no inprocserve in between."""
    session = onnxruntime.InferenceSession(str(repository / model / "1" / "model.onnx"))
    return list(session.run(None, feeds))


def tensor(name: str, array: np.ndarray, *, binary: bool) -> triton.InferInput:
    infer_input = triton.InferInput(name, list(array.shape), v2.datatype_of(array.dtype))
    infer_input.set_data_from_numpy(array, binary_data=binary)
    return infer_input


def test_health_and_metadata_through_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("mlp") and not client.is_model_ready("nope")
    assert client.get_model_metadata("add")["inputs"][2] == {"name": "n", "datatype": "INT64", "shape": [-1, 1]}
    assert client.get_model_metadata("scale", "2")["versions"] == ["1", "2"]
    with pytest.raises(InferenceServerException, match="unknown model 'nope'"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize(
    "binary",
    [(True, True), (True, False), (False, True), (False, False)],
    ids=["binary-in-out", "binary-in-json-out", "json-in-binary-out", "json-in-out"],
)
def test_infer_through_tritonclient_equals_onnxruntime(
    client: triton.InferenceServerClient, served: Path, binary: tuple[bool, bool]
) -> None:
    binary_in, binary_out = binary
    x = np.random.default_rng(2).standard_normal((7, 16)).astype(np.float32)
    result = client.infer(
        "mlp", [tensor("x", x, binary=binary_in)], outputs=[triton.InferRequestedOutput("y", binary_data=binary_out)]
    )
    np.testing.assert_allclose(result.as_numpy("y"), direct(served, "mlp", {"x": x})[0], rtol=1e-6)
    feeds = {"a": x[:, :3].copy(), "b": x[:, 3:6].copy(), "n": np.arange(7, dtype=np.int64).reshape(7, 1)}
    result = client.infer("add", [tensor(name, array, binary=binary_in) for name, array in feeds.items()])
    total, count = direct(served, "add", feeds)
    np.testing.assert_allclose(result.as_numpy("total"), total, rtol=1e-6)
    assert result.as_numpy("count").tolist() == count.tolist()


def test_a_body_larger_than_django_s_upload_limit_is_served(client: triton.InferenceServerClient, served: Path) -> None:
    """The view streams the body under the protocol's own cap, not DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB)."""
    save_model(build_scale_model(3.0, features=256), served, "wide", 1)  # before the server's first use
    x = np.random.default_rng(3).standard_normal((3000, 256)).astype(np.float32)  # 3 MB
    result = client.infer("wide", [tensor("x", x, binary=True)])
    np.testing.assert_array_equal(result.as_numpy("y"), direct(served, "wide", {"x": x})[0])


def test_a_system_check_catches_bad_limits(repository: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "V2_PROTOCOL": True, "V2_LIMITS": {"a": 1}}):
        errors = [m for m in run_checks() if m.id == "inprocserve.E008"]
    assert len(errors) == 1 and "V2_LIMITS" in errors[0].msg


def test_off_unless_the_setting_is_on(repository: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        assert Client().get("/v2/health/live").status_code == 404
    reset_server()


X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


def infer_json(*inputs: dict[str, Any]) -> bytes:
    return json.dumps({"inputs": list(inputs)}).encode()


@pytest.mark.parametrize(
    ("path", "body", "headers", "status", "message"),
    [
        ("/v2/models/nope/infer", infer_json(X), {}, 404, "unknown model 'nope'"),
        ("/v2/models/scale/infer", infer_json({**X, "datatype": "FLOAT"}), {}, 400, "unknown datatype 'FLOAT'"),
        ("/v2/models/scale/infer", infer_json({**X, "shape": [2, 4]}), {}, 400, "shape \\[2, 4\\] needs 8"),
        ("/v2/models/scale/infer", infer_json({**X, "shape": [1, 2], "data": [1, 2]}), {}, 400, "expected size 4"),
        ("/v2/models/scale/infer", infer_json({**X, "data": [[[[[[1, 2, 3, 4]]]]]]}), {}, 400, "nested deeper than 4"),
        ("/v2/models/scale/infer", b" " * 5000, {}, 400, "over the 4096 allowed"),
        ("/v2/models/scale/infer", infer_json(X), {"X-Request-Timeout-Ms": "0"}, 504, "time budget was spent"),
        ("/v2/health/ready", b"", {}, 405, "use GET"),
    ],
)
def test_error_paths_answer_json_with_the_right_status(
    repository: Path, path: str, body: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    limits = v2.Limits(max_body_bytes=4096, max_json_depth=4)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "V2_PROTOCOL": True, "V2_LIMITS": limits}):
        response = Client().post(path, data=body, content_type="application/json", headers=headers)
    reset_server()
    assert response.status_code == status
    assert list(response.json()) == ["error"]
    assert re.search(message, response.json()["error"]), response.json()


def test_a_body_nested_too_deeply_for_the_json_parser_is_a_400(repository: Path) -> None:
    # 100,000 levels: past the parser's limit on every Python (3.13's parses several thousand, and how many
    # depends on how deep the stack already is; 3.11's and 3.12's under 1,000)
    body = b"[" * 100_000 + b"]" * 100_000
    limits = v2.Limits(max_body_bytes=len(body))
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "V2_PROTOCOL": True, "V2_LIMITS": limits}):
        response = Client().post("/v2/models/scale/infer", data=body, content_type="application/json")
    reset_server()
    assert (response.status_code, response.json()) == (400, {"error": "the request JSON is nested too deeply to parse"})


def test_not_ready_is_503(tmp_path: Path) -> None:
    broken = tmp_path / "models" / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not onnx")
    with override_settings(INPROCSERVE={"REPOSITORY": str(tmp_path / "models"), "V2_PROTOCOL": True}):
        web = Client()
        ready = web.get("/v2/health/ready")
        model = web.get("/v2/models/broken/ready")
        live = web.get("/v2/health/live")
    reset_server()
    assert ready.status_code == 503 and "broken" in ready.json()["error"]
    assert model.status_code == 503 and "cannot load" in model.json()["error"]
    assert live.status_code == 200 and live.json() == {"live": True}


def test_the_request_s_user_routes_the_rollout(repository: Path) -> None:
    rollout = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
    )
    models = {"scale": inprocserve.ModelConfig(rollout=rollout, version_policy=inprocserve.VersionPolicy.all())}
    x = np.ones((1, 4), np.float32)
    body, headers = v2.encode_infer_request({"x": x})
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "MODELS": models, "V2_PROTOCOL": True}):
        expected = {u: get_server().predict("scale", x, context={"user_id": u}) for u in "abcdefgh"}
        answers = {
            u: Client().post(
                "/v2/models/scale/infer",
                data=body,
                content_type="application/octet-stream",
                headers={**headers, "X-User-Id": u},
            )
            for u in expected
        }
    reset_server()
    assert {p.variant for p in expected.values()} == {"canary", "stable"}, "pick users that land on both sides"
    for user, response in answers.items():
        decoded = v2.decode_infer_response(response.content, response.headers)
        assert decoded.parameters["inprocserve_variant"] == expected[user].variant
        assert decoded.model_version == str(expected[user].version)


@pytest.mark.parametrize(
    "chunks",
    [
        b"zz\r\n{}\r\n0\r\n\r\n",  # a chunk size that is no number
        b"40\r\n" + infer_json(X)[:20],  # the client goes away mid-chunk (it half-closes, to read the answer)
    ],
)
def test_a_broken_chunked_body_is_a_json_400_not_a_500(served: Path, chunks: bytes) -> None:
    # The WSGI server raises from the body's read (werkzeug's and gunicorn's alike): it was a 500 in HTML, and
    # an error logged by django.request (mailed to ADMINS in production), for what a client sent.
    server = make_server("127.0.0.1", 0, WSGIHandler(), threaded=True)
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
            status, body = response.status, response.read()
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    assert status == 400, body
    assert "the request body cannot be read to its end" in json.loads(body)["error"]


def test_readiness_probes_answer_503_at_once_while_the_worker_warms_up(tmp_path: Path) -> None:
    # In eager mode each worker builds its server on a thread after the fork. /-/inprocserve/ready answered
    # 503 "warming" then, but /v2/health/ready and the model's ready waited for the whole warm-up (a probe,
    # and a worker thread, held for as long as the models take to load and warm), then answered 200.
    folder = tmp_path / "models"
    save_model(build_mlp_model((256, 1024, 1024, 2), seed=1), folder, "slow", 1)
    slow_warmup = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(rows=256, runs=200))
    settings = {"REPOSITORY": str(folder), "CONFIG": slow_warmup, "V2_PROTOCOL": True, "EAGER": True}
    with override_settings(INPROCSERVE=settings):
        warm = threading.Thread(target=warm_after_fork)  # what each forked worker runs
        warm.start()
        try:
            while not building() and warm.is_alive():  # bounded: the thread builds at once
                time.sleep(0.001)
            client = Client()
            for path in ("/v2/health/ready", "/v2/models/slow/ready", "/v2/models/slow/versions/1/ready"):
                response = client.get(path)
                assert response.status_code == 503, (path, response.json())
                assert "warming up" in response.json()["error"] and response["Retry-After"] == "1"
        finally:
            warm.join(timeout=120)
        assert Client().get("/v2/health/ready").status_code == 200
    reset_server()
