"""How long a free worker should wait for companions: the flush policy's ``max_delay_s``, swept.

The automatic delay is the model's fixed cost per run (capped at 5 ms), and whether a free worker waits at
all is the recent concurrency's question: callers of a quick model that overlap (on average at most one
more in flight than runners) run as they come (docs/batching.md, "The flush policy"). Until 2026-12-04 the
delay was 0 unless the fixed cost exceeded four thread hand-offs measured by a probe at start-up, which read
3 or 25 µs from one process to the next: mlp-small waited in some processes and never in others.

On a 16-core host the queued path of mlp-small stayed near 8,000-10,000 req/s at 8 and 64 callers, with
batches of 1.9-3.2 rows at 64 callers, where the same code pinned to 2 cores made 24,784 req/s with batches
of about 32 (docs/performance.md). One reading, not yet checked: with a core of its own the worker is free
the moment a request arrives, so it runs batches of one or two rows, each paying the hand-offs and the
Python work of a batch. If so, a worker that waits a little for the callers it just answered gets fuller
batches there, and this benchmark shows it.

For each ``max_delay_s`` (``auto``: the library's choice, then the given values; with ``--baseline DIR``,
a folder holding another ``inprocserve`` package, that code's own choice too, and with
``--baseline-delays-us`` the delays given there set on it), side by side in one process, rounds
interleaved:

* **closed loop**: N caller threads, each sending its next one-row request as soon as it has its answer;
* **open loop**: one-row requests sent at a fixed mean rate (Poisson arrivals over 64 threads), so that
  waiting for companions that are not coming shows as latency ("no extra latency when traffic is light").

With ``--misread-cost FIXED_US,PER_ROW_US``, two more servers whose load-time probe is made to read that
cost, as a busy host can make it read (a test model of about 1.3 ms fixed per run read 0.08-1.41 ms over
eight loads beside two busy loops): ``misread, learned`` corrects it from its batches, as the library does;
``misread, kept`` keeps it for the version's life, as the library did before 2026-12-05. Their cost at the
end is reported beside the ``auto`` server's.

Reported per point: req/s, p50, p99, the slowest request, rows per batch (the version's ``rows_run`` over
``batches_run``: lone requests run on their callers' threads count as batches of their rows) and the
process's CPU time per request, which other processes on a shared machine disturb less than throughput.

    python benchmarks/batch_delay.py [--model mlp-small] [--delays-us 0,50,100,300,1000] [--clients 8,64]
                                     [--rates 2000,8000] [--seconds 2] [--rounds 3] [--baseline DIR]
                                     [--baseline-delays-us 0,60] [--misread-cost 1500,0] [--out DIR]

Pin it to some cores to compare (``taskset -c 0,1 python benchmarks/batch_delay.py ...``). Writes
batch_delay.{json,md} into ``--out`` (benchmarks/results by default).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    MODELS,
    RESULTS,
    build_reference,
    closed_loop,
    import_baseline,
    input_rows,
    machine_line,
    with_run,
    write_json,
)

import inprocserve
from inprocserve import BatchingConfig, ModelConfig

OPEN_LOOP_THREADS = 64


def open_loop(call: Callable[[np.ndarray], Any], rows: list[np.ndarray], rate: float, seconds: float) -> list[float]:
    """Requests at a mean ``rate`` per second for ``seconds``: each of ``OPEN_LOOP_THREADS`` threads sends at
    Poisson times (its share of the rate). A request's latency counts from when it was due, so a thread held
    up by its previous request's answer counts the wait too. Latencies in seconds."""
    latencies: list[float] = []
    lock = threading.Lock()
    start_at = time.perf_counter() + 0.05
    end = start_at + seconds

    def sender(index: int) -> None:
        draw = random.Random(index).expovariate
        x, mine, mean_rate = rows[index % len(rows)], [], rate / OPEN_LOOP_THREADS
        due = start_at + draw(mean_rate)
        while due < end:
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            call(x)
            mine.append(time.perf_counter() - due)
            due += draw(mean_rate)
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=sender, args=(index,), daemon=True) for index in range(OPEN_LOOP_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies


def batch_counts(server: Any, model: str) -> tuple[int, int]:
    version = server.status()["models"][model]["versions"]["1"]
    return int(version["rows_run"]), int(version["batches_run"])


def measure(
    server: Any, model: str, load: str, level: float, rows: list[np.ndarray], seconds: float
) -> dict[str, float]:
    """One point: ``load`` is "closed" (``level`` callers) or "open" (``level`` requests per second)."""

    def call(x: np.ndarray) -> Any:
        return server.predict(model, {"x": x})

    rows_before, batches_before = batch_counts(server, model)
    cpu_before = time.process_time()
    if load == "closed":
        result = closed_loop("inprocserve", model, int(level), call, rows, seconds)
        requests, elapsed = result.requests, result.seconds
        p50_ms, p99_ms, max_ms = result.p50_ms, result.p99_ms, result.max_ms
    else:
        latencies = np.sort(np.asarray(open_loop(call, rows, level, seconds)))
        requests, elapsed = int(latencies.size), seconds
        p50_ms, p99_ms = (float(np.percentile(latencies, q) * 1000) for q in (50, 99))
        max_ms = float(latencies[-1] * 1000)
    cpu_s = time.process_time() - cpu_before
    rows_after, batches_after = batch_counts(server, model)
    return {
        "throughput": requests / elapsed,
        "p50_ms": p50_ms,
        "p99_ms": p99_ms,
        "max_ms": max_ms,
        "rows_per_batch": (rows_after - rows_before) / max(1, batches_after - batches_before),
        "cpu_us_per_request": cpu_s / max(1, requests) * 1e6,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    delays: dict[str, float | None] = {"auto": None}
    delays.update({f"{us:g} µs": us / 1e6 for us in args.delays_us})
    points = [("closed", float(n)) for n in args.clients] + [("open", rate) for rate in args.rates]
    raw: dict[str, dict[str, list[dict[str, float]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / args.model
        build_reference(args.model, repository)
        servers: dict[str, Any] = {
            name: inprocserve.Server(
                repository, models={args.model: ModelConfig(batching=BatchingConfig(max_delay_s=delay))}
            )
            for name, delay in delays.items()
        }
        if args.baseline is not None:  # the other code's own choice (and the delays asked), beside this checkout's
            baseline = import_baseline(args.baseline, Path(folder))
            servers["auto, baseline"] = baseline.Server(repository, models={args.model: baseline.ModelConfig()})
            for us in args.baseline_delays_us:
                batching = baseline.BatchingConfig(max_delay_s=us / 1e6)
                servers[f"{us:g} µs, baseline"] = baseline.Server(
                    repository, models={args.model: baseline.ModelConfig(batching=batching)}
                )
        if args.misread_cost is not None:
            servers.update(misread_servers(repository, args.model, *args.misread_cost))
        try:
            rows = input_rows(args.model, 64)
            for server in servers.values():  # built, warmed, and the hand-off measured before any timing
                server.predict(args.model, {"x": rows[0]})
            automatic = next(iter(servers.values())).status()["models"][args.model]["versions"]["1"]
            for round_ in range(args.rounds):
                for load, level in points:
                    key = f"{load}:{level:g}"
                    for name, server in servers.items():
                        figures = measure(server, args.model, load, level, rows, args.seconds)
                        raw.setdefault(key, {}).setdefault(name, []).append(figures)
                        print(
                            f"round {round_ + 1} {key} max_delay {name}: {figures['throughput']:,.0f} req/s, "
                            f"p99 {figures['p99_ms']:.2f} ms, {figures['rows_per_batch']:.1f} rows/batch, "
                            f"{figures['cpu_us_per_request']:.0f} µs CPU/req",
                            flush=True,
                        )
            costs = {
                name: server.status()["models"][args.model]["versions"]["1"]["run_cost_ms"]
                for name, server in servers.items()
                if name == "auto" or name.startswith("misread")
            }
        finally:
            for server in servers.values():
                server.close()
    summary = {key: {name: _medians(rounds) for name, rounds in by_delay.items()} for key, by_delay in raw.items()}
    return with_run(args, automatic=_automatic(automatic), costs_at_end=costs, raw=raw, summary=summary)


def misread_servers(repository: Path, model: str, fixed_us: float, per_row_us: float) -> dict[str, Any]:
    """Two servers of this checkout whose load-time probe read ``fixed_us + per_row_us * rows``: one learns
    the cost from its batches, the other keeps the reading (its learner taken away)."""
    from inprocserve._flush_policy import RunCost
    from inprocserve._model import ModelVersion

    measure = ModelVersion._measure_run_cost

    def misread(self: Any, signature: Any, *, batchable: bool) -> Any:
        measured = measure(self, signature, batchable=batchable)
        return None if measured is None else RunCost(fixed_us / 1e6, per_row_us / 1e6, measured.row_elements)

    ModelVersion._measure_run_cost = misread  # type: ignore[method-assign]
    try:
        learned = inprocserve.Server(repository)
        kept = inprocserve.Server(repository)
        kept.predict(model, {"x": input_rows(model, 1)[0]})  # loaded
    finally:
        ModelVersion._measure_run_cost = measure  # type: ignore[method-assign]
    batcher = kept._registry.routes[model].versions[1].batcher
    batcher._learner = None
    return {"misread, learned": learned, "misread, kept": kept}


def _automatic(version: dict[str, Any]) -> dict[str, Any]:
    """What the library measured and chose for the ``auto`` server, as its status shows it."""
    return {"run_cost_ms": version.get("run_cost_ms"), "max_delay_ms": version.get("max_delay_ms")}


def _medians(rounds: list[dict[str, float]]) -> dict[str, float]:
    summary = {name: statistics.median(r[name] for r in rounds) for name in rounds[0]}
    summary["max_ms"] = max(r["max_ms"] for r in rounds)  # the worst round's slowest request
    values = [r["throughput"] for r in rounds]
    summary["spread"] = (max(values) - min(values)) / statistics.median(values)
    return summary


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    args = payload["settings"]
    cost, delay = payload["automatic"].get("run_cost_ms") or {}, payload["automatic"].get("max_delay_ms")
    automatic = (
        f"a run costs {cost.get('fixed', float('nan')):.3f} ms + {cost.get('per_row', float('nan')):.4f} ms a row; "
        f"max_delay_ms {delay}"
    )
    lines = [
        "# Waiting for companions: max_delay_s swept",
        "",
        machine_line(payload["machine"]),
        f"Model {args['model']}, one-row requests; {args['seconds']} s per point, {args['rounds']} rounds, "
        "the delays interleaved; medians (the slowest request: the worst round; spread: (max-min)/median of "
        f"the throughput over the rounds). `auto`: the library's own choice ({automatic}). Closed: N callers, "
        "each sending again as soon as it is answered. Open: Poisson "
        f"arrivals at that mean rate over {OPEN_LOOP_THREADS} threads, latency counted from when a request "
        "was due. CPU: the process's CPU time per request.",
        "",
        *([f"Baseline: the package in `{args['baseline']}`.", ""] if args.get("baseline") else []),
        *(
            [
                f"Misread: the load-time probe made to read {args['misread_cost'][0]:g} µs + "
                f"{args['misread_cost'][1]:g} µs a row. The cost each server used at the end (ms): "
                + "; ".join(f"{name}: {_cost_text(cost)}" for name, cost in payload.get("costs_at_end", {}).items())
                + ".",
                "",
            ]
            if args.get("misread_cost")
            else []
        ),
        "| load | max_delay | req/s | x auto | p50 ms | p99 ms | slowest ms | rows/batch | CPU µs/req | spread |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, by_delay in payload["summary"].items():
        load, level = key.split(":")
        label = f"closed, {level} callers" if load == "closed" else f"open, {float(level):,.0f} req/s"
        base = by_delay["auto"]["throughput"]
        for name, s in by_delay.items():
            lines.append(
                f"| {label} | {name} | {s['throughput']:,.0f} | {s['throughput'] / base:.2f} | {s['p50_ms']:.3f} | "
                f"{s['p99_ms']:.2f} | {s['max_ms']:.1f} | {s['rows_per_batch']:.1f} | "
                f"{s['cpu_us_per_request']:.0f} | {s['spread']:.0%} |"
            )
    path.write_text("\n".join(lines) + "\n")


def _cost_text(cost: dict[str, Any] | None) -> str:
    if not cost:
        return "none"
    return f"{cost['fixed']:.3f} + {cost['per_row']:.4f} a row (from {cost.get('from', 'load')})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp-small", choices=sorted(MODELS))
    parser.add_argument("--delays-us", default="0,50,100,300,1000", help="max_delay_s values to set, in µs")
    parser.add_argument("--clients", default="8,64", help="closed loop: comma-separated caller thread counts")
    parser.add_argument("--rates", default="2000,8000", help="open loop: comma-separated requests per second")
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="a folder holding another inprocserve package: its auto too")
    parser.add_argument("--baseline-delays-us", default="", help="max_delay_s values to set on the baseline too, µs")
    parser.add_argument("--misread-cost", help="FIXED_US,PER_ROW_US: add servers whose load-time probe read that")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    try:
        if args.misread_cost is not None:
            args.misread_cost = tuple(float(us) for us in args.misread_cost.split(","))
            if len(args.misread_cost) != 2 or min(args.misread_cost) < 0:
                raise ValueError("two numbers >= 0 expected")
        args.delays_us = [float(us) for us in args.delays_us.split(",") if us]
        args.baseline_delays_us = [float(us) for us in args.baseline_delays_us.split(",") if us]
        args.clients = [int(n) for n in args.clients.split(",") if n]
        args.rates = [float(rate) for rate in args.rates.split(",") if rate]
    except ValueError as exc:
        parser.error(f"--delays-us, --clients, --rates and --misread-cost take comma-separated numbers: {exc}")
    if (
        min(args.delays_us + args.baseline_delays_us, default=0) < 0
        or min(args.clients, default=1) < 1
        or min(args.rates, default=1) <= 0
    ):
        parser.error("delays must be >= 0, clients at least 1, rates positive")
    if args.rounds < 1 or args.seconds <= 0:
        parser.error("--rounds must be at least 1 and --seconds positive")
    payload = run(args)
    print(f"wrote {write_json('batch_delay', payload, args.out)}")
    write_markdown(payload, args.out / "batch_delay.md")


if __name__ == "__main__":
    main()
