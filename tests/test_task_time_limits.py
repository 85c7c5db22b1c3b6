"""A task queue's time limit raised inside ``predict``: Celery's ``soft_time_limit`` raises
``SoftTimeLimitExceeded`` (an ``Exception``) from a ``SIGUSR1`` handler in the worker's main thread, RQ's job
timeout ``JobTimeoutException`` from a ``SIGALRM`` handler. onnxruntime computes without the GIL, so the
handler runs the moment the run returns: the task must see its own exception (its ``except
SoftTimeLimitExceeded`` clean-up runs, Celery reports the time limit), not the model's ``InferenceError``, no
error is logged as a bug, and the next task finds the server sound.

Real signals, real onnxruntime; the queues themselves are run in tests/test_celery.py.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import build_busy_model, busy_inputs, version_status, wait_until
from .frames import frame_of
from .ports import listening_socket
from .processes import stop_process

pytestmark = pytest.mark.skipif(not hasattr(signal, "pthread_kill"), reason="needs POSIX signals (pthread_kill)")


class SoftTimeLimitExceeded(Exception):
    """As Celery's (billiard.exceptions.SoftTimeLimitExceeded): an Exception, not a BaseException."""


@pytest.fixture
def soft_time_limit() -> Iterator[None]:
    """The handler Celery's pool installs in each worker process for ``soft_time_limit``."""

    def soft_timeout_sighandler(signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded()

    previous = signal.signal(signal.SIGUSR1, soft_timeout_sighandler)
    try:
        yield
    finally:
        signal.signal(signal.SIGUSR1, previous)


class StoppedAtFirstCall:
    """``call``, with the task's time limit (SIGUSR1) raised into its first call, before it runs."""

    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call
        self.stopped = False

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.stopped:
            self.stopped = True
            signal.raise_signal(signal.SIGUSR1)
        return self.call(*args, **kwargs)


def time_limit_during(function: str) -> threading.Thread:
    """Send the signal once the main thread is inside the backend's ``function`` (``run``: onnxruntime's run;
    ``_create``: building a session)."""
    main = threading.main_thread().ident

    def running() -> bool:
        frame = frame_of(main)
        while frame is not None:
            if frame.f_code.co_name == function and frame.f_code.co_filename.endswith("_ort_backend.py"):
                return True
            frame = frame.f_back
        return False

    def fire() -> None:
        wait_until(running)
        signal.pthread_kill(main, signal.SIGUSR1)  # type: ignore[arg-type]

    thread = threading.Thread(target=fire, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize(
    ("rows", "config"),
    [
        pytest.param(40, inprocserve.ModelConfig(), id="a-request-run-at-once"),
        pytest.param(3000, inprocserve.ModelConfig(), id="a-request-run-in-slices"),
        pytest.param(
            40, inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True)), id="a-request-with-a-cache"
        ),
    ],
)
def test_a_task_stopped_by_its_soft_time_limit_in_predict_sees_its_own_exception(
    soft_time_limit: None,
    repository: Path,
    rows: int,
    config: inprocserve.ModelConfig,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = save_model(build_busy_model(), repository, "busy")
    with inprocserve.Server(repository=repository, models={"busy": config}) as server:
        server.predict("busy", busy_inputs(1))  # warm, as a worker_process_init handler would
        caplog.set_level(logging.ERROR, logger="inprocserve")

        firing = time_limit_during("run")
        with pytest.raises(SoftTimeLimitExceeded):
            for attempt in range(1000):  # (until the signal comes: it is sent once a run is under way)
                server.predict("busy", busy_inputs(rows, seed=attempt))  # (new inputs: no cached answer)
        firing.join(10)

        assert not caplog.records, [record.getMessage() for record in caplog.records]
        # the next task: answered, right, and nothing left counted
        inputs = busy_inputs(5, seed=2)
        expected = onnxruntime.InferenceSession(str(path)).run(["y"], inputs)[0]
        np.testing.assert_allclose(server.predict("busy", inputs)["y"], expected, rtol=1e-5, atol=1e-5)
        assert version_status(server, "busy")["in_flight"] == 0
        assert version_status(server, "busy")["queued_rows"] == 0


def test_an_error_of_the_run_itself_is_still_the_models(soft_time_limit: None, repository: Path) -> None:
    """A handler merely installed (every Celery worker has one) changes nothing for onnxruntime's own errors."""
    save_model(build_busy_model(), repository, "busy")
    with inprocserve.Server(repository=repository) as server:
        with pytest.raises(inprocserve.InferenceError, match="failed to run"):
            server.predict("busy", busy_inputs(2, index=99))  # an index outside the table: Gather fails


# The time limit lands anywhere in the load, also as the model file's integrity check opens it: the exception
# the handler raises as open() returns drops the file object before `with` holds it, and its clean-up closes
# it with a ResourceWarning ("unclosed file", as an unraisable exception): no descriptor is lost, and no
# statement order closes that window (the handler runs as the call returns). Seen once in a fresh-clone run.
@pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <_io\.FileIO name='[^']*model\.onnx' mode='rb'"
    ":pytest.PytestUnraisableExceptionWarning"
)
def test_a_time_limit_while_the_first_task_builds_the_server_leaves_the_next_task_a_working_one(
    soft_time_limit: None, repository: Path
) -> None:
    """A worker that builds its server in its first task (lazily, as RQ's ``SimpleWorker`` or a Celery task
    would) can be stopped while the models load: that task must see its time limit, and the next one build a
    server that serves the model (it was recorded as a failed load: ``ModelNotFoundError`` for good)."""
    path = save_model(build_busy_model(), repository, "busy")

    firing = time_limit_during("_create")
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.Server(repository=repository)
    firing.join(10)

    inputs = busy_inputs(5, seed=2)
    expected = onnxruntime.InferenceSession(str(path)).run(["y"], inputs)[0]
    with inprocserve.Server(repository=repository) as server:
        np.testing.assert_allclose(server.predict("busy", inputs)["y"], expected, rtol=1e-5, atol=1e-5)


def test_a_time_limit_of_the_task_that_leads_identical_requests_never_reaches_the_others(
    soft_time_limit: None, repository: Path
) -> None:
    """With a cache, identical requests in flight follow the first one's run. The leader's task stopped by its
    time limit must not hand that exception to the tasks of other threads that followed it: they are run on
    their own and answered."""
    path = save_model(build_busy_model(), repository, "busy")
    config = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True))
    inputs = busy_inputs(4000, seed=4)
    expected = onnxruntime.InferenceSession(str(path)).run(["y"], inputs)[0]
    with inprocserve.Server(repository=repository, models={"busy": config}) as server:
        server.predict("busy", busy_inputs(1))
        answers: list[Any] = []
        follower = threading.Thread(target=lambda: answers.append(_predict_or_error(server, inputs)))
        main = threading.main_thread().ident

        def fire() -> None:
            wait_until(lambda: _inside(main, "run", "_ort_backend.py"))
            follower.start()
            wait_until(lambda: follower.ident is not None and _inside(follower.ident, "wait", "_inflight.py"))
            signal.pthread_kill(main, signal.SIGUSR1)  # type: ignore[arg-type]

        firing = threading.Thread(target=fire, daemon=True)
        firing.start()
        with pytest.raises(SoftTimeLimitExceeded):
            server.predict("busy", inputs)  # the leader: this task's time limit comes during its run
        firing.join(10)
        follower.join(30)

        (answer,) = answers
        assert not isinstance(answer, BaseException), repr(answer)
        np.testing.assert_allclose(answer["y"], expected, rtol=1e-5, atol=1e-5)


def _predict_or_error(server: inprocserve.Server, inputs: dict[str, np.ndarray]) -> Any:
    try:
        return server.predict("busy", inputs)
    except BaseException as error:  # (what the follower's task would see)
        return error


def _inside(thread: int | None, function: str, filename: str) -> bool:
    frame = frame_of(thread)
    while frame is not None:
        if frame.f_code.co_name == function and frame.f_code.co_filename.endswith(filename):
            return True
        frame = frame.f_back
    return False


class JobTimeoutException(Exception):
    """As RQ's (rq.timeouts.JobTimeoutException), raised by a bound method installed for SIGALRM."""


class DeathPenalty:
    """As RQ's UnixSignalDeathPenalty: the job's timeout is a SIGALRM whose handler is a bound method."""

    def handle_death_penalty(self, signum: int, frame: Any) -> None:
        raise JobTimeoutException("Task exceeded maximum timeout value (1 seconds)")


def test_an_rq_job_timeout_in_predict_fails_the_job_with_it(repository: Path) -> None:
    save_model(build_busy_model(), repository, "busy")
    penalty = DeathPenalty()
    previous = signal.signal(signal.SIGUSR1, penalty.handle_death_penalty)
    try:
        with inprocserve.Server(repository=repository) as server:
            server.predict("busy", busy_inputs(1))
            firing = time_limit_during("run")
            with pytest.raises(JobTimeoutException):
                for attempt in range(1000):
                    server.predict("busy", busy_inputs(40, seed=attempt))
            firing.join(10)
            assert server.predict("busy", busy_inputs(3))["y"].shape == (3, 512)
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_a_time_limit_during_the_first_import_of_onnxruntime_fails_that_task_alone(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A limit that lands while onnxruntime's extension module initialises comes out of the import as
    ``ImportError: initialization failed`` caused by the handler's exception (seen with real SIGALRMs at
    20-60 ms into a worker's first ``Server``): the task sees its time limit, not a model recorded as failed
    to load (``ModelNotFoundError`` for every later task). This process imported onnxruntime long ago, so the
    import is made to fail that way once, with the handler really raising."""
    import builtins

    path = save_model(build_busy_model(), repository, "busy")
    real_import = builtins.__import__
    handler = signal.getsignal(signal.SIGUSR1)
    assert callable(handler)
    failed = []

    def first_import_interrupted(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "onnxruntime" and not failed:
            failed.append(name)
            try:
                handler(signal.SIGUSR1, None)  # as the interpreter runs it, in the extension's initialisation
            except SoftTimeLimitExceeded as exc:
                raise ImportError("initialization failed") from exc
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", first_import_interrupted)
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.Server(repository=repository)
    assert failed

    inputs = busy_inputs(5, seed=2)
    expected = onnxruntime.InferenceSession(str(path)).run(["y"], inputs)[0]
    with inprocserve.Server(repository=repository) as server:
        np.testing.assert_allclose(server.predict("busy", inputs)["y"], expected, rtol=1e-5, atol=1e-5)


class _SlowFlagService(inprocserve.InMemoryFlags):
    """A flag provider read on the request's thread whose read of ``stopped_at`` is where the task's soft time
    limit comes (a flag service's network round trip is the slow part of routing)."""

    stopped_at = ""

    def _read(self, key: str) -> None:
        if self.stopped_at and key.endswith(self.stopped_at):
            self.stopped_at = ""
            signal.raise_signal(signal.SIGUSR1)

    def get_boolean(self, key: str, default: bool, context: Any) -> bool:
        self._read(key)
        return super().get_boolean(key, default, context)

    def get_number(self, key: str, default: float, context: Any) -> float:
        self._read(key)
        return super().get_number(key, default, context)

    def get_string(self, key: str, default: str, context: Any) -> str:
        self._read(key)
        return super().get_string(key, default, context)

    def get_object(self, key: str, default: Any, context: Any) -> Any:
        self._read(key)
        return super().get_object(key, default, context)


@pytest.mark.parametrize("flag", ["canary.percent", "shadow.versions"])
@pytest.mark.parametrize("way", ["predict", "submit"])
def test_a_time_limit_while_a_flag_provider_is_read_stops_the_task(
    soft_time_limit: None, repository: Path, flag: str, way: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Taken for the provider's failure, the time limit was swallowed: the stable version answered (or the
    request was routed again the full way, and answered), the task ran on past its soft limit until
    ``time_limit`` killed the child, and a provider failure was counted and logged."""
    from inprocserve.testing import build_scale_model

    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rollout = inprocserve.RolloutConfig(
        strategy="canary",
        stable=1,
        canary=inprocserve.CanaryConfig(version=2, percent=50),
        shadow=inprocserve.ShadowConfig(versions=[3]),
    )
    config = inprocserve.ModelConfig(rollout=rollout, version_policy=inprocserve.VersionPolicy.all())
    flags = _SlowFlagService({})
    x = np.ones((1, 4), np.float32)
    with inprocserve.Server(repository=repository, models={"scale": config}, flags=flags) as server:

        def call(user: str) -> inprocserve.Prediction:
            context = {"user_id": user}
            if way == "predict":
                return server.predict("scale", x, context=context)
            return server.submit("scale", x, context=context).result(timeout=10)

        call("warm")
        caplog.set_level(logging.WARNING, logger="inprocserve")
        flags.stopped_at = flag
        with pytest.raises(SoftTimeLimitExceeded):
            call("stopped")
        assert not flags.stopped_at  # (the signal was sent)
        assert not caplog.records, [record.getMessage() for record in caplog.records]
        assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 0
        answer = call("next")  # the next task is served
        np.testing.assert_allclose(answer["y"], x * answer.version)


def test_a_time_limit_while_a_request_is_copied_for_its_shadows_stops_the_task(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The copy is made on the caller's thread after its answer: a time limit there was logged as a failed copy
    (with a traceback) and swallowed, and the task ran on past its soft limit."""
    from inprocserve import _shadow
    from inprocserve.testing import build_scale_model

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rollout = inprocserve.RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=[2]))
    config = inprocserve.ModelConfig(rollout=rollout, version_policy=inprocserve.VersionPolicy.all())
    comparable = _shadow._comparable
    copied_until_stopped = StoppedAtFirstCall(comparable)

    x = np.ones((1, 4), np.float32)
    with inprocserve.Server(repository=repository, models={"scale": config}) as server:
        server.predict("scale", x)
        wait_until(lambda: server._shadow._queued_bytes == 0)  # (the warm request's shadow run done)
        monkeypatch.setattr(_shadow, "_comparable", copied_until_stopped)
        caplog.set_level(logging.WARNING, logger="inprocserve")
        with pytest.raises(SoftTimeLimitExceeded):
            server.predict("scale", x)
        assert copied_until_stopped.stopped
        assert not caplog.records, [record.getMessage() for record in caplog.records]
        assert (server._shadow._copying, server._shadow._queued_bytes) == (0, 0)  # its reservation given back
        np.testing.assert_allclose(server.predict("scale", x)["y"], x)


def test_a_time_limit_while_an_optimized_graph_is_put_in_place_leaves_no_partial_graph(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``optimized_model_cache`` the graph is written into a ``.partial`` file and renamed once the session
    is built; a time limit in between (the cache key's look at the model's files) left that whole copy of the
    model on disk for an hour (until a load swept it as stale)."""
    from inprocserve import _ort_backend

    path = save_model(build_busy_model(), repository, "busy")
    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(optimized_model_cache=True))
    written = _ort_backend._graph_written
    stopped = []

    def checked_until_stopped(partial: Path) -> bool:
        if not stopped:
            stopped.append(partial)
            signal.raise_signal(signal.SIGUSR1)
        return written(partial)

    monkeypatch.setattr(_ort_backend, "_graph_written", checked_until_stopped)
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.Server(repository=repository, models={"busy": config})
    assert stopped
    assert not list(path.parent.glob("*.partial"))
    with inprocserve.Server(repository=repository, models={"busy": config}) as server:
        server.predict("busy", busy_inputs(2))
    assert not list(path.parent.glob("*.partial"))


def test_a_time_limit_as_the_model_files_are_checked_for_the_graph_cache_leaves_no_partial_graph_open(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between creating the partial file (locked by this process) and building the session, the load checks
    that the model's files did not change in the file system's current tick: a time limit there left the
    partial file on disk and its descriptor open, the lock held for the life of the worker process (no sweep
    could ever delete it), one more at each such load."""
    from inprocserve import _ort_backend

    path = save_model(build_busy_model(), repository, "busy")
    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(optimized_model_cache=True))
    settled = _ort_backend._settled_sources
    checked_until_stopped = StoppedAtFirstCall(settled)

    monkeypatch.setattr(_ort_backend, "_settled_sources", checked_until_stopped)
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.Server(repository=repository, models={"busy": config})
    assert checked_until_stopped.stopped
    assert not list(path.parent.glob("*.partial"))
    assert not [name for name in _open_files() if name.endswith(".partial")]
    with inprocserve.Server(repository=repository, models={"busy": config}) as server:
        server.predict("busy", busy_inputs(2))


def _open_files() -> list[str]:
    """The paths this process's descriptors are open on (Linux's /proc; none where there is no /proc)."""
    names = []
    for descriptor in os.listdir("/proc/self/fd") if os.path.isdir("/proc/self/fd") else ():
        try:
            names.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        except OSError:  # (the listing's own descriptor, closed since)
            continue
    return names


def test_a_time_limit_during_a_merged_run_on_an_event_loops_thread_reaches_its_tasks(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A task that runs ``asyncio.run`` (``apredict`` calls merged and run on the loop's thread, its main one):
    a time limit as the merged run returned was taken for one task's input, the group handed to the workers
    and every call answered: the task ran on past its soft limit."""
    import asyncio

    from inprocserve import _ort_backend
    from inprocserve.testing import build_scale_model

    save_model(build_scale_model(2.0), repository, "scale")
    run = _ort_backend.OnnxruntimeBackend.run
    armed: list[int] = []

    def stopped_as_it_returns(self: Any, runner: Any, feeds: Any, **options: Any) -> Any:
        outputs = run(self, runner, feeds, **options)
        merged = next(iter(feeds.values())).shape[0] > 1
        if armed and merged and threading.current_thread() is threading.main_thread():
            armed.clear()
            signal.raise_signal(signal.SIGUSR1)
        return outputs

    monkeypatch.setattr(_ort_backend.OnnxruntimeBackend, "run", stopped_as_it_returns)
    x = np.ones((1, 4), np.float32)

    async def task(server: inprocserve.Server) -> list[Any]:
        await server.apredict("scale", x)
        for _ in range(200):  # (until the loop merges the four calls and runs them itself)
            armed[:] = [1]
            calls = (server.apredict("scale", x * (i + 1)) for i in range(4))
            results = await asyncio.gather(*calls, return_exceptions=True)
            if not armed:
                return results
        raise AssertionError("the loop never ran a merged group on its thread")

    with inprocserve.Server(repository=repository) as server:
        results = asyncio.run(task(server))
        assert [type(result) for result in results] == [SoftTimeLimitExceeded] * 4
        np.testing.assert_allclose(server.predict("scale", x)["y"], x * 2)


def test_a_time_limit_while_a_models_config_is_read_stops_the_task_not_the_model(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taken for a bad config.toml, it was swallowed: Server() returned without the model (config error
    'SoftTimeLimitExceeded: '), and every later task got ModelNotFoundError."""
    from inprocserve import _registry

    save_model(build_busy_model(), repository, "busy")
    (repository / "busy" / "config.toml").write_text("[batching]\nmax_batch_size = 8\n")
    load = _registry.load_model_config
    read_until_stopped = StoppedAtFirstCall(load)

    monkeypatch.setattr(_registry, "load_model_config", read_until_stopped)
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.Server(repository=repository)
    assert read_until_stopped.stopped
    with inprocserve.Server(repository=repository) as server:
        server.predict("busy", busy_inputs(2))


def _logged(function: Any) -> Any:
    """A decorator a code base puts on many of its functions (its time-limit handler among them)."""

    @functools.wraps(function)
    def logged(*args: Any, **kwargs: Any) -> Any:
        logging.getLogger("app").debug("calling %s", function.__name__)
        return function(*args, **kwargs)

    return logged


class _Counted:
    """A class-based decorator (``functools.update_wrapper`` on an object with ``__call__``)."""

    def __init__(self, function: Any) -> None:
        self.function = function
        self.calls = 0
        functools.update_wrapper(self, function)

    def __call__(self, *args: Any) -> Any:
        self.calls += 1
        return self.function(*args)


def _stop_task(task_id: str, signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded(task_id)


class _TaskTimeLimit:
    """A handler object: the task whose time it limits, called by the interpreter."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id

    def __call__(self, signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded(self.task_id)

    @_logged
    def logged_handler(self, signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded(self.task_id)


@_logged
def _logged_stop(signum: int, frame: Any) -> None:
    raise SoftTimeLimitExceeded("logged")


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(functools.partial(_stop_task, "task-1"), id="a-functools-partial"),
        pytest.param(_TaskTimeLimit("task-1"), id="an-object-with-__call__"),
        pytest.param(_logged_stop, id="a-decorated-function"),
        pytest.param(_TaskTimeLimit("task-1").logged_handler, id="a-decorated-method"),
        pytest.param(_Counted(functools.partial(_stop_task, "task-1")), id="a-class-based-decorator"),
    ],
)
def test_a_time_limit_handler_of_any_callable_kind_stops_the_task(
    repository: Path, handler: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``signal.signal`` takes any callable; one that is not a plain function or bound method was not
    recognised: the task's exception reached it as ``InferenceError: ... failed to run``."""
    save_model(build_busy_model(), repository, "busy")
    previous = signal.signal(signal.SIGUSR1, handler)
    try:
        with inprocserve.Server(repository=repository) as server:
            server.predict("busy", busy_inputs(1))
            caplog.set_level(logging.ERROR, logger="inprocserve")
            firing = time_limit_during("run")
            with pytest.raises(SoftTimeLimitExceeded):
                for attempt in range(1000):
                    server.predict("busy", busy_inputs(40, seed=attempt))
            firing.join(10)
            assert not caplog.records, [record.getMessage() for record in caplog.records]
            assert server.predict("busy", busy_inputs(3))["y"].shape == (3, 512)
    finally:
        signal.signal(signal.SIGUSR1, previous)


class _FlagService(inprocserve.InMemoryFlags):
    """A flag service client whose calls go through the code base's decorator, and whose service is down."""

    @_logged
    def get_number(self, key: str, default: float, context: Any) -> float:
        raise ConnectionError("flag service unreachable")


def test_a_failure_through_the_decorator_the_time_limit_handler_shares_is_not_the_time_limit(
    repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The handler's decorator runs the same code for every function it decorates: a flag provider's failure
    through that decorator was taken for the task's time limit, and the request failed with the provider's
    ``ConnectionError`` instead of being answered by the stable version."""
    from inprocserve.testing import build_scale_model

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rollout = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
    )
    config = inprocserve.ModelConfig(rollout=rollout, version_policy=inprocserve.VersionPolicy.all())
    x = np.ones((1, 4), np.float32)
    previous = signal.signal(signal.SIGUSR1, _logged_stop)
    try:
        with inprocserve.Server(repository=repository, models={"scale": config}, flags=_FlagService({})) as server:
            caplog.set_level(logging.ERROR, logger="inprocserve")
            answer = server.predict("scale", x, context={"user_id": "u1"})
            assert answer.version == 1
            np.testing.assert_allclose(answer["y"], x)
            assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 1
    finally:
        signal.signal(signal.SIGUSR1, previous)


@pytest.mark.parametrize("where", ["as-a-message-is-awaited", "as-a-batch-is-checked"])
def test_a_time_limit_while_predict_many_reads_the_tasks_input_reaches_the_task_at_once(
    soft_time_limit: None, repository: Path, where: str
) -> None:
    """A consumer's iterable waits for its next message; the time limit that lands there (or as the batch read
    is checked) was taken for a batch that "could not be read or checked": the task was handed the answers
    read before it first (waiting for them to run), then the time limit, with that note."""
    from inprocserve.testing import build_scale_model

    save_model(build_scale_model(2.0), repository, "scale")
    answers: list[Any] = []
    answered_when_stopped: list[int] = []

    def messages() -> Iterator[Any]:
        for number in range(6):
            batch = np.full((2, 4), number, np.float32)
            if number == 3:  # the time limit comes with the fourth message
                answered_when_stopped.append(len(answers))
                if where == "as-a-batch-is-checked":
                    _LazyBatch.stop_at_shape = True
                    yield _LazyBatch(batch)
                    continue
                signal.raise_signal(signal.SIGUSR1)
            yield batch

    with inprocserve.Server(repository=repository) as server:
        with pytest.raises(SoftTimeLimitExceeded) as stopped:
            for answer in server.predict_many("scale", messages()):
                answers.append(answer)
        assert answered_when_stopped and len(answers) == answered_when_stopped[0]  # none after the time limit
        assert not getattr(stopped.value, "__notes__", None)  # no batch of the input failed
        np.testing.assert_allclose(server.predict("scale", np.ones((1, 4), np.float32))["y"], 2.0)


def test_a_time_limit_while_predict_many_waits_for_an_answer_is_no_failure_of_its_rows(
    soft_time_limit: None, repository: Path
) -> None:
    """It was raised with a note that said the rows it waited for failed, and without its traceback (the frame
    of the handler that raised it gone)."""
    import traceback

    save_model(build_busy_model(), repository, "busy")
    main = threading.main_thread().ident

    def fire() -> None:
        wait_until(lambda: _inside(main, "_answers", "_scoring.py"))
        signal.pthread_kill(main, signal.SIGUSR1)  # type: ignore[arg-type]

    with inprocserve.Server(repository=repository) as server:
        server.predict("busy", busy_inputs(1))
        firing = threading.Thread(target=fire, daemon=True)
        firing.start()
        with pytest.raises(SoftTimeLimitExceeded) as stopped:
            for _ in server.predict_many("busy", [busy_inputs(3000, seed=seed) for seed in range(4)]):
                pass
        firing.join(10)
        assert not getattr(stopped.value, "__notes__", None)
        frames = [frame.name for frame in traceback.extract_tb(stopped.value.__traceback__)]
        assert "soft_timeout_sighandler" in frames
        wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)  # (a part running still ends)
        assert server.predict("busy", busy_inputs(3))["y"].shape == (3, 512)


class _TimeLimitAsAFutureIsLocked:
    """CPython runs a pending signal handler as a lock's C ``acquire`` returns: inside ``Condition.__enter__``
    (Python code) of ``with future._condition``, which is then never entered, its lock held. This lands the
    time limit there, once, on the main thread, in the future method named ``method`` (for ``result``: once its
    request runs, so that a worker has it to answer). ``futures``: the future it landed on."""

    def __init__(self, method: str) -> None:
        self.method = method
        self.futures: list[Any] = []
        self.enter = threading.Condition.__enter__
        self.main = threading.main_thread().ident

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(
            threading.Condition, "__enter__", lambda condition: self.enter_as(condition, sys._getframe(1))
        )

    def enter_as(self, condition: Any, caller: Any) -> Any:
        future = caller.f_locals.get("self")
        aimed = (
            not self.futures
            and threading.get_ident() == self.main
            and caller.f_code.co_name == self.method
            and caller.f_code.co_filename.endswith(os.path.join("concurrent", "futures", "_base.py"))
        )
        if aimed and self.method == "result":
            wait_until(lambda: future._state != "PENDING")
        entered = self.enter(condition)
        if aimed:
            self.futures.append(future)
            signal.raise_signal(signal.SIGUSR1)
        return entered

    def unstick(self) -> None:
        """(Let go of a lock the library left held, so that a failure ends the test rather than hangs it.)"""
        for future in self.futures:
            while future._condition._is_owned():
                future._condition.release()


@pytest.mark.parametrize("method", ["add_done_callback", "result"])
def test_a_time_limit_as_predict_many_takes_a_futures_lock_leaves_the_server_serving(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """Landing as predict_many queued a request (its future's done-callback added) or awaited one that ran,
    just as the future's lock was taken, the time limit left that lock held by the task's thread: the worker
    taking or answering the request waited for it forever (taking it, with the batcher's lock held), and
    every later request of the version hung."""
    save_model(build_busy_model(), repository, "busy")
    stop = _TimeLimitAsAFutureIsLocked(method)
    with inprocserve.Server(repository=repository) as server:
        server.predict("busy", busy_inputs(1))
        stop.install(monkeypatch)
        try:
            with pytest.raises(SoftTimeLimitExceeded):
                for _ in server.predict_many("busy", [busy_inputs(300, seed=seed) for seed in range(4)]):
                    pass
            monkeypatch.undo()
            assert stop.futures  # (it landed)
            wait_until(stop.futures[0].done)  # its request is answered (run, or cancelled), and the next one
            wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
            assert server.predict("busy", busy_inputs(3))["y"].shape == (3, 512)
        finally:
            monkeypatch.undo()
            stop.unstick()


def test_a_time_limit_as_submit_queues_a_request_leaves_the_server_serving(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, for a task's own ``submit``: its request stays queued and is answered through its future."""
    save_model(build_busy_model(), repository, "busy")
    stop = _TimeLimitAsAFutureIsLocked("add_done_callback")
    with inprocserve.Server(repository=repository) as server:
        server.predict("busy", busy_inputs(1))
        stop.install(monkeypatch)
        try:
            with pytest.raises(SoftTimeLimitExceeded):
                server.submit("busy", busy_inputs(300))
            monkeypatch.undo()
            assert stop.futures
            wait_until(stop.futures[0].done)
            assert stop.futures[0].result()["y"].shape == (300, 512)
            assert server.predict("busy", busy_inputs(3))["y"].shape == (3, 512)
        finally:
            monkeypatch.undo()
            stop.unstick()


class _LazyBatch:
    """An array-like whose shape is looked up (a lazy view of a dataset): the time limit lands there."""

    stop_at_shape = False

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows

    @property
    def shape(self) -> tuple[int, ...]:
        if _LazyBatch.stop_at_shape:
            _LazyBatch.stop_at_shape = False
            signal.raise_signal(signal.SIGUSR1)
        return tuple(self.rows.shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self.rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]


def test_a_time_limit_while_predict_many_counts_a_lists_rows_stops_the_task(
    soft_time_limit: None, repository: Path
) -> None:
    """Counting the rows of a list of batches (for progress) took the time limit for a malformed batch and
    dropped it: every batch was scored and the task ran on past its soft limit."""
    from inprocserve.testing import build_scale_model

    save_model(build_scale_model(2.0), repository, "scale")
    batches = [_LazyBatch(np.ones((2, 4), np.float32)) for _ in range(3)]
    with inprocserve.Server(repository=repository) as server:
        _LazyBatch.stop_at_shape = True
        with pytest.raises(SoftTimeLimitExceeded):
            list(server.predict_many("scale", batches))
        assert not _LazyBatch.stop_at_shape  # (the signal was sent)
        answers = list(server.predict_many("scale", batches))  # the next task's
        np.testing.assert_allclose(np.concatenate([answer["y"] for answer in answers]), 2.0)


class _LazyRows:
    """An array-like converted when the model's inputs are checked (a lazy view of a dataset): the time limit
    lands in its conversion."""

    stop_at_conversion = False

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.shape = rows.shape
        self.dtype = rows.dtype

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        if _LazyRows.stop_at_conversion:
            _LazyRows.stop_at_conversion = False
            signal.raise_signal(signal.SIGUSR1)
        return self.rows

    def __len__(self) -> int:
        return len(self.rows)


def test_a_time_limit_while_an_event_loops_call_is_checked_for_merging_stops_that_call(
    soft_time_limit: None, repository: Path
) -> None:
    """A task that runs ``asyncio.run``: a call made while another is under way is checked to be merged with
    the others of the loop's iteration; a time limit there was taken for inputs that do not merge, the call
    went the full way, was answered, and the task ran on past its soft limit."""
    import asyncio

    from inprocserve.testing import build_scale_model

    save_model(build_scale_model(2.0), repository, "scale")
    x = np.ones((1, 4), np.float32)

    async def task(server: inprocserve.Server) -> list[Any]:
        await server.apredict("scale", x)
        _LazyRows.stop_at_conversion = True
        calls = [server.apredict("scale", x), server.apredict("scale", _LazyRows(x))]
        return await asyncio.gather(*calls, return_exceptions=True)

    with inprocserve.Server(repository=repository) as server:
        results = asyncio.run(task(server))
        assert not _LazyRows.stop_at_conversion  # (the signal was sent)
        assert isinstance(results[1], SoftTimeLimitExceeded), results
        np.testing.assert_allclose(results[0]["y"], x * 2)
        np.testing.assert_allclose(server.predict("scale", x)["y"], x * 2)


@pytest.mark.parametrize("where", ["as-they-are-stacked", "as-the-group-is-started", "as-their-answer-is-handed-out"])
def test_a_time_limit_while_an_event_loop_starts_its_merged_calls_reaches_each_call(
    soft_time_limit: None,
    repository: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """Calls merged on the loop's thread into more rows than one run takes are stacked and queued for the
    workers. A time limit as they were stacked was taken for no memory to stack: each call went the full way
    and was answered (the task ran on past its soft limit); one as the group was started, or as the workers'
    answer to the merged calls was handed out to them, was logged as a bug, with its traceback."""
    import asyncio

    from inprocserve import _batching, _loop_batching
    from inprocserve.testing import build_scale_model

    save_model(build_scale_model(2.0), repository, "scale")
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=2))
    armed: list[bool] = []
    if where == "as-they-are-stacked":
        stacked = _loop_batching._stacked

        def stacked_until_stopped(members: Any) -> Any:
            if armed and len(members) > 1:
                armed.clear()
                signal.raise_signal(signal.SIGUSR1)
            return stacked(members)

        monkeypatch.setattr(_loop_batching, "_stacked", stacked_until_stopped)
    elif where == "as-their-answer-is-handed-out":
        answered = _loop_batching._LoopState._answered

        def answered_until_stopped(self: Any, merged: Any, request: Any) -> None:
            if armed and request.error is None:
                armed.clear()
                signal.raise_signal(signal.SIGUSR1)
            answered(self, merged, request)

        monkeypatch.setattr(_loop_batching._LoopState, "_answered", answered_until_stopped)
    else:
        config = inprocserve.ModelConfig()
        runs_within = _batching.Batcher.runs_within

        def measured_until_stopped(self: Any, rows: int, *args: Any, **kwargs: Any) -> Any:
            if armed and rows > 1:  # (a group's: a lone call's is 1 row)
                armed.clear()
                signal.raise_signal(signal.SIGUSR1)
            return runs_within(self, rows, *args, **kwargs)

        monkeypatch.setattr(_batching.Batcher, "runs_within", measured_until_stopped)
    x = np.ones((1, 4), np.float32)

    async def task(server: inprocserve.Server) -> list[Any]:
        await server.apredict("scale", x)
        for _ in range(200):  # (until the loop merges the calls: the first one of an iteration may run alone)
            armed[:] = [True]
            results = await asyncio.gather(*(server.apredict("scale", x) for _ in range(4)), return_exceptions=True)
            if not armed:
                return results
        raise AssertionError("the loop never merged the calls")

    with inprocserve.Server(repository=repository, models={"scale": config}) as server:
        caplog.set_level(logging.ERROR, logger="inprocserve")
        results = asyncio.run(task(server))
        stopped = [result for result in results if isinstance(result, SoftTimeLimitExceeded)]
        assert len(stopped) >= 2, results  # the calls merged when the time limit came
        assert all(isinstance(result, (SoftTimeLimitExceeded, inprocserve.Prediction)) for result in results)
        assert not caplog.records, [record.getMessage() for record in caplog.records]
        wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
        np.testing.assert_allclose(server.predict("scale", x)["y"], x * 2)


@pytest.mark.parametrize("where", ["as-the-version-loads", "as-the-repository-is-scanned-again"])
def test_a_time_limit_while_a_task_follows_the_fleets_control_file_stops_the_task(
    soft_time_limit: None,
    repository: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    where: str,
) -> None:
    """A task that makes its worker follow the control file now (``sync_control``): a time limit while the
    version it switches to loads, or while a reload scans the repository again, was kept as a problem of
    that model ('model 'scale': SoftTimeLimitExceeded()', or 'reload (re-scan of the repository) failed')
    and the task ran on past its soft limit. The next sync applies the revision."""
    from inprocserve import _ort_backend, _registry
    from inprocserve.testing import build_scale_model

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    x = np.ones((1, 4), np.float32)
    armed: list[bool] = []

    def until_stopped(function: Any) -> Any:
        def stopped_once(*args: Any, **kwargs: Any) -> Any:
            if armed:
                armed.clear()
                signal.raise_signal(signal.SIGUSR1)
            return function(*args, **kwargs)

        return stopped_once

    with (
        inprocserve.Server(repository=repository, control_interval_s=None) as writer,
        inprocserve.Server(repository=repository, control_interval_s=None) as worker,
    ):
        assert worker.predict("scale", x).version == 2
        if where == "as-the-version-loads":
            writer.switch("scale", 1)  # the worker has only version 2 (the latest) loaded: it loads version 1
            create = _ort_backend.OnnxruntimeBackend._create
            monkeypatch.setattr(_ort_backend.OnnxruntimeBackend, "_create", until_stopped(create))
        else:
            save_model(build_scale_model(3.0), repository, "scale", 3)
            writer.reload()
            monkeypatch.setattr(_registry, "scan_repository", until_stopped(_registry.scan_repository))
        caplog.set_level(logging.ERROR, logger="inprocserve")
        armed.append(True)
        with pytest.raises(SoftTimeLimitExceeded):
            worker.sync_control()
        assert not armed  # (the signal was sent)
        assert not caplog.records, [record.getMessage() for record in caplog.records]
        worker.sync_control()  # the next task's
        assert worker.predict("scale", x).version == (1 if where == "as-the-version-loads" else 3)


STARTING_APP = """
import os, signal, threading
import inprocserve

_server = None
_lock = threading.Lock()
_stopped = []

def get_server():
    global _server
    with _lock:
        if _server is None:
            if not _stopped:  # the worker's start-up time limit comes during its first build
                _stopped.append(True)
                signal.raise_signal(signal.SIGALRM)
            _server = inprocserve.Server(repository=os.environ["INPROCSERVE_TEST_REPOSITORY"])
        return _server

inprocserve.build_after_fork(get_server, background=False)

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(get_server().predict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]}).version).encode()]
"""
STARTING_CONF = """
import logging, signal
from inprocserve.gunicorn import post_worker_init as warm

class StartUpTimeLimit(Exception):
    pass

def _start_up_time_limit(signum, frame):
    raise StartUpTimeLimit("the worker took too long to start")

def post_worker_init(worker):
    logging.basicConfig(level=logging.INFO)  # (the app's own logging: inprocserve's records reach the log)
    signal.signal(signal.SIGALRM, _start_up_time_limit)
    warm(worker)
"""


def test_a_time_limit_while_the_gunicorn_hook_builds_the_server_does_not_stop_gunicorn(
    tmp_path: Path, repository: Path
) -> None:
    """A real gunicorn: an exception from a signal handler leaving the hook failed the worker's boot, and
    gunicorn halted the whole server ("Worker failed to boot", exit code 3). The worker starts, and builds its
    server at its first request; the log names the handler's exception."""
    pytest.importorskip("gunicorn")
    save_model(build_scale_model(2.0), repository, "scale")
    (tmp_path / "starting_app.py").write_text(STARTING_APP)
    (tmp_path / "gunicorn.conf.py").write_text(STARTING_CONF)
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "INPROCSERVE_TEST_REPOSITORY": str(repository),
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]),
    }
    listener = listening_socket()  # handed to gunicorn: no other process can take its port first
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", "--config", str(tmp_path / "gunicorn.conf.py"), "--workers", "1"]
    command += ["--bind", f"fd://{listener.fileno()}", "--log-level", "info"]
    command += ["--chdir", str(tmp_path), "starting_app:app"]
    log = tmp_path / "gunicorn.log"
    with listener, log.open("w") as out:
        master = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, pass_fds=[listener.fileno()])

    try:
        deadline = time.monotonic() + 60  # (bounded: the worker's boot and its first build)
        while True:
            assert master.poll() is None, f"gunicorn stopped (exit code {master.returncode}):\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
                    answer = response.read()
                break
            except urllib.error.HTTPError as exc:
                raise AssertionError(f"{exc}:\n{log.read_text()}") from exc
            except OSError:  # (not listening yet)
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        assert answer == b"1" and master.poll() is None, log.read_text()
        said = log.read_text()
        assert "a signal handler's exception stopped the inprocserve warm-up" in said, said
        assert "StartUpTimeLimit: the worker took too long to start" in said, said
    finally:
        stop_process(master)


def test_a_time_limit_while_check_repository_reads_a_model_is_not_the_models_fault(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was reported as 'not a readable ONNX model (SoftTimeLimitExceeded())': a ModelLoadError that fails
    the app's start, the time limit gone."""
    onnx = pytest.importorskip("onnx")
    save_model(build_busy_model(), repository, "busy")
    load = onnx.load
    read_until_stopped = StoppedAtFirstCall(load)

    monkeypatch.setattr(onnx, "load", read_until_stopped)
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.check_repository(repository)
    assert inprocserve.check_repository(repository)["models"]["busy"][1]["inputs"]


def test_a_time_limit_as_an_event_loop_takes_a_queued_call_to_run_it_reaches_that_call(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A task that runs ``asyncio.run``: a call queued the full way (a model with a cache) is run on the loop's
    thread at the end of the iteration when its run is short. A time limit as the loop took it, before the
    run, reached the call as ``InferenceError: ... interrupted (a signal handler raised) before the run;
    retry``, and was logged as a bug ('running a request of 'scale' on the loop failed', with a traceback)."""
    import asyncio

    from inprocserve import _batch_execution
    from inprocserve.testing import build_scale_model

    save_model(build_scale_model(2.0), repository, "scale")
    config = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True))
    runs_alone = _batch_execution.BatchExecution.runs_alone
    armed: list[bool] = []

    def checked_until_stopped(self: Any, request: Any) -> bool:
        if armed and threading.current_thread() is threading.main_thread():
            armed.clear()
            signal.raise_signal(signal.SIGUSR1)
        return runs_alone(self, request)

    monkeypatch.setattr(_batch_execution.BatchExecution, "runs_alone", checked_until_stopped)

    async def task(server: inprocserve.Server) -> Any:
        for attempt in range(200):  # (until the loop runs a call itself: once the run's cost is measured)
            armed[:] = [True]
            try:
                await server.apredict("scale", np.full((1, 4), attempt, np.float32))  # (new inputs: no cached answer)
            except BaseException as error:
                return error
        raise AssertionError("the loop never ran a queued call on its thread")

    with inprocserve.Server(repository=repository, models={"scale": config}) as server:
        caplog.set_level(logging.ERROR, logger="inprocserve")
        assert isinstance(asyncio.run(task(server)), SoftTimeLimitExceeded)
        assert not caplog.records, [record.getMessage() for record in caplog.records]
        wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
        x = np.ones((1, 4), np.float32)
        np.testing.assert_allclose(server.predict("scale", x)["y"], x * 2)


def test_a_time_limit_while_a_load_checks_that_rows_answer_alone_stops_the_task(
    soft_time_limit: None, repository: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A load runs made-up rows alone and together and compares the answers; a time limit during the
    comparison was logged as a warning ('could not check that each row's answer is its own
    (...SoftTimeLimitExceeded())') and the load, and the task, went on past the soft limit."""
    from inprocserve import _model

    save_model(build_busy_model(), repository, "busy")
    compare = _model.rows_problem
    compared_until_stopped = StoppedAtFirstCall(compare)

    monkeypatch.setattr(_model, "rows_problem", compared_until_stopped)
    caplog.set_level(logging.WARNING, logger="inprocserve")
    with pytest.raises(SoftTimeLimitExceeded):
        inprocserve.Server(repository=repository)
    assert compared_until_stopped.stopped
    assert not caplog.records, [record.getMessage() for record in caplog.records]
    with inprocserve.Server(repository=repository) as server:  # the next task's
        assert server.predict("busy", busy_inputs(3))["y"].shape == (3, 512)


def test_a_handler_installed_after_a_failure_was_judged_is_recognised(soft_time_limit: None, repository: Path) -> None:
    """The handlers are looked up again on each failure (their unwrapped code is kept until one changes): a
    handler a task installs later (an RQ job's death penalty, set per job) is seen."""
    save_model(build_busy_model(), repository, "busy")

    def stopped_in_predict(server: inprocserve.Server) -> None:
        firing = time_limit_during("run")
        try:
            for attempt in range(1000):
                server.predict("busy", busy_inputs(40, seed=attempt))
        finally:
            firing.join(10)

    with inprocserve.Server(repository=repository) as server:
        with pytest.raises(SoftTimeLimitExceeded):  # judged with the handler installed first
            stopped_in_predict(server)
        previous = signal.signal(signal.SIGUSR1, functools.partial(_stop_task, "job-2"))
        try:
            with pytest.raises(SoftTimeLimitExceeded, match="job-2"):
                stopped_in_predict(server)
        finally:
            signal.signal(signal.SIGUSR1, previous)


class _ProxiedHandler:
    """A handler reached through a proxy whose attribute lookups raise outside its context (as werkzeug's
    ``LocalProxy`` does)."""

    def __call__(self, signum: int, frame: Any) -> None:
        raise SoftTimeLimitExceeded()

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError("Working outside of application context.")


def test_a_handler_whose_attributes_raise_leaves_the_callers_own_error_as_it_is(repository: Path) -> None:
    """Judging the caller's error looks at each installed handler: one whose attribute lookups raised turned
    the error of the caller's own iterable into that RuntimeError."""
    save_model(build_scale_model(2.0), repository, "scale")

    def messages() -> Iterator[Any]:
        yield np.ones((2, 4), np.float32)
        raise ValueError("message 2 is malformed")

    previous = signal.signal(signal.SIGUSR2, _ProxiedHandler())
    try:
        with inprocserve.Server(repository=repository) as server:
            with pytest.raises(ValueError, match="message 2 is malformed"):
                for _ in server.predict_many("scale", messages()):
                    pass
    finally:
        signal.signal(signal.SIGUSR2, previous)
