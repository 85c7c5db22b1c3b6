"""diffreview19: the day's last commits of main, read against what they claim."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inprocserve import Server
from inprocserve.__main__ import main
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory


def _hold_warning(caplog: pytest.LogCaptureFixture) -> str:
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    return held


def _answering(*workers: Server) -> list[int]:
    return [w.status()["models"]["m"]["answering_version"] for w in workers]


def _held_once_version_1_is_gone(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> tuple[Server, str]:
    """Version 1 (named stable) removed from disk, a worker started, then version 3, incompatible, added: the
    worker, and the warning its refresh logs as it holds 3 back."""
    shutil.rmtree(repository / "m" / "1")
    running = make_server(repository, poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 3)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    return running, _hold_warning(caplog)


def test_the_way_a_hold_names_when_config_toml_s_stable_version_is_gone_holds_the_workers_that_start_later(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``[rollout] stable = 1`` in config.toml, version 1 removed from disk: version 3 (incompatible) is held back
    against version 2 in a running worker, one started now serves 3, as the warning says; naming 2 in config.toml,
    as it says, holds a worker started after that on 2 (933947d's claims, each shown)."""
    x = np.ones((1, 4), np.float32)
    for version in (1, 2):
        save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", version)
    (repository / "m" / "config.toml").write_text("[rollout]\nstable = 1\n")
    running, held = _held_once_version_1_is_gone(repository, make_server, caplog)
    assert "The stable version named, 1, is not loaded, so a worker that starts now serves version 3" in held, held
    assert "[rollout] stable = 2 in the model's config.toml" in held, held
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [2, 3]

    (repository / "m" / "config.toml").write_text("[rollout]\nstable = 2\n")
    running.refresh()
    later = make_server(repository, poll_interval_s=None)
    assert _answering(running, later) == [2, 2]
    assert [w.predict("m", {"x": x}).version for w in (running, later)] == [2, 2]


def test_the_switch_a_hold_names_when_the_control_file_s_stable_version_is_gone_holds_the_workers_that_start_later(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The fleet switched to version 1, version 1 removed from disk, version 3 (incompatible) held back against
    2: a worker started now serves 3; the forced switch the warning names (d4a0172) holds every worker, running
    or starting, on 2. (The warning said to name version 2 as ``[rollout] stable = 2`` in config.toml: done, a
    worker that started later still served version 3, since the control file's stable version, 1, outranks
    config.toml's.)"""
    x = np.ones((1, 4), np.float32)
    for version in (1, 2):
        save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", version)
    assert main(["switch", str(repository), "m", "1"]) == 0
    running, held = _held_once_version_1_is_gone(repository, make_server, caplog)
    assert running.predict("m", {"x": x}).version == 2
    assert "a worker that starts now serves version 3" in held, held
    assert "config.toml" not in held, held
    assert "python -m inprocserve switch --force REPOSITORY m 2" in held, held
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [2, 3]

    assert main(["switch", "--force", str(repository), "m", "2"]) == 0
    running.sync_control()
    started.sync_control()
    later = make_server(repository, poll_interval_s=None)
    assert _answering(running, started, later) == [2, 2, 2]
    assert [w.predict("m", {"x": x}).version for w in (running, started, later)] == [2, 2, 2]


def test_a_switched_stable_version_gone_from_disk_but_loaded_holds_nothing_back_in_a_worker_that_starts_now(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """docs/repository.md's case of a switched stable version gone from disk but still loaded here: it answers
    here (an error logged), no hold is logged, and a worker that starts now serves the new, incompatible version."""
    x = np.ones((1, 4), np.float32)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    assert main(["switch", str(repository), "m", "1"]) == 0
    running = make_server(repository, poll_interval_s=None)
    shutil.rmtree(repository / "m" / "1")
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "not compatible" in m], messages
    assert any("a worker that starts now cannot load it" in m for m in messages), messages
    assert running.predict("m", {"x": x}).version == 1
    started = make_server(repository, poll_interval_s=None)
    assert _answering(started) == [2]
