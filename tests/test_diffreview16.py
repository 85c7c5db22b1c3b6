"""Review of the remote client's interrupted clean-ups (5390707, 52389f0, 1d58e95): a clean-up run again where it
is interrupted must not touch a connection once it is back in the pool, where another call may hold it."""

from __future__ import annotations

import sys
import threading
from typing import Any

import pytest

from inprocserve import _oip_client
from inprocserve._oip_client import _Slots

from .conftest import wait_until
from .test_diffreview13 import answers_ok
from .test_interrupted_callers import Interrupted, interrupted_at

__all__ = ["answers_ok"]  # (the fixture, imported for pytest)


def test_a_clean_up_run_again_leaves_the_connection_another_call_took_from_the_pool_alone(
    answers_ok: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call interrupted as it reads its answer (Ctrl-C) drops its connection, giving its slot back, and is
    interrupted again as that give-back returns (Ctrl-C pressed again, an outer gevent Timeout), before urllib3's
    response let go of the connection. Meanwhile another thread's call took that connection from the pool and
    sent its request on it. The clean-up, run again, closed the connection once more: the other call's, whose
    answer never came ('connection closed')."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    put = _Slots.put
    getresponse = client._pool.ConnectionCls.getresponse
    sent, go = threading.Event(), threading.Event()
    others: list[Any] = []

    def paused_before_its_answer(self: Any, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():  # (the other call: sent, not read yet)
            sent.set()
            go.wait(5.0)
        return getresponse(self, *args, **kwargs)

    def interrupted_as_it_returns(self: _Slots, item: Any, *args: Any, **kwargs: Any) -> None:
        put(self, item, *args, **kwargs)
        if sys.exc_info()[0] is Interrupted and not others:  # (the interrupted call's clean-up)
            other = threading.Thread(target=lambda: others.append(raised_or_status()), daemon=True)
            others.append(other)
            other.start()
            assert sent.wait(5.0)  # (the other call took the connection and sent its request on it)
            raise Interrupted

    def raised_or_status() -> Any:
        try:
            return client.request("GET", "/v2", timeout_s=5.0).status
        except Exception as exc:
            return exc

    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == 200
        monkeypatch.setattr(_Slots, "put", interrupted_as_it_returns)
        monkeypatch.setattr(client._pool.ConnectionCls, "getresponse", paused_before_its_answer)
        with pytest.raises(Interrupted), interrupted_at(_oip_client.HttpClient._read.__code__):
            client.request("GET", "/v2", timeout_s=5.0)
        go.set()
        wait_until(lambda: len(others) == 2)
        assert others[1] == 200, others[1]
        assert client._slots.qsize() == 1  # (the one slot, given back once)
    finally:
        client.close()
