"""The headers of the endpoints' JSON answers, through Django's test client (the test project's URLconf)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core.checks import run_checks
from django.test import Client, override_settings
from inprocserve_django import close_server, reset_server

from inprocserve.testing import build_scale_model, save_model

TOKEN = "admin-token-4c1d"
BEARER = {"Authorization": f"Bearer {TOKEN}"}
PREFIX = "/-/inprocserve"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    settings = {"REPOSITORY": str(folder), "ADMIN_TOKEN": TOKEN, "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": TOKEN}
    reset_server()
    with override_settings(INPROCSERVE=settings):
        yield folder
    reset_server()


# (method, path, headers, status, Cache-Control): the answers of the Flask plug-in's test of the same name
ANSWERS = [
    ("GET", "/health", {}, 200, None),
    ("GET", "/ready", {}, 200, None),
    ("POST", "/health", {}, 405, None),
    ("POST", "/status", {}, 405, None),
    ("GET", "/models%0A", {}, 404, None),
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
    served: Path, method: str, path: str, headers: dict[str, str], status: int, cache: str | None
) -> None:
    response = Client().generic(method, PREFIX + path, headers=headers)
    assert response.status_code == status and response["Content-Type"] == "application/json", response.content[:200]
    assert response.get("X-Content-Type-Options") == "nosniff", (path, dict(response.headers))
    assert response.get("Cache-Control") == cache, (path, dict(response.headers))
    if path == "/models" and headers:  # what no cache may keep
        assert str(served) in response.content.decode()


def test_an_admin_action_after_close_server_carries_them_too(served: Path) -> None:
    """The ServerClosedError of get_server(), answered 503 as the middleware answers it (here in the view)."""
    close_server()
    response = Client().post(f"{PREFIX}/reload", headers=BEARER)
    assert response.status_code == 503 and response.json()["error"] == "unavailable", response.content[:200]
    assert response["Retry-After"] == "1"
    assert response.get("X-Content-Type-Options") == "nosniff", dict(response.headers)
    assert response.get("Cache-Control") == "no-store", dict(response.headers)


@override_settings(MIDDLEWARE=[])
def test_an_admin_action_after_close_server_is_a_503_without_the_middleware(served: Path) -> None:
    """Answered in the view, the endpoint's own library errors do not depend on where MIDDLEWARE lists it."""
    close_server()
    response = Client().post(f"{PREFIX}/reload", headers=BEARER)
    assert response.status_code == 503 and response["Cache-Control"] == "no-store", response.content[:200]


def test_a_token_that_is_a_number_says_how_it_became_one(served: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(served), "ADMIN_TOKEN": 12345678901234567890}):
        errors = [error for error in run_checks() if error.id and error.id.startswith("inprocserve.")]
    assert errors, "the number token was taken"
    assert any("from_prefixed_env" in error.msg and "got int" in error.msg for error in errors), errors
