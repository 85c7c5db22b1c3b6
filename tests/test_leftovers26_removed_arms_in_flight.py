"""An arm removed by a reload, with a request of it still running (decided before the reload, noted after):
the request is the arm's earlier life, whatever the reloads after it did."""

from __future__ import annotations

from typing import Any

import numpy as np

from inprocserve import CanaryConfig, RolloutConfig, VariantConfig
from inprocserve._rollout import Decision, Router

X = {"x": np.ones((1, 4), np.float32)}
READY: dict[int, Any] = {1: None, 2: None, 3: None}


def _ab(*arms: str) -> RolloutConfig:
    versions = {"a": 1, "b": 2, "c": 3}
    return RolloutConfig(
        strategy="ab", stable=1, seed=7, variants={arm: VariantConfig(version=versions[arm]) for arm in arms}
    )


def _key_of_b(router: Router) -> tuple[str, Decision]:
    for i in range(1000):
        decision = router.decide(READY, 3, {"user_id": f"u{i}"})
        if decision.variant == "b":
            return f"u{i}", decision
    raise AssertionError("no key of arm b")


def test_a_request_of_an_arms_earlier_life_is_not_the_arm_added_back() -> None:
    """Removed, then configured again with the same version, the arm starts afresh: a request decided before
    the removal and still running joined its new numbers (served, then its outcome credited by id)."""
    router = Router("m", _ab("a", "b", "c"), None)
    before = router.state
    _, running = _key_of_b(router)  # (decided, still running)
    router.update(_ab("a", "c"))
    router.update(_ab("a", "b", "c"))
    router.served("earlier", running, X, before)
    assert router.status()["variants"].get("b", {"served": 0})["served"] == 0
    assert router.record_outcome("earlier", 1.0, None, 3, READY) is None
    assert router.status()["variants"].get("b", {"outcomes": 0})["outcomes"] == 0
    # a request of the arm's new life counts in its new numbers
    _, now = _key_of_b(router)
    router.served("later", now, X)
    assert router.record_outcome("later", 1.0, None, 3, READY) == "b"
    assert router.status()["variants"]["b"]["served"] == 1


def test_a_request_running_through_the_removal_counts_in_the_arms_final_numbers_after_an_outcome_by_key() -> None:
    """An outcome by key before the arm's first request was noted made its numbers of no version yet: the
    removal kept them so, and the request noted after it counted nowhere, its outcome by id credited nothing."""
    router = Router("m", _ab("a", "b", "c"), None)
    before = router.state
    key, running = _key_of_b(router)
    assert router.record_outcome(None, 0.5, key, 3, READY) == "b"
    router.update(_ab("a", "c"))
    router.served("running", running, X, before)
    removed = router.status()["removed_variants"]
    assert removed["b"]["served"] == 1 and removed["b"]["version"] == 2, removed
    assert router.record_outcome("running", 1.0, None, 3, READY) == "b"
    assert router.status()["removed_variants"]["b"]["outcomes"] == 2


def _ab_b_at(version: int) -> RolloutConfig:
    arms = {"a": VariantConfig(version=1), "b": VariantConfig(version=version), "c": VariantConfig(version=3)}
    return RolloutConfig(strategy="ab", stable=1, seed=7, variants=arms)


def test_a_request_of_an_arms_earlier_version_is_not_the_arm_pointed_back_to_it() -> None:
    """Pointed from version 2 to 3 and back to 2, the arm starts afresh each time: a request decided while it
    was first on version 2 and noted after it came back is of that earlier life, as one of a removed arm is."""
    router = Router("m", _ab_b_at(2), None)
    before = router.state
    _, running = _key_of_b(router)  # (decided on version 2, still running)
    router.update(_ab_b_at(3))
    router.update(_ab_b_at(2))
    router.served("earlier", running, X, before)
    assert router.status()["variants"].get("b", {"served": 0})["served"] == 0
    assert router.record_outcome("earlier", 1.0, None, 3, READY) is None
    _, now = _key_of_b(router)
    router.served("later", now, X)
    assert router.record_outcome("later", 1.0, None, 3, READY) == "b"
    assert router.status()["variants"]["b"]["served"] == 1


def test_a_request_of_an_earlier_canary_experiment_is_not_the_canary_pointed_back_to_its_version() -> None:
    """The configured canary moved from version 2 to 3 and back starts a new experiment each time: a request
    decided in the first one and noted after the second change counts in neither "canary" nor its outcome."""

    def canary_at(version: int) -> RolloutConfig:
        return RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=version, percent=50))

    router = Router("m", canary_at(2), None)
    before = router.state
    running = next(
        decision
        for decision in (router.decide(READY, 3, {"user_id": f"u{i}"}) for i in range(1000))
        if decision.variant == "canary"
    )
    router.update(canary_at(3))
    router.update(canary_at(2))
    router.served("earlier", running, X, before)
    assert router.status()["variants"].get("canary", {"served": 0})["served"] == 0
    assert router.record_outcome("earlier", 1.0, None, 3, READY) is None
