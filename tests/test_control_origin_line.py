"""Each worker's "following control revision N (...)" log line says who wrote the revision and when, or what is
known of it: a revision with neither recorded (no control file: a repository swapped in by a symbolic link
without one) read "(by None at None)"."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from inprocserve._control import CONTROL_FILENAME
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)


def _following(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("following control revision")]


def test_after_a_swap_to_a_release_without_a_control_file_the_line_says_there_is_none(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    releases = tmp_path / "releases"
    for release in ("42", "43"):
        for version in (1, 2):
            save_model(build_scale_model(float(version)), releases / release, "fraud", version)
    current = tmp_path / "models"
    current.symlink_to(releases / "42")
    server = make_server(current, control_interval_s=None)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server.switch("fraud", 1, actor="alice")
    [line] = _following(caplog)
    assert line.startswith("following control revision 1 (by alice at 20"), line
    caplog.clear()

    (tmp_path / "next").symlink_to(releases / "43")  # the deploy of release 43: an atomic swap of the link
    (tmp_path / "next").replace(current)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server.sync_control()
    assert server.predict("fraud", X).version == 2
    assert _following(caplog) == [
        "following control revision 0 (no change written yet: no control file, or an empty one)"
    ], caplog.text
    assert "None" not in caplog.text, caplog.text


def test_a_hand_written_revision_without_author_or_time_says_so(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    repository = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    server = make_server(repository, control_interval_s=None)
    (repository / CONTROL_FILENAME).write_text(json.dumps({"revision": 3, "models": {"fraud": {"stable": 1}}}))
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server.sync_control()
    assert server.predict("fraud", X).version == 1
    assert _following(caplog) == [
        "following control revision 3 (its author and time are not recorded: written by hand?)"
    ], caplog.text
