"""The admin endpoints called as a Django project's own tests call them: ``self.client.post(url, headers=...)``
with no data sends an empty multipart form (``--BoUnDaRy...--``), where curl or an HTTP library sends no body."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from inprocserve.testing import build_scale_model, save_model

TOKEN = "s3cret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings_dict(tmp_path: Path) -> dict[str, object]:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path, "fraud", version)
    return {"REPOSITORY": str(tmp_path), "ADMIN_TOKEN": TOKEN}


@pytest.mark.parametrize("action", ["reload", "kill", "resume"])
def test_a_test_clients_post_without_data_is_no_body(settings_dict: dict[str, object], action: str) -> None:
    # It was a 400, {"error": "invalid_input", "message": "the body is not JSON: send a JSON object {}, or no
    # body"}, to a test that had sent no body: the test client's empty form reached the JSON parser.
    url = reverse("inprocserve:reload") if action == "reload" else reverse(f"inprocserve:{action}", args=["fraud"])
    with override_settings(INPROCSERVE=settings_dict):
        client = Client(enforce_csrf_checks=True)  # (the bearer token authenticates them, never a cookie)
        answer = client.post(url, headers=AUTH)
        assert answer.status_code == 200, answer.content
        assert "revision" in answer.json() or "problems" in answer.json(), answer.json()


def test_a_switch_without_data_says_the_version_is_missing_not_that_json_is(settings_dict: dict[str, object]) -> None:
    with override_settings(INPROCSERVE=settings_dict):
        answer = Client().post(reverse("inprocserve:switch", args=["fraud"]), headers=AUTH)
    assert answer.status_code == 400, answer.content
    assert "not JSON" not in answer.json()["message"], answer.json()
    assert "version" in answer.json()["message"], answer.json()


def test_a_form_with_fields_is_still_refused_as_not_json(settings_dict: dict[str, object]) -> None:
    with override_settings(INPROCSERVE=settings_dict):
        answer = Client().post(reverse("inprocserve:switch", args=["fraud"]), {"version": "1"}, headers=AUTH)
        status = Client().get(reverse("inprocserve:models")).json()
    assert answer.status_code == 400, answer.content
    assert answer.json()["message"].startswith("the body is not JSON"), answer.json()
    assert status["models"]["fraud"]["versions"]["2"]["serving"], status  # (nothing switched)


_FORM = "multipart/form-data; boundary=X"


@pytest.mark.parametrize(
    "body",
    [
        # a part the multipart parser skips, for want of a Content-Disposition: a JSON body the caller meant
        b'--X\r\nContent-Type: application/json\r\n\r\n{"version": 1}\r\n--X--\r\n',
        b"--X\r\n",  # a form opened and never closed (a body cut short)
        b"--X\r\nContent-Disposition: form-data\r\n\r\n1\r\n--X--\r\n",  # a part without a name
        b"kill it",  # no form at all, under a multipart Content-Type
    ],
    ids=["part-without-disposition", "never-closed", "part-without-name", "not-a-form"],
)
def test_only_the_empty_form_itself_is_no_body(settings_dict: dict[str, object], body: bytes) -> None:
    # Each of these parsed to no fields and no files, so it ran the action as if no body had been sent (a 200, the
    # model killed), where any body that is not a JSON object is refused, as it was before the empty form was read.
    with override_settings(INPROCSERVE=settings_dict):
        client = Client()
        answer = client.post(reverse("inprocserve:kill", args=["fraud"]), body, content_type=_FORM, headers=AUTH)
        status = client.get(reverse("inprocserve:models")).json()
    assert answer.status_code == 400, answer.content
    assert answer.json()["message"].startswith("the body is not JSON"), answer.json()
    assert status["models"]["fraud"]["control"] is None, status["models"]["fraud"]["control"]  # (not killed)


@pytest.mark.parametrize("content_type", [_FORM, 'Multipart/Form-Data; boundary="X"', f"{_FORM}; charset=utf-8"])
def test_the_empty_form_of_any_client_is_no_body(settings_dict: dict[str, object], content_type: str) -> None:
    with override_settings(INPROCSERVE=settings_dict):
        answer = Client().post(
            reverse("inprocserve:kill", args=["fraud"]), b"--X--\r\n", content_type=content_type, headers=AUTH
        )
    assert answer.status_code == 200, answer.content
    assert answer.json()["kill"] is True, answer.json()
