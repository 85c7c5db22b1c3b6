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

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.ports import reserved_port
from tests.processes import keep_gunicorns_apart

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")

ROOT = Path(__file__).resolve().parents[3]
GUNICORN = Path(sys.executable).with_name("gunicorn")
TESTS = Path(__file__).parent
URLS = """
import os
from django.http import JsonResponse
from django.urls import include, path
from django.views.decorators.csrf import csrf_exempt
from inprocserve_django import aget_server

@csrf_exempt
async def score(request):
    result = await (await aget_server()).apredict("scale", {"x": [[1.0, 2.0, 3.0, 4.0]]})
    return JsonResponse({"y": result["y"].tolist(), "version": result.version, "pid": os.getpid()})

urlpatterns = [path("score", score), path("-/inprocserve/", include("inprocserve_django.urls"))]
"""
ANSWER = [[2.0, 4.0, 6.0, 8.0]]  # the scale model (y = 2 x), version 1
WORKERS = 2

T = TypeVar("T")


def _until(check: Callable[[], T | None], what: str, log: Path, seconds: float = 60.0) -> T:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {seconds}s:\n{log.read_text(errors='replace')}")


def _children(pid: int) -> set[int]:
    try:
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}
    except OSError:  # (gone)
        return set()


def _alive(pid: int) -> bool:
    """Running, not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def _die_with_pytest() -> None:
    """``preexec_fn`` of each master: SIGTERM when the pytest process that started it dies, even by SIGKILL or a
    CI job's SIGTERM, which run no teardown (the master runs in a session of its own, so nothing else stops it:
    it served on, workers and all, on its reserved port)."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Gunicorn:
    """A gunicorn master over loopback."""

    def __init__(self, process: subprocess.Popen[bytes], port: int, log: Path) -> None:
        self.process, self.port, self.log = process, port, log
        self.master = process.pid

    def answer(self) -> dict[str, Any] | None:
        """One request's answer when it is the model's own (200, version 1); else None."""
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/score", data=b"")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                body: dict[str, Any] = json.loads(response.read())
        except (OSError, ValueError):  # (refused, reset, a 5xx: urllib's HTTPError is an OSError)
            return None
        return body if body.get("version") == 1 and body.get("y") == ANSWER else None

    def workers(self) -> set[int]:
        return _children(self.master)

    def answered_by_a_worker_of(self, generation: Callable[[], set[int]]) -> dict[str, Any] | None:
        body = self.answer()
        return body if body is not None and body["pid"] in generation() else None

    def settled(self, count: int = WORKERS) -> set[int]:
        """The workers, once there are ``count`` (those a reload or a scale-down stopped have exited)."""
        return _until(lambda: len(pids := self.workers()) == count and pids, f"{count} workers", self.log)

    def check(self, event: str) -> None:
        assert _alive(self.master), f"the master died at {event}:\n{self.log.read_text(errors='replace')}"
        text = self.log.read_text(errors="replace")
        for bad in ("Traceback", "Worker failed to boot", "Exception"):
            assert bad not in text, f"{bad!r} in the log at {event}:\n{text}"


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
                preexec_fn=_die_with_pytest,
            )
        server = Gunicorn(process, port, log)
        started.append(server)
        _until(server.answer, "the first workers serve", log)
        server.check("start")
        return server

    yield _start
    for server in started:
        for master in {server.process.pid, server.master}:
            if _alive(master):
                os.kill(master, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while any(_alive(pid) for pid in (server.process.pid, server.master)) and time.monotonic() < deadline:
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
    _until(
        lambda: server.answered_by_a_worker_of(lambda: server.workers() - first), "a reloaded worker serves", server.log
    )
    reloaded = _until(lambda: (pids := server.settled()) and not pids & first and pids, "only new workers", server.log)
    server.check("HUP")

    os.kill(server.master, signal.SIGTTIN)  # one more worker
    added = _until(
        lambda: len(pids := server.workers()) == WORKERS + 1 and pids - reloaded, "a worker added", server.log
    )
    _until(lambda: server.answered_by_a_worker_of(lambda: added), "the added worker serves", server.log)
    server.check("TTIN")
    os.kill(server.master, signal.SIGTTOU)  # and one less (the oldest)
    server.settled()
    _until(server.answer, "the workers left serve", server.log)
    server.check("TTOU")

    crashed = _until(server.answer, "a worker serves", server.log)["pid"]
    os.kill(crashed, signal.SIGKILL)  # a crash: gunicorn starts a replacement, which runs the check again
    _until(lambda: crashed not in (pids := server.settled()) and pids, "a replacement worker", server.log)
    _until(lambda: server.answered_by_a_worker_of(lambda: server.workers() - {crashed}), "it serves", server.log)
    server.check("a worker SIGKILLed")
