"""Start a throwaway ``redis-server`` on a loopback port with its files in a temporary folder.

For the example and its test only: no persistence, bound to 127.0.0.1, gone when the ``with`` block ends.
In production point the consumers at your own Redis (with AOF persistence: see docs/deployment.md).
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisNotInstalledError", "RedisServer", "die_with_parent"]


_ATTEMPTS = 3


class RedisNotInstalledError(RuntimeError):
    """``redis-server`` is not on PATH."""


def die_with_parent() -> None:
    """``preexec_fn`` for children: on Linux, SIGTERM them when the process that started them dies.

    Without it, a demo or test killed with SIGKILL would leave its redis-server and consumers running.
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on ``127.0.0.1:port``; ``url`` is its ``redis://`` address.

    Not thread-safe: start and stop it from one thread. ``stop()`` is idempotent.
    """

    def __init__(self, *, start_timeout_s: float = 10.0) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisNotInstalledError(
                "redis-server is not installed: apt-get install redis-server (or make system-deps)"
            )
        self._folder = tempfile.TemporaryDirectory(prefix="inprocserve-redis-")
        log = Path(self._folder.name) / "redis.log"
        for attempt in range(1, _ATTEMPTS + 1):
            # Another process may bind the free port before redis-server does (it takes a number, not a
            # socket): it then exits at once, "Address already in use", and starts again on another port.
            self.port = _free_port()
            self.url = f"redis://127.0.0.1:{self.port}/0"
            self._process = subprocess.Popen(
                [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", self._folder.name,
                 "--save", "", "--appendonly", "no", "--logfile", str(log), "--daemonize", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=die_with_parent,
            )  # fmt: skip
            deadline = time.monotonic() + start_timeout_s
            while not self._answers():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            else:
                return
            output = log.read_text() if log.exists() else ""
            if self._process.poll() is None or "Address already in use" not in output or attempt == _ATTEMPTS:
                self.stop()
                tries = f" (the last of {_ATTEMPTS} ports tried)" if attempt > 1 else ""
                raise RuntimeError(f"redis-server did not start on 127.0.0.1:{self.port}{tries}:\n{output[-2000:]}")
            log.unlink()

    def _answers(self) -> bool:
        """Whether this redis-server answers on the port (not another process's, that took the port first)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"INFO server\r\n")
                reply = b""
                while b"\r\n" not in reply.partition(b"process_id:")[2]:
                    chunk = sock.recv(4096)
                    if not chunk:
                        return False
                    reply += chunk
        except OSError:
            return False
        return reply.partition(b"process_id:")[2].partition(b"\r\n")[0] == str(self._process.pid).encode()

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait(timeout=10)
        self._folder.cleanup()

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()
