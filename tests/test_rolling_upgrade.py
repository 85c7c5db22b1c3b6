"""A fleet mid-change: hosts on two releases, or with different repository contents, share one control file.

Real servers, real ONNX models and real files; the newer release's writes are written as it would write them.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from inprocserve._cli import main
from inprocserve._control import CONTROL_FILENAME
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)


@pytest.fixture
def fraud(repository: Path) -> Path:
    """``fraud`` v1 and v2 (version v answers x * v)."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    return repository


def test_a_control_file_written_by_a_newer_release_is_followed_and_kept(
    fraud: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    running = make_server(fraud, control_interval_s=None)
    running.switch("fraud", 1)
    # A host already upgraded writes the kill switch, with keys this release does not know.
    path = fraud / CONTROL_FILENAME
    document = json.loads(path.read_text())
    document.update(revision=document["revision"] + 1, format=2)
    document["models"]["fraud"].update(kill=True, stable=2, frozen_until="2026-12-03")
    path.write_text(json.dumps(document))

    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        running.sync_control()
        running.sync_control()  # (read again, same keys: not logged again)
    assert running.predict("fraud", X).version == 2  # the kill switch and the switch are followed
    assert running.status()["control"]["unknown_keys"] == ["format", "models.fraud.frozen_until"]
    assert running.status()["control"]["error"] is None
    warnings = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert len(warnings) == 1 and "format, models.fraud.frozen_until" in warnings[0]

    # A worker of this release that starts now serves (it refused every request), and its writes keep the keys.
    starting = make_server(fraud, control_interval_s=60)
    assert starting.status()["control"]["read"] is True
    assert starting.predict("fraud", X, context={"user_id": "u1"}).version == 2
    starting.resume("fraud")
    written = json.loads(path.read_text())
    assert written["format"] == 2 and written["models"]["fraud"]["frozen_until"] == "2026-12-03"
    assert written["models"]["fraud"]["kill"] is False

    # The deploy check names them, as a warning (an older host's check must not fail the upgrade).
    assert main(["validate", str(fraud)]) == 0
    assert "WARNING" in capsys.readouterr().out
