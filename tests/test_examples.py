"""The examples run with one command each and report what they promise."""

from __future__ import annotations

import ctypes
import http.client
import importlib.metadata
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

from .ports import listening_socket

ROOT = Path(__file__).resolve().parent.parent
# The Django example's async views need Django 5.0 (docs/django.md); on 4.2 (make oldest) it says so and stops.
OLD_DJANGO = tuple(int(part) for part in importlib.metadata.version("django").split(".")[:2]) < (5, 0)
ASYNC_DJANGO_NEEDED = "the example's async views need Django 5.0 or later (docs/django.md)"


def run(script: str, *args: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr  # gunicorn logs (e.g. a worker killed by a signal) go to stderr


def test_flask_fraud_demo_under_gunicorn(tmp_path: Path) -> None:
    # A developer's own gunicorn holds the per-user control socket; the demo's gunicorn must leave it alone (run
    # here without the tests' GUNICORN_CMD_ARGS, as `make demo` runs).
    socket_path = tmp_path / ".gunicorn" / "gunicorn.ctl"
    socket_path.parent.mkdir()
    developers = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    developers.bind(str(socket_path))
    developers.listen()
    inode = socket_path.stat().st_ino
    args = " ".join(arg for arg in os.environ.get("GUNICORN_CMD_ARGS", "").split() if arg != "--no-control-socket")
    with developers:
        out = run(
            "examples/flask_fraud/run.py",
            FRAUD_DEMO_REQUESTS="20",
            HOME=str(tmp_path),
            XDG_RUNTIME_DIR="",  # (gunicorn's default is there when that is a folder, else under HOME)
            GUNICORN_CMD_ARGS=args,
        )
        assert socket_path.stat().st_ino == inode, "the demo's gunicorn took the control socket of another gunicorn"
    # accuracy beside what always answering "not fraud" scores (0.94: fraud is rare), and the AUC
    assert "ROC AUC 0." in out and "(answering 'not fraud' every time: 0.94" in out
    assert "320 answered, 0 failed" in out
    assert "canary share" in out and "'canary'" in out
    assert "users who saw both versions: 0" in out  # sticky assignment
    assert "shadow v3:" in out and "label agreement" in out
    assert "was sent" not in out  # no gunicorn worker died by a signal


def test_django_recommend_example() -> None:
    out = run("examples/django_recommend/run.py")
    assert "300 interleaved pages" in out
    assert "users preferred ranker B" in out


@pytest.mark.skipif(OLD_DJANGO, reason=ASYNC_DJANGO_NEEDED)
def test_django_recommend_example_under_uvicorn() -> None:
    out = run("examples/django_recommend/run.py", "--asgi")
    assert "Serving the Django project with uvicorn (ASGI, async views)" in out
    assert "300 interleaved pages" in out
    assert "users preferred ranker B" in out
    assert "POST /score {'products': [3, 17, 5]} -> {'scores': [" in out and "'version': 1}" in out  # async view
    assert "Traceback" not in out


def test_core_demo() -> None:
    out = run("examples/demo.py")
    assert "failed requests: 0" in out
    assert "InvalidInputError: model 'fraud' version 1: input 'x': expected size" in out


def test_the_fraud_model_builder_answers_help_without_training(tmp_path: Path) -> None:
    """``python examples/flask_fraud/build_models.py --help``, a newcomer's first look at the script the README's
    Flask steps run, trained the three models into a new folder named ``--help`` and printed a dict."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples/flask_fraud/build_models.py"), "--help"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and done.stdout.startswith("usage: "), done.stdout + done.stderr
    assert "repository" in done.stdout  # (where the models go)
    assert list(tmp_path.iterdir()) == []


# -- the Flask app's /score, through Flask's test client -------------------------------------------------

FLASK = ROOT / "examples" / "flask_fraud"


def load_flask_app(monkeypatch: pytest.MonkeyPatch, models: Path, token: str | None = None) -> ModuleType:
    monkeypatch.setenv("FRAUD_MODELS", str(models))
    if token is None:
        monkeypatch.delenv("FRAUD_ADMIN_TOKEN", raising=False)
    else:
        monkeypatch.setenv("FRAUD_ADMIN_TOKEN", token)
    monkeypatch.syspath_prepend(str(FLASK))
    spec = importlib.util.spec_from_file_location("flask_fraud_app", FLASK / "app.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # builds the app: create_app() at import, as gunicorn does
    return module


BRIEFLY_TRAINED = """
import functools, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import build_models
build_models.train_logistic = functools.partial(build_models.train_logistic, epochs=3)
build_models.train_mlp = functools.partial(build_models.train_mlp, epochs=3)
build_models.build(Path(sys.argv[2]))
"""


@pytest.fixture(scope="module")
def fraud_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The example's three fraud versions, config.toml and drift reference, written by its own build(), but
    trained for a few epochs: the tests that serve them check the app's handling of requests, never what
    the models learnt, and the full training (``test_flask_fraud_demo_under_gunicorn`` runs it) took 22 s
    of a loaded 2-core machine's time, most of this file's."""
    folder = tmp_path_factory.mktemp("fraud-models")
    # in a process of its own with one BLAS thread, as run.py trains (its full-batch products of small
    # matrices took 16 s instead of 6 on a loaded 2-core machine with the BLAS threads this process has)
    subprocess.run(
        [sys.executable, "-c", BRIEFLY_TRAINED, str(FLASK), str(folder)],
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
        capture_output=True,
        check=True,
        timeout=300,
    )
    return folder


@pytest.fixture
def fraud(monkeypatch: pytest.MonkeyPatch, fraud_models: Path) -> Iterator[Any]:
    from inprocserve_flask import Inprocserve

    module = load_flask_app(monkeypatch, fraud_models)
    yield module.app.test_client()
    Inprocserve.close(module.app)


ROW = [0.1] * 8


@pytest.mark.parametrize(
    "body",
    [
        b"[1, 2]",
        b"{}",
        b"not json",
        b'{"transactions": "x"}',
        b'{"transactions": []}',
        b'{"transactions": [["a", 1, 2, 3, 4, 5, 6, 7]]}',
        b'{"transactions": [[true, 1, 2, 3, 4, 5, 6, 7]]}',
        json.dumps({"transactions": [ROW, ROW[:5]]}).encode(),  # ragged
        json.dumps({"transactions": [[*ROW, 1.0]]}).encode(),  # 9 features
        b'{"transactions": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # RecursionError in the parser
        b'{"transactions": [[NaN, 1, 2, 3, 4, 5, 6, 7]]}',
        b'{"transactions": [[1e999, 1, 2, 3, 4, 5, 6, 7]]}',
        b'{"transactions": [[1e39, 1, 2, 3, 4, 5, 6, 7]]}',  # finite, but infinity as the model's float32
        b'{"transactions": [[Infinity, 1, 2, 3, 4, 5, 6, 7]]}',
        b'{"transactions": [[' + b"9" * 400 + b", 1, 2, 3, 4, 5, 6, 7]]}",  # an int no float holds
        json.dumps({"transactions": [ROW] * 4097}).encode(),
    ],
)
def test_flask_score_refuses_bad_bodies_with_a_json_400(fraud: Any, body: bytes) -> None:
    response = fraud.post("/score", data=body, content_type="application/json")
    assert response.status_code == 400, response.data[:300]
    assert '"transactions": [[8 numbers], ...]' in response.get_json()["error"]


def test_flask_score_answers_strict_json(fraud: Any) -> None:
    response = fraud.post("/score", json={"transactions": [ROW, [1, 2, 3, 4, 5, 6, 7, 8]]})
    assert response.status_code == 200, response.data
    json.loads(response.data, parse_constant=lambda name: pytest.fail(f"{name} in the answer"))
    assert len(response.get_json()["probability"]) == 2


def test_flask_score_refuses_a_large_body_unread(fraud: Any) -> None:
    body = b'{"transactions": [' + b"[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]," * 80_000 + b"[1,1,1,1,1,1,1,1]]}"
    response = fraud.post("/score", data=body, content_type="application/json")
    assert response.status_code == 413
    assert "over 2097152 bytes" in response.get_json()["error"]


def test_flask_score_refuses_a_large_chunked_body_with_a_413(
    monkeypatch: pytest.MonkeyPatch, fraud_models: Path
) -> None:
    """Sent chunked (no Content-Length), as a streaming client or proxy does, over a real HTTP server."""
    from inprocserve_flask import Inprocserve
    from werkzeug.serving import make_server

    module = load_flask_app(monkeypatch, fraud_models)
    httpd = make_server("127.0.0.1", 0, module.app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()

    def post_chunked(parts: list[bytes]) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", httpd.server_port, timeout=30)
        try:
            connection.request("POST", "/score", body=iter(parts), headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    try:
        rows = b"[0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1]," * 1000  # 34 KB a chunk
        status, answer = post_chunked([b'{"transactions": [', *[rows] * 100, b"[1,1,1,1,1,1,1,1]]}"])  # 3.4 MB
        assert status == 413 and "over 2097152 bytes" in answer["error"]  # it was a 400 "not JSON"
        status, answer = post_chunked([b'{"transactions": [', rows, b"[1,1,1,1,1,1,1,1]]}"])
        assert status == 200 and len(answer["probability"]) == 1001
    finally:
        httpd.shutdown()
        thread.join()
        Inprocserve.close(module.app)


def test_flask_answers_its_own_errors_as_json(fraud: Any) -> None:
    @fraud.application.get("/broken")  # a route of yours that fails: a JSON 500 that tells nothing inside
    def broken() -> None:
        raise RuntimeError("password=hunter2")

    response = fraud.get("/score")
    assert response.status_code == 405 and set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert response.is_json and "not allowed" in response.get_json()["error"]
    response = fraud.get("/wp-admin")
    assert response.status_code == 404 and response.is_json and "not found" in response.get_json()["error"]

    response = fraud.get("/broken")
    assert response.status_code == 500 and response.is_json and "hunter2" not in response.get_data(as_text=True)


def test_flask_score_takes_its_largest_request_indented(fraud: Any) -> None:
    body = json.dumps({"transactions": [[0.123456789] * 8] * 4096}, indent=4).encode()  # about 1.3 MiB
    response = fraud.post("/score", data=body, content_type="application/json")
    assert response.status_code == 200, response.data[:300]


def test_flask_stats_names_the_stable_version_that_answers(fraud: Any) -> None:
    answer = fraud.post("/score", json={"transactions": [ROW]}, headers={"X-User-Id": "user-1"}).get_json()
    assert (answer["variant"], answer["version"]) == ("stable", 1)  # config.toml: stable = 1
    assert fraud.get("/stats").get_json()["stable"] == 1  # it said 3, the newest version: the shadow


def test_the_flask_quickstart_answers_bad_bodies_with_a_json_400(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, fraud_models: Path
) -> None:
    """docs/flask.md's first snippet, as a user copies it, serving the fraud example's models."""
    from inprocserve_flask import Inprocserve

    text = (ROOT / "docs" / "flask.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "quickstart_app.py").write_text(snippet.replace('"models/"', repr(str(fraud_models))))
    monkeypatch.syspath_prepend(str(tmp_path))
    import quickstart_app

    client = quickstart_app.app.test_client()
    try:
        deep = b"[" * 100_000 + b"]" * 100_000  # (past the JSON parser's stack: get_json(silent=True) raises)
        for body in [b"{}", b"[1]", b"not json", b'{"rows": [[1]]}', deep]:
            response = client.post("/score", data=body, content_type="application/json")
            assert response.status_code == 400 and response.is_json, (body, response.data[:200])  # were 500s
        response = client.post("/score", json={"transactions": [ROW]})
        assert response.status_code == 200 and len(response.get_json()["probability"]) == 1
    finally:
        Inprocserve.close(quickstart_app.app)
        sys.modules.pop("quickstart_app", None)


def test_flask_app_refuses_a_short_admin_token(monkeypatch: pytest.MonkeyPatch, fraud_models: Path) -> None:
    with pytest.raises(SystemExit, match="openssl rand -hex 32"):
        load_flask_app(monkeypatch, fraud_models, token="change-me")


def test_flask_console_tracing_is_opt_in(monkeypatch: pytest.MonkeyPatch, fraud_models: Path) -> None:
    from inprocserve_flask import Inprocserve
    from opentelemetry import trace

    module = load_flask_app(monkeypatch, fraud_models)
    calls: list[Any] = []
    monkeypatch.setattr(trace, "set_tracer_provider", calls.append)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("FRAUD_TRACE_CONSOLE", raising=False)
    module.configure_tracing()
    assert calls == []
    monkeypatch.setenv("FRAUD_TRACE_CONSOLE", "1")
    module.configure_tracing()
    assert len(calls) == 1
    # (its BatchSpanProcessor's thread would run on in this process, and start again in every child forked
    # by a later test file)
    calls[0].shutdown()
    Inprocserve.close(module.app)


@pytest.mark.parametrize("variable", ["FRAUD_TRACE_CONSOLE", "OTEL_EXPORTER_OTLP_ENDPOINT"])
def test_flask_tracing_without_the_otel_extra_names_the_install(
    monkeypatch: pytest.MonkeyPatch, fraud_models: Path, variable: str
) -> None:
    # examples/README.md installs "./[testing]" ./integrations/flask gunicorn: no OpenTelemetry SDK. Asking for
    # traces there stopped every gunicorn worker's boot on "No module named 'opentelemetry.sdk'".
    from inprocserve_flask import Inprocserve

    module = load_flask_app(monkeypatch, fraud_models)
    Inprocserve.close(module.app)
    for name in ["opentelemetry.sdk", *(name for name in sys.modules if name.startswith("opentelemetry.sdk."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as in a venv without the SDK
    monkeypatch.setenv(variable, "1" if variable == "FRAUD_TRACE_CONSOLE" else "http://127.0.0.1:4318")
    with pytest.raises(SystemExit, match=r'pip install "\./\[otel\]"'):
        module.configure_tracing()


# -- the Django project's /rank and /click, through Django's test client (in a child: settings are global) --

BAD_SIZES = ["abc", "1e3", "-1", "0", "16", "1000000000", "0" * 4300 + "8", "\u00b2", "\u0661"]
"""Page sizes /rank refuses with a 400; 4301 digits are more than int() converts; the last two (superscript
two, Arabic-Indic one) pass str.isdigit."""

DJANGO_CHECKS = r"""
import json, sys, tempfile
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import recommend
folder = Path(tempfile.mkdtemp())
recommend.build_rankers(folder)
recommend.configure(folder, secret_key="abcdef" * 9)
SIZES = json.loads(sys.argv[2])
from django.test import Client
c = Client(raise_request_exception=False, HTTP_HOST="localhost")  # one of ALLOWED_HOSTS (not "testserver")
out = {}
def show(label, response):
    out[label] = [response.status_code, response.content.decode()[:300]]
for size in SIZES:
    show(f"size={size}", c.get("/rank", {"user": "u1", "size": size}))
page = json.loads(c.get("/rank?user=u1&size=8").content)
out["page keys"] = sorted(page)
post = lambda body, user="u1": c.post(f"/click?user={user}", data=body, content_type="application/json")
good = lambda position: json.dumps({"click_token": page["click_token"], "position": position})
for label, body in [("not json", "xx"), ("list", "[1]"), ("empty", "{}"), ("deep", "[" * 2000 + "]" * 2000),
                    ("huge", " " * 5000), ("3 MB", " " * 3_000_000),  # over Django's default limit too
                    ("position str", json.dumps({"click_token": page["click_token"], "position": "0"})),
                    ("forged token", json.dumps({"click_token": "x:y:z", "position": 0})),
                    ("guessed id", json.dumps({"request_id": page.get("request_id", "r-1"), "position": 0}))]:
    show(label, post(body))
show("other user", post(good(page["positions"][0]), user="bot"))
show("off the page", post(good(99)))
show("good", post(good(page["positions"][0])))
out["stats"] = json.loads(c.get("/stats").content)
show("unknown path", c.get("/wp-admin"))
show("other host", c.get("/rank", {"user": "u1"}, HTTP_HOST="attacker.example"))
show("wrong method", c.post("/rank"))
print(json.dumps(out))
"""


def test_django_clicks_cannot_be_forged_and_bad_input_is_a_400() -> None:
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_CHECKS, str(ROOT / "examples" / "django_recommend"), json.dumps(BAD_SIZES)],
        capture_output=True, text=True, timeout=120, check=False,
        env={key: value for key, value in os.environ.items() if key != "DJANGO_RECOMMEND_REPOSITORY"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for size in BAD_SIZES:
        assert out[f"size={size}"][0] == 400 and "size must be" in out[f"size={size}"][1], size
    assert out["page keys"] == ["click_token", "positions", "products"]  # no teams, no bare request id
    for label in ["not json", "list", "empty", "deep", "position str", "guessed id"]:
        assert out[label][0] == 400 and "click_token" in out[label][1], label
    for label in ["huge", "3 MB"]:  # by its Content-Length, unread; JSON, not Django's HTML 400
        assert out[label] == [413, '{"error": "the body is over 4096 bytes"}'], label
    assert out["forged token"][0] == 403 and out["other user"][0] == 403
    assert out["off the page"][0] == 404
    assert out["good"] == [200, '{"recorded": true}']
    assert out["unknown path"] == [404, '{"error": "not found"}']  # JSON like every answer, not Django's page
    assert out["other host"] == [400, '{"error": "bad request"}']  # not in ALLOWED_HOSTS
    assert out["wrong method"] == [405, '{"error": "method not allowed: use GET"}']  # not an empty HTML page
    assert out["stats"]["queries"] == 1 and out["stats"]["A"] + out["stats"]["B"] == 1  # only the real click
    assert "Traceback" not in result.stderr and "Internal Server Error" not in result.stderr


DJANGO_QUICKSTART = r"""
import json, sys
import django
from django.conf import settings
settings.configure(
    ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"], INSTALLED_APPS=["inprocserve_django"],
    MIDDLEWARE=["inprocserve_django.middleware.InprocserveMiddleware"], INPROCSERVE={"REPOSITORY": sys.argv[1]},
)
django.setup()
from django.http import JsonResponse
from django.urls import path
from django.test import Client
from django.views.decorators.csrf import csrf_exempt
namespace = {"__name__": "views", "json": json, "JsonResponse": JsonResponse}
exec("from inprocserve_django import predict\n" + sys.argv[2], namespace)
urlpatterns = [path("score", csrf_exempt(namespace["score"]))]
c = Client(raise_request_exception=False)
out = {}
for body in ["{}", "[1]", "not json", "[" * 100000 + "]" * 100000, json.dumps({"transactions": [[0.1] * 8]})]:
    response = c.post("/score", data=body, content_type="application/json")
    out[body[:20]] = [response.status_code, response.get("Content-Type")]
from inprocserve_django import reset_server
reset_server()  # closes the server: its shadow run may be in onnxruntime still (it aborted the exit, 1 in 10)
print(json.dumps(out))
"""


def test_the_django_quickstart_answers_bad_bodies_with_a_json_400(fraud_models: Path) -> None:
    """docs/django.md's score view, as a user copies it, serving the fraud example's models."""
    text = (ROOT / "docs" / "django.md").read_text()
    view = "def score(request):" + text.split("def score(request):", 1)[1].split("\n\n\n", 1)[0]
    result = subprocess.run(
        [sys.executable, "-c", DJANGO_QUICKSTART, str(fraud_models), view],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    for body in ["{}", "[1]", "not json", "[" * 20]:
        assert out[body] == [400, "application/json"], (body, out[body])  # were 500s
    assert out['{"transactions": [[0'][0] == 200


def test_django_logs_server_errors_to_the_console() -> None:
    script = (
        "import sys, logging; sys.path.insert(0, sys.argv[1]); import recommend, tempfile; from pathlib import Path;"
        "from django.conf import settings; recommend.configure(Path(tempfile.mkdtemp()), secret_key='abcdef' * 9);"
        "logging.getLogger('django.request').error('probe 500')"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "examples" / "django_recommend")],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "probe 500" in result.stderr


def test_django_needs_a_secret_key_unless_debug() -> None:
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import recommend, tempfile; from pathlib import Path;"
        "recommend.configure(Path(tempfile.mkdtemp()))"
    )
    env = {key: value for key, value in os.environ.items() if key != "DJANGO_SECRET_KEY"}
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "examples" / "django_recommend")],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )  # fmt: skip
    assert result.returncode != 0 and "set DJANGO_SECRET_KEY" in result.stderr


@pytest.mark.parametrize("key", ["changeme", "django-insecure-" + "x" * 40])
def test_django_refuses_a_guessable_secret_key(key: str) -> None:
    """The key signs the click tokens: one from /rank lets anyone test guesses offline, then forge them all."""
    script = (
        "import sys; sys.path.insert(0, sys.argv[1]); import recommend, tempfile; from pathlib import Path;"
        "recommend.configure(Path(tempfile.mkdtemp()))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "examples" / "django_recommend")],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "DJANGO_SECRET_KEY": key},
    )  # fmt: skip
    assert result.returncode != 0 and "openssl rand -hex 32" in result.stderr, result.stderr[-500:]


def test_django_serving_refuses_an_old_django_and_a_missing_repository() -> None:
    script = """
import os, sys, django
sys.path.insert(0, sys.argv[1])
import recommend
version, django.VERSION = django.VERSION, (4, 2, 11, "final", 0)  # csrf_exempt wraps async views as sync
try:
    recommend.asgi_application()
except RuntimeError as exc:
    print(exc)
django.VERSION = version
os.environ.update(DJANGO_RECOMMEND_REPOSITORY="models/", DJANGO_SECRET_KEY="abcdef" * 9)  # relative, and not here
try:
    recommend.wsgi_application()
except RuntimeError as exc:
    print(exc)
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "examples" / "django_recommend")],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT / "tests",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    old_django, no_folder = result.stdout.strip().splitlines()
    assert "the async views need Django 5.0 or later" in old_django and "this is Django 4.2.11" in old_django
    assert no_folder.startswith("DJANGO_RECOMMEND_REPOSITORY=models/ is not a folder (seen from ")


# -- the Django project's async views, under a real uvicorn (HTTP over loopback) ---------------------------------

RECOMMEND = ROOT / "examples" / "django_recommend"
SCORE_TOKEN = "s" * 40


@dataclass(frozen=True)
class Uvicorn:
    port: int
    log: Path
    recommend: ModuleType  # the example's module, loaded here too: its catalogue and rankers' weights

    def call(self, method: str, path: str, body: bytes | None = None, **headers: str) -> tuple[int, Any]:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            connection.request(method, path, body=body, headers={"Content-Type": "application/json", **headers})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    def log_size(self) -> int:
        return self.log.stat().st_size

    def log_since(self, offset: int) -> str:
        """What uvicorn (and Django's django.request logger) wrote after ``offset``."""
        return self.log.read_bytes()[offset:].decode(errors="replace")


def die_with_parent() -> None:
    """``preexec_fn``: on Linux, SIGTERM the child when pytest dies, even by SIGKILL."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@pytest.fixture(scope="module")
def recommend_uvicorn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Uvicorn]:
    """The Django example under uvicorn, started as recommend.py's docstring says (but on a socket bound
    here and handed over with --fd, so that its port is known and no other process can take it)."""
    if OLD_DJANGO:
        pytest.skip(ASYNC_DJANGO_NEEDED)
    spec = importlib.util.spec_from_file_location("django_recommend_example", RECOMMEND / "recommend.py")
    assert spec is not None and spec.loader is not None
    recommend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recommend)  # defines things only: settings are configured in uvicorn's process
    folder = tmp_path_factory.mktemp("recommend")
    recommend.build_rankers(folder / "models")
    environment = {
        **os.environ,
        "DJANGO_RECOMMEND_REPOSITORY": str(folder / "models"),
        "DJANGO_SECRET_KEY": "abcdef" * 9,
        "DJANGO_RECOMMEND_SCORE_TOKEN": SCORE_TOKEN,
    }
    listener = listening_socket()
    command = [sys.executable, "-m", "uvicorn", "--factory", "--app-dir", str(RECOMMEND), "recommend:asgi_application"]
    command += ["--fd", str(listener.fileno()), "--log-level", "warning", "--no-access-log"]
    log = folder / "uvicorn.log"
    with listener, log.open("wb") as out:  # a file, not a pipe nobody reads
        process = subprocess.Popen(
            command, env=environment, pass_fds=[listener.fileno()], stdout=out, stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )  # fmt: skip
        server = Uvicorn(listener.getsockname()[1], log, recommend)
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded: until the models are ready, uvicorn exits, or a minute passes
            assert process.poll() is None, f"uvicorn exited: {log.read_text()}"
            try:
                if server.call("GET", "/-/inprocserve/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"not ready within 60 s: {log.read_text()}"
            time.sleep(0.05)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_django_async_score_under_uvicorn(recommend_uvicorn: Uvicorn) -> None:
    server = recommend_uvicorn
    logged = server.log_size()
    token = {"Authorization": f"Bearer {SCORE_TOKEN}"}
    for body in [
        b"not json", b"[1]", b"{}", b'{"products": []}', b'{"products": "3,17"}', b'{"products": [true]}',
        b'{"products": [3.0]}', b'{"products": [40]}', b'{"products": [-1]}', b'{"products": [1e999]}',
        json.dumps({"products": [0] * 41}).encode(), b'{"products": ' + b"[" * 1000 + b"]" * 1000 + b"}",
    ]:  # fmt: skip
        status, answer = server.call("POST", "/score", body, **token)
        assert (status, answer) == (400, {"error": server.recommend.SCORE_SHAPE}), body[:40]
    assert server.call("POST", "/score", b" " * 5000, **token) == (413, {"error": "the body is over 4096 bytes"})
    good = json.dumps({"products": [3, 17, 5, 3]}).encode()
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": SCORE_TOKEN}]:
        status, answer = server.call("POST", "/score", good, **headers)
        assert status == 401 and "Authorization: Bearer" in answer["error"]

    status, answer = server.call("POST", "/score", good, **token)
    assert status == 200, answer
    assert answer["version"] == 1
    weights = np.array(server.recommend.RANKER_WEIGHTS[1], np.float32)
    np.testing.assert_allclose(answer["scores"], server.recommend.ITEMS[[3, 17, 5, 3]] @ weights, rtol=1e-5)
    assert "Traceback" not in server.log_since(logged)


def test_django_async_rank_and_click_keep_their_protections_under_uvicorn(recommend_uvicorn: Uvicorn) -> None:
    server = recommend_uvicorn
    logged = server.log_size()
    for size in ["abc", "0", "16", "%C2%B2"]:
        status, answer = server.call("GET", f"/rank?user=u1&size={size}")
        assert status == 400 and "size must be" in answer["error"], size
    status, page = server.call("GET", "/rank?user=u1&size=8")
    assert status == 200 and sorted(page) == ["click_token", "positions", "products"]
    assert len(page["products"]) == 8

    def click(body: object, user: str = "u1") -> tuple[int, Any]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return server.call("POST", f"/click?user={user}", raw)

    shape = server.recommend.CLICK_SHAPE
    assert click(b"not json") == (400, {"error": shape})
    assert click({"click_token": page["click_token"], "position": "0"}) == (400, {"error": shape})
    assert click(b" " * 5000) == (413, {"error": "the body is over 4096 bytes"})
    assert click(b" " * 4096) == (400, {"error": shape})  # at the limit: read, and found not JSON
    assert click({"click_token": "x:y:z", "position": 0})[0] == 403
    good = {"click_token": page["click_token"], "position": page["positions"][0]}
    assert click(good, user="bot") == (403, {"error": "this page was shown to another user"})
    assert click({**good, "position": 99})[0] == 404
    assert click(good) == (200, {"recorded": True})
    assert server.call("GET", "/click?user=u1") == (405, {"error": "method not allowed: use POST"})  # async stack
    status, wins = server.call("GET", "/stats")
    assert status == 200 and wins["queries"] == 1 and wins["A"] + wins["B"] == 1  # only the real click
    assert "Traceback" not in server.log_since(logged)


def test_django_answers_only_its_allowed_hosts_under_uvicorn(recommend_uvicorn: Uvicorn) -> None:
    """A browser page on attacker.example whose name is rebound to the server's address sends Host:
    attacker.example; ALLOWED_HOSTS (127.0.0.1, localhost here) must refuse it."""
    server = recommend_uvicorn
    assert server.call("GET", "/rank?user=u1&size=2", Host="attacker.example") == (400, {"error": "bad request"})
    assert server.call("GET", "/-/inprocserve/ready", Host="attacker.example")[0] == 400
    assert server.call("GET", "/rank?user=u1&size=2", Host=f"localhost:{server.port}")[0] == 200


def answer_before_the_body(port: int, head: bytes, start: bytes) -> tuple[int, Any]:
    """Send a request's head and the start of its body, never the rest: the answer (status, JSON) can only
    come before the rest if the server does not wait for the body. Fails after 10 s without one."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head + start)
        answer = b""
        while chunk := sock.recv(65536):  # the answer says Connection: close
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), json.loads(rest.partition(b"\r\n\r\n")[2])


def test_django_refuses_a_large_body_under_uvicorn_without_reading_it(recommend_uvicorn: Uvicorn) -> None:
    server = recommend_uvicorn
    logged = server.log_size()
    too_large = (413, {"error": "the body is over 4096 bytes"})
    head = b"POST /click?user=u1 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
    declared = head + b"Content-Length: 1000000000\r\n\r\n"  # a gigabyte announced, 8 KiB of it sent
    assert answer_before_the_body(server.port, declared, b" " * 8192) == too_large
    chunk = b"400\r\n" + b" " * 1024 + b"\r\n"  # 1 KiB chunks, 8 sent, no last chunk ever
    streamed = head + b"Transfer-Encoding: chunked\r\n\r\n"
    assert answer_before_the_body(server.port, streamed, chunk * 8) == too_large

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)  # streamed within the limit
    try:
        parts = iter([b'{"products": ', b"[3, 17]}"])  # an iterator: sent chunked, with no Content-Length
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {SCORE_TOKEN}"}
        connection.request("POST", "/score", body=parts, headers=headers)
        response = connection.getresponse()
        assert response.status == 200 and len(json.loads(response.read())["scores"]) == 2
    finally:
        connection.close()
    assert "Traceback" not in server.log_since(logged)
