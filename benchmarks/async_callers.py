"""Async callers benchmark (shared/BENCHMARKS.md): N tasks on one event loop, side by side in one run.

    python benchmarks/async_callers.py                          # full run: N = 1, 8, 64, telemetry off and on
    python benchmarks/async_callers.py --seconds 1 --rounds 1 --modes off   # quick look
    python benchmarks/async_callers.py --seconds 1 --rounds 1 --out /tmp/async   # results elsewhere
    python benchmarks/async_callers.py --seconds 3 --tasks 64 --profile /tmp/apredict.prof  # loop thread
    python benchmarks/async_callers.py --timeout-s 10     # every request with a deadline, as a web plug-in sends

Approaches, interleaved round by round:

* ``to_thread`` — the naive async baseline: every task awaits ``asyncio.to_thread(session.run, ...)`` on one
  shared onnxruntime session.
* ``wrap_future`` — what ``apredict`` did before it had a loop-native path: ``asyncio.wrap_future`` on
  ``server.submit(...)`` (one cross-thread wake of the loop per request).
* ``apredict`` — ``await server.apredict(...)``.

plus the ceiling: raw onnxruntime, one thread, its default session, pre-built batches. The full table (1/8/32/64
rows) is measured once per model; the ceiling that ``x ceiling`` divides by is measured again in every round of
every N, interleaved with the three approaches (batches of 32 and 64 rows, where the best rate at batch <= 64
lies on this model), because one reading of it moves by a third from run to run on a shared host: its two
spinning threads wait for each other, and another process taking part of one core cuts it to a third.
``x ceiling`` is the median over rounds of apredict's rate in round r over the ceiling's in round r, with its
spread; ``best/best``, apredict's best round over the highest ceiling reading of that N (noise only lowers
readings, the ceiling's most, so a round whose ceiling was cut flatters its ratio).
Each telemetry mode runs in its own process (a global OpenTelemetry provider cannot be unset): ``off`` (no
SDK) and ``sampled`` (SDK with 1 % trace sampling, a batch span processor and a metric reader).

Each apredict point also reports CPU time per request, of the loop's thread and of the whole process. Writes
benchmarks/results/async_callers.{json,md} (or ``--out``).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import MODELS, RESULTS, build_reference, input_rows, machine, machine_line

import inprocserve
from inprocserve._loop_batching import loop_wakes

BATCHES = (1, 8, 32, 64)
ROUND_BATCHES = (32, 64)  # the ceiling inside each round: the batch sizes where the best rate lies
APPROACHES = ("to_thread", "wrap_future", "apredict")
SETTLE_S = 0.3  # onnxruntime's default sessions spin after a run; let them park before the next approach


def configure_sdk() -> None:
    from opentelemetry import metrics, trace
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    class Discard(SpanExporter):  # export cost is the backend's; this measures the library and the SDK
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01)))
    provider.add_span_processor(BatchSpanProcessor(Discard()))
    trace.set_tracer_provider(provider)
    metrics.set_meter_provider(MeterProvider(metric_readers=[InMemoryMetricReader()]))


def ceiling(
    session: ort.InferenceSession, name: str, seconds: float, batches: tuple[int, ...] = BATCHES
) -> dict[int, float]:
    """Rows/s of one thread calling ``run`` on pre-built batches, ``seconds`` per batch size."""
    features = MODELS[name]["dims"][0]
    rng = np.random.default_rng(1)
    rates = {}
    for batch in batches:
        x = rng.standard_normal((batch, features)).astype(np.float32)
        for _ in range(3):
            session.run(None, {"x": x})
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            session.run(None, {"x": x})
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - start)
    return rates


def async_closed_loop(
    tasks: int, call: Callable[[np.ndarray], Awaitable[Any]], rows: list[np.ndarray], seconds: float
) -> dict[str, Any]:
    """``tasks`` tasks on one new event loop each await ``call`` back to back with their own one-row input."""
    latencies: list[list[float]] = [[] for _ in range(tasks)]

    async def client(index: int, end: float) -> None:
        x = rows[index % len(rows)]
        mine = latencies[index]
        clock = time.perf_counter
        while True:
            start = clock()
            if start >= end:
                break
            await call(x)
            mine.append(clock() - start)

    async def main() -> tuple[float, int, float, float]:
        loop = asyncio.get_running_loop()
        wakes = loop_wakes(loop)
        loop_cpu, process_cpu = time.thread_time(), time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(client(i, started + seconds) for i in range(tasks)))
        elapsed = time.perf_counter() - started
        return elapsed, loop_wakes(loop) - wakes, time.thread_time() - loop_cpu, time.process_time() - process_cpu

    elapsed, wakes, loop_cpu, process_cpu = asyncio.run(main())
    merged = np.sort(np.concatenate([np.asarray(values) for values in latencies]))
    count = max(1, merged.size)
    return {
        "requests": int(merged.size),
        "seconds": elapsed,
        "throughput": merged.size / elapsed,
        "p50_ms": float(np.percentile(merged, 50) * 1000),
        "p99_ms": float(np.percentile(merged, 99) * 1000),
        "loop_wakes_per_request": wakes / count,
        # CPU time per request: of the loop's thread, and of the whole process (the loop, the library's
        # worker threads, onnxruntime's threads). Every thread that runs Python shares one GIL.
        "loop_cpu_us_per_request": loop_cpu / count * 1e6,
        "process_cpu_us_per_request": process_cpu / count * 1e6,
    }


def async_floor(tasks: int, seconds: float) -> float:
    """Requests/s of ``tasks`` tasks on one loop handing tokens to one worker thread and back, with no model,
    no numpy and no library: one wake of the worker per loop iteration, one wake of the loop per batch. This
    is what asyncio and CPython's thread hand-offs alone allow on this machine for a loop-native batcher."""
    lock = threading.Lock()
    wake = threading.Lock()
    wake.acquire()
    queue: list[asyncio.Future[None]] = []
    state = {"idle": True, "stop": False, "flush_due": False}

    def worker(loop: asyncio.AbstractEventLoop) -> None:
        while True:
            with lock:
                items = queue[:]
                queue.clear()
                if not items:
                    state["idle"] = True
            if not items:
                if state["stop"]:
                    return
                wake.acquire()
                continue
            loop.call_soon_threadsafe(answer, items)

    def answer(items: list[asyncio.Future[None]]) -> None:
        for future in items:
            future.set_result(None)

    def flush() -> None:
        state["flush_due"] = False
        with lock:
            if state["idle"] and queue:
                state["idle"] = False
                wake.release()

    async def client(end: float) -> int:
        loop = asyncio.get_running_loop()
        count = 0
        while time.perf_counter() < end:
            future: asyncio.Future[None] = loop.create_future()
            with lock:
                queue.append(future)
            if not state["flush_due"]:
                state["flush_due"] = True
                loop.call_soon(flush)
            await future
            count += 1
        return count

    async def main() -> float:
        loop = asyncio.get_running_loop()
        thread = threading.Thread(target=worker, args=(loop,), daemon=True)
        thread.start()
        started = time.perf_counter()
        counts = await asyncio.gather(*(client(started + seconds) for _ in range(tasks)))
        elapsed = time.perf_counter() - started
        state["stop"] = True
        with lock:
            if state["idle"]:
                state["idle"] = False
                wake.release()
        await asyncio.to_thread(thread.join, 10)
        return sum(counts) / elapsed

    return asyncio.run(main())


def check_outputs(server: inprocserve.Server, session: ort.InferenceSession, name: str) -> float:
    """Largest difference between apredict's answers (64 concurrent tasks) and raw onnxruntime's."""
    rows = input_rows(name, 64, seed=7)

    async def ask() -> list[Any]:
        return await asyncio.gather(*(server.apredict(name, {"x": row}) for row in rows))

    worst = 0.0
    for row, answer in zip(rows, asyncio.run(ask()), strict=True):
        expected = session.run(None, {"x": row})[0]
        if not np.allclose(answer["y"], expected, rtol=1e-4, atol=1e-5):
            raise AssertionError(f"{name}: apredict output differs from onnxruntime's")
        worst = max(worst, float(np.abs(answer["y"] - expected).max()))
    return worst


def measure(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """One telemetry mode, in this process: every model, N and approach, interleaved over rounds."""
    if mode == "sampled":
        configure_sdk()
    results: dict[str, Any] = {
        "async_floor_requests_per_s": {tasks: async_floor(tasks, min(args.seconds, 2.0)) for tasks in args.tasks}
    }
    print(
        f"   [{mode}] loop hand-off floor (no model), requests/s: "
        + ", ".join(f"N={n}: {r:,.0f}" for n, r in results["async_floor_requests_per_s"].items()),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            repository = Path(folder) / name
            path = build_reference(name, repository)
            raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime's defaults
            server = inprocserve.Server(repository, models={name: inprocserve.ModelConfig()})
            max_diff = check_outputs(server, raw, name)
            rates = ceiling(raw, name, min(args.seconds, 2.0))
            best = max(rates.values())

            async def to_thread(x: np.ndarray, raw: ort.InferenceSession = raw) -> Any:
                return await asyncio.to_thread(raw.run, None, {"x": x})

            async def wrap_future(
                x: np.ndarray, server: inprocserve.Server = server, name: str = name, timeout_s: Any = args.timeout_s
            ) -> Any:
                return await asyncio.wrap_future(server.submit(name, {"x": x}, timeout_s=timeout_s))

            async def apredict(
                x: np.ndarray, server: inprocserve.Server = server, name: str = name, timeout_s: Any = args.timeout_s
            ) -> Any:
                return await server.apredict(name, {"x": x}, timeout_s=timeout_s)

            calls = {"to_thread": to_thread, "wrap_future": wrap_future, "apredict": apredict}
            points: dict[int, dict[str, Any]] = {}
            for tasks in args.tasks:
                rows = input_rows(name, tasks)
                point: dict[str, Any] = {approach: [] for approach in APPROACHES}
                point["ceiling"] = []
                for _ in range(args.rounds):
                    # This round's ceiling, next to its approaches: apredict's ratio is taken round by round.
                    point["ceiling"].append(max(ceiling(raw, name, min(args.seconds, 2.0) / 2, ROUND_BATCHES).values()))
                    time.sleep(SETTLE_S)
                    for approach in APPROACHES:
                        before = server.status()["models"][name]["versions"]["1"]
                        result = async_closed_loop(tasks, calls[approach], rows, args.seconds)
                        after = server.status()["models"][name]["versions"]["1"]
                        batches = after["batches_run"] - before["batches_run"]
                        result["rows_per_batch"] = (after["rows_run"] - before["rows_run"]) / batches if batches else 0
                        point[approach].append(result)
                        time.sleep(SETTLE_S)
                point["summary"] = summarize(point)
                points[tasks] = point
                s = point["summary"]
                print(
                    f"   [{mode}] {name} N={tasks:>3}  to_thread {s['to_thread_rps']:>8,.0f}  "
                    f"wrap_future {s['wrap_future_rps']:>8,.0f}  apredict {s['apredict_rps']:>8,.0f} req/s  "
                    f"x to_thread {s['ratio_naive']:.2f}  x ceiling {s['ratio_ceiling']:.2f} "
                    f"(spread {s['ratio_ceiling_spread']:.0%}, ceiling {s['ceiling_rows_per_s']:,.0f}; "
                    f"best/best {s['ratio_best']:.2f})  "
                    f"rows/batch {s['apredict_rows_per_batch']:.1f}  wakes/req {s['apredict_wakes_per_request']:.3f}  "
                    f"CPU us/req loop {s['apredict_loop_cpu_us']:.1f} process {s['apredict_process_cpu_us']:.1f}",
                    flush=True,
                )
            server.close()
            results[name] = {
                "ceiling_rows_per_s": rates,
                "ceiling_best_rows_per_s": best,
                "max_abs_diff_vs_onnxruntime": max_diff,
                "points": points,
            }
    return results


def summarize(point: dict[str, list[Any]]) -> dict[str, float]:
    def med(approach: str, key: str) -> float:
        return statistics.median(r[key] for r in point[approach])

    def spread_of(values: list[float]) -> float:
        return (max(values) - min(values)) / statistics.median(values) if len(values) > 1 else 0.0

    def spread(approach: str) -> float:
        return spread_of([r["throughput"] for r in point[approach]])

    summary: dict[str, float] = {}
    for approach in APPROACHES:
        summary[f"{approach}_rps"] = med(approach, "throughput")
        summary[f"{approach}_p50_ms"] = med(approach, "p50_ms")
        summary[f"{approach}_p99_ms"] = med(approach, "p99_ms")
        summary[f"{approach}_spread"] = spread(approach)
    summary["apredict_rows_per_batch"] = med("apredict", "rows_per_batch")
    summary["apredict_loop_cpu_us"] = med("apredict", "loop_cpu_us_per_request")
    summary["apredict_process_cpu_us"] = med("apredict", "process_cpu_us_per_request")
    summary["apredict_wakes_per_request"] = med("apredict", "loop_wakes_per_request")
    summary["ratio_naive"] = summary["apredict_rps"] / summary["to_thread_rps"]
    summary["ratio_wrap_future"] = summary["apredict_rps"] / summary["wrap_future_rps"]
    # Round by round: apredict's rate over the ceiling measured in the same round.
    ratios = [r["throughput"] / c for r, c in zip(point["apredict"], point["ceiling"], strict=True)]
    summary["ceiling_rows_per_s"] = statistics.median(point["ceiling"])
    summary["ceiling_spread"] = spread_of(point["ceiling"])
    summary["ratio_ceiling"] = statistics.median(ratios)
    summary["ratio_ceiling_spread"] = spread_of(ratios)
    # Best over best: another process on the host only ever lowers a reading, the ceiling's most (its two
    # spinning threads wait for each other: one that loses part of its core cuts it to a third), so a round
    # whose ceiling was cut flatters its ratio; each one's best reading of the run is what it can do.
    summary["ratio_best"] = max(r["throughput"] for r in point["apredict"]) / max(point["ceiling"])
    return summary


def profile_loop(args: argparse.Namespace) -> None:
    """``apredict`` from the largest N of tasks under cProfile, on the loop's thread only (the worker threads
    run unprofiled): Python calls and CPU time per request on the loop, and where they go. The first of
    ``--modes`` says whether an OpenTelemetry SDK is configured."""
    if args.modes[0] == "sampled":
        configure_sdk()
    name, tasks = args.models[0], max(args.tasks)
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / name
        build_reference(name, repository)
        server = inprocserve.Server(repository, models={name: inprocserve.ModelConfig()})
        rows = input_rows(name, tasks)

        async def apredict(x: np.ndarray) -> Any:
            return await server.apredict(name, {"x": x})

        async_closed_loop(tasks, apredict, rows, 0.5)  # warm-up: sessions built, worker parked
        profiler = cProfile.Profile()
        profiler.enable()
        result = async_closed_loop(tasks, apredict, rows, args.seconds)
        profiler.disable()
        server.close()
    profiler.dump_stats(args.profile)
    stats = pstats.Stats(args.profile)
    calls = stats.total_calls / max(1, result["requests"])  # type: ignore[attr-defined]
    print(
        f"{name}, N={tasks}, under cProfile: {result['requests']:,} requests, {calls:.1f} Python calls and "
        f"{result['loop_cpu_us_per_request']:.1f} µs of loop-thread CPU per request (profiler included); "
        f"stats in {args.profile}"
    )
    stats.sort_stats("tottime").print_stats(25)


def write_markdown(results: dict[str, Any], out: Path, stem: str = "async_callers") -> Path:
    m = results["machine"]
    settings = results["settings"]
    lines = [
        "# Async callers benchmark",
        "",
        machine_line(m),
        f"Settings: {settings['seconds']} s per point, {settings['rounds']} round(s), approaches interleaved; medians "
        "(spread = (max-min)/median over rounds). N tasks on one event loop, one-row requests, default settings.",
        "",
        "`to_thread`: `await asyncio.to_thread(session.run, ...)` on one shared session (the naive async baseline). "
        "`wrap_future`: `await asyncio.wrap_future(server.submit(...))`, one loop wake per request (what `apredict` "
        "did before). `apredict`: `await server.apredict(...)`. Ceiling: raw `run`, one thread, pre-built batches.",
        "",
    ]
    if settings.get("timeout_s") is not None:
        lines += [
            f"Every `wrap_future` and `apredict` request passes `timeout_s={settings['timeout_s']:g}` (as a web "
            "plug-in passes each request's remaining budget); `to_thread` has no deadline.",
            "",
        ]
    floor = results["modes"][next(iter(results["modes"]))]["async_floor_requests_per_s"]
    lines += [
        "Loop hand-off floor — N tasks on one loop handing tokens to one worker thread and back, one wake of the "
        "worker per loop iteration and one wake of the loop per batch, no model, no numpy, no library: "
        + ", ".join(f"N={n}: {r:,.0f}/s" for n, r in floor.items())
        + ". No loop-native batcher in CPython can exceed it on this machine.",
        "",
    ]
    for mode, models in results["modes"].items():
        label = "no OpenTelemetry SDK" if mode == "off" else "OpenTelemetry SDK, 1 % trace sampling"
        for name, data in models.items():
            if name == "async_floor_requests_per_s":
                continue
            lines += [
                f"## {name}, {label}",
                "",
                "Ceiling rows/s, measured once before the rounds: "
                + ", ".join(f"batch {b}: {r:,.0f}" for b, r in data["ceiling_rows_per_s"].items())
                + f"; best {data['ceiling_best_rows_per_s']:,.0f}. "
                f"Max |diff| of apredict vs onnxruntime: {data['max_abs_diff_vs_onnxruntime']:.1e}.",
                "",
                "`ceiling`: the ceiling measured again in each round of that N (best of batches "
                + "/".join(map(str, ROUND_BATCHES))
                + "; median over rounds, spread). `x ceiling`: median over rounds of apredict's rate over that "
                "round's ceiling (spread of those ratios); best/best: apredict's best round over the highest ceiling "
                "reading of that N (noise only lowers readings, the ceiling's most: a round whose ceiling was cut "
                "flatters its ratio).",
                "",
                "| N tasks | to_thread req/s | wrap_future req/s | apredict req/s | x to_thread | ceiling rows/s "
                "| x ceiling "
                "| p50 ms (to_thread / wrap_future / apredict) | p99 ms (to_thread / wrap_future / apredict) "
                "| rows/batch | loop wakes/req | apredict CPU µs/req (loop thread / process) "
                "| spread (to_thread / apredict) |",
                "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for tasks, point in data["points"].items():
                s = point["summary"]
                lines.append(
                    f"| {tasks} | {s['to_thread_rps']:,.0f} | {s['wrap_future_rps']:,.0f} | {s['apredict_rps']:,.0f} "
                    f"| {s['ratio_naive']:.2f} | {s['ceiling_rows_per_s']:,.0f} ({s['ceiling_spread']:.0%}) "
                    f"| **{s['ratio_ceiling']:.2f}** ({s['ratio_ceiling_spread']:.0%}; "
                    f"best/best {s['ratio_best']:.2f}) "
                    f"| {s['to_thread_p50_ms']:.3f} / {s['wrap_future_p50_ms']:.3f} / {s['apredict_p50_ms']:.3f} "
                    f"| {s['to_thread_p99_ms']:.2f} / {s['wrap_future_p99_ms']:.2f} / {s['apredict_p99_ms']:.2f} "
                    f"| {s['apredict_rows_per_batch']:.1f} | {s['apredict_wakes_per_request']:.3f} "
                    f"| {s['apredict_loop_cpu_us']:.1f} / {s['apredict_process_cpu_us']:.1f} "
                    f"| {s['to_thread_spread']:.0%} / {s['apredict_spread']:.0%} |"
                )
            lines.append("")
    path = out / f"{stem}.md"
    path.write_text("\n".join(lines))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=lambda s: s.split(","), default=["mlp-small"])
    parser.add_argument("--tasks", type=lambda s: [int(x) for x in s.split(",")], default=[1, 8, 64])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--modes", type=lambda s: s.split(","), default=["off", "sampled"])
    parser.add_argument(
        "--timeout-s",
        type=float,
        help="give every wrap_future and apredict request this deadline; writes async_callers-timeout.{json,md}",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default: %(default)s)")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="instead of measuring: profile apredict on the loop thread (largest N, first model, first mode) into PATH",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # run one mode and print its JSON
    args = parser.parse_args()
    if args.profile:
        profile_loop(args)
        return
    if args.child:
        print("RESULT " + json.dumps(measure(args.child, args)))
        return
    settings = {key: value for key, value in vars(args).items() if key not in ("out", "profile", "child")}
    results: dict[str, Any] = {"machine": machine(), "settings": settings, "modes": {}}
    for mode in args.modes:  # each mode in its own process: a global OpenTelemetry provider cannot be unset
        command = [sys.executable, __file__, "--child", mode, "--models", ",".join(args.models)]
        command += ["--tasks", ",".join(map(str, args.tasks)), "--seconds", str(args.seconds)]
        command += ["--rounds", str(args.rounds)]
        if args.timeout_s is not None:
            command += ["--timeout-s", str(args.timeout_s)]
        out = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
        payload = ""
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                payload = line[len("RESULT ") :]
            else:
                print(line, flush=True)
        results["modes"][mode] = json.loads(payload)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "async_callers" if args.timeout_s is None else "async_callers-timeout"
    path = args.out / f"{stem}.json"
    path.write_text(json.dumps(results, indent=2, default=str))
    print(f"wrote {path}")
    print(f"wrote {write_markdown(results, args.out, stem)}")


if __name__ == "__main__":
    main()
