"""A control file edited by hand, or written by another writer with odd values: what the fleet says about it.

Real servers on real models; the CLI as an operator runs it (a subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from inprocserve._control import CONTROL_FILENAME
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)


@pytest.fixture
def two_models(repository: Path) -> Path:
    for name in ("fraud", "search"):
        for version in (1, 2):
            save_model(build_scale_model(float(version)), repository, name, version)
    return repository


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inprocserve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)},
        check=False,
    )


def test_a_bad_value_in_one_model_s_entry_names_that_model(two_models: Path, make_server: ServerFactory) -> None:
    """A fleet's file holds many models: "canary_percent must lie in 0..100, got 150" sent the operator
    looking through every entry for the one a hand edit broke."""
    server = make_server(two_models, control_interval_s=None)
    server.set_canary("search", 2, percent=10)
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"]["fraud"] = {"canary_version": 2, "canary_percent": 150}  # meant 15
    control.write_text(json.dumps(document))

    assert server.sync_control() == 1  # the last good revision stays in force
    error = server.status()["control"]["error"]
    assert "models.fraud.canary_percent must lie in 0..100, got 150" in error
    refused = run_cli("kill", str(two_models), "search")  # a writer refuses, and says where to look
    assert refused.returncode == 1
    assert "models.fraud.canary_percent must lie in 0..100" in refused.stderr


def test_a_bad_entry_under_a_long_odd_name_is_said_in_one_short_line(
    two_models: Path, make_server: ServerFactory
) -> None:
    """The name of a model's entry is whatever the file holds: quoted whole, 5,000 characters and a line
    break went into status (on every call, readiness's too) and made two lines of the log."""
    server = make_server(two_models, control_interval_s=None)
    server.kill("fraud")
    control = two_models / CONTROL_FILENAME
    document = json.loads(control.read_text())
    document["models"]["x" * 5000 + "\nOK fraud"] = "kill"
    control.write_text(json.dumps(document))

    assert server.sync_control() == 1
    error = server.status()["control"]["error"]
    assert "must be an object" in error
    assert "\n" not in error and len(error) < 400
