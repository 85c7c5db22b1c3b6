"""Identical requests in flight share one run, with or without the cache, and followers never hang:
whatever happens to the leader, they get its answer, its error, or run by themselves."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import tracemalloc
from collections.abc import Callable
from concurrent.futures import CancelledError
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, CacheConfig, ModelConfig, _inflight
from inprocserve._errors import VersionRetiredError
from inprocserve._inflight import Coalescer, LeaderGone, inputs_key
from inprocserve.testing import ManualClock, save_model

from .conftest import (
    BUSY_WIDTH,
    HeldSession,
    ServerFactory,
    SessionHolder,
    build_busy_model,
    busy_inputs,
    occupy,
    version_status,
    wait_until,
)
from .frames import frame_of

WAIT_S = 30  # every wait is bounded: a follower left behind fails the test instead of hanging it


def sharing(share: bool | None, *, cache: bool = False, **batching: int) -> ModelConfig:
    return ModelConfig(cache=CacheConfig(enabled=cache, share_in_flight=share), batching=BatchingConfig(**batching))


def held_hot_leader(
    make_server: ServerFactory, repository: Path, hold: SessionHolder, *, samples: bool = True
) -> tuple[inprocserve.Server, HeldSession, dict[str, np.ndarray], Any]:
    """A server sharing identical requests in flight, and the leader of a hot 64-row request (128 KiB)
    held in its run until ``held.let_go()``: ``(server, held, hot, leader)``. ``samples=False``: no
    promotion samples (they hold up to 32 MiB of inputs, which a memory measurement would count)."""
    rollout = inprocserve.RolloutConfig() if samples else inprocserve.RolloutConfig(capture_inputs=0)
    server = make_server(repository, config=ModelConfig(cache=CacheConfig(share_in_flight=True), rollout=rollout))
    server.predict("busy", busy_inputs(1))
    hot = busy_inputs(64, seed=7)
    held = hold.mark(hot, at_most_s=WAIT_S)  # (its copies, identical, carry the mark too)
    leader = server.submit("busy", hot)
    assert held.started.wait(WAIT_S)
    return server, held, hot, leader


def test_without_the_cache_identical_requests_share_a_run_when_switched_on(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    futures = [server.submit("busy", busy_inputs(1, seed=7)) for _ in range(6)]
    blocker.release()
    answers = [future.result(timeout=WAIT_S)["y"] for future in futures]
    assert all(answer is answers[0] for answer in answers)
    assert version_status(server, "busy")["rows_run"] == 3000 + 1  # one leader ran; five followed
    assert version_status(server, "busy")["cache"] is None  # nothing was stored


@pytest.mark.parametrize(("share", "cache"), [(None, False), (False, True)])
def test_identical_requests_each_run_when_sharing_is_off(
    busy_repository: Path,
    make_server: ServerFactory,
    share: bool | None,
    cache: bool,
    hold_session: Callable[..., HeldSession],
) -> None:
    server = make_server(busy_repository, config=sharing(share, cache=cache))
    blocker = hold_session(server)
    futures = [server.submit("busy", busy_inputs(1, seed=7)) for _ in range(4)]
    blocker.release()
    for future in futures:
        future.result(timeout=WAIT_S)
    assert version_status(server, "busy")["rows_run"] == 3000 + 4


def test_followers_of_a_cancelled_leader_run_by_themselves(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(None, cache=True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=11)
    leader = server.submit("busy", inputs)
    followers = [server.submit("busy", inputs) for _ in range(3)]
    assert leader.cancel()  # still queued behind the blocker
    blocker.release()
    expected = server.predict("busy", inputs, version=1)["y"]
    for follower in followers:
        np.testing.assert_allclose(follower.result(timeout=WAIT_S)["y"], expected, rtol=1e-5)
    with pytest.raises(CancelledError):
        leader.result(timeout=0)


def test_sync_followers_of_a_leader_past_its_deadline_share_one_run_again(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """Callers of ``predict`` following a leader whose caller gave up (its deadline passed while it was
    queued): one of them runs for all, where each ran by itself, and a follower with a deadline of its own
    still gets it while it follows the new leader."""
    server = make_server(busy_repository, config=sharing(True, max_batch_size=1))
    blocker = hold_session(server, rows=1)
    inputs = busy_inputs(1, seed=21)
    answers: list[Any] = []
    errors: list[BaseException] = []

    def call(timeout_s: float | None) -> None:
        try:
            answers.append(server.predict("busy", inputs, timeout_s=timeout_s)["y"])
        except BaseException as exc:
            errors.append(exc)

    leader = threading.Thread(target=call, args=(0.2,))
    leader.start()
    wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)  # (the leader, behind the blocker)
    followers = [threading.Thread(target=call, args=(None,)) for _ in range(6)]
    followers.append(threading.Thread(target=call, args=(1.0,)))  # gives up while following the new leader
    for thread in followers:
        thread.start()
    leader.join(WAIT_S)
    assert [type(error) for error in errors] == [inprocserve.DeadlineExceededError]  # (the leader's)
    wait_until(lambda: len(errors) == 2)  # the follower with a deadline, while the session is still held
    assert isinstance(errors[1], inprocserve.DeadlineExceededError)
    ran_before = len(hold_session.rows)
    blocker.release()
    for thread in followers:
        thread.join(WAIT_S)
    assert len(answers) == 6
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer, answers[0])
    assert hold_session.rows[ran_before:] == [1]  # one run for six callers (six runs of one row before)


def test_async_followers_of_a_cancelled_leader_share_one_run_again(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """As above, for event loop tasks following a ``submit`` leader that its caller cancelled; a task
    cancelled while it follows the new leader gets its cancellation, the others their answer."""
    server = make_server(busy_repository, config=sharing(True, max_batch_size=1))
    blocker = hold_session(server, rows=1)
    inputs = busy_inputs(1, seed=22)

    async def follow() -> list[Any]:
        leader = server.submit("busy", inputs)
        tasks = [asyncio.ensure_future(server.apredict("busy", inputs)) for _ in range(6)]
        await asyncio.sleep(0)  # (each task routed and following the leader)
        assert leader.cancel()  # still queued behind the blocker: a follower leads the others now
        tasks[-1].cancel()
        await asyncio.sleep(0)
        blocker.release()
        return await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), WAIT_S)

    ran_before = len(hold_session.rows)
    results = asyncio.run(follow())
    assert isinstance(results[-1], asyncio.CancelledError)
    for result in results[1:-1]:
        np.testing.assert_array_equal(result["y"], results[0]["y"])
    assert hold_session.rows[ran_before:] == [1]


def test_a_submit_follower_past_its_deadline_as_it_follows_a_new_leader_is_let_go(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A ``submit`` follower whose deadline passed as its leader gave up follows the follower that leads now,
    and its alarm, armed again, fires at once: on the watchdog's thread, which may run before the follower
    is held again. Armed before it was, the alarm found nothing to give up, and the follower waited past its
    deadline for the new leader's run (as long as that took), then was answered as a success."""
    clock = ManualClock()
    server = make_server(busy_repository, config=sharing(True, max_batch_size=1), clock=clock)
    blocker = hold_session(server, rows=1)
    inputs = busy_inputs(1, seed=23)
    leader = server.submit("busy", inputs)
    first = server.submit("busy", inputs)  # (leads the others once the leader gave up)
    late = server.submit("busy", inputs, timeout_s=60)  # (its alarm: 60 s of the watchdog's own clock)
    sharing_of = server._sharing
    arm = sharing_of._deadlines.arm

    due: list[threading.Event] = []

    def arm_firing_at_once(delay_s: float, action: Callable[[], None], **kwargs: Any) -> Any:
        """An alarm already due fires on the watchdog's thread before the arming thread goes on, unless that
        thread holds the Sharing lock, which the alarm's action waits for (one order the threads may take)."""
        if delay_s > 0:
            return arm(delay_s, action, **kwargs)
        fired = threading.Event()
        due.append(fired)
        alarm = arm(delay_s, lambda: (action(), fired.set()), **kwargs)
        if not sharing_of._lock.locked():
            assert fired.wait(WAIT_S)
        return alarm

    sharing_of._deadlines.arm = arm_firing_at_once  # type: ignore[method-assign]
    clock.advance(120)  # the follower's deadline has passed on the server's clock, its alarm not yet fired
    assert leader.cancel()  # (still queued behind the blocker: the first follower leads the others now)
    assert len(due) == 1 and due[0].wait(WAIT_S)  # (its alarm armed again, and fired: before the new run)
    blocker.release()

    with pytest.raises(inprocserve.DeadlineExceededError, match="identical request in flight"):
        late.result(timeout=WAIT_S)
    assert first.result(timeout=WAIT_S)["y"].shape == (1, BUSY_WIDTH)


def hold_following(
    server: inprocserve.Server, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event]:
    """Stop a synchronous follower's caller just before it asks whether it still follows its leader: the
    first event is set once it got there, and it goes on once the second is set."""
    joined, proceed = threading.Event(), threading.Event()
    following = server._sharing.following

    def held_following(request: Any, batcher: Any) -> bool:
        joined.set()
        assert proceed.wait(WAIT_S)
        return following(request, batcher)

    monkeypatch.setattr(server._sharing, "following", held_following)
    return joined, proceed


def test_a_follower_requeued_before_its_caller_waits_leaves_no_trace(
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    # The leader gives up (cancelled) after the follower joined it and before the follower's caller asked
    # whether it still follows: the follower was queued to run by itself, and its caller waits for it in
    # the batcher. Nothing of it may stay in the sharing's bookkeeping: a later request could be taken for
    # it there, withdrawn from a queue it never joined, and drive the batcher's counts below zero.
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=12)
    leader = server.submit("busy", inputs)
    joined, proceed = hold_following(server, monkeypatch)
    answers: list[Any] = []
    follower = threading.Thread(target=lambda: answers.append(server.predict("busy", inputs)), daemon=True)
    follower.start()
    assert joined.wait(WAIT_S)
    assert leader.cancel()
    blocker.release()  # the worker drops the cancelled leader: the follower runs by itself
    wait_until(lambda: version_status(server, "busy")["batches_run"] >= 2)
    proceed.set()
    follower.join(timeout=WAIT_S)
    assert len(answers) == 1 and answers[0]["y"].shape == (1, 512)
    assert not server._sharing._waiting and not server._sharing._requeued
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert version_status(server, "busy")["queued_rows"] == 0


def test_a_follower_past_its_deadline_while_its_answer_is_handed_over_is_never_withdrawn(
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    # The leader's answer has been taken for the follower and is being handed to it when its caller, past
    # its deadline, starts waiting. The caller takes that answer: the request was never queued, so giving
    # it up in the batcher would take it off a queue it is not in, and drive the counts below zero.
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=14)
    leader = server.submit("busy", inputs)
    joined, proceed = hold_following(server, monkeypatch)
    handing, handed = threading.Event(), threading.Event()
    finish = _inflight.finish_detached

    def held_finish(request: Any, *args: Any) -> None:
        if request.future is None:  # the follower's answer: taken from its leader, not yet handed over
            handing.set()
            assert handed.wait(WAIT_S)
        finish(request, *args)

    monkeypatch.setattr(_inflight, "finish_detached", held_finish)
    outcome: list[Any] = []

    def follow() -> None:
        try:
            outcome.append(server.predict("busy", inputs, timeout_s=0.5))
        except Exception as exc:
            outcome.append(exc)

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    assert joined.wait(WAIT_S)
    blocker.release()
    assert handing.wait(WAIT_S)  # (the leader's own future resolves once its followers are handed theirs)
    time.sleep(0.6)  # the follower's deadline passes while its answer is being handed over
    proceed.set()
    wait_until(lambda: not follower.is_alive() or _waits_for_its_answer(follower))
    handed.set()
    follower.join(timeout=WAIT_S)
    leader.result(timeout=WAIT_S)
    assert len(outcome) == 1 and not isinstance(outcome[0], Exception), outcome
    status = version_status(server, "busy")
    assert (status["in_flight"], status["queued_rows"]) == (0, 0)


def _waits_for_its_answer(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in ``Sharing.wait`` (or anything called from it)."""
    frame = frame_of(thread.ident or 0)
    while frame is not None:
        if frame.f_code.co_name == "wait" and "_inflight" in frame.f_code.co_filename:
            return True
        frame = frame.f_back
    return False


def test_followers_that_gave_up_are_not_kept_alive_by_a_long_leader(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """Callers of the hot request with short deadlines follow a leader whose run takes long, and give up:
    the leader must not keep each one's inputs until it finishes (400 of them held 50 MiB)."""
    server, held, hot, leader = held_hot_leader(make_server, busy_repository, hold_session, samples=False)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for _ in range(400):
            with pytest.raises(inprocserve.DeadlineExceededError, match="identical request in flight"):
                server.predict("busy", {name: array.copy() for name, array in hot.items()}, timeout_s=0.001)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4 * 2**20  # (50 MiB while the leader ran)
    held.let_go()
    np.testing.assert_array_equal(leader.result(timeout=WAIT_S)["y"], server.predict("busy", hot)["y"])


@pytest.mark.parametrize("gives_up", ["submit cancelled", "apredict cancelled", "apredict past its deadline"])
def test_async_followers_that_gave_up_are_let_go_and_recorded_once(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder, gives_up: str
) -> None:
    """As for synchronous callers above: a cancelled ``submit`` future, or an event loop's task cancelled or
    past its deadline, lets its follower (and its inputs) go at once, not when the leader finishes (400 of
    them held 51 MiB), and is recorded once, as what its caller got (a cancelled ``submit`` follower was
    recorded as answered)."""
    server, held, hot, leader = held_hot_leader(make_server, busy_repository, hold_session, samples=False)

    def copy() -> dict[str, np.ndarray]:
        return {name: array.copy() for name, array in hot.items()}

    async def give_up() -> None:
        for _ in range(400):
            if gives_up == "apredict past its deadline":
                with pytest.raises(inprocserve.DeadlineExceededError):
                    await server.apredict("busy", copy(), timeout_s=0.001)
                continue
            task = asyncio.ensure_future(server.apredict("busy", copy()))
            await asyncio.sleep(0)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        await asyncio.sleep(0)  # (the tasks' futures' callbacks run)

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        if gives_up == "submit cancelled":
            for _ in range(400):
                assert server.submit("busy", copy()).cancel()
        else:
            asyncio.run(give_up())
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4 * 2**20  # (51 MiB while the leader ran)
    latency = version_status(server, "busy")["latency_ms"]
    assert (latency["count"], latency["errors"]) == (1, 400)  # recorded when they gave up
    held.let_go()
    np.testing.assert_array_equal(leader.result(timeout=WAIT_S)["y"], server.predict("busy", hot)["y"])
    latency = version_status(server, "busy")["latency_ms"]
    assert (latency["count"], latency["errors"]) == (3, 400)  # and never again


def test_submit_followers_past_their_deadline_are_let_go_at_it(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A ``submit`` follower with ``timeout_s`` fails at its deadline, as ``predict``'s does, and lets its
    inputs go: nothing else let it go before its leader finished (400 of them with a 1 ms deadline held
    51 MiB behind one held-up 64-row run, then were all answered 650 ms late, as successes)."""
    server, held, hot, leader = held_hot_leader(make_server, busy_repository, hold_session, samples=False)
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        futures = [
            server.submit("busy", {name: array.copy() for name, array in hot.items()}, timeout_s=0.001)
            for _ in range(400)
        ]
        for future in futures:
            with pytest.raises(inprocserve.DeadlineExceededError, match="identical request in flight"):
                future.result(timeout=WAIT_S)
        futures.clear()
        gc.collect()
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 4 * 2**20  # (51 MiB while the leader ran)
    latency = version_status(server, "busy")["latency_ms"]
    assert (latency["count"], latency["errors"]) == (1, 400)  # recorded at their deadline
    held.let_go()
    leader.result(timeout=WAIT_S)
    latency = version_status(server, "busy")["latency_ms"]
    assert (latency["count"], latency["errors"]) == (2, 400)  # and never again


def test_a_submit_follower_cancelled_as_its_leader_answers_is_recorded_as_what_its_caller_got(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A ``submit`` follower cancelled just as its leader's answer is handed to it (its holder taken, the
    answer not yet set): recorded as answered, its caller got ``CancelledError`` (up to 9 of 1,650 such
    cancellations under a thread switch every 20 us). Once handed over it runs: a cancel then fails, and
    the caller gets the answer that is recorded."""
    server, held, hot, leader = held_hot_leader(make_server, busy_repository, hold_session)
    followers = [server.submit("busy", hot) for _ in range(3)]
    sharing = server._sharing
    deliver = sharing._deliver

    def cancelled_meanwhile(request: Any) -> None:  # (its caller cancels at this very moment)
        if request.future in followers:
            request.future.cancel()
        deliver(request)

    sharing._deliver = cancelled_meanwhile  # type: ignore[method-assign]
    held.let_go()
    leader.result(timeout=WAIT_S)
    answered = 0
    for follower in followers:
        try:
            follower.result(timeout=WAIT_S)
            answered += 1
        except CancelledError:
            pass
    latency = version_status(server, "busy")["latency_ms"]
    assert (latency["count"], latency["errors"]) == (2 + answered, 3 - answered)  # (was (5, 0), 3 cancelled)


def test_a_submit_follower_cancelled_as_its_deadline_fires_gets_what_is_recorded(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A ``submit`` follower whose caller cancels it just as its deadline's alarm takes it: the alarm records
    ``DeadlineExceededError``, so the caller gets that, not a ``CancelledError`` that nothing recorded."""
    server, held, hot, leader = held_hot_leader(make_server, busy_repository, hold_session)
    sharing = server._sharing
    deliver = sharing._deliver
    followers: list[Any] = []

    def cancelled_meanwhile(request: Any) -> None:  # (its caller cancels at this very moment)
        if request.future in followers:
            request.future.cancel()
        deliver(request)

    sharing._deliver = cancelled_meanwhile  # type: ignore[method-assign]
    followers.extend(server.submit("busy", hot, timeout_s=0.01) for _ in range(3))
    for follower in followers:
        with pytest.raises(inprocserve.DeadlineExceededError):
            follower.result(timeout=WAIT_S)
    held.let_go()
    leader.result(timeout=WAIT_S)


def test_followers_of_a_leader_past_its_deadline_are_answered(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=12)
    leader = server.submit("busy", inputs, timeout_s=0.001)  # expires while the blocker is held
    followers = [server.submit("busy", inputs) for _ in range(3)]
    wait_until(leader.done)  # answered at its deadline, still queued
    blocker.release()
    with pytest.raises(inprocserve.DeadlineExceededError):
        leader.result(timeout=WAIT_S)
    for follower in followers:
        assert follower.result(timeout=WAIT_S)["y"].shape == (1, 512)


def test_followers_of_a_failing_leader_get_its_error(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    poisoned = busy_inputs(1, index=99, seed=13)  # passes validation, fails inside onnxruntime
    futures = [server.submit("busy", poisoned) for _ in range(4)]
    blocker.release()
    errors = [future.exception(timeout=WAIT_S) for future in futures]
    assert all(isinstance(error, inprocserve.InferenceError) for error in errors)
    assert len({str(error) for error in errors}) == 1
    assert server.predict("busy", busy_inputs(1, seed=13))["y"].shape == (1, 512)  # the key was freed


def test_a_leader_refused_for_overload_frees_its_key(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(True, max_queue_rows=2, max_request_rows=3000))
    blocker = hold_session(server)
    filler = server.submit("busy", busy_inputs(2, seed=1))  # the queue is full now
    inputs = busy_inputs(1, seed=14)
    refused = server.submit("busy", inputs)
    assert isinstance(refused.exception(timeout=WAIT_S), inprocserve.QueueFullError)
    blocker.release()
    filler.result(timeout=WAIT_S)
    # Had the refused leader kept its key, this identical request would follow it and never be answered.
    assert server.submit("busy", inputs).result(timeout=WAIT_S)["y"].shape == (1, 512)


def test_invalid_input_never_becomes_a_leader(busy_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(busy_repository, config=sharing(True))
    bad = {"x": np.ones((1, 3), np.float32), "index": np.ones(1, np.int64)}
    for _ in range(2):
        with pytest.raises(inprocserve.InvalidInputError):
            server.predict("busy", bad)
    assert len(server._sharing) == 0


# -- the primitive itself ----------------------------------------------------------------------------------

KEY = ("m", 1, 0, b"digest")


@pytest.mark.parametrize(
    ("one", "other"),
    [
        (["a\x1fb", "c"], ["a", "b\x1fc"]),  # a separator inside a string
        ([b"x"], ["b'x'"]),  # bytes against the text of their repr
        ([b"x"], ["x"]),  # bytes against text
        (["ab", ""], ["a", "b"]),
    ],
)
def test_different_string_inputs_never_share_a_key(one: list[Any], other: list[Any]) -> None:
    # A shared key hands one caller another input's answer (from the cache, or a run in flight).
    def key(items: list[Any]) -> bytes:
        return inputs_key({"s": np.array(items, dtype=object)})

    assert key(one) != key(other)
    assert key(one) == key(list(one))


def test_a_string_that_utf8_cannot_encode_still_has_a_key() -> None:
    lone_surrogate = "\ud800"  # hostile JSON can carry one ("\\ud800"); it must not break the key
    first = inputs_key({"s": np.array([lone_surrogate], dtype=object)})
    assert first != inputs_key({"s": np.array(["\ud801"], dtype=object)})


def test_release_shares_the_answer_and_frees_the_key() -> None:
    coalescer = Coalescer()
    assert coalescer.join(KEY) is None  # the first caller leads
    follower = coalescer.join(KEY)
    assert follower is not None and coalescer.join(KEY) is follower
    outputs = {"y": np.ones(2)}
    coalescer.release(KEY, outputs, None)
    assert follower.result(timeout=0) is outputs and len(coalescer) == 0
    coalescer.release(KEY, None, RuntimeError("twice"))  # idempotent: nobody is left to wake
    assert coalescer.join(KEY) is None


@pytest.mark.parametrize(
    "error",
    [inprocserve.QueueFullError("full"), inprocserve.InferenceError("bad"), inprocserve.InvalidInputError("no")],
)
def test_errors_about_the_inputs_or_the_server_are_shared(error: BaseException) -> None:
    coalescer = Coalescer()
    coalescer.join(KEY)
    follower = coalescer.join(KEY)
    assert follower is not None
    coalescer.release(KEY, None, error)
    assert follower.exception(timeout=0) is error


@pytest.mark.parametrize(
    "error",
    [CancelledError(), inprocserve.DeadlineExceededError("late"), VersionRetiredError("gone")],
)
def test_errors_of_the_leader_alone_make_followers_run(error: BaseException) -> None:
    coalescer = Coalescer()
    coalescer.join(KEY)
    follower = coalescer.join(KEY)
    assert follower is not None
    coalescer.release(KEY, None, error)
    gone = follower.exception(timeout=0)
    assert isinstance(gone, LeaderGone) and gone.cause is error


def test_a_leader_without_answer_or_error_still_wakes_followers() -> None:
    coalescer = Coalescer()
    coalescer.join(KEY)
    follower = coalescer.join(KEY)
    assert follower is not None
    coalescer.release(KEY, None, None)
    assert isinstance(follower.exception(timeout=0), LeaderGone)


def test_synchronous_followers_of_a_leader_past_its_deadline_are_answered(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=15)
    outcomes: dict[int, object] = {}

    def call(index: int) -> None:
        try:
            outcomes[index] = server.predict("busy", inputs, timeout_s=0.05 if index == 0 else None)["y"].shape
        except inprocserve.InprocserveError as exc:
            outcomes[index] = type(exc)

    leader = threading.Thread(target=call, args=(0,))
    leader.start()
    wait_until(lambda: len(server._sharing) == 1)  # the leader holds the key; the others follow it
    followers = [threading.Thread(target=call, args=(i,)) for i in range(1, 4)]
    for thread in followers:
        thread.start()
    leader.join(timeout=WAIT_S)  # answered at its deadline, still queued
    blocker.release()
    for thread in [leader, *followers]:
        thread.join(timeout=WAIT_S)
        assert not thread.is_alive(), "a caller was left waiting"
    assert outcomes == {0: inprocserve.DeadlineExceededError, 1: (1, 512), 2: (1, 512), 3: (1, 512)}


def test_a_follower_past_its_deadline_leaves_its_leader_and_the_queue_intact(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(None, cache=True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=16)
    leader = server.submit("busy", inputs)
    with pytest.raises(inprocserve.DeadlineExceededError, match="identical request in flight"):
        server.predict("busy", inputs, timeout_s=0.01)  # follows the queued leader, gives up first
    blocker.release()
    # The follower was never queued: giving up must not take its rows off the queue's count, or the
    # batcher would think the queue empty and never run the leader.
    assert leader.result(timeout=WAIT_S)["y"].shape == (1, 512)
    status = version_status(server, "busy")
    assert (status["queued_rows"], status["in_flight"]) == (0, 0)


def test_a_shared_answer_is_read_only_for_every_caller() -> None:
    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    follower = coalescer.join(KEY)
    assert follower is not None
    outputs = {"y": np.ones(2)}
    coalescer.release(KEY, outputs, None)
    with pytest.raises(ValueError, match="read-only"):
        follower.result(timeout=0)["y"][0] = 5.0  # one caller's change would reach the others


def test_an_answer_nobody_followed_stays_writable() -> None:
    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    outputs = {"y": np.ones(2)}
    coalescer.release(KEY, outputs, None)
    outputs["y"][0] = 5.0


def test_a_follower_whose_deadline_passes_while_its_answer_is_handed_over_takes_it(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    """The leader's answer has been taken for a synchronous follower, but not yet handed to it, when the
    follower's deadline passes: the follower gets that answer, and the batcher's counts stay untouched
    (it was never queued: taking it off the queue would strand the next request)."""
    from inprocserve._request import Request, Route, finish_detached
    from inprocserve._rollout import Decision

    server = make_server(busy_repository, config=sharing(True))
    batcher = server._routes["busy"].versions[1].batcher
    assert batcher is not None
    route = Route("busy", 1, "stable", "stable", "r1", [], Decision(1, "stable", "stable"))
    request = Request(busy_inputs(1, seed=21), 1, route, None, None)  # a follower: never queued
    request.deadline = 0.0  # already past: the caller's wait gives up at once
    answer = {"y": np.zeros((1, 512), np.float32)}
    handed = threading.Timer(0.05, finish_detached, (request, answer, None, server._deliver))
    handed.start()  # _follow took it out of the waiting set; its answer arrives a moment later
    server._sharing.wait(request, batcher)
    handed.join(WAIT_S)
    assert request.outputs is answer
    status = version_status(server, "busy")
    assert (status["queued_rows"], status["in_flight"]) == (0, 0)
    assert server.predict("busy", busy_inputs(1, seed=22), timeout_s=WAIT_S)["y"].shape == (1, 512)


def test_followers_of_a_leader_cancelled_in_the_queue_at_close_are_answered(
    busy_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(busy_repository, config=sharing(True))
    blocker = occupy(server)
    inputs = busy_inputs(1, seed=23)
    leader = server.submit("busy", inputs)
    followers = [server.submit("busy", inputs) for _ in range(2)]
    assert leader.cancel()
    server.close(timeout_s=0.0)  # the cancelled leader is still queued: it is failed as a leftover
    blocker.exception(timeout=WAIT_S)
    for follower in followers:
        follower.exception(timeout=WAIT_S)  # answered or failed, never left waiting


def reload_behind(server: inprocserve.Server, old: Any, blocker: HeldSession, *, draining: Any = None) -> None:
    """Refresh the repository while ``blocker`` keeps the old copy busy: the old copy drains (what is
    queued behind the blocker runs or expires there), then the reload completes. ``draining``: called
    once the old copy drains, before the blocker is released (a leader that gives up then)."""
    reload = threading.Thread(target=server.refresh)
    reload.start()
    wait_until(lambda: old.state == "draining", timeout_s=WAIT_S)
    assert not blocker.done(), "the held blocker finished before the reload began"
    if draining is not None:
        draining()
    blocker.release()
    reload.join(timeout=WAIT_S)


@pytest.mark.holds_a_woken_caller  # (the held caller's re-run is answered, and woken, before proceed is set)
def test_followers_whose_leader_gave_up_during_a_reload_of_its_version_run_on_the_new_copy(
    busy_repository: Path,
    make_server: ServerFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    # The leader gives up in the queue of version 1's old copy while a reload swaps in a new copy of the same
    # version (its file was rewritten). Its followers re-run by themselves; the old copy refuses them, as it
    # drains, and version 1 still serves: they must run on the new copy, not fail with "was unloaded".
    server = make_server(busy_repository, config=sharing(True, max_queue_rows=30_000, max_request_rows=30_000))
    old = server._registry.loaded["busy"][1]
    waits_on_the_old_copy: list[Any] = []
    old_wait = old.batcher.wait
    monkeypatch.setattr(old.batcher, "wait", lambda request: (waits_on_the_old_copy.append(request), old_wait(request)))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=21)
    leader = server.submit("busy", inputs)  # gives up (cancelled) as the old copy drains
    followers = [server.submit("busy", inputs) for _ in range(2)]
    answers: list[Any] = []
    joined, proceed = hold_following(server, monkeypatch)  # its caller asks only after the re-run below
    waiter = threading.Thread(target=lambda: answers.append(server.predict("busy", inputs)))
    waiter.start()
    assert joined.wait(WAIT_S)
    staged = save_model(build_busy_model(BUSY_WIDTH), tmp_path, "busy", 1)
    staged.replace(busy_repository / "busy" / "1" / "model.onnx")
    reload_behind(server, old, blocker, draining=leader.cancel)
    assert leader.cancelled()
    for follower in followers:
        follower.result(timeout=WAIT_S)  # re-run on the new copy: the held caller's request too, by now
    proceed.set()
    expected = server.predict("busy", inputs, version=1)["y"]
    for follower in followers:
        np.testing.assert_allclose(follower.result(timeout=WAIT_S)["y"], expected, rtol=1e-5)
    waiter.join(timeout=WAIT_S)
    (answer,) = answers
    np.testing.assert_allclose(answer["y"], expected, rtol=1e-5)
    assert server._registry.loaded["busy"][1] is not old
    # Its caller waited for the re-run where it was queued, not in the old copy (whose deadline and
    # interruption bookkeeping would then act on a request it never held).
    assert waits_on_the_old_copy == []


@pytest.mark.parametrize("caller", ["submit", "predict"])
def test_followers_whose_leader_gave_up_while_a_new_version_replaced_theirs_run_on_the_new_version(
    caller: str, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    # A deploy drops version 2 in while version 1's leader gives up in its queue: version 1 is unloaded (the
    # policy serves the latest), and its followers, routed by default, re-run by themselves. They were
    # answered "version 1 was unloaded" while version 2 served: a hot reload must not drop a request.
    server = make_server(busy_repository, config=sharing(True, max_queue_rows=30_000, max_request_rows=30_000))
    old = server._registry.loaded["busy"][1]
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=22)
    leader = server.submit("busy", inputs)  # gives up (cancelled) as version 1 drains
    answers: list[Any] = []
    if caller == "submit":
        followers = [server.submit("busy", inputs) for _ in range(2)]
    else:
        followers = []
        waiter = threading.Thread(target=lambda: answers.append(server.predict("busy", inputs)), daemon=True)
        waiter.start()
        wait_until(lambda: len(server._sharing._waiting) == 1, timeout_s=WAIT_S)  # it follows the leader
    save_model(build_busy_model(BUSY_WIDTH), busy_repository, "busy", 2)
    reload_behind(server, old, blocker, draining=leader.cancel)
    assert server.models == {"busy": [2]}
    assert leader.cancelled()
    if caller == "predict":
        waiter.join(timeout=WAIT_S)
        followers_answers = answers
    else:
        followers_answers = [follower.result(timeout=WAIT_S) for follower in followers]
    assert len(followers_answers) == (2 if caller == "submit" else 1)
    # each recorded against the version that answered it (its latency: every request answered so far)
    latency = server.status()["models"]["busy"]["versions"]["2"]["latency_ms"]
    assert latency["count"] == len(followers_answers) and latency["errors"] == 0
    expected = server.predict("busy", inputs)["y"]
    for answer in followers_answers:
        assert answer.version == 2 and "version 1 was unloaded" in answer.reason
        np.testing.assert_allclose(answer["y"], expected, rtol=1e-5)
    batcher = server._registry.routes["busy"].default.batcher
    assert batcher is not None
    wait_until(lambda: batcher.in_flight == 0 and batcher.queued_rows == 0, timeout_s=WAIT_S)


def test_a_follower_moved_to_the_new_version_that_misses_its_deadline_is_recorded_there(
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    """Its error, like its answer, belongs to the version it was queued on (it was recorded on the
    unloaded one)."""
    server = make_server(busy_repository, config=sharing(True, max_queue_rows=30_000, max_request_rows=30_000))
    old = server._registry.loaded["busy"][1]
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=24)
    leader = server.submit("busy", inputs)
    outcome: list[BaseException] = []

    def follow() -> None:
        try:
            server.predict("busy", inputs, timeout_s=5)
        except inprocserve.DeadlineExceededError as exc:
            outcome.append(exc)

    waiter = threading.Thread(target=follow, daemon=True)
    waiter.start()
    wait_until(lambda: len(server._sharing._waiting) == 1, timeout_s=WAIT_S)
    save_model(build_busy_model(BUSY_WIDTH), busy_repository, "busy", 2)
    reload = threading.Thread(target=server.refresh)
    reload.start()
    wait_until(lambda: server._registry.routes["busy"].default.version == 2, timeout_s=WAIT_S)
    new = server._registry.routes["busy"].default
    assert new.batcher is not None
    gate = threading.Event()
    run = new.batcher._execution._run_batch
    monkeypatch.setattr(new.batcher._execution, "_run_batch", lambda *a, **k: (gate.wait(WAIT_S), run(*a, **k))[1])
    held = server.submit("busy", busy_inputs(1, seed=25), version=2)  # keeps version 2's session busy
    assert not blocker.done(), "the held blocker finished before version 2 was held"
    leader.cancel()  # its follower is queued on version 2, behind `held`
    blocker.release()
    waiter.join(timeout=WAIT_S)
    gate.set()
    reload.join(timeout=WAIT_S)
    held.result(timeout=WAIT_S)
    assert leader.cancelled()
    assert len(outcome) == 1 and "version 2" in str(outcome[0])
    assert server.status()["models"]["busy"]["versions"]["2"]["latency_ms"]["errors"] == 1
    assert old.state != "ready"


def test_a_follower_whose_leader_gave_up_as_the_server_closed_is_told_it_closed(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=sharing(True, max_queue_rows=30_000, max_request_rows=30_000))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=26)
    leader = server.submit("busy", inputs)
    follower = server.submit("busy", inputs)
    batcher = server._registry.loaded["busy"][1].batcher
    closing = threading.Thread(target=lambda: server.close(timeout_s=WAIT_S))
    closing.start()
    wait_until(lambda: batcher._closing, timeout_s=WAIT_S)
    assert not blocker.done(), "the held blocker finished before the server began to close"
    assert leader.cancel()  # gives up as the server closes
    blocker.release()
    closing.join(timeout=WAIT_S)
    with pytest.raises(inprocserve.ServerClosedError):  # (it was told "version 1 was unloaded")
        follower.result(timeout=WAIT_S)


def test_a_pinned_follower_whose_version_was_unloaded_is_told_so(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    """One that asked for version 1 by number is never answered by another version."""
    server = make_server(busy_repository, config=sharing(True, max_queue_rows=30_000, max_request_rows=30_000))
    old = server._registry.loaded["busy"][1]
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=23)
    leader = server.submit("busy", inputs, version=1)
    follower = server.submit("busy", inputs, version=1)
    save_model(build_busy_model(BUSY_WIDTH), busy_repository, "busy", 2)
    reload_behind(server, old, blocker, draining=leader.cancel)
    assert leader.cancelled()
    with pytest.raises(inprocserve.ModelNotFoundError, match="version 1 was unloaded"):
        follower.result(timeout=WAIT_S)


def test_a_leader_interrupted_right_after_it_joined_frees_its_key(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(busy_repository, config=sharing(True))
    telemetry = server._sharing._telemetry
    counted = telemetry.cache_result

    def interrupted(*args: Any, **kwargs: Any) -> None:  # Ctrl-C arriving just after the key was joined
        monkeypatch.setattr(telemetry, "cache_result", counted)
        raise KeyboardInterrupt

    monkeypatch.setattr(telemetry, "cache_result", interrupted)
    inputs = busy_inputs(1, seed=15)
    with pytest.raises(KeyboardInterrupt):
        server.submit("busy", inputs)
    assert len(server._sharing) == 0  # had it kept the key, the identical request below would follow nobody
    assert server.submit("busy", inputs).result(timeout=WAIT_S)["y"].shape == (1, BUSY_WIDTH)


def test_a_shared_text_answer_cannot_be_made_writable_again() -> None:
    # A text output owns its memory: a caller could set its read-only flag back and change every follower's.
    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    follower = coalescer.join(KEY)
    assert follower is not None
    outputs = {"label": np.array(["cat", "dog"], object)}
    coalescer.release(KEY, outputs, None)
    for answer in (outputs["label"], follower.result(timeout=0)["label"]):  # the leader's and the follower's
        with pytest.raises(ValueError, match="WRITEABLE"):
            answer.setflags(write=True)
    assert follower.result(timeout=0)["label"].tolist() == ["cat", "dog"]


@pytest.mark.parametrize("merged", [True, False], ids=["a row of a merged batch", "a run of its own"])
def test_followers_answer_cannot_be_changed_through_the_array_it_is_a_view_of(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession], merged: bool
) -> None:
    # A follower's answer was a read-only view of a copy that owns its memory: that copy, its .base, could be
    # made writable again (setflags(write=True), numpy's usual advice) and written through, changing the
    # answer the leader and every other follower got.
    from .test_cache_review import change_through_bases

    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    hot = busy_inputs(1, seed=7)
    leader, *followers = [server.submit("busy", hot) for _ in range(3)]
    other = server.submit("busy", busy_inputs(1, seed=8)) if merged else None  # (merged with the leader's row)
    blocker.release()
    answers = [future.result(timeout=WAIT_S)["y"] for future in (leader, *followers)]
    if other is not None:
        other.result(timeout=WAIT_S)
    expected = answers[0].copy()
    changed = [change_through_bases(answer, -1.0) for answer in answers[1:]]
    for answer in answers:
        np.testing.assert_array_equal(answer, expected)
    assert not any(changed)


@pytest.mark.parametrize(
    "value", [np.arange(12, dtype=np.float32).reshape(4, 3)[1:2], np.arange(3.0)], ids=["a row", "its own memory"]
)
def test_a_shared_answer_cannot_be_changed_through_the_array_it_is_a_view_of(value: np.ndarray) -> None:
    from .test_cache_review import change_through_bases

    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    followers = [coalescer.join(KEY) for _ in range(2)]
    outputs = {"y": value}
    coalescer.release(KEY, outputs, None)
    expected = value.copy()
    answers = [outputs["y"], *(follower.result(timeout=0)["y"] for follower in followers if follower is not None)]
    assert not any(change_through_bases(answer, -1.0) for answer in answers)
    for answer in answers:
        np.testing.assert_array_equal(answer, expected)


def test_a_shared_text_answer_changed_through_its_base_changes_nobody_elses() -> None:
    # Text cannot be held in memory nobody can write: a follower's answer was a read-only view of the array
    # the leader and every other follower were answered with, and answer.base.setflags(write=True) opened it.
    from .test_cache_review import change_through_bases

    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    followers = [coalescer.join(KEY) for _ in range(2)]
    outputs = {"label": np.array([["cat"], ["dog"]], object)}
    coalescer.release(KEY, outputs, None)
    # (each follower is handed the leader's answer as Sharing hands it: _inflight.shareable)
    answers = [outputs["label"], *(_inflight.shareable(f.result(timeout=0))["label"] for f in followers if f)]
    assert change_through_bases(answers[0], "changed by the leader")
    assert change_through_bases(answers[1], "changed by a follower")
    assert answers[2].tolist() == [["cat"], ["dog"]]
    with pytest.raises(ValueError, match="WRITEABLE"):  # (read-only still, as a shared number answer is)
        answers[2].setflags(write=True)


def test_a_leader_changing_its_zipmap_answer_changes_no_follower_that_copies_it_later() -> None:
    # Each follower copies a ZipMap's maps, but from what the leader was answered with: a follower whose
    # callback ran after the leader's caller changed its maps (one that joined as the leader finished, and
    # was called back when it added its callback) copied the change.
    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    follower = coalescer.join(KEY)
    assert follower is not None
    outputs = {"output_probability": [{"cat": 0.9, "dog": 0.1}]}
    coalescer.release(KEY, outputs, None)
    outputs["output_probability"][0]["cat"] = 0.0  # the leader's caller, changing its own answer
    late = _inflight.shareable(follower.result(timeout=0))  # (the copy Sharing hands a follower)
    assert late["output_probability"] == [{"cat": 0.9, "dog": 0.1}]


def test_an_answer_that_cannot_be_copied_for_followers_sends_them_to_run_by_themselves() -> None:
    # The followers' copy of a non-tensor output (a backend's object holding a lock, which deepcopy refuses; a
    # text answer too large to copy) is made as the leader releases them: it raised there, before their future
    # was resolved, so they waited for good, and the leader, whose answer was ready, got the copy's error.
    class Handle:
        def __init__(self) -> None:
            self.lock = threading.Lock()  # (deepcopy: "cannot pickle '_thread.lock' object")

    coalescer = Coalescer()
    assert coalescer.join(KEY) is None
    follower = coalescer.join(KEY)
    assert follower is not None
    coalescer.release(KEY, {"y": np.arange(3.0), "handle": Handle()}, None)
    gone = follower.exception(timeout=0)
    assert isinstance(gone, LeaderGone) and isinstance(gone.cause, TypeError)
    assert len(coalescer) == 0


def test_a_follower_whose_own_copy_of_the_answer_fails_gets_an_error_not_a_wait_for_good(
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: Callable[..., HeldSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each follower copies what a caller may change in place from the leader's answer, in the leader's
    # done-callback: a copy that raised there (out of memory) left the follower unanswered for good.
    server = make_server(busy_repository, config=sharing(True))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=23)
    leader = server.submit("busy", inputs)
    follower = server.submit("busy", inputs)
    shareable = _inflight.shareable
    calls: list[int] = []

    def copy_fails_for_the_follower(outputs: Any) -> Any:
        calls.append(1)
        if len(calls) > 1:  # (the first: the leader's release; then each follower's own copy)
            raise MemoryError
        return shareable(outputs)

    monkeypatch.setattr(_inflight, "shareable", copy_fails_for_the_follower)
    blocker.release()
    assert leader.result(timeout=WAIT_S)["y"].shape == (1, 512)
    with pytest.raises(inprocserve.InferenceError, match="could not be copied for this one"):
        follower.result(timeout=WAIT_S)
