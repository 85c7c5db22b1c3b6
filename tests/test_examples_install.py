"""The ``pip install`` that examples/README.md (and queue_consumer's own README) gives for each example
installs every package the example imports or starts, and the run commands name files that exist.

examples/queue_consumer/README.md said ``apt-get install redis-server`` then ``python .../run.py``: in a venv
made by the README's ``pip install ./`` that ended in ``ModuleNotFoundError: No module named 'redis'`` (and then
``onnx``, for the model it builds); the other examples named no install at all but ``make demo``'s, the whole
dev extra (about 1 GB).
"""

from __future__ import annotations

import ast
import re
import shlex
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ("demo.py", "flask_fraud", "django_recommend", "queue_consumer")
# servers an example starts as a child process (python -m ...), not imports
STARTS = {"flask_fraud": {"gunicorn"}, "django_recommend": {"uvicorn"}, "queue_consumer": set(), "demo.py": set()}
# what each local distribution gives, as import names (its own package and its dependencies)
INTEGRATIONS = {
    "./integrations/flask": {"inprocserve_flask", "flask", "werkzeug"},
    "./integrations/django": {"inprocserve_django", "django", "asgiref"},
}
DISTRIBUTION_MODULES = {"onnx": "onnx", "opentelemetry-api": "opentelemetry", "urllib3": "urllib3"}


def section(document: str, example: str) -> str:
    text = (ROOT / document).read_text()
    if document != "examples/README.md":
        return text
    parts = [part for part in text.split("\n## ")[1:] if part.startswith(f"`{example}")]
    assert len(parts) == 1, f"examples/README.md has no section for {example}"
    return parts[0]


def installed_modules(command: str) -> set[str]:
    """The import names ``pip install ...`` (run in a clone's root) makes available."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    modules: set[str] = set()
    for word in shlex.split(command, comments=True)[2:]:
        if word in INTEGRATIONS:
            modules |= INTEGRATIONS[word] | {"inprocserve"}
        elif word.startswith("./"):
            requirements = list(project["dependencies"])
            extras = re.fullmatch(r"\./(?:\[([\w,]+)\])?", word)
            assert extras is not None, word
            for extra in (extras.group(1) or "").split(","):
                requirements += project["optional-dependencies"].get(extra, []) if extra else []
            names = {re.split(r"[<>=!~; \[]", requirement, maxsplit=1)[0] for requirement in requirements}
            modules |= {"inprocserve", *(DISTRIBUTION_MODULES.get(name, name) for name in names)}
        else:
            modules.add(word)
    return modules


def needed_modules(example: str) -> set[str]:
    path = ROOT / "examples" / example
    files = [path] if path.is_file() else sorted(path.glob("*.py"))
    local = {file.stem for file in files}
    imported: set[str] = set()
    for file in files:
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    return {name for name in imported - local - {"__future__"} if name not in sys.stdlib_module_names} | STARTS[example]


@pytest.mark.parametrize("example", EXAMPLES)
def test_each_examples_install_command_gives_what_it_imports_and_starts(example: str) -> None:
    document = "examples/queue_consumer/README.md" if example == "queue_consumer" else "examples/README.md"
    blocks = re.findall(r"```bash\n(.*?)```", section(document, example), re.DOTALL)
    commands = "\n".join(blocks).replace("\\\n", " ")
    installs = [line.split("  #", 1)[0] for line in commands.splitlines() if line.startswith("pip install ")]
    assert len(installs) == 1, f"{document}: no (or more than one) pip install for {example}"
    missing = needed_modules(example) - installed_modules(installs[0])
    assert missing == set(), f"{document}: {installs[0]!r} does not install {sorted(missing)} for {example}"
    runs = [line for line in commands.splitlines() if line.startswith("python examples/")]
    assert runs, f"{document}: no run command for {example}"
    for run in runs:
        assert (ROOT / shlex.split(run, comments=True)[1]).is_file(), run
