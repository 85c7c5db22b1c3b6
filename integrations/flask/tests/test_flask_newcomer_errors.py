"""The Flask plug-in's answers to a newcomer's first mistakes say how to do it right."""

from __future__ import annotations

from pathlib import Path

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
