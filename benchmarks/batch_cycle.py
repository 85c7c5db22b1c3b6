"""Where a closed loop's share of the batched ceiling goes: N client threads, one session, runs timed one by one.

``coalescing.py`` reports mlp-large at 64 clients as a share of onnxruntime's ceiling (the best rows/s of
one thread running pre-built batches of up to 64 rows). This benchmark takes that share apart. With N
clients in a closed loop a batch holds at most N rows, and a batch of all N leaves nobody queued while it
runs: the session then waits, after each run, for the N callers to come back (each woken, given the GIL,
through its own Python and the library's, into the queue). So the share is

    session busy (runs' time / (runs' time + gaps))   x   rows/s during the runs / the ceiling

and the gap has a floor that no library can go under: N thread hand-offs (``coalescing.handoff_floor``,
no model, no numpy). This script measures each term, side by side with ``max_delay_s = 0`` (run whatever
is queued the moment the session is free: batches of about N/2 that leave no gap), and prints the bound
that the hand-off floor alone sets at a batch of N rows.

The runs are timed by wrapping the batcher's run of a batch (a private method, ``BatchExecution._run``):
this is a measurement harness, not an example.

    python benchmarks/batch_cycle.py [--model mlp-large] [--clients 64] [--seconds 3] [--rounds 3] [--out DIR]

Writes batch_cycle.{json,md} into ``--out`` (benchmarks/results by default).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
from _common import RESULTS, build_reference, closed_loop, input_rows, machine_line, with_run, write_json
from coalescing import ceiling, handoff_floor

import inprocserve
from inprocserve import _batch_execution

SETTINGS = {"default": "", "max_delay_s = 0": "[batching]\nmax_delay_s = 0.0\n"}


class RunClock:
    """Start and end of every batch run, and its rows, while ``recording``."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, float, int]] = []
        self.recording = False
        original = _batch_execution.BatchExecution._run

        def timed(execution: Any, runner: Any, batch: list[Any], *args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(execution, runner, batch, *args, **kwargs)
            finally:
                if self.recording:
                    self.runs.append((started, time.perf_counter(), sum(request.rows for request in batch)))

        _batch_execution.BatchExecution._run = timed  # type: ignore[method-assign]


def measure(model: str, clients: int, seconds: float, config: str, clock: RunClock) -> dict[str, float]:
    """One closed loop of ``clients`` against a server whose model has ``config`` (a config.toml text)."""
    with tempfile.TemporaryDirectory() as folder:
        build_reference(model, Path(folder))
        if config:
            (Path(folder) / model / "config.toml").write_text(config)
        with inprocserve.Server(folder) as server:
            rows = input_rows(model, clients)

            def call(x: Any) -> Any:
                return server.predict(model, {"x": x})

            closed_loop("warm", model, clients, call, rows, 0.5)
            clock.runs.clear()
            clock.recording = True
            result = closed_loop("served", model, clients, call, rows, seconds)
            clock.recording = False
    runs = clock.runs
    if len(runs) < 2:  # (a lone caller's requests run on its own thread, never as a batch)
        raise SystemExit(f"{clients} client(s) made {len(runs)} batch run(s): nothing to time; use more clients")
    span = runs[-1][1] - runs[0][0]
    busy = sum(end - start for start, end, _ in runs)
    gaps = [runs[i + 1][0] - runs[i][1] for i in range(len(runs) - 1)]
    return {
        "requests_per_s": result.throughput,
        "p99_ms": result.p99_ms,
        "rows_per_run": sum(rows for _, _, rows in runs) / len(runs),
        "run_ms": statistics.median(end - start for start, end, _ in runs) * 1e3,
        "gap_ms": statistics.median(gaps) * 1e3,
        "session_busy": busy / span,
        "rows_per_s_in_runs": sum(rows for _, _, rows in runs) / busy,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mlp-large")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        path = build_reference(args.model, Path(folder))
        rates = ceiling(ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]), args.model, 1.5)
    best = max(rate for batch, rate in rates.items() if batch <= 64)
    floor = handoff_floor(args.clients, 2.0)  # round trips/s of N threads through one worker
    # a run of all N rows (at the ceiling's rate for that batch), then N hand-offs before the next one
    full_batch_s = args.clients / rates.get(args.clients, best)
    bound = args.clients / (full_batch_s + args.clients / floor) / best

    clock = RunClock()
    rounds: dict[str, list[dict[str, float]]] = {name: [] for name in SETTINGS}
    for _ in range(args.rounds):
        for name, config in SETTINGS.items():
            rounds[name].append(measure(args.model, args.clients, args.seconds, config, clock))
    medians = {name: {key: statistics.median(r[key] for r in runs) for key in runs[0]} for name, runs in rounds.items()}
    for name, figures in medians.items():
        figures["x_ceiling"] = figures["requests_per_s"] / best
        figures["in_runs_x_ceiling"] = figures["rows_per_s_in_runs"] / best
        print(
            f"{args.model} N={args.clients} [{name}]: {figures['requests_per_s']:,.0f} req/s "
            f"({figures['x_ceiling']:.2f}x ceiling), {figures['rows_per_run']:.1f} rows/run, run "
            f"{figures['run_ms']:.2f} ms, gap {figures['gap_ms']:.2f} ms, session busy {figures['session_busy']:.0%}, "
            f"in runs {figures['in_runs_x_ceiling']:.2f}x ceiling"
        )
    print(f"ceiling {best:,.0f} rows/s; hand-off floor {floor:,.0f}/s; bound at a full batch {bound:.2f}x")

    payload = with_run(
        args,
        ceiling_rows_per_s=rates,
        ceiling_best_rows_per_s=best,
        handoff_floor_round_trips_per_s=floor,
        floor_bound_x_ceiling=bound,
        rounds=rounds,
        medians=medians,
    )
    write_json("batch_cycle", payload, args.out)
    lines = [
        "# A closed loop's share of the batched ceiling",
        "",
        machine_line(payload["machine"]),
        f"Model {args.model}, {args.clients} client threads, one-row requests, {args.rounds} rounds of "
        f"{args.seconds} s, the two settings interleaved; medians.",
        "",
        "Ceiling (one thread, raw `run`, rows/s): "
        + ", ".join(f"batch {batch}: {rate:,.0f}" for batch, rate in rates.items())
        + f"; best at batch <= 64: **{best:,.0f}**.",
        f"Hand-off floor at {args.clients} threads: {floor:,.0f} round trips/s. A batch of all "
        f"{args.clients} callers followed by their {args.clients} hand-offs, and nothing else, reaches "
        f"**{bound:.2f}x** the ceiling.",
        "",
        "| setting | req/s | x ceiling | rows/run | run ms | gap ms | session busy "
        "| rows/s in runs (x ceiling) | p99 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, f in medians.items():
        lines.append(
            f"| {name} | {f['requests_per_s']:,.0f} | {f['x_ceiling']:.2f} | {f['rows_per_run']:.1f} | "
            f"{f['run_ms']:.2f} | {f['gap_ms']:.2f} | {f['session_busy']:.0%} | "
            f"{f['rows_per_s_in_runs']:,.0f} ({f['in_runs_x_ceiling']:.2f}) | {f['p99_ms']:.2f} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "batch_cycle.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'batch_cycle.md'}")


if __name__ == "__main__":
    main()
