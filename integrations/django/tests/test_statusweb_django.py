"""The status page view under hostile content and hostile requests, through Django's test client: a model
whose input names (its drift features) hold markup and a right-to-left override, a remote model server whose
error text does; the 401's headers; a blank token setting."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, RequestFactory, override_settings
from inprocserve_django import get_server, reset_server
from inprocserve_django.status_page import status_page

import inprocserve
from inprocserve.testing import build_scale_model, save_model
from tests.test_status_page import assert_inert
from tests.test_statusweb import HOSTILE, OVERRIDE, HostileModelServer, build_named_input_model

TOKEN = "statusweb-django-token-3b7a"
PAGE = "/-/inprocserve/status"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": inprocserve.STATUS_PAGE_CSP,
}


@pytest.fixture
def hostile_model_server() -> Iterator[HostileModelServer]:
    remote = HostileModelServer()
    thread = threading.Thread(target=remote.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield remote
    remote.shutdown()
    remote.server_close()
    thread.join(timeout=10)


@pytest.fixture
def hostile_page(tmp_path: Path, hostile_model_server: HostileModelServer) -> Iterator[None]:
    folder = tmp_path / "models"
    save_model(build_named_input_model(HOSTILE), folder, "echo", 1)
    save_model(build_scale_model(2.0), folder, "scale", 1)
    remote = folder / "scale" / "2" / "remote.toml"
    remote.parent.mkdir()
    remote.write_text(f'url = "http://127.0.0.1:{hostile_model_server.server_port}"\nmodel = "scale"\n')
    models = {
        "echo": inprocserve.ModelConfig(drift=inprocserve.DriftConfig(capture_reference=20, window=20)),
        "scale": inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()),
    }
    config = {"REPOSITORY": str(folder), "MODELS": models, "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": TOKEN}
    with override_settings(INPROCSERVE=config):
        rng = np.random.default_rng(5)
        deadline = time.monotonic() + 30
        while not get_server().status()["models"]["echo"]["versions"]["1"]["drift"]["features"]:
            assert time.monotonic() < deadline, "no drift window was scored"
            get_server().predict("echo", {HOSTILE: rng.normal(size=(4, 2)).astype(np.float32) + 3})
            time.sleep(0.01)
        yield
    reset_server()


def test_the_page_shows_hostile_names_and_errors_as_inert_visible_text(hostile_page: None) -> None:
    response = Client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert {name: response.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    page = response.content.decode()
    assert_inert(page)
    assert OVERRIDE not in page and "\\u202egnp.exe" in page
    assert page.count("&lt;img src=x onerror=") >= 3  # a drift feature, the remote error, its chart title


def test_the_401_carries_the_page_s_security_headers(hostile_page: None) -> None:
    """A wrong or missing token's 401 had none of the page's headers: no nosniff, no no-store, no frame refusal."""
    client = Client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {TOKEN}, Bearer {TOKEN}"}):
        response = client.get(PAGE, headers=headers)
        assert response.status_code == 401
        assert {name: response.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
        assert response["WWW-Authenticate"].startswith('Basic realm="inprocserve status"')


@pytest.mark.parametrize("blank", ["   ", "\n"])
def test_a_blank_token_setting_opens_nothing(tmp_path: Path, blank: str) -> None:
    """The middleware refuses to start on it (E010); the view alone (a URLconf without the middleware) answers
    401 to every credential, the blank one included: a blank token never means "open"."""
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    config = {"REPOSITORY": str(folder), "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": blank}
    with override_settings(INPROCSERVE=config):
        with pytest.raises(
            ImproperlyConfigured, match=r"inprocserve\.E010: INPROCSERVE\['STATUS_PAGE_TOKEN'\] is blank"
        ):
            Client().get(PAGE, HTTP_AUTHORIZATION=f"Bearer {blank}")
        for authorization in ("Bearer ", f"Bearer {blank}", "Basic Og==", "Basic dTo="):  # (":" and "u:")
            response = status_page(RequestFactory().get(PAGE, HTTP_AUTHORIZATION=authorization))
            assert response.status_code == 401, authorization
            assert b"scale" not in response.content
    reset_server()
