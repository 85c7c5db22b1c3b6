"""An app written from the docs alone: an application factory, a blueprint of its own calling ``predict``, the
plug-in's endpoints and the protocol, driven through Flask's test client with real onnxruntime models."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Blueprint, Flask, request, url_for
from inprocserve_flask import Inprocserve, OutsideRequestError, apredict, predict, timeout

import inprocserve
from inprocserve.testing import build_scale_model, save_model

scoring = Blueprint("scoring", __name__)


@scoring.post("/score")
def score() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "x" not in body:
        return {"error": 'expected {"x": [[...], ...]}'}, 400
    result = predict("fraud", {"x": body["x"]})
    return {"y": result["y"].tolist(), "version": result.version}


@scoring.post("/ascore")
@timeout(30)
async def ascore() -> Any:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or "x" not in body:
        return {"error": 'expected {"x": [[...], ...]}'}, 400
    result = await apredict("fraud", {"x": body["x"]})
    return {"y": result["y"].tolist(), "version": result.version}


def create_app(**config: Any) -> Flask:
    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = "models/"
    app.config.update(config)
    Inprocserve().init_app(app)
    app.register_blueprint(scoring, url_prefix="/api")
    return app


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The team's checkout, the working directory, holding ``models/`` (as docs/quickstart.md lays it out)."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path / "models", "fraud", version)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def app(project: Path) -> Iterator[Flask]:
    application = create_app(INPROCSERVE_V2_PROTOCOL=True)
    yield application
    Inprocserve.close(application)


def test_url_for_the_protocol_builds_a_path_the_protocol_answers(app: Flask) -> None:
    with app.test_request_context():
        metadata = url_for("inprocserve_v2.protocol", rest="models/fraud")
        infer = url_for("inprocserve_v2.protocol", rest="models/fraud/infer")
        root = url_for("inprocserve_v2.protocol")
    assert (metadata, infer, root) == ("/v2/models/fraud", "/v2/models/fraud/infer", "/v2")
    client = app.test_client()
    answer = client.get(metadata)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.json is not None and answer.json["name"] == "fraud"
    body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
    inferred = client.post(infer, json=body)
    assert inferred.status_code == 200, inferred.get_data(as_text=True)
    assert inferred.json is not None and inferred.json["outputs"][0]["data"] == [2, 4, 6, 8]


@pytest.mark.parametrize("endpoint", ["health", "ready", "models"])
@pytest.mark.usefixtures("rules_keep_their_slashes")
def test_an_empty_segment_before_a_read_only_endpoint_is_the_json_404(app: Flask, endpoint: str) -> None:
    answer = app.test_client().get(f"/-/inprocserve//{endpoint}")
    assert answer.status_code == 404, (answer.status_code, answer.headers.get("Location"))
    assert answer.is_json and answer.json is not None
    assert answer.json["error"] == "not_found"
    assert f"/-/inprocserve//{endpoint}" in answer.json["message"]
    assert app.test_client().get(f"/-/inprocserve/{endpoint}").status_code == 200


def test_a_relative_repository_is_the_folder_init_app_checked_after_a_change_of_directory(
    project: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    app = create_app()  # "models/" under the project, checked by init_app
    try:
        os.chdir(tmp_path_factory.mktemp("elsewhere"))  # (monkeypatch restores the project's, then the first)
        answer = app.test_client().post("/api/score", json={"x": [[1, 2, 3, 4]]})
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert answer.json == {"y": [[2.0, 4.0, 6.0, 8.0]], "version": 2}
        assert app.test_client().get("/-/inprocserve/ready").status_code == 200
    finally:
        Inprocserve.close(app)


def test_an_async_view_predicts_with_the_requests_deadline(app: Flask) -> None:
    client = app.test_client()
    answer = client.post("/api/ascore", json={"x": [[1, 2, 3, 4]]}, headers={"X-User-Id": "alice"})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.json == {"y": [[2.0, 4.0, 6.0, 8.0]], "version": 2}
    spent = client.post("/api/ascore", json={"x": [[1, 2, 3, 4]]}, headers={"X-Request-Timeout-Ms": "0"})
    assert spent.status_code == 504, spent.get_data(as_text=True)
    assert spent.json is not None and spent.json["error"] == "deadline_exceeded"
    malformed = client.post("/api/ascore", json={"x": [[1, 2, 3, 4]]}, headers={"X-User-Id": "alice,bob"})
    assert malformed.status_code == 400, malformed.get_data(as_text=True)
    assert "X-User-Id" in malformed.get_data(as_text=True)


def test_apredict_outside_a_request_names_what_to_await_instead(app: Flask) -> None:
    with app.app_context(), pytest.raises(OutsideRequestError) as raised:
        asyncio.run(apredict("fraud", {"x": [[1, 2, 3, 4]]}))
    message = str(raised.value)
    assert "inprocserve_flask.apredict reads the request's user" in message
    assert "call inprocserve_flask.server.apredict('fraud', inputs)" in message
    assert "pass context= and timeout_s= to apredict" in message
    with app.app_context():  # (what it says works: the same inputs, with context and timeout_s given)
        given = asyncio.run(apredict("fraud", {"x": [[1, 2, 3, 4]]}, context={}, timeout_s=30))
    assert given["y"].tolist() == [[2.0, 4.0, 6.0, 8.0]]


@pytest.mark.parametrize(
    ("folder", "said"),
    [
        ("models/", "a relative path is read from the working directory at init_app: it was looked for at "),
        ("~/models", "~ is not expanded: it was looked for at "),
    ],
)
def test_a_relative_repository_missing_at_init_app_names_where_it_was_looked_for(
    project: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, folder: str, said: str
) -> None:
    # It said "INPROCSERVE_REPOSITORY ('models/') is not a folder": the folder is there, in the project, and the
    # server was started elsewhere (a service, another folder's shell), which the message did not say.
    monkeypatch.setenv("HOME", str(project))  # (project/models is ~/models)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    os.chdir(elsewhere)
    with pytest.raises(inprocserve.ConfigurationError) as refused:
        create_app(INPROCSERVE_REPOSITORY=folder)
    message = str(refused.value)
    assert said + str(elsewhere / folder) in message, message
    if folder.startswith("~"):
        assert "os.path.expanduser('~/models')" in message, message
        app = create_app(INPROCSERVE_REPOSITORY=os.path.expanduser(folder))  # (what it says works)
        try:
            assert app.test_client().post("/api/score", json={"x": [[1, 2, 3, 4]]}).status_code == 200
        finally:
            Inprocserve.close(app)
