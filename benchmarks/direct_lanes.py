"""Why queued requests are batched by a worker instead of run by their own callers, a few at a time.

A tempting design for a model whose run takes tens of microseconds: no queue and no worker, each caller runs
its own request on its own thread, at most ``lanes`` at once (one per core, one intra-op thread each), and a
caller that finds every lane taken waits for one. This benchmark measures that design in its two forms
beside the naive caller and ``server.predict``, side by side in one run, interleaved:

* ``barging``: a lane goes to whichever caller takes it first (a token queue, ``queue.SimpleQueue``): the
  thread that just gave a lane back usually takes it again before a woken waiter gets the GIL.
* ``fifo``: a lane given back goes to the caller that has waited longest (a hand-off, as the library's wake
  relay does).

Besides throughput, p50 and p99 it reports the slowest request and the fairness (requests completed by the
least served client over the most served one): a closed loop's percentiles count a starved client's one long
wait once, so an unfair design looks fast and tight there.

Writes benchmarks/results/direct_lanes.{json,md}.

    python benchmarks/direct_lanes.py [--clients 8,64] [--lanes 2] [--rounds 2] [--seconds 2]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import RESULTS, build_reference, closed_loop, input_rows, machine_line, with_run, write_json

import inprocserve

SETTLE_S = 0.3


class BargingLanes:
    """``lanes`` tokens in a queue: a caller takes one (waiting if none is left) and puts it back."""

    def __init__(self, lanes: int) -> None:
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()
        for _ in range(lanes):
            self._tokens.put(None)

    def acquire(self) -> None:
        self._tokens.get()

    def release(self) -> None:
        self._tokens.put(None)


class FifoLanes:
    """``lanes`` lanes; one given back goes straight to the caller that has waited longest."""

    def __init__(self, lanes: int) -> None:
        self._free = lanes
        self._lock = threading.Lock()
        self._waiters: deque[threading.Lock] = deque()

    def acquire(self) -> None:
        with self._lock:
            if self._free and not self._waiters:
                self._free -= 1
                return
            waiter = threading.Lock()
            waiter.acquire()
            self._waiters.append(waiter)
        waiter.acquire()  # released by the caller that hands its lane over

    def release(self) -> None:
        with self._lock:
            if self._waiters:
                self._waiters.popleft().release()
            else:
                self._free += 1


def lane_call(lanes: BargingLanes | FifoLanes, session: ort.InferenceSession, x: np.ndarray) -> Any:
    lanes.acquire()
    try:
        return session.run(None, {"x": x})
    finally:
        lanes.release()


def one_thread_session(path: Path) -> ort.InferenceSession:
    """A session like the server's for a tiny model: one intra-op thread, no spinning."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    points: dict[int, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / args.model
        path = build_reference(args.model, repository)
        naive = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime's defaults
        single = one_thread_session(path)
        with inprocserve.Server(repository) as server:
            calls: dict[str, Callable[[np.ndarray], Any]] = {
                "naive": lambda x: naive.run(None, {"x": x}),
                "inprocserve": lambda x: server.predict(args.model, x),
                "barging": partial(lane_call, BargingLanes(args.lanes), single),
                "fifo": partial(lane_call, FifoLanes(args.lanes), single),
            }
            for call in calls.values():  # warm every way up (the server adopts its sessions)
                for x in input_rows(args.model, 20):
                    call(x)
            for clients in args.clients:
                rows = input_rows(args.model, clients)
                points[clients] = {approach: [] for approach in calls}
                for _ in range(args.rounds):  # interleaved so drift hits every approach alike
                    for approach, call in calls.items():
                        result = closed_loop(approach, args.model, clients, call, rows, args.seconds)
                        points[clients][approach].append(vars(result))
                        time.sleep(SETTLE_S)
                print(f"N={clients}")
                for approach, summary in summarize(points[clients]).items():
                    print(
                        f"   {approach:<12} {summary['throughput']:>8,.0f} req/s  "
                        f"x naive {summary['ratio_naive']:.2f}  "
                        f"p99 {summary['p99_ms']:.2f} ms  max {summary['max_ms']:.1f} ms  "
                        f"fairness {summary['fairness']:.2f}"
                    )
    return with_run(args, points=points, summary={n: summarize(point) for n, point in points.items()})


def summarize(point: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    naive = statistics.median(r["throughput"] for r in point["naive"])
    summary = {}
    for approach, results in point.items():
        figures = {key: statistics.median(r[key] for r in results) for key in ("throughput", "p50_ms", "p99_ms")}
        figures["max_ms"] = max(r["max_ms"] for r in results)
        figures["fairness"] = min(r["fairness"] for r in results)
        figures["ratio_naive"] = figures["throughput"] / naive
        summary[approach] = figures
    return summary


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    args = payload["settings"]
    lines = [
        "# Callers running their own requests, a few at a time",
        "",
        machine_line(payload["machine"]),
        f"Model {args['model']}, one-row requests; {args['lanes']} lanes (one intra-op thread each, no spinning); "
        f"{args['seconds']} s per point, {args['rounds']} rounds, interleaved; medians, except the slowest "
        "request (the worst round) and the fairness (the worst round).",
        "",
        "* naive: one shared session with onnxruntime's defaults, called by every thread.",
        "* inprocserve: `server.predict` with default settings.",
        "* barging: at most that many runs at once, on the callers' threads; a lane goes to whoever takes it first.",
        "* fifo: the same, but a lane given back goes to the caller that has waited longest.",
        "",
        "Fairness: requests completed by the least served client over those of the most served one.",
        "",
        "| N | approach | req/s | x naive | p50 ms | p99 ms | slowest ms | fairness |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for clients, summary in payload["summary"].items():
        for approach, s in summary.items():
            lines.append(
                f"| {clients} | {approach} | {s['throughput']:,.0f} | {s['ratio_naive']:.2f} | {s['p50_ms']:.3f} | "
                f"{s['p99_ms']:.2f} | {s['max_ms']:.1f} | {s['fairness']:.2f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp-small", choices=["mlp-small", "mlp-large"])
    parser.add_argument("--clients", default="8,64", help="comma-separated client thread counts")
    parser.add_argument("--lanes", type=int, default=2, help="runs at once (default: 2, the cores here)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    if args.lanes < 1 or args.rounds < 1 or args.seconds <= 0 or min(args.clients) < 1:
        parser.error("--lanes, --rounds and --clients must be at least 1, --seconds positive")
    payload = run(args)
    print(f"wrote {write_json('direct_lanes', payload, args.out)}")
    write_markdown(payload, args.out / "direct_lanes.md")


if __name__ == "__main__":
    main()
