"""Do inprocserve's spans nest under the request spans of a Flask app instrumented with FlaskInstrumentor?

    python docs/otel/flask_check.py MODELS

MODELS holds ``busy`` version 1: ``x`` float32 ``[batch, 512]`` and ``index`` int64 ``[batch]`` in, slow
enough per row that a 4000-row request keeps the model's one session busy for a while (the model that
tests/conftest.py's ``build_busy_model`` builds). Needs Flask, inprocserve-flask, opentelemetry-sdk and
opentelemetry-instrumentation-flask. The app is served by werkzeug over loopback; one 4000-row request keeps
the session busy while six one-row requests arrive, so those six are merged into one batch. Prints one JSON
object: each request's status and every finished span (name, kind, ids, parent id and linked span ids).
Run by tests/test_otel_instrumentation.py; used for docs/otel-instrumentation.md.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from span_rows import span_rows  # (docs/otel/, beside this script)


def main(argv: list[str]) -> int:
    import numpy as np
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)

    # the user's app: the Flask plug-in, FlaskInstrumentor, and a view that calls the plug-in's predict
    from flask import Flask, request
    from inprocserve_flask import Inprocserve, predict, server
    from opentelemetry.instrumentation.flask import FlaskInstrumentor

    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = argv[0]
    Inprocserve(app)
    FlaskInstrumentor().instrument_app(app)

    @app.post("/score")
    def score() -> Any:
        rows = int(request.json["rows"])
        inputs = {"x": np.ones((rows, 512), np.float32), "index": np.zeros(rows, np.int64)}
        result = predict("busy", inputs)
        return {"rows": len(result["y"]), "version": result.version}

    # what drives it: werkzeug over loopback, requests from threads
    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # (no line per request)
    http = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{http.server_port}/score"

    def post(rows: int) -> int:
        body = json.dumps({"rows": rows}).encode()
        call = urllib.request.Request(url, body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(call, timeout=60) as response:
            return int(response.status)

    def serving() -> dict[str, Any]:
        with app.app_context():
            versions = server.status()["models"]["busy"]["versions"]
        return next(v for v in versions.values() if v.get("serving"))

    def seven_requests() -> tuple[list[int], bool]:
        """The statuses, and whether all six small requests queued while the big one ran."""
        with ThreadPoolExecutor(8) as threads:
            big = threads.submit(post, 4000)  # keeps the one session busy ...
            _wait_until(lambda: serving()["in_flight"] == 1 and serving()["queued_rows"] == 0)
            small = [threads.submit(post, 1) for _ in range(6)]  # ... while these queue behind it
            _wait_until(lambda: serving()["queued_rows"] == 6 or big.done())
            merged = not big.done()
            return [big.result(60)] + [future.result(60) for future in small], merged

    for _attempt in range(3):  # (on a loaded machine the big request may end before all six have queued)
        exporter.clear()
        statuses, merged = seven_requests()
        if merged:
            break
    http.shutdown()
    # the batch span ends after its callers have their answers
    _wait_until(lambda: any(span.name == "inprocserve.batch" for span in exporter.get_finished_spans()))
    print(json.dumps({"statuses": statuses, "spans": span_rows(exporter.get_finished_spans())}))
    return 0


def _wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError("the condition did not hold within 30 s")
        time.sleep(0.002)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
