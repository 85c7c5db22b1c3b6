"""The gate's name for the fleet, continued: a stable version the gate named that is gone from disk holds nothing
(a worker that starts cannot load it), so the name is removed and every worker is back on its version policy
and its own gate, as before the fleet hold. Before, running workers served it from memory while every worker
started later served the newest version: the split the name exists to prevent, for good. An operator's stable
version gone from disk stays named."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from inprocserve._cli_status import summarize
from inprocserve._control import CONTROL_FILENAME, ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold import _answering, lock_waits
from .test_fleet_hold3 import _drop, _gate_named, _stable
from .test_fleet_hold4 import _gate_named_without_a_watcher

X = {"x": np.ones((1, 4), np.float32)}
FEATURES = {"features": np.ones((1, 4), np.float32)}


def _entry(repository: Path) -> dict[str, object]:
    return json.loads((repository / CONTROL_FILENAME).read_text())["models"]["m"]


def test_the_gate_s_version_deleted_from_disk_leaves_every_worker_on_the_new_one(
    repository: Path, make_server: ServerFactory
) -> None:
    """Version 1 is the gate's name (2 held back), the kill switch on; then 1 is deleted from disk. The running
    workers served 1 from memory and a worker started afterwards served 2, for good. Now the first poll removes
    the name (``stable`` and its mark; the kill switch stays) and every worker serves 2."""
    first, second = _gate_named(repository, make_server, workers=2)
    first.kill("m")
    shutil.rmtree(repository / "m" / "1")
    first.refresh()
    entry = _entry(repository)
    assert entry["stable"] is None and "stable_by_gate" not in entry and entry["kill"] is True, entry
    assert first.predict("m", FEATURES).version == 2  # (the writer follows its own write at once)
    second.refresh()
    second.sync_control()
    assert second.predict("m", FEATURES).version == 2
    later = make_server(repository, poll_interval_s=None)
    assert later.predict("m", FEATURES).version == 2
    first.refresh()  # (1 no longer named: retired, as after a switch)
    assert first.models == {"m": [2]}
    assert _answering(first, second, later) == [2, 2, 2]
    assert first.status()["control"]["error"] is None


def test_an_operator_s_stable_version_gone_from_disk_stays_named(repository: Path, make_server: ServerFactory) -> None:
    """The operator switched the fleet to version 1 before 2 (incompatible) arrived: that is a choice, and it stays
    when 1 leaves the disk (running workers serve it from memory; status says a worker that starts cannot)."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None)
    running.switch("m", 1)
    _drop(repository, 2, compatible=False)
    running.refresh()
    shutil.rmtree(repository / "m" / "1")
    before = (repository / CONTROL_FILENAME).read_bytes()
    running.refresh()
    assert (repository / CONTROL_FILENAME).read_bytes() == before
    assert _stable(repository) == (1, False)
    assert running.predict("m", X).version == 1
    assert "from memory" in running.status()["control"]["error"]


def test_a_removal_the_stuck_lock_keeps_out_shows_in_status_and_is_written_at_the_next_refresh(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control file's lock is stuck when the refresh finds the gate's version 1 gone from disk: the name stays,
    the worker serves 1 from memory, and status says the fleet is not held, as for a failed name or advance. The
    next refresh, the lock free, removes it."""
    running = _gate_named_without_a_watcher(repository, make_server)
    shutil.rmtree(repository / "m" / "1")
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5], waited
    assert _stable(repository) == (1, True)
    assert running.predict("m", X).version == 1
    status = running.status()
    error = status["models"]["m"]["fleet_hold_error"]
    assert error is not None and "version 1" in error and "gone from disk" in error, error
    assert any(line.startswith("  FLEET NOT HELD: version 1") for line in summarize(status)), summarize(status)

    running.refresh()
    assert _stable(repository) == (None, False)
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
    assert running.predict("m", FEATURES).version == 2
