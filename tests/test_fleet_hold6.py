"""The gate's name for the fleet, continued: a named version's folder gone for one poll (removed and copied again)
keeps the name; an advance of the name is a switch that ``rollback`` can undo; status names the failure an
operator must act on first."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from inprocserve import ModelConfig, Server, VersionPolicy
from inprocserve.__main__ import main
from inprocserve._control import CONTROL_FILENAME, ControlFile
from inprocserve.testing import ManualClock, build_mlp_model, save_model

from .conftest import ServerFactory
from .test_diffreview29 import _drop as _drop_into
from .test_diffreview29 import _failed_name_of_m
from .test_fleet_hold import lock_waits
from .test_fleet_hold3 import _drop, _stable
from .test_fleet_hold4 import _gate_named_without_a_watcher

X = {"x": np.ones((1, 4), np.float32)}
FEATURES = {"features": np.ones((1, 4), np.float32)}
ALL = ModelConfig(version_policy=VersionPolicy.all())


def _gate_named_with_a_clock(repository: Path, make_server: ServerFactory, clock: ManualClock) -> Server:
    """A worker on version 1, its clock the test's; version 2 (incompatible) held back, version 1 named by the
    gate."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None, clock=clock)
    _drop(repository, 2, compatible=False)
    running.refresh()
    assert _stable(repository) == (1, True)
    return running


def test_a_poll_while_the_named_version_s_folder_is_copied_again_keeps_the_name(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``rm -rf models/m/1 && cp -r release/m/1 models/m/1`` with a poll between the two: that poll removed the
    gate's name for good, and once the folder was back a worker started later served the incompatible 2. Now the
    name is removed only once the folder has stayed gone a while (the poller's refreshes; a refresh asked for
    acts at once)."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    release = repository.parent / "release-1"
    shutil.copytree(repository / "m" / "1", release)
    before = (repository / CONTROL_FILENAME).read_bytes()
    shutil.rmtree(repository / "m" / "1")
    running._registry.refresh(settle_empty_configs=True)  # a poll between the two
    # (nor is it paged as an operator's stable version gone from disk: "restore it, or switch the fleet")
    assert "is gone from the repository" not in caplog.text
    shutil.copytree(release, repository / "m" / "1")
    clock.advance(5.0)
    running._registry.refresh(settle_empty_configs=True)
    assert (repository / CONTROL_FILENAME).read_bytes() == before
    assert running.predict("m", X).version == 1
    assert make_server(repository, poll_interval_s=None).predict("m", X).version == 1

    shutil.rmtree(repository / "m" / "1")  # removed for good: the name goes once the folder has stayed gone
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (1, True)
    clock.advance(2.0)
    running._registry.refresh(settle_empty_configs=True)
    assert _stable(repository) == (None, False)
    assert running.predict("m", FEATURES).version == 2


def test_a_refresh_asked_for_removes_the_name_of_a_folder_gone_at_once(
    repository: Path, make_server: ServerFactory
) -> None:
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    shutil.rmtree(repository / "m" / "1")
    running.refresh()
    assert _stable(repository) == (None, False)


def test_rollback_after_the_gate_s_name_advanced_goes_back_to_the_version_it_replaced(
    repository: Path, make_server: ServerFactory
) -> None:
    """The gate named 1 (2 held back), then advanced the name to 3 (compatible with 1); 3 misbehaves, and the
    on-call's ``python -m inprocserve rollback models/ m`` said there was nothing to roll back to. Now the advance
    records 1 as ``previous_stable``, and the rollback goes back to it: the operator's choice (no mark)."""
    running = _gate_named_without_a_watcher(repository, make_server)
    _drop(repository, 3, compatible=True)
    running.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (3, True, 1), state
    assert main(["rollback", str(repository), "m"]) == 0
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (1, False, 3), state
    running.sync_control()
    assert running.predict("m", X).version == 1


def test_an_advance_in_place_of_a_version_gone_from_disk_records_no_version_to_roll_back_to(
    repository: Path, make_server: ServerFactory
) -> None:
    """1 (the gate's name) removed in the poll that brings 3 (compatible with it) and 4 (not), every version
    served: the name moves to 3, and 1, which no worker can load, is not recorded for a rollback."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    running.refresh()
    assert _stable(repository) == (1, True)
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    running.refresh()
    running.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (3, True, None), state


def test_an_advance_and_a_removal_both_failing_show_the_advance_s_failure(
    repository: Path, make_server: ServerFactory
) -> None:
    """1 (the gate's name) removed in the poll that brings 3 (compatible with it) and 4 (not), the control file's
    lock held: the advance (the one to act on: written, the removal writes nothing) fails, and status showed the
    removal's failure instead ("the name could not be removed"). Now it names the advance's, and that 1 is gone."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    running.refresh()
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    with ControlFile(repository)._locked():
        running.refresh()
    assert _stable(repository) == (1, True)
    error = running.status()["models"]["m"]["fleet_hold_error"]
    assert error is not None and "version 3" in error and "could not be named in its place" in error, error
    assert "gone from disk" in error, error
    running.refresh()
    assert _stable(repository) == (3, True)
    assert running.status()["models"]["m"]["fleet_hold_error"] is None


def test_a_second_model_s_new_hold_waits_for_the_lock_while_the_first_s_failure_shows(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``m``'s name failed (the lock stuck) and still shows; then ``n`` holds a version back. The docs: a new hold
    waits on its first try (every worker of the fleet finds it at once, and they contend for the lock). ``n``'s
    took the lock only if free, failed at once with ``m``'s failure, and a sibling's write of a moment was enough
    to leave the fleet unheld. Now ``m``'s retry takes the lock only if free, and ``n``'s first try waits."""
    running = _failed_name_of_m(repository, make_server)
    _drop_into(repository, "n", 2, compatible=False)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert sorted(waited) == [0.0, 0.5], waited
    status = running.status()["models"]
    assert status["m"]["fleet_hold_error"] is not None and status["n"]["fleet_hold_error"] is not None
    running.refresh()
    models = ControlFile(repository).read().models
    assert (models["m"].stable, models["n"].stable) == (1, 1), models
