"""``inprocserve.testing.save_model`` into a repository a server watches: a scan while it saves never sees a
version folder (or a model folder) without its model.onnx."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve.testing
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, wait_until

X = np.ones((1, 4), np.float32)


@pytest.mark.parametrize(("name", "version"), [("scale", 2), ("added", 1)], ids=["new-version", "new-model"])
def test_a_watching_server_picks_up_a_model_being_saved_without_a_warning(
    repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    name: str,
    version: int,
) -> None:
    # The version folder appeared before its model.onnx (written aside, then renamed): a scan in between
    # logged "missing model.onnx" (or "has no version folder") and refresh() returned it as a problem.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository, poll_interval_s=0.02)
    scans: list[list[str]] = []
    rename, replace = os.rename, os.replace

    def scanned_first(move: Any) -> Any:
        def moved(source: Any, target: Any) -> None:
            time.sleep(0.2)  # the watcher polls meanwhile, and a refresh() scans
            scans.append(server.refresh())
            move(source, target)

        return moved

    monkeypatch.setattr(inprocserve.testing.os, "rename", scanned_first(rename))
    monkeypatch.setattr(inprocserve.testing.os, "replace", scanned_first(replace))
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        save_model(build_scale_model(2.0), repository, name, version)
        assert scans == [[]]
        wait_until(lambda: server.predict(name, X).version == version if name in server.models else False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert sorted(path.name for path in (repository / name).iterdir()) == [str(v) for v in range(1, version + 1)]
