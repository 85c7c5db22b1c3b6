"""The gate's name for the fleet, continued: while the named version's folder is gone for a moment (removed and
copied again) the hold against it is kept too, not dropped and found again."""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from inprocserve.__main__ import main
from inprocserve._control import ControlFile, ModelControl
from inprocserve.testing import ManualClock, build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold3 import _drop
from .test_fleet_hold4 import _gate_named_without_a_watcher
from .test_fleet_hold6 import _gate_named_with_a_clock
from .test_telemetry import Otel
from .test_telemetry import otel as otel  # the fixture: one SDK per process

X = {"x": np.ones((1, 4), np.float32)}
FEATURES = {"features": np.ones((1, 4), np.float32)}


def _counted(otel: Otel) -> int:
    """``inprocserve.model.incompatible`` for version 2 of ``m`` (a process's counter: other tests count too)."""
    points = otel.metric_points("inprocserve.model.incompatible")
    return sum(
        p.value
        for p in points
        if (p.attributes["inprocserve.model.name"], p.attributes["inprocserve.model.version"]) == ("m", 2)
    )


def test_a_poll_while_the_named_version_s_folder_is_copied_again_keeps_the_hold(
    repository: Path, make_server: ServerFactory, otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    """``rm -rf models/m/1 && cp -r release/m/1 models/m/1`` with a poll between the two: the gate's name of 1 is
    kept, yet the hold of 2 against 1 was dropped for that poll (status's ``default_version`` said 2 while 1
    answered) and found again once the folder was back: the hold's warning logged a second time and
    ``inprocserve.model.incompatible`` counted again, an alert on it fired for a copy. Now the hold stays."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    release = repository.parent / "release-1"
    shutil.copytree(repository / "m" / "1", release)
    counted = _counted(otel)
    caplog.clear()
    with caplog.at_level("WARNING", logger="inprocserve"):
        shutil.rmtree(repository / "m" / "1")
        running._registry.refresh(settle_empty_configs=True)  # a poll between the two
        status = running.status()["models"]["m"]
        assert (status["default_version"], status["answering_version"]) == (1, 1), status
        assert status["versions"]["2"]["compatible"] is False
        shutil.copytree(release, repository / "m" / "1")
        clock.advance(5.0)
        running._registry.refresh(settle_empty_configs=True)
    assert [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()] == []
    assert _counted(otel) == counted
    assert running.predict("m", X).version == 1


def test_a_wait_that_runs_out_while_an_operator_s_switch_lands_is_no_failure_and_leaves_the_switch(
    repository: Path, make_server: ServerFactory
) -> None:
    """The re-read after a wait that ran out (a sibling's slow write) takes the file as it is then: the file is
    replaced by a rename, so it is the old revision or the new one, never a mix. An operator's switch that lands
    meanwhile (a different version, no mark) is a stable version named: the gate writes nothing over it (as under
    the lock), and there is no fleet not held to show: every worker follows the switch."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    _drop(repository, 2, compatible=False)
    operator = ControlFile(repository)
    locked = threading.Event()

    def slow_switch() -> None:
        with operator._locked():
            locked.set()
            time.sleep(0.25)
            control = operator.read()
            switched = dataclasses.replace(ModelControl(), stable=2, previous_stable=1)
            operator._write(dataclasses.replace(control, revision=1, models={**control.models, "m": switched}))
            time.sleep(0.6)  # (its folder's fsync)

    writer = threading.Thread(target=slow_switch)
    writer.start()
    locked.wait(5)
    running.refresh()
    writer.join(5)
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate, state.previous_stable) == (2, None, 1), state
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
    running.sync_control()
    assert running.predict("m", FEATURES).version == 2


def test_each_advance_records_its_own_version_to_roll_back_to(repository: Path, make_server: ServerFactory) -> None:
    """The docs: 1 to 3 to 5 leaves 3 to roll back to (1 retired: two versions loaded, not three); a second
    rollback returns to 5, the operator's (no mark: the name no longer follows the gate)."""
    running = _gate_named_without_a_watcher(repository, make_server)
    for version in (3, 5):
        _drop(repository, version, compatible=True)
        running.refresh()
    running.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (5, True, 3), state
    assert running.models == {"m": [3, 5]}
    assert main(["rollback", str(repository), "m"]) == 0
    assert main(["rollback", str(repository), "m"]) == 0
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (5, False, 3), state


def test_a_compatible_version_found_while_the_named_version_s_folder_is_copied_again_records_it_to_roll_back_to(
    repository: Path, make_server: ServerFactory
) -> None:
    """The hold kept while the named version's folder settles (above) is no advance made meanwhile: 3, compatible
    with 1, found in the poll between ``rm -rf models/m/1`` and its copy, is named once 1 is back, with 1 recorded
    to roll back to (advanced while 1 was gone, nothing was)."""
    clock = ManualClock()
    running = _gate_named_with_a_clock(repository, make_server, clock)
    release = repository.parent / "release-1"
    shutil.copytree(repository / "m" / "1", release)
    shutil.rmtree(repository / "m" / "1")
    _drop(repository, 3, compatible=True)
    running._registry.refresh(settle_empty_configs=True)
    shutil.copytree(release, repository / "m" / "1")
    clock.advance(1.0)
    running._registry.refresh(settle_empty_configs=True)
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.previous_stable) == (3, True, 1), state
