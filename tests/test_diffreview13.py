"""Review of one day's performance work on the hot paths: behaviour that must not have changed."""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, InvalidInputError, ModelConfig, RolloutConfig, VersionPolicy, _oip_client
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory
from .test_batch_execution_interrupted import MARK, GeventLikeTimeout, stopped_runs
from .test_cli_hardening import mlp
from .test_interrupted_callers import Interrupted, interrupted_at
from .test_loophard2 import _canary_server, _row
from .test_remote_retries import raised_within, serving_each_connection

__all__ = ["mlp", "stopped_runs"]  # (the fixtures, imported for pytest)

NO_WAIT = ModelConfig(batching=BatchingConfig(max_delay_s=0.0))


def _closed_server_collected_after(repository: Path, *, refused: bool) -> bool:
    """Whether a server, closed and dropped inside a running event loop, is collected while that loop runs on
    (a web server's loop outlives the servers its app builds and closes)."""

    async def main() -> bool:
        server = inprocserve.Server(repository, config=NO_WAIT)
        try:
            good = np.ones((1, 4), np.float32)
            await server.apredict("scale", good)  # (adopts the runners)
            await asyncio.gather(*(server.apredict("scale", good) for _ in range(3)))
            if refused:  # a burst whose every request is refused (wrong width): none is merged
                bad = np.ones((1, 5), np.float32)
                answers = await asyncio.gather(
                    *(server.apredict("scale", bad) for _ in range(3)), return_exceptions=True
                )
                refusals = [type(answer) for answer in answers]
                del answers  # (their tracebacks hold the server)
                assert refusals == [InvalidInputError] * 3
        finally:
            server.close(timeout_s=10)
        dropped = weakref.ref(server)
        del server
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        return dropped() is None

    return asyncio.run(main())


def test_a_closed_server_is_collected_after_a_burst_of_refused_apredicts(repository: Path) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    assert _closed_server_collected_after(repository, refused=False)
    # The loop's per-iteration route memo was set before the inputs were checked, and only a flush (which a
    # refused burst never schedules) cleared it: the loop held the closed server, its versions and sessions.
    assert _closed_server_collected_after(repository, refused=True)


# The installed `inprocserve` command, as pip writes its script (`from inprocserve.__main__ import main;
# sys.exit(main())`), held for a second in its exit path as test_leftovers12's `python -m inprocserve` is.
def test_a_switch_between_two_requests_of_one_iteration_sends_the_later_one_to_the_new_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """The loop routes an iteration's later requests to a model as its first one was while the model's
    published routes stay the same: a switch() made by a task between two of them must still count."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    config = ModelConfig(
        version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1), batching=BatchingConfig(max_delay_s=0.0)
    )
    server = make_server(repository, config=config, control_interval_s=None)
    x = np.ones((1, 4), np.float32)

    async def switch_now() -> None:
        server.switch("scale", 2)

    async def main() -> list[int]:
        await asyncio.gather(*(server.apredict("scale", x) for _ in range(3)))  # (adopts the runners)
        answers = await asyncio.gather(server.apredict("scale", x), switch_now(), server.apredict("scale", x))
        return [answers[0].version, answers[2].version]

    assert asyncio.run(main()) == [1, 2]


def answering_each_request(answer: bytes) -> Iterator[int]:
    """A port whose server answers every request of a kept-alive connection with ``answer`` (whole HTTP)."""

    def serve(conn: socket.socket, stop: threading.Event) -> None:
        with conn:
            conn.settimeout(0.2)
            while not stop.is_set():
                try:
                    if not conn.recv(65536):
                        return
                    conn.sendall(answer)
                except TimeoutError:
                    continue
                except OSError:
                    return

    yield from serving_each_connection(serve)


@pytest.fixture
def answers_ok() -> Iterator[int]:
    """A port whose server answers every request of a kept-alive connection with a 200 of ``{}``."""
    yield from answering_each_request(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")


def test_a_call_interrupted_as_its_answer_is_read_gives_its_connection_back(answers_ok: int) -> None:
    """A remote call interrupted (Ctrl-C's KeyboardInterrupt, gevent's Timeout) between urllib3's answer and
    the read of its body kept its connection's slot for good: with max_connections=1 every later call waited
    its whole timeout and failed, for a connection nobody held any more."""
    client = _oip_client.HttpClient(
        f"http://127.0.0.1:{answers_ok}", max_connections=1, connect_timeout_s=5.0, headers={}
    )
    answered, took_s, _ = answered_after_an_interrupted_call(
        client, interrupted_at(_oip_client.HttpClient._read.__code__), status=200
    )
    assert not isinstance(answered, BaseException), answered
    assert took_s < 0.5


def answered_after_an_interrupted_call(
    client: _oip_client.HttpClient, interruption: AbstractContextManager[None], *, status: int
) -> tuple[Any, float, int]:
    """A call answered (``status``), one ``interruption`` stops, then one more with 1 s to get a connection: what
    that last one got (its answer, or what it raised), how long it took, and the client's free connection slots
    after it. The client is closed after."""
    try:
        assert client.request("GET", "/v2", timeout_s=5.0).status == status
        with pytest.raises(Interrupted), interruption:
            client.request("GET", "/v2", timeout_s=5.0)
        answered, took_s = raised_within(lambda: client.request("GET", "/v2", timeout_s=1.0))
        return answered, took_s, client._slots.qsize()
    finally:
        client.close()


def test_a_warm_request_routed_off_the_loop_and_stopped_names_the_version_that_ran(
    repository: Path, make_server: ServerFactory, stopped_runs: list[type[BaseException]]
) -> None:
    """As test_leftovers11's, once the versions' runners are adopted (any request but a process's first):
    predict's shortest way runs it then, and the task's InferenceError named the version asked for (None)."""
    server, _flags = _canary_server(make_server, repository)
    context = {"user_id": "u1"}

    async def main() -> tuple[Any, Any]:
        for user in range(20):  # (both versions' runners adopted)
            await asyncio.wait_for(server.apredict("scale", _row(1.0), context={"user_id": f"w{user}"}), 30)
        stopped_runs.append(GeventLikeTimeout)
        try:
            first: Any = await asyncio.wait_for(server.apredict("scale", _row(MARK), context=context), 30)
        except inprocserve.InferenceError as exc:
            first = exc
        later = await asyncio.wait_for(server.apredict("scale", _row(1.0), context=context), 30)
        return first, later

    first, later = asyncio.run(main())
    assert not stopped_runs, "no run was stopped"
    assert isinstance(first, inprocserve.InferenceError), first
    assert first.version == later.version, (first.version, later.version)


def test_a_ctrl_c_lost_in_a_finalizer_leaves_the_next_one_to_stop_the_command() -> None:
    """A stop signal whose exception Python discards (raised in a finalizer, or a callback of C code: see
    raise_if_stopped) does not stop the command; Ctrl-C pressed again did, until a second Ctrl-C was ignored
    while a stopped command cleans up: then nothing but SIGKILL stopped it before its next checkpoint (a whole
    quantization's calibration, a whole batch of score)."""
    from inprocserve import _cli_common

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    class Finalized:
        def __del__(self) -> None:
            signal.raise_signal(signal.SIGINT)  # the first Ctrl-C, as a finalizer runs: its exception is dropped

    stopped = False
    try:
        with _cli_common.unwind_on_sigterm():
            Finalized()
            deadline = time.monotonic() + 2.0
            while time.monotonic() < deadline:  # the command's long step, with no checkpoint
                signal.raise_signal(signal.SIGINT)  # pressed again
                time.sleep(0.01)
    except KeyboardInterrupt:
        stopped = True
    finally:
        signal.signal(signal.SIGINT, previous)
    assert stopped
