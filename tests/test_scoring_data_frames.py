"""``predict_many`` over a pandas data frame: its columns are the model's inputs by name, as a CSV file's are for
the ``score`` command (a frame used to be iterated, which yields its column names: "got a scalar str")."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import inprocserve
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .conftest import ServerFactory, build_difference_model
from .toolkit_models import build_column_transformer_pipeline

pd = pytest.importorskip("pandas", reason="pandas is a test dependency (pip install -e '.[dev]')")


@pytest.fixture
def churn(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_column_transformer_pipeline(), repository, "churn", 1)  # age: float, city: text, n: int64
    return make_server(repository)


def customers(rows: int = 150) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "customer_id": [f"c-{i}" for i in range(rows)],  # a column no input takes
            "n": rng.integers(0, 9, rows),
            "city": rng.choice(["oslo", "paris", "rome", "lima"], rows),
            "age": rng.uniform(18, 80, rows),  # float64, for a float32 input
        }
    )


def test_a_data_frame_is_scored_by_its_column_names(churn: inprocserve.Server, repository: Path) -> None:
    frame = customers()
    answers = list(churn.predict_many("churn", frame))
    session = onnxruntime.InferenceSession(str(repository / "churn" / "1" / "model.onnx"))
    _, maps = session.run(
        None,
        {
            "age": frame[["age"]].to_numpy(np.float32),
            "city": frame[["city"]].to_numpy(object),
            "n": frame[["n"]].to_numpy(np.int64),
        },
    )
    scored = [scores[1] for answer in answers for scores in answer["output_probability"]]
    assert scored == [scores[1] for scores in maps]
    assert len(set(scored)) > 100  # (every row its own score: a column read in the wrong place would show)


@pytest.mark.parametrize("dtype", ["object", "string"])  # (a nullable "string" column's missing value is pd.NA)
def test_a_text_column_with_a_missing_value_is_refused_before_any_row_is_scored(
    churn: inprocserve.Server, dtype: str
) -> None:
    frame = customers()
    frame["city"] = frame["city"].astype(dtype)
    frame.loc[7, "city"] = None
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"column 'city' of the data frame holds a missing value at position 7"
    ):
        list(churn.predict_many("churn", frame))


def test_nan_in_a_float_column_follows_the_versions_nan_policy_and_an_integer_column_refuses_it(
    churn: inprocserve.Server, repository: Path, make_server: ServerFactory
) -> None:
    frame = customers()
    frame.loc[3, "age"] = float("nan")  # pandas' missing value in a float column: a float input's NaN, as in an array
    scores = [row[0] for answer in churn.predict_many("churn", frame) for row in answer["output_probability"]]
    assert [i for i, score in enumerate(scores) if np.isnan(score)] == [3]
    (repository / "churn" / "config.toml").write_text('nan_policy = "reject"\n')
    strict = make_server(repository)
    with pytest.raises(inprocserve.InvalidInputError, match="NaN"):
        list(strict.predict_many("churn", frame))
    frame = customers()
    frame["n"] = frame["n"].astype("Int64")  # a nullable integer column: its missing value is no int64
    frame.loc[5, "n"] = None
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"'n' of the data frame has a missing value \(NaN\) at position 5"
    ):
        list(churn.predict_many("churn", frame))


def test_an_integer_input_given_a_column_of_floats_says_to_convert_it(churn: inprocserve.Server) -> None:
    frame = customers()
    frame["n"] = frame["n"] + 0.5
    with pytest.raises(
        inprocserve.InvalidInputError, match=r"column 'n' of the data frame holds float64 values; input 'n' takes int64"
    ):
        list(churn.predict_many("churn", frame))


def test_a_frame_without_a_column_for_an_input_names_it(churn: inprocserve.Server) -> None:
    with pytest.raises(inprocserve.InvalidInputError, match=r"no column for the model's input city"):
        list(churn.predict_many("churn", customers().drop(columns="city")))


def test_numbered_columns_and_a_one_input_frame(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_add_model(), repository, "add", 1)  # a, b: [batch, 3]; n: [batch, 1]
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: [batch, 4]
    server = make_server(repository)
    a = np.arange(15, dtype=np.float32).reshape(5, 3)
    frame = pd.DataFrame({**{f"a_{i}": a[:, i] for i in range(3)}, **{f"b_{i}": a[:, i] for i in range(3)}})
    frame["n"] = np.arange(5)
    (answer,) = server.predict_many("add", frame)
    np.testing.assert_array_equal(answer["total"], a * 2)
    # a one-input model whose input no column names takes the whole frame as its matrix
    (answer,) = server.predict_many("scale", pd.DataFrame(np.ones((3, 4), np.float32), columns=list("pqrs")))
    np.testing.assert_array_equal(answer["y"], np.full((3, 4), 2.0))


def test_a_frame_built_from_a_matrix_is_a_one_input_models_matrix(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: [batch, 4]
    server = make_server(repository)
    frame = pd.DataFrame(np.arange(12, dtype=np.float32).reshape(3, 4))  # column labels 0, 1, 2, 3
    (answer,) = server.predict_many("scale", frame)  # (it was iterated: "got a scalar int")
    np.testing.assert_array_equal(answer["y"], np.arange(12).reshape(3, 4) * 2)


def test_a_number_too_large_for_a_half_precision_input_is_refused(repository: Path, make_server: ServerFactory) -> None:
    from onnx import TensorProto

    save_model(build_difference_model("h", "k", dtype=TensorProto.FLOAT16), repository, "half", 1)
    server = make_server(repository)
    frame = pd.DataFrame({"h": [1.5, 1e6], "k": [0.5, 1.0]})
    with pytest.raises(inprocserve.InvalidInputError, match=r"column 'h' .* holds 1000000.0 at position 1, beyond"):
        list(server.predict_many("half", frame))
    (answer,) = server.predict_many("half", frame.iloc[:1])
    np.testing.assert_array_equal(answer["difference"], [[1.0]])


def test_an_input_of_several_columns_is_built_in_one_copy_of_the_frame(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0, features=8), repository, "scale", 1)  # x: [batch, 8] float32
    server = make_server(repository)
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({f"x_{i}": rng.random(250_000) for i in range(8)})  # float64 columns: each is cast
    x_bytes = 250_000 * 8 * 4
    tracemalloc.start()
    try:
        answers = server.predict_many("scale", frame, batch_rows=1_000)
        first = next(answers)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(first["y"], frame.iloc[:1_000].to_numpy(np.float32) * 2)
    answers.close()
    # (the cast columns were gathered and then stacked: twice x's size at the peak)
    assert peak < 1.5 * x_bytes, (peak, x_bytes)


def test_a_boolean_input_takes_ones_and_zeros_but_no_other_integer(
    repository: Path, make_server: ServerFactory
) -> None:
    from onnx import TensorProto

    save_model(build_difference_model("flag", "other", dtype=TensorProto.BOOL), repository, "flags", 1)
    server = make_server(repository)
    (answer,) = server.predict_many("flags", pd.DataFrame({"flag": [1, 0], "other": [False, False]}))
    np.testing.assert_array_equal(answer["difference"], [[1.0], [0.0]])
    with pytest.raises(inprocserve.InvalidInputError, match=r"column 'flag' .* holds 5 at position 1; input 'flag'"):
        list(server.predict_many("flags", pd.DataFrame({"flag": [1, 5], "other": [False, False]})))


def test_a_nullable_boolean_column_with_a_missing_value_is_refused_by_position(
    repository: Path, make_server: ServerFactory
) -> None:
    from onnx import TensorProto

    save_model(build_difference_model("flag", "other", dtype=TensorProto.BOOL), repository, "flags", 1)
    server = make_server(repository)
    flags = pd.Series([True, False, True], dtype="boolean")  # pandas' nullable booleans
    (answer,) = server.predict_many("flags", pd.DataFrame({"flag": flags, "other": [False, False, False]}))
    np.testing.assert_array_equal(answer["difference"], [[1.0], [0.0], [1.0]])
    flags[1] = pd.NA  # (read as objects, it was "holds object values ... convert the column", no position)
    with pytest.raises(
        inprocserve.InvalidInputError,
        match=r"column 'flag' of the data frame has a missing value \(<NA>\) at position 1",
    ):
        list(server.predict_many("flags", pd.DataFrame({"flag": flags, "other": [False, False, False]})))


def test_a_frame_whose_columns_do_not_fit_is_told_so_in_a_frames_terms(churn: inprocserve.Server) -> None:
    frame = customers().rename(columns={"city": "town"})
    with pytest.raises(inprocserve.InvalidInputError) as caught:
        list(churn.predict_many("churn", frame))
    assert str(caught.value) == (
        "the data frame: no column for the model's input city: tensor(string) [?, 1]; name a column 'city', or "
        "'city_0', 'city_1', ... for its features (the frame has 'customer_id', 'n', 'town', 'age')"
    )  # (it spoke of "the header, the file's first line" and "input the data frame")
    frame = pd.concat([customers(), customers()[["age"]]], axis=1)
    with pytest.raises(inprocserve.InvalidInputError, match=r"^the data frame has two columns named 'age': rename"):
        list(churn.predict_many("churn", frame))


def test_a_series_is_one_whole_input_not_an_iterable_of_batches(repository: Path, make_server: ServerFactory) -> None:
    from inprocserve.testing import build_gather_model

    save_model(build_gather_model(table_rows=10, width=2), repository, "gather", 1)  # index: int64 [batch]
    server = make_server(repository)
    # (iterated, a Series yields its values: "a batch needs a leading row axis; got a scalar int")
    answers = list(server.predict_many("gather", pd.Series([3, 0, 9], name="index"), batch_rows=2))
    assert [answer["rows"].tolist() for answer in answers] == [[[6, 7], [0, 1]], [[18, 19]]]


def test_a_memoryview_is_one_whole_input_as_predict_takes_it(repository: Path, make_server: ServerFactory) -> None:
    from inprocserve.testing import build_gather_model

    save_model(build_gather_model(table_rows=10, width=2), repository, "gather", 1)  # index: int64 [batch]
    server = make_server(repository)
    indexes = memoryview(np.array([3, 0, 9]))  # (a buffer from a decoder, a shared memory block)
    assert server.predict("gather", indexes)["rows"].tolist() == [[6, 7], [0, 1], [18, 19]]
    # (iterated, a memoryview yields its numbers: "a batch needs a leading row axis; got a scalar int")
    answers = list(server.predict_many("gather", indexes, batch_rows=2))
    assert [answer["rows"].tolist() for answer in answers] == [[[6, 7], [0, 1]], [[18, 19]]]


def test_a_nullable_integer_series_with_a_missing_value_is_told_so_not_to_cast_it(
    repository: Path, make_server: ServerFactory
) -> None:
    from inprocserve.testing import build_gather_model

    save_model(build_gather_model(table_rows=10, width=2), repository, "gather", 1)  # index: int64 [batch]
    server = make_server(repository)
    indexes = pd.Series([3, None, 9], dtype="Int64")  # its NA comes out of numpy as NaN in float64
    # (it was told to cast it with array.astype('int64'), which makes NaN an arbitrary integer, scored unseen)
    missing = r"got float64 holding NaN \(a missing value\) in row 1, which int64 cannot hold; fill or drop"
    with pytest.raises(inprocserve.InvalidInputError, match=missing):
        server.predict("gather", indexes)
    with pytest.raises(inprocserve.InvalidInputError, match=missing):
        list(server.predict_many("gather", indexes))
