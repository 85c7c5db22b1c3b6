"""An application under load for ``test_prometheus.py``, in a process of its own (the OpenTelemetry meter
provider and the Prometheus client's registry are process-wide).

It installs the SDK with the Prometheus exporter and the process metrics, serves ``/metrics`` on a loopback
port it prints as JSON, waits for a line on stdin, then lets client threads call ``predict`` for a while,
timing every call as its caller sees it. With ``--failing MODEL`` one more client calls a model that
fails on every other call (server errors). It writes the timings and counts to a JSON file, prints
``done``, and keeps serving ``/metrics`` until stdin closes.

Usage: python prometheus_app.py REPOSITORY RESULTS.json --model busy --width 256 --clients 4 --seconds 5
       [--failing triples]
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from opentelemetry import metrics
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.instrumentation.system_metrics import SystemMetricsInstrumentor
from opentelemetry.sdk.metrics import MeterProvider
from prometheus_client import start_http_server

import inprocserve

MAX_REQUESTS_PER_CLIENT = 50_000  # a bound on the loop besides its time
ROWS = (1, 1, 1, 1, 1, 1, 1, 8, 8, 64)  # mostly single rows, some larger requests: a spread of latencies
CLIENT_ERROR_EVERY = 20  # one request in 20 has the wrong width: the caller's mistake (client_error)


def client(server: inprocserve.Server, model: str, width: int, seed: int, until: float) -> tuple[list[float], int]:
    """Call predict until ``until``; return the latencies of the answered calls and the count of refused ones."""
    rng = np.random.default_rng(seed)
    latencies: list[float] = []
    client_errors = 0
    for number in range(MAX_REQUESTS_PER_CLIENT):
        if time.perf_counter() >= until:
            break
        rows = int(rng.choice(ROWS))
        bad = number % CLIENT_ERROR_EVERY == CLIENT_ERROR_EVERY - 1
        inputs = {
            "x": rng.standard_normal((rows, width + 1 if bad else width)).astype(np.float32),
            "index": np.ones(rows, dtype=np.int64),
        }
        started = time.perf_counter()
        try:
            server.predict(model, inputs)
        except inprocserve.InvalidInputError:
            client_errors += 1
            continue
        latencies.append(time.perf_counter() - started)
    return latencies, client_errors


def failing_client(server: inprocserve.Server, model: str, until: float) -> int:
    """Call a model that runs only batches of a multiple of 3 rows, alternately with 3 rows and 1 row;
    return how many calls failed with InferenceError (server errors)."""
    failures = 0
    for number in range(MAX_REQUESTS_PER_CLIENT):
        if time.perf_counter() >= until:
            break
        try:
            server.predict(model, np.ones((3 if number % 2 else 1, 4), np.float32))
        except inprocserve.InferenceError:
            failures += 1
        time.sleep(0.005)  # a trickle next to the main load
    return failures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("repository", type=Path)
    parser.add_argument("results", type=Path)
    parser.add_argument("--model", default="busy")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--failing", default=None)
    args = parser.parse_args()

    metrics.set_meter_provider(MeterProvider(metric_readers=[PrometheusMetricReader()]))
    SystemMetricsInstrumentor(
        config={"process.cpu.time": ["user", "system"], "process.memory.usage": None}
    ).instrument()
    httpd, _ = start_http_server(0, addr="127.0.0.1")
    server = inprocserve.Server(args.repository)
    print(json.dumps({"port": httpd.server_port}), flush=True)
    sys.stdin.readline()  # the test starts the load once Prometheus scrapes this process

    latencies: list[float] = []
    client_errors = 0
    server_errors = 0
    lock = threading.Lock()
    until = time.perf_counter() + args.seconds

    def run(seed: int) -> None:
        nonlocal client_errors
        mine, refused = client(server, args.model, args.width, seed, until)
        with lock:
            latencies.extend(mine)
            client_errors += refused

    def fail() -> None:
        nonlocal server_errors
        failures = failing_client(server, args.failing, until)
        with lock:
            server_errors += failures

    threads = [threading.Thread(target=run, args=(seed,)) for seed in range(args.clients)]
    if args.failing:
        threads.append(threading.Thread(target=fail))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=args.seconds + 60)
    counts = {"client_errors": client_errors, "server_errors": server_errors}
    args.results.write_text(json.dumps({"latencies_s": latencies, **counts}))
    print("done", flush=True)
    sys.stdin.readline()  # keep serving /metrics until the test closes stdin
    server.close(timeout_s=10)
    httpd.shutdown()


if __name__ == "__main__":
    main()
