"""Warm-up before a version takes traffic: synthesized inputs, or real ones from a file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_gather_model, build_scale_model, save_model

from .conftest import ServerFactory


def test_warmup_inputs_from_a_file(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    np.savez(repository / "scale" / "warmup.npz", x=np.ones((8, 4), np.float32))
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\nruns = 2\n')
    server = make_server(repository)
    assert server.models == {"scale": [1]}


@pytest.mark.parametrize(
    ("arrays", "fragment"),
    [
        ({"x": np.ones((2, 5), np.float32)}, "expected size 4 on axis 1"),
        ({"y": np.ones((2, 4), np.float32)}, "missing input"),
        ({"x": np.array([{"a": 1}, None], dtype=object)}, "Object arrays cannot be loaded"),
    ],
)
def test_bad_warmup_inputs_fail_the_load(
    repository: Path, make_server: ServerFactory, arrays: dict[str, np.ndarray], fragment: str
) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    np.savez(repository / "scale" / "warmup.npz", **arrays)  # the object array needs pickle: refused at load
    (repository / "scale" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')
    server = make_server(repository)
    assert server.models == {}
    assert fragment in server.status()["models"]["scale"]["versions"]["1"]["error"]


def test_a_model_that_fails_its_warmup_never_serves(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=3), repository, "gather", 1)
    np.savez(repository / "gather" / "warmup.npz", index=np.array([7]))  # out of range: fails inside the run
    (repository / "gather" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')
    server = make_server(repository)
    status = server.status()["models"]["gather"]["versions"]["1"]
    assert status["state"] == "failed"
    assert "failed its warm-up run" in status["error"]
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("gather", {"index": np.array([1])})


def test_warmup_can_be_turned_off(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=3), repository, "gather", 1)
    config = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(enabled=False))
    server = make_server(repository, config=config)
    assert server.predict("gather", {"index": np.array([2])})["rows"].shape == (1, 4)
