"""Review of the remote client's connection slots (ce40bea, d96cdfd, 4a9b04a, e0674f0, dc943fe), the CLI's
entry point (c758a4f) and the loop's merged latencies (d6a711c): behaviour that must not have changed."""

from __future__ import annotations

import pytest

from inprocserve import _oip_client

from .test_diffreview13 import answers_ok
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_remote_retries import raised_within

__all__ = ["answers_ok"]  # (the fixture, imported for pytest)


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
    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == 200
        with pytest.raises(Interrupted), interrupted_at(get.__code__, after_line=taken):
            client.request("GET", "/v2", timeout_s=5.0)
        answered, took_s = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
        free = client._slots.qsize()
    finally:
        client.close()
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5
    assert free == 1  # (the one slot, given back once)
