"""The Flask app that test_gunicorn_hostile_clients.py serves under gunicorn: the plug-in's endpoints, admin
token, status page and Open Inference Protocol on, a model repository from the environment."""

from __future__ import annotations

import os

from flask import Flask
from inprocserve_flask import Inprocserve

TOKEN = "hostile-clients-token"

app = Flask(__name__)
app.config.update(
    INPROCSERVE_REPOSITORY=os.environ["INPROCSERVE_TEST_REPOSITORY"],
    INPROCSERVE_ADMIN_TOKEN=TOKEN,
    INPROCSERVE_STATUS_PAGE=True,
    INPROCSERVE_V2_PROTOCOL=True,
)
Inprocserve(app)
