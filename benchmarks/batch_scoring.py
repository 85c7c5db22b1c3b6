"""Batch scoring against the raw onnxruntime ceiling.

For each reference model, in interleaved rounds within one run:

- **ceiling**: one thread calling ``InferenceSession.run`` on pre-built batches of 64, 128 and 256 rows, on
  two raw sessions: onnxruntime's default options, and one thread per core without spinning (what the server
  uses: spinning threads lose on a loaded machine); the best rows/s of either is the ceiling.
- **predict_many**: ``Server.predict_many`` over one pre-built array, default settings (answers per
  ``max_batch_size`` chunk, 64; what the library chooses for runs and threads), and with
  ``max_batch_size = 256`` (the ceiling's largest batch).
- **CLI**: ``python -m inprocserve score model.onnx x.npy y.npy`` on two input sizes; the marginal rate
  (extra rows / extra seconds) cancels process start and model load.
- **A/B** (``--compare-with DIR``): ``predict_many`` with default settings of this checkout and of the
  ``inprocserve`` package under DIR (e.g. ``git archive HEAD inprocserve | tar -x -C DIR``), each in a fresh
  process, in alternating order, every round; the ratio of the two cancels most of a shared machine's drift.

Outputs are checked against raw onnxruntime's. Writes benchmarks/results/batch_scoring.{json,md,png}, or
the directory given with ``--out`` (a noisy machine's figures belong elsewhere than the results folder).

    python benchmarks/batch_scoring.py [--rounds 3] [--seconds 1.0] [--quick] [--compare-with DIR] [--out DIR]
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
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import MODELS, RESULTS, build_reference, machine, machine_line, write_json

import inprocserve

CEILING_BATCHES = (64, 128, 256)
# Rows per predict_many run, and the two CLI input sizes, per model (full run; --quick divides them by 8).
SIZES: dict[str, dict[str, Any]] = {
    "mlp-small": {"rows": 65_536, "cli": (16_384, 131_072)},
    "mlp-large": {"rows": 2_048, "cli": (512, 4_096)},
}


def rows_of(name: str, count: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((count, MODELS[name]["dims"][0])).astype(np.float32)


def ceiling(session: ort.InferenceSession, name: str, seconds: float) -> dict[int, float]:
    """Rows/s of one thread calling ``run`` back to back on one pre-built batch of each size."""
    rates = {}
    for batch in CEILING_BATCHES:
        x = rows_of(name, batch, seed=batch)
        for _ in range(3):
            session.run(None, {"x": x})
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or runs < 3:
            session.run(None, {"x": x})
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - start)
    return rates


def scoring_rate(server: inprocserve.Server, name: str, x: np.ndarray) -> float:
    start = time.perf_counter()
    rows = 0
    for answer in server.predict_many(name, x):
        rows += len(answer["y"])
    elapsed = time.perf_counter() - start
    assert rows == len(x)
    return rows / elapsed


def check_outputs(server: inprocserve.Server, session: ort.InferenceSession, name: str) -> float:
    """Largest difference between predict_many's answers and raw onnxruntime's, on 1000 distinct rows."""
    x = rows_of(name, 1000, seed=7)
    got = np.concatenate([answer["y"] for answer in server.predict_many(name, x)])
    expected = np.concatenate([session.run(None, {"x": x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    if not np.allclose(got, expected, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{name}: predict_many output differs from onnxruntime's")
    return float(np.abs(got - expected).max())


def rate_in_process(code: Path, repository: Path, name: str, inputs: Path) -> float:
    """``predict_many`` rows/s (default settings, after a warm-up) of the ``inprocserve`` under ``code``, in a
    fresh process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(code), str(Path(__file__).parent)])}
    done = subprocess.run(
        [sys.executable, __file__, "--rate-of", str(repository), name, str(inputs)],
        check=True,
        timeout=900,
        capture_output=True,
        text=True,
        env=env,
    )
    return float(done.stdout.split()[-1])


def print_rate_of(repository: Path, name: str, inputs: Path) -> None:
    """The child of :func:`rate_in_process`: print one rate."""
    x = np.load(inputs)
    with inprocserve.Server(repository, models={name: inprocserve.ModelConfig()}) as server:
        scoring_rate(server, name, x[: min(len(x), 4096)])
        print(scoring_rate(server, name, x))


def cli_seconds(model: Path, inputs: Path, output: Path) -> float:
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "inprocserve", "score", "--quiet", str(model), str(inputs), str(output)],
        check=True,
        timeout=900,
    )
    return time.perf_counter() - start


def run(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "settings": vars(args).copy(), "models": {}}
    results["load_average_before"] = os.getloadavg()[0]  # a busy machine makes every ratio unreliable
    scale = 8 if args.quick else 1
    with tempfile.TemporaryDirectory() as folder:
        for name in args.models:
            repository = Path(folder) / name
            path = build_reference(name, repository)
            rows = SIZES[name]["rows"] // scale
            small, large = (n // scale for n in SIZES[name]["cli"])
            x = rows_of(name, rows)
            np.save(Path(folder) / f"{name}-small.npy", rows_of(name, small, seed=1))
            np.save(Path(folder) / f"{name}-large.npy", rows_of(name, large, seed=2))
            np.save(Path(folder) / f"{name}-x.npy", x)
            raw = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])  # onnxruntime's defaults
            options = ort.SessionOptions()
            options.intra_op_num_threads = len(os.sched_getaffinity(0))
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            quiet = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            default = inprocserve.Server(repository, models={name: inprocserve.ModelConfig()})
            wide = inprocserve.Server(
                repository,
                models={name: inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=256))},
            )
            print(f"== {name}: {rows:,} rows per predict_many run; CLI on {small:,} and {large:,} rows")
            max_diff = max(check_outputs(default, raw, name), check_outputs(wide, raw, name))
            scoring_rate(default, name, x[: min(rows, 4096)])  # warm both servers' arenas
            scoring_rate(wide, name, x[: min(rows, 4096)])
            rounds: list[dict[str, Any]] = []
            for index in range(args.rounds):
                point: dict[str, Any] = {}
                # Alternate the order so drift on a shared machine hits every approach alike.
                order = ["ceiling", "default", "wide", "cli"] + (["ab"] if args.compare_with else [])
                for approach in order if index % 2 == 0 else list(reversed(order)):
                    if approach == "ceiling":
                        point["ceiling_defaults"] = ceiling(raw, name, args.seconds)
                        point["ceiling_no_spin"] = ceiling(quiet, name, args.seconds)
                        point["ceiling"] = {
                            b: max(point["ceiling_defaults"][b], point["ceiling_no_spin"][b]) for b in CEILING_BATCHES
                        }
                    elif approach == "default":
                        point["predict_many"] = scoring_rate(default, name, x)
                    elif approach == "wide":
                        point["predict_many_256"] = scoring_rate(wide, name, x)
                    elif approach == "ab":
                        here = Path(__file__).resolve().parent.parent
                        pair = [(here, "ab_this"), (Path(args.compare_with), "ab_other")]
                        for code, key in pair if index % 2 == 0 else reversed(pair):
                            point[key] = rate_in_process(code, repository, name, Path(folder) / f"{name}-x.npy")
                        point["ab_ratio"] = point["ab_this"] / point["ab_other"]
                    else:
                        out = Path(folder) / "out.npy"
                        t_small = cli_seconds(path, Path(folder) / f"{name}-small.npy", out)
                        t_large = cli_seconds(path, Path(folder) / f"{name}-large.npy", out)
                        point["cli"] = {"small_s": t_small, "large_s": t_large}
                        extra = t_large - t_small
                        # None when noise made the larger input no slower: that round says nothing.
                        point["cli_marginal"] = (large - small) / extra if extra > 0 else None
                best = max(point["ceiling"].values())
                point["ceiling_best"] = best
                print(
                    f"  round {index + 1}: ceiling {best:,.0f} rows/s "
                    f"({', '.join(f'{b}: {r:,.0f}' for b, r in point['ceiling'].items())}); "
                    f"predict_many {point['predict_many']:,.0f} ({point['predict_many'] / best:.2f}x), "
                    f"max_batch_size=256 {point['predict_many_256']:,.0f} ({point['predict_many_256'] / best:.2f}x), "
                    + (
                        f"CLI marginal {point['cli_marginal']:,.0f} ({point['cli_marginal'] / best:.2f}x)"
                        if point["cli_marginal"]
                        else "CLI marginal not measurable this round"
                    )
                    + (
                        f"; A/B predict_many this {point['ab_this']:,.0f} / other {point['ab_other']:,.0f} "
                        f"= {point['ab_ratio']:.2f}x"
                        if "ab_ratio" in point
                        else ""
                    )
                )
                rounds.append(point)
            default.close()
            wide.close()

            def summary(key: str, rounds: list[dict[str, Any]] = rounds) -> dict[str, float | None]:
                usable = [r for r in rounds if r[key]]
                if not usable:
                    return {"rows_per_s": None, "ratio": None, "ratio_min": None, "ratio_max": None}
                ratios = [r[key] / r["ceiling_best"] for r in usable]
                return {
                    "rows_per_s": statistics.median(r[key] for r in usable),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                }

            results["models"][name] = {
                "rows": rows,
                "cli_rows": [small, large],
                "max_abs_diff_vs_onnxruntime": max_diff,
                "rounds": rounds,
                "summary": {
                    "ceiling_rows_per_s": statistics.median(r["ceiling_best"] for r in rounds),
                    "ceiling_by_batch": {
                        b: statistics.median(r["ceiling"][b] for r in rounds) for b in CEILING_BATCHES
                    },
                    "predict_many": summary("predict_many"),
                    "predict_many_256": summary("predict_many_256"),
                    "cli_marginal": summary("cli_marginal"),
                },
            }
            if args.compare_with:
                ratios = [r["ab_ratio"] for r in rounds]
                results["models"][name]["summary"]["ab"] = {
                    "compare_with": args.compare_with,
                    "this_rows_per_s": statistics.median(r["ab_this"] for r in rounds),
                    "other_rows_per_s": statistics.median(r["ab_other"] for r in rounds),
                    "ratio": statistics.median(ratios),
                    "ratio_min": min(ratios),
                    "ratio_max": max(ratios),
                }
    results["load_average_after"] = os.getloadavg()[0]
    return results


def write_markdown(results: dict[str, Any]) -> Path:
    m = results["machine"]
    settings = results["settings"]
    lines = [
        "# Batch scoring",
        "",
        machine_line(m),
        f"{settings['rounds']} interleaved rounds{' (quick sizes)' if settings['quick'] else ''}; medians, "
        "ratio spread in brackets. Ceiling: one thread, raw `InferenceSession.run`, best of batches "
        f"{', '.join(map(str, CEILING_BATCHES))} on two sessions (onnxruntime's defaults; one thread per core "
        "without spinning).",
        f"Load average (1 min) before / after: {results['load_average_before']:.1f} / "
        f"{results['load_average_after']:.1f} on {m['cores']} cores; above the core count, treat the ratios as noise.",
        "",
        "| model | ceiling rows/s (64 / 128 / 256) | predict_many, defaults | predict_many, max_batch_size=256 "
        "| CLI `score`, marginal |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, data in results["models"].items():
        s = data["summary"]
        by_batch = " / ".join(f"{s['ceiling_by_batch'][b]:,.0f}" for b in CEILING_BATCHES)

        def cell(key: str, s: dict[str, Any] = s) -> str:
            v = s[key]
            if v["ratio"] is None:
                return "not measurable"
            return f"{v['rows_per_s']:,.0f} ({v['ratio']:.2f}x [{v['ratio_min']:.2f}-{v['ratio_max']:.2f}])"

        lines.append(
            f"| {name} | {s['ceiling_rows_per_s']:,.0f} ({by_batch}) | {cell('predict_many')} | "
            f"{cell('predict_many_256')} | {cell('cli_marginal')} |"
        )
    lines.append("")
    for name, data in results["models"].items():
        small, large = data["cli_rows"]
        lines.append(
            f"- {name}: predict_many over {data['rows']:,} rows; CLI on {small:,} and {large:,} rows of `.npy`; "
            f"max |diff| vs onnxruntime {data['max_abs_diff_vs_onnxruntime']:.1e}."
        )
    for name, data in results["models"].items():
        ab = data["summary"].get("ab")
        if ab:
            lines.append(
                f"- {name} A/B, `predict_many` defaults, each in a fresh process: this checkout "
                f"{ab['this_rows_per_s']:,.0f} rows/s, `{ab['compare_with']}` {ab['other_rows_per_s']:,.0f} rows/s: "
                f"{ab['ratio']:.2f}x [{ab['ratio_min']:.2f}-{ab['ratio_max']:.2f}]."
            )
    path = results["out"] / "batch_scoring.md"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_plot(results: dict[str, Any]) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot")
        return None
    labels = ["predict_many", "predict_many_256", "cli_marginal"]
    names = list(results["models"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    width = 0.8 / len(labels)
    for offset, label in enumerate(labels):
        ratios = [results["models"][n]["summary"][label]["ratio"] or 0.0 for n in names]
        ax.bar([i + offset * width for i in range(len(names))], ratios, width, label=label)
    ax.axhline(0.9, color="grey", linestyle="--", linewidth=1, label="target 0.90x")
    ax.set_xticks([i + width for i in range(len(names))], names)
    ax.set_ylabel("rows/s over the raw ceiling")
    ax.set_title("Batch scoring against raw onnxruntime")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = results["out"] / "batch_scoring.png"
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per ceiling batch size per round")
    parser.add_argument("--quick", action="store_true", help="an eighth of the rows: proves the harness runs")
    parser.add_argument("--compare-with", metavar="DIR", help="A/B against the inprocserve package under DIR")
    parser.add_argument("--out", metavar="DIR", help=f"where to write the results (default: {RESULTS})")
    parser.add_argument("--rate-of", nargs=3, metavar=("REPOSITORY", "NAME", "X_NPY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rate_of:
        repository, name, inputs = args.rate_of
        print_rate_of(Path(repository), name, Path(inputs))
        return
    out = Path(args.out) if args.out else RESULTS
    results = run(args)
    out.mkdir(parents=True, exist_ok=True)
    if out == RESULTS:
        print(f"wrote {write_json('batch_scoring', results)}")
    else:
        (out / "batch_scoring.json").write_text(json.dumps(results, indent=2, default=str) + "\n")
        print(f"wrote {out / 'batch_scoring.json'}")
    results["out"] = out
    print(f"wrote {write_markdown(results)}")
    plot = write_plot(results)
    if plot is not None:
        print(f"wrote {plot}")


if __name__ == "__main__":
    main()
