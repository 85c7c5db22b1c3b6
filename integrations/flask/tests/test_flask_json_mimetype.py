"""Every JSON answer of the plug-in says the app's own JSON type (``app.json.mimetype``): its errors and admin
answers too, whose headers from ``inprocserve.web`` carry a plain ``application/json`` of their own."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import inprocserve_flask
import pytest
from flask import Flask
from inprocserve_flask import Inprocserve

from inprocserve.testing import build_scale_model, save_model

TOKEN = "admin-token-9e2f"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
TYPE = "application/json; charset=utf-8"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    application = Flask("shop")
    application.json.mimetype = TYPE  # type: ignore[attr-defined]
    application.config.update(INPROCSERVE_REPOSITORY=str(folder), INPROCSERVE_ADMIN_TOKEN=TOKEN)
    Inprocserve(application)

    @application.post("/predict")
    def predict() -> object:
        return inprocserve_flask.predict("nope", {"x": [[1.0, 2.0]]})

    yield application
    Inprocserve.close(application)


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/-/inprocserve/models/scale/kill", BEARER, 200),
        ("/-/inprocserve/models/nope/kill", BEARER, 404),
        ("/-/inprocserve/reload", {**BEARER, "Content-Encoding": "gzip"}, 415),
        ("/predict", {}, 404),  # (a library error raised in a view of the app's)
    ],
)
def test_the_errors_and_admin_answers_say_the_app_s_json_type(
    app: Flask, path: str, headers: dict[str, str], status: int
) -> None:
    client = app.test_client()
    assert client.get("/-/inprocserve/ready").headers.getlist("Content-Type") == [TYPE]
    response = client.post(path, headers=headers)
    assert (response.status_code, response.headers.getlist("Content-Type")) == (status, [TYPE])
