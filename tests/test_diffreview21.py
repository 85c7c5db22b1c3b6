"""Review of the gate's fleet-wide hold (the stable version named in the control file when none is): the ways a
worker without a poller finds a hold, and retries a name it could not write."""

from __future__ import annotations

from pathlib import Path

import pytest

from inprocserve import Server
from inprocserve.__main__ import main
from inprocserve._control import ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold import _answering, _version_1_then_an_incompatible_2, lock_waits


def test_a_hold_found_by_a_reload_asked_in_process_is_named_for_the_fleet(
    repository: Path, make_server: ServerFactory
) -> None:
    """``server.reload()`` (the in-process fleet-wide reload, as a deploy hook calls it) re-scans under the
    lifecycle lock, where the gate writes nothing: the worker that asked must name the stable version once the
    lock is released (its own watcher has nothing new to read, and a worker without a poller has no later
    refresh), or a worker started afterwards serves the held version."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    running.reload()
    assert _answering(running) == [1]
    state = ControlFile(repository).read().models.get("m")
    assert state is not None and state.stable == 1, state
    started = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [1, 1]


def test_a_name_the_lock_kept_out_after_a_reload_is_written_at_the_watcher_s_next_read(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker without a poller finds the hold at a ``reload``'s re-scan; the control file's lock is held then
    (an operator's write), so the name fails, logged as "tried again". With no poller, no refresh comes: the
    watcher's next read of the file (nothing new in it) is where it is tried again."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    assert main(["reload", str(repository)]) == 0
    with caplog.at_level("WARNING", logger="inprocserve"), ControlFile(repository)._locked():
        running.sync_control()
    [failed] = [r.getMessage() for r in caplog.records if "could not be named the stable version" in r.getMessage()]
    assert "tried again" in failed, failed
    assert _answering(running) == [1]
    running.sync_control()  # (the watcher's next read: the file unchanged)
    state = ControlFile(repository).read().models.get("m")
    assert state is not None and state.stable == 1, state
    started: Server = make_server(repository, poll_interval_s=None)
    assert _answering(running, started) == [1, 1]


def test_holds_of_several_models_wait_for_a_stuck_lock_once_per_try(
    repository: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Three models each hold a version back while the control file's lock is stuck (a writer that hangs): each
    try waits for the lock once (0.5 s), not once per model, so the watcher, which tries at each read of the
    file, still follows a kill switch within about an interval; every model's failure is still logged, once."""
    for name in ("a", "b", "c"):
        save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, name, 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    for name in ("a", "b", "c"):
        save_model(build_mlp_model((4, 8, 2), input_name="features"), repository, name, 2)
    waits = lock_waits(monkeypatch)  # (counts the waits; each still waits 0.5 s)
    with caplog.at_level("WARNING", logger="inprocserve"), ControlFile(repository)._locked():
        running.refresh()
        assert len(waits) == 1, waits  # one wait for the three models' names, not three
        running.sync_control()  # (a read of the file: the names are tried again)
        assert len(waits) == 2, waits
    failed = [r.getMessage() for r in caplog.records if "could not be named the stable version" in r.getMessage()]
    assert sorted(message.split("'")[1] for message in failed) == ["a", "b", "c"], failed
    running.sync_control()  # (the lock free: every name written)
    control = ControlFile(repository).read()
    assert {name: state.stable for name, state in control.models.items()} == {"a": 1, "b": 1, "c": 1}
