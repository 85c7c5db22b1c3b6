"""How many answered synchronous callers the wake relay wakes at once (``_wake_relay.WAKING_AT_ONCE``): N client
threads calling ``predict`` on one server, the relay's size switched between rounds in one process, so every
size runs on the same server, the same sessions and the same memory (shared/BENCHMARKS.md: side by side,
interleaved, paired).

For a change to the relay's size, which decides how many woken callers compete for the GIL at once
(docs/batching.md, "How a request flows"). Not part of ``make bench``: the default is chosen from it.

    python benchmarks/wake_relay_size.py [--sizes 4,8] [--model mlp-small] [--clients 8,32,64] [--rounds 10]

Writes benchmarks/results/wake_relay_size.{json,md} (``wake_relay_size-MODEL`` for another model; ``--out``
elsewhere). ``ratio``: the median over rounds of
the first size's requests/s over the last size's in the same round (their order alternates by round).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, closed_loop, input_rows, machine_line, with_run, write_json

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="4,8", help="relay sizes, the first compared with the last")
    parser.add_argument("--model", default="mlp-small")
    parser.add_argument("--clients", default="8,32,64")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import inprocserve
    from inprocserve._wake_relay import RELAY

    sizes = [int(size) for size in args.sizes.split(",")]
    default = RELAY.limit
    repository = Path(tempfile.mkdtemp()) / "models"
    build_reference(args.model, repository)
    rows = input_rows(args.model, 64)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    with inprocserve.Server(repository) as server:
        for row in rows[:8]:
            server.predict(args.model, row)
        try:
            for clients in [int(n) for n in args.clients.split(",")]:
                for round_ in range(args.rounds):
                    for size in sizes if round_ % 2 == 0 else list(reversed(sizes)):
                        RELAY.limit = size
                        before = resource.getrusage(resource.RUSAGE_SELF)
                        result = closed_loop(
                            str(size), args.model, clients, lambda x: server.predict(args.model, x), rows, args.seconds
                        )
                        after = resource.getrusage(resource.RUSAGE_SELF)
                        cpu_s = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                        switches = after.ru_nvcsw + after.ru_nivcsw - before.ru_nvcsw - before.ru_nivcsw
                        runs.setdefault(str(clients), {}).setdefault(str(size), []).append(
                            {
                                "throughput": result.throughput,
                                "p99_ms": result.p99_ms,
                                "max_ms": result.max_ms,
                                "fairness": result.fairness,
                                "cpu_us": cpu_s / result.requests * 1e6,
                                "switches": switches / result.requests,
                            }
                        )
                        time.sleep(0.3)
        finally:
            RELAY.limit = default

    first, last = str(sizes[0]), str(sizes[-1])
    summary: dict[str, Any] = {}
    for clients, by_size in runs.items():
        ratios = [a["throughput"] / b["throughput"] for a, b in zip(by_size[first], by_size[last], strict=True)]
        summary[clients] = {
            "ratio": statistics.median(ratios),
            "ratios": ratios,
            **{
                size: {
                    "throughput": statistics.median(run["throughput"] for run in each),
                    "p99_ms": statistics.median(run["p99_ms"] for run in each),
                    "max_ms": max(run["max_ms"] for run in each),
                    "fairness": min(run["fairness"] for run in each),
                    "cpu_us": statistics.median(run["cpu_us"] for run in each),
                    "switches": statistics.median(run["switches"] for run in each),
                }
                for size, each in by_size.items()
            },
        }
    results = with_run(args, summary=summary, runs=runs)
    name = "wake_relay_size" if args.model == "mlp-small" else f"wake_relay_size-{args.model}"
    write_json(name, results, args.out)
    lines = [
        "# The wake relay's size: callers woken at once",
        "",
        machine_line(results["machine"]),
        f"Model {args.model}; one server; {args.rounds} rounds of {args.seconds:g} s per point, the sizes taking "
        f"turns (order alternating by round); medians, but the slowest request (the worst round) and the fairness "
        f"(requests of the least served client over the most served one, the worst round). Ratio: the median of "
        f"each round's requests/s at size {first} over size {last}'s. The default size: {default}.",
        "",
        "| clients | size | req/s | ratio | p99 ms | slowest ms | fairness | CPU µs per request "
        "| context switches per request |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, point in summary.items():
        for size in (str(s) for s in sizes):
            figures = point[size]
            ratio = f"{point['ratio']:.2f}" if size == first else ""
            lines.append(
                f"| {clients} | {size} | {figures['throughput']:,.0f} | {ratio} | {figures['p99_ms']:.2f} | "
                f"{figures['max_ms']:.1f} | {figures['fairness']:.2f} | {figures['cpu_us']:.1f} | "
                f"{figures['switches']:.2f} |"
            )
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
