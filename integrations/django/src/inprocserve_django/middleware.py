"""Middleware: puts the request's user into the rollout context, and turns library errors into HTTP."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.http import HttpRequest, HttpResponse, JsonResponse

import inprocserve

from .conf import settings
from .server import request_context

STATUS: dict[type[Exception], tuple[int, str]] = {
    inprocserve.InvalidInputError: (400, "invalid_input"),
    inprocserve.ModelNotFoundError: (404, "model_not_found"),
    inprocserve.OverloadedError: (503, "unavailable"),
    inprocserve.ServerClosedError: (503, "unavailable"),
    inprocserve.DeadlineExceededError: (504, "deadline_exceeded"),
}


def error_response(error: Exception) -> HttpResponse | None:
    """The HTTP response for a library error, or None for anything else."""
    for error_type, (status, code) in STATUS.items():
        if isinstance(error, error_type):
            response = JsonResponse({"error": code, "message": str(error)}, status=status)
            if status == 503:
                response["Retry-After"] = str(int(max(1, settings()["RETRY_AFTER_S"])))
            return response
    return None


class InprocserveMiddleware:
    """Works in sync and async stacks. Place it after ``AuthenticationMiddleware`` so the user is known."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
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
        request._inprocserve_started = time.monotonic()  # type: ignore[attr-defined]
        try:
            request.inprocserve_context = request_context(request)  # type: ignore[attr-defined]
        except inprocserve.InvalidInputError:
            # A malformed user header must not break pages that never predict: a view that does predict
            # derives the context again, and the error becomes its 400 through process_exception.
            pass

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        return error_response(exception)
