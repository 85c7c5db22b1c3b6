"""The server processes tests start (gunicorn masters, Prometheus and the like): kept apart while they run, and
stopped as a deploy stops them."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from .ports import reserved_port

NO_CONTROL_SOCKET = "--no-control-socket"


def gunicorn_has_control_socket() -> bool:
    """Whether the installed gunicorn opens a control socket (27.0 on; the pin allows 21, which refuses the flag)."""
    try:
        major = importlib.metadata.version("gunicorn").split(".")[0]
    except importlib.metadata.PackageNotFoundError:
        return False
    return major.isdigit() and int(major) >= 27


def keep_gunicorns_apart(environ: MutableMapping[str, str] = os.environ) -> None:
    """Start every gunicorn of the tests (each inherits ``environ``) without its control socket.

    gunicorn 27 opens one at ``~/.gunicorn/gunicorn.ctl``, one path per user, and each master unlinks and binds it
    again at its start and around every fork, taking it from the others: the gunicorns that parallel tests
    (``pytest -n 2``) start shared it. ``GUNICORN_CMD_ARGS`` reaches each, however its test builds its command;
    a test that keeps the socket (its own path) drops it from its child's environment."""
    args = environ.get("GUNICORN_CMD_ARGS", "")
    if gunicorn_has_control_socket() and NO_CONTROL_SOCKET not in args.split():
        environ["GUNICORN_CMD_ARGS"] = f"{args} {NO_CONTROL_SOCKET}".strip()


def stop_process(process: subprocess.Popen[Any], timeout_s: float = 30.0) -> None:
    """SIGTERM (a deploy's stop), then SIGKILL if it has not exited within ``timeout_s``; always reaped, so a
    test that failed half-way leaves no server behind it."""
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Prometheus:
    """A Prometheus server a test started (:func:`prometheus_server`): its HTTP API, read as a test reads it."""

    def __init__(self, url: str, log: Path) -> None:
        self.url, self.log = url, log

    def get(self, path: str, **params: str) -> Any:
        """The ``data`` of an API answer (``path`` may carry its query already; ``params`` are added to it)."""
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}{path}{query}", timeout=10) as response:
            body = json.load(response)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self.get("/api/v1/query", query=promql)
        assert data["resultType"] == "vector", data
        return list(data["result"])

    def scalar(self, promql: str) -> float | None:
        """The one value ``promql`` gives now (None: no series)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait_for(self, promql: str, expected: float, timeout_s: float = 20.0) -> None:
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = self.scalar(promql)
            if value == expected:
                return
            time.sleep(0.25)
        raise AssertionError(f"{promql} = {value}, not {expected}, after {timeout_s}s\n{self.log_tail()}")

    def firing(self) -> set[tuple[tuple[str, str], ...]]:
        """The labels of every firing alert (alertname included), each as sorted pairs."""
        return {
            tuple(sorted(alert["labels"].items()))
            for alert in self.get("/api/v1/alerts")["alerts"]
            if alert["state"] == "firing"
        }

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def prometheus_binary() -> str:
    """The path of the ``prometheus`` server; skips the test, saying how to install it, where there is none."""
    path = shutil.which("prometheus")
    if path is None:
        pytest.skip("the prometheus server is not installed: `make system-deps` (apt-get install prometheus) adds it")
    return path


@contextlib.contextmanager
def prometheus_server(
    folder: Path, *, targets: Mapping[str, Sequence[int]], rules: str, startup_timeout_s: float = 30.0
) -> Iterator[Prometheus]:
    """A Prometheus server (Debian's package) in ``folder`` (made here), scraping each job's loopback ports of
    ``targets`` and evaluating the rules file text ``rules`` every second, on a port of its own; yielded once it
    answers ``/-/ready``, stopped (SIGTERM, then SIGKILL) on leaving. Skips the test where Prometheus is not
    installed (:func:`prometheus_binary`)."""
    binary = prometheus_binary()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "alerts.yml").write_text(rules)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(folder / "alerts.yml")],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}" for port in ports]}]}
            for job, ports in targets.items()
        ],
    }
    (folder / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = reserved_port()  # Prometheus takes a port number only
    server = Prometheus(f"http://127.0.0.1:{port}", folder / "prometheus.log")
    with open(server.log, "wb") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while not _answers(f"{server.url}/-/ready"):
            assert process.poll() is None, f"prometheus exited:\n{server.log_tail()}"
            assert time.monotonic() < deadline, f"prometheus not ready:\n{server.log_tail()}"
            time.sleep(0.2)
        yield server
    finally:
        stop_process(process, timeout_s=10.0)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return int(answer.status) == 200
    except OSError:
        return False
