"""A view of the project's own that rolls back, switches or promotes, and lets the library's refusal through,
answers as the admin endpoints answer the same call (a 409 and its code), not with a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from django.http import HttpRequest, JsonResponse
from django.test import Client, override_settings
from django.urls import include, path
from inprocserve_django import get_server, reset_server

from inprocserve.testing import build_scale_model, save_model

ADMIN = {"HTTP_AUTHORIZATION": "Bearer admin-secret"}


def roll_back(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"stable": get_server().rollback("scale")})


def promote(request: HttpRequest) -> JsonResponse:  # no request was served yet: no recent input to compare on
    return JsonResponse(get_server().promote("scale", 1, min_samples=1).to_dict())


urlpatterns = [
    path("ops/rollback", roll_back),
    path("ops/promote", promote),
    path("-/inprocserve/", include("inprocserve_django.urls")),
]


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path / "models", "scale", version)
    settings = {"REPOSITORY": str(tmp_path / "models"), "ADMIN_TOKEN": "admin-secret"}
    with override_settings(ROOT_URLCONF=__name__, INPROCSERVE=settings):
        yield Client()
    reset_server()


def test_a_views_rollback_with_nothing_to_roll_back_is_the_admin_endpoints_409(client: Client) -> None:
    response = client.post("/ops/rollback")
    admin = client.post("/-/inprocserve/models/scale/rollback", "{}", content_type="application/json", **ADMIN)
    assert (response.status_code, response.json()["error"]) == (409, "nothing_to_roll_back"), response.content
    assert (admin.status_code, admin.json()["error"]) == (409, "nothing_to_roll_back")
    assert "nothing was changed" in response.json()["message"]


def test_a_views_refused_promotion_is_a_409_incompatible(client: Client) -> None:
    response = client.post("/ops/promote")
    assert (response.status_code, response.json()["error"]) == (409, "incompatible"), response.content
    assert "only 0 recent input(s) to compare on, 1 required" in response.json()["message"]
