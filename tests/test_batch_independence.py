"""A caller's answer is its own: never another caller's rows, never changed by the rows that share its run.

Each model here is run by onnxruntime on each caller's input alone for the expected answer, and served to
callers whose inputs differ, through ``predict`` from threads, bursts of ``submit`` and ``apredict``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve import BatchingConfig, ConfigurationError, InvalidInputError, ModelConfig, WarmupConfig
from inprocserve._batch_ops import BatchShapeError, check_rows, mates_problem, rows_problem
from inprocserve._signature import Signature, TensorSpec
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, run_threads, version_status

Dims = list[Any]


def _model(
    nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any] | None = None, *, opset: int = 17
) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits or [])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def _float(name: str, dims: Dims) -> Any:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, dims)


def seq_first() -> onnx.ModelProto:
    """``y[seq, batch] = transpose(x[batch, seq])``: a sequence-first export's output."""
    return _model(
        [helper.make_node("Transpose", ["x"], ["y"], perm=[1, 0])],
        [_float("x", ["batch", "seq"])],
        [_float("y", ["seq", "batch"])],
    )


def picked_rows() -> onnx.ModelProto:
    """``y[k, 4] = data[indices]``: ``indices[k]`` is a parameter of the request, not its rows."""
    return _model(
        [helper.make_node("Gather", ["data", "indices"], ["y"], axis=0)],
        [_float("data", ["batch", 4]), helper.make_tensor_value_info("indices", TensorProto.INT64, ["k"])],
        [_float("y", ["k", 4])],
    )


def dynamic_quantization() -> onnx.ModelProto:
    """What ``onnxruntime.quantization.quantize_dynamic`` inserts: one scale for the whole tensor."""
    return _model(
        [
            helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "scale", "zero"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["y"]),
        ],
        [_float("x", ["batch", 4])],
        [_float("y", ["batch", 4])],
    )


def centered() -> onnx.ModelProto:
    """``y = x - mean(x, axis=0)``: a statistic over the batch."""
    return _model(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        [_float("x", ["batch", 4])],
        [_float("y", ["batch", 4])],
    )


def softmax_over_rows() -> onnx.ModelProto:
    return _model(
        [helper.make_node("Softmax", ["x"], ["y"], axis=0)], [_float("x", ["batch", 4])], [_float("y", ["batch", 4])]
    )


def found(axis_name: str | None) -> onnx.ModelProto:
    """``found[n, 2]``: (row, column) of each positive value, NonZero-style (detections, NMS)."""
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    return _model(
        [
            helper.make_node("Greater", ["x", "zero"], ["positive"]),
            helper.make_node("NonZero", ["positive"], ["where"]),
            helper.make_node("Transpose", ["where"], ["found"], perm=[1, 0]),
        ],
        [_float("x", ["batch", 4])],
        [helper.make_tensor_value_info("found", TensorProto.INT64, [axis_name, 2])],
        [zero],
    )


def named_apart_inputs(table_rows: int) -> onnx.ModelProto:
    """``y = table[ids] + x``, exported as ``torch.onnx.export`` with ``dynamic_axes`` given as lists names
    each tensor's rows apart (``ids_dynamic_axes_1``, ``x_dynamic_axes_1``): one batch axis all the same."""
    table = numpy_helper.from_array(np.arange(table_rows * 2, dtype=np.float32).reshape(table_rows, 2), "table")
    return _model(
        [
            helper.make_node("Gather", ["table", "ids"], ["picked"], axis=0),
            helper.make_node("Add", ["picked", "x"], ["y"]),
        ],
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["ids_dynamic_axes_1"]),
            _float("x", ["x_dynamic_axes_1", 2]),
        ],
        [_float("y", ["y_dynamic_axes_1", 2])],
        [table],
    )


def one_hot_of_the_largest() -> onnx.ModelProto:
    """``y[batch, depth]``: a one-hot of each id, as deep as the run's largest id (an output padded to the
    longest row of its run, as a decoder's or a tokenizer's)."""
    return _model(
        [
            helper.make_node("ReduceMax", ["ids"], ["largest"], keepdims=0),
            helper.make_node("Add", ["largest", "one"], ["depth"]),
            helper.make_node("OneHot", ["ids", "depth", "values"], ["y"], axis=-1),
        ],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"])],
        [_float("y", ["batch", "depth"])],
        [
            numpy_helper.from_array(np.array(1, np.int64), "one"),
            numpy_helper.from_array(np.array([0, 1], np.float32), "values"),
        ],
    )


def split_words() -> onnx.ModelProto:
    """``words[batch, w]``: each text's words, padded with "" to the run's most (ONNX StringSplit)."""
    return _model(
        [helper.make_node("StringSplit", ["text"], ["words", "count"], delimiter=" ")],
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch"])],
        [
            helper.make_tensor_value_info("words", TensorProto.STRING, ["batch", "w"]),
            helper.make_tensor_value_info("count", TensorProto.INT64, ["batch"]),
        ],
        opset=20,
    )


def quantized_over_time() -> onnx.ModelProto:
    """What ``quantize_dynamic`` makes of a 1-D CNN: a convolution of kernel 5 over a dynamic time axis
    (2 steps are too few to run), then one quantization scale for the whole tensor, averaged over time."""
    weights = np.random.default_rng(9).standard_normal((4, 3, 5)).astype(np.float32) / 4
    return _model(
        [
            helper.make_node("Conv", ["x", "w"], ["features"]),
            helper.make_node("DynamicQuantizeLinear", ["features"], ["q", "scale", "zero"]),
            helper.make_node("DequantizeLinear", ["q", "scale", "zero"], ["rounded"]),
            helper.make_node("ReduceMean", ["rounded"], ["y"], axes=[2], keepdims=0),
        ],
        [_float("x", ["batch", 3, "time"])],
        [_float("y", ["batch", 4])],
        [numpy_helper.from_array(weights, "w")],
    )


def scalar_total() -> onnx.ModelProto:
    """Declared ``total[batch]``, but a sum over every axis (computed at run time): a 0-d output."""
    inits = [numpy_helper.from_array(np.array(0, np.int64), "z"), numpy_helper.from_array(np.array(1, np.int64), "one")]
    return _model(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Size", ["shape"], ["rank"]),
            helper.make_node("Range", ["z", "rank", "one"], ["axes"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
        ],
        [_float("x", ["batch", 4])],
        [_float("total", ["batch"])],
        inits,
    )


def serve(
    repository: Path, make_server: ServerFactory, model: onnx.ModelProto, *, warmup: bool = True, **batching: Any
) -> tuple[inprocserve.Server, ort.InferenceSession]:
    save_model(model, repository, "m", 1)
    config = ModelConfig(batching=BatchingConfig(max_delay_s=0.005, **batching), warmup=WarmupConfig(enabled=warmup))
    server = make_server(repository, config=config, strict=True)
    reference = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return server, reference


def alone(reference: ort.InferenceSession, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [output.name for output in reference.get_outputs()]
    return dict(zip(names, reference.run(None, feeds), strict=True))


def served_every_way(server: inprocserve.Server, requests: list[dict[str, np.ndarray]]) -> list[list[dict[str, Any]]]:
    """Each request's answers: by ``predict`` on its own thread (all at once), in one burst of ``submit``, and
    by ``apredict`` from one task each on one loop; several rounds, so callers share runs."""
    answers: list[list[dict[str, Any]]] = [[] for _ in requests]
    lock = threading.Lock()
    barrier = threading.Barrier(len(requests))

    def call(index: int) -> None:
        for _ in range(10):
            barrier.wait(timeout=30)
            answer = dict(server.predict("m", requests[index]))
            with lock:
                answers[index].append(answer)

    assert run_threads(len(requests), call) == []
    for _ in range(10):
        futures = [server.submit("m", feeds) for feeds in requests]
        for index, future in enumerate(futures):
            answers[index].append(dict(future.result(timeout=30)))

    async def tasks() -> list[Any]:
        return await asyncio.gather(*(server.apredict("m", feeds) for feeds in requests))

    for _ in range(10):
        for index, answer in enumerate(asyncio.run(tasks())):
            answers[index].append(dict(answer))
    return answers


def assert_each_answer_is_its_own(
    server: inprocserve.Server, reference: ort.InferenceSession, requests: list[dict[str, np.ndarray]]
) -> None:
    for feeds, answers in zip(requests, served_every_way(server, requests), strict=True):
        expected = alone(reference, feeds)
        for answer in answers:
            for name, value in expected.items():
                np.testing.assert_array_equal(np.asarray(answer[name]), value)


def four_callers(rng: np.random.Generator, scale: float = 1.0) -> list[dict[str, np.ndarray]]:
    return [{"x": (rng.standard_normal((2, 4)) * scale * 10**index).astype(np.float32)} for index in range(4)]


# -- 1. an axis 0 that is not the rows --------------------------------------------------------------------


def test_a_sequence_first_output_never_mixes_callers_even_when_trusted(
    repository: Path, make_server: ServerFactory
) -> None:
    """Two callers of 2 rows with sequences of 4: merged, the output's axis 0 (the sequence) had the batch's 4
    rows, and was cut by position. Trusted (no check at load), the declared names alone keep it apart."""
    server, reference = serve(repository, make_server, seq_first(), rows_independent="yes")
    requests = [{"x": np.arange(8, dtype=np.float32).reshape(2, 4) + 100 * index} for index in range(4)]
    assert_each_answer_is_its_own(server, reference, requests)
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert status["unbatchable_reason"] == (
        "'batch', the name of axis 0 of input 'x', is also axis 1 of output y: tensor(float) [seq, batch]: axis 0 "
        "is not only the rows"
    )


def test_an_input_of_picked_rows_is_never_stacked(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``indices`` index the caller's own ``data``: stacked, caller B's indices 0 and 1 picked caller A's rows.
    Inputs that name axis 0 apart are left to the run at load, which cannot show that ``k`` is the rows (the
    made-up index 1 is beyond one row of ``data``): not merged, and the load warns why."""
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server, reference = serve(repository, make_server, picked_rows())
    requests = [
        {
            "data": np.full((2, 4), index, np.float32) + np.array([[0.0], [0.5]], np.float32),
            "indices": np.array([1, 0], np.int64),
        }
        for index in range(4)
    ]
    assert_each_answer_is_its_own(server, reference, requests)
    three_picks = {"data": requests[0]["data"], "indices": np.array([1, 0, 1], np.int64)}  # (not the rows)
    np.testing.assert_array_equal(server.predict("m", three_picks)["y"], alone(reference, three_picks)["y"])
    reason = version_status(server, "m")["unbatchable_reason"]
    assert reason.startswith(
        "axis 0 is 'batch' on input 'data' but 'k' on input 'indices', and nothing showed that axis 0 is the rows "
        "(the model would not run on made-up rows: "
    )
    warned = [record for record in caplog.records if record.levelno == logging.WARNING]
    assert [record.getMessage().count("runs unbatched: axis 0 is 'batch'") for record in warned] == [1]


def test_with_batching_off_inputs_named_apart_need_not_share_rows(repository: Path, make_server: ServerFactory) -> None:
    """Nothing is merged nor sliced, so nothing takes ``k`` for the rows: 2 picks of 5 rows are answered."""
    server, reference = serve(repository, make_server, picked_rows(), enabled=False, max_request_rows=64)
    picks = {"data": np.arange(20, dtype=np.float32).reshape(5, 4), "indices": np.array([4, 0], np.int64)}
    np.testing.assert_array_equal(server.predict("m", picks)["y"], alone(reference, picks)["y"])
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "(not checked: batching is off and nothing is sliced)" in status["unbatchable_reason"]


# -- 2. a count of things found on axis 0 ------------------------------------------------------------------


def positives(rows: int, columns: list[int] | list[list[int]]) -> np.ndarray:
    """``rows`` rows of -1, with 1 at ``columns[row]`` (one column, or a list of them)."""
    x = -np.ones((rows, 4), np.float32)
    for row, column in enumerate(columns):
        x[row, column] = 1.0
    return x


@pytest.mark.parametrize("axis_name", ["n_found", None])
def test_a_count_found_is_never_cut_by_position(
    repository: Path, make_server: ServerFactory, axis_name: str | None
) -> None:
    """Named apart from the inputs' rows or unnamed, the run at load tells. Merged callers of one row with one hit each
    (found == rows) got their row index shifted into the merged batch, and a request larger than
    max_batch_size had row indices counted from each slice."""
    server, reference = serve(repository, make_server, found(axis_name), max_batch_size=2)
    large = {"x": positives(4, [1, 2, 3, 0])}
    np.testing.assert_array_equal(server.predict("m", large)["found"], alone(reference, large)["found"])
    requests = [{"x": positives(1, [index])} for index in range(4)]
    assert_each_answer_is_its_own(server, reference, requests)
    status = version_status(server, "m")
    assert status["batchable"] is False
    expected_reason = "output 'found' has shape [2, 2] for a run of 1 row(s): its axis 0 is not the rows"
    assert expected_reason in status["unbatchable_reason"]


def test_a_slice_with_another_count_reruns_the_request_whole(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Trusted (no check at load) and unnamed: the slices' counts give it away, and the request runs whole."""
    server, reference = serve(repository, make_server, found(None), max_batch_size=2, rows_independent="yes")
    assert version_status(server, "m")["batchable"] is True
    large = {"x": positives(4, [[0, 1], [2], [3], [0]])}  # 3 found in the first slice of 2 rows
    for _ in range(2):  # noticed in the first; the second is not sliced at all
        np.testing.assert_array_equal(server.predict("m", large)["found"], alone(reference, large)["found"])
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert status["unbatchable_reason"].startswith("output 'found' has 3 rows for a slice of a large request of 2")
    assert caplog.text.count("requests now run one at a time, each whole") == 1


# -- 3. answers that depend on the whole batch -------------------------------------------------------------


@pytest.mark.parametrize("build", [dynamic_quantization, centered, softmax_over_rows])
def test_a_batch_statistic_never_lets_callers_change_each_others_answers(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, build: Any
) -> None:
    """Caller A's answer depended on, and revealed, what caller B sent (here the scale of B's values)."""
    with caplog.at_level(logging.WARNING):
        server, reference = serve(repository, make_server, build(), max_batch_size=2)
    requests = four_callers(np.random.default_rng(4))
    assert_each_answer_is_its_own(server, reference, requests)
    large = {"x": np.random.default_rng(5).standard_normal((5, 4)).astype(np.float32)}  # not run in slices
    np.testing.assert_array_equal(server.predict("m", large)["y"], alone(reference, large)["y"])
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "a row's answer depends on the other rows of its run" in status["unbatchable_reason"]
    assert caplog.text.count("runs unbatched") == 1


def test_rows_named_apart_on_input_and_output_merge_once_the_run_shows_they_are_the_rows(
    repository: Path, make_server: ServerFactory
) -> None:
    """tf2onnx names an input's rows ``unk__6`` and the output's ``unk__7``: the same rows, merged."""
    model = _model(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        [_float("x", ["unk__6", 4])],
        [_float("y", ["unk__7", 4])],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")],
    )
    server, reference = serve(repository, make_server, model)
    assert version_status(server, "m")["batchable"] is True
    assert_each_answer_is_its_own(server, reference, four_callers(np.random.default_rng(3)))
    before = version_status(server, "m")["batches_run"]
    futures = [server.submit("m", np.full((1, 4), index, np.float32)) for index in range(16)]
    for future in futures:
        future.result(timeout=30)
    assert version_status(server, "m")["batches_run"] - before < 16  # (merged)


def test_an_output_named_apart_that_the_run_cannot_check_is_not_merged(
    repository: Path, make_server: ServerFactory
) -> None:
    """``y[n, 4] = table[index]`` over a table of one row: the made-up index 1 is out of range, so nothing
    shows that ``n`` is the rows; named apart from the inputs' ``rows``, it is not taken for them."""
    model = _model(
        [helper.make_node("Gather", ["table", "index"], ["y"], axis=0)],
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["rows"])],
        [_float("y", ["n", 4])],
        [numpy_helper.from_array(np.ones((1, 4), np.float32), "table")],
    )
    server, _ = serve(repository, make_server, model)
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "axis 0 is 'rows' on the inputs but 'n' on output 'y'" in status["unbatchable_reason"]
    assert "would not run on made-up rows" in status["unbatchable_reason"]


def test_inputs_named_apart_merge_once_the_run_shows_they_are_the_rows(
    repository: Path, make_server: ServerFactory
) -> None:
    """torch's ``input_ids_dynamic_axes_1`` beside ``attention_mask_dynamic_axes_1``: refused by their names,
    16 concurrent requests took 16 runs."""
    server, reference = serve(repository, make_server, named_apart_inputs(table_rows=4))
    assert version_status(server, "m")["batchable"] is True
    rng = np.random.default_rng(10)
    requests = [
        {"ids": np.array([index, 3 - index]), "x": rng.standard_normal((2, 2)).astype(np.float32)} for index in range(4)
    ]
    assert_each_answer_is_its_own(server, reference, requests)
    before = version_status(server, "m")["batches_run"]
    futures = [
        server.submit("m", {"ids": np.array([index % 4]), "x": np.ones((1, 2), np.float32)}) for index in range(16)
    ]
    for future in futures:
        future.result(timeout=30)
    assert version_status(server, "m")["batches_run"] - before < 16  # (merged)


@pytest.mark.parametrize("setting", ["check", "yes"])
def test_inputs_named_apart_that_the_run_cannot_check_merge_only_on_the_users_word(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, setting: str
) -> None:
    """Over a table of one row, the made-up id 1 fails: nothing shows that the inputs' rows are one axis, so
    they are not merged, unless ``rows_independent = "yes"`` says so (it could not before). Merged, every
    input of a request must have the same rows, or stacked requests would be split wrongly."""
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server, reference = serve(repository, make_server, named_apart_inputs(table_rows=1), rows_independent=setting)
    status = version_status(server, "m")
    if setting == "check":
        assert status["batchable"] is False
        assert status["unbatchable_reason"].startswith(
            "axis 0 is 'ids_dynamic_axes_1' on input 'ids' but 'x_dynamic_axes_1' on input 'x', and nothing showed"
        )
        assert "runs unbatched: axis 0 is 'ids_dynamic_axes_1'" in caplog.text
        return
    assert status["batchable"] is True and status["unbatchable_reason"] is None
    requests = [{"ids": np.zeros(1, np.int64), "x": np.full((1, 2), index, np.float32)} for index in range(16)]
    futures = [server.submit("m", feeds) for feeds in requests]
    for feeds, future in zip(requests, futures, strict=True):
        np.testing.assert_array_equal(future.result(timeout=30)["y"], alone(reference, feeds)["y"])
    assert version_status(server, "m")["batches_run"] < 16
    with pytest.raises(InvalidInputError, match="input 'x': has 3 rows but the other inputs have 2"):
        server.predict("m", {"ids": np.zeros(2, np.int64), "x": np.ones((3, 2), np.float32)})


def test_trusting_a_dependent_model_merges_it(repository: Path, make_server: ServerFactory) -> None:
    """``rows_independent = "yes"`` skips the check: the user's word, for a model the check misjudges."""
    server, _ = serve(repository, make_server, centered(), rows_independent="yes")
    status = version_status(server, "m")
    assert status["batchable"] is True and status["unbatchable_reason"] is None
    futures = [server.submit("m", np.full((1, 4), index, np.float32)) for index in range(16)]
    for future in futures:
        future.result(timeout=30)
    assert version_status(server, "m")["batches_run"] < 16


def test_distrusting_an_independent_model_never_merges_nor_slices(repository: Path, make_server: ServerFactory) -> None:
    server, reference = serve(
        repository, make_server, build_mlp_model((4, 8, 3)), rows_independent="no", max_batch_size=2
    )
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert status["unbatchable_reason"] == "batching.rows_independent is 'no'"
    assert status["run_cost_ms"] is None
    requests = four_callers(np.random.default_rng(6))
    assert_each_answer_is_its_own(server, reference, requests)  # exactly: each ran alone, as onnxruntime did
    assert version_status(server, "m")["batches_run"] == version_status(server, "m")["rows_run"] // 2


def test_rows_independent_takes_three_words() -> None:
    with pytest.raises(ConfigurationError, match=r"batching\.rows_independent must be 'check', 'yes' or 'no'"):
        BatchingConfig(rows_independent=True)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model", "features"),
    [(build_mlp_model((16, 32, 4), seed=3), 16), (build_scale_model(3.0), 4)],
    ids=["mlp", "scale"],
)
def test_independent_models_still_merge(
    repository: Path, make_server: ServerFactory, model: onnx.ModelProto, features: int
) -> None:
    server, reference = serve(repository, make_server, model)
    status = version_status(server, "m")
    assert status["batchable"] is True and status["unbatchable_reason"] is None
    requests = [{"x": np.full((1, features), index, np.float32)} for index in range(16)]
    for _ in range(5):
        futures = [server.submit("m", feeds) for feeds in requests]
        for feeds, future in zip(requests, futures, strict=True):
            np.testing.assert_allclose(
                future.result(timeout=30)["y"], alone(reference, feeds)["y"], rtol=1e-5, atol=1e-6
            )
    status = version_status(server, "m")
    assert status["batches_run"] < status["rows_run"], "no request was ever merged"


def test_a_model_that_cannot_run_made_up_rows_keeps_merging_with_a_warning(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The check is inconclusive (index 1 is outside a one-row table): merged as the shapes allow, as before,
    but with a warning that says how to decide (it was logged at INFO, unseen)."""
    table = numpy_helper.from_array(np.array([[5.0, 6.0]], np.float32), "table")
    model = _model(
        [helper.make_node("Gather", ["table", "index"], ["y"], axis=0)],
        [helper.make_tensor_value_info("index", TensorProto.INT64, ["batch"])],
        [_float("y", ["batch", 2])],
        [table],
    )
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server, _ = serve(repository, make_server, model)
    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "could not check that each row's answer is its own (the model would not run on made-up rows" in warning
    assert "set batching.rows_independent = 'yes' to merge them, or 'no' to never merge nor slice them" in warning
    assert version_status(server, "m")["batchable"] is True


def test_an_index_into_the_callers_own_rows_is_never_merged(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """``y = x[row]``, ``row[batch]`` indexing the caller's own rows (a beam search's reordering of the batch):
    the made-up index 1 is beyond a run of one row, so the check was inconclusive and requests were merged;
    stacked, every caller's ``row = 0`` picked the first caller's row, and each got that caller's answer. The
    check runs again with the index 0 in both rows, which shows the rows mixing: not merged."""
    model = _model(
        [helper.make_node("Gather", ["x", "row"], ["y"], axis=0)],
        [_float("x", ["batch", 4]), helper.make_tensor_value_info("row", TensorProto.INT64, ["batch"])],
        [_float("y", ["batch", 4])],
    )
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server, reference = serve(repository, make_server, model)
    requests = [{"x": np.full((1, 4), caller, np.float32), "row": np.array([0], np.int64)} for caller in range(4)]
    assert_each_answer_is_its_own(server, reference, requests)
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "differs from the same rows run alone" in status["unbatchable_reason"]
    assert status["unbatchable_reason"].endswith("(shown with integer inputs row 0 in both rows)")
    [warning] = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "runs unbatched" in warning


def test_a_model_that_needs_longer_made_up_rows_is_checked_on_them(
    repository: Path, make_server: ServerFactory
) -> None:
    """Too short for the kernel at 2 steps, the check was inconclusive and the version merged: a loud caller
    changed a quiet one's answer through the shared quantization scale. It now runs them with 16 steps."""
    server, reference = serve(repository, make_server, quantized_over_time(), warmup=False, max_batch_size=4)
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "a row's answer depends on the other rows of its run" in status["unbatchable_reason"]
    rng = np.random.default_rng(11)
    requests = [{"x": (rng.standard_normal((1, 3, 20)) * 10**index).astype(np.float32)} for index in range(4)]
    assert_each_answer_is_its_own(server, reference, requests)


def test_a_large_request_is_not_run_in_slices_with_merging_off_if_its_rows_depend_on_each_other(
    repository: Path, make_server: ServerFactory
) -> None:
    """``batching.enabled = false`` skipped the check, but a request larger than ``max_batch_size`` still ran
    in slices: each slice took its own mean."""
    server, reference = serve(repository, make_server, centered(), enabled=False, max_batch_size=2)
    large = {"x": np.arange(20, dtype=np.float32).reshape(5, 4)}
    np.testing.assert_array_equal(server.predict("m", large)["y"], alone(reference, large)["y"])
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "a row's answer depends on the other rows of its run" in status["unbatchable_reason"]


@pytest.mark.parametrize("build", [one_hot_of_the_largest, split_words])
def test_an_inner_length_that_follows_the_values_loads_and_is_never_merged(
    repository: Path, make_server: ServerFactory, build: Any
) -> None:
    """Alone, the made-up rows gave answers of different inner lengths, and comparing them failed the load
    of a model that served before; merged, each caller's answer took the longest row's length."""
    server, reference = serve(repository, make_server, build())
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "for one row and" in status["unbatchable_reason"]
    assert status["unbatchable_reason"].endswith("for another: its inner length depends on the rows")
    if build is split_words:
        texts = ["one", "two words", "three words here", ""]
        requests = [{"text": np.array([text], object)} for text in texts]
    else:
        requests = [{"ids": np.array([index], np.int64)} for index in (0, 3, 1, 2)]
    assert_each_answer_is_its_own(server, reference, requests)


# -- 4. a 0-d output where axis 0 was declared ---------------------------------------------------------------


def test_a_scalar_output_is_found_at_load(repository: Path, make_server: ServerFactory) -> None:
    server, reference = serve(repository, make_server, scalar_total())
    assert_each_answer_is_its_own(server, reference, four_callers(np.random.default_rng(7)))
    assert version_status(server, "m")["unbatchable_reason"] == (
        "output 'total' has shape [] for a run of 1 row(s): its axis 0 is not the rows (a count of things "
        "found, or another axis)"
    )


def test_a_scalar_output_of_a_trusted_model_turns_merging_off(repository: Path, make_server: ServerFactory) -> None:
    """Merged, every caller got a bare TypeError (len() of a 0-d array), and merging stayed on; a request
    larger than max_batch_size failed to stitch its slices' scalars."""
    server, reference = serve(repository, make_server, scalar_total(), rows_independent="yes", max_batch_size=2)
    large = {"x": np.arange(20, dtype=np.float32).reshape(5, 4)}
    np.testing.assert_array_equal(server.predict("m", large)["total"], alone(reference, large)["total"])
    assert "is a scalar (0-d)" in version_status(server, "m")["unbatchable_reason"]


def test_a_merged_scalar_output_is_rerun_alone(repository: Path, make_server: ServerFactory) -> None:
    server, reference = serve(repository, make_server, scalar_total(), rows_independent="yes")
    assert_each_answer_is_its_own(server, reference, four_callers(np.random.default_rng(8)))
    assert "is a scalar (0-d) for a batch of" in version_status(server, "m")["unbatchable_reason"]


# -- the pure parts ----------------------------------------------------------------------------------------


def signature(inputs: list[tuple[str, Dims]], outputs: list[tuple[str, Dims]]) -> Signature:
    return Signature(
        [TensorSpec(name, "tensor(float)", np.dtype(np.float32), tuple(dims)) for name, dims in inputs],
        [TensorSpec(name, "tensor(float)", np.dtype(np.float32), tuple(dims)) for name, dims in outputs],
    )


@pytest.mark.parametrize(
    ("inputs", "outputs", "reason"),
    [
        ([("x", ["batch", 4])], [("y", ["batch", 2])], None),
        ([("x", [None, 4])], [("y", ["n", 2])], None),  # unnamed: unknown, left to the run at load
        ([("x", ["batch", 4])], [("y", [-1, 2])], None),
        ([("x", ["unk__6", 4])], [("y", ["unk__7", 2])], None),  # each tensor's rows named apart: the run tells
        (
            [("x", ["batch", "batch"])],
            [("y", ["batch"])],
            "'batch', the name of axis 0 of input 'x', is also axis 1 of input",
        ),
        (
            [("x", ["batch", 4])],
            [("y", ["batch", "batch"])],
            "'batch', the name of axis 0 of input 'x', is also axis 1 of output",
        ),
        (
            [("x", ["batch", 4]), ("z", ["b", 4])],
            [("y", ["batch"])],
            "axis 0 is 'batch' on input 'x' but 'b' on input 'z'",
        ),
        ([("x", [3, 4])], [("y", [3])], "input x: tensor(float) [3, 4] has no dynamic axis 0"),
        ([("x", ["batch", 4])], [("y", [])], "output y: tensor(float) [] has no dynamic axis 0"),
    ],
)
def test_the_batch_axis_by_the_declared_shapes(inputs: Any, outputs: Any, reason: str | None) -> None:
    found_reason = signature(inputs, outputs).unbatchable_reason
    assert found_reason is None if reason is None else reason in (found_reason or "")
    assert signature(inputs, outputs).batchable is (reason is None)


def test_made_up_rows_differ_and_are_the_same_every_time() -> None:
    spec = Signature(
        [
            TensorSpec("f", "tensor(float)", np.dtype(np.float32), ("batch", "seq", 3)),
            TensorSpec("i", "tensor(int64)", np.dtype(np.int64), ("batch",)),
            TensorSpec("b", "tensor(bool)", np.dtype(np.bool_), ("batch", 1)),
            TensorSpec("s", "tensor(string)", np.dtype(object), ("batch",)),
        ],
        [TensorSpec("y", "tensor(float)", np.dtype(np.float32), ("batch",))],
    )
    first, second = spec.distinct_rows()
    assert first["f"].shape == (1, 2, 3) and first["f"].dtype == np.float32
    assert not np.isclose(first["f"], second["f"]).any()
    assert (first["i"].tolist(), second["i"].tolist(), first["b"].tolist(), second["b"].tolist()) == (
        [0],
        [1],
        [[False]],
        [[True]],
    )
    assert (first["s"].tolist(), second["s"].tolist()) == ([""], ["a"])
    again = spec.distinct_rows()
    np.testing.assert_array_equal(again[0]["f"], first["f"])


def test_rows_problem_tolerates_kernels_not_dependence() -> None:
    one = np.array([[1.0, 1000.0]], np.float32)
    two = np.array([[2.0, 0.0]], np.float32)
    stacked = np.concatenate([one, two])
    assert rows_problem(["y"], [[one], [two]], [stacked * (1 + 1e-5)]) is None  # another kernel's rounding
    assert (
        rows_problem(["y"], [[one], [two]], [stacked + np.array([[0.0, 0.0], [0.5, 0.0]], np.float32)]) is None
    )  # within 1e-3 of 1000
    assert rows_problem(["y"], [[one], [two]], [stacked + np.array([[0.0, 0.0], [5.0, 0.0]], np.float32)]) is not None
    nan = np.array([[np.nan, 1.0]], np.float32)
    assert rows_problem(["y"], [[nan], [nan]], [np.concatenate([nan, nan])]) is None
    ints = np.array([[3]], np.int64)
    assert rows_problem(["k"], [[ints], [ints]], [np.array([[3], [4]])]) == (
        "output 'k' of rows run together differs from the same rows run alone (values differ): a row's answer "
        "depends on the other rows of its run (a statistic over the batch: dynamic quantization, batch "
        "normalization in training mode, a softmax or mean over axis 0)"
    )
    assert "shape [] for a run of 1 row(s)" in (
        rows_problem(["t"], [[np.float32(1)], [np.float32(2)]], [np.float32(3)]) or ""
    )
    words = [np.zeros((1, 0), object)], [np.array([["a"]], object)]
    assert rows_problem(["words"], words, [np.array([[""], ["a"]], object)]) == (
        "output 'words' has shape [1, 0] for one row and [1, 1] for another: its inner length depends on the rows"
    )


def test_check_rows_raises_batch_shape_error_for_a_scalar() -> None:
    with pytest.raises(BatchShapeError, match="output 't' is a scalar"):
        check_rows([np.array(1.0)], ["t"], 2)
    with pytest.raises(BatchShapeError, match="output 't' has 3 rows for a batch of 2"):
        check_rows([np.zeros(3)], ["t"], 2)


def test_an_index_into_the_callers_own_token_rows_is_never_merged(repository: Path, make_server: ServerFactory) -> None:
    """``y = tokens[row]``: a model whose inputs are all integers (token ids and a row of the batch to take,
    as a beam search reorders its hypotheses) indexes the caller's own rows too. Every input an integer, the
    check with all of them 0 tells no rows apart; the index 0 alone, the tokens still differing, shows it."""
    model = _model(
        [helper.make_node("Gather", ["tokens", "row"], ["y"], axis=0)],
        [
            helper.make_tensor_value_info("tokens", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("row", TensorProto.INT64, ["batch"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.INT64, ["batch", 4])],
    )
    server, reference = serve(repository, make_server, model)
    requests = [{"tokens": np.full((1, 4), caller, np.int64), "row": np.array([0], np.int64)} for caller in range(4)]
    assert_each_answer_is_its_own(server, reference, requests)
    status = version_status(server, "m")
    assert status["batchable"] is False


def test_mates_problem_compares_a_row_with_itself_beside_a_copy() -> None:
    """One run of rows ``r0, r1`` against runs of the same size ``r0, r0`` and ``r1, r1``: a row-wise model
    answers each row the same (kernel rounding aside, a relative 1e-3 of a value, or 1e-6 of the output's
    largest), however small that row's values beside the output's others."""
    together = np.array([[1000.0, 0.5], [2000.0, -0.5]], np.float32)  # (a batch mean taken from the 2nd column)
    twins = [[np.array([[1000.0, 0.0], [1000.0, 0.0]], np.float32)], [np.array([[2000.0, 0.0]] * 2, np.float32)]]
    assert "beside a copy of itself" in (mates_problem(["y"], [together], twins) or "")
    assert rows_problem(["y"], [[twins[0][0][:1]], [twins[1][0][:1]]], [together]) is None  # (what hid it)
    noisy = together.copy()
    noisy[:, 1] = [1e-4, -1e-4]  # (kernel rounding: under 1e-6 of 2000)
    assert mates_problem(["y"], [noisy], twins) is None
    assert mates_problem(["y"], [together * (1 + 1e-5)], [[together], [together]]) is None
    ints = np.array([[3], [4]], np.int64)
    assert mates_problem(["k"], [ints], [[np.array([[3], [3]])], [np.array([[4], [4]])]]) is None
    assert mates_problem(["k"], [ints], [[np.array([[3], [3]])], [np.array([[5], [5]])]]) is not None
    nan = np.array([[np.nan], [1.0]], np.float32)
    assert mates_problem(["n"], [nan], [[np.full((2, 1), np.nan, np.float32)], [np.ones((2, 1), np.float32)]]) is None
    # (outputs whose shape does not follow the rows are rows_problem's to report)
    assert mates_problem(["t"], [np.float32(3)], [[np.float32(3)], [np.float32(3)]]) is None


def _with_a_mean_of_the_batch(nodes: list[Any], inputs: list[Any], outputs: list[Any], inits: list[Any]) -> Any:
    """The graph given, then ``y = concat(1000 x, x - mean(x, axis=0))`` on ``x[batch, 4]`` as its last output:
    within the check across batch sizes' tolerance, shown only by a row run beside a copy of itself."""
    return helper.make_graph(
        [
            *nodes,
            helper.make_node("Mul", ["x", "k"], ["large"]),
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["centered"]),
            helper.make_node("Concat", ["large", "centered"], ["y"], axis=1),
        ],
        "g",
        [*inputs, _float("x", ["batch", 4])],
        [*outputs, _float("y", ["batch", 8])],
        [*inits, numpy_helper.from_array(np.array(1000.0, np.float32), "k")],
    )


def string_labels(*, mean_of_the_batch: bool) -> onnx.ModelProto:
    """A classifier with string labels as skl2onnx exports it with ``zipmap=False`` (``label``: ``tensor(string)
    [batch]``, ``probabilities[batch, 2]``), with or without an output that holds a mean over the batch."""
    nodes = [
        helper.make_node(
            "LinearClassifier",
            ["x"],
            ["label", "probabilities"],
            domain="ai.onnx.ml",
            classlabels_strings=["cat", "dog"],
            coefficients=[0.5, -0.5, 1.0, 0.0, -0.5, 0.5, -1.0, 0.0],
            intercepts=[0.1, -0.1],
            multi_class=1,
            post_transform="SOFTMAX",
        )
    ]
    outputs = [
        helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"]),
        _float("probabilities", ["batch", 2]),
    ]
    graph = (
        _with_a_mean_of_the_batch(nodes, [], outputs, [])
        if mean_of_the_batch
        else helper.make_graph(nodes, "g", [_float("x", ["batch", 4])], outputs)
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 1)], ir_version=9
    )
    onnx.checker.check_model(model)
    return model


def test_a_row_wise_model_with_string_labels_is_checked_and_merges(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A 1-D output of strings (a classifier's labels) is compared like any other: its rows are strings,
    not arrays, and the comparison beside a copy of each row must take them as they are, not warn at each
    load that the answers could not be compared."""
    model = string_labels(mean_of_the_batch=False)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server, reference = serve(repository, make_server, model)
    assert [record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING] == []
    assert version_status(server, "m")["batchable"] is True
    requests = [{"x": np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)} for seed in range(6)]
    for feeds, answers in zip(requests, served_every_way(server, requests), strict=True):
        expected = alone(reference, feeds)
        for answer in answers:  # (LinearClassifier's softmax of several rows may differ in the last bit)
            np.testing.assert_array_equal(answer["label"], expected["label"])
            np.testing.assert_allclose(answer["probabilities"], expected["probabilities"], rtol=1e-6)


def test_a_batch_statistic_after_string_labels_is_never_merged(repository: Path, make_server: ServerFactory) -> None:
    """The labels come first: the check of the outputs after them (a mean over the batch, shown only beside
    a copy of each row) must still be made, not given up as inconclusive, which merged the callers."""
    server, reference = serve(repository, make_server, string_labels(mean_of_the_batch=True))
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "'y'" in status["unbatchable_reason"] and "beside a copy of itself" in status["unbatchable_reason"]
    requests = [{"x": np.random.default_rng(seed).standard_normal((1, 4)).astype(np.float32)} for seed in range(6)]
    assert_each_answer_is_its_own(server, reference, requests)


def test_an_inner_length_that_counts_a_rows_copies_in_its_run_is_never_merged(
    repository: Path, make_server: ServerFactory
) -> None:
    """``marks[batch, n]``, ``n`` 1 + the rows of the run that repeat another (``Unique`` over axis 0): 1 for
    distinct rows run alone or together, 2 for a row beside a copy of itself. A caller whose row is the same
    as another caller's gets another length merged. The check beside a copy of each row answered nothing
    for such an output, and the outputs after it (here a mean over the batch) went unchecked."""
    nodes = [
        helper.make_node("Unique", ["x"], ["distinct"], axis=0),
        helper.make_node("Shape", ["x"], ["rows"], start=0, end=1),
        helper.make_node("Shape", ["distinct"], ["kept"], start=0, end=1),
        helper.make_node("Sub", ["rows", "kept"], ["copies"]),
        helper.make_node("Add", ["copies", "one"], ["n"]),
        helper.make_node("Concat", ["rows", "n"], ["shape"], axis=0),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["marks"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        ),
    ]
    graph = _with_a_mean_of_the_batch(
        nodes,
        [],
        [_float("marks", ["batch", "n"])],
        [numpy_helper.from_array(np.array([1], np.int64), "one")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    server, _reference = serve(repository, make_server, model)
    status = version_status(server, "m")
    assert status["batchable"] is False
    assert "'marks'" in status["unbatchable_reason"] and "beside a copy of itself" in status["unbatchable_reason"]
    assert "inner length depends on the other rows" in status["unbatchable_reason"]


def test_the_check_beside_a_copy_says_by_how_much_a_row_differs() -> None:
    """As the check across batch sizes does ("by up to 1.72"), so that a reader can tell a batch statistic
    from rounding without running the model."""
    together = np.array([[1000.0, 0.5], [2000.0, -0.5]], np.float32)
    twins = [[np.array([[1000.0, 0.0]] * 2, np.float32)], [np.array([[2000.0, 0.0]] * 2, np.float32)]]
    assert "beside a copy of itself (by up to 0.5)" in (mates_problem(["y"], [together], twins) or "")
    ints = np.array([[3], [4]], np.int64)
    assert "(values differ)" in (mates_problem(["k"], [ints], [[np.array([[3], [3]])], [np.array([[5], [5]])]]) or "")
