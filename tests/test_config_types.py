"""Config values of the wrong type or out of bounds fail when the config is built, naming the key.

``config.toml`` hands over whatever TOML holds (a quoted ``"false"``, ``1.5`` rows, ``nan``, a number where a
table belongs), and Python takes ``True`` for the int 1: each must be a ``ConfigurationError`` that names the
file and the key, never a value that silently changes behaviour or an ``AttributeError`` later.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import (
    BanditConfig,
    BatchingConfig,
    CacheConfig,
    CanaryConfig,
    ConfigurationError,
    DriftConfig,
    ModelConfig,
    PaddingConfig,
    PoolConfig,
    RolloutConfig,
    ShadowConfig,
    VariantConfig,
    VersionPolicy,
    WarmupConfig,
)
from inprocserve._config import load_model_config
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

# -- config.toml: each bad value names the file and the key ---------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        # a group or a nested table given as a plain value
        ("[rollout]\ncanary = 5", "rollout.canary must be a table"),
        ('[rollout]\ninterleaving = "x"', "rollout.interleaving must be a table"),
        ('[rollout]\nbandit = "x"', "rollout.bandit must be a table"),
        ("[rollout]\ncanary = 5\ncandidate = 2", "rollout.canary must be a table"),
        ("[rollout]\nvariants = 5", "rollout.variants must be a table"),
        ("[rollout.variants]\ncontrol = 1", "rollout.variants.control must be a table"),
        ("[batching]\npadding = 3", "batching.padding must be a table"),
        ("[pool]\nprovider_options = 5", "pool.provider_options must be a table"),
        # numbers of the wrong kind
        ("[rollout]\ncapture_inputs = 1.5", "rollout.capture_inputs must be >= 0"),
        ('[rollout]\nseed = "x"', "rollout.seed must be >= 0"),
        ("[batching]\nmax_batch_size = 1.5", "batching.max_batch_size must be >= 1 and <= 65536"),
        ("[batching]\nmax_batch_size = inf", "batching.max_batch_size must be >= 1"),
        ("[batching]\nmax_batch_size = true", "batching.max_batch_size must be >= 1"),
        ("[batching]\nmax_batch_size = nan", "batching.max_batch_size must be >= 1"),
        ("[batching]\nmax_queue_rows = nan", "batching.max_queue_rows must be >= 1"),
        ("[batching]\nmax_request_rows = nan", "batching.max_request_rows must be >= 1"),
        ("[batching]\npreferred_batch_sizes = [1.5]", "batching.preferred_batch_sizes"),
        ("[pool]\nsize = true", "pool.size must be >= 1"),
        ("[pool]\nsize = 2.5", "pool.size must be >= 1"),
        ("[pool]\nintra_op_threads = 1.5", "pool.intra_op_threads must be >= 1"),
        ("[warmup]\nrows = 1.5", "warmup.rows must be >= 1"),
        ("[cache]\nmax_entries = 1.5", "cache.max_entries must be >= 1"),
        ("[cache]\nttl_s = true", "cache.ttl_s must be a finite number > 0"),
        ("[drift]\nbins = 2.5", "drift.bins must be >= 2"),
        ("[drift]\npsi_threshold = true", "drift.psi_threshold must be a finite number > 0"),
        ("[rollout.bandit]\nepsilon = true", "rollout.bandit.epsilon must be a finite number >= 0 and <= 1"),
        ("[rollout.variants]\na = { version = 1, weight = true }", "rollout.variants.a: .*weight"),
        ("version_policy = { specific = [true] }", "version_policy must be"),
        ("version_policy = { latest = true }", "version_policy must be"),
        ("version_policy = { latest = 0 }", "latest needs a count >= 1"),
        # quoted booleans, which Python takes for true
        ('[cache]\nenabled = "false"', "cache.enabled must be true or false"),
        ('[batching]\nenabled = "false"', "batching.enabled must be true or false"),
        ('[pool]\nrequire_gpu = "false"', "pool.require_gpu must be true or false"),
        ('[pool]\nallow_spinning = "false"', "pool.allow_spinning must be true or false"),
        ('[pool]\nshare_session = "false"', "pool.share_session must be true or false"),
        ('[pool]\noptimized_model_cache = "false"', "pool.optimized_model_cache must be true or false"),
        ('[warmup]\nenabled = "false"', "warmup.enabled must be true or false"),
        # strings and lists of the wrong kind
        ("[pool]\nproviders = { CPUExecutionProvider = 1 }", "pool.providers must be a list"),
        ("[pool]\nproviders = [1, 2]", "pool.providers must be 'auto' or a non-empty list of provider names"),
        ("[rollout]\nsalt = 5", "rollout.salt must be a string"),
        ("[rollout]\nflag_prefix = 5", "rollout.flag_prefix must be a string"),
        ("[rollout]\nkey_field = 5", "rollout.key_field must be a non-empty string"),
        ("[warmup]\ninputs_file = 5", "warmup.inputs_file must be a non-empty path"),
        ("[drift]\nreference_file = 5", "drift.reference_file must be a non-empty path"),
        ("[batching.padding]\ninputs = { tokens = 1 }\nvalue = true", "batching.padding.value must be a number"),
        # sizes that can only be a mistake: the bound is in the message
        ("[warmup]\nrows = 1000000000000", "warmup.rows must be >= 1 and <= 65536"),
        ("[batching]\nmax_batch_size = 100000", "batching.max_batch_size must be >= 1 and <= 65536"),
        ("[batching]\nmax_queue_rows = 1000000000000", r"batching.max_queue_rows must be >= 1 and <= 16777216"),
    ],
)
def test_a_bad_value_in_config_toml_names_the_file_and_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # candidate = 2 is the deprecated flat form
        with pytest.raises(ConfigurationError, match=fragment) as caught:
            load_model_config(path)
    assert str(path) in str(caught.value)


# -- in a repository: the bad model reports its config, the good one serves ---------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[rollout]\ncanary = 5", "rollout.canary"),
        ('[cache]\nenabled = "false"', "cache.enabled"),
        ("[batching]\nmax_queue_rows = nan", "batching.max_queue_rows"),
        ("[batching]\nmax_batch_size = inf", "batching.max_batch_size"),
        ("[warmup]\nrows = 1000000000000", "warmup.rows"),
        ("[pool]\nproviders = { CPUExecutionProvider = 1 }", "pool.providers"),
    ],
)
def test_a_model_with_a_mistyped_config_toml_is_reported_while_the_others_serve(
    repository: Path, make_server: ServerFactory, text: str, key: str
) -> None:
    save_model(build_scale_model(2.0), repository, "good", 1)
    save_model(build_scale_model(3.0), repository, "bad", 1)
    (repository / "bad" / "config.toml").write_text(text + "\n")
    server = make_server(repository)

    status = server.status()["models"]
    error = status["bad"]["config_error"]
    assert key in error and "config.toml" in error
    assert "bad" not in server.models
    problems = server.refresh()  # a re-scan reports it again, and still loads nothing for it
    assert any(key in problem for problem in problems)
    assert server.predict("good", np.ones((1, 4), np.float32))["y"].tolist() == [[2.0] * 4]


# -- in code: the same checks, and what was accepted before still is ---------------------------------------


@pytest.mark.parametrize(
    ("build", "fragment"),
    [
        (lambda: BatchingConfig(max_batch_size=True), "batching.max_batch_size"),
        (lambda: BatchingConfig(max_batch_size=8.0), "batching.max_batch_size"),
        (lambda: BatchingConfig(max_queue_rows=float("nan")), "batching.max_queue_rows"),
        (lambda: BatchingConfig(max_request_rows=float("inf")), "batching.max_request_rows"),
        (lambda: BatchingConfig(enabled="false"), "batching.enabled"),
        (lambda: BatchingConfig(preferred_batch_sizes=(True,)), "batching.preferred_batch_sizes"),
        (lambda: BatchingConfig(padding={"inputs": {"tokens": 1}}), "batching.padding must be a table"),
        (lambda: PaddingConfig(inputs=["tokens"]), "batching.padding.inputs must be a table"),
        (lambda: PoolConfig(size=True), "pool.size"),
        (lambda: PoolConfig(size=2000), "pool.size must be >= 1 and <= 1024"),
        (lambda: PoolConfig(inter_op_threads=1.5), "pool.inter_op_threads"),
        (lambda: PoolConfig(require_gpu="false"), "pool.require_gpu"),
        (lambda: PoolConfig(io_binding="yes"), "pool.io_binding"),
        (lambda: PoolConfig(providers={"CPUExecutionProvider": 1}), "pool.providers"),
        (lambda: PoolConfig(providers=("CPUExecutionProvider", "")), "pool.providers"),
        (lambda: PoolConfig(device_ids=(True,)), "pool.device_ids"),
        (lambda: PoolConfig(device_ids=5), "pool.device_ids must be a list"),
        (lambda: PoolConfig(provider_options={"CUDAExecutionProvider": "fast"}), "pool.provider_options"),
        (lambda: WarmupConfig(rows=1.5), "warmup.rows"),
        (lambda: WarmupConfig(runs=10**9), "warmup.runs must be >= 1 and <= 1000"),
        (lambda: WarmupConfig(inputs_file=""), "warmup.inputs_file"),
        (lambda: CacheConfig(enabled="false"), "cache.enabled"),
        (lambda: CacheConfig(ttl_s=float("inf")), "cache.ttl_s"),
        (lambda: CacheConfig(share_in_flight=1), "cache.share_in_flight"),
        (lambda: DriftConfig(psi_threshold=True), "drift.psi_threshold"),
        (lambda: DriftConfig(ks_threshold=True), "drift.ks_threshold"),
        (lambda: DriftConfig(window=10.0), "drift.window"),
        (lambda: DriftConfig(capture_reference=True), "drift.capture_reference"),
        (lambda: DriftConfig(reference_file=""), "drift.reference_file"),
        (lambda: VariantConfig(version=1, weight=True), "weight"),
        (lambda: VariantConfig(version=1, weight="1"), "weight"),
        (lambda: BanditConfig(epsilon=True), "rollout.bandit.epsilon"),
        (lambda: BanditConfig(epsilon="0.1"), "rollout.bandit.epsilon"),
        (lambda: RolloutConfig(canary=5), "rollout.canary must be a table"),
        (lambda: RolloutConfig(interleaving="x"), "rollout.interleaving must be a table"),
        (lambda: RolloutConfig(variants=[VariantConfig(version=1)]), "rollout.variants must be a table"),
        (lambda: RolloutConfig(capture_inputs=True), "rollout.capture_inputs"),
        (lambda: RolloutConfig(seed=-1), "rollout.seed"),
        (lambda: RolloutConfig(seed=1.5), "rollout.seed"),
        (lambda: RolloutConfig(salt=None), "rollout.salt"),
        (lambda: RolloutConfig(key_field=""), "rollout.key_field"),
        (lambda: ShadowConfig(versions="12"), "rollout.shadow.versions must be a list"),
        (lambda: VersionPolicy.latest(True), "count >= 1"),
        (lambda: VersionPolicy.latest(2.0), "count >= 1"),
        (lambda: VersionPolicy.specific(True), "version policy versions"),
        (lambda: ModelConfig(batching={"max_batch_size": 8}), "batching must be a BatchingConfig"),
        (lambda: ModelConfig(version_policy="all"), "version_policy must be a VersionPolicy"),
    ],
)
def test_a_bad_value_in_code_names_the_key(build: Callable[[], Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        build()


def test_a_number_setting_takes_an_int_or_a_float_but_not_a_bool() -> None:
    assert CanaryConfig(version=2, percent=5).percent == 5
    assert BanditConfig(epsilon=1).epsilon == 1
    assert CacheConfig(ttl_s=30).ttl_s == 30
    assert DriftConfig(psi_threshold=1).psi_threshold == 1
    assert VariantConfig(version=1, weight=np.float64(0.5)).weight == 0.5
    assert PaddingConfig(inputs={"tokens": 1}, value=float("-inf")).value == float("-inf")  # an additive mask
    for build in (
        lambda: CanaryConfig(version=2, percent=True),
        lambda: BanditConfig(epsilon=False),
        lambda: CacheConfig(ttl_s=True),
        lambda: PaddingConfig(inputs={"tokens": 1}, value=False),
    ):
        with pytest.raises(ConfigurationError, match=r"got (True|False)"):
            build()


def test_lists_are_taken_as_tuples_but_tables_and_strings_are_not_lists() -> None:
    pool = PoolConfig(providers=["CPUExecutionProvider"], device_ids=range(2))
    assert (pool.providers, pool.device_ids) == (("CPUExecutionProvider",), (0, 1))
    assert ShadowConfig(versions=[3]).versions == (3,)
    assert VersionPolicy("specific", versions=[2, 1]).versions == (2, 1)
    assert BatchingConfig(preferred_batch_sizes=[16, 8]).preferred_batch_sizes == (8, 16)
    for build in (
        lambda: PoolConfig(providers={"CPUExecutionProvider": {}}),
        lambda: ShadowConfig(versions={2: "b"}),
        lambda: BatchingConfig(preferred_batch_sizes="8"),
    ):
        with pytest.raises(ConfigurationError, match="must be a list"):
            build()


def test_the_upper_bounds_are_inclusive() -> None:
    assert BatchingConfig(max_batch_size=65536, preferred_batch_sizes=(65536,)).max_batch_size == 65536
    assert BatchingConfig(max_queue_rows=16 * 2**20, max_request_rows=16 * 2**20).max_queue_rows == 16 * 2**20
    assert WarmupConfig(rows=65536, runs=1000).rows == 65536
    assert PoolConfig(size=1024, intra_op_threads=1024).size == 1024
    with pytest.raises(ConfigurationError, match="<= 65536"):
        BatchingConfig(max_batch_size=65537)
    with pytest.raises(ConfigurationError, match="<= 16777216"):
        BatchingConfig(max_request_rows=16 * 2**20 + 1)
    with pytest.raises(ConfigurationError, match="<= 65536"):
        WarmupConfig(rows=65537)


def test_optional_settings_take_none_and_real_values_of_their_type() -> None:
    pool = PoolConfig(share_session=None, io_binding=False, intra_op_threads=None)
    assert (pool.share_session, pool.io_binding) == (None, False)
    rollout = RolloutConfig(seed=None, flag_prefix=None, salt="", key_field="account")
    assert rollout.key_field == "account"
    with pytest.raises(ConfigurationError, match=r"pool\.share_session must be true or false .*or unset"):
        PoolConfig(share_session="auto")
    with pytest.raises(ConfigurationError, match=r"rollout\.flag_prefix must be a string, or unset"):
        RolloutConfig(flag_prefix=7)


def test_numpy_numbers_and_paths_are_taken_as_python_ones(tmp_path: Path) -> None:
    # Settings computed with numpy (a batch size from an array, a threshold from a statistic) or given as
    # pathlib paths were accepted before types were checked; only bools and non-integral values are refused.
    sizes = np.array([64, 4096])
    batching = inprocserve.BatchingConfig(
        max_batch_size=sizes[0], max_delay_s=np.float32(0.002), preferred_batch_sizes=(np.int32(8),)
    )
    assert batching.max_batch_size == 64
    assert inprocserve.PoolConfig(size=np.int64(2), allow_spinning=np.bool_(False)).size == 2
    assert inprocserve.CacheConfig(ttl_s=np.float64(1.5)).ttl_s == 1.5
    assert inprocserve.WarmupConfig(inputs_file=tmp_path / "warm.npz").inputs_file is not None
    assert inprocserve.DriftConfig(reference_file=tmp_path / "ref.npz", psi_threshold=np.float32(0.2)).enabled
    assert inprocserve.VersionPolicy.latest(np.int64(2)).count == 2
    with pytest.raises(inprocserve.ConfigurationError, match="an integer"):
        inprocserve.BatchingConfig(max_batch_size=np.float64(64.0))
    with pytest.raises(inprocserve.ConfigurationError, match="true or false"):
        inprocserve.PoolConfig(allow_spinning=np.int64(1))


def test_numpy_settings_are_stored_as_python_values(tmp_path: Path) -> None:
    # Stored as numpy, they broke status() (np.int64 has no bit_length; JSON cannot write numpy numbers),
    # and np.False_ read as "unset" where the library tests "is False".
    batching = inprocserve.BatchingConfig(max_batch_size=np.int64(16), max_delay_s=np.float32(0.001))
    assert type(batching.max_batch_size) is int and type(batching.max_delay_s) is float
    pool = inprocserve.PoolConfig(size=np.int64(2), share_session=np.False_)
    assert pool.share_session is False and type(pool.size) is int
    assert inprocserve.CacheConfig(enabled=np.True_, share_in_flight=np.False_).share_in_flight is False
    assert inprocserve.WarmupConfig(inputs_file=tmp_path / "warm.npz").inputs_file == str(tmp_path / "warm.npz")
    padding = inprocserve.PaddingConfig(inputs={"tokens": np.int64(1)})
    assert type(padding.inputs["tokens"]) is int


def test_a_server_configured_with_numpy_numbers_reports_its_status_as_json(
    tmp_path: Path,
) -> None:
    import json

    save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    config = inprocserve.ModelConfig(
        batching=inprocserve.BatchingConfig(max_batch_size=np.int64(16), max_delay_s=np.float32(0.001)),
        pool=inprocserve.PoolConfig(size=np.int64(2)),
    )
    with inprocserve.Server(tmp_path / "models", config=config) as server:
        server.predict("scale", np.ones((1, 4), np.float32))
        json.dumps(server.status(), allow_nan=False)


def test_lists_and_arrays_of_numpy_numbers_are_stored_as_python_ones() -> None:
    shadow = inprocserve.ShadowConfig(versions=np.array([2, 3]))
    assert shadow.versions == (2, 3) and all(type(version) is int for version in shadow.versions)
    assert inprocserve.ShadowConfig(versions=[np.int64(2)]).versions == (2,)
    sizes = inprocserve.BatchingConfig(preferred_batch_sizes=[np.int64(8), np.int32(16)]).preferred_batch_sizes
    assert sizes == (8, 16) and all(type(size) is int for size in sizes)
    policy = inprocserve.VersionPolicy.specific(np.int64(1), np.int64(3))
    assert all(type(version) is int for version in policy.versions)


def test_other_real_numbers_are_stored_as_floats_and_a_canary_of_one_decides() -> None:
    # A Fraction passed the checks (a real number) and was stored as given: every decision of a canary at
    # Fraction(1, 2) % then raised TypeError formatting its reason.
    from fractions import Fraction

    from inprocserve._rollout import Router

    canary = inprocserve.CanaryConfig(version=2, percent=Fraction(1, 2))
    assert type(canary.percent) is float and canary.percent == 0.5
    assert type(inprocserve.ShadowConfig(versions=(2,), percent=Fraction(3, 4)).percent) is float
    with pytest.raises(inprocserve.ConfigurationError, match="an integer"):
        inprocserve.BatchingConfig(max_batch_size=Fraction(64, 1))
    router = Router("m", inprocserve.RolloutConfig(strategy="canary", stable=1, canary=canary), None)
    decision = router.decide({1: object(), 2: object()}, 2, {"user_id": "someone"})
    assert decision.reason.endswith("the canary's 0.5%")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (
            "version_policy = { latest = 2, typo = 1 }",
            "version_policy: unknown key 'typo'; known keys are latest, specific",
        ),
        ("version_policy = { lastest = 2 }", "version_policy: unknown key 'lastest'; known keys are latest, specific"),
        ("[version_policy]\nlatest = 2\nspecific = [1]", "version_policy takes one of latest or specific, not both"),
    ],
)
def test_a_version_policy_with_a_key_it_does_not_take_names_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    """``{ latest = 2, typo = 1 }`` was refused as 'version_policy must be "latest", "all", { latest = N } or
    { specific = [1, 2] }, got {...}': the form the user wrote, with nothing saying which key was wrong."""
    path = tmp_path / "config.toml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigurationError, match=re.escape(fragment)) as caught:
        load_model_config(path)
    assert str(path) in str(caught.value)
