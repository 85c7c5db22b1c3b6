"""Shared pieces of the benchmarks: reference models, closed-loop clients, statistics, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

# This checkout's package and plug-ins, before those the environment has installed (editable installs of
# another checkout: a benchmark run from a clone measured those), unless PYTHONPATH names the code to run (a
# benchmark's child process running a --baseline's package does).
if not os.environ.get("PYTHONPATH"):
    _CHECKOUT = Path(__file__).resolve().parent.parent
    for _folder in ("integrations/django/src", "integrations/flask/src", ""):
        sys.path.insert(0, str(_CHECKOUT / _folder))

from inprocserve.testing import build_mlp_model, save_model

RESULTS = Path(__file__).parent / "results"

# The reference models of shared/BENCHMARKS.md, built with fixed seeds.
MODELS: dict[str, dict[str, Any]] = {
    "mlp-small": {"dims": (256, 512, 512, 2), "softmax": True, "seed": 1},
    "mlp-large": {"dims": (1024, 4096, 4096, 16), "softmax": False, "seed": 2},
}


def build_reference(name: str, repository: Path) -> Path:
    spec = MODELS[name]
    return save_model(build_mlp_model(spec["dims"], softmax=spec["softmax"], seed=spec["seed"]), repository, name, 1)


def input_rows(name: str, count: int, seed: int = 0) -> list[np.ndarray]:
    features = MODELS[name]["dims"][0]
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((1, features)).astype(np.float32) for _ in range(count)]


@dataclass
class LoadResult:
    approach: str
    model: str
    clients: int
    requests: int
    seconds: float
    throughput: float
    p50_ms: float
    p99_ms: float
    max_ms: float = 0.0
    """The slowest request. A closed loop's percentiles count a starved client's one long wait once, so a
    design that serves some clients over and over and lets others wait shows a low p99; this does not."""
    fairness: float = 1.0
    """Requests completed by the least served client over those of the most served one (1: all alike)."""


def closed_loop(
    approach: str, model: str, clients: int, call: Callable[[np.ndarray], Any], rows: list[np.ndarray], seconds: float
) -> LoadResult:
    """``clients`` threads each call ``call`` back to back with their own one-row input for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        x = rows[index % len(rows)]
        mine = latencies[index]
        clock = time.perf_counter
        barrier.wait()
        end = deadline[0]
        while True:
            start = clock()
            if start >= end:
                break
            call(x)
            mine.append(clock() - start)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    deadline[0] = time.perf_counter() + seconds
    started = time.perf_counter()
    barrier.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    merged = np.sort(np.concatenate([np.asarray(values) for values in latencies]))
    counts = [len(values) for values in latencies]
    return LoadResult(
        approach=approach,
        model=model,
        clients=clients,
        requests=int(merged.size),
        seconds=elapsed,
        throughput=merged.size / elapsed,
        p50_ms=float(np.percentile(merged, 50) * 1000),
        p99_ms=float(np.percentile(merged, 99) * 1000),
        max_ms=float(merged[-1] * 1000),
        fairness=min(counts) / max(1, max(counts)),
    )


def median_spread(values: list[float]) -> tuple[float, float, float]:
    return statistics.median(values), min(values), max(values)


def block_arguments(doc: str | None, *, blocks: int, block: int) -> argparse.Namespace:
    """The command line of a benchmark whose calls take turns in blocks: ``--blocks``, ``--block`` (calls
    per block), ``--baseline`` (another checkout's package, see :func:`import_baseline`) and ``--out``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=blocks)
    parser.add_argument("--block", type=int, default=block, help="calls per block")
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.blocks < 1 or args.block < 1:
        parser.error("--blocks and --block must be at least 1")
    return args


def import_baseline(package_parent: Path, scratch: Path) -> Any:
    """Import the ``inprocserve`` package found in ``package_parent`` (another checkout, e.g. ``git archive REV
    inprocserve | tar -x -C DIR``) as ``inprocserve_baseline``, beside this checkout's, for a before/after
    comparison in one process; the copy is made under ``scratch``."""
    import importlib
    import shutil
    import sys

    shutil.copytree(package_parent / "inprocserve", scratch / "inprocserve_baseline")
    sys.path.insert(0, str(scratch))
    return importlib.import_module("inprocserve_baseline")


def machine_line(m: dict[str, Any]) -> str:
    """The "Machine:" line that heads every results file, from :func:`machine`'s answer."""
    software = f"Python {m['python']}, onnxruntime {m['onnxruntime']}"
    if m.get("opentelemetry_sdk"):  # (what a telemetry figure depends on most: see docs/observability.md, "Cost")
        software += f", opentelemetry-sdk {m['opentelemetry_sdk']}"
    return f"Machine: {m['cpu']}, {m['cores']} cores, {software}, {m['date']}."


def installed_version(distribution: str) -> str | None:
    """The installed version of a distribution, None if it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def machine() -> dict[str, Any]:
    import onnxruntime

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "opentelemetry_sdk": installed_version("opentelemetry-sdk"),
        "platform": platform.platform(),
        "date": time.strftime("%Y-%m-%d"),
    }


def write_json(name: str, payload: dict[str, Any], out: Path = RESULTS) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=lambda o: asdict(o)))
    return path


def with_run(args: argparse.Namespace, **figures: Any) -> dict[str, Any]:
    """A results payload: the machine, the command line's settings (paths as text), then ``figures``."""
    settings = {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}
    return {"machine": machine(), "settings": settings, **figures}
