"""Finding models on disk, and refusing unsafe names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import ConfigurationError, ModelNotFoundError
from inprocserve._repository import scan_repository, validate_model_name
from inprocserve.testing import build_scale_model, save_model


def test_scan_finds_models_versions_and_config(repository: Path) -> None:
    save_model(build_scale_model(), repository, "fraud", 1)
    save_model(build_scale_model(), repository, "fraud", 12)
    save_model(build_scale_model(), repository, "churn", 3)
    (repository / "fraud" / "config.toml").write_text("")
    scan = scan_repository(repository)
    assert sorted(scan.models) == ["churn", "fraud"]
    assert sorted(scan.models["fraud"].versions) == [1, 12]
    assert scan.models["fraud"].config_path == repository / "fraud" / "config.toml"
    assert scan.models["churn"].config_path is None
    assert scan.problems == []


def test_malformed_entries_are_skipped_and_reported(repository: Path) -> None:
    save_model(build_scale_model(), repository, "fraud", 1)
    (repository / "fraud" / "latest").mkdir()
    (repository / "fraud" / "007").mkdir()
    (repository / "fraud" / "2").mkdir()  # no model.onnx
    (repository / "fraud" / "notes.txt").write_text("hi")
    (repository / "README").write_text("hi")
    (repository / "empty").mkdir()
    (repository / ".git").mkdir()
    scan = scan_repository(repository)
    assert sorted(scan.models["fraud"].versions) == [1]
    text = "\n".join(scan.problems)
    assert "latest: version folders must be positive integers" in text
    assert "007: version folders must be positive integers" in text
    assert "2: missing model.onnx" in text
    assert "notes.txt: unexpected file" in text
    assert "README: not a model folder" in text
    assert "model 'empty' has no version folder" in text
    assert ".git" not in text


def test_only_model_onnx_is_ever_picked_up(repository: Path) -> None:
    version = repository / "fraud" / "1"
    version.mkdir(parents=True)
    (version / "model.pkl").write_bytes(b"\x80\x04not a model")
    (version / "model.pt").write_bytes(b"weights")
    scan = scan_repository(repository)
    assert scan.models["fraud"].versions == {}
    assert any("missing model.onnx" in problem for problem in scan.problems)


def test_a_repository_that_is_not_a_folder_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a directory"):
        scan_repository(tmp_path / "missing")


@pytest.mark.parametrize("name", ["fraud", "fraud-v2", "fraud_model.7", "A1"])
def test_safe_names_pass(name: str) -> None:
    assert validate_model_name(name) == name


@pytest.mark.parametrize(
    "name", ["..", "../etc", "a/../b", "/etc/passwd", "a/b", "a\\b", ".hidden", "", "x" * 200, "fraud\n", "mo del"]
)
def test_path_traversal_and_odd_names_are_refused(name: str) -> None:
    with pytest.raises(ModelNotFoundError, match="invalid model name"):
        validate_model_name(name)


def test_a_huge_name_is_quoted_cut_short() -> None:
    # (an admin URL or a v2 path carries the name: up to the web server's request-line limit, into logs)
    with pytest.raises(ModelNotFoundError, match="invalid model name") as raised:
        validate_model_name("x/" * 50_000)
    assert len(str(raised.value)) < 400 and "(100000 characters)" in str(raised.value)


def test_a_non_string_name_is_api_misuse() -> None:
    with pytest.raises(TypeError):
        validate_model_name(3)


@pytest.mark.parametrize("follow_symlinks", [True, False])
def test_a_link_whose_release_was_deleted_is_reported_as_such(tmp_path: Path, follow_symlinks: bool) -> None:
    repository, releases = tmp_path / "models", tmp_path / "releases"
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    save_model(build_scale_model(3.0), releases, "fraud", 3)
    save_model(build_scale_model(1.0), releases, "churn", 1)
    os.symlink(releases / "fraud" / "3", repository / "fraud" / "3")  # versions deployed as links to releases
    os.symlink(releases / "churn", repository / "churn")
    with inprocserve.Server(repository, follow_symlinks=follow_symlinks, control_interval_s=None) as server:
        shutil.rmtree(releases)  # a clean-up deletes the releases the links point to
        problems = server.refresh()
        assert server.predict("fraud", np.ones((1, 4), np.float32)).version == 1
    assert not any("unexpected file" in p or "not a model folder" in p for p in problems), problems
    if follow_symlinks:
        assert sorted(problems) == [
            f"{repository / 'churn'}: a symbolic link to {releases / 'churn'}, which does not exist (restore it, "
            "or remove the link)",
            f"{repository / 'fraud' / '3'}: a symbolic link to {releases / 'fraud' / '3'}, which does not exist "
            "(restore it, or remove the link)",
        ]
    else:
        assert len(problems) == 2 and all("symbolic link" in p for p in problems), problems


@pytest.mark.parametrize("target", ["a deleted release", "itself"])
def test_a_model_file_that_is_a_dangling_link_is_no_model_file_and_says_why(tmp_path: Path, target: str) -> None:
    """``models/fraud/3/model.onnx -> /releases/fraud-3/model.onnx`` after a clean-up deleted the release: the
    version was skipped as "missing model.onnx", and people looked for a file that was right there, as a link."""
    repository, release = tmp_path / "models", tmp_path / "releases" / "fraud-3"
    save_model(build_scale_model(1.0), repository, "fraud", 1)
    link = repository / "fraud" / "3" / "model.onnx"
    link.parent.mkdir()
    if target == "itself":  # (ln -sf run in the version folder with its own name)
        os.symlink("model.onnx", link)
        expected = f"{link}: a symbolic link loop (it points to model.onnx, which leads back to it); point it at "
    else:
        os.symlink(release / "model.onnx", link)
        expected = f"{link}: a symbolic link to {release / 'model.onnx'}, which does not exist (restore it, or "
    with inprocserve.Server(repository, follow_symlinks=True, control_interval_s=None) as server:
        problems = server.refresh()
        assert server.models == {"fraud": [1]}
        assert server.predict("fraud", np.ones((1, 4), np.float32)).version == 1
    assert [problem for problem in problems if problem.startswith(expected)], problems
    assert not any("missing model.onnx" in problem for problem in problems), problems
