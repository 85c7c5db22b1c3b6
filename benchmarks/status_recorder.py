"""Cost of the status page's recorders on the request path, and of rendering the page.

Per request the server does ``time.perf_counter() - started``, two dict lookups to find the answering
version, and ``LatencyHistogram.record``; per executed batch ``BatchSizeHistogram.record``. Each is timed
with ``timeit`` (best of ``--repeat`` runs of ``--number`` calls, after subtracting an empty call of the same
shape). Rendering (off the request path) is timed on the status of a real server with three models. Writes
benchmarks/results/status_recorder.{json,md}.

    python benchmarks/status_recorder.py [--number 200000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import itertools
import json
import tempfile
import time
import timeit
from typing import Any

import numpy as np
from _common import RESULTS, machine

import inprocserve
from inprocserve._stats import BatchSizeHistogram, LatencyHistogram
from inprocserve.testing import build_scale_model, save_model


class _Version:
    __slots__ = ("latency",)

    def __init__(self) -> None:
        self.latency = LatencyHistogram()


class _Routes:
    __slots__ = ("versions",)

    def __init__(self, versions: dict[int, _Version]) -> None:
        self.versions = versions


def best_ns(statement: Any, number: int, repeat: int) -> float:
    return min(timeit.repeat(statement, number=number, repeat=repeat)) / number * 1e9


def recorder_costs(number: int, repeat: int) -> dict[str, float]:
    latency, batches = LatencyHistogram(), BatchSizeHistogram()
    values = [float(v) for v in np.random.default_rng(0).lognormal(np.log(0.002), 1.0, 1024)]
    routes = {"fraud": _Routes({1: _Version()})}
    started = time.perf_counter()

    def empty(seconds: float) -> None:
        pass

    def record(seconds: float, record: Any = latency.record) -> None:
        record(seconds)

    def record_batch(rows: int, record: Any = batches.record) -> None:
        record(rows)

    def completion_hunk(error: Any = None) -> None:  # the lines Server._answered runs for it
        serving = routes.get("fraud")
        finished = None if serving is None else serving.versions.get(1)
        if finished is not None:
            finished.latency.record(time.perf_counter() - started, failed=error is not None)

    def empty_hunk(error: Any = None) -> None:
        pass

    cycle = itertools.cycle(values)
    sizes = itertools.cycle(range(1, 65))
    base = best_ns(lambda: empty(next(cycle)), number, repeat)
    return {
        "latency_record_ns": best_ns(lambda: record(next(cycle)), number, repeat) - base,
        "batch_record_ns": best_ns(lambda: record_batch(next(sizes)), number, repeat) - base,
        "completion_hunk_ns": best_ns(completion_hunk, number, repeat) - best_ns(empty_hunk, number, repeat),
    }


def render_costs(repeat: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        for name in ("fraud", "churn", "ranker"):
            for version in (1, 2):
                save_model(build_scale_model(float(version)), folder, name, version)
        rollout = inprocserve.RolloutConfig(
            strategy="canary",
            stable=1,
            canary=inprocserve.CanaryConfig(version=2, percent=20),
            shadow=inprocserve.ShadowConfig(versions=(2,)),
        )
        models = {"fraud": inprocserve.ModelConfig(rollout=rollout)}
        with inprocserve.Server(folder, models=models) as server:
            rows = np.ones((2, 4), dtype=np.float32)
            for user in range(300):
                for name in ("fraud", "churn", "ranker"):
                    server.predict(name, rows, context={"user_id": str(user)})
            status_us = min(timeit.repeat(server.status, number=20, repeat=repeat)) / 20 * 1e6
            status = server.status()
    render_us = min(timeit.repeat(lambda: inprocserve.render_status_page(status), number=20, repeat=repeat)) / 20 * 1e6
    return {"status_us": status_us, "render_us": render_us, "page_bytes": len(inprocserve.render_status_page(status))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    results = {"machine": machine(), **recorder_costs(args.number, args.repeat), **render_costs(args.repeat)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "status_recorder.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# Status page recorders",
        "",
        f"`python benchmarks/status_recorder.py --number {args.number} --repeat {args.repeat}` on "
        f"{results['machine']['cpu']} ({results['machine']['cores']} cores), Python {results['machine']['python']}.",
        "",
        "| what | cost |",
        "|---|---|",
        f"| `LatencyHistogram.record` per request | {results['latency_record_ns']:.0f} ns |",
        f"| the whole completion hunk in `Server._answered` (clock, lookups, record) | "
        f"{results['completion_hunk_ns']:.0f} ns |",
        f"| `BatchSizeHistogram.record` per batch | {results['batch_record_ns']:.0f} ns |",
        f"| `Server.status()`, 3 models x 2 versions (off the request path) | {results['status_us']:.0f} µs |",
        f"| `render_status_page` of that status ({results['page_bytes'] / 1024:.0f} KiB) | "
        f"{results['render_us']:.0f} µs |",
        "",
    ]
    (RESULTS / "status_recorder.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
