"""The Django app through real Django request cycles (test client), checks and management commands."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.core.checks import run_checks
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from inprocserve_django import get_server, reset_server

import inprocserve
from inprocserve import web
from inprocserve.testing import build_scale_model, save_model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), folder, "scale", version)
    return folder


@pytest.fixture
def served(repository: Path) -> Iterator[Path]:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        yield repository
    reset_server()


def post(client: Client, url: str, rows: Any, **headers: str) -> Any:
    return client.post(url, data=json.dumps({"rows": rows}), content_type="application/json", headers=headers)


def test_a_sync_view_predicts(served: Path) -> None:
    response = post(Client(), "/score", [[1, 2, 3, 4]])
    assert response.status_code == 200
    assert response.json() == {"y": [[2.0, 4.0, 6.0, 8.0]], "version": 2, "variant": "default"}


def test_a_client_s_bad_requests_and_the_503s_of_a_closed_server_log_no_line_each(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Django logs every 4xx as a warning and every 5xx as an error (mailed to ADMINS by default): a client
    # sending bad requests, or a server shedding load, made a line (or an e-mail) per request.
    infer = json.dumps({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3]}]})
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "V2_PROTOCOL": True}):
        client = Client()
        with caplog.at_level(logging.INFO):
            for _ in range(50):
                assert post(client, "/score", [[1, 2]]).status_code == 400
                assert client.get("/unknown").status_code == 404
                assert client.post("/v2/models/scale/infer", infer, content_type="application/json").status_code == 400
                assert client.post("/v2/models/nope/infer", "{", content_type="application/json").status_code == 404
                assert client.post("/v2/models/scale/infer", "{", content_type="application/json").status_code == 400
            get_server().close()
            for _ in range(50):
                assert post(client, "/score", [[1, 2, 3, 4]]).status_code == 503
                assert client.get("/-/inprocserve/ready").status_code == 503
        reset_server()
    assert [record.getMessage() for record in caplog.records if record.name == "django.request"] == []


def test_an_async_view_uses_apredict(served: Path) -> None:
    response = post(Client(), "/ascore", [[1, 1, 1, 1], [2, 2, 2, 2]])
    assert response.status_code == 200
    assert response.json()["y"] == [[2.0] * 4, [4.0] * 4]


def test_errors_become_http_responses(served: Path) -> None:
    client = Client()
    bad = post(client, "/score", [[1, 2]])
    assert bad.status_code == 400 and bad.json()["error"] == "invalid_input" and "input 'x'" in bad.json()["message"]
    assert client.get("/unknown").status_code == 404
    late = post(client, "/score", [[1, 1, 1, 1]], **{"X-Request-Timeout-Ms": "0"})
    assert late.status_code == 504


def canary(repository: Path) -> dict[str, Any]:
    config = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        rollout=inprocserve.RolloutConfig(
            strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
        ),
    )
    return {"REPOSITORY": str(repository), "CONFIG": config}


def middleware_first() -> list[str]:
    """The test project's MIDDLEWARE with the plug-in's before the session and authentication ones."""
    from django.conf import settings

    others = [m for m in settings.MIDDLEWARE if "Inprocserve" not in m]
    return ["inprocserve_django.middleware.InprocserveMiddleware", *others]


@pytest.mark.django_db
@pytest.mark.parametrize("url", ["/score", "/ascore"])
@pytest.mark.parametrize("order", ["after authentication", "first"])
def test_the_logged_in_user_decides_the_canary(repository: Path, url: str, order: str) -> None:
    # /ascore: an async view, where the user is loaded with request.auser() (a session read on the event
    # loop's thread would raise SynchronousOnlyOperation); the middleware's place does not matter
    from django.conf import settings

    middleware = middleware_first() if order == "first" else settings.MIDDLEWARE
    with override_settings(INPROCSERVE=canary(repository), MIDDLEWARE=middleware):
        try:
            versions = set()
            for i in range(20):
                user = User.objects.create_user(username=f"user{i}")
                client = Client()
                client.force_login(user)
                responses = [post(client, url, [[1, 1, 1, 1]]) for _ in range(3)]
                assert [r.status_code for r in responses] == [200, 200, 200], responses[0].content[:300]
                answers = {r.json()["version"] for r in responses}
                assert len(answers) == 1  # sticky per user
                versions |= answers
            assert versions == {1, 2}
        finally:
            reset_server()


def test_anonymous_requests_use_the_user_header(repository: Path) -> None:
    with override_settings(INPROCSERVE=canary(repository)):
        try:
            client = Client()
            for user in ("a", "b", "c", "d", "e"):
                answers = {
                    post(client, "/score", [[1, 1, 1, 1]], **{"X-User-Id": user}).json()["version"] for _ in range(3)
                }
                assert len(answers) == 1
        finally:
            reset_server()


def test_renamed_headers_carry_the_user_and_the_budget(repository: Path) -> None:
    renamed = {**canary(repository), "USER_HEADER": "X-Customer", "DEADLINE_HEADER": "X-Budget-Ms"}
    with override_settings(INPROCSERVE=renamed):
        try:
            client = Client()
            for user in ("a", "b", "c", "d", "e"):
                headers = [{"X-Customer": user, "X-User-Id": str(i)} for i in range(3)]
                answers = {post(client, "/score", [[1, 1, 1, 1]], **h).json()["version"] for h in headers}
                assert len(answers) == 1  # sticky per X-Customer, whatever X-User-Id says
            assert post(client, "/score", [[1, 1, 1, 1]], **{"X-Budget-Ms": "0"}).status_code == 504
            assert post(client, "/score", [[1, 1, 1, 1]], **{"X-Request-Timeout-Ms": "0"}).status_code == 200
            malformed = post(client, "/score", [[1, 1, 1, 1]], **{"X-Budget-Ms": "soon"})
            assert malformed.status_code == 400 and "X-Budget-Ms" in malformed.json()["message"]
            assert post(client, "/score", [[1, 1, 1, 1]], **{"X-Customer": "\x01"}).status_code == 400
        finally:
            reset_server()


@pytest.mark.parametrize(
    ("default_s", "header_ms", "status"),
    [(60.0, None, 200), (60.0, "0", 504), (1e-9, "60000", 504), (None, "60000", 200)],
)
def test_the_tighter_of_the_default_and_the_header_budget_wins(
    repository: Path, default_s: float | None, header_ms: str | None, status: int
) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "TIMEOUT_S": default_s}):
        try:
            headers = {} if header_ms is None else {"X-Request-Timeout-Ms": header_ms}
            assert post(Client(), "/score", [[1, 1, 1, 1]], **headers).status_code == status
        finally:
            reset_server()


def test_health_ready_and_models_urls(served: Path) -> None:
    client = Client()
    assert client.get("/-/inprocserve/health").json() == {"status": "ok"}
    assert client.get("/-/inprocserve/ready").json() == {"ready": True, "models": ["scale"]}
    assert client.get("/-/inprocserve/models").json()["models"]["scale"]["default_version"] == 2


def test_ready_is_503_for_a_broken_model(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "broken" / "1").mkdir(parents=True)
    (folder / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with override_settings(INPROCSERVE={"REPOSITORY": str(folder)}):
        try:
            response = Client().get("/-/inprocserve/ready")
            assert response.status_code == 503 and "cannot load" in response.json()["models"]["broken"]
        finally:
            reset_server()


def test_ready_is_503_without_the_cause_while_the_server_cannot_be_built(repository: Path) -> None:
    """The repository gone at a worker's first probe (a release swapping folders): the probe answered a 500 and
    logged a traceback every time. It is a 503 with Retry-After, naming no file; once back, the probe builds."""
    moved = repository.with_name("elsewhere")
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        reset_server()
        client = Client()  # a worker that started while the folder was there (its middleware checked it)
        assert client.get("/-/inprocserve/health").status_code == 200
        repository.rename(moved)
        try:
            for _ in range(2):
                response = client.get("/-/inprocserve/ready")
                assert response.status_code == 503 and response["Retry-After"] == "1", response.content
                assert response.json() == {"ready": False, "error": inprocserve.web.NO_SERVER, "worker": os.getpid()}
                response = client.get("/-/inprocserve/models")
                assert (response.status_code, response.json()) == (503, {"error": inprocserve.web.NO_SERVER})
            moved.rename(repository)
            assert client.get("/-/inprocserve/ready").json() == {"ready": True, "models": ["scale"]}
        finally:
            if moved.exists():
                moved.rename(repository)
            reset_server()


def test_changing_settings_rebuilds_the_server(repository: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    save_model(build_scale_model(5.0), other, "scale", 7)
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository)}):
        first = get_server()
        assert first.models == {"scale": [2]}
        with override_settings(INPROCSERVE={"REPOSITORY": str(other)}):
            assert get_server().models == {"scale": [7]}
        assert get_server() is not first  # closed and rebuilt on the way back too
    reset_server()


def check_ids(settings: dict[str, Any]) -> list[str]:
    with override_settings(INPROCSERVE=settings):
        return sorted(message.id for message in run_checks() if message.id and message.id.startswith("inprocserve"))


def test_system_checks(repository: Path, tmp_path: Path) -> None:
    assert check_ids({"REPOSITORY": str(repository)}) == []
    assert check_ids({"REPOSITORY": str(tmp_path / "missing")}) == ["inprocserve.E001"]
    assert check_ids({"REPOSITORY": str(repository), "MODELS": {"fraud": inprocserve.ModelConfig()}}) == [
        "inprocserve.E002"
    ]
    assert check_ids({"REPOSITORY": str(repository), "CONFIG": {"batching": {"max_batch_size": 0}}}) == [
        "inprocserve.E003"
    ]
    assert check_ids({"REPOSITORY": str(repository), "BATCH": 3}) == ["inprocserve.E004"]
    assert check_ids({}) == ["inprocserve.W001"]
    assert check_ids({"REPOSITORY": str(repository), "MODELS": []}) == ["inprocserve.E005"]
    assert check_ids({"REPOSITORY": str(repository), "MODELS": {"scale": {}}}) == ["inprocserve.E006"]


@pytest.mark.parametrize(
    "settings",
    [
        ["REPOSITORY", "models/"],
        {"TIMEOUT_S": "2"},
        {"TIMEOUT_S": float("nan")},
        {"TIMEOUT_S": 0},
        {"CONTROL_INTERVAL_S": 0},
        {"POLL_INTERVAL_S": "60"},
        {"FLAG_TIMEOUT_S": None},
        {"RETRY_AFTER_S": "1"},
        pytest.param({"POLL_INTERVAL_S": 10**5000}, id="an int with no repr"),
        {"REQUIRED_MODELS": None},
        {"REQUIRED_MODELS": "scale"},
        {"FOLLOW_SYMLINKS": "false"},  # os.environ.get(...): a string is true, and linked folders were served
        {"EAGER": "0"},
        {"V2_PROTOCOL": "False"},
        {"FLAGS": "env"},  # the server refused it at each worker's first request: every request a 500
    ],
    ids=repr,
)
def test_settings_of_the_wrong_type_or_range_are_check_error_e012(repository: Path, settings: Any) -> None:
    if isinstance(settings, dict):
        settings = {"REPOSITORY": str(repository), **settings}
    assert check_ids(settings) == ["inprocserve.E012"]


@pytest.mark.parametrize(
    ("setting", "got"), [([], "a list"), ((), "a tuple"), ("", "a str"), (None, "None"), (0, "an int")], ids=repr
)
def test_an_empty_inprocserve_setting_of_another_type_is_check_error_e012_not_w001(setting: Any, got: str) -> None:
    # INPROCSERVE = [] (or None, "") was taken for no setting at all: W001 "INPROCSERVE['REPOSITORY'] is not set",
    # which sent people to add a key to a list. The error names the type to write; {} stays the defaults (W001).
    with override_settings(INPROCSERVE=setting):
        messages = [message for message in run_checks() if message.id and message.id.startswith("inprocserve")]
    assert [message.id for message in messages] == ["inprocserve.E012"], messages
    expected = "INPROCSERVE must be a dict of settings, such as {'REPOSITORY': BASE_DIR / 'models'} ({} for the "
    assert messages[0].msg == f"{expected}defaults), not {got}", messages[0].msg
    assert check_ids({}) == ["inprocserve.W001"]


def test_a_flag_provider_class_is_check_error_e012_in_the_words_the_server_uses(repository: Path) -> None:
    # {"FLAGS": inprocserve.EnvFlags}: the class passed the protocol's check. The check and Server(flags=...)
    # name the same fix, in the same words.
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "FLAGS": inprocserve.EnvFlags}):
        (error,) = [message for message in run_checks() if message.id == "inprocserve.E012"]
    with pytest.raises(inprocserve.ConfigurationTypeError) as refused:
        inprocserve.Server(flags=inprocserve.EnvFlags)  # type: ignore[arg-type]
    fix = "got the class EnvFlags: pass EnvFlags(...)"
    assert fix in error.msg and fix in str(refused.value)


@pytest.mark.parametrize(
    "settings",
    [{"TIMEOUT_S": float("inf")}, {"FLAG_TIMEOUT_S": 60}, {"POLL_INTERVAL_S": 86_400}, {"RETRY_AFTER_S": 0}],
    ids=repr,
)
def test_durations_at_their_bounds_pass_the_checks(repository: Path, settings: dict[str, Any]) -> None:
    """An infinite TIMEOUT_S is no deadline, as predict(timeout_s=inf) takes it."""
    assert check_ids({"REPOSITORY": str(repository), **settings}) == []


@pytest.mark.parametrize(
    "settings", [{"FLAG_TIMEOUT_S": 120.0}, {"POLL_INTERVAL_S": 172_800}, {"CONTROL_INTERVAL_S": 1e6}], ids=repr
)
def test_durations_past_what_the_server_takes_are_check_error_e012(repository: Path, settings: dict[str, Any]) -> None:
    """The server is built at the first request: a value it refuses would make every request a 500."""
    assert check_ids({"REPOSITORY": str(repository), **settings}) == ["inprocserve.E012"]


def test_a_repository_setting_that_is_no_path_is_check_error_e001() -> None:
    assert check_ids({"REPOSITORY": 5}) == ["inprocserve.E001"]


def test_the_middleware_may_come_first_and_header_settings_are_checked(repository: Path) -> None:
    with override_settings(MIDDLEWARE=middleware_first()):
        assert check_ids({"REPOSITORY": str(repository)}) == []
    assert check_ids({"REPOSITORY": str(repository), "USER_HEADER": 42}) == ["inprocserve.E009"]
    assert check_ids({"REPOSITORY": str(repository), "DEADLINE_HEADER": ["X-Deadline"]}) == ["inprocserve.E009"]
    # request.META's key, as Django's own CSRF_HEADER_NAME takes it, and a name no header has: never read
    assert check_ids({"REPOSITORY": str(repository), "USER_HEADER": "HTTP_X_USER_ID"}) == ["inprocserve.E009"]
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "USER_HEADER": "HTTP_X_USER_ID"}):
        (error,) = [message for message in run_checks() if message.id == "inprocserve.E009"]
    assert "not its name ('X-User-Id'?)" in error.msg  # (the one rule of inprocserve.web, as Flask's init_app)
    assert check_ids({"REPOSITORY": str(repository), "DEADLINE_HEADER": "X Deadline"}) == ["inprocserve.E009"]
    assert check_ids({"REPOSITORY": str(repository), "USER_HEADER": "X_User_Id"}) == []
    # "": not read either, but warned of (what os.environ.get(name, "") gives for a variable that is not set)
    assert check_ids({"REPOSITORY": str(repository), "DEADLINE_HEADER": ""}) == ["inprocserve.W006"]
    assert check_ids({"REPOSITORY": str(repository), "USER_HEADER": None, "DEADLINE_HEADER": None}) == []


def test_a_header_setting_of_none_turns_that_header_off(repository: Path) -> None:
    off = {"REPOSITORY": str(repository), "USER_HEADER": None, "DEADLINE_HEADER": None}
    with override_settings(INPROCSERVE=off):
        try:
            client = Client()
            assert post(client, "/score", [[1, 1, 1, 1]], **{"X-User-Id": "\x01"}).status_code == 200  # not read
            assert post(client, "/ascore", [[1, 1, 1, 1]], **{"X-Request-Timeout-Ms": "0"}).status_code == 200
        finally:
            reset_server()


@pytest.mark.django_db
def test_the_user_is_loaded_only_when_a_prediction_needs_it(served: Path) -> None:
    client = Client()
    client.force_login(User.objects.create_user(username="lazy"))
    assert client.get("/user-loaded").json() == {"loaded": False}  # no predict: no session/user read
    assert post(client, "/score", [[1, 1, 1, 1]]).status_code == 200


def test_management_commands(served: Path) -> None:
    out = StringIO()
    call_command("inprocserve_status", stdout=out)
    assert json.loads(out.getvalue())["models"]["scale"]["ready"] is True
    out = StringIO()
    call_command("inprocserve_warmup", stdout=out)
    assert "ready   scale (versions 2)" in out.getvalue()


def test_warmup_command_fails_for_a_broken_model(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    (folder / "broken" / "1").mkdir(parents=True)
    (folder / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    with override_settings(INPROCSERVE={"REPOSITORY": str(folder)}):
        try:
            with pytest.raises(CommandError, match="broken"):
                call_command("inprocserve_warmup", stdout=StringIO())
        finally:
            reset_server()


def test_warmup_command_fails_for_a_version_that_does_not_load_beside_one_that_does(tmp_path: Path) -> None:
    # Version 1 answered, so the model was ready and the command said "1 model(s) warmed up", exit 0: a deploy
    # pipeline passed a new version cut short.
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    (folder / "scale" / "2").mkdir()
    (folder / "scale" / "2" / "model.onnx").write_bytes(b"a version cut short")
    out = StringIO()
    with override_settings(INPROCSERVE={"REPOSITORY": str(folder)}):
        try:
            with pytest.raises(CommandError, match="scale v2"):
                call_command("inprocserve_warmup", stdout=out)
        finally:
            reset_server()
    assert "ready   scale (versions 1)" in out.getvalue()
    assert "FAILED  scale v2: " in out.getvalue() and "not a valid ONNX model" in out.getvalue()


ADMIN = {"HTTP_AUTHORIZATION": "Bearer s3cret"}


def admin_post(client: Client, url: str, body: Any = None, **extra: Any) -> Any:
    return client.post(url, data=json.dumps(body or {}), content_type="application/json", **extra)


def test_admin_endpoints_are_off_without_a_token(served: Path) -> None:
    client = Client()
    assert admin_post(client, "/-/inprocserve/models/scale/switch", {"version": 1}, **ADMIN).status_code == 404
    assert admin_post(client, "/-/inprocserve/reload", **ADMIN).status_code == 404


def test_a_reload_over_the_admin_endpoint_quotes_the_scan_s_problems_relative_to_the_repository(
    repository: Path,
) -> None:
    """``POST /-/inprocserve/reload``'s 200 listed the scan's problems with the host's whole paths
    (``/srv/app/models/scale/notes: ...``), where a refusal quotes the repository's files relative to it."""
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "ADMIN_TOKEN": "s3cret"}):
        try:
            client = Client()
            assert post(client, "/score", [[1, 1, 1, 1]]).status_code == 200  # (the server is built)
            (repository / "scale" / "notes").mkdir()
            reloaded = admin_post(client, "/-/inprocserve/reload", **ADMIN)
            assert reloaded.status_code == 200, reloaded.content
            problems = reloaded.json()["problems"]
            assert problems and any(problem.startswith("scale/notes") for problem in problems), problems
            assert str(repository) not in reloaded.content.decode(), problems
        finally:
            reset_server()


def test_admin_endpoints_need_the_token_and_act_on_the_fleet(repository: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "ADMIN_TOKEN": "s3cret"}):
        try:
            client = Client()
            url = "/-/inprocserve/models/scale/switch"
            assert admin_post(client, url, {"version": 1}).status_code == 401
            wrong = {"HTTP_AUTHORIZATION": "Bearer s3cre"}
            assert admin_post(client, url, {"version": 1}, **wrong).status_code == 401
            for headers in [{}, wrong, {"HTTP_AUTHORIZATION": "s3cret"}]:  # (the token alone, without "Bearer ")
                refused = admin_post(client, "/-/inprocserve/models/scale/kill", **headers)
                assert refused.status_code == 401 and refused.headers["WWW-Authenticate"] == "Bearer", headers
                # says what to send, and how, where the bare {"error": "unauthorized"} left it to be guessed
                assert refused.json() == {"error": "unauthorized", "message": web.ADMIN_UNAUTHORIZED}
                assert 'INPROCSERVE["ADMIN_TOKEN"]' in refused.json()["message"]
            assert client.get(url, **ADMIN).status_code == 405  # POST only
            nothing = admin_post(client, "/-/inprocserve/models/scale/rollback", **ADMIN)  # no switch to undo
            assert (nothing.status_code, nothing.json()["error"]) == (409, "nothing_to_roll_back")
            assert (
                "its stable version is 2" in nothing.json()["message"] and "switch to it" in nothing.json()["message"]
            )
            switched = admin_post(client, url, {"version": 1}, **ADMIN)
            assert switched.status_code == 200
            assert switched.json()["stable"] == 1 and switched.json()["revision"] == 1
            assert post(client, "/score", [[1, 1, 1, 1]]).json()["version"] == 1
            # another server on the same repository (another worker) follows the control file
            other = inprocserve.Server(repository, control_interval_s=None)
            try:
                assert other.predict("scale", [[1, 1, 1, 1]]).version == 1
            finally:
                other.close()
            assert (
                admin_post(
                    client, "/-/inprocserve/models/scale/canary", {"version": 2, "percent": 100}, **ADMIN
                ).status_code
                == 200
            )
            assert post(client, "/score", [[1, 1, 1, 1]]).json()["version"] == 2
            assert admin_post(client, "/-/inprocserve/models/scale/kill", **ADMIN).json()["kill"] is True
            assert post(client, "/score", [[1, 1, 1, 1]]).json()["version"] == 1
            assert admin_post(client, "/-/inprocserve/models/scale/resume", **ADMIN).status_code == 200
            assert (
                admin_post(client, "/-/inprocserve/models/scale/canary", {"version": None}, **ADMIN).status_code == 200
            )
            assert admin_post(client, "/-/inprocserve/models/scale/switch", {"version": 2}, **ADMIN).status_code == 200
            assert admin_post(client, "/-/inprocserve/models/scale/rollback", **ADMIN).json()["stable"] == 1
            assert admin_post(client, "/-/inprocserve/reload", **ADMIN).json()["problems"] == []
            bad = admin_post(client, url, {"version": "x"}, **ADMIN)
            assert bad.status_code == 400 and "version" in bad.json()["message"]
            assert bad.json()["error"] == "invalid_input"  # the code a prediction's bad input gets
            missing = admin_post(client, url, {"version": 9}, **ADMIN)
            assert (missing.status_code, missing.json()["error"]) == (404, "model_not_found")
            assert admin_post(client, "/-/inprocserve/models/nope/kill", **ADMIN).status_code == 404
            percent = admin_post(client, "/-/inprocserve/models/scale/canary", {"version": 2, "percent": 400}, **ADMIN)
            assert percent.status_code == 400 and "percent" in percent.json()["message"]
        finally:
            reset_server()


def test_models_shows_paths_only_to_the_admin(repository: Path) -> None:
    with override_settings(INPROCSERVE={"REPOSITORY": str(repository), "ADMIN_TOKEN": "s3cret"}):
        try:
            client = Client()
            public = client.get("/-/inprocserve/models")
            assert public.status_code == 200 and str(repository) not in public.content.decode()
            assert public.json()["worker"]["pid"] > 0
            assert str(repository) in client.get("/-/inprocserve/models", **ADMIN).content.decode()
        finally:
            reset_server()


def test_a_prediction_refused_for_a_spent_budget_is_in_the_metrics(repository: Path) -> None:
    """A view that spent its budget (X-Request-Timeout-Ms: 0, or its own work) got a 504 from the plug-in's
    predict and apredict, which no metric recorded: the deadline counter and its alert never saw them."""
    import subprocess
    import sys

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(here / "spent_budget_metrics.py"), str(repository)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answers"] == [200, 504, 200, 504], done.stderr
    assert result["points"]["inprocserve.request.duration"] == {"ok": 2, "deadline_exceeded": 2}
    assert result["points"]["inprocserve.requests.deadline_exceeded"] == {"": 2}


def _eager_setup(repository: Path, *options: str) -> dict[str, Any]:
    import subprocess
    import sys

    here = Path(__file__).parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(here / "eager_check.py"), str(repository), *options],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "stderr": done.stderr}


def test_eager_mode_checks_in_ready_and_builds_only_in_the_worker(repository: Path, tmp_path: Path) -> None:
    report = _eager_setup(repository)
    assert report["before"] == {"onnxruntime": False, "onnx": True}  # checked with onnx, nothing built
    assert report["models"] == {"scale": [2]}
    broken = tmp_path / "broken"
    (broken / "m" / "1").mkdir(parents=True)
    (broken / "m" / "1" / "model.onnx").write_bytes(b"nope")
    assert "not a readable ONNX model" in _eager_setup(broken)["error"]


def test_eager_mode_says_at_start_up_what_the_workers_will_serve_around(repository: Path) -> None:
    # The control file serves a version that is not there (meant 2): each worker serves another one and says
    # so in its own log, long after start-up; the check before the fork found it and kept it to itself.
    (repository / ".inprocserve-control.json").write_text('{"revision": 3, "models": {"scale": {"stable": 7}}}')
    report = _eager_setup(repository)
    assert "repository check before the workers start" in report["stderr"]
    assert "serves version(s) 7, not in the repository" in report["stderr"]


def test_eager_mode_checks_a_linked_release_the_workers_would_serve(tmp_path: Path) -> None:
    # A release folder linked in as the next version, served with FOLLOW_SYMLINKS: the check skipped the
    # link, passed, and every worker then failed to load the version it was deployed to serve.
    folder = tmp_path / "models"
    save_model(build_scale_model(1.0), folder, "scale", 1)
    release = tmp_path / "releases" / "scale" / "2"
    release.mkdir(parents=True)
    (release / "model.onnx").write_bytes(b"a release cut short")
    (folder / "scale" / "2").symlink_to(release, target_is_directory=True)
    assert "'scale' version 2: not a readable ONNX model" in _eager_setup(folder, "follow")["error"]


def manage_py_check(tmp_path: Path, inprocserve_setting: object) -> subprocess.CompletedProcess[str]:
    """``manage.py check`` in a fresh process, with a settings module holding ``INPROCSERVE = inprocserve_setting``."""
    (tmp_path / "check_settings.py").write_text(
        f"SECRET_KEY = {'k' * 50!r}\nINSTALLED_APPS = ['inprocserve_django']\nINPROCSERVE = {inprocserve_setting!r}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", "check_settings"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_an_inprocserve_setting_that_is_no_dict_is_check_error_e012_in_manage_py_check(
    repository: Path, tmp_path: Path
) -> None:
    # ready() read the setting for EAGER and raised, so every manage.py command, `check` included, ended in a
    # traceback and the check that names the setting never ran.
    done = manage_py_check(tmp_path, ["REPOSITORY", str(repository)])
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert "(inprocserve.E012) INPROCSERVE must be a dict of settings" in done.stderr, done.stderr[-2000:]


def django_mds_logging_setting() -> str:
    """The ``LOGGING`` block of docs/django.md, "How it is wired", as a settings module holds it."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "django.md").read_text()
    block = text.split("  ```python\n  # settings.py\n  LOGGING = {", 1)[1].split("  ```", 1)[0]
    return textwrap.dedent("  LOGGING = {" + block)


def test_django_mds_logging_setting_shows_a_version_that_fails_to_load(tmp_path: Path) -> None:
    # A project as startproject makes it (no LOGGING) shows none of the library's records: under gunicorn a
    # version that failed to load left no line in the log, and the guide offered no LOGGING that would.
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    (folder / "scale" / "2").mkdir()
    (folder / "scale" / "2" / "model.onnx").write_bytes(b"a version cut short")
    settings = f"SECRET_KEY = {'k' * 50!r}\nINSTALLED_APPS = ['inprocserve_django']\n"
    settings += f"INPROCSERVE = {{'REPOSITORY': {str(folder)!r}}}\n"
    (tmp_path / "logging_settings.py").write_text(settings + django_mds_logging_setting())
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "django", "inprocserve_warmup", "--settings", "logging_settings"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert "FAILED  scale v2" in done.stdout, done.stderr[-2000:]
    assert "model 'scale' version 2 failed to load" in done.stderr, done.stderr[-2000:]


@pytest.mark.parametrize("eager", [True, "false"], ids=["EAGER True", "EAGER 'false' from the environment"])
def test_eager_settings_with_a_config_dict_are_named_by_their_check_not_a_traceback(
    repository: Path, tmp_path: Path, eager: object
) -> None:
    # A dict shaped like config.toml where a ModelConfig belongs (system check E003): with EAGER on, or a
    # string taken for on, ready()'s start-up check raised a TypeError naming the core's `config` argument at
    # every manage.py command, `manage.py check` included, which never got to list the problems.
    done = manage_py_check(
        tmp_path, {"REPOSITORY": str(repository), "EAGER": eager, "CONFIG": {"batching": {"max_batch_size": 8}}}
    )
    assert done.returncode == 1 and "TypeError" not in done.stderr, done.stderr[-2000:]
    assert "inprocserve.E003" in done.stderr  # the check's id and words: `manage.py check`'s, or the start-up's
    assert "INPROCSERVE['CONFIG'] must be an inprocserve.ModelConfig, got dict" in done.stderr
    if eager != True:  # noqa: E712 - the string is refused as itself (E012), never taken for on
        assert "inprocserve.E012" in done.stderr and "EAGER" in done.stderr


@pytest.mark.parametrize(
    ("setting", "said"),
    [
        ({"FOLLOW_SYMLINKS": "false"}, "inprocserve.E012: INPROCSERVE['FOLLOW_SYMLINKS'] must be True or False"),
        ({"REPOSITORY": 5}, "inprocserve.E001: INPROCSERVE['REPOSITORY'] (5) is not a directory"),
    ],
    ids=["FOLLOW_SYMLINKS 'false' from the environment", "REPOSITORY not a path"],
)
def test_eager_settings_the_start_up_check_is_given_are_named_by_their_check(
    repository: Path, tmp_path: Path, setting: dict[str, object], said: str
) -> None:
    # EAGER's check in ready() refused them in the core's words: "follow_symlinks must be true or false", or
    # "TypeError: expected str, bytes or os.PathLike object, not int", naming no setting.
    done = manage_py_check(tmp_path, {"REPOSITORY": str(repository), "EAGER": True, **setting})
    assert done.returncode == 1, done.stderr[-2000:]
    assert said in done.stderr, done.stderr[-2000:]
