"""Batch scoring of a scikit-learn-shaped classifier, whose ZipMap answers a map per row, against its raw runs.

Such a classifier's requests are never merged (a list of maps cannot be stacked), so ``predict_many`` groups
its chunks into requests itself (docs/performance.md, "Batch scoring"). In alternating rounds of one process:

- **raw run**: one thread calling ``InferenceSession.run`` (onnxruntime's defaults) on pre-built batches of
  64, 256 and 1,024 rows: what the runs themselves cost at each size;
- **predict_many**: ``Server.predict_many`` over one array, default settings (answers per chunk of 64 rows);
- **batch_rows=1024**: the same with chunks of 1,024 rows (one request each);
- **baseline** (``--baseline DIR``): ``predict_many`` of the ``inprocserve`` package under DIR (``git archive
  REV inprocserve | tar -x -C DIR``), imported side by side, default settings.

The model (``LinearClassifier`` -> label, ``ZipMap`` -> one map per row, what skl2onnx exports for a
``LogisticRegression``) is built with ``onnx.helper``, as the tests build it. Answers are checked against the
raw run's. Writes benchmarks/results/classifier_scoring.{json,md} (``--out`` elsewhere).

    python benchmarks/classifier_scoring.py [--rows 200000] [--rounds 3] [--baseline DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import RESULTS, import_baseline, machine, machine_line

ROOT = Path(__file__).resolve().parent.parent
RAW_BATCHES = (64, 256, 1024)


def raw_rates(session: ort.InferenceSession, x: np.ndarray, seconds: float) -> dict[int, float]:
    """Rows/s of one thread running pre-built batches of each size back to back."""
    rates = {}
    for batch in RAW_BATCHES:
        feeds = {"X": x[:batch]}
        session.run(None, feeds)
        runs, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or runs < 3:
            session.run(None, feeds)
            runs += 1
        rates[batch] = runs * batch / (time.perf_counter() - start)
    return rates


def scoring_rate(server: Any, x: np.ndarray, **options: Any) -> float:
    start = time.perf_counter()
    rows = sum(len(answer["output_label"]) for answer in server.predict_many("classifier", x, **options))
    elapsed = time.perf_counter() - start
    assert rows == len(x), (rows, len(x))
    return rows / elapsed


def check_answers(server: Any, session: ort.InferenceSession, x: np.ndarray) -> None:
    labels, maps = session.run(None, {"X": x})
    answers = list(server.predict_many("classifier", x))
    if np.concatenate([a["output_label"] for a in answers]).tolist() != labels.tolist():
        raise AssertionError("predict_many's labels differ from onnxruntime's")
    if [row for a in answers for row in a["output_probability"]] != maps:
        raise AssertionError("predict_many's maps differ from onnxruntime's")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=0.5, help="time per raw batch size per round")
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import inprocserve
    from inprocserve.testing import save_model
    from tests.toolkit_models import build_string_label_classifier

    scratch = Path(tempfile.mkdtemp())
    servers: list[Any] = []
    try:
        repository = scratch / "models"
        save_model(build_string_label_classifier(), repository, "classifier", 1)
        session = ort.InferenceSession(str(repository / "classifier" / "1" / "model.onnx"))
        x = np.random.default_rng(0).standard_normal((args.rows, 4)).astype(np.float32)
        now = inprocserve.Server(repository)
        servers.append(now)
        approaches: dict[str, Any] = {
            "predict_many": lambda: scoring_rate(now, x),
            "batch_rows=1024": lambda: scoring_rate(now, x, batch_rows=1024),
        }
        if args.baseline is not None:
            before = import_baseline(args.baseline, scratch).Server(repository)
            servers.append(before)
            approaches["baseline"] = lambda: scoring_rate(before, x)
        for server in servers:
            check_answers(server, session, x[:5000])
        rounds: list[dict[str, Any]] = []
        for index in range(args.rounds):
            point: dict[str, Any] = {"raw": raw_rates(session, x, args.seconds)}
            order = list(approaches) if index % 2 == 0 else list(reversed(approaches))
            for name in order:
                point[name] = approaches[name]()
            print(
                f"round {index + 1}: raw "
                + ", ".join(f"{b}: {r:,.0f}" for b, r in point["raw"].items())
                + "; "
                + ", ".join(f"{name} {point[name]:,.0f}" for name in approaches)
                + " rows/s",
                flush=True,
            )
            rounds.append(point)
    finally:
        for server in servers:
            server.close()
        shutil.rmtree(scratch, ignore_errors=True)

    summary: dict[str, Any] = {
        "raw": {b: statistics.median(r["raw"][b] for r in rounds) for b in RAW_BATCHES},
        **{name: statistics.median(r[name] for r in rounds) for name in approaches},
    }
    if args.baseline is not None:
        ratios = [r["predict_many"] / r["baseline"] for r in rounds]
        summary["ratio_to_baseline"] = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)}
    results = {"machine": machine(), "settings": {**vars(args), "baseline": str(args.baseline), "out": str(args.out)}}
    results |= {"summary": summary, "rounds": rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classifier_scoring.json").write_text(json.dumps(results, indent=2))
    lines = [
        "# Batch scoring of a ZipMap classifier",
        "",
        machine_line(results["machine"]),
        f"{args.rows:,} rows of 4 features; {args.rounds} alternating rounds; medians (rows/s).",
        "",
        "| approach | rows/s |",
        "|---|---:|",
    ]
    lines += [f"| raw run, batches of {b} | {rate:,.0f} |" for b, rate in summary["raw"].items()]
    lines += [f"| {name} | {summary[name]:,.0f} |" for name in approaches]
    if args.baseline is not None:
        ratio = summary["ratio_to_baseline"]
        lines += [
            "",
            f"predict_many against the baseline (`{args.baseline}`), round by round: "
            f"{ratio['median']:.2f}x (min {ratio['min']:.2f}x, max {ratio['max']:.2f}x).",
        ]
    (args.out / "classifier_scoring.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'classifier_scoring.md'}")


if __name__ == "__main__":
    main()
