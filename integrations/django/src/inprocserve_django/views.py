"""Health, readiness, status and admin endpoints (include ``inprocserve_django.urls``).

The admin endpoints (reload, switch, rollback, canary, kill, resume) exist only when
``INPROCSERVE["ADMIN_TOKEN"]`` is set, and need ``Authorization: Bearer <token>`` (compared in constant
time). They write the repository's control file, which every worker and host follows.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Callable
from typing import Any, cast

from django.http import Http404, HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

import inprocserve

from .conf import settings
from .server import building, get_server


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def ready(request: HttpRequest) -> JsonResponse:
    if settings()["EAGER"] and building():  # warming up after the fork: not ready, and do not wait for it
        return JsonResponse({"ready": False, "warming": True, "worker": os.getpid()}, status=503)
    status = get_server().status(include_paths=False)  # lazy mode: builds the server on the first probe
    required = settings()["REQUIRED_MODELS"] or list(status["models"])
    missing = {
        name: (status["models"].get(name) or {}).get("config_error") or _error(status["models"].get(name))
        for name in required
        if not (status["models"].get(name) or {}).get("ready")
    }
    if status["closed"] or missing or not required:
        return JsonResponse({"ready": False, "models": missing}, status=503)
    return JsonResponse({"ready": True, "models": sorted(required)})


def _error(model: dict[str, Any] | None) -> str:
    for version in (model or {}).get("versions", {}).values():
        if version.get("error"):
            return str(version["error"])
    return "not loaded"


def models(request: HttpRequest) -> JsonResponse:
    return JsonResponse(get_server().status(include_paths=_authorized(request)))


def _authorized(request: HttpRequest) -> bool:
    token = settings()["ADMIN_TOKEN"]
    if not token:
        return False
    supplied = request.headers.get("Authorization", "")
    return hmac.compare_digest(supplied.encode(), f"Bearer {token}".encode())


def _admin_status(error: Exception) -> int | None:
    """The HTTP status of an admin call's error (its message says what to fix)."""
    if isinstance(error, inprocserve.ModelNotFoundError):
        return 404
    if isinstance(error, inprocserve.PromotionRefusedError):
        return 409  # e.g. an incompatible signature: send "force": true to switch anyway
    if isinstance(error, inprocserve.ModelLoadError):
        return 422  # the version exists but cannot be loaded: nothing was switched
    if isinstance(error, inprocserve.ServerClosedError):
        return 503
    if isinstance(error, inprocserve.ConfigurationError):
        return 409  # the control file is invalid or cannot be written: fix it, then retry
    if isinstance(error, ValueError | TypeError):
        return 400
    return None


def _admin(action: Callable[[HttpRequest, dict[str, Any], str], dict[str, Any]]) -> Callable[..., JsonResponse]:
    """An admin view: POST only, off without a token (404), 401 without the right one."""

    @csrf_exempt  # authenticated by the bearer token, never by a cookie
    @require_POST
    def view(request: HttpRequest, **kwargs: Any) -> JsonResponse:
        if not settings()["ADMIN_TOKEN"]:
            raise Http404("admin endpoints are off (INPROCSERVE['ADMIN_TOKEN'] is not set)")
        if not _authorized(request):
            return JsonResponse({"error": "unauthorized"}, status=401)
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            data = None
        actor = f"admin endpoint from {request.META.get('REMOTE_ADDR')}"
        try:
            if not isinstance(data, dict):
                raise ValueError("send a JSON object")
            answer = action(request, {**data, **kwargs}, actor)
        except Exception as exc:
            status = _admin_status(exc)
            if status is None:
                raise
            answer = {"error": type(exc).__name__, "message": str(exc)}
            if isinstance(exc, inprocserve.PromotionRefusedError):  # what differs, for the operator
                answer.update(error="incompatible", report=exc.report)
            return JsonResponse(answer, status=status)
        return JsonResponse({**answer, "revision": get_server().sync_control(), "worker": os.getpid()})

    return cast(Callable[..., JsonResponse], view)


def _version(data: dict[str, Any], *, optional: bool = False) -> Any:
    version = data.get("version")
    if optional and version is None and "version" in data:
        return None
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError('send {"version": <int>}')
    return version


def _reload(request: HttpRequest, data: dict[str, Any], actor: str) -> dict[str, Any]:
    return {"problems": get_server().reload(actor=actor)}


def _switch(request: HttpRequest, data: dict[str, Any], actor: str) -> dict[str, Any]:
    version, force = _version(data), data.get("force", False)
    if not isinstance(force, bool):
        raise ValueError('"force" must be true or false (true switches to an incompatible version)')
    get_server().switch(data["name"], version, force=force, actor=actor)
    return {"model": data["name"], "stable": version}


def _rollback(request: HttpRequest, data: dict[str, Any], actor: str) -> dict[str, Any]:
    return {"model": data["name"], "stable": get_server().rollback(data["name"], actor=actor)}


def _canary(request: HttpRequest, data: dict[str, Any], actor: str) -> dict[str, Any]:
    version = _version(data, optional=True)
    percent = data.get("percent", 0)
    if version is not None and "percent" not in data:
        raise ValueError('send {"version": <int>, "percent": <0..100>}, or {"version": null} to remove it')
    get_server().set_canary(data["name"], version, percent=percent, actor=actor)
    return {"model": data["name"], "canary_version": version, "canary_percent": percent}


def _kill(request: HttpRequest, data: dict[str, Any], actor: str) -> dict[str, Any]:
    get_server().kill(data["name"], actor=actor)
    return {"model": data["name"], "kill": True}


def _resume(request: HttpRequest, data: dict[str, Any], actor: str) -> dict[str, Any]:
    get_server().resume(data["name"], actor=actor)
    return {"model": data["name"], "kill": False}


reload = _admin(_reload)
switch = _admin(_switch)
rollback = _admin(_rollback)
canary = _admin(_canary)
kill = _admin(_kill)
resume = _admin(_resume)
