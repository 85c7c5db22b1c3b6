"""What docs/django.md promises of the admin endpoints, checked through real Django request cycles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client, override_settings
from inprocserve_django import reset_server

from inprocserve._repository import MAX_VERSION_DIGITS
from inprocserve.testing import build_scale_model, save_model

TOKEN = "a-long-admin-token"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    with override_settings(INPROCSERVE={"REPOSITORY": str(tmp_path / "models"), "ADMIN_TOKEN": TOKEN}):
        yield tmp_path / "models"
    reset_server()


@pytest.mark.usefixtures("served")
def test_the_admin_version_bound_is_the_one_docs_state() -> None:
    # docs/django.md said versions are "ints from 1 to 2**31-1": 2147483648 was no 400 but a 404 (a version with no
    # folder), and the bound the code holds to is the digits a version folder may have.
    page = (Path(__file__).parents[3] / "docs" / "django.md").read_text()
    assert "2³¹" not in page
    assert f"versions are positive ints of at most {MAX_VERSION_DIGITS} digits" in page
    client = Client()

    def switch(version: int) -> tuple[int, str]:
        answer = client.post(
            "/-/inprocserve/models/scale/switch",
            json.dumps({"version": version}),
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {TOKEN}",
        )
        return answer.status_code, answer.json()["error"]

    assert switch(2**31) == (404, "model_not_found")
    assert switch(10**MAX_VERSION_DIGITS - 1) == (404, "model_not_found")
    assert switch(10**MAX_VERSION_DIGITS) == (400, "invalid_input")
