"""A real Prometheus server scrapes the OpenTelemetry Prometheus exporter of an application under load.

The p99 that Prometheus computes from the request-duration histogram (``histogram_quantile``) must agree,
within 2x, with the p99 that the application's callers measured around ``predict``; the shipped alert
rules must stay quiet on that healthy model even though one request in 20 is a caller's mistake, while the
error rule's condition holds for a second model that fails with server errors; and the process and
per-model memory metrics must reach the same Prometheus.

Needs Debian's ``prometheus`` package (``make system-deps``); skips, saying so, without it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pytest
import yaml

import inprocserve
from inprocserve._telemetry import DURATION_BUCKETS_S
from inprocserve.testing import save_model

from .conftest import build_busy_model
from .processes import Prometheus, prometheus_binary, prometheus_server
from .test_telemetry import build_multiple_of_3_model

HERE = Path(__file__).resolve().parent
ALERTS = HERE.parent / "docs" / "observability" / "alerts.yml"
WIDTH = 256
LOAD_SECONDS = 4.0
STARTUP_TIMEOUT_S = 30.0


class _Lines:
    """The lines a process writes to stdout, read by a thread into a queue so that waiting can time out."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.queue: queue.Queue[str] = queue.Queue()
        self.thread = threading.Thread(target=self._pump, daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        for line in self.stream:
            self.queue.put(line)

    def next(self, timeout_s: float) -> str:
        return self.queue.get(timeout=timeout_s)

    def close(self) -> None:
        self.thread.join(timeout=10)  # the process has exited: the stream is at its end
        self.stream.close()


def _stop(process: subprocess.Popen[Any]) -> None:
    """End the application: it exits by itself once its stdin closes."""
    if process.stdin is not None:
        process.stdin.close()
        try:
            process.wait(timeout=10)
            return
        except subprocess.TimeoutExpired:
            pass
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], _Lines, int, Path]]:
    """The application process: returns it, its stdout lines, its /metrics port and its results file."""
    prometheus_binary()  # (skips before the application starts where Prometheus is not installed)
    repository = tmp_path / "models"
    save_model(build_busy_model(width=WIDTH, layers=8), repository, "busy", 1)
    save_model(build_multiple_of_3_model(), repository, "triples", 1)
    (repository / "triples" / "config.toml").write_text("[batching]\nmax_batch_size = 3\n[warmup]\nenabled = false\n")
    results = tmp_path / "results.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(inprocserve.__file__).parent.parent), env.get("PYTHONPATH", "")])
    with open(tmp_path / "app.log", "w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "prometheus_app.py"),
                str(repository),
                str(results),
                *("--width", str(WIDTH), "--seconds", str(LOAD_SECONDS), "--clients", "4", "--failing", "triples"),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=env,
        )
    assert process.stdout is not None
    lines = _Lines(process.stdout)
    try:
        try:
            port = json.loads(lines.next(STARTUP_TIMEOUT_S))["port"]
        except queue.Empty:
            raise AssertionError(f"the application did not start:\n{(tmp_path / 'app.log').read_text()}") from None
        yield process, lines, port, results
    finally:
        _stop(process)
        lines.close()


@pytest.fixture
def prometheus(app: Any, tmp_path: Path) -> Iterator[Prometheus]:
    _, _, app_port, _ = app
    # the shipped rules, loaded as they are, so the real server parses them too
    with prometheus_server(
        tmp_path / "prometheus",
        targets={"app": [app_port]},
        rules=ALERTS.read_text(),
        startup_timeout_s=STARTUP_TIMEOUT_S,
    ) as server:
        yield server


def test_prometheus_p99_agrees_with_the_callers_p99(prometheus: Prometheus, app: Any) -> None:
    process, lines, _, results_file = app
    prometheus.wait_for('up{job="app"}', 1.0)  # scraped at least once before the load starts
    process.stdin.write("go\n")
    process.stdin.flush()
    assert lines.next(LOAD_SECONDS + 60).strip() == "done"
    results = json.loads(results_file.read_text())
    latencies = np.array(results["latencies_s"])
    assert len(latencies) >= 100, len(latencies)
    ok = 'inprocserve_model_name="busy",inprocserve_outcome="ok"'
    prometheus.wait_for(f"sum(inprocserve_request_duration_seconds_count{{{ok}}})", float(len(latencies)))
    prometheus.wait_for(
        'sum(inprocserve_request_duration_seconds_count{inprocserve_outcome="client_error"})',
        float(results["client_errors"]),
    )
    assert results["server_errors"] >= 10, results["server_errors"]
    prometheus.wait_for(
        'sum(inprocserve_request_duration_seconds_count{inprocserve_outcome="server_error",error_type="InferenceError"})',
        float(results["server_errors"]),
    )

    # The p99 as histogram_quantile defines it: the smallest latency with 99 % of the calls at or below it
    # (rank ceil(0.99 n)), not an interpolation between two calls that may sit in different buckets.
    measured_p99 = float(np.percentile(latencies, 99, method="inverted_cdf"))
    # The counters start at zero with the process, so the latest scrape holds every request of the run.
    estimated_p99 = prometheus.scalar(
        f"histogram_quantile(0.99, sum by (le) (inprocserve_request_duration_seconds_bucket{{{ok}}}))"
    )
    assert estimated_p99 is not None
    # A caller's own timing also holds its wait for the GIL after predict returns, up to the interpreter's
    # switch interval (5 ms by default) when other threads run Python: no measurement inside the library can
    # see it, so the lower bound leaves that much room (a loaded CI machine measured 6.4 ms against 3.0),
    # and never less than a tenth of the callers' p99 (a wrong unit would be a thousandth).
    lowest = max(measured_p99 - sys.getswitchinterval(), measured_p99 / 5) / 2
    assert lowest <= estimated_p99 <= measured_p99 * 2, (estimated_p99, measured_p99)
    print(f"p99 of {len(latencies)} calls: callers {measured_p99:.5f} s, Prometheus {estimated_p99:.5f} s")
    # The rate over the load, as the alert rules compute it, reads the same, up to one bucket: rate()
    # extrapolates each bucket's increase over the window on its own, which can move the rank across the
    # boundary above the true p99 (a run read 19.2 ms against the callers' 9.4 ms: the 10-20 ms bucket).
    windowed_p99 = prometheus.scalar(
        f"histogram_quantile(0.99, sum by (le) (rate(inprocserve_request_duration_seconds_bucket{{{ok}}}[1m])))"
    )
    one_bucket_up = min(b for b in DURATION_BUCKETS_S if b >= measured_p99 * 2)
    assert windowed_p99 is not None and lowest <= windowed_p99 <= one_bucket_up, (windowed_p99, measured_p99)

    # The shipped rules stay quiet on the healthy model, though 5 % of its requests were the callers' mistakes
    # (a rule counting every failed request as an error, as before, would fire); the error rule's condition
    # holds for the failing model only (it would fire after its 10 minutes).
    failed_share = prometheus.scalar(
        'sum(rate(inprocserve_request_duration_seconds_count{inprocserve_model_name="busy",inprocserve_outcome!="ok"}[5m]))'
        ' / sum(rate(inprocserve_request_duration_seconds_count{inprocserve_model_name="busy"}[5m]))'
    )
    assert failed_share is not None and failed_share > 0.01
    rules = {
        rule["alert"]: rule["expr"] for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    }
    for name in ("ModelLatencyHigh", "ModelShedding", "ModelDeadlinesMissed"):
        assert prometheus.query(rules[name]) == [], name
    (failing,) = prometheus.query(rules["ModelErrorRateHigh"])
    assert failing["metric"] == {"inprocserve_model_name": "triples"}
    latencies_by_model = prometheus.query(rules["ModelLatencyHigh"].rsplit(">", 1)[0])  # the rule's p99 has data
    assert {series["metric"]["inprocserve_model_name"] for series in latencies_by_model} == {"busy", "triples"}
    assert all(float(series["value"][1]) < 0.25 for series in latencies_by_model)
    loaded = prometheus.get("/api/v1/rules")["groups"]
    assert {rule["name"] for group in loaded for rule in group["rules"]} == set(rules)
    assert all(rule["health"] != "err" for group in loaded for rule in group["rules"]), loaded

    # Process CPU and memory (the standard system-metrics instrumentation) and per-model memory, same exporter.
    assert (prometheus.scalar('process_cpu_time_seconds_total{job="app",type="user"}') or 0) > 0
    assert (prometheus.scalar('process_memory_usage_bytes{job="app"}') or 0) > 10 * 2**20
    assert (prometheus.scalar('inprocserve_model_memory_bytes{inprocserve_model_name="busy"}') or 0) > 0
