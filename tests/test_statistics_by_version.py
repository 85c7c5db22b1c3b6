"""A variant's experiment statistics are of the version that served it, however the version changed.

Version N of the ``scale`` model answers ``y = x * N``; each version converts at its own simulated rate, so a
variant's statistics that mix two versions show as a mean between their rates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import CanaryConfig, InMemoryFlags, OpenFeatureFlags
from inprocserve.testing import build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, rollout

X = np.ones((1, 4), np.float32)
RATES = {1: 0.10, 2: 0.20, 3: 0.05}


class Traffic:
    """Users of the ``scale`` model whose conversions follow the version that answered them."""

    def __init__(self, server: inprocserve.Server) -> None:
        self.server = server
        self.rng = np.random.default_rng(0)
        self.users = 0

    def run(self, count: int, *, reported: float = 1.0, **context: Any) -> list[tuple[str, inprocserve.Prediction]]:
        """``count`` new users, each answered once; ``reported`` of them report their outcome now, the rest
        are returned to report later."""
        later = []
        for _ in range(count):
            user, self.users = f"user-{self.users}", self.users + 1
            result = self.server.predict("scale", X, context={"user_id": user, **context})
            assert float(result["y"][0, 0]) == result.version
            if self.rng.random() < reported:
                self.server.record_outcome(result.request_id, float(self.rng.random() < RATES[result.version]))
            else:
                later.append((user, result))
        return later

    def report(self) -> dict[str, Any]:
        rollout: dict[str, Any] = self.server.status()["models"]["scale"]["rollout"]
        return rollout


def canary_flags_of_openfeature() -> tuple[Any, Callable[[int], None]]:
    """Flags from OpenFeature's in-memory provider whose canary version an operator changes."""
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    chosen = {"version": 2.0}

    def canary_version(flag: InMemoryFlag[float], context: EvaluationContext) -> FlagResolutionDetails[float]:
        return FlagResolutionDetails(value=chosen["version"])

    provider = InMemoryProvider(
        {
            "scale.canary.percent": InMemoryFlag("half", {"half": 50.0}),
            "scale.canary.version": InMemoryFlag("chosen", {"chosen": 2.0}, context_evaluator=canary_version),
        }
    )
    api.set_provider(provider, domain="inprocserve-statistics-by-version")
    return OpenFeatureFlags(domain="inprocserve-statistics-by-version"), lambda v: chosen.update(version=float(v))


def canary_flags_in_memory() -> tuple[Any, Callable[[int], None]]:
    flags = InMemoryFlags({"scale.canary.percent": 50, "scale.canary.version": 2})
    return flags, lambda version: flags.set("scale.canary.version", version)


@pytest.mark.parametrize("flags_of", [canary_flags_in_memory, canary_flags_of_openfeature])
def test_a_flag_that_moves_the_canary_to_another_version_starts_its_statistics_afresh(
    flags_of: Callable[[], tuple[Any, Callable[[int], None]]], versions: Path, make_server: ServerFactory
) -> None:
    """Canary version 2 (20 %, against stable's 10 %), then the ``scale.canary.version`` flag moved it to
    version 3 (5 %): "canary" went on from version 2's outcomes, and after 4000 more users status showed the
    canary at 10 %, level with stable and still "significant" (the verdict reached on version 2's outcomes),
    where version 3 is 5 points worse; late outcomes of version 2 joined it."""
    flags, choose_canary = flags_of()
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="canary", stable=1)
    )
    traffic = Traffic(server)
    late = traffic.run(4000, reported=0.5)
    assert traffic.report()["tests"]["canary"]["significant"] is True
    assert traffic.report()["variants"]["canary"]["version"] == 2

    choose_canary(3)
    traffic.run(4000)
    for user, result in late:  # outcomes of version 2's requests, reported after the move: they credit nothing
        if result.variant == "canary":
            assert server.record_outcome(result.request_id, 1.0, model="scale", key=user) is None
    report = traffic.report()
    canary, stable = report["variants"]["canary"], report["variants"]["stable"]
    assert (canary["version"], stable["version"]) == (3, 1)
    assert 1700 < canary["outcomes"] < 2300 and canary["outcomes"] == canary["served"]
    assert canary["mean_reward"] < 0.08
    assert report["tests"]["canary"]["difference"] < 0  # worse than stable, as version 3 is
    assert "<th>version</th>" in inprocserve.render_status_page(server.status())


def test_a_stable_version_that_follows_the_latest_one_loaded_starts_its_statistics_afresh(
    repository: Path, make_server: ServerFactory
) -> None:
    """No stable version named: the latest loaded is stable. Version 1 was the challenger against version 2
    (20 %); a hot reload loaded version 3 (5 %), which became stable: "stable" went on from version 2's
    outcomes, at 10 % after 4000 more users, and the challenger (10 %) showed level with a stable version
    it beats two to one."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository, config=rollout(strategy="canary", canary=CanaryConfig(version=1, percent=50)))
    traffic = Traffic(server)
    late = traffic.run(4000, reported=0.5)
    assert traffic.report()["variants"]["stable"]["version"] == 2

    save_model(build_scale_model(3.0), repository, "scale", 3)
    assert server.refresh() == []
    traffic.run(4000)
    for user, result in late:  # version 2's stable requests, reported after version 3 took over
        if result.variant == "stable":
            assert server.record_outcome(result.request_id, 1.0, model="scale", key=user) is None
    report = traffic.report()
    stable = report["variants"]["stable"]
    assert (stable["version"], report["variants"]["canary"]["version"]) == (3, 1)
    assert 1700 < stable["outcomes"] < 2300 and stable["mean_reward"] < 0.08
    assert report["tests"]["canary"]["difference"] > 0  # the challenger beats the new stable version


def test_outcomes_by_key_credit_the_statistics_as_they_are_and_never_start_them_afresh(
    versions: Path, make_server: ServerFactory
) -> None:
    """Outcomes reported by key only: after the flag moved the canary from version 2 to 3, and before
    version 3 served anyone, an outcome by key can only be of a request version 2 served: it credits
    version 2's statistics (it started version 3's afresh, and credited it there). Once version 3 serves,
    its statistics start afresh and take the outcomes by key from then on."""
    flags = InMemoryFlags({"scale.canary.percent": 50, "scale.canary.version": 2})
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="canary", stable=1)
    )
    users = [f"user-{i}" for i in range(400)]
    variants = {user: server.predict("scale", X, context={"user_id": user}).variant for user in users}
    canary_users = [user for user in users if variants[user] == "canary"]
    for user in canary_users:
        assert server.record_outcome(None, 1.0, model="scale", key=user) == "canary"
    flags.set("scale.canary.version", 3)
    for user in canary_users[:10]:
        assert server.record_outcome(None, 0.0, model="scale", key=user) == "canary"
    canary = server.status()["models"]["scale"]["rollout"]["variants"]["canary"]
    assert (canary["version"], canary["outcomes"]) == (2, len(canary_users) + 10)
    for user in canary_users[:10]:
        assert server.predict("scale", X, context={"user_id": user}).version == 3
        assert server.record_outcome(None, 0.0, model="scale", key=user) == "canary"
    canary = server.status()["models"]["scale"]["rollout"]["variants"]["canary"]
    assert (canary["version"], canary["served"], canary["outcomes"], canary["mean_reward"]) == (3, 10, 10, 0.0)


def test_outcomes_by_key_under_a_flag_rule_on_another_attribute_keep_the_statistics(
    versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The canary's version flag reads another attribute than the key (``app`` "web": version 3, else 2) and
    every request has it, so version 3 alone serves the canary; outcomes come by key, read from the key
    alone (version 2). The first outcome started "canary" and "stable" afresh as version 2's: after 200
    users status showed the canary as version 2, served 0, outcomes 89 (version 3's requests counted
    nowhere); past the hold (10 s, 0.2 s here) version 3's took them back, stable's 112 went, and every
    outcome by key credited nothing: after 400, canary served 92, outcomes 0, and no test."""
    flags = canary_version_by("app", "web", percent=50.0, domain="inprocserve-canary-by-app")
    monkeypatch.setattr("inprocserve._rollout._RETURN_AFTER_S", 0.2)
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="canary", stable=1)
    )
    for i in range(400):
        user = f"user-{i}"
        result = server.predict("scale", X, context={"user_id": user, "app": "web"})
        assert server.record_outcome(None, 1.0, model="scale", key=user) == result.variant
        if i == 200:
            time.sleep(0.3)  # (past the hold)
    report = server.status()["models"]["scale"]["rollout"]
    canary, stable = report["variants"]["canary"], report["variants"]["stable"]
    assert canary["version"] == 3 and canary["served"] == canary["outcomes"] > 150
    assert stable["served"] == stable["outcomes"] > 150
    assert "canary" in report["tests"]


def test_a_flag_giving_the_canary_two_versions_at_once_keeps_the_later_ones_statistics(
    versions: Path, make_server: ServerFactory
) -> None:
    """A targeting rule gives staff version 3 as the canary, everyone else version 2: requests alternate
    between the two versions under "canary", and restarting its statistics at every change would keep none.
    They stay with version 3 (the later one); version 2's requests count nowhere."""
    flags = canary_version_by("plan", "staff", percent=100.0, domain="inprocserve-two-canaries")
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="canary", stable=1)
    )
    traffic = Traffic(server)
    traffic.run(50, plan="customer")
    for _ in range(20):
        traffic.run(10, plan="staff")
        traffic.run(10, plan="customer")
    canary = traffic.report()["variants"]["canary"]
    assert (canary["version"], canary["served"], canary["outcomes"]) == (3, 200, 200)


def test_a_variant_served_by_two_versions_for_longer_than_the_hold_is_warned_about_once(
    versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The staff rule above keeps sending customers version 2 under "canary" while staff get version 3: once
    both have served it for the hold (10 s; 1 s here), a warning names the model, the variant and both
    versions, once, and says what to do."""
    monkeypatch.setattr("inprocserve._rollout._RETURN_AFTER_S", 1.0)
    flags = canary_version_by("plan", "staff", percent=100.0, domain="inprocserve-two-canaries-warned")
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="canary", stable=1)
    )
    traffic = Traffic(server)

    def both_serve(until: Callable[[], bool]) -> None:
        give_up = time.monotonic() + 10
        while not until() and time.monotonic() < give_up:
            traffic.run(2, plan="staff")
            traffic.run(2, plan="customer")
            time.sleep(0.02)

    with caplog.at_level(logging.WARNING, logger="inprocserve._rollout"):
        traffic.run(5, plan="customer")
        alternating_since = time.monotonic()
        both_serve(until=lambda: bool(two_versions_warnings(caplog)))
        warned_after = time.monotonic() - alternating_since
        more = time.monotonic() + 0.5
        both_serve(until=lambda: time.monotonic() > more)
    assert warned_after >= 1.0  # (not within the hold: requests still running after a change)
    (warning,) = two_versions_warnings(caplog)
    assert "'scale'" in warning and "'canary'" in warning and "versions 3 and 2 at once" in warning
    assert "own arm" in warning


def two_versions_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "at once" in r.getMessage()]


def test_statistics_go_back_to_a_version_the_flag_moves_back_to_once_the_other_stops_serving(
    versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The canary flag moved from version 2 to 3, then back to 2 (version 3 did badly): requests still running
    on version 2 right after the first move count nowhere, and once version 3 has served none of the
    canary's requests for a while (10 s; 1 s here), version 2's start "canary" afresh."""
    monkeypatch.setattr("inprocserve._rollout._RETURN_AFTER_S", 1.0)
    flags = InMemoryFlags({"scale.canary.percent": 100, "scale.canary.version": 2})
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="canary", stable=1)
    )
    traffic = Traffic(server)
    traffic.run(20)
    flags.set("scale.canary.version", 3)
    traffic.run(20)
    flags.set("scale.canary.version", 2)
    traffic.run(20)  # within the hold: counted nowhere
    canary = traffic.report()["variants"]["canary"]
    assert (canary["version"], canary["served"]) == (3, 20)
    time.sleep(1.1)
    traffic.run(20)
    canary = traffic.report()["variants"]["canary"]
    assert (canary["version"], canary["served"], canary["outcomes"]) == (2, 20, 20)
    assert not two_versions_warnings(caplog)  # (a flag moved back is not two versions at once)


def canary_version_by(attribute: str, value: str, *, percent: float, domain: str) -> OpenFeatureFlags:
    """OpenFeature flags (the in-memory provider) giving ``percent`` of users the canary, whose version is 3
    for requests whose context has ``attribute`` = ``value`` and 2 for the others."""
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    def version(flag: InMemoryFlag[float], context: EvaluationContext) -> FlagResolutionDetails[float]:
        return FlagResolutionDetails(value=3.0 if context.attributes.get(attribute) == value else 2.0)

    provider = InMemoryProvider(
        {
            "scale.canary.percent": InMemoryFlag("set", {"set": percent}),
            "scale.canary.version": InMemoryFlag("by-context", {"by-context": 2.0}, context_evaluator=version),
        }
    )
    api.set_provider(provider, domain=domain)
    return OpenFeatureFlags(domain=domain)
