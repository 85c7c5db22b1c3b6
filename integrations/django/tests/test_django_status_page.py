"""The status page view: through Django's test client and system checks, and in a real headless Chromium
talking to the project's WSGI application over loopback HTTP (skipped, saying why, without Chromium)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.core.wsgi import get_wsgi_application
from django.test import Client, override_settings
from inprocserve_django import get_server, reset_server
from inprocserve_django.conf import settings
from werkzeug.serving import make_server

import inprocserve
from inprocserve.testing import build_scale_model, save_model

TOKEN = "django-status-token-51c9"
PAGE = "/-/inprocserve/status"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    return folder


def settings_for(repository: Path, **extra: Any) -> dict[str, Any]:
    return {"REPOSITORY": str(repository), **extra}


@pytest.fixture
def page_on(repository: Path) -> Iterator[Path]:
    with override_settings(INPROCSERVE=settings_for(repository, STATUS_PAGE=True, STATUS_PAGE_TOKEN=TOKEN)):
        yield repository
    reset_server()


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def test_a_worker_whose_server_cannot_be_built_answers_a_503_page(page_on: Path) -> None:
    """The repository gone at a worker's first request (a release swapping folders): the page answered a 500
    and logged a traceback at each load. A 503 page that says so, naming no file; built once it is back."""
    reset_server()
    client = Client()  # a worker that started while the folder was there (its middleware checked it)
    assert client.get("/-/inprocserve/health").status_code == 200
    moved = page_on.with_name("elsewhere")
    page_on.rename(moved)
    try:
        response = client.get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
        # (RETRY_AFTER_S, as every other 503 of the plug-in: the page said 5 whatever it was)
        retry = inprocserve.web.retry_after(settings()["RETRY_AFTER_S"])
        assert response.status_code == 503 and response["Retry-After"] == retry != "5"
        assert response["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP
        page = response.content.decode()
        assert inprocserve.web.NO_SERVER in page and str(page_on.parent) not in page
    finally:
        moved.rename(page_on)
    response = client.get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200 and 'id="model-scale"' in response.content.decode()


def test_the_page_is_off_by_default(repository: Path) -> None:
    with override_settings(INPROCSERVE=settings_for(repository, STATUS_PAGE_TOKEN=TOKEN)):
        assert Client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 404
    reset_server()


def test_on_without_a_token_it_is_404_and_a_system_check_error(repository: Path) -> None:
    with override_settings(INPROCSERVE=settings_for(repository, STATUS_PAGE=True)):
        with override_settings(SILENCED_SYSTEM_CHECKS=["inprocserve.E007"]):  # (else the app does not start)
            assert Client().get(PAGE).status_code == 404
        errors = [message for message in run_checks() if message.id == "inprocserve.E007"]
        assert len(errors) == 1 and "STATUS_PAGE_TOKEN" in errors[0].msg
    with override_settings(INPROCSERVE=settings_for(repository, STATUS_PAGE=True, STATUS_PAGE_TOKEN=TOKEN)):
        assert not [message for message in run_checks() if message.id == "inprocserve.E007"]
    reset_server()


def test_the_token_is_required_and_a_browser_is_asked_for_it(page_on: Path) -> None:
    client = Client()
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": "Basic %%%"},
        basic(TOKEN, ""),
    ):
        response = client.get(PAGE, headers=headers)
        assert response.status_code == 401, headers
        assert response["WWW-Authenticate"].startswith('Basic realm="inprocserve status"')
        assert b"scale" not in response.content
    assert client.get(f"{PAGE}?token={TOKEN}").status_code == 401
    assert client.post(PAGE, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405
    # with CsrfViewMiddleware (the README's settings have it) checking as for a real request: a 405 still, not
    # CSRF's 403 (a token authorizes the page, never a cookie)
    with override_settings(MIDDLEWARE=[*django_settings.MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]):
        checked = Client(enforce_csrf_checks=True)
        assert checked.post(PAGE, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 405


def test_basic_credentials_that_are_not_ascii_are_a_401_not_a_500(page_on: Path) -> None:
    # A WSGI server hands a header's bytes on as Latin-1 text: base64.b64decode refused "Basic \xff\xfe" with a
    # ValueError no one caught (a 500, and a traceback logged for each such request).
    client = Client(raise_request_exception=False)
    for value in ("Basic \xff\xfe", f"Basic caf\xe9:{TOKEN}"):
        response = client.get(PAGE, HTTP_AUTHORIZATION=value)
        assert response.status_code == 401, value
        assert response["WWW-Authenticate"].startswith('Basic realm="inprocserve status"')
    assert client.get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_a_bearer_token_or_basic_credentials_open_the_page(page_on: Path) -> None:
    get_server().predict("scale", np.ones((3, 4), dtype=np.float32))
    client = Client()
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, basic("anyone", TOKEN)):
        response = client.get(PAGE, headers=headers)
        assert response.status_code == 200
        assert response["Content-Type"] == "text/html; charset=utf-8"
        assert response["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP
        assert response["Cache-Control"] == "no-store"
        page = response.content.decode()
        assert 'id="model-scale"' in page and "1 requests" in page


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: the status page's browser tests need the Debian package `chromium` "
    "(`make system-deps` installs it when run as root)",
)
def test_chromium_renders_the_page_served_by_django(page_on: Path, tmp_path: Path) -> None:
    assert CHROMIUM is not None
    get_server().predict("scale", np.ones((2, 4), dtype=np.float32))
    http = make_server("127.0.0.1", 0, get_wsgi_application(), threaded=True)
    thread = threading.Thread(
        target=http.serve_forever, kwargs={"poll_interval": 0.05}, name="status-page-http", daemon=True
    )
    thread.start()
    try:
        command = [
            CHROMIUM,
            "--headless",
            "--no-sandbox",  # these tests may run as root in a container
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--dump-dom",
            f"http://status:{TOKEN}@127.0.0.1:{http.port}{PAGE}",
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    finally:
        http.shutdown()
        thread.join(timeout=10)
        http.server_close()
    assert result.returncode == 0, result.stderr[-2000:]
    assert 'id="model-scale"' in result.stdout and "<svg" in result.stdout
