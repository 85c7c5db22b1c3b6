"""Review of c3cca09: the version serving gone from disk in the poll that brings a compatible and an
incompatible version."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

from inprocserve import ModelConfig, VersionPolicy
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


def test_with_a_canary_running_the_gate_s_version_gone_leaves_the_fleet_named_on_the_stand_in(
    repository: Path, make_server: ServerFactory
) -> None:
    """As above, with an operator's canary of the held version 2 running (the name does not advance then): the
    name of 1 was removed, and the version serving, 3, named only at the next poll; meanwhile a worker that
    started served 4 by default."""
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
    server.refresh()
    started = make_server(repository, poll_interval_s=None, config=ALL)
    assert _answering(server, started) == [3, 3]
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate, state.canary_version) == (3, 3, 2)
