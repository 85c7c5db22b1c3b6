"""Short runs on one thread, long ones on the thread budget: what a version's thread choice costs by load.

A version whose largest batch takes over 1 ms on one thread gets the thread budget (every usable core), and,
since short runs pay a wake-up of the pool's threads for every parallel operator (no spinning), a one-thread
session for the runs that one thread still does in under 1 ms (docs/repository.md, "Thread budget"). This
runs closed loops of N client threads, one-row requests, against servers of one model that differ only in
their sessions: ``auto`` (this checkout's choice), ``one thread`` (``intra_op_threads = 1``), ``budget``
(``intra_op_threads`` = the budget, one session: what ``auto`` was before short runs had their own), and with
``--baseline DIR`` another checkout's ``auto``; and the naive baseline (one shared onnxruntime session with
its default options, every client calling it). Interleaved, ``--rounds`` rounds of ``--seconds`` each, one
process; medians. CPU: the process's CPU time per request (every thread: the pool's too).

    python benchmarks/short_runs.py [--model mlp-small] [--clients 1,8,64] [--seconds 2] [--rounds 3]
                                    [--otel] [--baseline DIR]

``--otel`` installs the OpenTelemetry SDK first, as production runs (1 % trace sampling; see
telemetry_overhead.py). Writes benchmarks/results/short_runs-MODEL.{json,md} (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
from _common import (
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
from inprocserve._ort_rules import thread_budget


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp-small")
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--otel", action="store_true", help="install the OpenTelemetry SDK first (1 %% sampling)")
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.otel:
        from telemetry_overhead import install_sdk

        install_sdk("sampled")
    budget = thread_budget(inprocserve.PoolConfig())
    scratch = Path(tempfile.mkdtemp())
    servers: dict[str, Any] = {}
    try:
        repository = scratch / "models"
        path = build_reference(args.model, repository)
        naive = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime's defaults

        def pool(threads: int | None) -> dict[str, Any]:
            return {"config": inprocserve.ModelConfig(pool=inprocserve.PoolConfig(intra_op_threads=threads))}

        servers["auto"] = inprocserve.Server(repository)
        servers["one thread"] = inprocserve.Server(repository, **pool(1))
        servers[f"budget ({budget} threads)"] = inprocserve.Server(repository, **pool(budget))
        if args.baseline is not None:
            servers["auto, baseline"] = import_baseline(args.baseline, scratch).Server(repository)
        rows = input_rows(args.model, 64)
        calls: dict[str, Any] = {"naive": lambda x: naive.run(None, {"x": x})}
        for name, server in servers.items():
            calls[name] = lambda x, server=server: server.predict(args.model, {"x": x})
        for call in calls.values():  # (loads every version, and warms each path)
            for x in rows:
                call(x)
        chosen = {
            name: {
                key: server.status()["models"][args.model]["versions"]["1"].get("backend_status", {}).get(key)
                for key in ("intra_op_threads", "one_thread_up_to_rows")
            }
            for name, server in servers.items()
        }
        print(f"sessions: {chosen}")
        figures: dict[str, dict[str, list[dict[str, float]]]] = {str(n): {a: [] for a in calls} for n in args.clients}
        for _ in range(args.rounds):
            for clients in args.clients:
                for name, call in calls.items():
                    cpu = time.process_time()
                    result = closed_loop(name, args.model, clients, call, rows, args.seconds)
                    cpu_us = (time.process_time() - cpu) / max(1, result.requests) * 1e6
                    figures[str(clients)][name].append(
                        {
                            "throughput": result.throughput,
                            "p50_ms": result.p50_ms,
                            "p99_ms": result.p99_ms,
                            "cpu_us": cpu_us,
                        }
                    )
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    def median(values: list[dict[str, float]], key: str) -> float:
        return statistics.median(value[key] for value in values)

    lines = [
        f"# Short runs on one thread: {args.model}",
        "",
        "",
        f"Closed loops of N client threads, one-row requests; {args.rounds} interleaved rounds of {args.seconds} s, "
        f"one process; medians{'; OpenTelemetry SDK installed, 1 % sampling' if args.otel else ''}. "
        "Ratio: over `naive` (one shared session, onnxruntime's default options). CPU: the process's CPU time "
        "per request, every thread.",
        "",
        f"Sessions (intra-op threads, runs of up to so many rows on a one-thread session): {chosen}",
        "",
        "| N | server | req/s | x naive | p50 ms | p99 ms | CPU µs per request |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for clients, by_name in figures.items():
        naive_rate = median(by_name["naive"], "throughput")
        for name, values in by_name.items():
            rate = median(values, "throughput")
            lines.append(
                f"| {clients} | {name} | {rate:,.0f} | {rate / naive_rate:.2f} | {median(values, 'p50_ms'):.3f} | "
                f"{median(values, 'p99_ms'):.3f} | {median(values, 'cpu_us'):.1f} |"
            )
    if args.baseline is not None:
        lines += ["", f"Baseline: the package in `{args.baseline}`."]
    payload = with_run(args, sessions=chosen, figures=figures)
    tag = f"short_runs-{args.model}" + ("-otel" if args.otel else "")
    lines[2] = machine_line(payload["machine"])
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(tag, payload, args.out)
    (args.out / f"{tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {args.out / (tag + '.md')}")


if __name__ == "__main__":
    main()
