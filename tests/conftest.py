"""Fixtures: real ONNX models written into temporary repositories, and servers that are always closed."""

from __future__ import annotations

import contextlib
import faulthandler
import functools
import gc
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, settings
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve._batching import Batcher
from inprocserve._flush_policy import FlushPolicy, RunCost
from inprocserve._model import ModelVersion
from inprocserve._wake_relay import RELAY
from inprocserve.testing import build_scale_model, save_model

VALUES_NOT_SPEED_S = 10.0
"""The flag budget (``flag_timeout_s``) of a test about what flags decide, not about a slow provider: on a
loaded 2-core CI machine a decision (or a flag worker's start) can be held past the 50 ms default, and the
stable fallback then answers instead of what the test checks. A test about the budget sets its own."""

ServerFactory = Callable[..., inprocserve.Server]

# Every property test of this folder: derandomized, with no example database, so that `make test` is repeatable
# and its two pytest-xdist processes share no .hypothesis folder; HYPOTHESIS_PROFILE=soak (make soak) draws at
# random. Set here, before any test file is imported: a @settings(...) takes its unset values from the profile
# loaded when its file is imported, so a profile loaded by one test file applied only to the files imported
# after it, and not at all when that file was not collected.
settings.register_profile(
    "default",
    max_examples=500,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "soak",
    max_examples=10_000,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Freeze what the collection made (``gc.freeze``): every module the test files import, torch, onnxruntime,
    Django and hypothesis among them, half a million objects that live as long as the process. A full
    collection walked them all, about 0.4 s on a loaded 2-core machine, in each ``gc.collect()`` a test makes
    to show what it dropped is freed and in each automatic one; a test's own objects, made after this, are
    collected as before. What is garbage by now is collected first, not kept for good."""
    gc.collect()
    gc.freeze()


@pytest.fixture
def no_collector() -> Iterator[None]:
    """Only reference counts free anything while the test runs (a full collection may be far off in a
    long-running worker: what waits for it stays resident meanwhile)."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


@pytest.fixture
def young_heap() -> Iterator[None]:
    """``gc.collect()`` in the test walks only the objects made since it began: those older (every module a
    long pytest-xdist worker imported, torch's included, and what earlier tests keep) are frozen
    (``gc.freeze``) until it ends. Late in a worker of ``make test`` one full collection took about 0.4 s, and
    a test that collects at each step of a loop (to make a leaked object warn where it leaked) spent most of
    its time on it. For a test whose objects under check are all made in the test.

    They stay frozen after it, as what the collection made does (:func:`pytest_collection_finish`): unfreezing
    would thaw that too, and every later collection of the worker walked it all again (0.1 s each with the
    library, torch and Django imported). Only cyclic garbage among them is never collected; reference counts
    still free them."""
    gc.freeze()
    yield


@pytest.fixture(autouse=True)
def every_wake_handed_back(request: pytest.FixtureRequest) -> Iterator[None]:
    """No test may leave a caller queued in the process's wake relay or a place of it held: a place never
    handed back stalls every later queued caller of the process, far from the test that lost it. A test
    marked ``holds_a_woken_caller`` stops a woken caller on purpose until its other steps are done: on a
    loaded machine that outlasts two looks of the relay's watcher, which then takes the place back, as it
    must for any caller that slow (only that count is not checked for it)."""
    taken_back = RELAY.places_taken_back
    yield
    try:
        wait_until(lambda: RELAY.counts() == (0, 0))
    except AssertionError:
        left = RELAY.counts()
        with RELAY._lock:  # start the next test afresh: only this one fails
            stuck = [*RELAY._queue, *RELAY._holders]
            RELAY._queue.clear()
            RELAY._holders.clear()
        for request in stuck:
            with contextlib.suppress(RuntimeError):
                request.waiter.release()
        raise AssertionError(f"the wake relay was left with (queued, woken) = {left}") from None
    if request.node.get_closest_marker("holds_a_woken_caller") is None:
        assert RELAY.places_taken_back == taken_back, "the wake relay had to take back a place never handed on"


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """An empty model repository folder."""
    folder = tmp_path / "models"
    folder.mkdir()
    return folder


@pytest.fixture
def whole_second_folder(tmp_path: Path) -> Iterator[Path]:
    """A folder on a real file system whose times tick in whole seconds (ext2 with 128-byte inodes, as ext3
    volumes, some NFS and SMB shares and overlays on some hosts have), loop-mounted for the test; skipped
    where this process may not mount one (not root, no loop device)."""
    mkfs = shutil.which("mkfs.ext2") or shutil.which("mkfs.ext2", path="/usr/sbin:/sbin")
    if os.geteuid() != 0 or mkfs is None or shutil.which("mount") is None:
        pytest.skip("needs root and mkfs.ext2 to mount a file system of whole-second times")
    image, folder = tmp_path / "whole-seconds.img", tmp_path / "whole-seconds"
    folder.mkdir()
    with image.open("wb") as handle:
        handle.truncate(64 << 20)
    made = subprocess.run([mkfs, "-q", "-F", "-I", "128", str(image)], capture_output=True, text=True, check=False)
    mounted = made.returncode == 0 and (
        subprocess.run(["mount", "-o", "loop", str(image), str(folder)], capture_output=True, check=False).returncode
        == 0
    )
    if not mounted:
        pytest.skip(f"cannot mount a loop file system here: {made.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True, check=False).returncode:
            subprocess.run(["umount", "-l", str(folder)], capture_output=True, check=False)


def past_the_tick(path: Path) -> None:
    """Wait until the file system's clock is past the timestamp tick in which ``path`` last changed. A load in
    that tick caches no optimized graph of it (see docs/performance.md): where times tick coarsely (ext4 before
    Linux 6.13: a jiffy, 4 ms at HZ=250; ext3: a second), a test's first start just after saving a model often
    falls in it, and a test of the cache would find no graph."""
    probe = path.parent / f".tick-probe-{os.getpid()}"
    try:
        while (probe.write_bytes(b""), probe.stat().st_mtime_ns)[1] <= path.stat().st_ctime_ns:
            threading.Event().wait(0.001)
    finally:
        probe.unlink(missing_ok=True)


def within_one_tick(scenario: Callable[[], tuple[os.stat_result, os.stat_result]]) -> None:
    """Run ``scenario`` (which sets a file up, uses it and rewrites it in place with the same size, returning
    its stat before and after) until the rewrite fell within the timestamp tick of the first write: the
    stats are the same. On a file system of whole-second times most runs do; one across a tick is run again."""
    for _ in range(20):
        before, after = scenario()
        stamp = (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
        if stamp == (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns):
            return
    raise AssertionError("every rewrite crossed a timestamp tick: is this file system's tick finer than a second?")


@pytest.fixture
def make_server() -> Iterator[ServerFactory]:
    """Build servers that are closed at the end of the test, whatever happens."""
    servers: list[inprocserve.Server] = []

    def make(*args: Any, **kwargs: Any) -> inprocserve.Server:
        server = inprocserve.Server(*args, **kwargs)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close(timeout_s=10)


@pytest.fixture
def scale_repository(repository: Path) -> Path:
    """``scale`` version 1: y = 2x, on x[batch, 4]."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    return repository


def build_difference_model(first: str, second: str, *, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """``difference = float(first) - float(second)``, each input ``[batch, 1]`` of type ``dtype``."""
    nodes = [
        helper.make_node("Cast", [first], ["first_float"], to=TensorProto.FLOAT),
        helper.make_node("Cast", [second], ["second_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", ["first_float", "second_float"], ["difference"]),
    ]
    graph = helper.make_graph(
        nodes,
        "difference",
        [helper.make_tensor_value_info(name, dtype, ["batch", 1]) for name in (first, second)],
        [helper.make_tensor_value_info("difference", TensorProto.FLOAT, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def build_busy_model(width: int = 512, layers: int = 16, table_rows: int = 10) -> onnx.ModelProto:
    """A model that takes a while per row, with a second input that can poison a request.

    ``y = relu(x @ W)`` repeated ``layers`` times (real compute, so a request with many rows keeps a
    session busy for a predictable while), and ``picked = table[index]``: an index outside the table
    passes validation but fails inside onnxruntime.

    A fresh copy each call (a test may change its own), parsed from the bytes of the first build: drawing
    and packing the 4 M weights again cost 0.15 s, in each of a few hundred tests.
    """
    return onnx.ModelProto.FromString(_busy_model_bytes(width, layers, table_rows))


@functools.cache
def _busy_model_bytes(width: int, layers: int, table_rows: int) -> bytes:
    rng = np.random.default_rng(3)
    nodes, inits = [], []
    previous = "x"
    for layer in range(layers):
        weight = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(weight, f"w{layer}"))
        nodes.append(helper.make_node("MatMul", [previous, f"w{layer}"], [f"m{layer}"]))
        nodes.append(helper.make_node("Relu", [f"m{layer}"], [f"r{layer}"]))
        previous = f"r{layer}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    table = np.arange(table_rows * 2, dtype=np.float32).reshape(table_rows, 2)
    inits.append(numpy_helper.from_array(table, "table"))
    nodes.append(helper.make_node("Gather", ["table", "index"], ["picked"], axis=0))
    graph = helper.make_graph(
        nodes,
        "busy",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"]),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", width]),
            helper.make_tensor_value_info("picked", TensorProto.FLOAT, ["batch", 2]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model.SerializeToString()


BUSY_WIDTH = 512


def busy_inputs(rows: int, *, index: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.standard_normal((rows, BUSY_WIDTH)).astype(np.float32),
        "index": np.full(rows, index, dtype=np.int64),
    }


@pytest.fixture
def busy_repository(repository: Path) -> Path:
    save_model(build_busy_model(BUSY_WIDTH), repository, "busy", 1)
    return repository


@pytest.fixture
def versions(repository: Path) -> Path:
    """Model ``scale`` in versions 1, 2 and 3; version v multiplies by v (tells who answered)."""
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


def rollout(**kwargs: Any) -> inprocserve.ModelConfig:
    """A model configuration with this rollout, serving every version (the ``all`` version policy)."""
    return inprocserve.ModelConfig(
        rollout=inprocserve.RolloutConfig(**kwargs), version_policy=inprocserve.VersionPolicy.all()
    )


def occupy(server: inprocserve.Server, model: str = "busy", rows: int = 3000) -> Any:
    """Keep the model's only session busy with one large request; return its future once it is running.

    A 3000-row request on the busy model takes a quarter of a second or more here, far longer than the
    microseconds a test needs to queue other requests behind it.
    """
    future = server.submit(model, busy_inputs(rows))
    wait_until(lambda: _version_status(server, model)["queued_rows"] == 0)
    assert not future.done(), "the blocking request finished before the test could use it"
    return future


HELD_MARK = 12345.0
"""The first value of a held request's ``x`` (see ``hold_session``)."""


class HeldSession:
    """A run held at its gate until the test lets it go (see ``hold_session``): that of a request the fixture
    sent to hold the model's only session (``future``), or of a batch led by a request the test marked and
    sent itself (``SessionHolder.mark``; no future)."""

    def __init__(self, *, at_most_s: float) -> None:
        self.future: Any = None
        self.at_most_s = at_most_s
        self.started = threading.Event()
        """Set once the held run waits at its gate."""
        self._gate = threading.Event()

    def done(self) -> bool:
        return bool(self.future is not None and self.future.done())

    def let_go(self) -> None:
        """Let the held run go on (a real onnxruntime run), without waiting for it."""
        self._gate.set()

    def let_go_once(self, condition: Callable[[], bool]) -> None:
        """Let the held run go on once ``condition`` holds (polled on a thread of its own), for a test whose
        own thread then waits behind the held run: a ``predict`` queued behind it, say. The run is let go
        anyway after ``at_most_s``."""

        def watch() -> None:
            while not (self._gate.is_set() or condition()):
                time.sleep(0.001)
            self._gate.set()

        threading.Thread(target=watch, daemon=True).start()

    def release(self) -> Any:
        """Let the held run go on, and return its answer (the fixture's request's)."""
        self._gate.set()
        return self.future.result(timeout=60)

    def hold(self) -> None:
        """Wait at the gate (the held run's thread), at most ``at_most_s``."""
        self.started.set()
        self._gate.wait(self.at_most_s)


class SessionHolder:
    """What ``hold_session`` gives a test: call it to hold a model's only session with a request of its own,
    or ``mark`` a request the test sends itself. Runs are held in the order their requests were marked."""

    def __init__(self) -> None:
        self.rows: list[int] = []
        """The rows of every onnxruntime run since the test began, held or not (a version's probes at load
        included), in the order they started."""
        self._armed: list[HeldSession] = []
        self._made: list[HeldSession] = []
        self._lock = threading.Lock()

    def __call__(
        self, server: inprocserve.Server, model: str = "busy", rows: int = 3000, *, at_most_s: float = 10.0
    ) -> HeldSession:
        """Send a request of ``rows`` rows, held once it runs, and return when it holds the session."""
        inputs = busy_inputs(rows)
        held = self.mark(inputs, at_most_s=at_most_s)
        held.future = server.submit(model, inputs)
        wait_until(lambda: _version_status(server, model)["queued_rows"] == 0)
        assert not held.done(), "the held request was answered before it ran"
        return held

    def mark(self, inputs: dict[str, np.ndarray], *, at_most_s: float = 10.0) -> HeldSession:
        """Mark the busy model's ``inputs`` so that the run whose first row is theirs is held: a request
        the test's own thread sends and then waits in (a ``predict`` whose merged batch must be running when
        something happens to its caller; ``started`` tells when it is)."""
        inputs["x"][0, 0] = HELD_MARK
        held = HeldSession(at_most_s=at_most_s)
        with self._lock:
            self._armed.append(held)
            self._made.append(held)
        return held

    def ran(self, feeds: dict[str, Any]) -> HeldSession | None:
        """A run of ``feeds`` starts: note its rows; return the held run it is, if their first row is marked."""
        first = next(iter(feeds.values()), None)
        self.rows.append(len(first) if getattr(first, "ndim", 0) else 0)
        x = feeds.get("x")
        if not (self._armed and x is not None and x.ndim == 2 and len(x) and x[0, 0] == HELD_MARK):
            return None
        with self._lock:
            return self._armed.pop(0) if self._armed else None

    def let_all_go(self) -> None:
        for held in self._made:
            held.let_go()


@pytest.fixture
def hold_session(make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch) -> Iterator[SessionHolder]:
    """Hold a model's only session with one request until the test releases it: ``hold(server)``; or hold
    the batch led by a request the test marks and sends itself: ``hold.mark(inputs)``. ``hold.rows`` notes
    the rows of every run.

    ``occupy`` holds it for as long as its run computes, a quarter of a second here, less on a faster host
    and, seen from a test whose thread a loaded machine stalls, sometimes nothing at all: a test that needs
    requests still queued after a deadline or a sleep then saw the blocker end first and failed by chance.
    Here the blocking request's run (its first part, for a request run in chunks: the first run after the
    call whose ``x`` starts with ``HELD_MARK``, a value no other request of the busy model has) waits for the
    test's ``release()``, or ``at_most_s`` (so that a test whose caller blocks, such as a ``predict`` the
    library fails to answer at its deadline, fails in seconds rather than hangs), before it starts
    onnxruntime; whatever the test leaves held is released at its end, before its servers close. Patched
    before the test builds its servers, since a batcher keeps the backend's bound ``run``.
    """
    from inprocserve._ort_backend import OnnxruntimeBackend

    run = OnnxruntimeBackend.run
    holder = SessionHolder()

    def gated(self: OnnxruntimeBackend, runner: Any, feeds: Any, **kwargs: Any) -> list[np.ndarray]:
        held = holder.ran(feeds)
        if held is not None:
            held.hold()
        return run(self, runner, feeds, **kwargs)

    monkeypatch.setattr(OnnxruntimeBackend, "run", gated)
    yield holder
    holder.let_all_go()


def note_arrivals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """From now on, each request's arrival at any flush policy: the callers in flight it was told of (its own
    included) and whether the policy let it run at once."""
    noted: list[tuple[int, bool]] = []
    arrive = FlushPolicy.arrive

    def noting(policy: FlushPolicy, active_rows: int, rows: int, callers: int, *, idle: bool = True) -> bool:
        runs_now = arrive(policy, active_rows, rows, callers, idle=idle)
        noted.append((callers, runs_now))
        return runs_now

    monkeypatch.setattr(FlushPolicy, "arrive", noting)
    return noted


def pin_run_cost(monkeypatch: pytest.MonkeyPatch, *, fixed_s: float, per_row_s: float) -> None:
    """From now on, every version loaded takes ``fixed_s + per_row_s * rows`` as its measured run cost (a
    version whose cost is not measured keeps none). The cost picks flush rules (``FlushPolicy.overlap``, the
    automatic delay), and measured on a loaded host it is noise: beside two busy loops, the busy model's fixed
    cost per run, about 1 ms, was measured as 0 in two loads of six (a quick model's). Nor is it learned from
    the runs the versions make (``RunCostLearner``): the test's own runs are as noisy."""
    measure = ModelVersion._measure_run_cost

    def pinned(self: ModelVersion, signature: Any, *, batchable: bool) -> RunCost | None:
        measured = measure(self, signature, batchable=batchable)
        return None if measured is None else RunCost(fixed_s, per_row_s, measured.row_elements)

    monkeypatch.setattr(ModelVersion, "_measure_run_cost", pinned)
    monkeypatch.setattr(Batcher, "_learn_run_cost", lambda self, learner: None)


def _version_status(server: inprocserve.Server, model: str) -> dict[str, Any]:
    versions = server.status()["models"][model]["versions"]
    return next(v for v in versions.values() if v.get("serving"))


def version_status(server: inprocserve.Server, model: str) -> dict[str, Any]:
    return _version_status(server, model)


def race_rounds(short: int, long: int) -> int:
    """How many rounds a test that provokes a race repeats: ``short`` in ``make test``, ``long`` under
    ``make soak`` (``INPROCSERVE_TEST_LONG_RACES=1``), which runs these tests again with more chances to hit
    a window that opens rarely."""
    return long if os.environ.get("INPROCSERVE_TEST_LONG_RACES") == "1" else short


def count_batch_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The requests in each batch run from now on, in order (``BatchExecution._run``: merged, bisected, alone)."""
    from inprocserve import _batch_execution

    runs: list[int] = []
    run = _batch_execution.BatchExecution._run

    def counted(self: Any, runner: Any, batch: list[Any], parent: Any) -> Any:
        runs.append(len(batch))
        return run(self, runner, batch, parent)

    monkeypatch.setattr(_batch_execution.BatchExecution, "_run", counted)
    return runs


def wait_until(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll a condition that another thread makes true (bounded, never a blind sleep)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.001)


def run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run ``target(i)`` on ``count`` threads; return the exceptions they raised."""
    errors: list[BaseException] = []
    lock = threading.Lock()

    def wrapped(index: int) -> None:
        try:
            target(index)
        except BaseException as exc:  # collected and reported by the test
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=wrapped, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def run_in_forked_child(work: Callable[[], str], *, timeout_s: int = 60) -> str:
    """Run ``work`` in a forked child and return the text it returned; fail the test if the child failed.

    The child never returns into pytest: it reports through a pipe and its exit code, and an alarm ends it
    after ``timeout_s`` so a hang in the child cannot hang the test run. A child that raised reports its
    traceback in the failure message; a child that hangs, every thread's stack when the alarm ends it
    (written by faulthandler's signal handler, which needs neither the GIL nor a lock the child may be stuck
    on; not its watchdog thread: the repository's conftest arms that for each test, and a child that asks
    for it waits for the parent's watchdog to stop, which never runs in the child).
    """
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code, report = 1, ""
        try:
            os.close(read)
            # The default action (the end of the process), not pytest-timeout's handler, which would run only
            # once the child is back in Python: a child stuck on a lock held at the fork never is.
            signal.signal(signal.SIGALRM, signal.SIG_DFL)
            faulthandler.register(signal.SIGALRM, file=write, all_threads=True, chain=True)  # (then the default)
            signal.alarm(timeout_s)
            report = work()
            signal.alarm(0)  # (done: an alarm due in the next instant must not report a finished child as hung)
            code = 0
        except BaseException:
            report = traceback.format_exc()
        finally:
            try:
                os.write(write, report.encode())
            finally:
                os._exit(code)
    os.close(write)
    chunks = []
    reaped = False
    try:
        while chunk := os.read(read, 65536):  # until the child's end closes as it exits
            chunks.append(chunk)
        _, status = os.waitpid(pid, 0)
        reaped = True
    finally:
        os.close(read)
        if not reaped:  # (the test was stopped meanwhile: no child is left behind)
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    text = b"".join(chunks).decode(errors="replace")
    if os.WIFSIGNALED(status):
        hung = os.WTERMSIG(status) == signal.SIGALRM
        how = f"killed by signal {os.WTERMSIG(status)}"
        how += f" after {timeout_s} s (a hang: its stack follows)" if hung else ""
    else:
        how = f"exit status {os.WEXITSTATUS(status)}"
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed ({how}): {text}"
    return text


def run_python(
    script: str, *args: str, prefix: list[str] | tuple[str, ...] = (), timeout_s: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``script`` in a fresh interpreter that imports this checkout (for what needs a process of its
    own: a global OpenTelemetry provider, dropped capabilities), ``prefix`` before it (``setpriv ...``)."""
    return subprocess.run(
        [*prefix, sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        check=False,
    )


class FreedUnderALock:
    """Stands for an array onnxruntime owns, freed through its allocator under a mutex: its destructor takes
    ``lock``. A fork while a thread of the parent holds that lock (a worker inside a run) leaves it held in
    the child for good, where freeing this object hangs."""

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock

    def __del__(self) -> None:
        with self.lock:
            pass


def child_exits(*, timeout_s: float = 20.0) -> bool:
    """Fork a child that exits at once (``os._exit``, as multiprocessing's do) and say whether it did within
    ``timeout_s``: one stuck in a fork hook is killed."""
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            return True
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return False
