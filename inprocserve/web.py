"""What every web integration needs around a :class:`~inprocserve.Server`, with no web framework in it.

The Flask and Django plug-ins are thin adapters over this module, and another integration can be too:
each turns the typed results below into its framework's responses.

* :func:`readiness` (also ``Server.readiness``): whether the server can answer, and why not, per model.
* :func:`http_status`, :func:`error_code`, :func:`error_answer`: a library error as an HTTP answer.
* :func:`run_admin_action`, :func:`admin_answer`: the admin endpoints (reload, switch, rollback, canary,
  kill, resume) with their JSON bodies checked, since they come from the network; :func:`admin_encoding_refused`:
  the 415 of a compressed admin body.
* :func:`budget_spent`: the error, recorded, for a prediction whose request spent its time budget first.
* :func:`status_page`: the status page as an HTTP answer (a 503 page where the server cannot be built);
  :func:`status_page_unauthorized`: its 401.
* :data:`ANSWER_HEADERS`, :data:`PRIVATE_ANSWER_HEADERS`: the headers of the endpoints' JSON answers.
* :func:`check_token`: a ``Bearer`` token (or HTTP Basic password) compared in constant time.
* :func:`environ_key`: where a request header is in a WSGI environ (and Django's ``request.META``);
  :func:`header_setting_problem`: a setting naming a header that no request can send.
* :func:`body_reader`: a request body's ``read`` whose failures (a client gone mid-upload, broken chunked
  framing) are a 400 rather than a 500; :func:`body_end_unknown`: a chunked body the WSGI server cannot end.
* :class:`ProcessLocalServer`: one lazily built server per process, rebuilt in a forked child.
* :data:`SHADOW_SETTINGS`, :func:`shadow_setting_problem`: the server's shadow arguments, their defaults
  and their checks, for settings read at start-up while the server is built later in each worker.
* :func:`model_configs_problem`: the same for its ``config=`` and ``models=``, :func:`flags_setting_problem`
  for its ``flags=``; :func:`bool_setting_problem` for an on/off setting.
* As the app loads: :func:`check_repository_at_start` (the eager start-up check, fit for a pre-fork master),
  :func:`refuse_at_start` and :func:`replacement_worker` (a worker replacing an earlier one starts past a
  repository caught mid-change), :func:`repository_layout` (models and skipped entries, no file read), and
  :func:`replace_link_advice` (a problem's advice about links given as the plug-in's setting).
* In messages: :func:`brief` (a value someone sent, cut short) and :func:`close_match` (the ``(stable?)`` of a
  typo).

A plug-in needs nothing else from the core: the Flask and Django plug-ins import only ``inprocserve``,
``inprocserve.web`` and ``inprocserve.v2`` (a test holds them to it), never a private ``inprocserve._...``
module, whose names may change in any release.

::

    from inprocserve import web

    holder = web.ProcessLocalServer(lambda: inprocserve.Server("models/"))
    state = holder.get().readiness()
    status, body = (200 if state.ready else 503), state.body()
"""

from __future__ import annotations

import base64
import hmac
import html
import logging
import math
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from . import _fork, _prefork
from . import _unique_json as unique_json
from ._brief import brief as _brief
from ._close_match import DEFAULT_CUTOFF
from ._close_match import close_match as _close_match
from ._config import ModelConfig, check_model_configs
from ._config_checks import MAX_INTERVAL_S, check_bool, check_int, is_number, shown
from ._control import validate_percent
from ._errors import (
    ConfigurationError,
    ControlStateUnknownError,
    DeadlineExceededError,
    InprocserveError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    NothingToRollBackError,
    OverloadedError,
    PromotionRefusedError,
    RemoteUnavailableError,
    ServerClosedError,
)
from ._flag_reader import MAX_FLAG_TIMEOUT_S
from ._flags import FlagProvider
from ._log_limit import LogLimit, since
from ._repository import MAX_VERSION_DIGITS, link_advice_as, scan_repository
from ._shadow import DEFAULT_MAX_QUEUED_BYTES
from ._snapshot import relative_to_repository
from ._unique_json import DuplicateKeyError

if TYPE_CHECKING:
    from ._server import Server

logger = logging.getLogger(__name__)

__all__ = [
    "ADMIN_ACTIONS",
    "ADMIN_UNAUTHORIZED",
    "ANSWER_HEADERS",
    "AdminAnswer",
    "ERROR_STATUS",
    "ErrorAnswer",
    "LENGTH_REQUIRED",
    "NO_SERVER",
    "PRIVATE_ANSWER_HEADERS",
    "ProcessLocalServer",
    "Readiness",
    "RepositoryLayout",
    "SECONDS_SETTINGS",
    "SHADOW_SETTINGS",
    "admin_answer",
    "admin_encoding_refused",
    "body_cut_short",
    "body_end_unknown",
    "body_reader",
    "bool_setting_problem",
    "brief",
    "budget_spent",
    "check_repository_at_start",
    "check_token",
    "close_match",
    "environ_key",
    "error_answer",
    "error_code",
    "flags_setting_problem",
    "header_setting_problem",
    "http_status",
    "model_configs_problem",
    "probe_readiness",
    "readiness",
    "refuse_at_start",
    "replace_link_advice",
    "replacement_worker",
    "repository_layout",
    "retry_after",
    "run_admin_action",
    "seconds_setting_problem",
    "server_or_none",
    "shadow_setting_problem",
    "status_page",
    "status_page_unauthorized",
    "token_problem",
]

# -- shadow settings --------------------------------------------------------------------------------------

SHADOW_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {"shadow_budget": 0.02, "shadow_queue": 256, "shadow_queue_bytes": DEFAULT_MAX_QUEUED_BYTES, "on_shadow": None}
)
"""The shadow arguments of :class:`~inprocserve.Server` and their defaults (docs/rollouts.md, "Shadow
traffic"), for an integration's settings."""


def shadow_setting_problem(argument: str, value: object) -> str | None:
    """What ``Server`` would refuse in ``value`` for its shadow argument ``argument`` (a key of
    :data:`SHADOW_SETTINGS`), as "must be ..., got ..."; ``None`` if it is fine. An integration that builds
    its server lazily in each worker calls this at start-up, so a bad setting fails there, once."""
    if argument == "on_shadow":
        return None if value is None or callable(value) else f"must be a callable or None, got {value!r}"
    if argument == "shadow_budget":  # (NaN fails the comparison too)
        return None if is_number(value) and 0 < value <= 1 else f"must be a share of time in (0, 1], got {value!r}"  # type: ignore[operator]
    check: dict[str, Callable[[], None]] = {
        "shadow_queue": lambda: check_int(argument, value, 1),
        "shadow_queue_bytes": lambda: check_int(argument, value, 1, None),
    }
    if argument not in check:
        raise ValueError(f"{argument!r} is not a shadow setting; one of {sorted(SHADOW_SETTINGS)}")
    try:
        check[argument]()
    except ConfigurationError as exc:
        return str(exc).removeprefix(f"{argument} ")
    return None


def model_configs_problem(config: object, models: object, *, names: tuple[str, str]) -> str | None:
    """What ``Server`` would refuse in ``config`` (a :class:`~inprocserve.ModelConfig` or ``None``) and
    ``models`` (a dict of model name -> ``ModelConfig``), with the settings called ``names``; ``None`` if
    they are fine. A ``config.toml``-shaped dict there let every worker start and serve nothing."""
    try:
        check_model_configs(config, models, names=names)
    except TypeError as exc:
        return str(exc)
    return None


def flags_setting_problem(value: object) -> str | None:
    """What ``Server`` would refuse in ``value`` for its ``flags=`` (``None`` or an
    :class:`~inprocserve.FlagProvider`), as "must be ..., got ..."; ``None`` if it is fine. A lazily built
    server refused it at each worker's first request, and then at every request (a 500 each time)."""
    if value is None or (isinstance(value, FlagProvider) and not isinstance(value, type)):
        return None
    if isinstance(value, type):
        return f"must be a flag provider, got the class {value.__name__}: pass {value.__name__}(...)"
    refusal = (
        "must be an inprocserve.FlagProvider (InMemoryFlags, EnvFlags, FileFlags, OpenFeatureFlags, ...) or None, "
        f"got {shown(value)}"
    )
    # A team's own provider that lacks one member was told only its repr: say which members and what they are
    # (not for a value that has none of them, a string say, where the list would be noise)
    missing = [member for member in _FLAG_PROVIDER_MEMBERS if not hasattr(value, member)]
    if len(missing) == len(_FLAG_PROVIDER_MEMBERS):
        return refusal
    meanings = "; ".join(f"{member}: {_FLAG_PROVIDER_MEMBERS[member]}" for member in missing)
    return f"{refusal}, which lacks {', '.join(missing)} ({meanings})"


_FLAG_PROVIDER_MEMBERS = {
    "name": "a str naming the provider in logs, status and metrics",
    "blocking": "a bool, True if an evaluation may wait on I/O (it is then run on a helper thread within "
    "flag_timeout_s), False for one that reads memory",
    "get_boolean": "a method (key, default, context) -> bool",
    "get_number": "a method (key, default, context) -> float",
    "get_string": "a method (key, default, context) -> str",
    "get_object": "a method (key, default, context) -> the flag's value",
}
"""What :class:`~inprocserve.FlagProvider` asks of a provider, and what each member is."""


def bool_setting_problem(value: object) -> str | None:
    """What is wrong with ``value`` for an on/off setting, as "must be ..., got ..."; ``None`` for a bool.
    A string is true whatever it says: ``os.environ.get("FOLLOW_SYMLINKS", "false")`` turned the
    integrity check's refusal of linked model folders off."""
    try:
        check_bool("", value)
    except ConfigurationError:
        return f"must be True or False, got {shown(value)}" + (
            " (a string is true whatever it says)" if isinstance(value, str) else ""
        )
    return None


# -- durations ---------------------------------------------------------------------------------------------

SECONDS_SETTINGS: Mapping[str, tuple[bool, bool, float | None]] = MappingProxyType(
    {
        "timeout_s": (True, False, math.inf),  # (infinity: no deadline, as predict(timeout_s=inf) takes it)
        "poll_interval_s": (True, False, MAX_INTERVAL_S),
        "control_interval_s": (True, False, MAX_INTERVAL_S),
        "flag_timeout_s": (False, False, MAX_FLAG_TIMEOUT_S),
        "retry_after_s": (False, True, None),
    }
)
"""An integration's settings in seconds: whether ``None`` is allowed, whether 0 is, and the largest value
(``None``: any finite one; ``timeout_s``: a view's default budget; ``retry_after_s``: what a 503 tells
clients; the others are :class:`~inprocserve.Server`'s arguments)."""


def seconds_setting_problem(setting: str, value: object) -> str | None:
    """What is wrong with ``value`` for the duration ``setting`` (a key of :data:`SECONDS_SETTINGS`), as
    "must be ..., got ..."; ``None`` if it is fine. Checked at start-up: a string or NaN there would fail
    every request (a 500), or the first request of every worker, which builds the server."""
    none_ok, zero_ok, highest = SECONDS_SETTINGS[setting]
    if value is None and none_ok:
        return None
    try:
        number = float(value) if is_number(value) else math.nan  # type: ignore[arg-type]
    except OverflowError:  # an int past any float
        number = math.inf
    if (number >= 0 if zero_ok else number > 0) and (number <= highest if highest is not None else number < math.inf):
        return None
    bounds = (">= 0" if zero_ok else "> 0") + (f" and <= {highest:g}" if highest not in (None, math.inf) else "")
    kind = "a finite number" if highest is None else "a number"
    return f"must be {kind} of seconds {bounds}{', or None' if none_ok else ''}, got {shown(value)}"


# -- readiness -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Readiness:
    """Whether a server can answer requests, from its ``status()``.

    Attributes:
        ready: Open, with at least one model, and every checked model servable.
        models: The models checked, sorted (the ``required`` ones, or every model found).
        reasons: Model name -> why it is not servable (empty when ready).
        closed: The server is closed.
        warming: The server is still being built in this process (eager warm-up after a fork).
        degraded: Model name -> why a version other than the default cannot take work now (a canary or
            shadow on a remote server that is down); such a model still counts as ready.
    """

    ready: bool
    models: tuple[str, ...] = ()
    reasons: Mapping[str, str] = field(default_factory=dict)
    closed: bool = False
    warming: bool = False
    degraded: Mapping[str, str] = field(default_factory=dict)
    unbuilt: bool = False

    @classmethod
    def warming_up(cls) -> Readiness:
        """Not ready: this process is building its server right now (do not wait for it in a probe)."""
        return cls(ready=False, warming=True)

    def body(self) -> dict[str, Any]:
        """The JSON body of a readiness probe (answer 200 when ``ready``, else 503)."""
        if self.warming:
            return {"ready": False, "warming": True, "worker": os.getpid()}
        if self.unbuilt:
            return {"ready": False, "error": NO_SERVER, "worker": os.getpid()}
        degraded = {"degraded": dict(self.degraded)} if self.degraded else {}
        if self.ready:
            return {"ready": True, "models": list(self.models), **degraded}
        return {"ready": False, "models": dict(self.reasons), "closed": self.closed, **degraded}


NO_SERVER = "the model server could not start in this worker (its log says why); retry later"
"""What a client is told when the app's server cannot be built in its process (its cause names files)."""

_UNBUILT = LogLimit()  # a probe every few seconds at a worker whose server cannot be built: a line a minute


def server_or_none(server: Callable[[], Server], asked: str) -> Server | None:
    """The app's server, built by ``server()`` if it is not yet (the plug-ins' lazy mode); ``None`` if it cannot
    be built in this process (its repository gone at a worker's first request, an invalid ``config.toml``),
    logged at most once a minute with the cause, which a client must not see: it names the server's files.
    ``asked``: what asked for it, for the log.

    Raises:
        ServerClosedError: the app closed its server for good (the plug-ins' ``Inprocserve.close(app)``,
            ``close_server()``): no failure to build, so neither :data:`NO_SERVER` nor an error logged; answer
            it as a 503 with its message (the probes and pages here do).
    """
    try:
        return server()
    except ServerClosedError:  # (it was answered "could not start", and logged at ERROR every minute)
        raise
    except Exception as exc:  # (a later call builds it again: the worker serves once the cause is gone)
        skipped = _UNBUILT.due()
        if skipped is not None:
            logger.error("%s: the model server cannot be built in this process: %s%s", asked, exc, since(skipped))
        return None


def budget_spent(server: Server, model: str, version: object = None) -> DeadlineExceededError:
    """The error for a prediction whose request spent its time budget before it (a view's own work, a deadline
    header already past), recorded as ``predict`` records the requests it refuses: the plug-ins refuse such a
    prediction themselves, and their 504s were in no metric (the deadline alert could not fire). Raise it."""
    error = DeadlineExceededError(
        f"model {brief(model)}: the request's time budget was spent before predict", model=model
    )
    pinned = version if isinstance(version, int) and not isinstance(version, bool) else None
    server._refused_early(model, pinned, error, time.perf_counter())
    return error


def status_page(
    server: Callable[[], Server], *, title: str | None = None, retry_after_s: float = 5
) -> tuple[int, str, dict[str, str]]:
    """The status page (see :func:`~inprocserve.render_status_page`, without file-system paths) as an HTTP
    status, HTML and headers, the app's server built by ``server()`` if it is not yet. A worker whose server
    cannot be built answers 503 with a page saying :data:`NO_SERVER`, where it answered a 500 and logged a
    traceback at each load; a 503 says ``Retry-After`` ``retry_after_s`` (the plug-ins pass their
    ``RETRY_AFTER_S``, as for every other 503). The caller checks the page's token first."""
    from ._status_page import PAGE_HEADERS, render_status_page  # (it imports this module)

    headers = dict(PAGE_HEADERS)
    try:
        built = server_or_none(server, "status page")
    except ServerClosedError as exc:
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>inprocserve status</title></head>'
            f"<body><p>{html.escape(str(exc))}</p></body></html>"
        )
        return 503, page, {**headers, "Retry-After": retry_after(retry_after_s)}
    if built is None:
        page = (
            '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>inprocserve status</title></head>'
            f"<body><p>{NO_SERVER}</p></body></html>"
        )
        return 503, page, {**headers, "Retry-After": retry_after(retry_after_s)}
    status = built.status(include_paths=False)
    page = render_status_page(status) if title is None else render_status_page(status, title=title)
    return 200, page, headers


_STATUS_PAGE_REALM = 'Basic realm="inprocserve status", charset="UTF-8"'
"""(The ``WWW-Authenticate`` challenge of :func:`status_page_unauthorized`: a browser asks for the token.)"""


def status_page_unauthorized() -> tuple[int, str, dict[str, str]]:
    """The status page's answer to a request without its token (:func:`check_token` with ``basic=True`` said
    no), as an HTTP status, plain text and headers: a 401 saying how to send the token (as ``Bearer``, or as
    the password of HTTP Basic credentials; never in the query string), with a ``WWW-Authenticate: Basic``
    challenge, so that a browser asks for it, and the page's own headers (stored by no cache, never
    sniffed, framed by no page), which :func:`status_page` gives its other answers."""
    from ._status_page import PAGE_HEADERS, TOKEN_NEEDED  # (it imports this module)

    return 401, TOKEN_NEEDED, {**PAGE_HEADERS, "WWW-Authenticate": _STATUS_PAGE_REALM}


def probe_readiness(server: Callable[[], Server], required: Sequence[str] | None = None) -> Readiness:
    """The readiness of the app's server (see :func:`readiness`), built by ``server()`` if it is not yet: one
    that cannot be built is not ready (:data:`NO_SERVER`, a 503 like any other), where the probe answered a
    500 and logged a traceback each time. One the app closed for good is not ready, and ``closed``."""
    try:
        built = server_or_none(server, "readiness probe")
    except ServerClosedError:
        return Readiness(ready=False, closed=True)
    return Readiness(ready=False, unbuilt=True) if built is None else readiness(built, required)


def readiness(server: Server, required: Sequence[str] | None = None) -> Readiness:
    """The readiness of ``server``: every model in ``required`` (default: every model found) servable.

    Reasons never quote file-system paths (they come from ``status(include_paths=False)``, cut to what
    readiness reads: probes call this often).
    """
    status = server._brief_status(required or None)
    found: Mapping[str, Any] = status["models"]
    names = sorted(required) if required else sorted(found)
    reasons = {}
    degraded = {}
    for name in names:
        model = found.get(name)
        if model is None:
            reasons[name] = "not in the repository"
        elif not model.get("ready"):
            reasons[name] = _first_error(model)
        elif model.get("unhealthy"):
            degraded[name] = "; ".join(f"version {v}: {why}" for v, why in sorted(model["unhealthy"].items()))
    unread = _control_unknown(status)
    if unread is not None:
        reasons = dict.fromkeys(names, unread)
    closed = bool(status["closed"])
    return Readiness(
        ready=not closed and bool(names) and not reasons,
        models=tuple(names),
        reasons=reasons,
        closed=closed,
        degraded=degraded,
    )


def _control_unknown(status: Mapping[str, Any]) -> str | None:
    """Why a server whose ``status()`` this is routes no request that does not pin a version
    (``ControlStateUnknownError``), or ``None`` when it routes them.

    A worker that follows no revision of its control file could undo the fleet's switches and kill switches,
    so it refuses them while its watcher has not read one. Without a watcher (``interval_s`` None) nothing
    would read the file again: it serves by every model's own config then, and is not refused."""
    control = status.get("control") or {}
    if control.get("read") is not False or control.get("interval_s") is None:
        return None
    return (
        "this worker follows no revision of the control file yet (it routes no request until it does: "
        f"every model's own config could undo the fleet's revision): {control.get('error') or 'being applied'}"
    )


def _first_error(model: Mapping[str, Any]) -> str:
    if model.get("config_error"):
        return str(model["config_error"])
    default = model.get("answering_version")  # the version that answers default traffic
    unhealthy = model.get("unhealthy") or {}
    if default is not None and str(default) in unhealthy:  # served, but its remote server is down
        return f"version {default}: {unhealthy[str(default)]}"
    for version in model.get("versions", {}).values():
        if version.get("error"):
            return str(version["error"])
    return "no servable version"


# -- library errors as HTTP ------------------------------------------------------------------------------

ERROR_STATUS: Mapping[type[Exception], int] = MappingProxyType(
    {
        InvalidInputError: 400,
        ModelNotFoundError: 404,
        OverloadedError: 503,
        ServerClosedError: 503,
        RemoteUnavailableError: 503,
        ControlStateUnknownError: 503,  # a worker started on a damaged control file: another worker can answer
        DeadlineExceededError: 504,
        # Raised by a view of the application's own that switches, promotes or rolls back: a well-formed call the
        # model's state refuses, answered as the admin endpoints answer it (a 500 read as a bug of the server).
        PromotionRefusedError: 409,
        NothingToRollBackError: 409,
    }
)
"""The HTTP status of each library error a prediction, or a view's own rollout call, raises (subclasses
included); others are a 500: a server's fault its operator must see (a model that cannot load, a control file
that cannot be written, a configuration error), which the framework logs."""

_CODES: Mapping[type[Exception], str] = {
    InvalidInputError: "invalid_input",
    ModelNotFoundError: "model_not_found",
    OverloadedError: "unavailable",
    ServerClosedError: "unavailable",
    RemoteUnavailableError: "unavailable",
    ControlStateUnknownError: "unavailable",
    DeadlineExceededError: "deadline_exceeded",
    PromotionRefusedError: "incompatible",
    NothingToRollBackError: "nothing_to_roll_back",
    ModelLoadError: "model_load_failed",
    ConfigurationError: "configuration",
}


def _lookup(error: BaseException, table: Mapping[type[Exception], Any]) -> Any:
    """The entry of the error's most specific class in ``table`` (method resolution order), or None."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return None


def http_status(error: BaseException, overrides: Mapping[type[Exception], int] | None = None) -> int | None:
    """The HTTP status of a library error (``ERROR_STATUS`` with ``overrides`` laid over it), or None
    when the error is not one a client caused or can retry (the framework answers 500)."""
    table = {**ERROR_STATUS, **overrides} if overrides else ERROR_STATUS
    status: int | None = _lookup(error, table)
    return status


def error_code(error: BaseException) -> str:
    """A stable, machine-readable code for an error (``invalid_input``, ``model_not_found``,
    ``unavailable``, ``deadline_exceeded``, ``incompatible``, ...); the class name for other errors."""
    code: str | None = _lookup(error, _CODES)
    return code if code is not None else type(error).__name__


@dataclass(frozen=True)
class ErrorAnswer:
    """An HTTP answer for a library error: ``status``, a JSON ``body`` and extra ``headers``."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


def error_answer(
    error: BaseException,
    *,
    overrides: Mapping[type[Exception], int] | None = None,
    retry_after_s: float = 1,
) -> ErrorAnswer | None:
    """The answer to a library error (``{"error": <code>, "message": ...}``, and ``Retry-After`` on a
    503, or on a 429 that ``overrides`` made of one: an overload answered "too many requests" still tells the
    client when to come back), or None for an error :func:`http_status` does not map."""
    status = http_status(error, overrides)
    if status is None:
        return None
    headers = {"Retry-After": retry_after(retry_after_s)} if status in (429, 503) else {}
    return ErrorAnswer(status, {"error": error_code(error), "message": str(error)}, headers)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1 (the header takes no fractions)."""
    return str(int(max(1, seconds)))


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
    """An admin endpoint's answer: ``status``, JSON ``body`` and ``headers`` (``Retry-After`` on a 503, as
    every other 503 of the plug-ins)."""

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
        return AdminAnswer(200, done)
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
        return AdminAnswer(status, answer, {"Retry-After": retry_after(retry_after_s)} if status == 503 else {})


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


# -- answer headers --------------------------------------------------------------------------------------

ANSWER_HEADERS: Mapping[str, str] = MappingProxyType({"X-Content-Type-Options": "nosniff"})
"""The headers of every JSON answer of the plug-ins' endpoints (``health``, ``ready``, ``models``, the admin
actions, and their errors: 401, 404, 405, ...): a browser never reads one as another type than JSON (a message
quoting what a client sent, read as HTML, would run as a page of the app's origin)."""

PRIVATE_ANSWER_HEADERS: Mapping[str, str] = MappingProxyType({**ANSWER_HEADERS, "Cache-Control": "no-store"})
"""The headers of the answers of ``models`` (with the admin token it names the repository's files, and whatever
the token it is one worker's state at one moment) and of the admin actions (what they did, their errors):
:data:`ANSWER_HEADERS`, and stored by no cache, as the status page's answers are."""


# -- tokens ----------------------------------------------------------------------------------------------


def check_token(authorization: str | None, token: str | None, *, basic: bool = False) -> bool:
    """Whether an ``Authorization`` header carries ``token``, compared in constant time.

    Accepts ``Bearer <token>``, and with ``basic=True`` also HTTP Basic credentials whose password is the
    token (any user name), for a person in a browser. Keep ``basic`` off for endpoints that change
    state: a browser resends Basic credentials on its own, which would let another site trigger them.
    Without a token (``None``, empty or blank) nothing is accepted. The configured token is stripped of
    surrounding whitespace, as the supplied one is (a token read from a file often ends in a newline).
    Configure ASCII tokens (:func:`token_problem`): HTTP headers carry no other text reliably.
    """
    if not isinstance(token, str) or not token.strip():
        return False
    # (surrogatepass: a lone surrogate, which no header carries but a caller's str may, raised UnicodeEncodeError)
    return hmac.compare_digest(
        _supplied_token(authorization or "", basic=basic), token.strip().encode(errors="surrogatepass")
    )


def token_problem(token: object) -> str | None:
    """What is wrong with a configured token (``None`` for a token that is fine, or for no token): not a
    string, blank, or not printable ASCII (a header cannot carry other text reliably, so it would never match).
    The plug-ins refuse such a token at start-up.

    A number says how it became one: Flask's ``app.config.from_prefixed_env`` reads each ``FLASK_*`` value as
    JSON where it can, so a token of digits in the environment arrives as an int (or a float), and the refusal
    "must be a string, got int" left its owner looking for the code that made it one."""
    if token is None or token == "":
        return None
    if isinstance(token, int | float) and not isinstance(token, bool):
        return (
            f"must be a string, got {type(token).__name__}: a value of digits read from the environment as JSON "
            "becomes a number (Flask's app.config.from_prefixed_env reads each FLASK_* variable so); keep it a "
            "string by quoting it as JSON in the environment ('\"1234...\"', the double quotes included), or by "
            "setting the key from os.environ directly, after from_prefixed_env"
        )
    if not isinstance(token, str):
        return f"must be a string, got {type(token).__name__}"
    stripped = token.strip()
    if not stripped:
        return "is blank"
    if not stripped.isascii() or not stripped.isprintable():
        return "must be printable ASCII (an HTTP header cannot carry other text reliably, so it would never match)"
    return None


def _supplied_token(authorization: str, *, basic: bool) -> bytes:
    """The token in a ``Bearer`` header, or the password of ``Basic`` credentials; empty if neither."""
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip().encode(errors="surrogatepass")
    if basic and scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode()
        except ValueError:  # binascii.Error, UnicodeDecodeError, and text that is not ASCII: no credentials
            # (a WSGI server hands a header's bytes on as Latin-1 text: "Basic \xff" failed in b64decode, a 500)
            return b""
        return decoded.partition(":")[2].encode()
    return b""


# -- request headers -------------------------------------------------------------------------------------


def environ_key(header: str | None) -> str | None:
    """Where a WSGI server (and Django, in ``request.META``) keeps request header ``header``: what werkzeug's
    and Django's ``request.headers`` read, without the mapping they build per request. ``None`` for no header
    (a header setting of ``None`` or ``""``: that header is not read).

    Raises:
        ConfigurationError: ``header`` is neither a header's name nor ``None`` (see
            :func:`header_setting_problem`).
    """
    problem = header_setting_problem(header)
    if problem is not None:
        raise ConfigurationError(f"a header setting {problem}")
    if header is None or header == "":
        return None
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
"""An HTTP field name (RFC 9110's token): no request header has any other name."""


def header_setting_problem(value: object) -> str | None:
    """What is wrong with a setting that names the request header to read (the user id, the deadline), as
    "must be ..." or "is ...: ..."; ``None`` for a header's name, or for ``None`` and ``""`` (not read).

    A name no request header has is never read, and says nothing: the user id setting written as the header's
    key in a WSGI environ (``"HTTP_X_USER_ID"``, the form Django's own ``CSRF_HEADER_NAME`` takes) left every
    request without a user, so canary and A/B assignment stopped being sticky per user. The plug-ins refuse
    such a setting at start-up (Flask's ``init_app``, Django's system check ``inprocserve.E009``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):  # (0, [] and the like too: only None and "" mean "not read")
        return f"must be a header name or None, got {shown(value)}"
    if value.upper().startswith("HTTP_"):
        header = value[len("HTTP_") :].replace("_", "-").title()
        return (
            f"is {shown(value)}, the header's key in a WSGI environ (Django's request.META), not its name "
            f"({shown(header)}?): it is never read"
        )
    if not _HEADER_NAME.fullmatch(value):
        return (
            f"is {shown(value)}, which no request header is named (letters, digits and !#$%&'*+-.^_`|~ only): "
            "it is never read"
        )
    return None


ADMIN_UNAUTHORIZED = (
    "the admin endpoints need the app's admin token (Flask: INPROCSERVE_ADMIN_TOKEN; Django: "
    'INPROCSERVE["ADMIN_TOKEN"]) as the header Authorization: Bearer <token>; this request sent none, or another'
)
"""What an admin request without the app's token is told, with a 401 and ``WWW-Authenticate: Bearer``: the
bare ``{"error": "unauthorized"}`` left a caller who sent a token to guess whether it was wrong or sent the
wrong way (another scheme, the token alone, a query string)."""

LENGTH_REQUIRED = (
    "send a Content-Length header: this WSGI server does not mark where a chunked request body ends "
    "(wsgi.input_terminated), so the body cannot be read; run it behind a proxy that buffers requests, or under a "
    "server that ends chunked input (gunicorn does)"
)
"""What a client is told (with a 411) when its body's end cannot be found: see :func:`body_end_unknown`."""


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
    return AdminAnswer(415, {"error": "unsupported_encoding", "message": message}, {"Accept-Encoding": "identity"})


def body_end_unknown(environ: Mapping[str, Any]) -> bool:
    """Whether a WSGI request carries a body whose end the application cannot find: sent without a
    ``Content-Length`` (chunked), to a server that does not end the input itself (``wsgi.input_terminated``;
    uWSGI does not, gunicorn and werkzeug do). werkzeug and Django read such a body as empty, so it was taken
    for none: an admin action's ``{"version": 2}`` refused as having no version, a protocol request as
    malformed JSON. Answer it 411 with :data:`LENGTH_REQUIRED`."""
    length = environ.get("CONTENT_LENGTH")
    return (
        not (length is not None and str(length).strip())
        and "HTTP_TRANSFER_ENCODING" in environ
        and not environ.get("wsgi.input_terminated")
    )


def body_cut_short(received: int, declared: int | None) -> InvalidInputError | None:
    """The error for a body that ended after ``received`` bytes, before the ``declared`` its
    ``Content-Length`` gave, or ``None`` if it did not. A WSGI server (gunicorn) ends the body early, without
    an error, when the client stops sending: the part read was refused as malformed JSON, blaming what was
    sent, or (a complete JSON object in the part) acted on as if whole."""
    if declared is None or received >= declared:
        return None
    return InvalidInputError(
        f"the request body ended after {received} bytes, before the {declared} its Content-Length declares: the "
        "client stopped sending mid-upload; send the whole body, with its length"
    )


def body_reader(
    read: Callable[[int], bytes], *, passing: tuple[type[BaseException], ...] = ()
) -> Callable[[int], bytes]:
    """``read`` (a request body stream's, such as ``request.stream.read``) raising
    :class:`~inprocserve.InvalidInputError` when the body cannot be read to its end: a client that went away
    mid-upload, or chunked framing that is no chunked framing. The WSGI server raises those from the
    application's ``read`` (gunicorn's ``NoMoreData``, ``InvalidChunkSize``; Django's ``UnreadablePostError``),
    so they were a 500 and an error logged with its traceback for what a client did.

    :class:`~inprocserve.InprocserveError` raised by ``read`` itself passes unchanged, and so do the errors in
    ``passing``: those the framework answers itself (werkzeug's ``HTTPException``, such as the 413 of a body
    over Flask's ``MAX_CONTENT_LENGTH``)."""

    passed: tuple[type[BaseException], ...] = (InprocserveError, *passing)

    def checked_read(size: int) -> bytes:
        try:
            return read(size)
        except passed:
            raise
        except Exception as exc:  # anything else the server's body stream raises: the request's body is broken
            raise InvalidInputError(
                f"the request body cannot be read to its end ({type(exc).__name__}: {str(exc)[:100]}): the client "
                "went away mid-upload, or its chunked transfer encoding is malformed; send the request again"
            ) from exc

    return checked_read


# -- one server per process ------------------------------------------------------------------------------


class ProcessLocalServer:
    """One server per process, built by ``factory`` on first use and built anew in a forked child.

    A server's threads and onnxruntime sessions do not survive ``fork()``, so a child never uses its
    parent's server (it is not closed there either: it belongs to the parent). That does not make a fork
    after the first :meth:`get` safe: once onnxruntime is imported in a process, every child it forks
    hangs or aborts (SIGABRT) when it exits, in onnxruntime's own exit-time clean-up, even if the parent's
    server was closed first (inprocserve logs an error at such a fork). So in a process that forks workers
    (a gunicorn ``--preload`` master) never call :meth:`get`: call it in the workers, lazily or through
    :func:`inprocserve.build_after_fork`. Thread-safe: concurrent first uses build once.

    Args:
        factory: Builds the server (called with this holder's lock held).
    """

    def __init__(self, factory: Callable[[], Server]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._pid: int | None = None
        _fork.register(self)

    def get(self) -> Server:
        """This process's server, built now if this is its first use here.

        Raises:
            Whatever ``factory`` raises (the next call tries again).
        """
        server, pid = self._server, self._pid
        if server is not None and pid == os.getpid():
            return server
        with self._lock:
            if self._server is None or self._pid != os.getpid():
                self._server = self._factory()
                self._pid = os.getpid()
            return self._server

    @property
    def started(self) -> bool:
        """Whether this process's server is built."""
        return self._server is not None and self._pid == os.getpid()

    @property
    def building(self) -> bool:
        """Whether a thread of this process is building the server right now (eager warm-up)."""
        return self._lock.locked() and not self.started

    def close(self) -> None:
        """Close this process's server; the next :meth:`get` builds a new one."""
        with self._lock:
            if self._server is not None and self._pid == os.getpid():
                self._server.close()
            self._server = None
            self._pid = None

    def _after_fork_in_child(self) -> None:
        # A lock held by a parent thread at fork time would stay held forever in the child.
        self._lock = threading.Lock()


# -- a plug-in's start-up and its messages -----------------------------------------------------------------
# What a plug-in (this repository's Flask and Django ones, a team's own for another framework or a task queue's
# workers) checks as its app loads, and how it quotes what it was given: the core's own checks and words, so
# that every plug-in refuses and says alike.


def brief(value: object) -> str:
    """``repr(value)`` cut short, for a message, a log line or an answer that quotes what a client or a setting
    gave: a string of more than 64 characters as its first ones and its length
    (``'nnnn...'...(10000000 characters)``), a container as its first 8 items. A client chooses its paths,
    methods and header values, and one quoted whole (megabytes) made an answer, a log line and a span as large.
    Never raises (a value whose ``repr`` raises is named by its type)."""
    return _brief(value)


def close_match(name: str, known: Iterable[str], *, cutoff: float = DEFAULT_CUTOFF) -> str | None:
    """The name among ``known`` closest to ``name``, or ``None`` if none is close enough: the ``(stable?)`` of a
    message about a typo in a setting's key or a model's name, judged as the core judges its own
    (``config.toml`` keys). ``cutoff`` (0..1, difflib's ratio) is how close: the default 0.6 also finds a name
    cut short or grown (``TIMEOUT_S`` for ``DEFAULT_TIMEOUT_S``); 0.8 a letter or two off. The work is bounded
    by the known names, whatever the length of ``name`` (which a client may choose)."""
    return _close_match(name, known, cutoff=cutoff)


def check_repository_at_start(
    repository: str | os.PathLike[str],
    *,
    config: ModelConfig | None = None,
    models: Mapping[str, ModelConfig] | None = None,
    follow_symlinks: bool = False,
) -> list[str]:
    """The start-up check of a plug-in that builds its server after the fork (the Flask and Django plug-ins'
    eager mode): :func:`inprocserve.check_repository` (no onnxruntime, so safe in a process that will fork),
    whose errors fail the app's load, except in a worker that replaces an earlier one
    (:func:`replacement_worker`), which logs them and starts: a worker whose app fails to load makes gunicorn
    stop the whole server, the workers that serve included. Pass the arguments the server will get.

    Returns:
        What the workers will serve around (a version a rollout names that is not there, stray files), to log
        once (with :func:`replace_link_advice` first); ``[]`` when a replacement worker started past a failed check.

    Raises:
        ConfigurationError, ModelLoadError: the repository is not a folder, a ``config.toml`` is invalid, a model
            file is not a readable ONNX model..., outside a replacement worker.
    """
    return _prefork.check_at_start(os.fspath(repository), config=config, models=models, follow_symlinks=follow_symlinks)


def refuse_at_start(error: ConfigurationError | ModelLoadError, *, repository: str | os.PathLike[str]) -> None:
    """Raise ``error``, something a plug-in found wrong with the model repository as its app loads (a
    repository that is not a folder: a release swapped in by two renames, a network mount briefly gone),
    unless this process is a worker that replaces an earlier one (:func:`replacement_worker`): there, log it
    once and return, so that the worker starts, serves what loads and builds its server again once the folder
    is back. For the repository's state only: a setting that is wrong is wrong in every worker, and raises.

    Raises:
        ConfigurationError, ModelLoadError: ``error``, outside a replacement worker.
    """
    _prefork.refuse_at_start(error, repository=repository)


def replacement_worker() -> str | None:
    """Whether this process loads its app as a worker that replaces an earlier one: a gunicorn worker
    started after the server's first ones (recycled by ``--max-requests``, replaced after a crash or a
    timeout, added by ``TTIN``, started by a ``HUP`` reload), a respawned uWSGI worker, or a uWSGI process
    after a graceful reload. A description of it (for a log line), or ``None`` (a first start, or no
    pre-fork server): where a first start refuses a broken repository, such a worker starts
    (:func:`refuse_at_start`)."""
    return _prefork.replacement_worker()


@dataclass(frozen=True)
class RepositoryLayout:
    """What :func:`repository_layout` found in a model repository.

    Attributes:
        models: The names of the model folders, sorted.
        problems: What a server skips, in words (stray files, badly named folders, symbolic links it refuses,
            unreadable folders), each quoting the path.
    """

    models: tuple[str, ...]
    problems: tuple[str, ...]


def repository_layout(repository: str | os.PathLike[str], *, follow_symlinks: bool = False) -> RepositoryLayout:
    """The models in ``repository`` and what a server would skip, found as a server finds them (its
    ``follow_symlinks`` too), by listing folders only: no model file is read, so it suits a settings check
    that runs often (Django's ``manage.py check``). :func:`inprocserve.check_repository` reads each model's
    signature as well.

    Raises:
        ConfigurationError: ``repository`` is not a folder, or cannot be read.
    """
    scan = scan_repository(Path(repository), follow_symlinks=follow_symlinks)
    return RepositoryLayout(models=tuple(sorted(scan.models)), problems=tuple(scan.problems))


def replace_link_advice(problem: str, advice: str) -> str:
    """``problem`` (one of :func:`check_repository_at_start`'s, :func:`repository_layout`'s or a version's load
    error) with its advice about symbolic links, which names the server's argument (``pass
    follow_symlinks=True to the Server``), given as ``advice`` instead: the plug-in's setting that passes it
    (``set INPROCSERVE_FOLLOW_SYMLINKS = True``), since its user builds no server. Other problems are returned
    as they are, and so is a path that holds the same words."""
    return link_advice_as(problem, advice)
