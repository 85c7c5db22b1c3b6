"""Health, readiness and status endpoints (include ``inprocserve_django.urls``)."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, JsonResponse

from .conf import settings
from .server import get_server


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


def ready(request: HttpRequest) -> JsonResponse:
    status = get_server().status()  # builds the server (loads the models) on the first probe
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
    return JsonResponse(get_server().status())
