"""gunicorn server hooks: warm every worker before it takes traffic.

In ``gunicorn.conf.py``::

    from inprocserve.gunicorn import post_worker_init  # noqa: F401

gunicorn calls ``post_worker_init`` in each worker after the app is loaded and before the worker accepts
connections, so a worker answers its first request with warm sessions. It runs the builders that the
Flask and Django plug-ins register in eager mode (and any registered with
:func:`inprocserve.build_after_fork`), in the worker, never in the master: the master process, which
forks the workers, must not import onnxruntime (a worker forked after it was imported hangs or aborts at
exit; inprocserve logs an error at such a fork).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from ._prefork import has_builders, warm_worker

__all__ = ["post_worker_init"]

logger = logging.getLogger(__name__)


def post_worker_init(worker: Any) -> None:
    """Build and warm this worker's inprocserve servers now (a gunicorn ``post_worker_init`` hook)."""
    if not has_builders():
        # The hook alone builds nothing: it logged "servers warm in 0.00s", and each worker built its server
        # at its first request after all (cold, and every request that came meanwhile waited for it).
        logger.warning(
            "worker %d: inprocserve's post_worker_init hook found no server to build: set INPROCSERVE_EAGER = "
            "True (Flask) or INPROCSERVE['EAGER'] = True (Django), or register yours with "
            "inprocserve.build_after_fork(...); each worker builds its server at its first request meanwhile",
            os.getpid(),
        )
        return
    started = time.perf_counter()
    errors = warm_worker()
    if errors:
        logger.error("worker %d: inprocserve warm-up failed: %s", os.getpid(), "; ".join(errors))
    else:
        logger.info("worker %d: inprocserve servers warm in %.2fs", os.getpid(), time.perf_counter() - started)
