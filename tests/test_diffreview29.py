"""The compatibility gate's fleet-wide name, reviewed as a whole: what it keeps per model once the model is gone
(removed from the repository, unloaded), and what a failure inside it leaves."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from inprocserve import Server
from inprocserve._control import ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold import lock_waits


def _drop(repository: Path, model: str, version: int, *, compatible: bool) -> None:
    name = "x" if compatible else "features"
    save_model(build_mlp_model((4, 8, 2), input_name=name, seed=version), repository, model, version)


def _failed_name_of_m(repository: Path, make_server: ServerFactory) -> Server:
    """A worker serving ``m`` and ``n`` (version 1 each); ``m``'s incompatible version 2 is held back while the
    control file's lock is stuck: its name fails, and status says the fleet is not held."""
    _drop(repository, "m", 1, compatible=True)
    _drop(repository, "n", 1, compatible=True)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    _drop(repository, "m", 2, compatible=False)
    with ControlFile(repository)._locked():
        running.refresh()
    assert running.status()["models"]["m"]["fleet_hold_error"] is not None
    return running


def _next_hold_of_n_waits(repository: Path, running: Server, monkeypatch: pytest.MonkeyPatch) -> None:
    _drop(repository, "n", 2, compatible=False)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5], waited  # (a new hold's first try waits: the fleet's workers contend for the lock)
    running.refresh()
    state = ControlFile(repository).read().models.get("n")
    assert state is not None and state.stable == 1, state


def test_a_model_removed_while_its_name_failed_does_not_stop_another_model_s_new_hold_waiting_for_the_lock(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``m``'s name failed (the lock stuck), then ``m`` is removed from the repository. ``n`` then holds a version
    back: its first try must wait for the lock as every new hold's does. Before, ``m``'s failure was kept for
    the worker's life, so every later try of any model took the lock only if free."""
    running = _failed_name_of_m(repository, make_server)
    shutil.rmtree(repository / "m")
    running.refresh()
    assert "m" not in running.status()["models"]
    _next_hold_of_n_waits(repository, running, monkeypatch)


def test_a_model_unloaded_while_its_name_failed_does_not_stop_another_model_s_new_hold_waiting_for_the_lock(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, ``m`` unloaded by hand (``unload("m")``) in place of removed from the repository."""
    running = _failed_name_of_m(repository, make_server)
    running.unload("m")
    assert "m" not in running.status()["models"]
    _next_hold_of_n_waits(repository, running, monkeypatch)


def test_an_advance_and_a_new_hold_found_by_one_refresh_wait_once_for_a_stuck_lock(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The docs: at most 0.5 s for the file's lock, once per try however many models are due, the first failure
    failing the rest. One refresh finds ``m``'s gate name to advance (3, compatible with 1) and ``n``'s new hold
    while the lock is stuck: it waited 0.5 s for each (the advance and the name each took their own wait), the
    refresh, and with it the poll, delayed once per kind of write. Both still show in status and are written once
    the lock is free."""
    _drop(repository, "m", 1, compatible=True)
    _drop(repository, "n", 1, compatible=True)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    _drop(repository, "m", 2, compatible=False)
    running.refresh()  # (1 named by the gate: 2 held back)
    _drop(repository, "m", 3, compatible=True)
    _drop(repository, "n", 2, compatible=False)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5], waited
    models = running.status()["models"]
    assert models["m"]["fleet_hold_error"] is not None and models["n"]["fleet_hold_error"] is not None
    running.refresh()
    control = ControlFile(repository).read()
    assert (control.models["m"].stable, control.models["n"].stable) == (3, 1), control


def test_an_advance_that_ended_and_came_back_waits_for_the_lock_and_is_warned_again(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The docs: a hold that ended and came back, the same versions again, is new (its first try waits, its failure
    is warned again), and so is a new advance. ``m``'s gate name 1 is to advance to 3 while the lock is stuck (it
    fails); 3 is withdrawn (nothing to advance), then copied back while the lock is stuck again. Before, that
    advance's first try took the lock only if free, and its failure was not warned again: the earlier one's
    failure was kept."""
    _drop(repository, "m", 1, compatible=True)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    _drop(repository, "m", 2, compatible=False)
    running.refresh()  # (1 named by the gate: 2 held back)
    _drop(repository, "m", 3, compatible=True)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert running.status()["models"]["m"]["fleet_hold_error"] is not None
    shutil.rmtree(repository / "m" / "3")
    running.refresh()
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
    _drop(repository, "m", 3, compatible=True)
    with caplog.at_level("WARNING", logger="inprocserve"), ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5, 0.5], waited
    assert any("could not be named in its place" in r.getMessage() for r in caplog.records)
    running.refresh()
    assert ControlFile(repository).read().models["m"].stable == 3
