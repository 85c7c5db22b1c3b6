"""The load's check that each row's answer is its own, for models whose rows are large: it runs two made-up rows
alone, together and each beside a copy of itself, and holds a few rows' worth of inputs and outputs while it
compares them, not a dozen."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
from onnx import ModelProto, TensorProto, helper

from inprocserve._batch_ops import mates_problem, rows_problem
from inprocserve.testing import save_model

MIB = 1 << 20


def _model(nodes: list[object], inner: tuple[int, ...], out_inner: tuple[int, ...]) -> ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *inner])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *out_inner])
    constants = [
        helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
        helper.make_tensor("thousand", TensorProto.FLOAT, [], [1000.0]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "wide", [x], [y], constants), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    return model


def doubling(inner: tuple[int, ...]) -> ModelProto:
    """y = 2 x: each row's answer its own."""
    return _model([helper.make_node("Mul", ["x", "two"], ["y"])], inner, inner)


def centred_beside_large(inner: tuple[int, ...]) -> ModelProto:
    """y = concat(1000 x, x - mean(x over the rows)) along the last axis: each row's answer depends on the other
    rows of its run, by less than the check across run sizes tolerates (a relative 1e-3 of the output's
    largest value); only the check beside a copy of itself shows it."""
    nodes = [
        helper.make_node("Mul", ["x", "thousand"], ["large"]),
        helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Sub", ["x", "mean"], ["centred"]),
        helper.make_node("Concat", ["large", "centred"], ["y"], axis=-1),
    ]
    return _model(nodes, inner, (*inner[:-1], 2 * inner[-1]))


def load_growth(repository: Path, setting: str | None) -> dict[str, object]:
    """The peak RSS growth of a load of ``repository``'s one model in a process of its own, and its verdict."""
    config = "" if setting is None else f"[batching]\nrows_independent = {setting!r}\n"
    (repository / "wide" / "config.toml").write_text(config)
    script = textwrap.dedent(
        f"""
        import json, resource
        import inprocserve
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with inprocserve.Server(repository={str(repository)!r}) as server:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            status = server.status()["models"]["wide"]["versions"]["1"]
        print(json.dumps({{"growth": (peak - before) * 1024, "state": status["state"],
                           "batchable": status["batchable"], "reason": status.get("unbatchable_reason")}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    facts: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return facts


def test_the_check_of_wide_rows_holds_a_few_rows_not_a_dozen(tmp_path: Path) -> None:
    """Two inputs of two rows and one row (the run of both rows, and a copy of the second for the runs beside a
    copy), and the outputs of two runs of two rows: the check grows the load by about that, where it held
    about a dozen rows' inputs and outputs and the comparison's float64 copies of whole outputs (32 MiB rows,
    y = 2 x: 578 MiB more than a load that skips the check)."""
    inner = (2048, 4096)
    save_model(doubling(inner), tmp_path, "wide")
    row = 4 * inner[0] * inner[1]
    trusted = load_growth(tmp_path, "yes")
    checked = load_growth(tmp_path, None)
    assert trusted["state"] == checked["state"] == "ready"
    assert checked["batchable"] is True, checked
    extra = int(str(checked["growth"])) - int(str(trusted["growth"]))
    held = 3 * row + 4 * row
    assert extra < held + held // 4, f"the check grew the load by {extra / MIB:.0f} MiB ({held / MIB:.0f} MiB held)"


def test_a_wide_rows_answers_are_compared_against_the_largest_value_of_all_of_them() -> None:
    """Compared a block of values at a time, the tolerance still follows the output's largest value wherever
    it lies (a relative 1e-3 of it across run sizes, 1e-6 beside a copy), and a difference in the last block
    of the last row is found and measured."""
    values = (1 << 20) + (1 << 19)  # (a row of one and a half blocks)
    one = np.zeros((1, values), np.float32)
    one[0, 0] = 1000.0
    two = np.zeros((1, values), np.float32)
    two[0, 0] = 2000.0  # (the largest value: in the first block of the second row)
    stacked = np.concatenate([one, two])
    within = stacked.copy()
    within[1, -1] = 0.5  # (under 1e-3 of 2000, in the last block)
    assert rows_problem(["y"], [[one], [two]], [within]) is None
    beyond = stacked.copy()
    beyond[1, -1] = 5.0
    assert "by up to 5)" in (rows_problem(["y"], [[one], [two]], [beyond]) or "")
    twins = [[np.concatenate([one, one])], [np.concatenate([two, two])]]
    rounding = stacked.copy()
    rounding[1, -1] = 1e-3  # (under 1e-6 of 2000: kernel rounding)
    assert mates_problem(["y"], [rounding], twins) is None
    assert "beside a copy of itself (by up to 0.5)" in (mates_problem(["y"], [within], twins) or "")
