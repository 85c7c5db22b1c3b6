"""Review of the fleet-wide hold's name (``Registry._pin_holds``): its retries without a wait for the control
file's lock, its failure shown in status, and what a forked worker inherits."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from inprocserve import Server
from inprocserve._control import ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory, run_in_forked_child
from .test_fleet_hold import lock_waits


def test_a_hold_that_ended_and_comes_back_waits_for_the_lock_and_shows_no_old_failure(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Version 2 held back while the control file's lock was stuck: its name failed. The operator then took
    version 2 away (the hold ends), fixed the lock, and deployed version 2 again, still not compatible. That is
    a new hold: its first name waits for the lock as any new hold's (every worker finds it at once, and they
    contend), status shows no failure before it was even tried, and a failure of it is warned again. The old
    failure, kept, made its first try take the lock only if free, and kept its warning silent."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5], waited
    assert running.status()["models"]["m"]["fleet_hold_error"] is not None

    shutil.rmtree(repository / "m" / "2")
    running.refresh()  # (the hold ends: nothing to name)
    assert running.status()["models"]["m"]["fleet_hold_error"] is None

    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    with ControlFile(repository)._locked(), caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
    assert waited == [0.5, 0.5], waited
    assert any("could not be named the stable version" in r.getMessage() for r in caplog.records), caplog.text


def test_status_without_paths_does_not_show_where_a_managed_control_file_points(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """The control file is a symbolic link into a ConfigMap's mount (managed elsewhere), so the name fails: its
    fleet_hold_error quotes the link's target. The status without paths (no admin token; the same cut that
    readiness probes and the protocol's model endpoints answer anyone) replaces every path status may quote:
    the link's target, a path of the host's, showed as it was."""
    mount = tmp_path / "etc-inprocserve" / "..data"
    mount.mkdir(parents=True)
    managed = mount / "control.json"
    managed.write_text('{"revision": 0, "models": {}}\n')
    (repository / ".inprocserve-control.json").symlink_to(managed)
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    running.refresh()
    assert str(managed) in (running.status()["models"]["m"]["fleet_hold_error"] or "")
    error = running.status(include_paths=False)["models"]["m"]["fleet_hold_error"]
    assert error is not None and "symbolic link (to <path>)" in error, error
    assert "etc-inprocserve" not in error, error
    brief = running._brief_status(["m"])["models"]["m"]["fleet_hold_error"]  # (what /ready's callers read)
    assert brief is not None and "etc-inprocserve" not in brief, brief


def test_a_retry_that_does_not_wait_for_the_lock_says_so_in_status(
    repository: Path, make_server: ServerFactory
) -> None:
    """The lock stays stuck: the first name waits 0.5 s and fails; the retries take it only if free, and the
    status of their failure said the lock "is held by another process for more than 0 s", a wait that never
    happened. It says the lock was held and not waited for."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    with ControlFile(repository)._locked():
        running.refresh()
        assert "for more than 0.5 s" in (running.status()["models"]["m"]["fleet_hold_error"] or "")
        running.sync_control()
        error = running.status()["models"]["m"]["fleet_hold_error"]
    assert error is not None and "more than 0 s" not in error, error
    assert "not waited for" in error, error


_SIBLING_S_WRITE = (  # a sibling worker's write: the control file's lock held a moment
    "import fcntl, os, sys, time\n"
    "fd = os.open(os.path.join(sys.argv[1], '.inprocserve-control.lock'), os.O_RDWR | os.O_CREAT)\n"
    "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
    "print('held', flush=True)\n"
    "time.sleep(0.1)\n"
)


def synced_beside_a_sibling_s_write(server: Server, repository: Path) -> str:
    """In a forked worker: read the control file (``sync_control``) while a sibling process holds its lock a
    moment, as workers forked at once contend; then what the file names and the server's fleet error, as
    ``"<stable> <fleet_hold_error>"``."""
    sibling = subprocess.Popen(
        [sys.executable, "-c", _SIBLING_S_WRITE, str(repository)], stdout=subprocess.PIPE, text=True
    )
    assert sibling.stdout is not None
    with sibling.stdout:
        assert sibling.stdout.readline().strip() == "held"
        server.sync_control()
    sibling.wait(timeout=10)
    state = ControlFile(repository).read().models.get("m")
    return f"{None if state is None else state.stable} {server.status()['models']['m']['fleet_hold_error']}"


def test_a_worker_forked_from_a_master_whose_name_failed_waits_for_a_sibling_s_write(
    repository: Path, make_server: ServerFactory
) -> None:
    """A ``--preload`` master's name failed (the lock stuck then). Its workers, forked at once, inherit the hold
    and all try to name the version at their first read: they contend, as workers that find a new hold do, and
    a first try waits for the lock (0.5 s). Inheriting the master's failure made their first try take the lock
    only if free: the worker that found a sibling's write in progress failed, and showed the fleet not held."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    master = make_server(repository, poll_interval_s=None, control_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    with ControlFile(repository)._locked():
        master.refresh()
    assert master.status()["models"]["m"]["fleet_hold_error"] is not None

    assert run_in_forked_child(lambda: synced_beside_a_sibling_s_write(master, repository), timeout_s=20) == "1 None"
