"""Health, readiness, status and admin endpoints (include ``inprocserve_django.urls``).

The admin endpoints (reload, switch, rollback, canary, kill, resume) exist only when
``INPROCSERVE["ADMIN_TOKEN"]`` is set, and need ``Authorization: Bearer <token>`` (compared in constant
time). They write the repository's control file, which every worker and host follows. What they accept
and answer is :func:`inprocserve.web.admin_answer`; these views add Django's routing and the token check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from django.core.exceptions import RequestDataTooBig
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.utils.http import parse_header_parameters
from django.views.decorators.csrf import csrf_exempt

from inprocserve import InvalidInputError, ServerClosedError, web

from .body import LengthRequired, whole_body
from .conf import settings
from .middleware import error_response, not_logged_per_request
from .server import building, get_server

_View = TypeVar("_View", bound=Callable[..., HttpResponse])

_METHODS_TAKEN = {"POST": "the admin endpoints take POST (with Authorization: Bearer <token>)"}
"""What the 405 of a view that takes these methods says (others: "this endpoint takes GET or HEAD")."""


def only(*methods: str) -> Callable[[_View], _View]:
    """Django's ``require_http_methods`` answering JSON: its 405 had an empty body, where every other answer of
    these endpoints is JSON ``{"error": <code>, "message": ...}`` (as the Flask plug-in's 405 now is)."""
    allow = ", ".join(methods)
    does = _METHODS_TAKEN.get(" ".join(methods), f"this endpoint takes {' or '.join(methods)}")

    def decorate(view: _View) -> _View:
        @functools.wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            if request.method not in methods:
                message = f"{does}; this request sent {web.short_repr(request.method)}"
                body = {"error": "method_not_allowed", "message": message}
                return JsonResponse(body, status=405, headers={"Allow": allow})
            return view(request, *args, **kwargs)

        return cast(_View, checked)

    return decorate


def answered_with(headers: Mapping[str, str]) -> Callable[[_View], _View]:
    """Every answer of the view carries ``headers`` (``web.ANSWER_HEADERS`` or ``web.PRIVATE_ANSWER_HEADERS``)
    where it has not set them itself, its 405 and its library errors' included (answered here, as the
    middleware would answer them, so that they carry them too): as the Flask plug-in's answers."""

    def decorate(view: _View) -> _View:
        @functools.wraps(view)
        def checked(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                response = view(request, *args, **kwargs)
            except Exception as exc:  # (Http404 and errors of no library class: not answered here)
                answer = error_response(exc)
                if answer is None:
                    raise
                response = answer
            for name, value in headers.items():
                response.setdefault(name, value)
            return response

        return cast(_View, checked)

    return decorate


# The read-only endpoints answer GET and HEAD, and any other method 405 (as the Flask plug-in's do), exempt from
# CSRF checks, which would answer a POST with an HTML 403 about cookies: any method answered the whole status.


@csrf_exempt
@answered_with(web.ANSWER_HEADERS)
@only("GET", "HEAD")
def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


@csrf_exempt
@answered_with(web.ANSWER_HEADERS)
@only("GET", "HEAD")
def ready(request: HttpRequest) -> JsonResponse:
    if settings()["EAGER"] and building():  # warming up after the fork: not ready, and do not wait for it
        readiness = web.Readiness.warming_up()
    else:  # lazy mode: builds the server on the first probe
        readiness = web.probe_readiness(get_server, settings()["REQUIRED_MODELS"] or None)
    response = JsonResponse(readiness.body(), status=200 if readiness.ready else 503)
    if not readiness.ready:  # like every other 503 of the plug-in: when a probe or client may try again
        response["Retry-After"] = web.retry_after(settings()["RETRY_AFTER_S"])
    return not_logged_per_request(response)  # (a probe every few seconds: not an error line each time)


@csrf_exempt
@answered_with(web.PRIVATE_ANSWER_HEADERS)  # (file-system paths with the admin token)
@only("GET", "HEAD")
def models(request: HttpRequest) -> HttpResponse:
    try:
        server = web.server_or_none(get_server, "GET /models")
    except ServerClosedError as exc:  # (close_server(): not a server that failed to start)
        error = str(exc)
    else:
        if server is not None:
            return JsonResponse(server.status(include_paths=_authorized(request)))
        error = web.NO_SERVER  # (its cause names files: logged, not answered)
    response = JsonResponse({"error": error}, status=503)
    response["Retry-After"] = web.retry_after(settings()["RETRY_AFTER_S"])
    return not_logged_per_request(response)  # (the library logs why, at most once a minute; a close is no error)


@csrf_exempt  # (any method: a 404 either way, never CSRF's HTML 403)
@answered_with(web.ANSWER_HEADERS)
def not_found(request: HttpRequest) -> HttpResponse:
    """The JSON 404 of a path that begins as one of the plug-in's endpoints and holds a control character
    (``models%0A``, ``models/m/switch%00``): Django's HTML 404 page answered. Only those (see urls.py): a typo in
    an admin action or a trailing slash is the project's own 404, since the URLconf may be included at the root."""
    message = (
        f"no inprocserve endpoint at {web.short_repr(request.path)}: the endpoints are health, ready, models, status "
        "(INPROCSERVE['STATUS_PAGE']), reload and models/<name>/<switch|rollback|canary|kill|resume> "
        "(INPROCSERVE['ADMIN_TOKEN'])"
    )
    return not_logged_per_request(JsonResponse({"error": "not_found", "message": message}, status=404))


def _authorized(request: HttpRequest) -> bool:
    return web.check_token(request.headers.get("Authorization"), settings()["ADMIN_TOKEN"])


_BODY_ERRORS: dict[type[Exception], tuple[int, str]] = {
    LengthRequired: (411, "length_required"),
    RequestDataTooBig: (413, "too_large"),
}
"""The status and ``error`` code of an admin body that cannot be read; any other is a 400 ``invalid_input``
(snake_case codes, as every other error the plug-in answers, where these answered class names)."""


def _admin(action: str) -> Callable[..., HttpResponse]:
    """An admin view: off without a token (404, whatever the method), POST only, 401 without the right token."""

    @csrf_exempt  # authenticated by the bearer token, never by a cookie
    def view(request: HttpRequest, name: str | None = None) -> HttpResponse:
        # (the token first: a GET was a 405 while the endpoints were off, where the docs and the Flask plug-in,
        # which has no such route then, answer 404)
        if not settings()["ADMIN_TOKEN"]:
            raise Http404("admin endpoints are off (INPROCSERVE['ADMIN_TOKEN'] is not set)")
        return act(request, name)

    @answered_with(web.PRIVATE_ANSWER_HEADERS)
    @only("POST")
    def act(request: HttpRequest, name: str | None) -> JsonResponse:
        if not _authorized(request):
            unauthorized = {"error": "unauthorized", "message": web.ADMIN_UNAUTHORIZED}
            return JsonResponse(unauthorized, status=401, headers={"WWW-Authenticate": "Bearer"})
        refused = web.admin_encoding_refused(request.headers.get("Content-Encoding"))
        if refused is not None:  # (a gzip body was read as raw bytes: refused as "not JSON")
            return _answered(refused)
        try:  # (request.body of a chunked request is empty: the action ran as if no body was sent)
            body = whole_body(request)
        except (LengthRequired, InvalidInputError, RequestDataTooBig) as exc:  # (broken chunked framing, ...)
            status, code = _BODY_ERRORS.get(type(exc), (400, "invalid_input"))
            return JsonResponse({"error": code, "message": str(exc)}, status=status)
        if body and _an_empty_form(request, body):
            body = b""  # (no body: what the caller meant)
        actor = f"admin endpoint from {request.META.get('REMOTE_ADDR')}"
        answer = web.admin_answer(
            get_server(), action, name, body, actor=actor, retry_after_s=settings()["RETRY_AFTER_S"]
        )
        return _answered(answer)

    view.__name__ = action
    return cast(Callable[..., HttpResponse], view)


def _answered(answer: web.AdminAnswer) -> JsonResponse:
    """An admin answer with all its headers (JsonResponse refuses a ``Content-Type`` among ``headers=``)."""
    response = JsonResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def _an_empty_form(request: HttpRequest, body: bytes) -> bool:
    """Whether ``body`` is a multipart form of no parts, its closing delimiter alone (``--<boundary>--``): what
    Django's test ``Client.post(path)`` sends when given no data, where an HTTP client sends no body. It was a 400,
    "the body is not JSON: send a JSON object {}, or no body", to a test that had given no body.

    That line alone, not whatever Django's multipart parser reads as no fields and no files: it skips a part without
    a Content-Disposition or a name, and reads a form never closed, or no form at all, as empty; each of them ran
    the action as if no body had been sent, where a body that is not a JSON object is refused."""
    content_type, parameters = parse_header_parameters(request.META.get("CONTENT_TYPE", ""))
    boundary: object = parameters.get("boundary")
    if content_type != "multipart/form-data" or not isinstance(boundary, str) or not boundary:
        return False
    return body.removesuffix(b"\r\n") == b"--" + boundary.encode("utf-8", "replace") + b"--"


reload = _admin("reload")
switch = _admin("switch")
rollback = _admin("rollback")
canary = _admin("canary")
kill = _admin("kill")
resume = _admin("resume")
