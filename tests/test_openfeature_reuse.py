"""OpenFeature flags that need no evaluation per request: static and absent flags are remembered.

A rollout reads five or more flags per request; through the OpenFeature SDK each read costs tens of
microseconds, and a blocking provider's decision a hand-off to a worker thread. ``OpenFeatureFlags``
remembers what the provider resolved the same for every context (``STATIC``) or does not have, for
``reuse_static_s`` or until the provider reports new flags. These tests run flagd's real evaluation engine
on a flags file (no flagd server) and count the SDK's evaluations with an OpenFeature hook.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import CanaryConfig, ConfigurationError, ModelConfig, OpenFeatureFlags, RolloutConfig, VersionPolicy
from inprocserve._flag_reader import FlagReader
from inprocserve.testing import build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, wait_until

pytest.importorskip("openfeature.contrib.provider.flagd", reason="pip install openfeature-provider-flagd")

from openfeature import api
from openfeature.contrib.provider.flagd import FlagdProvider
from openfeature.contrib.provider.flagd.config import ResolverType
from openfeature.evaluation_context import EvaluationContext
from openfeature.exception import FlagNotFoundError
from openfeature.flag_evaluation import FlagResolutionDetails, Reason
from openfeature.hook import Hook, HookContext
from openfeature.provider import AbstractProvider, Metadata

X = np.ones((1, 4), np.float32)
CANARY = ModelConfig(
    rollout=RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2)),
    version_policy=VersionPolicy.all(),
)
STAFF_GET_THE_CANARY = {"if": [{"==": [{"var": "plan"}, "staff"]}, "all", "none"]}


def flag(variants: dict[str, Any], default: str, targeting: Any = None) -> dict[str, Any]:
    spec = {"state": "ENABLED", "defaultVariant": default, "variants": variants}
    return spec if targeting is None else spec | {"targeting": targeting}


class Evaluations(Hook):
    """Counts the SDK's evaluations by flag key, and the threads they ran on."""

    def __init__(self) -> None:
        self.keys: Counter[str] = Counter()
        self.threads: set[str] = set()

    def before(self, hook_context: HookContext, hints: Any) -> None:
        import threading

        self.keys[hook_context.flag_key] += 1
        self.threads.add(threading.current_thread().name)


class Flagd:
    """flagd's in-process engine on a flags file that a test may rewrite."""

    def __init__(self, folder: Path, domain: str) -> None:
        self.path = folder / "flags.json"
        self.domain = domain
        self.provider: FlagdProvider | None = None

    def write(self, flags: dict[str, Any]) -> None:
        self.path.write_text(json.dumps({"flags": flags}))
        stat = self.path.stat()  # a modification time past the last one, whatever the file system's resolution
        self.mtime_ns = max(stat.st_mtime_ns, getattr(self, "mtime_ns", 0) + 1_000_000_000)
        os.utime(self.path, ns=(stat.st_atime_ns, self.mtime_ns))

    def start(self) -> None:
        self.provider = FlagdProvider(resolver_type=ResolverType.FILE, offline_flag_source_path=str(self.path))
        api.set_provider_and_wait(self.provider, domain=self.domain)

    def flags(self, hook: Evaluations, **options: Any) -> OpenFeatureFlags:
        """Flags read through this provider, as from a remote one unless ``blocking`` is given: flagd's
        in-process engine would be judged not to block, and these tests are about the blocking path."""
        client = api.get_client(self.domain)
        client.add_hooks([hook])
        return OpenFeatureFlags(client, **({"blocking": True} | options))


@pytest.fixture
def flagd(tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flagd]:
    monkeypatch.setenv("FLAGD_OFFLINE_POLL_MS", "50")  # flagd looks at the file every 50 ms (5 s by default)
    source = Flagd(tmp_path, f"inprocserve-reuse-{request.node.name}")
    yield source
    if source.provider is not None:
        source.provider.shutdown()


@pytest.fixture
def scale(repository: Path) -> Path:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


def test_static_and_absent_flags_are_evaluated_once_and_targeted_ones_every_request(
    flagd: Flagd, scale: Path, make_server: ServerFactory
) -> None:
    flagd.write(
        {
            "scale.canary.percent": flag({"none": 0, "all": 100}, "none", STAFF_GET_THE_CANARY),
            "scale.kill": flag({"on": True, "off": False}, "off"),
        }
    )
    flagd.start()
    hook = Evaluations()
    server = make_server(
        scale, flags=flagd.flags(hook, reuse_static_s=3600), flag_timeout_s=VALUES_NOT_SPEED_S, config=CANARY
    )
    for number in range(20):
        plan = "staff" if number % 2 else "free"
        answer = server.predict("scale", X, context={"user_id": f"u{number}", "plan": plan})
        assert answer.version == (2 if plan == "staff" else 1), answer.reason
    assert hook.keys["scale.canary.percent"] == 20  # targeted: every request
    assert hook.keys["scale.kill"] == 1  # static: once
    for absent in ("scale.stable", "scale.strategy", "scale.canary.version", "scale.shadow.versions"):
        assert hook.keys[absent] == 1, absent  # not in the flag service: once
    assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 0


@pytest.mark.parametrize("blocking", [None, True])
@pytest.mark.parametrize(
    ("rule", "context"),
    [
        (STAFF_GET_THE_CANARY, {"user_id": "u1", "plan": np.str_("staff")}),
        ({"if": [{">=": [{"var": "age"}, 18]}, "all", "none"]}, {"user_id": "u1", "age": np.int64(30)}),
        ({"if": [{">=": [{"var": "score"}, 0.5]}, "all", "none"]}, {"user_id": "u1", "score": np.float32(0.75)}),
        ({"if": [{"var": "staff"}, "all", "none"]}, {"user_id": "u1", "staff": np.bool_(True)}),
    ],
)
def test_numpy_scalars_in_the_context_are_the_attributes_they_hold(
    flagd: Flagd, scale: Path, make_server: ServerFactory, rule: Any, context: dict[str, Any], blocking: Any
) -> None:
    # A context built from a data frame's row holds numpy scalars. np.str_ went to flagd as it was, and its
    # rule raised TypeError (the request answered stable, counted as the provider failing); np.int64 and
    # np.bool_ were left out of the evaluation context, so a rule on them never matched.
    flagd.write({"scale.canary.percent": flag({"none": 0, "all": 100}, "none", rule)})
    flagd.start()
    flags = flagd.flags(Evaluations(), blocking=blocking)
    server = make_server(scale, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=CANARY)
    answer = server.predict("scale", X, context=context)
    assert (answer.version, answer.variant) == (2, "canary"), answer.reason
    assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 0


def test_reuse_static_s_0_evaluates_every_flag_of_every_request(
    flagd: Flagd, scale: Path, make_server: ServerFactory
) -> None:
    flagd.write({"scale.canary.percent": flag({"all": 100}, "all")})
    flagd.start()
    hook = Evaluations()
    server = make_server(
        scale, flags=flagd.flags(hook, reuse_static_s=0), flag_timeout_s=VALUES_NOT_SPEED_S, config=CANARY
    )
    for number in range(5):
        assert server.predict("scale", X, context={"user_id": f"u{number}"}).version == 2
    assert hook.keys["scale.canary.percent"] == 5 and hook.keys["scale.kill"] == 5


def test_new_flags_take_effect_as_the_provider_reports_them_however_long_flags_are_remembered(
    flagd: Flagd, scale: Path, make_server: ServerFactory
) -> None:
    """flagd reports a changed flags file (PROVIDER_CONFIGURATION_CHANGED): the next request reads the new
    values, though static flags are remembered for an hour; the kill switch turned on is obeyed at once."""
    flagd.write({"scale.canary.percent": flag({"half": 50, "all": 100}, "all")})
    flagd.start()
    hook = Evaluations()
    server = make_server(
        scale, flags=flagd.flags(hook, reuse_static_s=3600), flag_timeout_s=VALUES_NOT_SPEED_S, config=CANARY
    )
    assert server.predict("scale", X, context={"user_id": "u1"}).version == 2
    assert server.predict("scale", X, context={"user_id": "u2"}).version == 2
    flagd.write(
        {
            "scale.canary.percent": flag({"half": 50, "all": 100}, "all"),
            "scale.kill": flag({"on": True, "off": False}, "on"),
        }
    )
    wait_until(lambda: server.predict("scale", X, context={"user_id": "u1"}).version == 1)
    answer = server.predict("scale", X, context={"user_id": "u1"})
    assert answer.reason == "kill switch is on"


class Static(AbstractProvider):
    """An OpenFeature provider holding one static number flag, changed with no event (as a provider that
    emits none would)."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.evaluations = 0

    def get_metadata(self) -> Metadata:
        return Metadata(name="static")

    def _static(self, value: Any) -> FlagResolutionDetails[Any]:
        self.evaluations += 1
        return FlagResolutionDetails(value=value, reason=Reason.STATIC)

    def resolve_float_details(
        self, flag_key: str, default_value: float, evaluation_context: EvaluationContext | None = None
    ) -> FlagResolutionDetails[float]:
        return self._static(self.value)

    def resolve_integer_details(self, flag_key: str, default_value: int, evaluation_context: Any = None) -> Any:
        return self._static(int(self.value))

    def resolve_boolean_details(self, flag_key: str, default_value: bool, evaluation_context: Any = None) -> Any:
        return self._static(default_value)

    def resolve_string_details(self, flag_key: str, default_value: str, evaluation_context: Any = None) -> Any:
        return self._static(default_value)

    def resolve_object_details(self, flag_key: str, default_value: Any, evaluation_context: Any = None) -> Any:
        return self._static(default_value)


def test_without_an_event_a_remembered_flag_is_evaluated_again_after_reuse_static_s() -> None:
    provider = Static(10.0)
    api.set_provider_and_wait(provider, domain="inprocserve-reuse-static")
    now = [100.0]
    flags = OpenFeatureFlags(domain="inprocserve-reuse-static", reuse_static_s=2.0, clock=lambda: now[0])
    assert flags.get_number("m.canary.percent", 0, {"user_id": "a"}) == 10.0
    provider.value = 20.0  # no event
    now[0] += 1.9
    assert flags.get_number("m.canary.percent", 0, {"user_id": "b"}) == 10.0  # remembered
    assert provider.evaluations == 1
    now[0] += 0.2
    assert flags.get_number("m.canary.percent", 0, {"user_id": "c"}) == 20.0  # 2.1 s later: evaluated again
    assert provider.evaluations == 2


class Percent(AbstractProvider):
    """One static canary percentage, changed with no event; no other flag."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.evaluations = 0

    def get_metadata(self) -> Metadata:
        return Metadata(name="percent")

    def resolve_float_details(self, flag_key: str, default_value: float, evaluation_context: Any = None) -> Any:
        self.evaluations += 1
        if flag_key == "scale.canary.percent":
            return FlagResolutionDetails(value=self.value, reason=Reason.STATIC)
        raise FlagNotFoundError(f"no flag {flag_key!r}")

    def _absent(self, flag_key: str, default_value: Any, evaluation_context: Any = None) -> Any:
        self.evaluations += 1
        raise FlagNotFoundError(f"no flag {flag_key!r}")

    resolve_integer_details = resolve_boolean_details = resolve_string_details = resolve_object_details = _absent


@contextmanager
def canary_on(provider: AbstractProvider, domain: str) -> Iterator[tuple[Any, OpenFeatureFlags, list[float]]]:
    """A canary's router reading ``provider`` through OpenFeatureFlags, which remembers for 2 s of a clock
    the test moves (``now[0]``)."""
    from inprocserve._rollout import Router

    api.set_provider_and_wait(provider, domain=domain)
    now = [100.0]
    flags = OpenFeatureFlags(domain=domain, reuse_static_s=2.0, clock=lambda: now[0])
    reader = FlagReader(flags, timeout_s=5.0)
    try:
        yield Router("scale", CANARY.rollout, reader), flags, now
    finally:
        reader.close()


def test_a_rollout_decides_from_remembered_flags_with_no_read_until_they_expire() -> None:
    """Every flag of the rollout remembered: decisions come from a plan made once, with no read per request;
    when the remembered values expire (no event told of the change), they are evaluated again and a new
    plan made from them."""
    provider = Percent(100.0)
    with canary_on(provider, "inprocserve-reuse-plan") as (router, _, now):
        ready = {1: object(), 2: object()}
        for expected, reason in ((100.0, "under the canary's 100%"), (0.0, "the canary is at 0%")):
            provider.value = expected
            now[0] += 2.1  # (what was remembered has expired)
            first = router.decide(ready, 2, {"user_id": "u0"})  # every flag evaluated, and remembered
            evaluated = provider.evaluations
            decisions = [router.decide(ready, 2, {"user_id": f"u{n}"}) for n in range(10)]
            assert provider.evaluations == evaluated  # no evaluation: the plan answered
            assert router._flagged is not None and router._flagged[2] is not None
            for decision in (first, *decisions):
                assert reason in decision.reason and decision.provider == "percent"
                assert dict(decision.flags)["scale.canary.percent"] == expected


def test_a_plan_holds_until_the_first_value_it_read_expires() -> None:
    """Values remembered at different times: the plan made from them holds until the earliest expires;
    then that flag is evaluated again (no event told of its change) and a new plan made."""
    provider = Percent(100.0)
    with canary_on(provider, "inprocserve-reuse-earliest") as (router, flags, now):
        ready = {1: object(), 2: object()}
        assert flags.get_number("scale.canary.percent", 0, {}) == 100.0  # remembered until 102
        now[0] = 101.0
        assert router.decide(ready, 2, {"user_id": "u1"}).variant == "canary"  # the others: until 103
        assert router.decide(ready, 2, {"user_id": "u1"}).variant == "canary"  # (from a plan)
        provider.value = 0.0  # no event
        now[0] = 102.5
        assert router.decide(ready, 2, {"user_id": "u1"}).reason == "the canary is at 0%"


def test_flags_no_longer_read_make_no_plan_per_request_once_they_expire(plans_made: list[object]) -> None:
    """The canary's flags stop being read when the strategy flag turns to stable; once what was remembered
    of them expires, plans are made as for any expiry, not for every request."""

    class Strategy(Percent):
        strategy = "canary"

        def resolve_string_details(self, flag_key: str, default_value: str, evaluation_context: Any = None) -> Any:
            if flag_key == "scale.strategy":
                return FlagResolutionDetails(value=self.strategy, reason=Reason.STATIC)
            raise FlagNotFoundError(f"no flag {flag_key!r}")

    provider = Strategy(100.0)
    with canary_on(provider, "inprocserve-reuse-unread") as (router, flags, now):
        ready = {1: object(), 2: object()}
        assert router.decide(ready, 2, {"user_id": "u1"}).variant == "canary"
        now[0] = 101.0
        flags._forget(["scale.strategy"])  # (as flagd reports a changed flag)
        provider.strategy = "stable"
        assert router.decide(ready, 2, {"user_id": "u1"}).reason == "stable version"  # strategy read anew
        now[0] = 102.5  # the canary's flags, read no more, have expired; the strategy holds until 103
        plans_made.clear()
        for number in range(20):
            assert router.decide(ready, 2, {"user_id": f"u{number}"}).reason == "stable version"
        assert len(plans_made) <= 2  # (one finds the expired flags it reads, one after they are evaluated again)


def test_a_keyless_bandit_draws_its_bucket_once_when_its_decision_goes_to_a_worker(
    flagd: Flagd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A targeted shadow flag sends a bandit's decision to a worker: the try on the request's thread stops
    before any draw, the random bucket of a request with no key included."""
    import random

    from inprocserve._rollout import Router

    staff_shadow = {"if": [{"==": [{"var": "plan"}, "staff"]}, "two", "none"]}
    flagd.write({"scale.shadow.versions": flag({"none": [], "two": [2]}, "none", staff_shadow)})
    flagd.start()
    reader = CountingReader(flagd.flags(Evaluations()), timeout_s=5.0)
    CountingReader.handed_over = 0
    draws: list[int] = []
    randrange = random.randrange

    def counted(*args: Any) -> int:
        draws.append(1)
        return randrange(*args)

    monkeypatch.setattr(random, "randrange", counted)
    config = RolloutConfig(strategy="bandit", stable=1, variants={"a": {"version": 1}, "b": {"version": 2}}, seed=0)
    try:
        router = Router("scale", config, reader)
        ready = {1: object(), 2: object()}
        for _ in range(5):
            router.decide(ready, 2, None)
        assert CountingReader.handed_over == 5 and len(draws) == 5
    finally:
        reader.close()


@pytest.fixture
def plans_made(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The values each plan a router tries to make is made from, in order."""
    from inprocserve._rollout import Router

    made: list[object] = []
    plan_from_flags = Router._plan_from_flags

    def counted(self: Router, config: Any, values: Any) -> Any:
        made.append(values)
        return plan_from_flags(self, config, values)

    monkeypatch.setattr(Router, "_plan_from_flags", counted)
    return made


@pytest.mark.parametrize(
    ("key", "variants"), [("scale.canary.percent", {"none": 0, "all": 100}), ("scale.stable", {"none": 1, "all": 2})]
)
def test_a_targeted_flag_is_read_for_every_request_and_no_plan_is_tried_per_request(
    key: str, variants: dict[str, Any], flagd: Flagd, plans_made: list[object]
) -> None:
    """A targeted flag (the canary's percentage, or the stable version itself) is never remembered: every
    request reads the flags, and follows the targeting; no plan is tried for every request."""
    from inprocserve._rollout import Router

    flagd.write({key: flag(variants, "none", STAFF_GET_THE_CANARY)})
    flagd.start()
    reader = FlagReader(flagd.flags(Evaluations(), reuse_static_s=3600), timeout_s=5.0)
    try:
        router = Router("scale", CANARY.rollout, reader)
        ready = {1: object(), 2: object()}
        for number in range(20):
            plan = "staff" if number % 2 else "free"
            decision = router.decide(ready, 2, {"user_id": f"u{number}", "plan": plan})
            assert decision.version == (2 if plan == "staff" else 1), decision.reason
        assert len(plans_made) <= 2  # (before and after the static flags were remembered), not one per request
        assert router._flagged is not None and router._flagged[2] is None
    finally:
        reader.close()


def test_rollouts_sharing_flags_each_get_a_plan_once_their_own_flags_are_remembered(flagd: Flagd) -> None:
    """One OpenFeatureFlags, two models: the second model's flags are remembered after the first model's
    plan was made; the second gets a plan too, not only when the first model's flags expire."""
    from inprocserve._rollout import Router

    flagd.write({"scale.canary.percent": flag({"all": 100}, "all"), "other.canary.percent": flag({"all": 100}, "all")})
    flagd.start()
    hook = Evaluations()
    reader = FlagReader(flagd.flags(hook, reuse_static_s=3600), timeout_s=5.0)
    try:
        ready = {1: object(), 2: object()}
        first, second = (Router(model, CANARY.rollout, reader) for model in ("scale", "other"))
        for router in (first, second):
            for number in range(3):
                assert router.decide(ready, 2, {"user_id": f"u{number}"}).variant == "canary"
            assert router._flagged is not None and router._flagged[2] is not None, router.model
        assert hook.keys["other.canary.percent"] == 1
    finally:
        reader.close()


class CountingReader(FlagReader):
    """The server's flag reader, counting the decisions it hands to a worker thread."""

    handed_over = 0

    def _run_on_worker(self, decide: Any, fallback: Any, effect: str) -> Any:
        CountingReader.handed_over += 1
        return super()._run_on_worker(decide, fallback, effect)


@pytest.mark.parametrize("targeted", [False, True])
def test_a_blocking_provider_hands_a_decision_over_only_when_a_flag_must_be_evaluated(
    flagd: Flagd, targeted: bool
) -> None:
    """Every flag remembered: decided on the request's thread. A targeted flag: on a worker thread, as a
    blocking provider's evaluations must be (bounded by the flag budget)."""
    flagd.write(
        {"scale.canary.percent": flag({"none": 0, "all": 100}, "none", STAFF_GET_THE_CANARY if targeted else None)}
    )
    flagd.start()
    hook = Evaluations()
    reader = CountingReader(flagd.flags(hook), timeout_s=5.0)
    CountingReader.handed_over = 0
    try:
        from inprocserve._rollout import Router

        router = Router("scale", CANARY.rollout, reader)
        ready = {1: object(), 2: object()}
        for number in range(10):
            decision = router.decide(ready, 2, {"user_id": f"u{number}", "plan": "staff"})
            assert decision.version == (2 if targeted else 1), decision.reason
        assert CountingReader.handed_over == (10 if targeted else 1)  # (the first reads every flag)
        assert hook.threads == {"inprocserve-flags"}  # the SDK evaluated on workers only
    finally:
        reader.close()


def test_a_targeted_shadow_flag_is_asked_for_not_taken_for_a_failed_provider(
    flagd: Flagd, scale: Path, make_server: ServerFactory
) -> None:
    """The route's flags are remembered and the shadow's is targeted: deciding from memory stops at the
    shadow flag, and the decision is taken again on a worker with the provider's answer (not \"shadows off:
    flag provider failed\")."""
    flagd.write(
        {
            "scale.canary.percent": flag({"none": 0}, "none"),
            "scale.shadow.versions": flag(
                {"none": [], "three": [3]}, "none", {"if": [{"==": [{"var": "plan"}, "staff"]}, "three", "none"]}
            ),
        }
    )
    flagd.start()
    # (no shadow budget: every copy runs)
    server = make_server(scale, flags=flagd.flags(Evaluations()), flag_timeout_s=5.0, config=CANARY, shadow_budget=1.0)
    for number in range(6):
        answer = server.predict("scale", X, context={"user_id": f"u{number}", "plan": "staff"})
        assert "shadows off" not in answer.reason, answer.reason
    wait_until(lambda: server.status()["models"]["scale"]["shadow"].get("3", {}).get("runs", 0) >= 1)
    assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reuse_static_s": -1}, "reuse_static_s must be a number of seconds >= 0"),
        ({"reuse_static_s": float("nan")}, "reuse_static_s must be a number of seconds >= 0"),
        ({"reuse_static_s": True}, "reuse_static_s must be a number of seconds >= 0"),
        ({"blocking": "no"}, "blocking must be True, False or None"),
    ],
)
def test_options_that_cannot_work_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        OpenFeatureFlags(domain="inprocserve-reuse-options", **options)


# -- what the review of this change found ------------------------------------------------------------------


def test_a_bandit_draws_only_where_its_decision_stands_so_no_abandoned_draw_is_credited(
    flagd: Flagd,
) -> None:
    """A rollout with arms may be a bandit, whose draw a try abandoned for a targeted flag would leave
    behind (an outcome credited to an arm that never served). With every flag remembered it decides from a
    plan on the request's thread (a plan steps aside only before drawing); a request answered stable
    because the reader is closed credits no arm."""
    import threading

    flagd.write({"scale.kill": flag({"on": True, "off": False}, "off")})
    flagd.start()
    reader = CountingReader(flagd.flags(Evaluations()), timeout_s=5.0)
    CountingReader.handed_over = 0
    config = RolloutConfig(strategy="bandit", stable=1, variants={"a": {"version": 1}, "b": {"version": 2}}, seed=0)
    try:
        from inprocserve._rollout import Router

        router = Router("scale", config, reader)
        ready = {1: object(), 2: object()}
        for number in range(5):
            router.decide(ready, 2, {"user_id": f"u{number}"})
        assert CountingReader.handed_over == 1  # (the first reads every flag; the others decide from the plan)
        reader.close()  # no worker may take a decision now: the stable one answers
        closed = router.decide(ready, 2, {"user_id": "late"})
        assert closed.reason == "flag reader closed"
        assert router.record_outcome(None, 1.0, "late", 2, ready) is None  # no arm was drawn for it
        assert threading.current_thread().name != "inprocserve-flags"
    finally:
        reader.close()


def test_a_closed_flag_reader_answers_stable_even_when_every_flag_is_remembered(flagd: Flagd) -> None:
    flagd.write({"scale.canary.percent": flag({"all": 100}, "all")})
    flagd.start()
    reader = FlagReader(flagd.flags(Evaluations()), timeout_s=5.0)
    from inprocserve._rollout import Router

    router = Router("scale", CANARY.rollout, reader)
    ready = {1: object(), 2: object()}
    assert router.decide(ready, 2, {"user_id": "u1"}).variant == "canary"
    reader.close()
    decision = router.decide(ready, 2, {"user_id": "u2"})
    assert (decision.version, decision.reason) == (1, "flag reader closed")


class Changing(Static):
    """A static flag whose value changes, and whose change is reported, while an evaluation is in flight
    (a remote provider's reply that crosses the configuration-changed event)."""

    def __init__(self, value: float) -> None:
        super().__init__(value)
        self.flags: OpenFeatureFlags | None = None

    def resolve_float_details(self, flag_key: str, default_value: float, evaluation_context: Any = None) -> Any:
        answer = self._static(self.value)
        if self.value == 10.0 and self.flags is not None:
            self.value = 20.0
            self.flags._forget(None)  # the event, handled before the old value comes back
        return answer


def test_a_value_evaluated_across_a_change_of_flags_is_not_remembered() -> None:
    provider = Changing(10.0)
    api.set_provider_and_wait(provider, domain="inprocserve-reuse-crossing")
    flags = OpenFeatureFlags(domain="inprocserve-reuse-crossing", reuse_static_s=3600)
    provider.flags = flags
    assert flags.get_number("m.canary.percent", 0, {}) == 10.0  # the old value, in flight during the change
    assert flags.get_number("m.canary.percent", 0, {}) == 20.0  # not remembered: evaluated again
    assert flags.get_number("m.canary.percent", 0, {}) == 20.0  # remembered now
    assert provider.evaluations == 2


def test_a_reported_change_forgets_the_flags_it_names_and_keeps_the_others() -> None:
    """flagd's remote resolver keeps static flags in its own cache and answers CACHED for them; after a
    change it drops only those that changed. Forgetting them all would leave the others CACHED, never
    remembered again."""
    from openfeature.event import ProviderEventDetails

    provider = Static(10.0)
    api.set_provider_and_wait(provider, domain="inprocserve-reuse-named")
    flags = OpenFeatureFlags(domain="inprocserve-reuse-named", reuse_static_s=3600)
    for key in ("m.canary.percent", "m.shadow.percent"):
        flags.get_number(key, 0, {})
    assert provider.evaluations == 2
    provider.value = 30.0
    provider.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=["m.canary.percent"]))
    wait_until(lambda: flags.get_number("m.canary.percent", 0, {}) == 30.0)  # (the SDK's handler thread)
    assert flags.get_number("m.shadow.percent", 0, {}) == 10.0  # not named: still remembered
    assert provider.evaluations == 3
    provider.emit_provider_configuration_changed(ProviderEventDetails())  # names none: all forgotten
    wait_until(lambda: flags.get_number("m.shadow.percent", 0, {}) == 30.0)


def test_flags_dropped_or_closed_stop_listening_to_the_provider() -> None:
    import gc
    import weakref

    api.set_provider_and_wait(Static(1.0), domain="inprocserve-reuse-dropped")
    dropped = OpenFeatureFlags(domain="inprocserve-reuse-dropped")
    gone = weakref.ref(dropped)
    del dropped
    gc.collect()
    assert gone() is None  # the SDK's table of handlers does not keep it
    closed = OpenFeatureFlags(domain="inprocserve-reuse-dropped", reuse_static_s=3600)
    assert closed.get_number("m.canary.percent", 0, {}) == 1.0
    closed.close()
    closed.close()  # idempotent
    assert closed.get_number("m.canary.percent", 0, {}) == 1.0  # reads still work
    api.set_provider_and_wait(Static(2.0), domain="inprocserve-reuse-dropped")
    listening = OpenFeatureFlags(domain="inprocserve-reuse-dropped", reuse_static_s=3600)
    assert listening.get_number("m.canary.percent", 0, {}) == 2.0
    api.set_provider_and_wait(Static(3.0), domain="inprocserve-reuse-dropped")  # another provider: forgotten
    wait_until(lambda: listening.get_number("m.canary.percent", 0, {}) == 3.0)


def test_a_reload_that_renames_the_arms_never_meets_the_old_plan() -> None:
    """A decision taken while ``update`` applies a configuration whose A/B arms have other names is made from
    one routing state, the one before (no KeyError from the old plan meeting the new arms); the next is made
    from the new one."""
    from inprocserve._rollout import Router, _Unflagged

    first = RolloutConfig(strategy="ab", stable=1, variants={"control": {"version": 1}, "treatment": {"version": 2}})
    second = RolloutConfig(strategy="ab", stable=1, variants={"a": {"version": 1}, "b": {"version": 2}})
    router = Router("scale", first, None)
    ready = {1: object(), 2: object()}
    seen = []
    original = _Unflagged.of

    def of_while_deciding(config: RolloutConfig) -> Any:
        seen.append(router.decide(ready, 2, {"user_id": f"u{len(seen)}"}))  # mid-update
        return original(config)

    for user in range(20):
        assert router.decide(ready, 2, {"user_id": f"u{user}"}).variant in ("control", "treatment")
    try:
        _Unflagged.of = of_while_deciding  # type: ignore[method-assign]
        router.update(second)
    finally:
        _Unflagged.of = original  # type: ignore[method-assign]
    assert seen and seen[0].variant in ("control", "treatment")
    assert router.decide(ready, 2, {"user_id": "u0"}).variant in ("a", "b")


# -- what the second review found ------------------------------------------------------------------------------


def test_ab_tests_and_bandits_with_every_flag_remembered_decide_on_the_request_thread(flagd: Flagd) -> None:
    """An A/B split draws nothing that stays: decided from remembered flags on the request's thread. A
    bandit's draw is kept for outcomes by key: a try that may yet be abandoned stops before it (see
    test_a_reload_into_a_bandit_during_a_decision_draws_nothing_it_does_not_serve), and a plan made from
    remembered flags, which steps aside only before drawing, draws on the request's thread."""
    flagd.write({"scale.kill": flag({"on": True, "off": False}, "off")})
    flagd.start()
    arms = {"a": {"version": 1}, "b": {"version": 2}}
    from inprocserve._rollout import Router

    ready = {1: object(), 2: object()}
    for strategy, handed_over in (("ab", 1), ("bandit", 1)):
        reader = CountingReader(flagd.flags(Evaluations()), timeout_s=5.0)
        CountingReader.handed_over = 0
        try:
            router = Router("scale", RolloutConfig(strategy=strategy, stable=1, variants=arms, seed=0), reader)
            variants = {router.decide(ready, 2, {"user_id": f"u{number}"}).variant for number in range(5)}
            assert variants <= {"a", "b"}, variants
            assert CountingReader.handed_over == handed_over, strategy
        finally:
            reader.close()


def test_a_reload_into_a_bandit_during_a_decision_draws_nothing_it_does_not_serve(flagd: Flagd) -> None:
    """A canary reloaded into a bandit while a decision is under way, every flag remembered but a targeted
    shadow flag, and no worker free: the request gets the stable version and no arm is credited for it."""
    flagd.write(
        {
            "scale.shadow.versions": flag(
                {"none": [], "three": [3]}, "none", {"if": [{"==": [{"var": "plan"}, "staff"]}, "three", "none"]}
            )
        }
    )
    flagd.start()
    from inprocserve._rollout import Router

    canary = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=0.0))
    bandit = RolloutConfig(strategy="bandit", stable=1, variants={"a": {"version": 1}, "b": {"version": 2}}, seed=0)
    reloads: list[Any] = []

    def clock() -> float:  # the flag reader reads its clock as a decision starts: the reload lands there
        if reloads:
            reloads.pop()(bandit)
        return 0.0

    flags = flagd.flags(Evaluations())
    from inprocserve._rollout import Router as _Router

    warm = FlagReader(flags, timeout_s=5.0)
    try:  # a first decision, on a worker, makes the provider remember every flag but the targeted one
        _Router("scale", canary, warm).decide({1: object(), 2: object()}, 2, {"user_id": "warm"})
    finally:
        warm.close()
    reader = FlagReader(flags, timeout_s=5.0, max_queued=0, clock=clock)  # no worker, none may start: busy
    try:
        router = Router("scale", canary, reader)
        ready = {1: object(), 2: object()}
        reloads.append(router.update)
        decision = router.decide(ready, 2, {"user_id": "u1"})
        assert (decision.version, decision.reason) == (1, "flag provider busy")
        assert router.record_outcome(None, 1.0, "u1", 2, ready) is None  # no arm was drawn for u1
    finally:
        reader.close()


class Several(AbstractProvider):
    """Static number flags whose values a test changes, reporting each change by name."""

    def __init__(self) -> None:
        self.values: dict[str, float] = {}

    def get_metadata(self) -> Metadata:
        return Metadata(name="several")

    def resolve_float_details(self, flag_key: str, default_value: float, evaluation_context: Any = None) -> Any:
        return FlagResolutionDetails(value=self.values.get(flag_key, 7.0), reason=Reason.STATIC)

    def resolve_integer_details(self, flag_key: str, default_value: int, evaluation_context: Any = None) -> Any:
        raise NotImplementedError

    resolve_boolean_details = resolve_string_details = resolve_object_details = resolve_integer_details


def test_changes_reported_one_by_one_while_requests_read_are_never_lost() -> None:
    """The SDK runs event handlers on its own threads, beside requests that read and remember: each
    change reported must be heard (a forget lost to a race would keep the old value for an hour)."""
    import sys
    import threading

    from openfeature.event import ProviderEventDetails

    provider = Several()
    api.set_provider_and_wait(provider, domain="inprocserve-reuse-several")
    flags = OpenFeatureFlags(domain="inprocserve-reuse-several", reuse_static_s=3600)
    keys = [f"m{number}.canary.percent" for number in range(12)]
    stop = threading.Event()

    def requests() -> None:
        while not stop.is_set():
            for key in keys:
                flags.get_number(key, 0, {})

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # threads take turns often: the races have many chances
    readers = [threading.Thread(target=requests) for _ in range(2)]
    try:
        for thread in readers:
            thread.start()
        for trial in range(1, 31):
            for key in keys:
                provider.values[key] = float(trial)
            for key in keys:
                provider.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=[key]))
            wait_until(lambda: all(flags.get_number(key, 0, {}) == float(trial) for key in keys), 5.0)  # noqa: B023
    finally:
        stop.set()
        for thread in readers:
            thread.join()
        sys.setswitchinterval(interval)


def test_an_event_naming_no_flags_keeps_them_and_the_provider_ready_again_forgets_them() -> None:
    """flagd reports a configuration that changed no flag with an empty list: nothing is forgotten. A
    provider that reports itself ready again (reconnected to its flag service, changes may have been
    missed) is read afresh."""
    from openfeature.event import ProviderEventDetails

    provider = Static(10.0)
    api.set_provider_and_wait(provider, domain="inprocserve-reuse-ready")
    flags = OpenFeatureFlags(domain="inprocserve-reuse-ready", reuse_static_s=3600)
    wait_until(lambda: flags._ready_heard)  # (the SDK's report of the ready provider, which is no news)
    assert flags.get_number("m.canary.percent", 0, {}) == 10.0
    provider.value = 20.0
    heard: list[Any] = []
    forget = flags._forget
    flags._forget = lambda changed=None: (heard.append(changed), forget(changed))  # type: ignore[method-assign]
    provider.emit_provider_configuration_changed(ProviderEventDetails(flags_changed=[]))
    wait_until(lambda: heard == [[]])
    assert flags.get_number("m.canary.percent", 0, {}) == 10.0 and provider.evaluations == 1  # kept
    provider.emit_provider_ready(ProviderEventDetails())
    wait_until(lambda: flags.get_number("m.canary.percent", 0, {}) == 20.0)
    assert provider.evaluations == 2
