"""The admin endpoints (reload, switch, rollback, canary, kill, resume): their JSON bodies checked, their
actions run, their answers and refusals."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import _unique_json as unique_json
from .._brief import brief
from .._control import validate_percent
from .._errors import (
    ConfigurationError,
    ModelLoadError,
    ModelNotFoundError,
    NothingToRollBackError,
    PromotionRefusedError,
    ServerClosedError,
)
from .._repository import MAX_VERSION_DIGITS
from .._snapshot import relative_to_repository
from .._unique_json import DuplicateKeyError
from ._answers import _CODES, _JSON_TYPE, _lookup, retry_after

if TYPE_CHECKING:
    from .._server import Server

logger = logging.getLogger(__package__)  # "inprocserve.web": records name the public module, as users configure it

# -- admin actions ---------------------------------------------------------------------------------------

ADMIN_ACTIONS = ("canary", "kill", "reload", "resume", "rollback", "switch")
"""The admin endpoints' actions; every one but ``reload`` names a model."""

_MAX_VERSION = 10**MAX_VERSION_DIGITS  # what a version folder may be named (a larger int: the client's mistake)

_ADMIN_STATUS: Mapping[type[Exception], int] = {
    ModelNotFoundError: 404,
    PromotionRefusedError: 409,  # e.g. an incompatible signature: send "force": true to switch anyway
    NothingToRollBackError: 409,  # a well-formed request the model's state refuses: switch first
    ModelLoadError: 422,  # the version exists but cannot be loaded: nothing was switched
    ServerClosedError: 503,
    ConfigurationError: 409,  # the control file is invalid or cannot be written: fix it, then retry
    ValueError: 400,
    TypeError: 400,
    OverflowError: 400,  # a number too large to convert (say a 400-digit percent): the client's mistake
}

_ADMIN_CODES: Mapping[type[Exception], str] = {
    **_CODES,
    # A body or field the client must fix: the code a prediction's bad input gets, not Python's class name.
    ValueError: "invalid_input",
    TypeError: "invalid_input",
    OverflowError: "invalid_input",
}
"""The ``error`` code of each admin error in :data:`_ADMIN_STATUS`: the codes of :func:`error_code`, so a
client reads one set of codes from every endpoint (the admin endpoints answered class names)."""


@dataclass(frozen=True)
class AdminAnswer:
    """An admin endpoint's answer: ``status``, JSON ``body`` and its ``headers`` (``Content-Type:
    application/json``, and ``Retry-After`` on a 503, as every other 503 of the plug-ins)."""

    status: int
    body: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)


def run_admin_action(server: Server, action: str, model: str | None, body: object, *, actor: str) -> dict[str, Any]:
    """Check an admin request's JSON body, run ``action`` on ``server`` and say what changed.

    Args:
        server: The process's server.
        action: One of :data:`ADMIN_ACTIONS`.
        model: The model the action concerns (from the URL); ignored by ``reload``.
        body: The request body: ``None`` or empty bytes for none, raw JSON bytes/str, or a parsed value.
        actor: Who asked, for the control file's audit trail.

    Returns:
        What changed, plus the control ``revision`` this worker now follows and its ``worker`` pid. A canary
        answer says ``canary_off`` (the canary stopped, a configured one too) and ``canary_off_version``: the
        configured canary's version a stop recorded, ``None`` where it recorded none (and for any other answer).

    Raises:
        ValueError: the body is not a JSON object, or a field is missing or of the wrong type or range
            (bools are not ints, versions are positive ints of at most 18 digits, percentages are finite numbers in
            0..100).
        Whatever the server call raises (:func:`admin_answer` maps them to statuses).
    """
    if action not in ADMIN_ACTIONS:
        raise ValueError(f"unknown admin action {action!r}; use one of {', '.join(ADMIN_ACTIONS)}")
    data = _json_object(body, _BODY_SHAPES.get(action, "{}, or no body"))
    if action == "reload":
        answer: dict[str, Any] = {"problems": server.reload(actor=actor)}
    elif not isinstance(model, str) or not model:
        raise ValueError(f"the {action} action needs a model name")
    elif action == "switch":
        version, force = _version(data.get("version")), data.get("force", False)
        if not isinstance(force, bool):
            raise ValueError('"force" must be true or false (true switches to an incompatible version)')
        server.switch(model, version, force=force, actor=actor)
        answer = {"model": model, "stable": version}
    elif action == "canary" and data.get("version") == "config":  # (the configured canary runs again)
        if "percent" in data:
            raise ValueError(
                f'{{"version": "config"}} hands the canary back to the configuration and takes no percent; send '
                f"{_BODY_SHAPES['canary']}"
            )
        server.resume_configured_canary(model, actor=actor)
        answer = {
            "model": model,
            "canary_version": None,
            "canary_percent": 0,
            "canary_off": False,
            "canary_off_version": None,
        }
    elif action == "canary":
        if "version" not in data or ("percent" not in data and data["version"] is not None):
            raise ValueError(f"send a JSON object {_BODY_SHAPES['canary']}")
        canary = None if data["version"] is None else _version(data["version"])
        percent = _percent(data.get("percent", 0))
        if canary is None and percent:  # (meant as "send 50 %", it removed the canary: the CLI refuses it too)
            raise ValueError(
                f'{{"version": null}} removes the canary and takes no percent (got {percent:g}); send '
                f"{_BODY_SHAPES['canary']}"
            )
        stopped = server.set_canary(model, canary, percent=percent, actor=actor)
        answer = {
            "model": model,
            "canary_version": canary,
            "canary_percent": 0 if canary is None else percent,
            "canary_off": canary is None,  # (a configured canary stopped too: see ModelControl.canary_off)
            "canary_off_version": stopped,  # (what this stop recorded, whatever another writer did since)
        }
    elif action == "rollback":
        answer = {"model": model, "stable": server.rollback(model, actor=actor)}
    elif action == "kill":
        server.kill(model, actor=actor)
        answer = {"model": model, "kill": True}
    else:  # resume
        server.resume(model, actor=actor)
        answer = {"model": model, "kill": False}
    revision = server.sync_control()
    return {**answer, "revision": revision, "worker": os.getpid()}


def admin_answer(
    server: Server, action: str, model: str | None, body: object, *, actor: str, retry_after_s: float = 1
) -> AdminAnswer:
    """:func:`run_admin_action` as an answer: 200, or the status and body of an error the operator can
    act on (400 bad body, 404 unknown model, 409 refused, nothing to roll back to or control file problem,
    422 version that cannot load, 503 closed). The body is ``{"error": <code>, "message": <what to fix>}``
    with the codes of :func:`error_code` (``invalid_input``, ``model_not_found``, ``incompatible`` plus the
    ``report``, ``nothing_to_roll_back``, ``configuration``, ``model_load_failed``, ``unavailable``), and a
    503 says ``Retry-After`` ``retry_after_s``. Other errors propagate (the framework's error handling answers
    them). A message, and each of a reload's ``problems``, quotes a file of the model repository relative to it
    (``fraud/3/model.onnx``); the log line of the refusal quotes the whole path."""
    try:
        done = run_admin_action(server, action, model, body, actor=actor)
        if "problems" in done:  # (reload: the scan's problems quote the repository's files, as a refusal's do)
            done["problems"] = [relative_to_repository(problem, server.repository) for problem in done["problems"]]
        return AdminAnswer(200, done, {"Content-Type": _JSON_TYPE})
    except Exception as exc:
        status: int | None = _lookup(exc, _ADMIN_STATUS)
        if status is None:
            raise
        code = _lookup(exc, _ADMIN_CODES)
        named = "" if model is None else f" of model {brief(model)}"
        logger.warning("admin action %s%s by %s refused (%d %s): %s", action, named, brief(actor), status, code, exc)
        answer: dict[str, Any] = {"error": code, "message": relative_to_repository(str(exc), server.repository)}
        if isinstance(exc, PromotionRefusedError):  # what differs, for the operator
            answer["report"] = exc.report
        headers = {"Content-Type": _JSON_TYPE}
        if status == 503:
            headers["Retry-After"] = retry_after(retry_after_s)
        return AdminAnswer(status, answer, headers)


_BODY_SHAPES = {
    "switch": '{"version": <positive int>} ("force": true switches to an incompatible version)',
    "canary": '{"version": <positive int>, "percent": <0..100>}, {"version": null} to stop the canary (a configured '
    'one too), or {"version": "config"} to hand it back to the configuration',
}


def _json_object(body: object, shape: str) -> dict[str, Any]:
    if body is None or body == b"" or body == "":
        return {}
    if isinstance(body, bytes | str):
        try:
            body = unique_json.loads(body)
        except DuplicateKeyError as exc:  # (json keeps the last; a proxy in front may have read the first)
            raise ValueError(f"the body is ambiguous JSON: {exc}") from None
        except ValueError as exc:  # UnicodeDecodeError is a ValueError, and so is an integer of too many digits
            if unique_json.too_many_digits(exc):  # (Python's advice in it is for the server's code)
                raise ValueError(
                    f"the body holds an integer of more than {sys.get_int_max_str_digits()} digits, which no field "
                    f"takes: send a JSON object {shape}"
                ) from None
            raise ValueError(f"the body is not JSON: send a JSON object {shape}") from None
        except RecursionError:  # deep nesting recurses
            raise ValueError(f"the body is not JSON: send a JSON object {shape}") from None
    if not isinstance(body, dict):
        raise ValueError(f"the body is JSON {type(body).__name__}: send a JSON object {shape}")
    return body


def _percent(percent: object) -> float:
    if type(percent) is int and not -(2**1023) < percent < 2**1023:  # (hundreds of digits: no percentage either)
        raise ValueError(f'"percent" must be a number in 0..100, got {percent!r:.40}')
    return validate_percent(percent)


def _version(version: object) -> int:
    # bool is an int to Python, and a huge int is no version: both are the client's mistake
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < _MAX_VERSION:
        raise ValueError(
            f'"version" must be a positive int of at most {MAX_VERSION_DIGITS} digits, got {version!r:.40}'
        )
    return version


ADMIN_UNAUTHORIZED = (
    "the admin endpoints need the app's admin token (Flask: INPROCSERVE_ADMIN_TOKEN; Django: "
    'INPROCSERVE["ADMIN_TOKEN"]) as the header Authorization: Bearer <token>; this request sent none, or another'
)
"""What an admin request without the app's token is told, with a 401 and ``WWW-Authenticate: Bearer``: the
bare ``{"error": "unauthorized"}`` left a caller who sent a token to guess whether it was wrong or sent the
wrong way (another scheme, the token alone, a query string)."""


def admin_encoding_refused(content_encoding: str | None) -> AdminAnswer | None:
    """The 415 of an admin request whose body has this ``Content-Encoding`` header (its ``error`` is
    ``unsupported_encoding``, its ``Accept-Encoding: identity`` the coding taken, as RFC 7694 has it), or
    ``None`` for a body sent as it is (no header, ``identity``). An admin body is a few bytes of JSON: a gzip
    one was read as raw bytes and refused as "not JSON", sending its sender to look for a mistake in JSON
    that was right. Check it before reading the body."""
    encoding = (content_encoding or "").strip()
    if encoding.lower() in ("", "identity"):
        return None
    message = (
        f"the admin endpoints read their JSON body as it is sent, and this one has Content-Encoding "
        f"{brief(encoding)}: send it uncompressed, without a Content-Encoding header"
    )
    body = {"error": "unsupported_encoding", "message": message}
    return AdminAnswer(415, body, {"Content-Type": _JSON_TYPE, "Accept-Encoding": "identity"})
