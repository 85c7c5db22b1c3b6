"""What is logged under a steady fault: the first occurrence, then at most once a minute with a count, never a
line per request, batch, copy or poll (under load that floods a paid log store and buries other lines)."""

from __future__ import annotations

import io
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inprocserve import ModelConfig, RolloutConfig, ShadowConfig, v2
from inprocserve._control import CONTROL_FILENAME
from inprocserve._log_limit import LOG_EVERY_S, LogLimit, since
from inprocserve.testing import ManualClock, build_gather_model, save_model

from .conftest import ServerFactory


def lines(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if text in record.getMessage()]


def build_rows_of_three_model() -> onnx.ModelProto:
    """``y = reshape(x, [-1, 3])`` for ``x`` of 4 features: a request whose rows times 4 is not a multiple of 3
    passes validation and fails inside onnxruntime."""
    shape = onnx.numpy_helper.from_array(np.array([-1, 3], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "rows_of_three",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])],
        [shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_an_oip_model_that_fails_every_request_is_logged_once_a_minute_not_per_request(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_rows_of_three_model(), repository, "reshape", 1)
    (repository / "reshape" / "config.toml").write_text("[warmup]\nrows = 3\n")
    server = make_server(repository)
    endpoints = v2.Endpoints(lambda: server)
    body, headers = v2.encode_infer_request({"x": np.ones((1, 4), np.float32)}, binary=False)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for _ in range(200):
            response = endpoints.handle("POST", "/v2/models/reshape/infer", dict(headers), io.BytesIO(body).read)
            assert response.status == 500
    failed = lines(caplog, "Open Inference Protocol request")
    assert len(failed) == 1 and failed[0].levelno == logging.WARNING
    assert "cannot be reshaped" in failed[0].getMessage()


def test_a_repository_folder_that_is_gone_is_logged_when_it_goes_and_when_it_is_back(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository)
    shutil.move(repository, repository.with_name("away"))
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for _ in range(100):  # a poll every second for 100 s: one line, not 100
            assert "is not a directory" in server.refresh()[0]
        assert server.predict("gather", {"index": np.array([1])})["rows"].shape == (1, 4)
        assert len(lines(caplog, "cannot scan the model repository")) == 1
        shutil.move(repository.with_name("away"), repository)
        assert server.refresh() == [] and server.refresh() == []
    assert len(lines(caplog, "can be scanned again")) == 1


def test_a_shadow_version_that_fails_every_copy_is_logged_once_a_minute_not_per_copy(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_gather_model(table_rows=10), repository, "gather", 1)
    save_model(build_gather_model(table_rows=2), repository, "gather", 2)  # row 5 is past its table
    rollout = RolloutConfig(stable=1, shadow=ShadowConfig(versions=(2,)))
    server = make_server(repository, shadow_budget=1.0, models={"gather": ModelConfig(rollout=rollout)})

    def shadow_errors() -> int:
        return int(server.status()["models"]["gather"]["shadow"].get("2", {}).get("errors", 0))

    with caplog.at_level(logging.INFO, logger="inprocserve"):
        while shadow_errors() < 50:
            assert server.predict("gather", {"index": np.array([5])})["rows"][0, 0] == 20.0
    failed = lines(caplog, "shadow version 2 of model 'gather' failed")
    assert len(failed) == 1 and "INVALID_ARGUMENT" in failed[0].getMessage()


def test_a_steady_problem_is_logged_again_after_a_minute_with_the_count_since() -> None:
    clock = ManualClock()
    limit = LogLimit(clock=clock)
    assert limit.due("fraud") == 0  # the first time: log it
    assert [limit.due("fraud") for _ in range(500)] == [None] * 500
    assert limit.due("scale") == 0  # another problem is its own
    clock.advance(LOG_EVERY_S)
    assert limit.due("fraud") == 500 and since(500) == " (500 more since the last such line)"
    assert limit.ended("fraud") and not limit.ended("fraud")
    clock.advance(LOG_EVERY_S)  # (back within the minute it would be the same problem flapping: see below)
    assert limit.due("fraud") == 0  # it started again


def test_a_damaged_control_file_is_logged_once_and_its_repair_once(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository, control_interval_s=None)
    server.kill("gather")
    control_file = repository / CONTROL_FILENAME
    good = control_file.read_bytes()
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        control_file.write_bytes(good[: len(good) // 2])  # a hand edit or a broken sync
        for _ in range(100):  # its watcher's reads, a second apart
            server.sync_control()
        control_file.write_bytes(good)
        for _ in range(100):
            server.sync_control()
    assert len(lines(caplog, "is not valid JSON")) == 1
    assert len(lines(caplog, "can be read again")) == 1


def test_a_repository_folder_that_flaps_is_logged_once_a_minute_not_twice_per_flap(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # An unreliable mount, gone at one poll and back at the next: each time it came back the problem was
    # forgotten, so every flap logged the error and the "scanned again" line (240 lines for 120 failed polls,
    # twice as many as when every failed poll was logged).
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for _ in range(120):
            shutil.move(repository, repository.with_name("away"))
            assert "is not a directory" in server.refresh()[0]
            shutil.move(repository.with_name("away"), repository)
            assert server.refresh() == []
    assert len(lines(caplog, "cannot scan the model repository")) == 1
    assert len(lines(caplog, "can be scanned again")) == 1


def test_a_problem_that_flaps_is_logged_at_most_once_a_minute_and_each_end_answers_a_logged_start() -> None:
    clock = ManualClock()
    limit = LogLimit(clock=clock)
    assert limit.due() == 0 and limit.ended()  # it starts (logged) and ends (logged)
    flaps = [(limit.due(), limit.ended()) for _ in range(100)]  # back and over again, within the minute
    assert flaps == [(None, False)] * 100  # neither its start nor its end is logged again
    assert limit.due() is None  # and it stays on
    clock.advance(LOG_EVERY_S)
    assert limit.due() == 101  # logged once the minute is up, with every start since
    assert limit.ended() and not limit.ended()
    clock.advance(LOG_EVERY_S)
    assert limit.due() == 0 and limit.ended()  # a minute on, it is a new problem


def test_a_control_file_that_flaps_is_logged_once_not_twice_per_flap(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A control file rewritten in place (a sync), read half-written at one read and whole at the next: each
    # repair forgot the error, so every flap logged it again and its repair (50 flaps: 100 lines).
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository, control_interval_s=None)
    server.kill("gather")
    control_file = repository / CONTROL_FILENAME
    good = control_file.read_bytes()
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        for _ in range(50):
            control_file.write_bytes(good[: len(good) // 2])
            server.sync_control()
            control_file.write_bytes(good)
            server.sync_control()
        control_file.write_bytes(good[: len(good) // 2])
        server.sync_control()
        control_file.write_bytes(b"[]")  # another problem in its place is logged at once
        server.sync_control()
        control_file.write_bytes(good)
        server.sync_control()
    assert len(lines(caplog, "is not valid JSON")) == 1
    assert len(lines(caplog, "stays in force")) == 2
    assert len(lines(caplog, "can be read again")) == 2


def test_a_control_file_damaged_again_for_good_after_a_repair_is_logged_again(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Damaged, repaired, then damaged again within the minute: the recurrence is counted, not logged, and each
    # later read of the same problem was not even counted, so the log's last word stayed "can be read again"
    # however long the file stayed damaged (200 reads, and any time, logged nothing more).
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository, control_interval_s=None)
    server.kill("gather")
    clock = ManualClock()
    server._operations._read_log = LogLimit(clock=clock)
    control_file = repository / CONTROL_FILENAME
    good = control_file.read_bytes()
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        control_file.write_bytes(good[: len(good) // 2])
        server.sync_control()
        control_file.write_bytes(good)
        server.sync_control()
        control_file.write_bytes(good[: len(good) // 2])  # damaged for good
        for _ in range(10):
            server.sync_control()
        assert len(lines(caplog, "stays in force")) == 1  # back within the minute of its line: counted
        clock.advance(LOG_EVERY_S)
        for _ in range(10):
            server.sync_control()
    errors = lines(caplog, "stays in force")
    assert len(errors) == 2  # a minute on, still damaged: logged again, once
    assert "(10 more since the last such line)" in errors[1].getMessage()  # the reads while it was counted
