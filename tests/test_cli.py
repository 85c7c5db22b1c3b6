"""``python -m inprocserve inspect`` and ``validate``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from inprocserve.__main__ import main
from inprocserve.testing import build_add_model, build_scale_model, save_model


def test_inspect_prints_the_signature(tmp_path: Path, capsys: object) -> None:
    path = save_model(build_add_model(), tmp_path, "add", 1)
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "a: tensor(float) [batch, 3]" in out
    assert "count: tensor(int64) [batch, 1]" in out
    assert "batchable: yes" in out


def test_inspect_json_and_version_folder(tmp_path: Path, capsys: object) -> None:
    path = save_model(build_scale_model(), tmp_path, "scale", 1)
    assert main(["inspect", "--json", str(path.parent)]) == 0
    data = json.loads(capsys.readouterr().out)  # type: ignore[attr-defined]
    assert data["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": ["batch", 4]}]


def test_inspect_a_broken_file_exits_non_zero(tmp_path: Path, capsys: object) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"nope")
    assert main(["inspect", str(bad)]) == 1
    assert "cannot load" in capsys.readouterr().err  # type: ignore[attr-defined]


def test_validate_a_good_repository(repository: Path, capsys: object) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    save_model(build_scale_model(), repository, "scale", 2)
    assert main(["validate", str(repository)]) == 0
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "OK      scale v1 (not served by the version policy)" in out
    assert "OK      scale v2 (served)" in out
    assert "1 model(s), 0 problem(s)" in out


def test_validate_reports_every_problem(repository: Path) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = -1\n")
    broken = repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"xx")
    (repository / "bad name!").mkdir()
    result = subprocess.run(
        [sys.executable, "-m", "inprocserve", "validate", str(repository)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "FAIL    scale: " in result.stdout and "max_batch_size must be >= 1" in result.stdout
    assert "FAIL    broken v1" in result.stdout
    assert "invalid model name 'bad name!'" in result.stdout


def test_validate_a_missing_repository(tmp_path: Path) -> None:
    assert main(["validate", str(tmp_path / "nowhere")]) == 2


def test_quantize_reports_size_speed_and_accuracy(tmp_path: Path) -> None:
    from inprocserve.testing import build_mlp_model

    source = save_model(build_mlp_model((64, 128, 4), seed=3), tmp_path, "mlp", 1)
    target = tmp_path / "mlp-int8.onnx"
    result = subprocess.run(
        [sys.executable, "-m", "inprocserve", "quantize", str(source), str(target), "--seconds", "0.1", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["bytes_after"] < report["bytes_before"] * 0.5
    assert set(report["speed"]) == {"batch_1", "batch_64"}
    assert report["accuracy"]["y"]["label_agreement"] > 0.8
    assert report["accuracy"]["y"]["max_abs_diff"] < 0.2
    import inprocserve  # the quantized model serves like any other

    with inprocserve.Server() as server:
        server.load("mlp", path=target)
        assert server.predict("mlp", np.ones((2, 64), np.float32))["y"].shape == (2, 4)
