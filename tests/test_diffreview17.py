"""Review of the router notes resumed after an interruption (``_loop_batching._noted_served``) and of the
routed-version reader an off-loop call starts (``_loop_batching._off_loop``)."""

from __future__ import annotations

import asyncio
import inspect
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from inprocserve import InferenceError, ModelConfig, RolloutConfig, _loop_batching
from inprocserve._batching import Batcher
from inprocserve._rollout import Router
from inprocserve._server import Server

from .conftest import ServerFactory
from .test_batch_execution_interrupted import GeventLikeTimeout
from .test_leftovers13 import three_merged_tasks_noted
from .test_loophard import BOUND_S, _merged_server
from .test_loophard2 import _canary_server, _row


class Interrupted(BaseException):
    """What a signal handler raises on the loop's thread (Ctrl-C's ``KeyboardInterrupt``, gevent's ``Timeout``)."""


@contextmanager
def interrupted_after_the_first_note() -> Iterator[None]:
    """Raise ``Interrupted`` once, in the main thread, in ``Router.served_many``: at the first line it runs
    after its first ``self.served(...)`` call returned (wherever that line is)."""
    source, first = inspect.getsourcelines(Router.served_many)
    noting = first + next(index for index, line in enumerate(source) if "self.served(" in line)
    seen = [False]

    def local(frame: Any, kind: str, arg: Any) -> Any:
        if kind == "line" and frame.f_lineno == noting:
            seen[0] = True
        elif seen[0] and kind in ("line", "return"):
            sys.settrace(None)
            frame.f_trace = None
            raise Interrupted
        return local

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        return local if frame.f_code is Router.served_many.__code__ else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield
    finally:
        sys.settrace(previous)
    assert seen[0], "not interrupted"


def test_a_merged_task_noted_just_before_an_interruption_is_counted_served_once(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stable version named, no flags: an event loop's three tasks run merged, and the router's notes of them
    are interrupted (Ctrl-C on the loop's thread) just after the first task's note returned, before it was
    counted as noted: the notes resumed from that task and noted it again, so the status page counted four
    tasks served for three (and a sample of its inputs was due one task early)."""
    server = _merged_server(
        lambda repository: make_server(repository, config=ModelConfig(rollout=RolloutConfig(stable=1))),
        scale_repository,
    )
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    served = server.status()["models"]["scale"]["rollout"]["variants"]["stable"]["served"]
    interruption = interrupted_after_the_first_note()

    noted = three_merged_tasks_noted(server, interruption)
    assert (noted[0] - served, noted[1]) == (3, ["stable"] * 3)


def test_an_off_loop_call_interrupted_as_it_starts_reading_its_notes_gives_its_task_an_error(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event loop's request routed on the loop's executor (a flag provider that may block), stopped by a
    gevent ``Timeout`` as its call starts reading the routed-version notes: the interruption was raised out of
    the executor's call as it was, into the task and out of ``asyncio.run``, where one a moment later gave the
    task an InferenceError (``_off_loop``'s ``call`` turns it into one)."""
    server, _flags = _canary_server(make_server, repository)
    noting = Server._noting_routes

    def interrupted() -> object:
        monkeypatch.setattr(Server, "_noting_routes", staticmethod(noting))
        raise GeventLikeTimeout("stopped as the call began")

    monkeypatch.setattr(Server, "_noting_routes", staticmethod(interrupted))

    async def main() -> Any:
        try:
            return await asyncio.wait_for(server.apredict("scale", _row(1.0), context={"user_id": "u1"}), BOUND_S)
        except InferenceError as exc:
            return exc

    stopped = asyncio.run(main())
    assert isinstance(stopped, InferenceError), stopped
    assert "interrupted by GeventLikeTimeout" in str(stopped)
    assert stopped.version is None, stopped.version  # (routed to none)
    again = asyncio.run(main())  # (the executor's thread serves the next call)
    assert not isinstance(again, BaseException), again


def test_an_off_loop_call_interrupted_while_its_queued_request_waits_names_the_version_it_was_routed_to(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An event loop's request routed on the loop's executor (a flag provider that may block) by the full way
    (its shortest way declined: the runners busy), queued, and stopped by a gevent ``Timeout`` while it waits for
    its batch, the likeliest place for one (the wait is where a greenlet switches): the task's InferenceError named
    version None, the one asked, not the version it was routed to and queued for."""
    server, _flags = _canary_server(make_server, repository)

    async def call() -> Any:
        try:
            return await asyncio.wait_for(server.apredict("scale", _row(1.0), context={"user_id": "u1"}), BOUND_S)
        except InferenceError as exc:
            return exc

    routed = asyncio.run(call()).version  # (the version u1's requests are routed to)
    monkeypatch.setattr(Server, "_predict_plain", lambda *args, **kwargs: (None, None))  # (the full way)
    wait = Batcher.wait

    def interrupted(self: Batcher, request: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            return wait(self, request)
        monkeypatch.setattr(Batcher, "wait", wait)
        raise GeventLikeTimeout("stopped while it waited")

    monkeypatch.setattr(Batcher, "wait", interrupted)
    stopped = asyncio.run(call())
    assert isinstance(stopped, InferenceError), stopped
    assert "interrupted by GeventLikeTimeout" in str(stopped)
    assert stopped.version == routed, (stopped.version, routed)
