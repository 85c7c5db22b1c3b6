"""``apredict`` of this checkout against another checkout's, side by side in one process: a before/after check.

N tasks on one event loop await one-row ``apredict`` requests back to back on mlp-small, with no
OpenTelemetry SDK, for ``--seconds`` per round; the two servers alternate round by round (so machine drift
hits them alike), each on a fresh loop, with and without a deadline on every request. ``--baseline DIR`` is a
folder holding the other ``inprocserve`` package (``git archive REV inprocserve | tar -x -C DIR``), imported
under another name. The ratio is the median round's requests/s of this checkout over the baseline's.

    python benchmarks/async_baseline.py --baseline DIR [--tasks 8,64] [--rounds 4] [--seconds 1.5] [--loop uvloop]

Writes benchmarks/results/async_baseline.{json,md} (``async_baseline-uvloop`` with ``--loop uvloop``: every
loop is uvloop's, as uvicorn runs one when it is installed; ``--out`` elsewhere). Not part of ``make bench``:
it needs a second checkout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, import_baseline, input_rows, machine, machine_line
from async_callers import async_closed_loop

import inprocserve

MODEL = "mlp-small"
SETTLE_S = 0.2


def rate(server: Any, tasks: int, seconds: float, timeout_s: float | None) -> float:
    """Requests/s of ``tasks`` tasks on a new loop, each awaiting ``apredict`` back to back."""

    async def call(x: Any) -> Any:
        return await server.apredict(MODEL, {"x": x}, timeout_s=timeout_s)

    throughput: float = async_closed_loop(tasks, call, input_rows(MODEL, 64), seconds)["throughput"]
    return throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baseline", type=Path, required=True, help="a folder holding the inprocserve package")
    parser.add_argument("--tasks", type=lambda s: [int(x) for x in s.split(",")], default=[8, 64])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--timeout-s", type=float, default=10.0, help="the deadline of the second series")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="asyncio", help="the event loops to run on")
    args = parser.parse_args()
    stem = "async_baseline" if args.loop == "asyncio" else f"async_baseline-{args.loop}"
    if args.loop == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())  # asyncio.run makes uvloop's loops from now on

    scratch = Path(tempfile.mkdtemp())
    servers: dict[str, Any] = {}
    points = []
    try:
        repository = scratch / "models"
        build_reference(MODEL, repository)
        baseline = import_baseline(args.baseline, scratch)
        servers = {"baseline": baseline.Server(repository), "now": inprocserve.Server(repository)}
        for tasks in args.tasks:
            for timeout_s in (None, args.timeout_s):
                rates: dict[str, list[float]] = {name: [] for name in servers}
                for _ in range(args.rounds):
                    for name, server in servers.items():
                        rates[name].append(rate(server, tasks, args.seconds, timeout_s))
                        time.sleep(SETTLE_S)
                before, now = statistics.median(rates["baseline"]), statistics.median(rates["now"])
                point = {"tasks": tasks, "timeout_s": timeout_s, "rounds": rates, "ratio": now / before}
                points.append(point)
                print(
                    f"N={tasks:>3} timeout_s={timeout_s}: baseline {before:>8,.0f} req/s, now {now:>8,.0f} req/s, "
                    f"now / baseline {now / before:.2f}",
                    flush=True,
                )
    finally:
        for server in servers.values():
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    settings = {**vars(args), "baseline": str(args.baseline), "out": str(args.out)}
    results: dict[str, Any] = {"machine": machine(), "settings": settings, "points": points}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [
        "# apredict, this checkout against a baseline checkout (one process, alternating rounds)",
        "",
        machine_line(m),
        f"{MODEL}, one-row requests, no OpenTelemetry SDK, {args.loop}'s event loops; {args.rounds} rounds of "
        f"{args.seconds} s per point, the two servers alternating; medians. "
        f"Baseline: the package in `{args.baseline}`.",
        "",
        "| N tasks | deadline | baseline req/s | now req/s | now / baseline |",
        "|---:|---|---:|---:|---:|",
    ]
    for point in points:
        deadline = "none" if point["timeout_s"] is None else f"{point['timeout_s']:g} s"
        before = statistics.median(point["rounds"]["baseline"])
        now = statistics.median(point["rounds"]["now"])
        lines.append(f"| {point['tasks']} | {deadline} | {before:,.0f} | {now:,.0f} | {point['ratio']:.2f} |")
    (args.out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / f'{stem}.md'}")


if __name__ == "__main__":
    main()
