"""Server processes of the end-to-end benchmark: start, wait until ready, pause, resume, stop.

Each server runs in its own session (process group), so that stopping it reaches its workers too, and so
that a server not under measurement can be paused with SIGSTOP: LitServe's inference loop polls its queue
every millisecond even when idle, which would take CPU from the variants measured next to it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    """One server (and its workers) on ``127.0.0.1:port``; ``stop()`` is idempotent. Not thread-safe."""

    def __init__(
        self, name: str, command: Sequence[str], *, port: int, env: dict[str, str], cwd: Path, log: Path
    ) -> None:
        self.name = name
        self.port = port
        self.log = log
        self._log_file = log.open("wb")
        self._process = subprocess.Popen(
            list(command), env=env, cwd=cwd, stdout=self._log_file, stderr=subprocess.STDOUT, start_new_session=True
        )
        self._paused = False

    @property
    def pid(self) -> int:
        """The server's own process (gunicorn's master, uvicorn's supervisor)."""
        return self._process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, path: str, *, timeout_s: float = 180.0) -> None:
        """Poll ``GET path`` until it answers 200; raise with the server's log if it exits or times out."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self._process.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + path, timeout=5) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        self._log_file.flush()
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def pause(self) -> None:
        if not self._paused and self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._paused:
            os.killpg(self._process.pid, signal.SIGCONT)
            self._paused = False

    def alive(self) -> bool:
        return self._process.poll() is None

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._process.poll() is None:
            self.resume()
            try:
                os.killpg(self._process.pid, signal.SIGTERM)
                self._process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=timeout_s)
            except ProcessLookupError:
                pass
        # workers left behind in the group after the leader exited
        try:
            os.killpg(self._process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log_file.close()
