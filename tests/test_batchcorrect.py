"""Coalescing never changes an answer: a zoo of small models, each request compared with a lone raw run.

Every answer that comes through the server, merged with other callers' rows or not, must equal bitwise what
onnxruntime answers for the same request run alone in a session of its own. On this host's CPU provider the
kernels of every model here give the same bits for a row whatever the batch size (matmul included, up to
1024 x 512 in float32, float64 and float16), so no tolerance is allowed. A model whose answer is not row-wise
(a reduction over axis 0, an output with no batch axis or another leading length, a scalar input, a fixed
batch) must never be merged, and still answer each request right.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve import BatchingConfig, InvalidInputError, ModelConfig
from inprocserve.testing import save_model

from .conftest import ServerFactory, pin_run_cost, run_threads, version_status

THREADS = 8
WEIGHTS = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
V = helper.make_tensor_value_info


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _const(name: str, value: Any) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def _matmul(rows: Any) -> onnx.ModelProto:
    return _model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        [V("x", TensorProto.FLOAT, [rows, 8])],
        [V("y", TensorProto.FLOAT, [rows, 4])],
        [_const("w", WEIGHTS)],
    )


def _one_op(op: str, out: Any, extra: list[Any] | None = None, **attributes: Any) -> onnx.ModelProto:
    names = ["x", *[init.name for init in extra or []]]
    return _model(
        [helper.make_node(op, names, ["y"], **attributes)],
        [V("x", TensorProto.FLOAT, ["batch", 8])],
        [V("y", TensorProto.FLOAT, out)],
        extra,
    )


ROW_WISE: dict[str, Callable[[], onnx.ModelProto]] = {
    "matmul": lambda: _matmul("batch"),
    "elementwise": lambda: _model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mul", ["r", "k"], ["y"])],
        [V("x", TensorProto.FLOAT, ["batch", 8])],
        [V("y", TensorProto.FLOAT, ["batch", 8])],
        [_const("k", np.float32(1.5))],
    ),
    "softmax over the last axis": lambda: _one_op("Softmax", ["batch", 8], axis=-1),
    "sum over axis 1": lambda: _one_op("ReduceSum", ["batch"], [_const("axes", np.array([1], np.int64))], keepdims=0),
    "integer, bool and string inputs": lambda: _model(
        [
            helper.make_node("Cast", ["i"], ["yi"], to=TensorProto.FLOAT),
            helper.make_node("Not", ["f"], ["yf"]),
            helper.make_node("Identity", ["s"], ["ys"]),
        ],
        [
            V("i", TensorProto.INT64, ["batch", 3]),
            V("f", TensorProto.BOOL, ["batch", 2]),
            V("s", TensorProto.STRING, ["batch", 2]),
        ],
        [
            V("yi", TensorProto.FLOAT, ["batch", 3]),
            V("yf", TensorProto.BOOL, ["batch", 2]),
            V("ys", TensorProto.STRING, ["batch", 2]),
        ],
    ),
    "float16, float64 and int8": lambda: _model(
        [
            helper.make_node("Mul", ["h", "kh"], ["yh"]),
            helper.make_node("MatMul", ["d", "wd"], ["yd"]),
            helper.make_node("Neg", ["q"], ["yq"]),
        ],
        [
            V("h", TensorProto.FLOAT16, ["batch", 4]),
            V("d", TensorProto.DOUBLE, ["batch", 8]),
            V("q", TensorProto.INT8, ["batch", 4]),
        ],
        [
            V("yh", TensorProto.FLOAT16, ["batch", 4]),
            V("yd", TensorProto.DOUBLE, ["batch", 4]),
            V("yq", TensorProto.INT8, ["batch", 4]),
        ],
        [_const("kh", np.float16(0.3)), _const("wd", WEIGHTS.astype(np.float64))],
    ),
    "a dynamic axis besides the batch": lambda: _model(
        [helper.make_node("ReduceMean", ["x"], ["y"], axes=[1], keepdims=0)],
        [V("x", TensorProto.FLOAT, ["batch", "seq", 4])],
        [V("y", TensorProto.FLOAT, ["batch", 4])],
    ),
    "rank 1, the batch axis alone": lambda: _model(
        [helper.make_node("Mul", ["x", "k"], ["y"])],
        [V("x", TensorProto.FLOAT, ["batch"])],
        [V("y", TensorProto.FLOAT, ["batch"])],
        [_const("k", np.float32(3.0))],
    ),
}

NOT_ROW_WISE: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "a sum over axis 0": (
        lambda: _model(
            [
                helper.make_node("ReduceSum", ["x", "axes"], ["s"], keepdims=1),
                helper.make_node("Sub", ["x", "s"], ["y"]),
            ],
            [V("x", TensorProto.FLOAT, ["batch", 8])],
            [V("y", TensorProto.FLOAT, ["batch", 8])],
            [_const("axes", np.array([0], np.int64))],
        ),
        "a row's answer depends on the other rows of its run",
    ),
    "an output with no batch axis": (
        lambda: _model(
            [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Identity", ["k"], ["labels"])],
            [V("x", TensorProto.FLOAT, ["batch", 8])],
            [V("y", TensorProto.FLOAT, ["batch", 8]), V("labels", TensorProto.FLOAT, [3])],
            [_const("k", np.arange(3, dtype=np.float32))],
        ),
        "output labels: tensor(float) [3] has no dynamic axis 0",
    ),
    "a second output of another leading length": (
        lambda: _model(
            [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Reshape", ["x", "shape"], ["flat"])],
            [V("x", TensorProto.FLOAT, ["batch", 8])],
            [V("y", TensorProto.FLOAT, ["batch", 8]), V("flat", TensorProto.FLOAT, ["n"])],
            [_const("shape", np.array([-1], np.int64))],
        ),
        "output 'flat' has shape [8] for a run of 1 row(s): its axis 0 is not the rows",
    ),
    "a scalar input": (
        lambda: _model(
            [helper.make_node("Mul", ["x", "s"], ["y"])],
            [V("x", TensorProto.FLOAT, ["batch", 8]), V("s", TensorProto.FLOAT, [])],
            [V("y", TensorProto.FLOAT, ["batch", 8])],
        ),
        "input s: tensor(float) [] has no dynamic axis 0",
    ),
    "a batch fixed to 1": (lambda: _matmul(1), "input x: tensor(float) [1, 8] has no dynamic axis 0"),
    "a batch fixed to 4": (lambda: _matmul(4), "input x: tensor(float) [4, 8] has no dynamic axis 0"),
}


def random_request(reference: ort.InferenceSession, rows: int, rng: np.random.Generator) -> dict[str, Any]:
    """Random values for each input of ``reference``: ``rows`` on a dynamic axis 0, 3 on any other dynamic
    axis, the declared size on a fixed one (a scalar input is one value)."""
    feeds: dict[str, Any] = {}
    for node in reference.get_inputs():
        shape = [d if isinstance(d, int) else (rows if axis == 0 else 3) for axis, d in enumerate(node.shape)]
        kind = node.type
        if kind == "tensor(string)":
            feeds[node.name] = np.array([f"w{n}" for n in rng.integers(0, 50, int(np.prod(shape)))], object).reshape(
                shape
            )
        elif kind == "tensor(bool)":
            feeds[node.name] = rng.integers(0, 2, shape).astype(np.bool_)
        elif kind in ("tensor(int64)", "tensor(int8)"):
            feeds[node.name] = rng.integers(-100, 100, shape).astype(np.int64 if kind == "tensor(int64)" else np.int8)
        else:
            floats = {"tensor(float)": np.float32, "tensor(double)": np.float64, "tensor(float16)": np.float16}[kind]
            feeds[node.name] = np.asarray(rng.standard_normal(shape) * 10, floats)
    return feeds


@pytest.fixture(autouse=True)
def costly_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every model here costs 2 ms a run to the flush policy, so a free session waits for the companions the
    recent peak promises (a quick model's overlapping callers run as they come: docs/batching.md)."""
    pin_run_cost(monkeypatch, fixed_s=0.002, per_row_s=0.0001)


def serve(
    repository: Path, make_server: ServerFactory, model: onnx.ModelProto, **config: Any
) -> tuple[inprocserve.Server, ort.InferenceSession]:
    """A server of ``model`` whose batcher waits long enough for 8 callers' requests to meet, and a raw session."""
    save_model(model, repository, "m", 1)
    server = make_server(
        repository, config=ModelConfig(batching=BatchingConfig(max_delay_s=0.02), **config), strict=True
    )
    return server, ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def assert_alone(reference: ort.InferenceSession, feeds: dict[str, Any], answer: Any) -> None:
    """``answer`` is bitwise what ``reference`` answers for ``feeds`` alone, output by output."""
    names = [node.name for node in reference.get_outputs()]
    for name, expected in zip(names, reference.run(None, feeds), strict=True):
        got = np.asarray(answer[name])
        assert got.shape == expected.shape, f"{name}: shape {got.shape}, alone {expected.shape}"
        assert got.dtype == expected.dtype or expected.dtype == object, f"{name}: dtype {got.dtype}"
        np.testing.assert_array_equal(got, expected, err_msg=f"output {name!r}", strict=True)


def breaking(barrier: threading.Barrier, call: Callable[[int], None]) -> Callable[[int], None]:
    """``call``, breaking ``barrier`` when it fails, so that the other threads stop at once, not at its timeout."""

    def run(thread: int) -> None:
        try:
            call(thread)
        except BaseException:
            barrier.abort()
            raise

    return run


def concurrent_rounds(
    server: inprocserve.Server, reference: ort.InferenceSession, rows: list[list[int]], seed: int
) -> tuple[int, int]:
    """Each of 8 threads sends, round by round (all threads at once), a request of ``rows[round][thread]``
    rows; each answer is checked against a lone raw run. Returns (requests sent, runs the server made)."""
    before = version_status(server, "m")["batches_run"]
    barrier = threading.Barrier(THREADS)

    def call(thread: int) -> None:
        rng = np.random.default_rng([seed, thread])
        for counts in rows:
            feeds = random_request(reference, counts[thread], rng)
            barrier.wait(timeout=30)
            assert_alone(reference, feeds, server.predict("m", feeds))

    assert run_threads(THREADS, breaking(barrier, call)) == []
    return len(rows) * THREADS, version_status(server, "m")["batches_run"] - before


ROUNDS = [[1 + (thread + round_) % 5 for thread in range(THREADS)] for round_ in range(5)]


@pytest.mark.parametrize("name", ROW_WISE)
def test_a_row_wise_model_answers_each_merged_request_as_a_lone_raw_run(
    name: str, repository: Path, make_server: ServerFactory
) -> None:
    server, reference = serve(repository, make_server, ROW_WISE[name]())
    assert version_status(server, "m")["batchable"] is True
    requests, runs = concurrent_rounds(server, reference, ROUNDS, seed=1)
    assert runs < requests / 2, f"{requests} requests in {runs} runs: the batcher hardly merged any"


@pytest.mark.parametrize("name", NOT_ROW_WISE)
def test_a_model_not_row_wise_is_never_merged_and_answers_each_request_right(
    name: str, repository: Path, make_server: ServerFactory
) -> None:
    build, reason = NOT_ROW_WISE[name]
    server, reference = serve(repository, make_server, build())
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert reason in status["unbatchable_reason"]
    requests, runs = concurrent_rounds(server, reference, ROUNDS, seed=2)
    assert runs == requests


def test_inputs_of_different_rows_are_refused_naming_the_input_and_equal_rows_merge(
    repository: Path, make_server: ServerFactory
) -> None:
    """``ya[b1] = relu(a)``, ``yb[b2] = -b``: merged, ``yb`` would be cut by ``a``'s rows. A version that merges
    requires every input of a request to have the same rows (docs/batching.md), and says which input differs."""
    model = _model(
        [helper.make_node("Relu", ["a"], ["ya"]), helper.make_node("Neg", ["b"], ["yb"])],
        [V("a", TensorProto.FLOAT, ["b1", 4]), V("b", TensorProto.FLOAT, ["b2", 4])],
        [V("ya", TensorProto.FLOAT, ["b1", 4]), V("yb", TensorProto.FLOAT, ["b2", 4])],
    )
    server, reference = serve(repository, make_server, model)
    with pytest.raises(InvalidInputError, match="input 'b': has 3 rows but the other inputs have 1"):
        server.predict("m", {"a": np.ones((1, 4), np.float32), "b": np.ones((3, 4), np.float32)})
    requests, runs = concurrent_rounds(server, reference, ROUNDS, seed=3)
    assert runs < requests / 2


def test_requests_of_another_inner_length_never_share_a_run(repository: Path, make_server: ServerFactory) -> None:
    """``seq`` of 2 beside 5: each length batches apart, and each answer is still its own."""
    model = ROW_WISE["a dynamic axis besides the batch"]()
    server, reference = serve(repository, make_server, model)
    barrier = threading.Barrier(THREADS)
    rng = np.random.default_rng(4)
    requests = [
        {"x": rng.standard_normal((1 + thread % 3, 2 + 3 * (thread % 2), 4)).astype(np.float32)}
        for thread in range(THREADS)
    ]

    def call(thread: int) -> None:
        for _ in range(5):
            barrier.wait(timeout=30)
            assert_alone(reference, requests[thread], server.predict("m", requests[thread]))

    assert run_threads(THREADS, breaking(barrier, call)) == []


MERGED_MODELS = [
    "matmul",
    "integer, bool and string inputs",
    "float16, float64 and int8",
    "rank 1, the batch axis alone",
]


@pytest.mark.parametrize("name", MERGED_MODELS)
def test_random_concurrent_requests_answer_as_lone_raw_runs(
    name: str, repository: Path, make_server: ServerFactory
) -> None:
    """Random rounds of 8 requests of 1-5 rows from 8 threads; the server is built once for every example."""
    server, reference = serve(repository, make_server, ROW_WISE[name]())
    merged: list[tuple[int, int]] = []

    @settings(max_examples=8)
    @given(
        rows=st.lists(st.lists(st.integers(1, 5), min_size=THREADS, max_size=THREADS), min_size=1, max_size=3),
        seed=st.integers(0, 2**16),
    )
    def rounds(rows: list[list[int]], seed: int) -> None:
        merged.append(concurrent_rounds(server, reference, rows, seed))

    rounds()
    requests, runs = (sum(counts) for counts in zip(*merged, strict=True))
    assert runs < requests / 2, f"{requests} requests in {runs} runs: the batcher hardly merged any"


BAD: dict[str, tuple[dict[str, Any], str]] = {
    "wrong dtype": ({"x": np.array([["a"] * 8], dtype=object)}, "input 'x': expected numbers of dtype float32"),
    "NaN refused": ({"x": np.full((2, 8), np.nan, np.float32)}, "input 'x': holds 16 NaN or infinite value(s)"),
    "wrong trailing shape": ({"x": np.ones((2, 7), np.float32)}, "input 'x': expected size 8 on axis 1"),
}


@pytest.mark.parametrize("bad", BAD)
def test_a_bad_request_fails_alone_and_its_batch_mates_answer_right(
    bad: str, repository: Path, make_server: ServerFactory
) -> None:
    server, reference = serve(repository, make_server, ROW_WISE["matmul"](), nan_policy="reject")
    feeds, message = BAD[bad]
    barrier = threading.Barrier(THREADS)
    refused: list[str] = []
    rng = np.random.default_rng(5)
    good = [random_request(reference, 1 + thread % 5, rng) for thread in range(THREADS)]
    before = version_status(server, "m")["batches_run"]

    def call(thread: int) -> None:
        for _ in range(5):
            barrier.wait(timeout=30)
            if thread == 3:
                with pytest.raises(InvalidInputError) as error:
                    server.predict("m", feeds)
                refused.append(str(error.value))
            else:
                assert_alone(reference, good[thread], server.predict("m", good[thread]))

    assert run_threads(THREADS, breaking(barrier, call)) == []
    assert len(refused) == 5 and all(message in text for text in refused), refused
    runs = version_status(server, "m")["batches_run"] - before
    assert runs < 5 * (THREADS - 1) / 2, f"{5 * (THREADS - 1)} good requests in {runs} runs: hardly merged"


def test_a_batch_statistic_beside_large_values_in_one_output_is_never_merged(
    repository: Path, make_server: ServerFactory
) -> None:
    """``y = concat(1000 x, x - mean(x, axis=0))``: alone, the second half is 0; merged, each caller's is its
    row minus the batch's mean. The made-up rows at load differ by about 1 there, under 1e-3 of 1000, which the
    check across batch sizes allows (their kernels may differ); each row run beside a copy of itself (one size,
    the same kernels) shows it."""
    model = _model(
        [
            helper.make_node("Mul", ["x", "k"], ["large"]),
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["centered"]),
            helper.make_node("Concat", ["large", "centered"], ["y"], axis=1),
        ],
        [V("x", TensorProto.FLOAT, ["batch", 4])],
        [V("y", TensorProto.FLOAT, ["batch", 8])],
        [_const("k", np.float32(1000))],
    )
    server, reference = serve(repository, make_server, model)
    assert version_status(server, "m")["batchable"] is False
    assert "beside a copy of itself" in (version_status(server, "m")["unbatchable_reason"] or "")
    requests, runs = concurrent_rounds(server, reference, ROUNDS, seed=6)
    assert runs == requests
