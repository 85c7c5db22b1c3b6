"""tests/ports.py: a reserved port refuses connections while no server listens on it, no other process can
take it, and a server told its number starts on it, and starts again once stopped."""

from __future__ import annotations

import errno
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from .ports import reserved_port


def serve(port: int) -> subprocess.Popen[bytes]:
    """``python -m http.server`` on ``port`` (it binds it, as redis-server or Prometheus do), once it answers."""
    child = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 30
    while True:  # bounded: until it answers, it exits, or 30 s pass
        if child.poll() is not None:
            raise AssertionError(f"the server exited: {child.communicate()[1].decode()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5):
                return child
        except (urllib.error.URLError, ConnectionError):
            assert time.monotonic() < deadline, f"nothing answered on {port}"
            time.sleep(0.05)


def test_a_reserved_port_is_refused_and_kept_from_others_until_a_server_told_its_number_listens() -> None:
    port = reserved_port()
    for _ in range(2):  # started, stopped, started again on the same port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with socket.socket() as other, pytest.raises(OSError) as taken:  # another process's "is it free?"
            other.bind(("127.0.0.1", port))
        assert taken.value.errno == errno.EADDRINUSE
        server = serve(port)
        server.terminate()
        server.communicate(timeout=30)
