"""Do inprocserve's spans nest under the request span of a Django async view served over ASGI?

    python docs/otel/asgi_check.py MODELS [--without-asgi-instrumentation] [--asgi-middleware]

MODELS holds ``scale`` version 1 (``inprocserve.testing.build_scale_model``). Needs Django,
inprocserve-django, opentelemetry-sdk and opentelemetry-instrumentation-django (+ -asgi). Prints the status,
the body and every finished span with its parent's name. Used for docs/otel-instrumentation.md.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any


def main(argv: list[str]) -> int:
    if "--without-asgi-instrumentation" in argv:
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
    from asgiref.testing import ApplicationCommunicator
    from django.core.asgi import get_asgi_application
    from django.http import JsonResponse
    from inprocserve_django import apredict

    async def score(request: Any) -> Any:
        result = await apredict(request, "scale", {"x": np.ones((1, 4), np.float32)})
        return JsonResponse({"version": result.version})

    urlpatterns.append(path("score", score))
    app: Any = get_asgi_application()
    if "--asgi-middleware" in argv:
        from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

        app = OpenTelemetryMiddleware(app)
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
        "path": "/score", "raw_path": b"/score", "query_string": b"", "headers": [(b"host", b"testserver")],
        "server": ("testserver", 80), "client": ("127.0.0.1", 1234),
    }  # fmt: skip

    async def call() -> tuple[int, bytes]:
        communicator = ApplicationCommunicator(app, scope)
        await communicator.send_input({"type": "http.request", "body": b"", "more_body": False})
        start = await communicator.receive_output(20)
        body = await communicator.receive_output(20)
        return int(start["status"]), bytes(body["body"])

    status, body = asyncio.run(call())
    spans = exporter.get_finished_spans()
    names = {span.context.span_id: span.name for span in spans}
    parents = [(span.name, names.get(span.parent.span_id) if span.parent else None) for span in spans]
    print(json.dumps({"status": status, "body": body.decode(), "spans (name, parent)": parents}))
    return 0


urlpatterns: list[Any] = []

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
