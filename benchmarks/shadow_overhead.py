"""Cost of a shadow to its caller: one caller thread on mlp-small, with the shadow off and on.

Version 2 of mlp-small (other weights, same shape) shadows version 1. Three modes alternate round by round
in one process, so machine drift hits all alike:

* ``off``: no shadow (the ``mlp-small.shadow.versions`` flag is empty);
* ``budget``: a shadow on every request, run within the CPU budget (the default ``shadow_budget``, or
  ``--budget``);
* ``unbounded``: a shadow on every request with ``shadow_budget=1.0`` (only the idle-session check), which
  is how shadows ran before the budget existed.

For each mode: the caller's throughput and p50, and what happened to the shadow copies (run, dropped over
budget, dropped for a busy session or a full queue). Writes benchmarks/results/shadow_overhead.{json,md}.

    python benchmarks/shadow_overhead.py [--rounds 5] [--seconds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import MODELS, RESULTS, closed_loop, input_rows, machine, machine_line

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

MODEL = "mlp-small"
MODES = ("off", "budget", "unbounded")


def shadow_counts(server: inprocserve.Server) -> dict[str, int]:
    stats = server.status()["models"][MODEL]["shadow"].get("2", {})
    return {
        "runs": stats.get("runs", 0),
        "dropped_over_budget": stats.get("dropped_over_budget", 0),
        "dropped_busy": stats.get("dropped_no_spare_capacity", 0) + stats.get("dropped_queue_full", 0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument(
        "--budget", type=float, default=None, help="shadow_budget of the budget mode (default: the library's)"
    )
    args = parser.parse_args()
    spec = MODELS[MODEL]
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args).copy(), "rounds": []}
    with tempfile.TemporaryDirectory() as folder:
        for version, seed in ((1, spec["seed"]), (2, spec["seed"] + 100)):
            save_model(build_mlp_model(spec["dims"], softmax=spec["softmax"], seed=seed), Path(folder), MODEL, version)
        config = inprocserve.ModelConfig(
            version_policy=inprocserve.VersionPolicy.all(), rollout=inprocserve.RolloutConfig(stable=1)
        )
        flags = {mode: inprocserve.InMemoryFlags() for mode in MODES}
        servers = {
            "off": inprocserve.Server(folder, config=config, flags=flags["off"]),
            "budget": inprocserve.Server(
                folder,
                config=config,
                flags=flags["budget"],
                **({} if args.budget is None else {"shadow_budget": args.budget}),
            ),
            "unbounded": inprocserve.Server(folder, config=config, flags=flags["unbounded"], shadow_budget=1.0),
        }
        for mode in ("budget", "unbounded"):
            flags[mode].set(f"{MODEL}.shadow.versions", [2])
        rows = input_rows(MODEL, 1)
        try:
            for mode in MODES:  # warm every server and its shadow path once
                server = servers[mode]
                closed_loop("warm", MODEL, 1, lambda x, s=server: s.predict(MODEL, {"x": x}), rows, 0.3)
            for round_index in range(args.rounds):
                for mode in MODES:
                    server = servers[mode]
                    time.sleep(0.2)  # let the previous mode's shadow work finish
                    before = shadow_counts(server)
                    result = closed_loop(
                        mode, MODEL, 1, lambda x, s=server: s.predict(MODEL, {"x": x}), rows, args.seconds
                    )
                    time.sleep(0.2)
                    after = shadow_counts(server)
                    delta = {k: after[k] - before[k] for k in after}
                    entry = {"round": round_index, "mode": mode, **vars(result), **delta}
                    results["rounds"].append(entry)
                    print(
                        f"round {round_index} {mode:>9}: {result.throughput:,.0f} req/s, p50 {result.p50_ms:.3f} ms,"
                        f" shadows run {delta['runs']}, over budget {delta['dropped_over_budget']},"
                        f" busy {delta['dropped_busy']}"
                    )
        finally:
            for server in servers.values():
                server.close()
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [r for r in results["rounds"] if r["mode"] == mode]
        requests = sum(r["requests"] for r in mine)
        summary[mode] = {
            "rps": statistics.median(r["throughput"] for r in mine),
            "p50_ms": statistics.median(r["p50_ms"] for r in mine),
            "p99_ms": statistics.median(r["p99_ms"] for r in mine),
            "shadow_run_rate": sum(r["runs"] for r in mine) / requests if mode != "off" else None,
            "shadow_drop_rate": (
                sum(r["dropped_over_budget"] + r["dropped_busy"] for r in mine) / requests if mode != "off" else None
            ),
        }
    for mode in ("budget", "unbounded"):
        summary[mode]["ratio"] = summary[mode]["rps"] / summary["off"]["rps"]
    results["summary"] = summary
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "shadow_overhead.json").write_text(json.dumps(results, indent=2))
    m = results["machine"]
    lines = [
        "# Shadow overhead: one caller",
        "",
        machine_line(m),
        f"One caller thread on {MODEL}, version 2 shadowing version 1; {args.rounds} rounds of {args.seconds} s per",
        "mode, modes alternating within each round; medians. Run and drop rates are per caller request.",
        "",
        "| mode | req/s (ratio to off) | p50 ms | p99 ms | shadows run | shadows dropped |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for mode in MODES:
        s = summary[mode]
        ratio = f" ({s['ratio']:.2f})" if "ratio" in s else ""
        run = "-" if s["shadow_run_rate"] is None else f"{s['shadow_run_rate']:.1%}"
        drop = "-" if s["shadow_drop_rate"] is None else f"{s['shadow_drop_rate']:.1%}"
        lines.append(f"| {mode} | {s['rps']:,.0f}{ratio} | {s['p50_ms']:.3f} | {s['p99_ms']:.3f} | {run} | {drop} |")
    lines += [
        "",
        f"`budget`: `Server(shadow_budget={'default' if args.budget is None else args.budget})`; "
        "`unbounded`: `shadow_budget=1.0`.",
        "Target: the caller keeps >= 0.9x of its throughput with a shadow on (`budget` ratio).",
    ]
    (RESULTS / "shadow_overhead.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {RESULTS / 'shadow_overhead.md'}")


if __name__ == "__main__":
    main()
