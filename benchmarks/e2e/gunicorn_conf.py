"""gunicorn settings of the end-to-end benchmark's Flask app: gthread workers, each warm before it accepts."""

from __future__ import annotations

import os
from typing import Any

from inprocserve.gunicorn import post_fork as inprocserve_post_fork
from inprocserve.gunicorn import post_worker_init as warm_inprocserve
from inprocserve.gunicorn import pre_fork as inprocserve_pre_fork

worker_class = "gthread"
accesslog = None
loglevel = "warning"


def post_worker_init(worker: Any) -> None:
    """Build the worker's sessions (inprocserve's, the naive one) before the first request."""
    warm_inprocserve(worker)
    import flask_app

    flask_app.warm()


def pre_fork(server: Any, worker: Any) -> None:
    """The pinned variants (``E2E_PIN_WORKERS=1``): docs/deployment.md's "One core per worker" hooks."""
    if os.environ.get("E2E_PIN_WORKERS") == "1":
        inprocserve_pre_fork(server, worker)


def post_fork(server: Any, worker: Any) -> None:
    if os.environ.get("E2E_PIN_WORKERS") == "1":
        inprocserve_post_fork(server, worker)
