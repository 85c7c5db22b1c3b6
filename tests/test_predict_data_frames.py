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
