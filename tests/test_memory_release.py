"""A retired version's memory goes back at once: its sessions are freed when it is unloaded or replaced, not
whenever the garbage collector next runs, and the C allocator's free pages are returned to the system."""

from __future__ import annotations

import os
import shutil
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _heap
from inprocserve.testing import build_gather_model, build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory


def sessions_of(server: inprocserve.Server, model: str, version: int) -> list[weakref.ref[Any]]:
    backend = server._registry.loaded[model][version]._backend
    return [weakref.ref(session) for session in backend._sessions]  # type: ignore[union-attr]


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("way", ["plain", "batched", "async"])
def test_an_unloaded_versions_sessions_are_freed_at_once(
    repository: Path, make_server: ServerFactory, way: str
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    x = np.ones((1, 4), np.float32)
    if way == "plain":  # a lone request: run on the caller's thread
        server.predict("scale", x)
    elif way == "batched":
        server.submit("scale", x).result(timeout=30)
    else:
        import asyncio

        asyncio.run(server.apredict("scale", x))
    sessions = sessions_of(server, "scale", 1)
    assert sessions and all(ref() is not None for ref in sessions)
    server.unload("scale")
    assert [ref() for ref in sessions] == [None] * len(sessions)  # (a runner kept by the batcher held it)


@pytest.mark.usefixtures("no_collector")
def test_an_unloaded_versions_sessions_are_freed_though_its_worker_gives_its_session_back_after_the_answer(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A worker answers its batch's callers, then gives its session back to the pool: a caller that unloads
    # the version at once releases the pool before that, and the session given back afterwards was kept
    # (with the batcher, in a reference cycle) until the collector's next full pass.
    from inprocserve._batch_execution import BatchExecution

    execute = BatchExecution.execute

    def answer_then_dawdle(self: BatchExecution, runner: Any, batch: Any, *args: Any, **kwargs: Any) -> Any:
        timing = execute(self, runner, batch, *args, **kwargs)  # the callers have their answers now
        time.sleep(0.2)  # (the unload below runs meanwhile; the worker gives its session back after)
        return timing

    monkeypatch.setattr(BatchExecution, "execute", answer_then_dawdle)
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    assert server.submit("scale", np.ones((1, 4), np.float32)).result(timeout=30).version == 1
    sessions = sessions_of(server, "scale", 1)
    server.unload("scale")
    assert [ref() for ref in sessions] == [None] * len(sessions)


@pytest.mark.usefixtures("no_collector")
def test_a_version_unloaded_while_its_first_request_takes_up_its_sessions_keeps_none(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process's first request takes up the version's sessions for its batcher (building them if need be)
    # without the batcher's lock: an unload meanwhile released the pool first, and the session the request
    # then handed to the batcher stayed with it (in a reference cycle) after the unload.
    from inprocserve._pool import RunnerPool

    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    adopt = RunnerPool.adopt
    taken_up, unloaded = threading.Event(), threading.Event()

    def adopt_until_unloaded(pool: RunnerPool) -> list[Any]:
        runners = adopt(pool)
        taken_up.set()
        unloaded.wait(timeout=30)
        return runners

    monkeypatch.setattr(RunnerPool, "adopt", adopt_until_unloaded)
    refused: list[BaseException] = []

    def first_request() -> None:
        try:
            server.predict("scale", np.ones((1, 4), np.float32))
        except inprocserve.InprocserveError as exc:  # (the version went while it was being taken up)
            refused.append(exc)

    caller = threading.Thread(target=first_request)
    caller.start()
    assert taken_up.wait(timeout=30)
    sessions = sessions_of(server, "scale", 1)
    server.unload("scale")
    unloaded.set()
    caller.join(timeout=30)
    assert not caller.is_alive() and len(refused) == 1
    assert [ref() for ref in sessions] == [None] * len(sessions)


@pytest.mark.usefixtures("no_collector")
def test_a_version_replaced_by_a_hot_reload_frees_its_sessions_at_once(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    server.predict("scale", np.ones((1, 4), np.float32))
    sessions = sessions_of(server, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    assert server.refresh() == []
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == 2
    assert [ref() for ref in sessions] == [None] * len(sessions)


def resident_bytes() -> int:
    with open(f"/proc/{os.getpid()}/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_freed_heap_memory_is_given_back_to_the_system() -> None:
    if _heap._malloc_trim() is None:
        pytest.skip("no malloc_trim here (not glibc): nothing to give back this way")
    # 200 MB of 64 KiB blocks (below the allocator's mapping threshold: they come from its heap), every other
    # one freed, and the rest kept: no free block reaches the heap's top, which free() alone would trim.
    blocks = [bytearray(os.urandom(16)) * 4096 for _ in range(3200)]
    del blocks[::2]
    before = resident_bytes()
    _heap.give_back_freed_memory()
    after = resident_bytes()
    assert before - after > 50 * 2**20, (before, after)
    del blocks


@pytest.mark.usefixtures("no_collector")
def test_an_unloaded_version_and_its_prediction_cache_are_freed_at_once(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[cache]\nenabled = true\n")
    server = make_server(repository)
    x = np.ones((1, 4), np.float32)
    server.predict("scale", x)
    assert server.predict("scale", x).version == 1  # (answered from the cache)
    version = weakref.ref(server._registry.loaded["scale"][1])
    cache = weakref.ref(server._registry.loaded["scale"][1].cache)
    server.unload("scale")
    # (the backend kept the version's warm-up, a bound method: the version, its batcher and cache stayed)
    assert (version(), cache()) == (None, None)


@pytest.mark.usefixtures("no_collector")
@pytest.mark.parametrize("failure", ["deadline", "inference"])
def test_a_version_whose_request_failed_on_its_callers_thread_is_freed_at_once(
    repository: Path, make_server: ServerFactory, failure: str
) -> None:
    # A process's first request takes the full way, which runs it on its caller's thread when a session is idle.
    if failure == "deadline":  # a run of about 150 ms, stopped by onnxruntime at the deadline (one of 20 ms
        # outran the watchdog's timer on a loaded machine: its answer came back, and nothing was raised)
        save_model(build_mlp_model((256, 1024, 1024, 1024, 2), softmax=False), repository, "model", 1)
        inputs, error = np.ones((512, 256), np.float32), inprocserve.DeadlineExceededError
        call = {"timeout_s": 1e-4}
    else:  # an index past the table's end: onnxruntime refuses the run
        save_model(build_gather_model(table_rows=10), repository, "model", 1)
        inputs, error, call = np.array([3, 12], np.int64), inprocserve.InferenceError, {}
    server = make_server(repository)
    with pytest.raises(error):
        server.predict("model", inputs, **call)
    version = weakref.ref(server._registry.loaded["model"][1])
    server.unload("model")
    # (the error's traceback held the frame that kept it as a local, and the frames below: the version's)
    assert version() is None


def test_a_model_removed_from_the_repository_keeps_nothing_of_its_requests(
    repository: Path, make_server: ServerFactory
) -> None:
    """Models that come and go under new names (a folder per release, say) kept, each, the request ids of its
    last hour (up to 100 000) and its sampled inputs (up to 32 MiB) for the life of the process."""
    save_model(build_scale_model(1.0), repository, "kept", 1)
    server = make_server(repository)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    for release in range(5):
        name = f"release-{release}"
        save_model(build_scale_model(2.0), repository, name, 1)
        (repository / name / "config.toml").write_text("[rollout]\nstable = 1\n")
        assert server.refresh() == []
        requests = [server.predict(name, x * row, context={"user_id": str(row)}) for row in range(20)]
        server.record_outcome(requests[0].request_id, 1.0)
        shutil.rmtree(repository / name)
        assert server.refresh() == []
        assert name not in server.models
    assert list(server._registry.routers) == ["kept"]  # (each router holds its last hour of request ids)
    save_model(build_scale_model(2.0), repository, "release-0", 1)  # a name that comes back starts afresh
    assert server.refresh() == []
    assert server.predict("release-0", x, context={"user_id": "a"}).version == 1
