"""Before/after of the synchronous queued path: N client threads calling ``predict`` on this checkout and on
another ``inprocserve`` package, side by side in one process, rounds alternating (shared/BENCHMARKS.md).

For a change to how callers wait, are woken or answered, which ``coalescing.py`` measures against onnxruntime
but not against the code before the change. Not part of ``make bench``: it needs the other package.

    git archive REV inprocserve | tar -x -C /tmp/base
    python benchmarks/queued_callers_ab.py --baseline /tmp/base [--clients 8,64] [--rounds 4] [--seconds 3]

Writes benchmarks/results/queued_callers_ab.{json,md} (``--out`` elsewhere).

The two packages share one process, and the roles are not symmetric: run it once with ``--baseline`` holding
the same code as this checkout to see the harness's own bias. On the project's 2-core machine (2026-11-30,
6 rounds) identical code measured 0.91x at 8 clients and 0.97x at 64, so ratios within about 10 % of 1 do not
show a change.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

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

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a folder holding the inprocserve package")
    parser.add_argument("--model", default="mlp-small")
    parser.add_argument("--clients", default="8,64")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import inprocserve

    scratch = Path(tempfile.mkdtemp())
    repository = scratch / "models"
    build_reference(args.model, repository)
    servers: dict[str, Any] = {
        "now": inprocserve.Server(repository),
        "baseline": import_baseline(args.baseline, scratch).Server(repository),
    }
    rows = input_rows(args.model, 64)
    runs: dict[str, dict[str, list[dict[str, float]]]] = {}
    try:
        for server in servers.values():
            for row in rows[:8]:
                server.predict(args.model, row)
        for clients in [int(n) for n in args.clients.split(",")]:
            for round_ in range(args.rounds):
                names = list(servers) if round_ % 2 == 0 else list(reversed(servers))
                for name in names:
                    server = servers[name]
                    result = closed_loop(
                        name, args.model, clients, lambda x, s=server: s.predict(args.model, x), rows, args.seconds
                    )
                    runs.setdefault(str(clients), {}).setdefault(name, []).append(
                        {"throughput": result.throughput, "p50_ms": result.p50_ms, "p99_ms": result.p99_ms}
                    )
                    time.sleep(0.3)
    finally:
        for server in servers.values():
            server.close()

    summary = {
        clients: {
            name: {key: statistics.median(run[key] for run in each) for key in ("throughput", "p50_ms", "p99_ms")}
            for name, each in by_name.items()
        }
        for clients, by_name in runs.items()
    }
    results = with_run(args, summary=summary, runs=runs)
    write_json("queued_callers_ab", results, args.out)
    lines = [
        "# Queued synchronous callers: this checkout against a baseline package",
        "",
        machine_line(results["machine"]),
        f"Model {args.model}; {args.rounds} alternating rounds of {args.seconds:g} s per point; medians. "
        f"Baseline: the package in `{args.baseline}`.",
        "",
        "| clients | req/s now (baseline) | ratio | p99 ms now (baseline) | all rounds req/s now / baseline |",
        "|---:|---:|---:|---:|---|",
    ]
    for clients, by_name in summary.items():
        now, base = by_name["now"], by_name["baseline"]
        every = " / ".join(
            ", ".join(f"{run['throughput']:,.0f}" for run in runs[clients][name]) for name in ("now", "baseline")
        )
        lines.append(
            f"| {clients} | {now['throughput']:,.0f} ({base['throughput']:,.0f}) | "
            f"{now['throughput'] / base['throughput']:.2f} | {now['p99_ms']:.2f} ({base['p99_ms']:.2f}) | {every} |"
        )
    (args.out / "queued_callers_ab.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
