"""inprocserve under gevent's monkey-patching, applied after inprocserve was imported.

That is what gunicorn's gevent worker does with a ``--preload``'ed app, or with a ``gunicorn.conf.py`` that
imports ``inprocserve.gunicorn``: the master imports the library, and each worker patches right after the
fork. Each case runs in a child process of its own (the patch cannot be undone). The real gunicorn case is in
``integrations/flask/tests/test_gunicorn_gevent.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from inprocserve.testing import save_model
from tests.test_shadow_close import build_loop_model

_PATCHED_AFTER_IMPORT = """
import json, sys, tempfile
import numpy as np
import inprocserve                       # imported first: gunicorn's master, with --preload
from inprocserve.testing import build_scale_model, save_model
from gevent import monkey
monkey.patch_all()                       # then patched: gunicorn's gevent worker, after the fork
import gevent

repo = tempfile.mkdtemp()
save_model(build_scale_model(3.0), repo, "scale", 1)
with inprocserve.Server(repo) as server:
    def score(i):
        x = np.full((1, 4), float(i), dtype=np.float32)
        return float(server.predict("scale", {"x": x})["y"][0, 0])

    requests = [gevent.spawn(score, i) for i in range(50)]
    gevent.joinall(requests, timeout=30)
    answers = [request.value for request in requests]
    version = server.status()["models"]["scale"]["versions"]["1"]
    print(json.dumps({"answers": answers, "queued_rows": version["queued_rows"], "in_flight": version["in_flight"],
                      "after": score(7)}))
"""


def test_a_server_built_after_a_late_monkey_patch_answers_concurrent_greenlets() -> None:
    """50 greenlets predict at once on a server built after ``monkey.patch_all()``, which came after
    ``import inprocserve``: every one gets its own answer. (Before, the locks and queues made at import were
    real OS ones: the first greenlet that waited on one blocked the whole process, for good.)"""
    pytest.importorskip("gevent")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-c", _PATCHED_AFTER_IMPORT], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["answers"] == [3.0 * i for i in range(50)]
    assert (report["queued_rows"], report["in_flight"]) == (0, 0)
    assert report["after"] == 21.0


@pytest.mark.parametrize("logging_setup", ["logging.basicConfig(level=logging.ERROR)", "pass"], ids=["logging", "none"])
def test_a_late_monkey_patch_with_inprocserve_threads_running_says_to_patch_first(logging_setup: str) -> None:
    """A patch that comes once a server runs cannot be made safe (its threads are real ones, holding real
    locks): the error says what to do instead, on stderr too where logging is not set up (before, the
    package's NullHandler kept it from showing anywhere)."""
    pytest.importorskip("gevent")
    script = f"""
import logging, tempfile
{logging_setup}
import inprocserve
from inprocserve.testing import build_scale_model, save_model
repo = tempfile.mkdtemp()
save_model(build_scale_model(3.0), repo, "scale", 1)
server = inprocserve.Server(repo)
from gevent import monkey
monkey.patch_all()
import os, sys
sys.stderr.flush()
os._exit(0)  # (what follows such a patch is what the error warns of: not this test's business)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert "monkey.patch_all() ran after inprocserve had started threads" in child.stderr, child.stderr
    assert "Patch before anything builds an inprocserve Server" in child.stderr


def test_patching_again_while_a_server_runs_is_no_alarm_when_it_was_patched_before_import() -> None:
    """Patched first (the supported order), then patched again by some other code while a server runs:
    nothing to renew, and no error."""
    pytest.importorskip("gevent")
    script = """
from gevent import monkey
monkey.patch_all()
import logging, tempfile
logging.basicConfig(level=logging.ERROR)
import numpy as np
import inprocserve
from inprocserve.testing import build_scale_model, save_model
repo = tempfile.mkdtemp()
save_model(build_scale_model(3.0), repo, "scale", 1)
with inprocserve.Server(repo) as server:
    server.predict("scale", {"x": np.ones((1, 4), np.float32)})
    monkey.patch_all(subprocess=False)
    print(server.predict("scale", {"x": np.ones((1, 4), np.float32)})["y"].tolist())
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[[3.0, 3.0, 3.0, 3.0]]"
    assert "monkey.patch_all() ran after" not in child.stderr, child.stderr


_FORKED_WARM_UP = """
import os, sys, tempfile, time
{imports}
import inprocserve

built = tempfile.mktemp()
inprocserve.build_after_fork(lambda: open(built, "w").write("built"))
pid = os.fork()
if pid == 0:
    {in_child}
    deadline = time.monotonic() + 10
    while not os.path.exists(built) and time.monotonic() < deadline:
        time.sleep(0.05)
    os._exit(0 if os.path.exists(built) else 3)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize(
    ("imports", "in_child"),
    [
        ("import gevent.pool  # (loads gevent.monkey: an app's gevent client, say)", "pass"),
        (
            "import gunicorn.workers.ggevent  # (gunicorn's gevent worker class)",
            "gevent.monkey.patch_all(); os.path.exists(built) and os._exit(4)",
        ),
    ],
    ids=["gevent-imported-not-patching", "gunicorn-gevent-worker"],
)
def test_a_builder_registered_before_the_fork_runs_in_the_child(imports: str, in_child: str) -> None:
    """``build_after_fork`` builds in a forked child by itself: at once in a process that only imports gevent,
    and once the child is patched in gunicorn's gevent worker (started before, the warm-up thread was a real
    OS thread, and the server's threads greenlets of a hub that never ran), not before ``patch_all()``
    returns (built inside it, before gunicorn installed its signal handlers, a SIGTERM then was swallowed)."""
    pytest.importorskip("gevent")
    pytest.importorskip("gunicorn")
    script = _FORKED_WARM_UP.format(imports=f"import gevent.monkey\n{imports}", in_child=in_child)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "0", child.stderr


_SHADOWS_CLOSED_IN_TURN = """
import tempfile
import numpy as np
import inprocserve                       # imported first: gunicorn's master, with --preload
from inprocserve.testing import build_scale_model, save_model
from gevent import monkey
monkey.patch_all()
import gevent

repo = tempfile.mkdtemp()
save_model(build_scale_model(3.0), repo, "scale", 1)
save_model(build_scale_model(3.0), repo, "scale", 2)
config = inprocserve.ModelConfig(
    rollout=inprocserve.RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
    version_policy=inprocserve.VersionPolicy.all(),
)
x = np.ones((1, 4), np.float32)
first, second = (inprocserve.Server(repo, config=config, shadow_budget=1.0) for _ in range(2))
for server in (first, second):
    server.predict("scale", {"x": x})
    gevent.sleep(0.2)                    # its shadow greenlet starts, and waits for the next copy
first.close()
second.close()
with inprocserve.Server(repo) as third:
    print(third.predict("scale", {"x": x})["y"].tolist())
"""


def test_shadow_greenlets_leave_no_stop_signal_to_other_greenlets_after_a_late_monkey_patch() -> None:
    """Two shadowed servers built after a late patch, closed in the order they were built, then a third
    server answers. (Before, the stop-signal thread-local made at import was one per OS thread, shared by
    every greenlet: each shadow greenlet's signal was every request's, and the first server's, stopped, was
    left there for good: the third server's versions failed to load, every run stopped as closed.)"""
    pytest.importorskip("gevent")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _SHADOWS_CLOSED_IN_TURN],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    assert child.stdout.strip() == "[[3.0, 3.0, 3.0, 3.0]]", child.stderr


_RUNAWAY_RUNS = """
import json, sys
{patch_first}
import numpy as np
import inprocserve
{patch_after_import}
from inprocserve import DeadlineExceededError, RunTimeLimitError, _native

# "loop": a Loop whose trip count the client sets; "limited": the same model under [pool] max_run_s = 1
hostile = {{"x": np.ones((1, 4), np.float32), "n": np.array([[10**11]], np.int64)}}
outcomes = []
with inprocserve.Server(sys.argv[1]) as server:
    for model, timeout_s in (("loop", 1.0), ("limited", None)):
        try:
            server.predict(model, hostile, timeout_s=timeout_s)
            outcomes.append("answered")
        except (DeadlineExceededError, RunTimeLimitError) as exc:
            outcomes.append(type(exc).__name__)
    after = server.predict("loop", {{"x": np.ones((1, 4), np.float32), "n": np.array([[3]], np.int64)}})
left = sorted(thread.name for thread in _native._running.values())
print(json.dumps({{"outcomes": outcomes, "after": after["y"].tolist(), "watchdogs_left": left}}))
"""


@pytest.mark.parametrize(
    ("patch_first", "patch_after_import"),
    [
        ("from gevent import monkey; monkey.patch_all()", ""),
        ("", "from gevent import monkey; monkey.patch_all()  # (gunicorn's gevent worker with --preload)"),
    ],
    ids=["patched-first", "patched-after-import"],
)
def test_deadlines_and_max_run_s_stop_a_runaway_run_under_gevent(
    tmp_path: Path, patch_first: str, patch_after_import: str
) -> None:
    """Under gevent's patch a request whose Loop would run for hours is stopped at its ``timeout_s`` and at
    ``max_run_s``, and the process exits once its server is closed, with no version's watchdog thread left (the
    process's sweeper of run limits idles on, a real OS thread that never holds up the exit). (Before,
    the watchdog was a greenlet, which never ran while the one OS thread was inside onnxruntime: neither run
    was stopped, the first ran on past 20 s and this test's subprocess timed out.)"""
    pytest.importorskip("gevent")
    repo = tmp_path / "models"
    save_model(build_loop_model(), repo, "loop", 1)
    save_model(build_loop_model(), repo, "limited", 1)
    (repo / "limited" / "config.toml").write_text("[pool]\nmax_run_s = 1\n")
    script = _RUNAWAY_RUNS.format(patch_first=patch_first, patch_after_import=patch_after_import)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    child = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", script, str(repo)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout.splitlines()[-1])
    assert report["outcomes"] == ["DeadlineExceededError", "RunTimeLimitError"]
    assert report["after"] == [[1.0, 1.0, 1.0, 1.0]]
    assert report["watchdogs_left"] == ["inprocserve-run-limits"]  # the process's sweeper alone: no version's
