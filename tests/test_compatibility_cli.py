"""``python -m inprocserve switch`` against workers whose compatibility gate held a version back."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from inprocserve import ModelConfig, VersionPolicy
from inprocserve.__main__ import main
from inprocserve._control import ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory


def test_the_cli_refuses_a_switch_to_the_version_the_gate_holds_back(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """Version 1 takes ``x``; version 2, added later, takes ``features`` and is held back, so workers answer
    with 1. ``switch models/ m 2`` took the newest version for the one serving, compared 2 with itself, and
    wrote the switch (exit 0): every worker moved to 2 and every caller sending ``x`` failed."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.all()), poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    server.refresh()
    assert server.status()["models"]["m"]["answering_version"] == 1
    capsys.readouterr()
    assert main(["switch", str(repository), "m", "2"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: model 'm' version 2 is not compatible with version 1, which serves now: "), err
    assert "input 'x' is gone" in err and "--force" in err, err
    assert not ControlFile(repository).path.exists()
    server.sync_control()
    assert server.predict("m", {"x": np.ones((1, 4), np.float32)}).version == 1
    assert main(["switch", "--force", str(repository), "m", "2"]) == 0  # callers are ready
    assert ControlFile(repository).read().models["m"].previous_stable == 1  # a rollback goes back to 1


def test_the_cli_compares_a_switch_only_with_versions_the_policy_lets_workers_load(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """``version_policy = { specific = [2, 3] }``: no worker ever loads version 1 (an old model taking ``x``),
    so workers answer with 3 and a switch to 2 (same signature) breaks no caller. The CLI walked every version
    on disk from 1, took 1 for the one answering, refused the switch (exit 1, "not compatible with version 1"),
    and, forced, recorded 1 as the version to roll back to, a version no worker serves."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    save_model(build_mlp_model((4, 8, 2), input_name="features", seed=1), repository, "m", 3)
    (repository / "m" / "config.toml").write_text("version_policy = { specific = [2, 3] }\n")
    server = make_server(repository, poll_interval_s=None)
    assert server.status()["models"]["m"]["answering_version"] == 3
    capsys.readouterr()
    assert main(["switch", str(repository), "m", "2"]) == 0, capsys.readouterr().err
    assert ControlFile(repository).read().models["m"].previous_stable == 3  # a rollback goes back to 3
    server.sync_control()
    assert server.predict("m", {"features": np.ones((1, 4), np.float32)}).version == 2


def test_a_held_back_version_says_how_to_hold_the_workers_that_start_later(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With no stable version named, the gate's hold lives in each worker's memory: a worker that starts after
    version 2 appeared (recycled, restarted, scaled up) has no version serving to compare it with and serves 2.
    The hold's warning said only "pin version=2, or switch(..., force=True)"; it now says that, and how to hold
    every worker; once done, a worker that starts holds version 2 back too."""
    x = np.ones((1, 4), np.float32)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert "a worker that starts now serves version 2" in held, held
    assert "python -m inprocserve switch --force REPOSITORY m 1" in held and "[rollout] stable = 1" in held, held
    assert running.predict("m", {"x": x}).version == 1
    started = make_server(repository, poll_interval_s=None)
    assert started.status()["models"]["m"]["answering_version"] == 2  # as the warning says
    started.close()

    assert main(["switch", "--force", str(repository), "m", "1"]) == 0  # (the started worker serves 2)
    caplog.clear()
    with caplog.at_level("WARNING", logger="inprocserve"):
        restarted = make_server(repository, poll_interval_s=None)
    assert restarted.predict("m", {"x": x}).version == 1
    assert restarted.status()["models"]["m"]["versions"]["2"]["compatible"] is False
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert "No stable version is named" not in held, held  # (named now: every worker holds it)
