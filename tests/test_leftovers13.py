"""The remote client's connection slots under interruptions (Ctrl-C's KeyboardInterrupt, gevent's Timeout)
that land right after a call into C returns, or while an interrupted call cleans up."""

from __future__ import annotations

import contextlib
import dis
import gc
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inprocserve import _oip_client
from inprocserve._oip_client import _Slots

from .test_diffreview15 import answers_ok_noting_closes
from .test_interrupted_callers import Interrupted

__all__ = ["answers_ok_noting_closes"]  # (the fixture, imported for pytest)


def after_each_call(function: Any) -> list[int]:
    """The offsets in ``function``'s code right after each call it makes returns: where a signal that arrived
    during that call (Ctrl-C's KeyboardInterrupt) is handled, before the next instruction runs."""
    instructions = list(dis.get_instructions(function))
    return [instructions[index + 1].offset for index, each in enumerate(instructions) if each.opname == "CALL"]


@contextmanager
def interrupted_after(function: Any, offset: int) -> Iterator[list[int]]:
    """Raise ``Interrupted`` once, in the main thread, as ``function`` reaches the instruction at ``offset``
    (see :func:`after_each_call`); the list yielded gets that offset once it did."""
    code = function.__code__
    fired: list[int] = []

    def local(frame: Any, kind: str, arg: Any) -> Any:
        if kind == "opcode" and frame.f_lasti == offset:
            sys.settrace(None)
            frame.f_trace = None
            fired.append(offset)
            raise Interrupted
        return local

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def test_a_call_interrupted_as_it_pops_its_kept_connection_closes_it(
    answers_ok_noting_closes: tuple[int, threading.Event],
) -> None:
    """A call interrupted (Ctrl-C, gevent's Timeout) at any point where a signal handler runs as it takes its
    slot: right as the pool's queue handed it the kept-alive connection (its ``pop()`` returned, before the call
    noted what it took), urllib3's clean-up gave a free slot back and the connection itself was left open, to
    the garbage collector (a ResourceWarning, and the server's end of it held open until then)."""
    port, closed = answers_ok_noting_closes
    points = [(function, offset) for function in (_Slots.get, _Slots._get) for offset in after_each_call(function)]
    interrupted = 0
    for function, offset in points:
        closed.clear()
        client = _oip_client.HttpClient(
            f"http://127.0.0.1:{port}", max_connections=1, connect_timeout_s=5.0, headers={}
        )
        try:
            assert client.request("GET", "/v2", timeout_s=5.0).status == 200  # (its connection kept in the pool)
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always", ResourceWarning)
                with contextlib.suppress(Interrupted), interrupted_after(function, offset) as fired:
                    client.request("GET", "/v2", timeout_s=5.0)
                gc.collect()
            where = f"{function.__qualname__} at {offset}"
            if fired:
                interrupted += 1
                assert [str(each.message) for each in warned if each.category is ResourceWarning] == [], where
                kept = any(each is not None for each in client._slots.queue)  # (not taken: still in the pool)
                assert kept or closed.wait(2.0), where  # (taken: closed, the server's end of it too)
            assert client.request("GET", "/v2", timeout_s=1.0).status == 200, where
            assert client._slots.qsize() == 1, where  # (the one slot, given back once)
        finally:
            client.close()
    assert interrupted >= 3  # (the points a call that finds a free slot passes)
