"""inprocserve.web, the glue both plug-ins share: readiness, error statuses, admin actions, tokens and the
per-process server, on real servers over real models."""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
import inprocserve._errors
from inprocserve import web
from inprocserve._snapshot import relative_to_repository
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


@pytest.fixture
def two_versions(repository: Path) -> Path:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    return repository


# -- readiness -------------------------------------------------------------------------------------------


def test_a_server_with_servable_models_is_ready(scale_repository: Path, make_server: ServerFactory) -> None:
    state = make_server(scale_repository).readiness()
    assert state == web.Readiness(ready=True, models=("scale",), reasons={}, closed=False)
    assert state.body() == {"ready": True, "models": ["scale"]}


def test_a_required_model_that_is_missing_is_named(scale_repository: Path, make_server: ServerFactory) -> None:
    state = make_server(scale_repository).readiness(["scale", "fraud"])
    assert not state.ready and state.reasons == {"fraud": "not in the repository"}
    assert state.body() == {"ready": False, "models": {"fraud": "not in the repository"}, "closed": False}


def test_a_broken_model_is_not_ready_and_its_reason_quotes_no_path(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    broken = scale_repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not onnx")
    server = make_server(scale_repository)
    state = server.readiness()
    assert not state.ready and set(state.reasons) == {"broken"}
    assert state.reasons["broken"] and str(scale_repository) not in state.reasons["broken"]
    assert server.readiness(["scale"]).ready  # only the required models count


def test_a_model_with_a_bad_config_toml_is_not_ready_until_the_file_is_fixed(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # (the probe's reason is the file's error, which an operator fixes in the file; a path would tell a
    # client the server's layout: it is shown as <path>)
    save_model(build_scale_model(3.0), scale_repository, "fraud", 1)
    config = scale_repository / "fraud" / "config.toml"
    config.write_text("[batching]\nmax_batch_size = 1.5\n")
    server = make_server(scale_repository)
    state = server.readiness()
    assert not state.ready and set(state.reasons) == {"fraud"}
    assert "config.toml: batching.max_batch_size must be >= 1" in state.reasons["fraud"]
    assert str(scale_repository) not in str(state.body())
    config.write_text("[batching]\nmax_batch_size = 8\n")
    assert server.refresh() == []
    assert server.readiness().ready


def test_a_model_whose_version_policy_selects_none_of_its_versions_is_not_ready(
    scale_repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # (a typo, [12] for [1, 2]: the model served nothing, was missing from status, and /ready answered 200
    # while another model served; the reason now says which setting to fix)
    save_model(build_scale_model(3.0), scale_repository, "fraud", 1)
    (scale_repository / "fraud" / "config.toml").write_text("version_policy = { specific = [12] }\n")
    server = make_server(scale_repository)
    state = server.readiness()
    assert not state.ready and set(state.reasons) == {"fraud"}
    problem = "its version_policy selects none of the versions in the repository (1); the model serves nothing"
    assert state.reasons["fraud"] == f"{problem} (ModelNotFoundError)"  # (not "model 'fraud': " under its name)
    fraud = server.status()["models"]["fraud"]
    assert fraud["ready"] is False and fraud["config_error"] == state.reasons["fraud"]
    assert f"model 'fraud': {problem}" in caplog.text  # (the log names the model)
    with pytest.raises(inprocserve.ModelNotFoundError, match=r"its version_policy \(config.toml\) selects none"):
        server.predict("fraud", [[1, 2, 3, 4]])  # (said to the caller too: "unknown model" gave no cause)
    (scale_repository / "fraud" / "config.toml").write_text("version_policy = { specific = [1] }\n")
    assert server.refresh() == []
    assert server.readiness().ready and server.predict("fraud", [[1, 2, 3, 4]]).version == 1


def test_an_empty_repository_and_a_closed_server_are_not_ready(repository: Path, make_server: ServerFactory) -> None:
    empty = make_server(repository)
    assert empty.readiness() == web.Readiness(ready=False, models=(), reasons={}, closed=False)
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    server.close()
    state = server.readiness()
    assert not state.ready and state.closed and state.body()["closed"] is True


def test_warming_up_is_not_ready_and_names_the_worker() -> None:
    state = web.Readiness.warming_up()
    assert not state.ready and state.body() == {"ready": False, "warming": True, "worker": os.getpid()}


# -- errors as HTTP --------------------------------------------------------------------------------------

EXPECTED: dict[str, tuple[int | None, str]] = {
    "ConfigurationError": (None, "configuration"),
    "ConfigurationTypeError": (None, "configuration"),  # a setting the app's code got wrong: a 500
    "ContextRefusedError": (400, "invalid_input"),  # OpenFeatureFlags refused the request's context
    "ControlFileUnavailableError": (None, "configuration"),  # a file-system fault the operator must see: 500
    "ControlStateUnknownError": (503, "unavailable"),
    "DeadlineExceededError": (504, "deadline_exceeded"),
    "InferenceError": (None, "InferenceError"),
    "InprocserveError": (None, "InprocserveError"),
    "InputTooLargeError": (400, "invalid_input"),  # no host could run it: the client's to shrink
    "InvalidInputError": (400, "invalid_input"),
    "ModelLoadError": (None, "model_load_failed"),  # a broken model file: the operator's to fix, a 500
    "ModelNotFoundError": (404, "model_not_found"),
    "NothingToRollBackError": (409, "nothing_to_roll_back"),  # a view's own rollback() as the admin endpoint
    "OutOfMemoryError": (None, "OutOfMemoryError"),  # the host short of memory: a 500, no retry invited
    "OverloadedError": (503, "unavailable"),
    "PromotionRefusedError": (409, "incompatible"),  # a view's own switch() or promote(), as the admin's
    "QueueFullError": (503, "unavailable"),
    "RemoteUnavailableError": (503, "unavailable"),
    "RunTimeLimitError": (None, "RunTimeLimitError"),  # the server's bound on a run, not the caller's deadline
    "ServerClosedError": (503, "unavailable"),
}


def test_every_library_error_has_a_decided_status_and_code() -> None:
    assert set(EXPECTED) == set(inprocserve._errors.__all__)  # a new error class must be decided here


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_status_and_code_of_each_error(name: str) -> None:
    cls = getattr(inprocserve, name)
    error = cls.__new__(cls)
    inprocserve.InprocserveError.__init__(error, "what to fix", model="scale")
    status, code = EXPECTED[name]
    assert (web.http_status(error), web.error_code(error)) == (status, code)
    answer = web.error_answer(error, retry_after_s=2.7)
    if status is None:
        assert answer is None
    else:
        assert answer is not None and (answer.status, answer.body) == (
            status,
            {"error": code, "message": "what to fix"},
        )
        assert answer.headers == (
            {"Content-Type": "application/json", "Retry-After": "2"}
            if status == 503
            else {"Content-Type": "application/json"}
        )


def test_overrides_apply_to_subclasses_and_other_errors_are_not_mapped() -> None:
    overrides = {inprocserve.OverloadedError: 429, inprocserve.ModelLoadError: 502}
    assert web.http_status(inprocserve.QueueFullError("full"), overrides) == 429
    assert web.http_status(inprocserve.ModelLoadError("corrupt"), overrides) == 502
    assert web.http_status(inprocserve.ServerClosedError("closed"), overrides) == 503
    assert web.http_status(RuntimeError("a bug")) is None and web.error_answer(KeyError("x")) is None
    answer = web.error_answer(inprocserve.ServerClosedError("closed"), retry_after_s=0)
    assert answer is not None and answer.headers == {
        "Content-Type": "application/json",
        "Retry-After": "1",
    }  # never tells a client to retry at once


def test_an_overload_answered_429_by_an_override_still_says_when_to_retry() -> None:
    answer = web.error_answer(
        inprocserve.QueueFullError("full"), overrides={inprocserve.OverloadedError: 429}, retry_after_s=3
    )
    assert answer is not None and (answer.status, answer.headers) == (
        429,
        {"Content-Type": "application/json", "Retry-After": "3"},
    )
    answer = web.error_answer(inprocserve.ModelNotFoundError("x"), overrides={inprocserve.ModelNotFoundError: 410})
    assert answer is not None and answer.headers == {"Content-Type": "application/json"}


# -- admin actions ---------------------------------------------------------------------------------------

HOSTILE_SWITCH_BODIES: list[Any] = [
    b"[1, 2]",
    b"null",
    b'"version"',
    b"{",
    b"\xff\xfe",
    b"NaN",
    b"[" * 200_000,
    [1],
    {},
    {"version": True},
    {"version": 10**18},
    {"version": 10**400},
    {"version": 0},
    {"version": -1},
    {"version": 1.0},
    {"version": "2"},
    {"version": None},
    {"version": 2, "force": "yes"},
    {"version": 2, "force": 1},
]


@pytest.mark.parametrize("body", HOSTILE_SWITCH_BODIES, ids=lambda body: repr(body)[:40])
def test_a_hostile_switch_body_is_a_400_that_changes_nothing(
    two_versions: Path, make_server: ServerFactory, body: Any
) -> None:
    server = make_server(two_versions)
    with pytest.raises(ValueError, match=r"version|force|JSON") as caught:
        web.run_admin_action(server, "switch", "scale", body, actor="test")
    assert len(str(caught.value)) < 300  # says what to send without echoing a huge body
    answer = web.admin_answer(server, "switch", "scale", body, actor="test")
    assert answer.status == 400 and answer.body["error"] == "invalid_input"
    assert server.status()["models"]["scale"]["stable_version"] == 2


def test_a_date_stamped_version_the_repository_serves_can_be_switched_to(
    repository: Path, make_server: ServerFactory
) -> None:
    # a release numbered by its build time: served, and the admin endpoints refused it as "below 2**31"
    stamped = 20261206140000
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", stamped)
    server = make_server(repository)
    web.run_admin_action(server, "switch", "scale", {"version": 1}, actor="test")
    web.run_admin_action(server, "switch", "scale", {"version": stamped}, actor="test")
    assert server.status()["models"]["scale"]["stable_version"] == stamped
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == stamped


def test_a_body_that_names_a_key_twice_is_a_400_that_changes_nothing(
    two_versions: Path, make_server: ServerFactory
) -> None:
    """json keeps a repeated key's last value; a proxy in front that checked the first (a gateway allowing
    only version 2) would have passed a switch to version 1."""
    server = make_server(two_versions)
    answer = web.admin_answer(server, "switch", "scale", b'{"version": 2, "version": 1}', actor="test")
    assert answer.status == 400, answer.body
    assert "names the key 'version' twice; send each key once" in answer.body["message"], answer.body
    assert server.status()["models"]["scale"]["stable_version"] == 2


HOSTILE_CANARY_BODIES: list[Any] = [
    b'{"version": 1, "percent": NaN}',
    b'{"version": 1, "percent": Infinity}',
    {"version": 1, "percent": -1},
    {"version": 1, "percent": 100.5},
    {"version": 1, "percent": True},
    {"version": 1, "percent": "5"},
    {"version": 1},
    {"percent": 5},
    {"version": False, "percent": 5},
    {"version": 10**18, "percent": 5},
]


@pytest.mark.parametrize("body", HOSTILE_CANARY_BODIES, ids=repr)
def test_a_hostile_canary_body_is_a_400_that_changes_nothing(
    two_versions: Path, make_server: ServerFactory, body: Any
) -> None:
    server = make_server(two_versions)
    answer = web.admin_answer(server, "canary", "scale", body, actor="test")
    assert answer.status == 400, answer.body
    assert "percent" in answer.body["message"] or "version" in answer.body["message"]
    assert server.status()["models"]["scale"]["control"] is None


def test_admin_actions_change_the_fleet_and_say_what_changed(two_versions: Path, make_server: ServerFactory) -> None:
    server = make_server(two_versions)
    switched = web.run_admin_action(server, "switch", "scale", b'{"version": 1}', actor="alice")
    assert switched["model"] == "scale" and switched["stable"] == 1 and switched["worker"] == os.getpid()
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"][0, 0] == 2.0
    canary = web.run_admin_action(server, "canary", "scale", {"version": 2, "percent": 25}, actor="alice")
    assert (canary["canary_version"], canary["canary_percent"]) == (2, 25)
    assert canary["revision"] > switched["revision"]
    removed = web.run_admin_action(server, "canary", "scale", {"version": None}, actor="alice")
    assert removed["canary_version"] is None
    assert web.run_admin_action(server, "kill", "scale", None, actor="alice")["kill"] is True
    assert server.status()["models"]["scale"]["control"]["kill"] is True
    assert web.run_admin_action(server, "resume", "scale", b"", actor="alice")["kill"] is False
    assert web.run_admin_action(server, "switch", "scale", {"version": 2, "force": False}, actor="bob")["stable"] == 2
    assert web.run_admin_action(server, "rollback", "scale", None, actor="alice")["stable"] == 1
    assert web.run_admin_action(server, "reload", None, None, actor="alice")["problems"] == []


def test_admin_errors_map_to_what_the_operator_must_do(two_versions: Path, make_server: ServerFactory) -> None:
    """Each admin error answers its status and the snake_case ``error`` code that every other endpoint gives
    the same error (``web.error_code``), with a message that says what to fix. They answered class names
    (``"ModelNotFoundError"``, ``"ValueError"``): a second set of codes for a client to know."""
    broken = two_versions / "scale" / "3" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not onnx")
    every_version = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(two_versions, models={"scale": every_version})
    missing = web.admin_answer(server, "switch", "scale", {"version": 9}, actor="t")
    assert (missing.status, missing.body["error"]) == (404, web.error_code(inprocserve.ModelNotFoundError("x")))
    assert missing.body == {"error": "model_not_found", "message": "model 'scale' has no version 9 in the repository"}
    unloadable = web.admin_answer(server, "switch", "scale", {"version": 3}, actor="t")
    assert (unloadable.status, unloadable.body["error"]) == (422, "model_load_failed"), unloadable.body
    assert "not a valid ONNX model" in unloadable.body["message"]
    too_long = b'{"version": 1, "percent": ' + b"9" * 400 + b"}"  # (an OverflowError or a ValueError inside)
    for action, body in (("switch", b"[1]"), ("switch", {"version": 1, "force": "yes"}), ("canary", too_long)):
        refused = web.admin_answer(server, action, "scale", body, actor="t")
        assert (refused.status, refused.body["error"]) == (400, "invalid_input"), refused.body
    assert web.admin_answer(server, "kill", "fraud", None, actor="t").status == 404
    with pytest.raises(ValueError, match="unknown admin action 'delete'"):
        web.run_admin_action(server, "delete", "scale", None, actor="t")
    with pytest.raises(ValueError, match="needs a model name"):
        web.run_admin_action(server, "kill", None, None, actor="t")
    server.close()
    closed = web.admin_answer(server, "kill", "scale", None, actor="t")
    assert (closed.status, closed.body) == (503, {"error": "unavailable", "message": "the server is closed"})
    # (as every other 503: a client knows when to try again)
    assert closed.headers == {"Content-Type": "application/json", "Retry-After": "1"}


def test_every_admin_answer_says_it_is_json(two_versions: Path, make_server: ServerFactory) -> None:
    """Its headers are the whole answer's: a plug-in that frames it itself (WSGI, Starlette's ``Response``) sent
    the JSON untyped, for a client or a proxy to guess."""
    server = make_server(two_versions)
    answers = [
        web.admin_answer(server, "switch", "scale", b'{"version": 1}', actor="t"),
        web.admin_answer(server, "switch", "scale", b"[1]", actor="t"),
        web.admin_answer(server, "kill", "fraud", None, actor="t"),
        web.admin_encoding_refused("gzip"),
    ]
    server.close()
    answers.append(web.admin_answer(server, "kill", "scale", None, actor="t"))
    assert [answer.status for answer in answers if answer is not None] == [200, 400, 404, 415, 503]
    assert all(answer is not None and answer.headers["Content-Type"] == "application/json" for answer in answers)


@pytest.mark.parametrize("given", ["absolute", "relative", "through a symlink"])
def test_a_version_that_cannot_load_is_quoted_relative_to_the_repository_and_in_full_in_the_log(
    two_versions: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    given: str,
) -> None:
    """The 422 of a switch to a version that cannot load quoted the model file's full path
    (/srv/app/models/scale/3/model.onnx): the host's folders, to an HTTP client. It quotes the file within
    the repository now, however the server was given the repository; the log line quotes the whole path."""
    broken = two_versions / "scale" / "3" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not onnx")
    repository = two_versions
    if given == "relative":
        monkeypatch.chdir(two_versions.parent)
        repository = Path(two_versions.name)
    elif given == "through a symlink":
        repository = two_versions.parent / "linked"
        repository.symlink_to(two_versions)
    every_version = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository, models={"scale": every_version})
    caplog.clear()
    unloadable = web.admin_answer(server, "switch", "scale", {"version": 3}, actor="alice")
    assert (unloadable.status, unloadable.body["error"]) == (422, "model_load_failed"), unloadable.body
    message = unloadable.body["message"]
    assert message.startswith("model 'scale' version 3: cannot load scale/3/model.onnx: it is not a valid ONNX")
    (line,) = [record.getMessage() for record in caplog.records if "refused" in record.getMessage()]
    assert line.startswith("admin action switch of model 'scale' by 'alice' refused (422 model_load_failed): ")
    assert (
        f"cannot load {repository.absolute() / 'scale' / '3' / 'model.onnx'}: " in line
    )  # (a relative one: made whole)


def test_a_server_names_the_repository_it_reads_absolute_as_it_was_built(
    two_versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What admin_answer needs to quote a model file relative to the repository. It read it through a private
    method of Server (``_relative_to_repository``): the public module the Flask and Django plug-ins build on
    reached into Server's internals. A relative path given is the folder of the working directory of then."""
    monkeypatch.chdir(two_versions.parent)
    assert make_server(two_versions.name).repository == two_versions
    assert make_server(str(two_versions)).repository == two_versions
    assert make_server().repository is None  # (models loaded in code, by path, only)


# -- tokens ----------------------------------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("header", "bearer_only", "with_basic"),
    [
        ("Bearer s3cret", True, True),
        ("bearer  s3cret ", True, True),
        ("Bearer s3cre", False, False),
        ("Bearer s3cret2", False, False),
        ("s3cret", False, False),
        ("", False, False),
        (None, False, False),
        (_basic("anyone", "s3cret"), False, True),
        (_basic("s3cret", "wrong"), False, False),
        (_basic("", "s3cret:more"), False, False),
        ("Basic not-base64!", False, False),
        ("Basic " + base64.b64encode(b"\xff:\xfe").decode(), False, False),
    ],
)
def test_check_token(header: str | None, bearer_only: bool, with_basic: bool) -> None:
    assert web.check_token(header, "s3cret") is bearer_only
    assert web.check_token(header, "s3cret", basic=True) is with_basic


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_token_nothing_is_accepted(token: str | None) -> None:
    assert not web.check_token("Bearer ", token) and not web.check_token(_basic("a", ""), token, basic=True)


# -- one server per process ------------------------------------------------------------------------------


def test_the_server_is_built_once_under_concurrent_first_use(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    built: list[inprocserve.Server] = []
    started = threading.Barrier(8, timeout=10)

    def factory() -> inprocserve.Server:
        built.append(make_server(scale_repository))
        return built[-1]

    holder = web.ProcessLocalServer(factory)
    assert not holder.started and not holder.building
    seen: list[inprocserve.Server] = []

    def use() -> None:
        started.wait()
        seen.append(holder.get())

    threads = [threading.Thread(target=use) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(built) == 1 and seen == built * 8 and holder.started


def test_close_closes_the_server_and_the_next_use_builds_another(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    holder = web.ProcessLocalServer(lambda: make_server(scale_repository))
    first = holder.get()
    holder.close()
    assert first.status()["closed"] and not holder.started
    second = holder.get()
    assert second is not first and second.readiness().ready
    holder.close()
    holder.close()  # idempotent


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_builds_its_own_even_while_the_parent_was_building(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    parent = os.getpid()
    release = threading.Event()

    def factory() -> inprocserve.Server:
        if os.getpid() == parent:
            release.wait(timeout=30)  # the parent's build is in progress when the fork happens
        return make_server(scale_repository)

    holder = web.ProcessLocalServer(factory)
    builder = threading.Thread(target=holder.get)
    builder.start()
    try:
        for _ in range(1000):  # bounded: the builder holds the lock within moments
            if holder.building:
                break
            release.wait(timeout=0.01)
        assert holder.building
        pid = os.fork()
        if pid == 0:  # the child: report through the exit code, never return into pytest
            code = 1
            try:
                signal.alarm(30)  # a lock inherited held would hang here
                server = holder.get()
                ok = server.predict("scale", np.ones((1, 4), np.float32))["y"][0, 0] == 2.0
                code = 0 if ok and holder.get() is server else 2
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: {status}"
    finally:
        release.set()
        builder.join(timeout=30)
    assert holder.started and holder.get().readiness().ready


def test_environ_key_finds_a_header_where_wsgi_and_django_keep_it() -> None:
    from werkzeug.datastructures import EnvironHeaders

    environ = {"HTTP_X_USER_ID": "u-1", "CONTENT_TYPE": "application/json", "HTTP_X_REQUEST_TIMEOUT_MS": "250"}
    headers = EnvironHeaders(environ)  # what Flask's request.headers reads
    for name in ("X-User-Id", "x-user-id", "Content-Type", "X-Request-Timeout-Ms", "X-Missing"):
        key = web.environ_key(name)
        assert key is not None and environ.get(key) == headers.get(name), name
    assert web.environ_key(None) is None and web.environ_key("") is None  # that header is not read
    for wrong in (42, 0, []):  # only None and "" mean "not read"
        with pytest.raises(inprocserve.ConfigurationError, match="header name or None"):
            web.environ_key(wrong)  # type: ignore[arg-type]
    # a name no request header has would be read at a key no request fills: refused, naming the header meant
    with pytest.raises(inprocserve.ConfigurationError, match=r"'HTTP_X_USER_ID', the header's key .*\('X-User-Id'\?\)"):
        web.environ_key("HTTP_X_USER_ID")
    with pytest.raises(inprocserve.ConfigurationError, match="which no request header is named"):
        web.environ_key("X-User-Id ")
    assert web.environ_key("X_User_Id") == "HTTP_X_USER_ID"  # (where the server keeps X-User-Id too)


def test_a_body_that_cannot_be_read_is_invalid_input_naming_why() -> None:
    # what a WSGI server raises from a broken chunked body (gunicorn's NoMoreData is an OSError too)
    def broken(size: int) -> bytes:
        raise OSError("Invalid chunk header")

    with pytest.raises(inprocserve.InvalidInputError, match=r"cannot be read to its end \(OSError: Invalid chunk"):
        web.body_reader(broken)(1024)
    assert web.body_reader(io.BytesIO(b"body").read)(1024) == b"body"

    def refused(size: int) -> bytes:  # the integration's own refusal passes as it is
        raise inprocserve.InvalidInputError("Content-Length 'x' is not a number of bytes")

    with pytest.raises(inprocserve.InvalidInputError, match=r"^Content-Length 'x'"):
        web.body_reader(refused)(1024)


def test_a_body_reader_lets_the_framework_s_own_answers_pass() -> None:
    class TooLarge(Exception):  # as werkzeug's RequestEntityTooLarge, which Flask answers 413
        pass

    def over_the_limit(size: int) -> bytes:
        raise TooLarge("413 Request Entity Too Large")

    with pytest.raises(TooLarge):
        web.body_reader(over_the_limit, passing=(TooLarge,))(1024)
    with pytest.raises(inprocserve.InvalidInputError, match=r"\(TooLarge: 413"):
        web.body_reader(over_the_limit)(1024)


class _OwnFlags:
    """A team's own flag provider, written from the docs' four get_* methods."""

    def get_boolean(self, key: str, default: bool, context: Any) -> bool:
        return default

    def get_number(self, key: str, default: float, context: Any) -> float:
        return default

    def get_string(self, key: str, default: str, context: Any) -> str:
        return default

    def get_object(self, key: str, default: Any, context: Any) -> Any:
        return default


class _NamedFlags(_OwnFlags):
    name = "team-flags"


def test_a_flag_provider_missing_an_attribute_is_told_which_and_what_it_means(
    repository: Path, make_server: ServerFactory
) -> None:
    # The refusal said only "must be an inprocserve.FlagProvider (...), got <_NamedFlags object at 0x...>": a
    # provider that had every get_* method and a name was not told that 'blocking' was what it lacked.
    problem = web.flags_setting_problem(_NamedFlags())
    assert problem is not None and "lacks blocking" in problem and "name" not in problem.split("lacks")[1]
    assert "wait on I/O" in problem  # what the attribute means
    problem = web.flags_setting_problem(_OwnFlags())
    assert problem is not None and "lacks name, blocking" in problem and "logs" in problem
    with pytest.raises(inprocserve.ConfigurationError, match="lacks blocking"):
        make_server(repository, flags=_NamedFlags())


def test_an_admin_answer_about_a_repository_gone_quotes_no_host_path(
    two_versions: Path, make_server: ServerFactory
) -> None:
    """The repository folder removed under a running server: every admin action is refused (409), and the
    refusal quoted the repository's absolute path, the host's folder layout, to the HTTP client. It reads
    ``<repository>`` there now; files under the repository stay quoted relative to it."""
    server = make_server(str(two_versions))
    shutil.rmtree(two_versions)
    answer = web.admin_answer(server, "reload", None, {}, actor="alice")
    assert answer.status == 409, answer.body
    assert str(two_versions) not in answer.body["message"]
    assert "model repository '<repository>' is not a directory" in answer.body["message"]
    assert relative_to_repository(f"{two_versions}/m/3/model.onnx is torn", two_versions) == "m/3/model.onnx is torn"
    assert relative_to_repository("no models loaded from models", Path("models")) == "no models loaded from models"


def test_a_reload_answer_quotes_the_repository_s_files_relative_to_it(
    two_versions: Path, make_server: ServerFactory
) -> None:
    """A refusal's message quoted files relative to the repository, but a reload's 200 listed the scan's
    problems with the host's whole paths (``/srv/app/models/scale/notes: …``)."""
    server = make_server(str(two_versions))
    (two_versions / "scale" / "notes").mkdir()
    answer = web.admin_answer(server, "reload", None, {}, actor="alice")
    assert answer.status == 200, answer.body
    assert answer.body["problems"], answer.body
    assert all(str(two_versions) not in problem for problem in answer.body["problems"]), answer.body
    assert any(problem.startswith("scale/notes") for problem in answer.body["problems"]), answer.body


def test_the_repository_s_path_ending_a_sentence_is_hidden_too(tmp_path: Path) -> None:
    """A message that ends with the repository's absolute path and a full stop ("… not a directory:
    /srv/app/models.") kept the host path: the "." was taken for the start of a longer name. A sibling folder
    with an extension or a longer name is another path and stays as it is."""
    repository = tmp_path / "models"
    assert relative_to_repository(f"cannot read {repository}.", repository) == "cannot read <repository>."
    assert relative_to_repository(f"cannot read {repository}. Check it", repository) == (
        "cannot read <repository>. Check it"
    )
    assert relative_to_repository(f"see {repository}.old and {repository}..x", repository) == (
        f"see {repository}.old and {repository}..x"
    )
    assert relative_to_repository(f"see {repository}-old", repository) == f"see {repository}-old"


def test_the_repository_s_path_before_an_ellipsis_is_hidden_too(tmp_path: Path) -> None:
    """Dots after the repository's path that no name follows end a sentence or a cut, as a full stop does
    ("… /srv/app/models...", or a value cut after it, "...(300 characters)"): the host path was kept there.
    Dots that a name or a separator follows are another path (``models./x`` is a file in ``models.``)."""
    repository = tmp_path / "models"
    assert relative_to_repository(f"cannot read {repository}...", repository) == "cannot read <repository>..."
    assert relative_to_repository(f"path {repository}..", repository) == "path <repository>.."
    assert relative_to_repository(f"{repository}...(300 characters)", repository) == "<repository>...(300 characters)"
    assert relative_to_repository(f"see {repository}./x and {repository}...x", repository) == (
        f"see {repository}./x and {repository}...x"
    )
