"""The CLI's advice about symbolic links it refuses names its own option, not the Server's argument (a Server's
user is told ``follow_symlinks=True``; a user of ``python -m inprocserve validate`` was told the same)."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from inprocserve.__main__ import main
from inprocserve.testing import build_mlp_model, save_model


@pytest.fixture
def linked(tmp_path: Path) -> Path:
    """A repository whose model folder ``a``, version folder ``b/1`` and model file ``c/1/model.onnx`` are
    symbolic links to real ones elsewhere."""
    elsewhere, repository = tmp_path / "elsewhere", tmp_path / "models"
    repository.mkdir()
    for name in "abc":
        save_model(build_mlp_model((4, 8, 2)), elsewhere, name, 1)
    (repository / "a").symlink_to(elsewhere / "a")
    (repository / "b").mkdir()
    (repository / "b" / "1").symlink_to(elsewhere / "b" / "1")
    (repository / "c" / "1").mkdir(parents=True)
    (repository / "c" / "1" / "model.onnx").symlink_to(elsewhere / "c" / "1" / "model.onnx")
    return repository


def test_validate_names_its_follow_symlinks_option(linked: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(linked)]) == 1
    lines = [line for line in capsys.readouterr().out.splitlines() if "symbolic link" in line]
    assert len(lines) == 3, lines
    for line in lines:
        assert line.endswith("copy the files in, or pass --follow-symlinks"), line
        assert "follow_symlinks=True" not in line, line

    assert main(["validate", "--json", str(linked)]) == 1
    report = json.loads(capsys.readouterr().out)
    linked_problems = [problem for problem in report["problems"] if "symbolic link" in problem]
    assert len(linked_problems) == 3, report["problems"]
    assert all(problem.endswith("or pass --follow-symlinks") for problem in linked_problems), linked_problems

    # (the advice works: with the option every version loads)
    assert main(["validate", "--follow-symlinks", str(linked)]) == 0, capsys.readouterr()


def test_a_switch_with_no_follow_symlinks_names_the_option_to_leave_out(
    linked: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``switch --no-follow-symlinks`` to a linked version: the refusal says to leave the option out, once."""
    assert main(["switch", "--no-follow-symlinks", str(linked), "b", "1"]) == 1
    error = capsys.readouterr().err
    assert "the version folder is a symbolic link" in error, error
    assert "or leave out --no-follow-symlinks; nothing was written" in error, error
    assert "follow_symlinks=True" not in error and error.count("--no-follow-symlinks") == 1, error

    assert main(["switch", str(linked), "b", "1"]) == 0, capsys.readouterr()


def test_a_path_holding_the_servers_words_is_left_as_it_is(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Only the advice at the end of a problem is the command's own: a repository under a folder named after the
    Server's advice was shown under another path, ``pass --follow-symlinks/models/b/1``."""
    parent = tmp_path / "pass follow_symlinks=True to the Server"
    repository = parent / "models"
    save_model(build_mlp_model((4, 8, 2)), parent / "elsewhere", "b", 1)
    (repository / "b").mkdir(parents=True)
    (repository / "b" / "1").symlink_to(parent / "elsewhere" / "b" / "1")

    assert main(["validate", str(repository)]) == 1
    [line] = [line for line in capsys.readouterr().out.splitlines() if "symbolic link" in line]
    assert line.startswith(f"PROBLEM {repository / 'b' / '1'}: the version folder is a symbolic link"), line
    assert line.endswith("copy the files in, or pass --follow-symlinks"), line

    assert main(["switch", "--no-follow-symlinks", str(repository), "b", "1"]) == 1
    error = capsys.readouterr().err
    assert f"(versions: none): {repository / 'b' / '1'}: the version folder is a symbolic link" in error, error
    assert error.count("--no-follow-symlinks") == 1, error


def test_validate_json_lists_a_load_s_link_refusal_with_the_command_s_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A version refused at load because its external data is reached through a link: the version's ``error``
    named ``--follow-symlinks``, but the same refusal in ``problems`` told the command's user of
    ``Server(..., follow_symlinks=True)``. (That refusal also said nothing of what to do.)"""
    folder = tmp_path / "models" / "m" / "1"
    folder.mkdir(parents=True)
    onnx.save_model(
        build_mlp_model((4, 8, 2)),
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (folder / "weights.bin").rename(folder / "release.bin")
    (folder / "weights.bin").symlink_to("release.bin")

    assert main(["validate", "--json", str(tmp_path / "models")]) == 1
    report = json.loads(capsys.readouterr().out)
    error = report["models"]["m"]["versions"]["1"]["error"]
    assert "through a symbolic link, which is refused; copy the file in, or pass --follow-symlinks" in error, error
    assert report["problems"] == [f"m v1: {error}"], report["problems"]

    assert main(["validate", "--follow-symlinks", str(tmp_path / "models")]) == 0, capsys.readouterr()
