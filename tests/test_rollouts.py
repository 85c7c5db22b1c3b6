"""Rollouts driven by flags, through the public Server API with real models.

Version N of the ``scale`` model answers ``y = x * N``, so every answer says which version produced it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import inprocserve
from inprocserve import CanaryConfig, InMemoryFlags, ModelConfig, VariantConfig, VersionPolicy, WarmupConfig
from inprocserve.testing import build_scale_model, build_sum_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, rollout, run_threads, wait_until

X = np.ones((1, 4), np.float32)


def answer(server: inprocserve.Server, user: str | None = None) -> inprocserve.Prediction:
    context = None if user is None else {"user_id": user}
    result = server.predict("scale", X, context=context)
    assert float(result["y"][0, 0]) == result.version  # answered entirely by the version it names
    return result


def test_without_a_rollout_the_latest_version_answers(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=ModelConfig(version_policy=VersionPolicy.all()))
    result = answer(server, "u1")
    assert (result.version, result.variant, result.reason) == (3, "default", "latest ready version")


def test_canary_percentage_is_read_per_request(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags()
    server = make_server(  # a generous flag timeout: a slow read answers stable by design, not under test here
        versions,
        flags=flags,
        flag_timeout_s=10.0,
        config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    users = [f"user-{i}" for i in range(2000)]
    assert {answer(server, u).version for u in users[:200]} == {1}  # 0 % by default
    flags.set("scale.canary.percent", 10)
    five = [u for u in users if answer(server, u).version == 2]
    assert 120 < len(five) < 290, len(five)  # ~10 % of 2000
    flags.set("scale.canary.percent", 20)
    twenty = {u for u in users if answer(server, u).version == 2}
    assert set(five) <= twenty  # raising the percentage keeps everyone already in
    result = answer(server, five[0])
    assert result.variant == "canary" and "under the canary's 20%" in result.reason


def test_the_same_user_always_gets_the_same_variant(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 50})
    server = make_server(
        versions, flags=flags, config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2))
    )
    for user in ("alice", "bob", "carol", "dave"):
        assert len({answer(server, user).version for _ in range(30)}) == 1


def test_stickiness_across_processes(versions: Path) -> None:
    script = """
import json, sys, numpy as np, inprocserve
config = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all(), rollout=inprocserve.RolloutConfig(
    strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=30), salt="s1"))
with inprocserve.Server(sys.argv[1], config=config) as server:
    x = np.ones((1, 4), np.float32)
    print(json.dumps({f"u{i}": server.predict("scale", x, context={"user_id": f"u{i}"}).version for i in range(300)}))
"""
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", script, str(versions)], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(2)
    ]
    assert runs[0] == runs[1]
    assert 40 < sum(v == 2 for v in runs[0].values()) < 140  # ~30 % of 300


def test_kill_switch_sends_everyone_to_stable(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 100})
    server = make_server(
        versions,
        flags=flags,
        config=rollout(
            strategy="canary",
            stable=1,
            canary=inprocserve.CanaryConfig(version=2),
            shadow=inprocserve.ShadowConfig(versions=(3,)),
        ),
    )
    assert answer(server, "u").version == 2
    flags.set("scale.kill", True)
    result = answer(server, "u")
    assert (result.version, result.variant, result.reason) == (1, "stable", "kill switch is on")


def test_a_candidate_that_is_not_loaded_falls_back_to_stable(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 100, "scale.canary.version": 9})
    server = make_server(
        versions, flags=flags, config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2))
    )
    results = [answer(server, f"u{i}") for i in range(5)]
    expected = "unusable flag: 'scale.canary.version' names version 9, which is not loaded (loaded: 1, 2, 3)"
    assert {(r.version, r.reason) for r in results} == {(1, expected)}
    flags_status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert flags_status["unusable"] == 5
    assert "names version 9" in flags_status["unusable_flags"]["scale.canary.version"]


def test_requests_without_a_key_are_bucketed_randomly(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 50})
    server = make_server(
        versions, flags=flags, config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2))
    )
    seen = [answer(server).version for _ in range(400)]
    assert 120 < seen.count(2) < 280


class RaisingFlags(InMemoryFlags):
    name = "raising"

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        raise ConnectionError("flag service unreachable")


class HangingFlags(InMemoryFlags):
    name = "hanging"
    blocking = True

    def __init__(self) -> None:
        super().__init__({"scale.canary.percent": 100})
        self.release = threading.Event()

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        self.release.wait(30)
        return super().get_number(key, default, context)


def test_a_failing_flag_provider_gives_the_stable_decision(
    versions: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(
        versions,
        flags=RaisingFlags(),
        config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    with caplog.at_level("WARNING", logger="inprocserve"):
        results = [answer(server, f"u{i}") for i in range(50)]
    assert {(r.version, r.reason) for r in results} == {(1, "flag provider failed")}
    assert server.status()["models"]["scale"]["rollout"]["flags"]["failures"] == 50
    assert len([r for r in caplog.records if "flag provider" in r.getMessage()]) == 1  # rate-limited


def test_a_hanging_flag_provider_costs_at_most_the_budget(versions: Path, make_server: ServerFactory) -> None:
    flags = HangingFlags()
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=0.05,
        config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    try:
        started = time.monotonic()
        result = answer(server, "u")
        assert time.monotonic() - started < 2.0
        assert (result.version, result.reason) == (1, "flag provider timed out")
        assert server.status()["models"]["scale"]["rollout"]["flags"]["timeouts"] == 1
    finally:
        flags.release.set()


def test_shadow_copies_are_compared_and_reported(versions: Path, make_server: ServerFactory) -> None:
    comparisons: list[inprocserve.ShadowComparison] = []
    server = make_server(
        versions,
        config=rollout(stable=1, shadow=inprocserve.ShadowConfig(versions=(3,))),
        on_shadow=comparisons.append,
        shadow_budget=1.0,
    )
    for _ in range(20):
        assert answer(server, "u").version == 1
    wait_until(lambda: len(comparisons) == 20)
    assert {c.shadow_version for c in comparisons} == {3}
    assert all(c.max_abs_diff == pytest.approx(2.0) and c.error is None for c in comparisons)
    stats = server.status()["models"]["scale"]["shadow"]["3"]
    assert stats["runs"] == 20 and stats["max_abs_diff"] == pytest.approx(2.0)


def test_shadow_flags_turn_mirroring_on_and_sample_it(versions: Path, make_server: ServerFactory) -> None:
    comparisons: list[inprocserve.ShadowComparison] = []
    flags = InMemoryFlags({"scale.shadow.versions": [2], "scale.shadow.percent": 0})
    server = make_server(
        versions, flags=flags, config=rollout(stable=1), on_shadow=comparisons.append, shadow_budget=1.0
    )
    for _ in range(30):
        answer(server)
    flags.set("scale.shadow.percent", 100)
    for _ in range(30):  # the submit path shadows too
        server.submit("scale", X).result(timeout=10)

    def settled() -> bool:
        stats = server.status()["models"]["scale"]["shadow"].get("2", {})
        return stats.get("runs", 0) + stats.get("dropped_no_spare_capacity", 0) == 30

    wait_until(settled)  # a copy that meets the next request queued on version 1 is dropped, not waited for
    assert comparisons and {c.shadow_version for c in comparisons} == {2}


def slow_model(version: float, width: int = 1024, layers: int = 8) -> Any:
    """Same signature as the scale model, y = x * version, after a pile of real (discarded) compute."""
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "up"], ["h0"])]
    inits = [numpy_helper.from_array(rng.standard_normal((4, width)).astype(np.float32), "up")]
    for i in range(layers):
        inits.append(numpy_helper.from_array((rng.standard_normal((width, width)) / 32).astype(np.float32), f"w{i}"))
        nodes.append(helper.make_node("MatMul", [f"h{i}", f"w{i}"], [f"h{i + 1}"]))
    inits += [
        numpy_helper.from_array(np.zeros((width, 4), np.float32), "down"),
        numpy_helper.from_array(np.array(version, np.float32), "factor"),
    ]
    nodes += [
        helper.make_node("MatMul", [f"h{layers}", "down"], ["zero"]),
        helper.make_node("Mul", ["x", "factor"], ["scaled"]),
        helper.make_node("Add", ["scaled", "zero"], ["y"]),
    ]
    return _model(nodes, inits)


def failing_model() -> Any:
    """Same signature, but the Reshape fails inside onnxruntime for any one-row input."""
    shape = numpy_helper.from_array(np.array([-1, 7], np.int64), "shape")
    return _model([helper.make_node("Reshape", ["x", "shape"], ["y"])], [shape])


def _model(nodes: list[Any], inits: list[Any]) -> Any:
    graph = helper.make_graph(
        nodes,
        "shadow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


def test_a_slow_or_failing_shadow_leaves_the_caller_unaffected(repository: Path, make_server: ServerFactory) -> None:
    """Shadows never hold a caller: while the shadow thread is stuck (here: in the ``on_shadow`` callback,
    standing for a shadow version that never finishes), every call is answered by the stable version and
    the copies that find no spare capacity are dropped and counted. No timing: the property is that no
    caller waits for a shadow at all, which a stuck shadow shows without a clock."""
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(slow_model(2.0), repository, "scale", 2)
    save_model(failing_model(), repository, "scale", 3)
    comparisons: list[inprocserve.ShadowComparison] = []
    stuck = threading.Event()
    release = threading.Event()

    def hold_the_shadow_thread(comparison: inprocserve.ShadowComparison) -> None:
        comparisons.append(comparison)
        stuck.set()
        release.wait(60)

    seven_rows = WarmupConfig(rows=7)  # the failing version accepts 7-row warm-ups, then fails on one row
    shadowed = make_server(
        repository,
        config=replace(rollout(stable=1, shadow=inprocserve.ShadowConfig(versions=(2, 3))), warmup=seven_rows),
        on_shadow=hold_the_shadow_thread,
        shadow_budget=1.0,  # no CPU budget: only a busy shadow thread sheds copies here
    )
    try:
        answer(shadowed, "first")  # its shadow copies run, and the first comparison sticks the thread
        assert stuck.wait(30)
        for i in range(300):  # bounded: a caller that waited for the stuck shadow would fail its deadline
            result = shadowed.predict("scale", X, context={"user_id": f"u{i}"}, timeout_s=10)
            assert result.version == 1 and float(result["y"][0, 0]) == 1.0
        stats = shadowed.status()["models"]["scale"]["shadow"]
        dropped = sum(stats[v]["dropped_queue_full"] + stats[v]["dropped_no_spare_capacity"] for v in ("2", "3"))
        assert dropped > 0  # copies were shed, not waited for
    finally:
        release.set()
    # once free, the shadow thread takes copies again: the failing version's failures stay its own
    wait_until(lambda: answer(shadowed, "later").version == 1 and any(c.shadow_version == 3 for c in comparisons))
    failed = [c for c in comparisons if c.shadow_version == 3]
    assert all(c.error is not None and "InferenceError" in c.error for c in failed)
    stats = shadowed.status()["models"]["scale"]["shadow"]
    assert stats["3"]["errors"] == stats["3"]["runs"] > 0
    assert stats["3"]["max_abs_diff"] is None  # nothing to compare when the shadow failed
    assert stats["2"]["runs"] > 0


def test_blue_green_switch_under_32_threads(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(stable=1))
    stop = threading.Event()
    seen: set[int] = set()
    lock = threading.Lock()

    def call(index: int) -> None:
        x = np.full((1 + index % 3, 4), index + 1, np.float32)
        while not stop.is_set():
            result = server.predict("scale", x, context={"user_id": str(index)})
            np.testing.assert_array_equal(result["y"], x * result.version)  # never a mix within a request
            with lock:
                seen.add(result.version)

    def switch_back_and_forth() -> None:
        for version in (3, 1, 3):  # rollback is the same operation as the switch
            time.sleep(0.1)
            server.switch("scale", version)
        time.sleep(0.1)
        stop.set()

    switcher = threading.Thread(target=switch_back_and_forth)
    switcher.start()
    errors = run_threads(32, call)
    switcher.join(timeout=30)
    assert errors == []
    assert seen == {1, 3}
    assert answer(server).version == 3
    assert server.status()["models"]["scale"]["rollout"]["stable_alias"] == 3


def test_switch_loads_a_version_first(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.specific(1)))
    assert server.models == {"scale": [1]}
    server.switch("scale", 2)
    assert answer(server).version == 2
    server.refresh()  # the alias keeps its version loaded
    assert answer(server).version == 2
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.switch("scale", 7)


def test_outcomes_of_a_stable_version_alone_count_without_a_flag_provider(
    versions: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(5.0), versions, "other", 1)
    server = make_server(versions, config=rollout(strategy="stable", stable=1))  # no flags, no shadow
    served = [server.predict("scale", X, context={"user_id": f"u{i}"}) for i in range(4)]
    assert {result.variant for result in served} == {"stable"}
    assert server.status()["models"]["scale"]["rollout"]["variants"]["stable"]["mean_reward"] is None  # none yet
    assert [server.record_outcome(result.request_id, 1.0) for result in served[:2]] == ["stable", "stable"]
    assert server.record_outcome(served[0].request_id, 1.0) is None  # counted once
    assert server.record_outcome(None, 0.0, model="scale", key="u2") == "stable"
    other = server.predict("other", X)
    assert server.record_outcome(other.request_id, 0.0) == "stable"  # by id, without model=: the one that served it
    stable = server.status()["models"]["scale"]["rollout"]["variants"]["stable"]
    assert (stable["served"], stable["outcomes"], stable["version"]) == (4, 3, 1)
    assert stable["mean_reward"] == pytest.approx(2 / 3)
    assert server.status()["models"]["other"]["rollout"]["variants"]["stable"]["outcomes"] == 1
    server.switch("other", 1)  # a stable alias, as a plain switch sets one: its requests count too
    after = server.predict("other", X)
    assert after.variant == "stable" and server.record_outcome(after.request_id, 1.0) == "stable"


def test_an_outcome_by_request_id_alone_asks_no_model_after_the_one_whose_request_it_was(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without model=, an outcome by request id asks each rolled-out model's notes in turn. A repeated report
    (counted already, the model's answer None) went on to ask every other model, which cannot know the id
    (an id is one request's, of one model): it now stops at the model whose request it was, with the same
    answers."""
    from inprocserve import _assignments

    for name in ("a", "b", "c", "d"):
        save_model(build_scale_model(), repository, name, 1)
    server = make_server(repository, config=rollout(strategy="stable", stable=1))
    served = server.predict(next(iter(server.models)), X)  # the model asked first
    asked: list[object] = []
    take = _assignments._Assignments.take

    def counted(self: _assignments._Assignments, given: object) -> Any:
        asked.append(self)
        return take(self, given)

    monkeypatch.setattr(_assignments._Assignments, "take", counted)
    assert server.record_outcome(served.request_id, 1.0) == "stable"
    assert server.record_outcome(served.request_id, 1.0) is None  # counted once
    assert len(asked) == 2  # its model's notes, once a report; not the three other models' after it
    assert server.record_outcome(served.request_id + "0", 1.0) is None  # an id no model knows: each is asked
    assert len(asked) == 6


def test_ab_test_with_outcomes(versions: Path, make_server: ServerFactory) -> None:
    arms = {"control": VariantConfig(version=1), "treatment": VariantConfig(version=2)}
    server = make_server(versions, config=rollout(strategy="ab", variants=arms))
    rng = np.random.default_rng(5)
    for i in range(3000):
        result = answer(server, f"user-{i}")
        assert result.variant in arms and arms[result.variant].version == result.version
        rate = 0.10 if result.variant == "control" else 0.16
        assert server.record_outcome(result.request_id, float(rng.random() < rate)) == result.variant
    report = server.status()["models"]["scale"]["rollout"]
    served = report["variants"]
    assert abs(served["control"]["served"] - 1500) < 200
    assert served["treatment"]["mean_reward"] > served["control"]["mean_reward"]
    test = report["tests"]["treatment"]
    assert test["test"] == "two-proportion z" and test["p_value"] < 0.01
    assert server.record_outcome("no-such-request", 1.0) is None
    # by targeting key instead of request id
    assert server.record_outcome(None, 1.0, model="scale", key="user-3") in arms


def test_an_ab_test_watched_on_the_status_page_seldom_shows_a_difference_that_is_not_there(versions: Path) -> None:
    """60 A/A tests (both arms convert at 20 %), each read on the status page every 20 outcomes up to 1000,
    as a team watching a test does. With the fixed-horizon p-value as the verdict, 18 of them (30 %) showed
    "significant" at some point, though there was nothing to find; with the always-valid one, 2."""
    arms = {"control": VariantConfig(version=1), "treatment": VariantConfig(version=2)}
    config = rollout(strategy="ab", variants=arms)
    rng = np.random.default_rng(7)
    fooled = 0
    for experiment in range(60):
        with inprocserve.Server(versions, config=config) as server:
            for i in range(1000):
                server.record_outcome(None, float(rng.random() < 0.2), model="scale", key=f"{experiment}-{i}")
                if i % 20 == 19 and "significant (" in inprocserve.render_status_page(server.status()):
                    fooled += 1
                    break
    assert fooled <= 5


def test_an_ab_test_with_a_real_difference_turns_significant_and_stays_so(
    versions: Path, make_server: ServerFactory
) -> None:
    arms = {"control": VariantConfig(version=1), "treatment": VariantConfig(version=2)}
    server = make_server(versions, config=rollout(strategy="ab", variants=arms))
    rng = np.random.default_rng(8)
    verdicts = []
    for i in range(3000):
        result = answer(server, f"user-{i}")
        server.record_outcome(result.request_id, float(rng.random() < (0.10 if result.variant == "control" else 0.18)))
        if i % 100 == 99:
            verdicts.append(server.status()["models"]["scale"]["rollout"]["tests"]["treatment"]["significant"])
    assert verdicts[-1] is True and verdicts.index(True) < 25
    assert all(verdicts[verdicts.index(True) :])  # the lowest p-value so far: a verdict once reached stays
    assert "significant (always-valid p &lt; 0.05)" in inprocserve.render_status_page(server.status())


def test_an_arm_pointed_at_another_version_starts_its_statistics_afresh(
    versions: Path, make_server: ServerFactory
) -> None:
    """Treatment ran version 2 (converts at 20 %), then a reload pointed it at version 3 (5 %, worse than
    the control's 10 %): its statistics went on from version 2's, and status showed treatment at 12 %,
    significantly better than the control, after 1000 outcomes of version 3."""

    def ab(treatment: int, control_weight: float = 1.0) -> inprocserve.ModelConfig:
        arms = {
            "control": VariantConfig(version=1, weight=control_weight),
            "treatment": VariantConfig(version=treatment),
        }
        return rollout(strategy="ab", variants=arms)

    server = make_server(versions, config=ab(treatment=2))
    rng = np.random.default_rng(0)
    rates = {1: 0.10, 2: 0.20, 3: 0.05}

    def run(users: range) -> list[inprocserve.Prediction]:
        results = [answer(server, f"user-{i}") for i in users]
        for result in results[: len(results) // 2]:
            server.record_outcome(result.request_id, float(rng.random() < rates[result.version]))
        return results

    pending = run(range(4000))  # half of them report their outcome later
    assert server.status()["models"]["scale"]["rollout"]["tests"]["treatment"]["significant"] is True
    server.load("scale", config=ab(treatment=2, control_weight=1.000001))  # the same versions: kept
    assert server.status()["models"]["scale"]["rollout"]["variants"]["treatment"]["outcomes"] > 900
    server.load("scale", config=ab(treatment=3))
    report = server.status()["models"]["scale"]["rollout"]
    assert "treatment" not in report["variants"] and report["variants"]["control"]["outcomes"] > 900
    late = {f"user-{i}": r for i, r in enumerate(pending) if i >= 2000 and r.variant == "treatment"}
    for user, result in late.items():  # served by version 2: credited neither to version 3 nor by key
        assert server.record_outcome(result.request_id, 1.0, model="scale", key=user) is None
    run(range(4000, 6000))
    report = server.status()["models"]["scale"]["rollout"]
    assert report["variants"]["treatment"]["mean_reward"] < 0.08
    assert report["tests"]["treatment"]["difference"] < 0


def test_a_new_canary_version_starts_the_canary_test_afresh(versions: Path, make_server: ServerFactory) -> None:
    """Canary 2 (20 %, against stable's 10 %), then config.toml's canary.version = 3 (5 %): the canary's
    statistics went on from version 2's, and status showed the canary at 13 %, significantly better."""

    def canary(version: int) -> inprocserve.ModelConfig:
        return rollout(strategy="canary", stable=1, canary=CanaryConfig(version=version, percent=50))

    server = make_server(versions, config=canary(2))
    rng = np.random.default_rng(0)
    rates = {1: 0.10, 2: 0.20, 3: 0.05}
    for i in range(4000):
        if i == 2000:
            server.load("scale", config=canary(3))
        result = answer(server, f"user-{i}")
        server.record_outcome(result.request_id, float(rng.random() < rates[result.version]))
    report = server.status()["models"]["scale"]["rollout"]
    assert 800 < report["variants"]["canary"]["outcomes"] < 1200
    assert report["variants"]["canary"]["mean_reward"] < 0.08 and report["tests"]["canary"]["difference"] < 0


def test_a_switch_of_the_stable_version_starts_the_canary_test_afresh(
    versions: Path, make_server: ServerFactory
) -> None:
    """Canary 3 (15 %) against stable 1 (10 %), then a switch made version 2 (30 %) stable: "stable" went on
    from version 1's outcomes, at 19 %, and the canary showed 3 points worse where it is 15 points worse."""
    server = make_server(
        versions, config=rollout(strategy="canary", stable=1, canary=CanaryConfig(version=3, percent=50))
    )
    rng = np.random.default_rng(0)
    rates = {1: 0.10, 2: 0.30, 3: 0.15}
    for i in range(4000):
        if i == 2000:
            server.switch("scale", 2)
        result = answer(server, f"user-{i}")
        server.record_outcome(result.request_id, float(rng.random() < rates[result.version]))
    report = server.status()["models"]["scale"]["rollout"]
    assert 800 < report["variants"]["stable"]["outcomes"] < 1200 and report["variants"]["stable"]["mean_reward"] > 0.25
    assert report["tests"]["canary"]["difference"] < -0.1


def test_ab_weights_come_from_a_flag(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.ab.weights": {"a": 0, "b": 1}})
    arms = {"a": VariantConfig(version=1), "b": VariantConfig(version=3)}
    server = make_server(versions, flags=flags, config=rollout(strategy="ab", variants=arms))
    assert {answer(server, f"u{i}").version for i in range(50)} == {3}


def test_ab_weights_from_a_flag_as_ints_past_any_float_are_an_unusable_flag(
    versions: Path, make_server: ServerFactory
) -> None:
    flags = InMemoryFlags({"scale.ab.weights": {"a": 10**5000, "b": 1}})
    arms = {"a": VariantConfig(version=1), "b": VariantConfig(version=3)}
    server = make_server(versions, flags=flags, config=rollout(strategy="ab", variants=arms))
    assert "unusable flag" in answer(server, "u1").reason  # (it was counted as the provider failing)
    flag_status = server.status()["models"]["scale"]["rollout"]["flags"]
    assert (flag_status["unusable"], flag_status["failures"]) == (1, 0)
    assert "an int too large to show" in flag_status["unusable_flags"]["scale.ab.weights"]


def test_bandit_converges_on_simulated_rewards(versions: Path, make_server: ServerFactory) -> None:
    arms = {"v1": VariantConfig(version=1), "v2": VariantConfig(version=2), "v3": VariantConfig(version=3)}
    server = make_server(versions, config=rollout(strategy="bandit", variants=arms, seed=11))
    rates = {1: 0.05, 2: 0.20, 3: 0.08}
    rng = np.random.default_rng(3)
    picks = []
    for _ in range(1500):
        result = answer(server)
        picks.append(result.version)
        server.record_outcome(result.request_id, float(rng.random() < rates[result.version]))
    assert picks[-500:].count(2) > 300, {v: picks[-500:].count(v) for v in (1, 2, 3)}


def test_interleaving_credits_clicks_to_rankers(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0, features=1), repository, "ranker", 1)  # ranks items by their feature
    save_model(build_scale_model(-1.0, features=1), repository, "ranker", 2)  # the reverse order
    server = make_server(
        repository, config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2)), seed=4)
    )
    items = np.arange(8, dtype=np.float32).reshape(8, 1)
    wins_for_a = 0
    for _ in range(40):
        result = server.interleave("ranker", items)
        assert sorted(result.order) == list(range(8)) and len(result.teams) == 8
        assert result.order[0] in (7, 0)  # the top item of ranker A or of ranker B
        top_by_a = result.order[result.teams.index("A")]
        assert server.record_click(result.request_id, top_by_a) == "A"  # users click what A ranks first
        wins_for_a += 1
    report = server.status()["models"]["ranker"]["rollout"]["interleaving"]
    assert report["A"] == wins_for_a and report["B"] == 0 and report["queries"] == 40
    assert server.record_click("unknown", 1) is None


def test_interleaving_wins_are_of_one_pair_of_rankers(repository: Path, make_server: ServerFactory) -> None:
    for version, factor in ((1, 1.0), (2, -1.0), (3, 1.0)):  # versions 1 and 3 rank by the feature, 2 reverses it
        save_model(build_scale_model(factor, features=1), repository, "ranker", version)
    flags = InMemoryFlags()
    server = make_server(
        repository,
        flags=flags,
        config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2)), seed=4),
    )
    items = np.arange(8, dtype=np.float32).reshape(8, 1)
    for _ in range(20):  # users click the top item by the feature: version 1 (A) wins every page
        assert server.record_click(server.interleave("ranker", items).request_id, 7) is not None
    late = server.interleave("ranker", items)  # a page of versions 1 and 2, clicked after the flag moved
    flags.set("ranker.rankers", [2, 3])
    for _ in range(30):  # now version 3 (B) wins every page, and version 2 (A) none
        ranked = server.interleave("ranker", items)
        assert ranked.rankers == (2, 3)
        assert server.record_click(ranked.request_id, 7) == "B"
    assert server.record_click(late.request_id, 7) == "A"  # version 1's win, in its own pair's count
    report = server.status()["models"]["ranker"]["rollout"]["interleaving"]
    assert report == {
        "rankers": [2, 3],
        "A": 0,
        "B": 30,
        "ties": 0,
        "queries": 30,
        "earlier": [{"rankers": [1, 2], "A": 21, "B": 0, "ties": 0, "queries": 21}],
    }
    page = inprocserve.render_status_page(server.status())
    assert "A is version 2, B version 3" in page and "Earlier, version 1 (A) against version 2 (B)" in page


def test_an_output_of_more_or_less_than_one_score_per_item_is_refused(
    repository: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2):  # a classifier's [P(irrelevant), P(relevant)] per item, and the sum of a batch
        save_model(build_scale_model(1.0, features=2), repository, "classifier", version)
        save_model(build_sum_model(features=4), repository, "summer", version)
    server = make_server(repository, config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2))))
    with pytest.raises(inprocserve.InvalidInputError) as refused:  # (it ranked by column 0: P(irrelevant))
        server.interleave("classifier", np.ones((10, 2), np.float32), output="y")
    assert "output 'y' of version 1 is float32 of shape [10, 2] for 10 items" in str(refused.value)
    assert "pass output= naming an output of one number per item" in str(refused.value)
    assert (refused.value.model, refused.value.version) == ("classifier", 1)
    with pytest.raises(inprocserve.InvalidInputError) as refused:  # (a bare TypeError from numpy)
        server.interleave("summer", np.ones((10, 4), np.float32))
    assert "output 'total' (the first; outputs: total) of version 1 is float32 of shape []" in str(refused.value)
    for name in ("classifier", "summer"):  # nothing was counted
        assert server.status()["models"][name]["rollout"]["interleaving"] is None


def ranker_server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    """Two rankers of one feature, in opposite orders, interleaved."""
    save_model(build_scale_model(1.0, features=1), repository, "ranker", 1)
    save_model(build_scale_model(-1.0, features=1), repository, "ranker", 2)
    return make_server(repository, config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2)), seed=4))


@pytest.mark.parametrize("length", [0, -1, 2.5, "3", True])
def test_an_interleaving_length_that_is_no_count_of_items_is_refused_before_anything_runs(
    repository: Path, make_server: ServerFactory, length: Any
) -> None:
    server = ranker_server(repository, make_server)
    with pytest.raises(inprocserve.InvalidInputError, match="length must be a whole number >= 1") as refused:
        server.interleave("ranker", np.arange(8, dtype=np.float32).reshape(8, 1), length=length)
    assert refused.value.model == "ranker" and str(refused.value).startswith("model 'ranker': ")  # (docs/errors.md)
    assert server.status()["models"]["ranker"]["rollout"]["interleaving"] is None  # no query was counted


@pytest.mark.parametrize("item", [True, "1", 1.7, float("nan"), None])
def test_a_click_on_something_that_is_no_item_index_is_refused(
    repository: Path, make_server: ServerFactory, item: Any
) -> None:
    server = ranker_server(repository, make_server)
    result = server.interleave("ranker", np.arange(8, dtype=np.float32).reshape(8, 1))
    with pytest.raises(inprocserve.InvalidInputError, match="item must be the index of a ranked item"):
        server.record_click(result.request_id, item)
    with pytest.raises(inprocserve.InvalidInputError, match="item must be the index") as refused:
        server.record_click(result.request_id, item, model="ranker")
    assert refused.value.model == "ranker" and str(refused.value).startswith("model 'ranker': ")  # (docs/errors.md)
    assert server.record_click(result.request_id, np.int64(result.order[0])) == result.teams[0]  # numpy's ints are


def test_an_item_clicked_twice_counts_once(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0, features=1), repository, "ranker", 1)
    save_model(build_scale_model(-1.0, features=1), repository, "ranker", 2)
    server = make_server(
        repository, config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2)), seed=4)
    )
    result = server.interleave("ranker", np.arange(8, dtype=np.float32).reshape(8, 1))
    by_a = result.order[result.teams.index("A")]
    by_b = result.order[result.teams.index("B")]
    assert server.record_click(result.request_id, by_b) == "B"
    for _ in range(3):  # a user double-clicking, or a client retrying, cannot tip the page to A
        assert server.record_click(result.request_id, by_a) == "A"
    report = server.status()["models"]["ranker"]["rollout"]["interleaving"]
    assert (report["A"], report["B"], report["ties"]) == (0, 0, 1)


def test_guarded_promotion(versions: Path, make_server: ServerFactory) -> None:
    server = make_server(versions, config=rollout(stable=1))
    with pytest.raises(inprocserve.PromotionRefusedError, match="recent input"):
        server.promote("scale", 2, min_samples=5)
    for i in range(10):
        server.predict("scale", np.full((1, 4), i, np.float32))
    with pytest.raises(inprocserve.PromotionRefusedError, match="max abs diff") as info:
        server.promote("scale", 3, max_abs_diff=1.0)  # 3x vs 1x differs by up to 18
    assert info.value.report["samples"] == 10 and answer(server).version == 1
    report = server.promote("scale", 2, max_abs_diff=10.0)
    assert isinstance(report, inprocserve.PromotionReport)
    assert (report.from_version, report.to_version, report.reason) == (1, 2, "within bounds") and report.samples >= 10
    assert report.max_abs_diff is not None and 0 < report.max_abs_diff <= 10.0
    assert report["from"] == 1 and report["to"] == 2 and report["reason"] == "within bounds"  # reads as before
    assert report.to_dict() == {**info.value.report, "max_abs_diff": report.max_abs_diff, "to": 2} | {
        "samples": report.samples,
        "label_agreement": report.label_agreement,
        "reason": "within bounds",
    }
    assert answer(server).version == 2


def test_rollout_config_from_toml(versions: Path, make_server: ServerFactory) -> None:
    (versions / "scale" / "config.toml").write_text(
        """
[rollout]
strategy = "ab"

[rollout.shadow]
versions = [3]

[rollout.variants]
control = { version = 1, weight = 1 }
treatment = { version = 2, weight = 1 }
"""
    )
    server = make_server(versions)
    assert server.models == {"scale": [1, 2, 3]}  # versions the rollout names are loaded
    assert {answer(server, f"u{i}").variant for i in range(40)} == {"control", "treatment"}


def test_pinned_versions_bypass_the_rollout(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 100})
    server = make_server(
        versions, flags=flags, config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2))
    )
    result = server.predict("scale", X, version=3, context={"user_id": "u"})
    assert (result.version, result.variant) == (3, "pinned")


def test_promotion_compares_with_the_stable_version_never_a_canary_draw(
    versions: Path, make_server: ServerFactory
) -> None:
    flags = InMemoryFlags({"scale.canary.percent": 50})
    server = make_server(
        versions, flags=flags, config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2))
    )
    for i in range(1, 6):
        server.predict("scale", np.full((1, 4), i, np.float32), context={"user_id": f"u{i}"})
    for _ in range(12):  # a random baseline would be v2 half the time, and v2 agrees with itself
        with pytest.raises(inprocserve.PromotionRefusedError, match="max abs diff") as info:
            server.promote("scale", 2, max_abs_diff=0.5)  # v2 (2x) vs v1 (1x) differs by up to 5
        assert info.value.report["from"] == 1
    assert server.status()["models"]["scale"]["rollout"]["stable_alias"] == 1


def test_promotion_baseline_follows_the_stable_flag(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags({"scale.stable": 3})
    server = make_server(versions, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, config=rollout(stable=1))
    server.predict("scale", X)
    assert server.promote("scale", 2, max_abs_diff=10.0)["from"] == 3  # against the flag's v3, not config's v1


class RaisingObjectFlags(InMemoryFlags):
    name = "raising-objects"

    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        raise ConnectionError("flag service unreachable")


def test_interleave_reads_rankers_through_the_flag_reader(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0, features=1), repository, "ranker", 1)
    save_model(build_scale_model(-1.0, features=1), repository, "ranker", 2)
    server = make_server(
        repository,
        flags=RaisingObjectFlags(),
        config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2)), seed=4),
    )
    items = np.arange(4, dtype=np.float32).reshape(4, 1)
    result = server.interleave("ranker", items)  # a failing provider: the configured rankers, no exception
    assert result.rankers == (1, 2) and sorted(result.order) == [0, 1, 2, 3]
    assert server.status()["models"]["ranker"]["rollout"]["flags"]["failures"] >= 1


def test_interleave_rankers_from_a_flag_and_an_unusable_one(repository: Path, make_server: ServerFactory) -> None:
    for version, factor in ((1, 1.0), (2, -1.0), (3, 2.0)):
        save_model(build_scale_model(factor, features=1), repository, "ranker", version)
    flags = InMemoryFlags({"ranker.rankers": [3, 2]})
    server = make_server(
        repository,
        flags=flags,
        flag_timeout_s=VALUES_NOT_SPEED_S,
        config=rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2))),
    )
    items = np.arange(4, dtype=np.float32).reshape(4, 1)
    assert server.interleave("ranker", items).rankers == (3, 2)
    flags.set("ranker.rankers", [3, 9])
    assert server.interleave("ranker", items).rankers == (1, 2)  # version 9 is not loaded: the configured pair
    problems = server.status()["models"]["ranker"]["rollout"]["flags"]["unusable_flags"]
    assert "names version 9" in problems["ranker.rankers"]


def test_interleave_with_only_an_unusable_rankers_flag_names_the_flag(
    repository: Path, make_server: ServerFactory
) -> None:
    for version, factor in ((1, 1.0), (2, -1.0)):
        save_model(build_scale_model(factor, features=1), repository, "ranker", version)
    server = make_server(repository, flags=InMemoryFlags({"ranker.rankers": [1, 9]}), config=rollout())
    items = np.arange(4, dtype=np.float32).reshape(4, 1)
    # (it said only "[rollout.interleaving] rankers = [A, B]", to someone who had set the flag)
    with pytest.raises(
        inprocserve.ConfigurationError, match=r"or the flag 'ranker.rankers' set to two loaded versions"
    ):
        server.interleave("ranker", items)
    problems = server.status()["models"]["ranker"]["rollout"]["flags"]["unusable_flags"]
    assert "names version 9" in problems["ranker.rankers"]


def flag_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "inprocserve-flags" and t.is_alive()]


class BlockingFlags(InMemoryFlags):
    """An in-memory provider that declares it may block, so it is evaluated on the reader's workers."""

    name = "blocking"
    blocking = True


def test_close_stops_the_flag_workers(versions: Path) -> None:
    before = set(flag_threads())
    server = inprocserve.Server(
        versions,
        flags=BlockingFlags({"scale.canary.percent": 100}),
        flag_timeout_s=VALUES_NOT_SPEED_S,  # (a worker's first start on a loaded machine can take longer than 50 ms)
        config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    try:
        assert answer(server, "u").version == 2
        assert set(flag_threads()) - before  # evaluated on a worker
    finally:
        server.close()
    wait_until(lambda: not set(flag_threads()) - before)
    assert server.status()["models"] == {}


def test_a_hung_provider_holds_a_bounded_number_of_threads(versions: Path, make_server: ServerFactory) -> None:
    flags = HangingFlags()
    entered = threading.Semaphore(0)
    calls: list[int] = []
    original = flags.get_number

    def counting(key: str, default: float, context: Mapping[str, Any]) -> float:
        calls.append(1)
        entered.release()
        return original(key, default, context)

    flags.get_number = counting  # type: ignore[method-assign]
    before = set(flag_threads())
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=0.02,
        config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    try:
        results = [answer(server, f"u{i}") for i in range(40)]
        assert {r.version for r in results} == {1}
        assert {r.reason for r in results} <= {"flag provider timed out", "flag provider busy"}
        status = server.status()["models"]["scale"]["rollout"]["flags"]
        assert status["workers"] <= 2 and len(set(flag_threads()) - before) <= 2
        assert len(calls) <= 2  # the timed-out evaluations still queued were dropped, never run
        assert status["busy"] > 0 and status["timeouts"] + status["busy"] == 40
    finally:
        flags.release.set()


def test_interpreter_exit_is_not_delayed_by_a_hung_provider(versions: Path) -> None:
    script = """
import sys, threading, time, numpy as np, inprocserve

class Hung(inprocserve.InMemoryFlags):
    name = "hung"
    blocking = True
    def get_number(self, key, default, context):
        threading.Event().wait(60)
        return default

config = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all(),
    rollout=inprocserve.RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)))
server = inprocserve.Server(sys.argv[1], config=config, flags=Hung(), flag_timeout_s=0.02)
x = np.ones((1, 4), np.float32)
assert {server.predict("scale", x, context={"user_id": str(i)}).version for i in range(24)} == {1}
server.close()
print(time.monotonic(), flush=True)
"""
    process = subprocess.run(
        [sys.executable, "-c", script, str(versions)], capture_output=True, text=True, timeout=50, check=True
    )
    closed_at = float(process.stdout.strip().splitlines()[-1])
    assert time.monotonic() - closed_at < 10.0, process.stderr  # it hangs 60 s per evaluation if exit waits


def test_a_burst_on_a_healthy_blocking_provider_keeps_every_decision(
    versions: Path, make_server: ServerFactory
) -> None:
    flags = BlockingFlags({"scale.canary.percent": 100})
    server = make_server(
        versions,
        flags=flags,
        flag_timeout_s=30.0,
        config=rollout(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2)),
    )
    reasons: set[str] = set()
    lock = threading.Lock()

    def call(index: int) -> None:
        for i in range(20):
            result = server.predict("scale", X, context={"user_id": f"u{index}-{i}"})
            with lock:
                reasons.add(result.reason)

    assert run_threads(32, call) == []
    assert all("under the canary's 100%" in r for r in reasons), reasons  # none answered "busy"
    assert server.status()["models"]["scale"]["rollout"]["flags"]["busy"] == 0


# -- an A/B split apart from the canary's buckets ------------------------------------------------------------


def _arms_by_user(ab: inprocserve.RolloutConfig, users: list[str]) -> dict[str, str]:
    from inprocserve._rollout import Router

    router = Router("scale", ab, None)
    ready = {1: object(), 2: object(), 3: object()}
    return {user: router.decide(ready, 3, {"user_id": user}).variant for user in users}


AB = inprocserve.RolloutConfig(
    strategy="ab",
    stable=1,
    variants={"control": VariantConfig(version=1, weight=50), "treatment": VariantConfig(version=2, weight=50)},
)


def test_an_ab_split_does_not_follow_an_earlier_canary() -> None:
    # Canary and A/B test hashed keys into the same buckets: every user of an earlier 10 % canary landed in
    # the first 10 % of the A/B split, its control arm, and the two experiments were correlated. A chi-square
    # test of independence over 100,000 users (1 degree of freedom; 10.83 is p = 0.001).
    from inprocserve._rollout import Router

    users = [f"user-{i}" for i in range(100_000)]
    canary = Router(
        "scale",
        inprocserve.RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=2, percent=10)),
        None,
    )
    ready = {1: object(), 2: object()}
    in_canary = {user: canary.decide(ready, 2, {"user_id": user}).variant == "canary" for user in users}
    arms = _arms_by_user(AB, users)
    table = [[0, 0], [0, 0]]
    for user in users:
        table[in_canary[user]][arms[user] == "treatment"] += 1
    total = len(users)
    rows, columns = [sum(row) for row in table], [table[0][j] + table[1][j] for j in (0, 1)]
    chi_square = sum(
        (table[i][j] - rows[i] * columns[j] / total) ** 2 / (rows[i] * columns[j] / total)
        for i in (0, 1)
        for j in (0, 1)
    )
    assert 9_000 < rows[1] < 11_000  # (the canary took its 10 %)
    assert table[1][1] > 4_000  # the canary's users are in both arms, about half in each
    assert chi_square < 10.83, table


def test_an_ab_split_is_sticky_across_processes_and_keeps_its_users_as_a_weight_grows() -> None:
    users = [f"u{i}" for i in range(2_000)]
    script = """
import json, sys
from inprocserve import RolloutConfig, VariantConfig
from inprocserve._rollout import Router
ab = RolloutConfig(strategy="ab", stable=1, variants={"control": VariantConfig(version=1, weight=50),
    "treatment": VariantConfig(version=2, weight=50)})
router = Router("scale", ab, None)
print(json.dumps({f"u{i}": router.decide({1: 0, 2: 0}, 2, {"user_id": f"u{i}"}).variant for i in range(2000)}))
"""
    runs = [
        json.loads(
            subprocess.run(
                [sys.executable, "-c", script],
                capture_output=True,
                text=True,
                check=True,
                env={**os.environ, "PYTHONHASHSEED": seed},
            ).stdout
        )
        for seed in ("1", "2")
    ]
    assert runs[0] == runs[1] == _arms_by_user(AB, users)
    treated = []
    for weight in (10, 30, 50, 90):  # the treatment ramps up: whoever is in it stays in it
        arms = {
            "control": VariantConfig(version=1, weight=100 - weight),
            "treatment": VariantConfig(version=2, weight=weight),
        }
        assigned = _arms_by_user(replace(AB, variants=arms), users)
        treated.append({user for user, arm in assigned.items() if arm == "treatment"})
    assert treated[0] < treated[1] < treated[2] < treated[3]
    assert 0.07 < len(treated[0]) / len(users) < 0.13


def test_an_ab_arm_whose_version_failed_to_load_answers_with_the_stable_version_saying_why(
    repository: Path, make_server: ServerFactory
) -> None:
    # (the treatment's file is damaged: its share of users gets the stable version, each answer's reason
    # naming the arm and version, rather than an error or a silent switch of arm)
    save_model(build_scale_model(1.0), repository, "scale", 1)
    (repository / "scale" / "2").mkdir()
    (repository / "scale" / "2" / "model.onnx").write_bytes(b"not onnx")
    (repository / "scale" / "config.toml").write_text(
        'version_policy = "all"\n[rollout]\nstrategy = "ab"\nstable = 1\n'
        "[rollout.variants.control]\nversion = 1\nweight = 50\n"
        "[rollout.variants.treatment]\nversion = 2\nweight = 50\n"
    )
    server = make_server(repository)
    answers = [answer(server, f"user-{i}") for i in range(40)]
    assert {a.version for a in answers} == {1}
    fallen_back = [a for a in answers if a.variant == "stable"]
    assert fallen_back and len(fallen_back) < len(answers)  # (the control arm's users are served as usual)
    assert {a.reason for a in fallen_back} == {"variant 'treatment' version 2 is not ready"}
    assert {a.variant for a in answers} == {"control", "stable"}
