"""What padding requests of different lengths into shared batches buys, and what one long request costs the rest.

A sequence model (token ids -> embedding -> two dense layers -> mean over the sequence), N client threads each
sending one-row requests of its own length, side by side in one run, interleaved:

* ``naive``: one shared ``InferenceSession`` called by every thread;
* ``no padding``: ``server.predict`` with default settings (only requests of one length share a batch);
* ``padding``: ``[batching.padding] inputs = { ids = 1 }`` (lengths of one power of two share a batch);
* ``padding, baseline`` (with ``--baseline DIR``): the same with another ``inprocserve`` package, e.g. the
  code before lengths were bucketed (``git archive REV inprocserve | tar -x -C DIR``).

Two mixes of lengths: ``spread`` (each client its own length, uniform in 1..128) and ``one long`` (one
client at 2,000 tokens, the others at 8), where a batch padded to the long request costs every short one as
much as the long one.

Writes benchmarks/results/padding.{json,md} (``--out`` elsewhere).

    python benchmarks/padding.py [--clients 4,16] [--rounds 2] [--seconds 2] [--baseline DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import RESULTS, closed_loop, import_baseline, machine_line, with_run, write_json
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve.testing import save_model

VOCABULARY, WIDTH, HIDDEN = 1000, 128, 256


def build_sequence_model() -> Any:
    """ids[batch, seq] -> mean over seq of relu(embedding(ids) @ w) @ w2: [batch, WIDTH]."""
    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.standard_normal((VOCABULARY, WIDTH)).astype(np.float32), "table"),
        numpy_helper.from_array(rng.standard_normal((WIDTH, HIDDEN)).astype(np.float32), "w"),
        numpy_helper.from_array(rng.standard_normal((HIDDEN, WIDTH)).astype(np.float32), "w2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["embedded"]),
            helper.make_node("MatMul", ["embedded", "w"], ["hidden"]),
            helper.make_node("Relu", ["hidden"], ["active"]),
            helper.make_node("MatMul", ["active", "w2"], ["projected"]),
            helper.make_node("ReduceMean", ["projected"], ["out"], axes=[1], keepdims=0),
        ],
        "sequence",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["batch", WIDTH])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def lengths_of(mix: str, clients: int, rng: np.random.Generator) -> list[int]:
    if mix == "spread":
        return [int(n) for n in rng.integers(1, 129, clients)]
    return [2000] + [8] * (clients - 1)


def run(args: argparse.Namespace) -> dict[str, Any]:
    scratch = Path(tempfile.mkdtemp())
    model = build_sequence_model()
    path = save_model(model, scratch / "repository", "seq", 1)
    packages: dict[str, Any] = {"": inprocserve}
    if args.baseline is not None:
        packages[", baseline"] = import_baseline(args.baseline, scratch)
    servers: dict[str, Any] = {"no padding": inprocserve.Server(scratch / "repository")}
    for suffix, package in packages.items():
        padding = package.PaddingConfig(inputs={"ids": 1})
        config = package.ModelConfig(batching=package.BatchingConfig(padding=padding))
        servers[f"padding{suffix}"] = package.Server(scratch / "repository", config=config)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    calls: dict[str, Callable[[np.ndarray], Any]] = {"naive": lambda x: session.run(None, {"ids": x})}
    for name, server in servers.items():
        calls[name] = lambda x, server=server: server.predict("seq", {"ids": x})
    rng = np.random.default_rng(1)
    points: dict[str, dict[str, list[dict[str, Any]]]] = {}
    try:
        for mix in args.mixes:
            for clients in args.clients:
                rows = [rng.integers(0, VOCABULARY, (1, n)).astype(np.int64) for n in lengths_of(mix, clients, rng)]
                point = points[f"{mix}, {clients}"] = {name: [] for name in calls}
                for _ in range(args.rounds):
                    for name, call in calls.items():
                        result = closed_loop(name, "seq", clients, call, rows, args.seconds)
                        point[name].append(vars(result))
    finally:
        for server in servers.values():
            server.close()
    summary = {
        point_name: {
            name: {
                "throughput": statistics.median(r["throughput"] for r in results),
                "p50_ms": statistics.median(r["p50_ms"] for r in results),
                "p99_ms": statistics.median(r["p99_ms"] for r in results),
                "max_ms": max(r["max_ms"] for r in results),
            }
            for name, results in point.items()
        }
        for point_name, point in points.items()
    }
    for point in summary.values():
        for figures in point.values():
            figures["ratio_naive"] = figures["throughput"] / point["naive"]["throughput"]
    return with_run(args, points=points, summary=summary)


def write_markdown(payload: dict[str, Any], path: Path) -> None:
    args = payload["settings"]
    lines = [
        "# Padding requests of different lengths into shared batches",
        "",
        machine_line(payload["machine"]),
        f"A sequence model (embedding {VOCABULARY} x {WIDTH}, dense {WIDTH} -> {HIDDEN} -> {WIDTH}, mean over the "
        f"sequence); one-row requests, each client its own length; {args['seconds']} s per point, "
        f"{args['rounds']} rounds, interleaved; medians, and the slowest request of all rounds.",
        "",
        "* spread: lengths uniform in 1..128; one long: one client at 2,000 tokens, the others at 8.",
        "* no padding: default settings (only one length per batch); padding: `[batching.padding] inputs = "
        "{ ids = 1 }` (lengths of one power of two per batch)"
        + (f"; baseline: the package in `{args['baseline']}`." if args.get("baseline") else "."),
        "",
        "| mix, N | approach | req/s | x naive | p50 ms | p99 ms | slowest ms |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for point_name, point in payload["summary"].items():
        for name, s in point.items():
            lines.append(
                f"| {point_name} | {name} | {s['throughput']:,.0f} | {s['ratio_naive']:.2f} | {s['p50_ms']:.2f} | "
                f"{s['p99_ms']:.2f} | {s['max_ms']:.1f} |"
            )
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", default="4,16", help="comma-separated client thread counts")
    parser.add_argument("--mixes", default="spread,one long", help="comma-separated: spread, one long")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--baseline", type=Path, help="a folder holding the inprocserve package to compare with")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    args.clients = [int(n) for n in args.clients.split(",")]
    args.mixes = [mix.strip() for mix in args.mixes.split(",")]
    if args.rounds < 1 or args.seconds <= 0 or min(args.clients) < 2 or set(args.mixes) - {"spread", "one long"}:
        parser.error("--rounds must be at least 1, --clients at least 2, --seconds positive; mixes: spread, one long")
    payload = run(args)
    print(f"wrote {write_json('padding', payload, args.out)}")
    write_markdown(payload, args.out / "padding.md")


if __name__ == "__main__":
    main()
