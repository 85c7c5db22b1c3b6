"""The fleet-wide hold's name written in the control file (see ``Registry._pin_holds``), reviewed: what changes
between the check and the write, how a failed name shows, and what a forked worker inherits."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from inprocserve import Server, render_status_page
from inprocserve._cli_status import healthy, summarize
from inprocserve._control import Control, ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory, run_in_forked_child
from .test_fleet_hold import _answering, _version_1_then_an_incompatible_2, lock_waits
from .test_fork import held_by_another_thread


def _master(repository: Path, make_server: ServerFactory) -> Server:
    """A ``--preload`` master on version 1 (input ``x``), with no watcher: what its worker does is the child's
    alone. Version 2, which takes ``features``, is then deployed."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    master = make_server(repository, poll_interval_s=None, control_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    return master


def _before_the_gate_s_write(monkeypatch: pytest.MonkeyPatch, action: Callable[[], None]) -> None:
    """Run ``action`` once, as the gate's name starts its compare-and-set (where it may wait 0.5 s for the lock):
    what another thread, or the operator, does meanwhile."""
    update = ControlFile.update
    done: list[bool] = []

    def interleaved(self: ControlFile, change: Callable[[Control], Control], *, actor: str | None = None) -> Control:
        if not done and actor is not None and actor.startswith("compatibility gate"):
            done.append(True)
            action()
        return update(self, change, actor=actor)

    monkeypatch.setattr(ControlFile, "update", interleaved)


def test_a_version_unloaded_while_the_name_waits_for_the_lock_is_not_named(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator unloads version 1 while the worker's name of it waits for the control file's lock: version
    2 serves here, and the fleet must not be pinned to the version just taken away (every worker, this one too,
    would load it back and serve it)."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    _before_the_gate_s_write(monkeypatch, lambda: running.unload("m", 1))
    running.refresh()
    state = ControlFile(repository).read().models.get("m")
    assert state is None or state.stable is None, state
    running.sync_control()
    assert _answering(running) == [2]


def test_a_server_closed_while_the_name_waits_for_the_lock_writes_nothing(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``close()`` (the worker exiting) while the name waits for the lock: a closed server changes nothing in the
    fleet's control file."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    _before_the_gate_s_write(monkeypatch, lambda: running.close())
    running.refresh()
    assert ControlFile(repository).read().revision == 0


def test_a_name_the_control_file_refuses_shows_in_status_until_it_is_written(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """A control file that is a symbolic link (managed elsewhere) refuses the name: the fleet is not held (a
    worker that starts now serves version 2), and status, the status CLI and the status page say so, not only
    one warning in the log, and the status CLI exits 1; once the name is written, they say nothing."""
    managed = tmp_path / "managed.json"
    managed.write_text('{"revision": 0, "models": {}}\n')
    link = repository / ".inprocserve-control.json"
    link.symlink_to(managed)
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    running.refresh()
    status = running.status()
    error = status["models"]["m"]["fleet_hold_error"]
    assert error is not None and "symbolic link" in error and "version 1 could not be named" in error, error
    assert "[rollout] stable = 1 in the model's config.toml" in error, (
        error
    )  # (not the switch: see test_fleet_hold_advice)
    assert any(line.startswith("  FLEET NOT HELD: version 1") for line in summarize(status)), summarize(status)
    assert "Fleet not held: version 1" in render_status_page(status)
    assert not healthy(status)  # the status CLI's exit status 1: a deploy check does not pass a split fleet

    link.unlink()
    running.refresh()
    assert ControlFile(repository).read().models["m"].stable == 1
    status = running.status()
    assert status["models"]["m"]["fleet_hold_error"] is None
    assert not any("FLEET NOT HELD" in line for line in summarize(status))
    assert healthy(status)


def test_while_the_lock_stays_stuck_the_watcher_s_tries_do_not_wait_for_it(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control file's lock is stuck (a writer that hangs) when the hold is found: the first try waits for
    it (0.5 s) and fails. The watcher tries again at each read of the file, every interval: each try waited
    0.5 s more, so a kill switch or a canary was followed an interval late for as long as the lock stayed
    stuck. Later tries take the lock only if it is free (no wait), and the first read after it comes free
    names the version."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)  # (its reads: below)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
        running.sync_control()
        running.sync_control()
    assert waited == [0.5, 0.0, 0.0], waited
    running.sync_control()  # (the lock free: named at the next read)
    state = ControlFile(repository).read().models.get("m")
    assert state is not None and state.stable == 1, state


def test_a_worker_forked_from_a_master_whose_name_failed_names_it_itself(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """A ``--preload`` master found the hold and could not name the version (a control file that is a symbolic
    link). Each worker it forks inherits the hold, still to be named, and its failure: status says the fleet is
    not held (the master's warning is not repeated by every worker), and the worker names the version at its
    first read of the file once it can be written."""
    managed = tmp_path / "managed.json"
    managed.write_text('{"revision": 0, "models": {}}\n')
    link = repository / ".inprocserve-control.json"
    link.symlink_to(managed)
    master = _master(repository, make_server)
    master.refresh()
    assert master.status()["models"]["m"]["fleet_hold_error"] is not None

    def in_the_worker() -> str:
        shown = master.status()["models"]["m"]["fleet_hold_error"] is not None
        link.unlink()
        master.sync_control()
        state = ControlFile(repository).read().models.get("m")
        return f"{shown} {None if state is None else state.stable} {master.status()['models']['m']['fleet_hold_error']}"

    assert run_in_forked_child(in_the_worker, timeout_s=20) == "True 1 None"


def test_a_worker_forked_while_a_thread_of_the_master_names_the_version_names_it_itself(
    repository: Path, make_server: ServerFactory
) -> None:
    """A fork while another thread of the master (its watcher, its poll) is naming the version: the worker has
    no such thread to finish it, and its own name must not wait for it forever."""
    master = _master(repository, make_server)
    with ControlFile(repository)._locked():
        master.refresh()  # (the hold found, its name not written yet)
    with held_by_another_thread(master._registry._pinning):

        def in_the_worker() -> str:
            master.sync_control()
            state = ControlFile(repository).read().models.get("m")
            return str(None if state is None else state.stable)

        assert run_in_forked_child(in_the_worker, timeout_s=10) == "1"
