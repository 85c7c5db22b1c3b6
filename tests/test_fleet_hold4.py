"""The gate's name for the fleet, continued: the worker that advances the name serves the version it named at
once; an advance that fails shows in status as a failed name does; a ``stable_by_gate`` mark that is no version
number is refused as other bad values of the control file are."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from inprocserve.testing import build_mlp_model, save_model

from .conftest import ServerFactory
from .test_fleet_hold import _answering
from .test_fleet_hold3 import _drop, _stable

X = {"x": np.ones((1, 4), np.float32)}


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
