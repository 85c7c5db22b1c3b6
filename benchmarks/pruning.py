"""What pruning buys under onnxruntime: file size, memory-bound speed, accuracy. Writes
benchmarks/results/pruning.{json,md}.

    python benchmarks/pruning.py [--seconds 2]

One dense MLP, then three pruned copies of it, each checked with ``python -m inprocserve validate``:
- unstructured 90 % magnitude pruning, weights stored dense (zeros in place);
- the same weights stored as ONNX sparse initializers (``graph.sparse_initializer``);
- structured pruning: 75 % of the hidden neurons removed, so the matrices themselves shrink.
Speed is rows per second through one onnxruntime session, at batch 1 and batch 64, measured side by side.
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
from _common import RESULTS, machine
from onnx import numpy_helper

from inprocserve.testing import build_mlp_model, save_model

DIMS = (256, 2048, 2048, 16)


def weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def with_weights(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.initializer[:]
    copy.graph.initializer.extend(numpy_helper.from_array(array, name) for name, array in arrays.items())
    return copy


def magnitude_pruned(model: onnx.ModelProto, sparsity: float) -> dict[str, np.ndarray]:
    pruned = {}
    for name, array in weights(model).items():
        if name.startswith("w"):  # weight matrices; biases stay
            threshold = np.quantile(np.abs(array), sparsity)
            array = np.where(np.abs(array) < threshold, 0, array).astype(array.dtype)
        pruned[name] = array
    return pruned


def as_sparse_initializers(model: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> onnx.ModelProto:
    copy = with_weights(model, {n: a for n, a in arrays.items() if not n.startswith("w")})
    for name, array in arrays.items():
        if name.startswith("w"):
            flat = array.reshape(-1)
            indices = np.flatnonzero(flat).astype(np.int64)
            values = numpy_helper.from_array(flat[indices], name)
            copy.graph.sparse_initializer.append(
                onnx.helper.make_sparse_tensor(values, numpy_helper.from_array(indices, f"{name}_idx"), array.shape)
            )
    return copy


def structured_pruned(model: onnx.ModelProto, keep: float) -> dict[str, np.ndarray]:
    """Keep the hidden neurons with the largest outgoing weight norms; drop the rest from both sides."""
    arrays = weights(model)
    layers = sorted(n[1:] for n in arrays if n.startswith("w"))
    for index in layers[:-1]:  # hidden layer i feeds layer i+1
        w, b, w_next = arrays[f"w{index}"], arrays[f"b{index}"], arrays[f"w{int(index) + 1}"]
        kept = np.sort(np.argsort(-np.linalg.norm(w_next, axis=1))[: int(w.shape[1] * keep)])
        arrays[f"w{index}"], arrays[f"b{index}"] = w[:, kept], b[kept]
        arrays[f"w{int(index) + 1}"] = w_next[kept, :]
    return arrays


def rows_per_second(session: Any, rows: np.ndarray, seconds: float) -> float:
    session.run(None, {"x": rows})
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, {"x": rows})
        runs += 1
    return runs * len(rows) / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="time per speed measurement")
    args = parser.parse_args()
    dense = build_mlp_model(DIMS, softmax=False, seed=0)
    unstructured = magnitude_pruned(dense, 0.9)
    variants = {
        "dense": dense,
        "90% unstructured, stored dense": with_weights(dense, unstructured),
        "90% unstructured, sparse initializers": as_sparse_initializers(dense, unstructured),
        "structured, 25% of hidden neurons kept": with_weights(dense, structured_pruned(dense, 0.25)),
    }
    rng = np.random.default_rng(0)
    sample = rng.standard_normal((512, DIMS[0])).astype(np.float32)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # one core: comparable on a shared machine
    report: dict[str, Any] = {"machine": machine(), "onnxruntime": onnxruntime.__version__, "dims": DIMS, "rows": {}}
    with tempfile.TemporaryDirectory() as folder:
        repository = Path(folder) / "models"
        reference = None
        for version, (label, model) in enumerate(variants.items(), start=1):
            path = save_model(model, repository, "mlp", version)
            data = path.read_bytes()
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            answers = session.run(None, {"x": sample})[0]
            reference = answers if reference is None else reference
            report["rows"][label] = {
                "version": version,
                "file_bytes": len(data),
                "gzip_bytes": len(gzip.compress(data, 6)),
                "batch_1_rows_per_s": rows_per_second(session, sample[:1], args.seconds),
                "batch_64_rows_per_s": rows_per_second(session, sample[:64], args.seconds),
                "max_abs_diff_vs_dense": float(np.max(np.abs(answers - reference))),
                "argmax_agreement_vs_dense": float(np.mean(answers.argmax(1) == reference.argmax(1))),
            }
        validate = subprocess.run(
            [sys.executable, "-m", "inprocserve", "validate", "--json", str(repository)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        report["validate_ok"] = json.loads(validate.stdout)["ok"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "pruning.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Pruning under onnxruntime {report['onnxruntime']} (MLP {DIMS}, one intra-op thread)",
        "",
        f"Command: `python benchmarks/pruning.py --seconds {args.seconds:g}`; machine: {report['machine']}.",
        f"`python -m inprocserve validate` accepted all four versions: {report['validate_ok']}.",
        "",
        "| variant | file | gzip | batch 1 rows/s | batch 64 rows/s | max abs diff | argmax agreement |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, row in report["rows"].items():
        lines.append(
            f"| {label} | {row['file_bytes'] / 1e6:.1f} MB | {row['gzip_bytes'] / 1e6:.1f} MB | "
            f"{row['batch_1_rows_per_s']:,.0f} | {row['batch_64_rows_per_s']:,.0f} | "
            f"{row['max_abs_diff_vs_dense']:.3g} | {row['argmax_agreement_vs_dense']:.1%} |"
        )
    (RESULTS / "pruning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
