"""The Flask app of the uWSGI tests, loaded once in uWSGI's master (its default, preforking after load)."""

from __future__ import annotations

import os
import sys

import numpy as np
from flask import Flask, request
from inprocserve_flask import Inprocserve, predict

from inprocserve import _fork

app = Flask(__name__)
app.config.update(
    INPROCSERVE_REPOSITORY=os.environ["INPROCSERVE_TEST_REPOSITORY"],
    INPROCSERVE_EAGER=True,
    INPROCSERVE_ADMIN_TOKEN="uwsgi-admin-token",
    INPROCSERVE_V2_PROTOCOL=True,
)
Inprocserve(app)
if os.environ.get("INPROCSERVE_TEST_WARM_IN_MASTER") == "1":
    Inprocserve.warm(app)  # the mistake: the master imports onnxruntime before forking its workers

_hooks_run_in: list[int] = []  # the pids in which the package's after-fork hooks ran
_fork.at_fork_in_child(lambda: _hooks_run_in.append(os.getpid()))


@app.get("/worker")
def worker() -> dict[str, object]:
    return {
        "pid": os.getpid(),
        "built": app.extensions["inprocserve"].started,
        "hooks_run": _hooks_run_in.count(os.getpid()),
        "onnxruntime": "onnxruntime" in sys.modules,
    }


@app.post("/score")
def score() -> dict[str, object]:
    rows = np.asarray(request.get_json()["rows"], dtype=np.float32)
    return {"y": predict("scale", {"x": rows})["y"].tolist(), "pid": os.getpid()}
