"""The model repository as CI pipelines, rsync and people with editors leave it: whatever lies there is skipped
and reported, the rest of the repository is served, and every report stays one readable line."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def test_a_version_folder_of_more_than_18_digits_is_skipped_and_reported(
    repository: Path, make_server: ServerFactory
) -> None:
    """``models/fraud/1000000000000000000000000000000`` (a timestamp with its nanoseconds, a typo) became the
    default version, though no one could name it: ``/v2/models/fraud/versions/...`` takes at most 18 digits
    (400), the control file at most 2**63-1, and the OTLP exporter dropped its version attribute (past int64)."""
    model_file = save_model(build_scale_model(2.0), repository, "fraud", 1)
    huge = repository / "fraud" / str(10**30)
    huge.mkdir()
    shutil.copy(model_file, huge / "model.onnx")
    server = make_server(repository)
    assert server.models == {"fraud": [1]}
    assert server.status()["models"]["fraud"]["default_version"] == 1
    problems = server.refresh()
    assert f"{huge}: version folders must be positive integers of at most 18 digits" in "\n".join(problems)


@pytest.mark.parametrize(
    "where",
    ["file in the repository", "model folder", "version folder", "file in a model folder"],
)
def test_a_name_with_a_line_break_an_escape_or_bytes_not_utf8_is_reported_on_one_readable_line(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """A folder named ``x\\nERROR ...`` wrote a forged line into the log (a terminal escape, colours), and one
    of bytes not UTF-8 a lone surrogate that a UTF-8 log file (``logging.FileHandler(..., encoding="utf-8")``)
    refused with "--- Logging error ---", losing the warning."""
    caplog.set_level(logging.WARNING, logger="inprocserve")
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    hostile = b"evil\nERROR inprocserve forged \x1b[2J\xff"
    parent = repository if where in ("file in the repository", "model folder") else repository / "fraud"
    path = os.fsencode(parent) + b"/" + hostile
    if where.startswith("file"):
        Path(os.fsdecode(path)).write_bytes(b"notes")
    else:
        os.mkdir(path)
    server = make_server(repository)
    problems = server.refresh()
    logged = [record.getMessage() for record in caplog.records if record.name.startswith("inprocserve")]
    assert any("evil" in line for line in problems) and any("evil" in line for line in logged)
    for line in [*problems, *logged]:
        assert line.isprintable(), line
        line.encode("utf-8")  # (no lone surrogate)
    assert server.models == {"fraud": [1]}


def a_folder(path: Path) -> None:
    path.mkdir()  # (``cp -r`` of an export folder, or ``mkdir -p models/fraud/2/model.onnx`` by mistake)


def a_pipe(path: Path) -> None:
    os.mkfifo(path)  # (a pipe that nothing writes: opened, it would wait for good)


@pytest.mark.parametrize("make", [a_folder, a_pipe], ids=lambda make: make.__name__)
def test_a_model_onnx_that_is_no_file_is_reported_as_such_not_as_missing(
    repository: Path, make_server: ServerFactory, make: object
) -> None:
    """The scan said "missing model.onnx" of a version folder that plainly holds one (a folder, a pipe):
    whoever looked found it there, and was not told what was wrong with it."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    version = repository / "fraud" / "2"
    version.mkdir()
    make(version / "model.onnx")  # type: ignore[operator]
    server = make_server(repository)
    assert server.models == {"fraud": [1]}
    problems = "\n".join(server.refresh())
    assert f"{version}: model.onnx is not a regular file (a folder, a pipe or a device)" in problems
    assert "missing model.onnx" not in problems


@pytest.mark.parametrize("where", ["repository", "model folder"])
def test_thousands_of_stray_entries_are_reported_as_the_first_20_and_a_count(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    """A data set synced into the repository, or into a model folder, was reported entry by entry: a warning
    per file in the log at start (thousands; again as it changed), and as many lines from refresh() and
    ``validate``."""
    caplog.set_level(logging.WARNING, logger="inprocserve")
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    folder = repository if where == "repository" else repository / "fraud"
    for index in range(500):
        (folder / f"image_{index:05}.jpg").write_bytes(b"")
    server = make_server(repository)
    problems = server.refresh()
    logged = [record for record in caplog.records if "image_" in record.getMessage()]
    assert len(problems) <= 21 and len(logged) <= 21
    assert f"{folder}/image_00000.jpg: " in problems[0]
    assert problems[-1] == f"{folder}: 480 more entries skipped like those above"
    assert server.models == {"fraud": [1]}


@pytest.mark.parametrize("links", [{"3": "3"}, {"3": "4", "4": "3"}], ids=["to itself", "two links in a ring"])
def test_a_version_folder_that_is_a_link_loop_is_reported_as_one_and_the_others_served(
    repository: Path, make_server: ServerFactory, links: dict[str, str]
) -> None:
    """``models/fraud/3 -> 3`` (an ``ln -sfn`` run twice, a deploy script's typo) was reported as "a symbolic
    link to 3, which does not exist (restore it, or remove the link)": 3 was right there, and people went
    looking for a deleted release."""
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    for name, target in links.items():
        os.symlink(target, repository / "fraud" / name)
    server = make_server(repository, follow_symlinks=True)
    assert server.models == {"fraud": [2]}
    problems = "\n".join(server.refresh())
    for name in links:
        assert f"{repository / 'fraud' / name}: a symbolic link loop" in problems
    assert "does not exist" not in problems
    assert server.models == {"fraud": [2]}


@pytest.mark.parametrize("follow_symlinks", [True, False])
def test_loading_a_version_whose_folder_is_a_link_loop_says_why_it_is_not_there(
    repository: Path, make_server: ServerFactory, follow_symlinks: bool
) -> None:
    """``server.load("fraud", version=3)`` answered "model 'fraud' has no version 3 in the repository" while
    ``models/fraud/3`` was right there: what kept it out (a link loop, a link refused) was in the log only."""
    save_model(build_scale_model(2.0), repository, "fraud", 2)
    os.symlink("3", repository / "fraud" / "3")
    server = make_server(repository, follow_symlinks=follow_symlinks)
    why = "a symbolic link loop" if follow_symlinks else "symbolic links are refused"
    with pytest.raises(inprocserve.ModelNotFoundError, match=f"has no version 3 in the repository .*{why}"):
        server.load("fraud", version=3)
    assert server.models == {"fraud": [2]}


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        ("a link, refused", "the model folder is a symbolic link; symbolic links are refused; copy the files in"),
        ("a link to nothing, links followed", "a symbolic link to "),
        ("a file", "not a model folder (expected <model>/<version>/model.onnx)"),
    ],
)
def test_loading_a_model_whose_folder_the_scan_refused_says_why_not_that_there_is_no_folder(
    tmp_path: Path, repository: Path, make_server: ServerFactory, entry: str, why: str
) -> None:
    """``models/linked -> ../elsewhere/linked`` on a server that refuses links: ``server.load("linked")`` said
    "there is no folder .../models/linked", and people looked for a folder that was right there, refused."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    save_model(build_scale_model(2.0), tmp_path / "elsewhere", "linked", 1)
    folder = repository / "linked"
    if entry == "a link, refused":
        os.symlink("../elsewhere/linked", folder)
    elif entry == "a link to nothing, links followed":
        os.symlink("../elsewhere/gone", folder)
    else:
        folder.write_bytes(b"notes")
    server = make_server(repository, follow_symlinks="followed" in entry, control_interval_s=None)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.load("linked")
    message = str(caught.value)
    assert message.startswith(f"model 'linked' cannot be loaded ({folder}: "), message
    assert why in message and "there is no folder" not in message, message
    assert server.models == {"fraud": [1]}


def test_loading_a_model_whose_folder_is_a_link_loop_says_to_point_it_at_a_model_folder(
    repository: Path, make_server: ServerFactory
) -> None:
    """``models/linked -> linked`` with links followed: the load's error (and the scan's problem) said "point it
    at a version folder", where a model's entry takes a model folder (``<model>/<version>/model.onnx``)."""
    save_model(build_scale_model(2.0), repository, "fraud", 1)
    os.symlink("linked", repository / "linked")
    server = make_server(repository, follow_symlinks=True, control_interval_s=None)
    with pytest.raises(inprocserve.ModelNotFoundError) as caught:
        server.load("linked")
    message = str(caught.value)
    assert f"{repository / 'linked'}: a symbolic link loop" in message, message
    assert "point it at a model folder, or remove the link" in message and "version folder" not in message, message
    assert "point it at a model folder" in "\n".join(server.refresh())
    assert server.models == {"fraud": [1]}
