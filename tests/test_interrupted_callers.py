"""A synchronous caller whose thread is interrupted while it waits (a signal handler raising in the main
thread: Ctrl-C's ``KeyboardInterrupt``, ``SystemExit`` from a ``SIGTERM`` handler) must leave the other
callers of its batch answered. Answered callers are woken through the process's wake relay, a few at a
time, each handing its place to the next once it runs: a place never handed back would leave every caller
after it blocked for good, and a process that joins its threads at exit hanging.

Real signals, real onnxruntime: the test's main thread is interrupted by ``SIGUSR1`` while it waits in
``predict``, the way Ctrl-C reaches a script that predicts from its main thread and from a pool of threads.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, CacheConfig, ModelConfig, _request
from inprocserve._request import Request, complete_batch
from inprocserve._rollout import Decision
from inprocserve._wake_relay import RELAY

from .conftest import BUSY_WIDTH, ServerFactory, busy_inputs, version_status, wait_until

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals (pthread_kill)")


class Interrupted(BaseException):
    """What the signal handler raises: a BaseException, like KeyboardInterrupt and SystemExit."""


@pytest.fixture
def interruptible() -> Iterator[None]:
    def raise_interrupted(signum: int, frame: Any) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def interrupt_main_thread() -> None:
    """Send the signal once the main thread waits for its answer in ``Batcher.wait`` (not a bytecode
    earlier, where the interruption would land before the wait)."""
    main = threading.main_thread().ident

    def waiting() -> bool:
        frame = sys._current_frames().get(main)  # type: ignore[arg-type]
        while frame is not None:
            if frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith("_batching.py"):
                return True
            frame = frame.f_back
        return False

    wait_until(waiting)
    signal.pthread_kill(main, signal.SIGUSR1)  # type: ignore[arg-type]


class GatedRuns:
    """Holds each run of the version whose row count is in ``hold`` until :meth:`open` is called for that
    count (so a test decides when the runner is busy and what runs together); records every run's rows."""

    def __init__(self, server: inprocserve.Server, model: str, hold: tuple[int, ...]) -> None:
        batcher = server._registry.routes[model].default.batcher
        assert batcher is not None
        execution = batcher._execution
        run = execution._run_batch
        self.rows: list[int] = []
        self.started = {rows: threading.Event() for rows in hold}
        self._gates = {rows: threading.Event() for rows in hold}

        def gated(runner: Any, arrays: dict[str, Any], **kwargs: Any) -> Any:
            rows = len(next(iter(arrays.values())))
            self.rows.append(rows)
            if rows in self._gates:
                self.started[rows].set()
                assert self._gates[rows].wait(30), "the test never opened the gate"
            return run(runner, arrays, **kwargs)

        execution._run_batch = gated

    def open(self, rows: int) -> None:
        self._gates[rows].set()

    def open_all(self) -> None:
        for gate in self._gates.values():
            gate.set()


def predict_in_threads(
    server: inprocserve.Server, count: int, *, index: int | None = None
) -> tuple[list[threading.Thread], list[Any]]:
    """``count`` threads predicting one row each: all of ``index`` if given, else alternating inputs."""
    answers: list[Any] = []

    def call(index: int) -> None:
        answers.append(server.predict("busy", busy_inputs(1, index=index)))

    indexes = [index if index is not None else each % 2 for each in range(count)]
    threads = [threading.Thread(target=call, args=(each,), daemon=True) for each in indexes]
    for thread in threads:
        thread.start()
    return threads, answers


def assert_answered(threads: list[threading.Thread], answers: list[Any]) -> None:
    for thread in threads:
        thread.join(timeout=20)
    assert not any(thread.is_alive() for thread in threads), "a caller of the interrupted caller's batch hangs"
    assert len(answers) == len(threads)
    for answer in answers:
        assert answer["picked"].shape == (1, 2)


def test_a_caller_interrupted_while_queued_is_withdrawn_and_its_companions_are_answered(
    interruptible: None, busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RELAY, "limit", 1)  # its companions are woken one by one: none may be stranded
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))  # adopt the runner
    runs = GatedRuns(server, "busy", hold=(50,))
    try:
        blocker = server.submit("busy", busy_inputs(50))  # the only runner is busy until the gate opens
        assert runs.started[50].wait(30)
        companions: list[Any] = []

        def orchestrate() -> None:  # once this thread's request is queued, two more join it, then Ctrl-C
            wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)
            companions.extend(predict_in_threads(server, 2))
            wait_until(lambda: version_status(server, "busy")["queued_rows"] == 3)
            interrupt_main_thread()

        orchestrator = threading.Thread(target=orchestrate, daemon=True)
        orchestrator.start()
        with pytest.raises(Interrupted):
            server.predict("busy", busy_inputs(1))  # first in the queue
        orchestrator.join(timeout=20)
        assert version_status(server, "busy")["queued_rows"] == 2  # withdrawn, not run for nobody
    finally:
        runs.open_all()
    assert blocker.result(timeout=30)["y"].shape == (50, BUSY_WIDTH)
    assert_answered(*companions)
    assert runs.rows[-1] == 2  # the companions ran together, without the interrupted caller's row
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    wait_until(lambda: RELAY.counts() == (0, 0))


def test_a_caller_interrupted_while_its_batch_runs_is_never_woken(
    interruptible: None, busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(RELAY, "limit", 1)  # its companions are woken one by one: none may be stranded
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))
    runs = GatedRuns(server, "busy", hold=(50, 3))
    try:
        blocker = server.submit("busy", busy_inputs(50))
        assert runs.started[50].wait(30)
        companions: list[Any] = []

        def orchestrate() -> None:  # three requests queue, the blocker ends, their batch starts: Ctrl-C
            wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)
            companions.extend(predict_in_threads(server, 2))
            wait_until(lambda: version_status(server, "busy")["queued_rows"] == 3)
            runs.open(50)
            assert runs.started[3].wait(30)
            interrupt_main_thread()

        orchestrator = threading.Thread(target=orchestrate, daemon=True)
        orchestrator.start()
        with pytest.raises(Interrupted):
            server.predict("busy", busy_inputs(1))  # first of the batch of three
        orchestrator.join(timeout=20)
    finally:
        runs.open_all()
    assert blocker.result(timeout=30)["y"].shape == (50, BUSY_WIDTH)
    assert_answered(*companions)
    assert runs.rows[-1] == 3  # it ran with its batch; its answer is dropped
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    wait_until(lambda: RELAY.counts() == (0, 0))  # its dropped answer took no place in the relay


def test_the_followers_of_an_interrupted_leader_run_on_their_own(
    interruptible: None, busy_repository: Path, make_server: ServerFactory
) -> None:
    # Identical requests in flight share one run. The leader's interruption is its thread's own: the
    # followers, on other threads, must not receive its KeyboardInterrupt; they run by themselves.
    server = make_server(busy_repository, config=ModelConfig(cache=CacheConfig(share_in_flight=True)))
    server.predict("busy", busy_inputs(1, index=0))
    runs = GatedRuns(server, "busy", hold=(50,))
    try:
        blocker = server.submit("busy", busy_inputs(50))
        assert runs.started[50].wait(30)
        followers: list[Any] = []

        def orchestrate() -> None:
            wait_until(lambda: len(server._sharing) == 2)  # the blocker's and this thread's request lead
            followers.extend(predict_in_threads(server, 2, index=0))  # the same input: they follow it
            wait_until(lambda: len(server._sharing._waiting) == 2)
            interrupt_main_thread()

        orchestrator = threading.Thread(target=orchestrate, daemon=True)
        orchestrator.start()
        with pytest.raises(Interrupted):
            server.predict("busy", busy_inputs(1, index=0))
        orchestrator.join(timeout=20)
    finally:
        runs.open_all()
    assert blocker.result(timeout=30)["y"].shape == (50, BUSY_WIDTH)
    assert_answered(*followers)  # an answer each, not the leader's interruption
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)


def make_request() -> Request:
    route = _request.Route("busy", 1, "stable", "test", "r1", [], Decision(1, "stable", "test"))
    request = Request(busy_inputs(1), 1, route, None, None)
    request.state = _request.RUNNING
    return request


def test_a_caller_interrupted_once_answered_wakes_the_callers_after_it(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The narrowest case: the interruption lands after the batch was answered and before this caller handed
    # its place in the wake relay on (here: it never waited at all). Its clean-up hands it on, to the next
    # caller, which hands it to the last.
    monkeypatch.setattr(RELAY, "limit", 1)  # the callers after it wait for its place
    server = make_server(busy_repository)
    batcher = server._registry.routes["busy"].default.batcher
    assert batcher is not None
    requests = [make_request() for _ in range(3)]
    complete_batch(requests, [{"i": index} for index in range(3)])
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda r=r: results.append(r.wait(None) and r.outputs), daemon=True)
        for r in requests[1:]
    ]
    for thread in threads:
        thread.start()
    batcher.interrupted(requests[0])  # as Batcher.wait calls it when the caller's thread is interrupted
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(result["i"] for result in results) == [1, 2]
    batcher.interrupted(requests[0])  # twice, or after it handed its place on itself: nothing breaks
    assert RELAY.counts() == (0, 0)


def test_a_caller_interrupted_before_its_turn_to_wake_leaves_the_queue(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Answered but not woken yet (callers answered before it hold the places): it leaves the queue without
    # taking a place, which the callers around it still pass to each other.
    monkeypatch.setattr(RELAY, "limit", 1)
    server = make_server(busy_repository)
    batcher = server._registry.routes["busy"].default.batcher
    assert batcher is not None
    requests = [make_request() for _ in range(3)]
    complete_batch(requests, [{"i": index} for index in range(3)])
    batcher.interrupted(requests[1])
    assert RELAY.counts() == (1, 1)  # the last caller queued, the first woken
    results: list[Any] = []
    threads = [
        threading.Thread(target=lambda r=r: results.append(r.wait(None) and r.outputs), daemon=True)
        for r in (requests[0], requests[2])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert sorted(result["i"] for result in results) == [0, 2]
    assert requests[1].waiter.locked()  # never woken: nobody waits for it
    assert RELAY.counts() == (0, 0)


def test_a_large_request_interrupted_between_its_slices_is_no_longer_counted(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # A request larger than max_batch_size, on an idle server, runs in slices on its caller's thread. Ctrl-C
    # between two slices must give back its count too: a request counted in flight for good makes close()
    # wait its whole timeout, and a hot reload wait for its version to drain forever.
    server = make_server(scale_repository, config=ModelConfig(batching=BatchingConfig(max_batch_size=2)))
    server.predict("scale", np.ones((1, 4), np.float32))
    execution = server._registry.routes["scale"].default.batcher._execution  # type: ignore[union-attr]
    run = execution._run_batch
    slices: list[int] = []

    def interrupted_at_the_second_slice(runner: Any, arrays: dict[str, Any], **kwargs: Any) -> Any:
        slices.append(len(arrays["x"]))
        if len(slices) == 2:
            raise Interrupted
        return run(runner, arrays, **kwargs)

    execution._run_batch = interrupted_at_the_second_slice
    with pytest.raises(Interrupted):
        server.predict("scale", np.ones((5, 4), np.float32))
    assert slices == [2, 2]
    status = version_status(server, "scale")
    assert status["in_flight"] == 0 and status["queued_rows"] == 0
    execution._run_batch = run
    np.testing.assert_allclose(server.predict("scale", np.ones((5, 4), np.float32))["y"], np.full((5, 4), 2.0))
