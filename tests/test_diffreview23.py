"""Review of the gate's name following the gate (stable_by_gate): what an advance must not write."""

from __future__ import annotations

import json
from pathlib import Path

from inprocserve.__main__ import main
from inprocserve._control import CONTROL_FILENAME, ControlFile

from .conftest import ServerFactory
from .test_fleet_hold import _answering
from .test_fleet_hold3 import _drop, _gate_named, _stable


def test_a_canary_of_a_compatible_version_stays_a_canary_instead_of_becoming_the_fleet_s_stable_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """Version 1 named by the gate; version 3 (compatible) dropped and canaried at 10 %: the poll that finds it
    leaves the fleet on version 1 with 10 % on version 3, not all traffic on the canary."""
    [running] = _gate_named(repository, make_server)
    _drop(repository, 3, compatible=True)
    assert main(["canary", str(repository), "m", "3", "10"]) == 0
    running.sync_control()
    running.refresh()
    running.sync_control()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.canary_version, state.canary_percent) == (1, 3, 10.0), state
    assert _answering(running) == [1]
    # Once the canary ends (the operator did not promote it), the name follows the gate again.
    assert main(["canary", str(repository), "m", "3", "0"]) == 0
    running.sync_control()
    running.refresh()
    assert _stable(repository) == (3, True)


def test_a_switch_by_an_older_release_during_a_rolling_upgrade_stays_the_operator_s_stable_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """An older release (its CLI, or an older worker's admin endpoint) switches to version 3: it knows no
    ``stable_by_gate`` and writes the key back as read. A newer worker must not take that for the gate's name and
    move the operator's version 3 on to a compatible version 4."""
    [running] = _gate_named(repository, make_server)
    _drop(repository, 3, compatible=True)
    path = repository / CONTROL_FILENAME
    document = json.loads(path.read_text())  # what an older release's `switch models/ m 3` writes
    document["revision"] += 1
    document["models"]["m"].update(stable=3, previous_stable=1)
    assert document["models"]["m"]["stable_by_gate"] == 1  # (kept as an unknown key, as read)
    path.write_text(json.dumps(document))
    running.sync_control()
    _drop(repository, 4, compatible=True)
    running.refresh()
    running.sync_control()
    assert ControlFile(repository).read().models["m"].stable == 3
    assert _answering(running) == [3]
