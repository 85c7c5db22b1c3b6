"""Review reproductions: the stable flag's fallback with a targeted stable flag, and the context bounds
counting fields that never reach the provider."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import CanaryConfig

from .conftest import ServerFactory, rollout
from .test_flagfleet_failures import _Service

X = np.ones((1, 4), np.float32)
CANARY = {"strategy": "canary", "stable": 1, "canary": CanaryConfig(version=2)}


class _Targeted(_Service):
    """The stable flag targets one tenant: 'a' is on version 2, everyone else gets the flag's default."""

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        value = self._get(key, default)
        if key == "scale.stable" and context.get("tenant") == "a":
            return 2
        return value  # type: ignore[no-any-return]


def test_a_failing_flag_service_does_not_move_one_tenants_stable_version_to_everyone(
    versions: Path, make_server: ServerFactory
) -> None:
    service = _Targeted({"scale.canary.percent": 0}, blocking=True)
    server = make_server(versions, flags=service, flag_timeout_s=10.0, config=rollout(**CANARY))
    for i in range(100):  # (tenants mixed: the flag's reads never agree for long)
        tenant, version = ("a", 2) if i % 3 == 0 else ("b", 1)
        assert server.predict("scale", X, context={"user_id": f"u{i}", "tenant": tenant}).version == version
    assert server.predict("scale", X, context={"user_id": "u1", "tenant": "a"}).version == 2
    service.mode = "raise"
    # The flag never named version 2 for tenant 'b': the last request's tenant decides where 'b' goes.
    result = server.predict("scale", X, context={"user_id": "u0", "tenant": "b"})
    assert result.version == 1, result.reason


def test_fields_the_provider_never_sees_do_not_count_against_the_context_bound(
    versions: Path, make_server: ServerFactory
) -> None:
    # Lists, dicts and None are not handed to the provider (see OpenFeatureFlags._context): 300 of them beside
    # one user id make an evaluation context of no attributes, yet the request was refused.
    openfeature = pytest.importorskip("openfeature.api")
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    provider = InMemoryProvider({"scale.stable": InMemoryFlag("one", {"one": 1})})
    openfeature.set_provider(provider, domain="diffreview49")
    flags = inprocserve.OpenFeatureFlags(openfeature.get_client("diffreview49"))
    server = make_server(versions, flags=flags, flag_timeout_s=10.0, config=rollout(**CANARY))
    context: dict[str, Any] = {f"history{i}": [i, i + 1] for i in range(300)}
    context["user_id"] = "u0"
    assert server.predict("scale", X, context=context).version in (1, 2)
