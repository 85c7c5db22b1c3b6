"""Rollouts under hostile input: bad rewards, mistyped config and flags, flag-driven strategies, races.

Version N of the ``scale`` model answers ``y = x * N``, so every answer says which version produced it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import tracemalloc
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import CanaryConfig, InMemoryFlags, RolloutConfig
from inprocserve._experiments import BUCKETS, Interleaving, VariantStats, bucket, team_draft, thompson
from inprocserve._rollout import Router
from inprocserve.testing import build_gather_model, build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, rollout, run_in_forked_child, wait_until
from .test_interrupted_callers import Interrupted, interrupt
from .test_interrupted_callers import interruptible as interruptible  # (a fixture)
from .test_v2_codec import build_text_model

X = np.ones((1, 4), np.float32)
ARMS = {"a": {"version": 1}, "b": {"version": 2}}


def predict(server: inprocserve.Server, user: str) -> inprocserve.Prediction:
    return server.predict("scale", X, context={"user_id": user})


class RawProvider:
    """A hand-written provider whose backend hands back raw values, unchecked (as many config stores do)."""

    name = "raw"
    blocking = False

    def __init__(self, values: Mapping[str, Any], failing: tuple[str, ...] = ()) -> None:
        self.values = dict(values)
        self.failing = failing

    def _get(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        if key in self.failing:
            raise ConnectionError(f"backend lost while reading {key}")
        return self.values.get(key, default)

    get_boolean = get_number = get_string = get_object = _get


# -- 1. rewards that are not numbers ---------------------------------------------------------------------------


@pytest.mark.parametrize("reward", [float("nan"), float("inf"), -float("inf")])
def test_a_reward_that_is_not_finite_is_refused_and_the_bandit_keeps_serving(
    versions: Path, make_server: ServerFactory, reward: float
) -> None:
    server = make_server(versions, config=rollout(strategy="bandit", variants=ARMS, seed=1))
    for _ in range(2):  # poison both arms, if a reward could
        result = predict(server, "u1")
        with pytest.raises(ValueError, match="reward must be a finite number"):
            server.record_outcome(result.request_id, reward)
        with pytest.raises(ValueError, match="finite"):
            server.record_outcome(None, reward, model="scale", key="u1")
    assert {predict(server, "u1").variant for _ in range(50)} <= {"a", "b"}
    status = server.status()["models"]["scale"]["rollout"]
    assert all(arm["outcomes"] == 0 for arm in status["variants"].values())
    json.dumps(status["variants"], allow_nan=False)  # status stays valid JSON


def test_rewards_too_large_to_add_up_are_refused_and_the_statistics_stay_finite(
    versions: Path, make_server: ServerFactory
) -> None:
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    result = predict(server, "u1")
    for _ in range(3):  # three of 1e308 made the sums infinite: a mean of inf, a status strict JSON refuses
        with pytest.raises(ValueError, match=r"within \+-1e\+100"):
            server.record_outcome(result.request_id, 1e308)
    server.record_outcome(result.request_id, -1e100)  # the bound itself is a reward
    json.dumps(server.status()["models"]["scale"]["rollout"], allow_nan=False)


def test_an_outcome_counts_once_per_request_however_often_it_is_reported(
    versions: Path, make_server: ServerFactory
) -> None:
    """A retried report counted again: five outcomes against one request served skewed the test's counts."""
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    result = predict(server, "u1")
    assert server.record_outcome(result.request_id, 1.0) == result.variant
    for _ in range(4):  # a client retrying its report, by id, or by id with the model and key
        assert server.record_outcome(result.request_id, 1.0) is None
        assert server.record_outcome(result.request_id, 1.0, model="scale", key="u1") is None
    arm = server.status()["models"]["scale"]["rollout"]["variants"][result.variant]
    assert (arm["served"], arm["outcomes"]) == (1, 1)
    assert server.record_outcome(None, 0.0, model="scale", key="u1") == result.variant  # by key alone: counted


def test_a_numpy_reward_is_a_number_and_a_bool_is_not(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(strategy="bandit", variants=ARMS, seed=1))
    result = predict(server, "u1")
    assert server.record_outcome(result.request_id, np.float32(1.0)) == result.variant  # from a model's output
    with pytest.raises(TypeError, match="reward must be a number, got bool"):
        server.record_outcome(result.request_id, np.bool_(True))  # type: ignore[arg-type]


class Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("no text for this key")


@pytest.mark.parametrize("key", [Unprintable(), 10**5000], ids=["str-raises", "5001-digits"])
def test_an_outcome_key_that_cannot_be_made_text_is_the_callers_type_error(
    versions: Path, make_server: ServerFactory, key: object
) -> None:
    """A key whose ``str()`` raised let that exception (a RuntimeError, or int's digit limit) out of
    record_outcome, which promises a TypeError for arguments of the wrong kind."""
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    with pytest.raises(TypeError, match=r"record_outcome\(key=...\) must be a string or an int"):
        server.record_outcome(None, 1.0, model="scale", key=key)  # type: ignore[arg-type]
    result = predict(server, "7")
    assert server.record_outcome(None, 1.0, model="scale", key=7) == result.variant  # an int key is its text's


@pytest.mark.parametrize("key", [{"id": 7}, ["u", 7], ("u", 7), {"u7"}], ids=["dict", "list", "tuple", "set"])
def test_an_outcome_key_that_is_a_collection_is_refused_as_a_requests_key_is(
    versions: Path, make_server: ServerFactory, key: object
) -> None:
    """A request whose targeting key is a dict is refused (its text is no stable id); an outcome reported with
    the same dict credited whatever arm that dict's text was bucketed to, which no request of it was served."""
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    with pytest.raises(inprocserve.InvalidInputError, match="no id"):
        server.predict("scale", X, context={"user_id": key})
    with pytest.raises(TypeError, match=r"record_outcome\(key=...\) must be a string or an int"):
        server.record_outcome(None, 1.0, model="scale", key=key)  # type: ignore[arg-type]
    variants = server.status()["models"]["scale"]["rollout"]["variants"]
    assert sum(figures["outcomes"] for figures in variants.values()) == 0  # (it credited arm "a")


def test_thompson_picks_a_known_arm_even_from_statistics_that_are_not_numbers() -> None:
    poisoned = VariantStats(served=1, outcomes=1, total=float("nan"), shifted_sq=float("nan"))
    arms = {"a": poisoned, "b": VariantStats(served=1, outcomes=1, total=float("nan"), shifted_sq=float("nan"))}
    rng = np.random.default_rng(0)
    assert {thompson(arms, rng) for _ in range(20)} <= {"a", "b"}
    with pytest.raises(ValueError, match="finite"):
        VariantStats().add(float("nan"))


# -- 2. version numbers in the rollout config -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "key"),
    [
        ({"stable": "1"}, "rollout.stable"),
        ({"stable": 0}, "rollout.stable"),
        ({"stable": True}, "rollout.stable"),
        ({"stable": 1.0}, "rollout.stable"),
        ({"strategy": "canary", "canary": {"version": 0, "percent": 100}}, "rollout.canary.version"),
        ({"strategy": "canary", "canary": {"version": "2", "percent": 100}}, "rollout.canary.version"),
    ],
)
def test_a_version_in_the_rollout_config_must_be_a_whole_number_from_1(settings: dict[str, Any], key: str) -> None:
    with pytest.raises(inprocserve.ConfigurationError, match=rf"{key} must be a version number.*>= 1"):
        RolloutConfig(**settings)


def test_a_quoted_stable_version_in_config_toml_is_refused(versions: Path, make_server: ServerFactory) -> None:
    (versions / "scale" / "config.toml").write_text('[rollout]\nstable = "1"\n')  # a blue/green pin, quoted
    server = make_server(versions)
    model = server.status()["models"]["scale"]
    assert "rollout.stable must be a version number" in model["config_error"]
    assert not model["ready"]  # never silently 100 % on the latest version


def test_a_whole_version_number_is_accepted() -> None:
    config = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=5))
    assert (config.stable, config.canary.version) == (1, 2)


# -- 3. a strategy chosen by flags: outcomes and tests ----------------------------------------------------------


def test_outcomes_are_credited_when_flags_choose_the_strategy(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.strategy": "ab"})  # the config says "stable"; the flag runs an A/B test
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(stable=1, variants=ARMS)
    )
    for i in range(100):
        result = predict(server, f"u{i}")
        assert server.record_outcome(result.request_id, 1.0) == result.variant
    flags.set("scale.strategy", "canary")
    flags.set("scale.canary.version", 2)
    flags.set("scale.canary.percent", 50)
    credited = set()
    for i in range(100):
        result = predict(server, f"u{i}")
        credited.add(server.record_outcome(result.request_id, float(i % 2)))
    assert credited == {"stable", "canary"}
    assert set(server.status()["models"]["scale"]["rollout"]["tests"]) == {"b", "canary"}


def test_no_test_is_reported_against_a_control_without_outcomes(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 50})
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="canary", stable=1, canary={"version": 2}),
    )
    for i in range(200):
        result = predict(server, f"u{i}")
        if result.variant == "canary":  # outcomes on one side only
            server.record_outcome(result.request_id, 1.0)
    status = server.status()["models"]["scale"]["rollout"]
    assert status["variants"]["canary"]["outcomes"] > 0
    assert status["tests"] == {}


# -- 4. outcomes by key under a bandit ------------------------------------------------------------------------


def test_a_bandit_outcome_by_key_goes_to_the_arm_that_served_the_key(
    versions: Path, make_server: ServerFactory
) -> None:
    server = make_server(versions, config=rollout(strategy="bandit", variants=ARMS, shadow={"versions": (3,)}))
    served = predict(server, "alice").variant
    credited = {server.record_outcome(None, 1.0, model="scale", key="alice") for _ in range(30)}
    assert credited == {served}
    assert server.record_outcome(None, 1.0, model="scale", key="never-served") is None  # no arm drawn for it
    arms = server.status()["models"]["scale"]["rollout"]["variants"]
    assert arms[served]["outcomes"] == 30 and sum(arm["served"] for arm in arms.values()) == 1


def test_a_bandit_remembers_draws_for_huge_targeting_keys_in_bounded_memory(
    versions: Path, make_server: ServerFactory
) -> None:
    # A client that sends a megabyte as its user id (a JSON body's field, a header) must not make the worker
    # hold that megabyte for the hour the bandit remembers its draw: 100 000 of them would be 100 GB.
    server = make_server(versions, config=rollout(strategy="bandit", variants=ARMS, seed=1))
    predict(server, "warm-up")

    def user(i: int) -> str:  # (made afresh for each request, as a request's body is: only the server keeps it)
        return f"{i:04d}" + "x" * 250_000

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        served = [predict(server, user(i)).variant for i in range(24)]
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert held < 1_000_000, f"{held} bytes held after 24 requests with keys of 250 KB"
    assert [server.record_outcome(None, 1.0, model="scale", key=user(i)) for i in range(24)] == served


def test_workers_forked_from_one_server_draw_bandit_arms_and_interleavings_of_their_own(
    versions: Path, make_server: ServerFactory
) -> None:
    # Under gunicorn --preload the server is made in the master and every worker is a fork of it. The bandit's
    # and the interleaving's generators, seeded from the OS once in the master, drew the same sequence in
    # every worker: the n-th request of each worker got the same arm, the n-th page the same coin flips.
    save_model(build_scale_model(1.0, features=1), versions, "ranker", 1)
    save_model(build_scale_model(-1.0, features=1), versions, "ranker", 2)
    server = make_server(
        versions,
        models={
            "scale": rollout(strategy="bandit", variants=ARMS),
            "ranker": rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2))),
        },
    )
    items = np.arange(8, dtype=np.float32).reshape(8, 1)

    def draws() -> str:  # (keyless: 40 draws of two arms alike, and 40 pages' first team)
        arms = "".join(server.predict("scale", X).variant for _ in range(40))
        teams = "".join(server.interleave("ranker", items).teams[0] for _ in range(40))
        return f"{arms} {teams}"

    first, second = run_in_forked_child(draws).split(), run_in_forked_child(draws).split()
    assert first[0] != second[0]  # (alike by chance once in 2**40)
    assert first[1] != second[1]


def test_an_outcome_by_key_after_the_bandit_ended_goes_to_the_variant_the_key_gets_now(
    versions: Path, make_server: ServerFactory
) -> None:
    flags = InMemoryFlags({"scale.strategy": "bandit"})
    config = rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 0}, variants=ARMS, seed=1)
    server = make_server(versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=config)
    drawn = predict(server, "alice").variant
    assert drawn in ARMS
    flags.set("scale.strategy", "canary")  # the bandit is over: a canary at 0 %, everyone on stable
    assert predict(server, "alice").variant == "stable"
    assert server.record_outcome(None, 1.0, model="scale", key="alice") == "stable"
    assert server.status()["models"]["scale"]["rollout"]["variants"][drawn]["outcomes"] == 0


class CountryRule(RawProvider):
    """A provider with a targeting rule: the bandit runs for French users only."""

    def _get(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        if key == "scale.strategy" and context.get("country") == "fr":
            return "bandit"
        return super()._get(key, default, context)

    get_boolean = get_number = get_string = get_object = _get


def test_an_outcome_by_key_goes_to_the_arm_drawn_even_where_the_key_alone_reads_another_strategy(
    versions: Path, make_server: ServerFactory
) -> None:
    """Reported by key, the outcome has no country: read afresh, the flags say stable, which never served."""
    server = make_server(
        versions,
        flags=CountryRule({}),
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="stable", variants=ARMS, seed=1),
    )
    drawn = server.predict("scale", X, context={"user_id": "alice", "country": "fr"}).variant
    assert drawn in ARMS
    assert server.record_outcome(None, 1.0, model="scale", key="alice") == drawn


def test_an_outcome_by_key_goes_to_the_arm_drawn_while_the_flag_provider_fails(
    versions: Path, make_server: ServerFactory
) -> None:
    provider = RawProvider({"scale.strategy": "bandit"})
    server = make_server(
        versions,
        flags=provider,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="stable", variants=ARMS, seed=1),
    )
    drawn = predict(server, "alice").variant
    assert drawn in ARMS
    provider.failing = ("scale.strategy", "scale.kill")  # the flag service goes away after the request
    assert server.record_outcome(None, 1.0, model="scale", key="alice") == drawn


class SlowProvider(RawProvider):
    """Answers after ``delay_s``: longer than the flag budget, so every decision is abandoned for stable."""

    delay_s = 0.3

    def _get(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        threading.Event().wait(self.delay_s)
        return super()._get(key, default, context)

    get_boolean = get_number = get_string = get_object = _get


def test_a_bandit_draw_abandoned_for_a_slow_provider_gets_no_outcome_by_key(
    versions: Path, make_server: ServerFactory
) -> None:
    """The decision drew an arm, then ran past the budget: stable served alice, so no arm gets her outcome."""
    provider = SlowProvider({"scale.strategy": "bandit"})
    server = make_server(
        versions, flags=provider, flag_timeout_s=0.05, config=rollout(strategy="stable", variants=ARMS, seed=1)
    )
    served = predict(server, "alice")
    assert served.variant == "stable"
    provider.failing = ("scale.strategy", "scale.kill")
    assert server.record_outcome(None, 1.0, model="scale", key="alice") is None
    arms = server.status()["models"]["scale"]["rollout"]["variants"]
    assert all(arm["outcomes"] == 0 for arm in arms.values())


class HeldBanditProvider:
    """A blocking provider (its reads run on a flag worker) that turns the bandit on, and holds every read
    until the test opens the gate; ``drawn`` is set when the decision reads its shadows, after the arm."""

    name = "held"
    blocking = True

    def __init__(self) -> None:
        self.gate, self.drawn = threading.Event(), threading.Event()

    def _get(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        assert self.gate.wait(10), "the test never opened the gate"  # a hang detector, not a timing
        if key == "scale.shadow.versions":
            self.drawn.set()
        return {"scale.strategy": "bandit"}.get(key, default)

    get_boolean = get_number = get_string = get_object = _get


def test_a_bandit_draw_of_a_decision_abandoned_on_a_flag_worker_gets_no_outcome_by_key(
    versions: Path, make_server: ServerFactory
) -> None:
    """A blocking provider past the budget: stable served alice while her decision still ran on a flag
    worker. It drew an arm after the fallback had forgotten her draw, and her outcome by key went to it."""
    provider = HeldBanditProvider()
    server = make_server(
        versions, flags=provider, flag_timeout_s=0.05, config=rollout(strategy="stable", variants=ARMS, seed=1)
    )
    served = predict(server, "alice")  # the gate is shut: the budget runs out whatever the machine's load
    assert (served.variant, served.reason) == ("stable", "flag provider timed out")
    provider.gate.set()
    assert provider.drawn.wait(10)  # the abandoned decision has drawn (or not) by now
    assert server.record_outcome(None, 1.0, model="scale", key="alice") is None
    arms = server.status()["models"]["scale"]["rollout"]["variants"]
    assert all(arm["outcomes"] == 0 for arm in arms.values()), arms


class ShadowHeldBanditProvider(HeldBanditProvider):
    """Holds only the read of the shadows, which a decision makes after its arm is drawn: ``reading`` is set
    when that read begins."""

    def __init__(self) -> None:
        super().__init__()
        self.reading = threading.Event()

    def _get(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        if key != "scale.shadow.versions":
            return {"scale.strategy": "bandit"}.get(key, default)
        self.reading.set()
        return super()._get(key, default, context)

    get_boolean = get_number = get_string = get_object = _get


def test_a_bandit_draw_of_a_decision_whose_caller_was_interrupted_gets_no_outcome_by_key(
    versions: Path, make_server: ServerFactory, interruptible: None
) -> None:
    """A blocking provider: alice's decision had drawn an arm on a flag worker, and read its shadows, when her
    request was interrupted while it waited for the decision: it raised, and nobody served her. No fallback ran
    to forget the draw, and her outcome by key went to that arm (served 0, outcomes 1)."""
    provider = ShadowHeldBanditProvider()
    server = make_server(
        versions, flags=provider, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="stable", variants=ARMS)
    )

    main = threading.get_ident()
    kicker = threading.Thread(target=lambda: provider.reading.wait(10) and interrupt(main))
    try:
        kicker.start()
        with pytest.raises(Interrupted):
            predict(server, "alice")  # interrupted once the arm is drawn, while it waits for the decision
    finally:
        kicker.join(10)
        provider.gate.set()
    assert provider.drawn.wait(10)
    assert server.record_outcome(None, 1.0, model="scale", key="alice") is None
    arms = server.status()["models"]["scale"]["rollout"]["variants"]
    assert all(arm["outcomes"] == 0 for arm in arms.values()), arms


@pytest.mark.parametrize("kill", ["flag", "control file"])
def test_a_key_served_under_the_kill_switch_after_a_bandit_draw_is_credited_to_stable(
    versions: Path, make_server: ServerFactory, kill: str
) -> None:
    flags = InMemoryFlags({})
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="bandit", stable=3, variants=ARMS, seed=1),
    )
    assert predict(server, "alice").variant in ARMS
    if kill == "flag":
        flags.set("scale.kill", True)
    else:
        server.kill("scale")
    assert predict(server, "alice").variant == "stable"  # served otherwise: the draw no longer counts
    assert server.record_outcome(None, 1.0, model="scale", key="alice") == "stable"


def test_a_targeting_key_that_cannot_be_text_fails_no_request_of_the_stable_strategy(
    versions: Path, make_server: ServerFactory
) -> None:
    """The stable strategy needs no key; after a bandit had drawn for keys, forgetting a draw made it one
    (flags read per request: without flags a stable rollout decides before looking at the context)."""
    flags = RawProvider({})
    config = versions / "scale" / "config.toml"
    config.write_text(
        'version_policy = "all"\n[rollout]\nstrategy = "bandit"\nseed = 1\nstable = 3\n'
        "[rollout.variants]\na = { version = 1 }\nb = { version = 2 }\n"
    )
    server = make_server(versions, flags=flags)
    predict(server, "alice")  # a draw remembered for a key
    config.write_text(config.read_text().replace('strategy = "bandit"', 'strategy = "stable"'))
    assert server.refresh() == []
    assert server.predict("scale", X, context={"user_id": 10**5000}).variant == "stable"


@pytest.mark.parametrize("kill", ["control file, no flags", "control file", "flag"])
def test_a_targeting_key_that_cannot_be_text_never_fails_a_request_under_the_kill_switch(
    versions: Path, make_server: ServerFactory, kill: str
) -> None:
    flags = None if kill == "control file, no flags" else RawProvider({})  # (read per request: no plan)
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="bandit", stable=3, variants=ARMS, seed=1),
    )
    predict(server, "alice")  # a draw remembered for a key: killed requests look for draws to forget
    if flags is not None and kill == "flag":
        flags.values["scale.kill"] = True
    else:
        server.kill("scale")
    answer = server.predict("scale", X, context={"user_id": 10**5000})
    assert (answer.variant, answer.reason.startswith("kill switch is on")) == ("stable", True)


def test_a_targeting_key_that_cannot_be_text_is_the_request_s_mistake(
    versions: Path, make_server: ServerFactory
) -> None:
    """str() refuses an int of 5000 digits: a bare ValueError left predict (a 500 over HTTP)."""
    server = make_server(versions, config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 50}))
    with pytest.raises(inprocserve.InvalidInputError, match=r"the targeting key .* cannot be made text"):
        server.predict("scale", X, context={"user_id": 10**5000})


@pytest.mark.parametrize(
    "user",
    [{"org": "acme", "id": 7}, {"b", "a"}, ["acme", 7], ("acme", 7)],
    ids=["dict", "set", "list", "tuple"],
)
def test_a_targeting_key_that_is_a_collection_is_the_request_s_mistake(
    versions: Path, make_server: ServerFactory, user: Any
) -> None:
    """A collection was bucketed by its text: {"org": "acme", "id": 7} and {"id": 7, "org": "acme"}, one
    user, fell in different buckets (a set's text changes with each process's hash seed), and a large one was
    made text on every request."""
    server = make_server(versions, config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 50}))
    with pytest.raises(inprocserve.InvalidInputError, match=r"the targeting key \('user_id' .*is a \w+, no id"):
        server.predict("scale", X, context={"user_id": user})
    server.kill("scale")  # no key needed: answered
    assert server.predict("scale", X, context={"user_id": user}).variant == "stable"


def test_a_reload_that_ends_the_rollout_forgets_the_bandit_s_draws(versions: Path, make_server: ServerFactory) -> None:
    config = versions / "scale" / "config.toml"
    config.write_text(
        'version_policy = "all"\n[rollout]\nstrategy = "bandit"\nseed = 1\n[rollout.variants]\n'
        "a = { version = 1 }\nb = { version = 2 }\n"
    )
    server = make_server(versions)
    assert predict(server, "alice").variant in ARMS
    config.write_text('version_policy = "all"\n')  # no rollout: the answers are no variant's
    assert server.refresh() == []
    assert predict(server, "alice").variant == "default"
    assert server.record_outcome(None, 1.0, model="scale", key="alice") is None


def test_arms_listed_in_another_order_in_an_edited_config_toml_are_routed_so(
    versions: Path, make_server: ServerFactory
) -> None:
    """The first arm is the control, but configurations whose arms differ in order only compared equal: a
    running server kept the old order after the edit, and its old control, while a worker started after it
    took the new one. (Arms listed in another order keep their users: an A/B split picks by key and arm.)"""
    config = versions / "scale" / "config.toml"
    head = 'version_policy = "all"\n[rollout]\nstrategy = "ab"\n[rollout.variants]\n'
    config.write_text(head + "a = { version = 1 }\nb = { version = 2 }\n")
    running = make_server(versions)
    users = [f"user{i}" for i in range(40)]
    before = [predict(running, user).version for user in users]
    config.write_text(head + "b = { version = 2 }\na = { version = 1 }\n")
    assert running.refresh() == []
    started_after = make_server(versions)
    assert [predict(running, user).version for user in users] == [
        predict(started_after, user).version for user in users
    ]
    assert [predict(running, user).version for user in users] == before
    assert list(running.status()["models"]["scale"]["rollout"]["configured"]["arms"]) == ["b", "a"]  # (b: the control)


def test_arms_listed_in_another_order_by_load_config_are_routed_so(versions: Path, make_server: ServerFactory) -> None:
    """As an edited config.toml: ``load(config=...)`` whose arms differ in order only compared equal to the
    loaded version's configuration, so the version was kept with its old order (and its old control)."""
    reordered = rollout(strategy="ab", variants={"b": ARMS["b"], "a": ARMS["a"]})
    running = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    users = [f"user{i}" for i in range(40)]
    before = [predict(running, user).version for user in users]
    running.load("scale", config=reordered)
    started_after = make_server(versions, config=reordered)
    assert [predict(running, user).version for user in users] == [
        predict(started_after, user).version for user in users
    ]
    assert [predict(running, user).version for user in users] == before
    assert list(running.status()["models"]["scale"]["rollout"]["configured"]["arms"]) == ["b", "a"]


def test_an_outcome_by_an_empty_key_is_credited_to_no_one(versions: Path, make_server: ServerFactory) -> None:
    """An empty key is no key: it was bucketed at random, one variant or the other at each call."""
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    assert {server.record_outcome(None, 1.0, model="scale", key="") for _ in range(20)} == {None}


def test_a_variant_named_with_the_empty_string_gets_its_outcomes(versions: Path, make_server: ServerFactory) -> None:
    arms = {"": {"version": 1, "weight": 50}, "b": {"version": 2, "weight": 50}}
    server = make_server(versions, config=rollout(strategy="ab", variants=arms))
    results = [predict(server, f"u{i}") for i in range(30)]
    assert {result.variant for result in results} == {"", "b"}
    assert all(server.record_outcome(result.request_id, 1.0) == result.variant for result in results)
    unnamed = server.status()["models"]["scale"]["rollout"]["variants"][""]
    assert unnamed["served"] == unnamed["outcomes"] > 0


@pytest.mark.parametrize("policy", ["epsilon_greedy", "thompson"])
def test_a_bandit_draws_among_the_arms_that_can_serve(versions: Path, make_server: ServerFactory, policy: str) -> None:
    # Arm "gone" names a version that is not in the repository: it can never serve nor get an outcome.
    arms = {"gone": {"version": 9}, "a": {"version": 1}, "b": {"version": 2}}
    bandit = inprocserve.BanditConfig(policy=policy, epsilon=0.1)  # type: ignore[arg-type]
    server = make_server(versions, config=rollout(strategy="bandit", stable=3, variants=arms, bandit=bandit, seed=1))
    served = []
    for i in range(200):
        result = predict(server, f"u{i}")
        served.append(result.variant)
        server.record_outcome(result.request_id, 1.0 if i % 50 == 0 else 0.0)  # a low reward rate, as clicks have
    assert set(served) <= {"a", "b"}, f"{served.count('stable')} of 200 requests fell back to the stable version"
    assert server.status()["models"]["scale"]["rollout"]["variants"]["gone"]["served"] == 0


def test_a_canary_outcome_by_key_goes_to_the_variant_of_the_key(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 50}))
    for i in range(20):
        user = f"u{i}"
        assert server.record_outcome(None, 1.0, model="scale", key=user) == predict(server, user).variant


# -- 5. providers that hand back values of the wrong type -----------------------------------------------------


def canary_server(make_server: ServerFactory, versions: Path, provider: Any) -> inprocserve.Server:
    return make_server(  # (a generous flag budget: these tests are about values, not a slow provider)
        versions,
        flags=provider,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 100}),
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"scale.kill": "false"}, "flag 'scale.kill' must be a boolean"),
        ({"scale.kill": 0}, "flag 'scale.kill' must be a boolean"),
        ({"scale.canary.percent": "10"}, "flag 'scale.canary.percent' must be a number, got '10'"),
        ({"scale.canary.percent": None}, "flag 'scale.canary.percent' must be a number"),
        ({"scale.strategy": 7}, "flag 'scale.strategy' must be a string"),
    ],
)
def test_a_flag_of_the_wrong_type_is_an_unusable_flag_not_a_kill_switch_nor_an_outage(
    versions: Path, make_server: ServerFactory, values: dict[str, Any], message: str
) -> None:
    server = canary_server(make_server, versions, RawProvider(values))
    result = predict(server, "u")
    assert (result.version, result.variant) == (1, "stable")
    assert message in result.reason
    assert "kill switch" not in result.reason
    flags = server.status()["models"]["scale"]["rollout"]["flags"]
    assert (flags["failures"], flags["unusable"]) == (0, 1)


def test_numpy_flag_values_are_the_booleans_and_numbers_they_hold(versions: Path, make_server: ServerFactory) -> None:
    # A provider backed by numpy data (a feature table, a pandas frame) hands back numpy scalars.
    provider = RawProvider({"scale.kill": np.False_, "scale.canary.percent": np.int64(100)})
    server = canary_server(make_server, versions, provider)
    result = predict(server, "u")
    assert (result.version, result.variant) == (2, "canary")
    flags = server.status()["models"]["scale"]["rollout"]["flags"]
    assert (flags["failures"], flags["unusable"]) == (0, 0)


def test_numpy_numbers_inside_object_flags_are_the_numbers_they_hold(
    versions: Path, make_server: ServerFactory
) -> None:
    # A provider backed by numpy data hands back weights from a Series' to_dict() and versions from list(array):
    # numpy numbers inside a table or a list, refused as "must be a finite number >= 0, got np.int64(0)".
    weights = RawProvider({"scale.ab.weights": {"a": np.int64(0), "b": np.float32(1.0)}})
    server = make_server(
        versions, flags=weights, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="ab", variants=ARMS)
    )
    assert {(predict(server, f"u{i}").version, predict(server, f"u{i}").variant) for i in range(20)} == {(2, "b")}
    shadows = RawProvider({"scale.shadow.versions": [np.int64(3)], "scale.rankers": [np.int64(2), np.int64(1)]})
    server = canary_server(make_server, versions, shadows)
    result = predict(server, "u")
    assert (result.version, result.variant) == (2, "canary") and "shadows off" not in result.reason, result.reason
    assert server.status()["models"]["scale"]["rollout"]["flags"]["unusable"] == 0


@pytest.mark.parametrize("percent", [np.int64(100), np.float32(100.0), np.float64(100.0)])
def test_numpy_values_set_in_memory_flags_are_the_booleans_and_numbers_they_hold(
    versions: Path, make_server: ServerFactory, percent: Any
) -> None:
    # A percentage read from a pandas frame and set in InMemoryFlags was refused with "flag 'scale.canary.percent'
    # must be a number, got np.int64(100)", while the same value from a provider of one's own was taken.
    flags = InMemoryFlags({"scale.kill": np.False_, "scale.canary.percent": percent})
    server = canary_server(make_server, versions, flags)
    assert (predict(server, "u").version, predict(server, "u").variant) == (2, "canary")
    flags.set("scale.kill", np.True_)
    assert (predict(server, "u").version, predict(server, "u").variant) == (1, "stable")
    status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert (status["failures"], status["unusable"]) == (0, 0)


@pytest.mark.parametrize(
    "provider",
    [
        RawProvider({"scale.shadow.versions": [3], "scale.shadow.percent": "50"}),
        RawProvider({"scale.shadow.versions": [3], "scale.shadow.percent": None}),
        RawProvider({"scale.shadow.versions": [3]}, failing=("scale.shadow.percent",)),
        RawProvider({}, failing=("scale.shadow.versions",)),
    ],
)
def test_a_bad_shadow_flag_never_changes_the_answer(versions: Path, make_server: ServerFactory, provider: Any) -> None:
    server = canary_server(make_server, versions, provider)
    result = predict(server, "u")
    assert (result.version, result.variant) == (2, "canary")
    assert "shadows off" in result.reason


# -- 6. canary percentages in whole buckets -------------------------------------------------------------------


def key_in_bucket(position: int) -> str:
    return next(f"user-{i}" for i in range(10**6) if bucket("scale", "", f"user-{i}") == position)


@pytest.mark.parametrize("percent", [0.07, 0.14, 0.28, 0.55, 1.1, 10.0])
def test_a_canary_percentage_admits_exactly_its_buckets(
    versions: Path, make_server: ServerFactory, percent: float
) -> None:
    flags = InMemoryFlags({"scale.canary.percent": percent})
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(strategy="canary", stable=1, canary={"version": 2}),
    )
    edge = round(percent * BUCKETS / 100)  # buckets 0 .. edge-1 are in
    assert predict(server, key_in_bucket(edge - 1)).variant == "canary"
    assert predict(server, key_in_bucket(edge)).variant == "stable"


# -- 7. a flag evaluation that finishes right at its budget ----------------------------------------------------


class GatedProvider:
    """A blocking provider whose evaluations wait until the test opens the gate."""

    name = "gated"
    blocking = True

    def __init__(self) -> None:
        self.gate = threading.Event()

    def _get(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        assert self.gate.wait(10), "the test never opened the gate"  # a hang detector, not a timing
        return {"scale.canary.percent": 100.0}.get(key, default)

    get_boolean = get_number = get_string = get_object = _get


def test_a_flag_result_that_arrives_just_after_the_budget_is_used(versions: Path, make_server: ServerFactory) -> None:
    provider = GatedProvider()
    server = make_server(
        versions,
        flags=provider,
        flag_timeout_s=0.05,
        config=rollout(strategy="canary", stable=1, canary={"version": 2}),
    )

    # Make the race happen every time: when the wait for the evaluation times out, let the evaluation finish
    # before the reader looks at it again.
    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "exception" and issubclass(arg[0], TimeoutError):
            provider.gate.set()
            future = frame.f_locals["future"]
            future.exception(timeout=10)  # waits until the evaluation is done (a hang detector)
        return local

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        return local if event == "call" and frame.f_code.co_name == "_run_on_worker" else None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        result = predict(server, "u")
    finally:
        sys.settrace(previous)
    assert (result.version, result.variant) == (2, "canary"), result.reason
    flags = server.status()["models"]["scale"]["rollout"]["flags"]
    assert flags["failures"] == 0


# -- 8. a context that is not a mapping -----------------------------------------------------------------------


@pytest.mark.parametrize("context", [["user_id"], "alice", 42])
@pytest.mark.parametrize("with_flags", [False, True])
def test_a_context_that_is_not_a_mapping_is_invalid_input(
    versions: Path, make_server: ServerFactory, context: Any, with_flags: bool
) -> None:
    server = make_server(
        versions,
        flags=InMemoryFlags() if with_flags else None,
        config=rollout(strategy="canary", stable=1, canary={"version": 2, "percent": 50}),
    )
    with pytest.raises(inprocserve.InvalidInputError, match="context must be a mapping") as caught:
        server.predict("scale", X, context=context)
    assert caught.value.model == "scale"
    assert server.predict("scale", X, context={"user_id": "u"}).version in (1, 2)


# -- 9. remembered interleavings ------------------------------------------------------------------------------


def test_a_remembered_interleaving_is_compact() -> None:
    router = Router("ranker", RolloutConfig(interleaving={"rankers": (1, 2)}), None)
    a = [int(i) for i in np.random.default_rng(0).permutation(1000)]
    b = [int(i) for i in np.random.default_rng(1).permutation(1000)]
    mixed = [router.interleave(a, b, None) for _ in range(200)]
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for i, interleaving in enumerate(mixed):
            router.remember_interleaving(f"q{i}", interleaving)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (after - before) / len(mixed) < 8 * 1024  # ~5 KiB for 1000 items (18 KiB as lists of objects)
    first = mixed[0]
    assert router.record_click("q0", first.order[3]) == first.teams[3]
    assert router.record_click("q0", 10_000) is None  # an item that was not shown
    tracemalloc.start()
    try:  # what a click remembers (that its item was clicked) takes no memory of its own
        before, _ = tracemalloc.get_traced_memory()
        for i, interleaving in enumerate(mixed[1:20], start=1):
            for item in interleaving.order:
                router.record_click(f"q{i}", item)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2 * 1024  # (a set of clicked items took ~57 bytes an item: over 1 MB here)


def test_remembered_interleavings_are_bounded_in_items() -> None:
    router = Router("ranker", RolloutConfig(interleaving={"rankers": (1, 2)}), None)
    items = 100_000
    order = list(range(items))
    teams = ["A", "B"] * (items // 2)
    for i in range(100):  # 10 million items in all
        router.remember_interleaving(f"q{i}", Interleaving(order, teams))
    assert router.record_click("q0", 1) is None  # the oldest are forgotten
    assert router.record_click("q99", 1) == "B"
    assert router.status()["interleaving"]["queries"] == 100


def test_team_draft_results_still_credit_clicks_after_being_stored() -> None:
    router = Router("ranker", RolloutConfig(interleaving={"rankers": (1, 2)}), None)
    import random

    mixed = team_draft([5, 3, 1, 0], [0, 1, 3, 5], random.Random(3))
    router.remember_interleaving("q", mixed)
    assert [router.record_click("q", item) for item in mixed.order] == mixed.teams


@pytest.mark.parametrize("request_id", [{"id": "q"}, ["q"], {"q"}])
def test_a_click_on_a_request_id_that_is_no_text_counts_nothing_and_returns_none(
    repository: Path, make_server: ServerFactory, request_id: Any
) -> None:
    # A click endpoint hands on what the client's JSON holds: a request id sent as an object or a list is as
    # unknown as any other id (record_outcome says None), never a TypeError ("unhashable type") out of a view.
    save_model(build_scale_model(1.0, features=1), repository, "ranker", 1)
    save_model(build_scale_model(-1.0, features=1), repository, "ranker", 2)
    server = make_server(repository, config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2))))
    ranked = server.interleave("ranker", np.arange(4, dtype=np.float32).reshape(4, 1))
    assert server.record_click(request_id, ranked.order[0]) is None
    assert server.record_click(request_id, ranked.order[0], model="ranker") is None
    assert server.record_outcome(request_id, 1.0) is None
    wins = server.status()["models"]["ranker"]["rollout"]["interleaving"]
    assert (wins["A"], wins["B"], wins["ties"]) == (0, 0, 0)


# -- 10. the inputs kept for guarded promotion ----------------------------------------------------------------


def test_promotion_samples_are_copies_of_what_callers_sent(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(stable=1, capture_inputs=8))
    buffer = np.zeros((1, 4), np.float32)  # a caller that reuses one input buffer
    for i in range(8):
        buffer[:] = i
        server.predict("scale", buffer)
    buffer[:] = 100.0
    # v1 is stable; v2 answers 2x: a difference of exactly the largest input sent (7), never of 100
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 2, max_abs_diff=0.5, min_samples=8)
    assert refused.value.report["max_abs_diff"] == pytest.approx(7.0)


def test_once_the_promotion_samples_are_full_one_request_in_64_is_sampled(
    versions: Path, make_server: ServerFactory
) -> None:
    """A copy taken aside costs a lone predict several microseconds (cold code and memory between two runs),
    so once full the samples take one routed request in 64 (docs/rollouts.md)."""
    server = make_server(versions, config=rollout(stable=1, capture_inputs=8))
    for _ in range(8):
        server.predict("scale", np.full((1, 4), 1.0, np.float32))
    for _ in range(63):
        server.predict("scale", np.full((1, 4), 50.0, np.float32))
    # v1 is stable; v2 answers 2x: the largest difference is the largest input among the samples
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 2, max_abs_diff=0.5, min_samples=8)
    assert refused.value.report["max_abs_diff"] == pytest.approx(1.0)  # none of the 63 taken
    server.predict("scale", np.full((1, 4), 50.0, np.float32))
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 2, max_abs_diff=0.5, min_samples=8)
    assert refused.value.report["max_abs_diff"] == pytest.approx(50.0)  # the 64th replaced the oldest
    assert refused.value.report["samples"] == 8


def test_a_refused_promotion_leaves_the_samples_as_they_were(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(stable=1, capture_inputs=16))
    for i in range(16):
        server.predict("scale", np.full((1, 4), 16 - i, np.float32))  # the largest input first
    reports = []
    for _ in range(3):
        with pytest.raises(inprocserve.PromotionRefusedError) as refused:
            server.promote("scale", 2, max_abs_diff=0.5, min_samples=16)
        reports.append(refused.value.report)
    # its own pinned comparisons are not kept as samples: every attempt compares on the same 16 inputs
    assert [r["samples"] for r in reports] == [16, 16, 16]
    assert [r["max_abs_diff"] for r in reports] == [pytest.approx(16.0)] * 3
    assert server.predict("scale", np.full((1, 4), 100, np.float32), version=3).version == 3  # nor is this
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 2, max_abs_diff=0.5, min_samples=16)
    assert refused.value.report["max_abs_diff"] == pytest.approx(16.0)


def test_promotion_samples_of_large_requests_are_bounded_in_bytes(repository: Path, make_server: ServerFactory) -> None:
    # A wide model (an image's worth of features): every model's requests are sampled, rollout or not, and
    # 256 copies of 4 MiB batches would hold a gigabyte in every worker.
    for version in (1, 2):
        save_model(build_scale_model(float(version), features=262_144), repository, "wide", version)
    server = make_server(repository, config=rollout(stable=1))
    batch = np.ones((4, 262_144), np.float32)  # 4 MiB
    for _ in range(12):
        server.predict("wide", batch)
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("wide", 2, min_samples=100)
    assert refused.value.report["samples"] == 8  # 32 MiB of them, the newest
    huge = np.full((40, 262_144), 5.0, np.float32)  # 40 MiB: more than all the samples may hold, never copied
    server.predict("wide", huge)
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("wide", 2, max_abs_diff=0.5, min_samples=8)
    assert refused.value.report["max_abs_diff"] == pytest.approx(1.0)  # compared on the 4 MiB batches only


def test_promotion_samples_of_text_are_bounded_by_the_text_they_hold(
    repository: Path, make_server: ServerFactory
) -> None:
    """A text input's array holds pointers: weighed by its buffer, 256 samples of 1 MB texts were 2 KB."""
    for version in (1, 2):
        save_model(build_text_model(), repository, "text", version)
    server = make_server(repository, config=rollout(stable=1))
    for number in range(60):
        server.predict("text", {"text": np.array([f"{number:07d}" + "x" * 1_000_000], dtype=object)})
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("text", 2, min_samples=100)
    assert 30 <= refused.value.report["samples"] <= 34  # 32 MiB of 1 MB texts, the newest


def test_promoting_the_stable_version_is_refused_not_compared_with_itself(
    versions: Path, make_server: ServerFactory
) -> None:
    # An A/B test with no stable set: the default (3) is the stable version, compared with itself it would
    # always be "within bounds".
    arms = {"a": inprocserve.VariantConfig(version=2), "b": inprocserve.VariantConfig(version=3)}
    server = make_server(versions, config=rollout(strategy="ab", variants=arms, capture_inputs=8))
    for i in range(8):
        server.predict("scale", np.full((1, 4), i, np.float32), context={"user_id": str(i)})
    with pytest.raises(inprocserve.PromotionRefusedError, match="version 3 is the stable version already") as refused:
        server.promote("scale", 3, max_abs_diff=0.5)
    assert refused.value.report["from"] == refused.value.report["to"] == 3
    assert refused.value.report["samples"] == 0
    report = server.promote("scale", 2, max_abs_diff=100.0, min_samples=8)  # another version: compared
    assert (report.from_version, report.to_version, report.samples) == (3, 2, 8)


def test_a_clients_refused_request_among_the_samples_does_not_fail_the_promotion(
    repository: Path, make_server: ServerFactory
) -> None:
    """Inputs are sampled as a request is routed, before its answer: one client's request that the model
    refused (an index past its table: that client got an InvalidInputError) stayed among the samples, and
    every promote() raised that client's error, naming the stable version, until it aged out. Such a sample
    is not compared: it says nothing of the candidate."""
    for version in (1, 2):
        save_model(build_gather_model(), repository, "lookup", version)
    server = make_server(repository, config=rollout(stable=1, capture_inputs=16))
    for i in range(8):
        server.predict("lookup", {"index": np.array([i], np.int64)})
    with pytest.raises(inprocserve.InvalidInputError, match="out of data bounds"):
        server.predict("lookup", {"index": np.array([99], np.int64)})  # a client's mistake
    report = server.promote("lookup", 2, max_abs_diff=0.0, min_samples=8)
    assert (report.samples, report.max_abs_diff, report.reason) == (8, 0.0, "within bounds")
    with pytest.raises(inprocserve.PromotionRefusedError, match=r"only 8 recent input.* \(1 of 9 it refuses\)"):
        server.promote("lookup", 1, min_samples=9)  # (back again: compared with version 2, stable now)


def test_a_candidate_that_fails_on_recent_inputs_is_refused_with_a_report(
    repository: Path, make_server: ServerFactory
) -> None:
    """A candidate whose table is shorter fails on half the real inputs the stable version answers: promote()
    raised the candidate's InvalidInputError (the operator's input, by its type, though promote takes none),
    which a deploy script catching PromotionRefusedError did not catch, and had no report."""
    save_model(build_gather_model(table_rows=10), repository, "lookup", 1)
    save_model(build_gather_model(table_rows=5), repository, "lookup", 2)
    server = make_server(repository, config=rollout(stable=1, capture_inputs=16))
    for i in range(10):
        server.predict("lookup", {"index": np.array([i], np.int64)})
    with pytest.raises(inprocserve.PromotionRefusedError, match="version 2 failed on 5 of 10 recent") as refused:
        server.promote("lookup", 2)
    assert "out of data bounds" in refused.value.report["reason"]
    assert server.predict("lookup", {"index": np.array([7], np.int64)}).version == 1  # nothing changed


def test_served_variants_are_kept_an_hour_and_a_bounded_number_and_credited_once() -> None:
    """Outcomes by request id are credited to the variant that served it for ``ttl_s`` after it was served,
    once, and at most ``size`` request ids are kept (the oldest go first), however many requests are routed."""
    from inprocserve._rollout import _COUNTED, _Assignments

    now = [0.0]
    served = _Assignments(3, 60.0, clock=lambda: now[0])
    for number in range(4):
        served.note(f"r{number}", "canary" if number % 2 else "stable")
        now[0] += 10.0
    assert [served.take(f"r{number}") for number in range(3)] == [None, ("canary", 0), ("stable", 0)]
    assert served.take("r1") is _COUNTED  # credited already: known, and credited no more
    assert len(served) == 3
    now[0] = 71.0  # r1 was served at 10 s: 61 s ago
    assert served.take("r1") is None and served.take("r3") == ("canary", 0)
    served.note("r1", "stable")  # noted again: kept from now
    now[0] = 95.0  # r2 (20 s) and r3 (30 s) have expired; the note of r1 at 71 s has not
    served.note("r4", "canary")  # each note drops up to two expired at the front
    assert len(served) == 2 and (served.take("r1"), served.take("r4")) == (("stable", 0), ("canary", 0))
    for number in range(5, 1000):  # many notes, none expired: the size bound holds
        served.note(f"r{number}", "stable")
    assert len(served) == 3 and served.take("r999") == ("stable", 0) and served.take("r4") is None


class _PausingLock:
    """A router's lock that holds ``pause``'s thread right after it next releases the lock, until ``go``."""

    def __init__(self) -> None:
        self.inner = threading.Lock()
        self.pause: threading.Thread | None = None
        self.arrived, self.go = threading.Event(), threading.Event()

    def __enter__(self) -> None:
        self.inner.acquire()

    def __exit__(self, *exc: object) -> None:
        self.inner.release()
        if self.pause is threading.current_thread():
            self.pause = None
            self.arrived.set()
            self.go.wait(10)


@pytest.mark.parametrize("by", ["request id", "key", "key, routes read before the reload"])
def test_an_outcome_of_an_arms_old_version_never_joins_its_new_statistics_whatever_the_timing(by: str) -> None:
    """A reload pointing 'treatment' from version 2 to 3 came between the two steps of record_outcome (the
    request's variant looked up, then credited), or after the server read the routes it passes: version 2's
    outcome became the first of version 3's fresh statistics."""

    def config(treatment: int) -> RolloutConfig:
        return RolloutConfig(
            strategy="ab",
            variants={
                "control": inprocserve.VariantConfig(version=1),
                "treatment": inprocserve.VariantConfig(version=treatment),
            },
        )

    router, ready = Router("m", config(2), None), {1: None, 2: None, 3: None}
    key = next(
        k
        for k in (f"user-{i}" for i in range(1000))
        if router._variant_of_key(k, ready, 3, router.state) == ("treatment", 2)
    )
    router.served("request-of-version-2", router.decide(ready, 3, {"user_id": key}), {})
    state = router.state  # as the server reads it, with the versions
    if by == "key, routes read before the reload":
        router.update(config(3))
        router.record_outcome(None, 1.0, key, 3, ready, state)
    else:
        lock = router._lock = _PausingLock()  # type: ignore[assignment]

        def record() -> None:
            lock.pause = threading.current_thread()
            if by == "key":
                router.record_outcome(None, 1.0, key, 3, ready, state)
            else:
                router.record_outcome("request-of-version-2", 1.0, None, 3, ready, state)

        thread = threading.Thread(target=record)
        thread.start()
        assert lock.arrived.wait(10)
        router.update(config(3))
        lock.go.set()
        thread.join(10)
    assert "treatment" not in router.status()["variants"]


def test_a_request_decided_before_a_reload_that_moved_its_arm_credits_nothing() -> None:
    """decide() routed a request to 'treatment' (version 2), a reload pointed the arm at version 3 while the
    request ran, then served() noted it: its outcome became version 3's, by id and (id known) not by key."""
    arms = {"control": inprocserve.VariantConfig(version=1), "treatment": inprocserve.VariantConfig(version=2)}
    router, ready = Router("m", RolloutConfig(strategy="ab", variants=arms), None), {1: None, 2: None, 3: None}
    key = next(
        k
        for k in (f"user-{i}" for i in range(1000))
        if router._variant_of_key(k, ready, 3, router.state) == ("treatment", 2)
    )
    decided_by = router.state
    decision = router.decide(ready, 3, {"user_id": key}, decided_by)
    assert decision.variant == "treatment" and decision.version == 2
    router.update(RolloutConfig(strategy="ab", variants={**arms, "treatment": inprocserve.VariantConfig(version=3)}))
    router.served("request-1", decision, {}, decided_by)
    assert router.record_outcome("request-1", 1.0, key, 3, ready, router.state) is None
    assert "treatment" not in router.status()["variants"]


def test_a_batch_part_following_a_decision_made_before_a_reload_is_routed_afresh(
    versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batch scoring sends a large batch in parts that follow the first part's decision while the snapshot it
    was made with is published. A reload that pointed 'treatment' from version 2 to 3 between that check and
    the part's routing had the part run on version 2 and noted with the new state: version 3's treatment
    counted a run of version 2 (and, the last part, the whole batch answered by version 2 after the reload)."""
    from inprocserve._server import Server

    def ab(treatment: int) -> inprocserve.ModelConfig:
        arms = {
            "control": inprocserve.VariantConfig(version=1),
            "treatment": inprocserve.VariantConfig(version=treatment),
        }
        return rollout(strategy="ab", variants=arms)

    server = make_server(versions, config=ab(treatment=2))
    x = np.ones((1, 4), np.float32)
    user = next(
        u
        for u in (f"user-{i}" for i in range(1000))
        if server.predict("scale", x, context={"user_id": u}).variant == "treatment"
    )
    router = server._registry.routers["scale"]
    original_route, original_served = Server._route_decided, Router.served
    reloaded: list[bool] = []
    noted_after: list[tuple[int, bool]] = []  # (version, noted with the state adopted by the reload)

    def route_decided(self: Server, *args: Any) -> Any:
        if not reloaded:  # the reload lands just after the part found the first part's decision holding
            reloaded.append(True)
            self.load("scale", config=ab(treatment=3))
        return original_route(self, *args)

    def served(self: Router, request_id: str, decision: Any, arrays: Any, state: Any = None) -> None:
        if reloaded and decision.variant == "treatment":
            noted_after.append((decision.version, state is self.state))
        original_served(self, request_id, decision, arrays, state)

    monkeypatch.setattr(Server, "_route_decided", route_decided)
    monkeypatch.setattr(Router, "served", served)
    answers = list(server.predict_many("scale", [np.ones((2000, 4), np.float32)], context={"user_id": user}))
    assert reloaded and answers and noted_after
    assert (2, True) not in noted_after  # a run of version 2 never counts as the new treatment's
    assert router.state.config.variants["treatment"].version == 3


# -- 11. arguments and settings that were taken, and then did something else ---------------------------------


@pytest.mark.parametrize(
    ("bounds", "named"),
    [
        ({"max_abs_diff": float("nan")}, "max_abs_diff"),
        ({"min_label_agreement": float("nan")}, "min_label_agreement"),
        ({"max_abs_diff": True}, "max_abs_diff"),
        ({"max_abs_diff": "0.5"}, "max_abs_diff"),
        ({"max_abs_diff": -1.0}, "max_abs_diff"),
        ({"min_label_agreement": 1.5}, "min_label_agreement"),
        ({"min_samples": 2.5}, "min_samples"),
    ],
)
def test_a_promotion_bound_that_is_not_a_number_in_its_range_is_refused_before_anything_runs(
    versions: Path, make_server: ServerFactory, bounds: dict[str, Any], named: str
) -> None:
    # a NaN bound fails no comparison: it promoted a candidate that differed by 1.0 (True was taken as 1; a
    # string raised a bare TypeError after every comparison had run)
    server = make_server(versions, config=rollout(stable=1))
    for i in range(4):
        server.predict("scale", np.full((1, 4), i, np.float32))
    with pytest.raises(inprocserve.ConfigurationError, match=rf"promote\(\): {named} must be"):
        server.promote("scale", 2, **bounds)
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == 1  # nothing was switched
    with pytest.raises(inprocserve.PromotionRefusedError):
        server.promote("scale", 2, max_abs_diff=0.5)  # (and a bound in range still refuses a difference of 3)


def test_an_ab_test_whose_weights_are_all_0_is_a_configuration_error() -> None:
    # it loaded (and passed validate), then every request went to the latest version, neither arm's
    arms = {"control": {"version": 1, "weight": 0}, "treatment": {"version": 2, "weight": 0.0}}
    with pytest.raises(inprocserve.ConfigurationError, match=r"'ab' needs a rollout.variants weight above 0"):
        RolloutConfig(strategy="ab", variants=arms)
    RolloutConfig(strategy="ab", variants={**arms, "treatment": {"version": 2, "weight": 1e-9}})  # (one will do)
    RolloutConfig(strategy="bandit", variants=arms)  # (a bandit's traffic follows its outcomes, not the weights)


@pytest.mark.parametrize("value", [False, 0, "", {}, True, "[3]"])
def test_a_shadow_flag_that_is_no_list_says_shadows_are_off_whatever_its_truth(
    versions: Path, make_server: ServerFactory, value: Any
) -> None:
    # false, 0, "" and {} turned the configured shadows off without a word (true and "[3]" said so)
    flags = InMemoryFlags({"scale.shadow.versions": value})
    config = rollout(stable=1, shadow={"versions": [3]})
    server = make_server(versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=config)
    answer = predict(server, "u1")
    assert answer.version == 1
    assert "shadows off: unusable flag: 'scale.shadow.versions' must be a list of versions" in answer.reason
    assert server.status()["models"]["scale"]["rollout"]["flags"]["unusable"] >= 1
    flags.set("scale.shadow.versions", [])  # an empty list (or null) is no shadows, and no complaint
    assert predict(server, "u1").reason == "stable version"


def test_an_outcome_that_can_credit_nothing_is_refused_saying_why(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    answer = predict(server, "u1")
    with pytest.raises(ValueError, match=r"reward must be a finite number .* got 1000000000"):
        server.record_outcome(answer.request_id, 10**400)  # (an OverflowError from float())
    with pytest.raises(TypeError, match=r"key=\.\.\.\) needs model="):
        server.record_outcome(None, 1.0, key="u1")  # (credited nothing, and returned None as for an unknown id)
    with pytest.raises(TypeError, match=r"needs a request_id, or model= and key="):
        server.record_outcome(None, 1.0, model="scale")
    assert server.record_outcome(answer.request_id, 1.0) == answer.variant  # nothing above took its outcome


def test_a_canary_with_a_percent_but_no_version_says_so(versions: Path, make_server: ServerFactory) -> None:
    # every request was answered by the stable version "because 'scale.canary.version' names version 0, which
    # is not loaded": a flag and a version 0 that appear nowhere in the config
    server = make_server(versions, config=rollout(strategy="canary", stable=1, canary={"percent": 50}))
    answer = predict(server, "u1")
    assert answer.version == 1
    assert answer.reason == (
        "unusable setting: the canary has no version: set rollout.canary.version, or the 'scale.canary.version' flag"
    )


def test_operations_take_numpy_numbers_and_refuse_what_is_no_version_or_percent(
    versions: Path, make_server: ServerFactory
) -> None:
    # predict(version=np.int64(2)) works, but switch and set_canary refused numpy's numbers ("must be a positive
    # int, got np.int64(2)"), and a percent of 10**400 raised OverflowError
    server = make_server(versions, config=rollout(stable=1))
    server.switch("scale", np.int64(2))
    assert predict(server, "u1").version == 2
    server.set_canary("scale", np.int32(3), percent=np.float32(100))
    assert predict(server, "u1").version == 3
    status = server.status()["models"]["scale"]["control"]
    assert type(status["canary_version"]) is int and type(status["stable"]) is int  # (written as JSON)
    for version, percent in ((True, 10), (np.float64(2.0), 10), (2, 10**400), (2, np.nan), (2, True)):
        with pytest.raises(ValueError, match=r"(version|percent) must"):
            server.set_canary("scale", version, percent=percent)


def test_a_context_that_is_no_mapping_is_refused_with_a_pinned_version_too(
    versions: Path, make_server: ServerFactory
) -> None:
    server = make_server(versions, config=rollout(stable=1))
    for version in (None, 2):
        with pytest.raises(inprocserve.InvalidInputError, match=r"context must be a mapping"):
            server.predict("scale", np.ones((1, 4), np.float32), version=version, context="abc")  # type: ignore[arg-type]
    assert server.predict("scale", np.ones((1, 4), np.float32), version=2, context={"user_id": "u1"}).version == 2


def test_an_on_shadow_callback_that_keeps_raising_is_logged_once_a_minute(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # a sink that is down logged a traceback for every comparison: 300 copies, 300 tracebacks
    calls: list[Any] = []

    def sink(comparison: Any) -> None:
        calls.append(comparison)
        raise ConnectionError("log sink down")

    config = rollout(stable=1, shadow={"versions": [2]})
    server = make_server(versions, config=config, on_shadow=sink, shadow_budget=1.0)
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        for _ in range(20):
            predict(server, "u1")
        wait_until(lambda: len(calls) == 20)
        server.close()  # (its shadow thread joined: every callback has returned)
    raised = [record for record in caplog.records if "on_shadow callback raised" in record.getMessage()]
    assert len(raised) == 1 and raised[0].exc_info is not None  # the first, with its traceback


def test_a_switch_that_a_stable_flag_overrides_says_traffic_did_not_move(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # the 'scale.stable' flag wins over the alias (docs/operations.md): switch and promote were logged as done
    # while every request stayed on the flag's version, and nothing said why
    flags = InMemoryFlags({"scale.stable": 2})
    server = make_server(versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(stable=1))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.switch("scale", 3)
    assert predict(server, "u1").version == 2
    warned = [record.getMessage() for record in caplog.records if "wins over the alias" in record.getMessage()]
    assert warned == [
        "model 'scale': version 3 is now the stable alias, but requests without a context get version 2: the "
        "'scale.stable' flag is set and wins over the alias; change or clear the flag to move traffic"
    ]
    caplog.clear()
    flags.set("scale.stable", 3)  # the flag agrees: nothing to say
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.switch("scale", 3)
    assert not [record for record in caplog.records if "wins over the alias" in record.getMessage()]


def test_a_canary_that_a_canary_flag_overrides_says_traffic_did_not_move(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # set_canary was logged as done while the 'scale.canary.percent' flag kept every key on its own share, and
    # nothing said why (switch and promote warn of a 'scale.stable' flag that wins)
    flags = InMemoryFlags({"scale.canary.percent": 100})
    server = make_server(versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(stable=1))
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.set_canary("scale", 3, percent=0.01)
    assert predict(server, "u1").version == 3
    warned = [record.getMessage() for record in caplog.records if "wins over" in record.getMessage()]
    assert warned == [
        "model 'scale': the canary is now version 3 at 0.01%, but requests get version 3 at 100%: the "
        "'scale.canary.percent' flag is set and wins over what set_canary sets; change or clear the flag to "
        "move traffic"
    ]
    caplog.clear()
    flags.set("scale.canary.percent", 0.01)  # the flag agrees: nothing to say
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.set_canary("scale", 3, percent=0.01)
    assert not [record for record in caplog.records if "wins over" in record.getMessage()]


def test_a_canary_with_no_version_and_no_flag_provider_is_warned_of_at_load(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # strategy = "canary" at 10 % with no canary.version: nothing could ever name one, every request got the
    # stable version, and only each prediction's reason said why (status and the logs said nothing)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(versions, config=rollout(strategy="canary", stable=1, canary={"percent": 10}))
    assert {predict(server, f"u{i}").version for i in range(50)} == {1}
    warned = [record.getMessage() for record in caplog.records if "canary.version is not set" in record.getMessage()]
    assert warned == [
        "model 'scale': rollout.strategy is 'canary' at 10% but rollout.canary.version is not set (and there is no "
        "flag provider to set 'scale.canary.version'): every request gets the stable version; set "
        "rollout.canary.version"
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="inprocserve"):  # a flag may name it: nothing to say
        make_server(
            versions, flags=InMemoryFlags(), config=rollout(strategy="canary", stable=1, canary={"percent": 10})
        )
    assert not [record for record in caplog.records if "canary.version is not set" in record.getMessage()]


def test_ramping_one_arm_of_an_ab_test_moves_users_only_into_that_arm(
    versions: Path, make_server: ServerFactory
) -> None:
    # arms took their shares of the buckets in listed order: ramping c from 10 % to 20 % moved a's users at the
    # edge of its share into b (5 % of all users switched between two arms whose weights did not grow)
    flags = InMemoryFlags({"scale.ab.weights": {"a": 45, "b": 45, "c": 10}})
    arms = {"a": {"version": 1}, "b": {"version": 2}, "c": {"version": 3}}
    server = make_server(
        versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(strategy="ab", variants=arms)
    )
    users = [f"user{i}" for i in range(2000)]
    before = {user: predict(server, user).variant for user in users}
    flags.set("scale.ab.weights", {"a": 40, "b": 40, "c": 20})
    after = {user: predict(server, user) for user in users}
    moved = {(before[user], result.variant) for user, result in after.items() if result.variant != before[user]}
    assert moved == {("a", "c"), ("b", "c")}
    grown = sum(result.variant == "c" for result in after.values()) - sum(arm == "c" for arm in before.values())
    assert 130 < grown < 270  # ~10 % of 2000 more
    assert after[users[0]].reason == "A/B arm of the targeting key"


def test_an_outcome_key_that_is_an_array_of_values_is_refused_as_a_requests_key_is(
    versions: Path, make_server: ServerFactory
) -> None:
    """A request whose targeting key is ``np.array([1, 2])`` is refused; an outcome reported with it credited
    the arm of its text ``"[1 2]"``, which no request was served. One value in an array (0-d) or numpy's
    scalar is that value's key."""
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    key = np.array([1, 2])
    with pytest.raises(inprocserve.InvalidInputError, match="targeting key"):
        server.predict("scale", X, context={"user_id": key})
    with pytest.raises(TypeError, match=r"record_outcome\(key=...\) must be a string or an int"):
        server.record_outcome(None, 1.0, model="scale", key=key)  # type: ignore[arg-type]
    variants = server.status()["models"]["scale"]["rollout"]["variants"]
    assert sum(figures["outcomes"] for figures in variants.values()) == 0
    result = server.predict("scale", X, context={"user_id": np.array(7)})
    assert server.record_outcome(None, 1.0, model="scale", key=np.array(7)) == result.variant  # type: ignore[arg-type]
    assert server.record_outcome(None, 1.0, model="scale", key=np.int64(7)) == result.variant  # type: ignore[arg-type]


def test_a_request_whose_targeting_key_is_a_one_element_array_is_refused(
    versions: Path, make_server: ServerFactory
) -> None:
    """``np.array([3])`` is a collection, as ``[3]`` is (refused), but was routed by its text ``"[3]"`` (its
    truth value, unlike a longer array's, raised nothing); ``record_outcome`` refuses it."""
    server = make_server(versions, config=rollout(strategy="ab", variants=ARMS))
    with pytest.raises(inprocserve.InvalidInputError, match="targeting key"):
        server.predict("scale", X, context={"user_id": np.array([3])})


def test_an_event_loops_merged_requests_are_sampled_for_promotion_as_lone_ones(
    versions: Path, make_server: ServerFactory
) -> None:
    """Tasks of one loop iteration are answered by one merged run, and noted as served together: their
    inputs are sampled as lone requests' are, every one until the samples are full, then one in 64."""
    server = make_server(versions, config=rollout(capture_inputs=8))  # (v3 answers: 3x)
    server.predict("scale", np.full((1, 4), 1.0, np.float32))  # (the process's first request adopts the runners)

    async def burst(value: float, count: int) -> list[str]:
        answers = await asyncio.gather(
            *(server.apredict("scale", np.full((1, 4), value, np.float32)) for _ in range(count))
        )
        return [answer.variant for answer in answers]

    assert set(asyncio.run(burst(1.0, 7))) == {"default"}
    assert server.status()["models"]["scale"]["versions"]["3"]["batches_run"] < 8  # (merged)
    asyncio.run(burst(50.0, 63))
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 1, max_abs_diff=0.5, min_samples=8)
    assert refused.value.report["max_abs_diff"] == pytest.approx(2.0)  # none of the 63 taken (v1: 1x)
    asyncio.run(burst(50.0, 1))
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 1, max_abs_diff=0.5, min_samples=8)
    assert refused.value.report["max_abs_diff"] == pytest.approx(100.0)  # the 64th replaced the oldest
    assert refused.value.report["samples"] == 8
