"""Snippets a new team copies in its first hour that the other doc-snippet tests did not run: the quickstart's
toy models, the imports of django.md's project files and repository.md's two ``Server(...)`` calls. Each
failed as written once (a name not imported, a model to find first), so each runs here as a user copies it.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .test_doc_snippets import python_blocks

ROOT = Path(__file__).resolve().parent.parent


def test_the_quickstarts_toy_models_serve_its_serve_snippet(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    text = (ROOT / "docs" / "quickstart.md").read_text()
    (command,) = re.findall(r"^python -c .*$", text.split("## 2. Lay out", 1)[1].split("\n## ", 1)[0], re.MULTILINE)
    arguments = shlex.split(command)
    subprocess.run([sys.executable, *arguments[1:]], cwd=tmp_path, check=True, timeout=120)
    monkeypatch.chdir(tmp_path)
    serve, _ = python_blocks("docs/quickstart.md", "## 3. Serve")
    namespace: dict[str, Any] = {}
    exec(serve, namespace)
    try:
        assert namespace["result"].version == 2  # "2: by default the latest version answers"
        np.testing.assert_allclose(namespace["result"]["y"], [[0.2, 6.0, 15.0, 2.0]], rtol=1e-6)
    finally:
        namespace["server"].close()


DJANGO_FILES = r"""
import json, sys
import django
from django.conf import settings
settings.configure(INSTALLED_APPS=["inprocserve_django"], ROOT_URLCONF=__name__, INPROCSERVE={})
django.setup()
block = sys.argv[1]
urls = block.split("# urls.py\n", 1)[1].split("# views.py\n", 1)[0]
views = block.split("# views.py\n", 1)[1].split("\nasync def", 1)[0]
urls_namespace, views_namespace = {}, {}
exec(urls, urls_namespace)  # ("[..., path(...)]": the ellipsis is Python too)
exec(views, views_namespace)
names = views_namespace["score"].__code__.co_names
print(json.dumps({"urls": len(urls_namespace["urlpatterns"]),
                  "unbound": [name for name in names if name not in views_namespace and name not in dir(__builtins__)
                              and name not in ("loads", "body", "tolist", "version")]}))
"""


def test_django_mds_urls_and_views_run_as_written() -> None:
    """They used include, json and JsonResponse without importing them (a new project's urls.py imports path
    alone): NameError at manage.py check, and a 500 at the first POST."""
    text = (ROOT / "docs" / "django.md").read_text()
    block = text.split("```python\n# settings.py\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_FILES, block], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["urls"] == 2 and out["unbound"] == [], out


def test_repository_mds_server_snippets_run_as_written(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The input-bounds snippet imported InputBounds and ModelConfig, then called Server: NameError."""
    save_model(build_scale_model(2.0), tmp_path / "models", "fraud", 1)
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "docs" / "repository.md").read_text()
    snippets = [block for block in re.findall(r"```python\n(.*?)```", text, re.DOTALL) if "Server(" in block]
    assert len(snippets) >= 2
    for snippet in snippets:
        if "server.switch" in snippet:  # (the compatibility gate's: a server of its own, see test_repository)
            continue
        namespace: dict[str, Any] = {}
        exec(snippet.replace('\nServer("models/"', '\nserver = Server("models/"'), namespace)
        server: inprocserve.Server = namespace["server"]
        try:
            assert server.models == {"fraud": [1]}
        finally:
            server.close()
