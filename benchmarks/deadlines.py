"""Cost and precision of request deadlines.

1. Overhead: ``predict`` with no ``timeout_s`` (no RunOptions of its own, no watchdog) against ``predict``
   with a deadline that never fires (fresh ``RunOptions`` and a watchdog alarm armed and disarmed per run),
   one caller and 8 callers, on the reference models; the modes alternate round by round.
2. Precision: a request far longer than its budget, on an idle server (it runs on the caller's thread):
   how long after its deadline does the caller get ``DeadlineExceededError``?

Writes benchmarks/results/deadlines.{json,md}.

    python benchmarks/deadlines.py [--rounds 3] [--seconds 2] [--trials 20]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, build_reference, closed_loop, input_rows, machine, write_json

import inprocserve


def overhead(server: inprocserve.Server, model: str, clients: int, seconds: float, rounds: int) -> dict[str, Any]:
    rows = input_rows(model, 256)
    results: dict[str, list[float]] = {"none": [], "deadline": []}
    for _ in range(rounds):
        for mode, timeout in (("none", None), ("deadline", 60.0)):
            result = closed_loop(
                mode,
                model,
                clients,
                lambda x, timeout=timeout: server.predict(model, x, timeout_s=timeout),
                rows,
                seconds,
            )
            results[mode].append(result.throughput)
    none, deadline = statistics.median(results["none"]), statistics.median(results["deadline"])
    return {
        "model": model,
        "clients": clients,
        "throughput_none": none,
        "throughput_deadline": deadline,
        "per_call_us_none": 1e6 * clients / none,
        "per_call_us_deadline": 1e6 * clients / deadline,
        "ratio": deadline / none,
        "rounds": results,
    }


def precision(server: inprocserve.Server, model: str, budgets: list[float], trials: int) -> list[dict[str, Any]]:
    features = 1024
    long_request = np.random.default_rng(0).standard_normal((512, features)).astype(np.float32)
    started = time.perf_counter()
    server.predict(model, long_request)
    full_s = time.perf_counter() - started
    rows = []
    for budget in budgets:
        overshoots = []
        for _ in range(trials):
            started = time.perf_counter()
            try:
                server.predict(model, long_request, timeout_s=budget)
            except inprocserve.DeadlineExceededError:
                pass
            overshoots.append((time.perf_counter() - started - budget) * 1000)
        overshoots.sort()
        rows.append(
            {
                "budget_ms": budget * 1000,
                "full_run_ms": full_s * 1000,
                "overshoot_ms_median": statistics.median(overshoots),
                "overshoot_ms_p90": overshoots[int(0.9 * (len(overshoots) - 1))],
                "overshoot_ms_max": overshoots[-1],
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--trials", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder)
        for name in ("mlp-small", "mlp-large"):
            build_reference(name, repository)
        # Whole 512-row requests in one run, so the precision test measures one long run, not slices.
        config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=4096))
        with inprocserve.Server(repository, models={"mlp-large": config}) as server:
            costs = [
                overhead(server, model, clients, args.seconds, args.rounds)
                for model in ("mlp-small", "mlp-large")
                for clients in (1, 8)
            ]
            stops = precision(server, "mlp-large", [0.01, 0.02, 0.05], args.trials)
    payload = {"machine": machine(), "settings": vars(args), "overhead": costs, "precision": stops}
    write_json("deadlines", payload)
    lines = [
        "# Deadlines: cost and precision",
        "",
        f"Machine: {payload['machine']['cpu']}, {payload['machine']['cores']} cores, Python "
        f"{payload['machine']['python']}, onnxruntime {payload['machine']['onnxruntime']}, "
        f"{payload['machine']['date']}. Settings: {args.rounds} rounds of {args.seconds} s, alternating; medians.",
        "",
        "## Overhead of a deadline that never fires",
        "",
        "| model | clients | no timeout (req/s) | timeout_s=60 (req/s) | ratio | µs/call none | µs/call deadline |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in costs:
        lines.append(
            f"| {row['model']} | {row['clients']} | {row['throughput_none']:,.0f} | {row['throughput_deadline']:,.0f} "
            f"| {row['ratio']:.3f} | {row['per_call_us_none']:.1f} | {row['per_call_us_deadline']:.1f} |"
        )
    lines += [
        "",
        f"## Control back after the deadline (mlp-large, 512 rows inline, {args.trials} trials per budget)",
        "",
        "| budget (ms) | full run (ms) | overshoot median (ms) | p90 (ms) | max (ms) |",
        "|---|---|---|---|---|",
    ]
    for row in stops:
        lines.append(
            f"| {row['budget_ms']:.0f} | {row['full_run_ms']:.0f} | {row['overshoot_ms_median']:.2f} "
            f"| {row['overshoot_ms_p90']:.2f} | {row['overshoot_ms_max']:.2f} |"
        )
    (RESULTS / "deadlines.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
