"""The gate's name for the fleet, continued: the worker that advances the name serves the version it named at
once; an advance that fails shows in status as a failed name does; a ``stable_by_gate`` mark that is no version
number is refused as other bad values of the control file are."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from inprocserve import Server, render_status_page
from inprocserve._cli_status import summarize
from inprocserve._control import CONTROL_FILENAME, ControlFile
from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold import _answering, lock_waits
from .test_fleet_hold3 import _drop, _stable

X = {"x": np.ones((1, 4), np.float32)}


def _gate_named_without_a_watcher(repository: Path, make_server: ServerFactory) -> Server:
    """A worker on version 1 whose reads of the control file are the test's alone (no watcher: its tries do not
    race the test's); version 2 (incompatible) held back, version 1 named by the gate."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    _drop(repository, 2, compatible=False)
    running.refresh()
    assert _stable(repository) == (1, True)
    return running


def test_the_worker_that_advances_the_name_serves_the_version_it_named_at_once(
    repository: Path, make_server: ServerFactory
) -> None:
    """The worker's refresh finds version 3 compatible with the gate's version 1 and names it: that worker served
    1 until its next read of the control file (0.5 s by default), though it had just written 3 (and it did not
    advance a name it had written itself until it read it back). With reads a minute apart, only its own writes
    explain that it follows them right after each refresh, as it follows a switch made on it."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    running = make_server(repository, poll_interval_s=None, control_interval_s=60)
    _drop(repository, 2, compatible=False)
    running.refresh()
    assert _stable(repository) == (1, True)
    assert running.status()["control"]["revision"] == 1  # (its own name, followed: the mark counts here)
    _drop(repository, 3, compatible=True)
    running.refresh()
    assert _stable(repository) == (3, True)
    assert running.predict("m", X).version == 3
    assert _answering(running) == [3]
    assert running.status()["control"]["revision"] == 2


def test_an_advance_the_stuck_lock_keeps_out_shows_in_status_until_it_is_written(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control file's lock is stuck when the refresh finds version 3 compatible with the gate's version 1:
    the advance fails, and the fleet stays on 1 (a worker that starts now serves it). That was one warning in
    the log; status, the status CLI and the status page say it as they say a failed name, until a later try
    writes it."""
    running = _gate_named_without_a_watcher(repository, make_server)
    _drop(repository, 3, compatible=True)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5], waited
    assert _stable(repository) == (1, True)
    status = running.status()
    error = status["models"]["m"]["fleet_hold_error"]
    assert error is not None and "the fleet stays on version 1" in error and "version 3" in error, error
    assert any(line.startswith("  FLEET NOT HELD: version 3") for line in summarize(status)), summarize(status)
    assert "Fleet not held: version 3" in render_status_page(status)

    running.refresh()  # (the lock free: written at the next try)
    assert _stable(repository) == (3, True)
    status = running.status()
    assert status["models"]["m"]["fleet_hold_error"] is None
    assert not any("FLEET NOT HELD" in line for line in summarize(status))


def test_a_boolean_mark_in_the_control_file_is_refused_and_never_reads_as_version_1(
    repository: Path, make_server: ServerFactory
) -> None:
    """``"stable_by_gate": true`` (the mark before it named a version; by hand now) is a bad value like any other:
    the worker refuses the revision and says which key, as for ``kill``. And a status document carrying it (from
    a server that wrote the mark so) is not read as version 1, which ``true`` equals in Python: the CLI and the
    status page said the operator's stable version 1 followed the gate."""
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    (repository / CONTROL_FILENAME).write_text(
        json.dumps({"revision": 1, "models": {"m": {"stable": 1, "stable_by_gate": True}}})
    )
    running = make_server(repository, poll_interval_s=None, control_interval_s=None)
    error = running.status()["control"]["error"]
    assert error is not None and "models.m.stable_by_gate must be a positive int or null, got True" in error, error

    status = running.status()
    status["control"]["error"] = None
    status["models"]["m"]["control"] = {"stable": 1, "previous_stable": None, "stable_by_gate": True}
    assert "  control file: v1 is stable" in summarize(status), summarize(status)
    assert "stable named by the compatibility gate" not in render_status_page(status)
