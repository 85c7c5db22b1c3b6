"""The Flask app that waitress and granian serve in test_wsgi_servers.py: a repository from the environment.

``/score`` (model ``scale``) checks its body as docs/flask.md says a view should (a JSON object with ``rows``;
anything else a JSON 400), leaves the rows to the library (a wrong shape is its 400) and caps the body with
Flask's ``MAX_CONTENT_LENGTH`` (a larger one is a 413, answered as JSON). ``/mlp`` serves a model whose runs
take long enough for concurrent requests to queue behind them. ``/threads`` says what the process holds:
the library's threads, the Python stand-ins (``_DummyThread``) made for threads Python did not start (granian
calls the app from threads of its Rust runtime), and the callers its wake relay holds.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from flask import Flask, jsonify, request
from inprocserve_flask import Inprocserve, predict
from werkzeug.exceptions import HTTPException

MAX_BODY_BYTES = 64 * 1024


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = os.environ["INPROCSERVE_TEST_REPOSITORY"]
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    Inprocserve(app)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Any:  # Flask's own answers (413, 404, 405) as JSON too
        return jsonify({"error": error.name, "message": error.description}), error.code

    @app.post("/score")
    def score() -> Any:
        body = request.get_json(silent=True)  # None when the body is not JSON
        if not isinstance(body, dict) or "rows" not in body:
            return {"error": "bad_request", "message": 'expected {"rows": [[4 numbers], ...]}'}, 400
        result = predict("scale", {"x": body["rows"]})
        return {"y": result["y"].tolist(), "version": result.version, "pid": os.getpid(), **_thread_here()}

    @app.post("/mlp")
    def mlp() -> Any:  # (a model whose runs take long enough for requests to queue behind them)
        result = predict("mlp", {"x": request.get_json()["rows"]})
        return {"y": result["y"].tolist(), "pid": os.getpid()}

    @app.get("/threads")
    def threads() -> Any:
        from inprocserve._wake_relay import RELAY  # (its counts are there for tests)

        queued, waking = RELAY.counts()
        return {
            "pid": os.getpid(),
            **_thread_here(),
            "library": sorted(thread.name for thread in threading.enumerate() if thread.name.startswith("inprocserve")),
            # (stand-ins stay in threading's table for the life of the process: each names a thread that is not
            # Python's and asked threading.current_thread(), itself or through a call such as Thread.join)
            "dummies": sorted(thread.name for thread in threading.enumerate() if isinstance(thread, _DUMMY)),
            "os_threads": len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else None,
            "relay": {"queued": queued, "waking": waking, "taken_back": RELAY.places_taken_back},
        }

    return app


_DUMMY = threading._DummyThread  # type: ignore[attr-defined]


def _thread_here() -> dict[str, Any]:
    """The thread serving this request: its kernel id, and whether Python's threading module started it (read
    without threading.current_thread(), which makes a lasting stand-in for a thread it did not start)."""
    known = threading._active.get(threading.get_ident())  # type: ignore[attr-defined]
    return {"tid": threading.get_native_id(), "python_thread": known is not None and not isinstance(known, _DUMMY)}


app = create_app()
