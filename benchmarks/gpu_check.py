"""The CUDA path on a real GPU, for a host that has one (never in CI: the development machines have none).

With onnxruntime-gpu installed in place of onnxruntime, measures in one run:

1. what a server with no settings chooses (providers, I/O binding, sessions), and how long its load takes;
2. its answers against onnxruntime's CPU ones: one 64-row request, and 64 one-row requests merged;
3. ``pool.io_binding`` on against off: microseconds per request for one caller, by request size, on
   mlp-large and a 4096-wide MLP (16 KiB in and out per row);
4. ``server.predict`` against a naive shared CUDA session called by every thread (``closed_loop``), at 1, 8
   and 64 callers, with each model's raw ceiling (batch 1 and 64);
5. the thread hand-off floor of the host (``coalescing.handoff_floor``), to tell the library's queued path
   from the machine's.

    python benchmarks/gpu_check.py [--seconds 2] [--out DIR]

Prints progress lines and writes gpu_check.{json,md} into ``--out`` (benchmarks/results by default). With
``--preload``, calls ``onnxruntime.preload_dlls()`` first (CUDA and cuDNN from the nvidia-* pip packages,
where the loader's path lacks them). Exits with status 2, saying why, where CUDA is not usable.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, build_reference, closed_loop, input_rows, machine, machine_line

import inprocserve
from inprocserve import ModelConfig, PoolConfig
from inprocserve.testing import build_mlp_model, save_model

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def per_request_us(server: inprocserve.Server, model: str, x: np.ndarray, seconds: float) -> float:
    """Microseconds per ``predict`` of ``x`` by one caller, back to back, after 5 warm-up calls."""
    for _ in range(5):
        server.predict(model, {"x": x})
    started, count = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        server.predict(model, {"x": x})
        count += 1
    return (time.perf_counter() - started) / count * 1e6


def gpu_name() -> str | None:
    """The first GPU's name as nvidia-smi gives it, or ``None``."""
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return listed.stdout.split("\n")[0].strip() or None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=2.0, help="per load point")
    parser.add_argument("--preload", action="store_true", help="call onnxruntime.preload_dlls() first")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import onnxruntime as ort

    report: dict[str, Any] = {"machine": machine(), "onnxruntime": ort.__version__, "gpu": gpu_name()}
    if args.preload:
        ort.preload_dlls()
    report["available"] = ort.get_available_providers()
    print("onnxruntime", ort.__version__, report["available"], flush=True)
    if CUDA not in report["available"]:
        print("CUDAExecutionProvider is not available: install onnxruntime-gpu in place of onnxruntime")
        return 2
    folder = Path(tempfile.mkdtemp())
    for name in ("mlp-small", "mlp-large"):
        build_reference(name, folder)
    save_model(build_mlp_model((4096, 4096, 4096), softmax=False, seed=3), folder, "wide", 1)

    # 1. what a server with no settings chooses
    started = time.perf_counter()
    server = inprocserve.Server(folder)
    report["load_s"] = round(time.perf_counter() - started, 2)
    keys = ("providers", "io_binding", "pool_size", "shared_session", "intra_op_threads", "max_batch_size")
    versions = {name: server.status()["models"][name]["versions"]["1"] for name in ("mlp-small", "mlp-large")}
    report["chosen"] = {name: {key: version.get(key) for key in keys} for name, version in versions.items()}
    print("chosen", json.dumps(report["chosen"]), flush=True)
    if any(chosen["providers"][0] != CUDA for chosen in report["chosen"].values()):
        print("the server did not choose CUDA (see its log): try --preload")
        server.close()
        return 2

    # 2. answers against onnxruntime's CPU ones
    rng = np.random.default_rng(0)
    report["max_abs_diff_vs_cpu"] = {}
    for name in ("mlp-small", "mlp-large"):
        cpu = ort.InferenceSession(str(folder / name / "1" / "model.onnx"), providers=[CPU])
        x = rng.standard_normal((64, cpu.get_inputs()[0].shape[1])).astype(np.float32)
        reference = cpu.run(None, {"x": x})[0]
        whole = server.predict(name, {"x": x})["y"]
        futures = [server.submit(name, {"x": x[i : i + 1]}) for i in range(64)]
        merged = np.concatenate([future.result(timeout=60)["y"] for future in futures])
        report["max_abs_diff_vs_cpu"][name] = {
            "one_request_of_64_rows": float(np.abs(whole - reference).max()),
            "64_one_row_requests": float(np.abs(merged - reference).max()),
        }
    print("max |diff| vs CPU", json.dumps(report["max_abs_diff_vs_cpu"]), flush=True)
    server.close()

    # 3. I/O binding on against off, one caller, by request size
    report["io_binding_us_per_request"] = {}
    for binding in (True, False):
        with inprocserve.Server(folder, config=ModelConfig(pool=PoolConfig(io_binding=binding))) as bound:
            sizes = {}
            for name, features in (("mlp-large", 1024), ("wide", 4096)):
                for rows in (1, 64, 1024):
                    x = rng.standard_normal((rows, features)).astype(np.float32)
                    sizes[f"{name} x{rows}"] = round(per_request_us(bound, name, x, min(args.seconds, 1.0)))
        report["io_binding_us_per_request"]["on" if binding else "off"] = sizes
        print("io_binding", binding, json.dumps(sizes), flush=True)

    # 4. predict against a naive shared CUDA session
    report["load"] = {}
    with inprocserve.Server(folder) as server:
        for name in ("mlp-small", "mlp-large"):
            naive = ort.InferenceSession(str(folder / name / "1" / "model.onnx"), providers=[CUDA, CPU])
            for clients in (1, 8, 64):
                rows = input_rows(name, clients)
                points = {}
                for label, call in (
                    ("naive", lambda x, naive=naive: naive.run(None, {"x": x})),
                    ("inprocserve", lambda x, name=name: server.predict(name, {"x": x})),
                ):
                    closed_loop("warm", name, clients, call, rows, 0.3)
                    points[label] = closed_loop(label, name, clients, call, rows, args.seconds)
                naive_point, ours = points["naive"], points["inprocserve"]
                point = {
                    "naive_req_s": round(naive_point.throughput),
                    "inprocserve_req_s": round(ours.throughput),
                    "ratio": round(ours.throughput / naive_point.throughput, 2),
                    "p50_ms": [round(naive_point.p50_ms, 3), round(ours.p50_ms, 3)],
                    "p99_ms": [round(naive_point.p99_ms, 3), round(ours.p99_ms, 3)],
                }
                report["load"][f"{name}:{clients}"] = point
                print(name, clients, json.dumps(point), flush=True)
            ceiling = {}
            for batch in (1, 64):
                x = rng.standard_normal((batch, naive.get_inputs()[0].shape[1])).astype(np.float32)
                for _ in range(20):
                    naive.run(None, {"x": x})
                started, count = time.perf_counter(), 0
                while time.perf_counter() - started < 1.0:
                    naive.run(None, {"x": x})
                    count += 1
                ceiling[f"batch {batch}"] = round(count * batch / (time.perf_counter() - started))
            report["load"][f"{name}:ceiling rows/s"] = ceiling
            print(name, "ceiling rows/s", ceiling, flush=True)

    # 5. the host's thread hand-off floor
    from coalescing import handoff_floor

    report["handoff_floor_round_trips_per_s"] = {n: round(handoff_floor(n, 1.5)) for n in (1, 8, 64)}
    print("hand-off floor", report["handoff_floor_round_trips_per_s"], flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(markdown(report))
    print(f"wrote {args.out / 'gpu_check.md'}")
    return 0


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# The CUDA path on a GPU",
        "",
        machine_line(report["machine"]) + (f" GPU: {report['gpu']}." if report.get("gpu") else ""),
        "",
    ]
    lines += [f"Chosen with no settings (load {report['load_s']} s): `{json.dumps(report['chosen'])}`.", ""]
    lines += [f"Max |diff| against onnxruntime's CPU answers: `{json.dumps(report['max_abs_diff_vs_cpu'])}`.", ""]
    lines += ["## I/O binding, µs per request (one caller)", "", "| request | on | off |", "|---|---:|---:|"]
    on, off = report["io_binding_us_per_request"]["on"], report["io_binding_us_per_request"]["off"]
    lines += [f"| {size} | {on[size]:,} | {off[size]:,} |" for size in on]
    lines += ["", "## predict against a naive shared CUDA session", ""]
    lines += [
        "| model:callers | naive req/s | inprocserve req/s | x naive | p50 ms | p99 ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, point in report["load"].items():
        if "ceiling" in key:
            lines.append(f"| {key} | {point} | | | | |")
        else:
            lines.append(
                f"| {key} | {point['naive_req_s']:,} | {point['inprocserve_req_s']:,} | {point['ratio']} "
                f"| {point['p50_ms'][0]} / {point['p50_ms'][1]} | {point['p99_ms'][0]} / {point['p99_ms'][1]} |"
            )
    lines += ["", f"Thread hand-off floor, round trips/s: {report['handoff_floor_round_trips_per_s']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
