"""A fraud-scoring endpoint in a small Flask app, served with inprocserve.

    cd examples/flask_fraud && python build_models.py    # trains the models into ./models once
    FRAUD_MODELS=models FRAUD_ADMIN_TOKEN=$(openssl rand -hex 32) \
        gunicorn -c gunicorn.conf.py --preload -w 2 --threads 16 -b 127.0.0.1:8000 app:app

Bound to loopback on purpose: serve it behind a reverse proxy that buffers whole requests (nginx does by
default) with header and body timeouts. gunicorn gives a connection a thread from its first byte until its
request is complete, with no time limit: 40 connections that send half a request and stop (a slow-client
attack, or broken mobile networks) hold all 32 threads of the two workers, and every other request waits
(measured: a normal /score still unanswered after 40 s).

The master only checks the models (INPROCSERVE_EAGER); each worker builds and warms its own sessions in
gunicorn's post_worker_init hook, before it takes traffic. With FRAUD_ADMIN_TOKEN set (32 characters or
more: it guards model switches), the admin endpoints (switch, rollback, canary, kill, resume, reload) move
every worker at once through the repository's control file.

Traces go to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (Jaeger: see docs/observability.md); to the
console only with FRAUD_TRACE_CONSOLE=1 (some 80 lines a request: for a look during development). Either
needs the OpenTelemetry SDK and exporter: pip install "./[otel]" from the clone's root.

Bad requests get a 400 with a JSON ``error`` naming the expected shape; bodies over MAX_BODY_BYTES a 413,
refused unread when their Content-Length says so, and once MAX_BODY_BYTES of them are read when sent chunked.
Flask's own answers (an unknown path, a wrong method, an uncaught error) are JSON too.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, jsonify, request
from inprocserve_flask import Inprocserve, predict, server
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

FEATURES = 8
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a larger value would reach the model as infinity
MAX_ROWS = 4096
"""Most transactions per request."""
MAX_BODY_BYTES = 2 * 1024 * 1024
"""4096 rows of 8 numbers take 0.8 MiB of compact JSON and 1.3 MiB indented; a larger body is refused (413),
not parsed."""
MIN_TOKEN_CHARS = 32
SHAPE = f'expected {{"transactions": [[{FEATURES} numbers], ...]}} with 1 to {MAX_ROWS} rows of finite numbers'


class BadRequest(ValueError):
    """The body is not what /score takes; the message says what is wrong."""


def configure_tracing() -> None:
    otlp = bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    if not otlp and os.environ.get("FRAUD_TRACE_CONSOLE", "0") != "1":
        return
    from opentelemetry import trace

    try:  # the otel extra: the example's own install (examples/README.md) has the API alone
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

        if otlp:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError as exc:
        raise SystemExit(
            f"traces need the OpenTelemetry SDK ({exc}): from the clone's root, "
            'pip install "./[otel]", or unset OTEL_EXPORTER_OTLP_ENDPOINT and FRAUD_TRACE_CONSOLE'
        ) from None

    provider = TracerProvider(resource=Resource.create({"service.name": "fraud-api"}))
    if otlp:
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def admin_token() -> str | None:
    """FRAUD_ADMIN_TOKEN, refused at start-up when short enough to guess (it can switch the model)."""
    token = os.environ.get("FRAUD_ADMIN_TOKEN") or None
    if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        raise SystemExit(
            f"FRAUD_ADMIN_TOKEN has {len(token.strip())} characters, fewer than {MIN_TOKEN_CHARS}: "
            "use FRAUD_ADMIN_TOKEN=$(openssl rand -hex 32)"
        )
    return token


def read_body() -> bytes:
    """The request body; RequestEntityTooLarge (413) past MAX_BODY_BYTES.

    MAX_CONTENT_LENGTH is one byte more than the limit, and the body is measured here: Werkzeug refuses a
    Content-Length over MAX_CONTENT_LENGTH unread, but a chunked body (no Content-Length) it only cuts
    short, silently, at that length. Cut at the limit itself, an oversized chunked body was parsed as
    truncated JSON: a 400 "not JSON" that hid the real problem.
    """
    body = request.get_data(cache=False)
    if len(body) > MAX_BODY_BYTES:
        raise RequestEntityTooLarge()
    return body


def _refuse_constant(name: str) -> float:
    raise BadRequest(f"{name} is not a number")  # json.loads would take NaN and Infinity


def _feature(value: float) -> bool:
    """Whether a value is a feature the float32 model takes: finite, and finite still as a float32."""
    try:
        return math.isfinite(value) and abs(value) <= FLOAT32_MAX
    except OverflowError:  # an integer of hundreds of digits: no float holds it
        return False


def parse_transactions(body: bytes) -> np.ndarray:
    """The rows of a /score body, as float32 [rows, FEATURES]; BadRequest for anything else."""
    try:  # RecursionError too: deeply nested JSON exhausts the parser's stack
        document = json.loads(body, parse_constant=_refuse_constant)
    except BadRequest:
        raise
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not JSON ({type(exc).__name__})") from None
    rows = document.get("transactions") if isinstance(document, dict) else None
    if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_ROWS:
        raise BadRequest(f"'transactions' is missing, not a list, or has more than {MAX_ROWS} rows")
    for index, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != FEATURES:
            raise BadRequest(f"row {index} is not a list of {FEATURES} numbers")
        for value in row:  # bool is an int to Python, not a feature value
            if isinstance(value, bool) or not isinstance(value, int | float) or not _feature(value):
                raise BadRequest(f"row {index} holds {str(value)[:40]!r}: numbers only, finite, within float32's range")
    return np.asarray(rows, dtype=np.float32)


def create_app() -> Flask:
    configure_tracing()
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1  # one more: read_body tells a chunked body over it
    app.config["INPROCSERVE_REPOSITORY"] = os.environ.get("FRAUD_MODELS", str(Path(__file__).parent / "models"))
    app.config["INPROCSERVE_TIMEOUT_S"] = 2.0  # a scoring call never waits longer than this
    app.config["INPROCSERVE_EAGER"] = True  # check here (the master), build and warm in each worker
    app.config["INPROCSERVE_ADMIN_TOKEN"] = admin_token()
    Inprocserve(app)

    @app.errorhandler(BadRequest)
    def bad_request(error: BadRequest) -> Any:
        return jsonify(error=f"{error}; {SHAPE}"), 400

    @app.errorhandler(RequestEntityTooLarge)
    def too_large(error: RequestEntityTooLarge) -> Any:
        return jsonify(error=f"the body is over {MAX_BODY_BYTES} bytes; {SHAPE}"), 413

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:
        """Flask's own answers (404 unknown path, 405 wrong method, 500 uncaught error) as JSON, like every
        other answer of this API, not HTML pages; their headers (405's Allow) are kept."""
        response = error.get_response()
        response.set_data(json.dumps({"error": error.description}))
        response.content_type = "application/json"
        return response

    @app.post("/score")
    def score() -> Any:
        """Score a list of transactions: {"transactions": [[8 features], ...]}; the user comes from
        the X-User-Id header, so canary assignment is sticky per user."""
        rows = parse_transactions(read_body())  # 413 past MAX_BODY_BYTES
        result = predict("fraud", {"transactions": rows})
        return jsonify(
            probability=result["probability"][:, 1].round(4).tolist(),
            version=result.version,
            variant=result.variant,
            request_id=result.request_id,
        )

    @app.get("/stats")
    def stats() -> Any:
        """This worker's view of the model (for the demo's summary across workers)."""
        status = server.status()["models"]["fraud"]
        # answering_version: the stable version that config.toml or the last switch names.
        return jsonify(
            pid=os.getpid(), shadow=status["shadow"], rollout=status["rollout"], stable=status["answering_version"]
        )

    return app


app = create_app()
