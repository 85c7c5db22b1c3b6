"""Batch scoring of a model whose file fixes the batch axis (``torch.onnx.export`` without ``dynamic_axes``
fixes axis 0 at the example's size, most often 1): an input is cut into requests of exactly that many rows.

Before, each whole input was one request, refused past that many rows, so such a model could not be scored
at all, by ``predict_many`` or the ``score`` command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inprocserve import InvalidInputError
from inprocserve.__main__ import main
from inprocserve.testing import save_model

from .conftest import ServerFactory


def build_fixed_rows_model(rows: int) -> onnx.ModelProto:
    """``y = x * x`` on ``x[rows, 4]``, and ``total[rows]``, the sum of each row: axis 0 fixed at ``rows``."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "x"], ["y"]),
            helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0),
        ],
        "fixed_rows",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 4]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, [rows]),
        ],
        [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    save_model(build_fixed_rows_model(1), tmp_path / "models", "one_row", 1)
    save_model(build_fixed_rows_model(4), tmp_path / "models", "four_rows", 1)
    return tmp_path / "models"


X = np.arange(40, dtype=np.float32).reshape(10, 4)


def test_an_input_is_scored_in_requests_of_the_rows_the_model_fixes(
    repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(repository)
    answers = list(server.predict_many("one_row", X))
    assert [answer["y"].shape for answer in answers] == [(1, 4)] * 10  # (one answer per request of one row)
    np.testing.assert_array_equal(np.concatenate([answer["y"] for answer in answers]), X * X)
    np.testing.assert_array_equal(np.concatenate([answer["total"] for answer in answers]), X.sum(axis=1))
    # an iterable's batches are each answered whole, cut into such requests and joined back
    four = list(server.predict_many("four_rows", iter([X[:8], X[:4]])))
    assert [answer["y"].shape for answer in four] == [(8, 4), (4, 4)]
    np.testing.assert_array_equal(four[0]["total"], X[:8].sum(axis=1))


def test_rows_that_are_no_multiple_are_refused_before_any_run(repository: Path, make_server: ServerFactory) -> None:
    server = make_server(repository)
    with pytest.raises(InvalidInputError, match=r"exactly 4 rows per run .* 10 rows are not a multiple of 4: pad"):
        server.predict_many("four_rows", X)
    with pytest.raises(ValueError, match=r"batch_rows=2: .* takes exactly 4 rows per run"):
        server.predict_many("four_rows", X[:8], batch_rows=2)
    # predict itself says why a request of another size is refused
    with pytest.raises(InvalidInputError, match=r"exactly 1 row per request: its file .* cut any rows into such"):
        server.predict("one_row", X[:2])


def test_a_batch_of_an_iterable_that_is_no_multiple_is_refused_before_its_parts_run(
    repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(repository)
    runs = server.status()["models"]["four_rows"]["versions"]["1"]["batches_run"]
    # before, its first two parts of 4 rows ran and the third, of 2, failed with predict's own refusal
    answers = server.predict_many("four_rows", iter([X[:8], X]))
    assert next(answers)["y"].shape == (8, 4)
    with pytest.raises(
        InvalidInputError, match=r"10 rows are not a multiple of 4: pad the batch to 12 rows"
    ) as refused:
        next(answers)
    assert server.status()["models"]["four_rows"]["versions"]["1"]["batches_run"] == runs + 2  # (the first batch's)
    # named as any refusal of a request is (it said "the model", and error.model was None)
    assert str(refused.value).startswith("model 'four_rows': it takes exactly 4 rows per run")
    assert refused.value.model == "four_rows"
    # so is a batch that could not be read as the model's inputs, whatever the model
    mixed = server.predict_many("four_rows", iter([{"x": X[:4]}, {"x": X[:4], "y": X[:3]}]))
    assert next(mixed)["y"].shape == (4, 4)
    with pytest.raises(InvalidInputError, match=r"^model 'four_rows': the inputs of a batch must have the same") as odd:
        next(mixed)
    assert odd.value.model == "four_rows" and odd.value.__notes__ == [
        "predict_many: the batch after input row 4 could not be read or checked"
    ]


def test_an_empty_batch_of_an_iterable_is_answered_with_no_rows(repository: Path, make_server: ServerFactory) -> None:
    # before, predict refused its 0 rows against the fixed 4 ("got shape [0, 4]") and the job ended there
    server = make_server(repository)
    answers = list(server.predict_many("four_rows", iter([X[:4], X[:0], X[:8]])))
    assert [answer["y"].shape for answer in answers] == [(4, 4), (0, 4), (8, 4)]
    assert answers[1]["total"].shape == (0,)
    np.testing.assert_array_equal(answers[2]["y"], X[:8] * X[:8])
    # its other axes are still checked: an empty batch of 3 columns, or of 3 dimensions, was answered as if right
    for wrong, refusal in ((X[:0, :3], r"expected size 4 on axis 1"), (X[:0, :, None], r"expected 2 dimensions")):
        with pytest.raises(InvalidInputError, match=rf"^model 'four_rows' version 1: input 'x': {refusal}"):
            list(server.predict_many("four_rows", iter([wrong])))


def test_score_writes_every_row_of_a_model_exported_with_one_row(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = np.random.default_rng(0).standard_normal((600, 4)).astype(np.float32)
    np.save(tmp_path / "rows.npy", rows)
    model = repository / "one_row" / "1" / "model.onnx"
    assert main(["score", str(model), str(tmp_path / "rows.npy"), str(tmp_path / "out.npz")]) == 0
    written = np.load(tmp_path / "out.npz")
    np.testing.assert_array_equal(written["y"], rows * rows)
    np.testing.assert_allclose(written["total"], rows.sum(axis=1), atol=1e-6)
    # a file whose rows the model cannot take in whole requests fails naming the rows, and writes nothing
    np.save(tmp_path / "ten.npy", X)
    model = repository / "four_rows" / "1" / "model.onnx"
    assert main(["score", str(model), str(tmp_path / "ten.npy"), str(tmp_path / "ten.npz")]) == 1
    assert "10 rows are not a multiple of 4: pad the file to 12 rows" in capsys.readouterr().err
    assert not (tmp_path / "ten.npz").exists()
    np.save(tmp_path / "eight.npy", X[:8])
    assert main(["score", "--batch-rows", "2", str(model), str(tmp_path / "eight.npy"), str(tmp_path / "8.npz")]) == 1
    assert capsys.readouterr().err == (
        "error: --batch-rows 2: model 'model' version 1 takes exactly 4 rows per run (its file fixes axis 0 of "
        "every input and output), so rows are sent 4 at a time; drop --batch-rows\n"
    )
    assert main(["score", "--batch-rows", "4", str(model), str(tmp_path / "eight.npy"), str(tmp_path / "8.npz")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "8.npz")["y"], X[:8] * X[:8])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_score_refuses_a_streamed_file_of_no_multiple_before_reading_its_blocks(
    repository: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # a CSV or Parquet file is read in blocks, and was refused only at its last one, after every block before it
    # ran, with advice to pad "the batch" (that block) to 4 rows; its rows are counted first now
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet is read with pyarrow (make install installs it)")
    rows = np.arange(2051 * 4, dtype=np.float32).reshape(2051, 4)  # several blocks, and one row over 2048
    path = tmp_path / f"rows{suffix}"
    if suffix == ".csv":
        np.savetxt(path, rows, delimiter=",", header="x0,x1,x2,x3", comments="")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({f"x{column}": rows[:, column] for column in range(4)}), path)
    model = repository / "four_rows" / "1" / "model.onnx"
    assert main(["score", "--quiet", str(model), str(path), str(tmp_path / "out.npz")]) == 1
    assert "2051 rows are not a multiple of 4: pad the file to 2052 rows" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
