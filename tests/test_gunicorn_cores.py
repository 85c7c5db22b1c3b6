"""``inprocserve.gunicorn``'s one-core-per-worker hooks: the shares of the cores the master gives the workers
it forks, and every thread of a worker on its share, under a real gunicorn with docs/deployment.md's
configuration (a replaced worker: tests/test_doc_snippets_docsa.py)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

import inprocserve.gunicorn
from inprocserve import _prefork
from inprocserve._cpu_quota import CpuQuota
from inprocserve.gunicorn import cores_for_next_worker, post_fork, pre_fork
from inprocserve.testing import build_mlp_model, save_model

from .conftest import run_in_forked_child
from .ports import listening_socket

ROOT = Path(__file__).resolve().parents[1]


def fork_one_by_one(cores: list[int], workers: int) -> list[frozenset[int]]:
    """The cores each of ``workers`` workers keeps to, forked one after the other."""
    given_out: list[frozenset[int]] = []
    for _ in range(workers):
        given_out.append(cores_for_next_worker(cores, workers, given_out))
    return given_out


def test_as_many_workers_as_cores_keep_to_one_core_each() -> None:
    assert fork_one_by_one([0, 1, 2, 3], 4) == [frozenset({core}) for core in (0, 1, 2, 3)]


def test_fewer_workers_than_cores_share_them_out_leaving_none_unused() -> None:
    assert fork_one_by_one(list(range(8)), 2) == [frozenset(range(4)), frozenset(range(4, 8))]
    assert fork_one_by_one(list(range(6)), 4) == [frozenset({0, 1}), frozenset({2, 3}), {4}, {5}]
    assert fork_one_by_one([0, 1], 1) == [frozenset({0, 1})]


def test_a_replacement_takes_the_share_its_predecessor_left() -> None:
    workers = fork_one_by_one([0, 1, 2, 3], 4)
    del workers[1]  # the worker on core 1 died and was reaped
    assert cores_for_next_worker([0, 1, 2, 3], 4, workers) == {1}


def test_more_workers_than_cores_go_where_fewest_are() -> None:
    assert fork_one_by_one([0, 1], 5) == [{0}, {1}, {0}, {1}, {0}]
    assert cores_for_next_worker([0, 1], 5, [frozenset({0}), frozenset({0}), frozenset({1})]) == {1}


def test_siblings_placed_under_another_worker_count_still_count_per_core() -> None:
    # (gunicorn's TTIN raised the count from 2 to 4 on 4 cores: the two older workers keep two cores each)
    older = [frozenset({0, 1}), frozenset({2, 3})]
    assert cores_for_next_worker([0, 1, 2, 3], 4, older) == {0}


@given(st.integers(1, 16), st.integers(1, 24), st.integers(0, 8))
def test_workers_forked_one_by_one_cover_every_core_evenly(cores: int, workers: int, first: int) -> None:
    allowed = list(range(first, first + cores))
    given_out = fork_one_by_one(allowed, workers)
    per_core = Counter(core for kept in given_out for core in kept)
    assert set(per_core) == set(allowed)  # no core left unused
    assert max(per_core.values()) - min(per_core.values()) <= 1  # none more crowded than it must be
    if workers >= cores:
        assert all(len(kept) == 1 for kept in given_out)


needs_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2, reason="needs Linux and two cores"
)


@pytest.fixture(autouse=True)
def _no_choice_left_for_the_next_fork() -> Iterator[None]:
    """A test that calls pre_fork in this process leaves no cores chosen for whatever forks here next."""
    yield
    _prefork.keep_next_child_on(None)


@needs_two_cores
def test_the_master_chooses_before_the_fork_so_workers_forked_back_to_back_never_share_a_core() -> None:
    """The second worker is forked before the first ran its post_fork: a worker choosing by its siblings'
    affinity would still see the first one free to use every core, and take the same core."""
    server = SimpleNamespace(WORKERS={}, num_workers=2)
    first, second = SimpleNamespace(), SimpleNamespace()
    pre_fork(server, first)
    server.WORKERS[101] = first  # forked; its post_fork has not run yet
    pre_fork(server, second)
    cores = sorted(os.sched_getaffinity(0))
    assert first._inprocserve_cores | second._inprocserve_cores == set(cores)
    assert not first._inprocserve_cores & second._inprocserve_cores


@needs_two_cores
def test_after_a_lopsided_scale_down_a_reload_lays_the_new_workers_out_afresh() -> None:
    """TTOU left two workers on the first core; HUP forks two new ones before it stops the old (the oldest):
    the new ones take a core each, whatever the old ones keep to."""
    first, second = sorted(os.sched_getaffinity(0))[:2]
    old = {pid: SimpleNamespace(age=age, _inprocserve_cores=frozenset({first})) for pid, age in ((11, 1), (12, 2))}
    server = SimpleNamespace(WORKERS=dict(old), num_workers=2)
    new = [SimpleNamespace(age=3), SimpleNamespace(age=4)]
    for pid, worker in zip((13, 14), new, strict=True):
        pre_fork(server, worker)
        server.WORKERS[pid] = worker
    assert sorted(min(worker._inprocserve_cores) for worker in new) == [first, second]


@needs_two_cores
def test_post_fork_without_pre_fork_says_what_to_import_and_keeps_every_core(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        post_fork(SimpleNamespace(WORKERS={}, num_workers=2), SimpleNamespace())
    assert "import pre_fork from inprocserve.gunicorn" in caplog.text
    assert os.sched_getaffinity(0) == before


@needs_two_cores
def test_the_chosen_cores_hold_from_the_forks_first_moment_and_for_that_child_only() -> None:
    """Set in the child's first fork hook (before the warm-up thread starts there), forgotten in the parent
    right after the fork: a later fork of the master (gunicorn's re-exec) is no worker."""
    cores = sorted(os.sched_getaffinity(0))
    pre_fork(SimpleNamespace(WORKERS={}, num_workers=len(cores)), SimpleNamespace())
    assert run_in_forked_child(lambda: str(sorted(os.sched_getaffinity(0)))) == str(cores[:1])
    assert run_in_forked_child(lambda: str(sorted(os.sched_getaffinity(0)))) == str(cores)
    assert sorted(os.sched_getaffinity(0)) == cores  # (the master itself is never kept)


@needs_two_cores
def test_under_a_cpu_quota_without_cores_of_its_own_workers_stay_free(monkeypatch: pytest.MonkeyPatch) -> None:
    """(A quota is faked: this machine's test process has none.) Its cores are other containers' too."""
    quota = CpuQuota(quota_us=100_000, period_us=100_000, source="/sys/fs/cgroup/cpu.max")
    monkeypatch.setattr(inprocserve.gunicorn, "current_cpu_quota", lambda: quota)
    worker = SimpleNamespace()
    pre_fork(SimpleNamespace(WORKERS={}, num_workers=2), worker)
    assert worker._inprocserve_cores == frozenset(os.sched_getaffinity(0))
    assert _prefork._cores_for_next_child is None


# -- under a real gunicorn ---------------------------------------------------------------------------------

needs_gunicorn_on_two_cores = pytest.mark.skipif(
    not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2 or shutil.which("taskset") is None,
    reason="needs Linux, two cores and taskset (util-linux) to give gunicorn exactly two cores",
)

PLAIN_APP = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'ok']\n"

EAGER_APP = """
import os
import numpy as np
import inprocserve

_server = None

def build():
    global _server
    if _server is None:
        _server = inprocserve.Server(repository=os.environ["CORES_TEST_REPOSITORY"])
        _server.predict("mlp", np.ones((1, 4), np.float32))
    return _server

inprocserve.build_after_fork(build)  # (what the Flask and Django plug-ins do in eager mode)

def app(environ, start_response):
    build().predict("mlp", np.ones((1, 4), np.float32))
    start_response("200 OK", [])
    return [b"ok"]
"""


def deployment_conf() -> str:
    """The gunicorn configuration of docs/deployment.md's "### One core per worker"."""
    section = (ROOT / "docs/deployment.md").read_text().split("### One core per worker", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    return match.group(1)


def threads_cores(master: int) -> dict[int, set[tuple[int, ...]]]:
    """Each live worker of ``master``: the distinct sets of cores its threads may use."""
    found: dict[int, set[tuple[int, ...]]] = {}
    for pid in Path(f"/proc/{master}/task/{master}/children").read_text().split():
        masks = set()
        try:
            for tid in os.listdir(f"/proc/{pid}/task"):
                masks.add(tuple(sorted(os.sched_getaffinity(int(tid)))))
        except OSError:  # exited meanwhile
            continue
        found[int(pid)] = masks
    return found


@contextmanager
def gunicorn(
    tmp_path: Path, conf: str, app: str, env: dict[str, str]
) -> Iterator[tuple[subprocess.Popen[bytes], Path, str]]:
    """gunicorn on two cores with ``conf``: 2 gthread workers of ``app``, ``--preload``; its master, log, URL."""
    (tmp_path / "gunicorn.conf.py").write_text(conf)
    listener = listening_socket()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    cores = sorted(os.sched_getaffinity(0))[:2]
    command = [
        "taskset", "-c", ",".join(map(str, cores)), sys.executable, "-m", "gunicorn", "--config", "gunicorn.conf.py",
        "--workers", "2", "--worker-class", "gthread", "--threads", "4", "--preload", "--log-level", "info",
        "--graceful-timeout", "5", "--bind", f"fd://{listener.fileno()}", app,
    ]  # fmt: skip
    log = tmp_path / "gunicorn.log"
    with listener, open(log, "wb") as output:
        master = subprocess.Popen(
            command, cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT, pass_fds=[listener.fileno()],
            env={**os.environ, **env},
        )  # fmt: skip
    try:
        yield master, log, base
    finally:
        master.terminate()
        master.wait(timeout=30)


def wait_until_logged(master: subprocess.Popen[bytes], log: Path, done: Callable[[str], bool]) -> str:
    deadline = time.monotonic() + 60
    while not done(text := log.read_text()):
        assert master.poll() is None and time.monotonic() < deadline, text
        time.sleep(0.1)
    return text


@needs_gunicorn_on_two_cores
def test_every_thread_of_an_eager_worker_keeps_to_its_core(tmp_path: Path) -> None:
    """The eager build's thread starts in a fork hook, before gunicorn's post_fork: it, the server's threads
    and its sessions' keep to the worker's core all the same, and gunicorn's log says which core each took."""
    save_model(build_mlp_model((4, 8, 2)), tmp_path / "models", "mlp")
    (tmp_path / "eager_app.py").write_text(EAGER_APP)
    env = {"CORES_TEST_REPOSITORY": str(tmp_path / "models")}
    with gunicorn(tmp_path, deployment_conf(), "eager_app:app", env) as (master, log, base):
        wait_until_logged(master, log, lambda text: text.count("keeps to core(s)") == 2)
        for _ in range(20):  # (a worker accepts once its eager build is done: these are answered after both)
            with urllib.request.urlopen(base, timeout=30) as answer:
                assert answer.read() == b"ok"
        workers = threads_cores(master.pid)
        text = log.read_text()
    assert len(workers) == 2 and all(len(masks) == 1 for masks in workers.values()), workers
    cores = sorted(os.sched_getaffinity(0))[:2]
    assert sorted(mask for masks in workers.values() for mask in masks) == [(core,) for core in cores], workers
    assert sorted(re.findall(r"keeps to core\(s\) (\d+)", text)) == [str(core) for core in cores], text


@needs_gunicorn_on_two_cores
def test_post_fork_without_pre_fork_says_so_in_gunicorns_log(tmp_path: Path) -> None:
    conf = "from inprocserve.gunicorn import post_fork, post_worker_init  # noqa: F401\n"
    (tmp_path / "plain_app.py").write_text(PLAIN_APP)
    with gunicorn(tmp_path, conf, "plain_app:app", {}) as (master, log, _):
        text = wait_until_logged(master, log, lambda text: text.count("import pre_fork from inprocserve.gunicorn") == 2)
    assert "the worker uses every core" in text
