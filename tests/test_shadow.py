"""Shadows run on spare capacity only: within a CPU budget, never waiting for a busy session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import ModelConfig, RolloutConfig, VersionPolicy
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, build_busy_model, busy_inputs, wait_until

X = np.ones((1, 4), np.float32)


@pytest.fixture
def versions(repository: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


def count(server: inprocserve.Server, model: str, key: str) -> int:
    """One counter of version 2's shadow statistics (0 before its first copy)."""
    return int(server.status()["models"][model]["shadow"].get("2", {}).get(key, 0))


def shadowed(shadow: tuple[int, ...] = (2,)) -> ModelConfig:
    return ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=shadow)),
        version_policy=VersionPolicy.all(),
    )


def test_copies_beyond_the_budget_are_dropped_and_counted(versions: Path, make_server: ServerFactory) -> None:
    comparisons: list[inprocserve.ShadowComparison] = []
    server = make_server(versions, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1e-6)
    for _ in range(20):
        assert server.predict("scale", X).version == 1
    wait_until(lambda: count(server, "scale", "runs") + count(server, "scale", "dropped_over_budget") == 20)
    # the first copy spends a microsecond of allowance (a millionth of each second) for many seconds to come
    assert count(server, "scale", "runs") == 1 and len(comparisons) == 1
    assert count(server, "scale", "dropped_over_budget") == 19


def test_a_full_budget_runs_every_copy(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=shadowed(), shadow_budget=1.0)
    for _ in range(20):
        server.predict("scale", X)
    wait_until(lambda: count(server, "scale", "runs") == 20)
    assert server.status()["models"]["scale"]["shadow"]["2"]["dropped_over_budget"] == 0


@pytest.mark.parametrize("budget", [0.0, -0.1, 1.5])
def test_the_budget_is_a_share_of_time(versions: Path, budget: float) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match=r"shadow_budget must be a share of time in \(0, 1\]"):
        inprocserve.Server(versions, shadow_budget=budget)


def test_a_copy_for_a_busy_shadow_version_is_dropped_not_waited_for(
    repository: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2):
        save_model(build_busy_model(), repository, "busy", version)
    config = ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
        version_policy=VersionPolicy.all(),
        batching=inprocserve.BatchingConfig(max_request_rows=3000),
    )
    server = make_server(repository, config=config, shadow_budget=1.0)
    blocker = server.submit("busy", busy_inputs(3000), version=2)  # the shadow version's only session is busy
    wait_until(lambda: server.status()["models"]["busy"]["versions"]["2"]["in_flight"] == 1)
    assert server.predict("busy", busy_inputs(1)).version == 1
    wait_until(lambda: count(server, "busy", "dropped_no_spare_capacity") == 1)
    assert not blocker.done()  # dropped while the session was still busy: it never waited for it
    blocker.result(timeout=60)
    assert server.status()["models"]["busy"]["shadow"]["2"]["runs"] == 0


def test_a_shadows_status_keeps_its_comparisons_with_the_canary_apart_from_the_stables(
    repository: Path, make_server: ServerFactory
) -> None:
    """During a 50 % canary half the copies compare with the canary: a shadow identical to the stable version
    showed a label agreement of 0.5 and the canary's differences as its own."""
    save_model(build_scale_model(1.0), repository, "scale", 1)  # stable
    save_model(build_scale_model(-1.0), repository, "scale", 2)  # the canary: every argmax flipped
    save_model(build_scale_model(1.0), repository, "scale", 3)  # the shadow: the stable version again
    config = ModelConfig(
        rollout=RolloutConfig(
            strategy="canary",
            stable=1,
            canary=inprocserve.CanaryConfig(version=2, percent=50),
            shadow=inprocserve.ShadowConfig(versions=(3,)),
        ),
        version_policy=VersionPolicy.all(),
    )
    comparisons: list[inprocserve.ShadowComparison] = []
    server = make_server(repository, config=config, on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.array([[1, 2, 3, 4]], np.float32)
    served = [server.predict("scale", rows, context={"user_id": f"u{i}"}).version for i in range(60)]
    wait_until(lambda: len(comparisons) == 60)
    assert {1, 2} <= set(served)
    shadow = server.status()["models"]["scale"]["shadow"]["3"]
    against = shadow["by_primary"]
    assert against["1"]["runs"] == served.count(1) and against["2"]["runs"] == served.count(2)
    assert against["1"]["label_agreement"] == 1.0 and against["1"]["max_abs_diff"] == 0.0
    assert against["2"]["label_agreement"] == 0.0 and against["2"]["max_abs_diff"] == 8.0
    assert shadow["label_agreement"] == pytest.approx(served.count(1) / 60)  # all of them together, as before
