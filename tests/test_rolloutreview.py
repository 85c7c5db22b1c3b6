"""Rollouts across a fleet: who stays sticky and what stays fair, checked on real servers and processes.

Version N of the ``scale`` model answers ``y = x * N``, so every answer says which version produced it.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import inprocserve
from inprocserve import CanaryConfig, InMemoryFlags, VariantConfig
from inprocserve._experiments import AB_SALT_SUFFIX, bucket, pick_arm, team_draft
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, rollout, run_threads
from .ports import listening_socket
from .processes import keep_gunicorns_apart, stop_process

X = np.ones((1, 4), np.float32)

# Keys a client may send: empty (no key), unicode, very long; no lone surrogates. A long key is 50-60 drawn
# characters a hundred times (5,000-6,000 in all): drawn whole, 60 of them took 6 s of a loaded 2-core host.
KEYS = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=64) | st.text(
    min_size=50, max_size=60, alphabet="ab\u00e9\u4e2d\U0001f600"
).map(lambda part: part * 100)
PERCENTS = st.sampled_from([0, 0.01, 0.05, 1, 5, 10, 20, 50, 99.99, 100]) | st.floats(0, 100)

_VERSIONS_SCRIPT = """
import json, sys, numpy as np, inprocserve
from inprocserve import CanaryConfig, ModelConfig, RolloutConfig, VariantConfig, VersionPolicy
keys = json.loads(sys.stdin.read())
x = np.ones((1, 4), np.float32)
arms = {"control": VariantConfig(version=1, weight=50), "left": VariantConfig(version=2, weight=30),
        "right": VariantConfig(version=3, weight=20)}
out = {}
for name, rollout in {
    "canary": RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=30), salt="s"),
    "ab": RolloutConfig(strategy="ab", stable=1, variants=arms, salt="s"),
}.items():
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=rollout)
    with inprocserve.Server(sys.argv[1], config=config) as server:
        out[name] = [server.predict("scale", x, context={"user_id": k}).version for k in keys]
        if name == "canary":  # blue/green: a switch of the stable version under a running canary
            server.switch("scale", 3)
            out["switched"] = [server.predict("scale", x, context={"user_id": k}).version for k in keys]
print(json.dumps(out))
"""


def _versions_in_a_process(repository: Path, keys: list[str], hash_seed: str) -> dict[str, list[int]]:
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    done = subprocess.run(
        [sys.executable, "-c", _VERSIONS_SCRIPT, str(repository)],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def test_a_key_gets_one_version_in_processes_of_other_hash_seeds(versions: Path) -> None:
    rng = random.Random(7)
    keys = [f"user-{i}" for i in range(150)] + ["é", "中文-ユーザー", "\U0001f600" * 3, "x" * 10_000, "42"]
    keys += ["".join(chr(rng.randrange(0x20, 0xD7FF)) for _ in range(12)) for _ in range(40)]
    # (a copy each: a switch is written to the repository's control file, the fleet's, and would carry over)
    copies = [shutil.copytree(versions, versions.parent / f"copy-{seed}") for seed in ("0", "1", "4242")]
    runs = [_versions_in_a_process(copy, keys, copy.name[5:]) for copy in copies]
    assert runs[0] == runs[1] == runs[2]
    canary, ab = runs[0]["canary"], runs[0]["ab"]
    assert set(canary) == {1, 2} and set(ab) == {1, 2, 3}
    # a switch moves the stable alias alone: the canary's users stay on it, everyone else is on 3
    assert runs[0]["switched"] == [2 if version == 2 else 3 for version in canary]


def _canary_members(server: inprocserve.Server, keys: list[str]) -> set[str]:
    return {k for k in keys if server.predict("scale", X, context={"user_id": k}).variant == "canary"}


LADDER = (0, 0.01, 0.05, 1, 5, 10, 20, 50, 99.99, 100)


def test_canary_growth_is_monotone_for_any_key_and_percent(versions: Path, make_server: ServerFactory) -> None:
    """One server for every example (a server each made the test 8-20 s of a 2-core host's time)."""
    flags = InMemoryFlags()
    config = rollout(strategy="canary", stable=1, canary=CanaryConfig(version=2))
    server = make_server(versions, flags=flags, config=config)

    @settings(max_examples=60, deadline=None)
    @given(key=KEYS, percent=st.floats(0, 100))
    def grows(key: str, percent: float) -> None:
        context = {"user_id": key}
        inside = []
        for step in sorted({*LADDER, percent}):
            flags.set("scale.canary.percent", step)
            answers = {server.predict("scale", X, context=context).version for _ in range(2)}
            if key == "":  # no key: bucketed at random, never sticky (as documented)
                continue
            assert len(answers) == 1  # sticky while the percent holds
            inside.append(answers == {2})
        if key:  # out at first, in from some percent on, for good: in at 5 %, in at 10 %; out at 20 %, out at 5 %
            assert inside == sorted(inside) and inside[0] is False and inside[-1] is True, (key[:20], percent, inside)

    grows()


def test_canary_keeps_its_users_as_it_grows(versions: Path, make_server: ServerFactory) -> None:
    flags = InMemoryFlags()
    server = make_server(
        versions, flags=flags, config=rollout(strategy="canary", stable=1, canary=CanaryConfig(version=2))
    )
    keys = [f"u{i}" for i in range(3000)]
    members = []
    for percent in (0.01, 1, 5, 10, 20, 50, 99.99, 100):
        flags.set("scale.canary.percent", percent)
        members.append(_canary_members(server, keys))
    for smaller, larger in itertools.pairwise(members):
        assert smaller <= larger
    assert members[-1] == set(keys)


def _within_binomial(count: int, n: int, share: float) -> bool:
    """Within 6 standard deviations: the ids are fixed, so the check is deterministic; a fair hash misses it
    with a chance of 2e-9 per figure had the ids been drawn."""
    sd = math.sqrt(n * share * (1 - share))
    return abs(count - n * share) <= 6 * sd


N_IDS = 100_000


def test_canary_and_ab_shares_are_within_binomial_bounds_over_100000_ids() -> None:
    ids = [f"user-{i}" for i in range(N_IDS)]
    buckets = [bucket("scale", "", k) for k in ids]
    for percent in (0.01, 1, 5, 10, 50):
        count = sum(b < round(percent * 100) for b in buckets)
        assert _within_binomial(count, N_IDS, percent / 100), (percent, count)
    weights = [("control", 50.0), ("left", 30.0), ("right", 20.0)]
    arms = [pick_arm("scale", AB_SALT_SUFFIX, k, weights) for k in ids]
    for name, weight in weights:
        assert _within_binomial(arms.count(name), N_IDS, weight / 100), (name, arms.count(name))
    # the A/B split is independent of the canary's buckets: the first 10 % of buckets spread like everyone
    early = [arm for arm, b in zip(arms, buckets, strict=True) if b < 1000]
    for name, weight in weights:
        assert _within_binomial(early.count(name), len(early), weight / 100), (name, early.count(name))


def test_an_arm_added_or_removed_moves_only_the_users_it_must() -> None:
    ids = [f"user-{i}" for i in range(20_000)]
    three = [("control", 50.0), ("left", 30.0), ("right", 20.0)]
    four = [*three, ("new", 25.0)]
    before = [pick_arm("scale", "s", k, three) for k in ids]
    added = [pick_arm("scale", "s", k, four) for k in ids]
    removed = [pick_arm("scale", "s", k, three[:2]) for k in ids]
    reordered = [pick_arm("scale", "s", k, three[::-1]) for k in ids]
    assert all(a == b or a == "new" for b, a in zip(before, added, strict=True))  # moved only into the new arm
    assert _within_binomial(added.count("new"), len(ids), 25 / 125)
    assert all(b == r or b == "right" for b, r in zip(before, removed, strict=True))  # only the removed arm's move
    assert reordered == before
    ramped = [pick_arm("scale", "s", k, [("control", 50.0), ("left", 30.0), ("right", 40.0)]) for k in ids]
    assert all(b == r or r == "right" for b, r in zip(before, ramped, strict=True))  # only into the grown arm


def test_weights_too_small_for_a_score_split_keys_by_their_shares_in_any_order() -> None:
    ids = [f"user-{i}" for i in range(20_000)]
    for weights in ([("a", 5e-324), ("b", 5e-324)], [("a", 1e-320), ("b", 3e-320)]):
        arms = [pick_arm("scale", "s", k, weights) for k in ids]
        share = weights[0][1] / (weights[0][1] + weights[1][1])
        assert _within_binomial(arms.count("a"), len(ids), share), (weights, arms.count("a"))
        assert [pick_arm("scale", "s", k, weights[::-1]) for k in ids] == arms  # the order moves nobody


def test_an_ab_weights_flag_of_tiny_weights_splits_keyed_requests_as_unkeyed_ones(
    versions: Path, make_server: ServerFactory
) -> None:
    arms = {"control": VariantConfig(version=1, weight=50), "treatment": VariantConfig(version=2, weight=50)}
    flags = InMemoryFlags({"scale.ab.weights": {"control": 1e-320, "treatment": 1e-320}})
    server = make_server(versions, flags=flags, config=rollout(strategy="ab", stable=1, variants=arms))
    keyed = [server.predict("scale", X, context={"user_id": f"k{i}"}).variant for i in range(2000)]
    assert _within_binomial(keyed.count("treatment"), 2000, 0.5), keyed.count("treatment")


def test_an_ab_split_on_a_real_server_is_sticky_and_follows_the_weights_flag(
    versions: Path, make_server: ServerFactory
) -> None:
    arms = {"control": VariantConfig(version=1, weight=50), "treatment": VariantConfig(version=2, weight=50)}
    flags = InMemoryFlags()
    server = make_server(versions, flags=flags, config=rollout(strategy="ab", stable=1, variants=arms))
    keys = [f"k{i}" for i in range(2000)]
    first = {k: server.predict("scale", X, context={"user_id": k}).variant for k in keys}
    again = {k: server.predict("scale", X, context={"user_id": k}).variant for k in keys}
    assert first == again
    flags.set("scale.ab.weights", {"control": 50, "treatment": 100})
    grown = {k: server.predict("scale", X, context={"user_id": k}).variant for k in keys}
    assert all(first[k] == grown[k] or grown[k] == "treatment" for k in keys)
    assert sum(v == "treatment" for v in grown.values()) > sum(v == "treatment" for v in first.values())


# --- bandits -------------------------------------------------------------------------------------------------

BANDIT_ARMS = {"a": VariantConfig(version=1), "b": VariantConfig(version=2)}


def _bandit(versions: Path, make_server: ServerFactory, **kwargs: object) -> inprocserve.Server:
    return make_server(versions, config=rollout(strategy="bandit", stable=1, variants=BANDIT_ARMS, seed=7, **kwargs))


def _arm_stats(server: inprocserve.Server) -> dict[str, dict[str, object]]:
    return server.status()["models"]["scale"]["rollout"]["variants"]


def test_bandit_rewards_that_are_not_usable_are_refused_and_count_nothing(
    versions: Path, make_server: ServerFactory
) -> None:
    server = _bandit(versions, make_server)
    result = server.predict("scale", X, context={"user_id": "u"})
    for bad in (math.nan, math.inf, -math.inf, 1e300, 10**400):
        with pytest.raises(ValueError, match="reward must be a finite number"):
            server.record_outcome(result.request_id, bad)
    assert server.record_outcome("no-such-request", 1.0) is None  # unknown id: nothing, no error
    assert server.record_outcome(result.request_id, 1.0) == result.variant
    assert server.record_outcome(result.request_id, 1.0) is None  # replayed: counted once
    stats = _arm_stats(server)
    assert sum(int(stats[n]["outcomes"]) for n in BANDIT_ARMS) == 1


def test_a_reload_that_removes_an_arm_keeps_the_other_arms_requests_and_draws_among_the_rest(
    versions: Path, make_server: ServerFactory
) -> None:
    toml = versions / "scale" / "config.toml"
    head = '[rollout]\nstrategy = "bandit"\nstable = 1\nseed = 7\n[rollout.variants]\na = { version = 1 }\n'
    toml.write_text(head + "b = { version = 2 }\nc = { version = 3 }\n")
    server = make_server(versions)
    results = [server.predict("scale", X, context={"user_id": f"u{i}"}) for i in range(40)]
    on_b = [r for r in results if r.variant == "b"]
    on_a = [r for r in results if r.variant == "a"]
    assert on_a and on_b
    toml.write_text(head + "c = { version = 3 }\n")
    server.reload()
    assert server.record_outcome(on_a[0].request_id, 1.0) == "a"  # the arm kept keeps its requests
    assert server.record_outcome(on_a[0].request_id, 1.0) is None  # once
    assert {server.predict("scale", X, context={"user_id": f"v{i}"}).variant for i in range(40)} <= {"a", "c"}


def test_eight_threads_choosing_and_rewarding_keep_the_counts_whole(versions: Path, make_server: ServerFactory) -> None:
    server = _bandit(versions, make_server)
    credited: list[str | None] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        rng = random.Random(index)
        for i in range(150):
            result = server.predict("scale", X, context={"user_id": f"t{index}-{i}"})
            assert float(result["y"][0, 0]) == result.version
            reward = 1.0 if (result.variant == "b") == (rng.random() < 0.7) else 0.0
            got = server.record_outcome(result.request_id, reward)
            again = server.record_outcome(result.request_id, reward)  # replayed from another thread's view
            with lock:
                credited.extend([got, again])

    assert run_threads(8, work) == []
    stats = _arm_stats(server)
    assert sum(int(stats[n]["served"]) for n in BANDIT_ARMS) == 8 * 150
    assert sum(int(stats[n]["outcomes"]) for n in BANDIT_ARMS) == 8 * 150
    assert credited.count(None) == 8 * 150


# --- interleaving ---------------------------------------------------------------------------------------------


class _Coins(random.Random):
    """A random source whose coin tosses are given (team draft tosses one per round of equal picks)."""

    def __init__(self, tosses: list[float]) -> None:
        super().__init__(0)
        self._tosses = list(tosses)

    def random(self) -> float:
        return self._tosses.pop(0)


def test_team_draft_matches_a_hand_computed_example() -> None:
    # A ranks 0 1 2 3 4 5, B ranks 1 3 0 5 2 4. Coins: round 1 A first (0.1), round 2 B first (0.9),
    # round 3 A first (0.2).
    # Round 1: A takes 0, B takes 1. Round 2: B takes 3, A takes 2. Round 3: A takes 4, B takes 5.
    interleaving = team_draft([0, 1, 2, 3, 4, 5], [1, 3, 0, 5, 2, 4], _Coins([0.1, 0.9, 0.2]))
    assert interleaving.order == [0, 1, 3, 2, 4, 5]
    assert interleaving.teams == ["A", "B", "B", "A", "A", "B"]
    # Clicks on 2 and 4 (A's) and on 3 (B's): A wins the query 2 to 1.
    clicks = {"A": 0, "B": 0}
    for item in (2, 4, 3):
        clicks[interleaving.team_of(item)] += 1
    assert clicks == {"A": 2, "B": 1}


def test_a_served_interleaving_is_a_team_draft_and_its_clicks_credit_as_computed_by_hand(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0, features=1), repository, "ranker", 1)  # A: items by their feature, high first
    save_model(build_scale_model(-1.0, features=1), repository, "ranker", 2)  # B: the reverse
    config = rollout(interleaving=inprocserve.InterleavingConfig(rankers=(1, 2)), seed=4)
    server = make_server(repository, config=config)
    ranked = server.interleave("ranker", np.arange(6, dtype=np.float32).reshape(6, 1))
    rankings = {"A": [5, 4, 3, 2, 1, 0], "B": [0, 1, 2, 3, 4, 5]}
    for position, (item, team) in enumerate(zip(ranked.order, ranked.teams, strict=True)):
        # each team's pick is its best item not shown yet, and no prefix favours a team by more than one
        assert item == next(i for i in rankings[team] if i not in ranked.order[:position])
        assert abs(ranked.teams[: position + 1].count("A") - ranked.teams[: position + 1].count("B")) <= 1
    a_items = [i for i, t in zip(ranked.order, ranked.teams, strict=True) if t == "A"]
    b_items = [i for i, t in zip(ranked.order, ranked.teams, strict=True) if t == "B"]

    def wins() -> tuple[int, int, int]:
        report = server.status()["models"]["ranker"]["rollout"]["interleaving"]
        return report["A"], report["B"], report["ties"]

    # clicks: B's item (B leads 1-0), A's (1-1, a tie), A's again (A leads 2-1), A's repeated (counted once)
    steps = [(b_items[0], "B", (0, 1, 0)), (a_items[0], "A", (0, 0, 1)), (a_items[1], "A", (1, 0, 0))]
    steps.append((a_items[1], "A", (1, 0, 0)))
    for item, team, expected in steps:
        assert server.record_click(ranked.request_id, item) == team
        assert wins() == expected
    assert server.status()["models"]["ranker"]["rollout"]["interleaving"]["queries"] == 1


# --- switches under load --------------------------------------------------------------------------------------


def test_switches_under_eight_threads_never_show_an_unconfigured_version_nor_fail(
    versions: Path, make_server: ServerFactory
) -> None:
    server = make_server(versions, config=rollout(strategy="canary", stable=1, canary=CanaryConfig(version=2)))
    seen: set[tuple[int, str]] = set()
    stop = threading.Event()
    lock = threading.Lock()

    def predict(index: int) -> None:
        i = 0
        while not stop.is_set():
            result = server.predict("scale", X, context={"user_id": f"t{index}-{i % 50}"})
            assert float(result["y"][0, 0]) == result.version
            with lock:
                seen.add((result.version, result.variant))
            i += 1

    errors: list[BaseException] = []

    def guarded(n: int) -> None:
        try:
            predict(n)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(100):
            server.switch("scale", 2 if round_ % 2 == 0 else 1)
            server.set_canary("scale", 2, percent=(round_ * 7) % 101)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert {version for version, _ in seen} <= {1, 2}  # 3 is loaded, never configured


# --- gunicorn workers -----------------------------------------------------------------------------------------

_WORKER_APP = """
import json, os, threading
import numpy as np
import inprocserve

_server = None
_lock = threading.Lock()


def app(environ, start_response):
    global _server
    with _lock:
        if _server is None:  # (one per worker, made in the worker)
            _server = inprocserve.Server(os.environ["ROLLOUT_REPOSITORY"])
    keys = json.loads(environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0)))
    x = np.ones((1, 4), np.float32)
    answers = {
        model: [_server.predict(model, x, context={"user_id": key}).version for key in keys]
        for model in ("canaried", "split")
    }
    body = json.dumps({"pid": os.getpid(), "answers": answers}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
"""

_CANARY_TOML = '[rollout]\nstrategy = "canary"\nstable = 1\nsalt = "s"\n[rollout.canary]\nversion = 2\npercent = 30\n'
_SPLIT_TOML = (
    '[rollout]\nstrategy = "ab"\nstable = 1\nsalt = "s"\n[rollout.variants]\n'
    "control = { version = 1, weight = 50 }\nleft = { version = 2, weight = 30 }\n"
    "right = { version = 3, weight = 20 }\n"
)


def test_every_gunicorn_worker_gives_a_key_the_version_this_process_gives_it(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    for model, toml in (("canaried", _CANARY_TOML), ("split", _SPLIT_TOML)):
        for version in (1, 2, 3):
            save_model(build_scale_model(float(version)), repository, model, version)
        (repository / model / "config.toml").write_text(toml)
    (tmp_path / "rollout_worker_app.py").write_text(_WORKER_APP)
    keys = [f"user-{i}" for i in range(200)] + ["é", "中文", "\U0001f600", "y" * 5000]
    with inprocserve.Server(repository) as here:  # this process: another hash seed than gunicorn's (random)
        expected = {
            model: [here.predict(model, X, context={"user_id": key}).version for key in keys]
            for model in ("canaried", "split")
        }
    keep_gunicorns_apart()
    listener = listening_socket()
    base = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    command = [sys.executable, "-m", "gunicorn", "--workers", "3", "--bind", f"fd://{listener.fileno()}"]
    log = tmp_path / "gunicorn.log"
    environment = {**os.environ, "ROLLOUT_REPOSITORY": str(repository), "PYTHONHASHSEED": "random"}
    with listener, open(log, "wb") as output:
        master = subprocess.Popen(
            [*command, "rollout_worker_app:app"],
            cwd=tmp_path,
            stdout=output,
            stderr=subprocess.STDOUT,
            pass_fds=[listener.fileno()],
            env=environment,
        )
    try:
        by_worker: dict[int, dict[str, list[int]]] = {}
        deadline = time.monotonic() + 60
        body = json.dumps(keys).encode()
        while len(by_worker) < 2:  # (sync workers: each connection is one worker's; two of them at least)
            assert master.poll() is None and time.monotonic() < deadline, log.read_text()
            try:
                with urllib.request.urlopen(urllib.request.Request(base, data=body), timeout=30) as answer:
                    got = json.loads(answer.read())
            except OSError:
                time.sleep(0.05)
                continue
            by_worker[got["pid"]] = got["answers"]
    finally:
        stop_process(master)
    for answers in by_worker.values():
        assert answers == expected
    assert set(expected["canaried"]) == {1, 2} and set(expected["split"]) == {1, 2, 3}
