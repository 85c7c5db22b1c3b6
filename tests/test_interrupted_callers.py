"""A synchronous caller whose thread is interrupted while it waits (a signal handler raising in the main
thread: Ctrl-C's ``KeyboardInterrupt``, ``SystemExit`` from a ``SIGTERM`` handler) must leave the other
callers of its batch answered. Answered callers are woken through the process's wake relay, a few at a
time, each handing its place to the next once it runs: a place never handed back would leave every caller
after it blocked for good, and a process that joins its threads at exit hanging.

Real signals, real onnxruntime: the test's main thread is interrupted by ``SIGUSR1`` while it waits in
``predict``, the way Ctrl-C reaches a script that predicts from its main thread and from a pool of threads.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, CacheConfig, ModelConfig, PoolConfig, RolloutConfig, _request
from inprocserve._batch_queue import BatchQueue
from inprocserve._batching import Batcher
from inprocserve._ort_backend import OnnxruntimeBackend
from inprocserve._request import Request, complete_batch
from inprocserve._rollout import Decision, Router
from inprocserve._wake_relay import RELAY
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import (
    BUSY_WIDTH,
    ServerFactory,
    SessionHolder,
    busy_inputs,
    pin_run_cost,
    version_status,
    wait_until,
)
from .frames import frame_of

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals (pthread_kill)")


class Interrupted(BaseException):
    """What the signal handler raises: a BaseException, like KeyboardInterrupt and SystemExit."""


_taken = threading.Event()  # the handler of ``interruptible`` has run: its thread was interrupted


@pytest.fixture
def interruptible() -> Iterator[None]:
    """``SIGUSR1`` raises ``Interrupted`` in the thread it reaches, once per test (see :func:`interrupt`)."""

    def raise_interrupted(signum: int, frame: Any) -> None:
        if not _taken.is_set():  # (the signals sent after it are that one interruption, sent again)
            _taken.set()
            raise Interrupted

    _taken.clear()
    previous = signal.signal(signal.SIGUSR1, raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


def interrupt(thread_id: int | None) -> None:
    """Interrupt a thread (under ``interruptible``): send it ``SIGUSR1`` until its handler has run.

    One signal may be handled only when the thread's wait ends by itself: CPython runs a Python handler
    where it checks for pending signals, or where the signal interrupts a blocking call, and a signal that
    arrives between the two (the thread has let go of the GIL to wait, and is not yet in the wait's system
    call) finds neither. A thread woken by the one it interrupts (which sets an Event, then waits) gets the
    GIL at just that moment: up to half such signals were lost, and a request meant to be interrupted at once
    ran until the wait it was interrupted in ran out. The next signal interrupts the wait."""
    for _ in range(200):  # (10 s)
        signal.pthread_kill(thread_id, signal.SIGUSR1)  # type: ignore[arg-type]
        if _taken.wait(0.05):
            return
    raise AssertionError("the thread never ran its SIGUSR1 handler")


def interrupt_main_thread() -> None:
    """Interrupt the main thread once it waits for its answer in ``Batcher.wait`` (not a bytecode
    earlier, where the interruption would land before the wait)."""
    main = threading.main_thread().ident

    def waiting() -> bool:
        frame = frame_of(main)
        while frame is not None:
            if frame.f_code.co_name == "wait" and frame.f_code.co_filename.endswith("_batching.py"):
                return True
            frame = frame.f_back
        return False

    wait_until(waiting)
    interrupt(main)


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
    interruptible: None,
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: SessionHolder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RELAY, "limit", 1)  # its companions are woken one by one: none may be stranded
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))  # adopt the runner
    blocker = hold_session(server, rows=50, at_most_s=30.0)  # the only runner is busy until it is let go
    try:
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
        blocker.let_go()
    assert blocker.release()["y"].shape == (50, BUSY_WIDTH)
    assert_answered(*companions)
    assert hold_session.rows[-1] == 2  # the companions ran together, without the interrupted caller's row
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    wait_until(lambda: RELAY.counts() == (0, 0))


def test_a_caller_interrupted_while_its_batch_runs_is_never_woken(
    interruptible: None,
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: SessionHolder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RELAY, "limit", 1)  # its companions are woken one by one: none may be stranded
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server, rows=50, at_most_s=30.0)
    mine = busy_inputs(1)
    batch = hold_session.mark(mine, at_most_s=30.0)  # the batch this thread's request leads is held too
    try:
        companions: list[Any] = []

        def orchestrate() -> None:  # three requests queue, the blocker ends, their batch starts: Ctrl-C
            wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)
            companions.extend(predict_in_threads(server, 2))
            wait_until(lambda: version_status(server, "busy")["queued_rows"] == 3)
            blocker.let_go()
            assert batch.started.wait(30)
            interrupt_main_thread()

        orchestrator = threading.Thread(target=orchestrate, daemon=True)
        orchestrator.start()
        with pytest.raises(Interrupted):
            server.predict("busy", mine)  # first of the batch of three
        orchestrator.join(timeout=20)
    finally:
        blocker.let_go()
        batch.let_go()
    assert blocker.release()["y"].shape == (50, BUSY_WIDTH)
    assert_answered(*companions)
    assert hold_session.rows[-1] == 3  # it ran with its batch; its answer is dropped
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    wait_until(lambda: RELAY.counts() == (0, 0))  # its dropped answer took no place in the relay


def test_the_followers_of_an_interrupted_leader_run_on_their_own(
    interruptible: None, busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    # Identical requests in flight share one run. The leader's interruption is its thread's own: the
    # followers, on other threads, must not receive its KeyboardInterrupt; they run by themselves.
    server = make_server(busy_repository, config=ModelConfig(cache=CacheConfig(share_in_flight=True)))
    server.predict("busy", busy_inputs(1, index=0))
    blocker = hold_session(server, rows=50, at_most_s=30.0)
    try:
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
        blocker.let_go()
    assert blocker.release()["y"].shape == (50, BUSY_WIDTH)
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


# -- interruptions inside the batcher's own steps ---------------------------------------------------------
#
# A signal handler runs where the interpreter checks for pending calls: as a Python function begins, and
# right after a call into C returns. The windows below are a few bytecodes wide; a trace function raises at
# exactly such a point of the main thread, as a signal arriving then would.


@contextmanager
def interrupted_at(code: Any, *, after_line: int | None = None) -> Iterator[None]:
    """Raise ``Interrupted`` once, in the main thread, in the frame running ``code``: as it begins, or
    (``after_line``) at its first line past that one, or its return, whichever comes first."""

    def local(frame: Any, kind: str, arg: Any) -> Any:
        if after_line is None or kind == "return" or (kind == "line" and frame.f_lineno > after_line):
            sys.settrace(None)
            frame.f_trace = None
            raise Interrupted
        return local

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        return local(frame, kind, arg) if after_line is None else local

    previous = sys.gettrace()  # (a coverage run's tracer: left off, nothing after this test was measured)
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)


def line_of(function: Any, text: str) -> int:
    """The line number of the first line of ``function`` that holds ``text``."""
    source, first = inspect.getsourcelines(function)
    return first + next(index for index, line in enumerate(source) if text in line)


def batcher_of(server: inprocserve.Server) -> Any:
    batcher = server._registry.routes["busy"].default.batcher
    assert batcher is not None
    return batcher


@pytest.mark.parametrize("where", ["as it begins", "after it queues"])
def test_an_interruption_as_a_request_is_queued_leaves_the_counts_right(
    where: str, busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """As the queue's append begins (nothing queued) or just after its call into the deque (queued, and
    run): either way the batcher's counts come back to zero, and close() drains at once (counts below zero
    kept it waiting)."""
    server = make_server(busy_repository)
    batcher = batcher_of(server)
    blocker = hold_session(server, rows=60, at_most_s=30.0)
    after = None if where == "as it begins" else line_of(BatchQueue.append, "self._requests.append(")
    with pytest.raises(Interrupted), interrupted_at(BatchQueue.append.__code__, after_line=after):
        server.submit("busy", busy_inputs(2, seed=1))
    blocker.release()
    assert server.predict("busy", busy_inputs(1))["picked"].shape == (1, 2)
    wait_until(lambda: batcher.in_flight == 0 and batcher.queued_rows == 0)
    assert batcher._active_rows == 0
    assert batcher.close(timeout_s=10)


def test_an_interruption_just_after_waking_the_waiting_worker_loses_no_wake(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker waits for companions (max_delay_s); the request that fills its batch wakes it, and the
    caller is interrupted right after: a wake left marked as pending kept every parked worker asleep (the
    next requests waited forever) and made close() release a lock twice."""
    # A manual clock and a long delay: on the real clock, the blocker's run (over half a second under load)
    # made its peak old news, or the worker's 1 s wait for companions ended before this thread looked, and
    # the queued request ran without a wait to interrupt. (Each wait lasts max_delay_s of real time.)
    # The busy model's run cost pinned too: measured under OVERLAP_BELOW_S (a loaded host can read it as 0),
    # the callers overlap and the free worker runs the queued request at once, never waiting for companions.
    pin_run_cost(monkeypatch, fixed_s=0.001, per_row_s=0.0002)
    clock = ManualClock()
    server = make_server(
        busy_repository, models={"busy": ModelConfig(batching=BatchingConfig(max_delay_s=30.0))}, clock=clock
    )
    batcher = batcher_of(server)
    blocker = server.submit("busy", busy_inputs(2000))
    wait_until(lambda: batcher.queued_rows == 0)
    queued = server.submit("busy", busy_inputs(1, seed=1))  # waits behind the blocker
    blocker.result(timeout=60)
    wait_until(lambda: batcher._filler is not None)  # the free worker now waits for companions
    release = line_of(Batcher.submit, "filler.release()")
    with pytest.raises(Interrupted), interrupted_at(Batcher.submit.__code__, after_line=release):
        server.predict("busy", busy_inputs(batcher._fill_target, seed=2))
    assert batcher._filler is None
    queued.result(timeout=20)
    wait_until(lambda: batcher.in_flight == 0)  # (its batch's rows are counted as running until then)
    clock.advance(10.0)  # the blocker's peak is past: the next requests run as they come
    later = server.submit("busy", busy_inputs(1, seed=3))
    assert later.result(timeout=10)["picked"].shape == (1, 2)
    assert server.predict("busy", busy_inputs(1, seed=4), timeout_s=10)["picked"].shape == (1, 2)
    wait_until(lambda: batcher.in_flight == 0)
    assert batcher.close(timeout_s=10)  # (it raised "release unlocked lock")


def test_a_given_up_request_leaves_the_queue_and_admits_a_large_one(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A queued request whose deadline passes is withdrawn; it must not linger as a queued request (holding
    its inputs, and making an empty queue look busy: a request larger than max_queue_rows, which an empty
    queue takes, was refused with "the queue holds 0 rows")."""
    config = ModelConfig(batching=BatchingConfig(max_queue_rows=10, max_request_rows=100))
    server = make_server(busy_repository, models={"busy": config})
    batcher = batcher_of(server)
    blocker = hold_session(server, rows=5, at_most_s=30.0)
    with pytest.raises(inprocserve.DeadlineExceededError):
        server.predict("busy", busy_inputs(1, seed=1), timeout_s=0.05)
    assert not list(batcher._queue)  # dropped, not left for a worker to skip
    blocker.release()
    wait_until(lambda: batcher.in_flight == 0)
    large = server.submit("busy", busy_inputs(50, seed=2))  # the queue is empty: one caller's may be large
    assert large.result(timeout=20)["picked"].shape == (50, 2)


def test_given_up_requests_behind_a_queued_one_do_not_pile_up_while_the_runner_is_busy(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """Callers whose deadlines pass behind a request still queued (a long run holds the session) are
    withdrawn; they must not stay in the queue until a worker takes a batch, each holding its inputs, beyond
    what max_queue_rows allows (26,000 of them piled up in 8 s of a run, with a bound of 64 rows)."""
    no_samples = RolloutConfig(capture_inputs=0)  # (promotion samples hold up to 32 MiB more of inputs)
    config = ModelConfig(batching=BatchingConfig(max_queue_rows=64), rollout=no_samples)
    server = make_server(busy_repository, models={"busy": config})
    blocker = hold_session(server, rows=5, at_most_s=30.0)
    head = server.submit("busy", busy_inputs(1))  # queued, waiting for the session
    rng = np.random.default_rng(0)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(400):  # each caller's own 32 rows (64 KiB), given up after a millisecond
            x = {"x": rng.standard_normal((32, BUSY_WIDTH), dtype=np.float32), "index": np.ones(32, np.int64)}
            with pytest.raises(inprocserve.DeadlineExceededError):
                server.predict("busy", x, timeout_s=0.001)
            del x
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 8 * 2**20  # (400 of them, 25 MiB, held without the compaction)
    assert len(list(batcher_of(server)._queue)) <= 2 * 65  # (queued or given up, about as many)
    blocker.release()
    assert head.result(timeout=20)["picked"].shape == (1, 2)  # the queued request is answered as ever


@pytest.mark.parametrize(
    ("cache", "where"),
    [(CacheConfig(share_in_flight=True), "queued"), (CacheConfig(enabled=True), "handed to the full way")],
)
def test_a_caller_interrupted_while_it_leads_frees_the_identical_requests_that_follow_it(
    cache: CacheConfig,
    where: str,
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: SessionHolder,
) -> None:
    """Identical requests follow a request in flight. Interrupted as the router notes its queued request (the
    last step before the caller waits), the request is given up like an interrupted wait; a cache miss that
    finds the session busy hands its lead to the full way, and interrupted in between (as ``_dispatch``
    begins), its lead is ended. Either way an identical request that came to follow it runs (it followed a
    lead nobody would ever release, and hung)."""
    server = make_server(busy_repository, models={"busy": ModelConfig(cache=cache)})
    batcher = batcher_of(server)
    server.predict("busy", busy_inputs(1, seed=2))  # (the first request adopts the runners: the full way)
    blocker = hold_session(server, rows=60, at_most_s=30.0)
    code = Router.served.__code__ if where == "queued" else inprocserve.Server._dispatch.__code__
    with pytest.raises(Interrupted), interrupted_at(code):
        server.predict("busy", busy_inputs(1, seed=1))
    identical = server.submit("busy", busy_inputs(1, seed=1))
    blocker.release()
    assert identical.result(timeout=20)["picked"].shape == (1, 2)
    assert server.predict("busy", busy_inputs(1, seed=1), timeout_s=10)["picked"].shape == (1, 2)
    wait_until(lambda: len(server._sharing) == 0 and batcher.in_flight == 0 and batcher.queued_rows == 0)


def test_an_event_loop_task_interrupted_as_its_cache_miss_goes_the_full_way_frees_identical_requests(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same window on an event loop: a lone task's cache miss leads identical requests, finds the session
    taken after all (its shortest way answers nothing), and hands the lead to the full way."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository, models={"scale": ModelConfig(cache=CacheConfig(enabled=True))})
    server.predict("scale", np.ones((1, 4), np.float32))  # (the first request adopts the runners: the full way)
    run_plain = Batcher.run_plain
    monkeypatch.setattr(Batcher, "run_plain", lambda *args, **kwargs: None)  # taken meanwhile: the full way

    async def ask() -> Any:
        return await server.apredict("scale", np.full((1, 4), 3.0, np.float32))

    with pytest.raises(Interrupted), interrupted_at(inprocserve.Server._dispatch.__code__):
        asyncio.run(ask())
    monkeypatch.setattr(Batcher, "run_plain", run_plain)
    identical = server.submit("scale", np.full((1, 4), 3.0, np.float32))
    np.testing.assert_allclose(identical.result(timeout=20)["y"], np.full((1, 4), 6.0))
    wait_until(lambda: len(server._sharing) == 0)


class LockRaisingAsItIsLetGo:
    """The batcher's lock, raising ``Interrupted`` once as it is let go at the end of a ``with`` block in
    ``function``: right after the release, a call into C, is where CPython runs a pending signal handler."""

    def __init__(self, real: Any, function: str) -> None:
        self.real = real
        self.function = function
        self.armed = True

    def __enter__(self) -> Any:
        return self.real.__enter__()

    def __exit__(self, *exc: Any) -> Any:
        result = self.real.__exit__(*exc)
        if self.armed and exc[0] is None and sys._getframe(1).f_code.co_name == self.function:
            self.armed = False
            raise Interrupted
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


@pytest.mark.parametrize(
    ("way", "function"),
    [
        ("a lone request's shortest way", "run_plain"),
        ("the full way, run inline", "submit"),
        ("batch scoring's own lane", "run_beside"),
    ],
)
def test_an_interruption_as_a_runner_is_taken_gives_it_back_and_counts_nothing(
    way: str, function: str, repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted as the lock is let go after the runner was taken and the request counted, before the run:
    the runner stayed lent for good (every later request of the version waited for it until its deadline)
    and the request counted in flight (close() waited its whole timeout for it)."""
    # a tiny model: one intra-op thread, so batch scoring's iterating thread runs requests too (run_beside),
    # where a core is left for it: two, whatever this host has (on a host of one CPU it never ran one)
    monkeypatch.setattr("inprocserve._scoring_plan.usable_cores", lambda: 2)
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config = ModelConfig(cache=CacheConfig(share_in_flight=True)) if function == "submit" else ModelConfig()
    server = make_server(repository, models={"scale": config})
    batcher = server._registry.routes["scale"].default.batcher
    assert batcher is not None
    rows = np.ones((20_000, 4), np.float32)
    list(server.predict_many("scale", rows))  # adopts the runners, and the scoring lane's
    lock = LockRaisingAsItIsLetGo(batcher._lock, function)
    monkeypatch.setattr(batcher, "_lock", lock)
    if function == "run_beside":
        # The iterating thread runs a request of its own only while the oldest one is still running on a
        # worker: the workers' runs wait (off the CPU) until it has taken its runner. Left to chance, a host
        # whose cores are busy may run every request on the workers before the iterating thread looks, and
        # nothing is interrupted (DID NOT RAISE).
        run = OnnxruntimeBackend.run
        iterating = threading.current_thread()

        def run_once_the_iterating_thread_took_its_runner(self: Any, *args: Any, **kwargs: Any) -> Any:
            if threading.current_thread() is not iterating:
                with suppress(AssertionError):  # (never taken: the runs go on, and the test fails below)
                    wait_until(lambda: not lock.armed, timeout_s=5)
            return run(self, *args, **kwargs)

        monkeypatch.setattr(OnnxruntimeBackend, "run", run_once_the_iterating_thread_took_its_runner)
    with pytest.raises(Interrupted):
        if function == "run_beside":
            for _ in server.predict_many("scale", rows):
                pass
        else:
            server.predict("scale", rows[:1])
    assert not lock.armed, f"{way} was not taken"
    monkeypatch.setattr(batcher, "_lock", lock.real)
    wait_until(lambda: batcher.in_flight == 0 and batcher._active_rows == 0)
    assert server.predict("scale", rows[:1] + 1, timeout_s=5)["y"].tolist() == [[4.0] * 4]
    assert batcher.close(timeout_s=10)


@contextmanager
def raised_as_it_begins(function: Any, caller: Any) -> Iterator[list[bool]]:
    """Raise ``Interrupted`` once, in this thread, as ``function`` begins when called from ``caller``: where
    CPython 3.11 runs a signal handler pending since the bytecodes before the call (a Python function's
    start is one of its check points)."""
    code, caller_code = function.__code__, caller.__code__
    fired: list[bool] = []

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        if not fired and frame.f_code is code and frame.f_back is not None and frame.f_back.f_code is caller_code:
            fired.append(True)
            sys.settrace(None)
            raise Interrupted
        return None

    previous = sys.gettrace()  # (see interrupted_at)
    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def assert_clean(server: inprocserve.Server, batcher: Any) -> None:
    """Counts at zero, every runner back once, and the version answering and closing at once."""
    wait_until(lambda: batcher.in_flight == 0 and batcher._active_rows == 0 and batcher.queued_rows == 0)
    # (a worker gives its runner back a step after its request is counted finished: waited on, not read once —
    # a CI run read 0 of 1 free in between; a runner lost for good still fails here, after the wait)
    wait_until(lambda: batcher._pool.free is not None and len(batcher._pool.free) >= batcher._pool.size)
    free = batcher._pool.free
    assert len(free) == batcher._pool.size and len({id(runner) for runner in free}) == len(free)
    assert server.predict("scale", np.full((1, 4), 5.0, np.float32), timeout_s=5)["y"].tolist() == [[10.0] * 4]
    assert batcher.close(timeout_s=10)


def scale_server(repository: Path, make_server: ServerFactory, config: ModelConfig) -> tuple[Any, Any]:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository, models={"scale": config})
    server.predict("scale", np.ones((1, 4), np.float32))  # adopts the runners
    return server, server._registry.routes["scale"].default.batcher


@pytest.mark.parametrize(
    ("rows", "config"),
    [
        (1, ModelConfig(cache=CacheConfig(share_in_flight=True))),  # one run, on the full way's inline path
        (10, ModelConfig(batching=BatchingConfig(max_batch_size=4))),  # a large request, run in slices
    ],
    ids=["one run", "slices"],
)
def test_an_interrupted_clean_up_of_an_inline_run_is_finished_once(
    rows: int, config: ModelConfig, repository: Path, make_server: ServerFactory
) -> None:
    """Interrupted as the clean-up of a run on the caller's thread begins: submit's own clean-up finishes it,
    once. (Between giving the runner back and counting the request, the runner was given back a second
    time, and one runner lent to two runs at once; after a request run in slices was answered, it was never
    given back, and every later request waited for it.)"""
    server, batcher = scale_server(repository, make_server, config)
    with pytest.raises(Interrupted), raised_as_it_begins(Batcher._finish_inline, Batcher._run_inline) as fired:
        server.predict("scale", np.ones((rows, 4), np.float32) * 3)
    assert fired
    assert_clean(server, batcher)


def test_a_request_queued_by_an_interrupted_submit_is_run(repository: Path, make_server: ServerFactory) -> None:
    """Interrupted after queueing its request and before waking the parked worker for it: the request stayed
    queued, run by nobody, and every later lone request queued behind it."""
    server, batcher = scale_server(repository, make_server, ModelConfig())
    server.submit("scale", np.ones((1, 4), np.float32)).result(timeout=10)  # (starts the worker)
    wait_until(lambda: len(batcher._idle) == 1)  # the worker is parked
    with pytest.raises(Interrupted), raised_as_it_begins(Batcher._wake_parked, Batcher.submit) as fired:
        server.submit("scale", np.ones((1, 4), np.float32))
    assert fired
    assert_clean(server, batcher)


def test_a_worker_interrupted_as_it_starts_is_started_again(repository: Path, make_server: ServerFactory) -> None:
    """Interrupted as the version's first queued request starts its worker: the thread was kept unstarted, so
    no worker ever ran (and close() failed joining it)."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    batcher = server._registry.routes["scale"].default.batcher
    assert batcher is not None and not batcher._workers
    with pytest.raises(Interrupted), raised_as_it_begins(threading.Thread.start, Batcher._start_workers) as fired:
        server.submit("scale", np.ones((1, 4), np.float32))
    assert fired
    assert_clean(server, batcher)


def test_a_deadline_watchdog_interrupted_as_it_starts_is_started_again(
    repository: Path, make_server: ServerFactory
) -> None:
    from inprocserve._deadlines import Watchdog

    # (no run time limit: its sweep, armed by the warm-up's run, would have started the watchdog already)
    server, batcher = scale_server(repository, make_server, ModelConfig(pool=PoolConfig(max_run_s=0)))
    watchdog = batcher._execution._backend._watchdog
    assert watchdog._thread is None
    with pytest.raises(Interrupted), raised_as_it_begins(threading.Thread.start, Watchdog.arm) as fired:
        server.predict("scale", np.ones((1, 4), np.float32), timeout_s=30)
    assert fired
    assert server.predict("scale", np.ones((1, 4), np.float32), timeout_s=30)["y"].shape == (1, 4)
    assert watchdog._thread is not None and watchdog._thread.is_alive()  # (kept unstarted: deadlines unenforced)
    assert_clean(server, batcher)
