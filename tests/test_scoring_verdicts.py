"""Batch scoring follows what the load found about a version's rows, not only what its file declares, and takes
what predict takes (a scalar input beside inputs of rows).

A model whose rows depend on each other (a mean over axis 0, batch normalization exported in training mode)
declares a dynamic batch axis like any other; the load runs it and serves each request alone and whole. Batch
scoring cut its input into chunks from the declared shapes all the same, and the chunks shared runs: the
answers were neither the whole input's nor each chunk's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inprocserve import BatchingConfig, InvalidInputError, ModelConfig
from inprocserve.__main__ import main
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def build_centring_model() -> onnx.ModelProto:
    """``y = x - mean(x over the rows)``, x[batch, 2]: each row's answer depends on the others."""
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["x"], ["mean"], axes=[0], keepdims=1),
            helper.make_node("Sub", ["x", "mean"], ["y"]),
        ],
        "centring",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_centring_model(), tmp_path / "models", "centring", 1)
    save_model(build_scale_model(2.0), tmp_path / "models", "never_sliced", 1)
    return tmp_path / "models"


ROWS = np.arange(200, dtype=np.float32).reshape(100, 2)


def test_a_model_whose_rows_depend_on_each_other_is_scored_whole(repository: Path, make_server: ServerFactory) -> None:
    server = make_server(repository)
    assert server.status()["models"]["centring"]["versions"]["1"]["unbatchable_reason"]
    answers = list(server.predict_many("centring", ROWS))
    # one answer, the whole input's (before: chunks of 64 and 36 rows, answered from one shared run)
    assert len(answers) == 1
    np.testing.assert_allclose(answers[0]["y"], ROWS - ROWS.mean(axis=0))
    with pytest.raises(ValueError, match=r"batch_rows=10: model 'centring' version 1 takes a whole input as one"):
        list(server.predict_many("centring", ROWS, batch_rows=10))
    # batches of an iterable are each scored as a request of their own, as predict answers them
    batches = [ROWS[:30], ROWS[30:]]
    for answer, batch in zip(server.predict_many("centring", iter(batches)), batches, strict=True):
        np.testing.assert_allclose(answer["y"], batch - batch.mean(axis=0))


def test_rows_independent_no_keeps_a_whole_input_whole(repository: Path, make_server: ServerFactory) -> None:
    never = ModelConfig(batching=BatchingConfig(rows_independent="no"))
    server = make_server(repository, models={"never_sliced": never})
    rows = np.ones((100, 4), np.float32)
    answers = list(server.predict_many("never_sliced", rows))
    assert len(answers) == 1
    np.testing.assert_array_equal(answers[0]["y"], 2 * rows)


def test_a_doubt_left_unchecked_with_batching_off_still_cuts_an_input_into_requests(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # tf2onnx names axis 0 apart on the input and the output; with batching off and nothing sliced the load does
    # not check the rows, and says so: that doubt is no finding, and a whole input past max_request_rows was
    # refused as one request ("not checked ... it cannot be cut into chunks") where it had been cut before
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "x"], ["y"])],
        "exported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["unk__6", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["unk__7", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    save_model(model, tmp_path / "models", "exported", 1)
    off = ModelConfig(batching=BatchingConfig(enabled=False, max_request_rows=64))
    server = make_server(tmp_path / "models", models={"exported": off})
    assert "not checked" in server.status()["models"]["exported"]["versions"]["1"]["unbatchable_reason"]
    rows = np.ones((200, 4), np.float32)
    answers = list(server.predict_many("exported", rows))
    assert [answer["y"].shape[0] for answer in answers] == [64, 64, 64, 8]
    np.testing.assert_array_equal(np.concatenate([answer["y"] for answer in answers]), 2 * rows)


def test_score_writes_the_whole_inputs_answer_and_refuses_batch_rows(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = repository / "centring" / "1" / "model.onnx"
    np.save(tmp_path / "rows.npy", ROWS)
    assert main(["score", str(model), str(tmp_path / "rows.npy"), str(tmp_path / "out.npz")]) == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npz")["y"], ROWS - ROWS.mean(axis=0))
    assert main(["score", "--batch-rows", "4", str(model), str(tmp_path / "rows.npy"), str(tmp_path / "o.npz")]) != 0
    err = capsys.readouterr().err
    assert "error: --batch-rows 4: model 'model' version 1 takes a whole input as one request (output 'y'" in err
    assert err.rstrip().endswith("so it cannot be cut into chunks; drop --batch-rows")  # (not "batch_rows")
    assert not (tmp_path / "o.npz").exists()


def build_last_row_dropping_model(*, with_copy: bool = False) -> onnx.ModelProto:
    """``y = x[:-1]``, declared ``[batch, 2]`` as its input: an answer one row short of its input (and with
    ``with_copy``, ``copy = x`` beside it)."""
    bounds = [
        onnx.numpy_helper.from_array(np.array([value], np.int64), name)
        for name, value in (("start", 0), ("end", -1), ("axis", 0))
    ]
    copies = [helper.make_node("Identity", ["x"], ["copy"])] if with_copy else []
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2]) for name in ("copy", "y")]
    graph = helper.make_graph(
        [*copies, helper.make_node("Slice", ["x", "start", "end", "axis"], ["y"])],
        "dropping",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        outputs[0 if with_copy else 1 :],
        bounds,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_score_writes_nothing_for_a_model_that_answers_fewer_rows_than_it_was_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # its file declares the rows on axis 0 of input and output alike; the load finds otherwise, but score wrote
    # 9 answers for 10 rows, which no longer lined up with the input's rows
    model = save_model(build_last_row_dropping_model(), tmp_path / "models", "dropping", 1)
    source = tmp_path / f"rows{suffix}"
    if suffix == ".npy":
        np.save(source, ROWS[:10])
    else:
        np.savetxt(source, ROWS[:10], delimiter=",", fmt="%g")
    target = tmp_path / ("answers.npz" if suffix == ".npy" else "answers.csv")
    assert main(["score", str(model), str(source), str(target)]) == 1
    err = capsys.readouterr().err
    assert "does not answer one row per input row: 9 rows answered for 10 input rows (the load found:" in err
    assert "nothing was written" in err and not target.exists()


def test_score_writes_nothing_where_outputs_answer_different_rows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model(build_last_row_dropping_model(with_copy=True), tmp_path / "models", "dropping", 1)
    np.save(tmp_path / "rows.npy", ROWS[:10])
    assert main(["score", str(model), str(tmp_path / "rows.npy"), str(tmp_path / "answers.npz")]) == 1
    assert "does not answer one row per input row: an answer of 10 of 'copy', 9 of 'y' rows" in capsys.readouterr().err
    assert not (tmp_path / "answers.npz").exists()


def build_threshold_model() -> onnx.ModelProto:
    """``y = x * scale``: ``x[batch, 4]`` and ``scale``, a scalar (rank 0) given with each request."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "scale"], ["y"])],
        "scaled",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_a_scalar_input_beside_rows_is_scored_as_predict_takes_it(tmp_path: Path, make_server: ServerFactory) -> None:
    save_model(build_threshold_model(), tmp_path, "scaled", 1)
    server = make_server(tmp_path)
    x = np.ones((100, 4), np.float32)
    assert server.predict("scaled", {"x": x[:2], "scale": np.float32(3)})["y"].tolist() == [[3.0] * 4] * 2
    # (was "a batch needs a leading row axis; got a scalar float32", naming neither input nor model)
    [whole] = server.predict_many("scaled", {"x": x, "scale": np.array(3, np.float32)})
    np.testing.assert_array_equal(whole["y"], 3 * x)
    batches = [{"x": x[:5], "scale": np.float32(2)}, {"x": x[:3], "scale": np.float32(4)}]
    answers = [answer["y"] for answer in server.predict_many("scaled", iter(batches))]
    assert [answer.tolist() for answer in answers] == [[[2.0] * 4] * 5, [[4.0] * 4] * 3]
    with pytest.raises(InvalidInputError, match=r"same number of rows: 'x' has 100, 'scale' has 3"):
        server.predict_many("scaled", {"x": x, "scale": np.ones(3, np.float32)})


def test_score_reads_a_single_value_for_an_input_the_model_takes_as_one(tmp_path: Path) -> None:
    # an .npz with scale as a 0-d array was refused ("save it with shape (rows, ...)"), advice that could not
    # work: the model's scale has no rows
    path = save_model(build_threshold_model(), tmp_path / "models", "scaled", 1)
    x = np.arange(2400, dtype=np.float32).reshape(600, 4)  # (more rows than one block)
    np.savez(tmp_path / "in.npz", x=x, scale=np.float32(3))
    assert main(["score", "--quiet", str(path), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as written:
        np.testing.assert_array_equal(written["y"], 3 * x)
    # an array of one value per row is still refused where an input has rows, and a single value where it has
    np.savez(tmp_path / "flat.npz", x=np.float32(1), scale=np.float32(3))
    assert main(["score", "--quiet", str(path), str(tmp_path / "flat.npz"), str(tmp_path / "bad.npz")]) != 0
    assert not (tmp_path / "bad.npz").exists()


def build_summing_model() -> onnx.ModelProto:
    """``total = sum(x * scale)``: ``x[batch, 4]`` and a scalar ``scale``, answered with one value (no rows)."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "scale"], ["scaled"]),
            helper.make_node("ReduceSum", ["scaled"], ["total"], keepdims=0),
        ],
        "summing",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("scale", TensorProto.FLOAT, []),
        ],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, [])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def test_an_empty_batch_beside_a_scalar_input_is_answered_with_no_rows(
    tmp_path: Path, make_server: ServerFactory
) -> None:
    # a queue consumer's empty poll for a model that takes a scale beside its rows ended the whole job ("the
    # request has 0 rows"), where it answers zero rows for a model whose inputs all have rows
    save_model(build_threshold_model(), tmp_path, "scaled", 1)
    save_model(build_summing_model(), tmp_path, "summing", 1)
    server = make_server(tmp_path)
    x = np.ones((3, 4), np.float32)
    batches = [
        {"x": x[:2], "scale": np.float32(2)},
        {"x": x[:0], "scale": np.float32(4)},
        {"x": x[:1], "scale": np.float32(5)},
    ]
    answers = [answer["y"] for answer in server.predict_many("scaled", iter(batches))]
    assert [answer.tolist() for answer in answers] == [[[2.0] * 4] * 2, [], [[5.0] * 4]]
    assert answers[1].shape == (0, 4) and answers[1].dtype == np.float32
    # its inputs are still checked: a scale given as rows is refused, at its place, after the answer before it
    wrong = iter([batches[0], {"x": x[:0], "scale": np.ones(0, np.float32)}])
    answered = server.predict_many("scaled", wrong)
    assert next(answered)["y"].shape == (2, 4)
    with pytest.raises(InvalidInputError, match="scale"):
        next(answered)
    # a model whose answer has no rows (a sum over them) has no empty answer to give: refused as before
    with pytest.raises(InvalidInputError, match="0 rows"):
        list(server.predict_many("summing", iter([{"x": x[:0], "scale": np.float32(1)}])))


def test_rows_beside_a_scalar_input_are_cut_into_chunks_once_the_config_says_they_are_independent(
    tmp_path: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # a whole input past one request's rows could not be scored at all for a model that takes a scale beside
    # its rows; the refusal now says how, and with rows_independent = "yes" each chunk is sent with the scale
    save_model(build_threshold_model(), tmp_path / "refused", "scaled", 1)
    save_model(build_threshold_model(), tmp_path / "trusted", "scaled", 1)
    x = np.arange(40000, dtype=np.float32).reshape(10000, 4)
    refusing = make_server(tmp_path / "refused")
    with pytest.raises(InvalidInputError, match=r"10000 rows is one request.*set batching.rows_independent = 'yes'"):
        refusing.predict_many("scaled", {"x": x, "scale": np.float32(3)})
    with pytest.raises(ValueError, match=r"batch_rows=100: .*set batching.rows_independent = 'yes'"):
        refusing.predict_many("scaled", {"x": x, "scale": np.float32(3)}, batch_rows=100)
    (tmp_path / "trusted" / "scaled" / "config.toml").write_text('[batching]\nrows_independent = "yes"\n')
    trusting = make_server(tmp_path / "trusted")
    answers = list(trusting.predict_many("scaled", {"x": x, "scale": np.float32(3)}, batch_rows=1000))
    assert [len(answer["y"]) for answer in answers] == [1000] * 10
    np.testing.assert_array_equal(np.concatenate([answer["y"] for answer in answers]), 3 * x)
    # an iterable's batch larger than a request is sent in parts, each with the scale, and joined back
    [joined] = trusting.predict_many("scaled", iter([{"x": x, "scale": np.float32(2)}]))
    np.testing.assert_array_equal(joined["y"], 2 * x)
    # and score says so, and cuts the file's rows once told
    np.savez(tmp_path / "in.npz", x=x, scale=np.float32(5))
    refused = ["score", "--quiet", "--batch-rows", "100", str(tmp_path / "refused"), str(tmp_path / "in.npz")]
    assert main([*refused, str(tmp_path / "out.npz")]) != 0
    assert "set batching.rows_independent = 'yes' in the model's config.toml" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--quiet",
                "--batch-rows",
                "100",
                str(tmp_path / "trusted"),
                str(tmp_path / "in.npz"),
                str(tmp_path / "out.npz"),
            ]
        )
        == 0
    )
    with np.load(tmp_path / "out.npz") as written:
        np.testing.assert_array_equal(written["y"], 5 * x)
