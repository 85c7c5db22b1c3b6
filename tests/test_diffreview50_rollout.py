"""The stable flag's version that a failing provider gives is trusted only after its last reads agreed: reads of
the flag the configuration reads. A configuration naming another stable flag (a new ``flag_prefix``) gave the
old flag's version, which the new one never named."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import pytest

from inprocserve import CanaryConfig, RolloutConfig
from inprocserve._flag_reader import FlagReader
from inprocserve._rollout import _STABLE_READS_AGREED, Router

READY = {1: object(), 2: object()}
CONFIG = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2))


class _Service:
    """A flag provider read per request (not a plan of values), which a test takes down at will."""

    name = "service"
    blocking = False

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = dict(values)
        self.down = False

    def _get(self, key: str, default: Any) -> Any:
        if self.down:
            raise ConnectionError("flag service unreachable")
        return self.values.get(key, default)

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool:
        return self._get(key, default)  # type: ignore[no-any-return]

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        return self._get(key, default)  # type: ignore[no-any-return]

    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str:
        return self._get(key, default)  # type: ignore[no-any-return]

    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        return self._get(key, default)


def _promoted_router(service: _Service) -> Router:
    router = Router("fraud", CONFIG, FlagReader(service, timeout_s=5.0))
    for i in range(_STABLE_READS_AGREED):
        assert router.decide(READY, 2, {"user_id": f"u{i}"}).version == 2
    return router


def test_a_configuration_naming_another_stable_flag_does_not_inherit_the_old_flags_version() -> None:
    # 'fraud.stable' named 2 at 64 reads; the configuration then reads 'fraud-eu.stable', never read: a failure
    # gave 2, the old flag's version
    service = _Service({"fraud.stable": 2, "fraud.canary.percent": 0})
    router = _promoted_router(service)
    router.update(dataclasses.replace(CONFIG, flag_prefix="fraud-eu"))
    service.down = True
    decision = router.decide(READY, 2, {"user_id": "x"})
    assert (decision.version, decision.reason) == (1, "flag provider failed")


@pytest.mark.parametrize("change", ["unrelated setting", "none"])
def test_the_stable_flags_version_is_kept_across_a_configuration_reading_the_same_flag(change: str) -> None:
    service = _Service({"fraud.stable": 2, "fraud.canary.percent": 0})
    router = _promoted_router(service)
    if change != "none":
        router.update(dataclasses.replace(CONFIG, canary=CanaryConfig(version=2, percent=5.0)))
    service.down = True
    decision = router.decide(READY, 2, {"user_id": "x"})
    assert (decision.version, decision.reason) == (2, "flag provider failed")
