"""Where do inprocserve's shadow spans go under the request spans of Flask's and Django's instrumentations,
and what does a dropped shadow copy leave?

    python docs/otel/shadow_check.py MODELS

MODELS holds two models whose ``config.toml`` makes version 1 stable and copies each request to version 2
(``[rollout.shadow] versions = [2]``): ``shadowed``, versions 1 and 2 of ``inprocserve.testing.
build_scale_model`` with factors 1 and 2 (``x`` float32 ``[batch, 4]``), and ``held``, two copies of the model
that tests/conftest.py's ``build_busy_model`` builds (``x`` float32 ``[batch, 512]``, ``index`` int64
``[batch]``, slow enough per row that a 4000-row request keeps its version's one session busy). Needs Flask,
Django, inprocserve-flask, inprocserve-django, opentelemetry-sdk and the Flask, Django and ASGI
instrumentations. Each run sends requests through real request cycles and waits until the shadow spans it
expects have ended; spans are collected in memory:

* ``flask``: one ``POST /score`` to ``shadowed``, a Flask app with ``FlaskInstrumentor`` served by werkzeug over
  loopback (here and in the Django runs with a shadow budget of 1.0, so that no copy is dropped);
* ``wsgi``, ``asgi`` and ``asgi-middleware``: one ``GET`` to ``shadowed`` through a Django project with
  ``DjangoInstrumentor``, served as docs/otel/django_check.py serves it (``get_wsgi_application()`` over
  loopback; ``get_asgi_application()`` through ASGI, alone and wrapped in ``OpenTelemetryMiddleware``);
* ``flask-over-budget``: two ``POST /score`` to ``shadowed`` in a Flask app whose shadow budget
  (``INPROCSERVE_SHADOW_BUDGET``) is a millionth of wall-clock time: the first copy runs, the second is
  over budget;
* ``flask-busy``: three ``POST /score`` to ``held`` in a Flask app with a shadow queue of one copy
  (``INPROCSERVE_SHADOW_QUEUE``) and an ``INPROCSERVE_ON_SHADOW`` callback that holds the shadow thread after
  the first comparison: the second copy waits in the queue, the third finds it full; then a 4000-row request
  pinned to version 2 (from a thread outside any trace) keeps that version's session busy while the callback
  lets go, so the queued copy finds no spare capacity.

Prints one JSON object: for each run the HTTP statuses, every finished span (name, kind, ids, parent id,
linked span ids and attributes) and the copies the run dropped, from the ``inprocserve.shadow.dropped``
counter (``{result: count}``). Run by tests/test_otel_instrumentation.py; used for
docs/otel-instrumentation.md.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from typing import Any

from django_check import _over_asgi, _over_wsgi  # (docs/otel/, beside this script)
from span_rows import span_rows


def main(argv: list[str]) -> int:
    import numpy as np
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    reader = InMemoryMetricReader()
    metrics.set_meter_provider(MeterProvider(metric_readers=[reader]))
    repository = argv[0]

    def inputs(model: str, rows: int) -> dict[str, Any]:
        if model == "held":
            return {"x": np.ones((rows, 512), np.float32), "index": np.zeros(rows, np.int64)}
        return {"x": np.ones((rows, 4), np.float32)}

    def shadow_spans() -> list[Any]:
        return [span for span in exporter.get_finished_spans() if span.name == "inprocserve.shadow"]

    dropped_before: Counter[str] = Counter()

    def finish(run: dict[str, Any], shadows: int) -> dict[str, Any]:
        """The run's spans, once its ``shadows`` shadow spans have ended, and the copies it dropped."""
        _wait_until(lambda: len(shadow_spans()) >= shadows)
        run["spans"] = span_rows(exporter.get_finished_spans())
        exporter.clear()
        dropped = _dropped(reader)
        run["dropped"] = dict(dropped - dropped_before)
        dropped_before.update(dropped - dropped_before)
        return run

    # the user's Flask apps: the plug-in, FlaskInstrumentor, a view that calls the plug-in's predict
    from flask import Flask, request
    from inprocserve_flask import Inprocserve, predict, server
    from opentelemetry.instrumentation.flask import FlaskInstrumentor
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # (no line per request)

    def flask_app(**config: Any) -> tuple[Flask, Callable[[str], int]]:
        app = Flask(__name__)
        app.config.update(INPROCSERVE_REPOSITORY=repository, **config)
        Inprocserve(app)
        FlaskInstrumentor().instrument_app(app)

        @app.post("/score")
        def score() -> Any:
            model = request.json["model"]
            result = predict(model, inputs(model, 1))
            return {"version": result.version}

        http = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{http.server_port}/score"

        def post(model: str) -> int:
            call = urllib.request.Request(
                url, json.dumps({"model": model}).encode(), {"Content-Type": "application/json"}
            )
            with urllib.request.urlopen(call, timeout=60) as response:
                return int(response.status)

        return app, post

    runs: dict[str, Any] = {}
    # (a shadow budget of all of wall-clock time: on a loaded machine a copy may otherwise find the default
    # budget spent by the run before it, and be dropped)
    _, post = flask_app(INPROCSERVE_SHADOW_BUDGET=1.0)
    runs["flask"] = finish({"statuses": [post("shadowed")]}, shadows=1)

    # the user's Django project: DjangoInstrumentor before the first request, a sync and an async view
    import django
    from django.conf import settings
    from django.urls import path

    settings.configure(
        SECRET_KEY="check-only",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF=__name__,
        INSTALLED_APPS=["inprocserve_django"],
        MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"],
        INPROCSERVE={"REPOSITORY": repository, "SHADOW_BUDGET": 1.0},
    )
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().instrument()
    django.setup()
    import inprocserve_django
    from django.core.asgi import get_asgi_application
    from django.core.wsgi import get_wsgi_application
    from django.http import JsonResponse
    from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware

    def django_score(request: Any) -> Any:
        return JsonResponse({"version": inprocserve_django.predict(request, "shadowed", inputs("shadowed", 1)).version})

    async def django_ascore(request: Any) -> Any:
        result = await inprocserve_django.apredict(request, "shadowed", inputs("shadowed", 1))
        return JsonResponse({"version": result.version})

    urlpatterns.extend([path("score", django_score), path("ascore", django_ascore)])
    asgi: Any = get_asgi_application()
    runs["wsgi"] = finish({"statuses": [_over_wsgi(get_wsgi_application(), "/score")["status"]]}, shadows=1)
    runs["asgi"] = finish({"statuses": [asyncio.run(_over_asgi(asgi, "/ascore"))["status"]]}, shadows=1)
    middleware = OpenTelemetryMiddleware(asgi)
    runs["asgi-middleware"] = finish(
        {"statuses": [asyncio.run(_over_asgi(middleware, "/ascore"))["status"]]}, shadows=1
    )

    # a millionth of wall-clock time: the first copy takes the bucket and more, the next is over budget
    _, post = flask_app(INPROCSERVE_SHADOW_BUDGET=1e-6)
    statuses = [post("shadowed")]
    _wait_until(lambda: len(shadow_spans()) == 1)  # (the first run ended: what it took is owed)
    statuses.append(post("shadowed"))
    runs["flask-over-budget"] = finish({"statuses": statuses}, shadows=1)

    held, released = threading.Event(), threading.Event()

    def hold_the_shadow_thread(comparison: Any) -> None:
        if not released.is_set():
            held.set()
            released.wait(60)

    app, post = flask_app(
        INPROCSERVE_SHADOW_BUDGET=1.0, INPROCSERVE_SHADOW_QUEUE=1, INPROCSERVE_ON_SHADOW=hold_the_shadow_thread
    )
    statuses = [post("held")]
    _wait_until(held.is_set)  # the first copy ran; the shadow thread is in the callback
    statuses += [post("held"), post("held")]  # the second copy is queued, the third finds the queue full

    def version_2() -> dict[str, Any]:
        with app.app_context():
            versions = server.status()["models"]["held"]["versions"]
        return next(status for version, status in versions.items() if int(version) == 2)

    def pinned() -> None:
        with app.app_context():
            server.predict("held", inputs("held", 4000), version=2)

    holder = threading.Thread(target=pinned)
    holder.start()
    _wait_until(lambda: version_2()["in_flight"] == 1)
    released.set()  # the queued copy is taken while version 2's one session is busy
    _wait_until(lambda: len(shadow_spans()) == 2)
    holder.join(60)
    runs["flask-busy"] = finish({"statuses": statuses}, shadows=2)
    print(json.dumps(runs))
    return 0


def _dropped(reader: Any) -> Counter[str]:
    """The ``inprocserve.shadow.dropped`` counter so far, by why (``inprocserve.shadow.result``)."""
    counts: Counter[str] = Counter()
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "inprocserve.shadow.dropped":
                    for point in metric.data.data_points:
                        counts[str(point.attributes["inprocserve.shadow.result"])] += int(point.value)
    return counts


def _wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not hold within 30 s")
        time.sleep(0.002)


urlpatterns: list[Any] = []

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
