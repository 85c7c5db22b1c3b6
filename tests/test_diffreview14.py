"""Review of the second round of one day's work (perf2's batch forms, the CLI's stop signals, the remote
client's interrupted calls): behaviour that must not have changed."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.connectionpool

from inprocserve import _loop_batching, _oip_client
from inprocserve._rollout import Router

from .conftest import ServerFactory, version_status
from .interruptible import interruptible
from .test_cli_hardening import mlp
from .test_diffreview13 import answered_after_an_interrupted_call, answering_each_request, answers_ok
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_loophard import BOUND_S, _merged_server, _outcome, _rows, _settled
from .test_remote_retries import raised_within

__all__ = ["answers_ok", "mlp"]  # (the fixtures, imported for pytest)


def test_a_call_interrupted_as_urllib3_returns_its_answer_gives_its_connection_back(answers_ok: int) -> None:
    """Ctrl-C's KeyboardInterrupt or gevent's Timeout raised in urllib3's own code once it has the answer (its
    response holds the connection: the Retry-After check, a Python call where a signal handler runs) never
    reached request()'s clean-up (d96cdfd covers the call of _read only): the pool's slot was lost for good,
    and with max_connections=1 every later call waited its whole timeout and failed, 'no free connection'."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen
    answered_line = line_of(urlopen, "redirect_location = redirect and") - 1  # (urllib3 has the answer there)
    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == 200
        with pytest.raises(Interrupted), interrupted_at(urlopen.__code__, after_line=answered_line):
            client.request("GET", "/v2", timeout_s=5.0)
        answered, took_s = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
        again, _ = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
    finally:
        client.close()
    assert not isinstance(answered, BaseException), answered
    assert not isinstance(again, BaseException), again  # (one slot given back, the pool's one connection)
    assert took_s < 0.5


@pytest.fixture
def answers_a_long_error() -> Iterator[int]:
    """A port whose server answers every request of a kept-alive connection with a 500 whose body (256 KiB) is
    longer than the start of it that an error answer has read (its message): its connection is dropped."""
    body = b"x" * 2**18
    yield from answering_each_request(
        b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )


def test_a_call_interrupted_as_its_read_cleans_up_gives_its_connection_back(answers_a_long_error: int) -> None:
    """The same, as _read's clean-up begins (its ``finally``: the watch ended, a Python call where a signal
    handler runs) on an error answer read in part, before its connection was dropped: d96cdfd's note that the
    clean-up had begun told request() to leave it to _read, which never got to it, and the slot was lost for
    good: every later call waited its whole timeout and failed with 'no free connection'."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_a_long_error}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    read = _oip_client.HttpClient._read
    cleaning_up = line_of(read, "finally:")  # (interrupted at the clean-up's first call)
    answered, took_s, _ = answered_after_an_interrupted_call(
        client, interrupted_at(read.__code__, after_line=cleaning_up + 1), status=500
    )
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5


def test_a_call_interrupted_as_it_waits_for_a_free_connection_adds_no_slot(answers_ok: int) -> None:
    """A call waiting for the pool's one connection, held by another call, is interrupted (Ctrl-C, gevent's
    ``Timeout``) in its wait: urllib3's clean-up put a free slot back for it, though it had taken none, and the
    pool held two from then on (``max_connections=1``: two calls in flight to a server sized for one)."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    get = _oip_client._Slots.get
    waiting = line_of(get, "self.not_empty.wait(left)") - 1  # (interrupted as its wait begins)
    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == 200
        taken = client._slots.get(timeout=5.0)  # (another call's: the one slot in use)
        with pytest.raises(Interrupted), interrupted_at(get.__code__, after_line=waiting):
            client.request("GET", "/v2", timeout_s=5.0)
        free = client._slots.qsize()  # (while the other call holds the one slot)
        if not free:
            client._slots.put_nowait(taken)
        assert free == 0
    finally:
        client.close()


def test_merged_tasks_answered_before_the_loop_is_interrupted_are_each_recorded(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two tasks' requests run merged on a worker and the loop's thread answers both; then a signal handler
    raises (gevent's ``Timeout``, Ctrl-C) as the batch's bookkeeping after the answers begins (the router's note
    of them). Each task got its answer and is counted on the status page. (With the batch's latencies recorded
    together there, 47d9b33, one interruption dropped the whole batch's records: up to 32 tasks under load,
    ``(0, 0) == (2, 0)``; they are recorded task by task again, as the loop goes.)"""
    server = _merged_server(make_server, scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    before = version_status(server, "scale")["latency_ms"]

    async def main() -> list[Any]:
        calls = [asyncio.ensure_future(server.apredict("scale", x)) for x in _rows(1.0, 2.0)]
        with interrupted_at(Router.served_many.__code__):
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    got = [_outcome(result) for result in asyncio.run(main())]
    assert got == [2.0, 4.0], got
    _settled(server)
    latency = version_status(server, "scale")["latency_ms"]
    assert (latency["count"] - before["count"], latency["errors"] - before["errors"]) == (2, 0)


# A program of the user's that runs a command through the entry point's function and goes on after it (its own
# clean-up, further commands): it says, once the command returned, what a Ctrl-C would do to it now.
_USERS_PROGRAM = """
import signal, sys
from inprocserve.__main__ import main
status = main(sys.argv[1:])
print(status, signal.getsignal(signal.SIGINT) is signal.default_int_handler, flush=True)
"""


def test_a_users_program_that_runs_a_stopped_command_keeps_its_ctrl_c(mlp: Path, tmp_path: Path) -> None:
    """main() took any process whose ``__main__`` holds it for the installed command (1d8f409), whose process
    ends as it returns: a program of the user's that imported it so and ran a command that Ctrl-C stopped was
    left with SIG_DFL on SIGINT, SIGTERM and SIGHUP (06edfd0), and the next Ctrl-C killed it outright, its own
    clean-up (``finally``, ``atexit``) skipped. Its handlers are put back, as main()'s docstring says of "a
    program of the user's"."""
    program = tmp_path / "users_program.py"
    program.write_text(_USERS_PROGRAM)
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    command = [sys.executable, str(program), "quantize", "--seconds", "60", str(mlp), str(target)]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
    ) as process:
        try:
            deadline = time.monotonic() + 45
            while not any(target.parent.iterdir()) and time.monotonic() < deadline and process.poll() is None:
                time.sleep(0.05)
            process.send_signal(signal.SIGINT)
            said, _ = process.communicate(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
    assert said == "130 True\n", said
