"""``inprocserve.gunicorn``'s one-core-per-worker hooks: the shares of the cores the master gives the workers
it forks (the hooks under a real gunicorn: tests/test_doc_snippets_docsa.py, with docs/deployment.md's
configuration)."""

from __future__ import annotations

import logging
import os
from collections import Counter
from types import SimpleNamespace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from inprocserve.gunicorn import cores_for_next_worker, post_fork, pre_fork


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
def test_post_fork_without_pre_fork_says_what_to_import_and_keeps_every_core(
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = os.sched_getaffinity(0)
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        post_fork(SimpleNamespace(WORKERS={}, num_workers=2), SimpleNamespace())
    assert "import pre_fork from inprocserve.gunicorn" in caplog.text
    assert os.sched_getaffinity(0) == before
