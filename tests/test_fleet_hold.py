"""The compatibility gate's hold, made fleet-wide: with no stable version named, a worker that holds a new,
incompatible version back names the version serving the stable version in the repository's control file, so
a worker that starts later (recycled by ``--max-requests``, restarted, scaled up) serves it too."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from inprocserve import Server
from inprocserve.__main__ import main
from inprocserve._control import ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_thread_values import ROOT

X = {"x": np.ones((1, 4), np.float32)}


def _answering(*workers: Server) -> list[int]:
    return [w.status()["models"]["m"]["answering_version"] for w in workers]


def _version_1_then_an_incompatible_2(repository: Path, make_server: ServerFactory, workers: int = 1) -> list[Server]:
    """Workers started on version 1 (input ``x``); then version 2, which takes ``features``, is deployed."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = [make_server(repository, poll_interval_s=None) for _ in range(workers)]
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 2)
    return running


def lock_waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The control file's lock waits that ran out, as they happen: each one's ``lock_timeout_s`` (0.0: a try
    that took the lock only if free). Each still waits and fails as it would."""
    waited: list[float] = []
    timed_out = ControlFile._lock_timeout

    def counted(self: ControlFile, holder: str) -> Exception:
        waited.append(self.lock_timeout_s)
        return timed_out(self, holder)

    monkeypatch.setattr(ControlFile, "_lock_timeout", counted)
    return waited


def refreshed_together(workers: list[Server], caplog: pytest.LogCaptureFixture, logged: str) -> list[str]:
    """Every worker's poll at the same instant (a barrier), as a fleet's workers find the same new version; the
    INFO lines on the ``inprocserve`` logger that contain ``logged``."""
    start = threading.Barrier(len(workers))

    def poll(worker: Server) -> None:
        start.wait()
        worker.refresh()

    threads = [threading.Thread(target=poll, args=(w,)) for w in workers]
    with caplog.at_level("INFO", logger="inprocserve"):
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a poll hung"
    return [r.getMessage() for r in caplog.records if logged in r.getMessage()]


def test_a_worker_started_after_the_hold_serves_the_version_the_running_workers_serve(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The running worker's poll holds version 2 back: it names version 1 the stable version in the control
    file, and a worker that starts afterwards serves 1 (it served 2: callers sending ``x`` got a 4xx from it
    and an answer from the others)."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    with caplog.at_level("INFO", logger="inprocserve"):
        running.refresh()
    [held] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage() and r.levelname == "WARNING"]
    assert "version 1 is named the stable version in the fleet's control file" in held, held
    assert "python -m inprocserve switch --force REPOSITORY m 2" in held, held
    control = ControlFile(repository).read()
    assert control.models["m"].stable == 1 and control.models["m"].previous_stable is None
    assert control.updated_by is not None and control.updated_by.startswith("compatibility gate ("), control
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [1, 1]
    assert [w.predict("m", X).version for w in (running, started)] == [1, 1]
    assert started.status()["models"]["m"]["versions"]["2"]["compatible"] is False
    running.sync_control()
    assert running.status()["control"]["updated_by"] == control.updated_by  # (status says who pinned it)


def test_a_worker_started_before_the_pin_serves_the_new_version_until_it_follows_the_control_file(
    repository: Path, make_server: ServerFactory
) -> None:
    """A worker that starts after version 2 appeared and before any worker's poll found the hold has nothing
    serving to compare with: it serves 2, until it follows the control file the running worker writes."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    started = make_server(repository, poll_interval_s=None, control_interval_s=None)
    assert _answering(running, started) == [1, 2]
    running.refresh()
    assert _answering(running, started) == [1, 2]  # (until its next read of the control file)
    started.sync_control()
    assert _answering(running, started) == [1, 1]
    assert started.predict("m", X).version == 1
    assert started.predict("m", {"features": X["x"]}, version=2).version == 2  # (still servable, pinned)
    started.refresh()  # its own gate holds 2 back now, against the stable version named: it writes nothing
    assert ControlFile(repository).read().revision == 1


def test_two_workers_that_hold_the_same_version_write_one_revision(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Every worker finds the same hold at its next poll: one names the stable version, the others (reading the
    file under its lock) change nothing and write nothing."""
    workers = _version_1_then_an_incompatible_2(repository, make_server, workers=2)
    named = refreshed_together(workers, caplog, "is named the stable version in control file")
    assert len(named) == 1, named
    assert ControlFile(repository).read().revision == 1
    for worker in workers:
        worker.refresh()  # (later polls, before following the file: nothing written)
    assert ControlFile(repository).read().revision == 1


def test_a_control_file_change_that_changes_nothing_writes_nothing(repository: Path) -> None:
    """The compare-and-set the pin is made of: a change that returns the revision it read (its condition gone:
    a stable version named meanwhile) writes no revision, so the workers that lose the race leave no trace."""
    control_file = ControlFile(repository)
    first = control_file.set_model("m", lambda state: state, actor="alice")
    assert control_file.update(lambda control: control, actor="gate") is control_file.read()
    control = control_file.read()
    assert (control.revision, control.updated_by, control.updated_at) == (1, "alice", first.updated_at)


def test_an_operator_s_stable_version_written_since_the_worker_last_looked_is_left_alone(
    repository: Path, make_server: ServerFactory
) -> None:
    """Versions 1 and 2 take ``x``; the worker serves 2; an operator switches the fleet to 1, and the worker has
    not followed that yet when version 3 (``features``) is held back against 2. The file names a stable version
    when read under its lock: it is left as the operator wrote it."""
    for version in (1, 2):
        save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", version)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    assert main(["switch", str(repository), "m", "1"]) == 0
    save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, "m", 3)
    running.refresh()
    assert _answering(running) == [2]  # (held against the version serving here)
    control = ControlFile(repository).read()
    assert (control.revision, control.models["m"].stable, control.models["m"].previous_stable) == (1, 1, 2)
    assert control.updated_by is not None and not control.updated_by.startswith("compatibility gate")


def test_a_write_the_control_file_refuses_is_logged_once_and_tried_again_at_a_later_refresh(
    repository: Path, make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A control file that is a symbolic link (managed elsewhere) refuses writes: the hold still serves 1 here,
    the failure is logged once at warning with how to hold the fleet by hand, and once the file can be written
    the next refresh names the stable version."""
    managed = tmp_path / "managed.json"
    managed.write_text('{"revision": 0, "models": {}}\n')
    link = repository / ".inprocserve-control.json"
    link.symlink_to(managed)
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
        running.refresh()
    failed = [r.getMessage() for r in caplog.records if "could not be named the stable version" in r.getMessage()]
    assert len(failed) == 1, failed
    assert "symbolic link" in failed[0] and "[rollout] stable = 1 in the model's config.toml" in failed[0], failed
    assert "switch --force" not in failed[0], failed  # (the CLI refuses a link too: see test_fleet_hold_advice)
    assert running.predict("m", X).version == 1
    assert managed.read_text() == '{"revision": 0, "models": {}}\n'

    link.unlink()
    running.refresh()
    assert ControlFile(repository).read().models["m"].stable == 1


def test_after_a_pin_rollback_has_nothing_to_undo_and_a_forced_switch_promotes_the_held_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """The pin is no switch: ``rollback`` refuses (no previous stable version); ``switch`` to the held version is
    refused as incompatible, ``switch --force`` promotes it with the pinned version to roll back to, and the
    rollback goes back to it, every worker following (and no worker pins again: a stable version is named)."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    running.refresh()
    assert main(["rollback", str(repository), "m"]) == 1
    assert main(["switch", str(repository), "m", "2"]) == 1
    assert main(["switch", "--force", str(repository), "m", "2"]) == 0
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.previous_stable) == (2, 1)
    running.sync_control()
    running.refresh()
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [2, 2]
    assert main(["rollback", str(repository), "m"]) == 0
    running.sync_control()
    started.sync_control()
    running.refresh()
    assert _answering(running, started) == [1, 1]
    control = ControlFile(repository).read()
    assert (control.revision, control.models["m"].stable, control.models["m"].previous_stable) == (3, 1, 2)


def test_after_a_pin_a_later_compatible_version_goes_live_and_a_switch_still_moves_the_fleet(
    repository: Path, make_server: ServerFactory
) -> None:
    """The name follows the gate (see test_fleet_hold3.py): the held version withdrawn and a compatible version 3
    deployed, the poll that finds 3 names it in place of 1, and every worker, running or starting, serves it; a
    switch, which the gate lets through, still moves the fleet (back to 1 here) with 3 to roll back to."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    running.refresh()
    running.sync_control()
    shutil.rmtree(repository / "m" / "2")
    save_model(build_mlp_model((4, 8, 2), input_name="x", seed=3), repository, "m", 3)
    running.refresh()
    running.sync_control()
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [3, 3]
    assert main(["switch", str(repository), "m", "1"]) == 0
    running.sync_control()
    started.sync_control()
    assert _answering(running, started) == [1, 1]
    assert ControlFile(repository).read().models["m"].previous_stable == 3


def test_a_canary_set_before_the_pin_is_kept_by_it(repository: Path, make_server: ServerFactory) -> None:
    """A canary of the held version, set with no stable version named, stays as it was: the pin writes the
    stable version alone."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    assert main(["canary", str(repository), "m", "2", "10"]) == 0
    running.sync_control()
    running.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.canary_version, state.canary_percent) == (1, 2, 10.0)
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [1, 1]


def test_without_a_repository_the_hold_stays_in_the_server_and_writes_nothing(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    """``Server()`` with models loaded by path has no control file: the hold works as before (a guard: this
    passes on the code before the pin too)."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), tmp_path, "m", 1)
    save_model(build_mlp_model((4, 8, 2), input_name="features"), tmp_path, "m", 2)
    server = make_server()
    server.load("m", path=tmp_path / "m" / "1" / "model.onnx")
    server.load("m", path=tmp_path / "m" / "2" / "model.onnx")
    server.refresh()
    assert server.predict("m", X).version == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_hold_found_by_a_fleet_wide_reload_is_pinned_by_a_worker_without_a_poller(
    repository: Path, make_server: ServerFactory
) -> None:
    """Workers without a poller learn of new versions from ``python -m inprocserve reload``: the re-scan it asks
    for runs under the lifecycle lock, where nothing is written; once it is over, the hold is pinned."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    assert main(["reload", str(repository)]) == 0
    running.sync_control()
    assert _answering(running) == [1]
    state = ControlFile(repository).read().models.get("m")
    assert state is not None and state.stable == 1, state


_WORKER = """
import sys
from inprocserve import Server
with Server(sys.argv[1], poll_interval_s=None, control_interval_s=None) as server:
    print(server.status()["models"]["m"]["answering_version"])
"""


def test_a_worker_process_started_after_the_hold_serves_the_pinned_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """A real worker process (as gunicorn's recycling starts one) after the running worker's poll held 2 back."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    running.refresh()
    run = subprocess.run(
        [sys.executable, "-c", _WORKER, str(repository)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1", run.stdout + run.stderr
