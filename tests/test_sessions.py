"""Providers, thread budget, error translation: the onnxruntime-facing rules.

The GPU path cannot run on these machines (no GPU): provider construction is a pure function of the
configuration and of whether CUDA is usable, and is tested here with that flag given both ways.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from inprocserve import InferenceError, InvalidInputError, ModelConfig, ModelLoadError, PoolConfig
from inprocserve._ort_backend import onnxruntime_error_types, session_options
from inprocserve._ort_rules import RUN_ERROR_MAP, resolve_providers, thread_budget, translate_run_error, usable_cores

from .conftest import ServerFactory


def test_auto_uses_cuda_only_when_usable() -> None:
    config = PoolConfig()
    assert resolve_providers(config, device_id=0, cuda_usable=False) == ["CPUExecutionProvider"]
    assert resolve_providers(config, device_id=1, cuda_usable=True) == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


def test_explicit_providers_are_honoured_with_the_device_id() -> None:
    config = PoolConfig(providers=("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"))
    assert resolve_providers(config, device_id=3, cuda_usable=True) == [
        ("TensorrtExecutionProvider", {"device_id": 3}),
        ("CUDAExecutionProvider", {"device_id": 3}),
        "CPUExecutionProvider",
    ]


def test_provider_options_reach_each_session_with_its_device() -> None:
    config = PoolConfig(
        size=2,
        share_session=False,
        device_ids=(0, 1),
        provider_options={
            "CUDAExecutionProvider": {"enable_cuda_graph": 1, "arena_extend_strategy": "kSameAsRequested"}
        },
    )
    first = resolve_providers(config, device_id=config.device_ids[0], cuda_usable=True)
    second = resolve_providers(config, device_id=config.device_ids[1], cuda_usable=True)
    assert first[0] == (
        "CUDAExecutionProvider",
        {"enable_cuda_graph": "1", "arena_extend_strategy": "kSameAsRequested", "device_id": 0},
    )
    assert second[0][1]["device_id"] == 1
    assert first[1] == "CPUExecutionProvider"


def test_require_gpu_raises_instead_of_falling_back() -> None:
    with pytest.raises(ModelLoadError, match="require_gpu"):
        resolve_providers(PoolConfig(require_gpu=True), device_id=0, cuda_usable=False)
    assert resolve_providers(PoolConfig(require_gpu=True), device_id=0, cuda_usable=True)[0][0] == (
        "CUDAExecutionProvider"
    )


def test_thread_budget_never_oversubscribes_the_cores() -> None:
    cores = usable_cores()
    for size in (1, 2, 4, 64):
        threads = thread_budget(PoolConfig(size=size, share_session=False))
        assert threads >= 1
        assert size * threads <= max(cores, size)
    assert thread_budget(PoolConfig(intra_op_threads=3)) == 3


def test_session_options_turn_spinning_off_by_default() -> None:
    options = session_options(PoolConfig(size=1, intra_op_threads=2))
    assert options.intra_op_num_threads == 2
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    spinning = session_options(PoolConfig(allow_spinning=True))
    assert spinning.get_session_config_entry("session.intra_op.allow_spinning") == "1"


@pytest.mark.parametrize("spinning", [False, True])
def test_a_small_model_gets_one_thread_unless_threads_spin(
    spinning: bool, scale_repository: Path, make_server: ServerFactory
) -> None:
    """One thread for a model that runs in microseconds: without spinning, a second thread would cost a
    wake-up per operator. Spinning threads cost none, so with them every model gets the budget."""
    config = ModelConfig(pool=PoolConfig(allow_spinning=spinning))
    server = make_server(scale_repository, models={"scale": config})
    status = server.status()["models"]["scale"]["versions"]["1"]
    assert status["intra_op_threads"] == (thread_budget(config.pool) if spinning else 1)


def test_every_onnxruntime_error_type_is_mapped() -> None:
    assert set(onnxruntime_error_types()) <= set(RUN_ERROR_MAP), (
        "onnxruntime has exception types the error map does not know: "
        f"{sorted(set(onnxruntime_error_types()) - set(RUN_ERROR_MAP))}"
    )


@pytest.mark.parametrize("name", sorted(onnxruntime_error_types()))
def test_each_onnxruntime_error_becomes_an_inference_error(name: str) -> None:
    error_type = onnxruntime_error_types()[name]
    translated = translate_run_error(error_type("boom"), model="m", version=2)
    assert isinstance(translated, InferenceError)
    assert (translated.model, translated.version) == ("m", 2)
    assert "boom" in str(translated)
    if name == "InvalidArgument":
        assert isinstance(translated, InvalidInputError)


def test_two_onnxruntime_builds_installed_together_are_warned_about(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The GPU wheel cannot be installed here; its metadata can, which is all the check reads (a dist-info
    # folder on sys.path, as pip would leave it beside the CPU build's).
    import logging
    import sys

    from inprocserve import _ort_backend
    from inprocserve._ort_rules import onnxruntime_builds

    assert [build.split()[0] for build in onnxruntime_builds()] == ["onnxruntime"]
    info = tmp_path / "onnxruntime_gpu-1.20.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.20.1\n")
    monkeypatch.setattr(sys, "path", [str(tmp_path), *sys.path])
    assert onnxruntime_builds()[1] == "onnxruntime-gpu 1.20.1"
    monkeypatch.setattr(_ort_backend, "_cuda_usable", None)  # ask again, as a new process would
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        assert _ort_backend._probe_cuda(tmp_path / "unused.onnx") is False  # this onnxruntime has no CUDA
    assert "and onnxruntime-gpu 1.20.1 are installed together" in caplog.text
    assert "keep one" in caplog.text
