"""A server created before fork() (gunicorn --preload) works in the child, on sessions of its own."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, run_in_forked_child

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")


@contextlib.contextmanager
def held_by_another_thread(lock: Any) -> Iterator[None]:
    """``lock`` held by another thread of this process while the block runs (a fork in it: held in the child,
    by a thread the child does not have)."""
    inside, leave = threading.Event(), threading.Event()

    def holding() -> None:
        with lock:
            inside.set()
            leave.wait(30)

    holder = threading.Thread(target=holding)
    holder.start()
    inside.wait(10)
    try:
        yield
    finally:
        leave.set()
        holder.join()


def test_fork_after_create(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    # the parent has built sessions and started worker threads before forking
    futures = [server.submit("scale", np.full((1, 4), i, np.float32)) for i in range(50)]
    assert [f.result(timeout=10)["y"][0, 0] for f in futures] == [2.0 * i for i in range(50)]

    def in_the_child() -> str:
        ok = server.predict("scale", np.full((2, 4), 3, np.float32))["y"].tolist() == [[6.0] * 4] * 2
        futures = [server.submit("scale", np.full((1, 4), i, np.float32)) for i in range(20)]
        ok = ok and [f.result(timeout=10)["y"][0, 0] for f in futures] == [2.0 * i for i in range(20)]
        state = server.status()["models"]["scale"]["versions"]["1"]["state"]
        server.close()
        return f"{ok} {state}"

    answered, state = run_in_forked_child(in_the_child, timeout_s=30).split()
    assert answered == "True"
    assert state == "ready"
    # the parent is unaffected
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"][0, 0] == 2.0


def test_import_does_not_load_onnxruntime() -> None:
    """A gunicorn --preload master imports the app (and inprocserve) before forking its workers; if that
    loaded onnxruntime, every worker would crash at exit (onnxruntime's cleanup joins a thread that only
    existed in the master)."""
    import subprocess
    import sys

    code = "import sys, inprocserve, inprocserve.testing; print('onnxruntime' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


PRELOAD_SCRIPT = """
import os, sys, tempfile, threading
import numpy as np
import inprocserve                       # the master imports the app before forking
import inprocserve
from inprocserve.testing import build_scale_model, save_model

folder = tempfile.mkdtemp()
save_model(build_scale_model(2.0), folder, "scale", 1)
pid = os.fork()
if pid == 0:                             # a worker: builds its server lazily, serves, exits normally
    server = inprocserve.Server(folder)
    def call():
        for _ in range(50):
            assert server.predict("scale", np.ones((1, 4), np.float32))["y"][0, 0] == 2.0
    threads = [threading.Thread(target=call) for _ in range(8)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    sys.exit(0)                          # a normal exit runs onnxruntime's cleanup
_, status = os.waitpid(pid, 0)
signaled = os.WIFSIGNALED(status)
print("signal" if signaled else "exit", os.WTERMSIG(status) if signaled else os.WEXITSTATUS(status))
"""


def test_a_worker_forked_after_import_exits_cleanly() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", PRELOAD_SCRIPT], capture_output=True, text=True, timeout=120)
    assert result.stdout.strip() == "exit 0", result.stdout + result.stderr


def test_a_forked_worker_checks_the_model_file_it_builds_its_sessions_from(
    repository: Path, make_server: ServerFactory
) -> None:
    # A worker forked from a --preload master builds its own sessions, later, from the file as it is then:
    # a model.onnx swapped since the master checked it must meet its checksum there too.
    import hashlib

    path = save_model(build_scale_model(2.0), repository, "scale", 1)
    (path.parent / "model.onnx.sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "  model.onnx\n")
    server = make_server(repository)
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"][0, 0] == 2.0
    path.write_bytes(build_scale_model(9.0).SerializeToString())  # no longer what the checksum names

    def in_the_child() -> str:
        try:
            answer = server.predict("scale", np.ones((1, 4), np.float32))["y"][0, 0]
        except inprocserve.InprocserveError as exc:
            return f"refused {type(exc).__name__}: {exc}"
        finally:
            server.close()
        return f"served {answer}"

    report = run_in_forked_child(in_the_child, timeout_s=30)
    assert report.startswith("refused") and "sha256" in report, report


def test_a_worker_forked_while_a_thread_is_inside_the_cache_answers(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(
        repository, models={"scale": inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True))}
    )
    x = np.ones((1, 4), np.float32)
    assert server.predict("scale", x)["y"][0, 0] == 2.0  # cached in the parent
    cache = server._registry.routes["scale"].versions[1].cache
    assert cache is not None
    # a request thread of the parent is inside the cache (its lock held) at the instant of the fork
    with held_by_another_thread(cache._lock):

        def in_the_child() -> str:
            return str(server.predict("scale", x * 3, timeout_s=5)["y"][0, 0])

        assert run_in_forked_child(in_the_child, timeout_s=20) == "6.0"
    assert server.predict("scale", x)["y"][0, 0] == 2.0


@pytest.mark.parametrize("held", ["a request's note", "a change being applied"])
def test_a_worker_forked_while_a_thread_holds_the_rollouts_lock_routes_and_records(
    repository: Path, make_server: ServerFactory, held: str
) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rollout = inprocserve.RolloutConfig(
        strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50)
    )
    server = make_server(
        repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all(), rollout=rollout)
    )
    x = np.ones((1, 4), np.float32)
    router = server._registry.routes["scale"].router
    # a thread of the parent holds the router's lock (noting who served a request) or the registry's routing
    # lock (applying a control revision) at the instant of the fork: the child has no such thread to release
    # it, and its requests (which read the published routing state, never that lock) are served
    with held_by_another_thread(router._lock if held == "a request's note" else server._registry.routing):

        def in_the_child() -> str:
            result = server.predict("scale", x, context={"user_id": "u-1"}, timeout_s=5)
            return f"{result.variant} {server.record_outcome(result.request_id, 1.0)}"

        assert run_in_forked_child(in_the_child, timeout_s=20) in ("canary canary", "stable stable")


def test_a_worker_forked_while_a_thread_reads_the_handoff_cost_reports_status(
    repository: Path, make_server: ServerFactory
) -> None:
    """The thread hand-off cost is measured once per process under a lock that every ``status()`` and every
    new batcher takes: a fork while another thread held it (measuring, or reading it for ``status()``) left
    it held for good in the child, whose ``status()`` hung."""
    from inprocserve import _handoff

    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    assert server.status()["thread_handoff_us"] > 0
    with held_by_another_thread(_handoff._handoff_lock):  # (as a thread inside handoff_cost_s holds it)

        def in_the_child() -> str:
            measured = server.status()["thread_handoff_us"] > 0
            return f"{measured} {server.predict('scale', np.ones((1, 4), np.float32))['y'][0, 0]}"

        assert run_in_forked_child(in_the_child, timeout_s=20) == "True 2.0"


def test_a_child_forked_while_a_thread_is_inside_the_cache_frees_no_answer_of_the_parent() -> None:
    """A child forked while a thread was inside the cache starts with an empty one: the parent's entries
    hold answers, arrays onnxruntime owns and frees under its allocator's mutex, which a worker of the
    parent running a batch holds at the fork now and then. Freed in the child's fork hook, they hung it
    there for good (5 of 2,000 forks of a process serving from 16 threads, the cache's lock held at each)."""
    from inprocserve import _cache

    from .conftest import FreedUnderALock, child_exits

    cache = _cache.PredictionCache(inprocserve.CacheConfig(enabled=True))
    allocator = threading.Lock()
    cache._entries[b"key"] = (1, {"y": FreedUnderALock(allocator)})
    with held_by_another_thread(cache._lock):
        with allocator:  # (as a worker of the parent's, inside a run, holds onnxruntime's)
            assert child_exits(timeout_s=10), "the child hung in its fork hook, freeing a cached answer"
    assert len(cache._entries) == 1  # the parent's cache goes on


@pytest.mark.parametrize("expiry", ["evicted", "expired"])
def test_a_child_that_evicts_an_answer_of_the_parent_does_not_free_it(expiry: str) -> None:
    """A child keeps the parent's cached answers, arrays onnxruntime owns and frees under its allocator's
    mutex, which a worker of the parent running a batch holds at the fork now and then: the child's first
    store that evicted one (or expired it) hung there for good (1 of 1,000 forked children of a process
    serving from 16 threads, each child predicting 40 new requests through a cache of 32 entries)."""
    import signal
    import time

    from inprocserve import _cache

    from .conftest import FreedUnderALock

    now = [0.0]
    config = inprocserve.CacheConfig(enabled=True, max_entries=1, ttl_s=1.0 if expiry == "expired" else None)
    cache = _cache.PredictionCache(config, clock=lambda: now[0])
    allocator = threading.Lock()
    cache._entries[b"parent"] = (1, {"y": FreedUnderALock(allocator)})
    with allocator:  # (as a worker of the parent's, inside a run, holds onnxruntime's)
        pid = os.fork()
        if pid == 0:
            now[0] = 2.0  # (past the parent's entry's time to live)
            cache.store(b"child", {"y": np.ones(1)})  # evicts the parent's entry
            os._exit(0 if b"child" in cache._entries and b"parent" not in cache._entries else 3)
    deadline = time.monotonic() + 10
    status = None
    while status is None and time.monotonic() < deadline:
        done, code = os.waitpid(pid, os.WNOHANG)
        status = os.waitstatus_to_exitcode(code) if done else None
        time.sleep(0.01)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert status == 0, "the child hung freeing an answer of the parent's" if status is None else status


def test_importing_inprocserve_outside_uwsgi_imports_no_uwsgi_py_of_the_project(tmp_path: Path) -> None:
    # A project's own uwsgi.py (an entry file for uWSGI's --wsgi-file) on sys.path, outside uWSGI (pytest,
    # manage.py, gunicorn): the package must not import it looking for uWSGI, which ran the file and, with
    # uwsgidecorators installed (pyuwsgi, uwsgi), made `import inprocserve` fail with an AttributeError.
    (tmp_path / "uwsgi.py").write_text("print('the project uwsgi.py ran')\n")
    root = Path(inprocserve.__file__).resolve().parent.parent
    code = "import sys, inprocserve; from inprocserve import _fork; print(_fork.uwsgi_module(), 'uwsgi' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["None", "False"], done.stdout
