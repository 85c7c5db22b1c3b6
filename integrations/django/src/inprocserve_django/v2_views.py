"""The Open Inference Protocol (KServe v2 REST) view: ``INPROCSERVE["V2_PROTOCOL"] = True`` and
``path("", include("inprocserve_django.v2_urls"))``.

The protocol itself lives in :mod:`inprocserve.v2`; this view only adapts Django's request to it and
fills in the request's rollout context (the logged-in user, else the user header) and its time budget (the
deadline header, ``TIMEOUT_S``).
"""

from __future__ import annotations

from functools import lru_cache

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from inprocserve import v2, web

from .body import LengthRequired, body_reader
from .conf import settings
from .middleware import not_logged_per_request
from .server import building, get_server, refused, remaining_budget, request_context

__all__ = ["endpoint"]


@lru_cache(maxsize=1)
def _endpoints(limits: v2.Limits | None, required: tuple[str, ...], retry_after_s: float) -> v2.Endpoints:
    return v2.Endpoints(
        get_server,
        limits=limits,
        required_models=required,
        retry_after_s=retry_after_s,
        warming=lambda: settings()["EAGER"] and building(),  # probes answer 503 during the warm-up, as /ready
    )


@csrf_exempt  # a machine-to-machine API: clients send no CSRF token, and no cookie authorizes it
def endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    response = _answer(request, rest)
    # Every answer, JSON or binary tensors, errors included, as the plug-in's other endpoints' (whether or not
    # SecurityMiddleware is installed): a browser made to fetch /v2/... never reads one as HTML (an error quoting
    # the path or a tensor's name, or an output's bytes, would run as a page of the project's origin).
    for name, value in web.ANSWER_HEADERS.items():
        response.setdefault(name, value)
    return response


def _answer(request: HttpRequest, rest: str) -> HttpResponse:
    config = settings()
    if not config["V2_PROTOCOL"]:
        raise Http404("the Open Inference Protocol is off (INPROCSERVE['V2_PROTOCOL'])")
    closed = refused()
    if closed is not None:  # (else answered as a server that could not start: "its log says why")
        response = JsonResponse({"error": str(closed)}, status=503)
        response["Retry-After"] = web.retry_after(config["RETRY_AFTER_S"])
        return not_logged_per_request(response)
    endpoints = _endpoints(config["V2_LIMITS"], tuple(config["REQUIRED_MODELS"]), config["RETRY_AFTER_S"])
    # request.read streams the body under the protocol's own cap (not DATA_UPLOAD_MAX_MEMORY_SIZE); if a
    # middleware already read request.body, Django reads it back from memory.
    try:
        answer = endpoints.handle(
            request.method or "GET",
            f"/{rest}",  # the path from the include()'s prefix on (path_info would hold the prefix too)
            request.headers,
            body_reader(request),
            context=lambda: request_context(request),
            budget_s=lambda: remaining_budget(request),
        )
    except LengthRequired as exc:
        return not_logged_per_request(JsonResponse({"error": str(exc)}, status=411))
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return not_logged_per_request(response)
