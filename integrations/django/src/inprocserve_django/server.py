"""The project's :class:`inprocserve.Server`: built lazily, once per process (never in ``ready()``, which
runs for every ``manage.py`` command and twice under the autoreloader)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from functools import lru_cache
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest
from django.utils.module_loading import import_string

import inprocserve
from inprocserve import web

from .conf import settings

logger = logging.getLogger(__name__)


def _build() -> inprocserve.Server:
    config = settings()
    on_shadow = config["ON_SHADOW"]
    if isinstance(on_shadow, str):  # a dotted path, as settings often hold (system check E011 tries it first)
        try:
            on_shadow = import_string(on_shadow)
        except Exception as exc:  # (WSGI and ASGI servers run no system checks: say which setting it is)
            raise inprocserve.ConfigurationError(
                f"INPROCSERVE['ON_SHADOW'] is {on_shadow!r}, which does not import: {type(exc).__name__}: {exc}"
            ) from exc
    repository = config["REPOSITORY"]
    if repository is not None:  # (a relative one is the folder of the working directory of now, as Flask's is of
        repository = os.path.abspath(repository)  # init_app: a later chdir, a test's or a job's, served nothing)
    return inprocserve.Server(
        repository,
        config=config["CONFIG"],
        models=config["MODELS"],
        flags=config["FLAGS"],
        flag_timeout_s=config["FLAG_TIMEOUT_S"],
        poll_interval_s=config["POLL_INTERVAL_S"],
        control_interval_s=config["CONTROL_INTERVAL_S"],
        follow_symlinks=config["FOLLOW_SYMLINKS"],
        shadow_budget=config["SHADOW_BUDGET"],
        shadow_queue=config["SHADOW_QUEUE"],
        shadow_queue_bytes=config["SHADOW_QUEUE_BYTES"],
        on_shadow=on_shadow,
    )


_holder = web.ProcessLocalServer(_build)


class _Closing:
    """Whether :func:`close_server` closed this process's server for good (until :func:`reset_server`)."""

    closed = False
    logged = False  # (the refusal is logged once: every request after the close would log it)


def refused() -> inprocserve.ServerClosedError | None:
    """The error a request gets once :func:`close_server` closed the server (logged the first time), else
    ``None``."""
    if not _Closing.closed:
        return None
    if not _Closing.logged:
        _Closing.logged = True
        logger.warning(
            "inprocserve: a request arrived after inprocserve_django.close_server(); refused with a 503, the "
            "server is not built again in this process"
        )
    return inprocserve.ServerClosedError(
        "the model server was closed (inprocserve_django.close_server()): the process is shutting down; retry on "
        "another worker"
    )


def get_server() -> inprocserve.Server:
    """The server for this process, built from ``settings.INPROCSERVE`` on first use.

    Raises:
        inprocserve.ServerClosedError: :func:`close_server` closed it (the middleware answers 503).
    """
    closed = refused()
    if closed is not None:
        raise closed
    return _holder.get()


async def aget_server() -> inprocserve.Server:
    """:func:`get_server` for async code: when this process's server is not built yet, it is built (or, in
    eager mode, waited for while the warm-up builds it) on a worker thread, never on the event loop's."""
    closed = refused()
    if closed is not None:
        raise closed
    if _holder.started:
        return _holder.get()
    return await asyncio.to_thread(_holder.get)


def building() -> bool:
    """Whether a thread of this process is building the server right now (eager warm-up after fork)."""
    return _holder.building


def warm_after_fork() -> None:
    """The eager builder run in each forked worker: build and warm this process's server now."""
    if settings()["EAGER"] and not _Closing.closed:  # settings may have changed since it was registered
        get_server()


def reset_server() -> None:
    """Close this process's server; the next use builds a new one (settings changed, tests). Opens it again
    after :func:`close_server`."""
    _holder.close()
    _Closing.closed = _Closing.logged = False


def close_server() -> None:
    """Close this process's server for good (a shutdown hook): a later request is answered 503
    (``inprocserve.ServerClosedError``) and no new server is built, as after the Flask plug-in's
    ``Inprocserve.close(app)``; :func:`reset_server` opens it again. Idempotent."""
    _Closing.closed = True
    _holder.close()


def request_context(request: HttpRequest) -> dict[str, Any]:
    """The rollout context of a request (a copy: the caller may change it): derived on the first call of the
    request and kept on it (``request.inprocserve_context``) for the request's later predictions."""
    context = getattr(request, "inprocserve_context", None)
    if context is None:
        context = derive_context(request)
        request.inprocserve_context = context  # type: ignore[attr-defined]
    return dict(context)


async def arequest_context(request: HttpRequest) -> dict[str, Any]:
    """:func:`request_context` for async views: the user is loaded with ``request.auser()`` (Django 5.0+; a
    session read on the event loop's thread raises ``SynchronousOnlyOperation``), or in a thread before 5.0."""
    context = getattr(request, "inprocserve_context", None)
    if context is None:
        auser = getattr(request, "auser", None)  # (set by AuthenticationMiddleware)
        if auser is not None:
            context = context_of(await auser(), request)
        elif hasattr(request, "user"):
            context = await sync_to_async(derive_context)(request)
        else:
            context = derive_context(request)
        request.inprocserve_context = context  # type: ignore[attr-defined]
    return dict(context)


def derive_context(request: HttpRequest) -> dict[str, Any]:
    """The logged-in user's pk, else the user header."""
    return context_of(getattr(request, "user", None), request)


def context_of(user: Any, request: HttpRequest) -> dict[str, Any]:
    """The context of ``user`` (``None`` without authentication), else of the request's user header."""
    if user is not None and getattr(user, "is_authenticated", False):
        return {"user_id": str(user.pk)}
    name = settings()["USER_HEADER"]
    key = meta_key(name)
    if key is None:  # USER_HEADER = None: not read
        return {}
    # (read from META: request.headers builds a mapping of every header on first use)
    user_id = inprocserve.parse_user_id(request.META.get(key), header=name)  # 400 when malformed
    return {"user_id": user_id} if user_id is not None else {}


def remaining_budget(request: HttpRequest) -> float | None:
    """The tighter of the caller's deadline header (less the time since the request began) and the
    configured default; ``None`` when neither is set."""
    config = settings()
    budget: float | None = config["TIMEOUT_S"]
    header = config["DEADLINE_HEADER"]
    key = meta_key(header)
    # a malformed value raises InvalidInputError (a 400 naming the header), never a 500
    milliseconds = None if key is None else inprocserve.parse_timeout_ms(request.META.get(key), header=header)
    if milliseconds is not None:
        now = time.monotonic()
        left = milliseconds / 1000 - (now - getattr(request, "_inprocserve_started", now))
        budget = left if budget is None else min(budget, left)
    return budget


def meta_key(header: str | None) -> str | None:
    """Where Django keeps request header ``header`` in ``request.META`` (:func:`inprocserve.web.environ_key`;
    a setting that is no header's name raises ``ConfigurationError``, which system check inprocserve.E009
    reports at start-up)."""
    return web.environ_key(header) if not isinstance(header, str) else _meta_key(header)


@lru_cache(maxsize=64)
def _meta_key(header: str) -> str | None:
    return web.environ_key(header)


def _with_budget(
    request: HttpRequest, server: inprocserve.Server, model: str, kwargs: dict[str, Any]
) -> dict[str, Any]:
    if "timeout_s" not in kwargs:
        budget = remaining_budget(request)
        if budget is not None and budget <= 0:
            raise web.budget_spent(server, model, kwargs.get("version"))  # (recorded, as predict's refusals)
        kwargs["timeout_s"] = budget
    return kwargs


_NO_INPUTS: Any = object()
"""``inputs``' default, only so that a call without the request (``predict("fraud", inputs)``) reaches
:func:`_check_call` instead of Python's "missing 1 required positional argument: 'inputs'"."""

_OUTSIDE_A_VIEW = {"predict": "get_server().predict", "apredict": "(await aget_server()).apredict"}


def _check_call(function: str, request: object, model: object, inputs: object) -> None:
    """Refuse a call written as the core's or the Flask plug-in's, ``predict("fraud", inputs)`` (or with the
    request last, or ``None`` for it outside a view), saying that the request comes first, or what to call
    without one: it raised Python's "missing 1 required positional argument: 'inputs'" though the inputs were
    given, or "'str' (or 'NoneType') object has no attribute 'META'"."""
    if isinstance(request, str):
        raise TypeError(
            f"inprocserve_django.{function} takes the request first: {function}(request, {request!r}, inputs); "
            f"outside a view (a command, a task), call {_OUTSIDE_A_VIEW[function]}({request!r}, inputs)"
        )
    if request is None:  # (a task or a command, which has no request)
        raise _outside_a_request(function, model)
    if inputs is _NO_INPUTS:
        raise TypeError(f"inprocserve_django.{function} needs the inputs: {function}(request, {model!r}, inputs)")


class OutsideRequestError(inprocserve.InprocserveError, TypeError):
    """:func:`predict` or :func:`apredict` was given ``None`` for the request (a task, a command, a thread of
    your own has none to read the user and deadline from): call the server's own ``predict`` there. A
    ``TypeError`` too, as it was before it had a class of its own (the Flask plug-in's error of the same name
    is a ``RuntimeError``, as Flask's own "Working outside of request context" it replaces)."""


def _outside_a_request(function: str, model: object) -> OutsideRequestError:
    """What to pass, or to call instead of ``function``, where there is no request."""
    return OutsideRequestError(
        f"inprocserve_django.{function} reads the user and deadline from the view's request, and was given None: "
        f"in a view, pass its request, {function}(request, {model!r}, inputs); outside a view (a command, a "
        f"task), call {_OUTSIDE_A_VIEW[function]}({model!r}, inputs), with context={{'user_id': ...}} and "
        "timeout_s=... where you want them (it reads no request)",
        model=model if isinstance(model, str) else None,
    )


def predict(request: HttpRequest, model: str, inputs: Any = _NO_INPUTS, **kwargs: Any) -> inprocserve.Prediction:
    """``server.predict`` with the request's user and remaining time budget filled in (sync views).

    Raises:
        OutsideRequestError: given ``None`` for the request (a task, a command); a ``TypeError`` too.
        TypeError: called without the request first (``predict("fraud", inputs)``, as the core's is), or
            without inputs, or on an event loop's thread (an async view: it awaits :func:`apredict`).
        Anything ``Server.predict`` raises; the middleware turns them into JSON answers.
    """
    _check_call("predict", request, model, inputs)
    if asyncio._get_running_loop() is not None:  # (None off a loop; raises nothing)
        # An async view: the run would block the event loop, and every request of the worker, throughout (a
        # first request would also build the server there), and a logged-in user's session read would fail on
        # Django's SynchronousOnlyOperation while an anonymous request went through.
        raise TypeError(
            "inprocserve_django.predict was called on an event loop's thread (an async view), where it would "
            "block every request of this worker for the whole run: in an async view, "
            f"await inprocserve_django.apredict(request, {model!r}, inputs)"
        )
    server = get_server()
    if "context" not in kwargs:
        kwargs["context"] = request_context(request)
    return server.predict(model, inputs, **_with_budget(request, server, model, kwargs))


async def apredict(request: HttpRequest, model: str, inputs: Any = _NO_INPUTS, **kwargs: Any) -> inprocserve.Prediction:
    """``server.apredict`` for async views: awaits on the view's event loop, never blocks it (a server not
    built yet in this process is built on a worker thread: loading models takes seconds). Raises as
    :func:`predict` does."""
    _check_call("apredict", request, model, inputs)
    if "context" not in kwargs:
        kwargs["context"] = await arequest_context(request)
    server = await aget_server()
    return await server.apredict(model, inputs, **_with_budget(request, server, model, kwargs))
