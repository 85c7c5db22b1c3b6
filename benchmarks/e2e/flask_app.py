"""The Flask app of the end-to-end benchmark, one variant per gunicorn process (``E2E_VARIANT``).

    E2E_VARIANT=inprocserve E2E_MODEL=mlp-small E2E_REPOSITORY=/tmp/models \
        gunicorn -c benchmarks/e2e/gunicorn_conf.py --preload -w 2 --threads 16 flask_app:app

``POST /predict`` takes ``{"x": [[...features]]}`` and answers ``{"y": [[...]]}``; the three variants differ
only in how the view gets ``y``:

* ``inprocserve`` — the Flask extension, ``inprocserve_flask.predict`` (built in each worker after the fork
  by ``post_worker_init``, as in examples/flask_fraud);
* ``naive`` — one ``onnxruntime.InferenceSession`` per worker process with onnxruntime's default options,
  every request thread calling ``run`` on it;
* ``remote`` — an HTTP call over loopback to an out-of-process model server (``E2E_REMOTE_URL``), through one
  thread-safe keep-alive urllib3 pool per worker process (as many connections as the worker has threads).

``GET /ping`` answers without touching a model: the cost of the HTTP stack alone. ``GET /sdk`` names the
worker's OpenTelemetry providers (e2e/sdk.py).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import numpy as np
from flask import Flask, Response, request
from naive import naive_session
from sdk import install_if_asked, providers

install_if_asked()  # http_e2e.py --otel: the OpenTelemetry SDK, as a service installs it

VARIANT = os.environ["E2E_VARIANT"]
MODEL = os.environ["E2E_MODEL"]
REPOSITORY = os.environ["E2E_REPOSITORY"]
THREADS = int(os.environ.get("E2E_THREADS", "16"))

_lock = threading.Lock()
_state: dict[str, Any] = {}


def _remote_pool() -> Any:
    pool = _state.get("pool")
    if pool is None:
        with _lock:
            pool = _state.get("pool")
            if pool is None:
                import urllib3

                pool = urllib3.connection_from_url(os.environ["E2E_REMOTE_URL"], maxsize=THREADS, block=True)
                _state["pool"] = pool
    return pool


def warm() -> None:
    """Build this worker's model state before it takes traffic (called from gunicorn's post_worker_init)."""
    x = np.zeros((1, _features()), np.float32)
    if VARIANT == "naive":
        naive_session().run(None, {"x": x})
    elif VARIANT == "remote":
        _remote_pool()


def _features() -> int:
    return {"mlp-small": 256, "mlp-large": 1024}[MODEL]


def create_app() -> Flask:
    app = Flask(__name__)
    if VARIANT == "inprocserve":
        from inprocserve_flask import Inprocserve, predict

        app.config["INPROCSERVE_REPOSITORY"] = REPOSITORY
        app.config["INPROCSERVE_EAGER"] = True  # checked in the master, built and warmed in each worker
        Inprocserve(app)

        def infer(x: np.ndarray) -> Any:
            return predict(MODEL, {"x": x})["y"]

    elif VARIANT == "naive":

        def infer(x: np.ndarray) -> Any:
            return naive_session().run(None, {"x": x})[0]

    elif VARIANT == "remote":
        path = f"/predict/{MODEL}"

        def infer(x: np.ndarray) -> Any:
            answer = _remote_pool().request(
                "POST",
                path,
                body=json.dumps({"x": x.tolist()}).encode(),
                headers={"Content-Type": "application/json"},
                retries=False,
            )
            if answer.status != 200:
                raise RuntimeError(f"model server answered {answer.status}: {answer.data[:200]!r}")
            return np.asarray(json.loads(answer.data)["y"], np.float32)

    else:
        raise SystemExit(f"E2E_VARIANT must be inprocserve, naive or remote, not {VARIANT!r}")

    @app.post("/predict")
    def score() -> Response:
        x = np.asarray(request.get_json(force=True)["x"], dtype=np.float32)
        y = infer(x)
        return Response(json.dumps({"y": y.tolist()}), mimetype="application/json")

    @app.get("/ping")
    def ping() -> Response:
        return Response('{"ok": true}', mimetype="application/json")

    @app.get("/sdk")
    def sdk() -> Response:
        return Response(providers(), mimetype="application/json")

    return app


app = create_app()
