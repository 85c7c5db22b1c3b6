"""Model-level performance levers, measured: memory by pool mode and by worker count, the arena after a
burst, start-up with the optimized-graph cache, cache-hit latency, quantization, and one shared session
against separate sessions. Writes benchmarks/results/performance.{json,md}.

    python benchmarks/performance.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import RESULTS, build_reference, closed_loop, input_rows, machine, machine_line

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

BIG = (1024, 4096, 4096, 4096, 16)  # ~150 MB of float32 weights


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def child_memory(repository: str, pool: dict[str, Any]) -> None:
    """Load the big model with a pool configuration, run a batch, report peak and current RSS."""
    import resource

    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(**pool))
    with inprocserve.Server(repository, config=config) as server:
        server.predict("big", np.ones((8, BIG[0]), np.float32))
        print(json.dumps({"peak_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "rss_kb": rss_kb()}))


def child_arena(repository: str, pool: dict[str, Any]) -> None:
    """RSS after warm-up, after a burst of 2048-row runs, and after small requests again."""
    config = inprocserve.ModelConfig(
        pool=inprocserve.PoolConfig(**pool), batching=inprocserve.BatchingConfig(max_batch_size=2048)
    )
    with inprocserve.Server(repository, config=config) as server:
        server.predict("big", np.ones((8, BIG[0]), np.float32))
        before = rss_kb()
        for _ in range(3):
            server.predict("big", np.ones((2048, BIG[0]), np.float32))  # one 2048-row run each
        after_burst = rss_kb()
        for _ in range(20):
            server.predict("big", np.ones((1, BIG[0]), np.float32))  # back to small requests
        settled = rss_kb()
        print(json.dumps({"before_kb": before, "after_burst_kb": after_burst, "settled_kb": settled}))


def run_child(*args: str) -> dict[str, Any]:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def workers_pss(repository: str, workers: int, pool: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fork ``workers`` processes after importing inprocserve (as gunicorn --preload does); each builds its
    server lazily; sum their PSS (shared pages counted once across them)."""
    script = f"""
import os, sys, time, json, numpy as np, inprocserve
pids = []
for _ in range({workers}):
    pid = os.fork()
    if pid == 0:
        config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(**{pool or {}!r}))
        server = inprocserve.Server({repository!r}, config=config)
        server.predict("big", np.ones((8, {BIG[0]}), np.float32))
        sys.stdout.write("ready\\n"); sys.stdout.flush()
        time.sleep(60)
        os._exit(0)
    pids.append(pid)
print(json.dumps(pids), flush=True)
for pid in pids:
    os.waitpid(pid, 0)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    pids = json.loads(process.stdout.readline())
    for _ in range(workers):
        process.stdout.readline()
    total = sum(pss_kb(pid) for pid in pids)
    for pid in pids:
        os.kill(pid, 9)
    process.wait()
    return {"workers": workers, "pss_total_kb": total}


def throughput(repository: Path, name: str, pool: dict[str, Any], clients: int, seconds: float) -> float:
    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(**pool))
    with inprocserve.Server(repository, config=config) as server:
        rows = input_rows(name, clients)
        result = closed_loop(name, name, clients, lambda x: server.predict(name, {"x": x}), rows, seconds)
    return result.throughput


def main() -> None:
    results: dict[str, Any] = {"machine": machine()}
    with tempfile.TemporaryDirectory() as folder:
        big_repo = Path(folder) / "big-repo"
        path = save_model(build_mlp_model(BIG, softmax=False, seed=5), big_repo, "big", 1)
        results["big_model_bytes"] = path.stat().st_size
        print(f"big model: {path.stat().st_size / 1e6:.0f} MB of weights")

        memory = {}
        for label, pool in (
            ("pool 1", {"size": 1}),
            ("pool 4, separate sessions", {"size": 4, "share_session": False}),
            ("pool 4, one shared session (default on CPU)", {"size": 4}),
        ):
            memory[label] = run_child("child-memory", str(big_repo), json.dumps(pool))
            print(f"memory, {label}: peak RSS {memory[label]['peak_rss_kb'] / 1024:.0f} MB")
        results["memory"] = memory

        pss = {n: workers_pss(str(big_repo), n) for n in (1, 4)}
        results["workers_pss"] = pss
        print(f"PSS: 1 worker {pss[1]['pss_total_kb'] / 1024:.0f} MB, 4 workers {pss[4]['pss_total_kb'] / 1024:.0f} MB")
        import onnx

        external_repo = Path(folder) / "external-repo"
        (external_repo / "big" / "1").mkdir(parents=True)
        onnx.save_model(
            onnx.load(str(path)),
            str(external_repo / "big" / "1" / "model.onnx"),
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="weights.bin",
        )
        shared = {n: workers_pss(str(external_repo), n, {"shared_weights": True}) for n in (1, 4)}
        results["workers_pss_shared_weights"] = shared
        print(
            f"PSS, external weights + shared_weights: 1 worker {shared[1]['pss_total_kb'] / 1024:.0f} MB, "
            f"4 workers {shared[4]['pss_total_kb'] / 1024:.0f} MB"
        )
        speed = {}
        for label, repo, pool in (
            ("default", big_repo, {}),
            ("shared_weights", external_repo, {"shared_weights": True}),
        ):
            config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(**pool))
            with inprocserve.Server(repo, config=config) as server:
                x = np.ones((64, BIG[0]), np.float32)
                server.predict("big", x)
                started = time.perf_counter()
                for _ in range(5):
                    server.predict("big", x)
                speed[label] = (time.perf_counter() - started) / 5 * 1000
        results["shared_weights_run_ms"] = speed
        print(f"64-row run: default {speed['default']:.1f} ms, shared_weights {speed['shared_weights']:.1f} ms")

        arena = {}
        for label, pool in (
            ("arena (default)", {}),
            ("arena + shrinkage", {"arena_shrinkage": True}),
            ("no arena", {"memory_arena": False}),
        ):
            arena[label] = run_child("child-arena", str(big_repo), json.dumps(pool))
            print(f"arena, {label}: {arena[label]}")
        results["arena"] = arena

        startup = {}
        for label, pool in (("no cache", {}), ("optimized graph cached", {"optimized_model_cache": True})):
            config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(**pool))
            inprocserve.Server(big_repo, config=config).close()  # the first start writes the cache
            times = []
            for _ in range(3):
                started = time.perf_counter()
                inprocserve.Server(big_repo, config=config).close()
                times.append(time.perf_counter() - started)
            startup[label] = statistics.median(times)
            print(f"start-up, {label}: {startup[label]:.2f} s")
        results["startup_s"] = startup

        small_repo = Path(folder) / "small"
        build_reference("mlp-small", small_repo)
        build_reference("mlp-large", Path(folder) / "large")
        # p50 of predict: a hit, a miss (new inputs), and new inputs to a server without the cache, taking
        # turns in 5 blocks of 1,000 calls each
        samples: dict[str, list[float]] = {"hit": [], "miss": [], "off": []}
        cached_config = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(enabled=True))
        with (
            inprocserve.Server(small_repo, config=cached_config) as server,
            inprocserve.Server(small_repo) as uncached,
        ):
            x = {"x": input_rows("mlp-small", 1)[0]}
            server.predict("mlp-small", x)
            uncached.predict("mlp-small", x)
            rng = np.random.default_rng(7)
            for _ in range(5):
                for label, values in samples.items():
                    fresh = [{"x": rng.random((1, 256), np.float32)} for _ in range(1000)]
                    serving = uncached if label == "off" else server
                    for one in [x] * 1000 if label == "hit" else fresh:
                        started = time.perf_counter()
                        serving.predict("mlp-small", one)
                        values.append(time.perf_counter() - started)
        cache = {label: statistics.median(values) * 1e6 for label, values in samples.items()}
        results["cache_p50_us"] = cache
        print(f"cache: p50 hit {cache['hit']:.1f} us, miss {cache['miss']:.1f} us, no cache {cache['off']:.1f} us")

        from inprocserve._quantize import quantize

        quantization = {}
        for name in ("mlp-small", "mlp-large"):
            source = Path(folder) / ("small" if name == "mlp-small" else "large") / name / "1" / "model.onnx"
            quantization[name] = quantize(source, Path(folder) / f"{name}-int8.onnx", seconds=1.0)
            q = quantization[name]
            print(
                f"quantize {name}: size {q['size_ratio']:.2f}x, batch-64 speed {q['speed']['batch_64']['ratio']:.2f}x"
            )
        results["quantization"] = quantization

        sharing = {}
        for label, pool in (
            ("pool 1 (2 threads)", {"size": 1}),
            ("pool 2, separate sessions (1 thread each)", {"size": 2, "share_session": False}),
            ("pool 2, one shared session (2 threads, default)", {"size": 2}),
        ):
            sharing[label] = [throughput(Path(folder) / "large", "mlp-large", pool, 64, 3.0) for _ in range(2)]
            print(f"mlp-large N=64, {label}: {statistics.median(sharing[label]):,.0f} req/s")
        results["sessions_vs_shared"] = sharing

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "performance.json").write_text(json.dumps(results, indent=2))
    write_markdown(results)


def write_markdown(r: dict[str, Any]) -> None:
    m = r["machine"]
    mem = r["memory"]
    base = mem["pool 1"]["peak_rss_kb"]
    lines = [
        "# Model-level performance",
        "",
        machine_line(m),
        "",
        f"## Memory (a {r['big_model_bytes'] / 1e6:.0f} MB model, peak RSS of the process)",
        "",
        "| pool | peak RSS MB | x pool 1 | RSS after loading MB | x pool 1 |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {k} | {v['peak_rss_kb'] / 1024:.0f} | {v['peak_rss_kb'] / base:.2f} | {v['rss_kb'] / 1024:.0f} | "
            f"{v['rss_kb'] / mem['pool 1']['rss_kb']:.2f} |"
            for k, v in mem.items()
        ],
        "",
        f"Worker processes (forked after import, each building its own server): PSS of 1 worker "
        f"{r['workers_pss'][1]['pss_total_kb'] / 1024:.0f} MB, of 4 workers together "
        f"{r['workers_pss'][4]['pss_total_kb'] / 1024:.0f} MB "
        f"({r['workers_pss'][4]['pss_total_kb'] / r['workers_pss'][1]['pss_total_kb']:.2f}x).",
        "",
        f"With the weights in an external data file and `pool.shared_weights = true`: 1 worker "
        f"{r['workers_pss_shared_weights'][1]['pss_total_kb'] / 1024:.0f} MB, 4 workers "
        f"{r['workers_pss_shared_weights'][4]['pss_total_kb'] / 1024:.0f} MB; a 64-row run takes "
        f"{r['shared_weights_run_ms']['shared_weights']:.1f} ms instead of "
        f"{r['shared_weights_run_ms']['default']:.1f} ms.",
        "",
        "## Arena (RSS MB: after warm-up / after a 2048-row burst / after 20 small requests)",
        "",
        "| setting | before | after burst | settled |",
        "|---|---:|---:|---:|",
        *[
            f"| {k} | {v['before_kb'] / 1024:.0f} | {v['after_burst_kb'] / 1024:.0f} | {v['settled_kb'] / 1024:.0f} |"
            for k, v in r["arena"].items()
        ],
        "",
        "## Start-up (Server() with the big model, median of 3)",
        "",
        *[f"- {k}: {v:.2f} s" for k, v in r["startup_s"].items()],
        "",
        f"## Prediction cache (mlp-small, p50 of predict): hit {r['cache_p50_us']['hit']:.1f} us, "
        f"miss {r['cache_p50_us']['miss']:.1f} us; the same new inputs without the cache "
        f"{r['cache_p50_us']['off']:.1f} us",
        "",
        "## Quantization (dynamic INT8, measured side by side)",
        "",
        "| model | size | batch 1 speed | batch 64 speed | label agreement | max abs diff |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, q in r["quantization"].items():
        acc = next(iter(q["accuracy"].values()))
        lines.append(
            f"| {name} | {q['size_ratio']:.2f}x | {q['speed']['batch_1']['ratio']:.2f}x | "
            f"{q['speed']['batch_64']['ratio']:.2f}x | {acc.get('label_agreement', float('nan')):.1%} | "
            f"{acc['max_abs_diff']:.3g} |"
        )
    lines += [
        "",
        "## One shared session or several (mlp-large, 64 clients, req/s, 2 rounds)",
        "",
        "| pool | req/s (median) |",
        "|---|---:|",
    ]
    lines += [f"| {k} | {statistics.median(v):,.0f} |" for k, v in r["sessions_vs_shared"].items()]
    (RESULTS / "performance.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {RESULTS / 'performance.md'}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child-memory":
        child_memory(sys.argv[2], json.loads(sys.argv[3]))
    elif len(sys.argv) > 1 and sys.argv[1] == "child-arena":
        child_arena(sys.argv[2], json.loads(sys.argv[3]))
    else:
        import argparse

        # no options: parsed so that --help says what this runs (several minutes) instead of starting it
        argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
        main()
