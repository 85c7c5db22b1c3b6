"""A benchmark measures the package of the checkout it is run from, not whichever one the environment has
installed (an editable install of another checkout, shared by several clones)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_benchmark_imports_the_package_of_its_own_checkout(tmp_path: Path) -> None:
    checkout = tmp_path / "clone"
    shutil.copytree(ROOT / "inprocserve", checkout / "inprocserve")
    (checkout / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "_common.py", checkout / "benchmarks" / "_common.py")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    # as `python benchmarks/predict_overhead.py` starts: its folder first on the path, then the environment's
    shown = subprocess.run(
        [sys.executable, "-c", "import _common, inprocserve; print(inprocserve.__file__)"],
        cwd=checkout / "benchmarks",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert Path(shown).resolve() == (checkout / "inprocserve" / "__init__.py").resolve()


def test_a_benchmark_child_runs_the_package_that_pythonpath_names(tmp_path: Path) -> None:
    """What telemetry_overhead.py and telemetry_profile.py do to run a --baseline's package in a child."""
    checkout, other = tmp_path / "clone", tmp_path / "baseline"
    for folder in (checkout, other):
        shutil.copytree(ROOT / "inprocserve", folder / "inprocserve")
    (checkout / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "_common.py", checkout / "benchmarks" / "_common.py")
    shown = subprocess.run(
        [sys.executable, "-c", "import _common, inprocserve; print(inprocserve.__file__)"],
        cwd=checkout / "benchmarks",
        env=dict(os.environ, PYTHONPATH=str(other)),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.strip()
    assert Path(shown).resolve() == (other / "inprocserve" / "__init__.py").resolve()


def test_a_benchmark_imports_the_plug_ins_of_its_own_checkout(tmp_path: Path) -> None:
    """plugin_overhead.py and protocol_overhead.py measure the Flask and Django plug-ins: from a clone they
    measured the environment's (another checkout's plug-ins over this one's package)."""
    checkout = tmp_path / "clone"
    shutil.copytree(ROOT / "inprocserve", checkout / "inprocserve")
    for plugin in ("flask", "django"):
        source = Path("integrations") / plugin / "src" / f"inprocserve_{plugin}"
        shutil.copytree(ROOT / source, checkout / source)
    (checkout / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "_common.py", checkout / "benchmarks" / "_common.py")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            "import _common, inprocserve_flask, inprocserve_django; "
            "print(inprocserve_flask.__file__); print(inprocserve_django.__file__)",
        ],
        cwd=checkout / "benchmarks",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    assert [Path(path).resolve() for path in shown] == [
        (checkout / "integrations" / plugin / "src" / f"inprocserve_{plugin}" / "__init__.py").resolve()
        for plugin in ("flask", "django")
    ]
