"""``predict_many`` and ``predict`` over a pyarrow ``Table`` or ``RecordBatch``: its columns are the model's inputs
by name, as a data frame's are (a Table used to be refused: "inputs must be an array, a mapping ... got
Table"). What ``pq.read_table`` returns, and what ``ParquetFile.iter_batches()`` yields, is scored as it is."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import inprocserve
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .conftest import ServerFactory
from .toolkit_models import build_column_transformer_pipeline

pa = pytest.importorskip("pyarrow", reason="pyarrow is a test dependency (pip install -e '.[dev]')")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is a test dependency (pip install -e '.[dev]')")


@pytest.fixture
def churn(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_column_transformer_pipeline(), repository, "churn", 1)  # age: float, city: text, n: int64
    return make_server(repository)


def customers(rows: int = 150) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "customer_id": [f"c-{i}" for i in range(rows)],  # a column no input takes
            "n": rng.integers(0, 9, rows),
            "city": pa.array(rng.choice(["oslo", "paris", "rome", "lima"], rows)).dictionary_encode(),
            "age": rng.uniform(18, 80, rows),  # double, for a float input
        }
    )


def scores_of(answers: list[inprocserve.Prediction]) -> list[float]:
    return [scores[1] for answer in answers for scores in answer["output_probability"]]


def raw_scores(repository: Path, table: pa.Table) -> list[float]:
    session = onnxruntime.InferenceSession(str(repository / "churn" / "1" / "model.onnx"))
    _, maps = session.run(
        None,
        {
            "age": table.column("age").to_numpy().astype(np.float32).reshape(-1, 1),
            "city": table.column("city").to_numpy().astype(object).reshape(-1, 1),
            "n": table.column("n").to_numpy().reshape(-1, 1),
        },
    )
    return [scores[1] for scores in maps]


def test_a_table_is_scored_by_its_column_names(churn: inprocserve.Server, repository: Path) -> None:
    table = pa.concat_tables([customers(), customers()])  # two chunks per column
    answers = list(churn.predict_many("churn", table))
    assert [len(answer["output_label"]) for answer in answers] == [64] * 4 + [44]
    assert scores_of(answers) == raw_scores(repository, table)
    assert len(set(scores_of(answers))) > 100  # (every row its own score: a column in the wrong place would show)


def test_a_parquet_files_record_batches_are_scored_one_answer_each(
    churn: inprocserve.Server, repository: Path, tmp_path: Path
) -> None:
    table = customers()
    pq.write_table(table, tmp_path / "customers.parquet", row_group_size=100)
    batches = list(pq.ParquetFile(tmp_path / "customers.parquet").iter_batches(batch_size=40))
    answers = list(churn.predict_many("churn", iter(batches)))
    assert [len(answer["output_label"]) for answer in answers] == [batch.num_rows for batch in batches]
    assert len(batches) > 2 and all(type(batch).__name__ == "RecordBatch" for batch in batches)
    assert scores_of(answers) == raw_scores(repository, table)


def test_predict_takes_a_one_row_table_or_record_batch(churn: inprocserve.Server, repository: Path) -> None:
    table = customers(3)
    answer = churn.predict("churn", table.slice(1, 1))
    assert [scores[1] for scores in answer["output_probability"]] == raw_scores(repository, table.slice(1, 1))
    answer = churn.predict("churn", table.to_batches()[0])
    assert [scores[1] for scores in answer["output_probability"]] == raw_scores(repository, table)


def test_a_null_is_refused_by_column_and_position_unless_a_float_input_takes_it_as_nan(
    churn: inprocserve.Server, repository: Path, make_server: ServerFactory
) -> None:
    table = customers()
    ages = table.column("age").to_pylist()
    ages[3] = None
    with_null_age = table.set_column(3, "age", pa.array(ages))
    scores = scores_of(list(churn.predict_many("churn", with_null_age)))
    assert [i for i, score in enumerate(scores) if np.isnan(score)] == [3]  # as a data frame's NaN: nan_policy
    (repository / "churn" / "config.toml").write_text('nan_policy = "reject"\n')
    with pytest.raises(inprocserve.InvalidInputError, match="NaN"):
        list(make_server(repository).predict_many("churn", with_null_age))
    counts = table.column("n").to_pylist()
    counts[5] = None
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'n' of the Arrow table has a missing value \(null\) at position 5"
    ):
        list(churn.predict_many("churn", table.set_column(1, "n", pa.array(counts, pa.int64()))))
    cities = table.column("city").to_pylist()
    cities[7] = None
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'city' of the Arrow table holds a missing value at position 7"
    ):
        list(churn.predict_many("churn", table.set_column(2, "city", pa.array(cities))))


def test_a_column_of_the_wrong_type_is_told_to_be_cast(churn: inprocserve.Server) -> None:
    table = customers()
    halves = table.set_column(1, "n", pa.array(np.full(table.num_rows, 1.5)))
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"column 'n' of the Arrow table holds double values; input 'n' takes int64 \(integers\): convert the "
        r"column \(pyarrow: \.cast",
    ):
        list(churn.predict_many("churn", halves))
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"the Arrow table: no column for the model's input age.*\(the table has 'customer_id', 'n', 'city'\)",
    ):
        list(churn.predict_many("churn", table.drop_columns(["age"])))


def test_numbered_columns_and_a_one_input_table(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_add_model(), repository, "add", 1)  # a, b: [batch, 3]; n: [batch, 1]
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: [batch, 4]
    server = make_server(repository)
    a = np.arange(15, dtype=np.float32).reshape(5, 3)
    columns = {**{f"a_{i}": a[:, i] for i in range(3)}, **{f"b_{i}": a[:, i] for i in range(3)}}
    (answer,) = server.predict_many("add", pa.table({**columns, "n": np.arange(5)}))
    np.testing.assert_array_equal(answer["total"], a * 2)
    # a one-input model whose input no column names takes the whole table as its matrix, column by column
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    (answer,) = server.predict_many("scale", pa.table({name: matrix[:, i] for i, name in enumerate("pqrs")}))
    np.testing.assert_array_equal(answer["y"], matrix * 2)
    text = pa.table({"p": ["a", "b", "c"], **{name: matrix[:, i] for i, name in enumerate("qrs", start=1)}})
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"column 'p' of the Arrow table holds string values, not numbers"
    ):
        list(server.predict_many("scale", text))


def test_a_null_in_a_dictionary_encoded_column_of_a_table_is_a_missing_value_not_another_category(
    churn: inprocserve.Server, repository: Path
) -> None:
    # A Table's dictionary column with a null read the index under the null: another row's category, scored
    table = customers(6)
    cities = table.column("city").to_pylist()
    cities[1] = None
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'city' of the Arrow table holds a missing value at position 1"
    ):
        list(churn.predict_many("churn", table.set_column(2, "city", pa.array(cities).dictionary_encode())))
    counts = pa.array([1, None, 2, 0, 1, 2], pa.int64()).dictionary_encode()
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'n' of the Arrow table has a missing value \(null\) at position 1"
    ):
        list(churn.predict_many("churn", table.set_column(1, "n", counts)))
    ages = pa.array([30.0, None, 30.0, 40.0, 40.0, 50.0]).dictionary_encode()
    scores = scores_of(list(churn.predict_many("churn", table.set_column(3, "age", ages))))
    assert [i for i, score in enumerate(scores) if np.isnan(score)] == [1]  # a float input's NaN, as a null
    # a Table of several chunks, each its own dictionary, reads each chunk's nulls in place
    two = pa.concat_tables([table.slice(0, 3), table.slice(3, 3)])
    two = two.set_column(
        2,
        "city",
        pa.chunked_array(
            [
                pa.array(["oslo", "rome", "paris"]).dictionary_encode(),
                pa.array(["lima", None, "oslo"]).dictionary_encode(),
            ]
        ),
    )
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'city' of the Arrow table holds a missing value at position 4"
    ):
        list(churn.predict_many("churn", two))


def test_a_column_of_lists_is_refused_with_how_to_give_its_values(repository: Path, make_server: ServerFactory) -> None:
    # One column holding a vector per row, as embeddings are stored: refused as a pandas column of arrays is,
    # but told how to give them (it was "not numbers; every column is a feature", or "the file has 1")
    save_model(build_add_model(), repository, "add", 1)  # a, b: [batch, 3]; n: [batch, 1]
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: [batch, 4]
    server = make_server(repository)
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(np.arange(12, dtype=np.float32)), 4)
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"column 'x' of the Arrow table holds fixed_size_list<item: float>\[4\] values, a list per row; "
        r"input x: tensor\(float\) \[batch, 4\] takes one column per feature: x_0, x_1, \.\.\.; or pass the "
        r"inputs as a mapping of input name to array of shape \(rows, features\)",
    ):
        list(server.predict_many("scale", pa.table({"x": vectors})))
    with pytest.raises(inprocserve.InvalidInputError, match=r"column 'x' of the Arrow table holds list<item: float>"):
        server.predict("scale", pa.table({"x": pa.array([[1.0, 2.0, 3.0, 4.0]], pa.list_(pa.float32()))}))
    triples = pa.array([[1.0, 2.0, 3.0]] * 2, pa.list_(pa.float32(), 3))
    with pytest.raises(inprocserve.InvalidInputError, match=r"column 'a' of the Arrow table holds fixed_size_list"):
        list(server.predict_many("add", pa.table({"a": triples, "b": triples, "n": [1, 2]})))
    with pytest.raises(inprocserve.InvalidInputError, match=r"input n: .* takes one value per row: convert the column"):
        list(server.predict_many("add", pa.table({**{f"{x}_{i}": [1.0] for x in "ab" for i in range(3)}, "n": [[1]]})))
    with pytest.raises(  # a column of lists not named after the input, in a one-input model's matrix
        inprocserve.InvalidInputError,
        match=r"column 'embedding' of the Arrow table holds fixed_size_list<item: float>\[4\] values, a list per "
        r"row, not numbers; every column is a feature",
    ):
        list(server.predict_many("scale", pa.table({"embedding": vectors})))


def test_a_column_of_another_type_for_a_text_input_is_told_to_be_cast(churn: inprocserve.Server) -> None:
    # (it was "holds a int64, not text at position 0", a numpy type's name, or "a bytes")
    table = customers(4)
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"column 'city' of the Arrow table holds int64 values; input 'city' takes text: convert the column "
        r"\(pyarrow: \.cast\(pa\.string\(\)\)\)",
    ):
        list(churn.predict_many("churn", table.set_column(2, "city", pa.array(np.arange(4)))))
    with pytest.raises(inprocserve.InvalidInputError, match=r"column 'city' of the Arrow table holds binary values"):
        list(churn.predict_many("churn", table.set_column(2, "city", pa.array([b"oslo"] * 4))))


def test_a_column_of_nulls_alone_is_missing_values_as_a_typed_columns_nulls(churn: inprocserve.Server) -> None:
    # pa.table({"age": [None, ...]}) infers the type null: it was "holds null values; ... convert the column"
    table = customers(4)
    assert all(np.isnan(scores_of(list(churn.predict_many("churn", table.set_column(3, "age", pa.nulls(4)))))))
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'n' of the Arrow table has a missing value \(null\) at position 0"
    ):
        list(churn.predict_many("churn", table.set_column(1, "n", pa.nulls(4))))
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'city' of the Arrow table holds a missing value at position 0"
    ):
        list(churn.predict_many("churn", table.set_column(2, "city", pa.nulls(4))))


def test_numbered_columns_too_few_name_the_table_not_a_file(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_add_model(), repository, "add", 1)  # a, b: [batch, 3]; n: [batch, 1]
    columns = {name: [1.0] for name in ("a_0", "a_1", "b_0", "b_1", "b_2")}
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"takes 3 values per row; the table has 2: name columns a_0"
    ):
        list(make_server(repository).predict_many("add", pa.table({**columns, "n": [1]})))


def test_a_null_in_a_boolean_column_is_nan_for_a_float_input_as_in_an_integer_column(churn: inprocserve.Server) -> None:
    # booleans are numbers to a float input, and a null is its NaN: it was "holds bool values ... convert the
    # column" (booleans without a null are taken); for an integer input, "a missing value (None)", not "(null)"
    table = customers(6)
    flags = pa.array([True, None, False, True, False, True])
    scores = scores_of(list(churn.predict_many("churn", table.set_column(3, "age", flags))))
    assert [i for i, score in enumerate(scores) if np.isnan(score)] == [1]
    answer = churn.predict("churn", table.set_column(3, "age", flags).to_batches()[0].slice(0, 1))
    assert not np.isnan(answer["output_probability"][0][1])
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'n' of the Arrow table has a missing value \(null\) at position 1"
    ):
        list(churn.predict_many("churn", table.set_column(1, "n", flags.dictionary_encode())))


def test_the_index_pandas_wrote_in_a_parquet_file_is_no_feature(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    # df.to_parquet() keeps an index other than 0, 1, ... as a column that pandas reads back as the index: read as a
    # table, it was one more feature of the matrix ("got shape [3, 5]"), or silently so where the width is open
    pd = pytest.importorskip("pandas")
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: [batch, 4]
    server = make_server(repository)
    matrix = np.arange(20, dtype=np.float32).reshape(5, 4)
    frame = pd.DataFrame(matrix, columns=list("pqrs"))
    frame.iloc[[0, 2, 3]].to_parquet(tmp_path / "rows.parquet")  # its index 0, 2, 3: __index_level_0__
    frame.set_index(pd.Index(list("abcde"), name="id")).iloc[[0, 2, 3]].to_parquet(tmp_path / "ids.parquet")
    for path in (tmp_path / "rows.parquet", tmp_path / "ids.parquet"):
        (answer,) = server.predict_many("scale", pq.read_table(path))
        np.testing.assert_array_equal(answer["y"], matrix[[0, 2, 3]] * 2)
        answers = list(server.predict_many("scale", pq.ParquetFile(path).iter_batches(batch_size=2)))
        np.testing.assert_array_equal(np.concatenate([answer["y"] for answer in answers]), matrix[[0, 2, 3]] * 2)


def test_a_column_numpy_cannot_hold_is_an_invalid_input_naming_it(churn: inprocserve.Server) -> None:
    # (a union column: pyarrow's ArrowNotImplementedError "No known equivalent Pandas block" came out as it was)
    table = customers(3)
    either = pa.UnionArray.from_sparse(pa.array([0, 1, 0], pa.int8()), [pa.array([1.0, 2.0, 3.0]), pa.array([1, 2, 3])])
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"column 'age' of the Arrow table holds sparse_union<0: double=0, 1: int64=1> values, which numpy "
        r"cannot hold .*: convert the column \(pyarrow: \.cast",
    ):
        list(churn.predict_many("churn", table.set_column(3, "age", either)))


def test_a_tensor_column_is_refused_as_a_column_of_lists(repository: Path, make_server: ServerFactory) -> None:
    # Arrow's own type for a vector per row (FixedShapeTensorArray.from_numpy_ndarray(matrix)) is a list column
    # under an extension type: it was "takes 3 values per row; the table has 1" for one of several inputs, and
    # "not numbers; every column is a feature" for a one-input model, as a column of lists was
    save_model(build_add_model(), repository, "add", 1)  # a, b: [batch, 3]; n: [batch, 1]
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: [batch, 4]
    server = make_server(repository)
    triples = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ones((2, 3), np.float32))
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"column 'a' of the Arrow table holds extension<arrow\.fixed_shape_tensor.*> values, a list per row; "
        r"input a: tensor\(float\) \[batch, 3\] takes one column per feature: a_0, a_1, \.\.\.",
    ):
        list(server.predict_many("add", pa.table({"a": triples, "b": triples, "n": [1, 2]})))
    vectors = pa.FixedShapeTensorArray.from_numpy_ndarray(np.ones((2, 4), np.float32))
    with pytest.raises(inprocserve.InvalidInputError, match=r"column 'x' of the Arrow table holds extension<.*a list"):
        server.predict("scale", pa.table({"x": vectors}))


def test_a_dictionary_encoded_column_of_string_views_is_text(churn: inprocserve.Server, repository: Path) -> None:
    # pyarrow has no kernel to decode it (nor to cast it to string): it was refused as a column "numpy cannot
    # hold", told to .cast(...) it, and before that pyarrow's ArrowNotImplementedError came out of predict_many
    if not hasattr(pa, "string_view"):
        pytest.skip("pyarrow < 16 has no string_view")
    table = customers(6)
    views = table.column("city").cast(pa.string()).cast(pa.string_view()).dictionary_encode()
    answers = list(churn.predict_many("churn", table.set_column(2, "city", views)))
    assert scores_of(answers) == raw_scores(repository, table)
    batch = table.set_column(2, "city", views).combine_chunks().to_batches()[0]
    assert scores_of([churn.predict("churn", batch)]) == raw_scores(repository, table)
    cities = pa.array(["oslo", None, "rome", "lima", "oslo", "rome"], pa.string_view()).dictionary_encode()
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'city' of the Arrow table holds a missing value at position 1"
    ):
        list(churn.predict_many("churn", table.set_column(2, "city", cities)))


def test_a_table_with_a_null_boolean_scores_the_same_read_through_pandas(churn: inprocserve.Server) -> None:
    # A boolean column with a missing value comes out of a pandas frame as objects (True, None or <NA>): the
    # table was scored (its null a float input's NaN) and the same rows as a frame refused, "holds object values
    # ... convert the column"
    pd = pytest.importorskip("pandas", reason="pandas is a test dependency (pip install -e '.[dev]')")
    flags = [True, None, False, True, False, True]
    table = customers(6).set_column(3, "age", pa.array(flags))
    scores = scores_of(list(churn.predict_many("churn", table)))
    assert [i for i, score in enumerate(scores) if np.isnan(score)] == [1]
    columns = {name: table.column(name).to_pylist() for name in table.column_names}
    # what table.to_pandas() makes of it, and pandas' nullable booleans, its own and Arrow's
    for ages in (
        pd.Series(flags, dtype=object),
        pd.array(flags, "boolean"),
        pd.array(flags, pd.ArrowDtype(pa.bool_())),
    ):
        frame = pd.DataFrame({**columns, "age": ages})
        assert np.array_equal(scores_of(list(churn.predict_many("churn", frame))), scores, equal_nan=True)
        assert np.array_equal(scores_of([churn.predict("churn", frame)]), scores, equal_nan=True)
    with pytest.raises(  # (objects that are not all booleans or missing values are still refused)
        inprocserve.InvalidInputError, match=r"column 'age' of the data frame holds object values"
    ):
        list(churn.predict_many("churn", pd.DataFrame({**columns, "age": [True, None, "no", 1, 0, 1]})))


def test_a_stream_of_record_batches_given_to_the_wrong_call_is_told_which_call_scores_it(
    repository: Path, make_server: ServerFactory
) -> None:
    # predict(model, reader) said "element #0 is RecordBatchReader (ragged or non-numeric values)", and
    # predict_many(model, dataset) "got InMemoryDataset", neither saying what to do
    import pyarrow.dataset as ds

    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    table = pa.table({f"x_{i}": [1.0, 2.0] for i in range(4)})
    for stream in (table.to_reader(), ds.dataset(table)):
        with pytest.raises(inprocserve.InvalidInputError, match="a stream of batches: score it with predict_many"):
            server.predict("scale", stream)
    with pytest.raises(TypeError, match=r"got InMemoryDataset \(a pyarrow dataset: pass dataset.to_batches\(\)\)"):
        server.predict_many("scale", ds.dataset(table))
    answers = server.predict_many("scale", ds.dataset(table).to_batches())
    assert [answer["y"].tolist() for answer in answers] == [[[2.0] * 4, [4.0] * 4]]
