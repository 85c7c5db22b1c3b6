"""A remote version that never merges nor slices requests (``rows_independent = "no"``) refuses a request whose
inputs differ in rows (``a[?, 4]`` of 1 row beside ``b[?, 4]`` of 3), which a local one takes since the
signature's ``apart_rows``: its backend checks each output's rows against the first input's, and failed such a
request as the server's fault (``InferenceError: output 'yb' has shape (3, 1) for a batch of 1 rows``, a 500)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inprocserve import BatchingConfig, InvalidInputError, ModelConfig, WarmupConfig
from inprocserve._remote_model import RemoteModel
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .test_leftovers26_rows_apart import FEEDS, _two_sums
from .test_remote_flask import RemoteApp


def test_a_remote_version_never_merged_refuses_inputs_of_different_rows_as_the_client_s_mistake(
    tmp_path: Path, repository: Path, make_server: ServerFactory
) -> None:
    served = tmp_path / "served"
    model = _two_sums()
    save_model(model, served, "two", 1)
    (served / "two" / "config.toml").write_text('[batching]\nrows_independent = "no"\n')
    app = RemoteApp(served)
    try:
        server = make_server(repository)
        config = ModelConfig(warmup=WarmupConfig(enabled=False), batching=BatchingConfig(rows_independent="no"))
        server.load("two", version=1, remote=RemoteModel(url=app.url, model="two", version="1"), config=config)
        with pytest.raises(InvalidInputError, match="input 'b': has 3 rows but the other inputs have 1"):
            server.predict("two", FEEDS)
        same = {name: np.repeat(array[:1], 3, axis=0) for name, array in FEEDS.items()}
        raw = ort.InferenceSession(model.SerializeToString()).run(None, same)
        result = server.predict("two", same)  # (inputs of the same rows: served)
        np.testing.assert_array_equal(result["ya"], raw[0])
        np.testing.assert_array_equal(result["yb"], raw[1])
    finally:
        app.stop()
