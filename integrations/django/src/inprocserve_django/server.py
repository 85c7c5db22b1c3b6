"""The project's :class:`inprocserve.Server`: built lazily, once per process (never in ``ready()``, which
runs for every ``manage.py`` command and twice under the autoreloader)."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Any

from django.http import HttpRequest

import inprocserve
from inprocserve import web

from .conf import settings


def _build() -> inprocserve.Server:
    config = settings()
    return inprocserve.Server(
        config["REPOSITORY"],
        config=config["CONFIG"],
        models=config["MODELS"],
        flags=config["FLAGS"],
        flag_timeout_s=config["FLAG_TIMEOUT_S"],
        poll_interval_s=config["POLL_INTERVAL_S"],
        control_interval_s=config["CONTROL_INTERVAL_S"],
        follow_symlinks=config["FOLLOW_SYMLINKS"],
    )


_holder = web.ProcessLocalServer(_build)


def get_server() -> inprocserve.Server:
    """The server for this process, built from ``settings.INPROCSERVE`` on first use."""
    return _holder.get()


def building() -> bool:
    """Whether a thread of this process is building the server right now (eager warm-up after fork)."""
    return _holder.building


def warm_after_fork() -> None:
    """The eager builder run in each forked worker: build and warm this process's server now."""
    if settings()["EAGER"]:  # settings may have changed since it was registered
        get_server()


def reset_server() -> None:
    """Close this process's server; the next use builds a new one (settings changed, tests, shutdown)."""
    _holder.close()


def request_context(request: HttpRequest) -> dict[str, Any]:
    """The rollout context of a request (a copy: the caller may change it): derived on the first call of the
    request and kept on it (``request.inprocserve_context``) for the request's later predictions."""
    context = getattr(request, "inprocserve_context", None)
    if context is None:
        context = derive_context(request)
        request.inprocserve_context = context  # type: ignore[attr-defined]
    return dict(context)


def derive_context(request: HttpRequest) -> dict[str, Any]:
    """The logged-in user's pk, else the user header."""
    user = getattr(request, "user", None)
    if user is not None and getattr(user, "is_authenticated", False):
        return {"user_id": str(user.pk)}
    name = settings()["USER_HEADER"]
    # (read from META: request.headers builds a mapping of every header on first use)
    user_id = inprocserve.parse_user_id(request.META.get(meta_key(name)), header=name)  # 400 when malformed
    return {"user_id": user_id} if user_id is not None else {}


def remaining_budget(request: HttpRequest) -> float | None:
    """The tighter of the caller's deadline header (less the time since the request began) and the
    configured default; ``None`` when neither is set."""
    config = settings()
    budget: float | None = config["TIMEOUT_S"]
    header = config["DEADLINE_HEADER"]
    # a malformed value raises InvalidInputError (a 400 naming the header), never a 500
    milliseconds = inprocserve.parse_timeout_ms(request.META.get(meta_key(header)), header=header)
    if milliseconds is not None:
        now = time.monotonic()
        left = milliseconds / 1000 - (now - getattr(request, "_inprocserve_started", now))
        budget = left if budget is None else min(budget, left)
    return budget


@lru_cache(maxsize=64)
def meta_key(header: str) -> str:
    """Where Django keeps request header ``header`` in ``request.META`` (what ``request.headers`` reads)."""
    key = header.upper().replace("-", "_")
    return key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"


def _kwargs(request: HttpRequest, model: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    if "context" not in kwargs:
        kwargs["context"] = request_context(request)
    if "timeout_s" not in kwargs:
        budget = remaining_budget(request)
        if budget is not None and budget <= 0:
            raise inprocserve.DeadlineExceededError(
                f"model {model!r}: the request's time budget was spent before predict", model=model
            )
        kwargs["timeout_s"] = budget
    return kwargs


def predict(request: HttpRequest, model: str, inputs: Any, **kwargs: Any) -> inprocserve.Prediction:
    """``server.predict`` with the request's user and remaining time budget filled in (sync views)."""
    return get_server().predict(model, inputs, **_kwargs(request, model, kwargs))


async def apredict(request: HttpRequest, model: str, inputs: Any, **kwargs: Any) -> inprocserve.Prediction:
    """``server.apredict`` for async views: awaits on the view's event loop, never blocks it."""
    return await get_server().apredict(model, inputs, **_kwargs(request, model, kwargs))
