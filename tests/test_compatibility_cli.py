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
    control = ControlFile(repository).read()  # (the gate's pin of version 1 alone: the switch wrote nothing)
    assert (control.revision, control.models["m"].stable) == (1, 1), control
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


def test_a_held_back_version_says_how_the_fleet_is_held_and_how_to_promote_it(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """With no stable version named, the gate's hold lived in each worker's memory: a worker that started after
    version 2 appeared (recycled, restarted, scaled up) had no version serving to compare it with and served 2.
    The worker that holds it back now names version 1 the stable version in the control file, and its warning
    says so, and how to promote 2; a worker that starts later holds version 2 back too."""
    x = np.ones((1, 4), np.float32)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert "version 1 is named the stable version in the fleet's control file" in held, held
    assert "every worker, running or starting later, serves it by default" in held, held
    assert "python -m inprocserve switch --force REPOSITORY m 2" in held, held
    assert running.predict("m", {"x": x}).version == 1

    caplog.clear()
    with caplog.at_level("WARNING", logger="inprocserve"):
        started = make_server(repository, poll_interval_s=None)
    assert started.predict("m", {"x": x}).version == 1
    assert started.status()["models"]["m"]["versions"]["2"]["compatible"] is False
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert "No stable version is named" not in held, held  # (named now: every worker holds it)
