"""A small Flask app served by gunicorn in the tests: a model repository from the environment."""

from __future__ import annotations

import os

import numpy as np
from flask import Flask, request
from inprocserve_flask import Inprocserve, predict


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["INPROCSERVE_REPOSITORY"] = os.environ["INPROCSERVE_TEST_REPOSITORY"]
    Inprocserve(app)

    @app.post("/score")
    def score() -> dict[str, object]:
        rows = np.asarray(request.get_json()["rows"], dtype=np.float32)
        result = predict("scale", {"x": rows})
        return {"y": result["y"].tolist(), "version": result.version, "pid": os.getpid()}

    return app


app = create_app()
