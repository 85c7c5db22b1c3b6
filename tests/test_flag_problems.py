"""Flag values that cannot be used are counted, logged once a minute, and shown in result.reason and status.

A flag that names a version that is not loaded, an unknown strategy, a percentage out of range or a value
of the wrong type must never make a rollout silently do nothing: the stable version answers, and the
reason says which flag is wrong and why.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import InMemoryFlags, VariantConfig
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, rollout, wait_until

X = np.ones((1, 4), np.float32)


CANARY = {"strategy": "canary", "stable": 1, "canary": inprocserve.CanaryConfig(version=2)}
ARMS = {"strategy": "ab", "stable": 1, "variants": {"a": VariantConfig(version=2), "b": VariantConfig(version=3)}}


@pytest.mark.parametrize(
    ("config", "values", "key", "why"),
    [
        (
            CANARY,
            {"scale.canary.percent": "ten"},
            "scale.canary.percent",
            "'scale.canary.percent' must be a number, got 'ten'",
        ),
        (CANARY, {"scale.canary.percent": 150}, "scale.canary.percent", "percentage from 0 to 100, got 150"),
        (CANARY, {"scale.canary.percent": -1}, "scale.canary.percent", "percentage from 0 to 100, got -1"),
        (CANARY, {"scale.canary.percent": 5, "scale.canary.version": 7}, "scale.canary.version", "names version 7"),
        (CANARY, {"scale.canary.percent": 5, "scale.canary.version": 2.5}, "scale.canary.version", "whole number"),
        (CANARY, {"scale.strategy": "canery"}, "scale.strategy", "is 'canery', not one of stable, canary, ab"),
        (CANARY, {"scale.stable": 8}, "scale.stable", "names version 8, which is not loaded (loaded: 1, 2, 3)"),
        (CANARY, {"scale.kill": "yes"}, "scale.kill", "'scale.kill' must be a boolean"),
        (ARMS, {"scale.ab.weights": {"a": 1, "c": 1}}, "scale.ab.weights", "unknown variants ['c']"),
        (ARMS, {"scale.ab.weights": [1, 2]}, "scale.ab.weights", "must map variant names to weights"),
        (ARMS, {"scale.ab.weights": {"a": 0, "b": 0}}, "scale.ab.weights", "must not all be 0"),
        ({"strategy": "stable", "stable": 1}, {"scale.strategy": "ab"}, "scale.strategy", "needs rollout.variants"),
    ],
)
def test_an_unusable_flag_is_counted_logged_once_and_shown(
    versions: Path,
    make_server: ServerFactory,
    caplog: pytest.LogCaptureFixture,
    config: dict[str, Any],
    values: dict[str, Any],
    key: str,
    why: str,
) -> None:
    server = make_server(
        versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=InMemoryFlags(values), config=rollout(**config)
    )
    with caplog.at_level("WARNING", logger="inprocserve"):
        results = [server.predict("scale", X, context={"user_id": f"u{i}"}) for i in range(30)]
    assert {r.version for r in results} == {1}  # the stable version answers
    assert {r.variant for r in results} == {"stable"}
    assert all(r.reason.startswith("unusable flag: ") and why in r.reason for r in results), results[0].reason
    status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert status["unusable"] == 30
    assert why in status["unusable_flags"][key]
    assert status["failures"] == status["timeouts"] == 0  # the provider answered; the value is wrong
    logged = [r for r in caplog.records if "unusable flag" in r.getMessage()]
    assert len(logged) == 1 and why in logged[0].getMessage()
    assert "the stable decision answers" in logged[0].getMessage()


@pytest.mark.parametrize(
    ("config", "values", "why"),
    [
        (CANARY, {"scale.strategy": "x" * 1_000_000}, "'scale.strategy' is 'xxxxxx"),
        (CANARY, {"scale.canary.percent": 5, "scale.canary.version": "9" * 1_000_000}, "must be a number, got '999"),
        (CANARY, {"scale.canary.percent": "%" * 1_000_000}, "must be a number, got '%%%"),
        (CANARY, {"scale.kill": ["on"] * 1_000_000}, "must be a boolean, got ['on', 'on',"),
        (ARMS, {"scale.ab.weights": [1] * 1_000_000}, "must map variant names to weights, got [1, 1,"),
        (ARMS, {"scale.ab.weights": {f"v{i}": 1 for i in range(100_000)}}, "unknown variants ['v0', 'v1',"),
        (CANARY, {"scale.shadow.versions": "3" * 1_000_000}, "must be a list of versions, got '333"),
    ],
)
def test_a_huge_unusable_value_is_shown_cut_short(
    versions: Path, make_server: ServerFactory, config: dict[str, Any], values: dict[str, Any], why: str
) -> None:
    # (a list pasted into the wrong flag: its whole repr went into every request's reason, megabytes each)
    server = make_server(
        versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=InMemoryFlags(values), config=rollout(**config)
    )
    result = server.predict("scale", X, context={"user_id": "u"})
    assert result.version == 1 and why in result.reason and len(result.reason) < 300, result.reason[:300]
    problems = server.status()["models"]["scale"]["rollout"]["flags"]["unusable_flags"]
    assert [len(problem) < 300 for problem in problems.values()] == [True]


@pytest.mark.parametrize(
    "value",
    [{f"k{i}": i for i in range(1_000_000)}, set(range(1_000_000)), b"x" * 5_000_000],
    ids=["dict", "set", "bytes"],
)
def test_showing_a_huge_unusable_value_costs_nothing_that_grows_with_it(
    versions: Path, make_server: ServerFactory, value: Any
) -> None:
    # reprlib sorted a whole dict or set to show its first keys (76 ms a request for a million keys) and
    # made the whole repr of bytes before cutting it (15 ms for 5 MB)
    server = make_server(
        versions,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        flags=InMemoryFlags({"scale.strategy": value}),
        config=rollout(**CANARY),
    )
    server.predict("scale", X, context={"user_id": "u"})
    tracemalloc.start()
    try:
        result = server.predict("scale", X, context={"user_id": "u"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.version == 1 and "'scale.strategy' must be a string" in result.reason and len(result.reason) < 300
    assert peak < 1_000_000, peak


@pytest.mark.parametrize("percent", [100, 0])
def test_a_shadow_list_of_a_million_versions_turns_shadows_off_at_once(
    versions: Path, make_server: ServerFactory, percent: float
) -> None:
    # A million entries pasted into shadow.versions, each naming a loaded version: every one was checked for
    # every request (a second a request, shadows at 0 % or not), a flag service's mistake that was an outage.
    values = {"scale.shadow.versions": [3] * 1_000_000, "scale.shadow.percent": percent}
    server = make_server(
        versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=InMemoryFlags(values), config=rollout(**CANARY)
    )
    server.predict("scale", X, context={"user_id": "u"})
    results = [server.predict("scale", X, context={"user_id": f"u{i}"}) for i in range(5)]
    assert {result.version for result in results} == {1}
    assert "shadows off: unusable flag: 'scale.shadow.versions' lists 1000000 versions" in results[0].reason
    assert server.status()["models"]["scale"]["rollout"]["flags"]["unusable"] == 6


class FailingWithAHugeMessage(InMemoryFlags):
    """A provider whose backend fails with an error carrying megabytes of text (a whole response body)."""

    body = "x" * 5_000_000  # (made once: what the provider's own raise costs is not the library's)

    def get_number(self, key: str, default: float, context: Any) -> float:
        raise RuntimeError(self.body)


def test_a_provider_error_with_a_huge_message_costs_nothing_that_grows_with_it(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # every failing request made the warning's text, the error's whole repr (20 ms a request for 5 MB), though
    # the warning is logged once a minute
    server = make_server(
        versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=FailingWithAHugeMessage({}), config=rollout(**CANARY)
    )
    with caplog.at_level("WARNING", logger="inprocserve"):
        server.predict("scale", X, context={"user_id": "u"})
    assert [r for r in caplog.records if "flag provider 'in-memory' failed: RuntimeError" in r.getMessage()]
    tracemalloc.start()
    try:
        result = server.predict("scale", X, context={"user_id": "u"})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert (result.version, result.reason) == (1, "flag provider failed")
    assert peak < 1_000_000, peak
    assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 2


def test_usable_values_are_not_counted(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 100, "scale.canary.version": 3, "scale.stable": 1})
    server = make_server(versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=flags, config=rollout(**CANARY))
    result = server.predict("scale", X, context={"user_id": "u"})
    assert (result.version, result.variant) == (3, "canary")
    assert server.status()["models"]["scale"]["rollout"]["flags"]["unusable"] == 0
    flags.set("scale.canary.percent", 0)  # no canary: its version is not needed, nothing to complain about
    flags.set("scale.canary.version", 9)
    assert server.predict("scale", X, context={"user_id": "u"}).reason == "the canary is at 0%"
    assert server.status()["models"]["scale"]["rollout"]["flags"]["unusable"] == 0


def test_an_unusable_shadow_flag_turns_shadows_off_but_keeps_the_answer(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    comparisons: list[inprocserve.ShadowComparison] = []
    flags = InMemoryFlags({"scale.canary.percent": 100, "scale.shadow.versions": [3, 6]})
    server = make_server(
        versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=flags, config=rollout(**CANARY), on_shadow=comparisons.append
    )
    with caplog.at_level("WARNING", logger="inprocserve"):
        result = server.predict("scale", X, context={"user_id": "u"})
    # the log says what the problem costs: the shadow copy, not the answer (it said "the stable decision
    # answers", though the canary answered)
    (logged,) = [r.getMessage() for r in caplog.records if "unusable flag" in r.getMessage()]
    assert "the request is mirrored to no shadow" in logged and "stable decision" not in logged
    assert (result.version, result.variant) == (2, "canary")
    assert "shadows off: unusable flag: 'scale.shadow.versions' names version 6" in result.reason
    flags.set("scale.shadow.versions", [3])
    flags.set("scale.shadow.percent", 101)
    assert "'scale.shadow.percent' must be a percentage" in server.predict("scale", X, context={"user_id": "u"}).reason
    flags.set("scale.shadow.percent", 100)
    assert "shadows off" not in server.predict("scale", X, context={"user_id": "u"}).reason
    wait_until(lambda: len(comparisons) == 1)
    status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert status["unusable"] == 2
    assert set(status["unusable_flags"]) == {"scale.shadow.versions", "scale.shadow.percent"}


class TargetedFlags(InMemoryFlags):
    """Flags a rollout reads per request, as a provider with targeting rules is read (not planned once)."""


@pytest.mark.parametrize(
    ("flags", "shadow"),
    [
        (None, (2, 2)),  # rollout.shadow.versions = [2, 2] in the configuration
        (InMemoryFlags({"scale.shadow.versions": [2, 2]}), ()),  # the flag, planned once per value
        (TargetedFlags({"scale.shadow.versions": [2, 2]}), ()),  # the flag, read for every request
    ],
)
def test_a_shadow_version_listed_twice_gets_one_copy_of_each_request(
    versions: Path, make_server: ServerFactory, flags: InMemoryFlags | None, shadow: tuple[int, ...]
) -> None:
    comparisons: list[inprocserve.ShadowComparison] = []
    config = rollout(strategy="stable", stable=1, shadow=inprocserve.ShadowConfig(versions=shadow))
    server = make_server(
        versions,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        flags=flags,
        config=config,
        on_shadow=comparisons.append,
        shadow_budget=1.0,
    )
    ids = [server.predict("scale", X, context={"user_id": f"u{i}"}).request_id for i in range(4)]
    wait_until(lambda: len(comparisons) >= 4)
    # each request was mirrored once (copies are run in order: a second copy of the first request would
    # come before the copies of the last ones)
    assert [c.request_id for c in comparisons[:4]] == ids
    assert server.status()["models"]["scale"]["shadow"]["2"]["runs"] == 4


@pytest.mark.parametrize("versions_flag", [[10**400], [2, 10**5000]])
def test_a_shadow_version_too_large_for_a_float_is_an_unusable_flag_not_a_provider_failure(
    versions: Path, make_server: ServerFactory, versions_flag: list[int]
) -> None:
    flags = InMemoryFlags({"scale.shadow.versions": versions_flag})  # (a JSON flags file parses such ints)
    server = make_server(
        versions, flag_timeout_s=VALUES_NOT_SPEED_S, flags=flags, config=rollout(strategy="stable", stable=1)
    )
    result = server.predict("scale", X, context={"user_id": "u"})
    assert result.version == 1
    assert "shadows off: unusable flag: 'scale.shadow.versions' names version " in result.reason
    status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert (status["unusable"], status["failures"]) == (1, 0)  # the provider answered: nothing to page about


def test_a_canary_on_a_version_that_failed_to_load_is_shown_without_flags(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    (repository / "scale" / "2").mkdir()
    (repository / "scale" / "2" / "model.onnx").write_bytes(b"not a model")
    server = make_server(
        repository, config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=50))
    )
    result = server.predict("scale", X, context={"user_id": "u"})
    assert result.version == 1
    assert result.reason == (
        "unusable setting: 'scale.canary.version' names version 2, which is not loaded (loaded: 1)"
    )


@pytest.mark.parametrize("timeout_s", [0.0, -1.0])
def test_the_flag_budget_must_be_positive(versions: Path, timeout_s: float) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match="flag_timeout_s must be > 0"):
        inprocserve.Server(versions, flags=InMemoryFlags(), flag_timeout_s=timeout_s)


class RaisingFlags(InMemoryFlags):
    name = "raising"

    def get_number(self, key: str, default: float, context: Any) -> float:
        raise ConnectionError("flag service unreachable")


def test_problems_are_logged_once_a_minute_per_kind(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock()
    flags = RaisingFlags({"scale.strategy": "canery"})
    server = make_server(versions, flags=flags, config=rollout(**CANARY), clock=clock)

    def messages() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.name.startswith("inprocserve")]

    with caplog.at_level("WARNING", logger="inprocserve"):
        for _ in range(10):
            assert server.predict("scale", X, context={"user_id": "u"}).reason == "flag provider failed"
        assert len(messages()) == 1
        clock.advance(59)
        server.predict("scale", X, context={"user_id": "u"})
        assert len(messages()) == 1  # still within the minute
        clock.advance(2)
        server.predict("scale", X, context={"user_id": "u"})
        assert len(messages()) == 2 and "12 failures so far" in messages()[-1]
        flags.get_number = InMemoryFlags.get_number.__get__(flags)  # type: ignore[method-assign]
        reason = server.predict("scale", X, context={"user_id": "u"}).reason
        assert reason.startswith("unusable flag: 'scale.strategy'")
        assert len(messages()) == 3  # another kind of problem: its own first log line
