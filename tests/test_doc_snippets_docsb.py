"""The tables, settings and commands of docs/repository.md, rollouts.md, protocol.md, flask.md, django.md,
errors.md and pruning.md, checked against the code they describe (tests/test_doc_snippets.py runs README.md
and quickstart.md; tests/test_doc_snippets_docsa.py the other guides).

These documents are what backend teams copy from, and were checked by hand only. Each test reads the
document as it is, so an edit of either side that breaks the other fails here: a command-line flag, a
config.toml key or a default the text names and the code no longer has, an error class moved in the
hierarchy, an HTTP status the table no longer gives.
"""

from __future__ import annotations

import argparse
import re
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest

import inprocserve
from inprocserve import ModelConfig, v2, web
from inprocserve._cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = (
    "docs/repository.md",
    "docs/rollouts.md",
    "docs/protocol.md",
    "docs/flask.md",
    "docs/django.md",
    "docs/errors.md",
    "docs/pruning.md",
    "examples/queue_consumer/README.md",
    "integrations/flask/README.md",
    "integrations/django/README.md",
)


def text(document: str) -> str:
    return (ROOT / document).read_text()


def table(document: str, header: str) -> list[list[str]]:
    """The rows of the Markdown table whose header line starts with ``header``, as lists of cells."""
    lines = text(document).splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(header)]
    assert len(starts) == 1, f"{document}: {len(starts)} tables start with {header!r}"
    rows: list[list[str]] = []
    for line in lines[starts[0] + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip().strip("|").split(" | ")])
    return rows


def subcommands() -> dict[str, argparse.ArgumentParser]:
    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(actions[0].choices)


# -- commands -------------------------------------------------------------------------------------------


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(document, command, flags) for each ``python -m inprocserve COMMAND ...`` the documents show, in
    code spans and code blocks alike (a block's line ends at its comment)."""
    found = []
    for document in DOCUMENTS:
        for line in text(document).splitlines():
            for match in re.finditer(r"(?:python -m )?inprocserve ([a-z]+)((?: [^`#\s]+)*)", line):
                found.append((document, match.group(1), re.findall(r"(--[a-z][a-z-]*)", match.group(2))))
    return found


def test_every_command_and_flag_the_documents_show_exists() -> None:
    commands = subcommands()
    shown = [(document, name, flags) for document, name, flags in documented_commands() if name in commands]
    assert len(shown) >= 8  # (validate, inspect, status, quantize ... are shown)
    for document, name, flags in shown:
        known = {option for action in commands[name]._actions for option in action.option_strings}
        assert set(flags) <= known, f"{document}: inprocserve {name} has no {set(flags) - known}"


def test_the_flags_the_integrity_section_names_are_the_commands_own() -> None:
    """repository.md: validate follows links only with --follow-symlinks; the fleet commands count linked
    folders unless given --no-follow-symlinks."""
    commands = subcommands()
    words = " ".join(text("docs/repository.md").split())
    assert "validate` follows links only with `--follow-symlinks`" in words
    assert "unless given `--no-follow-symlinks`" in words
    assert "--follow-symlinks" in {o for a in commands["validate"]._actions for o in a.option_strings}
    for fleet in ("switch", "rollback", "canary", "kill", "resume", "reload"):
        options = {o for a in commands[fleet]._actions for o in a.option_strings}
        assert {"--follow-symlinks", "--no-follow-symlinks"} <= options, fleet
        assert commands[fleet].parse_args(["models/", "m", "1", "2"][: _positionals(commands[fleet])]).follow_symlinks


def _positionals(parser: argparse.ArgumentParser) -> int:
    return sum(1 for action in parser._actions if not action.option_strings)


# -- config.toml ----------------------------------------------------------------------------------------


def toml_blocks() -> list[tuple[str, int, str]]:
    found = []
    for document in DOCUMENTS:
        body = text(document)
        for match in re.finditer(r"^ *```toml\n(.*?)^ *```", body, re.MULTILINE | re.DOTALL):
            block = match.group(1)
            found.append((document, body[: match.start()].count("\n") + 1, block))
    return found


@pytest.mark.parametrize("document, line, block", toml_blocks(), ids=lambda value: str(value)[:30])
def test_every_config_toml_block_is_a_valid_config_with_its_commented_keys_too(
    document: str, line: int, block: str
) -> None:
    """Each block builds a ModelConfig (which refuses an unknown key), as written and with its commented-out
    keys and tables (``# seed = 7``, ``# [rollout.variants]``) turned on."""
    uncommented = re.sub(r"^# ?(\[|[a-z_]+ *=)", r"\1", block, flags=re.MULTILINE)
    for variant in (block, uncommented):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # (no deprecated key either)
            ModelConfig().merged(tomllib.loads(variant), source=f"{document}:{line}")


def test_the_defaults_in_repository_mds_config_toml_are_the_librarys() -> None:
    """Each ``(default X)`` / ``(default: X)`` comment of the reference block states the field's default."""
    block = next(block for document, _, block in toml_blocks() if document == "docs/repository.md")
    defaults = ModelConfig()
    section = None
    checked = 0
    for line in block.splitlines():
        if line.startswith("["):
            section = line.split("]")[0].strip("[")
            continue
        match = re.match(r"([a-z_]+) *= *.*?# .*?\(default:? ([^)\s,;]+)", line) or re.match(
            r'([a-z_]+) *= *.*?# "?([a-z]+)"? \(default\)', line
        )
        if match is None or section == "inputs.max_length":  # (an example input's bounds: no library default)
            continue
        key, stated = match.groups()
        if stated in ("derived", "measured", "max_queue_rows", "only"):  # (a default said in words: chosen at
            continue  # load, another key's value, on with the cache)
        owner: Any = defaults if section is None else getattr(defaults, section.split(".")[0])
        actual = getattr(owner, key)
        actual = getattr(actual, "kind", actual)  # (a version policy's kind)
        assert str(actual).lower() == stated.strip('"').lower(), f"{section}.{key}: {actual!r}, doc {stated!r}"
        checked += 1
    assert checked >= 5


# -- the plug-ins' settings -----------------------------------------------------------------------------


def _literal(cell: str) -> Any:
    """A default cell (```None```, ```0.05```, ```"X-User-Id"```, ```32 * 2**20` (32 MiB)``) as a value."""
    code = re.match(r"`([^`]*)`", cell)
    assert code, cell
    return eval(code.group(1), {"__builtins__": {}})  # (the docs' own literals: None, 0.05, "X", {}, 32 * 2**20)


def test_flask_mds_settings_table_is_the_extensions_defaults() -> None:
    from inprocserve_flask import DEFAULTS

    rows = table("docs/flask.md", "| key | default | meaning |")
    documented = {row[0].strip("`"): _literal(row[1]) for row in rows}
    assert documented == DEFAULTS


def test_django_mds_settings_table_is_the_apps_defaults() -> None:
    from inprocserve_django.conf import DEFAULTS

    rows = table("docs/django.md", "| key | default | meaning |")
    documented = {row[0].strip("`"): _literal(row[1]) for row in rows}
    assert documented == DEFAULTS


def test_django_mds_system_checks_are_the_ids_the_app_reports() -> None:
    source = "\n".join(path.read_text() for path in (ROOT / "integrations/django/src").rglob("*.py"))
    reported = set(re.findall(r'id="(inprocserve\.[EW]\d{3})"', source))
    documented = {row[0].strip("`") for row in table("docs/django.md", "| id | problem |")}
    assert documented == reported


# -- errors ---------------------------------------------------------------------------------------------


def test_errors_mds_hierarchy_is_the_libraries_classes_and_bases() -> None:
    """Each class of the tree is public and derives from the class it is drawn under (and the builtin named
    beside it); every public error class is drawn."""
    body = text("docs/errors.md")
    tree = body[body.index("```\nInprocserveError") + 4 : body.index("```", body.index("```\nInprocserveError") + 4)]
    parents: dict[int, type] = {}
    drawn = set()
    for line in tree.splitlines():
        match = re.match(r"^([│ ]*)(?:[├└]── )?([A-Za-z]+Error)(?: +\(\+([A-Za-z]+)\))?", line)
        if match is None:
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        cls = getattr(inprocserve, match.group(2))
        drawn.add(cls)
        if depth:
            assert parents[depth - 1] in cls.__bases__, f"{cls.__name__} is not a {parents[depth - 1].__name__}"
        if match.group(3):
            assert getattr(__import__("builtins"), match.group(3)) in cls.__mro__, cls
        parents[depth] = cls
    public = {
        value
        for name in inprocserve.__all__
        if isinstance(value := getattr(inprocserve, name), type) and issubclass(value, inprocserve.InprocserveError)
    }
    assert public == drawn


def test_errors_mds_http_column_is_the_plug_ins_status() -> None:
    for row in table("docs/errors.md", "| error | typical cause |"):
        name, status = row[0].strip("`"), row[-1]
        cls = getattr(inprocserve, name)
        if status.startswith("500 at start-up") or "(admin)" in status:
            continue  # (no prediction raises them: a load error, an admin answer)
        expected = int(status.split()[0])
        assert (web.http_status(cls("x")) or 500) == expected, name
        answer = web.error_answer(cls("x"))
        has_retry = answer is not None and "Retry-After" in answer.headers
        # both ways: a 503 the plug-ins answer with Retry-After (ServerClosedError's) was documented without it
        assert has_retry == ("Retry-After" in status), f"{name}: Retry-After {'sent' if has_retry else 'not sent'}"


# -- the protocol ---------------------------------------------------------------------------------------


def test_protocol_mds_limits_table_is_v2_limits_defaults() -> None:
    sizes = {"64 MiB": 64 * 2**20, "16 MiB": 16 * 2**20, "16 Mi": 16 * 2**20, "1 Mi": 2**20}
    limits = v2.Limits()
    rows = table("docs/protocol.md", "| Limit | Default | Caps |")
    assert {row[0].strip("`") for row in rows} == set(limits.__dataclass_fields__)
    for row in rows:
        stated = sizes.get(row[1]) or int(row[1])
        assert getattr(limits, row[0].strip("`")) == stated, row[0]


def test_rollouts_mds_flag_keys_are_the_routers() -> None:
    from inprocserve._rollout import _FlagKeys

    documented = {row[0].strip("`") for row in table("docs/rollouts.md", "| flag | type | effect |")}
    assert documented == set(_FlagKeys.of("fraud"))
