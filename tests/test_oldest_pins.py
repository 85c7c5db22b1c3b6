"""requirements/oldest.txt, which `make oldest` installs, pins the floors the three packages claim.

A floor nobody installs is a floor nobody tested: opentelemetry-api>=1.23 was claimed while the library
called an argument that came in 1.30, and `import inprocserve` raised TypeError on 1.23 to 1.29. These checks
keep the pins and the floors of pyproject.toml equal, so raising one without the other fails here.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
PROJECTS = [ROOT, ROOT / "integrations" / "flask", ROOT / "integrations" / "django"]
# Extras whose floors the oldest venv installs (dev and bench hold tools, not claims to users).
EXTRAS = {"otel", "prometheus", "openfeature", "parquet", "remote", "testing", "quantize", "eager"}
# Pins above their floor, with why: the floor itself is met by them.
ABOVE_FLOOR = {
    "numpy": "onnxruntime 1.17.3 (its floor) requires numpy>=1.24.2",
    "django": "the 4.2 LTS series at its newest patch: no one should run an unpatched 4.2.0",
    "opentelemetry-api": "the extras' opentelemetry-sdk 1.31 requires opentelemetry-api 1.31 exactly",
}


def _floors() -> dict[str, set[Version]]:
    floors: dict[str, set[Version]] = {}
    for project_folder in PROJECTS:
        project = tomllib.loads((project_folder / "pyproject.toml").read_text())["project"]
        requirements = list(project["dependencies"])
        for extra, listed in project.get("optional-dependencies", {}).items():
            if extra in EXTRAS:
                requirements += listed
        for line in requirements:
            requirement = Requirement(line)
            if requirement.name == "inprocserve":
                continue
            for spec in requirement.specifier:
                if spec.operator == ">=":
                    floors.setdefault(requirement.name.lower(), set()).add(Version(spec.version))
    return floors


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            pins[requirement.name.lower()] = Version(spec.version)
    return pins


def test_every_package_floor_is_pinned_at_that_floor_in_the_oldest_venv() -> None:
    floors, pins = _floors(), _pins()
    assert floors, "no floors read from pyproject.toml"
    for name, versions in floors.items():
        assert len(versions) == 1, f"{name}: the packages claim different floors {sorted(map(str, versions))}"
        (floor,) = versions
        assert name in pins, f"{name}>={floor} is claimed but requirements/oldest.txt does not pin it"
        if name in ABOVE_FLOOR:
            assert pins[name] >= floor, (name, ABOVE_FLOOR[name])
        else:
            assert pins[name] == floor, f"{name}: pinned {pins[name]} but the floor is {floor}; change both"


def test_the_oldest_venv_is_made_with_the_oldest_python_the_packages_claim() -> None:
    # numpy 1.24 (the floor) has no wheel for Python 3.12 or later and does not build there (no distutils):
    # made with a python3 that is 3.12 or newer, `make oldest` failed in pip before running any test.
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor.startswith(">="), floor
    made_with = re.search(r"^OLDEST_PYTHON \?= python(\S+)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert made_with is not None, "the Makefile names no OLDEST_PYTHON for `make oldest`"
    assert made_with.group(1) == floor.removeprefix(">="), (made_with.group(1), floor)
    venv = re.search(r"^\t(\S+) -m venv \$\(OLDEST_VENV\)$", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert venv is not None and venv.group(1) == "$(OLDEST_PYTHON)", venv
