"""The Flask app of the fleet tests: every worker serves one repository and follows its control file."""

from __future__ import annotations

import os

import numpy as np
from flask import Flask, request
from inprocserve_flask import Inprocserve, predict

import inprocserve


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.update(
        INPROCSERVE_REPOSITORY=os.environ["INPROCSERVE_TEST_REPOSITORY"],
        INPROCSERVE_MODEL_CONFIG=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()),
        INPROCSERVE_EAGER=os.environ.get("INPROCSERVE_TEST_EAGER") == "1",
        INPROCSERVE_ADMIN_TOKEN="s3cret",
        INPROCSERVE_CONTROL_INTERVAL_S=float(os.environ["INPROCSERVE_TEST_CONTROL_INTERVAL_S"]),
        INPROCSERVE_POLL_INTERVAL_S=float(os.environ.get("INPROCSERVE_TEST_POLL_INTERVAL_S") or 0) or None,
    )
    Inprocserve(app)

    @app.post("/score")
    def score() -> dict[str, object]:
        rows = np.asarray(request.get_json()["rows"], dtype=np.float32)
        result = predict("scale", {"x": rows})
        return {"y": result["y"].tolist(), "version": result.version, "pid": os.getpid()}

    return app


app = create_app()
