"""Models whose fixed row is large: the load's made-up runs, the runs of merged rows, and predict_many's window
are bounded in bytes, not in rows alone."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import BatchingConfig, ConfigurationError, ModelConfig
from inprocserve.testing import save_model

# A row of 512 x 4096 float32: 8 MiB of input (and as much output)
WIDE = (512, 4096)
WIDE_ROW_BYTES = 4 * WIDE[0] * WIDE[1]


def build_doubling_model(inner: tuple[int, ...]) -> object:
    """y = 2 * x over rows of the fixed shape ``inner``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *inner])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", *inner])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    node = helper.make_node("Mul", ["x", "two"], ["y"])
    model = helper.make_model(
        helper.make_graph([node], "double", [x], [y], [two]), opset_imports=[helper.make_opsetid("", 13)]
    )
    model.ir_version = 8
    return model


@pytest.fixture
def wide_repository(tmp_path: Path) -> Path:
    save_model(build_doubling_model(WIDE), tmp_path, "wide")
    return tmp_path


def _version_status(server: inprocserve.Server, name: str) -> dict[str, object]:
    return server.status()["models"][name]["versions"]["1"]


def test_a_wide_rowed_model_loads_without_max_batch_size_rows_of_zeros(wide_repository: Path) -> None:
    # Measured in a process of its own: its peak RSS is the load's, with nothing else in it.
    script = textwrap.dedent(
        f"""
        import json, resource, sys
        import inprocserve
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with inprocserve.Server(repository={str(wide_repository)!r}) as server:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            status = server.status()["models"]["wide"]["versions"]["1"]
        print(json.dumps({{"growth_kib": peak - before, "state": status["state"]}}))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True)
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    assert facts["state"] == "ready"
    # 8 MiB rows: 64 made-up rows were 512 MiB of input and as much output (a growth of about 550 MB)
    assert facts["growth_kib"] < 384 * 1024, facts


def test_runs_of_wide_rows_hold_max_batch_bytes_by_default(wide_repository: Path) -> None:
    with inprocserve.Server(repository=wide_repository) as server:
        entry = _version_status(server, "wide")
        assert entry["max_batch_size"] == 64
        assert entry["max_batch_rows"] == (64 << 20) // WIDE_ROW_BYTES == 8
        rows = np.ones((20, *WIDE), dtype=np.float32)
        answer = server.predict("wide", {"x": rows})
        assert answer["y"].shape == rows.shape
        assert float(answer["y"][19, 511, 4095]) == 2.0
        sizes = _version_status(server, "wide")["batch_size"]
        # a request of 20 rows ran in slices of 8, 8 and 4 (not as one run of 160 MiB)
        assert sizes["rows"] == 20
        assert sizes["batches"] == 3, sizes


def test_max_batch_bytes_bounds_merged_runs_and_keeps_preferred_sizes_within(tmp_path: Path) -> None:
    save_model(build_doubling_model((1024,)), tmp_path, "narrow")  # 4 KiB rows
    config = ModelConfig(batching=BatchingConfig(max_batch_bytes=3 * 4096, preferred_batch_sizes=(2, 16)))
    with inprocserve.Server(repository=tmp_path, models={"narrow": config}) as server:
        entry = _version_status(server, "narrow")
        assert entry["max_batch_rows"] == 3
        answer = server.predict("narrow", {"x": np.ones((7, 1024), dtype=np.float32)})
        assert answer["y"].shape == (7, 1024)
        sizes = _version_status(server, "narrow")["batch_size"]
        assert (sizes["rows"], sizes["batches"]) == (7, 3), sizes


def test_small_rows_keep_max_batch_size(tmp_path: Path) -> None:
    save_model(build_doubling_model((4,)), tmp_path, "small")
    with inprocserve.Server(repository=tmp_path) as server:
        assert _version_status(server, "small")["max_batch_rows"] == 64


@pytest.mark.parametrize("value", [0, -1, 2**40 + 1, 1.5, True, "64MiB"])
def test_max_batch_bytes_out_of_range_is_refused(value: object) -> None:
    with pytest.raises(ConfigurationError, match=r"batching.max_batch_bytes must be >= 1 and <= 1099511627776"):
        BatchingConfig(max_batch_bytes=value)  # type: ignore[arg-type]


def test_predict_many_keeps_wide_rows_in_flight_within_a_byte_bound(wide_repository: Path) -> None:
    read = 0
    answered = 0
    most_ahead = 0

    def batches():  # type: ignore[no-untyped-def]
        nonlocal read, most_ahead
        row = np.ones((1, *WIDE), dtype=np.float32)
        for _ in range(40):
            read += 1
            most_ahead = max(most_ahead, read - answered)
            yield {"x": row}

    with inprocserve.Server(repository=wide_repository) as server:
        for answer in server.predict_many("wide", batches()):
            assert answer["y"].shape == (1, *WIDE)
            answered += 1
    assert answered == 40
    # 64 MiB of 8 MiB rows, and the one being read: the window in rows (2 x 64 per session) read 40 ahead
    assert most_ahead <= (64 << 20) // WIDE_ROW_BYTES + 1, most_ahead
