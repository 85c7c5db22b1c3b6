"""The server processes tests start (gunicorn masters and the like): kept apart while they run, and stopped as
a deploy stops them."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import subprocess
from collections.abc import MutableMapping
from typing import Any

NO_CONTROL_SOCKET = "--no-control-socket"


def gunicorn_has_control_socket() -> bool:
    """Whether the installed gunicorn opens a control socket (27.0 on; the pin allows 21, which refuses the flag)."""
    try:
        major = importlib.metadata.version("gunicorn").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 27


def keep_gunicorns_apart(environ: MutableMapping[str, str] = os.environ) -> None:
    """Start every gunicorn of the tests (each inherits ``environ``) without its control socket.

    gunicorn 27 opens one at ``~/.gunicorn/gunicorn.ctl``, one path per user, and each master unlinks and binds it
    again at its start and around every fork, taking it from the others: the gunicorns that parallel tests
    (``pytest -n 2``) start shared it. ``GUNICORN_CMD_ARGS`` reaches each, however its test builds its command;
    a test that keeps the socket (its own path) drops it from its child's environment."""
    args = environ.get("GUNICORN_CMD_ARGS", "")
    if gunicorn_has_control_socket() and NO_CONTROL_SOCKET not in args.split():
        environ["GUNICORN_CMD_ARGS"] = f"{args} {NO_CONTROL_SOCKET}".strip()


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGTERM (a deploy's stop), then SIGKILL if it has not exited within ``timeout_s``; always reaped, so a
    test that failed half-way leaves no server behind it."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
