"""The plug-ins' seam: the Flask and Django plug-ins import no private module of the core, and what they use
instead (``inprocserve.web``'s start-up and message helpers) works for a team's own plug-in."""

from __future__ import annotations

import ast
import os
from pathlib import Path

import pytest

import inprocserve
from inprocserve import web
from inprocserve.testing import build_scale_model, save_model

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted((ROOT / "integrations").glob("*/src/**/*.py"))


def private_imports(source: str) -> list[str]:
    """The private modules of the core that ``source`` imports (``inprocserve._x``, ``from inprocserve import
    _x``, ``from inprocserve.v2._codec import ...``), each with its line."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "inprocserve" and any(part.startswith("_") for part in parts[1:]):
                found.append(f"line {node.lineno}: {module}")
    return found


def test_the_plugins_import_only_public_names_of_the_core() -> None:
    """A team's own plug-in (FastAPI, a task queue's workers) has the seam the Flask and Django plug-ins have:
    ``inprocserve``, ``inprocserve.web`` and ``inprocserve.v2``, documented and kept across releases."""
    source = (  # (every form of a private import is found: the scan can fail)
        "import inprocserve._brief\n"
        "from inprocserve._prefork import check_at_start\n"
        "from inprocserve import _close_match, web\n"
        "def f():\n    from inprocserve.v2._codec import Limits\n"
        "import inprocserve\nfrom inprocserve import v2\nfrom . import _registration\n"
    )
    assert private_imports(source) == [
        "line 1: inprocserve._brief",
        "line 2: inprocserve._prefork",
        "line 2: inprocserve._prefork.check_at_start",
        "line 3: inprocserve._close_match",
        "line 5: inprocserve.v2._codec",
        "line 5: inprocserve.v2._codec.Limits",
    ]
    assert len(PLUGIN_SOURCES) > 10  # (both plug-ins' sources were found)
    found = {str(path.relative_to(ROOT)): private_imports(path.read_text(encoding="utf-8")) for path in PLUGIN_SOURCES}
    assert {path: imports for path, imports in found.items() if imports} == {}


def test_every_public_helper_is_typed_and_documented() -> None:
    seam = {"brief", "check_repository_at_start", "close_match", "refuse_at_start", "replace_link_advice"}
    seam |= {"replacement_worker", "repository_layout", "RepositoryLayout", "status_page_unauthorized"}
    assert seam <= set(web.__all__)
    for name in web.__all__:
        value = getattr(web, name)
        if callable(value):
            assert (value.__doc__ or "").strip(), name
            if not isinstance(value, type):
                assert "return" in value.__annotations__, name


def test_status_page_unauthorized_says_how_to_send_the_token() -> None:
    status, text, headers = web.status_page_unauthorized()
    assert status == 401
    assert "Authorization: Bearer <token>" in text and "query string" in text
    assert headers["WWW-Authenticate"].startswith("Basic realm=")
    assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == inprocserve.STATUS_PAGE_CSP


def test_repository_layout_lists_models_and_what_a_server_skips(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "other", 1)
    (repository / "notes.txt").write_text("stray")
    os.symlink(repository / "scale", repository / "linked")
    layout = web.repository_layout(repository)
    assert layout.models == ("other", "scale")
    assert any("notes.txt" in problem for problem in layout.problems)
    (link,) = [problem for problem in layout.problems if "linked" in problem]
    assert link.endswith("pass follow_symlinks=True to the Server")
    assert web.replace_link_advice(link, "set MY_FOLLOW_LINKS = True").endswith("or set MY_FOLLOW_LINKS = True")
    assert web.replace_link_advice("notes.txt: not a model folder", "x") == "notes.txt: not a model folder"
    assert web.repository_layout(str(repository), follow_symlinks=True).models == ("linked", "other", "scale")
    with pytest.raises(inprocserve.ConfigurationError, match="is not a directory"):
        web.repository_layout(tmp_path / "missing")


def test_the_start_up_check_refuses_a_missing_repository_outside_a_replacement_worker(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "notes.txt").write_text("stray")
    assert web.replacement_worker() is None  # (a test process: no gunicorn worker)
    problems = web.check_repository_at_start(repository)
    assert any("notes.txt" in problem for problem in problems)
    with pytest.raises(inprocserve.ConfigurationError, match="is not a directory"):
        web.check_repository_at_start(tmp_path / "missing")
    error = inprocserve.ConfigurationError("the repository is gone")
    with pytest.raises(inprocserve.ConfigurationError, match="the repository is gone"):
        web.refuse_at_start(error, repository=tmp_path / "missing")


def test_message_helpers() -> None:
    assert web.brief("x" * 10_000) == repr("x" * 64) + "...(10000 characters)"
    assert web.brief([1, 2]) == "[1, 2]"
    assert web.close_match("REPOSITROY", ["REPOSITORY", "EAGER"]) == "REPOSITORY"
    assert web.close_match("x" * 1_000_000, ["REPOSITORY"]) is None
    assert web.close_match("TIMEOUT", ["DEFAULT_TIMEOUT_S"], cutoff=0.8) is None
