"""The status page route under hostile content and hostile requests: a model whose input names (its drift
features) hold markup and a right-to-left override, a remote model server whose error text does, served by
werkzeug over loopback and loaded in a real headless Chromium (skipped, saying why, without it); the 401's
headers; a repeated or oversized ``Authorization`` header sent over a real socket."""

from __future__ import annotations

import base64
import socket
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from flask import Flask
from inprocserve_flask import Inprocserve, server
from test_flask_status_page import CHROMIUM, chromium, make_app
from werkzeug.serving import make_server

import inprocserve
from inprocserve.testing import build_scale_model, save_model
from tests.test_statusweb import HOSTILE, OVERRIDE, HostileModelServer, build_named_input_model

TOKEN = "statusweb-token-9d2e"
PAGE = "/-/inprocserve/status"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": inprocserve.STATUS_PAGE_CSP,
}


class _Dom(HTMLParser):
    """The elements and attributes a document builds."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.attributes: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.extend(name for name, _ in attrs)


def assert_dom_inert(document: str) -> None:
    dom = _Dom()
    dom.feed(document)
    dom.close()
    assert not {"script", "img", "iframe", "object", "embed", "link", "base", "form"} & set(dom.tags), dom.tags
    assert not [name for name in dom.attributes if name.startswith("on")]


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
def hostile_app(tmp_path: Path, hostile_model_server: HostileModelServer) -> Iterator[Flask]:
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
    app = make_app(folder, INPROCSERVE_MODELS=models, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN=TOKEN)
    rng = np.random.default_rng(5)
    with app.app_context():
        deadline = time.monotonic() + 30
        while not server.status()["models"]["echo"]["versions"]["1"]["drift"]["features"]:
            assert time.monotonic() < deadline, "no drift window was scored"
            server.predict("echo", {HOSTILE: rng.normal(size=(4, 2)).astype(np.float32) + 3})
            time.sleep(0.01)
    yield app
    Inprocserve.close(app)


@pytest.fixture
def live(hostile_app: Flask) -> Iterator[str]:
    http = make_server("127.0.0.1", 0, hostile_app, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"127.0.0.1:{http.port}"
    http.shutdown()
    thread.join(timeout=10)
    http.server_close()


def test_the_page_shows_hostile_names_and_errors_as_inert_visible_text(hostile_app: Flask) -> None:
    response = hostile_app.test_client().get(PAGE, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
    page = response.get_data(as_text=True)
    assert_dom_inert(page)
    assert OVERRIDE not in page and "\\u202egnp.exe" in page
    assert page.count("&lt;img src=x onerror=") >= 3  # a drift feature, the remote error, its chart title


@pytest.mark.skipif(
    CHROMIUM is None, reason="Chromium is not installed: the browser test needs the Debian package `chromium`"
)
def test_chromium_builds_no_injected_element_and_still_renders_the_page(live: str, tmp_path: Path) -> None:
    result = chromium(tmp_path, "--dump-dom", f"http://status:{TOKEN}@{live}{PAGE}")
    assert result.returncode == 0, result.stderr[-2000:]
    dom = result.stdout
    assert 'id="model-echo"' in dom and 'id="model-scale"' in dom and "<svg" in dom  # rendered, charts and all
    assert_dom_inert(dom)
    assert OVERRIDE not in dom and "\\u202egnp.exe" in dom


def test_the_401_carries_the_page_s_security_headers(hostile_app: Flask) -> None:
    """A wrong or missing token's 401 had none of the page's headers: no nosniff, no no-store, no frame refusal."""
    client = hostile_app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic !!"}):
        response = client.get(PAGE, headers=headers)
        assert response.status_code == 401
        assert {name: response.headers.get(name) for name in SECURITY_HEADERS} == SECURITY_HEADERS
        assert response.headers["WWW-Authenticate"].startswith('Basic realm="inprocserve status"')


def test_an_empty_or_blank_token_setting_opens_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    with pytest.raises(inprocserve.ConfigurationError, match="INPROCSERVE_STATUS_PAGE_TOKEN"):
        make_app(folder, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN="")
    with pytest.raises(inprocserve.ConfigurationError, match="blank"):
        make_app(folder, INPROCSERVE_STATUS_PAGE=True, INPROCSERVE_STATUS_PAGE_TOKEN="   ")


def raw_get(address: str, headers: list[tuple[str, str]]) -> bytes:
    host, port = address.split(":")
    lines = [f"GET {PAGE} HTTP/1.1", f"Host: {address}", "Connection: close", *(f"{k}: {v}" for k, v in headers)]
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_repeated_lowercase_or_oversized_authorization_header_over_a_socket(live: str) -> None:
    bearer = ("Authorization", f"Bearer {TOKEN}")
    assert raw_get(live, [bearer]).startswith(b"HTTP/1.1 200")
    assert raw_get(live, [("authorization", f"bearer {TOKEN}")]).startswith(b"HTTP/1.1 200")  # (case-insensitive)
    # sent twice, the server joins the two: neither is taken alone
    assert raw_get(live, [bearer, ("Authorization", "Bearer wrong")]).startswith(b"HTTP/1.1 401")
    assert raw_get(live, [bearer, bearer]).startswith(b"HTTP/1.1 401")
    basic = base64.b64encode(f"u:{TOKEN}".encode()).decode()
    assert raw_get(live, [("Authorization", f"Basic {basic}\u00e9")]).startswith(b"HTTP/1.1 401")
    long = raw_get(live, [("Authorization", f"Bearer {TOKEN}{'x' * 60_000}")])  # (under werkzeug's 64 KiB line)
    assert long.startswith(b"HTTP/1.1 401") and b"WWW-Authenticate: Basic" in long
    # past it, the server refuses the request itself (gunicorn's limit is 8 KiB): the page is never asked
    assert raw_get(live, [("Authorization", f"Bearer {TOKEN}{'x' * 70_000}")]).startswith(b"HTTP/1.1 431")
