"""A setting of ``''`` that turns a feature off (``INPROCSERVE_ADMIN_TOKEN``, ``INPROCSERVE_USER_HEADER``,
``INPROCSERVE_DEADLINE_HEADER``) is what ``os.environ.get(name, '')`` gives for a variable that is not set: the
feature was off without a word. ``init_app`` logs a warning, once, naming the key and ``None`` as the way to say
"off" on purpose; the feature stays off (no token never opens the admin endpoints)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from inprocserve_flask import Inprocserve

from inprocserve.testing import build_scale_model, save_model

EMPTY_ONES = ("INPROCSERVE_ADMIN_TOKEN", "INPROCSERVE_USER_HEADER", "INPROCSERVE_DEADLINE_HEADER")


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    return tmp_path / "models"


@pytest.fixture
def apps() -> Iterator[list[Flask]]:
    made: list[Flask] = []
    yield made
    for app in made:
        Inprocserve.close(app)


def make_app(apps: list[Flask], repository: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), **config)
    Inprocserve(app)
    apps.append(app)
    return app


def said_of(caplog: pytest.LogCaptureFixture, key: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "inprocserve_flask" and record.levelno == logging.WARNING and repr(key) in record.getMessage()
    ]


def feature_is_off(app: Flask, key: str) -> bool:
    """Whether what ``key`` turns on is off in ``app``: the admin endpoints (a 404 to any token, the empty one
    included: no token never opens them), the user id header (not the rollout's user), the deadline header."""
    client = app.test_client()
    if key == "INPROCSERVE_ADMIN_TOKEN":
        answers = {
            client.post(path, headers=authorization).status_code
            for path in ("/-/inprocserve/reload", "/-/inprocserve/models/scale/kill")
            for authorization in ({}, {"Authorization": "Bearer "}, {"Authorization": "Bearer"})
        }
        return answers == {404}
    from inprocserve_flask import _state, default_context

    with app.test_request_context("/", headers={"X-User-Id": "u-1", "X-Request-Timeout-Ms": "5"}):
        if key == "INPROCSERVE_USER_HEADER":
            return default_context().get("user_id") is None
        return _state().deadline_key is None


@pytest.mark.parametrize("key", EMPTY_ONES)
def test_an_empty_string_is_warned_of_once_naming_the_key_and_none(
    apps: list[Flask], repository: Path, caplog: pytest.LogCaptureFixture, key: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        off_on_purpose = make_app(apps, repository, **{key: None})
        assert [record.getMessage() for record in caplog.records if record.name == "inprocserve_flask"] == []
        app = make_app(apps, repository, **{key: ""})
        app.test_client().get("/-/inprocserve/health")
        app.test_client().get("/-/inprocserve/ready")
    (message,) = said_of(caplog, key)
    assert f"app.config[{key!r}] is '' (an empty string)" in message
    assert "os.environ.get(name, '')" in message and "None says off on purpose" in message
    assert [other for other in EMPTY_ONES if other != key and said_of(caplog, other)] == []
    assert feature_is_off(app, key) and feature_is_off(off_on_purpose, key)  # (only said: still off)


def test_an_empty_admin_token_with_the_endpoints_off_is_no_token_set(
    apps: list[Flask], repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``INPROCSERVE_ENDPOINTS = False`` with a token set raises (it would protect nothing); ``''`` is no token: it
    raised "INPROCSERVE_ADMIN_TOKEN is set", for a variable that was not set."""
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        make_app(apps, repository, INPROCSERVE_ADMIN_TOKEN="", INPROCSERVE_ENDPOINTS=False)
    assert len(said_of(caplog, "INPROCSERVE_ADMIN_TOKEN")) == 1
