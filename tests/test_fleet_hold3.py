"""A stable version the compatibility gate names for the fleet follows the gate: each later version the policy
selects that is compatible with it goes live on every worker (running or starting later), while an
incompatible one stays held; an operator's switch or rollback makes it a hard stable version again.
Before, the gate's name froze every rollout at the first incompatible version until someone switched."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from inprocserve import Server, render_status_page
from inprocserve import _control as control_module
from inprocserve.__main__ import main
from inprocserve._cli_status import summarize
from inprocserve._control import CONTROL_FILENAME, Control, ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold import _answering, _version_1_then_an_incompatible_2, refreshed_together

X = {"x": np.ones((1, 4), np.float32)}


def _drop(repository: Path, version: int, *, compatible: bool) -> None:
    """Version ``version`` of ``m``: taking ``x`` as version 1 does (compatible), or ``features`` (not)."""
    name = "x" if compatible else "features"
    save_model(build_mlp_model((4, 8, 2), input_name=name, seed=version), repository, "m", version)


def _gate_named(repository: Path, make_server: ServerFactory, workers: int = 1) -> list[Server]:
    """Workers on version 1; version 2 (incompatible) held back, version 1 named by the gate and followed."""
    running = _version_1_then_an_incompatible_2(repository, make_server, workers=workers)
    running[0].refresh()
    for worker in running:
        worker.sync_control()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate, state.gate_named) == (1, 1, True), state
    return running


def _stable(repository: Path) -> tuple[int | None, bool]:
    state = ControlFile(repository).read().models["m"]
    return state.stable, state.gate_named


def test_a_later_compatible_version_goes_live_on_every_worker_and_the_incompatible_one_stays_held(
    repository: Path, make_server: ServerFactory
) -> None:
    """Version 2 stays on disk, held; version 3 takes ``x``: the poll that finds it names it in place of 1, and
    every worker serves it, one started afterwards too. Version 4 (``features`` again) is held against 3."""
    first, second = _gate_named(repository, make_server, workers=2)
    _drop(repository, 3, compatible=True)
    first.refresh()
    assert _stable(repository) == (3, True)
    first.sync_control()  # (every worker follows the file at its next read, the one that wrote it too)
    second.sync_control()
    started = make_server(repository, poll_interval_s=None)
    assert _answering(first, second, started) == [3, 3, 3]
    assert [w.predict("m", X).version for w in (first, second, started)] == [3, 3, 3]

    _drop(repository, 4, compatible=False)
    for worker in (first, second, started):
        worker.refresh()
    assert _stable(repository) == (3, True)
    late = make_server(repository, poll_interval_s=None)
    assert _answering(first, second, started, late) == [3, 3, 3, 3]
    assert late.status()["models"]["m"]["versions"]["4"]["compatible"] is False


def test_a_worker_without_a_poller_advances_the_name_at_its_next_read_of_the_control_file(
    repository: Path, make_server: ServerFactory
) -> None:
    """A fleet-wide ``reload`` makes a worker without a poller find version 3: its re-scan writes nothing (under
    the lifecycle lock), and the name advances once it is over, as the gate's first name does."""
    [running] = _gate_named(repository, make_server)
    _drop(repository, 3, compatible=True)
    assert main(["reload", str(repository)]) == 0
    running.sync_control()
    assert _stable(repository) == (3, True)
    running.sync_control()
    assert _answering(running) == [3]


@pytest.mark.parametrize(
    "operator",
    [["switch", "{repo}", "m", "1"], ["switch", "--force", "{repo}", "m", "2"]],
    ids=["switch", "forced-switch"],
)
def test_an_operator_s_switch_makes_the_name_a_hard_stable_version(
    repository: Path, make_server: ServerFactory, operator: list[str]
) -> None:
    """After a switch (to the gate's version itself, or forced to the held one) a compatible version 3 no
    longer moves the fleet: the operator's stable version stays until the next switch."""
    [running] = _gate_named(repository, make_server)
    assert main([arg.format(repo=repository) for arg in operator]) == 0
    switched_to = ControlFile(repository).read().models["m"].stable
    assert "stable_by_gate" not in json.loads((repository / CONTROL_FILENAME).read_text())["models"]["m"]
    running.sync_control()
    _drop(repository, 3, compatible=switched_to == 1)
    running.refresh()
    assert _stable(repository) == (switched_to, False)
    running.sync_control()
    assert _answering(running) == [switched_to]


def test_a_rollback_clears_the_mark_and_a_canary_or_kill_keeps_it(repository: Path, make_server: ServerFactory) -> None:
    """A canary and the kill switch leave the gate's name following the gate; a rollback (after a forced switch)
    names the version it goes back to as the operator's."""
    [running] = _gate_named(repository, make_server)
    assert main(["canary", str(repository), "m", "2", "10"]) == 0
    assert main(["kill", str(repository), "m"]) == 0
    assert main(["resume", str(repository), "m"]) == 0
    assert _stable(repository) == (1, True)
    assert main(["switch", "--force", str(repository), "m", "2"]) == 0
    assert main(["rollback", str(repository), "m"]) == 0
    assert _stable(repository) == (1, False)
    running.sync_control()
    _drop(repository, 3, compatible=True)
    running.refresh()
    assert _stable(repository) == (1, False)


def test_two_workers_that_advance_at_once_write_one_revision(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Both polls find version 3 compatible with the gate's version 1: one names it, the other (reading the file
    under its lock: 1 is no longer named) writes nothing."""
    workers = _gate_named(repository, make_server, workers=2)
    revision = ControlFile(repository).read().revision
    _drop(repository, 3, compatible=True)
    advanced = refreshed_together(workers, caplog, "is named the stable version in its place")
    assert len(advanced) == 1, advanced
    assert ControlFile(repository).read().revision == revision + 1
    for worker in workers:
        worker.refresh()  # (later polls, before following the file: nothing written)
    assert ControlFile(repository).read().revision == revision + 1
    assert _stable(repository) == (3, True)


def test_the_mark_is_written_only_with_a_gate_s_name_and_an_older_release_keeps_it(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file an operator wrote has no ``stable_by_gate`` key (byte-identical to before); the gate's name writes
    the version it named (``"stable_by_gate": 1``). An older release reads the key as one it does not know
    (shown in ``unknown_keys``), keeps the stable version named, and writes the key back with its own changes."""
    ControlFile(repository).set_model("other", lambda state: dataclasses.replace(state, stable=1, kill=True))
    assert "stable_by_gate" not in (repository / CONTROL_FILENAME).read_text()
    _gate_named(repository, make_server)
    document = json.loads((repository / CONTROL_FILENAME).read_text())
    assert document["models"]["m"]["stable_by_gate"] == 1
    monkeypatch.setattr(control_module, "_MODEL_KEYS", control_module._MODEL_KEYS - {"stable_by_gate"})
    older = Control.from_dict(document)
    assert older.models["m"].stable == 1 and older.models["m"].extra == {"stable_by_gate": 1}
    assert older.unknown_keys == ["models.m.stable_by_gate"]
    assert older.to_document()["models"]["m"]["stable_by_gate"] == 1
    monkeypatch.undo()
    assert Control.from_dict(older.to_document()).models["m"].stable_by_gate == 1


def test_status_says_the_stable_version_follows_the_gate(repository: Path, make_server: ServerFactory) -> None:
    """The status CLI's control line and the status page say whose name the stable version is."""
    [running] = _gate_named(repository, make_server)
    status = running.status()
    gate = "v1 is stable (named by the compatibility gate: follows the newest compatible version)"
    assert any(line.endswith(gate) for line in summarize(status)), summarize(status)
    assert "stable named by the compatibility gate" in render_status_page(status)


def test_an_advance_the_control_file_refuses_is_logged_once_and_tried_again(
    repository: Path, make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The control file turned into a symbolic link (managed elsewhere) after the gate's name: the advance to
    version 3 is refused, logged once at warning, and written at the first refresh after the file is writable."""
    [running] = _gate_named(repository, make_server)
    control = repository / CONTROL_FILENAME
    managed = tmp_path / "managed.json"
    managed.write_text(control.read_text())
    control.unlink()
    control.symlink_to(managed)
    _drop(repository, 3, compatible=True)
    with caplog.at_level("WARNING", logger="inprocserve"):
        running.refresh()
        running.refresh()
    failed = [r.getMessage() for r in caplog.records if "could not be named in its place" in r.getMessage()]
    assert len(failed) == 1 and "symbolic link" in failed[0], failed
    assert _stable(repository) == (1, True)
    control.unlink()
    control.write_text(managed.read_text())
    running.refresh()
    assert _stable(repository) == (3, True)
