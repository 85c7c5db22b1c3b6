"""Bounded growth over a long life: what releases (hot reloads) and clients add to stays bounded.

A backend process runs for weeks through hourly releases: anything kept per version that was ever loaded, or
per request, must have a bound. Each test drives a real server through many releases (or requests) with the
bound made small, and counts what is kept.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import _registry, _rollout, _shadow
from inprocserve.testing import build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, wait_until

X = np.ones((1, 4), np.float32)


def release(server: inprocserve.Server, repository: Path, version: int) -> None:
    """Copy version ``version`` of ``scale`` into the repository and pick it up, as a deploy does."""
    save_model(build_scale_model(float(version)), repository, "scale", version)
    server.refresh()


def test_statistics_that_follow_the_latest_version_forget_old_releases(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A canary at 0 %: "stable" follows the latest version, and its statistics leave the previous one at each
    # release; every number left was remembered for good (one per release, for the life of the worker).
    monkeypatch.setattr(_rollout, "_LEFT_KEPT", 4, raising=False)
    save_model(build_scale_model(1.0), repository, "scale", 1)
    canary = inprocserve.RolloutConfig(strategy="canary", canary=inprocserve.CanaryConfig(percent=0))
    server = make_server(repository, models={"scale": inprocserve.ModelConfig(rollout=canary)})
    for version in range(2, 12):
        release(server, repository, version)
        answer = server.predict("scale", X, context={"user_id": "u-1"})
        assert (answer.variant, answer.version) == ("stable", version)
    left = server._registry.routers["scale"]._left["stable"]
    assert sorted(left) == [7, 8, 9, 10]  # the last four left, no more


def test_shadow_statistics_of_past_candidates_are_forgotten(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The release process of docs/rollouts.md: each candidate is first shadowed by a flag, while version 1
    # answers. The statistics of every version ever shadowed were kept, and listed in status(), for good.
    monkeypatch.setattr(_shadow, "VERSIONS_KEPT", 3, raising=False)
    save_model(build_scale_model(1.0), repository, "scale", 1)
    flags = inprocserve.InMemoryFlags()
    config = inprocserve.ModelConfig(
        rollout=inprocserve.RolloutConfig(stable=1), version_policy=inprocserve.VersionPolicy.all()
    )
    server = make_server(
        repository, models={"scale": config}, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, shadow_budget=1.0
    )
    for version in range(2, 10):
        release(server, repository, version)
        flags.set("scale.shadow.versions", [version])
        assert server.predict("scale", X, context={"user_id": "u-1"}).version == 1
        wait_until(lambda v=version: server.status()["models"]["scale"]["shadow"].get(str(v), {}).get("runs") == 1)
    assert sorted(server.status()["models"]["scale"]["shadow"], key=int) == ["7", "8", "9"]


def test_a_shadow_kept_through_releases_keeps_its_latest_comparisons(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One shadow version kept while the stable version follows each release: it is compared with a new one
    # every time, and every version it was ever compared with was kept.
    monkeypatch.setattr(_shadow, "PRIMARIES_KEPT", 3, raising=False)
    for version in (1, 100):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    flags = inprocserve.InMemoryFlags({"scale.shadow.versions": [100]})
    config = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(
        repository, models={"scale": config}, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, shadow_budget=1.0
    )
    for version in range(2, 10):
        flags.set("scale.stable", version)
        release(server, repository, version)
        assert server.predict("scale", X, context={"user_id": "u-1"}).version == version
        wait_until(
            lambda runs=version - 1: server.status()["models"]["scale"]["shadow"].get("100", {}).get("runs") == runs
        )
    compared = server.status()["models"]["scale"]["shadow"]["100"]["by_primary"]
    assert sorted(compared, key=int) == ["7", "8", "9"]


def test_model_folders_that_come_and_go_leave_nothing_behind(repository: Path, make_server: ServerFactory) -> None:
    # An experiment per model folder, added and removed: each name stayed in the registry's tables for good.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    for experiment in range(8):
        save_model(build_scale_model(2.0), repository, f"exp-{experiment}", 1)
        server.refresh()
        assert server.predict(f"exp-{experiment}", X).version == 1
        shutil.rmtree(repository / f"exp-{experiment}")
        server.refresh()
    registry = server._registry
    for kept in (registry.incompatible, registry._latest, registry._policy_problems, registry._config_files):
        assert set(kept) <= {"scale"}


def test_names_and_versions_kept_for_refusal_metrics_are_bounded(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_registry, "_PUBLISHED_KEPT", 4, raising=False)
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    for version in range(2, 12):
        release(server, repository, version)
        assert server.predict("scale", X).version == version
        with pytest.raises(inprocserve.ModelNotFoundError):
            server.predict("scale", X, version=version - 1)  # (a pinned old release: refused, recorded)
    assert len(server._registry.published) + len(server._registry.published_versions) <= 5
