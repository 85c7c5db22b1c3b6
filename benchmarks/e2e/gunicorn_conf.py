"""gunicorn settings of the end-to-end benchmark's Flask app: gthread workers, each warm before it accepts."""

from __future__ import annotations

from typing import Any

from inprocserve.gunicorn import post_worker_init as warm_inprocserve

worker_class = "gthread"
accesslog = None
loglevel = "warning"


def post_worker_init(worker: Any) -> None:
    """Build the worker's sessions (inprocserve's, the naive one) before the first request."""
    warm_inprocserve(worker)
    import flask_app

    flask_app.warm()
