"""Every answer of the Open Inference Protocol view (``/v2``) carries ``web.ANSWER_HEADERS``, as the plug-in's
other JSON answers do, with or without ``SecurityMiddleware`` (the test project has none): JSON and
binary-tensor answers, and every error (400, 404, 405, 411, 503), through Django's request cycle and through a
real HTTP server on loopback."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings
from inprocserve_django import reset_server
from inprocserve_django.server import close_server
from werkzeug.serving import make_server

from inprocserve import v2, web
from inprocserve.testing import build_scale_model, save_model

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1.0, 2.0, 3.0, 4.0]}
JSON_BODY = json.dumps({"inputs": [X]}).encode()
BINARY_BODY, BINARY_HEADERS = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)}, binary=True)


@pytest.fixture
def repository(tmp_path: Path) -> Iterator[Path]:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    with override_settings(INPROCSERVE={"REPOSITORY": str(tmp_path / "models"), "V2_PROTOCOL": True}):
        yield tmp_path / "models"
    reset_server()


def meta(headers: dict[str, str]) -> dict[str, str]:
    """Request headers as the test client's ``**extra`` (WSGI environ keys)."""
    keys = {name: web.environ_key(name) for name in headers}
    return {str(keys[name]): value for name, value in headers.items()}


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "status"),
    [
        ("get", "/v2", None, {}, 200),
        ("get", "/v2/health/live", None, {}, 200),
        ("get", "/v2/health/ready", None, {}, 200),
        ("head", "/v2/health/ready", None, {}, 200),
        ("get", "/v2/models/scale", None, {}, 200),
        ("get", "/v2/models/scale/ready", None, {}, 200),
        ("post", "/v2/models/scale/infer", JSON_BODY, {}, 200),
        ("post", "/v2/models/scale/infer", BINARY_BODY, BINARY_HEADERS, 200),
        ("post", "/api/ml/v2/models/scale/infer", JSON_BODY, {}, 200),  # (the protocol under a prefix)
        ("options", "/v2/models/scale/infer", None, {}, 200),
        ("post", "/v2/models/scale/infer", b"{not json", {}, 400),
        ("post", "/v2/models/<script>/infer", JSON_BODY, {}, 404),
        ("get", "/v2/nothing/here", None, {}, 404),
        ("get", "/v2/models/scale/infer", None, {}, 405),
        ("post", "/v2/models/scale/infer", b"", {"Transfer-Encoding": "chunked", "Content-Length": ""}, 411),
    ],
)
def test_every_v2_answer_is_never_sniffed(
    repository: Path, method: str, path: str, body: bytes | None, headers: dict[str, str], status: int
) -> None:
    client = Client()
    call = getattr(client, method)
    if body is None:
        response = call(path, **meta(headers))
    else:
        response = call(path, data=body, content_type="application/octet-stream", **meta(headers))
    assert response.status_code == status, response.content[:300]
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    assert "Cache-Control" not in response.headers  # (no answer of the protocol names a file or a secret)


def test_a_binary_tensor_answer_is_never_sniffed(repository: Path) -> None:
    response = Client().post(
        "/v2/models/scale/infer", data=BINARY_BODY, content_type="application/octet-stream", **meta(BINARY_HEADERS)
    )
    assert response.status_code == 200
    assert "Inference-Header-Content-Length" in response.headers  # (binary outputs: not a JSON body)
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


def test_the_503s_of_a_closed_server_and_of_one_that_cannot_start_are_never_sniffed(repository: Path) -> None:
    client = Client()
    assert client.get("/v2/health/live").status_code == 200  # (the settings checked while the folder was there)
    moved = repository.rename(repository.with_name("elsewhere"))  # (gone before the server's first build)
    response = client.get("/v2/models/scale")
    moved.rename(repository)
    assert (response.status_code, response.json()) == (503, {"error": web.NO_SERVER})
    assert response.headers.get("X-Content-Type-Options") == "nosniff"
    close_server()
    response = Client().get("/v2/health/ready")
    assert response.status_code == 503
    assert response.headers.get("X-Content-Type-Options") == "nosniff"


def test_over_loopback_http(repository: Path) -> None:
    server = make_server("127.0.0.1", 0, WSGIHandler(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        for path, body, headers in [
            ("/v2/models/scale/infer", BINARY_BODY, BINARY_HEADERS),
            ("/v2/models/nope/infer", JSON_BODY, {}),
        ]:
            connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
            connection.request("POST", path, body=body, headers=headers)
            answer = connection.getresponse()
            answer.read()
            connection.close()
            assert answer.getheader("X-Content-Type-Options") == "nosniff", (path, answer.status)
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
