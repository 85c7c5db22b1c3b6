"""The Open Inference Protocol server of benchmarks/remote.py: the Flask plug-in under gunicorn, serving the
repository named by INPROCSERVE_BENCH_REPOSITORY."""

from __future__ import annotations

import os

from flask import Flask
from inprocserve_flask import Inprocserve

app = Flask(__name__)
app.config.update(INPROCSERVE_REPOSITORY=os.environ["INPROCSERVE_BENCH_REPOSITORY"], INPROCSERVE_V2_PROTOCOL=True)
Inprocserve(app)
