"""A queued request whose caller gave up without waiting for it (a cancelled ``submit`` future, an
``apredict`` task cancelled or answered by its own deadline) leaves the queue at once: its rows no longer
count against ``max_queue_rows``, so a live caller is not refused by a queue that holds nothing live, and
the request is recorded once, with what its caller got."""

from __future__ import annotations

import asyncio
import concurrent.futures
import gc
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import inprocserve
from inprocserve import BatchingConfig, ModelConfig
from inprocserve._batching import Batcher
from inprocserve._request import DONE

from .conftest import HeldSession, ServerFactory, SessionHolder, busy_inputs, occupy, version_status, wait_until
from .test_telemetry import Otel, _outcomes
from .test_telemetry import otel as otel  # the fixture: one SDK per process
from .test_telemetry_hardening import outcomes_since

BOUNDED = ModelConfig(batching=BatchingConfig(max_queue_rows=64, max_request_rows=4096, max_delay_s=0.0))


def test_cancelled_submits_give_their_rows_back_at_once(
    otel: Otel, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    before = _outcomes(otel, "busy")
    server = make_server(busy_repository, models={"busy": BOUNDED})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server)
    head = server.submit("busy", busy_inputs(1))
    cancelled = [server.submit("busy", busy_inputs(8)) for _ in range(7)]  # the queue is at 57 of 64 rows
    assert all(future.cancel() for future in cancelled)
    _only_the_live_rows_count(server, blocker, head, blocker_rows=3000)
    assert outcomes_since(otel, "busy", before) == {("ok", None): 4, ("client_error", "CancelledError"): 7}


@pytest.mark.parametrize("way", ["full", "merged"])
@pytest.mark.parametrize("ending", ["cancelled", "cancelled before its deadline", "deadline"])
def test_apredict_tasks_that_gave_up_give_their_rows_back_at_once(
    way: str,
    ending: str,
    otel: Otel,
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    """Queued on their own (the full way, as for a version with a cache or a rollout), or merged by the loop
    into one request (dropped once every task of it gave up)."""
    before = _outcomes(otel, "busy")
    server = make_server(busy_repository, models={"busy": BOUNDED})
    if way == "full":
        monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server)
    timeout_s = {"cancelled": None, "cancelled before its deadline": 60.0, "deadline": 0.05}[ending]

    async def main() -> Any:
        tasks = [
            asyncio.ensure_future(server.apredict("busy", busy_inputs(8, index=i), timeout_s=timeout_s))
            for i in range(7)
        ]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # their iteration is over: they are queued
        assert version_status(server, "busy")["queued_rows"] == 56
        if ending != "deadline":
            for task in tasks:
                task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert not blocker.done()
        assert version_status(server, "busy")["queued_rows"] == 0
        live = asyncio.ensure_future(server.apredict("busy", busy_inputs(16)))  # refused with QueueFullError before
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # queued behind the held blocker (or refused)
        blocker.release()
        return results, await live

    results, live = asyncio.run(main())
    got = inprocserve.DeadlineExceededError if ending == "deadline" else asyncio.CancelledError
    assert all(isinstance(result, got) for result in results)
    assert live["picked"].shape == (16, 2)
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert version_status(server, "busy")["rows_run"] == 1 + 3000 + 16
    outcome = (
        ("deadline_exceeded", "DeadlineExceededError") if ending == "deadline" else ("client_error", "CancelledError")
    )
    wait_until(lambda: sum(outcomes_since(otel, "busy", before).values()) >= 10)
    assert outcomes_since(otel, "busy", before) == {("ok", None): 3, outcome: 7}


def test_a_merged_request_keeps_its_rows_while_one_of_its_tasks_waits(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, models={"busy": BOUNDED})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server)

    async def main() -> Any:
        tasks = [asyncio.ensure_future(server.apredict("busy", busy_inputs(8, index=i))) for i in range(4)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        for task in tasks[1:]:
            task.cancel()
        await asyncio.sleep(0)
        assert version_status(server, "busy")["queued_rows"] == 32  # one request: it runs whole for the first
        blocker.release()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = asyncio.run(main())
    assert results[0]["picked"].shape == (8, 2)
    assert all(isinstance(result, asyncio.CancelledError) for result in results[1:])
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert version_status(server, "busy")["rows_run"] == 1 + 3000 + 32


@pytest.mark.parametrize("timeout_s", [None, 600.0])
def test_a_kept_future_does_not_keep_its_requests_inputs(
    timeout_s: float | None, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    """The done-callback that withdraws a cancelled request lets go of it once the future is done: callers
    that keep their futures (a list of them, answered one by one) must not keep every request's inputs. Nor
    does the deadline alarm of one answered long before its deadline (disarmed, it stays in the watchdog's
    heap until then)."""
    server = make_server(busy_repository, models={"busy": BOUNDED})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server)
    inputs = busy_inputs(8)
    kept = weakref.ref(inputs["x"])
    future = server.submit("busy", inputs, timeout_s=timeout_s)  # queued behind the blocker
    del inputs
    blocker.release()
    answer = weakref.ref(future.result(timeout=60)["picked"])
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    gc.collect()
    assert kept() is None  # (the future kept)
    del future
    gc.collect()
    assert answer() is None


@pytest.mark.parametrize("queued", ["alone", "following an identical request"])
def test_a_withdrawn_submit_counts_as_done_for_wait_and_as_completed(
    queued: str, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    """``concurrent.futures.wait`` and ``as_completed`` count a cancelled future done only once it is
    notified (``set_running_or_notify_cancel``), which a worker taking it did; no worker takes a withdrawn
    request, so they waited for it for good (until their timeout)."""
    config = BOUNDED
    if queued != "alone":
        config = ModelConfig(batching=BOUNDED.batching, cache=inprocserve.CacheConfig(share_in_flight=True))
    server = make_server(busy_repository, models={"busy": config})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server)
    future = server.submit("busy", busy_inputs(3000 if queued != "alone" else 8))
    assert future.cancel()
    done, _ = concurrent.futures.wait([future], timeout=10)
    assert done == {future}
    assert not blocker.done()  # (not notified by a worker taking it: it was withdrawn)
    assert list(concurrent.futures.as_completed([future], timeout=10)) == [future]
    blocker.release()


@pytest.mark.parametrize("way", ["full", "merged"])
def test_an_answered_apredict_request_is_freed_without_a_collection(
    way: str, busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hook that withdraws a queued ``apredict`` request when its task gives up holds the request, whose
    future holds the task's future, which held the hook: a cycle, so every answered request kept its inputs
    and its outputs until the garbage collector ran. Answered, the hook is let go."""
    server = make_server(busy_repository, models={"busy": BOUNDED})
    if way == "full":
        monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)
    server.predict("busy", busy_inputs(1))
    kept: list[weakref.ref[Any]] = []

    async def one(index: int) -> None:
        inputs = busy_inputs(8, seed=index)
        kept.append(weakref.ref(inputs["x"]))
        answer = await server.apredict("busy", inputs)
        kept.append(weakref.ref(answer["y"]))

    async def main() -> None:
        await asyncio.gather(*(one(index) for index in range(4)))

    loop = asyncio.new_event_loop()  # (asyncio.run's shutdown leaves cycles of its own)
    gc.collect()
    gc.disable()
    try:
        blocker = occupy(server)  # (the requests are queued behind it)
        loop.run_until_complete(main())
        blocker.result(timeout=60)
        # (a worker lets go of its batch a moment after answering it)
        wait_until(lambda: all(ref() is None for ref in kept), timeout_s=5)
    finally:
        gc.enable()
        loop.close()


def test_a_request_answered_before_its_hook_is_set_is_freed_without_a_collection(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The batcher sets the withdrawing hook after it lets go of its lock: a worker may take and answer the
    request in between (the loop's thread descheduled there), its answer clearing a hook not set yet; the
    hook set after it kept the cycle that answering breaks. Forced here by waiting, in between, until a
    worker has answered the request."""
    server = make_server(busy_repository, models={"busy": BOUNDED})
    monkeypatch.setattr(server, "_plain_route", lambda *args, **kwargs: None)
    server.predict("busy", busy_inputs(1))
    set_hook = Batcher._withdraw_when_given_up

    def descheduled(batcher: Batcher, request: Any) -> None:
        batcher.wake()  # (as a worker finishing its batch takes the queue)
        wait_until(lambda: request.state == DONE)
        wait_until(lambda: request.future.done())
        set_hook(batcher, request)

    monkeypatch.setattr(Batcher, "_withdraw_when_given_up", descheduled)
    kept: list[weakref.ref[Any]] = []

    async def main() -> None:
        for index in range(4):
            inputs = busy_inputs(8, seed=index)
            kept.append(weakref.ref(inputs["x"]))
            answer = await server.apredict("busy", inputs)
            kept.append(weakref.ref(answer["y"]))

    loop = asyncio.new_event_loop()
    gc.collect()
    gc.disable()
    try:
        loop.run_until_complete(main())
        wait_until(lambda: all(ref() is None for ref in kept), timeout_s=5)
    finally:
        gc.enable()
        loop.close()


def test_submits_past_their_deadline_are_answered_and_give_their_rows_back_then(
    otel: Otel, busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    """A queued ``submit`` future with a deadline is answered at it, as ``predict`` and ``apredict`` callers
    are at theirs: left queued until a session would take it, it was answered that late (behind a long run:
    30 times its deadline) and its rows counted against ``max_queue_rows`` until then."""
    before = _outcomes(otel, "busy")
    server = make_server(busy_repository, models={"busy": BOUNDED})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server, rows=4000)
    head = server.submit("busy", busy_inputs(1))
    late = [server.submit("busy", busy_inputs(8), timeout_s=0.02) for _ in range(7)]
    done, _ = concurrent.futures.wait(late, timeout=10)
    assert not blocker.done()  # (answered at their deadline, not by a worker taking them)
    assert done == set(late)
    assert all(isinstance(future.exception(), inprocserve.DeadlineExceededError) for future in late)
    _only_the_live_rows_count(server, blocker, head, blocker_rows=4000)
    wait_until(lambda: sum(outcomes_since(otel, "busy", before).values()) >= 10)
    assert outcomes_since(otel, "busy", before) == {("ok", None): 4, ("deadline_exceeded", "DeadlineExceededError"): 7}


def test_a_submit_cancelled_as_its_deadline_passes_is_notified_once(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    """Cancelled while its deadline alarm withdraws it: whichever comes first, the future counts as done for
    ``concurrent.futures.wait`` (notified exactly once) and the request leaves the queue."""
    server = make_server(busy_repository, models={"busy": BOUNDED})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server, rows=4000)
    futures = [server.submit("busy", busy_inputs(1), timeout_s=0.001 * (index % 5 + 1)) for index in range(40)]
    for future in futures:
        future.cancel()
    done, _ = concurrent.futures.wait(futures, timeout=10)
    assert done == set(futures)
    assert version_status(server, "busy")["queued_rows"] == 0
    blocker.release()


@pytest.mark.parametrize("caller", ["apredict", "predict", "submit"])
def test_requests_given_up_behind_the_last_batch_are_let_go_with_it(
    caller: str, busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """Callers that gave up on requests queued behind a full batch (their deadline, a cancellation) are let
    go of when a worker takes that batch: the worker stopped at the full batch, and with nothing live queued
    behind them no later batch was taken, so the queue held every such request, its inputs and its caller's
    task and error (under a Flask async view, the thread of the view's event loop) until the next burst."""
    config = ModelConfig(
        batching=BatchingConfig(max_batch_size=8, max_queue_rows=64, max_request_rows=4096, max_delay_s=0.0)
    )
    server = make_server(busy_repository, models={"busy": config})
    server.predict("busy", busy_inputs(1))
    blocker = hold_session(server, rows=7, at_most_s=30.0)  # (held until the callers gave up: no race with its run)
    head = server.submit("busy", busy_inputs(8))  # a full batch: the worker that takes it looks no further
    kept: list[weakref.ref[Any]] = []

    def inputs(index: int) -> dict[str, Any]:
        given = busy_inputs(8, index=index)
        kept.append(weakref.ref(given["x"]))
        return given

    if caller == "apredict":

        async def one(index: int) -> None:
            with pytest.raises(inprocserve.DeadlineExceededError):
                await server.apredict("busy", inputs(index), timeout_s=0.05)

        async def main() -> None:
            await asyncio.gather(*(one(index) for index in range(4)))

        asyncio.run(main())
    elif caller == "predict":

        def call(index: int) -> None:
            with pytest.raises(inprocserve.DeadlineExceededError):
                server.predict("busy", inputs(index), timeout_s=0.05)

        with concurrent.futures.ThreadPoolExecutor(4) as callers:
            list(callers.map(call, range(4)))
    else:
        for index in range(4):
            assert server.submit("busy", inputs(index)).cancel()
    assert version_status(server, "busy")["queued_rows"] == 8  # (the four gave up while the head waited)
    blocker.release()
    assert head.result(timeout=60)["picked"].shape == (8, 2)
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    gc.collect()
    assert [ref() is None for ref in kept] == [True] * 4


def _only_the_live_rows_count(
    server: inprocserve.Server, blocker: HeldSession, head: Any, *, blocker_rows: int
) -> None:
    """After seven 8-row requests behind ``blocker`` and a 1-row ``head`` gave up: only ``head``'s row is
    queued, a live 8-row request is taken (refused with QueueFullError while the 56 rows stayed counted), and
    only the live rows run."""
    assert version_status(server, "busy")["queued_rows"] == 1
    live = server.submit("busy", busy_inputs(8))
    blocker.release()
    assert live.result(timeout=60)["picked"].shape == (8, 2)
    assert head.result(timeout=60)["picked"].shape == (1, 2)
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    assert version_status(server, "busy")["rows_run"] == 1 + blocker_rows + 1 + 8
