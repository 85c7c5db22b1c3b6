"""Flag providers: in-memory, environment, file, OpenFeature."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from inprocserve import EnvFlags, FileFlags, FlagError, FlagProvider, InMemoryFlags, OpenFeatureFlags


def test_in_memory_flags_change_at_run_time() -> None:
    flags = InMemoryFlags({"m.canary.percent": 5})
    assert isinstance(flags, FlagProvider)
    assert flags.get_number("m.canary.percent", 0, {}) == 5.0
    flags.set("m.canary.percent", 10)
    assert flags.get_number("m.canary.percent", 0, {}) == 10.0
    flags.delete("m.canary.percent")
    assert flags.get_number("m.canary.percent", 1.5, {}) == 1.5


def test_wrong_types_raise_flag_error() -> None:
    flags = InMemoryFlags({"n": "ten", "b": 1, "s": 3})
    with pytest.raises(FlagError, match="'n' must be a number"):
        flags.get_number("n", 0, {})
    with pytest.raises(FlagError, match="'b' must be a boolean"):
        flags.get_boolean("b", False, {})
    with pytest.raises(FlagError, match="'s' must be a string"):
        flags.get_string("s", "", {})


def test_env_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = EnvFlags()
    assert flags.variable("fraud.canary.percent") == "INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT"
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "12.5")
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_KILL", "true")
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_SHADOW_VERSIONS", "[3, 4]")
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_STRATEGY", "canary")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 12.5
    assert flags.get_boolean("fraud.kill", False, {}) is True
    assert flags.get_object("fraud.shadow.versions", [], {}) == [3, 4]
    assert flags.get_string("fraud.strategy", "stable", {}) == "canary"
    assert flags.get_number("other", 7, {}) == 7
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "20")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 20


def test_file_flags_reload_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"fraud": {"canary": {"percent": 5}}, "fraud.kill": False}))
    flags = FileFlags(path, check_interval_s=0)
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5
    assert flags.get_boolean("fraud.kill", True, {}) is False
    path.write_text(json.dumps({"fraud": {"canary": {"percent": 50}}}))
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the file system's resolution
    assert flags.get_number("fraud.canary.percent", 0, {}) == 50


def test_file_flags_keep_the_last_good_values(tmp_path: Path) -> None:
    path = tmp_path / "flags.toml"
    path.write_text("[fraud.canary]\npercent = 5\n")
    flags = FileFlags(path, check_interval_s=0)
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5
    path.write_text("not = [valid")
    os.utime(path, ns=(1, 10**18))
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5
    assert flags.last_error is not None


def test_file_flags_without_any_good_file_raise(tmp_path: Path) -> None:
    flags = FileFlags(tmp_path / "missing.json", check_interval_s=0)
    with pytest.raises(FlagError, match="flag file unusable"):
        flags.get_number("x", 0, {})


def test_openfeature_adapter_with_the_sdk_in_memory_provider() -> None:
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    def by_user(flag: InMemoryFlag[float], context: EvaluationContext) -> FlagResolutionDetails[float]:
        value = 100.0 if context.targeting_key == "vip" and context.attributes.get("plan") == "pro" else 5.0
        return FlagResolutionDetails(value=value)

    api.set_provider(
        InMemoryProvider(
            {
                "fraud.canary.percent": InMemoryFlag("on", {"on": 5.0}, context_evaluator=by_user),
                "fraud.kill": InMemoryFlag("off", {"on": True, "off": False}),
                "fraud.strategy": InMemoryFlag("c", {"c": "canary"}),
                "fraud.shadow.versions": InMemoryFlag("v", {"v": [3]}),
            }
        ),
        domain="inprocserve-test",
    )
    flags = OpenFeatureFlags(domain="inprocserve-test")
    assert flags.blocking is True
    assert flags.get_number("fraud.canary.percent", 0, {"user_id": "vip", "plan": "pro"}) == 100.0
    assert flags.get_number("fraud.canary.percent", 0, {"user_id": "someone"}) == 5.0
    assert flags.get_boolean("fraud.kill", True, {}) is False
    assert flags.get_string("fraud.strategy", "stable", {}) == "canary"
    assert flags.get_object("fraud.shadow.versions", [], {}) == [3]
    assert flags.get_number("unknown.flag", 2.0, {}) == 2.0  # not found: the default, not an error
    with pytest.raises(FlagError, match="TYPE_MISMATCH"):
        flags.get_number("fraud.strategy", 0.0, {})
