"""Finding models on disk, and refusing unsafe names."""

from __future__ import annotations

from pathlib import Path

import pytest

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


def test_a_non_string_name_is_api_misuse() -> None:
    with pytest.raises(TypeError):
        validate_model_name(3)
