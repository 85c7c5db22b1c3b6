"""Hostile request values against the Django plug-in: every one is a 400 naming what to fix, never a 500."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocserve_django import reset_server

from inprocserve.testing import build_scale_model, save_model

HOSTILE_TIMEOUTS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "1e3",
    "9" * 400,
    "-5",
    "-0.5",
    "",
    "   ",
    "0x10",
    "1_000",
    "12,5",
    "+250",
    "\u0661\u0662\u0663",  # Arabic-Indic digits: float() would take them
    "250ms",
    "1.2.3",
    "86400001",
]

HOSTILE_USER_IDS = ["", "   ", "x" * 257, "user\x00id", "user\x7fid", "caf\u00e9", "\t\x01"]


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Path]:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        yield repository
    reset_server()


def post(url: str, **headers: str) -> Any:
    return Client().post(
        url, data=json.dumps({"rows": [[1, 2, 3, 4]]}), content_type="application/json", headers=headers
    )


@pytest.mark.parametrize("url", ["/score", "/ascore"])
@pytest.mark.parametrize("value", HOSTILE_TIMEOUTS)
def test_a_malformed_deadline_header_is_a_400_naming_the_header(served: Path, url: str, value: str) -> None:
    response = post(url, **{"X-Request-Timeout-Ms": value})
    assert response.status_code == 400, response.content
    body = response.json()
    assert body["error"] == "invalid_input"
    assert "X-Request-Timeout-Ms" in body["message"] and "milliseconds" in body["message"]
    assert len(body["message"]) < 300  # a 400-digit header is not echoed back whole


@pytest.mark.parametrize("value", ["5000", " 5000 ", "5000.25", "86400000"])
def test_a_well_formed_deadline_header_is_honoured(served: Path, value: str) -> None:
    response = post("/score", **{"X-Request-Timeout-Ms": value})
    assert response.status_code == 200, response.content
    assert response.json()["y"] == [[2.0, 4.0, 6.0, 8.0]]


def test_a_zero_deadline_is_spent_not_malformed(served: Path) -> None:
    assert post("/score", **{"X-Request-Timeout-Ms": "0"}).status_code == 504


@pytest.mark.parametrize("url", ["/score", "/ascore"])
def test_a_deadline_header_sent_twice_is_a_400_that_says_so(served: Path, url: str) -> None:
    # what a WSGI or ASGI server hands Django for a budget set by both the client and a proxy
    response = post(url, **{"X-Request-Timeout-Ms": "250,300"})
    assert response.status_code == 400, response.content
    message = response.json()["message"]
    assert "X-Request-Timeout-Ms" in message and "more than once" in message


def test_a_deadline_with_a_long_fraction_is_a_400_that_says_how_many_digits(served: Path) -> None:
    response = post("/score", **{"X-Request-Timeout-Ms": "249.89999999850988"})
    assert response.status_code == 400, response.content
    assert "at most 6 digits after the point" in response.json()["message"]


@pytest.mark.parametrize("url", ["/score", "/ascore"])
@pytest.mark.parametrize("value", HOSTILE_USER_IDS)
def test_a_malformed_user_id_header_is_a_400_where_a_view_predicts(served: Path, url: str, value: str) -> None:
    response = post(url, **{"X-User-Id": value})
    assert response.status_code == 400, response.content
    assert "X-User-Id" in response.json()["message"]


@pytest.mark.parametrize("value", HOSTILE_USER_IDS)
def test_a_malformed_user_id_header_does_not_break_pages_that_do_not_predict(served: Path, value: str) -> None:
    response = Client().get("/-/inprocserve/health", headers={"X-User-Id": value})
    assert response.status_code == 200


def test_a_reasonable_user_id_is_accepted(served: Path) -> None:
    assert post("/score", **{"X-User-Id": "user-42@example.com"}).status_code == 200


@pytest.mark.parametrize("url", ["/score", "/ascore"])
def test_a_user_id_header_sent_twice_is_a_400_not_a_made_up_user(served: Path, url: str) -> None:
    # what a WSGI or ASGI server hands Django for "X-User-Id: alice" and "X-User-Id: bob" in one request
    response = post(url, **{"X-User-Id": "alice,bob"})
    assert response.status_code == 400, response.content
    assert "X-User-Id" in response.json()["message"] and "more than once" in response.json()["message"]


FUZZ_EXAMPLES = 2_000 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 200
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)


@given(
    url=st.sampled_from(["/score", "/ascore"]),
    timeout=st.one_of(header_text, st.from_regex(r"[0-9]{1,14}(\.[0-9]{0,8})?", fullmatch=True)),
    user=header_text,
)
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "soak",
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_any_header_value_is_answered_or_a_400(served: Path, url: str, timeout: str, user: str) -> None:
    response = post(url, **{"X-Request-Timeout-Ms": timeout, "X-User-Id": user})
    assert response.status_code in (200, 400, 504), response.content
    if response.status_code == 200:
        assert response.json()["y"] == [[2.0, 4.0, 6.0, 8.0]]
    elif response.status_code == 400:
        message = response.json()["message"]
        assert "X-Request-Timeout-Ms" in message or "X-User-Id" in message


@pytest.mark.parametrize("mode", ["refuse", "follow"])
def test_a_symlinked_model_folder_is_served_only_with_follow_symlinks(tmp_path: Path, mode: str) -> None:
    follow = mode == "follow"
    save_model(build_scale_model(3.0), tmp_path / "elsewhere", "linked", 1)
    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "linked").symlink_to(tmp_path / "elsewhere" / "linked", target_is_directory=True)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "FOLLOW_SYMLINKS": follow}):
        try:
            response = Client().get("/-/inprocserve/models")
            assert ("linked" in response.json()["models"]) is follow
        finally:
            reset_server()


def test_a_long_model_name_is_cut_short_when_the_budget_is_already_spent(served: Path) -> None:
    """A view may take the model's name from the request: with a spent budget (X-Request-Timeout-Ms: 0) the
    504 quoted all of it (5 MB in, 5 MB out, in the log too)."""
    from django.test import RequestFactory
    from inprocserve_django import predict

    import inprocserve

    request = RequestFactory().post("/score", HTTP_X_REQUEST_TIMEOUT_MS="0")
    try:
        with pytest.raises(inprocserve.DeadlineExceededError) as caught:
            predict(request, "m" * 1_000_000, {"x": [[1.0, 2.0, 3.0, 4.0]]})
        assert len(str(caught.value)) < 300
    finally:
        reset_server()
