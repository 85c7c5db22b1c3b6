"""The Django project of the end-to-end benchmark: settings, URLs and one async view, served by uvicorn.

    E2E_VARIANT=inprocserve E2E_MODEL=mlp-small E2E_REPOSITORY=/tmp/models \
        uvicorn --workers 2 django_app:application

``POST /predict`` takes ``{"x": [[...features]]}`` and answers ``{"y": [[...]]}`` from an ``async def`` view;
each uvicorn worker runs one event loop that all its requests share. The variants:

* ``inprocserve`` — ``await inprocserve_django.apredict(...)`` with the plug-in's middleware, as
  docs/django.md sets it up: concurrent requests on the loop share batches, one loop wake per batch;
* ``naive`` — ``await asyncio.to_thread(session.run, ...)`` on one onnxruntime session per worker process
  with onnxruntime's default options (calling ``run`` on the loop itself would stall every other request);
* ``remote`` — an HTTP call over loopback to an out-of-process model server (``E2E_REMOTE_URL``) through one
  keep-alive ``aiohttp.ClientSession`` per worker.

``GET /ping`` answers without touching a model: the cost of the HTTP stack alone. ``GET /sdk`` names the
worker's OpenTelemetry providers (e2e/sdk.py).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import django
import numpy as np
from django.conf import settings
from sdk import install_if_asked, providers

install_if_asked()  # http_e2e.py --otel: the OpenTelemetry SDK, as a service installs it

VARIANT = os.environ["E2E_VARIANT"]
MODEL = os.environ["E2E_MODEL"]
REPOSITORY = os.environ["E2E_REPOSITORY"]

if VARIANT not in ("inprocserve", "naive", "remote"):
    raise SystemExit(f"E2E_VARIANT must be inprocserve, naive or remote, not {VARIANT!r}")

settings.configure(
    DEBUG=False,
    SECRET_KEY="benchmark-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["inprocserve_django"] if VARIANT == "inprocserve" else [],
    MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"] if VARIANT == "inprocserve" else [],
    INPROCSERVE={"REPOSITORY": str(Path(REPOSITORY))},
    LOGGING_CONFIG=None,
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.csrf import csrf_exempt  # noqa: E402
from naive import built_session, naive_session  # noqa: E402

_state: dict[str, Any] = {}


def _client_session() -> Any:
    # one session per worker, made on the worker's loop (an aiohttp session belongs to the loop that made it)
    session = _state.get("client")
    if session is None:
        import aiohttp

        session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=60))
        _state["client"] = session
    return session


async def infer(request: HttpRequest, x: np.ndarray) -> Any:
    if VARIANT == "inprocserve":
        from inprocserve_django import apredict

        return (await apredict(request, MODEL, {"x": x}))["y"]
    if VARIANT == "naive":
        session = built_session() or await asyncio.to_thread(naive_session)  # built once, off the loop
        return (await asyncio.to_thread(session.run, None, {"x": x}))[0]
    url = os.environ["E2E_REMOTE_URL"] + f"/predict/{MODEL}"
    body = json.dumps({"x": x.tolist()}).encode()
    async with _client_session().post(url, data=body, headers={"Content-Type": "application/json"}) as answer:
        data = await answer.read()
        if answer.status != 200:
            raise RuntimeError(f"model server answered {answer.status}: {data[:200]!r}")
    return np.asarray(json.loads(data)["y"], np.float32)


@csrf_exempt
async def predict(request: HttpRequest) -> HttpResponse:
    x = np.asarray(json.loads(request.body)["x"], dtype=np.float32)
    y = await infer(request, x)
    return HttpResponse(json.dumps({"y": y.tolist()}), content_type="application/json")


async def ping(request: HttpRequest) -> HttpResponse:
    return HttpResponse('{"ok": true}', content_type="application/json")


async def sdk(request: HttpRequest) -> HttpResponse:
    return HttpResponse(providers(), content_type="application/json")


urlpatterns = [path("predict", predict), path("ping", ping), path("sdk", sdk)]

application = get_asgi_application()
