"""A benchmark measures the package of the checkout it is run from, not whichever one the environment has
installed (an editable install of another checkout, shared by several clones)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PLUGINS = ("flask", "django")


def _checkout(folder: Path, *, plugins: bool = False) -> Path:
    """A checkout's package (and its plug-ins) and ``benchmarks/_common.py``, copied into ``folder``."""
    shutil.copytree(ROOT / "inprocserve", folder / "inprocserve")
    for plugin in PLUGINS if plugins else ():
        source = Path("integrations") / plugin / "src" / f"inprocserve_{plugin}"
        shutil.copytree(ROOT / source, folder / source)
    (folder / "benchmarks").mkdir()
    shutil.copy(ROOT / "benchmarks" / "_common.py", folder / "benchmarks" / "_common.py")
    return folder


def _imported(checkout: Path, modules: tuple[str, ...], *, pythonpath: Path | None = None) -> list[Path]:
    """The files of ``modules`` as a benchmark of ``checkout`` imports them after ``_common``: started as
    ``python benchmarks/x.py`` starts, its folder first on the path, then the environment's."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    shown = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import _common, {', '.join(modules)}; " + "; ".join(f"print({m}.__file__)" for m in modules),
        ],
        cwd=checkout / "benchmarks",
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout.split()
    return [Path(path).resolve() for path in shown]


def test_a_benchmark_imports_the_package_of_its_own_checkout(tmp_path: Path) -> None:
    checkout = _checkout(tmp_path / "clone")
    assert _imported(checkout, ("inprocserve",)) == [(checkout / "inprocserve" / "__init__.py").resolve()]


def test_a_benchmark_child_runs_the_package_that_pythonpath_names(tmp_path: Path) -> None:
    """What telemetry_overhead.py and telemetry_profile.py do to run a --baseline's package in a child."""
    checkout, other = _checkout(tmp_path / "clone"), tmp_path / "baseline"
    shutil.copytree(ROOT / "inprocserve", other / "inprocserve")
    assert _imported(checkout, ("inprocserve",), pythonpath=other) == [
        (other / "inprocserve" / "__init__.py").resolve()
    ]


def test_a_benchmark_imports_the_plug_ins_of_its_own_checkout(tmp_path: Path) -> None:
    """plugin_overhead.py and protocol_overhead.py measure the Flask and Django plug-ins: from a clone they
    measured the environment's (another checkout's plug-ins over this one's package)."""
    checkout = _checkout(tmp_path / "clone", plugins=True)
    assert _imported(checkout, ("inprocserve_flask", "inprocserve_django")) == [
        (checkout / "integrations" / plugin / "src" / f"inprocserve_{plugin}" / "__init__.py").resolve()
        for plugin in PLUGINS
    ]
