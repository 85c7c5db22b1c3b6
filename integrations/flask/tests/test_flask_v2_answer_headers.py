"""Every answer of the Open Inference Protocol routes (``/v2``) carries ``web.ANSWER_HEADERS``, as the plug-in's
other JSON answers do: JSON and binary-tensor answers, and every error (400, 404, 405, 411, 413, 503), through
Flask's request cycle and through a real HTTP server on loopback."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from inprocserve_flask import Inprocserve
from werkzeug.serving import make_server

from inprocserve import v2, web
from inprocserve.testing import build_scale_model, save_model

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    application = Flask(__name__)
    application.config.update(
        INPROCSERVE_REPOSITORY=str(tmp_path / "models"), INPROCSERVE_V2_PROTOCOL=True, MAX_CONTENT_LENGTH=100_000
    )
    Inprocserve(application)
    yield application
    Inprocserve.close(application)


def nosniff(headers: Any) -> str | None:
    value: str | None = headers.get("X-Content-Type-Options")
    return value


JSON_BODY = json.dumps({"inputs": [X]}).encode()
BINARY_BODY, BINARY_HEADERS = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)}, binary=True)


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("GET", "/v2", None, {}, 200),
        ("GET", "/v2/health/live", None, {}, 200),
        ("GET", "/v2/health/ready", None, {}, 200),
        ("HEAD", "/v2/health/ready", None, {}, 200),
        ("GET", "/v2/models/scale", None, {}, 200),
        ("GET", "/v2/models/scale/ready", None, {}, 200),
        ("POST", "/v2/models/scale/infer", JSON_BODY, {"Content-Type": "application/json"}, 200),
        ("POST", "/v2/models/scale/infer", BINARY_BODY, BINARY_HEADERS, 200),
        ("OPTIONS", "/v2/models/scale/infer", None, {}, 200),
        ("POST", "/v2/models/scale/infer", b"{not json", {}, 400),
        ("POST", "/v2/models/<script>/infer", JSON_BODY, {}, 404),
        ("GET", "/v2/nothing/here", None, {}, 404),
        ("GET", "/v2%0A", None, {}, 404),
        ("GET", "/v2/models/scale/infer", None, {}, 405),
        ("PROPFIND", "/v2/models/scale/infer", None, {}, 405),  # (answered before routing, by _routing_error)
        ("POST", "/v2/models/scale/infer", b"x" * 200_000, {}, 413),  # (over MAX_CONTENT_LENGTH)
    ],
)
def test_every_v2_answer_is_never_sniffed(
    app: Flask, method: str, path: str, body: bytes | None, headers: dict[str, str], status: int
) -> None:
    response = app.test_client().open(path, method=method, data=body, headers=headers)
    assert response.status_code == status, response.get_data()[:300]
    assert nosniff(response.headers) == "nosniff"
    assert "Cache-Control" not in response.headers  # (no answer of the protocol names a file or a secret)


def test_a_binary_tensor_answer_is_never_sniffed(app: Flask) -> None:
    headers = {**BINARY_HEADERS}
    response = app.test_client().post("/v2/models/scale/infer", data=BINARY_BODY, headers=headers)
    assert response.status_code == 200
    assert "Inference-Header-Content-Length" in response.headers  # (binary outputs: not a JSON body)
    assert nosniff(response.headers) == "nosniff"


def test_the_411_of_an_unending_chunked_body_and_the_503_after_close_are_never_sniffed(app: Flask) -> None:
    client = app.test_client()
    response = client.post(
        "/v2/models/scale/infer",
        data=b"",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": False, "CONTENT_LENGTH": ""},
    )
    assert response.status_code == 411
    assert nosniff(response.headers) == "nosniff"
    Inprocserve.close(app)
    response = client.get("/v2/health/ready")
    assert response.status_code == 503
    assert nosniff(response.headers) == "nosniff"


def test_a_server_that_cannot_start_answers_503_never_sniffed(app: Flask, tmp_path: Path) -> None:
    for folder in sorted((tmp_path / "models").rglob("*"), reverse=True):  # (gone before the first request)
        folder.unlink() if folder.is_file() else folder.rmdir()
    (tmp_path / "models").rmdir()
    response = app.test_client().get("/v2/models/scale")
    assert response.status_code == 503
    assert response.get_json() == {"error": web.NO_SERVER}
    assert nosniff(response.headers) == "nosniff"


def test_over_loopback_http(app: Flask) -> None:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        for method, path, body, headers in [
            ("POST", "/v2/models/scale/infer", BINARY_BODY, BINARY_HEADERS),
            ("POST", "/v2/models/nope/infer", JSON_BODY, {}),
        ]:
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            connection.request(method, path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            connection.close()
            assert answer.getheader("X-Content-Type-Options") == "nosniff", (path, answer.status)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
