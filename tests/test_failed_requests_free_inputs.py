"""A failed request lets go of its inputs as soon as its caller lets go of the error, without waiting for
the garbage collector: the error no longer carries the frames of the thread that ran the request (which
held the batch and its requests, each holding the error: a reference cycle). Under a storm of failures (a
bad deploy, an overload's deadlines) those cycles kept every failed request's inputs until a full
collection, minutes apart in a large process. The collector is off in these tests, so only a cycle can keep
the inputs."""

from __future__ import annotations

import asyncio
import threading
import time
import traceback
import weakref
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import InvalidInputError
from inprocserve._request import Request, finish_detached
from inprocserve.testing import build_gather_model, build_scale_model, save_model

from . import test_remote_retries
from .conftest import HeldSession, ServerFactory, SessionHolder, busy_inputs, occupy, version_status, wait_until
from .test_remote_retries import Scripted

scripted = test_remote_retries.scripted  # (the scripted model server of test_remote_retries, as a fixture)


@pytest.fixture
def server(busy_repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    server = make_server(busy_repository)
    server.predict("busy", busy_inputs(1))
    return server


def bad_rows() -> dict[str, np.ndarray]:
    return busy_inputs(2, index=99)  # an index outside the model's table: onnxruntime refuses the run


def failed_and_freed(
    call: Callable[[dict[str, np.ndarray]], Any], make: Callable[[], dict[str, np.ndarray]] = bad_rows
) -> str:
    """Make ``call`` with a bad request (of ``make``); return the error's class name once the caller has
    dropped the error and the inputs and nothing else keeps the inputs."""
    inputs = make()
    kept = weakref.ref(next(iter(inputs.values())))
    try:
        call(inputs)
    except Exception as error:
        name = type(error).__name__
    else:
        name = "no error"
    del inputs
    # (the worker that ran it may still be letting go of its batch when the caller has its answer)
    wait_until(lambda: kept() is None, timeout_s=5.0)  # never, with the collector off, if a cycle keeps them
    return name


def test_predict_merged_with_other_requests(server: inprocserve.Server, no_collector: None) -> None:
    def merged(inputs: dict[str, np.ndarray]) -> None:
        blocker = occupy(server)  # the bad request queues behind it with a good one, and they run as one batch
        good = server.submit("busy", busy_inputs(1))
        try:
            server.predict("busy", inputs)
        finally:
            blocker.result(timeout=60)
            assert good.result(timeout=60)["y"].shape == (1, 512)

    assert failed_and_freed(merged) == "InvalidInputError"


def test_submit(server: inprocserve.Server, no_collector: None) -> None:
    def submitted(inputs: dict[str, np.ndarray]) -> None:
        blocker = occupy(server)
        future = server.submit("busy", inputs)
        blocker.result(timeout=60)
        try:
            future.result(timeout=60)
        finally:
            del future

    assert failed_and_freed(submitted) == "InvalidInputError"


@pytest.mark.parametrize("queued", [False, True], ids=["alone", "merged"])
def test_apredict(server: inprocserve.Server, no_collector: None, queued: bool) -> None:
    """A view that turns the error into a 4xx answer: the error never leaves the event loop."""

    async def view(inputs: dict[str, np.ndarray]) -> str:
        blocker = occupy(server) if queued else None
        try:
            await server.apredict("busy", inputs)
        except InvalidInputError as error:
            return type(error).__name__
        finally:
            if blocker is not None:
                blocker.result(timeout=60)
        return "no error"

    loop = asyncio.new_event_loop()
    try:
        answers: list[str] = []
        failed_and_freed(lambda inputs: answers.append(loop.run_until_complete(view(inputs))))
        assert answers == ["InvalidInputError"]
    finally:
        loop.close()


@pytest.mark.parametrize("failure", ["deadline", "run-failed"])
def test_apredict_with_a_deadline_the_full_way(
    busy_repository: Path,
    make_server: ServerFactory,
    no_collector: None,
    failure: str,
    hold_session: Callable[..., HeldSession],
) -> None:
    """A task with ``timeout_s`` whose request goes the full way (a version with a cache, drift monitoring,
    shadows or a rollout) awaits its answer through a coroutine that keeps the deadline's timer: that
    coroutine's frame joined the error's traceback and held the future holding the error (a cycle), with the
    view's frames and the request's inputs: 1 of 1 task past its deadline behind a busy session, or whose
    run failed, kept them until a full collection."""
    server = make_server(busy_repository, config=inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True)))
    server.predict("busy", busy_inputs(1))

    async def view(inputs: dict[str, np.ndarray]) -> str:
        # held past the deadline however fast the host; a run that fails goes after a real one, when it ends
        blocker = hold_session(server) if failure == "deadline" else occupy(server)
        try:
            await server.apredict("busy", inputs, timeout_s=0.05 if failure == "deadline" else 60)
        except inprocserve.InprocserveError as error:
            return type(error).__name__
        finally:
            blocker.release() if failure == "deadline" else blocker.result(timeout=60)
        return "no error"

    loop = asyncio.new_event_loop()
    try:
        answers: list[str] = []
        make = (lambda: busy_inputs(1, seed=7)) if failure == "deadline" else bad_rows  # (not cached)
        failed_and_freed(lambda inputs: answers.append(loop.run_until_complete(view(inputs))), make)
        assert answers == ["DeadlineExceededError" if failure == "deadline" else "InvalidInputError"]
    finally:
        loop.close()


def test_the_error_raised_says_what_failed_and_chains_the_runtime_error(server: inprocserve.Server) -> None:
    """Dropping the worker's frames keeps what a caller reads: the message and onnxruntime's own error."""
    blocker = occupy(server)
    future = server.submit("busy", bad_rows())
    blocker.result(timeout=60)
    with pytest.raises(InvalidInputError) as caught:
        future.result(timeout=60)
    assert "index" in str(caught.value).lower() or "out of" in str(caught.value).lower()
    assert caught.value.__cause__ is not None


def wrong_width() -> dict[str, np.ndarray]:
    rows = busy_inputs(2)
    return {"x": np.ones((2, rows["x"].shape[1] + 1), np.float32), "index": rows["index"]}


def test_predict_refused_before_it_runs(server: inprocserve.Server, no_collector: None) -> None:
    """Inputs of the wrong width, refused by predict's own thread: the refusal's traceback held the frame
    that made it, whose local held the refusal (a cycle with the inputs in it)."""
    assert failed_and_freed(lambda inputs: server.predict("busy", inputs), wrong_width) == "InvalidInputError"


def test_submit_refused_before_it_queues(busy_repository: Path, make_server: ServerFactory, no_collector: None) -> None:
    """An error ``submit`` catches before the request is queued (inputs of the wrong width, a full queue shed
    under load) was set on the future with its traceback, whose frames held that future and the inputs:
    every such request's inputs stayed until a full collection (20 of 20 shed requests)."""
    server = make_server(
        busy_repository,
        config=inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_queue_rows=4, max_request_rows=4000)),
    )
    server.predict("busy", busy_inputs(1))

    def submitted(inputs: dict[str, np.ndarray]) -> None:
        future = server.submit("busy", inputs)
        try:
            future.result(timeout=60)
        finally:
            del future

    assert failed_and_freed(submitted, wrong_width) == "InvalidInputError"
    blocker = occupy(server, rows=3000)
    filler = server.submit("busy", busy_inputs(4))  # the queue is full from here on
    try:
        assert failed_and_freed(submitted) == "QueueFullError"
    finally:
        blocker.result(timeout=60)
        filler.result(timeout=60)


@pytest.mark.parametrize("make", [bad_rows, wrong_width], ids=["run-failed", "refused"])
def test_predict_many(server: inprocserve.Server, no_collector: None, make: Callable[[], Any]) -> None:
    """predict_many raised a failed part's error with the frames of its generator, whose window of jobs held
    the futures (one holding the error) and the parts: every failed scoring job's inputs stayed."""

    def many(inputs: dict[str, np.ndarray]) -> None:
        for _ in server.predict_many("busy", inputs, batch_rows=1):
            pass

    assert failed_and_freed(many, make) == "InvalidInputError"


def test_identical_requests_sharing_a_failed_run_each_raise_their_own_error(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """A follower of an identical request in flight got its leader's error object itself: each caller's
    ``raise`` put its frames in front of the other's (30 of 30 pairs: the follower's traceback showed the
    leader's caller, another thread's stack, and kept its frames), and dropping the worker's tracebacks for
    one of them could wipe the other's while its caller was handling it. Each gets its own copy now."""
    config = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(share_in_flight=True))
    server = make_server(busy_repository, config=config)
    server.predict("busy", busy_inputs(1))
    caught: dict[str, BaseException] = {}

    def leader_caller() -> None:
        try:
            server.predict("busy", bad_rows())
        except InvalidInputError as error:
            caught["leader"] = error

    def follower_caller() -> None:
        try:
            server.predict("busy", bad_rows())
        except InvalidInputError as error:
            caught["follower"] = error

    blocker = hold_session(server, rows=64, at_most_s=60.0)  # the session stays busy until it is let go
    threads = [threading.Thread(target=leader_caller), threading.Thread(target=follower_caller)]
    threads[0].start()
    wait_until(lambda: version_status(server, "busy")["queued_rows"] == 2)
    threads[1].start()
    time.sleep(0.2)
    assert version_status(server, "busy")["queued_rows"] == 2  # the follower waits on its leader, unqueued
    blocker.release()
    for thread in threads:
        thread.join(timeout=60)
    leader, follower = caught["leader"], caught["follower"]
    assert leader is not follower and str(leader) == str(follower)
    assert leader.__cause__ is not None and follower.__cause__ is not None
    assert type(follower.__cause__) is type(leader.__cause__) and str(follower.__cause__) == str(leader.__cause__)
    shown = "".join(traceback.format_tb(follower.__traceback__))
    assert "follower_caller" in shown and "leader_caller" not in shown
    assert "leader_caller" in "".join(traceback.format_tb(leader.__traceback__))


def test_a_leader_run_on_its_callers_thread_keeps_its_traceback_when_a_request_follows_it(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    """With a cache, ``predict``'s shortest way runs a request on its caller's thread and identical requests
    follow it: they are handed the error that caller is raising. Their requests dropped the tracebacks of that
    very object (and of its cause) as they stored it, while its caller raised it: the caller's traceback
    lost every frame below ``predict`` (where the error came from: ``_predict_plain``, the run), and
    onnxruntime's error, its cause, had none left. Each request copies the error and its chain now, leaving
    the object itself alone."""
    config = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True))
    server = make_server(busy_repository, config=config)
    server.predict("busy", busy_inputs(1))
    caught: dict[str, BaseException] = {}
    rows = bad_rows()
    held = hold_session.mark(rows, at_most_s=60.0)  # the leader's run waits until the follower follows it

    def call(name: str) -> None:
        try:
            server.predict("busy", {key: array.copy() for key, array in rows.items()})  # (identical)
        except InvalidInputError as error:
            caught[name] = error

    ran_before = len(hold_session.rows)
    leader = threading.Thread(target=call, args=("leader",))
    leader.start()
    assert held.started.wait(60)
    follower = threading.Thread(target=call, args=("follower",))
    follower.start()
    time.sleep(0.2)  # the follower waits on its leader's future (checked below: one run for both)
    held.let_go()
    for thread in (leader, follower):
        thread.join(timeout=60)
    assert hold_session.rows[ran_before:] == [2]  # one run for both
    error = caught["leader"]
    frames = [frame.name for frame in traceback.extract_tb(error.__traceback__)]
    assert "_predict_plain" in frames and "run_plain" in frames
    assert error.__cause__ is not None and error.__cause__.__traceback__ is not None
    assert type(caught["follower"]) is InvalidInputError and caught["follower"] is not error


def test_requests_failed_by_one_error_each_get_their_own_copy() -> None:
    """A batch that fails as a whole (its deadline, a remote server down, a close) answers every request
    with the one error its run raised. Raised by several callers, one object carried all their tracebacks
    (each ``raise`` puts its caller's frames in front of those there): each caller's traceback showed the
    other threads' stacks and kept their frames. Each request now gets its own copy, with the same class,
    message, attributes and cause, and no traceback of the worker."""
    try:
        try:
            raise RuntimeError("onnxruntime's own error")
        except RuntimeError as cause:
            raise inprocserve.DeadlineExceededError("no answer within 0.5s", model="busy", version=1) from cause
    except inprocserve.DeadlineExceededError as caught:
        error = caught
    requests = [Request({}, 1, None, None, Future()) for _ in range(3)]  # type: ignore[arg-type]
    for request in requests:
        finish_detached(request, None, error, lambda request: None)
    errors = [request.error for request in requests]
    assert len({id(each) for each in errors}) == 3
    for each in errors:
        assert type(each) is inprocserve.DeadlineExceededError and str(each) == "no answer within 0.5s"
        assert (each.model, each.version) == ("busy", 1)
        assert each.__traceback__ is None and each.__cause__ is not error.__cause__
        assert type(each.__cause__) is RuntimeError and str(each.__cause__) == "onnxruntime's own error"
        assert each.__cause__.__traceback__ is None
    assert error.__traceback__ is not None and error.__cause__.__traceback__ is not None  # (left as it was)


class DeviceError(Exception):
    """A backend's own error whose ``__init__`` builds its message (a common way to write one)."""

    def __init__(self, code: int) -> None:
        super().__init__(f"device failed with code {code}")
        self.code = code


def test_an_error_whose_class_builds_its_message_keeps_it() -> None:
    """A request's own copy is made by calling the error's class with its arguments: ``DeviceError(7)``'s
    copy was ``DeviceError("device failed with code 7")``, which said ``device failed with code device
    failed with code 7`` (a backend's batch that raised it, through a real batcher: the same). Such an error
    is kept as it is, without its traceback."""
    try:
        raise DeviceError(7)
    except DeviceError as caught:
        error = caught
    request = Request({}, 1, None, None, Future())  # type: ignore[arg-type]
    finish_detached(request, None, error, lambda request: None)
    assert request.error is not None and str(request.error) == "device failed with code 7"
    assert request.error.code == 7 and request.error.__traceback__ is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("tasks", [1, 2], ids=["one-task", "two-tasks"])
def test_apredict_refused_by_a_full_queue(
    busy_repository: Path, make_server: ServerFactory, no_collector: None, tasks: int
) -> None:
    """Tasks of one loop iteration are queued together at its end, where a full queue refuses them (a lone
    task at once; several tasks merged, each again on its own): the task got the error with the traceback
    of the loop's frame that caught it, which held the tasks' futures, one holding the error: 1 of 1 and 2
    of 2 such tasks kept their inputs until a full collection."""
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_queue_rows=4, max_request_rows=4000))
    server = make_server(busy_repository, config=config)
    server.predict("busy", busy_inputs(1))
    blocker = occupy(server)
    filler = server.submit("busy", busy_inputs(4))  # the queue is full from here on

    async def view(inputs: dict[str, np.ndarray]) -> str:
        try:
            await server.apredict("busy", inputs)
        except inprocserve.QueueFullError as error:
            return type(error).__name__
        return "no error"

    async def views(inputs: dict[str, np.ndarray]) -> list[str]:
        others = [view(busy_inputs(1, seed=seed)) for seed in range(1, tasks)]
        return await asyncio.gather(view(inputs), *others)

    loop = asyncio.new_event_loop()
    try:
        answers: list[list[str]] = []
        failed_and_freed(lambda inputs: answers.append(loop.run_until_complete(views(inputs))), lambda: busy_inputs(1))
        assert answers == [["QueueFullError"] * tasks]
    finally:
        loop.close()
        blocker.result(timeout=60)
        filler.result(timeout=60)


def outside_the_table() -> dict[str, np.ndarray]:
    return {"index": np.array([99], np.int64)}  # onnxruntime refuses the run of build_gather_model's model


def test_apredict_whose_run_on_the_loop_failed(
    repository: Path, make_server: ServerFactory, no_collector: None
) -> None:
    """A task that is not the loop iteration's only one (another task called another model) is run at the
    iteration's end on the loop's thread when its run is short. When that run failed, the task got the error
    with the traceback of the loop's frame that ran it, which held the task's future: its inputs stayed
    until a full collection (1 of 1)."""
    save_model(build_gather_model(), repository, "lookup", 1)
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    server.predict("lookup", {"index": np.array([1], np.int64)})
    server.predict("scale", np.ones((1, 4), np.float32))

    async def view(inputs: dict[str, np.ndarray]) -> str:
        try:
            await server.apredict("lookup", inputs)
        except InvalidInputError as error:
            return type(error).__name__
        return "no error"

    async def two_views(inputs: dict[str, np.ndarray]) -> str:
        scaled, looked_up = await asyncio.gather(server.apredict("scale", np.ones((1, 4), np.float32)), view(inputs))
        assert scaled["y"].tolist() == [[2.0] * 4]
        return looked_up

    loop = asyncio.new_event_loop()
    try:
        answers: list[str] = []
        failed_and_freed(lambda inputs: answers.append(loop.run_until_complete(two_views(inputs))), outside_the_table)
        assert answers == ["InvalidInputError"]
    finally:
        loop.close()


@pytest.mark.parametrize("answer", ["drop", "slow 1"], ids=["connection-dropped", "read-timed-out"])
def test_predict_of_a_remote_model_whose_connection_failed(
    scripted: Scripted, repository: Path, make_server: ServerFactory, no_collector: None, answer: str
) -> None:
    """A remote model whose server dropped the connection, or did not answer within the deadline: urllib3
    keeps the error it raises in a local of its own frame, whose traceback holds that frame (a cycle), and
    that frame's callers, this predict's frames on its caller's thread, with the inputs: 1 of 1 such
    request kept its inputs until a full collection."""
    remote = inprocserve.RemoteModel(url=f"http://127.0.0.1:{scripted.server_port}", model="scale")
    server = make_server(repository)
    server.load("scale", remote=remote, config=inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    server.predict("scale", np.ones((1, 4), np.float32))
    scripted.script[:] = [answer]

    def call(inputs: dict[str, np.ndarray]) -> None:
        server.predict("scale", inputs, timeout_s=0.2)

    assert failed_and_freed(call, lambda: {"x": np.ones((1, 4), np.float32)}) == (
        "RemoteUnavailableError" if answer == "drop" else "DeadlineExceededError"
    )
