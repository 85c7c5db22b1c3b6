"""A rollout whose flags come from ``InMemoryFlags`` or ``FileFlags`` decides from their values read once per
change (``Router._flagged_plan``), not flag by flag for every request: those providers give the same value
for every context, in a mapping they replace whole when a value changes. It must decide exactly as reading
every flag does: the same version, variant, reason, shadows and flags read, the same random draws, the
same refusals of unusable values (and the same counts of them). These tests compare the two paths on the
same configurations, flag values, contexts and random state.
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from inprocserve import (
    CanaryConfig,
    EnvFlags,
    FileFlags,
    InMemoryFlags,
    InvalidInputError,
    RolloutConfig,
    ShadowConfig,
    _flags,
)
from inprocserve._flag_reader import FlagReader
from inprocserve._flags import FlagProvider
from inprocserve._rollout import Decision, Router

from .conftest import VALUES_NOT_SPEED_S, wait_until
from .test_rollout_no_flags import configs, contexts, gate, versions

MODEL = "ranker"


class EveryFlagRead(FlagReader):
    """The server's flag reader with the values mapping withheld: every flag read for every request."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.frozen_values = None


def routers(config: RolloutConfig, flags: Callable[[], FlagProvider], alias: int | None) -> tuple[Router, Router]:
    """A router deciding as the server's does, and one reading every flag for every request, each on a
    provider ``flags()`` makes."""
    direct = Router(MODEL, config, FlagReader(flags(), timeout_s=60.0), shadow_gate=gate)
    read = Router(MODEL, config, EveryFlagRead(flags(), timeout_s=60.0), shadow_gate=gate)
    for router in (direct, read):
        router.adopt(router.state_for(config, alias=alias))
    return direct, read


def decide_both(
    direct: Router, read: Router, ready: Mapping[int, Any], context: Mapping[str, Any] | None, seed: int
) -> list[tuple[str, Any, Any]]:
    """Each router's decision, as text (a flag read as 1.0 is shown so on a span, 1 is not), from the same
    random state, and the random states after it (the random module's, and the bandit's generator's)."""
    outcomes = []
    for router in (direct, read):
        random.seed(seed)
        decision: Decision = router.decide(ready, max(ready), context)
        outcomes.append((repr(decision), random.getstate(), router._rng.bit_generator.state))
    return outcomes


def counts(router: Router) -> tuple[int, int, int]:
    flags = router._flags
    assert isinstance(flags, FlagReader)
    return flags.unusable, flags.failures, flags.timeouts


numbers = (
    st.floats(allow_nan=True)
    | st.integers(-5, 200)
    | st.sampled_from([np.float64(50.0), np.int64(2), np.float32(0.5), 10**400, -0.0, np.bool_(True)])
)
weights = st.sampled_from([0, 1, 2.5]) | st.sampled_from([-1, True, float("inf")])
arm_weights = st.dictionaries(st.sampled_from(["control", "treatment"]), weights) | st.dictionaries(
    st.sampled_from(["control", "treatment", "other", "ghost"]), weights
)
# each flag absent, or a usable value, or one the rollout refuses (a type, a range, a version not loaded),
# by the key's end (the configuration's flag_prefix, or the model's name, goes before it)
flag_values = st.fixed_dictionaries(
    {},
    optional={
        "stable": versions | st.sampled_from([2.5, "2", True, 0, np.int64(1)]),
        "kill": st.booleans() | st.sampled_from(["false", np.bool_(False)]),
        "strategy": st.sampled_from(["stable", "canary", "ab", "bandit", "canery", 3]),
        "canary.percent": st.sampled_from([0, 0.07, 1, 50.0, 100]) | numbers | st.just("10"),
        "canary.version": versions | st.sampled_from([2.5, "3", False, np.float64(2.0)]),
        "ab.weights": arm_weights | st.just([1, 2]),
        "shadow.versions": st.lists(versions, max_size=3)
        | st.sampled_from([[2.5], [True], "3", (1, 2), {"v": 1}, {1, 2}, [[1]], np.array([1, 2])]),
        "shadow.percent": st.sampled_from([0, 1.0, 50, 100]) | numbers,
    },
)


# a rollout's configuration, its flags' values, the versions loaded, a stable alias, and requests in turn
rollout_cases = {
    "config": configs(),
    "prefix": st.sampled_from([None, "exp"]),
    "values": flag_values,
    "loaded": st.sets(versions, min_size=1),
    "alias": st.none() | versions,
    "requests": st.lists(st.tuples(contexts, st.integers(0, 2**32)), min_size=1, max_size=6),
}


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(**rollout_cases)
@example(  # a bandit named by a flag, with no arms configured: refused before a bucket is drawn
    config=RolloutConfig(),
    prefix=None,
    values={"strategy": "bandit"},
    loaded={1},
    alias=None,
    requests=[(None, 0)],
)
def test_a_rollout_decides_from_frozen_flag_values_as_reading_every_flag_does(
    config: RolloutConfig,
    prefix: str | None,
    values: dict[str, Any],
    loaded: set[int],
    alias: int | None,
    requests: list[Any],
) -> None:
    # (a seed, so that both routers' bandits start from the same generator state, which is compared)
    config = replace(config, flag_prefix=prefix, seed=0 if config.seed is None else config.seed)
    values = {f"{prefix or MODEL}.{name}": value for name, value in values.items()}
    direct, read = routers(config, lambda: InMemoryFlags(values), alias)
    ready = {version: object() for version in sorted(loaded)}
    for context, seed in requests:  # (in turn: a bandit's draws depend on what it drew before)
        direct_outcome, read_outcome = decide_both(direct, read, ready, context, seed)
        assert direct_outcome == read_outcome
    assert counts(direct) == counts(read)


CANARY = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=0.0))
READY = {1: object(), 2: object(), 3: object()}


def number_reads(monkeypatch: pytest.MonkeyPatch, provider: type[InMemoryFlags | EnvFlags]) -> list[str]:
    """The keys of every number the provider's class is asked for from now on, in order."""
    reads: list[str] = []
    original = provider.get_number

    def counted(self: Any, key: str, default: float, context: Mapping[str, Any]) -> float:
        reads.append(key)
        return original(self, key, default, context)

    monkeypatch.setattr(provider, "get_number", counted)
    return reads


def test_the_values_are_read_once_per_change_and_a_change_is_obeyed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flags = InMemoryFlags({f"{MODEL}.canary.percent": 100})
    reads = number_reads(monkeypatch, InMemoryFlags)
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    for number in range(20):
        decision = router.decide(READY, 3, {"user_id": f"u{number}"})
        assert (decision.version, decision.variant) == (2, "canary")
        assert dict(decision.flags)[f"{MODEL}.canary.percent"] == 100.0 and decision.provider == "in-memory"
    assert reads.count(f"{MODEL}.canary.percent") == 1  # once for the plan, not once per request
    flags.set(f"{MODEL}.kill", True)
    decision = router.decide(READY, 3, {"user_id": "u1"})
    assert (decision.version, decision.reason) == (1, "kill switch is on")
    assert decision.flags == ((f"{MODEL}.stable", 1.0), (f"{MODEL}.kill", True))
    flags.delete(f"{MODEL}.kill")
    flags.set(f"{MODEL}.canary.percent", 0)
    assert router.decide(READY, 3, {"user_id": "u1"}).reason == "the canary is at 0%"


def test_a_reloaded_configuration_is_decided_from_though_the_values_did_not_change() -> None:
    flags = InMemoryFlags({f"{MODEL}.kill": False})  # (the percentage comes from the configuration)
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    assert router.decide(READY, 3, {"user_id": "u1"}).reason == "the canary is at 0%"
    router.update(RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=3, percent=100.0)))
    decision = router.decide(READY, 3, {"user_id": "u1"})
    assert (decision.version, decision.variant) == (3, "canary")


def test_a_plan_made_from_the_old_configuration_is_not_used_with_the_new_one() -> None:
    """A decision that made a plan while a reload replaced the configuration stores it keyed by the
    configuration it read: the next decision makes a new one."""
    flags = InMemoryFlags({})
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    values = flags._frozen_values()
    old = router._plan_from_flags(CANARY, values)
    router.update(RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=3, percent=100.0)))
    router._flagged = (values, CANARY, old)  # (what the racing decision stored, after the reload cleared it)
    assert router.decide(READY, 3, {"user_id": "u1"}).version == 3


def full_canary_file(tmp_path: Path) -> tuple[Path, FileFlags, Router]:
    """A flags file holding a 100 % canary, read at every look, and a router on it that decided once."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({MODEL: {"canary": {"percent": 100}}}))
    flags = FileFlags(path, check_interval_s=0.0)
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"
    return path, flags, router


def test_file_flags_are_read_once_per_reload(tmp_path: Path) -> None:
    path, _, router = full_canary_file(tmp_path)
    plan = router._flagged
    assert plan is not None and plan[2] is not None  # decided from the plan
    for number in range(5):
        router.decide(READY, 3, {"user_id": f"u{number}"})
    assert router._flagged is plan  # the file did not change: the same plan
    path.write_text(json.dumps({MODEL: {"canary": {"percent": 0}}, "other": 1}))  # (a new size: a new stamp)
    # (a decision asks a background thread to look at the file: the change is seen one look later)
    wait_until(lambda: router.decide(READY, 3, {"user_id": "u1"}).reason == "the canary is at 0%")


def test_an_unusable_value_is_decided_flag_by_flag_and_counted_each_request() -> None:
    flags = InMemoryFlags({f"{MODEL}.shadow.versions": [9], f"{MODEL}.canary.percent": 100})
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    for _ in range(3):
        decision = router.decide(READY, 3, {"user_id": "u1"})
        assert decision.variant == "canary" and "shadows off: unusable flag" in decision.reason
    reader = router._flags
    assert isinstance(reader, FlagReader) and reader.unusable == 3


def test_a_subclass_of_a_provider_is_read_flag_by_flag() -> None:
    class ByPlan(InMemoryFlags):
        def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
            return 100.0 if context.get("plan") == "staff" and key.endswith(".percent") else default

    router = Router(MODEL, CANARY, FlagReader(ByPlan(), timeout_s=VALUES_NOT_SPEED_S))
    assert router.decide(READY, 3, {"user_id": "u1", "plan": "staff"}).variant == "canary"
    assert router.decide(READY, 3, {"user_id": "u1"}).variant == "stable"


def test_shadows_from_frozen_values_mirror_as_configured() -> None:
    config = RolloutConfig(stable=1, shadow=ShadowConfig(versions=(), percent=100.0))
    flags = InMemoryFlags({f"{MODEL}.shadow.versions": [2, 3]})
    router = Router(MODEL, config, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    decision = router.decide(READY, 3, {"user_id": "u1"})
    assert (decision.version, decision.shadows) == (1, (2, 3))
    assert router._flagged is not None and router._flagged[2] is not None


# -- what the review of this change found ------------------------------------------------------------------


def test_a_flag_file_that_fails_to_load_keeps_its_values_and_is_shown(tmp_path: Path) -> None:
    """A load runs off the request's thread: its failure keeps the last good values, and the flag reader's
    status says why (it is no provider failure of a request)."""
    path, flags, router = full_canary_file(tmp_path)
    path.unlink()
    path.mkdir()  # (a file that cannot be read: the disk said no)
    assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"  # (no exception reaches the caller)
    wait_until(lambda: flags.last_error is not None)  # (the look that decision asked for, off its thread)
    assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"
    reader = router._flags
    assert isinstance(reader, FlagReader) and reader.failures == 0
    assert str(path) in reader.status()["source_error"]


def test_a_flag_file_nested_too_deep_keeps_the_last_good_values(tmp_path: Path) -> None:
    path, flags, router = full_canary_file(tmp_path)
    path.write_text('{"deep": ' + "[" * 100_000 + "]" * 100_000 + "}")
    # (a look at the file runs off the request's thread, and may find it still being written)
    wait_until(
        lambda: router.decide(READY, 3, {"user_id": "u1"}).variant == "canary" and "recursion" in str(flags.last_error)
    )


@pytest.mark.parametrize("provider", ["in-memory", "none"])
def test_a_targeting_key_with_a_lone_surrogate_is_bucketed(provider: str) -> None:
    """JSON may carry a lone surrogate (\\ud800) into a user id: it gets a bucket, as any key does."""
    from inprocserve._experiments import bucket

    config = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50.0))
    reader = FlagReader(InMemoryFlags({}), timeout_s=VALUES_NOT_SPEED_S) if provider == "in-memory" else None
    router = Router(MODEL, config, reader)
    decision = router.decide(READY, 3, {"user_id": "user-\ud800"})
    assert decision.reason.startswith("bucket ") and decision.version in (1, 2)
    assert bucket(MODEL, "", "user-\ud800") == bucket(MODEL, "", "user-\ud800")
    import hashlib

    valid = int.from_bytes(hashlib.blake2b(f"{MODEL}\x1f\x1fé".encode(), digest_size=8).digest(), "big") % 10_000
    assert bucket(MODEL, "", "é") == valid  # (other keys keep their buckets)


@pytest.mark.parametrize("missing", [None, ""])
def test_a_key_field_that_is_none_or_empty_leaves_the_targeting_key_to_bucket_by(missing: Any) -> None:
    """{"user_id": None, "targeting_key": "u-1"} was bucketed at random, not as u-1: not sticky at all."""
    config = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50.0))
    for flags in (
        None,
        FlagReader(InMemoryFlags({}), timeout_s=VALUES_NOT_SPEED_S),
    ):  # the rollout's own plan, and the flag-reading path
        router = Router(MODEL, config, flags)
        for user in (f"u-{number}" for number in range(40)):
            alone = router.decide(READY, 3, {"targeting_key": user})
            both = router.decide(READY, 3, {"user_id": missing, "targeting_key": user})
            assert (both.version, both.reason) == (alone.version, alone.reason)


@pytest.mark.parametrize(
    "flags", [None, FlagReader(InMemoryFlags({}), timeout_s=VALUES_NOT_SPEED_S)], ids=["no flags", "flags"]
)
def test_a_targeting_key_that_cannot_be_made_text_is_the_request_s_mistake_on_every_path(
    flags: FlagReader | None,
) -> None:
    """With a provider it was counted as the provider failing (and answered stable); without one a bare
    TypeError or ValueError left decide()."""

    class Opaque:
        def __str__(self) -> str:
            raise TypeError("no text")

    config = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50.0))
    router = Router(MODEL, config, flags)
    for key in (Opaque(), 10**5000):
        with pytest.raises(InvalidInputError, match="cannot be made text"):
            router.decide(READY, 3, {"user_id": key})
    assert router.status()["flags"] is None or router.status()["flags"]["failures"] == 0


@pytest.mark.parametrize("kind", ["in-memory", "file"])
def test_a_provider_made_blocking_keeps_to_the_budget(kind: str, tmp_path: Path) -> None:
    """``blocking`` set on the instance (a flag file on a slow disk): read flag by flag, on the reader's
    workers, within the budget; no plan."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({MODEL: {"canary": {"percent": 100}}}))
    flags = InMemoryFlags({f"{MODEL}.canary.percent": 100}) if kind == "in-memory" else FileFlags(path)
    flags.blocking = True  # type: ignore[misc]
    reader = FlagReader(flags, timeout_s=5.0)
    try:
        router = Router(MODEL, CANARY, reader)
        assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"
        assert router._flagged is None and reader.status()["workers"] == 1
    finally:
        reader.close()


# -- EnvFlags: a plan while the text of every variable read stays the same ---------------------------------

ENV_PREFIX = "INPROCSERVE_TEST_FROZEN_"


def as_text(value: Any) -> str:
    """What an operator could have put in the variable for ``value``: JSON where it is JSON, else its text."""
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return str(value)


def set_environment(values: Mapping[str, str]) -> None:
    """``values`` (variable -> text) are the only variables under ``ENV_PREFIX``."""
    for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
        del os.environ[name]
    os.environ.update(values)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    **rollout_cases,
    raw=st.sampled_from(["", "{", "true ", "[1, 2", "nan", "NaN", "1e999", '"50"']),
    raw_key=st.sampled_from(["kill", "strategy", "canary.percent", "shadow.versions", "stable"]),
)
def test_env_flags_decide_from_a_plan_as_reading_every_flag_does(
    config: RolloutConfig,
    prefix: str | None,
    values: dict[str, Any],
    loaded: set[int],
    alias: int | None,
    requests: list[Any],
    raw: str,
    raw_key: str,
) -> None:
    config = replace(config, flag_prefix=prefix, seed=0 if config.seed is None else config.seed)
    flags = EnvFlags(ENV_PREFIX)
    texts = {flags.variable(f"{prefix or MODEL}.{name}"): as_text(value) for name, value in values.items()}
    ready = {version: object() for version in sorted(loaded)}
    direct, read = routers(config, lambda: EnvFlags(ENV_PREFIX), alias)
    try:
        set_environment(texts)
        for context, seed in requests:
            direct_outcome, read_outcome = decide_both(direct, read, ready, context, seed)
            assert direct_outcome == read_outcome
        # a text that is no JSON (or a number JSON cannot hold), in place of one variable: obeyed at once
        set_environment(texts | {flags.variable(f"{prefix or MODEL}.{raw_key}"): raw})
        for context, seed in requests:
            direct_outcome, read_outcome = decide_both(direct, read, ready, context, seed)
            assert direct_outcome == read_outcome
    finally:
        set_environment({})
    assert counts(direct) == counts(read)


def test_env_flags_are_read_once_while_their_texts_stay_and_a_change_is_obeyed_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    flags = EnvFlags(ENV_PREFIX)
    monkeypatch.setenv(flags.variable(f"{MODEL}.canary.percent"), "100")
    reads = number_reads(monkeypatch, EnvFlags)
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    for number in range(20):
        decision = router.decide(READY, 3, {"user_id": f"u{number}"})
        assert (decision.version, decision.variant) == (2, "canary") and decision.provider == "env"
    # once for the first plan; once more for the plan made when the variables it read became known
    assert reads.count(f"{MODEL}.canary.percent") == 2
    monkeypatch.setenv(flags.variable(f"{MODEL}.kill"), "true")
    decision = router.decide(READY, 3, {"user_id": "u1"})
    assert (decision.version, decision.reason) == (1, "kill switch is on")
    monkeypatch.delenv(flags.variable(f"{MODEL}.kill"))
    monkeypatch.setenv(flags.variable(f"{MODEL}.canary.percent"), "0")
    assert router.decide(READY, 3, {"user_id": "u1"}).reason == "the canary is at 0%"
    monkeypatch.setenv(flags.variable(f"{MODEL}.stable"), "3")  # (a variable no plan read yet: looked up)
    assert router.decide(READY, 3, {"user_id": "u1"}).version == 3


def test_env_flags_with_a_new_prefix_are_read_from_the_new_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = EnvFlags(ENV_PREFIX)
    monkeypatch.setenv(flags.variable(f"{MODEL}.canary.percent"), "100")
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    for _ in range(2):  # (the second decides from a plan kept for the variables the first one read)
        assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"
    flags.prefix = ENV_PREFIX + "OTHER_"  # (no variable under it: the configuration's 0 %)
    assert router.decide(READY, 3, {"user_id": "u1"}).reason == "the canary is at 0%"
    monkeypatch.setenv(flags.variable(f"{MODEL}.canary.percent"), "100")
    assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"


def test_env_flags_past_the_kept_keys_are_read_flag_by_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    """More keys read than names kept: no set of texts covers every variable a plan may read, so none is
    made, and every flag is read for every request (a change still applies at once)."""
    monkeypatch.setattr(_flags, "_ENV_KEYS_KEPT", 2)
    flags = EnvFlags(ENV_PREFIX)
    monkeypatch.setenv(flags.variable(f"{MODEL}.canary.percent"), "100")
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    for _ in range(2):
        assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"
    assert flags._frozen_values() is None and router._flagged is not None and router._flagged[2] is not None
    monkeypatch.setenv(flags.variable(f"{MODEL}.canary.percent"), "0")
    assert router.decide(READY, 3, {"user_id": "u1"}).reason == "the canary is at 0%"


def test_an_env_plan_is_made_from_the_texts_it_is_kept_for(monkeypatch: pytest.MonkeyPatch) -> None:
    """A variable changed while a plan is made (by another thread) and changed back later: the texts are
    those the plan is kept for again, and so must its decisions be, not what the variable held between."""
    flags = EnvFlags(ENV_PREFIX)
    percent, kill = flags.variable(f"{MODEL}.canary.percent"), flags.variable(f"{MODEL}.kill")
    monkeypatch.setenv(percent, "100")
    monkeypatch.delenv(kill, raising=False)  # (put back as it was after the test, whatever sets it below)
    router = Router(MODEL, CANARY, FlagReader(flags, timeout_s=VALUES_NOT_SPEED_S))
    for _ in range(2):
        assert router.decide(READY, 3, {"user_id": "u1"}).variant == "canary"
    reading = EnvFlags._lookup

    def kill_switch_turned_on_meanwhile(self: EnvFlags, key: str) -> Any:
        if key.endswith(".kill"):
            os.environ[kill] = "true"
        return reading(self, key)

    monkeypatch.setenv(percent, "50")  # a change: the next decision makes a plan
    monkeypatch.setattr(EnvFlags, "_lookup", kill_switch_turned_on_meanwhile)
    assert router.decide(READY, 3, {"user_id": "u1"}).reason != "kill switch is on"  # (the texts it began with)
    monkeypatch.setattr(EnvFlags, "_lookup", reading)
    assert router.decide(READY, 3, {"user_id": "u1"}).reason == "kill switch is on"  # (the texts now)
    del os.environ[kill]  # changed back: the texts of the plan made above
    for number in range(3):
        decision = router.decide(READY, 3, {"user_id": f"u{number}"})
        assert decision.reason.startswith("bucket ") and "50%" in decision.reason
