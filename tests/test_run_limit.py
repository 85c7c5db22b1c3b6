"""The limit on one run of a model version (``pool.max_run_s``, ``[pool] max_run_s`` in config.toml).

A request without a deadline whose values make the graph work for hours (a loop's trip count) held a
session of the pool for as long as it ran: a few such requests took the whole pool. onnxruntime now stops
a run at the limit, which raises a ``RunTimeLimitError`` naming the limit and how to change it.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import ConfigurationError, ModelConfig, PoolConfig, RunTimeLimitError, web
from inprocserve._config import load_model_config
from inprocserve._ort_backend import build_onnxruntime_backend
from inprocserve._run_limit import SWEEPER_THREAD, RunSlot, sweeper
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, count_batch_runs, run_python, wait_until
from .test_shadow_close import build_loop_model

LIMITED = "[pool]\nmax_run_s = 1.0\n\n[warmup]\nenabled = false\n"


def steps(count: int, value: float = 1.0) -> dict[str, np.ndarray]:
    return {"x": np.full((1, 4), value, np.float32), "n": np.array([[count]], np.int64)}


@pytest.fixture
def loop_repository(repository: Path) -> Path:
    """``loop`` version 1 (``y = x`` after ``max(n)`` steps), its runs limited to 1 s by its config.toml."""
    save_model(build_loop_model(), repository, "loop", 1)
    (repository / "loop" / "config.toml").write_text(LIMITED)
    return repository


def test_max_run_s_is_60_seconds_unless_set_and_0_or_inf_means_no_limit(tmp_path: Path) -> None:
    assert PoolConfig().max_run_s == 60.0
    path = tmp_path / "config.toml"
    for text, limit in (("2.5", 2.5), ("0", None), ("inf", None), ("1e9", None), ("120", 120.0)):
        path.write_text(f"[pool]\nmax_run_s = {text}\n")
        assert load_model_config(path).pool.max_run_s == limit
    assert PoolConfig(max_run_s=None).max_run_s is None
    for bad in (-1, "60", True, float("nan")):
        with pytest.raises(ConfigurationError, match=r"pool\.max_run_s must be a finite number"):
            PoolConfig(max_run_s=bad)  # type: ignore[arg-type]


def test_a_run_without_a_deadline_is_stopped_at_the_models_limit_and_the_session_serves_on(
    loop_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(loop_repository)
    with pytest.raises(RunTimeLimitError) as caught:
        server.predict("loop", steps(10**12))  # (hours of steps)
    message = str(caught.value)
    assert message.startswith("model 'loop' version 1: the run passed the model's limit of 1 s on one run"), message
    assert "[inputs.n] max" in message and "max_run_s under [pool] in config.toml" in message, message
    assert not isinstance(caught.value, inprocserve.DeadlineExceededError)  # (no caller's deadline passed)
    assert web.http_status(caught.value) is None  # a 500: the server's bound, not the client's deadline (504)
    np.testing.assert_array_equal(server.predict("loop", steps(3, value=2.0))["y"], np.full((1, 4), 2.0))
    latency = server.status()["models"]["loop"]["versions"]["1"]["latency_ms"]
    assert latency["errors"] == 1 and latency["count"] == 1  # counted as a failed request, as other failures


def test_a_deadline_later_than_the_limit_is_cut_at_the_limit_and_an_earlier_one_at_the_deadline(
    loop_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(loop_repository)
    with pytest.raises(RunTimeLimitError):
        server.predict("loop", steps(10**12), timeout_s=3600)
    with pytest.raises(inprocserve.DeadlineExceededError):
        server.predict("loop", steps(10**12), timeout_s=0.2)
    with pytest.raises(RunTimeLimitError):  # (and by a worker thread of the batcher, not the caller's)
        server.submit("loop", steps(10**12)).result(timeout=60)


def test_a_merged_batch_cut_at_the_limit_answers_its_requests_that_run_in_time(
    loop_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each of its requests is run alone: those whose runs end within the limit are answered, the one that
    does not gets the RunTimeLimitError. (Bisected, as a batch that one request's input failed, it would spend
    a limit on every half that holds the slow request: log2(N)+1 limits of a session.)"""
    server = make_server(loop_repository)
    runs = count_batch_runs(monkeypatch)
    blocker = server.submit("loop", steps(10**12))  # (the session busy, up to the limit, while the batch queues)
    wait_until(lambda: runs == [1], timeout_s=5)
    batch = [server.submit("loop", steps(count, value=index)) for index, count in enumerate((1, 10**12, 3))]
    with pytest.raises(RunTimeLimitError):
        blocker.result(timeout=30)
    wait_until(lambda: all(future.done() for future in batch), timeout_s=30)
    assert runs == [1, 3, 1, 1, 1]  # the blocker; merged, cut; then each request alone
    with pytest.raises(RunTimeLimitError):
        batch[1].result()
    for index in (0, 2):
        np.testing.assert_array_equal(batch[index].result()["y"], np.full((1, 4), index, np.float32))


def test_a_run_is_cut_at_the_limit_while_another_thread_runs_short_runs_beside_it(
    loop_repository: Path, make_server: ServerFactory
) -> None:
    """A thread's run finds the thread's own options at hand while it alone runs one run after another; a
    run on another thread meanwhile takes that thread's own: the short runs beside it never hide the long
    run from the limit, and each thread's overrun is cut."""
    (loop_repository / "loop" / "config.toml").write_text(LIMITED.replace("[pool]\n", "[pool]\nsize = 2\n"))
    server = make_server(loop_repository)
    server.predict("loop", steps(1))  # (this thread's options at hand)
    errors: list[BaseException] = []

    def overrun() -> None:
        try:
            server.predict("loop", steps(10**12))
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=overrun)
    started = time.monotonic()
    worker.start()
    while worker.is_alive() and time.monotonic() - started < 6:
        np.testing.assert_array_equal(server.predict("loop", steps(3, value=2.0))["y"], np.full((1, 4), 2.0))
    worker.join(timeout=20)
    assert time.monotonic() - started < 6  # (cut at its 1 s limit, not hours later)
    assert len(errors) == 1 and isinstance(errors[0], RunTimeLimitError), errors
    with pytest.raises(RunTimeLimitError):
        server.predict("loop", steps(10**12))
    np.testing.assert_array_equal(server.predict("loop", steps(3, value=2.0))["y"], np.full((1, 4), 2.0))


def test_a_stop_meant_for_a_threads_last_run_that_ended_meanwhile_does_not_fail_its_next_run(
    loop_repository: Path,
) -> None:
    """The limit's sweep reads a run as it ends and stops its thread's options: the thread's next run, on
    those options, is stopped at its first operator; it runs again, and answers."""
    path = loop_repository / "loop" / "1" / "model.onnx"
    backend = build_onnxruntime_backend(path, ModelConfig(pool=PoolConfig(max_run_s=30.0)), model="loop", version=1)
    try:
        backend.prepare()
        runner = backend.runners()[0]
        backend.run(runner, steps(1))
        assert backend._limit is not None
        slot = backend._limit.slot()
        slot.cut = 1.0  # (the start of a run long gone, as a late sweep leaves it)
        slot.options.terminate = True
        np.testing.assert_array_equal(backend.run(runner, steps(2, value=4.0))[0], np.full((1, 4), 4.0))
        assert slot.cut is None and not slot.options.terminate
    finally:
        backend.close()


class _TaskTimeLimit(Exception):
    """A signal handler's exception (a task queue's soft time limit), landing wherever the thread is."""


def test_an_exception_while_a_run_arms_the_sweep_leaves_the_limit_working(loop_repository: Path) -> None:
    """The sweep's flag was set before its alarm was in the watchdog's heap: an exception in between left it
    set for good, so no later run armed a sweep and no run of the version was ever limited again."""
    path = loop_repository / "loop" / "1" / "model.onnx"
    backend = build_onnxruntime_backend(path, ModelConfig(pool=PoolConfig(max_run_s=0.5)), model="loop", version=1)
    try:
        backend.prepare()
        runner = backend.runners()[0]
        limit = backend._limit
        assert limit is not None
        # The process's sweeper, which every version's sweeps are armed on. (Read from the limit, it was the one
        # the warm-up's sweep had been armed on: on a host of one CPU the thread count is not measured, prepare()
        # runs nothing through the limit, no sweep had been armed yet and the limit's watchdog was still None.)
        watchdog = sweeper()

        def arm_raising_once(*args: Any, **kwargs: Any) -> Any:
            del watchdog.arm  # (the class's again)
            raise _TaskTimeLimit

        wait_until(lambda: not limit.sweeping, timeout_s=5)  # (the warm-up's sweep, if it armed one, came and went)
        watchdog.arm = arm_raising_once  # type: ignore[method-assign]
        try:
            with pytest.raises(_TaskTimeLimit):
                backend.run(runner, steps(1))
        finally:
            vars(watchdog).pop("arm", None)
        with pytest.raises(RunTimeLimitError):
            backend.run(runner, steps(10**7))  # (seconds here: it ends, unlimited, rather than hang the test)
    finally:
        backend.close()


def test_a_run_that_starts_during_a_sweep_does_not_put_off_the_cut_of_another(loop_repository: Path) -> None:
    """A run starting on another thread while a sweep read the slots armed a sweep a whole limit from its
    start, and the sweep then dropped its own, sooner one: the long run was cut up to a limit late."""
    path = loop_repository / "loop" / "1" / "model.onnx"
    config = ModelConfig(pool=PoolConfig(size=2, max_run_s=2.0))
    backend = build_onnxruntime_backend(path, config, model="loop", version=1)
    try:
        backend.prepare()
        runners = backend.runners()
        limit = backend._limit
        assert limit is not None
        started_at: list[float] = []

        class StartingDuringTheSweep(RunSlot):
            """Another thread's slot, whose run starts (reading no sweep armed) as the second sweep reads it."""

            @property  # type: ignore[override]
            def started(self) -> float | None:
                if not started_at and limit.sweeping is False and time.monotonic() > first_sweep_due - 0.05:
                    started_at.append(time.monotonic())
                    limit.start()
                return None

            @started.setter
            def started(self, value: float | None) -> None:
                pass

        wait_until(lambda: not limit.sweeping, timeout_s=5)  # (the warm-up's sweep came and went)
        other = StartingDuringTheSweep(limit._make_options())
        limit._slots.add(other)
        backend.run(runners[1], steps(1))  # arms the first sweep, a limit from now
        first_sweep_due = time.monotonic() + 2.0
        time.sleep(0.5)
        begun = time.monotonic()
        with pytest.raises(RunTimeLimitError):
            backend.run(runners[0], steps(10**12))  # due 0.5 s after the first sweep, 2 s from now
        took = time.monotonic() - begun
        assert started_at, "the other thread's run never started during a sweep"
        assert took < 2.7, f"cut after {took:.2f} s under a 2 s limit"  # (put off: 3.45 s)
    finally:
        backend.close()


def test_every_versions_runs_are_limited_from_one_thread_of_the_process(
    repository: Path, make_server: ServerFactory
) -> None:
    """Each loaded version kept a watchdog thread of its own from its warm-up on, for its sweeps: a worker
    serving 100 versions held 100 idle threads (16 such workers: 1,600, against a container's process
    limit). One thread of the process sweeps every version; two runaway runs of two versions are each cut."""
    for name in ("loop", "other"):
        save_model(build_loop_model(), repository, name, 1)
        (repository / name / "config.toml").write_text("[pool]\nmax_run_s = 1.0\n")
    for index in range(4):
        save_model(build_scale_model(), repository, f"scale{index}", 1)
    server = make_server(repository)
    for index in range(4):
        server.predict(f"scale{index}", np.ones((1, 4), np.float32))
    names = [thread.name for thread in threading.enumerate()]
    ours = {f"inprocserve-deadlines-{name}-v1" for name in ("loop", "other", "scale0", "scale1", "scale2", "scale3")}
    assert not ours & set(names), names  # (another test's server may still be ending its own)
    assert names.count(SWEEPER_THREAD) == 1, names
    runaways = [server.submit(name, steps(10**12)) for name in ("loop", "other")]
    for runaway in runaways:
        with pytest.raises(RunTimeLimitError):
            runaway.result(timeout=30)
    np.testing.assert_array_equal(server.predict("other", steps(3, value=2.0))["y"], np.full((1, 4), 2.0))


def test_a_closed_versions_pending_sweep_does_not_keep_its_limit(loop_repository: Path) -> None:
    """The process's sweeper holds a version's pending sweep for up to a limit (60 s by default): it must not
    keep the closed version's limit (its threads' run options) alive until then."""
    path = loop_repository / "loop" / "1" / "model.onnx"
    backend = build_onnxruntime_backend(path, ModelConfig(pool=PoolConfig(max_run_s=600)), model="loop", version=1)
    backend.prepare()
    backend.run(backend.runners()[0], steps(1))
    limit = backend._limit
    assert limit is not None and limit.sweeping  # (a sweep armed, due in 10 minutes)
    kept = weakref.ref(limit)
    backend.close()
    del limit, backend
    gc.collect()
    assert kept() is None


FORK_WHILE_A_SWEEPER_IS_MADE = """
import os, select, signal, sys, threading
import inprocserve
from inprocserve import _run_limit

with inprocserve.Server(sys.argv[1]) as server:  # (pool.max_run_s: 60 s, its default)
    held, release = threading.Event(), threading.Event()

    def make_sweeper():  # another thread of the process makes the sweeper at the fork (a version loading)
        with _run_limit._sweeper_lock:
            held.set()
            release.wait()

    threading.Thread(target=make_sweeper, daemon=True).start()
    held.wait()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, b"ran")
        os._exit(0)  # (onnxruntime is imported: a child must not run its exit-time clean-up)
    release.set()
    ready, _, _ = select.select([read], [], [], 60)
    if not ready:
        os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    print("child ran" if ready else "child hung in its fork hooks")
"""


def test_a_child_forked_while_another_thread_makes_the_sweeper_runs(repository: Path) -> None:
    """A fork hook made each backend's limit anew, and with it looked up the process's sweeper, under a lock
    that the module renews in the child only after the package's hooks: a child forked while another thread
    held it (a version loading) hung before it ran any code of its own."""
    save_model(build_scale_model(), repository, "scale", 1)
    result = run_python(FORK_WHILE_A_SWEEPER_IS_MADE, str(repository))
    assert result.stdout.strip().splitlines()[-1:] == ["child ran"], result.stdout + result.stderr
