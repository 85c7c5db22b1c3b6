"""Library errors as HTTP answers (status, code, body, ``Retry-After``), and the headers of the plug-ins' JSON
answers."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from .._brief import brief
from .._errors import (
    ConfigurationError,
    ControlStateUnknownError,
    DeadlineExceededError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    NothingToRollBackError,
    OverloadedError,
    PromotionRefusedError,
    RemoteUnavailableError,
    ServerClosedError,
)

if TYPE_CHECKING:
    from .._server import Server

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


_JSON_TYPE = "application/json"
"""(The ``Content-Type`` the headers of :class:`ErrorAnswer` and ``AdminAnswer`` give their JSON body.)"""


@dataclass(frozen=True)
class ErrorAnswer:
    """An HTTP answer for a library error: ``status``, a JSON ``body`` and its ``headers``, ``Content-Type:
    application/json`` among them (a framework that sets no type of its own, WSGI or Starlette's ``Response``,
    sent the answer untyped, for a client or proxy to guess)."""

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
    headers = {"Content-Type": _JSON_TYPE}
    if status in (429, 503):
        headers["Retry-After"] = retry_after(retry_after_s)
    return ErrorAnswer(status, {"error": error_code(error), "message": str(error)}, headers)


def retry_after(seconds: float) -> str:
    """A ``Retry-After`` value: whole seconds, at least 1 (the header takes no fractions)."""
    return str(int(max(1, seconds)))


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


# -- answer headers --------------------------------------------------------------------------------------

ANSWER_HEADERS: Mapping[str, str] = MappingProxyType({"X-Content-Type-Options": "nosniff"})
"""The headers of every answer of the plug-ins' endpoints (``health``, ``ready``, ``models``, the admin actions,
and their errors: 401, 404, 405, ...; the ``/v2`` routes' JSON and binary tensors): a browser never reads one as
another type than the one it says (a message quoting what a client sent, read as HTML, would run as a page of the
app's origin). Each answer says its own type, so these name none: laid over a binary tensor or a page, a
``Content-Type`` here would mislabel it. The plug-ins' JSON answers say ``application/json`` (as
:class:`ErrorAnswer`'s and ``AdminAnswer``'s headers do, for a plug-in that frames them itself); lay these over
them where an answer has not set them (``setdefault``)."""

PRIVATE_ANSWER_HEADERS: Mapping[str, str] = MappingProxyType({**ANSWER_HEADERS, "Cache-Control": "no-store"})
"""The headers of the answers of ``models`` (with the admin token it names the repository's files, and whatever
the token it is one worker's state at one moment) and of the admin actions (what they did, their errors):
:data:`ANSWER_HEADERS`, and stored by no cache, as the status page's answers are."""
