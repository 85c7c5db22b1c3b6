"""The headers of the endpoints' JSON answers, the status route's empty segment, and a token that the
environment made a number: through Flask's test client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from inprocserve_flask import Inprocserve

import inprocserve
from inprocserve.testing import build_scale_model, save_model

TOKEN = "admin-token-4c1d"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/-/inprocserve"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    return folder


@pytest.fixture
def app(repository: Path) -> Iterator[Flask]:
    application = Flask("shop")
    application.config.update(
        INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_ADMIN_TOKEN=TOKEN, INPROCSERVE_STATUS_PAGE=True
    )
    Inprocserve(application)
    yield application
    Inprocserve.close(application)


# (method, path, headers, status, Cache-Control)
ANSWERS = [
    ("GET", "/health", {}, 200, None),
    ("GET", "/ready", {}, 200, None),
    ("POST", "/health", {}, 405, None),
    ("POST", "/status", {}, 405, None),
    ("GET", "/nothing-here", {}, 404, None),
    ("GET", "/models", {}, 200, "no-store"),
    ("GET", "/models", BEARER, 200, "no-store"),  # (file-system paths)
    ("POST", "/reload", BEARER, 200, "no-store"),
    ("POST", "/reload", {}, 401, "no-store"),
    ("GET", "/reload", BEARER, 405, "no-store"),
    ("POST", "/models/scale/kill", BEARER, 200, "no-store"),
    ("POST", "/models/scale/resume", BEARER, 200, "no-store"),
    ("POST", "/models/nope/kill", BEARER, 404, "no-store"),
    ("POST", "/models/scale/switch", BEARER, 400, "no-store"),  # (no version)
]


@pytest.mark.parametrize(("method", "path", "headers", "status", "cache"), ANSWERS)
def test_every_json_answer_is_never_sniffed_and_the_admin_ones_never_stored(
    app: Flask, method: str, path: str, headers: dict[str, str], status: int, cache: str | None
) -> None:
    response = app.test_client().open(PREFIX + path, method=method, headers=headers)
    assert response.status_code == status and response.is_json, response.get_data()[:200]
    assert response.headers.get("X-Content-Type-Options") == "nosniff", (path, dict(response.headers))
    assert response.headers.get("Cache-Control") == cache, (path, dict(response.headers))
    if path == "/models" and headers:  # what no cache may keep
        assert str(app.config["INPROCSERVE_REPOSITORY"]) in response.get_data(as_text=True)


def test_an_admin_action_refused_by_the_error_handler_carries_them_too(app: Flask) -> None:
    """After Inprocserve.close(app) an admin action raises ServerClosedError, answered by the app's error handler."""
    Inprocserve.close(app)
    response = app.test_client().post(f"{PREFIX}/reload", headers=BEARER)
    assert response.status_code == 503 and response.json["error"] == "unavailable", response.json  # type: ignore[index]
    assert response.headers.get("X-Content-Type-Options") == "nosniff", dict(response.headers)
    assert response.headers.get("Cache-Control") == "no-store", dict(response.headers)


@pytest.mark.usefixtures("rules_keep_their_slashes")
def test_the_status_route_with_an_empty_segment_is_the_json_404(app: Flask) -> None:
    """``//status`` was werkzeug's HTML 308 to ``/status``, where ``//models`` and the others are the JSON 404."""
    for path in ("//status", "//models"):
        response = app.test_client().get(PREFIX + path, headers=BEARER)
        assert response.status_code == 404 and response.is_json, (path, response.status_code, response.headers)
        assert response.json["error"] == "not_found"  # type: ignore[index]


def test_a_token_of_digits_from_the_environment_says_how_to_keep_it_a_string(
    repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask's from_prefixed_env reads the value as JSON: an int, refused as "must be a string, got int" alone."""
    monkeypatch.setenv("FLASK_INPROCSERVE_ADMIN_TOKEN", "12345678901234567890")
    app = Flask("shop")
    app.config.update(INPROCSERVE_REPOSITORY=str(repository))
    app.config.from_prefixed_env()
    assert app.config["INPROCSERVE_ADMIN_TOKEN"] == 12345678901234567890
    with pytest.raises(inprocserve.ConfigurationError) as refused:
        Inprocserve(app)
    message = str(refused.value)
    assert "INPROCSERVE_ADMIN_TOKEN must be a string, got int" in message
    assert "from_prefixed_env" in message and "'\"1234...\"'" in message and "os.environ" in message
    assert "12345678901234567890" not in message  # (the token itself is never shown)

    # the advice works: quoted as JSON in the environment, it stays a string, and the endpoints take it
    monkeypatch.setenv("FLASK_INPROCSERVE_ADMIN_TOKEN", '"12345678901234567890"')
    app = Flask("shop")
    app.config.update(INPROCSERVE_REPOSITORY=str(repository))
    app.config.from_prefixed_env()
    Inprocserve(app)
    try:
        headers = {"Authorization": "Bearer 12345678901234567890"}
        assert app.test_client().post(f"{PREFIX}/reload", headers=headers).status_code == 200
    finally:
        Inprocserve.close(app)
