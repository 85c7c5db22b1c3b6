"""Flag providers: in-memory, environment, file, OpenFeature."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import (
    CanaryConfig,
    EnvFlags,
    FileFlags,
    FlagError,
    FlagProvider,
    InMemoryFlags,
    ModelConfig,
    OpenFeatureFlags,
    RolloutConfig,
    Server,
    VersionPolicy,
)
from inprocserve._flags import FlagTypeError
from inprocserve.testing import build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, run_in_forked_child, wait_until


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


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The texts EnvFlags parses as JSON, in order."""
    from inprocserve import _flags

    texts: list[str] = []

    class CountingJson:
        @staticmethod
        def loads(text: str) -> Any:
            texts.append(text)
            return json.loads(text)

    monkeypatch.setattr(_flags, "json", CountingJson)
    return texts


def test_env_flags_parse_each_text_once_and_follow_every_change(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollout reads its flags for every request: each variable's text is parsed once, not per read, and
    a changed, removed or restored variable is read as it is now."""
    flags = EnvFlags()
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "5")
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_SHADOW_VERSIONS", "[3]")
    for _ in range(50):
        assert flags.get_number("fraud.canary.percent", 0, {}) == 5
        assert flags.get_object("fraud.shadow.versions", [], {}) == [3]
    assert parsed.count("5") == 1
    assert parsed.count("[3]") == 50  # a list is parsed for every read: each caller gets its own
    flags.get_object("fraud.shadow.versions", [], {}).append(4)
    assert flags.get_object("fraud.shadow.versions", [], {}) == [3]
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "50")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 50
    monkeypatch.delenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 0  # removed: the default
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "5")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "not json")
    with pytest.raises(FlagTypeError):
        flags.get_number("fraud.canary.percent", 0, {})  # taken as a string, as before
    assert flags.get_string("fraud.canary.percent", "", {}) == "not json"


def test_env_flags_follow_a_new_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    flags = EnvFlags()
    monkeypatch.setenv("INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT", "7")
    monkeypatch.setenv("APP_FRAUD_CANARY_PERCENT", "1")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 7
    flags.prefix = "APP_"
    assert flags.variable("fraud.canary.percent") == "APP_FRAUD_CANARY_PERCENT"
    assert flags.get_number("fraud.canary.percent", 0, {}) == 1


def test_env_flags_with_more_keys_than_are_kept_still_read_each(
    parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """What is kept is bounded (keys could come from anywhere); keys past the bound are read all the same."""
    from inprocserve import _flags

    monkeypatch.setattr(_flags, "_ENV_KEYS_KEPT", 4)
    flags = EnvFlags()
    for number in range(10):
        monkeypatch.setenv(f"INPROCSERVE_FLAG_M{number}_CANARY_PERCENT", str(number))
    for _ in range(3):
        for number in range(10):
            assert flags.get_number(f"m{number}.canary.percent", -1, {}) == number
    assert len(flags._variables) == len(flags._parsed) == 4
    monkeypatch.setenv("INPROCSERVE_FLAG_M9_CANARY_PERCENT", "90")  # (not kept: read and parsed each time)
    assert flags.get_number("m9.canary.percent", -1, {}) == 90
    monkeypatch.setenv("INPROCSERVE_FLAG_M0_CANARY_PERCENT", "10")  # (kept: its new text replaces the old)
    for _ in range(3):
        assert flags.get_number("m0.canary.percent", -1, {}) == 10
    assert parsed.count("10") == 1 and len(flags._parsed) == 4


def test_file_flags_reload_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"fraud": {"canary": {"percent": 5}}, "fraud.kill": False}))
    flags = FileFlags(path, check_interval_s=0)
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5
    assert flags.get_boolean("fraud.kill", True, {}) is False
    path.write_text(json.dumps({"fraud": {"canary": {"percent": 50}}}))
    os.utime(path, ns=(1, 10**18))  # a new modification time, whatever the file system's resolution
    # (a read asks a background thread to look at the file: the change is seen one look later)
    wait_until(lambda: flags.get_number("fraud.canary.percent", 0, {}) == 50)


class _SharedFileStat:
    """A file's stat as a network share whose server stamps files with whole seconds, from a clock 10 s
    behind this host's, reports it (no such share can be mounted in a test: its times are played)."""

    def __init__(self, info: os.stat_result) -> None:
        self._info = info
        self.st_mtime_ns = (info.st_mtime_ns - 10 * 10**9) // 10**9 * 10**9
        self.st_ctime_ns = (info.st_ctime_ns - 10 * 10**9) // 10**9 * 10**9

    def __getattr__(self, name: str) -> Any:
        return getattr(self._info, name)


def test_file_flags_see_an_edit_in_the_same_second_on_a_share_whose_clock_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "flags.json"
    local_stat = Path.stat

    def stat(self: Path, **kwargs: Any) -> Any:
        info = local_stat(self, **kwargs)
        return _SharedFileStat(info) if self == path else info

    monkeypatch.setattr(Path, "stat", stat)

    def edit(percent: int) -> tuple[int, int]:  # in place, as a config agent rewrites the bytes
        with path.open("r+b" if path.exists() else "wb") as file:
            file.write(json.dumps({"fraud.canary.percent": percent}).encode())
        info = path.stat()
        return info.st_mtime_ns, info.st_ctime_ns

    for _ in range(5):  # (two edits a few ms apart: in one second, unless they straddle its end)
        before = edit(10)
        flags = FileFlags(path, check_interval_s=0)  # read between the two edits
        assert flags.get_number("fraud.canary.percent", 0, {}) == 10
        if edit(50) == before:  # the same size, inode, and times: only a reread can tell
            break
        flags.close()
    else:
        pytest.fail("no two edits within one second")
    # Its times are 10 s older than this host's clock, which took them for an edit long past: the second
    # edit was never read, and the canary stayed at 10 % until the next edit.
    wait_until(lambda: flags.get_number("fraud.canary.percent", 0, {}) == 50)
    flags.close()


def test_file_flags_keep_the_last_good_values(tmp_path: Path) -> None:
    path = tmp_path / "flags.toml"
    path.write_text("[fraud.canary]\npercent = 5\n")
    flags = FileFlags(path, check_interval_s=0)
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5
    path.write_text("not = [valid")
    os.utime(path, ns=(1, 10**18))
    flags.get_number("fraud.canary.percent", 0, {})  # (asks for a look at the file, seen one look later)
    wait_until(lambda: flags.last_error is not None)
    assert flags.get_number("fraud.canary.percent", 0, {}) == 5


def test_file_flags_without_any_good_file_raise(tmp_path: Path) -> None:
    flags = FileFlags(tmp_path / "missing.json", check_interval_s=0)
    with pytest.raises(FlagError, match="flag file unusable"):
        flags.get_number("x", 0, {})


def test_a_flag_file_whose_top_level_is_not_a_table_is_refused_saying_so(tmp_path: Path) -> None:
    # (a JSON list, or a bare value, where an object of flags belongs: every lookup falls back, and the error
    # an operator reads in status() must say what is wrong with the file)
    path = tmp_path / "flags.json"
    path.write_text('[{"fraud.canary.percent": 5}]')
    flags = FileFlags(path, check_interval_s=0)
    with pytest.raises(FlagError, match="flag file unusable"):
        flags.get_number("fraud.canary.percent", 0, {})
    assert flags.last_error is not None and "the top level must be a table/object" in flags.last_error
    flags.close()


def test_an_openfeature_kill_switch_answers_a_request_whose_key_cannot_be_made_text(
    repository: Path, make_server: ServerFactory
) -> None:
    """The evaluation context of every flag, the kill switch's too, was built from the key: with a flag
    evaluated per context, the request failed instead of being answered by stable."""
    from openfeature import api
    from openfeature.evaluation_context import EvaluationContext
    from openfeature.flag_evaluation import FlagResolutionDetails
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    def targeted(flag: InMemoryFlag[bool], context: EvaluationContext) -> FlagResolutionDetails[bool]:
        return FlagResolutionDetails(value=True)

    kill = InMemoryFlag("on", {"on": True, "off": False}, context_evaluator=targeted)
    api.set_provider(InMemoryProvider({"scale.kill": kill}), domain="inprocserve-kill")
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    canary = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50))
    config = ModelConfig(rollout=canary, version_policy=VersionPolicy.all())
    server = make_server(
        repository,
        config=config,
        flags=OpenFeatureFlags(domain="inprocserve-kill"),
        flag_timeout_s=VALUES_NOT_SPEED_S,
    )
    answer = server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": 10**5000})
    assert (answer.variant, answer.reason) == ("stable", "kill switch is on")


def test_a_provider_that_takes_the_targeting_key_from_another_field_than_the_buckets_is_warned_of(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """OpenFeatureFlags took the targeting key from "user_id" while the rollout bucketed by "account_id": a
    flag's rule on the targeting key judged another user than the request's sticky bucket, and nothing said so."""
    from openfeature import api
    from openfeature.provider.in_memory_provider import InMemoryProvider

    api.set_provider(InMemoryProvider({}), domain="inprocserve-key-fields")
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    canary = CanaryConfig(version=2, percent=50)
    by_account = RolloutConfig(strategy="canary", stable=1, canary=canary, key_field="account_id")
    for field, warned in (("user_id", True), ("account_id", False)):
        caplog.clear()
        with caplog.at_level("WARNING", logger="inprocserve"):
            server = make_server(
                repository,
                config=ModelConfig(rollout=by_account, version_policy=VersionPolicy.all()),
                flags=OpenFeatureFlags(domain="inprocserve-key-fields", targeting_key_field=field),
            )
            server.predict("scale", np.ones((1, 4), np.float32), context={"account_id": "a-1"})
        told = [r.getMessage() for r in caplog.records if "targeting key" in r.getMessage()]
        if warned:
            assert told == [
                "model 'scale': rollout.key_field is 'account_id', but the flag provider takes the targeting key "
                "from the context's 'user_id': a flag's rule on the targeting key sees another user than the "
                "rollout's sticky buckets; pass targeting_key_field='account_id' to OpenFeatureFlags, or set "
                "rollout.key_field = 'user_id'"
            ]
        else:
            assert told == []
        server.close()


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
    assert flags.blocking is False  # OpenFeature's in-memory provider evaluates in this process
    assert flags.get_number("fraud.canary.percent", 0, {"user_id": "vip", "plan": "pro"}) == 100.0
    assert flags.get_number("fraud.canary.percent", 0, {"user_id": "someone"}) == 5.0
    # the targeting key the rollout buckets by: an empty or None user id leaves OpenFeature's own to it
    for no_user in (None, ""):
        vip = {"user_id": no_user, "targeting_key": "vip", "plan": "pro"}
        assert flags.get_number("fraud.canary.percent", 0, vip) == 100.0
    assert flags.get_boolean("fraud.kill", True, {}) is False
    assert flags.get_string("fraud.strategy", "stable", {}) == "canary"
    assert flags.get_object("fraud.shadow.versions", [], {}) == [3]
    assert flags.get_number("unknown.flag", 2.0, {}) == 2.0  # not found: the default, not an error
    with pytest.raises(FlagError, match="TYPE_MISMATCH"):
        flags.get_number("fraud.strategy", 0.0, {})


def test_openfeature_number_flags_may_hold_integers_or_floats() -> None:
    from openfeature import api
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    api.set_provider(
        InMemoryProvider(
            {
                "fraud.canary.percent": InMemoryFlag("ten", {"off": 0, "ten": 10, "half": 50}),  # as docs/rollouts.md
                "fraud.shadow.percent": InMemoryFlag("some", {"some": 12.5}),
                "fraud.kill": InMemoryFlag("off", {"on": True, "off": False}),
                "fraud.strategy": InMemoryFlag("c", {"c": "canary"}),
            }
        ),
        domain="inprocserve-numbers",
    )
    flags = OpenFeatureFlags(domain="inprocserve-numbers")
    assert flags.get_number("fraud.canary.percent", 0, {}) == 10.0
    assert flags.get_number("fraud.shadow.percent", 0, {}) == 12.5
    with pytest.raises(FlagTypeError, match="TYPE_MISMATCH"):
        flags.get_number("fraud.kill", 0, {})  # a boolean is no number, though Python calls it an int
    with pytest.raises(FlagTypeError, match="TYPE_MISMATCH"):
        flags.get_number("fraud.strategy", 2.5, {})
    assert flags.get_number("missing", 2.5, {}) == 2.5


def scale_versions(repository: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


CANARY = ModelConfig(
    rollout=RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    version_policy=VersionPolicy.all(),
)


def canary_share(server: Server, users: int = 1000) -> float:
    x = np.ones((1, 4), np.float32)
    return sum(server.predict("scale", x, context={"user_id": f"u{i}"}).version == 2 for i in range(users)) / users


def test_an_integer_canary_in_the_openfeature_in_memory_provider_rolls_out(
    repository: Path, make_server: ServerFactory
) -> None:
    from openfeature import api
    from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

    api.set_provider(
        InMemoryProvider({"scale.canary.percent": InMemoryFlag("ten", {"ten": 10})}), domain="inprocserve-canary"
    )
    server = make_server(
        scale_versions(repository),
        flags=OpenFeatureFlags(domain="inprocserve-canary"),
        flag_timeout_s=2.0,  # a generous budget: this test is about types, not a loaded machine's pauses
        config=CANARY,
    )
    assert 0.06 < canary_share(server) < 0.14  # ~10 %, not a silent 0 %
    status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert status["unusable"] == status["failures"] == 0


@pytest.mark.parametrize("provider", [EnvFlags, InMemoryFlags, OpenFeatureFlags])
def test_a_providers_class_given_for_flags_is_refused_at_once(repository: Path, provider: type) -> None:
    # (Django's INPROCSERVE = {"FLAGS": inprocserve.EnvFlags}: the class passed the protocol's check, and every
    # request of the rollout answered stable, "flag provider failed", logged once a minute)
    refused = rf"got the class {provider.__name__}: pass {provider.__name__}\(\.\.\.\)"
    with pytest.raises(inprocserve.ConfigurationTypeError, match=refused) as caught:
        inprocserve.Server(scale_versions(repository), flags=provider, config=CANARY)
    assert isinstance(caught.value, inprocserve.ConfigurationError) and isinstance(caught.value, TypeError)


def test_a_provider_or_a_domain_given_as_the_openfeature_client_is_refused_at_once() -> None:
    from openfeature.provider.in_memory_provider import InMemoryProvider

    # (each was taken, and every request's flag reads failed: the rollout answered stable, logged once a minute)
    with pytest.raises(TypeError, match=r"got the provider InMemoryProvider: set it with openfeature.api.set_provider"):
        OpenFeatureFlags(InMemoryProvider({}))
    with pytest.raises(TypeError, match=r"got the string 'fraud-flags': pass domain='fraud-flags'"):
        OpenFeatureFlags("fraud-flags")


FLAGD_FLAGS = {
    "flags": {
        "scale.canary.percent": {
            "state": "ENABLED",
            "defaultVariant": "ten",
            "variants": {"off": 0, "ten": 10, "all": 100},
            "targeting": {"if": [{"==": [{"var": "plan"}, "staff"]}, "all", "ten"]},
        },
        "scale.kill": {"state": "ENABLED", "defaultVariant": "off", "variants": {"on": True, "off": False}},
        "scale.shadow.percent": {"state": "ENABLED", "defaultVariant": "some", "variants": {"some": 12.5}},
        "typo.strategy": {"state": "ENABLED", "defaultVariant": "typo", "variants": {"typo": "canery"}},
        "broken.canary.percent": {"state": "ENABLED", "defaultVariant": "s", "variants": {"s": "ten"}},
    }
}


@pytest.fixture(params=["FILE", "IN_PROCESS"])
def flagd(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[OpenFeatureFlags]:
    """OpenFeature's flagd provider evaluating a flags file with the real flagd engine (no server).

    Both resolvers evaluate in this process; given a flags file, flagd's config runs IN_PROCESS through the
    file connector as well, so the two parameters check that either way of configuring it works.
    """
    pytest.importorskip("openfeature.contrib.provider.flagd", reason="pip install openfeature-provider-flagd")
    from openfeature import api
    from openfeature.contrib.provider.flagd import FlagdProvider
    from openfeature.contrib.provider.flagd.config import ResolverType

    path = tmp_path / "flags.json"
    path.write_text(json.dumps(FLAGD_FLAGS))
    provider = FlagdProvider(resolver_type=ResolverType[request.param], offline_flag_source_path=str(path))
    domain = f"inprocserve-flagd-{request.param}"
    api.set_provider_and_wait(provider, domain=domain)
    try:
        yield OpenFeatureFlags(domain=domain)
    finally:
        provider.shutdown()


def test_flagd_number_flags_and_targeting(flagd: OpenFeatureFlags) -> None:
    assert flagd.name == "FlagdProvider"  # the provider's own name is reported in status and telemetry
    assert flagd.get_number("scale.canary.percent", 0, {"user_id": "u1"}) == 10.0
    assert flagd.get_number("scale.canary.percent", 0, {"user_id": "u1", "plan": "staff"}) == 100.0
    assert flagd.get_number("scale.shadow.percent", 0, {}) == 12.5
    assert flagd.get_boolean("scale.kill", True, {}) is False
    assert flagd.get_number("scale.not.there", 3, {}) == 3.0
    with pytest.raises(FlagTypeError):
        flagd.get_number("broken.canary.percent", 0, {})


def test_flagd_drives_a_canary_and_its_problems_show(
    flagd: OpenFeatureFlags, repository: Path, make_server: ServerFactory
) -> None:
    scale_versions(repository)
    server = make_server(repository, flags=flagd, flag_timeout_s=1.0, config=CANARY)
    assert 0.06 < canary_share(server, 500) < 0.14  # the integer variant "ten": ~10 %, not a silent 0 %
    x = np.ones((1, 4), np.float32)
    staff = server.predict("scale", x, context={"user_id": "u1", "plan": "staff"})
    assert (staff.version, staff.variant) == (2, "canary")  # flagd's targeting rule: staff get everything
    assert server.status()["models"]["scale"]["rollout"]["flags"]["unusable"] == 0

    def prefixed(prefix: str) -> ModelConfig:
        return replace(CANARY, rollout=replace(CANARY.rollout, flag_prefix=prefix))

    typo = make_server(repository, flags=flagd, flag_timeout_s=1.0, config=prefixed("typo"))
    result = typo.predict("scale", x, context={"user_id": "u1"})
    assert (result.version, result.reason) == (
        1,
        "unusable flag: 'typo.strategy' is 'canery', not one of stable, canary, ab, bandit",
    )
    broken = make_server(repository, flags=flagd, flag_timeout_s=1.0, config=prefixed("broken"))
    result = broken.predict("scale", x, context={"user_id": "u1"})
    assert result.version == 1 and "TYPE_MISMATCH" in result.reason and result.reason.startswith("unusable flag")
    assert broken.status()["models"]["scale"]["rollout"]["flags"]["unusable"] == 1


@pytest.mark.parametrize("kind", ["in-memory", "file", "env"])
def test_a_provider_forked_while_its_lock_was_held_serves_the_child(kind: str, tmp_path: Path) -> None:
    """gunicorn ``--preload`` forks workers whenever it likes: a lock a thread of the master held at that moment
    (setting a flag, reloading a file, naming a variable) must not stay held in the worker, whose first use
    of it would hang."""
    path = tmp_path / "flags.json"
    path.write_text(json.dumps({"fraud": {"canary": {"percent": 5}}}))
    flags: Any
    if kind == "in-memory":
        flags = InMemoryFlags({})
        lock, use = flags._lock, lambda: flags.set("fraud.canary.percent", 5)
    elif kind == "file":
        flags = FileFlags(path, check_interval_s=0.0)
        lock, use = flags._looks.lock, lambda: None
    else:
        flags = EnvFlags("INPROCSERVE_TEST_FORK_")
        lock, use = flags._naming, lambda: None

    def in_the_child() -> str:
        use()
        return str(flags.get_number("fraud.canary.percent", 0.0, {}))

    with lock:  # (as a thread of the parent's would hold it)
        answer = run_in_forked_child(in_the_child, timeout_s=20)
    assert answer == ("0.0" if kind == "env" else "5.0")
