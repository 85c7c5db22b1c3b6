"""A container's CPU limit: what a thread budget above the cgroup CPU quota costs, and what the automatic
budget (which counts the quota as cores) gives instead. Writes benchmarks/results/cpu_quota.{json,md}.

    sudo python benchmarks/cpu_quota.py [--quota 1] [--seconds 4] [--rounds 2] [--clients 1,8]

Makes a control group with a CPU quota of ``--quota`` cores per 100 ms period (cgroup v1's ``cpu``
controller, or v2's), and runs each server in a new process inside it, closed-loop clients on mlp-large:

* ``all cores``: ``intra_op_threads`` = the cores the process may run on, what the automatic budget gave
  before it read the quota (and what onnxruntime's own default takes);
* ``automatic``: the library's default, which now counts the quota.

Alternating, round by round; the group's ``nr_throttled`` (periods in which the kernel stopped the group
because it had spent its quota) is read around each run. Needs root and a writable cgroup ``cpu``
controller; says so and writes nothing otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, closed_loop, input_rows, machine, machine_line

MODEL = "mlp-large"
PERIOD_US = 100_000


class Group:
    """A new control group with a CPU quota; removed on close."""

    def __init__(self, quota_cores: float) -> None:
        name = f"inprocserve-bench-{uuid.uuid4().hex[:8]}"
        v1, v2 = Path("/sys/fs/cgroup/cpu"), Path("/sys/fs/cgroup")
        quota_us = int(quota_cores * PERIOD_US)
        if (v1 / "cpu.cfs_quota_us").is_file():
            self.path = v1 / name
            self.path.mkdir()
            self.join = self.path / "tasks"
            files = {"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota_us)}
        else:
            if "cpu" not in (v2 / "cgroup.subtree_control").read_text().split():
                (v2 / "cgroup.subtree_control").write_text("+cpu")  # (left on: other groups may use it by now)
            self.path = v2 / name
            self.path.mkdir()
            self.join = self.path / "cgroup.procs"
            files = {"cpu.max": f"{quota_us} {PERIOD_US}"}
        try:
            for file, text in files.items():
                (self.path / file).write_text(text)
        except OSError:
            self.close()
            raise

    def throttled(self) -> int:
        for line in (self.path / "cpu.stat").read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "nr_throttled":
                return int(value)
        return 0

    def close(self) -> None:
        for _ in range(50):
            try:
                self.path.rmdir()
                return
            except OSError:
                time.sleep(0.1)


def child(repository: str, threads: int | None, clients: int, seconds: float) -> None:
    import inprocserve

    pool = inprocserve.PoolConfig() if threads is None else inprocserve.PoolConfig(intra_op_threads=threads)
    with inprocserve.Server(repository, models={MODEL: inprocserve.ModelConfig(pool=pool)}) as server:
        version = server.status()["models"][MODEL]["versions"]["1"]
        rows = input_rows(MODEL, clients)

        def call(x: Any) -> Any:
            return server.predict(MODEL, {"x": x})

        closed_loop("warm", MODEL, clients, call, rows, 0.5)
        result = closed_loop("measure", MODEL, clients, call, rows, seconds)
    print(
        json.dumps(
            vars(result)
            | {
                "intra_op_threads": version["intra_op_threads"],
                "cpu_quota_cores": version["backend_status"]["cpu_quota_cores"],
            }
        )
    )


def run_in_group(group: Group, repository: Path, threads: int | None, clients: int, seconds: float) -> dict[str, Any]:
    arguments = f'"{Path(__file__).resolve()}" --child "{repository}" --threads {threads or 0} --clients {clients}'
    command = f'echo $$ > "{group.join}" && exec "{sys.executable}" {arguments} --seconds {seconds}'
    before = group.throttled()
    done = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"the child failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["throttled_periods_per_s"] = (group.throttled() - before) / result["seconds"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quota", type=float, default=1.0, help="the group's CPU quota, in cores")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8])
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.threads or None, args.clients[0], args.seconds)
        return
    cores = len(os.sched_getaffinity(0))
    if cores <= args.quota:
        print(f"cpu_quota: skipped: this process may run on {cores} cores, not more than the quota of {args.quota}")
        return
    try:
        group = Group(args.quota)
    except OSError as exc:
        print(f"cpu_quota: skipped: cannot make a control group with a CPU quota (needs root and cgroup cpu): {exc}")
        return
    approaches = {"all cores": cores, "automatic": None}
    points: dict[int, dict[str, list[dict[str, Any]]]] = {}
    try:
        with tempfile.TemporaryDirectory() as folder:
            build_reference(MODEL, Path(folder))
            for clients in args.clients:
                point: dict[str, list[dict[str, Any]]] = {name: [] for name in approaches}
                for _ in range(args.rounds):
                    for name, threads in approaches.items():
                        result = run_in_group(group, Path(folder), threads, clients, args.seconds)
                        point[name].append(result)
                        print(
                            f"   clients={clients} {name}: {result['intra_op_threads']} threads, "
                            f"{result['throughput']:,.0f} req/s, p50 {result['p50_ms']:.2f} ms, "
                            f"p99 {result['p99_ms']:.2f} ms, "
                            f"{result['throttled_periods_per_s']:.1f} throttled periods/s",
                            flush=True,
                        )
                points[clients] = point
    finally:
        group.close()
    summary = {
        clients: {
            name: {
                key: statistics.median(r[key] for r in runs)
                for key in ("throughput", "p50_ms", "p99_ms", "throttled_periods_per_s", "intra_op_threads")
            }
            for name, runs in point.items()
        }
        for clients, point in points.items()
    }
    m = machine()
    payload = {
        "machine": m,
        "quota_cores": args.quota,
        "cores": cores,
        "model": MODEL,
        "points": points,
        "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cpu_quota.json").write_text(json.dumps(payload, indent=2))
    lines = [
        "# A CPU quota below the cores",
        "",
        machine_line(m),
        f"{MODEL}; each server in a new process inside a control group with a CPU quota of {args.quota:g} cores "
        f"per {PERIOD_US // 1000} ms period, on a machine whose processes may run on {cores} cores; "
        f"{args.rounds} rounds of {args.seconds:g} s, alternating; medians. Throttled periods: periods in which the "
        "kernel stopped the group for the rest of the period, its quota spent.",
        "",
        "| clients | threads per session | req/s | p50 ms | p99 ms | throttled periods/s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for clients, by_name in summary.items():
        for name, s in by_name.items():
            lines.append(
                f"| {clients} | {name}: {s['intra_op_threads']:g} | {s['throughput']:,.0f} | {s['p50_ms']:.2f} | "
                f"{s['p99_ms']:.2f} | {s['throttled_periods_per_s']:.1f} |"
            )
    (args.out / "cpu_quota.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'cpu_quota.md'}")


if __name__ == "__main__":
    main()
