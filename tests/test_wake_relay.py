"""The wake relay: answered synchronous callers are woken in the order they were answered, at most ``limit``
at once, and every place is handed back, whatever order callers wake, give up or are answered in. A place
never handed back would leave every later caller of the process blocked for good."""

from __future__ import annotations

import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from inprocserve import BatchingConfig, DeadlineExceededError, ModelConfig
from inprocserve._request import DONE, Request, Route, complete_batch
from inprocserve._rollout import Decision
from inprocserve._wake_relay import DONE_WAKING, RELAY, WakeRelay

from .conftest import (
    FreedUnderALock,
    ServerFactory,
    busy_inputs,
    child_exits,
    run_in_forked_child,
    version_status,
    wait_until,
)


def answered(count: int) -> list[Request]:
    """``count`` synchronous requests answered (their outputs stored), ready to be queued in a relay."""
    route = Route("m", 1, "stable", "test", "r1", [], Decision(1, "stable", "test"))
    requests = [Request({"x": np.zeros((1, 2), np.float32)}, 1, route, None, None) for _ in range(count)]
    for index, request in enumerate(requests):
        request.outputs, request.state = {"i": index}, DONE
    return requests


def woken(requests: list[Request]) -> list[int]:
    """Which of ``requests`` were woken (their waiter released) and not yet taken by their caller."""
    return [index for index, request in enumerate(requests) if not request.waiter.locked()]


def wake_up(request: Request, relay: WakeRelay) -> None:
    """What the caller's thread does once woken: take the wake, then hand its place on."""
    assert request.waiter.acquire(blocking=False), "the caller was not woken"
    relay.passed(request)


class Looks:
    """The relay watcher's clock, in the test's hands: each of its sleeps lasts until :meth:`look` lets it take
    one look, so a test says when the watcher looks, not a wall clock that a loaded machine stretches."""

    def __init__(self) -> None:
        self._asleep = threading.Semaphore(0)  # released each time the watcher sleeps (its last look is done)
        self._go = threading.Semaphore(0)
        self.free = False  # (at the end: sleeps return at once, so the watcher finds its way out)

    def sleep(self, seconds: float) -> None:
        if self.free:
            return
        self._asleep.release()
        self._go.acquire()

    def look(self, relay: WakeRelay) -> None:
        """Let the watcher look once, and wait until it has (it sleeps again, or it has returned)."""
        assert self._asleep.acquire(timeout=10), "the watcher is not waiting to look"
        self._go.release()
        while not self._asleep.acquire(timeout=0.01):
            watcher = relay._watcher
            if watcher is None or not watcher.is_alive():
                return
        self._asleep.release()  # (for the next look)


@pytest.fixture
def looks(monkeypatch: pytest.MonkeyPatch) -> Any:
    from inprocserve import _wake_relay

    clock = Looks()
    monkeypatch.setattr(_wake_relay, "time", clock)
    yield clock
    clock.free = True
    clock._go.release()


def test_callers_are_woken_in_the_order_they_were_answered_a_few_at_a_time() -> None:
    relay = WakeRelay(limit=2)
    first, second = answered(3), answered(2)
    everyone = first + second
    relay.add(first)
    relay.add(second)
    assert woken(everyone) == [0, 1] and relay.counts() == (3, 2)
    order = []
    for index in (0, 1, 2, 3, 4):  # each woken caller runs, in turn, and hands its place on
        wake_up(everyone[index], relay)
        order.append(index)
    assert order == [0, 1, 2, 3, 4] and relay.counts() == (0, 0)
    assert all(request.baton is DONE_WAKING for request in everyone)


def test_a_later_batch_waits_for_the_callers_of_an_earlier_one() -> None:
    relay = WakeRelay(limit=1)
    earlier, later = answered(2), answered(1)
    relay.add(earlier)
    relay.add(later)
    wake_up(earlier[0], relay)
    assert woken(earlier + later) == [1]  # the earlier batch's second caller, not the later batch's first
    wake_up(earlier[1], relay)
    wake_up(later[0], relay)
    assert relay.counts() == (0, 0)


def test_a_caller_that_leaves_once_woken_hands_its_place_on() -> None:
    relay = WakeRelay(limit=1)
    requests = answered(2)
    relay.add(requests)
    relay.leave(requests[0])  # woken, then interrupted before it ran
    assert woken(requests) == [0, 1]  # its own wake is left untaken: nobody waits on it any more
    wake_up(requests[1], relay)
    assert relay.counts() == (0, 0)


def test_a_caller_that_leaves_before_its_turn_takes_no_place() -> None:
    relay = WakeRelay(limit=1)
    requests = answered(3)
    relay.add(requests)
    relay.leave(requests[1])
    assert relay.counts() == (1, 1)
    wake_up(requests[0], relay)
    assert woken(requests) == [2]
    wake_up(requests[2], relay)
    assert relay.counts() == (0, 0) and requests[1].waiter.locked()


def test_a_caller_that_leaves_before_its_batch_is_queued_is_skipped() -> None:
    relay = WakeRelay(limit=1)
    requests = answered(2)
    relay.leave(requests[0])  # interrupted between its answer and the relay's add
    relay.add(requests)
    assert woken(requests) == [1]
    wake_up(requests[1], relay)
    assert relay.counts() == (0, 0)


def test_handing_on_twice_or_leaving_afterwards_changes_nothing() -> None:
    relay = WakeRelay(limit=1)
    requests = answered(3)
    relay.add(requests)
    wake_up(requests[0], relay)
    relay.passed(requests[0])
    relay.leave(requests[0])
    assert woken(requests) == [1] and relay.counts() == (1, 1)
    wake_up(requests[1], relay)
    wake_up(requests[2], relay)
    assert relay.counts() == (0, 0)


class Cut(BaseException):
    """An interruption landing inside a hand-over (as a signal handler's exception can, between any two
    steps of Python code)."""


class CutQueue(deque):  # type: ignore[type-arg]
    """The relay's queue, cut short once: before or after taking the first caller out."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when

    def popleft(self) -> Any:
        if self.when == "before the queue":
            self.when = ""
            raise Cut
        item = super().popleft()
        if self.when == "after the queue":
            self.when = ""
            raise Cut
        return item


class CutHolders(set):  # type: ignore[type-arg]
    """The relay's set of woken callers, cut short once, right after a change of the kind ``when`` names."""

    def __init__(self, when: str) -> None:
        super().__init__()
        self.when = when

    def add(self, item: Any) -> None:
        super().add(item)
        if self.when == "after the new holder":
            self.when = ""
            raise Cut

    def discard(self, item: Any) -> None:
        super().discard(item)
        if self.when == "after the old holder":
            self.when = ""
            raise Cut


class CutWake:
    """A caller's waiter whose release is cut short once, right after it woke the caller."""

    def __init__(self, lock: Any) -> None:
        self.lock, self.armed = lock, False

    def acquire(self, *args: Any, **kwargs: Any) -> bool:
        return bool(self.lock.acquire(*args, **kwargs))

    def release(self) -> None:
        self.lock.release()
        if self.armed:
            self.armed = False
            raise Cut

    def locked(self) -> bool:
        return bool(self.lock.locked())


@pytest.mark.parametrize(
    "where", ["before the queue", "after the queue", "after the new holder", "after the old holder", "after the wake"]
)
def test_a_hand_over_cut_short_anywhere_is_finished_by_the_callers_clean_up(where: str) -> None:
    relay = WakeRelay(limit=1)
    requests = answered(3)
    relay.add(requests)  # the first woken, two queued
    if where.endswith("queue"):
        relay._queue = CutQueue(where)
        relay._queue.extend(requests[1:])
    elif where.endswith("holder"):
        relay._holders = CutHolders(where)
        set.add(relay._holders, requests[0])
    else:
        requests[1].waiter = CutWake(requests[1].waiter)
        requests[1].waiter.armed = True
    assert requests[0].waiter.acquire(blocking=False)
    with pytest.raises(Cut):
        relay.passed(requests[0])
    relay.leave(requests[0])  # what the interrupted caller's clean-up (Batcher.interrupted) does
    assert woken(requests) == [1] and relay.counts() == (1, 1)
    wake_up(requests[1], relay)
    wake_up(requests[2], relay)
    assert relay.counts() == (0, 0)
    relay.leave(requests[0])  # again: nothing changes
    assert relay.counts() == (0, 0) and woken(requests) == []


def test_a_last_place_freed_then_cut_short_is_not_freed_twice() -> None:
    relay = WakeRelay(limit=1)
    requests = answered(1)
    relay.add(requests)
    relay._holders = CutHolders("after the old holder")
    set.add(relay._holders, requests[0])
    assert requests[0].waiter.acquire(blocking=False)
    with pytest.raises(Cut):
        relay.passed(requests[0])
    relay.leave(requests[0])
    later = answered(2)
    relay.add(later)
    assert woken(later) == [0] and relay.counts() == (1, 1)  # one place, not two
    wake_up(later[0], relay)
    wake_up(later[1], relay)


def test_places_never_handed_back_are_taken_back_once_callers_wait_a_whole_interval(
    caplog: pytest.LogCaptureFixture, looks: Looks
) -> None:
    # A caller interrupted where no clean-up runs (between queueing its request and waiting for it) holds
    # its place for good: the watcher takes it back, and the callers behind it are woken.
    relay = WakeRelay(limit=1, heal_interval_s=0.05)
    requests = answered(3)
    relay.add(requests)  # the first is woken, and its caller never comes
    looks.look(relay)  # held at this look ...
    assert woken(requests) == [0] and relay.places_taken_back == 0
    looks.look(relay)  # ... and still at the next: taken back
    assert requests[1].waiter.acquire(timeout=10), "the queued caller was never woken"
    assert relay.places_taken_back == 1 and "did not hand their place on" in caplog.text
    wake_up(requests[0], relay)  # a caller that was only slow finds its place taken back: nothing changes
    assert relay.counts() == (1, 1) and woken(requests) == []
    relay.passed(requests[1])
    wake_up(requests[2], relay)
    assert relay.counts() == (0, 0)


def test_a_successor_that_ran_before_the_clean_up_is_not_given_the_place_again() -> None:
    relay = WakeRelay(limit=1)
    requests = answered(3)
    relay.add(requests)
    requests[1].waiter = CutWake(requests[1].waiter)
    requests[1].waiter.armed = True
    assert requests[0].waiter.acquire(blocking=False)
    with pytest.raises(Cut):
        relay.passed(requests[0])  # cut short right after it woke the next caller ...
    wake_up(requests[1], relay)  # ... which ran, and handed the place on, before the clean-up came
    relay.leave(requests[0])
    assert relay.counts() == (0, 1)  # the last caller's place only
    wake_up(requests[2], relay)
    assert relay.counts() == (0, 0)


def test_one_place_never_handed_back_is_taken_back_while_the_others_go_on() -> None:
    relay = WakeRelay(limit=2, heal_interval_s=0.05)
    requests = answered(4)
    relay.add(requests)  # the first's caller never comes; the others hand their places on
    for request in requests[1:]:
        assert request.waiter.acquire(timeout=10)
        relay.passed(request)
    wait_until(lambda: relay.counts() == (0, 0))
    assert relay.places_taken_back == 1
    wait_until(lambda: relay._watcher is None)  # nobody queued or being woken: the watcher is gone


def test_a_hand_over_cut_short_with_no_clean_up_after_it_is_finished_by_the_watcher() -> None:
    relay = WakeRelay(limit=1, heal_interval_s=0.05)
    requests = answered(3)
    relay.add(requests)
    relay._queue = CutQueue("after the queue")
    relay._queue.extend(requests[1:])
    assert requests[0].waiter.acquire(blocking=False)
    with pytest.raises(Cut):
        relay.passed(requests[0])  # the next caller is out of the queue, not yet woken; no clean-up runs
    assert requests[1].waiter.acquire(timeout=10), "the caller the place was going to was lost"
    relay.passed(requests[1])
    wake_up(requests[2], relay)
    assert relay.counts() == (0, 0)


def test_callers_handing_places_on_slowly_keep_them(looks: Looks) -> None:
    relay = WakeRelay(limit=1, heal_interval_s=0.2)
    requests = answered(4)
    relay.add(requests)
    for request in requests:  # a hand-over between every two looks: slow, but never a whole interval without one
        looks.look(relay)
        wake_up(request, relay)
    assert relay.places_taken_back == 0 and relay.counts() == (0, 0)


def test_a_relay_takes_at_least_one_caller_at_a_time() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        WakeRelay(limit=0)


# A random history: batches answered, callers woken and running, callers giving up, in any order.
_STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("answer"), st.integers(1, 5)),
        st.tuples(st.just("run"), st.integers(0, 1000)),
        st.tuples(st.just("leave"), st.integers(0, 1000)),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(limit=st.integers(1, 4), steps=_STEPS)
def test_any_history_wakes_every_caller_once_in_answer_order_and_hands_every_place_back(
    limit: int, steps: list[tuple[str, int]]
) -> None:
    relay = WakeRelay(limit=limit)
    everyone: list[Request] = []
    order: list[int] = []  # who was woken, in order
    running: list[int] = []  # woken, not yet run
    gone: set[int] = set()  # left
    for kind, value in steps:
        if kind == "answer":
            batch = answered(value)
            everyone.extend(batch)
            relay.add(batch)
        elif kind == "run" and running:
            index = running.pop(value % len(running))
            wake_up(everyone[index], relay)
        elif kind == "leave" and everyone:
            index = value % len(everyone)
            relay.leave(everyone[index])
            gone.add(index)
            if index in running:  # its wake stays untaken
                running.remove(index)
        for index in woken(everyone):
            if index not in order and index not in gone:
                order.append(index)
                running.append(index)
        queued, waking = relay.counts()
        assert waking <= limit and (queued == 0 or waking == limit)  # never a free place with callers queued
    while running:  # the rest of the callers run
        wake_up(everyone[running.pop(0)], relay)
        for index in woken(everyone):
            if index not in order and index not in gone:
                order.append(index)
                running.append(index)
    assert relay.counts() == (0, 0)
    assert order == sorted(order)  # woken in the order they were answered
    # every caller that did not give up before its turn was woken
    assert set(order) | gone == set(range(len(everyone)))


def test_every_caller_of_a_busy_server_is_answered_and_every_place_handed_back(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    # 24 threads keep a one-runner version queued; a third of the requests carry a deadline tight enough
    # that some miss it, some while queued, some while running, some as they are answered.
    server = make_server(busy_repository, config=ModelConfig(batching=BatchingConfig(max_batch_size=8)))
    server.predict("busy", busy_inputs(1))
    outcomes: list[str] = []
    lock = threading.Lock()

    def caller(index: int) -> None:
        for call in range(15):
            timeout_s = 0.004 if (index + call) % 3 == 0 else None
            try:
                answer = server.predict("busy", busy_inputs(1, index=index % 2), timeout_s=timeout_s)
                result = "answered" if answer["picked"].shape == (1, 2) else "wrong"
            except DeadlineExceededError:
                result = "late"
            with lock:
                outcomes.append(result)

    taken_back = RELAY.places_taken_back
    with ThreadPoolExecutor(24) as pool:
        list(pool.map(caller, range(24)))
    assert RELAY.places_taken_back == taken_back  # no place lost, none taken back from a slow caller
    assert len(outcomes) == 24 * 15 and "wrong" not in outcomes and "answered" in outcomes
    status = version_status(server, "busy")
    assert status["batches_run"] < status["rows_run"]  # requests shared batches: their callers were relayed
    wait_until(lambda: RELAY.counts() == (0, 0))


def test_a_relay_forked_while_its_lock_was_held_serves_the_child() -> None:
    """gunicorn ``--preload`` forks workers whenever it likes: the relay's lock, held by one of the master's
    threads at that moment, must not stay held in the worker, whose first batch would hang."""
    relay = WakeRelay(limit=1)
    parents = answered(3)
    relay.add(parents)  # the parent's callers: one woken, two queued

    def in_the_child() -> str:
        before = relay.counts()
        requests = answered(2)
        relay.add(requests)
        return f"before {before}, woken {woken(requests)}, counts {relay.counts()}"

    with relay._lock:  # (as a thread of the parent's would hold it)
        answer = run_in_forked_child(in_the_child, timeout_s=20)
    assert answer == "before (0, 0), woken [0], counts (1, 1)"
    for request in parents:  # the parent's relay goes on
        wake_up(request, relay)
    assert relay.counts() == (0, 0)


def test_the_process_relay_is_used_by_complete_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(RELAY, "limit", 1)
    requests = answered(2)
    complete_batch(requests, [{"i": 0}, {"i": 1}])
    assert woken(requests) == [0] and all(request.baton is RELAY for request in requests)
    assert requests[0].wait(None) and requests[1].wait(None)  # each hands its place on as it wakes
    assert RELAY.counts() == (0, 0)


def test_a_child_forked_while_a_worker_holds_the_allocators_lock_frees_no_answer_of_the_parent() -> None:
    """The relay's answered requests hold their outputs, arrays onnxruntime owns and frees under its
    allocator's mutex, which a worker of the parent running a batch holds at the fork now and then: freeing
    them in the child's fork hook hung it there for good (about once in a thousand forks of a process
    serving batches from threads, with callers queued in the relay)."""
    relay = WakeRelay(limit=1, heal_interval_s=60)
    allocator = threading.Lock()
    requests = answered(3)
    for request in requests:
        request.outputs = {"y": FreedUnderALock(allocator)}
    relay.add(requests)  # one woken, two queued; their callers' threads hold them no more
    del requests, request
    with allocator:  # (as a worker of the parent's, inside a run, holds onnxruntime's)
        assert child_exits(timeout_s=10), "the child hung in its fork hook, freeing an answer of the parent's"
    while relay.counts() != (0, 0):  # the parent's relay goes on
        (holder,) = relay._holders
        wake_up(holder, relay)
