"""The plug-ins' seam: the Flask and Django plug-ins import no private module of the core, and what they use
instead (``inprocserve.web``'s start-up and message helpers) works for a team's own plug-in."""

from __future__ import annotations

import ast
import importlib.util
import inspect
import os
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

import inprocserve
from inprocserve import web
from inprocserve.testing import build_scale_model, save_model

ROOT = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = sorted((ROOT / "integrations").glob("*/src/**/*.py"))


def private_uses(source: str) -> list[str]:
    """The private names of the core that ``source`` reaches, each with its line: imported (``import inprocserve._x``,
    ``from inprocserve import _x``, ``from inprocserve.v2._codec import ...``), read as an attribute of a module of
    the core however that module was imported (``inprocserve._x.y`` after ``import inprocserve``, ``web._answers``,
    ``w._y`` after ``import inprocserve.web as w``), or named in a string (``importlib.import_module(
    "inprocserve._x")``, ``getattr(web, "_x")``). Dunders (``inprocserve.__version__``) are public."""
    tree = ast.parse(source)
    bound: dict[str, str] = {}  # a name the source binds to a module (or object) of the core -> its dotted path
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.partition(".")[0] == "inprocserve":  # (import a.b binds a; import a.b as c, c to a.b)
                    bound[alias.asname or "inprocserve"] = alias.name if alias.asname else "inprocserve"
                if _private(alias.name):
                    found.append(f"line {node.lineno}: {alias.name}")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            if node.module.partition(".")[0] == "inprocserve":
                bound.update({alias.asname or alias.name: name for alias, name in zip(node.names, names, strict=True)})
            found += [f"line {node.lineno}: {name}" for name in [node.module, *names] if _private(name)]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private_part(node.attr):
            owner = _dotted(node.value, bound)  # (the first private step of a chain only: each use reported once)
            if owner is not None and not _private(owner):
                found.append(f"line {node.lineno}: {owner}.{node.attr}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _NAME_READERS:
            if len(node.args) > 1 and isinstance(node.args[1], ast.Constant) and isinstance(node.args[1].value, str):
                owner = _dotted(node.args[0], bound)
                if owner is not None and _private_part(node.args[1].value):
                    found.append(f"line {node.lineno}: {owner}.{node.args[1].value}")
        elif isinstance(node, ast.Call) and _called(node.func) in _IMPORTERS:
            found += [f"line {node.lineno}: {name}" for name in _imported(node) if _private(name)]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _DOTTED.fullmatch(node.value):
            if _private(node.value):
                found.append(f"line {node.lineno}: {node.value}")
    return sorted(set(found), key=lambda line: (int(line.split(":")[0].removeprefix("line ")), line))


_NAME_READERS = frozenset({"getattr", "hasattr", "setattr", "delattr"})
_IMPORTERS = frozenset({"import_module", "__import__"})


def _called(func: ast.expr) -> str | None:
    """The name a call calls (``import_module`` of ``importlib.import_module(...)`` too)."""
    return func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None


def _imported(call: ast.Call) -> list[str]:
    """The modules an ``import_module`` or ``__import__`` call with constant strings imports, whole: a relative name
    resolved against its package (``import_module("._x", "inprocserve")``), and ``__import__``'s ``fromlist``
    (``__import__("inprocserve", fromlist=["_x"])``), which the string constants alone do not spell."""
    strings = [arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else None for arg in call.args]
    keywords = {keyword.arg: keyword.value for keyword in call.keywords}
    name = strings[0] if strings else None
    if name is None:
        return []
    if _called(call.func) == "import_module":
        package = strings[1] if len(strings) > 1 else None
        given = keywords.get("package")
        if isinstance(given, ast.Constant) and isinstance(given.value, str):
            package = given.value
        if name.startswith(".") and package is not None:
            return [importlib.util.resolve_name(name, package)]
        return [name]
    fromlist = call.args[3] if len(call.args) > 3 else keywords.get("fromlist")
    parts = fromlist.elts if isinstance(fromlist, ast.List | ast.Tuple) else []
    return [name] + [
        f"{name}.{part.value}" for part in parts if isinstance(part, ast.Constant) and isinstance(part.value, str)
    ]


_DOTTED = re.compile(r"inprocserve(?:\.[A-Za-z_]\w*)+")


def _private_part(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _private(dotted: str) -> bool:
    """Whether ``dotted`` is a name of the core that no plug-in may use (a part after ``inprocserve`` is private)."""
    parts = dotted.split(".")
    return parts[0] == "inprocserve" and any(_private_part(part) for part in parts[1:])


def _dotted(node: ast.expr, bound: Mapping[str, str]) -> str | None:
    """The dotted path of the core that ``node`` names (``web.ANSWER_HEADERS``: ``inprocserve.web.ANSWER_HEADERS``),
    or None for an expression that names none (a local name, a call's result)."""
    if isinstance(node, ast.Name):
        return bound.get(node.id)
    if isinstance(node, ast.Attribute):
        owner = _dotted(node.value, bound)
        return None if owner is None else f"{owner}.{node.attr}"
    return None


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
    assert private_uses(source) == [
        "line 1: inprocserve._brief",
        "line 2: inprocserve._prefork",
        "line 2: inprocserve._prefork.check_at_start",
        "line 3: inprocserve._close_match",
        "line 5: inprocserve.v2._codec",
        "line 5: inprocserve.v2._codec.Limits",
    ]


def test_the_scan_finds_private_names_read_as_attributes_of_the_core_s_modules() -> None:
    """A private module reached through a public one imports nothing private, and was missed by a scan of imports."""
    source = (
        "import inprocserve\n"
        "import inprocserve.web as w\n"
        "from inprocserve import web, v2 as protocol\n"
        "import importlib\n"
        "inprocserve._brief.brief(1)\n"  # 5
        "web._answers.ANSWER_HEADERS\n"  # 6
        "w._control_unknown({})\n"  # 7
        "protocol._codec.Limits.x\n"  # 8
        "inprocserve.web._pages._HTML\n"  # 9 (the first private step only)
        "importlib.import_module('inprocserve._prefork')\n"  # 10
        "getattr(web, '_process')\n"  # 11
        "importlib.import_module('._registry', 'inprocserve')\n"  # 12 (relative, resolved against its package)
        "__import__('inprocserve.v2', fromlist=['_codec'])\n"  # 13
        "def f(web):\n    return inprocserve.__version__, web.ANSWER_HEADERS, local._x, inprocserve.web.close_match\n"
        "'inprocserve.web'\n"
    )
    assert private_uses(source) == [
        "line 5: inprocserve._brief",
        "line 6: inprocserve.web._answers",
        "line 7: inprocserve.web._control_unknown",
        "line 8: inprocserve.v2._codec",
        "line 9: inprocserve.web._pages",
        "line 10: inprocserve._prefork",
        "line 11: inprocserve.web._process",
        "line 12: inprocserve._registry",
        "line 13: inprocserve.v2._codec",
    ]


def test_the_plugins_use_no_private_name_of_the_core() -> None:
    assert len(PLUGIN_SOURCES) > 10  # (both plug-ins' sources were found)
    sources = {str(path.relative_to(ROOT)): path.read_text(encoding="utf-8") for path in PLUGIN_SOURCES}
    found = {path: private_uses(source) for path, source in sources.items()}
    assert {path: uses for path, uses in found.items() if uses} == {}


def test_every_public_helper_is_typed_and_documented() -> None:
    seam = {"short_repr", "check_repository_at_start", "close_match", "refuse_at_start", "replace_link_advice"}
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


def test_the_helpers_that_build_the_server_name_its_factory() -> None:
    """They take a callable that returns the server (a holder's ``get``), not a server: the parameter says so."""
    for helper in (web.probe_readiness, web.status_page, web.server_or_none):
        assert next(iter(inspect.signature(helper).parameters)) == "server_factory", helper.__name__

    def unbuildable() -> inprocserve.Server:
        raise inprocserve.ConfigurationError("no repository")

    assert web.probe_readiness(server_factory=unbuildable).body()["error"] == web.NO_SERVER
    status, _, _ = web.status_page(server_factory=unbuildable)
    assert status == 503
    assert web.server_or_none(server_factory=unbuildable, asked="a test") is None


def test_message_helpers() -> None:
    assert web.short_repr("x" * 10_000) == repr("x" * 64) + "...(10000 characters)"
    assert web.short_repr([1, 2]) == "[1, 2]"
    assert not hasattr(web, "brief")  # (named for what it does; no alias: never in a released doc)
    assert web.close_match("REPOSITROY", ["REPOSITORY", "EAGER"]) == "REPOSITORY"
    assert web.close_match("x" * 1_000_000, ["REPOSITORY"]) is None
    assert web.close_match("TIMEOUT", ["DEFAULT_TIMEOUT_S"], cutoff=0.8) is None
