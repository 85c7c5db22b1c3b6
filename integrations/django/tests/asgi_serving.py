"""Real ASGI servers (uvicorn, daphne, hypercorn, granian) serving the Django test project, for the tests: started
on a loopback port no other process can take, waited for, stopped by a signal, and timed as they stop."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from inprocserve.testing import build_scale_model, save_model
from tests.interruptible import interruptible
from tests.ports import listening_socket, reserved_port

TESTS = Path(__file__).parent
APPLICATION = "asgi_servers_app:application"


def call(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
    """One request on a connection of its own; the status and the JSON body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        payload = raw if raw is not None else None if body is None else json.dumps(body).encode()
        headers = {} if payload is None else {"Content-Type": "application/json"}
        connection.request(method, path, body=payload, headers=headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def _processes() -> list[tuple[str, int]]:
    """Each process's state letter and process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # (gone meanwhile)
                continue
            state, _parent, group = stat[stat.rindex(")") + 2 :].split()[:3]
            found.append((state, int(group)))
    return found


def _command(server: str, loop: str, fd: int | None, port: int | None, workers: int) -> list[str]:
    python = [sys.executable, "-m"]
    if server == "uvicorn":
        return [
            *python,
            *("uvicorn", "--factory", "django.core.asgi:get_asgi_application", "--fd", str(fd), "--loop", loop),
            *("--log-level", "warning", "--no-access-log"),
        ]
    if server == "daphne":  # (twisted's asyncio reactor, on a loop of asyncio's own: no choice of loop)
        return [*python, "daphne", "--fd", str(fd), "-v", "0", APPLICATION]
    if server == "hypercorn":
        return [
            *python,
            *("hypercorn", "--bind", f"fd://{fd}", "-k", loop, "--workers", str(workers), "--log-level", "warning"),
            APPLICATION,
        ]
    if server == "granian":  # (takes no socket: a port, bound with SO_REUSEADDR, which reserved_port allows)
        return [
            *python,
            *("granian", "--interface", "asgi", "--host", "127.0.0.1", "--port", str(port), "--loop", loop),
            *("--workers", str(workers), "--log-level", "warning", "--no-access-log", APPLICATION),
        ]
    raise ValueError(f"unknown server {server!r}")


@dataclass
class Served:
    """A server process answering on ``port``; its stderr (and stdout) collected in ``log``. It leads a process
    group of its own, with the workers it starts: signals go to it alone, as a deploy's would, and what is
    left of the group once it exits was left behind."""

    name: str
    loop: str
    workers: int
    process: subprocess.Popen[bytes]
    port: int
    log: Path
    stopped_in_s: float | None = field(default=None)
    left_behind: bool = field(default=False)  # a process it started (a worker) outlived it at its first stop

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None) -> tuple[int, Any]:
        return call(self.port, method, path, body, raw=raw)

    def stop(self, signum: int = signal.SIGTERM, *, bound_s: float = 30.0) -> float:
        """Send ``signum`` and wait (at most ``bound_s``, then SIGKILL) for the server to exit; the seconds it
        took, which is ``bound_s`` or more for a server that had to be killed."""
        started = time.monotonic()
        if self.process.poll() is None:
            self.process.send_signal(signum)
        try:
            self.process.wait(timeout=bound_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=30)
        stopped_in_s = time.monotonic() - started
        if self.stopped_in_s is None:  # (the first stop is the one measured)
            self.stopped_in_s = stopped_in_s
            self.left_behind = self._group_lives(grace_s=2.0)
        if self._group_lives():  # workers it left: killed, once seen
            os.killpg(self.process.pid, signal.SIGKILL)
        return stopped_in_s

    def _group_lives(self, *, grace_s: float = 0.0) -> bool:
        """Whether a process of its group is still running (not a zombie: this machine's init reaps slowly),
        within ``grace_s`` (multiprocessing's resource tracker, which hypercorn starts, exits after it)."""
        deadline = time.monotonic() + grace_s
        while True:
            if not any(pgrp == self.process.pid and state != "Z" for state, pgrp in _processes()):
                return False
            if time.monotonic() >= deadline:
                return True
            time.sleep(0.02)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def scale_version(served: Served) -> dict[str, Any]:
    """Version 1 of the served ``scale`` model, as the plug-in's ``/models`` endpoint reports it."""
    status, models = served.call("GET", "/-/inprocserve/models")
    assert status == 200, models
    version: dict[str, Any] = models["models"]["scale"]["versions"]["1"]
    return version


def send_together(port: int, indices: range) -> list[tuple[int, Any]]:
    """A one-row request to the async view for each of ``indices``, a connection each, sent whole but for the
    last byte of its body; then those last bytes one after another, so that the requests reach the server
    together however slowly this process sent the rest. The status and body of each answer."""
    connections: list[tuple[socket.socket, bytes]] = []
    try:
        for index in indices:
            body = json.dumps({"rows": [[index, index, index, index]]}).encode()
            head = "POST /ascore HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            connection = socket.create_connection(("127.0.0.1", port), timeout=30)
            connections.append((connection, body[-1:]))
            connection.sendall(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body[:-1])
        for connection, last in connections:
            connection.sendall(last)
        answers = []
        for connection, _ in connections:
            response = http.client.HTTPResponse(connection)
            response.begin()
            answers.append((response.status, json.loads(response.read())))
        return answers
    finally:
        for connection, _ in connections:
            connection.close()


def bursts_until_shared(
    port: int, rows_run: Callable[[], tuple[int, int]], *, clients: int, bound_s: float = 30
) -> int:
    """Bursts of ``clients`` requests sent together (:func:`send_together`), each answer checked (the scale
    model doubles its input), until the version's counts (``rows_run()``: rows and batches run) say that some
    requests shared a run; the requests sent. Not every burst shares one: Django's ASGI handler takes each
    request through a thread (``request_started``'s receivers) before the view, and a view's task joins a group
    only if another task calls ``apredict`` in the same iteration of the loop, so a loop that keeps up with that
    thread runs each request alone (192 requests from 32 client threads once ran as 192 runs at a load average
    of 7). Fails after ``bound_s`` of bursts none of which shared a run."""
    rows_before, batches_before = rows_run()
    sent = 0
    deadline = time.monotonic() + bound_s
    while True:
        answers = send_together(port, range(sent, sent + clients))
        for index, (status, body) in enumerate(answers, start=sent):
            assert status == 200, body
            assert body == {"y": [[2.0 * index] * 4], "version": 1}
        sent += clients
        rows, batches = rows_run()
        assert rows - rows_before == sent
        # requests that arrived in the same iteration of the server's event loop ran together
        if batches - batches_before < sent:
            return sent
        assert time.monotonic() < deadline, f"{sent} requests in bursts of {clients} ran as {sent} runs"


def serve(server: str, tmp_path: Path, *, loop: str = "asyncio", workers: int = 1, inprocserve: str = "") -> Served:
    """Start ``server`` on the test project with a repository holding the ``scale`` model (y = 2 x, 4 columns),
    and wait (at most a minute) until it answers. ``inprocserve``: more entries of the ``INPROCSERVE`` setting,
    as Python source (``"'EAGER': True"``)."""
    repository = tmp_path / "models"
    if not repository.exists():
        save_model(build_scale_model(2.0), repository, "scale", 1)
    (tmp_path / "asgi_settings.py").write_text(
        "from testproject_settings import *  # noqa: F403\n"
        "ROOT_URLCONF = 'asgi_servers_urls'\n"
        # errors of views (Django logs them only to mail_admins when DEBUG is off) to the log too
        "LOGGING = {'version': 1, 'disable_existing_loggers': False, 'handlers': {'console': "
        "{'class': 'logging.StreamHandler'}}, 'loggers': {'django.request': {'handlers': ['console']}}}\n"
        f"INPROCSERVE = {{'REPOSITORY': {str(repository)!r}, {inprocserve}}}\n"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "asgi_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), *sys.path]),
    }
    log = tmp_path / f"{server}-{loop}-{workers}.log"
    if server == "granian":
        port, fds = reserved_port(), ()
        command = _command(server, loop, None, port, workers)
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                env=environment,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=interruptible,  # (the SIGINT tests' signal reaches it even where CI's shell ignores it)
            )
    else:
        listener = listening_socket()
        port, fds = listener.getsockname()[1], (listener.fileno(),)
        command = _command(server, loop, listener.fileno(), None, workers)
        with listener, log.open("wb") as out:  # this copy closed once the server holds its own
            process = subprocess.Popen(
                command,
                env=environment,
                pass_fds=fds,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=interruptible,
            )
    served = Served(server, loop, workers, process, port, log)
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded: until it answers, it exits, or a minute passes
            if process.poll() is not None:
                raise AssertionError(f"{server} exited with {process.returncode}: {served.output()}")
            try:
                if call(port, "GET", "/-/inprocserve/health")[0] == 200:
                    return served
            except (OSError, http.client.HTTPException):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"{server} did not answer within 60 s: {served.output()}")
            time.sleep(0.05)
    except BaseException:
        served.stop(signal.SIGKILL)
        raise
