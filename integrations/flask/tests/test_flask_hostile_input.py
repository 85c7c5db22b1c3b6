"""Hostile request values against the Flask plug-in: every one is a 400 naming what to fix, never a 500."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, request
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocserve_flask import Inprocserve, predict

from inprocserve.testing import build_scale_model, save_model

HOSTILE_TIMEOUTS = [
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "1e3",
    "9" * 400,
    "-5",
    "-0.5",
    "",
    "   ",
    "0x10",
    "1_000",
    "12,5",
    "+250",
    "\u0661\u0662\u0663",  # Arabic-Indic digits: float() would take them
    "250ms",
    "1.2.3",
    "86400001",
]

HOSTILE_USER_IDS = ["", "   ", "x" * 257, "user\x00id", "user\x7fid", "caf\u00e9", "\t\x01"]


@pytest.fixture
def app(tmp_path: Path) -> Any:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    flask_app = Flask(__name__)
    flask_app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_ADMIN_TOKEN="secret")
    Inprocserve(flask_app)

    @flask_app.post("/score")
    def score() -> Any:
        return {"y": predict("scale", {"x": request.get_json()["rows"]})["y"].tolist()}

    yield flask_app
    Inprocserve.close(flask_app)


def _score(app: Flask, headers: dict[str, str]) -> Any:
    return app.test_client().post("/score", json={"rows": [[1, 2, 3, 4]]}, headers=headers)


@pytest.mark.parametrize("value", HOSTILE_TIMEOUTS)
def test_a_malformed_deadline_header_is_a_400_naming_the_header(app: Flask, value: str) -> None:
    response = _score(app, {"X-Request-Timeout-Ms": value})
    assert response.status_code == 400, response.get_data(as_text=True)
    body = response.get_json()
    assert body["error"] == "invalid_input"
    assert "X-Request-Timeout-Ms" in body["message"] and "milliseconds" in body["message"]
    assert len(body["message"]) < 300  # a 400-digit header is not echoed back whole


@pytest.mark.parametrize("value", ["5000", " 5000 ", "5000.25", "86400000"])
def test_a_well_formed_deadline_header_is_honoured(app: Flask, value: str) -> None:
    response = _score(app, {"X-Request-Timeout-Ms": value})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["y"] == [[2.0, 4.0, 6.0, 8.0]]


def test_a_zero_deadline_is_spent_not_malformed(app: Flask) -> None:
    assert _score(app, {"X-Request-Timeout-Ms": "0"}).status_code == 504


def test_a_deadline_header_sent_twice_is_a_400_that_says_so(app: Flask) -> None:
    # A client and a proxy both set the budget: the app sees "250, 300" and was told to send "a plain number of
    # milliseconds, such as 250", which each of them did.
    response = app.test_client().post(
        "/score",
        json={"rows": [[1, 2, 3, 4]]},
        headers=[("X-Request-Timeout-Ms", "250"), ("X-Request-Timeout-Ms", "300")],
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    message = response.get_json()["message"]
    assert "X-Request-Timeout-Ms" in message and "more than once" in message


def test_a_deadline_with_a_long_fraction_is_a_400_that_says_how_many_digits(app: Flask) -> None:
    # what a JavaScript client sends for String(deadline - performance.now())
    response = _score(app, {"X-Request-Timeout-Ms": "249.89999999850988"})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "at most 6 digits after the point" in response.get_json()["message"]


@pytest.mark.parametrize("value", HOSTILE_USER_IDS)
def test_a_malformed_user_id_header_is_a_400(app: Flask, value: str) -> None:
    response = _score(app, {"X-User-Id": value})
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "X-User-Id" in response.get_json()["message"]


def test_a_reasonable_user_id_is_accepted(app: Flask) -> None:
    assert _score(app, {"X-User-Id": "user-42@example.com"}).status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b'"version"',
        b"null",
        b"{",
        b'{"version": true}',
        b'{"version": "1"}',
        b'{"version": 1.0}',
        b'{"version": -1}',
        b'{"version": 0}',
        b'{"version": 1e400}',
        b'{"version": ' + b"9" * 400 + b"}",
        b"\xff\xfe",
    ],
)
def test_a_malformed_switch_body_is_a_400(app: Flask, body: bytes) -> None:
    response = app.test_client().post(
        "/-/inprocserve/models/scale/switch",
        data=body,
        headers={"Authorization": "Bearer secret", "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert "version" in response.get_json()["message"]


@pytest.mark.parametrize("name", ["..", "%2e%2e", "a" * 300, "sc\u00e4le", "scale%00"])
def test_a_hostile_model_name_in_the_switch_url_is_not_a_500(app: Flask, name: str) -> None:
    response = app.test_client().post(
        f"/-/inprocserve/models/{name}/switch", json={"version": 1}, headers={"Authorization": "Bearer secret"}
    )
    assert response.status_code in (400, 404), response.get_data(as_text=True)


FUZZ_EXAMPLES = 2_000 if os.environ.get("HYPOTHESIS_PROFILE") == "soak" else 200
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40)


@given(timeout=st.one_of(header_text, st.from_regex(r"[0-9]{1,14}(\.[0-9]{0,8})?", fullmatch=True)), user=header_text)
@settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    derandomize=os.environ.get("HYPOTHESIS_PROFILE") != "soak",
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
def test_any_header_value_is_answered_or_a_400(app: Flask, timeout: str, user: str) -> None:
    response = _score(app, {"X-Request-Timeout-Ms": timeout, "X-User-Id": user})
    assert response.status_code in (200, 400, 504), response.get_data(as_text=True)
    if response.status_code == 200:
        assert response.get_json()["y"] == [[2.0, 4.0, 6.0, 8.0]]
    elif response.status_code == 400:
        message = response.get_json()["message"]
        assert "X-Request-Timeout-Ms" in message or "X-User-Id" in message


@pytest.mark.parametrize("mode", ["refuse", "follow"])
def test_a_symlinked_model_folder_is_served_only_when_the_app_follows_links(tmp_path: Path, mode: str) -> None:
    follow = mode == "follow"
    save_model(build_scale_model(3.0), tmp_path / "elsewhere", "linked", 1)
    repository = tmp_path / "models"
    repository.mkdir()
    (repository / "linked").symlink_to(tmp_path / "elsewhere" / "linked", target_is_directory=True)
    flask_app = Flask(__name__)
    flask_app.config.update(INPROCSERVE_REPOSITORY=str(repository), INPROCSERVE_FOLLOW_SYMLINKS=follow)
    Inprocserve(flask_app)
    try:
        response = flask_app.test_client().get("/-/inprocserve/models")
        assert ("linked" in response.get_json()["models"]) is follow
    finally:
        Inprocserve.close(flask_app)


# -- client text echoed in error messages -------------------------------------------------------------------

HUGE = "n" * 5_000_000


def _x(**changes: Any) -> dict[str, Any]:
    return {"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4], **changes}


ECHOED = {
    "tensor name": {"inputs": [_x(name=HUGE)]},
    "datatype": {"inputs": [_x(datatype=HUGE)]},
    "parameter key": {"parameters": {HUGE: [1]}, "inputs": [_x()]},
    "timeout parameter": {"parameters": {"timeout": HUGE}, "inputs": [_x()]},
    "binary_data_output": {"parameters": {"binary_data_output": HUGE}, "inputs": [_x()]},
    "user_id parameter": {"parameters": {"user_id": HUGE}, "inputs": [_x()]},
    "output name": {"inputs": [_x()], "outputs": [{"name": HUGE}]},
    "shape": {"inputs": [_x(shape=[1] * 1_000_000 + [-1])]},
    "binary_data_size": {"inputs": [{**_x(parameters={"binary_data_size": HUGE}), "data": None}]},
}


@pytest.mark.parametrize("where", list(ECHOED))
def test_a_huge_name_in_a_protocol_request_is_not_echoed_whole(app: Flask, where: str) -> None:
    flask_app = Flask(__name__)
    flask_app.config.update(INPROCSERVE_REPOSITORY=app.config["INPROCSERVE_REPOSITORY"], INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(flask_app)
    try:
        response = flask_app.test_client().post("/v2/models/scale/infer", json=ECHOED[where])
    finally:
        Inprocserve.close(flask_app)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert len(error) < 400, error[:400]  # was the whole 5 MB, in the answer, the log and the span
    assert "characters)" in error or "..." in error


def test_a_huge_model_name_in_a_protocol_url_is_not_echoed_whole(app: Flask) -> None:
    flask_app = Flask(__name__)
    flask_app.config.update(INPROCSERVE_REPOSITORY=app.config["INPROCSERVE_REPOSITORY"], INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(flask_app)
    try:
        response = flask_app.test_client().post(f"/v2/models/{'m' * 100_000}/infer", json={"inputs": [_x()]})
    finally:
        Inprocserve.close(flask_app)
    assert response.status_code == 404
    assert len(response.get_json()["error"]) < 400
    assert "(100000 characters)" in response.get_json()["error"]


def test_names_a_view_passes_on_from_a_client_are_not_echoed_whole(app: Flask) -> None:
    @app.post("/any")
    def any_model() -> Any:
        sent = request.get_json()
        return {"y": predict(sent["model"], sent["inputs"])["y"].tolist()}

    client = app.test_client()
    unknown_model = client.post("/any", json={"model": HUGE, "inputs": {"x": [[1, 2, 3, 4]]}})
    assert unknown_model.status_code == 404
    assert len(unknown_model.get_json()["message"]) < 400
    many_names = {f"{index}{HUGE[:1000]}": [[1, 2, 3, 4]] for index in range(5000)}
    unknown_inputs = client.post("/any", json={"model": "scale", "inputs": many_names})
    assert unknown_inputs.status_code == 400
    message = unknown_inputs.get_json()["message"]
    assert len(message) < 2000 and "and 4992 more" in message


def test_a_user_id_header_sent_twice_is_a_400_not_a_made_up_user(app: Flask) -> None:
    # A WSGI server joins a repeated header's values with commas: "alice" and "bob" became the user "alice,bob"
    import http.client
    import threading

    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=30)
        connection.putrequest("POST", "/score")
        for name, value in [("X-User-Id", "alice"), ("X-User-Id", "bob"), ("Content-Type", "application/json")]:
            connection.putheader(name, value)
        body = b'{"rows": [[1, 2, 3, 4]]}'
        connection.putheader("Content-Length", str(len(body)))
        connection.endheaders(body)
        response = connection.getresponse()
        answer = response.read().decode()
    finally:
        server.shutdown()
    assert response.status == 400, answer
    assert "X-User-Id" in answer and "more than once" in answer


def test_a_long_model_name_is_cut_short_when_the_budget_is_already_spent(app: Flask) -> None:
    """A route may take the model's name from the request: with a spent budget (X-Request-Timeout-Ms: 0) the
    504 quoted all of it (5 MB in, 5 MB out, in the log too)."""

    @app.post("/score-named")
    def score_named() -> Any:
        body = request.get_json()
        return {"y": predict(body["model"], {"x": body["rows"]})["y"].tolist()}

    response = app.test_client().post(
        "/score-named", json={"model": "m" * 1_000_000, "rows": [[1, 2, 3, 4]]}, headers={"X-Request-Timeout-Ms": "0"}
    )
    assert response.status_code == 504
    assert len(response.get_data()) < 500
