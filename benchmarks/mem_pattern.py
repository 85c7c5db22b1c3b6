"""What onnxruntime's memory pattern (``SessionOptions.enable_mem_pattern``) buys per run, and what it keeps.

onnxruntime plans a run's allocations once per distinct set of input shapes and keeps that plan for the life
of the session (``SessionState::mem_patterns_``, a map without any bound), so a model whose inputs have a
dynamic axis that clients choose (a sequence length) grows a worker with every new length. This measures,
side by side in one run, sessions built with the library's session options and the pattern on or off:

* models: ``mlp-small`` and ``mlp-large`` (only the batch axis dynamic), ``sequence`` (token ids
  ``[batch, seq]`` -> embedding -> two dense layers -> mean) and ``deep`` (80 element-wise nodes over
  ``[batch, seq]``: many intermediate tensors, where a plan has the most to save);
* shapes: one shape repeated; the batch axis cycling over 1..64 (what merged batches send: a bounded set); a
  sequence length cycling over 1..128 (seen before after the first cycle); a new length every run (a plan
  made and kept each time); and, in a fresh process, the RSS a session keeps after runs of thousands of
new shapes.

Each case runs in ``--rounds`` rounds, on and off taking turns; the median per-run time of each is reported
with the ratio off/on, and the RSS that each session kept after the new-length runs.

Writes benchmarks/results/mem_pattern.{json,md} (``--out`` elsewhere).

    python benchmarks/mem_pattern.py [--rounds 5] [--runs 200] [--threads 1]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import itertools
import multiprocessing
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from _common import MODELS, RESULTS, machine_line, with_run, write_json
from onnx import TensorProto, helper, numpy_helper
from padding import build_sequence_model

from inprocserve import PoolConfig
from inprocserve._ort_backend import session_options
from inprocserve.testing import build_mlp_model


def build_deep_model(layers: int = 80) -> Any:
    """x[batch, seq] -> ``layers`` alternating Mul and Add by a constant: as many intermediate tensors."""
    nodes, previous = [], "x"
    for index in range(layers):
        nodes.append(helper.make_node("Add" if index % 2 else "Mul", [previous, "c"], [f"t{index}"]))
        previous = f"t{index}"
    nodes.append(helper.make_node("Identity", [previous], ["y"]))
    graph = helper.make_graph(
        nodes,
        "deep",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq"])],
        [numpy_helper.from_array(np.array(1.0, np.float32), "c")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def rss_kb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 >> 10


def mlp_feeds(features: int) -> Callable[[int, int], dict[str, np.ndarray]]:
    def feeds(rows: int, _length: int) -> dict[str, np.ndarray]:
        return {"x": np.ones((rows, features), np.float32)}

    return feeds


def ids_feeds(rows: int, length: int) -> dict[str, np.ndarray]:
    return {"ids": np.ones((rows, length), np.int64)}


def deep_feeds(rows: int, length: int) -> dict[str, np.ndarray]:
    return {"x": np.ones((rows, length), np.float32)}


def _mlp_small() -> Any:
    return build_mlp_model(**MODELS["mlp-small"])


def _mlp_large() -> Any:
    return build_mlp_model(**MODELS["mlp-large"])


BUILDERS: dict[str, tuple[Callable[[], Any], Any]] = {
    "mlp-small": (_mlp_small, mlp_feeds(MODELS["mlp-small"]["dims"][0])),
    "mlp-large": (_mlp_large, mlp_feeds(MODELS["mlp-large"]["dims"][0])),
    "sequence": (build_sequence_model, ids_feeds),
    "deep": (build_deep_model, deep_feeds),
}


def cases(name: str) -> dict[str, Callable[[], Iterator[tuple[int, int]]]]:
    """Shape sequences (rows, length) by case name: infinite iterators."""
    found: dict[str, Callable[[], Iterator[tuple[int, int]]]] = {
        "batch 1, repeated": lambda: itertools.repeat((1, 64)),
        "batch 32, repeated": lambda: itertools.repeat((32, 64)),
        "batch 1..64 cycling": lambda: ((rows, 64) for rows in itertools.cycle(range(1, 65))),
    }
    if name in ("sequence", "deep"):
        found["seq 1..128 cycling"] = lambda: ((1, length) for length in itertools.cycle(range(1, 129)))
        found["seq new every run"] = lambda: ((1, length) for length in itertools.count(129))
    return found


def measure(name: str, model: Any, make_feeds: Any, args: argparse.Namespace) -> list[dict[str, Any]]:
    blob = model.SerializeToString()
    sessions = {}
    for pattern in (True, False):
        options = session_options(PoolConfig(intra_op_threads=args.threads), memory_pattern=pattern)
        sessions[pattern] = ort.InferenceSession(blob, options, providers=["CPUExecutionProvider"])
    rows = []
    for case, shapes in cases(name).items():
        if name == "mlp-large" and "32" in case:
            runs = max(10, args.runs // 10)
        elif name == "mlp-large":
            runs = max(20, args.runs // 4)
        else:
            runs = args.runs
        times: dict[bool, list[float]] = {True: [], False: []}
        iterators = {pattern: shapes() for pattern in (True, False)}
        for pattern in (True, False):  # warm: the arena at its peak, the cycling plans made
            for _ in range(min(runs, 128)):
                sessions[pattern].run(None, make_feeds(*next(iterators[pattern])))
        for round_index in range(args.rounds):
            order = (True, False) if round_index % 2 == 0 else (False, True)
            for pattern in order:
                session, shape_iter = sessions[pattern], iterators[pattern]
                batch = [make_feeds(*next(shape_iter)) for _ in range(runs)]
                start = time.perf_counter()
                for feeds in batch:
                    session.run(None, feeds)
                times[pattern].append((time.perf_counter() - start) / runs)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        rows.append(
            {
                "model": name,
                "case": case,
                "runs": runs,
                "on_us": on * 1e6,
                "off_us": off * 1e6,
                "off_over_on": off / on,
                "on_spread_us": [min(times[True]) * 1e6, max(times[True]) * 1e6],
                "off_spread_us": [min(times[False]) * 1e6, max(times[False]) * 1e6],
            }
        )
        print(f"{name:10} {case:22} on {on * 1e6:9.1f} us  off {off * 1e6:9.1f} us  off/on {off / on:5.3f}", flush=True)
    if "seq new every run" in cases(name):
        context = multiprocessing.get_context("spawn")  # a fresh heap each: freed memory of the runs above hides growth
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=context) as child:
            kept = {pattern: child.submit(kept_per_shape, name, pattern, args).result() for pattern in (True, False)}
        rows.append({"model": name, "case": f"RSS kept after {args.lengths} new shapes (kB)", "rss_kept_kb": kept})
        print(f"{name:10} RSS kept after {args.lengths} new shapes: on {kept[True]} kB, off {kept[False]} kB")
    return rows


def kept_per_shape(name: str, pattern: bool, args: argparse.Namespace) -> int:
    """RSS growth (kB) of a fresh session over runs of ``args.lengths`` new shapes ``(1 + n % 3, n)``, the
    arena first brought to its peak by the largest: what the session keeps per shape."""
    build, make_feeds = BUILDERS[name]
    options = session_options(PoolConfig(intra_op_threads=args.threads), memory_pattern=pattern)
    session = ort.InferenceSession(build().SerializeToString(), options, providers=["CPUExecutionProvider"])
    session.run(None, make_feeds(3, args.lengths))
    gc.collect()
    before = rss_kb()
    for length in range(1, args.lengths + 1):
        session.run(None, make_feeds(1 + length % 3, length))
    gc.collect()
    return rss_kb() - before


def markdown(payload: dict[str, Any]) -> str:
    lines = [
        "# Memory pattern on and off, per run",
        "",
        machine_line(payload["machine"]),
        "",
        f"Rounds: {payload['settings']['rounds']}, intra-op threads: {payload['settings']['threads']}; median "
        "per-run time of the rounds. RSS kept: a fresh process's growth over runs of that many new shapes (batch 1..3, "
        "lengths 1..N, after one run of the largest), on and off.",
        "",
        "| model | shapes | on (us) | off (us) | off/on |",
        "|---|---|---:|---:|---:|",
    ]
    for row in payload["rows"]:
        if "rss_kept_kb" in row:
            kept = row["rss_kept_kb"]
            lines.append(f"| {row['model']} | {row['case']} | {kept[True]} | {kept[False]} | |")
            continue
        lines.append(
            f"| {row['model']} | {row['case']} | {row['on_us']:.1f} | {row['off_us']:.1f} | {row['off_over_on']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200, help="runs per round (fewer for mlp-large)")
    parser.add_argument("--lengths", type=int, default=4000, help="new shapes run for the RSS kept")
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per session")
    parser.add_argument("--models", default="mlp-small,mlp-large,sequence,deep")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows = []
    for name in args.models.split(","):
        build, feeds = BUILDERS[name]
        rows += measure(name, build(), feeds, args)
    payload = with_run(args, rows=rows)
    write_json("mem_pattern", payload, args.out)
    (args.out / "mem_pattern.md").write_text(markdown(payload))


if __name__ == "__main__":
    main()
