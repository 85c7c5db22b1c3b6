"""A rollout with no flag provider decides from its configuration alone, on a shorter path than one with flags
(``Router._decide_unflagged``). It must decide exactly as reading every flag for its configured value does:
the same version, variant, reason and shadows, the same random draws, the same refusals of a configured
version that is not loaded. These tests compare the two paths on the same configurations, contexts and
random state.
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from inprocserve import CanaryConfig, ConfigurationError, RolloutConfig, ShadowConfig
from inprocserve._experiments import bucket
from inprocserve._rollout import Decision, Router, _NoFlags

MODEL = "ranker"


class _EveryFlagRead(_NoFlags):
    """No provider, read flag by flag: every flag has its configured value, as on the path with a provider."""


def gate(model: str, versions: tuple[int, ...]) -> bool:
    """A shadow budget that says yes to some sets of versions and no to others."""
    return sum(versions) % 3 != 0


def routers(config: RolloutConfig, alias: int | None) -> tuple[Router, Router]:
    direct = Router(MODEL, config, None, shadow_gate=gate)
    read = Router(MODEL, config, None, shadow_gate=gate)
    read._flags = _EveryFlagRead()
    read.update(config)
    assert direct.state.unflagged is not None or _unusable(config)
    assert read.state.unflagged is None
    for router in (direct, read):
        router.adopt(router.state_for(config, alias=alias))
    return direct, read


def _unusable(config: RolloutConfig) -> bool:
    """A configuration the flag-reading path would refuse on every request (all A/B weights 0)."""
    return config.strategy == "ab" and not sum(v.weight for v in config.variants.values()) > 0


def decide_both(
    direct: Router, read: Router, ready: Mapping[int, Any], context: Mapping[str, Any] | None, seed: int
) -> list[tuple[Decision, Any]]:
    """Each router's decision from the same random state, and the random state after it (both paths must
    draw as many numbers)."""
    outcomes = []
    for router in (direct, read):
        random.seed(seed)
        outcomes.append((router.decide(ready, max(ready), context), random.getstate()))
    return outcomes


versions = st.integers(1, 5)
percents = st.sampled_from([0.0, 0.07, 1.0, 33.3, 50.0, 99.99, 100.0]) | st.floats(0, 100)
contexts = st.one_of(
    st.none(),
    st.just({}),
    st.builds(lambda user: {"user_id": user}, st.text(max_size=12)),
    st.builds(lambda key: {"targeting_key": key}, st.integers(0, 10**6)),
    st.builds(lambda key: {"user_id": None, "targeting_key": key}, st.text(max_size=5)),
    st.builds(lambda user: {"account": user}, st.text(max_size=5)),
)


@st.composite
def configs(draw: st.DrawFn) -> RolloutConfig:
    strategy = draw(st.sampled_from(["stable", "canary", "ab", "bandit"]))
    arms = draw(
        st.dictionaries(
            st.sampled_from(["control", "treatment", "other"]),
            st.fixed_dictionaries({"version": versions, "weight": st.sampled_from([0.0, 0.5, 1.0, 3.0])}),
            min_size=2 if strategy in ("ab", "bandit") else 0,
            max_size=3,
        )
    )
    try:
        return RolloutConfig(
            strategy=strategy,
            stable=draw(st.none() | versions),
            canary=CanaryConfig(version=draw(st.none() | versions), percent=draw(percents)),
            variants=arms,
            bandit={"policy": draw(st.sampled_from(["thompson", "epsilon_greedy"]))},
            shadow=ShadowConfig(versions=tuple(draw(st.sets(versions, max_size=3))), percent=draw(percents)),
            seed=draw(st.integers(0, 2**16)),
            salt=draw(st.sampled_from(["", "spring"])),
            key_field=draw(st.sampled_from(["user_id", "account"])),
        )
    except ConfigurationError:  # (a combination the configuration refuses: not a rollout anyone runs)
        return RolloutConfig(strategy="canary", canary=CanaryConfig(version=2, percent=50.0), seed=1)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=configs(),
    loaded=st.sets(versions, min_size=1),
    alias=st.none() | versions,
    requests=st.lists(st.tuples(contexts, st.integers(0, 2**32)), min_size=1, max_size=6),
)
def test_a_rollout_without_flags_decides_as_reading_every_flag_for_its_default_does(
    config: RolloutConfig, loaded: set[int], alias: int | None, requests: list[tuple[Any, int]]
) -> None:
    direct, read = routers(config, alias)
    ready = {version: object() for version in sorted(loaded)}
    for context, seed in requests:  # (in turn: a bandit's draws depend on what it drew before)
        direct_outcome, read_outcome = decide_both(direct, read, ready, context, seed)
        assert direct_outcome == read_outcome


def test_a_canary_without_flags_takes_the_direct_path_and_keeps_its_reasons() -> None:
    """The comparison above means something only if the direct path answers: it does, with the reasons the
    flag-reading path gives, for a bucketed user, an anonymous request and a shadow."""
    config = RolloutConfig(
        strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50.0), shadow=ShadowConfig(versions=(4,))
    )
    router = Router(MODEL, config, None, shadow_gate=gate)
    plan = router.state.unflagged
    assert plan is not None
    ready = {1: object(), 2: object(), 4: object()}
    decisions = [router._decide_unflagged(plan, ready, 1, {"user_id": f"user-{n}"}, router.state) for n in range(200)]
    assert all(decision is not None for decision in decisions)
    variants = {decision.variant for decision in decisions if decision is not None}
    assert variants == {"canary", "stable"}
    assert all(decision.reason.startswith("bucket ") and decision.shadows == (4,) for decision in decisions if decision)
    assert router._decide_unflagged(plan, ready, 1, {}, router.state) is not None  # no key: a random bucket


@pytest.mark.parametrize("missing", [2, 3])
def test_a_configured_version_that_is_not_loaded_is_left_to_the_flag_reading_path_which_says_so(
    missing: int,
) -> None:
    """The canary's version (2) or a shadow's (3) not loaded: the direct path steps aside before it draws,
    and the decision says which setting names a version that is not loaded."""
    config = RolloutConfig(
        strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50.0), shadow=ShadowConfig(versions=(3,))
    )
    router = Router(MODEL, config, None)
    ready = {v: object() for v in (1, 2, 3) if v != missing}
    plan = router.state.unflagged
    assert plan is not None
    state = random.getstate()
    assert router._decide_unflagged(plan, ready, 1, {}, router.state) is None
    assert random.getstate() == state  # nothing drawn
    decision = router.decide(ready, 1, {"user_id": "someone"})
    assert f"version {missing}, which is not loaded" in decision.reason


def test_the_canary_edge_is_the_same_on_both_paths() -> None:
    """Users bucketed just under and at the canary's edge (bucket 4999 and 5000 of a 50 % canary): the first
    is in the canary, the second is not, on both paths."""
    config = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50.0))
    direct, read = routers(config, None)
    edge = {4999: None, 5000: None}
    for number in range(200_000):  # (about one user in 10,000 has a given bucket)
        user = f"user-{number}"
        position = bucket(MODEL, "", user)
        if position in edge and edge[position] is None:
            edge[position] = user
        if None not in edge.values():
            break
    ready = {1: object(), 2: object()}
    variants = []
    for user in edge.values():
        direct_outcome, read_outcome = decide_both(direct, read, ready, {"user_id": user}, 0)
        assert direct_outcome == read_outcome
        variants.append(direct_outcome[0].variant)
    assert variants == ["canary", "stable"]


def test_ab_weights_given_as_fractions_split_alike_on_both_paths() -> None:
    """The configuration stores a ``Fraction`` weight as a float, which the flag-reading path takes too."""
    from fractions import Fraction

    config = RolloutConfig(
        strategy="ab", stable=1, variants={"a": {"version": 1, "weight": Fraction(1, 2)}, "b": {"version": 2}}
    )
    direct, read = routers(config, None)
    assert direct.state.unflagged is not None
    ready = {1: object(), 2: object()}
    for number in range(50):
        direct_outcome, read_outcome = decide_both(direct, read, ready, {"user_id": f"u{number}"}, number)
        assert direct_outcome == read_outcome
        assert not direct_outcome[0].reason.startswith("unusable")
