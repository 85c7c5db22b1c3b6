"""Do inprocserve's spans nest under the request span of a Django app instrumented with DjangoInstrumentor,
under WSGI and under ASGI?

    python docs/otel/django_check.py MODELS [--without-asgi-instrumentation]

MODELS holds ``scale`` version 1 (``inprocserve.testing.build_scale_model``). Needs Django,
inprocserve-django, opentelemetry-sdk and opentelemetry-instrumentation-django (+ -asgi). Sends one request
in each of three runs, spans collected in memory:

* ``wsgi``: a view that calls ``predict``, served by ``get_wsgi_application()`` over loopback (wsgiref);
* ``asgi``: an async view that awaits ``apredict``, ``get_asgi_application()`` driven through ASGI (asgiref's
  ``ApplicationCommunicator``);
* ``asgi-middleware``: the same, the application wrapped in the ASGI instrumentation's
  ``OpenTelemetryMiddleware`` (not run with ``--without-asgi-instrumentation``, which blocks the import of
  ``opentelemetry.instrumentation.asgi`` as if it were not installed).

Prints one JSON object: for each run the status, the body and every finished span (name, kind, ids, parent id
and linked span ids). Run by tests/test_otel_instrumentation.py; used for docs/otel-instrumentation.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import urllib.request
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from span_rows import span_rows  # (docs/otel/, beside this script)


def main(argv: list[str]) -> int:
    without_asgi = "--without-asgi-instrumentation" in argv
    if without_asgi:
        sys.modules["opentelemetry.instrumentation.asgi"] = None  # type: ignore[assignment]  # as if not installed
    import numpy as np
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    # the user's project: settings, DjangoInstrumentor before the first request, a sync and an async view
    import django
    from django.conf import settings
    from django.urls import path

    settings.configure(
        SECRET_KEY="check-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"],
        INPROCSERVE={"REPOSITORY": argv[0]},
    )
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument()
    django.setup()
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from django.http import JsonResponse
    from inprocserve_django import apredict, predict

    def score(request: Any) -> Any:
        result = predict(request, "scale", {"x": np.ones((1, 4), np.float32)})
        return JsonResponse({"version": result.version})

    async def ascore(request: Any) -> Any:
        result = await apredict(request, "scale", {"x": np.ones((1, 4), np.float32)})
        return JsonResponse({"version": result.version})

    urlpatterns.extend([path("score", score), path("ascore", ascore)])

    runs = {"wsgi": _over_wsgi(get_wsgi_application(), "/score")}
    runs["wsgi"]["spans"] = span_rows(exporter.get_finished_spans())
    exporter.clear()
    asgi: Any = get_asgi_application()
    runs["asgi"] = asyncio.run(_over_asgi(asgi, "/ascore"))
    runs["asgi"]["spans"] = span_rows(exporter.get_finished_spans())
    exporter.clear()
    if not without_asgi:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        runs["asgi-middleware"] = asyncio.run(_over_asgi(OpenTelemetryMiddleware(asgi), "/ascore"))
        runs["asgi-middleware"]["spans"] = span_rows(exporter.get_finished_spans())
    print(json.dumps(runs))
    return 0


class _Quiet(WSGIRequestHandler):
    def log_message(self, *args: Any) -> None:  # (no line per request)
        pass


def _over_wsgi(app: Any, url_path: str) -> dict[str, Any]:
    """One GET of ``url_path`` through ``app`` served by wsgiref over loopback."""
    http = make_server("127.0.0.1", 0, app, handler_class=_Quiet)
    serving = threading.Thread(target=http.handle_request)
    serving.start()
    with urllib.request.urlopen(f"http://127.0.0.1:{http.server_port}{url_path}", timeout=20) as response:
        status, body = int(response.status), response.read()
    serving.join(20)
    http.server_close()
    return {"status": status, "body": body.decode()}


async def _over_asgi(app: Any, url_path: str) -> dict[str, Any]:
    """One GET of ``url_path`` through the ASGI ``app``, as an ASGI server would send it."""
    from asgiref.testing import ApplicationCommunicator

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": url_path, "raw_path": url_path.encode(), "query_string": b"", "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80), "client": ("127.0.0.1", 1234),
    }  # fmt: skip
    communicator = ApplicationCommunicator(app, scope)
    await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
    start = await communicator.receive_output(20)
    body = await communicator.receive_output(20)
    await communicator.wait(20)  # (the app returns after its last send: its spans have ended)
    return {"status": int(start["status"]), "body": bytes(body["body"]).decode()}


urlpatterns: list[Any] = []

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
