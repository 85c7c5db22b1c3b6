"""How long a fleet takes to follow one switch, and what watching the control file costs.

Starts W worker processes (spawned, each with its own Server on one repository, as gunicorn workers
would be), each predicting in a loop; the parent switches the stable version through the control file
and every worker reports when it first answered with the new version. Repeated for several rounds;
reports the largest lag per round against the documented bound (control_interval_s, every version
loaded). Also times one read of the control file (what the watcher thread does per interval) against
one os.stat (what a per-request check would cost on every request). Writes
benchmarks/results/control_follow.{json,md}.

    python benchmarks/control_follow.py [--workers 4] [--rounds 5] [--interval 0.5]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, machine, write_json

import inprocserve
from inprocserve._control import ControlFile
from inprocserve.testing import build_scale_model, save_model


def worker(repository: str, interval: float, ready: Any, results: Any, stop: Any) -> None:
    server = inprocserve.Server(
        repository,
        config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()),
        control_interval_s=interval,
    )
    x = [[1.0, 1.0, 1.0, 1.0]]
    current = server.predict("scale", x).version
    ready.put(os.getpid())
    while not stop.is_set():
        version = server.predict("scale", x).version
        if version != current:
            results.put((os.getpid(), version, time.time()))  # wall clock: compared across processes
            current = version
        time.sleep(0.001)
    server.close()


def read_cost_us(repository: Path, count: int = 2000) -> tuple[float, float]:
    control = ControlFile(repository)
    started = time.perf_counter()
    for _ in range(count):
        control.read()
    read = (time.perf_counter() - started) / count * 1e6
    started = time.perf_counter()
    for _ in range(count):
        os.stat(control.path)
    stat = (time.perf_counter() - started) / count * 1e6
    return read, stat


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--interval", type=float, default=0.5)
    args = parser.parse_args()
    context = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "models"
        for version in (1, 2):
            save_model(build_scale_model(float(version)), repository, "scale", version)
        ready, results, stop = context.Queue(), context.Queue(), context.Event()
        processes = [
            context.Process(target=worker, args=(str(repository), args.interval, ready, results, stop))
            for _ in range(args.workers)
        ]
        for process in processes:
            process.start()
        for _ in processes:
            ready.get(timeout=120)
        control = ControlFile(repository)
        lags: list[float] = []
        target = 1
        for _ in range(args.rounds):
            switched_at = time.time()
            control.set_model("scale", lambda state, v=target: state.__class__(stable=v), actor="benchmark")
            seen: dict[int, float] = {}
            while len(seen) < args.workers:
                pid, version, at = results.get(timeout=60)
                if version == target:
                    seen[pid] = at - switched_at
            lags.append(max(seen.values()))
            target = 2 if target == 1 else 1
            time.sleep(args.interval)  # let every watcher settle before the next round
        stop.set()
        for process in processes:
            process.join(timeout=60)
        read_us, stat_us = read_cost_us(repository)
    payload = {
        "machine": machine(),
        "workers": args.workers,
        "control_interval_s": args.interval,
        "rounds": args.rounds,
        "max_lag_s_per_round": [round(lag, 4) for lag in lags],
        "max_lag_s": round(max(lags), 4),
        "median_max_lag_s": round(statistics.median(lags), 4),
        "control_read_us": round(read_us, 2),
        "stat_us": round(stat_us, 2),
    }
    write_json("control_follow", payload)
    lines = [
        "# Fleet follow time (control file)",
        "",
        f"{args.workers} spawned worker processes, control_interval_s = {args.interval}, {args.rounds} switches.",
        "",
        f"- largest lag of the slowest worker: {payload['max_lag_s']} s (median over rounds "
        f"{payload['median_max_lag_s']} s); documented bound: {args.interval} s plus scheduling delay",
        f"- one control-file read (per worker per interval): {payload['control_read_us']} µs; "
        f"one os.stat (what a per-request check would add to every request): {payload['stat_us']} µs",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in payload["machine"].items()),
    ]
    (RESULTS / "control_follow.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
