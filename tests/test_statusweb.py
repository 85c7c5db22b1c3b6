"""The status page and the token check under content that others than the operator wrote: a model's input
names (its drift features), a remote model server's error text, an ``Authorization`` header; and the page of
a repository of 2,000 models. Real models, a real onnxruntime and a real loopback Open Inference Protocol
server."""

from __future__ import annotations

import base64
import copy
import hmac
import json
import os
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import web
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, wait_until
from .test_status_page import assert_inert

OVERRIDE = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: what follows it is shown backwards
HOSTILE = f'<img src=x onerror="alert(1)"></script><script>alert(2)</script>{OVERRIDE}gnp.exe\u200b'


def build_named_input_model(name: str) -> onnx.ModelProto:
    """``y = x`` whose one input is called ``name`` (a model's author chooses it), ``[batch, 2]`` float32."""
    graph = helper.make_graph(
        [helper.make_node("Identity", [name], ["y"])],
        "named_input",
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_model_s_hostile_input_names_reach_the_page_as_inert_visible_text(
    repository: Path, make_server: ServerFactory
) -> None:
    """Drift features are named after the model's inputs: an input name holding markup and a right-to-left
    override reached the page with the override in it, so the rest of the drift chart's label (and the
    version table's text after it) showed backwards."""
    save_model(build_named_input_model(HOSTILE), repository, "echo", 1)
    drift = inprocserve.DriftConfig(capture_reference=20, window=20)
    server = make_server(repository, models={"echo": inprocserve.ModelConfig(drift=drift)})
    rng = np.random.default_rng(3)

    def scored() -> bool:
        server.predict("echo", {HOSTILE: rng.normal(size=(4, 2)).astype(np.float32) + 3})
        return bool(server.status()["models"]["echo"]["versions"]["1"]["drift"]["features"])

    wait_until(scored)
    status = server.status(include_paths=False)
    assert any(name.startswith(HOSTILE) for name in status["models"]["echo"]["versions"]["1"]["drift"]["features"])
    page = inprocserve.render_status_page(status)
    assert_inert(page)
    assert OVERRIDE not in page and "\u200b" not in page  # shown as escapes, not obeyed
    assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in page and "\\u202egnp.exe\\u200b" in page


class HostileModelServer(ThreadingHTTPServer):
    """An Open Inference Protocol server whose every text is hostile: its metadata's platform and server
    name, and an inference error (the warm-up's) quoting markup, a right-to-left override and control
    characters, ``repeat`` times over."""

    daemon_threads = True

    def __init__(self, repeat: int = 3) -> None:
        super().__init__(("127.0.0.1", 0), _HostileHandler)
        self.repeat = repeat


class _HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: HostileModelServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        if self.path == "/v2":
            self._send(200, {"name": HOSTILE, "version": HOSTILE, "extensions": [HOSTILE]})
        elif self.path.endswith("/ready"):
            self._send(200, {})
        else:
            inputs = [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
            outputs = [{"name": "y", "datatype": "FP32", "shape": [-1, 4]}]
            self._send(
                200, {"name": "scale", "versions": ["2"], "platform": HOSTILE, "inputs": inputs, "outputs": outputs}
            )

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self._send(500, {"error": (HOSTILE + "\x1b[2J\r") * self.server.repeat})


@pytest.fixture
def hostile_model_server() -> Iterator[HostileModelServer]:
    server = HostileModelServer()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def hostile_remote_repository(repository: Path, port: int) -> inprocserve.ModelConfig:
    """``scale`` version 1 local, version 2 on the hostile server; the config that loads both."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    remote = repository / "scale" / "2" / "remote.toml"
    remote.parent.mkdir()
    remote.write_text(f'url = "http://127.0.0.1:{port}"\nmodel = "scale"\nconnect_timeout_s = 2\n')
    return inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())


def test_a_hostile_model_server_s_error_text_is_inert_and_shown_as_written(
    repository: Path, make_server: ServerFactory, hostile_model_server: HostileModelServer
) -> None:
    config = hostile_remote_repository(repository, hostile_model_server.server_port)
    server = make_server(repository, models={"scale": config})
    error = server.status()["models"]["scale"]["versions"]["2"]["error"]
    assert "answered 500: <img" in error and OVERRIDE in error  # the server's text, as it sent it
    page = inprocserve.render_status_page(server.status(include_paths=False))
    assert_inert(page)
    assert OVERRIDE not in page and "\x1b" not in page and "\r" not in page
    assert "answered 500: &lt;img src=x" in page and "\\u202egnp.exe" in page and "\\u001b[2J\\u000d" in page


def test_hidden_characters_are_shown_wherever_the_page_quotes_a_value(
    repository: Path, make_server: ServerFactory
) -> None:
    """Every value of the status goes through one escape: a model's error, a version's state, a variant, a
    test, a flag provider's name, a shadow, a drift feature; tab and newline are kept (an error's lines)."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    status = copy.deepcopy(make_server(repository).status(include_paths=False))
    fraud = status["models"]["fraud"]
    hidden = f"a{OVERRIDE}b\u2066c\u200fd\x00e\tf\ng"
    fraud["config_error"] = hidden
    fraud["versions"]["1"]["error"] = hidden
    fraud["versions"]["1"]["providers"] = [hidden]
    fraud["rollout"]["variants"][hidden] = {"served": 5, "outcomes": 1, "mean_reward": 1.0}
    fraud["rollout"]["flags"] = {"provider": hidden, "failures": 0, "timeouts": 0}
    fraud["shadow"] = {hidden: {"runs": 1, "label_agreement": 0.5}}
    page = inprocserve.render_status_page(status, title=hidden)
    for character in (OVERRIDE, "\u2066", "\u200f", "\x00"):
        assert character not in page
    assert page.count("a\\u202eb\\u2066c\\u200fd\\u0000e\tf\ng") >= 5


def test_characters_that_show_nothing_are_shown_and_other_text_as_written(
    repository: Path, make_server: ServerFactory
) -> None:
    """A word joiner, a soft hyphen or tag characters (U+E0041 spells an "A" no one sees) make two names look
    the same as a zero-width space does; each is shown as its escape. Accents, characters beyond the Basic
    Multilingual Plane and the zero-width joiner of an emoji sequence are text, and stay as written."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    status = copy.deepcopy(make_server(repository).status(include_paths=False))
    status["models"]["fraud"]["config_error"] = "a\u2060b\u00adc\U000e0041d"
    status["models"]["modèle 👩\u200d💻"] = status["models"]["fraud"]
    page = inprocserve.render_status_page(status)
    for character in ("\u2060", "\u00ad", "\U000e0041"):
        assert character not in page
    assert "a\\u2060b\\u00adc\\U000e0041d" in page
    assert "modèle 👩\u200d💻" in page


# -- headers -----------------------------------------------------------------------------------------------


def test_the_page_s_answers_carry_what_a_security_review_asks_of_an_admin_page(
    repository: Path, make_server: ServerFactory
) -> None:
    """``X-Frame-Options`` for browsers without ``frame-ancestors``; ``base-uri`` and ``form-action``, which
    ``default-src 'none'`` does not cover."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    status, page, headers = web.status_page(lambda: server)
    assert status == 200 and 'id="model-scale"' in page
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["Cache-Control"] == "no-store"
    assert headers["Referrer-Policy"] == "no-referrer"
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    assert policy["default-src"] == policy["base-uri"] == policy["form-action"] == policy["frame-ancestors"] == "'none'"
    assert "script-src" not in policy  # (no script at all: default-src 'none' refuses inline and hashed alike)


# -- tokens ------------------------------------------------------------------------------------------------


def basic(password: str, user: str = "anyone") -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_the_token_check_takes_the_forms_a_client_sends_and_nothing_else() -> None:
    token = "s3cret-token"
    accepted = [f"Bearer {token}", f"bearer {token}", f"BEARER   {token}  ", f"  Bearer {token}", f"Bearer {token}\n"]
    assert all(web.check_token(header, token) for header in accepted)
    assert web.check_token(basic(token), token, basic=True) and not web.check_token(basic(token), token)
    assert web.check_token(f"Bearer {token}", f"  {token}\n")  # (a token read from a file)
    refused = [
        None,
        "",
        token,  # no scheme
        f"Token {token}",
        f"Bearer\t{token}",  # (one space, as RFC 9110 has it)
        f"Bearer {token}, Bearer {token}",  # a header sent twice, as a WSGI server joins it
        f"Bearer {token},Bearer {token}",
        f"Bearer {token[:-1]}",
        f"Bearer {token}x",
        f"Bearer {token[:-1]}\u00e9",
        basic("", user=token),
        "Basic \u00ff\u00fe",
        f"Bearer {token}{'x' * 1_000_000}",
    ]
    assert not [header for header in refused if web.check_token(header, token, basic=True)]


@pytest.mark.parametrize("configured", [None, "", "   ", "\n", 0, b"s3cret"])
def test_no_configured_token_opens_nothing(configured: Any) -> None:
    for header in (None, "", "Bearer ", "Bearer    ", basic(""), "Bearer b's3cret'", "Bearer s3cret"):
        assert not web.check_token(header, configured, basic=True), (header, configured)


def test_a_token_with_a_lone_surrogate_is_refused_not_raised() -> None:
    """No HTTP header carries one (WSGI and ASGI servers decode headers as Latin-1), but a caller's ``str``
    may: ``check_token`` raised ``UnicodeEncodeError`` for it, a 500 where the page asks for its token."""
    assert not web.check_token("Bearer \udcff", "s3cret")
    assert not web.check_token("Bearer s3cret", "\udcff")
    assert web.check_token("Bearer \udcff", "\udcff")


def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    compare = hmac.compare_digest

    def recorded(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", recorded)
    assert web.check_token("Bearer wrong", "s3cret") is False
    assert web.check_token(basic("s3cret"), "s3cret", basic=True) is True
    assert compared == [(b"wrong", b"s3cret"), (b"s3cret", b"s3cret")]


def test_a_very_long_header_is_refused() -> None:
    token = "s3cret"
    for header in (f"Bearer {'a' * 4_000_000}", basic("a" * 3_000_000)):
        assert not web.check_token(header, token, basic=True)  # (~0.05 s here: one pass over the header)


# -- a large repository ------------------------------------------------------------------------------------


def test_the_page_of_2000_models_is_bounded_in_size(repository: Path, make_server: ServerFactory) -> None:
    """2,000 models, each with a rollout, a shadow, latency and drift, copied from a real busy model's status
    (2,000 real sessions take 20 s to load on the test host: the slow test below loads them): the page grows
    by what one model takes, no more (it is drawn in 0.1 s here)."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    canary = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=30)
    )
    server = make_server(repository, models={"fraud": inprocserve.ModelConfig(rollout=canary)})
    for user in range(50):
        server.predict("fraud", np.ones((1 + user % 3, 4), np.float32), context={"user_id": str(user)})
    one = server.status(include_paths=False)
    many = {**one, "models": {f"m{index:04d}": one["models"]["fraud"] for index in range(2000)}}
    page = inprocserve.render_status_page(many)
    single = len(inprocserve.render_status_page(one))
    assert page.count('<section class="model"') == 2000
    assert len(page) < 2000 * single * 1.05  # (each model's section, and the page's frame once)


@pytest.mark.slow
def test_a_real_repository_of_many_models_answers_its_page_and_status(
    repository: Path, make_server: ServerFactory
) -> None:
    """2,000 real models under ``make soak`` (8 to 20 s to load here; the page 1.3 MB, drawn in 0.05 s from a
    ``status()`` of about 0.17 s of CPU: a model whose JSON holds no path separator is no longer walked and
    copied to take paths out, which took 0.5 s with the full collections its ~200,000 containers set off),
    200 in ``make test``."""
    count = 2000 if os.environ.get("SOAK_SECONDS") else 200
    save_model(build_scale_model(2.0), repository, "m0000", 1)
    model = (repository / "m0000" / "1" / "model.onnx").read_bytes()
    for index in range(1, count):
        folder = repository / f"m{index:04d}" / "1"
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(model)
    server = make_server(repository)
    status, page, _ = web.status_page(lambda: server)
    assert status == 200 and page.count('<section class="model"') == count
    assert len(page) < count * 1000  # (1.3 MB for 2,000)
    assert len(json.dumps(server.status(include_paths=False))) < count * 2500  # (3.5 MB for 2,000)
