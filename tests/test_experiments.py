"""Bucketing, statistics, bandit policies and team-draft interleaving, on plain values."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from inprocserve._experiments import (
    AB_SALT_SUFFIX,
    BUCKETS,
    SEQUENTIAL_EFFECT_SD,
    VariantStats,
    always_valid_p,
    bucket,
    compare,
    epsilon_greedy,
    lower_always_valid_p,
    pick_arm,
    pick_weighted,
    team_draft,
    thompson,
)

KEYS = [f"user-{i}" for i in range(100_000)]


@pytest.mark.parametrize("percent", [0.01, 1, 5, 10, 50, 99])
def test_canary_split_of_100k_keys_is_within_binomial_bounds(percent: float) -> None:
    threshold = percent * BUCKETS / 100
    inside = sum(bucket("fraud", "", key) < threshold for key in KEYS)
    p = percent / 100
    mean, sd = len(KEYS) * p, math.sqrt(len(KEYS) * p * (1 - p))
    assert abs(inside - mean) <= 5 * sd + 1, (inside, mean, sd)


def test_buckets_are_stable_and_depend_on_model_and_salt() -> None:
    assert bucket("fraud", "s", "user-1") == bucket("fraud", "s", "user-1")
    assert bucket("fraud", "", "user-7") == 3514  # pinned: a change would reshuffle every rollout
    assert bucket("fraud", AB_SALT_SUFFIX, "user-7") == 5839  # an A/B test's bucket (apart from a canary's)
    moved = sum(bucket("fraud", "a", k) != bucket("fraud", "b", k) for k in KEYS[:1000])
    assert moved > 950
    assert sum(bucket("fraud", "", k) != bucket("churn", "", k) for k in KEYS[:1000]) > 950


def test_raising_the_percentage_keeps_everyone_already_in() -> None:
    five = {k for k in KEYS if bucket("fraud", "", k) < 500}
    ten = {k for k in KEYS if bucket("fraud", "", k) < 1000}
    assert five < ten
    assert 0.4 < len(five) / len(ten) < 0.6


def test_weighted_split() -> None:
    counts = {"a": 0, "b": 0, "c": 0}
    for key in KEYS[:20_000]:
        counts[pick_weighted(bucket("m", "", key), [("a", 50), ("b", 30), ("c", 20)])] += 1
    assert abs(counts["a"] / 20_000 - 0.5) < 0.02
    assert abs(counts["b"] / 20_000 - 0.3) < 0.02
    assert pick_weighted(5, [("a", 0), ("b", 0)]) == "a"


def test_an_ab_split_gives_each_arm_its_weights_share_of_keys() -> None:
    weights = [("a", 50.0), ("b", 30.0), ("c", 20.0), ("off", 0.0)]
    counts = {"a": 0, "b": 0, "c": 0, "off": 0}
    for key in KEYS[:20_000]:
        counts[pick_arm("m", AB_SALT_SUFFIX, key, weights)] += 1
    assert abs(counts["a"] / 20_000 - 0.5) < 0.02 and abs(counts["b"] / 20_000 - 0.3) < 0.02
    assert counts["off"] == 0
    assert pick_arm("fraud", AB_SALT_SUFFIX, "user-7", [("a", 1.0), ("b", 1.0)]) == "b"  # pinned, as buckets are
    assert pick_arm("m", "", "k", [("a", 0.0), ("b", 0.0)]) == "a"
    assert pick_arm("m", "", "k", [("a", 1e308), ("b", 1e308)]) in ("a", "b")
    assert pick_arm("m", "", "k", [("a", 0.0), ("b", 5e-324)]) == "b"  # (every score inf: still an arm with weight)


@pytest.mark.parametrize(
    ("before", "after", "grew"),
    [
        ([("a", 45.0), ("b", 45.0), ("c", 10.0)], [("a", 40.0), ("b", 40.0), ("c", 20.0)], "c"),
        ([("a", 10.0), ("b", 45.0), ("c", 45.0)], [("a", 20.0), ("b", 40.0), ("c", 40.0)], "a"),
        ([("a", 1.0), ("b", 1.0)], [("a", 1.0), ("b", 1.0), ("c", 1.0)], "c"),  # an arm added
    ],
)
def test_a_change_of_weights_moves_keys_only_into_the_arm_that_grew(
    before: list[tuple[str, float]], after: list[tuple[str, float]], grew: str
) -> None:
    """Shares of buckets in listed order moved keys between arms whose weights did not change: ramping the
    last of three arms from 10 % to 20 % sent 5 % of all keys from the first arm to the second."""
    keys = KEYS[:20_000]
    moved = [
        (was, now)
        for was, now in ((pick_arm("m", "", k, before), pick_arm("m", "", k, after)) for k in keys)
        if was != now
    ]
    assert moved and {now for _, now in moved} == {grew}, sorted(set(moved))
    reordered = list(reversed(after))  # keys, not the arms' order, decide
    assert all(pick_arm("m", "", k, after) == pick_arm("m", "", k, reordered) for k in keys[:2000])


def test_weights_whose_sum_is_past_a_float_split_as_their_shares() -> None:
    """Each weight finite, their sum infinite: every bucket went to the last variant."""
    huge = [("a", 1e308), ("b", 1e308)]
    counts = {"a": 0, "b": 0}
    for key in KEYS[:2_000]:
        position = bucket("m", "", key)
        counts[pick_weighted(position, huge)] += 1
        assert pick_weighted(position, huge) == pick_weighted(position, [("a", 1), ("b", 1)])
    assert counts["a"] > 800 and counts["b"] > 800


def test_two_proportion_test_finds_a_real_difference_and_not_a_fake_one() -> None:
    rng = np.random.default_rng(0)
    control, better, same = VariantStats(), VariantStats(), VariantStats()
    for _ in range(5000):
        control.add(float(rng.random() < 0.10))
        better.add(float(rng.random() < 0.13))
        same.add(float(rng.random() < 0.10))
    significant = compare(control, better)
    assert significant["test"] == "two-proportion z"
    assert significant["p_value"] < 0.001
    assert significant["difference"] == pytest.approx(0.03, abs=0.015)
    assert compare(control, same)["p_value"] > 0.01


def test_welch_for_continuous_rewards() -> None:
    rng = np.random.default_rng(1)
    a, b = VariantStats(), VariantStats()
    for _ in range(400):
        a.add(float(rng.normal(1.0, 1.0)))
        b.add(float(rng.normal(1.3, 2.0)))
    result = compare(a, b)
    assert result["test"].startswith("welch")
    assert result["p_value"] < 0.05
    assert result["reliable"] is True


@pytest.mark.parametrize(
    ("mean", "sd", "n"), [(1e6, 0.01, 20_000), (1e9, 1.0, 5_000), (1e7, 100.0, 5_000), (0.5, 1e-7, 5_000)]
)
def test_welch_is_exact_for_rewards_large_against_their_spread(mean: float, sd: float, n: int) -> None:
    """Rewards such as revenue in micro-units: the variance by sum(x**2) - n * mean**2 cancelled, and a z of
    12.5 read 2.8 (a variance 40 times too high)."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(mean, sd, n), rng.normal(mean + 0.05 * sd, sd, n)
    control, treatment = VariantStats(), VariantStats()
    for x, y in zip(a.tolist(), b.tolist(), strict=True):
        control.add(x)
        treatment.add(y)
    assert control.variance == pytest.approx(float(np.var(a, ddof=1)), rel=1e-6)
    assert treatment.mean == pytest.approx(float(np.mean(b)), rel=1e-12)
    z = (np.mean(b) - np.mean(a)) / math.sqrt(np.var(a, ddof=1) / n + np.var(b, ddof=1) / n)
    result = compare(control, treatment)
    assert result["statistic"] == pytest.approx(z, rel=1e-4)
    assert result["p_value"] == pytest.approx(math.erfc(abs(z) / math.sqrt(2)), rel=1e-3)


def test_compare_with_too_few_outcomes_reports_no_p_value() -> None:
    a, b = VariantStats(), VariantStats()
    a.add(1)
    assert compare(a, b)["p_value"] is None


@pytest.mark.parametrize(("z", "n1", "n2"), [(0.0, 30, 30), (2.0, 100, 100), (3.0, 500, 2000), (4.5, 10_000, 9_000)])
def test_the_always_valid_p_value_is_one_over_the_mixture_likelihood_ratio(z: float, n1: int, n2: int) -> None:
    """Against the mixture integrated numerically: z ~ N(delta * sqrt(n), 1), delta ~ N(0, 0.1**2)."""
    root_n = math.sqrt(1 / (1 / n1 + 1 / n2))
    deltas = np.linspace(-1.5, 1.5, 600_001)
    prior = np.exp(-0.5 * (deltas / SEQUENTIAL_EFFECT_SD) ** 2) / (SEQUENTIAL_EFFECT_SD * math.sqrt(2 * math.pi))
    ratio = np.exp(z * deltas * root_n - 0.5 * (deltas * root_n) ** 2)
    mixture = float(np.sum(prior * ratio) * (deltas[1] - deltas[0]))
    assert always_valid_p(z, n1, n2) == pytest.approx(min(1.0, 1 / mixture), rel=1e-6)
    assert always_valid_p(-z, n1, n2) == always_valid_p(z, n1, n2)


def test_the_always_valid_p_value_keeps_its_lowest_and_needs_30_outcomes_a_side() -> None:
    rng = np.random.default_rng(4)
    control, treatment = VariantStats(), VariantStats()
    for _ in range(29):
        control.add(float(rng.random() < 0.1))
        treatment.add(float(rng.random() < 0.6))
    early = compare(control, treatment)
    assert early["p_value"] < 0.05 and early["always_valid_p_value"] is None and early["significant"] is False
    for _ in range(200):
        control.add(float(rng.random() < 0.1))
        treatment.add(float(rng.random() < 0.6))
    result = compare(control, treatment)
    assert result["significant"] is True and result["always_valid_p_value"] < 1e-6
    assert result["always_valid_p_value"] > result["p_value"]  # the price of reading it at any time
    assert compare(control, treatment, lowest_always_valid_p=1e-30)["always_valid_p_value"] == 1e-30


def test_the_always_valid_p_value_of_revenue_with_a_small_treatment_seldom_shows_a_difference_that_is_not_there() -> (
    None
):
    """A/A tests of revenue per request (5 % buy, amounts lognormal) with 10 % of traffic on the treatment,
    the p-value followed at every outcome as the router does: Welch's spread, from a treatment arm with no
    sale yet (variance 0), made 6 of 60 "significant" at some point (20 % over 10 000 outcomes); now none."""
    rng = np.random.default_rng(11)
    fooled = 0
    for _ in range(60):
        control, treatment, lowest = VariantStats(), VariantStats(), 1.0
        arms = rng.random(3000) < 0.1
        rewards = (rng.random(3000) < 0.05) * rng.lognormal(3, 1.0, 3000)
        for is_treatment, reward in zip(arms, rewards, strict=True):
            (treatment if is_treatment else control).add(float(reward))
            lowest = lower_always_valid_p(control, treatment, lowest)
        fooled += lowest < 0.05
        assert compare(control, treatment, lowest_always_valid_p=lowest)["significant"] is (lowest < 0.05)
    assert fooled <= 3


def test_the_fixed_horizon_p_value_of_revenue_with_a_small_treatment_read_once_seldom_shows_a_difference() -> None:
    """A/A tests of revenue per request (1 % buy, amounts lognormal) with 5 % of 2000 requests on the
    treatment, ``p_value`` read once at that planned size: Welch's spread, from a treatment arm with no sale
    (variance 0), put the difference at z of 4 or more on the control's sales alone, and 41 % of the tests
    showed p < 0.05 where 5 % may."""
    rng = np.random.default_rng(5)
    fooled = 0
    for _ in range(200):
        control, treatment = VariantStats(), VariantStats()
        arms = rng.random(2000) < 0.05
        rewards = (rng.random(2000) < 0.01) * rng.lognormal(3, 1.0, 2000)
        for is_treatment, reward in zip(arms, rewards, strict=True):
            (treatment if is_treatment else control).add(float(reward))
        p_value = compare(control, treatment)["p_value"]
        fooled += p_value is not None and p_value < 0.05
    assert fooled <= 10  # 5 %


def test_the_fixed_horizon_p_value_still_finds_a_real_difference_of_revenue_with_a_small_treatment() -> None:
    """The pooled spread only where it is the larger: a treatment (10 % of traffic) that sells three times
    as often still shows p < 0.05 in most tests read once at 4000 requests."""
    rng = np.random.default_rng(6)
    found = 0
    for _ in range(50):
        control, treatment = VariantStats(), VariantStats()
        for is_treatment in rng.random(4000) < 0.1:
            sells = rng.random() < (0.15 if is_treatment else 0.05)
            (treatment if is_treatment else control).add(float(sells * rng.lognormal(3, 0.5)))
        p_value = compare(control, treatment)["p_value"]
        found += p_value is not None and p_value < 0.05
    assert found >= 40


def test_the_always_valid_p_value_of_rare_conversions_with_a_small_treatment_seldom_shows_a_difference() -> None:
    """A/A tests converting at 0.1 % with 5 % of traffic on the treatment, followed at every outcome: one
    conversion of the treatment's 250 against none of the control's 4750 is z = 4.4, and 9 of 100 such
    tests showed "significant" at some point."""
    rng = np.random.default_rng(77)
    fooled = 0
    for _ in range(100):
        control, treatment, lowest = VariantStats(), VariantStats(), 1.0
        for is_treatment, reward in zip(rng.random(20_000) < 0.05, rng.random(20_000) < 0.001, strict=True):
            (treatment if is_treatment else control).add(float(reward))
            lowest = lower_always_valid_p(control, treatment, lowest)
            if lowest < 0.05:
                fooled += 1
                break
    assert fooled <= 2


@pytest.mark.parametrize("policy", ["thompson", "epsilon_greedy"])
def test_bandits_converge_to_the_better_arm(policy: str) -> None:
    rng = np.random.default_rng(42)
    reward_rng = random.Random(7)
    rates = {"a": 0.05, "b": 0.15, "c": 0.08}
    arms = {name: VariantStats() for name in rates}
    pulls = dict.fromkeys(rates, 0)
    for _ in range(4000):
        name = thompson(arms, rng) if policy == "thompson" else epsilon_greedy(arms, rng, 0.1)
        pulls[name] += 1
        arms[name].add(float(reward_rng.random() < rates[name]))
    late = pulls["b"] / sum(pulls.values())
    assert late > 0.6, pulls


@pytest.mark.parametrize(("per_conversion", "base"), [(20.0, 0.0), (-1.0, 0.0), (1.0, 5.0), (0.5, 0.25)])
def test_thompson_finds_the_best_arm_whatever_the_scale_of_the_rewards(per_conversion: float, base: float) -> None:
    """Revenue of 20 per conversion, a cost of 1, a score of 5 or 6: clamped to [0, 1], the first arm to earn
    20 looked perfect and kept the traffic (the best arm in only 28 of 40 runs), and costs taught nothing."""
    rates = {"a": 0.05, "b": 0.20, "c": 0.08}
    best = max(rates, key=lambda name: base + per_conversion * rates[name])
    for run in range(10):
        rng, reward_rng = np.random.default_rng(run), np.random.default_rng(1000 + run)
        arms = {name: VariantStats() for name in rates}
        picks = []
        for _ in range(1500):
            name = thompson(arms, rng)
            picks.append(name)
            arms[name].add(base + per_conversion * float(reward_rng.random() < rates[name]))
        assert picks[-500:].count(best) > 250, (run, {name: picks[-500:].count(name) for name in rates})


def test_epsilon_greedy_draws_among_arms_tied_for_the_best_mean() -> None:
    """Rare conversions leave every arm at a mean of 0 for a while: the first listed took every greedy pick."""
    arms = {name: VariantStats() for name in ("control", "b", "c")}
    for stats in arms.values():
        stats.add(0.0)
    rng = np.random.default_rng(0)
    picks = [epsilon_greedy(arms, rng, 0.0) for _ in range(3000)]
    assert all(900 < picks.count(name) < 1100 for name in arms), {name: picks.count(name) for name in arms}
    arms["c"].add(1.0)
    assert {epsilon_greedy(arms, rng, 0.0) for _ in range(100)} == {"c"}


def test_epsilon_greedy_draws_among_arms_with_no_outcome_yet() -> None:
    """Outcomes come late (a conversion hours later): until the first listed arm's first one came, it took every
    greedy pick (93 % of traffic at epsilon 0.1)."""
    arms = {name: VariantStats() for name in ("new", "current", "other")}
    rng = np.random.default_rng(0)
    picks = [epsilon_greedy(arms, rng, 0.0) for _ in range(3000)]
    assert all(900 < picks.count(name) < 1100 for name in arms), {name: picks.count(name) for name in arms}
    arms["new"].add(0.0)
    arms["current"].add(1.0)
    assert {epsilon_greedy(arms, rng, 0.0) for _ in range(100)} == {"other"}  # (the one untried goes first)


def test_epsilon_greedy_draws_among_arms_with_the_same_record_whatever_the_order_of_their_rewards() -> None:
    """1 conversion in 3 each, the first reward 0 for one and 1 for the other: their means (from shifted
    sums) came out 0.3333333333333333 and 0.33333333333333337, and the second arm took every greedy pick."""
    arms = {"a": VariantStats(), "b": VariantStats()}
    for reward in (0.0, 0.0, 1.0):
        arms["a"].add(reward)
    for reward in (1.0, 0.0, 0.0):
        arms["b"].add(reward)
    rng = np.random.default_rng(0)
    picks = [epsilon_greedy(arms, rng, 0.0) for _ in range(1000)]
    assert 400 < picks.count("a") < 600, picks.count("a")


def test_bandits_are_deterministic_under_a_seed() -> None:
    def run(seed: int) -> list[str]:
        rng = np.random.default_rng(seed)
        arms = {"a": VariantStats(), "b": VariantStats()}
        chosen = []
        for i in range(50):
            name = thompson(arms, rng)
            arms[name].add(float(i % 3 == 0))
            chosen.append(name)
        return chosen

    assert run(3) == run(3)


@pytest.mark.parametrize("seed", range(20))
def test_team_draft_properties(seed: int) -> None:
    rng = random.Random(seed)
    items = list(range(12))
    a = items[:]
    rng.shuffle(a)
    b = items[:]
    rng.shuffle(b)
    result = team_draft(a, b, random.Random(seed))
    assert sorted(result.order) == items  # every item exactly once
    for prefix in range(1, len(result.order) + 1):  # teams stay balanced at every prefix
        teams = result.teams[:prefix]
        assert abs(teams.count("A") - teams.count("B")) <= 1
    # each team's items appear in that team's own ranking order
    for team, ranking in (("A", a), ("B", b)):
        picked = [item for item, t in zip(result.order, result.teams, strict=True) if t == team]
        assert picked == sorted(picked, key=ranking.index)
    assert result.order[0] in (a[0], b[0])


def test_team_draft_of_identical_rankings_is_that_ranking() -> None:
    ranking = [3, 1, 4, 0, 2]
    assert team_draft(ranking, ranking, random.Random(0)).order == ranking


def test_team_draft_can_be_truncated() -> None:
    result = team_draft([0, 1, 2, 3], [3, 2, 1, 0], random.Random(1), length=2)
    assert len(result.order) == 2 and set(result.teams) == {"A", "B"}
