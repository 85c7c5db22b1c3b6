"""Review of the remote client's connection slots (ce40bea, d96cdfd, 4a9b04a, e0674f0, dc943fe), the CLI's
entry point (c758a4f) and the loop's merged latencies (d6a711c): behaviour that must not have changed."""

from __future__ import annotations

import contextlib
import gc
import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3.connectionpool

from inprocserve import _oip_client

from .interruptible import measuring
from .test_cli_hardening import mlp
from .test_diffreview13 import answered_after_an_interrupted_call, answers_ok
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_remote_retries import raised_within, serving_each_connection

__all__ = ["answers_ok", "mlp"]  # (the fixtures, imported for pytest)


def test_a_call_interrupted_as_it_takes_its_slot_gives_it_back(answers_ok: int) -> None:
    """Ctrl-C's KeyboardInterrupt or gevent's Timeout raised just as a call took its slot (the pool's
    ``not_full.notify()``, a Python call where a signal handler runs) came before the slot was noted as held:
    urllib3's clean-up gave a free slot back for the call, which dc943fe refused as one given back by a call
    that held none. The slot was lost for good: with max_connections=1 every later call waited its whole
    timeout and failed, 'no free connection'."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    get = _oip_client._Slots.get
    taken = line_of(get, "self._get()")  # (interrupted at the first line past the slot's taking)
    answered, took_s, free = answered_after_an_interrupted_call(
        client, interrupted_at(get.__code__, after_line=taken), status=200
    )
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5
    assert free == 1  # (the one slot, given back once)


@pytest.fixture
def answers_ok_noting_closes() -> Iterator[tuple[int, threading.Event]]:
    """A port whose server answers every request of a kept-alive connection with a 200 of ``{}``, and an
    Event set once the client has closed a connection (its end of data)."""
    closed = threading.Event()

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.settimeout(0.2)
            while not stop.is_set():
                try:
                    if not conn.recv(65536):
                        closed.set()
                        return
                except TimeoutError:
                    continue
                except OSError:
                    closed.set()
                    return
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")

    for port in serving_each_connection(answer):
        yield port, closed


def test_close_as_a_call_gives_its_connection_back_leaves_none_open(
    answers_ok_noting_closes: tuple[int, threading.Event],
) -> None:
    """close() on another thread (a server shutting down) ran as a call that had its answer gave its
    connection back, between urllib3's look at the pool (still open) and the connection's arrival in it:
    urllib3's close had taken the idle connections out and closed them already, so the connection stayed in
    the closed pool, open, until the collector found it (a ResourceWarning, and the server's end held open)."""
    port, closed = answers_ok_noting_closes
    client = _oip_client.HttpClient(f"http://127.0.0.1:{port}", max_connections=1, connect_timeout_s=5.0, headers={})
    put = _oip_client._Slots.put
    closer = threading.Thread(target=client.close, daemon=True)

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        if frame.f_code is put.__code__ and frame.f_locals.get("item") is not None and not closer.is_alive():
            sys.settrace(None)
            closer.start()  # (close() runs to its end as the connection is on its way back)
            closer.join(5.0)
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        with contextlib.suppress(_oip_client.TransportError):  # (close() ended the call in flight at once)
            client.request("GET", "/v2", timeout_s=5.0)
    finally:
        sys.settrace(previous)
        client.close()
    assert closer.ident is not None and not closer.is_alive()
    assert closed.wait(2.0)  # (the client's end of the connection is closed)


# The installed command's script as pip writes it (its name's .exe or -script.pyw taken off argv[0]), held in its
# exit path by an atexit callback, which it says on stdout as it enters it.
_INSTALLED_SCRIPT = """
import atexit, re, sys, time
atexit.register(time.sleep, 60.0)
atexit.register(print, "exiting", flush=True)
from inprocserve.__main__ import main
if __name__ == "__main__":
    sys.argv[0] = re.sub(r"(-script\\.pyw|\\.exe)?$", "", sys.argv[0])
    sys.exit(main())
"""


def test_the_installed_command_run_by_another_name_ends_at_a_second_ctrl_c_as_it_exits(
    mlp: Path, tmp_path: Path
) -> None:
    """The installed command run through a link of another name (``pipx install --suffix=@2`` exposes
    ``inprocserve@2``, a link to the environment's ``inprocserve``; an alias an administrator made) was not
    taken for the process's entry point (c758a4f judged argv[0]'s own name): a second Ctrl-C as a stopped
    command's process exited raised a KeyboardInterrupt in its exit path, a traceback after its one line, as
    before 06edfd0, where the command run by its own name ends at once by the signal, with nothing more said."""
    script = tmp_path / "venv" / "bin" / "inprocserve"
    script.parent.mkdir(parents=True)
    script.write_text(_INSTALLED_SCRIPT)
    link = tmp_path / "bin" / "inprocserve@2"
    link.parent.mkdir()
    link.symlink_to(script)
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    command = [sys.executable, str(link), "quantize", "--seconds", "60", str(mlp), str(target)]
    with measuring(command, target.parent) as process:
        process.send_signal(signal.SIGINT)
        assert process.stderr is not None and process.stdout is not None
        line = process.stderr.readline()  # (said: it is exiting)
        assert process.stdout.readline() == "exiting\n"  # (its command returned: held in its exit path)
        process.send_signal(signal.SIGINT)
        _, rest = process.communicate(timeout=30)
    assert line.startswith("error: stopped by SIGINT"), line
    assert process.returncode in (130, -signal.SIGINT) and rest == "", (process.returncode, rest)


# A process patched by gevent before it imports inprocserve (gevent's advice; gunicorn's gevent worker without
# --preload): greenlets make remote calls over a pool of 2 connections to a server of the same process.
_PATCHED_BEFORE_IMPORT = """
from gevent import monkey
monkey.patch_all()
import gevent, json, socket
from inprocserve import _oip_client

listener = socket.create_server(("127.0.0.1", 0))

def answer(conn):
    with conn:
        while conn.recv(65536):
            gevent.sleep(0.01)
            conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Length: 2\\r\\n\\r\\n{}")

def accept():
    while True:
        gevent.spawn(answer, listener.accept()[0])

gevent.spawn(accept)
client = _oip_client.HttpClient(
    f"http://127.0.0.1:{listener.getsockname()[1]}", max_connections=2, connect_timeout_s=5.0, headers={}
)

def call():
    try:
        return client.request("GET", "/v2", timeout_s=5.0).status
    except Exception as exc:
        return str(exc)

calls = [gevent.spawn(call) for _ in range(6)]
gevent.joinall(calls, timeout=20)
client.close()
print(json.dumps([each.value for each in calls]))
"""


def test_remote_calls_under_gevent_patched_before_import_are_answered() -> None:
    """ce40bea's pool of slots subclassed ``queue.LifoQueue`` as the module was imported: gevent's patch,
    made before (as gevent advises), had put its own queue there, which has no lock or conditions of the
    standard library's; the pool's first wait for a slot raised AttributeError, which urllib3 takes for a
    closed pool: every remote call failed, 'the connection pool is closed'."""
    pytest.importorskip("gevent")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-c", _PATCHED_BEFORE_IMPORT], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout.splitlines()[-1]) == [200] * 6


@contextlib.contextmanager
def interrupted_as_appended() -> Iterator[None]:
    """Raise ``Interrupted`` once, in the main thread, as the append of a slot given back to a pool's queue
    returns: where a signal arriving then is handled, the return of the function that called it (the queue's
    ``_put``, the standard library's or the pool's own)."""
    codes = {queue.LifoQueue._put.__code__, _oip_client._Slots._put.__code__}

    def local(frame: Any, kind: str, arg: Any) -> Any:
        if kind == "return":
            sys.settrace(None)
            frame.f_trace = None
            raise Interrupted
        return local

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        return local if frame.f_code in codes else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)


def test_a_call_interrupted_as_its_slot_goes_back_raises_the_interruption_and_gives_it_back_once(
    answers_ok: int,
) -> None:
    """Ctrl-C's KeyboardInterrupt or gevent's Timeout raised as the call's connection went back into the pool
    (right after the queue's append, a call into C where a signal handler runs) came before the slot was
    noted as given back: request() gave it back a second time, which a full pool refuses with urllib3's
    FullPoolError, raised in place of the interruption (a TransportError: Ctrl-C turned into a failed call that
    the caller may retry), and which a pool with other calls in flight took, one slot more than
    max_connections from then on."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    answered, took_s, free = answered_after_an_interrupted_call(client, interrupted_as_appended(), status=200)
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5
    assert free == 1  # (the one slot, given back once)


def test_a_call_interrupted_as_its_kept_connection_is_checked_closes_it(answers_ok: int) -> None:
    """Interrupted (Ctrl-C, gevent's ``Timeout``) as urllib3 checked the kept-alive connection the call had just
    taken (``is_connection_dropped``, before urlopen holds it): urllib3's clean-up gave a free slot back, and
    the connection, open, was left to the collector (a ResourceWarning, a descriptor held meanwhile)."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    checked = urllib3.connectionpool.is_connection_dropped
    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == 200
        with pytest.raises(Interrupted), interrupted_at(checked.__code__):
            client.request("GET", "/v2", timeout_s=5.0)
        answered, took_s = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
        gc.collect()  # (a connection left open says so now)
    finally:
        client.close()
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5
