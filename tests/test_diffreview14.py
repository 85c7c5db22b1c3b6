"""Review of the second round of one day's work (perf2's batch forms, the CLI's stop signals, the remote
client's interrupted calls): behaviour that must not have changed."""

from __future__ import annotations

import pytest
import urllib3.connectionpool

from inprocserve import _oip_client

from .test_diffreview13 import answers_ok
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_remote_retries import raised_within

__all__ = ["answers_ok"]  # (the fixture, imported for pytest)


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
