"""The main snippets of README.md and docs/quickstart.md, as a user copies them, run against real models.

Each snippet is taken from the document by its section's heading, so a change to the API that the snippet
no longer matches (or a snippet edited out of step with the API) fails here, not in a user's first hour.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(document: str, heading: str) -> list[str]:
    """The ``python`` code blocks of the section of ``document`` (a path under the repository's root) that
    starts at the line ``heading`` and ends at the next ``## `` heading."""
    text = (ROOT / document).read_text()
    lines = text.splitlines()
    assert heading in lines, f"{document} has no heading {heading!r}"
    section = text.split(heading + "\n", 1)[1].split("\n## ", 1)[0]
    blocks = [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]
    assert blocks, f"{document}, {heading!r}: no python block"
    return blocks


def save_fraud_model(repository: Path, *, input_name: str, features: int) -> None:
    """The README's "fraud" model: ``input_name`` [batch, features] -> ``probability`` [batch, 2]."""
    model = build_mlp_model((features, 8, 2), input_name=input_name)
    model.graph.node[-1].output[0] = "probability"  # (the softmax's output, named "y" by the builder)
    model.graph.output[0].name = "probability"
    save_model(model, repository, "fraud")


def test_the_readme_first_snippet_predicts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    save_fraud_model(tmp_path / "models", input_name="features", features=4)
    monkeypatch.chdir(tmp_path)  # the snippet names "models/"
    (snippet,) = python_blocks("README.md", "# inprocserve")
    rows = np.random.default_rng(0).random((3, 4), dtype=np.float32)
    namespace: dict[str, Any] = {"rows": rows, "user": SimpleNamespace(id=42)}
    try:
        exec(snippet, namespace)
        result = namespace["result"]
        assert result["probability"].shape == (3, 2)  # "one row per input row"
        assert result.version == 1
    finally:
        if "server" in namespace:  # (a snippet that failed before it made one leaves its own error)
            namespace["server"].close()


def test_the_readme_flask_app_serves_and_maps_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from inprocserve_flask import Inprocserve

    save_fraud_model(tmp_path / "models", input_name="transactions", features=8)
    (snippet,) = python_blocks("README.md", "## Flask in ten lines")
    (tmp_path / "readme_flask_app.py").write_text(snippet.replace('"models/"', repr(str(tmp_path / "models"))))
    monkeypatch.syspath_prepend(str(tmp_path))
    import readme_flask_app

    client = readme_flask_app.app.test_client()
    try:
        for endpoint in ["health", "ready", "models"]:  # "+ /-/inprocserve/health, /ready, /models"
            assert client.get(f"/-/inprocserve/{endpoint}").status_code == 200, endpoint
        answer = client.post("/score", json={"transactions": [[0.1] * 8]})
        assert answer.status_code == 200, answer.data[:300]
        assert len(answer.get_json()["probability"]) == 1 and answer.get_json()["version"] == 1
        refused = client.post("/score", json={"transactions": [[0.1] * 7]})  # "errors become 400/..."
        assert refused.status_code == 400 and refused.get_json()["error"] == "invalid_input"
        spent = client.post("/score", json={"transactions": [[0.1] * 8]}, headers={"X-Request-Timeout-Ms": "0"})
        assert spent.status_code == 504  # "deadline from the request"
    finally:
        Inprocserve.close(readme_flask_app.app)
        sys.modules.pop("readme_flask_app", None)


README_DJANGO = r"""
import json, sys
from pathlib import Path
import django
from django.conf import settings
settings_code, rest = sys.argv[2].split("# urls.py", 1)
urls_code, views_code = rest.split("# views.py", 1)
project = {"BASE_DIR": Path(sys.argv[1]), "INSTALLED_APPS": [], "MIDDLEWARE": []}  # what settings.py has already
exec(settings_code, project)
settings.configure(
    ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"],
    **{key: value for key, value in project.items() if key.isupper() and key != "BASE_DIR"},
)
django.setup()
from django.http import JsonResponse
from django.test import Client
from django.urls import include, path
views = {"__name__": "views", "json": json, "JsonResponse": JsonResponse}
exec(views_code, views)
urlpatterns = [eval(urls_code.split(":", 1)[1].strip()), path("score", views["score"])]
client = Client(raise_request_exception=False)
out = {endpoint: client.get(f"/-/inprocserve/{endpoint}").status_code for endpoint in ["health", "ready", "models"]}
for label, rows, headers in [("good", [[0.1] * 8], {}), ("7 features", [[0.1] * 7], {}),
                             ("spent", [[0.1] * 8], {"HTTP_X_REQUEST_TIMEOUT_MS": "0"})]:
    body = json.dumps({"transactions": rows})
    response = client.post("/score", data=body, content_type="application/json", **headers)
    out[label] = [response.status_code, json.loads(response.content)]
from inprocserve_django import reset_server
reset_server()
print(json.dumps(out))
"""


def test_the_readme_django_project_serves_and_maps_errors(tmp_path: Path) -> None:
    save_fraud_model(tmp_path / "models", input_name="transactions", features=8)
    (snippet,) = python_blocks("README.md", "## Django in ten lines")
    result = subprocess.run(
        [sys.executable, "-c", README_DJANGO, str(tmp_path), snippet],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert [out["health"], out["ready"], out["models"]] == [200, 200, 200]
    assert out["good"][0] == 200 and len(out["good"][1]["probability"]) == 1
    assert out["7 features"][0] == 400 and out["7 features"][1]["error"] == "invalid_input"
    assert out["spent"][0] == 504


def test_the_quickstart_serves_calls_and_handles_errors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path / "models", "fraud", version)
    monkeypatch.chdir(tmp_path)  # the snippets name "models/"
    serve, other_ways = python_blocks("docs/quickstart.md", "## 3. Serve")
    (handle_errors,) = python_blocks("docs/quickstart.md", "## 4. Handle errors")
    namespace: dict[str, Any] = {}
    exec(serve, namespace)
    server: inprocserve.Server = namespace["server"]
    try:
        result = namespace["result"]
        np.testing.assert_allclose(result["y"], [[0.2, 6.0, 15.0, 2.0]], rtol=1e-6)  # version 2 doubles
        assert result.version == 2  # "by default the latest version answers"
        assert isinstance(result.request_id, str) and result.request_id

        async def other_calls() -> dict[str, Any]:  # (the block awaits, as an async view would)
            calls: dict[str, Any] = {"server": server, "rows": [[1.0, 2.0, 3.0, 4.0]]}
            code = "async def calls():\n" + textwrap.indent(other_ways, "    ") + "    return locals()\n"
            exec(code, calls)
            answers: dict[str, Any] = await calls["calls"]()
            return answers

        answers = asyncio.run(other_calls())
        assert answers["future"].result().version == 2 and answers["result"].version == 2

        view = "def view(server, payload):\n" + textwrap.indent(handle_errors, "    ")
        views: dict[str, Any] = {"inprocserve": inprocserve}
        exec(view, views)
        body, status = views["view"](server, {"x": [[1.0, 2.0]]})
        assert status == 400 and "input 'x'" in body["error"]
    finally:
        server.close()


def test_the_readmes_command_line_names_every_command() -> None:
    """The README's list stopped at ``status``: the fleet's switch, rollback, canary, kill, resume and reload, what
    an on-call engineer runs when a version misbehaves, were nowhere on the page a new team reads first."""
    help_text = subprocess.run(
        [sys.executable, "-m", "inprocserve", "--help"], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    listed = help_text.split("\n  COMMAND\n", 1)[1].split("\noptions:", 1)[0]
    commands = [line.split()[0] for line in listed.splitlines() if line.startswith("    ") and line[4] != " "]
    assert {"inspect", "status", "rollback"} <= set(commands), commands
    text = (ROOT / "README.md").read_text()
    bullet = text.split("- **A command line**", 1)[1].split("\n- **", 1)[0]
    quoted = " ".join(re.findall(r"`([^`]*)`", bullet)).split()  # each command in code: `validate models/`
    assert [command for command in commands if command not in quoted] == []
