"""Hardening of the Django app through real Django request cycles: async views that never build the server
on the event loop, the protocol under a URL prefix, chunked WSGI bodies, no file paths to unauthenticated
callers, Retry-After on every 503, admin bodies that never cause a 500, and tokens checked by the system
checks."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import io
import json
import logging
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from django.conf import settings as django_settings
from django.core.checks import run_checks
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, RequestFactory, override_settings
from inprocserve_django import apredict, get_server, reset_server
from werkzeug.serving import make_server

import inprocserve
from inprocserve import v2
from inprocserve.testing import build_scale_model, save_model

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
ADMIN = {"Authorization": "Bearer secret"}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    return folder


@pytest.fixture
def served(repository: Path) -> Iterator[Path]:
    settings = {"REPOSITORY": str(repository), "V2_PROTOCOL": True, "ADMIN_TOKEN": "secret"}
    with override_settings(INPROCSERVE=settings):
        yield repository
    reset_server()


@pytest.fixture
def with_broken(repository: Path) -> Iterator[Path]:
    broken = repository / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "V2_PROTOCOL": True, "RETRY_AFTER_S": 7}):
        yield repository
    reset_server()


# -- apredict builds the server off the event loop -------------------------------------------------------------------


def test_apredict_builds_the_server_on_a_worker_thread_not_the_event_loop(
    served: Path, caplog: pytest.LogCaptureFixture
) -> None:
    reset_server()  # not built yet in this process: the first apredict builds it (and loads every model)
    caplog.set_level(logging.INFO, logger="inprocserve._model")

    async def first_prediction() -> tuple[int, Any]:
        request = RequestFactory().post("/score")
        result = await apredict(request, "scale", {"x": np.ones((1, 4), np.float32)})
        return threading.get_ident(), result

    loop_thread, result = asyncio.run(first_prediction())
    assert result["y"].tolist() == [[2.0] * 4]
    loads = [record for record in caplog.records if "ready in" in record.getMessage()]
    assert loads, "the server's build logs each model it loads"
    assert all(record.thread != loop_thread for record in loads), "the model was loaded on the event loop's thread"


# -- the protocol under a URL prefix --------------------------------------------------------------------------------


def test_the_protocol_answers_under_a_url_prefix(served: Path) -> None:
    client = Client()
    body = json.dumps({"inputs": [X]})
    for prefix in ("", "/api/ml"):
        response = client.post(f"{prefix}/v2/models/scale/infer", data=body, content_type="application/json")
        assert response.status_code == 200, (prefix, response.content)
        assert response.json()["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]
        assert client.get(f"{prefix}/v2").json()["name"] == "inprocserve"
        assert client.get(f"{prefix}/v2/models/scale/ready").json() == {"name": "scale", "ready": True}
    missing = client.get("/api/ml/v2/models/scale/nope")
    assert missing.status_code == 404 and missing.json() == {
        "error": "no Open Inference Protocol endpoint at '/v2/models/scale/nope'"
    }


# -- chunked and malformed WSGI bodies ------------------------------------------------------------------------------


def wsgi_post(body: bytes, **environ: Any) -> tuple[str, dict[str, Any]]:
    """POST /v2/models/scale/infer through Django's real WSGI handler, as a WSGI server would call it (the
    tests that call it are marked django_db: the handler's request_finished signal closes connections)."""
    base = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/v2/models/scale/infer",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "CONTENT_TYPE": "application/json",
    }
    answer: dict[str, Any] = {}
    chunks = WSGIHandler()({**base, **environ}, lambda status, headers: answer.update(status=status))
    return answer["status"], json.loads(b"".join(chunks))


@pytest.mark.django_db
def test_a_chunked_body_that_the_server_ends_is_read(served: Path) -> None:
    status, document = wsgi_post(
        json.dumps({"inputs": [X]}).encode(), **{"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked"}
    )
    assert status.startswith("200"), document
    assert document["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


@pytest.mark.django_db
@pytest.mark.parametrize("length", ["", " "])
def test_a_chunked_body_with_an_empty_content_length_is_read(served: Path, length: str) -> None:
    """A WSGI server may set CONTENT_LENGTH to "" for a chunked body: no length, as the plug-in's reader takes
    it, not a Content-Length that is no number (a 400)."""
    status, document = wsgi_post(
        json.dumps({"inputs": [X]}).encode(),
        **{"wsgi.input_terminated": True, "HTTP_TRANSFER_ENCODING": "chunked", "CONTENT_LENGTH": length},
    )
    assert status.startswith("200"), document
    assert document["outputs"][0]["data"] == [2.0, 4.0, 6.0, 8.0]


@pytest.mark.django_db
def test_a_chunked_body_is_still_capped(repository: Path) -> None:
    limits = v2.Limits(max_body_bytes=100)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "V2_PROTOCOL": True, "V2_LIMITS": limits}):
        status, document = wsgi_post(b" " * 5000, **{"wsgi.input_terminated": True})
    reset_server()
    assert status.startswith("400") and "over the 100 allowed" in document["error"]


@pytest.mark.django_db
def test_a_body_of_unknown_length_is_a_411_that_says_why(served: Path) -> None:
    status, document = wsgi_post(json.dumps({"inputs": [X]}).encode(), HTTP_TRANSFER_ENCODING="chunked")
    assert status.startswith("411")
    assert "send a Content-Length header" in document["error"] and "wsgi.input_terminated" in document["error"]


@pytest.mark.django_db
@pytest.mark.parametrize("length", ["-5", "abc", "\u00b2"])
def test_a_content_length_that_is_no_byte_count_is_a_400_that_says_so(served: Path, length: str) -> None:
    status, document = wsgi_post(json.dumps({"inputs": [X]}).encode(), CONTENT_LENGTH=length)
    assert status.startswith("400") and "is not a number of bytes" in document["error"], document


# -- no paths, Retry-After -------------------------------------------------------------------------------------------


def test_model_readiness_quotes_no_path(with_broken: Path) -> None:
    for path in ("/v2/models/broken/ready", "/v2/models/broken/versions/1/ready"):
        response = Client().get(path)
        assert response.status_code == 503 and "cannot load" in response.json()["error"]
        assert str(with_broken.parent) not in response.content.decode()


def test_the_app_s_ready_503_says_when_to_retry(with_broken: Path) -> None:
    response = Client().get("/-/inprocserve/ready")
    assert response.status_code == 503 and response["Retry-After"] == "7"


def test_an_admin_503_says_when_to_retry(repository: Path) -> None:
    """Every 503 of the app says when to try again: the admin endpoints' too (a closed server)."""
    settings = {"REPOSITORY": str(repository), "ADMIN_TOKEN": "secret", "RETRY_AFTER_S": 7}
    with override_settings(INPROCSERVE=settings):
        try:
            get_server().close()  # (closed under the app, as at shutdown)
            response = Client().post(
                "/-/inprocserve/models/scale/kill", data=b"", content_type="application/json", headers=ADMIN
            )
        finally:
            reset_server()
    assert response.status_code == 503 and response.json()["error"] == "unavailable"
    assert response["Retry-After"] == "7"


def test_a_ready_server_answers_without_retry_after(served: Path) -> None:
    response = Client().get("/-/inprocserve/ready")
    assert response.status_code == 200 and not response.has_header("Retry-After")


# -- methods ---------------------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/-/inprocserve/health", "/-/inprocserve/ready", "/-/inprocserve/models"])
def test_the_read_only_endpoints_answer_other_methods_405(served: Path, path: str) -> None:
    # Any method answered: OPTIONS, TRACE and (without CsrfViewMiddleware) PUT or DELETE got the whole status,
    # and with it POST got an HTML 403 about CSRF cookies; the Flask plug-in answers them 405
    with override_settings(MIDDLEWARE=[*django_settings.MIDDLEWARE, "django.middleware.csrf.CsrfViewMiddleware"]):
        for client in (Client(), Client(enforce_csrf_checks=True)):
            for method in ("post", "put", "patch", "delete", "options", "trace"):
                response = getattr(client, method)(path)
                assert (response.status_code, response["Allow"]) == (405, "GET, HEAD"), (method, response.content)
                assert response.json()["error"] == "method_not_allowed", response.content  # (was an empty body)
                assert b"scale" not in response.content
            assert client.get(path).status_code == 200
            head = client.head(path)
            assert head.status_code == 200 and head.content == b""


def test_the_status_page_answers_head_as_get(served: Path) -> None:
    settings = {"REPOSITORY": str(served), "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": "page-secret"}
    with override_settings(INPROCSERVE=settings):
        client = Client()
        token = {"Authorization": "Bearer page-secret"}
        assert client.head("/-/inprocserve/status", headers=token).status_code == 200
        assert client.head("/-/inprocserve/status").status_code == 401
        assert client.get("/-/inprocserve/status", headers=token).status_code == 200
    reset_server()


# -- admin -----------------------------------------------------------------------------------------------------------


def test_a_canary_percent_of_hundreds_of_digits_is_a_400(served: Path) -> None:
    body = b'{"version": 1, "percent": ' + b"9" * 400 + b"}"
    response = Client().post(
        "/-/inprocserve/models/scale/canary", data=body, content_type="application/json", headers=ADMIN
    )
    assert response.status_code == 400 and '"percent" must be a number in 0..100' in response.json()["message"]


def test_removing_the_canary_answers_the_percent_applied(served: Path) -> None:
    def canary(body: bytes) -> Any:
        return Client().post(
            "/-/inprocserve/models/scale/canary", data=body, content_type="application/json", headers=ADMIN
        )

    response = canary(b'{"version": null}')
    assert response.status_code == 200 and response.json()["canary_percent"] == 0
    response = canary(b'{"version": null, "percent": 50}')  # meant as "send 50 %", it removed the canary
    assert response.status_code == 400 and "removes the canary and takes no percent" in response.json()["message"]


def test_stopping_a_configured_canary_answers_the_version_the_stop_recorded(repository: Path) -> None:
    save_model(build_scale_model(3.0), repository, "scale", 2)
    (repository / "scale" / "config.toml").write_text(
        '[rollout]\nstrategy = "canary"\nstable = 1\n\n[rollout.canary]\nversion = 2\npercent = 50\n'
    )

    def canary(body: bytes) -> Any:
        return Client().post(
            "/-/inprocserve/models/scale/canary", data=body, content_type="application/json", headers=ADMIN
        )

    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "ADMIN_TOKEN": "secret"}):
        try:
            stopped = canary(b'{"version": null}')
            assert stopped.status_code == 200
            assert (stopped.json()["canary_off"], stopped.json()["canary_off_version"]) == (True, 2)
            back = canary(b'{"version": "config"}')
            assert back.status_code == 200
            assert (back.json()["canary_off"], back.json()["canary_off_version"]) == (False, None)
        finally:
            reset_server()


def admin_post_chunked(path: str, pieces: list[bytes]) -> tuple[int, dict[str, Any]]:
    """POST to an admin endpoint with a chunked body (a body streamed from a generator, as requests and Go's
    client send one of unknown length), over HTTP to a real WSGI server that ends chunked input (werkzeug's,
    as gunicorn does)."""
    server = make_server("127.0.0.1", 0, WSGIHandler(), threaded=True)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="admin-http", daemon=True
    )
    thread.start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        connection.request("POST", path, body=iter(pieces), headers=ADMIN, encode_chunked=True)
        response = connection.getresponse()
        status, document = response.status, json.loads(response.read())
        connection.close()
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()
    return status, document


@pytest.mark.django_db
def test_a_chunked_admin_body_is_read_not_taken_for_an_empty_one(repository: Path) -> None:
    # Django reads Content-Length bytes of a body: a chunked one read as b"", so {"version": 1} was refused as
    # "got None", and a canary could never be set by a client that streams its body.
    save_model(build_scale_model(3.0), repository, "scale", 2)
    models = {"scale": inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())}
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "MODELS": models, "ADMIN_TOKEN": "secret"}):
        switched = admin_post_chunked("/-/inprocserve/models/scale/switch", [b'{"vers', b'ion": 1}'])
        canary = admin_post_chunked("/-/inprocserve/models/scale/canary", [b'{"version": 2, "percent": 30}'])
        garbage = admin_post_chunked("/-/inprocserve/models/scale/switch", [b"not JSON"])
    reset_server()
    assert switched == (200, {**switched[1], "model": "scale", "stable": 1}), switched
    assert canary[0] == 200 and canary[1]["canary_version"] == 2 and canary[1]["canary_percent"] == 30, canary
    assert garbage[0] == 400 and garbage[1]["error"] == "invalid_input", garbage
    assert "the body is not JSON" in garbage[1]["message"], garbage


@pytest.mark.django_db
def test_a_chunked_admin_body_is_capped_as_django_caps_bodies(served: Path) -> None:
    with override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=1000):
        status, document = admin_post_chunked("/-/inprocserve/reload", [b" " * 600, b" " * 600])
    assert (status, document["error"]) == (413, "too_large") and "DATA_UPLOAD_MAX_MEMORY_SIZE" in document["message"]


def admin_wsgi_post(action: str, body: bytes, **environ: str) -> tuple[str, dict[str, Any]]:
    """POST ``body`` to model scale's admin ``action`` through Django's real WSGI handler, as a WSGI server
    would call it, with the admin token and ``environ`` (the tests that call it are marked django_db)."""
    base = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": f"/-/inprocserve/models/scale/{action}",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "wsgi.input": io.BytesIO(body),
        "wsgi.url_scheme": "http",
        "wsgi.errors": sys.stderr,
        "HTTP_AUTHORIZATION": "Bearer secret",
    }
    answer: dict[str, Any] = {}
    chunks = WSGIHandler()({**base, **environ}, lambda status, headers: answer.update(status=status))
    return answer["status"], json.loads(b"".join(chunks))


@pytest.mark.django_db
def test_an_admin_body_of_unknown_end_is_a_411_that_says_why(served: Path) -> None:
    # (a WSGI server that does not end chunked input: the body cannot be read, and is not taken for "no body")
    status, document = admin_wsgi_post("switch", b'{"version": 1}', HTTP_TRANSFER_ENCODING="chunked")
    assert status.startswith("411")
    assert document["error"] == "length_required" and "send a Content-Length header" in document["message"]


@pytest.mark.django_db
@pytest.mark.parametrize("body", [b'{"version": 1', b'{"version": 1, "percent": 5}'], ids=["cut-json", "whole-json"])
def test_an_admin_body_that_ends_before_its_content_length_is_a_400_and_not_acted_on(served: Path, body: bytes) -> None:
    # (a WSGI server such as gunicorn ends the body early, without an error, when the client stops sending: the
    # part was refused as "not JSON", or, a whole JSON object in it, acted on as if it were the body meant)
    status, document = admin_wsgi_post("canary", body, CONTENT_LENGTH=str(len(body) + 20))
    assert status.startswith("400"), document
    expected = f"ended after {len(body)} bytes, before the {len(body) + 20} its Content-Length declares"
    assert document["error"] == "invalid_input" and expected in document["message"], document
    control = get_server().status()["models"]["scale"]["control"] or {}
    assert control.get("canary_version") is None, control


def test_a_configured_token_with_a_trailing_newline_still_opens_the_admin_endpoints(repository: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "ADMIN_TOKEN": "secret\n"}):
        response = Client().post(
            "/-/inprocserve/models/scale/kill", data=b"", content_type="application/json", headers=ADMIN
        )
    reset_server()
    assert response.status_code == 200, response.content


@pytest.mark.parametrize("key", ["ADMIN_TOKEN", "STATUS_PAGE_TOKEN"])
@pytest.mark.parametrize("token", ["s\u00e9cret", "   ", 42])
def test_a_token_no_header_can_carry_is_a_system_check_error(repository: Path, key: str, token: object) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), key: token}):
        errors = [m for m in run_checks() if m.id == "inprocserve.E010"]
    assert len(errors) == 1 and key in errors[0].msg


# -- admin endpoints without a token ---------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "head", "put", "delete", "post"])
def test_the_admin_endpoints_are_404_without_a_token_whatever_the_method(repository: Path, method: str) -> None:
    # The docs say 404 when no token is configured, as the Flask plug-in answers (no such route): a GET was a
    # 405 (the POST-only check came first), which told whoever probed that the endpoint was there.
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        for path in ("/-/inprocserve/reload", "/-/inprocserve/models/scale/switch"):
            response = getattr(Client(), method)(path, headers=ADMIN)
            assert response.status_code == 404, (method, path)
    reset_server()


def test_the_admin_endpoints_with_a_token_are_post_only(served: Path) -> None:
    response = Client().get("/-/inprocserve/reload", headers=ADMIN)
    assert (response.status_code, response["Allow"]) == (405, "POST")


# -- control characters in a protocol path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/a%0Ab/infer"),
        ("GET", "/v2/models/a%0Db/ready"),
        ("GET", "/v2/models/scale%0A"),
        ("GET", "/api/ml/v2/models/a%0Ab/ready"),
    ],
)
def test_a_control_character_in_a_protocol_path_is_a_json_error(served: Path, method: str, path: str) -> None:
    # The URL pattern's "." stops at a newline: Django's HTML 404 page, where every other /v2 error is the
    # protocol's JSON {"error": ...}
    response = Client().generic(method, path, json.dumps({"inputs": [X]}), content_type="application/json")
    assert response.status_code == 404 and response["Content-Type"] == "application/json", response.content[:200]
    error = response.json()["error"]
    assert error.startswith("unknown model '") and "\\" in error  # (escaped)


@pytest.mark.parametrize("path", ["/v2%0A", "/v2%0D", "/v2%09", "/v2%0A/models/scale/ready", "/api/ml/v2%0A"])
def test_a_control_character_right_after_v2_is_the_protocol_s_json_404(served: Path, path: str) -> None:
    # "/v2" followed at once by a control character matched no pattern: Django's HTML 404 page
    response = Client().get(path)
    assert response.status_code == 404 and response["Content-Type"] == "application/json", response.content[:200]
    assert response.json()["error"].startswith("no Open Inference Protocol endpoint at '/v2\\"), response.json()


# -- after close_server ----------------------------------------------------------------------------------------------


def test_a_request_after_close_server_is_a_503_and_builds_no_new_server(
    served: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A shutdown hook's reset_server() (its docstring said "shutdown"), then a request still arriving: it
    # quietly built a new server (every model, its threads) in a process on its way out, where the Flask
    # plug-in's Inprocserve.close(app) now answers 503.
    from inprocserve_django import close_server
    from inprocserve_django.server import _holder

    client = Client()
    infer = {"path": "/v2/models/scale/infer", "data": {"inputs": [X]}}
    score = {"path": "/score", "data": {"rows": [[1, 2, 3, 4]]}}
    assert client.post(**infer, content_type="application/json").status_code == 200
    close_server()
    try:
        with caplog.at_level(logging.WARNING, logger="inprocserve_django"):
            for request in (score, infer):
                response = client.post(**request, content_type="application/json")
                assert response.status_code == 503, (request, response.content)
                assert response["Retry-After"] == "1" and b"close_server" in response.content, response.content
        assert not _holder.started  # nothing was built again
        assert any("close_server" in record.getMessage() for record in caplog.records)
    finally:
        reset_server()  # (opens it again: settings changes and tests use it)
    assert client.post(**infer, content_type="application/json").status_code == 200


def test_the_probes_and_pages_of_a_closed_server_say_closed_and_log_no_error(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After close_server() the probes, /models and the status page answered "the model server could not start
    # in this worker (its log says why)", and logged "cannot be built in this process" at ERROR every minute:
    # an alert for a server that was only closed.
    from inprocserve_django import close_server

    settings = {"REPOSITORY": str(repository), "STATUS_PAGE": True, "STATUS_PAGE_TOKEN": "secret"}
    with override_settings(INPROCSERVE=settings):
        client = Client()
        assert client.get("/-/inprocserve/ready").status_code == 200
        close_server()
        try:
            with caplog.at_level(logging.WARNING):
                ready = client.get("/-/inprocserve/ready")
                models = client.get("/-/inprocserve/models")
                page = client.get("/-/inprocserve/status", headers=ADMIN)
        finally:
            reset_server()
    for response in (ready, models, page):
        assert response.status_code == 503 and response.has_header("Retry-After"), response.request["PATH_INFO"]
        assert inprocserve.web.NO_SERVER.encode() not in response.content, response.request["PATH_INFO"]
    assert ready.json()["ready"] is False and ready.json()["closed"] is True, ready.json()
    assert "close_server" in models.json()["error"], models.json()
    assert b"close_server" in page.content
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize("method", ["get", "put", "delete", "patch", "options"])
@pytest.mark.parametrize("path", ["/-/inprocserve/reload", "/-/inprocserve/models/scale/switch"])
def test_a_wrong_method_on_an_admin_endpoint_is_a_json_405(served: Path, method: str, path: str) -> None:
    # Django's require_POST answered an empty body, where every other answer of the admin endpoints is JSON
    response = getattr(Client(), method)(path, headers=ADMIN)
    assert (response.status_code, response["Allow"]) == (405, "POST"), response.content[:200]
    assert response["Content-Type"] == "application/json", response.content[:200]
    assert response.json()["error"] == "method_not_allowed" and "POST" in response.json()["message"]


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_admin_body_is_a_415_naming_its_encoding(served: Path, encoding: str) -> None:
    # A gzip body was read as raw bytes: "the body is not JSON" for JSON that was right, once uncompressed
    save_model(build_scale_model(3.0), served, "scale", 2)
    client = Client()
    before = client.get("/-/inprocserve/models").json()["models"]["scale"]["stable_version"]
    headers = {**ADMIN, "Content-Encoding": encoding}
    body = gzip.compress(b'{"version": 2}')
    response = client.post(
        "/-/inprocserve/models/scale/switch", data=body, content_type="application/json", headers=headers
    )
    assert response.status_code == 415, response.content
    assert response.json()["error"] == "unsupported_encoding" and encoding in response.json()["message"]
    assert response["Accept-Encoding"] == "identity"
    assert client.get("/-/inprocserve/models").json()["models"]["scale"]["stable_version"] == before
    plain = client.post(
        "/-/inprocserve/models/scale/switch", data={"version": 2}, content_type="application/json", headers=ADMIN
    )
    assert plain.status_code == 200, plain.content


@pytest.mark.parametrize(
    "path",
    [
        "/-/inprocserve/models%0A",
        "/-/inprocserve/models/scale/switch%0A",
        "/-/inprocserve/ready%00",
    ],
)
def test_a_slightly_wrong_path_under_the_prefix_is_a_json_404(served: Path, path: str) -> None:
    # Django's HTML 404 page answered, where every other answer of the endpoints is JSON
    response = Client().post(path, headers=ADMIN)
    assert response.status_code == 404 and response["Content-Type"] == "application/json", response.content[:200]
    assert response.json()["error"] == "not_found" and "health, ready, models" in response.json()["message"]


def test_the_project_s_own_404_is_left_to_the_project(served: Path) -> None:
    # (no endpoint begins so; or no control character: where the URLconf is included at the root, these are the
    # project's own paths)
    for path in (
        "/nope",
        "/-/inprocserve/nope",
        "/-/inprocserve/readyx",
        "/-/inprocserve/reload/",
        "/-/inprocserve/models/scale/detail/",
        "/-/inprocserve/status.json",
    ):
        response = Client().get(path)
        assert response.status_code == 404 and response["Content-Type"] != "application/json", path


@pytest.mark.parametrize(
    ("path", "allow"),
    [
        ("/v2/models/scale/infer", "POST, OPTIONS"),
        ("/v2/models/scale", "GET, HEAD, OPTIONS"),
        ("/v2/models/scale/ready", "GET, HEAD, OPTIONS"),
        ("/v2", "GET, HEAD, OPTIONS"),
    ],
)
def test_options_answers_what_each_protocol_path_takes(served: Path, path: str, allow: str) -> None:
    # OPTIONS was the protocol's 405 here (and Flask's own 200 listing GET for infer in the Flask plug-in): a CORS
    # preflight that no CORS middleware answered failed; now a 200 whose Allow is the path's own, as its 405's
    client = Client()
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": allow.split(", ")[0]}
    response = client.options(path, headers=preflight)
    assert (response.status_code, response["Allow"]) == (200, allow), response.content
    wrong = client.generic("GET" if allow.startswith("POST") else "POST", path)
    assert (wrong.status_code, wrong["Allow"]) == (405, allow)


def test_the_protocol_s_model_paths_of_a_closed_server_say_closed(served: Path) -> None:
    # A shutdown hook that closes the server itself (get_server().close()): a closed server has no models left,
    # and /v2/models/<m>/ready and its metadata answered 404 "unknown model 'scale'"
    client = Client()
    assert client.get("/v2/models/scale/ready").status_code == 200
    get_server().close()
    for path in ("/v2/models/scale/ready", "/v2/models/scale", "/v2/models/scale/versions/1/ready"):
        response = client.get(path)
        assert (response.status_code, response.get("Retry-After")) == (503, "1"), (path, response.content)
        assert "closed" in response.json()["error"], (path, response.content)


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("nope", "model 'nope' is not in the repository (there is no folder nope)"),
        ("empty", "its folder empty holds no version folder with a model.onnx or remote.toml"),
    ],
)
def test_an_admin_404_for_a_model_not_in_the_repository_quotes_no_host_path(
    served: Path, model: str, said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A switch (or canary, kill ...) of a model not in the repository answered "model 'nope' is not in the
    # repository /srv/app/models": the host's folders, to the HTTP client. The log line keeps the whole path.
    (served / "empty").mkdir()
    for action, body in (("switch", b'{"version": 1}'), ("kill", b"")):
        with caplog.at_level(logging.WARNING, logger="inprocserve.web"):
            response = Client().post(
                f"/-/inprocserve/models/{model}/{action}", data=body, content_type="application/json", headers=ADMIN
            )
        assert response.status_code == 404 and response.json()["error"] == "model_not_found", response.json()
        assert said in response.json()["message"], response.json()
        assert str(served.parent) not in response.content.decode(), response.json()
        assert str(served / model) in caplog.text
        caplog.clear()


@pytest.mark.parametrize("body", [b"", gzip.compress(b"")], ids=["zero bytes", "gzip of nothing"])
def test_an_admin_request_with_content_encoding_gzip_is_a_415_whatever_its_body_and_is_not_acted_on(
    served: Path, body: bytes
) -> None:
    # What docs/django.md says of the 415: refused before the body is read, zero bytes and gzip's frame of nothing
    # alike, and the kill not applied; "identity" or an empty header value is no coding (the kill is applied).
    client = Client()
    revision = client.get("/-/inprocserve/models", headers=ADMIN).json()["control"]["revision"]
    response = client.post(
        "/-/inprocserve/models/scale/kill",
        data=body,
        content_type="application/json",
        headers={**ADMIN, "Content-Encoding": "gzip"},
    )
    assert response.status_code == 415 and response.json()["error"] == "unsupported_encoding", response.json()
    assert response["Accept-Encoding"] == "identity"
    assert client.get("/-/inprocserve/models", headers=ADMIN).json()["control"]["revision"] == revision
    for none in ("identity", ""):
        response = client.post(
            "/-/inprocserve/models/scale/kill",
            data=b"",
            content_type="application/json",
            headers={**ADMIN, "Content-Encoding": none},
        )
        assert response.status_code == 200 and response.json()["kill"] is True, response.json()
