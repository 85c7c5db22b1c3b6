"""``predict`` (and ``submit``, ``apredict``) take a pandas data frame as scikit-learn's ``predict`` does: its
columns are the model's inputs by name, as ``predict_many`` reads a frame (it used to be refused: "inputs must
be a mapping of input name to array ... got DataFrame")."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory
from .toolkit_models import build_column_transformer_pipeline

pd = pytest.importorskip("pandas", reason="pandas is a test dependency (pip install -e '.[dev]')")


@pytest.fixture
def server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_column_transformer_pipeline(), repository, "churn", 1)  # age: float, city: text, n: int64
    save_model(build_scale_model(2.0), repository, "scale", 1)  # x: float [batch, 4]
    return make_server(repository)


def test_a_view_predicts_on_a_one_row_data_frame(server: inprocserve.Server) -> None:
    frame = pd.DataFrame([{"customer_id": "c-1", "age": 31.5, "city": "rome", "n": 3}])  # e.g. from request JSON
    expected = server.predict(
        "churn",
        {"age": np.array([[31.5]], np.float32), "city": np.array([["rome"]], object), "n": np.array([[3]], np.int64)},
    )
    answer = server.predict("churn", frame)
    assert answer["output_probability"] == expected["output_probability"]
    assert server.submit("churn", frame).result(timeout=30)["output_probability"] == expected["output_probability"]
    assert asyncio.run(server.apredict("churn", frame))["output_probability"] == expected["output_probability"]


def test_a_missing_value_in_a_request_frame_is_the_callers_error(server: inprocserve.Server) -> None:
    frame = pd.DataFrame([{"age": 31.5, "city": None, "n": 3}])
    with pytest.raises(inprocserve.InvalidInputError, match="column 'city' of the data frame holds a missing value"):
        server.predict("churn", frame)


def test_a_one_input_models_frame_by_column_names_or_as_its_matrix(server: inprocserve.Server) -> None:
    named = pd.DataFrame({"row": [7, 8], **{f"x_{i}": [1.0 * i, 2.0 * i] for i in range(4)}})
    np.testing.assert_array_equal(server.predict("scale", named)["y"], [[0, 2, 4, 6], [0, 4, 8, 12]])
    plain = pd.DataFrame(np.ones((2, 4)), columns=list("pqrs"))
    np.testing.assert_array_equal(server.predict("scale", plain)["y"], np.full((2, 4), 2.0))
    gap = pd.DataFrame({"row": [7], "x_0": [1.0], "x_1": [2.0], "x_3": [3.0]})  # (x_2 left out: was a matrix)
    with pytest.raises(inprocserve.InvalidInputError, match="has columns up to 'x_3' but no 'x_2'"):
        server.predict("scale", gap)


def test_predict_many_reads_each_frame_of_an_iterable_by_column_names(server: inprocserve.Server) -> None:
    # A consumer that decodes each message into a frame: its batches were made arrays in column order, so a
    # model of several inputs refused them and a one-input model was scored on its columns as they stood.
    churn = [
        pd.DataFrame({"customer_id": ["c-1", "c-2"], "age": [31.5, 40.0], "city": ["rome", "oslo"], "n": [3, 4]}),
        pd.DataFrame({"n": [7], "city": ["rome"], "age": [22.0]}),
    ]
    answers = list(server.predict_many("churn", iter(churn)))
    assert [a["output_label"].tolist() for a in answers] == [
        server.predict("churn", f)["output_label"].tolist() for f in churn
    ]
    shuffled = pd.DataFrame({"x_1": [1.0, 5.0], "x_0": [0.0, 4.0], "x_3": [3.0, 7.0], "x_2": [2.0, 6.0]})
    (answer,) = server.predict_many("scale", [shuffled])
    np.testing.assert_array_equal(answer["y"], [[0, 2, 4, 6], [8, 10, 12, 14]])


def test_a_missing_value_in_a_frame_of_an_iterable_fails_at_that_batch(server: inprocserve.Server) -> None:
    good = pd.DataFrame({"age": [31.5], "city": ["rome"], "n": [3]})
    bad = pd.DataFrame({"age": [31.5], "city": [None], "n": [3]})
    answers = server.predict_many("churn", iter([good, bad, good]))
    assert len(next(answers)["output_label"]) == 1
    with pytest.raises(inprocserve.InvalidInputError, match="column 'city' of the data frame holds a missing value"):
        next(answers)


class Proxy:
    """A user's proxy for an array (a lazy or remote one): it forwards every attribute it lacks to the array."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix, self.asked = matrix, []

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.matrix

    def __getattr__(self, name: str) -> object:
        self.asked.append(name)
        return getattr(self.matrix, name)


def test_an_array_like_that_is_no_frame_is_not_asked_for_columns(server: inprocserve.Server) -> None:
    # Every request of a one-input model that was neither an ndarray nor a list was asked whether it was a frame
    # (its __getitem__, columns, shape: 1 to 4 µs, and a forwarded lookup each); a frame's class has `columns`.
    proxy = Proxy(np.ones((2, 4), np.float32))
    np.testing.assert_array_equal(server.predict("scale", proxy)["y"], np.full((2, 4), 2.0))
    assert "columns" not in proxy.asked
    assert server.predict("scale", memoryview(np.ones((1, 4), np.float32)))["y"].tolist() == [[2.0] * 4]


class Table:
    """A user's class holding a matrix, with its column names set on the instance, and no frame's class."""

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix, self.columns, self.shape = matrix, ["x"], matrix.shape

    def __getitem__(self, key: object) -> np.ndarray:
        return self.matrix[key]  # type: ignore[index]

    def to_numpy(self) -> np.ndarray:
        return self.matrix[:, :1]

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        return self.matrix


def test_predict_and_predict_many_agree_on_what_is_a_frame(server: inprocserve.Server) -> None:
    # A frame's class has `columns`: predict asked the class, predict_many the instance, and read such an
    # object as a frame (its one column named like the input) where predict read it as the array it is.
    table = Table(np.arange(8, dtype=np.float32).reshape(2, 4))
    np.testing.assert_array_equal(server.predict("scale", table)["y"], table.matrix * 2)
    (answer,) = server.predict_many("scale", table)
    np.testing.assert_array_equal(answer["y"], table.matrix * 2)
