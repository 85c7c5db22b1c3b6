"""URLs of the test project as real ASGI servers serve it: the project's own, plus two views that tell what a
server does with them: which event loop and process answered, and whether ``apredict`` answered at once."""

import asyncio
import json
import os
import types
from collections.abc import Coroutine, Generator
from typing import Any

from django.http import HttpRequest, JsonResponse
from django.urls import path
from inprocserve_django import aget_server
from testproject_urls import urlpatterns as project_urlpatterns


async def loop(request: HttpRequest) -> JsonResponse:
    running = type(asyncio.get_running_loop())
    return JsonResponse({"loop": f"{running.__module__}.{running.__qualname__}", "pid": os.getpid()})


async def _suspended(call: Coroutine[Any, Any, Any]) -> tuple[bool, Any]:
    """Await ``call`` and tell whether it suspended the task (gave the loop back) before its answer: False for
    an answer made at once."""
    try:
        first = call.send(None)
    except StopIteration as answered:
        return False, answered.value
    return True, await _go_on(call, first)


@types.coroutine
def _go_on(call: Coroutine[Any, Any, Any], first: Any) -> Generator[Any, Any, Any]:
    """The rest of ``call``, which yielded ``first`` to the task: what ``await`` does after its first step."""
    awaited = first
    while True:
        try:
            sent = yield awaited
        except BaseException as thrown:  # (the task's cancellation, say)
            try:
                awaited = call.throw(thrown)
            except StopIteration as answered:
                return answered.value
        else:
            try:
                awaited = call.send(sent)
            except StopIteration as answered:
                return answered.value


async def at_once(request: HttpRequest) -> JsonResponse:
    """``server.apredict`` of the posted rows: the answer, and whether the task was suspended for it. (No
    ``@csrf_exempt``: the test project has no ``CsrfViewMiddleware``, and before Django 5.0 the decorator makes
    an async view a sync one whose coroutine is never awaited.)"""
    rows = json.loads(request.body)["rows"]
    server = await aget_server()
    suspended, result = await _suspended(server.apredict("scale", {"x": rows}))
    return JsonResponse({"y": result["y"].tolist(), "suspended": suspended})


urlpatterns = [path("loop", loop), path("at-once", at_once), *project_urlpatterns]
