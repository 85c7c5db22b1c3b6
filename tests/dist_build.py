"""Build the three distributions into one folder and check that they agree.

``make dist`` runs this file; ``tests/test_dist.py`` imports it. Each distribution is built with the
``build`` package in an isolated build environment holding only its build requirements: sdist first, then
the wheel built from that sdist, so a file missing from the sdist breaks the build here rather than for a
user. Distributions that name the same build requirements share one environment (``python -m build``
made a fresh one for every sdist and wheel: six environments, each with its own pip install of hatchling,
took 15-20 s of the test's 40-50 s on a 2-core machine).
"""

from __future__ import annotations

import email.parser
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

from build import ProjectBuilder
from build.env import DefaultIsolatedEnv

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = {
    "inprocserve": ROOT,
    "inprocserve-flask": ROOT / "integrations" / "flask",
    "inprocserve-django": ROOT / "integrations" / "django",
}
"""Distribution name -> the folder holding its pyproject.toml."""
PACKAGES = {
    "inprocserve": ROOT / "inprocserve",
    "inprocserve-flask": ROOT / "integrations" / "flask" / "src" / "inprocserve_flask",
    "inprocserve-django": ROOT / "integrations" / "django" / "src" / "inprocserve_django",
}
"""Distribution name -> the source folder of the package its wheel installs."""


def build_all(outdir: Path) -> None:
    """Build an sdist of every distribution into ``outdir``, and a wheel from each sdist.

    Raises:
        build.BuildException: a build failed (the backend's output is on stderr).
        build.env.FailedProcessError: a build environment could not be made (pip's output is on stderr).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    for requires, folders in _by_build_requirements(PROJECTS.values()).items():
        with DefaultIsolatedEnv() as env:
            env.install(requires)
            for folder in folders:
                _build_via_sdist(env, folder, outdir)


def _by_build_requirements(folders: Iterable[Path]) -> dict[frozenset[str], list[Path]]:
    """The project folders grouped by the build requirements their pyproject.toml names."""
    groups: dict[frozenset[str], list[Path]] = {}
    for folder in folders:
        requires = frozenset(ProjectBuilder(folder).build_system_requires)
        groups.setdefault(requires, []).append(folder)
    return groups


def _build_via_sdist(env: DefaultIsolatedEnv, folder: Path, outdir: Path) -> None:
    """Build ``folder``'s sdist in ``env``, then its wheel from that sdist unpacked, as ``python -m build``."""
    sdist = Path(_build_in(env, folder, "sdist", outdir))
    # (the "data" filter: what Python 3.14 applies by default, and 3.12 warns of when it is not named)
    safely = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    with tempfile.TemporaryDirectory(prefix="sdist-") as unpacked, tarfile.open(sdist) as archive:
        archive.extractall(unpacked, **safely)  # type: ignore[arg-type]
        _build_in(env, Path(unpacked) / sdist.name.removesuffix(".tar.gz"), "wheel", outdir)


def _build_in(env: DefaultIsolatedEnv, source: Path, distribution: Literal["sdist", "wheel"], outdir: Path) -> str:
    """Build one distribution of ``source`` in ``env``, installing first what its backend asks for (as
    ``python -m build`` does; hatchling asks for nothing more)."""
    builder = ProjectBuilder.from_isolated_env(env, source)
    env.install(builder.get_requires_for_build(distribution))
    return builder.build(distribution, outdir)


def wheel_metadata(wheel: Path) -> email.message.Message:
    """The ``METADATA`` of a wheel (core metadata, RFC 822 style)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def _package_files(package: Path) -> set[str]:
    """The files of a package's source folder, as wheel paths (``inprocserve/v2.py``), less compiled ones."""
    return {
        path.relative_to(package.parent).as_posix()
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


def _wheel_files(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as archive:
        return set(archive.namelist())


def check(outdir: Path) -> str:
    """Check ``outdir`` holds one wheel and one sdist per distribution, all of one version; return it.

    Also checks that each wheel holds every file of its package's source folder (a module left out of the
    sdist imports in the tree and fails once installed), and what a package index shows: a Markdown readme,
    the license expression and file, the Python requirement, classifiers, and that each integration requires
    at least its own core version.

    Raises:
        ValueError: what is wrong, one message per problem.
    """
    problems: list[str] = []
    versions: dict[str, str] = {}
    for name in PROJECTS:
        stem = name.replace("-", "_")
        wheels = sorted(outdir.glob(f"{stem}-*-py3-none-any.whl"))
        sdists = sorted(outdir.glob(f"{stem}-*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            problems.append(f"{name}: expected one wheel and one sdist in {outdir}, found {wheels + sdists}")
            continue
        metadata = wheel_metadata(wheels[0])
        version = str(metadata["Version"])
        versions[name] = version
        if sdists[0].name != f"{stem}-{version}.tar.gz":
            problems.append(f"{name}: sdist {sdists[0].name} does not match the wheel's version {version}")
        with tarfile.open(sdists[0]) as archive:
            if not any(member.endswith("/LICENSE") for member in archive.getnames()):
                problems.append(f"{name}: the sdist has no LICENSE file")
        expected = {
            "Description-Content-Type": "text/markdown",
            "License-Expression": "Apache-2.0",
            "Requires-Python": ">=3.11",
        }
        for field, value in expected.items():
            if metadata[field] != value:
                problems.append(f"{name}: {field} is {metadata[field]!r}, expected {value!r}")
        missing = sorted(_package_files(PACKAGES[name]) - _wheel_files(wheels[0]))
        if missing:
            problems.append(f"{name}: the wheel lacks {', '.join(missing)}")
        if "License-File" not in metadata:
            problems.append(f"{name}: the wheel carries no License-File")
        if len(metadata.get_payload() or "") < 200:
            problems.append(f"{name}: the long description (README) is missing or short")
        if not metadata.get_all("Classifier"):
            problems.append(f"{name}: no classifiers")
        if name != "inprocserve":
            requires = metadata.get_all("Requires-Dist") or []
            core = [r for r in requires if r.replace(" ", "").startswith("inprocserve>=")]
            if core != [f"inprocserve>={version}"]:
                problems.append(f"{name}: requires {core}, expected ['inprocserve>={version}'] (lockstep releases)")
    if len(set(versions.values())) > 1:
        problems.append(f"the distributions disagree on the version: {versions}")
    if problems:
        raise ValueError("\n".join(problems))
    return next(iter(versions.values()))


def main(argv: list[str]) -> int:
    outdir = Path(argv[0]) if argv else ROOT / "dist"
    build_all(outdir)
    try:
        version = check(outdir)
    except ValueError as exc:
        print(f"make dist: {exc}", file=sys.stderr)
        return 1
    print(f"built {', '.join(PROJECTS)} {version} into {outdir}:")
    for path in sorted(outdir.iterdir()):
        print(f"  {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
