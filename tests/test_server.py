"""The Server: predict/submit/apredict, loading without a repository, failures, status, close."""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import inprocserve
from inprocserve.testing import build_mlp_model, build_scale_model, build_sum_model, save_model

from .conftest import ServerFactory, run_threads


def test_predict_matches_onnxruntime(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(build_mlp_model((16, 32, 3), seed=4), repository, "mlp", 1)
    server = make_server(repository)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    result = server.predict("mlp", {"x": x})
    np.testing.assert_allclose(result["y"], reference.run(None, {"x": x})[0], rtol=1e-6)
    assert (result.model, result.version, result.variant) == ("mlp", 1, "default")
    assert list(result) == ["y"]
    assert result.request_id
    assert "mlp v1" in repr(result)


def test_prediction_is_a_mapping_with_json_output(scale_repository: Path, make_server: ServerFactory) -> None:
    result = make_server(scale_repository).predict("scale", [[1, 2, 3, 4]])
    assert dict(result).keys() == {"y"}
    assert result.to_dict()["outputs"] == {"y": [[2.0, 4.0, 6.0, 8.0]]}
    with pytest.raises(KeyError, match="'z' is not an output of model 'scale'"):
        result["z"]


def test_request_ids_are_unique(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    ids = {server.predict("scale", [[1, 2, 3, 4]]).request_id for _ in range(100)}
    assert len(ids) == 100


def test_sixty_four_threads_each_get_their_own_answers(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(build_mlp_model((8, 16, 4), seed=5), repository, "mlp", 1)
    server = make_server(repository)
    reference = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((1 + i % 3, 8)).astype(np.float32) for i in range(64)]
    expected = [reference.run(None, {"x": x})[0] for x in inputs]

    def call(index: int) -> None:
        for _ in range(40):
            got = server.predict("mlp", {"x": inputs[index]})["y"]
            np.testing.assert_allclose(got, expected[index], rtol=1e-5, atol=1e-6)

    assert run_threads(64, call) == []
    status = server.status()["models"]["mlp"]["versions"]["1"]
    assert status["in_flight"] == 0
    assert status["rows_run"] == sum(40 * x.shape[0] for x in inputs)


def test_submit_returns_a_future(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    future = server.submit("scale", [[1, 1, 1, 1]])
    assert future.result(timeout=10)["y"].tolist() == [[2, 2, 2, 2]]


def test_submit_delivers_errors_through_the_future(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    with pytest.raises(inprocserve.InvalidInputError):
        server.submit("scale", [[1, 2]]).result(timeout=10)
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.submit("nope", [[1, 2, 3, 4]]).result(timeout=10)


def test_apredict_from_many_tasks(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)

    async def main() -> list[inprocserve.Prediction]:
        return await asyncio.gather(*(server.apredict("scale", np.full((1, 4), i, np.float32)) for i in range(50)))

    results = asyncio.run(main())
    for i, result in enumerate(results):
        assert result["y"].tolist() == [[2.0 * i] * 4]


def test_unknown_model_and_version(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    with pytest.raises(inprocserve.ModelNotFoundError, match="unknown model 'nope' \\(servable models: scale\\)"):
        server.predict("nope", [[1, 2, 3, 4]])
    with pytest.raises(inprocserve.ModelNotFoundError, match="no servable version 7 \\(servable: 1\\)") as info:
        server.predict("scale", [[1, 2, 3, 4]], version=7)
    assert (info.value.model, info.value.version) == ("scale", 7)


def test_pinned_version(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    assert server.models == {"scale": [1, 2]}
    pinned = server.predict("scale", [[1, 1, 1, 1]], version=1)
    assert (pinned.version, pinned.variant, pinned["y"][0, 0]) == (1, "pinned", 1.0)
    latest = server.predict("scale", [[1, 1, 1, 1]])
    assert (latest.version, latest.variant, latest["y"][0, 0]) == (2, "default", 2.0)


@pytest.mark.parametrize("version", [True, 1.0, [1], {}, "1"])
def test_only_an_integer_pins_a_version(scale_repository: Path, make_server: ServerFactory, version: Any) -> None:
    """``True`` and ``1.0`` equal version 1 as dict keys; a list cannot be one: each is the caller's mistake,
    named, on every way in."""
    server = make_server(scale_repository)
    x = np.ones((1, 4), np.float32)
    message = f"version must be an int or None, got {type(version).__name__}"
    with pytest.raises(TypeError, match=message):
        server.predict("scale", x, version=version)
    with pytest.raises(TypeError, match=message):
        server.submit("scale", x, version=version).result(timeout=30)
    with pytest.raises(TypeError, match=message):
        asyncio.run(server.apredict("scale", x, version=version))
    with pytest.raises(TypeError, match=message):
        next(server.predict_many("scale", x, version=version))
    assert server.predict("scale", x, version=np.int64(1)).version == 1  # (a number read from an array)


def test_load_and_unload_without_a_repository(tmp_path: Path, make_server: ServerFactory) -> None:
    first = save_model(build_scale_model(3.0), tmp_path, "anything", 1)
    second = save_model(build_scale_model(5.0), tmp_path, "anything", 2)
    server = make_server()
    assert server.load("scaler", path=first) == 1
    assert server.load("scaler", path=second) == 2  # next number
    assert server.models == {"scaler": [1, 2]}
    assert server.predict("scaler", [[1, 1, 1, 1]])["y"][0, 0] == 5.0
    server.unload("scaler", 2)
    assert server.predict("scaler", [[1, 1, 1, 1]])["y"][0, 0] == 3.0
    server.unload("scaler")
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("scaler", [[1, 1, 1, 1]])
    with pytest.raises(inprocserve.ModelNotFoundError, match="not loaded"):
        server.unload("scaler")


def test_load_refuses_bad_names_and_versions(tmp_path: Path, make_server: ServerFactory) -> None:
    server = make_server()
    path = save_model(build_scale_model(), tmp_path, "m", 1)
    with pytest.raises(inprocserve.ModelNotFoundError, match="invalid model name"):
        server.load("../m", path=path)
    with pytest.raises(ValueError, match="positive int"):
        server.load("m", path=path, version=0)
    with pytest.raises(inprocserve.ModelNotFoundError, match="no repository configured"):
        server.load("m")


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (b"", "onnxruntime cannot load"),
        (b"definitely not protobuf \x00\xff", "cannot load .*not a valid ONNX model"),
        (None, "does not exist"),
    ],
)
def test_broken_model_files_raise_model_load_error(
    tmp_path: Path, make_server: ServerFactory, content: bytes | None, fragment: str
) -> None:
    path = tmp_path / "m" / "1" / "model.onnx"
    path.parent.mkdir(parents=True)
    if content is not None:
        path.write_bytes(content)
    server = make_server()
    with pytest.raises(inprocserve.ModelLoadError, match=fragment) as info:
        server.load("m", path=path)
    assert (info.value.model, info.value.version) == ("m", 1)
    assert server.status()["models"]["m"]["versions"]["1"]["state"] == "failed"


def test_only_onnx_files_are_loaded(tmp_path: Path, make_server: ServerFactory) -> None:
    pickled = tmp_path / "model.pkl"
    pickled.write_bytes(b"\x80\x04.")
    with pytest.raises(inprocserve.ModelLoadError, match=r"only \.onnx files are loaded"):
        make_server().load("m", path=pickled)


def test_a_broken_model_does_not_stop_the_others(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(), repository, "good", 1)
    broken = repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"garbage")
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        server = make_server(repository)
    assert server.models == {"good": [1]}
    status = server.status()["models"]["broken"]
    assert status["ready"] is False
    assert "cannot load" in status["versions"]["1"]["error"]
    assert any("broken" in record.getMessage() for record in caplog.records)
    with pytest.raises(inprocserve.ModelNotFoundError, match="failed to load"):
        server.predict("broken", [[1]])
    with pytest.raises(inprocserve.ModelLoadError):
        make_server(repository, strict=True)


def test_a_strict_server_that_fails_to_start_closes_what_it_opened(repository: Path) -> None:
    from inprocserve._telemetry import METRICS

    save_model(build_scale_model(), repository, "good", 1)
    (repository / "broken" / "1").mkdir(parents=True)
    (repository / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    servers_open = METRICS._recording._open  # servers that keep the metric recording thread wanted
    with pytest.raises(inprocserve.ModelLoadError):
        inprocserve.Server(repository, strict=True)
    assert METRICS._recording._open == servers_open


def test_bad_config_toml_is_reported_not_fatal(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = 0\n")
    server = make_server(repository)
    assert server.models == {}
    assert "max_batch_size must be >= 1" in server.status()["models"]["scale"]["config_error"]


def test_status_reports_everything_an_operator_needs(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    server.predict("scale", [[1, 2, 3, 4]])
    status = server.status()
    version = status["models"]["scale"]["versions"]["1"]
    assert status["closed"] is False
    assert status["models"]["scale"]["default_version"] == 1
    assert version["state"] == "ready"
    assert version["serving"] is True
    assert version["providers"] == ["CPUExecutionProvider"]
    assert version["pool_size"] == 1
    assert version["intra_op_threads"] >= 1
    assert version["batchable"] is True
    assert version["rows_run"] == 1
    assert version["signature"]["inputs"][0]["name"] == "x"
    import json

    json.dumps(status)  # plain data only


def test_unbatchable_models_run_one_request_at_a_time(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_sum_model(), repository, "sum", 1)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server = make_server(repository)
    assert any("runs unbatched" in record.getMessage() for record in caplog.records)
    assert server.status()["models"]["sum"]["versions"]["1"]["batchable"] is False
    futures = [server.submit("sum", np.full((i + 1, 4), 1.0, np.float32)) for i in range(20)]
    assert [float(f.result(timeout=10)["total"]) for f in futures] == [4.0 * (i + 1) for i in range(20)]


def test_close_drains_then_refuses(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    futures = [server.submit("scale", [[i, i, i, i]]) for i in range(100)]
    server.close()
    assert [f.result(timeout=10)["y"][0, 0] for f in futures] == [2.0 * i for i in range(100)]
    with pytest.raises(inprocserve.ServerClosedError):
        server.predict("scale", [[1, 2, 3, 4]])
    with pytest.raises(inprocserve.ServerClosedError):
        server.submit("scale", [[1, 2, 3, 4]]).result(timeout=1)
    with pytest.raises(inprocserve.ServerClosedError):
        server.load("scale")
    server.close()  # idempotent
    assert server.status()["closed"] is True


def test_server_is_a_context_manager(scale_repository: Path) -> None:
    with inprocserve.Server(scale_repository) as server:
        assert server.predict("scale", [[1, 1, 1, 1]])["y"][0, 0] == 2.0
    with pytest.raises(inprocserve.ServerClosedError):
        server.predict("scale", [[1, 1, 1, 1]])


def test_close_while_many_threads_call_predict(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    started = threading.Barrier(17)
    outcomes: list[str] = []

    def call(index: int) -> None:
        started.wait()
        while True:
            try:
                server.predict("scale", [[index, 0, 0, 0]])
                outcomes.append("ok")
            except inprocserve.ServerClosedError:
                outcomes.append("closed")
                return

    threads = [threading.Thread(target=call, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    started.wait()
    server.close()
    for thread in threads:
        thread.join(timeout=30)
        assert not thread.is_alive(), "a caller was left waiting after close()"
    assert outcomes.count("closed") == 16


def test_bad_api_use_raises_plain_python_errors(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    with pytest.raises(ValueError, match="timeout_s"):
        server.predict("scale", [[1, 2, 3, 4]], timeout_s=0)
    with pytest.raises(TypeError):
        server.predict(3, [[1, 2, 3, 4]])  # type: ignore[arg-type]
    with pytest.raises(inprocserve.ConfigurationError, match="poll_interval_s"):
        inprocserve.Server(poll_interval_s=1)


def test_a_dict_of_flag_values_is_refused_naming_the_provider_that_serves_one(scale_repository: Path) -> None:
    # (the usual slip: flags={"key": value} where InMemoryFlags({"key": value}) was meant; the message named
    # only the protocol, FlagProvider, and not the providers that implement it)
    with pytest.raises(
        inprocserve.ConfigurationError,
        match=r"flags must be an inprocserve\.FlagProvider \(InMemoryFlags, .*got \{'scale\.canary': 0\.1\}",
    ) as refused:
        inprocserve.Server(scale_repository, flags={"scale.canary": 0.1})  # type: ignore[arg-type]
    # (as the other settings Server() refuses; a TypeError too, as it was before)
    assert type(refused.value) is inprocserve.ConfigurationTypeError and isinstance(refused.value, TypeError)
    with inprocserve.Server(scale_repository, flags=inprocserve.InMemoryFlags({"scale.canary": 0.1})) as server:
        assert server.predict("scale", [[1, 2, 3, 4]]).version == 1
