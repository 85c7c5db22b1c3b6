"""Middleware: notes when each request began (the deadline header's budget counts from there), and turns
library errors into HTTP responses."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

from inprocserve import web

from .conf import settings


def error_response(error: Exception) -> HttpResponse | None:
    """The HTTP response for a library error, or None for anything else."""
    answer = web.error_answer(error, retry_after_s=settings()["RETRY_AFTER_S"])
    if answer is None:
        return None
    response = JsonResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return not_logged_per_request(response)


def not_logged_per_request(response: HttpResponse) -> HttpResponse:
    """Keep django.request from logging this answer of the library's.

    Django logs every 4xx response as a warning and every 5xx as an error (mailed to ADMINS by its default
    logging): a line, or an e-mail, per invalid input a client sends, at any rate it likes, and per request
    shed while the server is overloaded. These answers are the library's: the steady faults behind them are
    logged by the library, when they start and then at most once a minute (docs/observability.md), and every
    answer is counted in its metrics. (``_has_been_logged`` is the mark Django's own ``log_response`` sets
    and checks, so it never logs a response twice.)
    """
    response._has_been_logged = True  # type: ignore[attr-defined]
    return response


class InprocserveMiddleware:
    """Works in sync and async stacks, anywhere in ``MIDDLEWARE`` (the user is read when a view predicts);
    early is best, since the deadline header's budget counts from when it sees the request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        from .checks import refuse_invalid_settings

        # Django builds its middleware when a WSGI or ASGI server loads the application: the start-up
        refuse_invalid_settings()
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if self._async:
            return self._acall(request)
        self._prepare(request)
        return self.get_response(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        self._prepare(request)
        response: Awaitable[HttpResponse] = self.get_response(request)
        return await response

    @staticmethod
    def _prepare(request: HttpRequest) -> None:
        # when the request began, for the deadline header's budget; the rollout context (the user: a session
        # and database read) is derived only when a prediction needs it (server.request_context)
        request._inprocserve_started = time.monotonic()  # type: ignore[attr-defined]

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return error_response(exception)
