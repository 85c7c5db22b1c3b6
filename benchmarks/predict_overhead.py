"""What ``Server.predict`` adds to a raw ``session.run``, for a lone caller, in the calling thread's CPU time.

One process, one thread, no OpenTelemetry SDK. Three calls are timed in alternating blocks of ``--block``
calls (so machine drift hits them alike): a raw ``InferenceSession.run`` on a session built like the
server's for this model (one intra-op thread, no spinning), ``predict`` of this checkout, and, with
``--baseline DIR`` (a folder holding another ``inprocserve`` package, e.g. ``git archive REV inprocserve |
tar -x -C DIR``), ``predict`` of that code, imported side by side under another name. The overhead is the
median block's µs per call less the raw run's. The process's CPU time (every thread's: onnxruntime's pool
threads too) and wall time are shown beside it: a version whose lone runs woke a pool thread paid for it
there, not in the calling thread's time.

    python benchmarks/predict_overhead.py [--model mlp-small] [--blocks 60] [--baseline DIR] [--list]

``--list`` sends ``predict`` the row as a Python list (what a web view passes on from a JSON body) instead of
an array; the raw run still gets the array.

Writes benchmarks/results/predict_overhead.{json,md} (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import onnxruntime as ort
from _common import RESULTS, build_reference, import_baseline, input_rows, machine, machine_line

ROOT = Path(__file__).resolve().parent.parent


CLOCKS = {"thread": time.thread_time, "process": time.process_time, "wall": time.perf_counter}


def timed_blocks(calls: dict[str, Callable[[], Any]], blocks: int, block: int) -> dict[str, dict[str, list[float]]]:
    """µs per call by each of ``CLOCKS`` (the calling thread's CPU time, the process's, every thread's, and
    wall time), one figure per block, the calls taking turns block by block. The thread's time alone misses
    what onnxruntime's pool threads do for a run: a session of two threads ran a one-row mlp-small run on 71 µs
    of the caller's CPU and 38 of its pool thread's."""
    for call in calls.values():
        for _ in range(max(500, block)):
            call()
    times: dict[str, dict[str, list[float]]] = {clock: {name: [] for name in calls} for clock in CLOCKS}
    for _ in range(blocks):
        for name, call in calls.items():
            started = {clock: read() for clock, read in CLOCKS.items()}
            for _ in range(block):
                call()
            for clock, read in CLOCKS.items():
                times[clock][name].append((read() - started[clock]) / block * 1e6)
    return times


def summary_of(by_call: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Each call's median and p10 block, and its median over the raw run's."""
    raw = statistics.median(by_call["raw run"])
    return {
        name: {
            "median_us": statistics.median(values),
            "p10_us": sorted(values)[len(values) // 10],
            "overhead_us": statistics.median(values) - raw,
        }
        for name, values in by_call.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp-small")
    parser.add_argument("--blocks", type=int, default=60)
    parser.add_argument("--block", type=int, default=500, help="calls per block")
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--list", action="store_true", help="send predict the row as a Python list, not an array")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import inprocserve

    scratch = Path(tempfile.mkdtemp())
    servers: list[Any] = []
    try:
        repository = scratch / "models"
        build_reference(args.model, repository)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        session = ort.InferenceSession(
            str(repository / args.model / "1" / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )
        feeds = {"x": input_rows(args.model, 1)[0]}
        given = {"x": feeds["x"].tolist()} if args.list else feeds
        now = inprocserve.Server(repository)
        servers.append(now)
        calls: dict[str, Callable[[], Any]] = {
            "raw run": lambda: session.run(None, feeds),
            "predict": lambda: now.predict(args.model, given),
        }
        if args.baseline is not None:
            before = import_baseline(args.baseline, scratch).Server(repository)
            servers.append(before)
            calls["predict, baseline"] = lambda: before.predict(args.model, given)
        times = timed_blocks(calls, args.blocks, args.block)
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    summaries = {clock: summary_of(by_call) for clock, by_call in times.items()}
    summary = summaries["thread"]
    for name, s in summary.items():
        over = s["overhead_us"]
        print(f"{name:18s} {s['median_us']:7.1f} µs per call (p10 {s['p10_us']:6.1f}), over the raw run {over:5.1f}")
    for clock in ("process", "wall"):
        print(f"  {clock}: " + ", ".join(f"{name} +{s['overhead_us']:.1f}" for name, s in summaries[clock].items()))
    results = {"machine": machine(), "settings": {**vars(args), "baseline": str(args.baseline), "out": str(args.out)}}
    results |= {
        "summary": summary,
        "summary_by_clock": summaries,
        "blocks_us": times["thread"],
        "blocks_us_by_clock": times,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predict_overhead.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [
        "# What predict adds to a raw run (one thread, no SDK)",
        "",
        machine_line(m),
        f"Model {args.model}{', predict given a one-row list' if args.list else ''}; {args.blocks} alternating "
        f"blocks of {args.block} calls; the calling thread's CPU "
        "time per call, median block (p10 block in brackets); then the process's CPU time (every thread, "
        "onnxruntime's pool threads included) and wall time, median block.",
        "",
        "| call | µs per call | over the raw run | process CPU µs (over) | wall µs (over) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, s in summary.items():
        process, wall = summaries["process"][name], summaries["wall"][name]
        lines.append(
            f"| {name} | {s['median_us']:.1f} ({s['p10_us']:.1f}) | {s['overhead_us']:.1f} | "
            f"{process['median_us']:.1f} ({process['overhead_us']:.1f}) | "
            f"{wall['median_us']:.1f} ({wall['overhead_us']:.1f}) |"
        )
    if args.baseline is not None:
        lines += ["", f"Baseline: the package in `{args.baseline}`."]
    (args.out / "predict_overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'predict_overhead.md'}")


if __name__ == "__main__":
    main()
