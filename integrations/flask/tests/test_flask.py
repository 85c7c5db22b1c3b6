"""The Flask extension through real Flask request cycles (test client), and under real gunicorn."""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask, request
from inprocserve_flask import Inprocserve, OutsideRequestError, default_context, predict, server, timeout

import inprocserve
from inprocserve import web
from inprocserve.testing import build_mlp_model, build_scale_model, save_model
from tests.ports import listening_socket


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)
    return folder


def make_app(repository: Path, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = str(repository)
    app.config.update(config)
    ext = Inprocserve()
    ext.init_app(app)  # the app-factory pattern

    @app.post("/score")
    def score() -> Any:
        result = predict("scale", {"x": request.get_json()["rows"]})
        return {"y": result["y"].tolist(), "version": result.version, "variant": result.variant}

    @app.post("/slow-budget")
    @timeout(0.000001)
    def slow_budget() -> Any:
        time.sleep(0.01)
        return {"y": predict("scale", {"x": [[1, 1, 1, 1]]})["y"].tolist()}

    @app.get("/direct")
    def direct() -> Any:
        return {"models": server.models}

    return app


@pytest.fixture
def app(repository: Path) -> Iterator[Flask]:
    application = make_app(repository)
    yield application
    Inprocserve.close(application)


def test_a_view_predicts_through_the_extension(app: Flask) -> None:
    response = app.test_client().post("/score", json={"rows": [[1, 2, 3, 4]]})
    assert response.status_code == 200
    assert response.json == {"y": [[2.0, 4.0, 6.0, 8.0]], "version": 2, "variant": "default"}
    assert app.test_client().get("/direct").json == {"models": {"scale": [2]}}


def test_registering_twice_is_an_error(app: Flask) -> None:
    with pytest.raises(RuntimeError, match="already registered"):
        Inprocserve(app)


def test_config_keys_get_defaults(app: Flask) -> None:
    assert app.config["INPROCSERVE_URL_PREFIX"] == "/-/inprocserve"
    assert app.config["INPROCSERVE_ADMIN_TOKEN"] is None


def test_the_user_header_makes_canary_assignment_sticky(repository: Path) -> None:
    config = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        rollout=inprocserve.RolloutConfig(
            strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
        ),
    )
    app = make_app(repository, INPROCSERVE_MODEL_CONFIG=config)
    client = app.test_client()
    try:
        seen = {}
        for user in [f"user-{i}" for i in range(40)]:
            versions = {
                client.post("/score", json={"rows": [[1, 1, 1, 1]]}, headers={"X-User-Id": user}).json["version"]
                for _ in range(3)
            }
            assert len(versions) == 1  # the same user always gets the same version
            seen[user] = versions.pop()
        assert set(seen.values()) == {1, 2}
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize(
    ("body", "status", "error"),
    [
        ({"rows": [[1, 2]]}, 400, "invalid_input"),
        ({"rows": [["a", "b", "c", "d"]]}, 400, "invalid_input"),
    ],
)
def test_library_errors_become_http_errors(app: Flask, body: dict[str, Any], status: int, error: str) -> None:
    response = app.test_client().post("/score", json=body)
    assert response.status_code == status
    assert response.json["error"] == error
    assert "input 'x'" in response.json["message"]


def test_unknown_models_overload_and_deadlines_map_to_404_503_504(repository: Path) -> None:
    app = make_app(repository)

    @app.get("/unknown")
    def unknown() -> Any:
        return predict("nope", [[1, 2, 3, 4]])

    @app.get("/overloaded")
    def overloaded() -> Any:
        raise inprocserve.QueueFullError("queue full", model="scale")

    client = app.test_client()
    try:
        assert client.get("/unknown").status_code == 404
        response = client.get("/overloaded")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert client.post("/slow-budget").status_code == 504
    finally:
        Inprocserve.close(app)


def test_the_timeout_decorator_gives_an_async_view_its_budget(repository: Path) -> None:
    app = make_app(repository)

    @app.post("/async-score")
    @timeout(60)
    async def async_score() -> Any:
        return {"version": predict("scale", {"x": [[1, 2, 3, 4]]}).version}

    @app.post("/async-spent")
    @timeout(1e-9)  # (nothing can reach the prediction in a nanosecond)
    async def async_spent() -> Any:
        return {"version": predict("scale", {"x": [[1, 2, 3, 4]]}).version}

    client = app.test_client()
    try:
        response = client.post("/async-score")
        assert response.status_code == 200, response.data[:300]
        assert response.json == {"version": 2}
        spent = client.post("/async-spent")
        assert spent.status_code == 504 and spent.json["error"] == "deadline_exceeded"
    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize(
    ("seconds", "error", "match"),
    [
        ("0.2", TypeError, "number of seconds, got '0.2'"),
        (True, TypeError, "number of seconds, got True"),
        (float("nan"), ValueError, "seconds > 0"),
        (0, ValueError, "seconds > 0"),
        (-1.0, ValueError, "seconds > 0"),
    ],
)
def test_a_timeout_that_is_no_budget_is_refused_where_the_view_is_decorated(
    seconds: object, error: type[Exception], match: str
) -> None:
    # (each request of the view was a 500: TypeError adding a string, or predict refusing timeout_s=nan)
    with pytest.raises(error, match=match):
        timeout(seconds)  # type: ignore[arg-type]


def test_a_bare_timeout_decorator_is_refused_where_the_view_is_decorated(repository: Path) -> None:
    app = make_app(repository)
    try:
        with pytest.raises(TypeError, match=r"write @timeout\(0.2\), not @timeout"):

            @app.get("/bare")
            @timeout  # type: ignore[arg-type]
            def bare() -> Any:
                return {}

    finally:
        Inprocserve.close(app)


@pytest.mark.parametrize(
    ("statuses", "match"),
    [
        ({inprocserve.OverloadedError: "503"}, "maps OverloadedError to '503': a status must be an int from 400"),
        ({inprocserve.InvalidInputError: 4220}, "maps InvalidInputError to 4220"),
        ({inprocserve.InvalidInputError: True}, "maps InvalidInputError to True"),
        ({"InvalidInputError": 422}, "maps 'InvalidInputError', which is not an exception class"),
        ([(inprocserve.InvalidInputError, 422)], "must be a dict of exception class -> HTTP status"),
    ],
)
def test_error_statuses_that_are_no_error_status_are_refused_at_init_app(
    repository: Path, statuses: object, match: str
) -> None:
    # ("503" was answered without its Retry-After, 4220 as a status line no client reads, a class's name failed
    # in Flask's issubclass naming no setting)
    with pytest.raises(inprocserve.ConfigurationError, match=f"^INPROCSERVE_ERROR_STATUS {match}"):
        make_app(repository, INPROCSERVE_ERROR_STATUS=statuses)


def test_error_statuses_are_configurable_and_can_be_turned_off(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_ERROR_STATUS={inprocserve.InvalidInputError: 422})
    assert app.test_client().post("/score", json={"rows": [[1]]}).status_code == 422
    Inprocserve.close(app)
    plain = make_app(repository, INPROCSERVE_ERROR_HANDLERS=False)
    assert plain.test_client().post("/score", json={"rows": [[1]]}).status_code == 500
    Inprocserve.close(plain)


def test_a_spent_deadline_header_is_refused_before_anything_runs(app: Flask) -> None:
    client = app.test_client()
    response = client.post("/score", json={"rows": [[1, 1, 1, 1]]}, headers={"X-Request-Timeout-Ms": "0"})
    assert response.status_code == 504
    rows_run = client.get("/-/inprocserve/models").json["models"]["scale"]["versions"]["2"]["rows_run"]
    assert rows_run == 0
    ok = client.post("/score", json={"rows": [[1, 1, 1, 1]]}, headers={"X-Request-Timeout-Ms": "5000"})
    assert ok.status_code == 200


SPENT_BUDGET_METRICS = """
import json, sys
from flask import Flask, request
from inprocserve_flask import Inprocserve, predict
from opentelemetry import metrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

reader = InMemoryMetricReader()
metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
app = Flask("shop")
app.config.update(INPROCSERVE_REPOSITORY=sys.argv[1])
Inprocserve(app)

@app.post("/score")
def score():
    return {"version": predict("scale", {"x": request.json["rows"]}).version}

client = app.test_client()
answers = [
    client.post("/score", json={"rows": [[1, 2, 3, 4]]}, headers=headers).status_code
    for headers in ({}, {"X-Request-Timeout-Ms": "0"}, {"X-Request-Timeout-Ms": "0"})
]
points = {}
for resource in reader.get_metrics_data().resource_metrics:
    for scope in resource.scope_metrics:
        for metric in scope.metrics:
            for point in metric.data.data_points:
                outcome = str(point.attributes.get("inprocserve.outcome", ""))
                value = getattr(point, "count", None) or getattr(point, "value", 0)
                points.setdefault(metric.name, {})[outcome] = points.get(metric.name, {}).get(outcome, 0) + value
print(json.dumps({"answers": answers, "points": points}))
"""


def test_a_prediction_refused_for_a_spent_budget_is_in_the_metrics(repository: Path) -> None:
    """The plug-in's predict answers a spent budget with a 504 before the server runs anything; no metric
    recorded it, so the deadline counter and its alert never saw a view that spent its budget first."""
    done = subprocess.run(  # (a meter provider is set once per process)
        [sys.executable, "-c", SPENT_BUDGET_METRICS, str(repository)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answers"] == [200, 504, 504], done.stderr
    assert result["points"]["inprocserve.request.duration"] == {"ok": 1, "deadline_exceeded": 2}
    assert result["points"]["inprocserve.requests.deadline_exceeded"] == {"": 2}


def test_renamed_headers_carry_the_user_and_the_budget(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_USER_HEADER="X-Customer", INPROCSERVE_DEADLINE_HEADER="X-Budget-Ms")
    row = {"rows": [[1, 1, 1, 1]]}
    try:
        with app.test_request_context("/score", headers={"X-Customer": " c-42 ", "X-User-Id": "someone-else"}):
            assert default_context() == {"user_id": "c-42"}
        with app.test_request_context("/score", headers={"X-User-Id": "someone-else"}):
            assert default_context() == {}  # not this app's header
        client = app.test_client()
        assert client.post("/score", json=row, headers={"X-Budget-Ms": "0"}).status_code == 504
        assert client.post("/score", json=row, headers={"X-Request-Timeout-Ms": "0"}).status_code == 200
        malformed = client.post("/score", json=row, headers={"X-Budget-Ms": "soon"})
        assert malformed.status_code == 400 and "X-Budget-Ms" in malformed.json["message"]
        assert client.post("/score", json=row, headers={"X-Customer": "\x01"}).status_code == 400
    finally:
        Inprocserve.close(app)


def test_the_tightest_budget_wins(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_TIMEOUT_S=60.0)
    row = {"rows": [[1, 1, 1, 1]]}
    try:
        client = app.test_client()
        assert client.post("/score", json=row).status_code == 200  # the default budget: a minute
        assert client.post("/score", json=row, headers={"X-Request-Timeout-Ms": "0"}).status_code == 504
        assert client.post("/slow-budget", headers={"X-Request-Timeout-Ms": "60000"}).status_code == 504
    finally:
        Inprocserve.close(app)
    tight = make_app(repository, INPROCSERVE_TIMEOUT_S=1e-9)
    try:  # a configured default tighter than the header: nothing can finish in a nanosecond
        response = tight.test_client().post("/score", json=row, headers={"X-Request-Timeout-Ms": "60000"})
        assert response.status_code == 504
    finally:
        Inprocserve.close(tight)


def test_predict_needs_no_request_when_context_and_budget_are_given(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_CONTEXT=lambda: {"user_id": "job-7"})
    try:
        with app.app_context():  # a CLI command or a job: no HTTP request to read the user or deadline from
            given = predict("scale", {"x": [[1, 1, 1, 1]]}, context={"user_id": "job"}, timeout_s=None)
            assert given.version == 2
            # the app's own context callable reads no request either: only the budget is given
            assert predict("scale", {"x": [[1, 1, 1, 1]]}, timeout_s=5.0).version == 2
            with pytest.raises(RuntimeError, match="request context"):
                predict("scale", {"x": [[1, 1, 1, 1]]})  # the budget needs the request's deadline header
    finally:
        Inprocserve.close(app)


def test_predict_outside_a_request_says_to_call_the_server_instead(repository: Path) -> None:
    """A job or a CLI command calling predict got Flask's "Working outside of request context", which says
    neither what predict wanted from the request nor what to call there."""
    app = make_app(repository)
    try:
        with app.app_context():
            with pytest.raises(OutsideRequestError) as caught:
                predict("scale", {"x": [[1, 1, 1, 1]]})
            message = str(caught.value)
            assert isinstance(caught.value, inprocserve.InprocserveError) and isinstance(caught.value, RuntimeError)
            assert "inprocserve_flask.server.predict('scale', inputs)" in message, message
            assert "pass context= and timeout_s= to predict" in message, message
            assert caught.value.model == "scale"
            with pytest.raises(OutsideRequestError, match="pass timeout_s= to predict"):
                predict("scale", {"x": [[1, 1, 1, 1]]}, context={"user_id": "job"})
            assert server.predict("scale", {"x": [[1, 1, 1, 1]]}).version == 2  # what it says to call
    finally:
        Inprocserve.close(app)


def test_an_error_the_apps_context_callable_raises_in_a_request_is_its_own(repository: Path) -> None:
    def broken() -> dict[str, str]:
        raise RuntimeError("the app's own mistake")

    app = make_app(repository, INPROCSERVE_CONTEXT=broken)
    try:
        with app.test_request_context("/score"):
            with pytest.raises(RuntimeError, match="the app's own mistake") as caught:
                predict("scale", {"x": [[1, 1, 1, 1]]})
            assert not isinstance(caught.value, OutsideRequestError)
    finally:
        Inprocserve.close(app)


def test_a_header_setting_of_none_turns_that_header_off(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_USER_HEADER=None, INPROCSERVE_DEADLINE_HEADER=None)
    try:
        with app.test_request_context("/score", headers={"X-User-Id": "someone"}):
            assert default_context() == {}
        spent = {"X-Request-Timeout-Ms": "0"}  # not read
        assert app.test_client().post("/score", json={"rows": [[1, 1, 1, 1]]}, headers=spent).status_code == 200
    finally:
        Inprocserve.close(app)
    with pytest.raises(inprocserve.ConfigurationError, match="header name or None"):
        make_app(repository, INPROCSERVE_USER_HEADER=42)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        # request.META's form, as Django's CSRF_HEADER_NAME takes it: a header named HTTP-X-User-Id was read
        (
            "INPROCSERVE_USER_HEADER",
            "HTTP_X_USER_ID",
            r"^INPROCSERVE_USER_HEADER is 'HTTP_X_USER_ID', the header's key in a WSGI environ .*\('X-User-Id'\?\)",
        ),
        ("INPROCSERVE_DEADLINE_HEADER", "http_x_request_timeout_ms", r"not its name \('X-Request-Timeout-Ms'\?\)"),
        ("INPROCSERVE_USER_HEADER", "X User Id", r"is 'X User Id', which no request header is named"),
        ("INPROCSERVE_DEADLINE_HEADER", "X-Request-Timeout-Ms:", r"which no request header is named"),
    ],
)
def test_a_header_setting_no_request_can_send_fails_at_init_app(
    repository: Path, key: str, value: str, message: str
) -> None:
    # init_app passed and the header was never read: no request had a user (assignments not sticky per user)
    with pytest.raises(inprocserve.ConfigurationError, match=message) as refused:
        make_app(repository, **{key: value})
    assert "name the request header as clients send it, such as 'X-User-Id'" in str(refused.value)


def test_a_header_setting_with_underscores_reads_the_header_as_werkzeug_does(repository: Path) -> None:
    # (a WSGI environ keeps X-User-Id and X_User_Id at one key, HTTP_X_USER_ID: werkzeug reads them alike)
    app = make_app(repository, INPROCSERVE_USER_HEADER="X_User_Id", INPROCSERVE_DEADLINE_HEADER="x_request_timeout_ms")
    try:
        with app.test_request_context("/score", headers={"X-User-Id": "alice"}):
            assert default_context() == {"user_id": "alice"} and request.headers["X_User_Id"] == "alice"
        spent = {"X-Request-Timeout-Ms": "0"}
        assert app.test_client().post("/score", json={"rows": [[1, 1, 1, 1]]}, headers=spent).status_code == 504
    finally:
        Inprocserve.close(app)


def test_the_deadline_header_counts_from_the_start_of_the_request_without_the_endpoints(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_ENDPOINTS=False)

    @app.post("/late")
    def late() -> Any:
        time.sleep(0.05)  # work before the prediction spends the caller's budget
        return {"y": predict("scale", {"x": [[1, 1, 1, 1]]})["y"].tolist()}

    try:
        client = app.test_client()
        assert client.post("/late", headers={"X-Request-Timeout-Ms": "20"}).status_code == 504
        assert client.post("/late", headers={"X-Request-Timeout-Ms": "60000"}).status_code == 200
    finally:
        Inprocserve.close(app)


def test_health_ready_and_models_endpoints(app: Flask) -> None:
    client = app.test_client()
    assert client.get("/-/inprocserve/health").json == {"status": "ok"}
    ready = client.get("/-/inprocserve/ready")
    assert ready.status_code == 200 and ready.json == {"ready": True, "models": ["scale"]}
    models = client.get("/-/inprocserve/models").json
    assert models["models"]["scale"]["default_version"] == 2


def test_ready_is_503_while_a_model_is_broken(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "broken" / "1").mkdir(parents=True)
    (folder / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    app = make_app(folder)
    response = app.test_client().get("/-/inprocserve/ready")
    assert response.status_code == 503
    assert "cannot load" in response.json["models"]["broken"]
    Inprocserve.close(app)


def test_admin_endpoints_are_off_by_default(app: Flask) -> None:
    client = app.test_client()
    assert client.post("/-/inprocserve/reload").status_code in (404, 405)
    assert client.post("/-/inprocserve/models/scale/switch", json={"version": 1}).status_code in (404, 405)


def test_admin_endpoints_require_the_token(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN="s3cret")
    client = app.test_client()
    try:
        assert client.post("/-/inprocserve/reload").status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert client.post("/-/inprocserve/models/scale/switch", json={"version": 1}, headers=wrong).status_code == 401
        for headers in [{}, wrong, {"Authorization": "s3cret"}]:  # (the token alone, without "Bearer ")
            refused = client.post("/-/inprocserve/models/scale/kill", headers=headers)
            assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer", headers
            # says what to send, and how, where the bare {"error": "unauthorized"} left it to be guessed
            assert refused.json == {"error": "unauthorized", "message": web.ADMIN_UNAUTHORIZED}
            assert (
                "INPROCSERVE_ADMIN_TOKEN" in refused.json["message"]
                and "Authorization: Bearer" in refused.json["message"]
            )
        good = {"Authorization": "Bearer s3cret"}
        reloaded = client.post("/-/inprocserve/reload", headers=good).json
        assert reloaded["problems"] == [] and reloaded["revision"] == 1 and reloaded["worker"] == os.getpid()
        switched = client.post("/-/inprocserve/models/scale/switch", json={"version": 1}, headers=good)
        assert switched.json == {"model": "scale", "stable": 1, "revision": 2, "worker": os.getpid()}
        assert client.post("/score", json={"rows": [[1, 1, 1, 1]]}).json["version"] == 1
        bad = client.post("/-/inprocserve/models/scale/switch", json={"version": "x"}, headers=good)
        assert bad.status_code == 400
    finally:
        Inprocserve.close(app)


def test_a_reload_over_the_admin_endpoint_quotes_the_scan_s_problems_relative_to_the_repository(
    repository: Path,
) -> None:
    """``POST /-/inprocserve/reload``'s 200 listed the scan's problems with the host's whole paths
    (``/srv/app/models/scale/notes: ...``), where a refusal quotes the repository's files relative to it."""
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN="s3cret")
    client = app.test_client()
    try:
        (repository / "scale" / "notes").mkdir()
        reloaded = client.post("/-/inprocserve/reload", headers={"Authorization": "Bearer s3cret"})
        assert reloaded.status_code == 200, reloaded.json
        problems = reloaded.json["problems"]
        assert problems and any(problem.startswith("scale/notes") for problem in problems), problems
        assert str(repository) not in reloaded.get_data(as_text=True), problems
    finally:
        Inprocserve.close(app)


def test_models_shows_paths_only_to_the_admin(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN="s3cret")
    client = app.test_client()
    try:
        public = client.get("/-/inprocserve/models")
        assert public.status_code == 200 and str(repository) not in public.get_data(as_text=True)
        assert public.json["worker"]["pid"] == os.getpid()
        wrong = client.get("/-/inprocserve/models", headers={"Authorization": "Bearer nope"})
        assert str(repository) not in wrong.get_data(as_text=True)
        admin = client.get("/-/inprocserve/models", headers={"Authorization": "Bearer s3cret"})
        assert str(repository) in admin.get_data(as_text=True)
    finally:
        Inprocserve.close(app)


def test_admin_rollout_endpoints(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN="s3cret")
    client = app.test_client()
    good = {"Authorization": "Bearer s3cret"}
    prefix = "/-/inprocserve/models/scale"

    def version() -> int:
        return int(client.post("/score", json={"rows": [[1, 1, 1, 1]]}).json["version"])

    try:
        assert client.post(f"{prefix}/kill").status_code == 401
        rollback = client.post(f"{prefix}/rollback", headers=good)
        # a well-formed request the model's state refuses (no switch to undo): a 409 saying what to do
        assert (rollback.status_code, rollback.json["error"]) == (409, "nothing_to_roll_back")
        assert "no previous stable version" in rollback.json["message"]
        assert "its stable version is 2); nothing was changed" in rollback.json["message"]
        assert client.post(f"{prefix}/switch", json={"version": 1}, headers=good).status_code == 200
        assert version() == 1
        assert client.post(f"{prefix}/canary", json={"version": 2, "percent": 100}, headers=good).json["revision"] == 2
        assert version() == 2
        assert client.post(f"{prefix}/kill", headers=good).json["kill"] is True
        assert version() == 1
        assert client.post(f"{prefix}/resume", headers=good).status_code == 200
        assert version() == 2
        assert client.post(f"{prefix}/canary", json={"version": None}, headers=good).status_code == 200
        assert client.post(f"{prefix}/switch", json={"version": 2}, headers=good).status_code == 200
        assert client.post(f"{prefix}/rollback", headers=good).json["stable"] == 1
        assert version() == 1
        missing = client.post(f"{prefix}/switch", json={"version": 9}, headers=good)
        assert (missing.status_code, missing.json["error"]) == (404, "model_not_found")
        assert "no version 9" in missing.json["message"]
        assert client.post("/-/inprocserve/models/nope/kill", headers=good).status_code == 404
        assert client.post(f"{prefix}/canary", json={"version": 2, "percent": 101}, headers=good).status_code == 400
        assert client.post(f"{prefix}/canary", json={"version": 2}, headers=good).status_code == 400
    finally:
        Inprocserve.close(app)


def test_the_admin_canary_endpoint_stops_and_hands_back_the_configured_canary(repository: Path) -> None:
    # config.toml's canary, as the Flask example ships one: {"version": null} stopped only a canary the control
    # file set, and version 2 kept answering its share.
    (repository / "scale" / "config.toml").write_text(
        '[rollout]\nstrategy = "canary"\nstable = 1\n\n[rollout.canary]\nversion = 2\npercent = 50\n'
    )
    app = make_app(repository, INPROCSERVE_ADMIN_TOKEN="s3cret")
    client = app.test_client()
    good = {"Authorization": "Bearer s3cret"}
    prefix = "/-/inprocserve/models/scale"

    def answering() -> set[int]:
        with app.app_context():
            rows = np.ones((1, 4), np.float32)
            return {server.predict("scale", rows, context={"user_id": f"u{n}"}).version for n in range(100)}

    try:
        assert answering() == {1, 2}
        stopped = client.post(f"{prefix}/canary", json={"version": None}, headers=good)
        assert (stopped.status_code, stopped.json["canary_off"]) == (200, True)
        assert stopped.json["canary_off_version"] == 2  # (what the stop recorded: the configured canary's)
        assert answering() == {1}
        refused = client.post(f"{prefix}/canary", json={"version": "config", "percent": 10}, headers=good)
        assert refused.status_code == 400 and "takes no percent" in refused.json["message"]
        back = client.post(f"{prefix}/canary", json={"version": "config"}, headers=good)
        assert (back.status_code, back.json["canary_off"], back.json["canary_off_version"]) == (200, False, None)
        assert answering() == {1, 2}
    finally:
        Inprocserve.close(app)


def test_eager_mode_checks_at_start_up_and_builds_only_when_warmed(repository: Path) -> None:
    app = make_app(repository, INPROCSERVE_EAGER=True)
    state = app.extensions["inprocserve"]
    assert not state.started  # this process may be a pre-forking master: no onnxruntime state here
    Inprocserve.warm(app)  # what each forked worker does right after the fork
    assert state.started
    assert app.test_client().get("/-/inprocserve/ready").status_code == 200
    Inprocserve.close(app)


def test_eager_mode_fails_the_start_up_on_a_broken_model(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "broken" / "1").mkdir(parents=True)
    (folder / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with pytest.raises(inprocserve.ModelLoadError, match=r"broken.*not a readable ONNX model"):
        make_app(folder, INPROCSERVE_EAGER=True)


def test_eager_mode_says_at_start_up_what_the_workers_will_serve_around(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # The control file serves a version that is not there (meant 2): each worker serves another one and says
    # so in its own log, long after start-up; the check before the fork found it and kept it to itself.
    (repository / ".inprocserve-control.json").write_text('{"revision": 3, "models": {"scale": {"stable": 7}}}')
    with caplog.at_level(logging.WARNING, logger="inprocserve_flask"):
        make_app(repository, INPROCSERVE_EAGER=True)
    said = [r.getMessage() for r in caplog.records if r.name == "inprocserve_flask"]
    assert any("before the workers start" in m and "serves version(s) 7, not in the repository" in m for m in said)


def test_eager_mode_checks_a_linked_release_the_workers_would_serve(tmp_path: Path) -> None:
    # docs/repository.md's deployment: a release folder linked in as the next version, served with
    # INPROCSERVE_FOLLOW_SYMLINKS. The check skipped the link (it scanned without following links), passed,
    # and every worker then failed to load the version it was deployed to serve.
    folder = tmp_path / "models"
    save_model(build_scale_model(1.0), folder, "scale", 1)
    release = tmp_path / "releases" / "scale" / "2"
    release.mkdir(parents=True)
    (release / "model.onnx").write_bytes(b"a release cut short")
    (folder / "scale" / "2").symlink_to(release, target_is_directory=True)
    with pytest.raises(inprocserve.ModelLoadError, match=r"'scale' version 2: not a readable ONNX model"):
        make_app(folder, INPROCSERVE_EAGER=True, INPROCSERVE_FOLLOW_SYMLINKS=True)


def test_gunicorn_two_workers_preload_sixteen_clients(repository: Path) -> None:
    listener = listening_socket()  # handed to gunicorn: no other process can take its port first
    env = {**os.environ, "INPROCSERVE_TEST_REPOSITORY": str(repository), "PYTHONPATH": str(Path(__file__).parent)}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--preload",
        "--workers",
        "2",
        "--threads",
        "8",
        "--bind",
        f"fd://{listener.fileno()}",
        "--graceful-timeout",
        "5",
        "--log-level",
        "warning",
        "gunicorn_app:app",
    ]
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    with listener:
        process = subprocess.Popen(
            command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()]
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/inprocserve/ready", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:  # (refused, reset, or timed out: the socket listens before gunicorn has the app)
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise AssertionError("gunicorn did not become ready")
            time.sleep(0.1)
        pids: set[int] = set()
        errors: list[BaseException] = []
        lock = threading.Lock()

        def client(index: int) -> None:
            try:
                for round_ in range(25):
                    rows = np.full((1 + round_ % 3, 4), index * 100 + round_, np.float32)
                    body = json.dumps({"rows": rows.tolist()}).encode()
                    call = urllib.request.Request(
                        f"{base}/score", data=body, headers={"Content-Type": "application/json"}
                    )
                    with urllib.request.urlopen(call, timeout=30) as response:
                        answer = json.loads(response.read())
                    np.testing.assert_array_equal(answer["y"], rows * 2)  # every answer checked
                    with lock:
                        pids.add(answer["pid"])
            except BaseException as exc:
                with lock:
                    errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert errors == []
        assert len(pids) == 2, f"both workers should have served requests, saw {pids}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log = process.stdout.read().decode(errors="replace") if process.stdout is not None else ""
        if process.stdout is not None:
            process.stdout.close()
    # every worker shut down cleanly: none died by a signal (e.g. in onnxruntime's exit-time cleanup)
    assert "was sent" not in log, log


def test_the_flask_login_user_decides_the_canary(repository: Path) -> None:
    from flask_login import LoginManager, UserMixin, login_user

    class User(UserMixin):
        def __init__(self, user_id: str) -> None:
            self.id = user_id

    config = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        rollout=inprocserve.RolloutConfig(
            strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
        ),
    )
    app = make_app(repository, INPROCSERVE_MODEL_CONFIG=config, SECRET_KEY="tests")
    login = LoginManager(app)
    login.user_loader(User)

    @app.post("/login/<user_id>")
    def log_in(user_id: str) -> Any:
        login_user(User(user_id))
        return {}

    try:
        versions = set()
        for i in range(20):
            client = app.test_client()
            client.post(f"/login/member-{i}")
            answers = {
                client.post("/score", json={"rows": [[1, 1, 1, 1]]}, headers={"X-User-Id": "ignored"}).json["version"]
                for _ in range(3)
            }
            assert len(answers) == 1  # sticky per logged-in user, whatever the header says
            versions |= answers
        assert versions == {1, 2}
    finally:
        Inprocserve.close(app)


def test_async_views_that_gave_up_behind_a_full_batch_leave_no_thread_behind(tmp_path: Path) -> None:
    """Flask runs an async view on an event loop of its own, in a thread of its own (asgiref), and the
    error of an ``apredict`` that timed out carries that thread's frames: the queue kept such requests
    (and so their threads) when they gave up behind a full batch, until another batch was taken."""
    folder = tmp_path / "models"
    save_model(build_mlp_model((4, 1024, 1024, 1024, 4)), folder, "mlp", 1)
    batching = inprocserve.BatchingConfig(max_batch_size=8, max_request_rows=32768, max_delay_s=0.0)
    app = make_app(folder, INPROCSERVE_MODEL_CONFIG=inprocserve.ModelConfig(batching=batching))

    @app.post("/ascore")
    async def ascore() -> Any:
        rows = np.asarray(request.get_json()["rows"], dtype=np.float32)
        result = await server.apredict("mlp", {"x": rows}, timeout_s=0.05)
        return {"y": result["y"].tolist()}

    client = app.test_client()
    context = app.app_context()
    context.push()  # (the calls below reach the app's server through the ``server`` proxy)
    server.predict("mlp", np.ones((1, 4), np.float32))

    def queued() -> int:
        return int(server.status()["models"]["mlp"]["versions"]["1"]["queued_rows"])

    before = set(threading.enumerate())
    # (about 2 s here: the four views must each reach their 0.05 s timeout while it runs, and on a loaded
    # machine a blocker of 0.2 s left too little room for four GIL-bound views and their event loops)
    blocker = server.submit("mlp", np.ones((30000, 4), np.float32))
    deadline = time.monotonic() + 10
    while queued():  # bounded: until a worker runs the blocker
        assert time.monotonic() < deadline
        time.sleep(0.001)
    head = server.submit("mlp", np.ones((8, 4), np.float32))  # a full batch, queued behind the blocker

    statuses: list[int] = []

    def call(index: int) -> None:
        statuses.append(client.post("/ascore", json={"rows": [[index] * 4] * 8}).status_code)

    callers = [threading.Thread(target=call, args=(index,)) for index in range(4)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(timeout=30)
    assert statuses == [504] * 4
    assert not blocker.done(), "the blocking request finished before the views gave up"
    blocker.result(timeout=60)
    head.result(timeout=60)
    deadline = time.monotonic() + 10
    while True:  # bounded: until the views' threads are gone (asgiref's own cycle needs a collection)
        gc.collect()
        left = [thread for thread in set(threading.enumerate()) - before if not thread.name.startswith("inprocserve")]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    context.pop()
    assert left == []
