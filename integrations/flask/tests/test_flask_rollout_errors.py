"""A view of the application's own that rolls back, switches or promotes, and lets the library's refusal through,
answers as the admin endpoints answer the same call (a 409 and its code), not with a 500."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from inprocserve_flask import Inprocserve, server

from inprocserve.testing import build_scale_model, save_model

ADMIN = {"Authorization": "Bearer admin-secret"}


@pytest.fixture
def app(tmp_path: Path) -> Any:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path / "models", "scale", version)
    application = Flask(__name__)
    application.config.update(INPROCSERVE_REPOSITORY=str(tmp_path / "models"), INPROCSERVE_ADMIN_TOKEN="admin-secret")
    Inprocserve(application)

    @application.post("/ops/rollback")
    def roll_back() -> Any:
        return {"stable": server.rollback("scale")}

    @application.post("/ops/promote")
    def promote() -> Any:  # no request was served yet: no recent input to compare the candidate on
        return server.promote("scale", 1, min_samples=1).to_dict()

    yield application
    Inprocserve.close(application)


def test_a_views_rollback_with_nothing_to_roll_back_is_the_admin_endpoints_409(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/ops/rollback")
    admin = client.post("/-/inprocserve/models/scale/rollback", headers=ADMIN)
    assert response.status_code == 409 and response.json["error"] == "nothing_to_roll_back", response.text
    assert (admin.status_code, admin.json["error"]) == (409, "nothing_to_roll_back")
    assert "nothing was changed" in response.json["message"]


def test_a_views_refused_promotion_is_a_409_incompatible(app: Flask) -> None:
    response = app.test_client().post("/ops/promote")
    assert response.status_code == 409 and response.json["error"] == "incompatible", response.text
    assert "only 0 recent input(s) to compare on, 1 required" in response.json["message"]
