"""The remote client's connection slots under interruptions (Ctrl-C's KeyboardInterrupt, gevent's Timeout)
that land right after a call into C returns, or while an interrupted call cleans up."""

from __future__ import annotations

import asyncio
import contextlib
import dis
import gc
import signal
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
import urllib3.connectionpool
import urllib3.response

from inprocserve import InferenceError, ModelConfig, RolloutConfig, Server, _loop_batching, _oip_client
from inprocserve.__main__ import main as cli_main
from inprocserve._oip_client import _Slots
from inprocserve._rollout import Router

from .conftest import ServerFactory, wait_until
from .interruptible import measuring
from .test_batch_execution_interrupted import MARK, GeventLikeTimeout, stopped_runs
from .test_cli_hardening import mlp
from .test_diffreview13 import answered_after_an_interrupted_call, answers_ok
from .test_diffreview14 import _USERS_PROGRAM
from .test_diffreview15 import answers_ok_noting_closes
from .test_interrupted_callers import Interrupted, interrupted_at, line_of
from .test_loophard import BOUND_S, _merged_server, _outcome, _rows, _settled
from .test_loophard2 import _canary_server, _row
from .test_remote_retries import raised_within

__all__ = ["answers_ok", "answers_ok_noting_closes", "mlp", "stopped_runs"]  # (the fixtures, imported for pytest)


def after_each_call(function: Any) -> list[int]:
    """The offsets in ``function``'s code right after each call it makes returns: where a signal that arrived
    during that call (Ctrl-C's KeyboardInterrupt) is handled, before the next instruction runs."""
    instructions = list(dis.get_instructions(function))
    return [instructions[index + 1].offset for index, each in enumerate(instructions) if each.opname == "CALL"]


@contextmanager
def interrupted_after(function: Any, offset: int) -> Iterator[list[int]]:
    """Raise ``Interrupted`` once, in the main thread, as ``function`` reaches the instruction at ``offset``
    (see :func:`after_each_call`); the list yielded gets that offset once it did."""
    code = function.__code__
    fired: list[int] = []

    def local(frame: Any, kind: str, arg: Any) -> Any:
        if kind == "opcode" and frame.f_lasti == offset:
            sys.settrace(None)
            frame.f_trace = None
            fired.append(offset)
            raise Interrupted
        return local

    def tracer(frame: Any, kind: str, arg: Any) -> Any:
        if frame.f_code is not code:
            return None
        frame.f_trace_opcodes = True
        frame.f_trace = local  # (Python 3.13 sends no opcode events to a frame whose f_trace its call event set)
        return local

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        yield fired
    finally:
        sys.settrace(previous)


def test_a_call_interrupted_as_it_pops_its_kept_connection_closes_it(
    answers_ok_noting_closes: tuple[int, threading.Event], young_heap: None
) -> None:
    """A call interrupted (Ctrl-C, gevent's Timeout) at any point where a signal handler runs as it takes its
    slot: right as the pool's queue handed it the kept-alive connection (its ``pop()`` returned, before the call
    noted what it took), urllib3's clean-up gave a free slot back and the connection itself was left open, to
    the garbage collector (a ResourceWarning, and the server's end of it held open until then)."""
    port, closed = answers_ok_noting_closes
    points = [(function, offset) for function in (_Slots.get, _Slots._get) for offset in after_each_call(function)]
    interrupted = 0
    for function, offset in points:
        closed.clear()
        client = _oip_client.HttpClient(
            f"http://127.0.0.1:{port}", max_connections=1, connect_timeout_s=5.0, headers={}
        )
        try:
            assert client.request("GET", "/v2", timeout_s=5.0).status == 200  # (its connection kept in the pool)
            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always", ResourceWarning)
                with contextlib.suppress(Interrupted), interrupted_after(function, offset) as fired:
                    client.request("GET", "/v2", timeout_s=5.0)
                gc.collect()
            where = f"{function.__qualname__} at {offset}"
            if fired:
                interrupted += 1
                assert [str(each.message) for each in warned if each.category is ResourceWarning] == [], where
                kept = any(each is not None for each in client._slots.queue)  # (not taken: still in the pool)
                assert kept or closed.wait(2.0), where  # (taken: closed, the server's end of it too)
            assert client.request("GET", "/v2", timeout_s=1.0).status == 200, where
            assert client._slots.qsize() == 1, where  # (the one slot, given back once)
        finally:
            client.close()
    assert interrupted >= 3  # (the points a call that finds a free slot passes)


@contextmanager
def interrupted_again_as_it_closes(
    first: AbstractContextManager[None], owner: type, monkeypatch: pytest.MonkeyPatch
) -> Iterator[None]:
    """``first``'s interruption, then another as ``owner.close()`` begins (Ctrl-C pressed again, an outer gevent
    Timeout, as the interrupted call cleans up)."""
    close = owner.close  # type: ignore[attr-defined]
    again = [Interrupted]

    def interrupted_close(self: Any) -> None:
        if again:
            raise again.pop()
        close(self)

    monkeypatch.setattr(owner, "close", interrupted_close)
    with first:
        yield
    assert not again, "not interrupted a second time"


def test_a_second_interruption_as_an_interrupted_call_drops_its_connection_gives_the_slot_back(
    answers_ok: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call interrupted as it reads its answer (Ctrl-C) is interrupted again as request() drops its
    connection (Ctrl-C pressed again; an outer gevent Timeout): the slot was never given back, and with
    max_connections=1 every later call waited its whole timeout and failed, 'no free connection'."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    first = interrupted_at(_oip_client.HttpClient._read.__code__)
    answered_with_its_one_slot_back(
        client, interrupted_again_as_it_closes(first, urllib3.response.HTTPResponse, monkeypatch)
    )


def test_a_second_interruption_as_a_call_interrupted_in_urllib3_drops_its_connection_gives_the_slot_back(
    answers_ok: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a call interrupted in urllib3's own code once it had the answer (see test_diffreview14),
    interrupted again as request() closes the connection the answer came on."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    urlopen = urllib3.connectionpool.HTTPConnectionPool.urlopen
    answered_line = line_of(urlopen, "redirect_location = redirect and") - 1  # (urllib3 has the answer there)
    first = interrupted_at(urlopen.__code__, after_line=answered_line)
    answered_with_its_one_slot_back(
        client, interrupted_again_as_it_closes(first, client._pool.ConnectionCls, monkeypatch)
    )


def answered_with_its_one_slot_back(client: _oip_client.HttpClient, twice: AbstractContextManager[Any]) -> None:
    """A call interrupted twice under ``twice`` (the second time as it drops its connection), then the next
    call: answered at once, and the client's one slot free again (given back once)."""
    answered, took_s, free = answered_after_an_interrupted_call(client, twice, status=200)
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5
    assert free == 1


def test_a_reused_timeout_does_not_name_the_version_an_earlier_request_ran(
    repository: Path, make_server: ServerFactory, stopped_runs: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One gevent ``Timeout`` instance started again for several calls (``timeout.start()`` after each one, as
    gevent lets a program do): it stops a synchronous predict's run on its thread (noted on it: routed to that
    version, but no one reads the note there), then an event loop's request on the loop's executor before it is
    routed. The task's InferenceError named the version the earlier request ran, where it ran on none."""
    server, _flags = _canary_server(make_server, repository)
    timeout = GeventLikeTimeout("the one Timeout")
    for user in range(20):  # (both versions' runners adopted: predict's shortest way runs on the caller's thread)
        server.predict("scale", _row(1.0), context={"user_id": f"w{user}"})
    stopped_runs.append(lambda *_: timeout)
    with pytest.raises(GeventLikeTimeout):
        server.predict("scale", _row(MARK), version=1)
    decide = Router.decide

    def interrupted_off_the_loop(self: Router, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():  # (the loop's executor: not routed yet)
            monkeypatch.setattr(Router, "decide", decide)
            raise timeout
        return decide(self, *args, **kwargs)

    monkeypatch.setattr(Router, "decide", interrupted_off_the_loop)

    async def main() -> Any:
        try:
            return await asyncio.wait_for(server.apredict("scale", _row(1.0), context={"user_id": "u1"}), 30)
        except InferenceError as exc:
            return exc

    stopped = asyncio.run(main())
    assert isinstance(stopped, InferenceError), stopped
    assert stopped.version is None, stopped.version  # (routed to none)


def test_a_users_own_program_named_inprocserve_keeps_its_ctrl_c(mlp: Path, tmp_path: Path) -> None:
    """A program of the user's named exactly ``inprocserve`` (a wrapper in ``/usr/local/bin`` of their own, run as
    ``python inprocserve``) that runs a command through main() and goes on after it: taken for the installed
    command by its name, a command stopped by Ctrl-C left it with SIG_DFL on its stop signals, and its next
    Ctrl-C killed it, its own clean-up skipped. Only a script whose call is ``sys.exit(main())`` (pip's, uv's,
    conda's) ends as main() returns."""
    program = tmp_path / "bin" / "inprocserve"
    program.parent.mkdir()
    program.write_text(_USERS_PROGRAM)
    target = tmp_path / "out" / "q.onnx"
    target.parent.mkdir()
    command = [sys.executable, str(program), "quantize", "--seconds", "60", str(mlp), str(target)]
    with measuring(command, target.parent) as process:
        process.send_signal(signal.SIGINT)
        said, _ = process.communicate(timeout=30)
    assert said == "130 True\n", said


def test_switch_help_says_why_no_load_check_still_loads_a_first_switch_s_older_versions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A host with too little memory is what --no-load-check is for, yet a first switch still loads the older
    versions to find the one to roll back to: --help said so, not why (nothing records it; the workers' gate
    chose it from the versions' signatures, which only loading reads) nor when it is not needed."""
    with pytest.raises(SystemExit):
        cli_main(["switch", "--help"])
    said = " ".join(capsys.readouterr().out.split())
    assert "which only loading reads" in said
    assert "named in config.toml or the control file is taken as it is, unloaded" in said


@contextmanager
def interrupted_at_the_second_call(owner: type, name: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Raise ``Interrupted`` as ``owner.name`` is called the second time (a signal handler at its start)."""
    method = getattr(owner, name)
    calls = [0]

    def interrupted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        if calls[0] == 2:
            raise Interrupted
        return method(*args, **kwargs)

    monkeypatch.setattr(owner, name, interrupted)
    try:
        yield
    finally:
        monkeypatch.setattr(owner, name, method)
    assert calls[0] >= 2, "not interrupted"


@pytest.mark.parametrize("where", ["as it begins", "as the second task is noted"])
def test_merged_tasks_answered_before_their_notes_are_interrupted_are_counted_served_and_credited(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """A stable version named (``rollout.stable``; a ``switch``) and no flags: an event loop's tasks run merged,
    each is answered, then the router's notes of them (its ``served`` count on the status page, the ids that
    ``record_outcome`` credits) are interrupted (gevent's Timeout, Ctrl-C on the loop's thread). The tasks after
    the interruption were dropped: counted served nowhere, their outcomes credited to no variant (up to a whole
    batch's, 32 tasks, for one interruption)."""
    stable_named = ModelConfig(rollout=RolloutConfig(stable=1))
    server = _merged_server(lambda repository: make_server(repository, config=stable_named), scale_repository)
    monkeypatch.setattr(_loop_batching, "RUN_ON_LOOP_UNDER_S", 0.0)  # run by a worker, never on the loop
    served = server.status()["models"]["scale"]["rollout"]["variants"]["stable"]["served"]
    if where == "as it begins":
        interruption = interrupted_at(Router.served_many.__code__)
    else:
        interruption = interrupted_at_the_second_call(Router, "served", monkeypatch)

    noted = three_merged_tasks_noted(server, interruption)
    if where == "as it begins":
        assert (noted[0] - served, noted[1]) == (3, ["stable"] * 3)
    else:  # (the one whose note was interrupted: lost, as a lone request's is; the ones after it noted)
        assert (noted[0] - served, noted[1]) == (2, ["stable", None, "stable"])


def three_merged_tasks_noted(server: Server, interruption: AbstractContextManager[Any]) -> tuple[int, list[Any]]:
    """Three tasks of one loop, merged, answered under ``interruption`` (each must get its answer): the stable
    variant's ``served`` count after them, and what ``record_outcome`` credits each task's id to."""

    async def main() -> list[Any]:
        calls = [asyncio.ensure_future(server.apredict("scale", x)) for x in _rows(1.0, 2.0, 3.0)]
        with interruption:
            return await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), BOUND_S)

    answers = asyncio.run(main())
    assert [_outcome(answer) for answer in answers] == [2.0, 4.0, 6.0]
    _settled(server)
    served: int = server.status()["models"]["scale"]["rollout"]["variants"]["stable"]["served"]
    return served, [server.record_outcome(answer.request_id, 1.0) for answer in answers]


def test_a_slot_given_back_as_its_waiter_s_wake_up_is_interrupted_still_serves_the_waiter(answers_ok: int) -> None:
    """A call waits for the pool's one connection, held by another call; that call gives it back and is
    interrupted (Ctrl-C, gevent's Timeout) as the waiter's wake-up (``not_empty.notify()``) begins, the slot
    already back: the waiter slept on to the end of its timeout beside a free slot, and failed."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == 200
        taken = client._slots.get(timeout=5.0)  # (another call's: the one slot in use)
        waiter = threading.Thread(target=lambda: outcome.append(raised_within(call)), daemon=True)
        outcome: list[tuple[BaseException | None, float]] = []

        def call() -> None:
            client.request("GET", "/v2", timeout_s=3.0)

        waiter.start()
        wait_until(lambda: client._slots.not_empty._waiters)  # type: ignore[attr-defined]
        with contextlib.suppress(Interrupted), interrupted_at(threading.Condition.notify.__code__):
            client._slots.put(taken)
        waiter.join(10.0)
    finally:
        client.close()
    ((raised, took_s),) = outcome
    assert raised is None, raised
    assert took_s < 1.0
