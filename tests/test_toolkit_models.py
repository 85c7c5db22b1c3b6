"""Models shaped like the data-science toolkits' exports (tests/toolkit_models.py says which), served end to
end and compared with onnxruntime run directly on the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
import pytest

import inprocserve
from inprocserve.__main__ import main
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .toolkit_models import build_column_transformer_pipeline, build_lightgbm_classifier


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


def test_a_lightgbm_classifier_whose_label_is_declared_of_one_row_is_batched_and_scored(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    # onnxmltools declares a LightGBM classifier's label [1]: taken at its word, the version was never
    # batched, `score` refused it ("without a batch axis") and a remote backend refused answers of several rows.
    model = save_model(build_lightgbm_classifier(), repository, "lgbm", 1)
    server = make_server(repository)
    version = server.status()["models"]["lgbm"]["versions"]["1"]
    assert version["batchable"] is True
    assert version["signature"]["outputs"][0] == {"name": "label", "type": "tensor(int64)", "shape": [None]}
    rows = np.random.default_rng(4).standard_normal((7, 4)).astype(np.float32)
    labels, probabilities = onnxruntime.InferenceSession(str(model)).run(None, {"input": rows})
    answers = [server.submit("lgbm", {"input": rows[i : i + 1]}) for i in range(7)]
    assert [answer.result(30)["label"].tolist() for answer in answers] == [[label] for label in labels.tolist()]
    np.save(tmp_path / "rows.npy", rows)
    assert main(["score", "--quiet", str(model), str(tmp_path / "rows.npy"), str(tmp_path / "out.npz")]) == 0
    with np.load(tmp_path / "out.npz") as out:
        assert out["label"].tolist() == labels.tolist()
        np.testing.assert_array_equal(out["probabilities"], probabilities)


def test_a_column_sent_as_a_flat_list_says_how_to_send_it(pipeline: inprocserve.Server) -> None:
    # df["age"].to_numpy() for an input skl2onnx declares [None, 1]: the refusal named the shapes only
    with pytest.raises(inprocserve.InvalidInputError, match=r"input 'age'.*array.reshape\(-1, 1\)"):
        pipeline.predict(
            "churn", {"age": np.array([31.0, 58.0], np.float32), "city": [["paris"], ["oslo"]], "n": [[2], [9]]}
        )


def test_rows_independent_yes_runs_no_made_up_rows_to_correct_a_label_declared_of_one_row(
    repository: Path, make_server: ServerFactory
) -> None:
    # "yes" is the setting for a model that fails, or takes minutes, on made-up rows: it skips every run of
    # them at load. The correction of a [1] label ran them all the same (a model looping max|x| * 3e6 times
    # took its load from 0.07 s to 9.9 s), so the declared shape stands, and the version runs unbatched.
    save_model(build_lightgbm_classifier(), repository, "lgbm", 1)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(rows_independent="yes"))
    server = make_server(repository, config=config)
    version = server.status()["models"]["lgbm"]["versions"]["1"]
    assert version["signature"]["outputs"][0] == {"name": "label", "type": "tensor(int64)", "shape": [1]}
    assert version["batchable"] is False
    rows = np.random.default_rng(4).standard_normal((3, 4)).astype(np.float32)
    assert server.predict("lgbm", {"input": rows})["label"].shape == (3,)
