"""A plug-in of a team's own, written from ``inprocserve.web``'s public names and docstrings alone: a plain WSGI
app (readiness, a prediction and its error answers, the status page and its 401), served by ``wsgiref`` on
loopback and called with ``urllib``, as a browser or a probe would call it."""

from __future__ import annotations

import http
import json
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import numpy as np
import pytest

import inprocserve
from inprocserve import web
from inprocserve.testing import build_scale_model, save_model

TOKEN = "s3cret-token-for-the-page"
StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def plugin_app(repository: Path) -> tuple[Callable[..., Iterable[bytes]], web.ProcessLocalServer]:
    """The whole plug-in: what a FastAPI or Starlette one would do, in WSGI's words."""
    problems = web.check_repository_at_start(repository)  # raises on a broken repository (not in a replacement)
    assert all(isinstance(web.replace_link_advice(p, "set MYAPP_FOLLOW_SYMLINKS=1"), str) for p in problems)
    holder = web.ProcessLocalServer(lambda: inprocserve.Server(repository))

    def answer(start: StartResponse, status: int, body: bytes, headers: Mapping[str, str]) -> list[bytes]:
        start(f"{status} {http.HTTPStatus(status).phrase}", [*headers.items(), ("Content-Length", str(len(body)))])
        return [body]

    def as_json(start: StartResponse, status: int, document: object, headers: Mapping[str, str] = {}) -> list[bytes]:
        json_headers = {"Content-Type": "application/json", **web.ANSWER_HEADERS, **headers}
        return answer(start, status, json.dumps(document).encode(), json_headers)

    def app(environ: dict[str, Any], start: StartResponse) -> list[bytes]:
        path = environ["PATH_INFO"]
        if path == "/ready":
            state = web.probe_readiness(holder.get)
            return as_json(start, 200 if state.ready else 503, state.body())
        if path == "/status":
            if web.check_token(environ.get("HTTP_AUTHORIZATION"), TOKEN, basic=True):
                status, text, headers = web.status_page(holder.get)
            else:
                status, text, headers = web.status_page_unauthorized()
            return answer(start, status, text.encode(), headers)
        if path.startswith("/predict/") and environ["REQUEST_METHOD"] == "POST":
            declared = int(environ.get("CONTENT_LENGTH") or 0)
            try:
                raw = web.body_reader(environ["wsgi.input"].read)(declared)
                if (cut := web.body_cut_short(len(raw), declared)) is not None:
                    raise cut
                inputs = {name: np.asarray(rows, dtype=np.float32) for name, rows in json.loads(raw).items()}
                result = holder.get().predict(path.removeprefix("/predict/"), inputs)
            except inprocserve.InprocserveError as exc:
                error = web.error_answer(exc)
                if error is None:
                    raise
                # (its headers are the whole answer's, its type among them: nothing here adds one)
                return answer(
                    start, error.status, json.dumps(error.body).encode(), {**web.ANSWER_HEADERS, **error.headers}
                )
            return as_json(start, 200, {name: value.tolist() for name, value in result.items()})
        return as_json(start, 404, {"error": "not_found", "message": f"no endpoint at {web.short_repr(path)}"})

    return app, holder


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # (no access log on the test's stderr)
        pass


@pytest.fixture
def served(repository: Path) -> Iterator[str]:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    app, holder = plugin_app(repository)
    httpd = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(timeout=30)
        httpd.server_close()
        holder.close()


def call(url: str, *, data: bytes | None = None, headers: Mapping[str, str] = {}) -> tuple[int, bytes, Any]:
    request = urllib.request.Request(url, data=data, headers=dict(headers))
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read(), response.headers
    except urllib.error.HTTPError as error:
        return error.code, error.read(), error.headers


def test_a_plain_wsgi_plugin_from_the_public_names_serves_readiness_predictions_and_errors(served: str) -> None:
    status, body, headers = call(f"{served}/ready")
    assert (status, json.loads(body)) == (200, {"ready": True, "models": ["scale"]})
    assert headers["X-Content-Type-Options"] == "nosniff"

    status, body, _ = call(f"{served}/predict/scale", data=json.dumps({"x": [[1, 2, 3, 4]]}).encode())
    assert (status, json.loads(body)) == (200, {"y": [[2.0, 4.0, 6.0, 8.0]]})

    status, body, headers = call(f"{served}/predict/nope", data=b'{"x": [[1, 2, 3, 4]]}')
    assert status == 404 and json.loads(body)["error"] == "model_not_found"
    assert headers["Content-Type"] == "application/json"  # (sent untyped, for the client to guess)
    status, body, headers = call(f"{served}/predict/scale", data=b'{"x": [[1, 2]]}')
    assert status == 400 and json.loads(body)["error"] == "invalid_input"
    assert (headers["Content-Type"], headers["X-Content-Type-Options"]) == ("application/json", "nosniff")

    status, body, _ = call(f"{served}/" + "p" * 10_000)  # (a client's long path is quoted cut short)
    assert status == 404 and len(body) < 500 and "10001 characters" in json.loads(body)["message"]


def test_the_status_page_and_its_401_carry_their_content_type_for_a_plugin_that_sets_none(served: str) -> None:
    """A framework that sets no type of its own (WSGI, Starlette's ``Response``) sent the page's HTML and its 401's
    text without ``Content-Type``: with ``X-Content-Type-Options: nosniff`` a browser showed the page as text, or
    offered it as a download. The headers the two calls give are the whole answer's."""
    status, body, headers = call(f"{served}/status")
    assert status == 401 and b"Authorization: Bearer <token>" in body
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert headers["Content-Type"] == "text/plain; charset=utf-8"

    status, body, headers = call(f"{served}/status", headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200 and b'id="model-scale"' in body
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert headers["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP
