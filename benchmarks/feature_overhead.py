"""What the features a team turns on in production cost a lone ``predict``: the prediction cache (a hit, a
miss), a canary, a shadow, drift monitoring, each against the same model with none of them.

One process, one thread, no OpenTelemetry SDK, mlp-small (two identical versions, so that a canary and a
shadow have a second one). Every feature has a server of its own; the calls take turns in blocks of
``--block`` calls (so machine drift hits them alike), and each figure is the calling thread's CPU time per
call, median block (a shadow's run, on its own thread, is not the caller's). With ``--baseline DIR`` (a folder
holding another ``inprocserve`` package, e.g. ``git archive REV inprocserve | tar -x -C DIR``) the same servers
of that code take their turns too, imported side by side under another name.

    python benchmarks/feature_overhead.py [--blocks 20] [--block 500] [--baseline DIR]

Writes benchmarks/results/feature_overhead.{json,md} (``--out`` elsewhere).
"""

from __future__ import annotations

import itertools
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import block_arguments, build_reference, import_baseline, input_rows, machine_line, with_run, write_json
from predict_overhead import timed_blocks

ROOT = Path(__file__).resolve().parent.parent
MODEL = "mlp-small"
FEATURES = ("none", "none, new inputs", "cache hit", "cache miss", "canary 50 %", "shadow 1 %", "drift monitoring")


def configs(package: Any) -> dict[str, Any]:
    """Each feature's model configuration, built from ``package`` (this checkout's or the baseline's)."""
    every = package.VersionPolicy.all()
    canary = package.RolloutConfig(strategy="canary", stable=1, canary=package.CanaryConfig(version=2, percent=50.0))
    shadow = package.RolloutConfig(stable=1, shadow=package.ShadowConfig(versions=(2,), percent=1.0))
    cached = package.ModelConfig(cache=package.CacheConfig(enabled=True, max_entries=1_000_000), version_policy=every)
    return {
        "none": package.ModelConfig(version_policy=every),
        "cache": cached,
        "canary 50 %": package.ModelConfig(rollout=canary, version_policy=every),
        "shadow 1 %": package.ModelConfig(rollout=shadow, version_policy=every),
        "drift monitoring": package.ModelConfig(
            drift=package.DriftConfig(capture_reference=1000, window=1000), version_policy=every
        ),
    }


def feature_calls(package: Any, repository: Path, servers: list[Any], rows: int) -> dict[str, Callable[[], Any]]:
    """One call per feature, on servers of ``package`` (appended to ``servers`` for closing)."""
    made = {name: package.Server(repository, config=config) for name, config in configs(package).items()}
    servers.extend(made.values())
    for server in made.values():  # each version adopts its runners (a process's first request: the full way)
        for version in (1, 2):
            server.predict(MODEL, {"x": input_rows(MODEL, 1)[0]}, version=version)
    same = {"x": input_rows(MODEL, 1, seed=1)[0]}
    made["cache"].predict(MODEL, same)  # kept: every later call with it is a hit
    new_inputs = [{"x": row} for row in input_rows(MODEL, rows, seed=2)]
    misses, fresh = itertools.cycle(new_inputs), itertools.cycle(new_inputs[::-1])
    users = itertools.cycle([{"user_id": f"user-{i}"} for i in range(1000)])
    none, cache = made["none"], made["cache"]
    return {
        "none": lambda: none.predict(MODEL, same),
        "none, new inputs": lambda: none.predict(MODEL, next(fresh)),
        "cache hit": lambda: cache.predict(MODEL, same),
        "cache miss": lambda: cache.predict(MODEL, next(misses)),
        "canary 50 %": lambda: made["canary 50 %"].predict(MODEL, same, context=next(users)),
        "shadow 1 %": lambda: made["shadow 1 %"].predict(MODEL, same),
        "drift monitoring": lambda: made["drift monitoring"].predict(MODEL, same),
    }


def main() -> None:
    args = block_arguments(__doc__, blocks=20, block=500)
    sys.path.insert(0, str(ROOT))
    import inprocserve

    scratch = Path(tempfile.mkdtemp())
    servers: list[Any] = []
    # every new input is a miss: more rows than the calls that use them (warm-up included)
    rows = (args.blocks + 2) * max(500, args.block)
    try:
        repository = scratch / "models"
        build_reference(MODEL, repository)
        shutil.copytree(repository / MODEL / "1", repository / MODEL / "2")
        calls = feature_calls(inprocserve, repository, servers, rows)
        if args.baseline is not None:
            baseline = feature_calls(import_baseline(args.baseline, scratch), repository, servers, rows)
            calls |= {f"{name}, baseline": call for name, call in baseline.items()}
        times = timed_blocks(calls, args.blocks, args.block)
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    median = {name: statistics.median(values) for name, values in times.items()}
    results = with_run(args, median_us=median, blocks_us=times)
    write_json("feature_overhead", results, args.out)
    lines = [
        "# What production features cost a lone predict (one thread, no SDK)",
        "",
        machine_line(results["machine"]),
        f"Model {MODEL}; {args.blocks} alternating blocks of {args.block} calls; the calling thread's CPU time "
        "per call, median block. A cache miss is read against `none, new inputs` (the same new rows, no cache).",
        "",
    ]
    if args.baseline is None:
        lines += ["| feature | µs per call | over none |", "|---|---:|---:|"]
        for name in FEATURES:
            lines.append(f"| {name} | {median[name]:.1f} | {median[name] - median['none']:+.1f} |")
    else:
        lines += ["| feature | µs per call | baseline, µs per call | x baseline |", "|---|---:|---:|---:|"]
        for name in FEATURES:
            now, before = median[name], median[f"{name}, baseline"]
            lines.append(f"| {name} | {now:.1f} | {before:.1f} | {now / before:.2f} |")
        lines += ["", f"Baseline: the package in `{args.baseline}`."]
    (args.out / "feature_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
