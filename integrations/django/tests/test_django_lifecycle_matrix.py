"""The signals docs/deployment.md names for gunicorn, sent to a real gunicorn serving the Django plug-in over
loopback, in the setup where each worker imports the package itself and runs EAGER's start-up check from
``AppConfig.ready()``: no ``--preload``, no hook file, gunicorn's ``asgi`` worker with an async view awaiting
``apredict``. A ``kill -HUP`` there once shut the whole server down (an import-time check called a function
defined further down the module: "Worker failed to boot"). After each event: a worker of the current generation
answers with the model's own answer and version, the master lives, and the log holds no traceback. The other
cells (``--preload``, the hook file, uvicorn's worker class, ``uvicorn --workers 2``'s own HUP, TTIN, TTOU and
``--limit-max-requests``) were run by hand and passed the same checks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.lifecycle import WORKERS, Gunicorn, alive, die_with_pytest, until
from tests.ports import reserved_port
from tests.processes import keep_gunicorns_apart

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

ROOT = Path(__file__).resolve().parents[3]
GUNICORN = Path(sys.executable).with_name("gunicorn")
TESTS = Path(__file__).parent
# (no @csrf_exempt on the view: the test project has no CsrfViewMiddleware, and before Django 5.0 the decorator
# wraps an async view in a sync function, whose coroutine Django's handler never awaits: a 500 per request)
URLS = """
import os
from django.http import JsonResponse
from django.urls import include, path
from inprocserve_django import aget_server

async def score(request):
    result = await (await aget_server()).apredict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]})
    return JsonResponse({"y": result["y"].tolist(), "version": result.version, "pid": os.getpid()})

urlpatterns = [path("score", score), path("-/inprocserve/", include("inprocserve_django.urls"))]
"""


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    started: list[Gunicorn] = []

    def _start(*options: str) -> Gunicorn:
        repository = tmp_path / "models"
        save_model(build_scale_model(2.0), repository, "scale", 1)
        (tmp_path / "matrix_urls.py").write_text(URLS)
        (tmp_path / "matrix_settings.py").write_text(
            "from testproject_settings import *  # noqa: F403\n"
            "ROOT_URLCONF = 'matrix_urls'\n"
            f"INPROCSERVE = {{'REPOSITORY': {str(repository)!r}, 'EAGER': True}}\n"
        )
        env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "matrix_settings",
            "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), *sys.path]),
        }
        keep_gunicorns_apart(env)
        port = reserved_port()
        command = [str(GUNICORN), "--config", "/dev/null", "--workers", str(WORKERS), "--bind", f"127.0.0.1:{port}"]
        command += [
            "--chdir",
            str(tmp_path),
            "--graceful-timeout",
            "10",
            *options,
            "django.core.asgi:get_asgi_application()",
        ]
        log = tmp_path / "gunicorn.log"
        with log.open("wb") as out:  # (a session of its own: whatever is left at the end is stopped as one group)
            process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=die_with_pytest,
            )
        server = Gunicorn(process, port, log)
        started.append(server)
        until(server.answer, "the first workers serve", log)
        server.check("start")
        return server

    yield _start
    for server in started:
        for master in {server.process.pid, server.master}:
            if alive(master):
                os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in (server.process.pid, server.master)) and time.monotonic() < deadline:
            time.sleep(0.05)
        try:
            os.killpg(server.process.pid, signal.SIGKILL)  # (anything left: a worker the stop missed)
        except OSError:
            pass
        server.process.wait(timeout=30)


def test_every_signal_of_the_deployment_page_leaves_gunicorn_serving_django(start: Callable[..., Gunicorn]) -> None:
    server = start("--worker-class", "asgi")
    first = server.settled()

    os.kill(server.master, signal.SIGHUP)  # a reload: new workers, then the old ones stop
    until(
        lambda: server.answered_by_a_worker_of(lambda: server.workers() - first), "a reloaded worker serves", server.log
    )
    reloaded = until(lambda: (pids := server.settled()) and not pids & first and pids, "only new workers", server.log)
    server.check("HUP")

    os.kill(server.master, signal.SIGTTIN)  # one more worker
    added = until(
        lambda: len(pids := server.workers()) == WORKERS + 1 and pids - reloaded, "a worker added", server.log
    )
    until(lambda: server.answered_by_a_worker_of(lambda: added), "the added worker serves", server.log)
    server.check("TTIN")
    os.kill(server.master, signal.SIGTTOU)  # and one less (the oldest)
    server.settled()
    until(server.answer, "the workers left serve", server.log)
    server.check("TTOU")

    crashed = until(server.answer, "a worker serves", server.log)["pid"]
    os.kill(crashed, signal.SIGKILL)  # a crash: gunicorn starts a replacement, which runs the check again
    until(lambda: crashed not in (pids := server.settled()) and pids, "a replacement worker", server.log)
    until(lambda: server.answered_by_a_worker_of(lambda: server.workers() - {crashed}), "it serves", server.log)
    server.check("a worker SIGKILLed")
