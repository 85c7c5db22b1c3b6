"""Models shaped like the data-science toolkits' exports (tests/toolkit_models.py says which), served end to
end and compared with onnxruntime run directly on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import inprocserve
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .toolkit_models import build_column_transformer_pipeline


@pytest.fixture
def pipeline(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    save_model(build_column_transformer_pipeline(), repository, "churn", 1)
    return make_server(repository)


def test_a_column_transformer_pipeline_answers_as_onnxruntime_does(
    pipeline: inprocserve.Server, repository: Path
) -> None:
    feeds = {
        "age": np.array([[31.0], [58.0], [44.0]], np.float32),
        "city": np.array([["paris"], ["oslo"], ["lima"]], dtype=object),
        "n": np.array([[2], [9], [0]], np.int64),
    }
    session = onnxruntime.InferenceSession(str(repository / "churn" / "1" / "model.onnx"))
    labels, maps = session.run(None, feeds)
    answer = pipeline.predict(
        "churn", {"age": [[31.0], [58.0], [44.0]], "city": [["paris"], ["oslo"], ["lima"]], "n": [[2], [9], [0]]}
    )
    assert answer["output_label"].tolist() == labels.tolist()
    assert answer["output_probability"] == maps


def test_columns_of_different_rows_are_invalid_input_naming_the_column(pipeline: inprocserve.Server) -> None:
    # One input per column, each [None, 1]: a column one row short failed inside onnxruntime's Concat, an
    # InferenceError (a 500 in the plug-ins) that named no input.
    with pytest.raises(inprocserve.InvalidInputError, match=r"input 'city': has 1 rows but the other inputs have 2"):
        pipeline.predict("churn", {"age": [[31.0], [58.0]], "city": [["paris"]], "n": [[2], [9]]})
    assert pipeline.predict("churn", {"age": [[31.0]], "city": [["paris"]], "n": [[2]]})["output_label"].shape == (1,)
