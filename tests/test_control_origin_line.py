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


@pytest.mark.parametrize(
    ("audit", "expected"),
    [
        ({"updated_by": "", "updated_at": ""}, "its author and time are not recorded: written by hand?"),
        ({"updated_by": "  ", "updated_at": "2026-01-01T12:00:00Z"}, "by an unrecorded author at 2026-01-01T12:00:00Z"),
        ({"updated_by": "alice", "updated_at": ""}, "by alice"),
    ],
)
def test_a_hand_written_blank_author_or_time_reads_as_not_recorded(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, audit: dict[str, str], expected: str
) -> None:
    """A hand edit's empty ``updated_by`` or ``updated_at`` is no more known than a missing one: the line read
    ``(by  at )``."""
    repository = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    server = make_server(repository, control_interval_s=None)
    document = {"revision": 3, **audit, "models": {"fraud": {"stable": 1}}}
    (repository / CONTROL_FILENAME).write_text(json.dumps(document))
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server.sync_control()
    assert server.predict("fraud", X).version == 1
    assert _following(caplog) == [f"following control revision 3 ({expected})"], caplog.text


def test_a_file_holding_only_a_newer_releases_keys_is_not_said_to_be_empty(
    tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Revision 0 with keys this release does not know (written by a newer one, or by hand) is a file, not
    "no control file, or an empty one"."""
    repository = tmp_path / "models"
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    server = make_server(repository, control_interval_s=None)
    (repository / CONTROL_FILENAME).write_text(json.dumps({"revision": 0, "fleet_note": "frozen for the audit"}))
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server.sync_control()
    assert _following(caplog) == [
        "following control revision 0 (its author and time are not recorded: written by hand?)"
    ], caplog.text
