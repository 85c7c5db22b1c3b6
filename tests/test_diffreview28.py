"""Review of c3cca09: the version serving gone from disk in the poll that brings a compatible and an
incompatible version."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from inprocserve import ModelConfig, Server, VersionPolicy
from inprocserve._control import Control, ControlFile
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .test_compatibility import renamed, rows
from .test_fleet_hold import _answering

ALL = ModelConfig(version_policy=VersionPolicy.all())


def _drop(repository: Path, version: int, *, compatible: bool) -> None:
    save_model(renamed("x" if compatible else "features", seed=version), repository, "m", version)


def test_a_worker_started_after_the_poll_that_removed_the_gate_s_version_serves_the_stand_in(
    repository: Path, make_server: ServerFactory
) -> None:
    """Version 1 named by the gate (2 held against it); 1 removed in the poll that brings 3 (compatible) and 4
    (not): the name moves to 3 in that poll. It was removed first and the advance, finding no name of 1, wrote
    nothing: until the next poll the fleet was unnamed, and a worker that started then served 4, breaking every
    caller of 1 and 3."""
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    server.refresh()
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    server.refresh()
    started = make_server(repository, poll_interval_s=None, config=ALL)
    assert started.predict("m", {"x": rows()}).version == 3
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate) == (3, 3)
    assert server.predict("m", {"x": rows()}).version == 3


def _gate_named_1_with_a_canary_of_2_then_1_gone_with_3_and_4(
    repository: Path, make_server: ServerFactory, *, locked: bool = False
) -> Server:
    """Version 1 named by the gate (2 held against it), an operator's canary of 2 running; then 1 removed in the
    poll that brings 3 (compatible with 1) and 4 (not), and that poll's refresh."""
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    server.refresh()

    def canary_of_2(control: Control) -> Control:
        state = dataclasses.replace(control.models["m"], canary_version=2, canary_percent=10)
        return dataclasses.replace(control, models={"m": state})

    ControlFile(repository).update(canary_of_2, actor="operator")
    server.sync_control()
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    if locked:  # (the control file's lock stuck: the name stays)
        with ControlFile(repository)._locked():
            server.refresh()
    else:
        server.refresh()
    return server


def test_with_a_canary_running_the_gate_s_version_gone_leaves_the_fleet_named_on_the_stand_in(
    repository: Path, make_server: ServerFactory
) -> None:
    """As above, with a canary running (the name does not advance then): the name of 1 was removed, and the
    version serving, 3, named only at the next poll; meanwhile a worker that started served 4 by default."""
    server = _gate_named_1_with_a_canary_of_2_then_1_gone_with_3_and_4(repository, make_server)
    started = make_server(repository, poll_interval_s=None, config=ALL)
    assert _answering(server, started) == [3, 3]
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate, state.canary_version) == (3, 3, 2)


def test_with_a_canary_running_the_hold_s_warning_says_the_stand_in_serves_not_the_version_gone(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The warning said 'version 4 is not compatible with version 1, which keeps serving by default': 1 is gone
    from disk, its name removed, and 3 answers."""
    with caplog.at_level("WARNING", logger="inprocserve"):
        server = _gate_named_1_with_a_canary_of_2_then_1_gone_with_3_and_4(repository, make_server)
    assert _answering(server) == [3]
    [warning] = [r.getMessage() for r in caplog.records if "version 4 is not compatible" in r.getMessage()]
    assert "version 3, compatible with it, serves by default" in warning, warning
    assert "keeps serving" not in warning, warning


def test_the_gate_s_version_gone_logs_no_error_asking_the_operator_to_restore_it(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The refresh that found the gate's version gone logged, at error, 'version 1, which control revision 1
    serves, is gone from the repository ...: restore it, or switch the fleet to another version', while that
    refresh moves the name itself (to 3 here): an operator paged for nothing to do."""
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    server.refresh()
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    with caplog.at_level("WARNING", logger="inprocserve"):
        server.refresh()
    assert _answering(server) == [3]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []
    assert server.status()["control"]["error"] is None


def test_with_a_canary_running_a_removal_the_stuck_lock_keeps_out_shows_in_status(
    repository: Path, make_server: ServerFactory
) -> None:
    """The name of 1 could not be removed (the lock stuck): status says the fleet is not held, as without the
    stand-in, and the next refresh, the lock free, names 3."""
    server = _gate_named_1_with_a_canary_of_2_then_1_gone_with_3_and_4(repository, make_server, locked=True)
    assert ControlFile(repository).read().models["m"].stable == 1
    error = server.status()["models"]["m"]["fleet_hold_error"]
    assert error is not None and "version 1" in error and "gone from disk" in error, error
    server.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate) == (3, 3)
    assert server.status()["models"]["m"]["fleet_hold_error"] is None


def test_an_advance_and_removal_the_stuck_lock_keeps_out_show_in_status_and_are_written_next(
    repository: Path, make_server: ServerFactory
) -> None:
    """Without a canary, the lock stuck: the name of 1 stays, status says the fleet is not held, and the next
    refresh advances it to 3."""
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    server.refresh()
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    with ControlFile(repository)._locked():
        server.refresh()
    assert ControlFile(repository).read().models["m"].stable == 1
    assert server.status()["models"]["m"]["fleet_hold_error"] is not None
    server.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate) == (3, 3)
    assert server.status()["models"]["m"]["fleet_hold_error"] is None
    assert server.predict("m", {"x": rows()}).version == 3


def test_with_a_canary_running_two_workers_that_find_the_gate_s_version_gone_agree_without_an_error(
    repository: Path, make_server: ServerFactory
) -> None:
    """Two workers on the gate's name of 1 with a canary of 2; 1 removed in the poll that brings 3 and 4: the
    second, whose refresh finds the name already moved by the first, writes nothing, shows no FLEET NOT HELD, and
    serves 3 once it reads the file."""
    _drop(repository, 1, compatible=True)
    first, second = (make_server(repository, poll_interval_s=None, config=ALL, control_interval_s=None) for _ in "ab")
    _drop(repository, 2, compatible=False)
    first.refresh()
    second.refresh()

    def canary_of_2(control: Control) -> Control:
        state = dataclasses.replace(control.models["m"], canary_version=2, canary_percent=10)
        return dataclasses.replace(control, models={"m": state})

    ControlFile(repository).update(canary_of_2, actor="operator")
    for worker in (first, second):
        worker.sync_control()
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    for worker in (first, second):  # (the second has not read the file the first wrote)
        worker.refresh()
    second.sync_control()
    assert _answering(first, second) == [3, 3]
    assert [w.status()["models"]["m"]["fleet_hold_error"] for w in (first, second)] == [None, None]
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate, state.canary_version) == (3, 3, 2)
