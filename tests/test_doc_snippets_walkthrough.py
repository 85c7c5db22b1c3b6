"""Snippets a new team copies in its first hour that the other doc-snippet tests did not run: the quickstart's
toy models, the imports of django.md's project files, repository.md's two ``Server(...)`` calls,
protocol.md's tritonclient and curl session, django.md's example and the README's steps to try its Flask
view. Each failed as written once (a name not imported, a model to find first, an app that was three lines
of one, a Host refused), so each runs here as a user copies it.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .ports import listening_socket
from .processes import stop_process
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
score = views_namespace["score"]
names = getattr(score, "__wrapped__", score).__code__.co_names
print(json.dumps({"urls": len(urls_namespace["urlpatterns"]), "csrf_exempt": getattr(score, "csrf_exempt", False),
                  "unbound": [name for name in names if name not in views_namespace and name not in dir(__builtins__)
                              and name not in ("loads", "body", "tolist", "version")]}))
"""


def test_django_mds_urls_and_views_run_as_written() -> None:
    """They used include, json and JsonResponse without importing them (a new project's urls.py imports path
    alone): NameError at manage.py check, and a 500 at the first POST. The view, for other services to call,
    was not CSRF-exempt: a new project's CsrfViewMiddleware answered every POST of curl with a 403 page."""
    text = (ROOT / "docs" / "django.md").read_text()
    block = text.split("```python\n# settings.py\n", 1)[1].split("```", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_FILES, block], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["urls"] == 2 and out["unbound"] == [] and out["csrf_exempt"] is True, out


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


def _without_request_ids(text: str) -> str:
    return re.sub(r"'inprocserve_request_id': '[^']*'|\"inprocserve_request_id\":\"[^\"]*\"", "<request id>", text)


def test_protocol_mds_tritonclient_and_curl_session_runs_as_written(tmp_path: Path) -> None:
    """Its app was the three lines that turn the protocol on, "saved as app.py": gunicorn could not boot it."""
    pytest.importorskip("tritonclient.http")
    section = (ROOT / "docs" / "protocol.md").read_text().split("## Trying it with tritonclient\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    (model_command,) = [line for line in commands[0].splitlines() if line.startswith("python -c ")]
    subprocess.run([sys.executable, *shlex.split(model_command)[1:]], cwd=tmp_path, check=True, timeout=120)
    app, client = python_blocks("docs/protocol.md", "## Trying it with tritonclient")
    (tmp_path / "app.py").write_text(app)
    (gunicorn_command,) = [line for line in commands[1].splitlines() if line.startswith("gunicorn ")]
    listener = listening_socket()
    address = f"127.0.0.1:{listener.getsockname()[1]}"
    arguments = shlex.split(gunicorn_command.replace("127.0.0.1:8000", f"fd://{listener.fileno()}"))
    log = tmp_path / "gunicorn.log"
    with listener, open(log, "wb") as output:
        master = subprocess.Popen(
            [sys.executable, "-m", *arguments], cwd=tmp_path, pass_fds=[listener.fileno()], stdout=output,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:  # the first probe builds the worker's server
            try:
                with urllib.request.urlopen(f"http://{address}/v2/health/ready", timeout=10) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                assert master.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "gunicorn did not get ready"
                time.sleep(0.2)
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(client.replace("127.0.0.1:8000", address), {})
        shown = section.split("\nprints\n\n```\n", 1)[1].split("```", 1)[0]
        assert _without_request_ids(printed.getvalue()) == _without_request_ids(shown)
        curl = shutil.which("curl")
        if curl is not None:  # ("and with curl:", each command and the answer the document shows under it)
            exchanges = re.findall(r"^\$ (.*?\n(?:    .*\n)*)(.*)\n", commands[2], re.MULTILINE)
            assert len(exchanges) == 2, commands[2]
            for command, shown_answer in exchanges:
                words = shlex.split(command.replace("\\\n", " ").replace("127.0.0.1:8000", address))
                answer = subprocess.run([curl, *words[1:]], capture_output=True, text=True, timeout=30, check=True)
                assert _without_request_ids(answer.stdout) == _without_request_ids(shown_answer), command
    finally:
        stop_process(master)


def test_the_readmes_flask_view_runs_as_its_try_it_steps_say(tmp_path: Path) -> None:
    """The README's Flask and Django views read ``transactions`` and ``probability``, and no step said where such
    a model comes from (the quickstart's toy models take ``x``): a newcomer had nothing to serve them with."""
    from .ports import reserved_port

    section = (ROOT / "README.md").read_text().split("## Flask in ten lines\n", 1)[1].split("\n## ", 1)[0]
    (commands,) = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    lines = [line.split("  #", 1)[0] for line in commands.replace("\\\n", "").splitlines()]
    (build,) = [line for line in lines if line.startswith("python examples/")]
    (run,) = [line for line in lines if line.startswith("flask ")]
    (curl,) = [line for line in lines if line.startswith("curl ")]
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # (the commands run in a clone's root)
    subprocess.run(
        [sys.executable, *shlex.split(build)[1:]], cwd=tmp_path, check=True, timeout=120, stdout=subprocess.DEVNULL
    )
    (app,) = python_blocks("README.md", "## Flask in ten lines")
    (tmp_path / "app.py").write_text(app)
    port = reserved_port()
    words = shlex.split(run.replace("5050", str(port)))
    log = tmp_path / "flask.log"
    with open(log, "wb") as output:
        flask = subprocess.Popen(
            [sys.executable, "-m", *words], cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
    try:
        curl_words = shlex.split(curl.replace("5050", str(port)))
        body = curl_words[curl_words.index("-d") + 1].encode()
        url = next(word for word in curl_words if word.startswith("http://"))
        # (its headers as written: without the user's, the 10 % canary answered one request in ten, at random)
        headers = dict(
            tuple(part.strip() for part in value.split(":", 1))
            for flag, value in itertools.pairwise(curl_words)
            if flag == "-H"
        )
        assert "X-User-Id" in headers, curl
        deadline = time.monotonic() + 60
        while True:
            try:
                request = urllib.request.Request(url, data=body, headers=headers)
                with urllib.request.urlopen(request, timeout=30) as answer:
                    shown = json.load(answer)
                break
            except OSError:
                assert flask.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "flask run did not start"
                time.sleep(0.2)
        assert shown["version"] == 1 and len(shown["probability"]) == 1, shown
        assert f'"version":{shown["version"]}' in section and f"[{str(shown['probability'][0])[:5]}..." in section
    finally:
        stop_process(flask)


def test_django_mds_example_serves_a_page_as_written(tmp_path: Path) -> None:
    """Copied as written, its steps exported DJANGO_ALLOWED_HOSTS=api.example.com, so the page a newcomer then
    asked for on 127.0.0.1 was a 400 (and no step said which URL to ask for)."""
    pytest.importorskip("uvicorn")
    from .ports import reserved_port

    section = (ROOT / "docs" / "django.md").read_text().split("\n## Example\n", 1)[1].split("\n## ", 1)[0]
    (block,) = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)
    lines = block.splitlines()
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # (the commands run in a clone's root)
    exports = "\n".join(line for line in lines if line.startswith("export "))
    shown = subprocess.run(
        ["bash", "-c", f"{exports}\nenv -0"], cwd=tmp_path, capture_output=True, text=True, check=True, timeout=30
    ).stdout
    env = dict(entry.split("=", 1) for entry in shown.split("\0") if "=" in entry)
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    (build,) = [line for line in lines if line.startswith("python ")]
    subprocess.run([sys.executable, *shlex.split(build)[1:]], cwd=tmp_path, env=env, check=True, timeout=120)
    port = reserved_port()
    (serve,) = [line for line in lines if line.startswith("uvicorn ")]
    (curl,) = [line for line in lines if line.startswith("curl ")]
    log = tmp_path / "uvicorn.log"
    with open(log, "wb") as output:
        uvicorn = subprocess.Popen(
            [sys.executable, "-m", *shlex.split(serve.replace("8000", str(port)), comments=True)],
            cwd=tmp_path, env=env, stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        (url,) = [word for word in shlex.split(curl, comments=True) if word.startswith("http://")]
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url.replace("8000", str(port)), timeout=30) as answer:
                    page = json.load(answer)
                break
            except urllib.error.HTTPError as refused:
                pytest.fail(f"{url}: {refused.code} {refused.read()[:300]!r}")
            except OSError:
                assert uvicorn.poll() is None, log.read_text()[-2000:]
                assert time.monotonic() < deadline, "uvicorn did not start"
                time.sleep(0.2)
        assert page["products"] and page["click_token"], page
    finally:
        stop_process(uvicorn)


def test_the_quickstarts_new_version_step_names_a_version_3_to_copy(tmp_path: Path) -> None:
    """Step 5 said "copy models/fraud/3/model.onnx into place" to a reader whose toy repository, from step 2,
    holds versions 1 and 2 only: there was no version 3 to copy. Its command writes one, which a refresh
    serves."""
    text = (ROOT / "docs" / "quickstart.md").read_text()
    section = text.split("## 5. Ship a new version", 1)[1].split("\n## ", 1)[0]
    setup = text.split("## 2. Lay out", 1)[1].split("\n## ", 1)[0]
    (first,) = re.findall(r"^python -c .*$", setup, re.MULTILINE)
    commands = re.findall(r"^python -c .*$", section, re.MULTILINE)
    assert len(commands) == 1, "step 5 gives no command that writes version 3 of the toy model"
    subprocess.run([sys.executable, *shlex.split(first)[1:]], cwd=tmp_path, check=True, timeout=120)
    with inprocserve.Server(repository=tmp_path / "models") as server:
        subprocess.run([sys.executable, *shlex.split(commands[0])[1:]], cwd=tmp_path, check=True, timeout=120)
        assert server.refresh() == []
        assert server.models == {"fraud": [3]}
        assert server.predict("fraud", {"x": [[1.0, 1.0, 1.0, 1.0]]}).version == 3


def test_the_quickstart_after_the_readmes_try_it_serves_its_toy_models(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The README sends a newcomer to the quickstart after its Flask "try it", which wrote three versions of a
    ``fraud`` model (``transactions`` in) and a ``config.toml`` into the clone's ``models/fraud``. The
    quickstart's step 2 wrote its toy versions 1 and 2 over that folder, leaving version 3, the canary, the
    shadow and the drift reference of the other model: validate failed, and the serve snippet's request was
    refused ("missing input(s) 'transactions'; unknown input(s) 'x'")."""
    readme = (ROOT / "README.md").read_text().split("## Flask in ten lines\n", 1)[1].split("\n## ", 1)[0]
    (readme_commands,) = re.findall(r"```bash\n(.*?)```", readme, re.DOTALL)
    (build,) = [line.split("  #", 1)[0] for line in readme_commands.splitlines() if line.startswith("python examples/")]
    (tmp_path / "examples").symlink_to(ROOT / "examples")  # (the commands run in a clone's root)
    subprocess.run(
        [sys.executable, *shlex.split(build)[1:]], cwd=tmp_path, check=True, timeout=120, stdout=subprocess.DEVNULL
    )
    setup = (ROOT / "docs" / "quickstart.md").read_text().split("## 2. Lay out", 1)[1].split("\n## ", 1)[0]
    (commands,) = [block for block in re.findall(r"```bash\n(.*?)```", setup, re.DOTALL) if "python -c" in block]
    for line in commands.splitlines():  # each as a shell runs it, `python` being this interpreter
        words = shlex.split(line, comments=True)
        if words:
            words = [sys.executable, *words[1:]] if words[0] == "python" else words
            subprocess.run(words, cwd=tmp_path, check=True, timeout=120)
    monkeypatch.chdir(tmp_path)
    serve, _ = python_blocks("docs/quickstart.md", "## 3. Serve")
    namespace: dict[str, Any] = {}
    try:
        exec(serve, namespace)
        assert namespace["result"].version == 2  # "2: by default the latest version answers"
    finally:
        if "server" in namespace:
            namespace["server"].close()
