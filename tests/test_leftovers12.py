"""Leftovers of the twelfth review: switch() reading the ``<model>.stable`` flag once, for its judgement and its
record; a second Ctrl-C as a stopped command exits; a remote call over ``https://`` that runs out of file
descriptors."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, VersionPolicy, _oip_client
from inprocserve._remote import RemoteBackend
from inprocserve.testing import build_mlp_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, wait_until
from .interruptible import measuring
from .test_cli_hardening import mlp
from .test_leftovers10b_compatibility import DIMS
from .test_remote_lifecycle import call_in_thread
from .test_remote_retries import FEEDS, Scripted, backend_for, backends, scripted, sockets
from .test_remotefix3 import TlsScripted, certificate, tls_backend, tls_scripted

__all__ = ["backends", "certificate", "mlp", "scripted", "tls_scripted"]  # (the fixtures, imported for pytest)


class _StableChangingFlags(inprocserve.InMemoryFlags):
    """``m.stable`` is the next of ``answers`` on each read once armed (its last one from then on): the flag
    changed by an operator between two reads."""

    def __init__(self, answers: list[int]) -> None:
        super().__init__({"m.stable": answers[0]})
        self.answers: list[int] = []
        self._next = answers

    def arm(self) -> None:
        self.answers = list(self._next)

    def _lookup(self, key: str) -> Any:
        if key == "m.stable" and self.answers:
            return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return super()._lookup(key)

    def _frozen_values(self) -> None:  # (every read goes to _lookup)
        return None


def test_a_switch_records_as_its_previous_version_the_one_it_judged_compatibility_against(
    repository: Path, make_server: ServerFactory
) -> None:
    # The flag sends requests to version 2; version 3 has its signature (version 1, the configured stable one,
    # another). The flag is changed to 1 as switch("m", 3) runs: it judged 3 against 2 (compatible), then read
    # the flag again for the version to record as the one it switched from, 1, which it never judged, and which
    # rollback() returned to. It now reads the flag once: judged against 2, and records 2.
    save_model(build_mlp_model(DIMS, input_name="x"), repository, "m", 1)
    for version in (2, 3):
        save_model(build_mlp_model(DIMS, seed=version, input_name="features"), repository, "m", version)
    flags = _StableChangingFlags([2, 1])
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1))
    server = make_server(
        repository, config=config, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, control_interval_s=None
    )
    flags.arm()
    server.switch("m", 3)
    assert server.rollback("m") == 2


# What the child runs, as `python -m inprocserve ...` or as the installed `inprocserve` command's script, held
# in its exit path (an atexit callback, run once main() returned: a process with servers to close is held
# there for tens of milliseconds, one whose clean-up hangs for good), which it says on stdout as it enters it
# (atexit runs its callbacks last registered first).
_ENTRIES = {
    "python -m": "runpy.run_module('inprocserve', run_name='__main__', alter_sys=True)",
    "installed command": "from inprocserve.__main__ import main; sys.argv[0] = 'inprocserve'; sys.exit(main())",
}


def _held_at_exit(entry: str, seconds: float) -> str:
    return (
        f"import atexit, runpy, sys, time; atexit.register(time.sleep, {seconds}); "
        f"atexit.register(print, 'exiting', flush=True); {_ENTRIES[entry]}"
    )


@pytest.mark.parametrize("entry", list(_ENTRIES))
@pytest.mark.parametrize("second", ["after its line", "as its exit hangs"])
def test_a_second_ctrl_c_as_a_stopped_quantize_exits_leaves_its_exit_status_and_its_one_line(
    mlp: Path, tmp_path: Path, second: str, entry: str
) -> None:
    """Ctrl-C pressed twice (an impatient user; a supervisor that sends SIGINT again): the first stops
    `quantize`, which says so in one line and exits 130; the second, as the process exits, ended it by the
    signal (exit status -2 where the interpreter had begun to finalize: its handler back to SIG_DFL) or with a
    KeyboardInterrupt traceback (before that), after its line; ignored there instead, a process whose exit hung
    could be ended by SIGKILL only. Now a second stop while it cleans up is ignored, and one in its exit path
    ends it at once by the signal, with nothing more said. (Seen once with one SIGINT under load, in
    tests/test_cli_hardening.py.)"""
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    held_s = 60.0 if second == "as its exit hangs" else 0.2
    command = [sys.executable, "-c", _held_at_exit(entry, held_s), "quantize", "--seconds", "60", str(mlp), str(target)]
    with measuring(command, target.parent) as process:
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None and process.stdout is not None
        line = process.stderr.readline()  # (said: it is exiting)
        if second == "as its exit hangs":
            assert process.stdout.readline() == "exiting\n"  # (its command returned: held in its exit path)
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    assert line == f"error: stopped by SIGINT before the quantized model was written; {target} was not written\n"
    # (130: it exited with its status; -2: a stop as it exits ended it by the signal, which a shell shows as 130)
    assert process.returncode in (130, -signal.SIGINT) and rest == "", (process.returncode, rest)
    assert list(target.parent.iterdir()) == []


def _connection_to(port: int) -> tuple[int, int]:
    """The descriptors of this process's two ends of its one connection to ``port``: the client's, the
    server's."""
    ends: dict[bool, int] = {}
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        with contextlib.suppress(OSError):
            if not os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                continue
            sock = socket.socket(fileno=fd)  # (its own object over that descriptor: detached, never closed)
            try:
                with contextlib.suppress(OSError):
                    peer, local = sock.getpeername(), sock.getsockname()
                    if port in (peer[1], local[1]):
                        ends[peer[1] == port] = fd
            finally:
                sock.detach()
    return ends[True], ends[False]


@contextlib.contextmanager
def _descriptors_used_up(below: int) -> Iterator[None]:
    """No file descriptor left to open (a soft ``RLIMIT_NOFILE`` of ``below``, the free ones under it held by
    ``/dev/null``): only one closed meanwhile under ``below`` can be opened again."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    held: list[int] = []
    resource.setrlimit(resource.RLIMIT_NOFILE, (below, hard))
    try:
        with contextlib.suppress(OSError):
            while True:
                held.append(os.open(os.devnull, os.O_RDONLY))
        yield
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_call_over_https_with_no_file_descriptor_left_says_so_and_leaks_no_socket(
    tls_scripted: TlsScripted, backends: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process out of file descriptors (EMFILE) whose call opens a connection: its kept-alive one, closed as
    stale, gives it the one descriptor for the socket, and none is left for the duplicate the watchdog holds
    through the TLS handshake. That failure was said as "cannot connect: the TLS handshake failed: Too many
    open files" (no handshake had begun: the server's TLS set-up was looked into), and the socket was left to
    the collector (a ``ResourceWarning``), one more descriptor held meanwhile. It is said as a connection
    that could not be opened, as a socket that cannot be made is, and the socket is closed."""
    backend = tls_backend(backends, tls_scripted, retries=0)
    client, server = _connection_to(tls_scripted.server_port)
    assert server > client  # (the server's end, closed after the client's, gives no descriptor under the limit)
    before = sockets()
    monkeypatch.setattr(_oip_client, "_IDLE_S", 0.0)  # the kept-alive connection is closed, a new one opened
    with _descriptors_used_up(below=client + 1), pytest.raises(inprocserve.RemoteUnavailableError) as refused:
        backend.run(backend.runners()[0], FEEDS, timeout_s=5)
    assert "cannot connect: Too many open files" in str(refused.value), refused.value
    assert "TLS" not in str(refused.value), refused.value
    assert sockets() < before  # (its kept-alive one closed; the new one too, not left to the collector)


def test_closing_the_backend_ends_a_call_waiting_for_a_free_connection_at_once(
    scripted: Scripted, backends: list[RemoteBackend]
) -> None:
    """One connection (``concurrency=1``), held by a call the server never answers; a second call waits for it
    (up to its 5 s) when the backend closes: the first ends at once, the second waited its whole timeout for a
    connection that was never coming back, then was told the backend "is closed"."""
    backend = backend_for(backends, scripted, retries=0, concurrency=1)
    scripted.script = ["hang"]
    holding, _ = call_in_thread(lambda: backend.run(backend.runners()[0], FEEDS, timeout_s=5))
    wait_until(lambda: scripted.posts == 1)
    waiting, errors = call_in_thread(lambda: backend.run(backend.runners()[0], FEEDS, timeout_s=5))
    time.sleep(0.2)  # (waiting for the connection by now)
    closed_at = time.monotonic()
    backend.close()
    for caller in (holding, waiting):
        caller.join(timeout=20)
    assert time.monotonic() - closed_at < 2.0  # not the 5 s its wait had left (a loose bound: a busy host)
    (error,) = errors
    assert isinstance(error, inprocserve.ServerClosedError), error
    assert scripted.posts == 1
