"""One completion path: ``Request.complete`` and ``complete_batch`` store the answer, then wake the
synchronous caller or hand the request to the server's deliver hook, exactly once."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve._pool import RunnerPool
from inprocserve._request import DONE, Request, Route, complete_batch, finish_detached, own_error, wake_after_batch
from inprocserve._rollout import Decision
from inprocserve._wake_relay import RELAY
from inprocserve.testing import build_scale_model, save_model


def make(*, future: bool) -> Request:
    route = Route("m", 1, "stable", "test", "r1", [], Decision(1, "stable", "test"))
    return Request({"x": np.zeros((1, 2), np.float32)}, 1, route, None, Future() if future else None)


def test_complete_wakes_a_synchronous_caller() -> None:
    request = make(future=False)
    assert not request.wait(0.001)  # nothing yet: the wait times out
    request.complete({"y": 1}, None)
    assert request.wait(None) and request.state == DONE and request.outputs == {"y": 1}


def test_complete_hands_a_future_to_its_deliver_hook_once() -> None:
    delivered: list[Request] = []
    request = make(future=True)
    request.deliver = delivered.append
    error = ValueError("bad")
    request.complete(None, error)
    assert delivered == [request] and request.state == DONE
    assert type(request.error) is ValueError and str(request.error) == "bad"  # (its own copy: own_error)


def test_a_future_without_a_deliver_hook_is_a_bug_said_plainly() -> None:
    with pytest.raises(RuntimeError, match="deliver hook"):
        make(future=True).complete({}, None)


def test_finish_detached_is_complete_with_a_hook() -> None:
    delivered: list[Request] = []
    request = make(future=True)
    finish_detached(request, {"y": 2}, None, delivered.append)
    assert delivered == [request] and request.outputs == {"y": 2}


def test_a_batch_queues_its_callers_in_the_wake_relay_and_wakes_an_event_loop_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RELAY, "limit", 1)  # one caller woken at a time: the order shows
    waiters = [make(future=False) for _ in range(3)]
    wakes: list[str] = []
    delivered: list[Any] = []

    def deliver(request: Request) -> None:
        delivered.append(request.outputs)
        if not wake_after_batch(lambda: wakes.append("loop")):
            wakes.append("direct")

    futures = [make(future=True) for _ in range(2)]
    for each in futures:
        each.deliver = deliver
    requests = [waiters[0], futures[0], waiters[1], futures[1], waiters[2]]
    complete_batch(requests, [{"i": index} for index in range(5)])
    assert delivered == [{"i": 1}, {"i": 3}] and wakes == ["loop", "loop"]  # held until the last, then run
    assert all(r.state == DONE for r in requests)
    # Only the first caller was woken; each hands its place to the next once it runs.
    assert waiters[0].waiter.locked() is False and waiters[1].waiter.locked() and waiters[2].waiter.locked()
    assert RELAY.counts() == (2, 1)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda r=r: results.append(r.wait(30) and r.outputs)) for r in waiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(result["i"] for result in results) == [0, 2, 4]
    assert RELAY.counts() == (0, 0)  # every place handed back
    assert not wake_after_batch(lambda: None)  # outside a batch nothing is held


class TwoRunners:
    model, version, concurrency = "m", 1, 2

    def __init__(self) -> None:
        self.built = 0

    def runners(self) -> list[str]:
        self.built += 1
        return ["a", "b"]


def test_the_pool_lends_each_runner_once_and_adopts_lazily() -> None:
    backend = TwoRunners()
    pool = RunnerPool(backend)  # type: ignore[arg-type]
    assert not pool.adopted and pool.checkout() is None and backend.built == 0
    pool.lend(pool.adopt())
    pool.lend(["c"])  # a second thread adopting late changes nothing
    taken = {pool.checkout(), pool.checkout()}
    assert taken == {"a", "b"} and pool.checkout() is None and not pool.has_free()
    pool.checkin("a")
    assert pool.has_free() and pool.checkout() == "a" and pool.size == 2
    pool._after_fork_in_child()  # a forked child builds its own runners on first use
    assert not pool.adopted


def test_every_caller_of_a_remote_model_whose_server_went_away_gets_its_own_errors(tmp_path: Path) -> None:
    """Their chain holds our TransportError (keyword-only arguments) and urllib3's NewConnectionError (a message
    built from its connection), which could not be copied: every caller of a batch shared them, and their
    tracebacks were dropped for all."""
    import concurrent.futures
    import threading

    from flask import Flask
    from inprocserve_flask import Inprocserve
    from werkzeug.serving import make_server

    save_model(build_scale_model(), tmp_path / "backend", "scale")
    backend = Flask(__name__)
    backend.config.update(INPROCSERVE_REPOSITORY=str(tmp_path / "backend"), INPROCSERVE_V2_PROTOCOL=True)
    Inprocserve(backend)
    http = make_server("127.0.0.1", 0, backend, threaded=True)
    threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    (tmp_path / "front" / "scale" / "1").mkdir(parents=True)
    (tmp_path / "front" / "scale" / "1" / "remote.toml").write_text(
        f'url = "http://127.0.0.1:{http.server_port}"\nmodel = "scale"\n'
    )
    try:
        with inprocserve.Server(tmp_path / "front") as server:
            server.predict("scale", np.ones((1, 4), np.float32))
            http.shutdown()
            http.server_close()
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                calls = [pool.submit(server.predict, "scale", np.ones((1, 4), np.float32)) for _ in range(16)]
                errors = [call.exception() for call in calls]
    finally:
        Inprocserve.close(backend)
    assert all(isinstance(error, inprocserve.RemoteUnavailableError) for error in errors)
    seen: dict[int, int] = {}
    for error in errors:
        link: BaseException | None = error
        while link is not None:
            seen[id(link)] = seen.get(id(link), 0) + 1
            link = link.__cause__ or link.__context__
    assert max(seen.values()) == 1  # no error object of any chain is shared between two callers


def test_an_errors_copy_keeps_its_slots_and_its_keyword_only_fields() -> None:
    class Coded(Exception):
        __slots__ = ("__private", "code")

        def __init__(self, message: str, *, code: int) -> None:
            super().__init__(message)
            self.code = code
            self.__private = code * 2
            self.where = "here"

    error = Coded("failed", code=7)
    copied = own_error(error)
    assert copied is not error and type(copied) is Coded and str(copied) == "failed"
    assert copied.code == 7 and copied._Coded__private == 14 and copied.where == "here"  # type: ignore[attr-defined]
