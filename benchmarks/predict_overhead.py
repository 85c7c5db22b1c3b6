"""What ``Server.predict`` adds to a raw ``session.run``, for a lone caller, in the calling thread's CPU time.

One process, one thread, no OpenTelemetry SDK. Three calls are timed in alternating blocks of ``--block``
calls (so machine drift hits them alike): a raw ``InferenceSession.run`` on a session built like the
server's for this model (one intra-op thread, no spinning), ``predict`` of this checkout, and, with
``--baseline DIR`` (a folder holding another ``inprocserve`` package, e.g. ``git archive REV inprocserve |
tar -x -C DIR``), ``predict`` of that code, imported side by side under another name. The overhead is the
median block's µs per call less the raw run's.

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


def timed_blocks(calls: dict[str, Callable[[], Any]], blocks: int, block: int) -> dict[str, list[float]]:
    """µs of thread CPU per call, one figure per block, the calls taking turns block by block."""
    for call in calls.values():
        for _ in range(max(500, block)):
            call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(blocks):
        for name, call in calls.items():
            started = time.thread_time()
            for _ in range(block):
                call()
            times[name].append((time.thread_time() - started) / block * 1e6)
    return times


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

    raw = statistics.median(times["raw run"])
    summary = {
        name: {
            "median_us": statistics.median(values),
            "p10_us": sorted(values)[len(values) // 10],
            "overhead_us": statistics.median(values) - raw,
        }
        for name, values in times.items()
    }
    for name, s in summary.items():
        over = s["overhead_us"]
        print(f"{name:18s} {s['median_us']:7.1f} µs per call (p10 {s['p10_us']:6.1f}), over the raw run {over:5.1f}")
    results = {"machine": machine(), "settings": {**vars(args), "baseline": str(args.baseline), "out": str(args.out)}}
    results |= {"summary": summary, "blocks_us": times}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "predict_overhead.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [
        "# What predict adds to a raw run (one thread, no SDK)",
        "",
        machine_line(m),
        f"Model {args.model}{', predict given a one-row list' if args.list else ''}; {args.blocks} alternating "
        f"blocks of {args.block} calls; the calling thread's CPU "
        "time per call, median block (p10 block in brackets).",
        "",
        "| call | µs per call | over the raw run |",
        "|---|---:|---:|",
    ]
    for name, s in summary.items():
        lines.append(f"| {name} | {s['median_us']:.1f} ({s['p10_us']:.1f}) | {s['overhead_us']:.1f} |")
    if args.baseline is not None:
        lines += ["", f"Baseline: the package in `{args.baseline}`."]
    (args.out / "predict_overhead.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'predict_overhead.md'}")


if __name__ == "__main__":
    main()
