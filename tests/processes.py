"""Stopping the server processes tests start (gunicorn masters and the like), as a deploy does."""

from __future__ import annotations

import signal
import subprocess
from typing import Any


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGTERM (a deploy's stop), then SIGKILL if it has not exited within ``timeout_s``; always reaped, so a
    test that failed half-way leaves no server behind it."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
