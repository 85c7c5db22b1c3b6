"""A fraud-scoring endpoint in a small Flask app, served with inprocserve.

    cd examples/flask_fraud && python build_models.py    # trains the models into ./models once
    FRAUD_MODELS=models FRAUD_ADMIN_TOKEN=change-me \
        gunicorn -c gunicorn.conf.py --preload -w 2 --threads 16 -b 127.0.0.1:8000 app:app

The master only checks the models (INPROCSERVE_EAGER); each worker builds and warms its own sessions in
gunicorn's post_worker_init hook, before it takes traffic. With FRAUD_ADMIN_TOKEN set, the admin endpoints
(switch, rollback, canary, kill, resume, reload) move every worker at once through the repository's
control file.

Traces go to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set (Jaeger: see docs/observability.md), else to
the console (FRAUD_TRACE_CONSOLE=0 turns that off; the demo in run.py does, to keep its summary readable).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
from flask import Flask, jsonify, request
from inprocserve_flask import Inprocserve, predict, server


def configure_tracing() -> None:
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") and os.environ.get("FRAUD_TRACE_CONSOLE", "1") == "0":
        return
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": "fraud-api"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    else:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def create_app() -> Flask:
    configure_tracing()
    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = os.environ.get("FRAUD_MODELS", str(Path(__file__).parent / "models"))
    app.config["INPROCSERVE_TIMEOUT_S"] = 2.0  # a scoring call never waits longer than this
    app.config["INPROCSERVE_EAGER"] = True  # check here (the master), build and warm in each worker
    app.config["INPROCSERVE_ADMIN_TOKEN"] = os.environ.get("FRAUD_ADMIN_TOKEN")
    Inprocserve(app)

    @app.post("/score")
    def score() -> Any:
        """Score a list of transactions: {"transactions": [[8 features], ...]}; the user comes from
        the X-User-Id header, so canary assignment is sticky per user."""
        rows = np.asarray(request.get_json(force=True)["transactions"], dtype=np.float32)
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
        return jsonify(
            pid=os.getpid(), shadow=status["shadow"], rollout=status["rollout"], stable=status["stable_version"]
        )

    return app


app = create_app()
