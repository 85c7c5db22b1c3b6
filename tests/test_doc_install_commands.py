"""Every ``pip install`` the documents show installs inprocserve the way it can be installed today: from a
clone (``./``, ``"./[otel]"``, ``./integrations/flask``) or from the wheels ``make dist`` builds
(``--find-links dist/``). None is published on a package index yet (README, "Install").

``pip install "inprocserve[otel]"``, copied from a page, failed with "No matching distribution found", or
would install whatever someone else publishes under that name. A line that says it is about the published
packages (README's "Once the packages are published ...") is the exception.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    path.relative_to(ROOT).as_posix()
    for pattern in ("README.md", "docs/*.md", "examples/*/README*.md", "integrations/*/README.md")
    for path in ROOT.glob(pattern)
)
FROM_THE_INDEX = re.compile(r"inprocserve(-flask|-django)?(\[[\w,]+\])?([<>=!~].*)?")


def index_installs(document: str) -> list[str]:
    """The ``pip install`` commands of ``document`` that name one of the three distributions by name."""
    found = []
    for number, line in enumerate((ROOT / document).read_text().splitlines(), 1):
        for command in re.finditer(r"pip install ([^`\n#]*)", line):
            if "--find-links" in command.group(1) or "published" in line:
                continue
            if any(FROM_THE_INDEX.fullmatch(word.strip("\"'),.;:")) for word in command.group(1).split()):
                found.append(f"line {number}: {command.group(0).strip()}")
    return found


@pytest.mark.parametrize("document", DOCUMENTS)
def test_no_document_installs_inprocserve_from_a_package_index(document: str) -> None:
    assert index_installs(document) == [], f'{document}: install from a clone, e.g. pip install "./[otel]"'


def test_the_check_sees_an_install_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (tmp_path / "page.md").write_text('```bash\npip install "inprocserve[otel]"  # the SDK\n```\n')
    assert index_installs("page.md") == ['line 2: pip install "inprocserve[otel]"']
