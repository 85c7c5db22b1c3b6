"""The Open Inference Protocol (KServe v2 REST) view: ``INPROCSERVE["V2_PROTOCOL"] = True`` and
``path("", include("inprocserve_django.v2_urls"))``.

The protocol itself lives in :mod:`inprocserve.v2`; this view only adapts Django's request to it and
fills in the request's rollout context (the logged-in user, else the user header) and its time budget (the
deadline header, ``TIMEOUT_S``).
"""

from __future__ import annotations

from functools import lru_cache

from django.http import Http404, HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from inprocserve import v2

from .conf import settings
from .server import get_server, remaining_budget, request_context

__all__ = ["endpoint"]


@lru_cache(maxsize=1)
def _endpoints(limits: v2.Limits | None, required: tuple[str, ...], retry_after_s: float) -> v2.Endpoints:
    return v2.Endpoints(get_server, limits=limits, required_models=required, retry_after_s=retry_after_s)


@csrf_exempt  # a machine-to-machine API: clients send no CSRF token, and no cookie authorizes it
def endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    config = settings()
    if not config["V2_PROTOCOL"]:
        raise Http404("the Open Inference Protocol is off (INPROCSERVE['V2_PROTOCOL'])")
    endpoints = _endpoints(config["V2_LIMITS"], tuple(config["REQUIRED_MODELS"]), config["RETRY_AFTER_S"])
    # request.read streams the body under the protocol's own cap (not DATA_UPLOAD_MAX_MEMORY_SIZE); if a
    # middleware already read request.body, Django reads it back from memory.
    answer = endpoints.handle(
        request.method or "GET",
        request.path_info,
        request.headers,
        request.read,
        context=lambda: request_context(request),
        budget_s=lambda: remaining_budget(request),
    )
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response
