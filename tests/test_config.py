"""Configuration objects and config.toml parsing."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inprocserve import (
    BatchingConfig,
    ConfigurationError,
    ModelConfig,
    PaddingConfig,
    PoolConfig,
    VersionPolicy,
    WarmupConfig,
)
from inprocserve._config import load_model_config


def test_defaults_are_valid_and_frozen() -> None:
    config = ModelConfig()
    assert config.batching.max_batch_size == 64
    assert config.batching.max_delay_ms is None
    assert config.pool.size == 1
    assert config.pool.allow_spinning is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.batching.max_batch_size = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: BatchingConfig(max_batch_size=0), "max_batch_size"),
        (lambda: BatchingConfig(max_delay_ms=-1), "max_delay_ms"),
        (lambda: BatchingConfig(max_delay_ms=float("nan")), "max_delay_ms"),
        (lambda: BatchingConfig(preferred_batch_sizes=(4, 128)), "preferred_batch_sizes"),
        (lambda: BatchingConfig(max_queue_rows=0), "max_queue_rows"),
        (lambda: BatchingConfig(max_request_rows=0), "max_request_rows"),
        (lambda: PoolConfig(size=0), "pool.size"),
        (lambda: PoolConfig(intra_op_threads=0), "intra_op_threads"),
        (lambda: PoolConfig(providers=()), "providers"),
        (lambda: PoolConfig(providers="CUDAExecutionProvider"), "providers"),  # type: ignore[arg-type]
        (lambda: PoolConfig(device_ids=(-1,)), "device_ids"),
        (lambda: PoolConfig(graph_optimization="max"), "graph_optimization"),  # type: ignore[arg-type]
        (lambda: WarmupConfig(rows=0), "warmup"),
        (lambda: VersionPolicy.latest(0), "latest"),
        (lambda: VersionPolicy("specific"), "specific"),
        (lambda: ModelConfig(nan_policy="drop"), "nan_policy"),  # type: ignore[arg-type]
        (lambda: PaddingConfig(inputs={}), "padding.inputs"),
        (lambda: PaddingConfig(inputs={"tokens": 0}), "axis"),
    ],
)
def test_bad_values_fail_when_built(build: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        build()  # type: ignore[operator]


def test_preferred_batch_sizes_are_sorted_and_deduplicated() -> None:
    assert BatchingConfig(preferred_batch_sizes=(32, 8, 8)).preferred_batch_sizes == (8, 32)


@pytest.mark.parametrize(
    ("policy", "available", "served"),
    [
        (VersionPolicy.latest(), [1, 3, 2], [3]),
        (VersionPolicy.latest(2), [1, 3, 2], [2, 3]),
        (VersionPolicy.all(), [2, 1], [1, 2]),
        (VersionPolicy.specific(1, 3), [1, 2], [1]),
        (VersionPolicy.latest(), [], []),
    ],
)
def test_version_policy_selects(policy: VersionPolicy, available: list[int], served: list[int]) -> None:
    assert policy.select(available) == served


def test_config_toml_is_laid_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(
        """
version_policy = { latest = 2 }
nan_policy = "reject"

[batching]
max_batch_size = 32
max_delay_ms = 1.5
preferred_batch_sizes = [8, 16]

[batching.padding]
inputs = { tokens = 1, mask = 1 }
outputs = { logits = 1 }
value = 0

[pool]
size = 2
providers = ["CPUExecutionProvider"]

[warmup]
rows = 4
"""
    )
    base = ModelConfig(pool=PoolConfig(inter_op_threads=2))
    config = load_model_config(path, base)
    assert config.version_policy == VersionPolicy.latest(2)
    assert config.nan_policy == "reject"
    assert config.batching.max_batch_size == 32
    assert config.batching.max_delay_ms == 1.5
    assert config.batching.preferred_batch_sizes == (8, 16)
    assert config.batching.padding == PaddingConfig(inputs={"tokens": 1, "mask": 1}, outputs={"logits": 1})
    assert config.pool.size == 2
    assert config.pool.providers == ("CPUExecutionProvider",)
    assert config.pool.inter_op_threads == 2  # kept from the base
    assert config.warmup.rows == 4


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("batchsize = 3", "unknown key 'batchsize'"),
        ("[batching]\nmax_batch = 3", "unknown key\\(s\\) max_batch in \\[batching\\]"),
        ("[batching]\nmax_batch_size = 0", "max_batch_size must be >= 1"),
        ("batching = 3", "must be a table"),
        ("version_policy = 'newest'", "version_policy must be"),
        ("version_policy = { latest = 'two' }", "version_policy must be"),
        ("[pool]\nsize = 'many'", "pool"),
        ("not toml at all ===", "not valid TOML"),
    ],
)
def test_bad_config_toml_names_the_file_and_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text)
    with pytest.raises(ConfigurationError, match=fragment) as info:
        load_model_config(path)
    assert str(path) in str(info.value)
