"""A real ``gunicorn -k asgi`` serving an ASGI app that awaits ``server.apredict``: its workers stop by
themselves when the master is told to stop, after a load and while they boot (docs/deployment.md, "gunicorn's
asgi worker").

A worker stopped in time exits by itself and the master reaps it (the settings' ``child_exit`` records it); a
worker that does not is killed with SIGKILL at ``--graceful-timeout`` and is either not reaped before the master
exits or reaped with gunicorn's "was sent SIGKILL" line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_scale_model, save_model

from .ports import listening_socket

HERE = Path(__file__).parent
WORKERS = 3
CLIENTS = 32


def _call(url: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, json.loads(response.read())


@dataclass
class Gunicorn:
    master: subprocess.Popen[bytes]
    base: str
    log: Path
    reaped: Path

    def stop(self) -> int:
        """SIGTERM to the master, as a deploy or ``systemctl stop`` sends; its exit status."""
        self.master.send_signal(signal.SIGTERM)
        return self.wait()

    def wait(self) -> int:
        try:
            return self.master.wait(timeout=60)  # (well past the graceful timeout: a bound, not the check)
        except subprocess.TimeoutExpired:
            self.master.kill()
            return self.master.wait()

    def assert_every_worker_stopped_by_itself(self) -> None:
        text = self.log.read_text(errors="replace")
        booted = set(re.findall(r"Booting worker with pid: (\d+)", text))
        reaped = set(self.reaped.read_text().split()) if self.reaped.exists() else set()
        assert booted and booted <= reaped, (booted - reaped, text)  # none left to the SIGKILL
        assert "SIGKILL" not in text and "WORKER TIMEOUT" not in text, text
        assert "Traceback" not in text, text


@pytest.fixture
def start_gunicorn(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip(
        "gunicorn.workers.gasgi", reason="this gunicorn has no asgi worker (-k asgi came with gunicorn 27)"
    )
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    started: list[Gunicorn] = []

    def start(*options: str, env: dict[str, str] | None = None, wait_for_workers: bool = True) -> Gunicorn:
        listener = listening_socket()  # handed to gunicorn: no other process can take its port first
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        environment = {
            **os.environ,
            **(env or {}),
            "INPROCSERVE_TEST_REPOSITORY": str(repository),
            "INPROCSERVE_TEST_REAPED": str(tmp_path / "reaped"),
            "INPROCSERVE_TEST_STOPPER": str(tmp_path / "stopper"),
            "INPROCSERVE_TEST_WORKERS": str(WORKERS),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", ""), *sys.path]),
        }
        command = [
            sys.executable, "-m", "gunicorn", "--config", str(HERE / "gunicorn_asgi_conf.py"), "--worker-class",
            "asgi", "--workers", str(WORKERS), "--graceful-timeout", "20", "--timeout", "60", "--bind",
            f"fd://{listener.fileno()}", "--log-level", "info", *options, "gunicorn_asgi_app:app",
        ]  # fmt: skip
        log = tmp_path / "gunicorn.log"
        with listener, open(log, "wb") as output:
            master = subprocess.Popen(
                command,
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=HERE,
                pass_fds=[listener.fileno()],
            )
        server = Gunicorn(master, base, log, tmp_path / "reaped")
        started.append(server)
        if wait_for_workers:
            # Every worker serves before the test goes on: a SIGTERM that reaches a worker before gunicorn gave it
            # handlers of its own (right after the fork) is lost whatever the app (see test_gunicorn_gevent.py).
            pids: set[int] = set()
            deadline = time.monotonic() + 60
            while len(pids) < WORKERS:
                assert master.poll() is None and time.monotonic() < deadline, log.read_text()
                try:
                    with ThreadPoolExecutor(8) as pool:
                        pids |= {answer["pid"] for _, answer in pool.map(lambda _: _call(f"{base}/ping"), range(8))}
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    time.sleep(0.1)
        return server

    yield start
    for server in started:
        if server.master.poll() is None:
            server.master.kill()
            server.master.wait()


@pytest.mark.parametrize("preload", [False, True], ids=["lazy", "preload"])
def test_asgi_workers_awaiting_apredict_stop_by_themselves_after_a_load(start_gunicorn: Any, preload: bool) -> None:
    server = start_gunicorn(*(["--preload"] if preload else []))

    def score(index: int) -> Any:
        return _call(f"{server.base}/score", {"rows": [[float(index)] * 4]})

    with ThreadPoolExecutor(CLIENTS) as clients:
        answers = list(clients.map(score, range(CLIENTS * 10)))
    assert [status for status, _ in answers] == [200] * len(answers)
    assert [answer["y"] for _, answer in answers] == [[[2.0 * i] * 4] for i in range(len(answers))]
    assert server.stop() == 0
    server.assert_every_worker_stopped_by_itself()


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_asgi_workers_told_to_stop_while_they_boot_stop_by_themselves(start_gunicorn: Any, loop: str) -> None:
    """The master's SIGTERM reaches a worker while it warms its models in the hook (or imports the app): on
    uvloop, which gunicorn's default ``--asgi-loop auto`` picks where it is installed, such a worker served on,
    and the master killed it at ``--graceful-timeout``, until the hook made its loop hear the signal."""
    if loop == "uvloop":
        pytest.importorskip("uvloop", reason="uvloop is not installed (it is in the dev extra)")
    server = start_gunicorn(
        "--asgi-loop", loop, env={"INPROCSERVE_TEST_STOP_WHILE_BOOTING": "1"}, wait_for_workers=False
    )
    assert server.wait() == 0  # (a worker asked the master to stop)
    server.assert_every_worker_stopped_by_itself()
