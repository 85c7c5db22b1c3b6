"""The Flask plug-in's answers to a newcomer's first mistakes say how to do it right."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from flask import Flask
from inprocserve_flask import Inprocserve

from inprocserve.testing import build_scale_model, save_model

TOKEN = "a-long-random-status-token"


def test_the_status_pages_401_says_how_to_send_the_token(tmp_path: Path) -> None:
    """A token in the query string (?token=...) is refused, as flask.md says: the 401 said only "The status
    page needs its token.", which reads as a wrong token, not as a token sent the wrong way."""
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    app = Flask("status_page_401")
    app.config.update(
        INPROCSERVE_REPOSITORY=str(tmp_path / "models"),
        INPROCSERVE_STATUS_PAGE=True,
        INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN,
    )
    Inprocserve(app)
    try:
        answer = app.test_client().get(f"/-/inprocserve/status?token={TOKEN}")
        assert answer.status_code == 401
        body = answer.get_data(as_text=True)
        assert "needs its token" in body  # (the start, as before)
        assert "Authorization: Bearer" in body and "query string" in body, body
        assert TOKEN not in body
    finally:
        Inprocserve.close(app)


def test_an_unknown_inprocserve_key_is_warned_of_with_the_key_it_is_close_to(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """app.config["INPROCSERVE_REPOSITROY"] (a typo) was taken silently: the server served nothing, and every
    request was a 404 for an unknown model. Django's app reports such a key (E004); the extension now logs
    it at init_app, naming the key it is close to (a warning, not an error: a key of a newer release, during
    a rolling upgrade, must not stop the app)."""
    app = Flask("typo")
    app.config["INPROCSERVE_REPOSITROY"] = str(tmp_path)
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        Inprocserve(app)
    try:
        (line,) = [record.getMessage() for record in caplog.records if "INPROCSERVE_REPOSITROY" in record.getMessage()]
        assert "INPROCSERVE_REPOSITORY?" in line, line
    finally:
        Inprocserve.close(app)


def test_known_keys_log_no_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    app = Flask("known")
    app.config.update(INPROCSERVE_REPOSITORY=str(tmp_path / "models"), INPROCSERVE_TIMEOUT_S=1.0)
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        Inprocserve(app)
    Inprocserve.close(app)
    assert not [record for record in caplog.records if "does not know" in record.getMessage()]


@pytest.mark.parametrize(("sent", "hint"), [("scael", "; did you mean 'scale'?"), ("scale" * 20_000, "")])
def test_an_unknown_model_s_404_names_the_served_model_it_is_close_to(tmp_path: Path, sent: str, hint: str) -> None:
    """A typo in the URL's model name: the 404 names the model meant, and never echoes a long name whole."""
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    app = Flask("did_you_mean")
    app.config.update(INPROCSERVE_REPOSITORY=str(tmp_path / "models"), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(app)
    try:
        body = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}
        answer = app.test_client().post(f"/v2/models/{sent}/infer", json=body)
        assert answer.status_code == 404
        assert answer.json["error"].endswith(f"(servable models: scale){hint}"), answer.json["error"][:300]
        assert len(answer.get_data()) < 300
    finally:
        Inprocserve.close(app)


def test_the_start_up_check_advises_the_setting_that_follows_links(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``models/churn -> ../releases/churn`` under ``INPROCSERVE_EAGER``: the start-up check's warning said "pass
    follow_symlinks=True to the Server", a Server the plug-in builds; the Flask user's way is the setting."""
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), tmp_path / "releases", "churn", 1)
    (repository / "churn").symlink_to(tmp_path / "releases" / "churn")
    app = Flask("linked_release")
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_EAGER=True)
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        Inprocserve(app)
    try:
        said = [r.getMessage() for r in caplog.records if r.name == "inprocserve_flask"]
        assert said == [
            f"repository check before the workers start: {repository / 'churn'}: the model folder is a symbolic "
            "link; symbolic links are refused; copy the files in, or set INPROCSERVE_FOLLOW_SYMLINKS = True"
        ], said
    finally:
        Inprocserve.close(app)
