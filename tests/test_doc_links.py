"""Every relative link of the documents a new team reads resolves: the file exists, and an anchor names a
heading of the page it points to (as GitHub spells a heading's anchor).

A renamed heading or a moved page otherwise breaks links silently, and the reader lands at the top of a long
page (or on GitHub's 404) in the middle of following a step. And what the documents' commands write into a
clone stays out of ``git status``.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = sorted(
    path.relative_to(ROOT).as_posix()
    for pattern in ("README.md", "docs/*.md", "examples/README.md", "examples/*/README*.md", "integrations/*/README.md")
    for path in ROOT.glob(pattern)
)
FENCED = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def anchors(page: Path) -> set[str]:
    """GitHub's anchors of ``page``'s headings (lower case, punctuation dropped, spaces to hyphens, ``-1``,
    ``-2`` ... for repeats), plus explicit ``<a id=...>``/``<a name=...>`` targets."""
    found: set[str] = set()
    text = FENCED.sub("", page.read_text())
    for line in text.splitlines():
        found.update(re.findall(r"<a (?:name|id)=\"([^\"]+)\"", line))
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", re.sub(r"[`*]", "", heading.group(1)).strip().lower()).replace(" ", "-")
        unique, repeat = slug, 0
        while unique in found:
            repeat += 1
            unique = f"{slug}-{repeat}"
        found.add(unique)
    return found


def test_the_documents_are_found() -> None:
    assert {"README.md", "docs/quickstart.md", "examples/README.md", "examples/queue_consumer/README.md"} <= set(
        DOCUMENTS
    )


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_and_anchor_resolves(document: str) -> None:
    page = ROOT / document
    broken = []
    for target in LINK.findall(FENCED.sub("", page.read_text())):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked (no network here)
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path) if path else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}: no heading with anchor #{anchor} in {linked.relative_to(ROOT)}")
    assert broken == [], f"{document}: {broken}"


@pytest.mark.parametrize(
    "written",
    [
        "models/fraud/1/model.onnx",  # README's and the quickstart's commands, run in the clone's root
        "examples/flask_fraud/models/fraud/1/model.onnx",  # examples/flask_fraud/app.py's own steps
    ],
)
def test_the_models_the_documents_commands_write_into_a_clone_are_ignored_by_git(written: str) -> None:
    """``cd examples/flask_fraud && python build_models.py`` left its models untracked, one
    ``git add -A`` away from a commit."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git clone")
    check = subprocess.run(["git", "check-ignore", "-q", "--no-index", written], cwd=ROOT, check=False)
    assert check.returncode == 0, f"{written} is not ignored: add its folder to .gitignore"
