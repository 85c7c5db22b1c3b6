"""Review of the remote client's interrupted clean-ups (5390707, 52389f0, 1d58e95): a clean-up run again where it
is interrupted must not touch a connection once it is back in the pool, where another call may hold it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import ModelConfig, RolloutConfig, _oip_client
from inprocserve._oip_client import _Slots
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory, wait_until
from .test_diffreview13 import answers_ok
from .test_interrupted_callers import Interrupted, interrupted_at
from .test_thread_values import ROOT

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


# A process that imported inprocserve before gevent patched it (gunicorn's gevent worker with --preload): two
# greenlets of one OS thread make off-loop calls (each starts reading this thread's routed-version notes); one
# ends first. The other is interrupted once routed to version 2 (gevent's Timeout) and names what it ran on.
_NOTES_AFTER_A_LATE_PATCH = """
import sys
sys.path.insert(0, sys.argv[1])
from inprocserve import _server
from gevent import monkey
monkey.patch_all()
import gevent

def interrupted_once_routed():
    reader = _server.noting_routes()
    gevent.sleep(0.05)  # (the other call starts and ends meanwhile)
    stopped = gevent.Timeout()
    _server._mark_routed(stopped, 2)
    return _server.routed_version(stopped, None, reader)

def answered():
    _server.noting_routes()
    _server.stop_noting()

first = gevent.spawn(interrupted_once_routed)
gevent.spawn(answered)
first.join(10)
print(first.value)
"""


def test_under_a_late_gevent_patch_a_greenlet_s_interrupted_call_names_the_version_it_was_routed_to() -> None:
    """The routed-version note was kept in a ``threading.local`` made as inprocserve was imported: imported
    before gevent's patch (gunicorn's ``--preload``), one for all the greenlets of a thread. Another greenlet's
    off-loop call that ended meanwhile stopped the reading for both: the interrupted call's InferenceError named
    the version asked for (None), not the one it ran on."""
    pytest.importorskip("gevent")
    run = subprocess.run(
        [sys.executable, "-c", _NOTES_AFTER_A_LATE_PATCH, str(ROOT)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "2", run.stdout + run.stderr


def test_a_hold_whose_named_stable_version_is_gone_says_that_workers_starting_now_serve_the_new_one(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``[rollout] stable = 1`` named, then version 1 removed from disk (an old release cleaned up): the gate
    compares a new version with the one serving by default (2), not with the stable version named, which no
    worker can load. Its hold of an incompatible version 3 lives in this worker's memory only: a worker that
    starts now serves 3, as it would with nothing named. The warning left out that sentence (a stable version
    was named), so the operator was not told that the fleet splits, nor how to hold it."""
    x = {"x": np.ones((1, 4), np.float32)}
    stable_named = {"m": ModelConfig(rollout=RolloutConfig(stable=1))}
    for version in (1, 2):
        save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", version)
    running = make_server(repository, models=stable_named, poll_interval_s=None)
    shutil.rmtree(repository / "m" / "1")
    running.refresh()
    assert running.predict("m", x).version == 2
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 3)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert running.predict("m", x).version == 2
    started = make_server(repository, models=stable_named, poll_interval_s=None)
    assert started.status()["models"]["m"]["answering_version"] == 3  # (what the warning must say)
    assert "a worker that starts now serves version 3" in held, held
    assert "[rollout] stable = 2" in held, held
