"""A real gunicorn over loopback, followed through the signals docs/deployment.md names: the pieces the Flask and
Django lifecycle tests share (each starts its own app)."""

from __future__ import annotations

import ctypes
import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ANSWER = [[2.0, 4.0, 6.0, 8.0]]  # the scale model (y = 2 x), version 1
WORKERS = 2

T = TypeVar("T")


def until(check: Callable[[], T | None], what: str, log: Path, seconds: float = 60.0) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {seconds}s:\n{log.read_text(errors='replace')}")


def children(pid: int) -> set[int]:
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:  # (gone)
        return set()


def alive(pid: int) -> bool:
    """Running, not a zombie (a master the binary upgrade left is no child of this process: init reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def die_with_pytest() -> None:
    """``preexec_fn`` of each master: SIGTERM when the pytest process that started it dies, even by SIGKILL or a
    CI job's SIGTERM, which run no teardown (the master runs in a session of its own, so nothing else stops it:
    it served on, workers and all, on its reserved port)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Gunicorn:
    """A gunicorn master over loopback, followed across a binary upgrade (USR2), which hands the server to a
    new master, a child of the old one."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.master = process.pid

    def answer(self) -> dict[str, Any] | None:
        """One request's answer when it is the model's own (200, version 1); else None."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/score", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body: dict[str, Any] = json.loads(response.read())
        except (OSError, ValueError):  # (refused, reset, a 5xx: urllib's HTTPError is an OSError)
            return None
        return body if body.get("version") == 1 and body.get("y") == ANSWER else None

    def workers(self) -> set[int]:
        return children(self.master)

    def answered_by_a_worker_of(self, generation: Callable[[], set[int]]) -> dict[str, Any] | None:
        body = self.answer()
        return body if body is not None and body["pid"] in generation() else None

    def settled(self, count: int = WORKERS) -> set[int]:
        """The workers, once there are ``count`` (those a reload or a scale-down stopped have exited)."""
        return until(lambda: len(pids := self.workers()) == count and pids, f"{count} workers", self.log)

    def check(self, event: str) -> None:
        assert alive(self.master), f"the master died at {event}:\n{self.log.read_text(errors='replace')}"
        text = self.log.read_text(errors="replace")
        for bad in ("Traceback", "Worker failed to boot", "Exception"):
            assert bad not in text, f"{bad!r} in the log at {event}:\n{text}"
