"""``score`` reads a CSV or Parquet file's columns as a model's inputs by name: a scikit-learn pipeline exported
with one input per column (text among them), a model of several inputs, a file with columns no input takes."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest
from onnx import TensorProto, helper

from inprocserve.__main__ import main
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .conftest import build_difference_model
from .toolkit_models import build_column_transformer_pipeline

CUSTOMERS = [  # id, city, age, n, churned: the columns in another order than the model's inputs, two unused
    ("c-1", "oslo", 31.5, 2, "no"),
    ("c-2", "rome", 58.0, 0, "yes"),
    ("c-3", "paris, 15e", 44.25, 7, "no"),  # a city no category names, quoted (it holds a comma)
    ("c-4", "paris", 19.0, 1, "yes"),
]


@pytest.fixture
def pipeline(tmp_path: Path) -> Path:
    return save_model(build_column_transformer_pipeline(), tmp_path / "models", "churn", 1)


def direct_run(model: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pipeline's answers for CUSTOMERS from onnxruntime itself: labels, and each row's class scores."""
    session = onnxruntime.InferenceSession(str(model))
    labels, maps = session.run(
        None,
        {
            "age": np.array([[row[2]] for row in CUSTOMERS], np.float32),
            "city": np.array([[row[1]] for row in CUSTOMERS], object),
            "n": np.array([[row[3]] for row in CUSTOMERS], np.int64),
        },
    )
    return labels, np.array([[scores[0], scores[1]] for scores in maps], np.float32)


def write_customers_csv(path: Path) -> None:
    lines = ["id,city,age,n,churned"]
    lines += [f'{id_},"{city}",{age},{n},{churned}' for id_, city, age, n, churned in CUSTOMERS]
    path.write_text("\n".join(lines) + "\n")


def test_a_pipeline_with_an_input_per_column_scores_a_csv_by_its_header(tmp_path: Path, pipeline: Path) -> None:
    write_customers_csv(tmp_path / "customers.csv")
    argv = ["score", "--quiet", "--batch-rows", "3", str(pipeline), str(tmp_path / "customers.csv")]
    assert main([*argv, str(tmp_path / "scores.csv")]) == 0
    labels, scores = direct_run(pipeline)
    lines = (tmp_path / "scores.csv").read_text().splitlines()
    assert lines[0] == "output_label_0,output_probability_0,output_probability_1"
    assert [int(line.split(",")[0]) for line in lines[1:]] == labels.tolist()
    written = np.array([[float(value) for value in line.split(",")[1:]] for line in lines[1:]], np.float32)
    np.testing.assert_array_equal(written, scores)


# dictionary: pandas' category dtype arrives this way; string_view (pyarrow 16 and later) was refused ("holds
# string_view values") though predict_many takes it, and a file written from such a table reads back as one
@pytest.mark.parametrize("text", ["dictionary", "string", "large_string", "string_view"])
def test_a_pipeline_with_an_input_per_column_scores_a_parquet_file_by_its_columns(
    tmp_path: Path, pipeline: Path, text: str
) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow.parquet as pq

    if not hasattr(pa, text) and text != "dictionary":
        pytest.skip(f"pyarrow {pa.__version__} has no {text} type")
    columns = list(zip(*CUSTOMERS, strict=True))
    city = pa.array(columns[1])
    table = pa.table(
        {
            "id": list(columns[0]),
            "city": city.dictionary_encode() if text == "dictionary" else city.cast(getattr(pa, text)()),
            "age": pa.array(columns[2], pa.float64()),
            "n": pa.array(columns[3], pa.int32()),
            "churned": list(columns[4]),
        }
    )
    pq.write_table(table, tmp_path / "customers.parquet")
    argv = ["score", "--quiet", str(pipeline), str(tmp_path / "customers.parquet"), str(tmp_path / "scores.npz")]
    assert main(argv) == 0
    labels, scores = direct_run(pipeline)
    with np.load(tmp_path / "scores.npz") as answers:
        assert answers["output_label"].tolist() == labels.tolist()
        np.testing.assert_array_equal(answers["output_probability"], scores)


def test_an_input_of_several_features_takes_its_numbered_columns(tmp_path: Path) -> None:
    model = save_model(build_add_model(), tmp_path / "models", "add", 1)  # a, b: [batch, 3]; n: [batch, 1]
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    header = "a_0,a_1,a_2,n,b_0,b_1,b_2"
    rows = [",".join(f"{v:g}" for v in [*a[i], i, *(a[i] * 10)]) for i in range(4)]
    (tmp_path / "in.csv").write_text("\n".join([header, *rows]) + "\n")
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as out:
        np.testing.assert_array_equal(out["total"], a * 11)
        np.testing.assert_array_equal(out["count"].ravel(), np.arange(4) * 2)


def test_a_one_input_model_whose_input_the_header_names_skips_the_other_columns(tmp_path: Path) -> None:
    model = save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)  # x: [batch, 4]
    (tmp_path / "in.csv").write_text("row_id,x_0,x_1,x_2,x_3\n7,1,2,3,4\n8,5,6,7,8\n")
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[2, 4, 6, 8], [10, 12, 14, 16]])


def assert_refused(pipeline: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, error: str) -> None:
    """Scoring a CSV file of ``text`` fails with ``error`` in its message, and writes no output."""
    (tmp_path / "in.csv").write_text(text)
    assert main(["score", "--quiet", str(pipeline), str(tmp_path / "in.csv"), str(tmp_path / "out.csv")]) == 1
    assert error in capsys.readouterr().err
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "31,oslo,2\n",
            "no column for the model's input age: tensor(float) [?, 1]; name a column 'age', or 'age_0', "
            "'age_1', ... for its features in the header, the file's first line (it names '31', 'oslo', '2')",
        ),
        (
            "age,town,n\n31,oslo,2\n",
            "no column for the model's input city: tensor(string) [?, 1]; name a column 'city'",
        ),
        ("age,city,n\n31,oslo,2\nthirty,rome,1\n", "line 3: column 'age' holds 'thirty', not a number"),
        ("age,city,n\n31,oslo,\n", "line 2: column 'n' is empty (a missing value); input 'n' needs an integer"),
        ("age,city,n\n31,oslo,2.5\n", "line 2: column 'n' holds '2.5', not an integer (input 'n' takes int64)"),
        ("age,city,n\n31,oslo,99999999999999999999\n", "not an integer that int64 holds"),
        ("age,city,n\n1_031,oslo,2\n", "line 2: column 'age' holds '1_031', not a number (digits grouped with '_'"),
        ("age,city,n\n31,oslo,2\n\n40,rome\n", "line 4: 2 fields where the header (line 1) names 3 columns"),
        ("age,city,n,city\n31,oslo,2,rome\n", "in.csv has two columns named 'city': rename or drop one"),
        ("age,city,city_0,n\n31,oslo,rome,2\n", "has a column 'city' and columns 'city_0'...: keep one or the other"),
    ],
)
def test_columns_that_do_not_fit_the_inputs_are_named_and_nothing_is_written(
    tmp_path: Path, pipeline: Path, capsys: pytest.CaptureFixture[str], text: str, error: str
) -> None:
    assert_refused(pipeline, tmp_path, capsys, text, error)


def test_an_input_given_too_few_numbered_columns_says_how_many_it_takes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model(build_add_model(), tmp_path / "models", "add", 1)
    (tmp_path / "in.csv").write_text("a_0,a_1,b_0,b_1,b_2,n\n1,2,3,4,5,6\n")
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npz")]) == 1
    assert "takes 3 values per row; the file has 2: name columns a_0 to a_2" in capsys.readouterr().err


def test_a_parquet_column_of_the_wrong_kind_is_named_before_any_row_is_scored(
    tmp_path: Path, pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"age": [31.0], "city": [3], "n": [2]}), tmp_path / "in.parquet")
    assert main(["score", "--quiet", str(pipeline), str(tmp_path / "in.parquet"), str(tmp_path / "out.npz")]) == 1
    assert "column 'city' holds int64 values; input 'city' takes text: convert the column" in capsys.readouterr().err
    pq.write_table(pa.table({"age": [31.0], "city": ["oslo"], "n": [2.5]}), tmp_path / "in.parquet")
    assert main(["score", "--quiet", str(pipeline), str(tmp_path / "in.parquet"), str(tmp_path / "out.npz")]) == 1
    assert "column 'n' holds double values; input 'n' takes int64 (integers)" in capsys.readouterr().err
    pq.write_table(pa.table({"age": [31.0, None], "city": ["oslo", "rome"], "n": [2, 3]}), tmp_path / "in.parquet")
    assert main(["score", "--quiet", str(pipeline), str(tmp_path / "in.parquet"), str(tmp_path / "out.npz")]) == 1
    assert "column 'age' has a null (missing value) at row 2" in capsys.readouterr().err


def test_a_parquet_integer_that_the_input_cannot_hold_is_refused_not_wrapped_around(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow.parquet as pq

    from inprocserve.testing import build_gather_model

    model = build_gather_model(table_rows=4, width=1)
    model.graph.input[0].type.tensor_type.elem_type = 6  # index: int32 (Gather takes either)
    path = save_model(model, tmp_path / "models", "gather", 1)
    argv = ["score", "--quiet", str(path), str(tmp_path / "in.parquet"), str(tmp_path / "out.npy")]
    pq.write_table(pa.table({"index": pa.array([1, 2**32 + 3], pa.int64())}), tmp_path / "in.parquet")
    assert main(argv) == 1  # (cast as numpy casts, 2**32 + 3 became 3: a row scored with another index)
    assert capsys.readouterr().err.startswith(
        f"error: input {tmp_path / 'in.parquet'}: column 'index' holds 4294967299 at row 2, which int32 does not hold"
    )
    pq.write_table(pa.table({"index": pa.array([1, 3], pa.int64())}), tmp_path / "in.parquet")
    assert main(argv) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[1], [3]])


def test_a_header_that_names_a_one_input_models_input_but_not_its_columns_keeps_the_matrix_reading(
    tmp_path: Path,
) -> None:
    model = save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)  # x: [batch, 4]
    (tmp_path / "in.csv").write_text("x,y,z,w\n1,2,3,4\n5,6,7,8\n")  # a header, not x's columns x_0 to x_3
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[2, 4, 6, 8], [10, 12, 14, 16]])


def test_an_input_named_like_another_inputs_numbered_column_takes_its_own_column(tmp_path: Path) -> None:
    model = save_model(build_difference_model("x", "x_0"), tmp_path / "models", "difference", 1)
    (tmp_path / "in.csv").write_text("x_0,x\n1,10\n2,30\n")
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[9], [28]])


@pytest.mark.parametrize(
    ("text", "error"),
    [  # (an unclosed quote used to take the rest of the file as one field: 3 rows scored as 1)
        ('id,age,city,n\n1,31,"oslo,2\n2,58,rome,0\n3,44,paris,7\n', "line 2: a quote opened here is never closed"),
        ("id,age,city,n\n1,31,oslo,2\n2,58," + "r" * 200_000 + ",0\n", "line 3: a field of over 131072 characters"),
        ('id,age,city,n\n1,31,"oslo"x,2\n', "line 2: ',' expected after '\"' (fix the quoting of that line)"),
    ],
)
def test_a_csv_line_whose_quoting_is_broken_is_named_and_nothing_is_written(
    tmp_path: Path, pipeline: Path, capsys: pytest.CaptureFixture[str], text: str, error: str
) -> None:
    assert_refused(pipeline, tmp_path, capsys, text, error)


def test_a_row_broken_over_lines_by_a_quoted_field_is_named_by_its_first_line(
    tmp_path: Path, pipeline: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.csv").write_text('age,city,n\n31,oslo,2\n"5\n8",rome,0\n')
    assert main(["score", "--quiet", str(pipeline), str(tmp_path / "in.csv"), str(tmp_path / "out.csv")]) == 1
    assert "line 3: column 'age' holds '5\\n8', not a number" in capsys.readouterr().err


def test_a_number_too_large_for_a_half_precision_input_is_refused_not_scored_as_infinity(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model(build_difference_model("h", "k", dtype=TensorProto.FLOAT16), tmp_path / "models", "half", 1)
    argv = ["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]
    (tmp_path / "in.csv").write_text("h,k\n1.5,0.5\n70000,1\n")  # float16 holds up to 65504
    assert main(argv) == 1
    assert "line 3: column 'h' holds '70000', not a number that float16 holds (±65504.0)" in capsys.readouterr().err
    (tmp_path / "in.csv").write_text("h,k\n1.5,0.5\ninf,1\n")  # infinity written as such is a value
    assert main(argv) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[1.0], [np.inf]])


def test_a_parquet_number_too_large_for_a_half_precision_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow.parquet as pq

    model = save_model(build_difference_model("h", "k", dtype=TensorProto.FLOAT16), tmp_path / "models", "half", 1)
    pq.write_table(pa.table({"h": [1.5, 1e6], "k": [0.5, 1.0]}), tmp_path / "in.parquet")
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.parquet"), str(tmp_path / "out.npy")]) == 1
    assert "column 'h' holds 1000000.0 at row 2, beyond what float16 holds" in capsys.readouterr().err


def test_a_one_input_model_of_open_width_reads_a_header_that_names_its_input_first_as_the_matrix(
    tmp_path: Path,
) -> None:
    model = build_scale_model(2.0)
    for value in (*model.graph.input, *model.graph.output):
        value.type.tensor_type.shape.dim[1].dim_param = "features"  # x: [batch, features]
    path = save_model(model, tmp_path / "models", "scale", 1)
    (tmp_path / "in.csv").write_text("x,y,z\n1,2,3\n")  # (read as the column x, the rows lost y and z)
    assert main(["score", "--quiet", str(path), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[2, 4, 6]])


def test_numbered_columns_with_one_left_out_are_refused_not_cut_short(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model(build_add_model(sequence=True), tmp_path / "models", "add", 1)  # a, b: [batch, seq]
    (tmp_path / "in.csv").write_text("a_0,a_1,a_3,b_0,b_1,n\n1,2,3,4,5,7\n")  # (a_2 left out: a_3 was skipped)
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npz")]) == 1
    assert "has columns up to 'a_3' but no 'a_2'" in capsys.readouterr().err


def test_a_parquet_column_of_ones_and_zeros_feeds_a_boolean_input_as_a_csv_column_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow.parquet as pq
    from onnx import TensorProto, helper

    graph = helper.make_graph(  # y = x + flag
        [
            helper.make_node("Cast", ["flag"], ["one"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["x", "one"], ["y"]),
        ],
        "flagged",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("flag", TensorProto.BOOL, [None, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    model = save_model(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)], ir_version=9), tmp_path / "m", "f", 1
    )
    argv = ["score", "--quiet", str(model), str(tmp_path / "in.parquet"), str(tmp_path / "out.npy")]
    pq.write_table(pa.table({"x": [1.0, 2.0, 3.0], "flag": [1, 0, 1]}), tmp_path / "in.parquet")
    assert main(argv) == 0  # (refused before: "holds int64 values; input 'flag' takes bool (booleans)")
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), [[2.0], [2.0], [4.0]])
    pq.write_table(pa.table({"x": [1.0, 2.0], "flag": [1, 5]}), tmp_path / "in.parquet")
    assert main(argv) == 1  # (not 5 read as True, as numpy's cast would)
    assert "column 'flag' holds 5 at row 2; input 'flag' takes booleans: true/false, or 1/0" in capsys.readouterr().err


def test_the_progress_total_counts_rows_not_lines_when_a_quoted_field_breaks_a_line(
    tmp_path: Path, pipeline: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The total came from counting lines: 4 rows, one of them over 3 lines, showed "66.7% 4/6 rows" when done.
    lines = ["id,city,age,n", 'c-1,"oslo",31.5,2', 'c-2,"a city\nover\nthree lines",58,0', "c-3,rome,44.25,7", ""]
    lines += ['c-4,"paris",19,1']
    (tmp_path / "customers.csv").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    argv = ["score", str(pipeline), str(tmp_path / "customers.csv"), str(tmp_path / "scores.csv")]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "100.0% 4/4 rows" in err
    assert "scored 4 rows" in err


def test_a_parquet_file_a_data_frame_wrote_with_its_index_scores_its_columns_not_its_index(tmp_path: Path) -> None:
    # df.to_parquet() writes a frame's index as a column (__index_level_0__, or the index's name); score took
    # it for one more feature of a one-input model's matrix ("got shape [3, 5]", or silently where the width
    # is open), while pandas and predict_many read it back as the index
    pd = pytest.importorskip("pandas", reason="pandas is a test dependency (pip install -e '.[dev]')")
    pytest.importorskip("pyarrow", reason="pyarrow is a test dependency (pip install -e '.[dev]')")
    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)  # x: float [batch, 4]
    model = tmp_path / "models" / "scale" / "1" / "model.onnx"
    rows = np.arange(12, dtype=np.float32).reshape(3, 4)
    for index in (pd.Index([10, 20, 30]), pd.Index(["a", "b", "c"], name="customer")):
        frame = pd.DataFrame(rows, columns=["f0", "f1", "f2", "f3"], index=index)
        frame.to_parquet(tmp_path / "rows.parquet")
        assert main(["score", "--quiet", str(model), str(tmp_path / "rows.parquet"), str(tmp_path / "out.npy")]) == 0
        np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), 2 * rows)


def test_a_quoted_empty_text_in_a_csv_of_one_column_is_a_row_not_a_blank_line(tmp_path: Path) -> None:
    # pandas and the csv module write an empty text alone on its line as "": read as a blank line, the row was
    # skipped, and the answers had fewer rows than the input without a word. A line of spaces is blank still.
    model = save_model(_text_echo_model(), tmp_path / "models", "echo", 1)
    pandas = pytest.importorskip("pandas")
    pandas.DataFrame({"text": ["a", "", "b"]}).to_csv(tmp_path / "in.csv", index=False)
    assert (tmp_path / "in.csv").read_text() == 'text\na\n""\nb\n'
    with (tmp_path / "in.csv").open("a") as file:
        file.write('" "\n   \n\nc\n')
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 0
    assert np.load(tmp_path / "out.npy").tolist() == [["a"], [""], ["b"], [" "], ["c"]]


def test_a_quoted_empty_field_in_a_column_of_numbers_is_a_missing_value_not_a_blank_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = save_model(build_scale_model(2.0, features=1), tmp_path / "models", "scale", 1)
    (tmp_path / "in.csv").write_text('x\n1\n""\n3\n\n')
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 1
    assert "line 3: column 'x' is empty (a missing value)" in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()


def _text_echo_model() -> Any:
    """``answer = text``, one text per row."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["text"], ["answer"])],
        "echo",
        [helper.make_tensor_value_info("text", TensorProto.STRING, ["batch", 1])],
        [helper.make_tensor_value_info("answer", TensorProto.STRING, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return model


def test_an_answer_of_spaces_alone_in_a_csv_of_one_column_is_quoted_so_it_reads_back_as_a_row(tmp_path: Path) -> None:
    # Written bare, a line of spaces is a blank line to every reader (this one, pandas): the file read back
    # had fewer rows than it was written with.
    model = save_model(_text_echo_model(), tmp_path / "models", "echo", 1)
    np.save(tmp_path / "in.npy", np.array([["a"], [" "], ["\t"], [""], ["b"]]))
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.npy"), str(tmp_path / "out.csv")]) == 0
    assert (tmp_path / "out.csv").read_text() == 'answer_0\na\n" "\n"\t"\n""\nb\n'
    (tmp_path / "again.csv").write_text((tmp_path / "out.csv").read_text().replace("answer_0", "text", 1))
    assert main(["score", "--quiet", str(model), str(tmp_path / "again.csv"), str(tmp_path / "back.npy")]) == 0
    assert np.load(tmp_path / "back.npy").tolist() == [["a"], [" "], ["\t"], [""], ["b"]]


@pytest.mark.parametrize(
    ("header", "error"),
    [
        ("row_id,x_0,x_1,x_3", "has columns up to 'x_3' but no 'x_2'"),  # (docs/performance.md: a_0,a_1,a_3)
        ("row_id,x_0,x_1,x_2", "takes 4 values per row; the file has 3: name columns x_0 to x_3"),
    ],
)
def test_a_one_input_models_numbered_columns_with_one_missing_are_refused_not_read_as_its_matrix(
    header: str, error: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Read as the matrix, the four columns were four features: the row ids scored as x's first, no error.
    model = save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)  # x: [batch, 4]
    (tmp_path / "in.csv").write_text(f"{header}\n7,1,2,3\n")
    assert main(["score", "--quiet", str(model), str(tmp_path / "in.csv"), str(tmp_path / "out.npy")]) == 1
    assert error in capsys.readouterr().err
    assert not (tmp_path / "out.npy").exists()
