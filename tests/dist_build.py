"""Build the three distributions into one folder and check that they agree.

``make dist`` runs this file; ``tests/test_dist.py`` imports it. Each distribution is built with
``python -m build`` (an isolated build environment, sdist first, then the wheel built from that sdist, so
a file missing from the sdist breaks the build here rather than for a user).
"""

from __future__ import annotations

import email.parser
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = {
    "inprocserve": ROOT,
    "inprocserve-flask": ROOT / "integrations" / "flask",
    "inprocserve-django": ROOT / "integrations" / "django",
}
"""Distribution name -> the folder holding its pyproject.toml."""


def build_all(outdir: Path, *, python: str = sys.executable, timeout_s: float = 600) -> None:
    """Build a wheel and an sdist of every distribution into ``outdir``.

    Raises:
        subprocess.CalledProcessError: a build failed (its output is on stderr).
    """
    outdir.mkdir(parents=True, exist_ok=True)
    for project in PROJECTS.values():
        subprocess.run([python, "-m", "build", "--outdir", str(outdir), str(project)], check=True, timeout=timeout_s)


def wheel_metadata(wheel: Path) -> email.message.Message:
    """The ``METADATA`` of a wheel (core metadata, RFC 822 style)."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(archive.read(name).decode())


def check(outdir: Path) -> str:
    """Check ``outdir`` holds one wheel and one sdist per distribution, all of one version; return it.

    Also checks what a package index shows: a Markdown readme, the license expression and file, the
    Python requirement, classifiers, and that each integration requires at least its own core version.

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
