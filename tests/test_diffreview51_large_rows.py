"""predict_many's runs of a whole input keep to ``batching.max_batch_bytes``, as the batcher's own runs do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import BatchingConfig, ModelConfig
from inprocserve.testing import save_model

from .test_large_rows import WIDE, build_doubling_model


def _batch_sizes(server: inprocserve.Server, name: str) -> dict[str, object]:
    return server.status()["models"][name]["versions"]["1"]["batch_size"]


def test_predict_many_of_a_whole_input_runs_no_more_rows_than_max_batch_bytes_allows(tmp_path: Path) -> None:
    save_model(build_doubling_model((1024,)), tmp_path, "narrow")  # 4 KiB rows, cheap per row
    config = ModelConfig(batching=BatchingConfig(max_batch_bytes=3 * 4096))
    with inprocserve.Server(repository=tmp_path, models={"narrow": config}) as server:
        answers = list(server.predict_many("narrow", np.ones((60, 1024), dtype=np.float32)))
        assert sum(answer["y"].shape[0] for answer in answers) == 60
        sizes = _batch_sizes(server, "narrow")
    # runs of 3 rows (12 KiB); a scoring job's run rows, raised towards 256 by the cheap per-row cost, made one
    # run of all 60
    assert (sizes["rows"], sizes["batches"]) == (60, 20), sizes


def test_predict_many_of_wide_rows_runs_within_the_default_64_mib(tmp_path: Path) -> None:
    rows = 12
    save_model(build_doubling_model(WIDE), tmp_path, "wide")  # 8 MiB rows: 8 per run of 64 MiB
    with inprocserve.Server(repository=tmp_path) as server:
        for answer in server.predict_many("wide", np.ones((rows, *WIDE), dtype=np.float32)):
            assert float(answer["y"][-1, -1, -1]) == 2.0
        sizes = _batch_sizes(server, "wide")
    assert (sizes["rows"], sizes["batches"]) == (rows, 2), sizes


def test_merging_off_still_checks_rows_where_max_batch_bytes_slices_a_request(tmp_path: Path) -> None:
    # y = x - mean(x over the rows): a row's answer depends on the others, so a request must run whole
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1024])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1024])
    mean = helper.make_node("ReduceMean", ["x"], ["m"], axes=[0], keepdims=1)
    centre = helper.make_node("Sub", ["x", "m"], ["y"])
    model = helper.make_model(
        helper.make_graph([mean, centre], "centre", [x], [y]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    save_model(model, tmp_path, "centre")
    # merging off, and no request past max_batch_size: the load skipped the check of its rows, but 4 KiB rows
    # of a 12 KiB max_batch_bytes ran a request of 7 rows in slices of 3, 3 and 1, each centred on its own
    config = ModelConfig(batching=BatchingConfig(enabled=False, max_request_rows=64, max_batch_bytes=3 * 4096))
    rows = np.arange(7, dtype=np.float32)[:, None] * np.ones((7, 1024), dtype=np.float32)
    with inprocserve.Server(repository=tmp_path, models={"centre": config}) as server:
        answer = server.predict("centre", {"x": rows})["y"]
    assert answer[:, 0].tolist() == [-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0]


def test_the_thread_probe_counts_its_rows_at_the_length_it_runs_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("inprocserve._ort_rules.usable_cores", lambda: 2)  # (one core: no probe at all)
    # A convolution of kernel 5 over a dynamic time axis, 32768 channels: it fails on 1 and 2 steps and runs on
    # 16, where a row is 2 MiB; counted at 1 step (128 KiB), the probe made up 64 rows, 128 MiB of input
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 32768, "time"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1, "steps"])
    kernel = helper.make_tensor("w", TensorProto.FLOAT, [1, 32768, 5], [0.0] * (32768 * 5))
    conv = helper.make_node("Conv", ["x", "w"], ["y"])
    model = helper.make_model(
        helper.make_graph([conv], "conv", [x], [y], [kernel]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    save_model(model, tmp_path, "conv")
    config = ModelConfig(batching=BatchingConfig(rows_independent="yes"))
    with (
        caplog.at_level("INFO", logger="inprocserve"),
        inprocserve.Server(repository=tmp_path, models={"conv": config}),
    ):
        said = [record.getMessage() for record in caplog.records if "on one thread; using" in record.getMessage()]
    assert len(said) == 1, said
    assert "a 32-row run takes" in said[0], said
