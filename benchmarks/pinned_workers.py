"""Worker processes kept on one core each against the same processes free to use every core.

Each worker is a process with its own ``Server`` and ``--threads`` threads calling ``predict`` back to back
with one-row requests, as a gunicorn ``gthread`` worker's request threads would (no HTTP). ``--workers``
such processes run side by side for ``--seconds``: once all free to run on every core of this process's
affinity, once each kept on a core of its own (``os.sched_setaffinity`` before it starts, as the
``post_fork`` hook of docs/deployment.md, "One core per worker", does), the two arrangements taking turns
over ``--rounds``; with ``--naive``, the same two arrangements of naive workers too (no server: the threads
call one ``InferenceSession`` built with onnxruntime's defaults, what a view that calls the model itself
does). Reported per arrangement: the requests a second of all workers together, the rows per
batch and the CPU cores the workers used.

    python benchmarks/pinned_workers.py [--model mlp-small] [--threads 8,64] [--workers N] [--seconds 4]
                                        [--rounds 2] [--naive] [--out DIR]

``--workers`` defaults to the cores this process may use. Writes pinned_workers.{json,md} (``--model``
other than mlp-small: pinned_workers-MODEL.{json,md}) into ``--out`` (benchmarks/results by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from _common import RESULTS, build_reference, input_rows, machine, machine_line, with_run, write_json


def child(model: str, threads: int, seconds: float, repository: Path, naive: bool) -> None:
    """One worker: print its requests a second, rows per batch and CPU cores used, as JSON. ``naive``: no
    server, every thread calls one ``InferenceSession`` built with onnxruntime's defaults."""
    import inprocserve

    rows = input_rows(model, threads)
    server: Any
    if naive:
        import onnxruntime as ort

        path = str(repository / model / "1" / "model.onnx")
        server = _Naive(ort.InferenceSession(path, providers=["CPUExecutionProvider"]))
    else:
        server = inprocserve.Server(repository)
    server.predict(model, rows[0])  # (adopts the runners: builds this process's sessions)
    counts = [0] * threads
    stop = threading.Event()
    start = threading.Barrier(threads + 1)

    def caller(index: int) -> None:
        x = rows[index]
        start.wait()
        done = 0
        while not stop.is_set():
            server.predict(model, x)
            done += 1
        counts[index] = done

    workers = [threading.Thread(target=caller, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    version = next(iter(next(iter(server.status()["models"].values()))["versions"].values()))
    batches, rows_run = version["batches_run"], version["rows_run"]
    cpu = time.process_time()
    started = time.perf_counter()
    start.wait()
    time.sleep(seconds)
    stop.set()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu
    version = next(iter(next(iter(server.status()["models"].values()))["versions"].values()))
    batches, rows_run = version["batches_run"] - batches, version["rows_run"] - rows_run
    server.close()
    print(
        json.dumps(
            {
                "req_s": sum(counts) / elapsed,
                "rows_per_batch": rows_run / max(1, batches),
                "cores_used": cpu / elapsed,
                "cores": sorted(os.sched_getaffinity(0)),
            }
        )
    )


class _Naive:
    """The naive worker's calls, shaped as the server's for :func:`child`."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self.name = session.get_inputs()[0].name
        self.runs = 0

    def predict(self, model: str, x: Any) -> Any:
        self.runs += 1  # (a count lost between threads is harmless: one row a run by design)
        return self.session.run(None, {self.name: x})

    def status(self) -> dict[str, Any]:
        return {"models": {"naive": {"versions": {"1": {"batches_run": self.runs, "rows_run": self.runs}}}}}

    def close(self) -> None:
        pass


def run_workers(
    args: argparse.Namespace, threads: int, repository: Path, cores: list[int] | None, *, naive: bool = False
) -> list[dict[str, Any]]:
    """``args.workers`` children side by side; ``cores``: each kept on ``cores[i]`` (None: all free)."""
    command = [sys.executable, __file__, "--child", args.model, str(threads), str(args.seconds), str(repository)]
    command += ["naive"] if naive else []
    children = []
    for index in range(args.workers):
        core = None if cores is None else {cores[index % len(cores)]}
        children.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                text=True,
                preexec_fn=(lambda core=core: os.sched_setaffinity(0, core)) if core else None,
            )
        )
    answers = []
    for process in children:
        out, _ = process.communicate(timeout=args.seconds + 300)
        if process.returncode != 0:
            raise SystemExit(f"a worker failed (exit {process.returncode})")
        answers.append(json.loads(out.strip().splitlines()[-1]))
    return answers


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), Path(sys.argv[5]), naive=sys.argv[6:] == ["naive"])
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp-small", choices=["mlp-small", "mlp-large"])
    parser.add_argument("--threads", default="8,64", help="request threads per worker, comma-separated")
    parser.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--naive", action="store_true", help="also naive workers: threads sharing one default InferenceSession"
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    scratch = Path(tempfile.mkdtemp())
    repository = scratch / "models"
    build_reference(args.model, repository)
    points: list[dict[str, Any]] = []
    for threads in [int(value) for value in args.threads.split(",")]:
        arrangements = [("free", None, False), ("one core each", cores, False)]
        if args.naive:
            arrangements += [("naive, free", None, True), ("naive, one core each", cores, True)]
        rounds: dict[str, list[list[dict[str, Any]]]] = {name: [] for name, _, _ in arrangements}
        for round_index in range(args.rounds):
            for arrangement, kept, naive in arrangements:
                answers = run_workers(args, threads, repository, kept, naive=naive)
                rounds[arrangement].append(answers)
                total = sum(answer["req_s"] for answer in answers)
                print(
                    f"round {round_index + 1} {threads} threads x {args.workers} workers, {arrangement}: "
                    f"{total:,.0f} req/s, "
                    f"{statistics.mean(a['rows_per_batch'] for a in answers):.1f} rows/batch, "
                    f"{sum(a['cores_used'] for a in answers):.2f} cores used",
                    flush=True,
                )
        for arrangement, runs in rounds.items():
            totals = [sum(answer["req_s"] for answer in answers) for answers in runs]
            points.append(
                {
                    "threads": threads,
                    "arrangement": arrangement,
                    "req_s": totals,
                    "rows_per_batch": [statistics.mean(a["rows_per_batch"] for a in answers) for answers in runs],
                    "cores_used": [sum(a["cores_used"] for a in answers) for answers in runs],
                }
            )
    name = "pinned_workers" if args.model == "mlp-small" else f"pinned_workers-{args.model}"
    write_json(name, with_run(args, points=points), args.out)
    lines = [
        "# Worker processes kept on one core each, against the same free to use every core",
        "",
        machine_line(machine()),
        f"Model {args.model}; {args.workers} worker processes side by side, each with its own server and N threads "
        f"calling predict back to back (one-row requests); {args.seconds} s per run, {args.rounds} rounds, the "
        "arrangements taking turns; every round's figure shown. `python benchmarks/pinned_workers.py`.",
        "",
        "| threads per worker | arrangement | req/s, all workers | rows per batch | CPU cores used |",
        "|---:|---|---|---|---|",
    ]
    for point in points:
        lines.append(
            f"| {point['threads']} | {point['arrangement']} | "
            + " / ".join(f"{value:,.0f}" for value in point["req_s"])
            + " | "
            + " / ".join(f"{value:.1f}" for value in point["rows_per_batch"])
            + " | "
            + " / ".join(f"{value:.2f}" for value in point["cores_used"])
            + " |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / name}.md")


if __name__ == "__main__":
    main()
