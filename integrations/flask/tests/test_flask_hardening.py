"""Hardening of the Flask plug-in through real Flask request cycles: no file paths to unauthenticated
callers, Retry-After on every 503, admin bodies that never cause a 500, and tokens checked at init_app."""

from __future__ import annotations

import gzip
import io
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from inprocserve_flask import Inprocserve
from werkzeug.test import EnvironBuilder

import inprocserve
import inprocserve.web
from inprocserve.testing import build_scale_model, save_model

X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}
ADMIN = {"Authorization": "Bearer secret"}


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    broken = folder / "broken" / "1"
    broken.mkdir(parents=True)
    (broken / "model.onnx").write_bytes(b"not an onnx model")
    return folder


def make_app(repository: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_V2_PROTOCOL=True, INPROCSERVE_ADMIN_TOKEN="secret"
    )
    app.config.update(config)
    Inprocserve(app)
    return app


@pytest.fixture
def app(repository: Path) -> Iterator[Flask]:
    application = make_app(repository)
    yield application
    Inprocserve.close(application)


@pytest.mark.parametrize("path", ["/v2/models/broken/ready", "/v2/models/broken/versions/1/ready"])
def test_model_readiness_quotes_no_path(app: Flask, repository: Path, path: str) -> None:
    response = app.test_client().get(path)
    assert response.status_code == 503 and "cannot load" in response.json["error"]
    assert str(repository.parent) not in response.get_data(as_text=True)


def test_the_plug_in_s_ready_503_says_when_to_retry(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_RETRY_AFTER_S=7)
    try:
        response = app.test_client().get("/-/inprocserve/ready")
    finally:
        Inprocserve.close(app)
    assert response.status_code == 503 and response.headers["Retry-After"] == "7"


def test_a_ready_server_answers_without_retry_after(tmp_path: Path) -> None:
    save_model(build_scale_model(2.0), tmp_path / "ok", "scale", 1)
    app = make_app(tmp_path / "ok")
    try:
        response = app.test_client().get("/-/inprocserve/ready")
    finally:
        Inprocserve.close(app)
    assert response.status_code == 200 and "Retry-After" not in response.headers


def test_an_admin_503_says_when_to_retry(repository: Path) -> None:
    """Every 503 of the plug-in says when to try again: the admin endpoints' too (a closed server)."""
    app = make_app(repository, INPROCSERVE_RETRY_AFTER_S=7)
    try:
        app.extensions["inprocserve"].server.close()  # (closed under the app, as at shutdown)
        response = app.test_client().post("/-/inprocserve/models/scale/kill", headers=ADMIN)
    finally:
        Inprocserve.close(app)
    assert response.status_code == 503 and response.json["error"] == "unavailable"
    assert response.headers["Retry-After"] == "7"


def test_a_canary_percent_of_hundreds_of_digits_is_a_400(app: Flask) -> None:
    body = b'{"version": 1, "percent": ' + b"9" * 400 + b"}"
    response = app.test_client().post("/-/inprocserve/models/scale/canary", data=body, headers=ADMIN)
    assert response.status_code == 400 and '"percent" must be a number in 0..100' in response.json["message"]


def test_an_admin_body_of_unknown_end_is_a_411_with_a_snake_case_code(app: Flask) -> None:
    # (a WSGI server that does not end chunked input, as uWSGI: the body cannot be read, and is not taken for none)
    headers = {**ADMIN, "Transfer-Encoding": "chunked"}
    environ = EnvironBuilder("/-/inprocserve/models/scale/switch", method="POST", headers=headers).get_environ()
    environ.update({"wsgi.input": io.BytesIO(b'{"version": 1}'), "wsgi.input_terminated": False})
    environ.pop("CONTENT_LENGTH", None)
    answer: dict[str, Any] = {}
    chunks = app(environ, lambda status, headers: answer.update(status=status))
    assert answer["status"].startswith("411"), answer
    document = json.loads(b"".join(chunks))
    assert document == {"error": "length_required", "message": inprocserve.web.LENGTH_REQUIRED}


def test_removing_the_canary_answers_the_percent_applied(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/-/inprocserve/models/scale/canary", json={"version": None, "percent": 0}, headers=ADMIN)
    assert response.status_code == 200 and response.json["canary_percent"] == 0
    # meant as "send 50 %", it removed the canary; the CLI refuses the same request
    response = client.post("/-/inprocserve/models/scale/canary", json={"version": None, "percent": 50}, headers=ADMIN)
    assert response.status_code == 400 and "removes the canary and takes no percent" in response.json["message"]


@pytest.mark.parametrize("configured", ["secret\n", " secret "])
def test_a_configured_token_with_surrounding_whitespace_still_opens_the_admin_endpoints(
    repository: Path, configured: str
) -> None:
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN=configured)
    try:
        response = app.test_client().post("/-/inprocserve/models/scale/kill", headers=ADMIN)
        wrong = app.test_client().post("/-/inprocserve/models/scale/kill", headers={"Authorization": "Bearer nope"})
    finally:
        Inprocserve.close(app)
    assert response.status_code == 200 and wrong.status_code == 401


@pytest.mark.parametrize("key", ["INPROCSERVE_ADMIN_TOKEN", "INPROCSERVE_STATUS_PAGE_TOKEN"])
@pytest.mark.parametrize("token", ["s\u00e9cret", "   ", "a\nb"])
def test_a_token_no_header_can_carry_fails_at_init_app(repository: Path, key: str, token: str) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match=key):
        make_app(repository, **{key: token})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("INPROCSERVE_TIMEOUT_S", "2"),  # each was a 500 on every request, or on each worker's first
        ("INPROCSERVE_TIMEOUT_S", float("nan")),
        ("INPROCSERVE_TIMEOUT_S", 0),
        ("INPROCSERVE_POLL_INTERVAL_S", "60"),
        ("INPROCSERVE_CONTROL_INTERVAL_S", 0),
        ("INPROCSERVE_CONTROL_INTERVAL_S", float("inf")),
        ("INPROCSERVE_FLAG_TIMEOUT_S", None),
        ("INPROCSERVE_RETRY_AFTER_S", "1"),  # a TypeError at init_app
        pytest.param("INPROCSERVE_RETRY_AFTER_S", 10**5000, id="an int with no repr"),  # a ValueError
        ("INPROCSERVE_RETRY_AFTER_S", float("inf")),
    ],
)
def test_a_duration_setting_of_the_wrong_type_or_range_fails_at_init_app(
    repository: Path, key: str, value: object
) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match=f"{key} must be a (finite )?number of seconds"):
        make_app(repository, **{key: value})


def test_protocol_details_through_flask(app: Flask) -> None:
    client = app.test_client()
    bools = {"inputs": [{**X, "datatype": "INT32", "data": [True, 2, 3, 4]}]}
    response = client.post("/v2/models/scale/infer", json=bools)
    assert response.status_code == 400 and "mixes true/false with numbers" in response.json["error"]
    packed = gzip.compress(json.dumps({"inputs": [X]}).encode()) + b"garbage"
    response = client.post("/v2/models/scale/infer", data=packed, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "after the end of its compressed data" in response.json["error"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("INPROCSERVE_MODELS", {"scale": {"batching": {"max_batch_size": 8}}}),  # config.toml's shape
        ("INPROCSERVE_MODEL_CONFIG", {"batching": {"max_batch_size": 8}}),
    ],
)
def test_a_model_config_given_as_a_dict_fails_at_init_app(repository: Path, key: str, value: object) -> None:
    # It was accepted, and each worker's server then loaded no model: 404 "servable models: none" on every
    # request, the cause only in a logged AttributeError.
    with pytest.raises(inprocserve.ConfigurationTypeError, match=rf"{key}.* must be an inprocserve\.ModelConfig"):
        make_app(repository, **{key: value})


@pytest.mark.parametrize(
    "key",
    [
        "INPROCSERVE_FOLLOW_SYMLINKS",
        "INPROCSERVE_EAGER",
        "INPROCSERVE_ENDPOINTS",
        "INPROCSERVE_STATUS_PAGE",
        "INPROCSERVE_ERROR_HANDLERS",
        "INPROCSERVE_V2_PROTOCOL",
    ],
)
def test_an_on_off_setting_read_from_the_environment_as_a_string_fails_at_init_app(
    repository: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # app.config[key] = os.environ.get(key, "false"): "false" is a non-empty string, true to Python. With
    # INPROCSERVE_FOLLOW_SYMLINKS it switched the refusal of linked model folders off.
    monkeypatch.setenv(key, "false")
    with pytest.raises(inprocserve.ConfigurationError, match=f"{key} must be True or False, got 'false'"):
        make_app(repository, **{key: os.environ[key]})


def test_a_repository_that_is_not_a_folder_fails_at_init_app(tmp_path: Path) -> None:
    # Each worker's server is built at its first request: a typo'd path served nothing (404 "servable models:
    # none" on every request) with the cause in one log line of each worker.
    with pytest.raises(inprocserve.ConfigurationError, match=r"INPROCSERVE_REPOSITORY \('.*modles'\) is not a folder"):
        make_app(tmp_path / "modles")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("INPROCSERVE_FLAGS", "env", r"INPROCSERVE_FLAGS must be an inprocserve\.FlagProvider .*got 'env'"),
        ("INPROCSERVE_FLAGS", inprocserve.EnvFlags, r"got the class EnvFlags: pass EnvFlags\(\.\.\.\)"),
        ("INPROCSERVE_CONTEXT", "user_id", "INPROCSERVE_CONTEXT must be a callable"),
    ],
)
def test_a_flag_provider_or_context_of_the_wrong_kind_fails_at_init_app(
    repository: Path, key: str, value: object, message: str
) -> None:
    # init_app passed; the server (built at each worker's first request) refused the flags, or every predict
    # called the context: every request was a 500. A setting of the wrong kind is the TypeError that
    # Server(flags=...) raises, in the same words.
    with pytest.raises(inprocserve.ConfigurationTypeError, match=message):
        make_app(repository, **{key: value})


# -- settings that turn each other off, and init_app's retry ----------------------------------------------------------


@pytest.mark.parametrize("token_key", ["INPROCSERVE_ADMIN_TOKEN", "INPROCSERVE_STATUS_PAGE_TOKEN"])
def test_a_token_with_the_endpoints_off_fails_at_init_app(repository: Path, token_key: str) -> None:
    # With INPROCSERVE_ENDPOINTS = False no endpoint reads the token: the admin endpoints were a 404, the
    # token ignored without a word, and whoever set it took them for protected (or on).
    app = Flask(__name__)
    app.config.update(
        {"INPROCSERVE_REPOSITORY": str(repository), "INPROCSERVE_ENDPOINTS": False, token_key: "a-long-secret"}
    )
    with pytest.raises(inprocserve.ConfigurationError, match=f"{token_key} is set but INPROCSERVE_ENDPOINTS"):
        Inprocserve(app)
    assert "inprocserve" not in app.extensions


def test_a_status_page_token_with_the_page_off_fails_at_init_app(repository: Path) -> None:
    # The page is off unless INPROCSERVE_STATUS_PAGE is on: the token was ignored without a word, /status a 404,
    # and whoever set the token took the page for served, and protected.
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_STATUS_PAGE_TOKEN="a-long-status-token")
    with pytest.raises(
        inprocserve.ConfigurationError,
        match=r"INPROCSERVE_STATUS_PAGE_TOKEN is set but INPROCSERVE_STATUS_PAGE is off.*STATUS_PAGE = True",
    ):
        Inprocserve(app)
    assert "inprocserve" not in app.extensions


def test_init_app_refused_for_a_setting_can_be_called_again_once_it_is_fixed(repository: Path) -> None:
    # The status page with no token is found while the endpoints are built: init_app had registered the
    # extension by then, so the second init_app, after the fix, raised "already registered on this app".
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_STATUS_PAGE=True)
    extension = Inprocserve()
    with pytest.raises(inprocserve.ConfigurationError, match="no token is set"):
        extension.init_app(app)
    app.config["INPROCSERVE_STATUS_PAGE_TOKEN"] = "a-long-status-token"
    extension.init_app(app)
    try:
        client = app.test_client()
        page = client.get("/-/inprocserve/status", headers={"Authorization": "Bearer a-long-status-token"})
        assert page.status_code == 200
    finally:
        Inprocserve.close(app)


def test_init_app_refused_by_the_eager_start_up_check_can_be_called_again_once_the_model_is_fixed(
    repository: Path,
) -> None:
    # EAGER's check of the repository ran after the extension was registered: once the broken model was
    # removed, init_app raised "already registered on this app".
    app = Flask(__name__)
    app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_EAGER=True)
    with pytest.raises(inprocserve.ModelLoadError, match="broken"):
        Inprocserve(app)
    shutil.rmtree(repository / "broken")
    Inprocserve(app)
    try:
        Inprocserve.warm(app)
        assert app.test_client().get("/-/inprocserve/ready").status_code == 200
    finally:
        Inprocserve.close(app)


# -- after close -----------------------------------------------------------------------------------------------------


def test_a_request_after_close_is_a_503_and_builds_no_new_server(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Inprocserve.close(app) in a shutdown hook, then a request still arriving: it quietly built a new server
    # (loading every model, starting its threads) in a process on its way out.
    app = make_app(repository)

    @app.post("/score")
    def score() -> Any:
        from inprocserve_flask import predict

        return {"y": predict("scale", {"x": [[1, 2, 3, 4]]})["y"].tolist()}

    client = app.test_client()
    assert client.post("/score").status_code == 200
    Inprocserve.close(app)
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        for path in ("/score", "/v2/models/scale/infer"):
            response = client.post(path, json={"inputs": [X]})
            assert response.status_code == 503, (path, response.get_data(as_text=True))
            assert response.headers["Retry-After"] == "1"
            assert "Inprocserve.close" in response.get_data(as_text=True), path
    assert not app.extensions["inprocserve"].started  # nothing was built again
    assert any("Inprocserve.close" in record.getMessage() for record in caplog.records)


def test_the_probes_and_pages_of_a_closed_app_say_closed_and_log_no_error(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # After Inprocserve.close(app) the probes, /models and the status page answered "the model server could not
    # start in this worker (its log says why)", and logged "cannot be built in this process" at ERROR every
    # minute: an alert for a server that was only closed.
    app = make_app(repository, INPROCSERVE_STATUS_PAGE=True)
    client = app.test_client()
    assert client.get("/-/inprocserve/ready").status_code == 503  # (built: "broken" is not servable)
    Inprocserve.close(app)
    caplog.clear()  # ("broken" failed to load, at ERROR)
    with caplog.at_level(logging.WARNING):
        ready = client.get("/-/inprocserve/ready")
        models = client.get("/-/inprocserve/models")
        page = client.get("/-/inprocserve/status", headers=ADMIN)
    for response in (ready, models, page):
        assert response.status_code == 503 and "Retry-After" in response.headers, response.request.path
        assert inprocserve.web.NO_SERVER not in response.get_data(as_text=True), response.request.path
    assert ready.json["ready"] is False and ready.json["closed"] is True, ready.json
    assert "Inprocserve.close" in models.json["error"], models.json
    assert "Inprocserve.close" in page.get_data(as_text=True)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert not app.extensions["inprocserve"].started  # nothing was built again


# -- control characters in a protocol path ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", "/v2/models/a%0Ab/infer"), ("GET", "/v2/models/a%0Db/ready"), ("GET", "/v2/models/scale%0A")],
)
def test_a_control_character_in_a_protocol_path_is_a_json_error(app: Flask, method: str, path: str) -> None:
    # werkzeug's path converter stops at a newline: Flask's HTML 404 page, where every other /v2 error is the
    # protocol's JSON {"error": ...}
    response = app.test_client().open(path, method=method, json={"inputs": [X]})
    assert response.status_code == 404 and response.is_json, response.get_data(as_text=True)
    assert response.json["error"].startswith("unknown model '") and "\\" in response.json["error"]  # (escaped)


@pytest.mark.parametrize("path", ["/v2%0A", "/v2%0D", "/v2%09", "/v2%0A/models/scale/ready", "/v2%7F"])
def test_a_control_character_right_after_v2_is_the_protocol_s_json_404(app: Flask, path: str) -> None:
    # "/v2" followed at once by a control character matched neither /v2 nor /v2/<path>: Flask's HTML 404 page
    response = app.test_client().get(path)
    assert response.status_code == 404 and response.is_json, response.get_data(as_text=True)[:200]
    assert response.json["error"].startswith("no Open Inference Protocol endpoint at '/v2\\"), response.json


@pytest.mark.parametrize(("token", "status"), [(None, 404), ("secret", 405)])
def test_a_get_on_an_admin_endpoint_is_answered_as_the_django_plug_in_answers_it(
    repository: Path, token: str | None, status: int
) -> None:
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN=token)
    try:
        for path in ("/-/inprocserve/reload", "/-/inprocserve/models/scale/switch"):
            assert app.test_client().get(path, headers=ADMIN).status_code == status, path
    finally:
        Inprocserve.close(app)


# -- wrong methods ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH", "PROPFIND"])
@pytest.mark.parametrize("path", ["/-/inprocserve/reload", "/-/inprocserve/models/scale/switch"])
def test_a_wrong_method_on_an_admin_endpoint_is_a_json_405(app: Flask, method: str, path: str) -> None:
    # werkzeug's HTML "Method Not Allowed" page, where every other answer of the admin endpoints is JSON
    response = app.test_client().open(path, method=method, headers=ADMIN)
    assert response.status_code == 405 and response.is_json, response.get_data(as_text=True)[:200]
    assert response.json["error"] == "method_not_allowed" and "POST" in response.json["message"], response.json
    assert "POST" in response.headers["Allow"].split(", ")


@pytest.mark.parametrize("path", ["/-/inprocserve/health", "/-/inprocserve/ready", "/-/inprocserve/models"])
def test_a_wrong_method_on_a_read_only_endpoint_is_a_json_405(app: Flask, path: str) -> None:
    response = app.test_client().open(path, method="POST", json={})
    assert response.status_code == 405 and response.is_json, response.get_data(as_text=True)[:200]
    assert response.json["error"] == "method_not_allowed" and "GET or HEAD" in response.json["message"]
    assert {"GET", "HEAD"} <= set(response.headers["Allow"].split(", "))


@pytest.mark.parametrize("method", ["TRACE", "PROPFIND", "MKCOL"])
@pytest.mark.parametrize(
    ("path", "allow"),
    [("/v2/models/scale/infer", "POST, OPTIONS"), ("/v2/models/scale/ready", "GET, HEAD, OPTIONS")],
)
def test_a_method_the_protocol_routes_do_not_list_is_the_protocol_s_json_405(
    app: Flask, method: str, path: str, allow: str
) -> None:
    # The /v2 routes list GET, POST, PUT, PATCH and DELETE: any other method got werkzeug's HTML 405 page (its
    # Allow naming every method listed), where the protocol answers a wrong method with its JSON 405
    response = app.test_client().open(path, method=method)
    assert response.status_code == 405 and response.is_json, response.get_data(as_text=True)[:200]
    assert response.headers["Allow"] == allow and list(response.json) == ["error"], response.json


@pytest.mark.parametrize("path", ["/-/inprocserve/models/scale/switch", "/v2/models/scale/infer"])
def test_a_body_over_max_content_length_is_a_json_413(repository: Path, path: str) -> None:
    # Flask's MAX_CONTENT_LENGTH trips while the body is read: werkzeug's HTML 413 page, where the Django plug-in's
    # admin endpoints answer {"error": "too_large", ...} and every other answer of these endpoints is JSON
    app = make_app(repository, MAX_CONTENT_LENGTH=64)
    try:
        response = app.test_client().post(path, json={"version": 1, "inputs": [X], "pad": "x" * 200}, headers=ADMIN)
    finally:
        Inprocserve.close(app)
    assert response.status_code == 413 and response.is_json, response.get_data(as_text=True)[:200]
    assert "64 bytes" in str(response.json), response.json


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br"])
def test_a_compressed_admin_body_is_a_415_naming_its_encoding(repository: Path, encoding: str) -> None:
    # A gzip body was read as raw bytes: "the body is not JSON" for JSON that was right, once uncompressed
    save_model(build_scale_model(3.0), repository, "scale", 2)
    app = make_app(repository)
    try:
        client = app.test_client()
        before = client.get("/-/inprocserve/models").json["models"]["scale"]["stable_version"]
        headers = {**ADMIN, "Content-Encoding": encoding, "Content-Type": "application/json"}
        response = client.post(
            "/-/inprocserve/models/scale/switch", data=gzip.compress(b'{"version": 2}'), headers=headers
        )
        assert response.status_code == 415, response.get_data(as_text=True)
        assert response.json["error"] == "unsupported_encoding" and encoding in response.json["message"]
        assert response.headers["Accept-Encoding"] == "identity"
        assert client.get("/-/inprocserve/models").json["models"]["scale"]["stable_version"] == before
        plain = client.post("/-/inprocserve/models/scale/switch", json={"version": 2}, headers=ADMIN)
        assert plain.status_code == 200, plain.json
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize(
    "path",
    ["/-/inprocserve/models%0A", "/-/inprocserve/models/scale/switch%0A", "/-/inprocserve/nope", "/-/inprocserve%0A"],
)
def test_a_slightly_wrong_path_under_the_prefix_is_a_json_404(app: Flask, path: str) -> None:
    # werkzeug's HTML 404 page answered, where every other answer of the endpoints is JSON
    response = app.test_client().post(path, headers=ADMIN)
    assert response.status_code == 404 and response.is_json, response.get_data(as_text=True)[:200]
    assert response.json["error"] == "not_found" and "health, ready, models" in response.json["message"]


def test_the_app_s_own_404_is_left_to_the_app(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_URL_PREFIX="/ops/")
    try:
        client = app.test_client()
        assert client.get("/ops/nope").json["error"] == "not_found"
        for path in ("/nope", "/opsx/ready", "/ops"):  # not under the prefix: the app's own page
            response = client.get(path)
            assert response.status_code == 404 and not response.is_json, path
    finally:
        Inprocserve.close(app)


def test_the_protocol_s_model_paths_of_a_closed_server_say_closed(app: Flask) -> None:
    # A shutdown hook that closes the server itself (inprocserve_flask.server.close()): a closed server has no
    # models left, and /v2/models/<m>/ready and its metadata answered 404 "unknown model 'scale'"
    from inprocserve_flask import server

    client = app.test_client()
    assert client.get("/v2/models/scale/ready").status_code == 200
    with app.app_context():
        server.close()
    for path in ("/v2/models/scale/ready", "/v2/models/scale", "/v2/models/scale/versions/1/ready"):
        response = client.get(path)
        assert (response.status_code, response.headers.get("Retry-After")) == (503, "1"), (path, response.json)
        assert "closed" in response.json["error"], (path, response.json)
    assert client.get("/-/inprocserve/ready").json["closed"] is True


def test_an_app_s_own_404_under_a_prefix_it_shares_is_left_to_the_app(repository: Path) -> None:
    # An app that mounts the endpoints under its own /api, beside its routes there, and answers its 404s in its own
    # format: after the upgrade inprocserve's JSON 404 answered the app's clients for the app's own paths.
    app = make_app(repository, INPROCSERVE_URL_PREFIX="/api")

    @app.get("/api/orders/<int:order>")
    def order(order: int) -> dict[str, int]:
        return {"order": order}

    @app.errorhandler(404)
    def not_found(error: Exception) -> tuple[dict[str, str], int]:
        return {"detail": "no such page"}, 404

    try:
        client = app.test_client()
        assert client.get("/api/orders/7").json == {"order": 7}
        response = client.get("/api/orders/seven")
        assert (response.status_code, response.json) == (404, {"detail": "no such page"})
        assert client.get("/api/health").status_code == 200
    finally:
        Inprocserve.close(app)


def test_the_endpoints_blueprint_nested_in_a_teams_own_is_refused_at_registration(repository: Path) -> None:
    # A team mounting everything under its own /ops blueprint took the plug-in's blueprint from app.blueprints and
    # nested it (Flask names it "ops.inprocserve"): a second copy of the endpoints that the plug-in's JSON 404 and
    # 405 do not know (found by blueprint name), so /ops/-/inprocserve/modles got werkzeug's HTML page again.
    from flask import Blueprint

    app = make_app(repository)
    try:
        ops = Blueprint("ops", __name__)
        ops.register_blueprint(app.blueprints["inprocserve"])
        with pytest.raises(ValueError, match=r"INPROCSERVE_URL_PREFIX"):
            app.register_blueprint(ops, url_prefix="/ops")
        client = app.test_client()
        assert client.get("/ops/-/inprocserve/health").status_code == 404
        assert client.get("/-/inprocserve/health").status_code == 200
        response = client.get("/-/inprocserve/modles")
        assert response.status_code == 404 and response.json["error"] == "not_found"
    finally:
        Inprocserve.close(app)


def test_an_empty_admin_body_sent_with_content_encoding_gzip_is_a_415_too(repository: Path) -> None:
    # Kept a 415, as the Django plug-in answers (both ask inprocserve.web.admin_encoding_refused, before the body is
    # read): a client that compresses its bodies sends gzip's 20-byte frame for an empty one, never zero bytes; the
    # header on zero bytes is a client that labels bodies it does not compress, whose next `switch` with a body
    # would be refused anyway. Refused on its first `kill` too, it learns that now, with nothing changed.
    app = make_app(repository)
    try:
        client = app.test_client()
        headers = {**ADMIN, "Content-Encoding": "gzip"}
        response = client.post("/-/inprocserve/models/scale/kill", data=b"", headers=headers)
        assert response.status_code == 415 and response.json["error"] == "unsupported_encoding", response.json
        assert response.headers["Accept-Encoding"] == "identity"
        assert client.post("/-/inprocserve/models/scale/kill", headers=ADMIN).status_code == 200
    finally:
        Inprocserve.close(app)


def test_the_endpoints_blueprint_registered_on_another_app_is_refused_at_registration(repository: Path) -> None:
    # An admin app of one's own, given the plug-in's blueprint taken from the app that has the extension: it was
    # registered without a word, then /ready answered an HTML 500 (RuntimeError "inprocserve is not registered on
    # this app") and /models a 503 saying the model server could not start in this worker, which had none.
    from flask import Flask

    app = make_app(repository)
    try:
        admin = Flask("admin")
        with pytest.raises(ValueError, match=r"registered again or nested in another blueprint \(here on app 'admin'"):
            admin.register_blueprint(app.blueprints["inprocserve"], url_prefix="/-/inprocserve")
        assert admin.test_client().get("/-/inprocserve/ready").status_code == 404
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize(
    ("model", "body", "said"),
    [
        ("nope", {"version": 1}, "model 'nope' is not in the repository (there is no folder nope)"),
        ("empty", {"version": 1}, "its folder empty holds no version folder with a model.onnx or remote.toml"),
    ],
)
def test_an_admin_404_for_a_model_not_in_the_repository_quotes_no_host_path(
    repository: Path, model: str, body: dict[str, Any], said: str, caplog: pytest.LogCaptureFixture
) -> None:
    # A switch (or canary, kill ...) of a model not in the repository answered "model 'nope' is not in the
    # repository /srv/app/models": the host's folders, to the HTTP client. The log line keeps the whole path.
    (repository / "empty").mkdir()
    app = make_app(repository)
    try:
        for action in ("switch", "kill"):
            with caplog.at_level(logging.WARNING, logger="inprocserve.web"):
                response = app.test_client().post(
                    f"/-/inprocserve/models/{model}/{action}", json=body if action == "switch" else None, headers=ADMIN
                )
            assert response.status_code == 404 and response.json["error"] == "model_not_found", response.json
            assert said in response.json["message"], response.json
            assert str(repository.parent) not in response.get_data(as_text=True), response.json
            assert str(repository / model) in caplog.text
            caplog.clear()
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize("body", [b"", gzip.compress(b"")], ids=["zero bytes", "gzip of nothing"])
def test_an_admin_request_with_content_encoding_gzip_is_a_415_whatever_its_body_and_is_not_acted_on(
    repository: Path, body: bytes
) -> None:
    # What docs/flask.md says of the 415: refused before the body is read, zero bytes and gzip's frame of nothing
    # alike, and the kill not applied; "identity" or an empty header value is no coding (the kill is applied).
    app = make_app(repository)
    try:
        client = app.test_client()
        revision = client.get("/-/inprocserve/models").json["control"]["revision"]
        response = client.post(
            "/-/inprocserve/models/scale/kill", data=body, headers={**ADMIN, "Content-Encoding": "gzip"}
        )
        assert response.status_code == 415 and response.json["error"] == "unsupported_encoding", response.json
        assert response.headers["Accept-Encoding"] == "identity"
        assert client.get("/-/inprocserve/models").json["control"]["revision"] == revision  # nothing written
        for none in ("identity", ""):
            response = client.post(
                "/-/inprocserve/models/scale/kill", data=b"", headers={**ADMIN, "Content-Encoding": none}
            )
            assert response.status_code == 200 and response.json["kill"] is True, response.json
    finally:
        Inprocserve.close(app)


class _RefusingFlags:
    """A provider of the application's own whose flag service refuses every read with the library's error type."""

    name = "own"
    blocking = False

    def _refuse(self, key: str, default: Any, context: Any) -> Any:
        raise inprocserve.InvalidInputError("the flag service refused the read: no tenant header")

    get_boolean = get_number = get_string = get_object = _refuse


def test_a_flag_provider_raising_invalid_input_error_is_no_400_to_the_client(repository: Path) -> None:
    # The provider's failure came back as a 400 "invalid_input" about the client's input: the stable version
    # answers, and the failure is counted, as for any exception a provider raises (docs/rollouts.md).
    app = make_app(repository, INPROCSERVE_FLAGS=_RefusingFlags())
    try:
        client = app.test_client()
        response = client.post("/v2/models/scale/infer", json={"inputs": [X]}, headers={"X-User-Id": "u-1"})
        assert response.status_code == 200, response.json
        assert response.json["outputs"][0]["data"] == [2, 4, 6, 8]
        flags = client.get("/-/inprocserve/models", headers=ADMIN).json["models"]["scale"]["rollout"]["flags"]
        assert flags["failures"] == 1, flags
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize("spaces", [5000, 990])
def test_a_chunked_admin_body_over_max_content_length_is_the_413_not_a_400_about_its_first_bytes(
    repository: Path, spaces: int
) -> None:
    # werkzeug reads a chunked body up to MAX_CONTENT_LENGTH and stops there: the switch was refused as "the body
    # is not JSON", its first 1000 bytes, where the same body with a Content-Length is the 413
    app = make_app(repository, MAX_CONTENT_LENGTH=1000)
    body = b" " * spaces + b'{"version": 1}'
    try:
        headers = {**ADMIN, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}
        environ = EnvironBuilder("/-/inprocserve/models/scale/switch", method="POST", headers=headers).get_environ()
        environ.update({"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})
        environ.pop("CONTENT_LENGTH", None)
        answer: dict[str, Any] = {}
        document = json.loads(b"".join(app(environ, lambda status, headers: answer.update(status=status))))
        assert answer["status"].startswith("413"), (answer, document)
        assert document["error"] == "too_large", document
        response = app.test_client().post("/-/inprocserve/models/scale/switch", data=body, headers=ADMIN)
        assert (response.status_code, response.json["error"]) == (413, "too_large"), response.json  # (as with a length)
    finally:
        Inprocserve.close(app)


def test_a_chunked_admin_body_of_exactly_max_content_length_is_read(repository: Path) -> None:
    app = make_app(repository, MAX_CONTENT_LENGTH=1000)
    body = b" " * (1000 - len(b'{"version": 1}')) + b'{"version": 1}'
    try:
        headers = {**ADMIN, "Transfer-Encoding": "chunked", "Content-Type": "application/json"}
        environ = EnvironBuilder("/-/inprocserve/models/scale/switch", method="POST", headers=headers).get_environ()
        environ.update({"wsgi.input": io.BytesIO(body), "wsgi.input_terminated": True})
        environ.pop("CONTENT_LENGTH", None)
        answer: dict[str, Any] = {}
        document = json.loads(b"".join(app(environ, lambda status, headers: answer.update(status=status))))
        assert answer["status"].startswith("200") and document["stable"] == 1, (answer, document)
    finally:
        Inprocserve.close(app)
