"""The thread budget counts every onnxruntime thread pool a session has: its inter-op pool too."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

import inprocserve
from inprocserve._ort_rules import usable_cores
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, version_status


def test_inter_op_threads_are_counted_in_the_automatic_thread_budget(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # pool.inter_op_threads = 2 added a second pool beside the intra-op pool that took every usable core:
    # one thread more than the cores, for every session, without a word
    save_model(build_scale_model(), repository, "scale", 1)
    pool = inprocserve.PoolConfig(inter_op_threads=2, allow_spinning=True)  # (spinning: the budget, no probe)
    with caplog.at_level(logging.WARNING):
        server = make_server(repository, config=inprocserve.ModelConfig(pool=pool))
    cores = usable_cores()
    assert version_status(server, "scale")["intra_op_threads"] == max(1, cores - 1)
    oversubscribed = cores < 2  # (on one core, even one intra-op thread beside two inter-op ones is too many)
    assert any("inter_op_threads" in r.getMessage() for r in caplog.records) == oversubscribed


def test_inter_op_threads_past_the_usable_cores_are_warned_of_at_load_naming_the_figures(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    cores = usable_cores()
    pool = inprocserve.PoolConfig(inter_op_threads=cores + 1, intra_op_threads=1)
    with caplog.at_level(logging.WARNING):
        server = make_server(repository, config=inprocserve.ModelConfig(pool=pool))
    assert server.models == {"scale": [1]}  # (it loads: a warning, not a refusal)
    said = [r.getMessage() for r in caplog.records if "inter_op_threads" in r.getMessage()]
    assert len(said) == 1, said
    assert "model 'scale' version 1" in said[0]
    assert f"pool.inter_op_threads = {cores + 1}" in said[0] and f"{cores} usable core" in said[0]
    assert f"{cores + 1} threads" in said[0]  # 1 session x (1 intra-op + cores + 1 inter-op - 1)
