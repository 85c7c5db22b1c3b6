"""The three distributions: one version, and wheels that install into a fresh venv and serve predictions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from . import dist_build

INTEGRATIONS = {name: folder for name, folder in dist_build.PROJECTS.items() if name != "inprocserve"}


@pytest.mark.parametrize("name", sorted(INTEGRATIONS))
def test_integrations_are_versioned_in_lockstep_with_the_core(name: str) -> None:
    project = tomllib.loads((INTEGRATIONS[name] / "pyproject.toml").read_text())["project"]
    assert project["name"] == name
    assert project["version"] == inprocserve.__version__, "bump all three versions together"
    core = [r for r in project["dependencies"] if r.replace(" ", "").startswith("inprocserve>=")]
    assert core == [f"inprocserve>={inprocserve.__version__}"], "an integration requires its own core version"


def test_the_three_distributions_claim_the_pythons_make_pythons_runs() -> None:
    # `make test` runs the suite on one Python (3.11 here), `make pythons` on 3.12 and 3.13: the classifiers
    # say those, from requires-python's floor up, in all three distributions alike
    makefile = (dist_build.ROOT / "Makefile").read_text()
    assert "PYTHON312 ?=" in makefile and "PYTHON313 ?=" in makefile
    for name, folder in dist_build.PROJECTS.items():
        project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
        assert project["requires-python"] == ">=3.11", name
        versions = [
            c.rpartition(" :: ")[2]
            for c in project["classifiers"]
            if c.startswith("Programming Language :: Python :: 3.")
        ]
        assert versions == ["3.11", "3.12", "3.13"], name


def test_core_extras_are_named_for_what_they_enable() -> None:
    from inprocserve._extras import EXTRAS

    extras = tomllib.loads((dist_build.ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert {"quantize", "otel", "openfeature"} <= set(extras)
    # onnxruntime is a core dependency: a "gpu" extra would install onnxruntime-gpu beside it (one folder)
    assert "gpu" not in extras
    assert set(EXTRAS) <= set(extras)  # every extra an error message names exists


def test_check_reports_missing_distributions(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected one wheel and one sdist"):
        dist_build.check(tmp_path)


@pytest.mark.dist
@pytest.mark.timeout(1200)
def test_built_wheels_install_in_a_fresh_venv_and_predict(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="building the distributions needs the 'build' package (the dev extra)")
    dist = tmp_path / "dist"
    dist_build.build_all(dist)
    version = dist_build.check(dist)
    assert version == inprocserve.__version__

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    # the three wheels from dist/, named by file as the README does (by project name with --find-links, pip
    # also asks the index for those names, and takes a higher version published there by anyone); their
    # dependencies (numpy, onnxruntime, Flask, Django ...) from the index
    wheels = [str(next(dist.glob(f"{name.replace('-', '_')}-*.whl"))) for name in dist_build.PROJECTS]
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *wheels],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=900, check=False,
    )  # fmt: skip
    assert install.returncode == 0, install.stdout + install.stderr

    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    smoke = subprocess.run(
        [str(python), str(Path(__file__).with_name("dist_smoke.py")), str(repository)],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300, check=False,
    )  # fmt: skip
    assert smoke.returncode == 0, smoke.stderr
    seen = json.loads(smoke.stdout.splitlines()[-1])
    assert seen["core"]["file"].startswith(str(venv)), "the venv's installed copy answered, not the source tree"
    expected = {"y": [[2.0, 4.0, 6.0, 8.0]], "version": 1}
    assert {k: seen["core"][k] for k in expected} == expected
    assert seen["flask"] == {"status": 200, **expected, "ready": True}
    assert seen["django"] == {"status": 200, **expected, "ready": True}

    cli = subprocess.run([str(venv / "bin" / "inprocserve"), "--version"], capture_output=True, text=True, env=env)
    assert cli.stdout.startswith(f"inprocserve {version} (onnxruntime ")
