"""A version that fails to load is logged when it fails, then at most once a minute while it keeps failing; a
failure with a different error is news and is logged at once, but at most once a minute on top of those lines,
so a copy whose every stall fails with another error cannot flood the log."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

import inprocserve
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import ServerFactory


def _failure_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "failed to load" in r.getMessage()]


def failure_text_in_status(status: dict[str, Any]) -> str:
    """Version 2's error as status shows it, less the lead that names the model and version."""
    error = status["models"]["fraud"]["versions"]["2"]["error"]
    return str(error).removeprefix("model 'fraud' version 2: ")


def _version_2_copied_beside_1(
    repository: Path, make_server: ServerFactory
) -> tuple[inprocserve.Server, ManualClock, Path, Path]:
    """A server on a manual clock serving ``fraud`` 1, and version 2's folder holding a copy of 1's model file:
    the server, its clock, version 2's model file and the path of its checksum file (not written yet)."""
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    clock = ManualClock()
    server = make_server(repository, control_interval_s=None, poll_interval_s=None, clock=clock)
    folder = repository / "fraud" / "2"
    folder.mkdir()
    model = folder / "model.onnx"
    model.write_bytes((repository / "fraud" / "1" / "model.onnx").read_bytes())
    return server, clock, model, folder / "model.onnx.sha256"


def test_a_different_error_of_the_same_version_is_logged_at_once_and_a_third_within_the_minute_waits(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server, clock, model, sidecar = _version_2_copied_beside_1(repository, make_server)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    with caplog.at_level(logging.INFO, logger="inprocserve"):
        sidecar.write_text(f"{'0' * 64}  model.onnx\n")  # a wrong digest
        server.refresh()
        assert len(_failure_lines(caplog)) == 1 and "model.onnx.sha256 expects" in _failure_lines(caplog)[0], (
            caplog.text
        )

        clock.advance(5)  # fixed, but the checksum file lists a file that is not there: another problem
        sidecar.write_text(f"{digest}  model.onnx\n{'1' * 64}  weights.data\n")
        server.refresh()
        lines = _failure_lines(caplog)
        assert len(lines) == 2, caplog.text
        assert "lists 'weights.data', which is not in the version folder" in lines[1], lines[1]
        assert failure_text_in_status(server.status()) in lines[1]

        clock.advance(5)  # a third error within the minute: held back (the bound), shown in status
        model.write_bytes(b"corrupt " * 64)
        sidecar.write_text(f"{hashlib.sha256(model.read_bytes()).hexdigest()}  model.onnx\n")
        server.refresh()  # (files changed after a failed retry: seen once, tried when seen the same again)
        clock.advance(1)
        server.refresh()  # tried: it fails, and the bound holds its line back
        assert "not a valid ONNX model" in failure_text_in_status(server.status())
        assert len(_failure_lines(caplog)) == 2, caplog.text

        clock.advance(60)  # still there a minute after the last line: logged then
        server.refresh()
    lines = _failure_lines(caplog)
    assert len(lines) == 3, caplog.text
    assert lines[2] not in lines[:2] and "lists" not in lines[2] and "expects" not in lines[2], lines[2]
    assert "more since" not in lines[2], lines[2]  # (the second error was logged: not one held back)


def test_the_count_of_lines_held_back_starts_again_after_a_different_error_s_line(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Error A logged, A again twice (held back), error B logged at once as news, B again once (held back): the
    next minute's line counted A's two as well, "3 more since the last such line", where one B was held back
    since B's own line."""
    server, clock, model, sidecar = _version_2_copied_beside_1(repository, make_server)
    digest = hashlib.sha256(model.read_bytes()).hexdigest()

    def again(listing: str) -> None:  # the same files written again: retried, the same error
        clock.advance(9)
        sidecar.write_text(listing)
        server.refresh()
        clock.advance(1)
        server.refresh()

    wrong_digest = f"{'0' * 64}  model.onnx\n"
    missing_file = f"{digest}  model.onnx\n{'1' * 64}  weights.data\n"
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        sidecar.write_text(wrong_digest)
        server.refresh()
        again(wrong_digest)
        again(wrong_digest)
        again(missing_file)  # news: logged at once
        again(missing_file)  # held back
        assert len(_failure_lines(caplog)) == 2, caplog.text
        clock.advance(60)
        again(missing_file)  # due again: the line counts what was held back since the news line
    lines = _failure_lines(caplog)
    assert len(lines) == 3, caplog.text
    assert "lists 'weights.data'" in lines[2] and "(1 more since the last such line)" in lines[2], lines[2]
