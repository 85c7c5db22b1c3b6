"""gunicorn settings of the fleet tests: the master reports what it imported, workers warm before traffic."""

from __future__ import annotations

import json
import os
import sys
from typing import Any

if os.environ.get("INPROCSERVE_TEST_HOOK") == "1":
    from inprocserve.gunicorn import post_worker_init  # noqa: F401 - the documented hook


def _report(event: str) -> None:
    """Append what the master process holds: it must never have imported onnxruntime."""
    entry = {
        "event": event,
        "pid": os.getpid(),
        "onnxruntime": "onnxruntime" in sys.modules,
        "onnx": "onnx" in sys.modules,
    }
    with open(os.environ["INPROCSERVE_TEST_MASTER_REPORT"], "a") as report:
        report.write(json.dumps(entry) + "\n")


def when_ready(server: Any) -> None:
    _report("ready")


def on_reload(server: Any) -> None:
    _report("reload")


def on_exit(server: Any) -> None:
    _report("exit")
