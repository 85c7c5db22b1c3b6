"""Bounded growth over a long life: what releases (hot reloads) and clients add to stays bounded.

A backend process runs for weeks through hourly releases: anything kept per version that was ever loaded, or
per request, must have a bound. Each test drives a real server through many releases (or requests) with the
bound made small, and counts what is kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import _rollout
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

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
