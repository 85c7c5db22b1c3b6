"""The Open Inference Protocol (KServe v2 REST) view: ``INPROCSERVE["V2_PROTOCOL"] = True`` and
``path("", include("inprocserve_django.v2_urls"))``.

The protocol itself lives in :mod:`inprocserve.v2`; this view only adapts Django's request to it and
fills in the request's rollout context (the logged-in user, else the user header) and its time budget (the
deadline header, ``TIMEOUT_S``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from inprocserve import InvalidInputError, v2, web

from .conf import settings
from .middleware import not_logged_per_request
from .server import building, get_server, remaining_budget, request_context

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


class _LengthRequired(Exception):
    """The body's length is unknown and the WSGI server cannot say where it ends (answered 411)."""


def _body_reader(request: HttpRequest) -> Callable[[int], bytes]:
    """How to read the request body. Django's WSGI request reads ``CONTENT_LENGTH`` bytes, so without that
    header (a chunked request) or with one that is no byte count it reads nothing, and the request would fail
    as malformed JSON. A WSGI server that ends the input itself (``wsgi.input_terminated``, as gunicorn and
    werkzeug do for chunked requests) is read to its end (the protocol's ``max_body_bytes`` caps it);
    otherwise the body is refused, saying why. An ASGI request is spooled whole by Django before the view, so
    it is read as it is."""
    environ = request.META
    stream = environ.get("wsgi.input")
    read = web.body_reader(request.read)  # a client gone mid-upload, or broken chunked framing: a 400, not a 500
    if stream is None:  # ASGI
        return read
    declared = environ.get("CONTENT_LENGTH")
    text = "" if declared is None else str(declared).strip()
    if text:  # (an empty or blank CONTENT_LENGTH is no header: some WSGI servers set "" for a chunked body)
        if text.isascii() and text.isdigit():
            return read

        def refuse_length(size: int) -> bytes:
            raise InvalidInputError(f"Content-Length {text[:40]!r} is not a number of bytes; send the body's length")

        return refuse_length
    if environ.get("wsgi.input_terminated"):
        return web.body_reader(stream.read)

    def length_required(size: int) -> bytes:
        raise _LengthRequired(
            "send a Content-Length header: this WSGI server does not mark where a chunked request body ends "
            "(wsgi.input_terminated), so the body cannot be read; run it behind a proxy that buffers requests, "
            "or under a server that ends chunked input (gunicorn does)"
        )

    return length_required


@csrf_exempt  # a machine-to-machine API: clients send no CSRF token, and no cookie authorizes it
def endpoint(request: HttpRequest, rest: str = "") -> HttpResponse:
    config = settings()
    if not config["V2_PROTOCOL"]:
        raise Http404("the Open Inference Protocol is off (INPROCSERVE['V2_PROTOCOL'])")
    endpoints = _endpoints(config["V2_LIMITS"], tuple(config["REQUIRED_MODELS"]), config["RETRY_AFTER_S"])
    # request.read streams the body under the protocol's own cap (not DATA_UPLOAD_MAX_MEMORY_SIZE); if a
    # middleware already read request.body, Django reads it back from memory.
    try:
        answer = endpoints.handle(
            request.method or "GET",
            f"/{rest}",  # the path from the include()'s prefix on (path_info would hold the prefix too)
            request.headers,
            _body_reader(request),
            context=lambda: request_context(request),
            budget_s=lambda: remaining_budget(request),
        )
    except _LengthRequired as exc:
        return not_logged_per_request(JsonResponse({"error": str(exc)}, status=411))
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return not_logged_per_request(response)
