"""docs/rollouts.md and docs/errors.md walked as a team running experiments does: the promises checked here
are those a walk of the pages found broken (each test says which sentence it holds the code to)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from openfeature import api
from openfeature.evaluation_context import EvaluationContext
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.provider.in_memory_provider import InMemoryFlag, InMemoryProvider

import inprocserve
from inprocserve import CanaryConfig, InvalidInputError, ModelConfig, RolloutConfig
from inprocserve.testing import build_scale_model, save_model

from .test_doc_snippets_docsb import table, text

X = {"x": np.ones((1, 4), np.float32)}
CANARY = ModelConfig(rollout=RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=10)))
DOMAIN = "inprocserve-doc-rollouts-walk"
DOC = "docs/rollouts.md"


@pytest.fixture
def fraud(tmp_path: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path, "fraud", version)
    return tmp_path


@pytest.fixture
def open_feature() -> Iterator[inprocserve.OpenFeatureFlags]:
    api.set_provider_and_wait(InMemoryProvider({}), domain=DOMAIN)
    flags = inprocserve.OpenFeatureFlags(domain=DOMAIN)
    yield flags
    flags.close()
    api.clear_providers()


def provider_named(name: str, open_feature: inprocserve.OpenFeatureFlags) -> Any:
    if name == "openfeature-blocking":
        return inprocserve.OpenFeatureFlags(domain=DOMAIN, blocking=True)
    return {"none": None, "in-memory": inprocserve.InMemoryFlags({}), "openfeature": open_feature}[name]


@pytest.mark.parametrize("provider", ["none", "in-memory", "openfeature", "openfeature-blocking"])
@pytest.mark.parametrize(
    ("context", "says"),
    [
        ({"user_id": {"id": 1}}, "the targeting key ('user_id' or 'targeting_key' in the context) is a dict"),
        ({"user_id": 10**5000}, "the targeting key ('user_id' or 'targeting_key' in the context) cannot be made"),
    ],
)
def test_a_targeting_key_the_rollout_cannot_bucket_is_an_invalid_input_error_naming_the_model(
    fraud: Path, open_feature: inprocserve.OpenFeatureFlags, provider: str, context: dict[str, Any], says: str
) -> None:
    """rollouts.md: a collection or a key that cannot be made text "is the request's InvalidInputError";
    errors.md: every such error "carries the model and version it concerns", and an InvalidInputError's
    message "starts with the model". The flag code that finds it knows no model: the error named none, and a
    caller of several models could not tell whose request it was."""
    flags = provider_named(provider, open_feature)
    with inprocserve.Server(fraud, flags=flags, models={"fraud": CANARY}) as server:
        with pytest.raises(InvalidInputError) as raised:
            server.predict("fraud", X, context=context)
        assert raised.value.model == "fraud"
        assert str(raised.value).startswith(f"model 'fraud': {says}"), str(raised.value)
        assert server.predict("fraud", X, context={"user_id": "u-1"}).version in (1, 2)  # the next one is served


@pytest.mark.parametrize("blocking", [False, True])
def test_a_context_key_that_is_no_string_is_an_invalid_input_error_naming_the_model(
    fraud: Path, open_feature: inprocserve.OpenFeatureFlags, blocking: bool
) -> None:
    """rollouts.md: with OpenFeatureFlags, a key of `context` that is not a string "is the request's
    InvalidInputError too"; errors.md: it carries the model it concerns."""
    flags = open_feature if not blocking else inprocserve.OpenFeatureFlags(domain=DOMAIN, blocking=True)
    with inprocserve.Server(fraud, flags=flags, models={"fraud": CANARY}) as server:
        with pytest.raises(InvalidInputError) as raised:
            server.predict("fraud", X, context={"user_id": "u-1", 3: "x"})
        assert raised.value.model == "fraud"
        assert str(raised.value).startswith("model 'fraud': the context key 3 is a int, not a string"), str(
            raised.value
        )


@pytest.mark.parametrize("path", ["interleave", "kill switch"])
def test_a_context_key_that_is_no_string_names_the_model_on_every_path_that_reads_a_flag(
    fraud: Path, open_feature: inprocserve.OpenFeatureFlags, path: str
) -> None:
    """The same refusal where `interleave()` reads the `<prefix>.rankers` flag, and where the kill switch
    (control file) reads the `<prefix>.stable` flag: "once a flag is evaluated for it" (rollouts.md)."""
    with inprocserve.Server(fraud, flags=open_feature, models={"fraud": CANARY}) as server:
        if path == "kill switch":
            server.kill("fraud")
        with pytest.raises(InvalidInputError) as raised:
            if path == "interleave":
                server.interleave("fraud", {"x": np.ones((3, 4), np.float32)}, context={3: "x"})
            else:
                server.predict("fraud", X, context={3: "x"})
        assert raised.value.model == "fraud"
        assert str(raised.value).startswith("model 'fraud': the context key 3 is a int"), str(raised.value)


def _settings(cell: str) -> dict[str, Any]:
    """The ``key = value`` settings of a cell of the step table (values in JSON, as a flags file holds them)."""
    return {key: json.loads(value) for key, value in re.findall(r"`(fraud\.[a-z.]+) = ([^`]+)`", cell)}


def test_the_real_rollout_step_table_runs_as_written_with_rollback_at_any_step(fraud: Path) -> None:
    """The "A real rollout, step by step" section: the configuration shown, then each step's flags (the in-memory / file
    column) in order, with the rollback row tried after every step. After step 6 the stable flag names v2,
    and `fraud.kill = true` alone sent everyone to v2, not "back on v1": the kill switch answers with the
    stable version, which the stable flag names."""
    (fraud / "fraud" / "config.toml").write_text(
        re.search(r"name it in the config:\n\n```toml\n(.*?)```", text(DOC), re.S).group(1)  # type: ignore[union-attr]
    )
    rows = {row[0]: row for row in table(DOC, "| step | in-memory / file flags |")}
    assert list(rows) == [
        "1. shadow",
        "2. canary 1 %",
        "3. 10 %",
        "4. 50 %",
        "5. 100 %",
        "6. done",
        "rollback, any time",
    ]
    rollback = _settings(rows.pop("rollback, any time")[1])
    flags = inprocserve.InMemoryFlags({})
    users = range(3000)
    with inprocserve.Server(fraud, flags=flags, shadow_budget=1.0) as server:

        def versions() -> list[int]:
            return [server.predict("fraud", X, context={"user_id": f"u-{user}"}).version for user in users]

        on_v2: list[set[int]] = []
        for step, row in rows.items():
            for key, value in _settings(row[1]).items():
                flags.set(key, value)
            if "then remove the percent" in row[1]:
                flags.delete("fraud.canary.percent")
            answered = versions()
            on_v2.append({user for user, version in zip(users, answered, strict=True) if version == 2})
            if step == "1. shadow":
                assert set(answered) == {1}
                deadline = time.monotonic() + 10
                while not server.status()["models"]["fraud"].get("shadow", {}).get("2", {}).get("runs"):
                    assert time.monotonic() < deadline, "no copy ran on v2"
                    time.sleep(0.01)
            elif step == "2. canary 1 %":
                assert 0.5 < 100 * len(on_v2[-1]) / len(users) < 1.5
            elif step == "3. 10 %":
                assert on_v2[-2] <= on_v2[-1] and 8 < 100 * len(on_v2[-1]) / len(users) < 12  # the first 1 % stay in
            elif step in ("5. 100 %", "6. done"):
                assert set(answered) == {2}
            before = {key: flags.get_object(key, None, {}) for key in rollback}
            for key, value in rollback.items():
                flags.set(key, value)
            assert set(versions()) == {1}, f"rollback after step {step!r}: {rollback}"
            for key, value in before.items():
                flags.set(key, value) if value is not None else flags.delete(key)


def test_the_canary_percent_flag_is_said_to_act_under_the_canary_strategy_alone(fraud: Path) -> None:
    """The flag table's `fraud.canary.percent` row: under the default `stable` strategy the flag is not read
    (every user stays on the stable version, with no reason naming the flag), so a team that sets it without
    `strategy = "canary"` must learn it from the row, not from a canary that never starts."""
    row = next(r for r in table(DOC, "| flag | type | effect |") if r[0] == "`fraud.canary.percent`")
    assert "canary strategy" in row[2] and "`fraud.strategy` flag" in row[2], row[2]
    stable = ModelConfig(rollout=RolloutConfig(stable=1, canary=CanaryConfig(version=2)))
    flags = inprocserve.InMemoryFlags({"fraud.canary.percent": 100})
    with inprocserve.Server(fraud, flags=flags, models={"fraud": stable}) as server:
        assert {server.predict("fraud", X, context={"user_id": u}).version for u in range(50)} == {1}
        flags.set("fraud.strategy", "canary")
        assert {server.predict("fraud", X, context={"user_id": u}).version for u in range(50)} == {2}


def test_the_env_flags_variable_of_a_model_whose_name_is_no_identifier_is_the_one_the_page_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page showed the variable of `fraud` alone; a model named with a dash (most are) has a key no shell
    variable can be named: the page now says how the name is made, with an example, and that example works."""
    model, variable = re.search(  # type: ignore[union-attr]
        r"the model `([\w-]+)`'s canary percentage\s+is `(INPROCSERVE_FLAG_\w+)`", text(DOC)
    ).groups()
    for version in (1, 2):
        save_model(build_scale_model(float(version)), tmp_path, model, version)
    config = ModelConfig(rollout=RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2)))
    monkeypatch.setenv(variable, "100")
    with inprocserve.Server(tmp_path, flags=inprocserve.EnvFlags(), models={model: config}) as server:
        assert server.predict(model, X, context={"user_id": "u-1"}).version == 2


BANDIT = ModelConfig(
    rollout=RolloutConfig(strategy="bandit", stable=1, variants={"a": {"version": 1}, "b": {"version": 2}}, seed=0)
)


def test_a_refused_context_keeps_the_arm_an_earlier_request_of_its_key_was_served_by(fraud: Path) -> None:
    """rollouts.md: outcomes by key credit the arm the key's request was served by. A request refused for a
    context key that is no string is served by no arm: the earlier request's arm must still be credited (the
    refusal forgot it, and that request's outcome by key credited nothing)."""
    api.set_provider_and_wait(InMemoryProvider({}), domain=DOMAIN)
    flags = inprocserve.OpenFeatureFlags(domain=DOMAIN, reuse_static_s=0)  # (every request evaluates its flags)
    try:
        with inprocserve.Server(fraud, flags=flags, models={"fraud": BANDIT}) as server:
            served = server.predict("fraud", X, context={"user_id": "u-1"}).variant
            with pytest.raises(InvalidInputError, match="model 'fraud': the context key 3"):
                server.predict("fraud", X, context={"user_id": "u-1", 3: "x"})
            assert server.record_outcome(None, 1.0, model="fraud", key="u-1") == served
    finally:
        flags.close()
        api.clear_providers()


def _targeted(flag: InMemoryFlag[Any], context: EvaluationContext) -> FlagResolutionDetails[Any]:
    return FlagResolutionDetails(value=[], reason=Reason.TARGETING_MATCH, variant="off")


@pytest.fixture
def targeted_shadow_flag() -> Iterator[None]:
    """A provider whose shadow flag is a targeting rule: evaluated for every request (never remembered), after
    the routing flags, which are remembered once read."""
    shadow = InMemoryFlag("off", {"off": []}, context_evaluator=_targeted)
    api.set_provider_and_wait(InMemoryProvider({"fraud.shadow.versions": shadow}), domain=DOMAIN)
    yield
    api.clear_providers()


@pytest.mark.parametrize("blocking", [False, True])
def test_a_context_key_refused_reading_a_shadow_flag_is_the_requests_error_not_the_providers_failure(
    fraud: Path, targeted_shadow_flag: None, blocking: bool
) -> None:
    """rollouts.md: a key of `context` that is not a string "is the request's InvalidInputError too, once a
    flag is evaluated for it (not counted as the provider failing)". Found by the shadow flag, the first one
    evaluated for it, it was counted under `failures` and the request answered."""
    flags = inprocserve.OpenFeatureFlags(domain=DOMAIN, blocking=blocking)
    try:
        with inprocserve.Server(fraud, flags=flags, models={"fraud": CANARY}) as server:
            assert server.predict("fraud", X, context={"user_id": "u-1"}).version in (1, 2)
            with pytest.raises(InvalidInputError) as raised:
                server.predict("fraud", X, context={"user_id": "u-1", 3: "x"})
            assert raised.value.model == "fraud"
            assert str(raised.value).startswith("model 'fraud': the context key 3 is a int"), str(raised.value)
            assert server.status()["models"]["fraud"]["rollout"]["flags"]["failures"] == 0
    finally:
        flags.close()


def test_a_bandit_arm_drawn_for_a_request_its_shadow_flag_refuses_is_credited_nothing(
    fraud: Path, targeted_shadow_flag: None
) -> None:
    """The shadow flag is read after the bandit drew an arm for the key: the refused request was served by no
    arm, so an outcome by its key credits none."""
    flags = inprocserve.OpenFeatureFlags(domain=DOMAIN)
    try:
        with inprocserve.Server(fraud, flags=flags, models={"fraud": BANDIT}) as server:
            server.predict("fraud", X, context={"user_id": "u-1"})  # (the routing flags read and remembered)
            with pytest.raises(InvalidInputError, match="model 'fraud': the context key 3"):
                server.predict("fraud", X, context={"user_id": "u-2", 3: "x"})
            assert server.record_outcome(None, 1.0, model="fraud", key="u-2") is None
    finally:
        flags.close()
