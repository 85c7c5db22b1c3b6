"""A server dropped without ``close()`` is garbage-collected like any object: its sessions are freed and its
threads end. Its clean-up runs on a thread of its own, wherever the collector freed it: on one of the
server's own threads too, holding that thread's locks."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import DriftConfig, InMemoryFlags, ModelConfig
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, count_batch_runs, run_python, wait_until
from .test_shadow_close import build_loop_model

PROCESS_THREADS = ("inprocserve-cleanup", "inprocserve-run-limits")  # (the process's, shared by every server)


def _threads_of_servers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("inprocserve-") and t.name not in PROCESS_THREADS}


def test_a_server_dropped_without_close_is_collected_and_its_threads_end(scale_repository: Path) -> None:
    before = _threads_of_servers()
    x = np.ones((3, 4), np.float32)
    dropped = []
    for _ in range(5):
        # a repository's server watches its control file, this one polls it too, and runs a batch on a worker
        server = inprocserve.Server(scale_repository, poll_interval_s=0.05)
        server.submit("scale", x).result(timeout=10)
        dropped.append(weakref.ref(server))
        del server
    gc.collect()

    assert [ref() for ref in dropped] == [None] * 5  # kept by its own threads for good, sessions and all
    wait_until(lambda: _threads_of_servers() <= before)


_DROPPED_WHILE_SERVING = """
import gc, sys, tempfile, threading, time
import numpy as np
import inprocserve
from inprocserve.testing import build_scale_model, save_model

repository = tempfile.mkdtemp()
save_model(build_scale_model(), repository, "scale")
x = np.ones((1, 4), np.float32)
kept = inprocserve.Server(repository)
serving = True

def requests():
    while serving:
        kept.predict("scale", x)

callers = [threading.Thread(target=requests) for _ in range(2)]
for caller in callers:
    caller.start()
answered = 0
try:
    for _ in range(60):
        server = inprocserve.Server(repository)
        futures = [server.submit("scale", x) for _ in range(20)]
        held = [server]
        held.append(held)  # in a reference cycle: freed by the collector, on whichever thread it runs on
        del server, held
        gc.set_threshold(1)  # the collector runs at the next allocation: on a batcher worker in its lock too
        answered += sum(future.result(timeout=30)["y"].shape[0] for future in futures)
        gc.set_threshold(700)
finally:
    serving = False
    for caller in callers:
        caller.join()
kept.close()
gc.collect()

def left():
    names = [t.name for t in threading.enumerate() if t.name.startswith("inprocserve-")]
    return [name for name in names if name not in ("inprocserve-cleanup", "inprocserve-run-limits")]

for _ in range(400):  # (the last servers' clean-up may still be closing their threads on a busy machine)
    if len(left()) <= 2:
        break
    time.sleep(0.05)
print(answered, len(left()))
"""


def test_servers_the_collector_frees_on_their_own_threads_are_cleaned_up_without_hanging() -> None:
    # The collector runs a dropped server's clean-up on the thread that allocated when it collected: here
    # also one of the server's batcher workers, inside its batcher's lock, which the clean-up takes to
    # close the batcher. Run there, the clean-up waited for that lock for good, and that thread with it.
    try:
        result = run_python(_DROPPED_WHILE_SERVING, timeout_s=120)
    except subprocess.TimeoutExpired:
        pytest.fail("a server freed by the collector on its own batcher worker hung that worker")
    assert result.returncode == 0, result.stderr
    assert "Exception ignored" not in result.stderr
    answered, threads_left = map(int, result.stdout.split())
    assert answered == 60 * 20  # every request of every dropped server answered
    assert threads_left <= 2  # (the wake relay, and one ending), not 2 or 3 for each server dropped


def test_a_process_exits_cleanly_with_a_server_nobody_closed_and_one_the_collector_freed(
    scale_repository: Path,
) -> None:
    script = f"""
import gc
import numpy as np
import inprocserve
x = np.ones((1, 4), np.float32)
dropped = inprocserve.Server({str(scale_repository)!r})
dropped.predict("scale", x)
held = [dropped]
held.append(held)
del dropped, held
gc.collect()  # its clean-up is handed over, and may still run at exit
kept = inprocserve.Server({str(scale_repository)!r}, poll_interval_s=0.05)  # never closed
print(kept.predict("scale", x)["y"].tolist())
"""
    result = run_python(script, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[[2.0, 2.0, 2.0, 2.0]]"
    assert result.stderr == ""


def test_a_dropped_server_that_used_shadows_drift_flags_deadlines_and_apredict_is_collected(
    repository: Path,
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    rng = np.random.default_rng(1)
    np.savez(repository / "scale" / "reference.npz", x=rng.normal(0, 1, (500, 4)).astype(np.float32))
    config = ModelConfig().merged(
        {"version_policy": "all", "rollout": {"shadow": {"versions": [2]}}, "cache": {"share_in_flight": True}}
    )
    config = dataclasses.replace(config, drift=DriftConfig(reference_file="reference.npz", window=50))
    before = _threads_of_servers()
    x = np.ones((60, 4), np.float32)
    server = inprocserve.Server(repository, config=config, flags=InMemoryFlags({}), on_shadow=lambda c: None)
    for _ in range(3):
        server.predict("scale", x)
    for future in [server.submit("scale", x, timeout_s=30) for _ in range(3)]:  # (a deadline's thread)
        future.result(timeout=10)
    asyncio.run(server.apredict("scale", x))
    dropped = weakref.ref(server)
    del server
    gc.collect()

    assert dropped() is None  # a follower's deadline, still armed, kept it (and so every thread below)
    wait_until(lambda: _threads_of_servers() <= before)  # shadow, drift, deadlines, workers, control file


_UNCLOSED_AT_EXIT_AFTER_ANOTHER_FINALIZE = """
import atexit, os, tempfile, threading, weakref

class Kept:
    pass

kept = Kept()
weakref.finalize(kept, print)  # made before inprocserve is imported (Django's request handler makes one)

def after_every_other_exit_hook():
    try:
        server.predict("scale", x)
        os.write(1, b"still serving\\n")
    except inprocserve.ServerClosedError:
        os.write(1, b"closed\\n")

atexit.register(after_every_other_exit_hook)  # (exit hooks run newest first: this one last)

import numpy as np
import inprocserve
from inprocserve.testing import build_scale_model, save_model

repository = tempfile.mkdtemp()
save_model(build_scale_model(), repository, "scale")
x = np.ones((1, 4), np.float32)
server = inprocserve.Server(repository, poll_interval_s=0.05)  # never closed

def serve():
    try:
        while True:
            server.predict("scale", x)
    except inprocserve.ServerClosedError:
        pass

threading.Thread(target=serve, daemon=True).start()
"""


def test_a_server_nobody_closed_is_cleaned_up_at_exit_whatever_made_a_finalizer_first() -> None:
    # weakref.finalize's exit hook runs after the clean-up thread's exit wait when any weakref.finalize was
    # made before inprocserve was imported: its clean-up, handed to that daemon thread, was not waited for,
    # and the interpreter finalized with a daemon thread inside onnxruntime (SIGABRT), or never cleaned up.
    result = run_python(_UNCLOSED_AT_EXIT_AFTER_ANOTHER_FINALIZE, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "closed"


_ANSWERED_AFTER_THE_SERVER_WAS_DROPPED = """
import tempfile
import numpy as np
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
import inprocserve
from inprocserve.testing import build_scale_model, save_model
repository = tempfile.mkdtemp()
save_model(build_scale_model(), repository, "scale")
x = np.ones((1, 4), np.float32)
answered = 0
for _ in range(3):  # (some are answered before the server is freed: those always ended their spans)
    server = inprocserve.Server(repository)
    futures = [server.submit("scale", x) for _ in range(200)]
    del server  # freed at once: its queued requests are answered by its batcher's worker after it is gone
    answered += sum(future.result(timeout=30)["y"].shape[0] for future in futures)
print(answered, [s.name for s in exporter.get_finished_spans()].count("inprocserve.predict"))
"""


def test_requests_answered_after_their_server_was_dropped_end_their_spans() -> None:
    # A submit future answered once the server was garbage was resolved without what _answered does after an
    # answer: its span was never ended (never exported), its duration never recorded (1 of 200 ended in a run).
    result = run_python(_ANSWERED_AFTER_THE_SERVER_WAS_DROPPED, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["600", "600"]


_DROPPED_IN_A_FORKED_CHILD = """
import gc, os, sys, tempfile, threading, time
import numpy as np
import inprocserve
from inprocserve.testing import build_scale_model, save_model

def threads():
    names = ("inprocserve-cleanup", "inprocserve-run-limits")  # (the process's, shared by every server)
    return [t for t in threading.enumerate() if t.name.startswith("inprocserve-") and t.name not in names]

repository = tempfile.mkdtemp()
save_model(build_scale_model(), repository, "scale")
kept = inprocserve.Server()  # before the fork, no model yet (no onnxruntime)
pid = os.fork()
if pid == 0:
    before = len(threads())
    server = inprocserve.Server(repository, poll_interval_s=0.05)
    server.submit("scale", np.ones((1, 4), np.float32)).result(timeout=10)
    del server
    gc.collect()
    deadline = time.monotonic() + 10
    while len(threads()) > before and time.monotonic() < deadline:
        time.sleep(0.05)
    print(len(threads()) - before, flush=True)
    sys.exit(0)  # (an ordinary exit: exit hooks run)
started = time.monotonic()
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), round(time.monotonic() - started))
kept.close()
"""


def test_a_server_dropped_in_a_forked_child_is_cleaned_up_there() -> None:
    # A server alive at the fork called the clean-up thread's start() from its fork hook before the clean-up
    # module's own hook had given the child a queue: that thread waited on the parent's queue for good. The
    # child's dropped servers kept their threads (3 left), and its exit waited 30 s for clean-ups that never ran.
    result = run_python(_DROPPED_IN_A_FORKED_CHILD, timeout_s=90)
    assert result.returncode == 0, result.stderr
    threads_left, (child_exit, child_s) = int(result.stdout.split()[0]), map(int, result.stdout.split()[1:])
    assert (threads_left, child_exit) == (0, 0), result.stderr
    assert child_s < 10


_WATCHED_BEFORE_THE_FORK = """
import gc, os, threading
from inprocserve import _reaper

class Server:  # what is watched for a server nobody closed
    pass

parent, done = os.getpid(), threading.Event()

def clean_up():
    print("cleaned up in", "the parent" if os.getpid() == parent else "the child", flush=True)
    done.set()

server = Server()
_reaper.watch(server, clean_up)
pid = os.fork()
if pid == 0:
    _reaper.start()  # (what a server's fork hook does in the child)
    del server
    gc.collect()
    print("ran" if done.wait(10) else "never ran", flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_server_made_before_the_fork_and_dropped_in_the_child_is_cleaned_up_there() -> None:
    """A server built in gunicorn's master (``--preload``) and dropped in a worker: its collection hands its
    clean-up to the worker's own clean-up thread, not to the master's queue, which nothing in the worker
    reads (the weak reference's callback is bound to a queue: the fork hook binds it to the child's)."""
    result = run_python(_WATCHED_BEFORE_THE_FORK, timeout_s=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["cleaned up in the child", "ran"], result.stdout + result.stderr


_CTRL_C_WHILE_THE_EXIT_DRAINS = """
import signal, sys, threading, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # (as a terminal's foreground job has it)
import numpy as np
import inprocserve
server = inprocserve.Server(sys.argv[1])  # never closed: the exit closes it, and answers what is queued first
rows = np.ones((512, 4), np.float32)

def client():
    while True:
        try:
            server.predict("mlp", {"x": rows})
        except inprocserve.InprocserveError:  # (queue full; closed at exit)
            time.sleep(0.01)

for _ in range(8):
    threading.Thread(target=client, daemon=True).start()  # a development server's request threads
time.sleep(1.5)
print("exiting", flush=True)
"""


def test_ctrl_c_while_the_exit_answers_the_queued_requests_exits_at_once_without_aborting(tmp_path: Path) -> None:
    # Ctrl-C ends `flask run` (or a script); the exit then answers the requests still queued, which takes a while
    # under load, and the user presses Ctrl-C again. That interrupted the exit's wait for the server's threads,
    # and the interpreter finalized with them inside onnxruntime: "terminate called without an active
    # exception", SIGABRT, a core dump. It now leaves at once, ended by SIGINT as Python ends a process whose
    # Ctrl-C nobody caught (an exit status of 130 instead made a shell loop running the script go on).
    save_model(build_mlp_model((4, 2048, 2048, 2048, 4), softmax=False), tmp_path / "models", "mlp")
    process = subprocess.Popen(
        [sys.executable, "-c", _CTRL_C_WHILE_THE_EXIT_DRAINS, str(tmp_path / "models")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
    )
    try:
        assert process.stdout is not None and process.stdout.readline() == "exiting\n"
        time.sleep(0.05)  # the main thread has ended: the exit is answering the queued requests
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
        process.wait()
    assert "terminate called" not in stderr and process.returncode == -signal.SIGINT, (process.returncode, stderr)


_EXIT_WHILE_A_REQUEST_THREAD_BUILDS_THE_SERVER = """
import sys, threading
import onnxruntime
import inprocserve

creating = threading.Event()

class Session(onnxruntime.InferenceSession):  # (only to know when the load is inside onnxruntime)
    def __init__(self, *args, **kwargs):
        creating.set()
        super().__init__(*args, **kwargs)

onnxruntime.InferenceSession = Session
# The first request builds the server (the Flask plug-in without warm): on a development server's request
# thread, a daemon. Ctrl-C now: the main thread ends while that thread is loading the model.
threading.Thread(target=inprocserve.Server, args=(sys.argv[1],), daemon=True).start()
creating.wait(60)
"""


def test_exiting_while_a_request_thread_builds_the_server_waits_for_the_load_instead_of_aborting(
    tmp_path: Path,
) -> None:
    # The exit's clean-up waited for the hot-reload poller's load, not for one on another thread (the server's
    # construction on a request's thread, Server.load): the interpreter finalized with that thread inside
    # onnxruntime's session creation, "terminate called without an active exception", SIGABRT (a single Ctrl-C
    # during the first request of `flask run`, every other time). Every load holds the registry's lock: the
    # clean-up now waits for it, as it waits for the poller.
    save_model(build_mlp_model((4, 2048, 2048, 2048, 4), softmax=False), tmp_path / "models", "mlp")
    result = run_python(_EXIT_WHILE_A_REQUEST_THREAD_BUILDS_THE_SERVER, str(tmp_path / "models"), timeout_s=60)
    assert "terminate called" not in result.stderr and result.returncode == 0, (result.returncode, result.stderr)


def test_a_clean_up_run_at_exit_is_not_handed_to_the_clean_up_thread_by_a_collection_meanwhile() -> None:
    """The exit hook runs the clean-up of a server still there: one dropped in a reference cycle that no
    collection has freed yet is one. Its weak reference, kept alive while the clean-up ran, still had its
    callback: a collection during the clean-up (which allocates) freed the server and handed the same
    clean-up to the clean-up thread, which ran it a second time, alongside the first."""
    from inprocserve import _reaper

    class Watched:  # what is watched for a server nobody closed
        cycle: object = None

    ran: list[str] = []

    def clean_up() -> None:
        ran.append(threading.current_thread().name)
        gc.collect()  # (a collection while the clean-up runs)

    dropped = Watched()
    dropped.cycle = dropped  # (freed by a collection, not when dropped)
    gc.disable()
    try:
        watch = _reaper.watch(dropped, clean_up)
        del dropped
        watch()  # what the exit hook does
    finally:
        gc.enable()
    done = threading.Event()
    _reaper._jobs.put(done)  # (run after anything handed to the clean-up thread before it)
    assert done.wait(10)
    assert ran == [threading.current_thread().name]


def _endless_request(server: inprocserve.Server, runs: list[int]) -> Future[Any]:
    """A request of the loop model that runs until it is stopped (10**10 steps), once it is inside its run."""
    endless = server.submit("loop", {"x": np.ones((1, 4), np.float32), "n": np.array([[10**10]], np.int64)})
    wait_until(lambda: runs == [1], timeout_s=10)
    return endless


def test_close_while_the_exit_cleans_the_server_up_waits_for_that_clean_up(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exit's clean-up of a server nobody closed (on the main thread) marks it closed first; a close() on
    another thread meanwhile (a daemon thread's, a signal handler's) returned at once, with the request in
    flight still running and the sessions not closed yet. It now waits for that clean-up to end."""
    save_model(build_loop_model(), repository, "loop")
    server = make_server(repository, config=ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    runs = count_batch_runs(monkeypatch)
    endless = _endless_request(server, runs)
    exiting = threading.Thread(target=server._finalizer)  # what the exit hook does for a server nobody closed
    exiting.start()
    wait_until(lambda: server.status()["closed"])
    server.close()
    assert endless.done()  # the clean-up stopped it after its wait (a second), and close() waited for that
    with pytest.raises(inprocserve.ServerClosedError):
        endless.result(timeout=0)
    exiting.join(timeout=10)
    assert not exiting.is_alive()


def test_the_exit_leaves_a_server_that_close_is_closing_on_another_thread_to_that_close(
    repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A close() on another thread (retiring one model after the other, its lock held) when the exit's clean-up
    reached the server: the clean-up waited for that lock, said "a model is still loading" when the close took
    longer than its wait, and closed the versions close() had not reached yet, alongside it (the clean-up run
    twice, side by side). It now waits for that close() and, should it give up, says so and touches nothing."""
    monkeypatch.setattr(inprocserve._server, "_EXIT_WAIT_S", 0.5)  # (20 s: the exit's whole wait)
    save_model(build_loop_model(), repository, "loop")
    save_model(build_scale_model(), repository, "scale")
    server = make_server(repository, config=ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False)))
    runs = count_batch_runs(monkeypatch)
    endless = _endless_request(server, runs)
    closing = threading.Thread(target=server.close, kwargs={"timeout_s": 3.0})  # (waits 3 s for the request)
    closing.start()
    wait_until(lambda: server.status()["closed"])
    server._finalizer()  # what the exit hook does for a server nobody closed
    assert not endless.done() and closing.is_alive()  # close() is still waiting for the loop model's request
    assert server.status()["models"]["scale"]["versions"]["1"]["state"] == "ready"  # close() has it next
    messages = [record.getMessage() for record in caplog.records if record.levelname == "ERROR"]
    assert messages == ["a close() of the server on another thread is still running after 0.5s; exiting anyway"]
    closing.join(timeout=10)
    assert not closing.is_alive() and endless.done()
