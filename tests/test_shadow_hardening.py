"""Shadow comparisons stay truthful and bounded: NaN answers, reused buffers, the budget held at admission,
a queue bounded by bytes, and runs stopped at what is left of the budget."""

from __future__ import annotations

import json
import math
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

import inprocserve
from inprocserve import BatchingConfig, ModelConfig, RolloutConfig, ShadowComparison, VersionPolicy
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory, build_busy_model, busy_inputs, past_the_tick, wait_until
from .test_telemetry import Otel
from .test_telemetry import otel as otel

X = np.ones((1, 4), np.float32)


def shadowed(**config: Any) -> ModelConfig:
    """Version 1 answers, version 2 gets a shadow copy of every request."""
    return ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
        version_policy=VersionPolicy.all(),
        **config,
    )


def stats(server: inprocserve.Server, model: str) -> dict[str, Any]:
    """Version 2's shadow statistics (empty before its first copy)."""
    shadow: dict[str, Any] = server.status()["models"][model]["shadow"].get("2", {})
    return shadow


class HeldShadowThread:
    """An ``on_shadow`` callback that holds the shadow thread in the first comparison until released:
    copies made meanwhile wait in the queue (or are dropped when it is full), as they would behind a long
    shadow run (the callback's time is not the run's, so it spends none of the budget)."""

    def __init__(self) -> None:
        self.comparisons: list[ShadowComparison] = []
        self.stuck = threading.Event()
        self.released = threading.Event()

    def __call__(self, comparison: ShadowComparison) -> None:
        self.comparisons.append(comparison)
        self.stuck.set()
        self.released.wait(60)


# -- NaN and infinities --------------------------------------------------------------------------------------


def test_a_shadow_answering_nan_disagrees_and_status_stays_valid_json(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(float("nan")), repository, "scale", 2)  # a broken candidate: NaN everywhere
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    for i in range(3):
        server.predict("scale", np.array([[4.0, 3.0, 2.0, 1.0]], np.float32) * (i + 1))
    wait_until(lambda: len(comparisons) == 3)
    assert all(c.max_abs_diff == math.inf and c.label_agreement == 0.0 for c in comparisons)
    shadow = stats(server, "scale")
    assert shadow["runs"] == 3 and shadow["errors"] == 0
    assert shadow["non_finite_diffs"] == 3
    assert shadow["label_agreement"] == 0.0
    assert shadow["max_abs_diff"] is None and shadow["mean_max_abs_diff"] is None  # no finite difference
    json.dumps(server.status(), allow_nan=False)  # NaN and infinities never reach the status


def test_equal_nans_and_infinities_in_both_answers_are_equal(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)  # the same model: the answers are identical
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    inputs = np.array([[math.inf, math.nan, 1.0, -math.inf], [math.nan, 5.0, 1.0, 2.0]], np.float32)
    answer = server.predict("scale", inputs)
    assert np.isnan(answer["y"][0, 1]) and answer["y"][0, 0] == math.inf
    wait_until(lambda: len(comparisons) == 1)
    assert comparisons[0].max_abs_diff == 0.0 and comparisons[0].label_agreement == 1.0
    shadow = stats(server, "scale")
    assert shadow["non_finite_diffs"] == 0 and shadow["max_abs_diff"] == 0.0 and shadow["mean_max_abs_diff"] == 0.0
    json.dumps(server.status(), allow_nan=False)


# -- the caller's buffers are its own once it has its answer --------------------------------------------------


def test_a_caller_reusing_its_input_buffer_does_not_change_what_the_shadow_compares(
    repository: Path, make_server: ServerFactory
) -> None:
    model = build_mlp_model((16, 32, 4), seed=1)
    save_model(model, repository, "mlp", 1)
    save_model(model, repository, "mlp", 2)  # the shadow is the same model: every comparison must be exact
    held = HeldShadowThread()
    server = make_server(repository, config=shadowed(), on_shadow=held, shadow_budget=1.0)
    buffer = np.empty((8, 16), np.float32)
    rng = np.random.default_rng(0)
    try:
        buffer[:] = rng.standard_normal(buffer.shape)
        server.predict("mlp", buffer)
        assert held.stuck.wait(30)  # its copy ran; the shadow thread is held in the callback
        for _ in range(10):  # these copies wait in the queue while the caller refills its one buffer
            buffer[:] = rng.standard_normal(buffer.shape)
            server.predict("mlp", buffer)
    finally:
        held.released.set()
    wait_until(lambda: len(held.comparisons) == 11)
    assert [(c.max_abs_diff, c.label_agreement) for c in held.comparisons] == [(0.0, 1.0)] * 11


def test_a_caller_editing_its_answer_does_not_change_what_the_shadow_compares(
    repository: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2):
        save_model(build_scale_model(2.0), repository, "scale", version)  # identical versions
    held = HeldShadowThread()
    server = make_server(repository, config=shadowed(), on_shadow=held, shadow_budget=1.0)
    x = np.ones((1, 4), np.float32)
    try:
        server.predict("scale", x)
        assert held.stuck.wait(30)
        answer = server.predict("scale", x)  # its copy waits while the thread is held
        answer["y"][:] = 0.0  # the caller post-processes its answer in place
    finally:
        held.released.set()
    wait_until(lambda: len(held.comparisons) == 2)
    assert held.comparisons[1].max_abs_diff == 0.0


# -- the budget is held when a copy is admitted; the queue is bounded by bytes -------------------------------


def test_copies_made_during_a_shadow_run_are_dropped_at_once_when_the_budget_is_reserved(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_busy_model(layers=1), repository, "busy", 1)
    save_model(build_busy_model(layers=16), repository, "busy", 2)  # 1000 rows take about 0.1 s or more
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append)  # the default budget, 2 %
    server.predict("busy", busy_inputs(1000))  # admitted: it reserves the budget its run may take (10 ms)
    wait_until(lambda: server.status()["models"]["busy"]["versions"]["2"]["in_flight"] == 1)
    for _ in range(20):
        assert server.predict("busy", busy_inputs(1)).version == 1
    # counted as they are made (not queued, holding their inputs, to be dropped after the run): the run owes
    # its time, so the bucket does not refill meanwhile; the first may take what was left of the allowance
    assert stats(server, "busy")["dropped_over_budget"] >= 19
    wait_until(lambda: stats(server, "busy")["runs"] + stats(server, "busy")["dropped_over_budget"] == 21)
    assert stats(server, "busy")["dropped_queue_full"] == 0


def test_copies_offered_while_a_run_overspends_are_dropped_at_once_not_queued() -> None:
    """The bucket refilled while a run was in flight, though the run had spent far more than it reserved (the
    excess was settled only when it ended): copies offered meanwhile were queued, holding their inputs, to be
    dropped after the run. The shadow version here runs until the test ends it, on a clock the test steps."""
    from types import SimpleNamespace

    from inprocserve._shadow import ShadowRunner
    from inprocserve.testing import ManualClock

    clock = ManualClock()
    running, release = threading.Event(), threading.Event()

    class Slow:
        """A shadow version's batcher whose run lasts until the test ends it."""

        _clock = clock

        def run_if_idle(self, request: Any) -> bool:
            running.set()
            release.wait(30)
            raise RuntimeError("ended by the test")

    runner = ShadowRunner(budget=0.1, clock=clock)
    primary = SimpleNamespace(version=1, batcher=None)
    shadow = SimpleNamespace(version=2, batcher=Slow(), signature=None)
    x = np.ones((1, 4), np.float32)
    try:
        runner.offer("scale", "r0", {"x": x}, 1, {"y": x}, primary, [shadow])
        assert running.wait(30)
        clock.advance(1.0)  # the run took a second so far, ten times the budget's whole allowance
        for number in range(1, 6):
            runner.offer("scale", f"r{number}", {"x": x}, 1, {"y": x}, primary, [shadow])
        assert runner.pending() == 0  # none queued to be dropped later
        assert runner.status("scale")["2"]["dropped_over_budget"] == 5
    finally:
        release.set()
        runner.close()


def test_a_slow_on_shadow_callback_spends_none_of_the_shadow_budget(
    repository: Path, make_server: ServerFactory
) -> None:
    # The callback (here a log write to a slow sink) ran inside the timed run: a sub-millisecond shadow run
    # cost the budget 0.2 s, so with the default budget (20 ms a second) shadows paused for ten seconds.
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    logged: list[ShadowComparison] = []

    def slow_sink(comparison: ShadowComparison) -> None:
        time.sleep(0.6)
        logged.append(comparison)

    # 40 % of the time leaves room for shadow runs slowed by a busy machine (a first run took up to 0.2 s under
    # load, which overdrew a budget of 0.1), while the callback's 0.6 s, charged to it, would still leave the
    # bucket owing 0.2 s when the next request comes, and drop its copy
    server = make_server(repository, config=shadowed(), on_shadow=slow_sink, shadow_budget=0.4)
    for sent in (1, 2, 3):
        assert server.predict("scale", X).version == 1
        wait_until(lambda n=sent: len(logged) == n)
    assert stats(server, "scale")["dropped_over_budget"] == 0


@pytest.mark.parametrize("retire", ["unload", "delete and refresh"])
def test_copies_queued_for_a_shadow_version_that_is_unloaded_are_not_counted_as_its_errors(
    repository: Path, make_server: ServerFactory, retire: str
) -> None:
    import shutil

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    held = HeldShadowThread()
    server = make_server(repository, config=shadowed(), on_shadow=held, shadow_budget=1.0)
    try:
        server.predict("scale", X)
        assert held.stuck.wait(30)  # the shadow thread is busy: the next copies wait in the queue
        for _ in range(5):
            assert server.predict("scale", X).version == 1
        if retire == "unload":
            server.unload("scale", 2)
        else:
            shutil.rmtree(repository / "scale" / "2")
            # (the one problem: the rollout still names the shadow version that is gone)
            (problem,) = server.refresh()
            assert "its rollout names version(s) 2, not in the repository (1)" in problem
    finally:
        held.released.set()
    wait_until(lambda: server._shadow.pending() == 0 and server._shadow._running is None)
    # The five copies never ran: version 2 answered the one copy it got, and failed none.
    assert stats(server, "scale")["runs"] == 1 and stats(server, "scale")["errors"] == 0
    assert [comparison.error for comparison in held.comparisons] == [None]


def test_a_full_budget_drops_no_copy_over_budget_after_a_run_longer_than_a_second(
    repository: Path, make_server: ServerFactory
) -> None:
    # shadow_budget=1.0 runs every copy an idle session accepts. A run (here with its on_shadow callback,
    # which writes to a slow sink) longer than one second was owed as under a budget: the copies queued
    # meanwhile, and those offered until the time was repaid, were dropped over budget.
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    seen: list[ShadowComparison] = []
    started = threading.Event()

    def slow_sink(comparison: ShadowComparison) -> None:
        seen.append(comparison)
        if len(seen) == 1:
            started.set()
            time.sleep(1.5)

    server = make_server(repository, config=shadowed(), on_shadow=slow_sink, shadow_budget=1.0)
    server.predict("scale", X)
    assert started.wait(30)
    for _ in range(3):  # queued behind the long run, through it
        time.sleep(0.4)
        assert server.predict("scale", X).version == 1
    wait_until(lambda: stats(server, "scale")["runs"] + stats(server, "scale")["dropped_over_budget"] == 4)
    assert server.predict("scale", X).version == 1  # offered right after it
    wait_until(lambda: stats(server, "scale")["runs"] + stats(server, "scale")["dropped_over_budget"] == 5)
    assert stats(server, "scale")["dropped_over_budget"] == 0 and len(seen) == 5


def test_a_shadow_comparisons_latency_is_the_shadow_versions_not_the_comparisons(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Comparing a large answer (two float64 copies, a difference, a pass for non-finite values) takes longer
    # than a small model's run: 2048 rows of 512 features read as 15 ms of latency for a 0.6 ms run. The
    # comparison is made slow here so that the test does not depend on this machine's speed.
    from inprocserve import _shadow

    compare = _shadow.compare_outputs

    def slow_compare(primary: Any, shadow: Any) -> Any:
        time.sleep(0.5)
        return compare(primary, shadow)

    monkeypatch.setattr(_shadow, "compare_outputs", slow_compare)
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    assert server.predict("scale", X).version == 1
    wait_until(lambda: len(comparisons) == 1)
    # (under the comparison's 0.5 s with room for a run slowed by a loaded machine: a first run took 0.2 s)
    assert comparisons[0].max_abs_diff == 1.0 and comparisons[0].latency_s < 0.45


def test_the_queue_is_bounded_by_the_bytes_its_copies_hold(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    held = HeldShadowThread()
    rows = 2**18  # 4 MiB of inputs and 4 MiB of answer: 8 MiB a copy, four of them fill the default 32 MiB
    config = shadowed(batching=BatchingConfig(max_request_rows=rows))
    server = make_server(repository, config=config, on_shadow=held, shadow_budget=1.0)  # no budget: only bytes
    try:
        server.predict("scale", np.ones((1, 4), np.float32))
        assert held.stuck.wait(30)
        for _ in range(10):
            assert server.predict("scale", np.ones((rows, 4), np.float32)).version == 1
        assert stats(server, "scale")["dropped_queue_full"] == 6  # well under the 256 copies the count allows
    finally:
        held.released.set()
    wait_until(lambda: stats(server, "scale")["runs"] == 5)


def test_a_requests_copy_counts_once_against_the_queues_bytes_however_many_versions_shadow_it(
    repository: Path, make_server: ServerFactory
) -> None:
    # Two shadow versions share one copy of each request. It was counted once per version, so the queue
    # refused copies with half of its 32 MiB held (and gave a request's copy to one version, not the other).
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    held = HeldShadowThread()
    rows = 2**18  # 4 MiB of inputs and 4 MiB of answer: 8 MiB a copy
    config = ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2, 3))),
        version_policy=VersionPolicy.all(),
        batching=BatchingConfig(max_request_rows=rows),
    )
    server = make_server(repository, config=config, on_shadow=held, shadow_budget=1.0)  # no budget: only bytes
    try:
        server.predict("scale", X)
        assert held.stuck.wait(30)
        for _ in range(10):
            assert server.predict("scale", np.ones((rows, 4), np.float32)).version == 1
        shadow = server.status()["models"]["scale"]["shadow"]
        # three copies (24 MiB) and the first request's wait; a fourth would pass 32 MiB
        assert {version: shadow[version]["dropped_queue_full"] for version in ("2", "3")} == {"2": 7, "3": 7}
    finally:
        held.released.set()
    # (four runs of 8 MiB copies per version: bounded at 30 s, not the usual 10, for a host loaded by other work)
    runs = lambda: [server.status()["models"]["scale"]["shadow"][v]["runs"] for v in ("2", "3")]  # noqa: E731
    wait_until(lambda: runs() == [4, 4], timeout_s=30)


def test_a_request_too_large_to_copy_cheaply_is_not_shadowed_and_says_so(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rows = 2**18 + 1  # a little over 8 MiB of inputs and answer: more than a quarter of the default 32 MiB
    config = shadowed(batching=BatchingConfig(max_request_rows=rows))
    server = make_server(repository, config=config, shadow_budget=1.0)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        for _ in range(3):
            assert server.predict("scale", np.ones((rows, 4), np.float32)).version == 1
    shadow = stats(server, "scale")
    assert shadow["dropped_too_large"] == 3 and shadow["dropped_queue_full"] == 0  # the queue was empty
    assert caplog.text.count("such requests are never shadowed") == 1


def test_the_byte_bound_is_the_server_s_to_set(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    rows = 2**18 + 1  # a little over 8 MiB a copy: too large under the default bound, not under 64 MiB
    config = shadowed(batching=BatchingConfig(max_request_rows=rows))
    server = make_server(repository, config=config, shadow_budget=1.0, shadow_queue_bytes=64 * 2**20)
    assert server.predict("scale", np.ones((rows, 4), np.float32)).version == 1
    wait_until(lambda: stats(server, "scale").get("runs") == 1)
    assert stats(server, "scale")["dropped_too_large"] == 0


@pytest.mark.parametrize(
    ("argument", "value", "message"),
    [
        ("shadow_queue", 0, "shadow_queue must be >= 1"),
        ("shadow_queue", 2.5, "shadow_queue must be >= 1"),
        ("shadow_queue_bytes", "32MiB", "shadow_queue_bytes must be >= 1"),
        ("shadow_budget", "0.5", r"shadow_budget must be a share of time in \(0, 1\]"),
        ("shadow_budget", math.nan, r"shadow_budget must be a share of time in \(0, 1\]"),
        ("control_interval_s", "1", "control_interval_s must be > 0"),
        ("poll_interval_s", math.nan, "poll_interval_s must be > 0"),
        ("flag_timeout_s", "0.05", "flag_timeout_s must be > 0"),
        # past a day (or a minute for a flag decision), a background thread's or a request's wait overflowed
        ("control_interval_s", math.inf, r"control_interval_s must be > 0 and <= 86400 \(seconds, a day\)"),
        ("poll_interval_s", 1e308, "poll_interval_s must be > 0 and <= 86400"),
        ("flag_timeout_s", math.inf, r"flag_timeout_s must be > 0 and <= 60 \(seconds\)"),
    ],
)
def test_server_arguments_of_the_wrong_kind_are_configuration_errors(
    repository: Path, argument: str, value: object, message: str
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    extra: dict[str, Any] = {"flags": inprocserve.InMemoryFlags()} if argument == "flag_timeout_s" else {}
    with pytest.raises(inprocserve.ConfigurationError, match=message):
        inprocserve.Server(repository, **{argument: value}, **extra)


# -- one run never takes more than the budget holds ----------------------------------------------------------


def test_a_runaway_shadow_run_is_stopped_and_a_long_one_is_not(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from inprocserve import _shadow

    save_model(build_busy_model(layers=1), repository, "busy", 1)
    save_model(build_busy_model(layers=16), repository, "busy", 2)  # 1000 rows take about 0.1 s or more
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=0.05)
    # A first run longer than the budget's whole allowance (50 ms) still runs: its time is owed, not cut.
    assert server.predict("busy", busy_inputs(1000)).version == 1
    wait_until(lambda: stats(server, "busy").get("runs", 0) == 1, timeout_s=30)
    # After a one-row run, a 1000-row one is no runaway: what a run may take scales with its rows.
    for rows, runs in ((1, 2), (1000, 3)):
        wait_until(lambda: _bucket_full(server), timeout_s=60)  # the time owed is repaid
        assert server.predict("busy", busy_inputs(rows)).version == 1
        wait_until(lambda: stats(server, "busy").get("runs", 0) == runs, timeout_s=30)  # noqa: B023
    assert len(comparisons) == 3 and stats(server, "busy").get("stopped_over_budget", 0) == 0
    # A run past the absolute limit is a runaway: stopped (it holds a session callers wait for), not compared.
    monkeypatch.setattr(_shadow, "MAX_RUN_S", 0.02)
    wait_until(lambda: _bucket_full(server), timeout_s=60)
    assert server.predict("busy", busy_inputs(1000)).version == 1
    wait_until(lambda: stats(server, "busy").get("stopped_over_budget", 0) == 1, timeout_s=30)
    assert stats(server, "busy")["runs"] == 3 and len(comparisons) == 3
    assert server.predict("busy", busy_inputs(1)).version == 1  # the shadow version's session is free again
    json.dumps(server.status(), allow_nan=False)


def test_a_shadow_run_that_failed_does_not_get_the_next_one_stopped_as_a_runaway(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Version 2 fails at once for an index outside its table (its Gather runs first); its ordinary runs take
    # 0.1 s or more. The failure's few milliseconds were taken for what its runs take, so the next ordinary
    # copy was stopped at a small fraction of its time, counted over budget and logged as a runaway.
    from inprocserve import _shadow

    # A runaway is 10 (not 4) times the last run here: on a loaded machine the third run took 4 times the
    # first (0.51 s), and was stopped as one. The failure's milliseconds still stop it well short of 0.1 s.
    monkeypatch.setattr(_shadow, "RUNAWAY_FACTOR", 10.0)
    save_model(build_busy_model(layers=1, table_rows=100), repository, "busy", 1)
    save_model(build_busy_model(layers=16, table_rows=10), repository, "busy", 2)
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=0.05)
    ended = ("runs", "stopped_over_budget")
    for index, runs in ((1, 1), (50, 2), (1, 3)):
        wait_until(lambda: _bucket_full(server), timeout_s=60)  # the time owed is repaid
        assert server.predict("busy", busy_inputs(1000, index=index)).version == 1
        wait_until(lambda n=runs: sum(stats(server, "busy").get(key, 0) for key in ended) == n, timeout_s=30)
    assert [c.error is None for c in comparisons] == [True, False, True]
    assert stats(server, "busy")["stopped_over_budget"] == 0


def _bucket_full(server: inprocserve.Server) -> bool:
    """Whether the shadow budget holds its whole allowance again."""
    runner = server._shadow
    with runner._cond:
        runner._refill()
        return bool(runner._tokens >= runner.budget * 0.999)


def test_a_promotion_whose_candidate_answers_nan_is_refused_with_a_json_report(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(float("nan")), repository, "scale", 2)
    config = ModelConfig(rollout=RolloutConfig(stable=1), version_policy=VersionPolicy.all())
    server = make_server(repository, config=config)
    for _ in range(4):
        server.predict("scale", np.ones((1, 4), np.float32))
    with pytest.raises(inprocserve.PromotionRefusedError) as refused:
        server.promote("scale", 2, max_abs_diff=0.5)
    assert refused.value.report["max_abs_diff"] == "inf"
    json.dumps(refused.value.report, allow_nan=False)  # strict JSON, as an admin endpoint answers it


def test_every_shadow_version_gets_runs_under_the_budget(repository: Path, make_server: ServerFactory) -> None:
    # Copies for a version not yet measured reserve little: reserving the whole bucket for the first of two
    # shadow versions left the second none, ever.
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    config = ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2, 3))),
        version_policy=VersionPolicy.all(),
    )
    server = make_server(repository, config=config)  # the default budget: 20 ms a second

    def runs() -> dict[str, int]:
        shadow = server.status()["models"]["scale"]["shadow"]
        return {version: shadow.get(version, {}).get("runs", 0) for version in ("2", "3")}

    def both_ran() -> bool:
        server.predict("scale", np.ones((1, 4), np.float32))
        return all(count > 0 for count in runs().values())

    wait_until(both_ran, timeout_s=20)


def test_a_copy_for_a_shadow_version_without_a_batcher_is_an_error_of_that_version() -> None:
    # A version whose load failed keeps no batcher; a copy that reaches it is that version's error,
    # counted and passed on like any other, never a crash of the shadow thread.
    from types import SimpleNamespace

    from inprocserve._shadow import ShadowRunner

    comparisons: list[ShadowComparison] = []
    runner = ShadowRunner(on_result=comparisons.append, budget=1.0)
    primary, failed = SimpleNamespace(version=1, batcher=None), SimpleNamespace(version=2, batcher=None)
    x = np.ones((2, 4), np.float32)
    try:
        runner.offer("scale", "r1", {"x": x}, 2, {"y": x}, primary, [failed])
        runner.offer("scale", "r2", {"x": x}, 2, {"y": x}, primary, [failed])
        wait_until(lambda: len(comparisons) == 2)
    finally:
        runner.close()
    assert [c.error for c in comparisons] == ["shadow version 2 is not loaded"] * 2
    assert runner.status("scale")["2"]["errors"] == 2


# -- answers of another form ----------------------------------------------------------------------------------


def build_labeller(labels: list[str]) -> Any:
    """A classifier answering a text label per row, as converted scikit-learn classifiers do: ``labels[argmax(x)]``."""
    from onnx import TensorProto, helper

    table = helper.make_tensor("labels", TensorProto.STRING, [len(labels)], [label.encode() for label in labels])
    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["x"], ["index"], axis=1, keepdims=0),
            helper.make_node("Gather", ["labels", "index"], ["label"], axis=0),
        ],
        "labeller",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(labels)])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"])],
        [table],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def build_columns_but(dropped: int, *, output: str = "y") -> Any:
    """``output = x[:, : n - dropped]`` for inputs of any width ``n``: no signature can tell the answer's width."""
    from onnx import TensorProto, helper, numpy_helper

    end = -dropped if dropped else np.iinfo(np.int64).max
    bounds = [
        numpy_helper.from_array(np.array([value], np.int64), name)
        for name, value in (("start", 0), ("end", end), ("axis", 1))
    ]
    graph = helper.make_graph(
        [helper.make_node("Slice", ["x", "start", "end", "axis"], [output])],
        "columns_but",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", "m"])],
        bounds,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def build_zipmap_classifier(*, label_offset: int = 0, sharpness: float = 1.0) -> Any:
    """A classifier as scikit-learn converters write it by default: an integer label per row and a ZipMap of
    class scores (a list of ``{class: score}`` dicts); ``label_offset`` shifts every label (a broken one),
    ``sharpness`` scales the logits of the scores (the same labels, other scores)."""
    from onnx import TensorProto, helper, numpy_helper

    offset = numpy_helper.from_array(np.array(label_offset, np.int64), "offset")
    sharp = numpy_helper.from_array(np.array(sharpness, np.float32), "sharpness")
    nodes = [
        helper.make_node("ArgMax", ["x"], ["index"], axis=1, keepdims=0),
        helper.make_node("Add", ["index", "offset"], ["label"]),
        helper.make_node("Mul", ["x", "sharpness"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["scores"], axis=1),
        helper.make_node(
            "ZipMap", ["scores"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2, 3]
        ),
    ]
    scores = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        nodes,
        "zipmap_classifier",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"]),
            helper.make_value_info("output_probability", scores),
        ],
        [offset, sharp],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_text_labels_are_compared_row_by_row_and_guard_promotion(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_labeller(["cat", "dog", "cow", "pig"]), repository, "labels", 1)
    save_model(build_labeller(["fraud"] * 4), repository, "labels", 2)  # a broken candidate: one label for all
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.eye(4, dtype=np.float32)
    for _ in range(3):
        assert list(server.predict("labels", rows)["label"]) == ["cat", "dog", "cow", "pig"]
    wait_until(lambda: len(comparisons) == 3)
    assert all(c.label_agreement == 0.0 and c.max_abs_diff is None and c.mismatch is None for c in comparisons)
    assert stats(server, "labels")["label_agreement"] == 0.0
    with pytest.raises(inprocserve.PromotionRefusedError, match=r"label agreement 0\.000 < 0\.99") as refused:
        server.promote("labels", 2, min_label_agreement=0.99)
    assert refused.value.report["label_agreement"] == 0.0
    # a bound nothing can be measured against refuses too: these answers hold no number
    with pytest.raises(inprocserve.PromotionRefusedError, match="max abs diff: no numeric output to compare"):
        server.promote("labels", 2, max_abs_diff=0.5)
    assert server.predict("labels", rows).version == 1


def test_agreement_is_the_share_of_rows_that_agree_whatever_the_size_of_each_request(
    repository: Path, make_server: ServerFactory
) -> None:
    # One-row requests that disagree beside nine-row ones that agree: 45 of 50 rows agree. A mean of each
    # request's share said 0.5, in status() and in promotion, whose bound is documented over the rows.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(-1.0), repository, "scale", 2)  # the argmax of a row moves unless its values tie
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    disagreeing, agreeing = np.array([[1, 0, 0, 0]], np.float32), np.ones((9, 4), np.float32)
    for request in range(10):
        server.predict("scale", disagreeing if request % 2 else agreeing)
        wait_until(lambda n=request + 1: len(comparisons) == n)
    assert sorted({c.label_agreement for c in comparisons}) == [0.0, 1.0]  # each request's own share
    assert stats(server, "scale")["label_agreement"] == pytest.approx(0.9)
    report = server.promote("scale", 2, min_label_agreement=0.85, min_samples=10)
    assert report.label_agreement == pytest.approx(0.9) and report.samples == 10


def test_a_shadow_answering_in_another_form_disagrees_and_is_never_promoted(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_columns_but(0), repository, "cut", 1)
    save_model(build_columns_but(0, output="z"), repository, "cut", 2)  # the same numbers, its output renamed
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    for _ in range(3):
        server.predict("cut", rows)
    wait_until(lambda: len(comparisons) == 3)
    assert all(c.mismatch == "output 'y' is missing" and c.error is None for c in comparisons)
    shadow = stats(server, "cut")
    assert shadow["mismatched"] == 3 and shadow["errors"] == 0
    assert sum("answers in another form" in record.getMessage() for record in caplog.records) == 1  # once
    with pytest.raises(inprocserve.PromotionRefusedError, match="output 'y' is gone"):
        server.promote("cut", 2)  # (its signature says so before any answer is compared)
    assert server.predict("cut", rows).version == 1


def test_answers_of_other_sizes_differ_by_infinity(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_columns_but(0), repository, "cut", 1)
    save_model(build_columns_but(1), repository, "cut", 2)  # one column short
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    for _ in range(3):
        assert server.predict("cut", rows)["y"].shape == (2, 4)
    wait_until(lambda: len(comparisons) == 3)
    assert all(c.max_abs_diff == math.inf and c.label_agreement == 0.0 and c.mismatch is None for c in comparisons)
    assert stats(server, "cut")["non_finite_diffs"] == 3
    with pytest.raises(inprocserve.PromotionRefusedError, match="max abs diff inf > 1"):
        server.promote("cut", 2, max_abs_diff=1.0)
    assert server.predict("cut", rows).version == 1


def test_a_converted_classifier_is_compared_on_its_labels_and_class_scores(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_zipmap_classifier(), repository, "clf", 1)
    save_model(build_zipmap_classifier(), repository, "clf", 2)  # the same classifier
    save_model(build_zipmap_classifier(label_offset=1), repository, "clf", 3)  # every label off by one
    config = ModelConfig(rollout=RolloutConfig(stable=1), version_policy=VersionPolicy.all())
    server = make_server(repository, config=config)
    for seed in range(4):
        server.predict("clf", np.random.default_rng(seed).normal(size=(8, 4)).astype(np.float32))
    with pytest.raises(inprocserve.PromotionRefusedError, match=r"label agreement 0\.500 < 0\.99") as refused:
        server.promote("clf", 3, max_abs_diff=0.05, min_label_agreement=0.99)  # labels all wrong, scores equal
    assert refused.value.report["mismatch"] is None
    report = server.promote("clf", 2, max_abs_diff=0.05, min_label_agreement=0.99)
    assert (report.max_abs_diff, report.label_agreement, report.reason) == (0.0, 1.0, "within bounds")


def build_doubler(*, input_name: str = "x", dtype: int = 1) -> Any:
    """``y = 2 * x`` over ``[batch, 4]``, with another input name or element type (1: float32, 11: float64)."""
    from onnx import helper, numpy_helper

    two = numpy_helper.from_array(np.array(2.0, np.float64 if dtype == 11 else np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", [input_name, "two"], ["y"])],
        "doubler",
        [helper.make_tensor_value_info(input_name, dtype, ["batch", 4])],
        [helper.make_tensor_value_info("y", dtype, ["batch", 4])],
        [two],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_a_shadow_version_gets_the_request_as_its_own_inputs_take_it(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_doubler(), repository, "double", 1)
    save_model(build_doubler(dtype=11), repository, "double", 2)  # re-exported in float64
    save_model(build_doubler(input_name="input"), repository, "double", 3)  # its one input renamed
    config = ModelConfig(
        rollout=RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2, 3))),
        version_policy=VersionPolicy.all(),
    )
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=config, on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.arange(8, dtype=np.float32).reshape(2, 4)
    for _ in range(2):
        server.predict("double", rows)
    wait_until(lambda: len(comparisons) == 4)
    assert all(c.error is None and c.max_abs_diff == 0.0 and c.mismatch is None for c in comparisons), comparisons
    assert {c.shadow_version for c in comparisons} == {2, 3}


def test_text_from_a_model_server_agrees_with_the_same_text_from_onnxruntime() -> None:
    # onnxruntime answers text as str; a remote version's BYTES arrive as bytes: the same labels agree
    from inprocserve._shadow import compare_outputs

    local = {"label": np.array(["cat", "dög", "cow"], dtype=object)}
    remote = {"label": np.array([b"cat", "dög".encode(), b"pig"], dtype=object)}
    assert compare_outputs(local, remote).label_agreement == pytest.approx(2 / 3)
    assert compare_outputs(remote, local).label_agreement == pytest.approx(2 / 3)


def test_a_shadow_compares_a_zipmaps_class_scores(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_zipmap_classifier(), repository, "clf", 1)
    save_model(build_zipmap_classifier(sharpness=3.0), repository, "clf", 2)  # the same labels, other scores
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.random.default_rng(5).normal(size=(8, 4)).astype(np.float32)
    server.predict("clf", rows)
    wait_until(lambda: len(comparisons) == 1)
    assert comparisons[0].label_agreement == 1.0 and comparisons[0].max_abs_diff is not None
    assert comparisons[0].max_abs_diff > 0.05


def build_named_zipmap(classes: list[str]) -> Any:
    """Class scores (the softmax of two logits) as a ZipMap keyed by ``classes``, as a converted scikit-learn
    classifier answers them."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Softmax", ["x"], ["scores"], axis=1),
        helper.make_node("ZipMap", ["scores"], ["probability"], domain="ai.onnx.ml", classlabels_strings=classes),
    ]
    scores = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    )
    graph = helper.make_graph(
        nodes,
        "named_zipmap",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_value_info("probability", scores)],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_a_zipmap_scoring_other_classes_is_another_form_not_a_match(
    repository: Path, make_server: ServerFactory
) -> None:
    # The same scores under another class name ("ok" for "legit") were compared column by column: a perfect
    # match, and promoted, while every caller reading answer["probability"][row]["legit"] would then fail.
    save_model(build_named_zipmap(["fraud", "legit"]), repository, "clf", 1)
    save_model(build_named_zipmap(["fraud", "ok"]), repository, "clf", 2)
    comparisons: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0)
    rows = np.array([[3, 0], [0, 3]], np.float32)
    for _ in range(3):
        assert server.predict("clf", rows)["probability"][0]["legit"] < 0.5
    wait_until(lambda: len(comparisons) == 3)
    assert (
        comparisons[0].mismatch == "output 'probability' scores the classes ['fraud', 'ok'] against ['fraud', 'legit']"
    )
    assert stats(server, "clf")["mismatched"] == 3
    with pytest.raises(inprocserve.PromotionRefusedError, match="scores the classes"):
        server.promote("clf", 2, max_abs_diff=0.01, min_samples=3)
    assert server.predict("clf", rows).version == 1


def test_a_zipmaps_class_scores_count_against_the_shadow_queues_bytes(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_zipmap_classifier(), repository, "clf", 1)
    save_model(build_zipmap_classifier(), repository, "clf", 2)
    comparisons: list[ShadowComparison] = []
    # a copy may take a quarter of the queue's bytes: 2,048 here. 64 rows copy 1,024 bytes of inputs, 512 of
    # labels and 64 x 4 class scores kept as float64 (2,048): too large. 16 rows (896 bytes) are copied.
    server = make_server(
        repository, config=shadowed(), on_shadow=comparisons.append, shadow_budget=1.0, shadow_queue_bytes=8192
    )
    rows = np.random.default_rng(6).normal(size=(64, 4)).astype(np.float32)
    server.predict("clf", rows)
    assert stats(server, "clf")["dropped_too_large"] == 1
    server.predict("clf", rows[:16])
    wait_until(lambda: len(comparisons) == 1)
    assert stats(server, "clf")["dropped_too_large"] == 1


def test_a_label_one_class_off_is_a_disagreeing_row_not_a_difference() -> None:
    from inprocserve._shadow import compare_outputs

    labels = np.array([0, 1, 2, 3], np.int64)
    comparison = compare_outputs({"label": labels}, {"label": np.array([0, 1, 2, 0], np.int64)})
    assert (comparison.max_abs_diff, comparison.label_agreement) == (None, 0.75)


def test_int_labels_against_float_labels_of_the_same_classes_agree() -> None:
    # A candidate answering its labels as float32 (1.0) where the stable answered int64 (1): compared as labels,
    # by value, the same class agrees and another disagrees (their difference is kept too: integers against
    # floats give both measures, whatever their values).
    from inprocserve._shadow import compare_outputs

    labels = np.array([0, 1, 2, 3], np.int64)
    comparison = compare_outputs({"label": labels}, {"label": np.array([0.0, 1.0, 2.0, 0.0], np.float32)})
    assert (comparison.max_abs_diff, comparison.label_agreement, comparison.mismatch) == (3.0, 0.75, None)


def shadow_compared_once_with_a_wrong_version(
    repository: Path, make_server: ServerFactory
) -> tuple[inprocserve.Server, list[ShadowComparison], Path]:
    """Version 2 (x * 2) shadowing version 1 (x * 1), compared once (a difference of 1.0): the server, the
    comparisons seen, and version 2's file, to replace."""
    save_model(build_scale_model(1.0), repository, "scale", 1)
    path = save_model(build_scale_model(2.0), repository, "scale", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    server.predict("scale", X)
    wait_until(lambda: len(seen) == 1)
    return server, seen, path


def test_a_shadow_version_replaced_on_disk_starts_its_figures_afresh(
    repository: Path, make_server: ServerFactory
) -> None:
    # Version 2 (x * 2) disagrees with version 1 (x * 1); its file is fixed (x * 1) and the server refreshed.
    # Its status mixed the two files' comparisons: the fixed version read as differing by 1.0 for the
    # worker's life, and its runs, errors and agreement counted the replaced file's.
    server, seen, path = shadow_compared_once_with_a_wrong_version(repository, make_server)
    assert stats(server, "scale")["max_abs_diff"] == 1.0
    past_the_tick(path)
    save_model(build_scale_model(1.0), repository, "scale", 2)
    assert server.refresh() == []
    for count in range(2, 5):
        server.predict("scale", X)
        wait_until(lambda count=count: len(seen) == count)
    assert [comparison.max_abs_diff for comparison in seen] == [1.0, 0.0, 0.0, 0.0]
    figures = stats(server, "scale")
    assert (figures["runs"], figures["max_abs_diff"], figures["label_agreement"]) == (3, 0.0, 1.0)
    assert figures["by_primary"]["1"]["runs"] == 3 and figures["by_primary"]["1"]["max_abs_diff"] == 0.0


class SteppedBackClock:
    """The ``time`` module, but for a wall clock stepped back an hour (an NTP correction, a VM restored)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def time(self) -> float:
        return time.time() - 3600.0


def test_a_shadow_version_replaced_after_the_wall_clock_stepped_back_starts_its_figures_afresh(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A reload is told from a stale copy by comparing load times, which are time.time(): the wall clock
    # stepped back between the two loads, the fixed file's copies were taken for the replaced one's, and its
    # figures kept the replaced file's difference of 1.0.
    from inprocserve import _model

    server, seen, path = shadow_compared_once_with_a_wrong_version(repository, make_server)
    monkeypatch.setattr(_model, "time", SteppedBackClock())
    past_the_tick(path)
    save_model(build_scale_model(1.0), repository, "scale", 2)
    assert server.refresh() == []
    server.predict("scale", X)
    wait_until(lambda: len(seen) == 2)
    assert seen[1].max_abs_diff == 0.0
    figures = stats(server, "scale")
    assert (figures["runs"], figures["max_abs_diff"]) == (1, 0.0)


def build_flags_model(threshold: float) -> Any:
    """A multi-label model: ``flags = x > threshold``, bool ``[batch, 4]`` (one flag per label)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Greater", ["x", "threshold"], ["flags"])],
        "flags",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("flags", TensorProto.BOOL, ["batch", 4])],
        [numpy_helper.from_array(np.array(threshold, np.float32), "threshold")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def test_multi_label_flags_are_compared_row_by_row_not_by_their_argmax(
    repository: Path, make_server: ServerFactory
) -> None:
    # A multi-label classifier answers one bool flag per label. Its candidate turns the second label off for
    # this row: the argmax of [T, T, F, F] and [T, F, F, F] is the same, so the row read as agreeing (label
    # agreement 1.0, result "agree") and the flag that changed as a "difference of 1.0".
    save_model(build_flags_model(0.0), repository, "scale", 1)
    save_model(build_flags_model(0.5), repository, "scale", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    rows = np.array([[1.0, 0.2, -1.0, -1.0], [1.0, 1.0, -1.0, -1.0]], np.float32)
    assert server.predict("scale", rows)["flags"].tolist() == [[True, True, False, False], [True, True, False, False]]
    wait_until(lambda: len(seen) == 1)
    assert (seen[0].max_abs_diff, seen[0].label_agreement, seen[0].mismatch) == (None, 0.5, None)


def build_top2_model(bias: list[float]) -> Any:
    """A recommender's top 2: ``ids``, int64 ``[batch, 2]``, the indices of the two largest of ``x + bias``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [
            helper.make_node("Add", ["x", "bias"], ["scores"]),
            helper.make_node("TopK", ["scores", "k"], ["top", "ids"], axis=1),
        ],
        "top2",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 2])],
        [numpy_helper.from_array(np.array(bias, np.float32), "bias"), numpy_helper.from_array(np.array([2]), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def test_top_k_class_ids_are_compared_row_by_row_not_as_scores(repository: Path, make_server: ServerFactory) -> None:
    # Integer outputs of [rows, k > 1] were taken for class scores: the candidate's top 2 of [3, 1] against the
    # stable's [3, 0] read as a difference of 1.0 and, by the argmax of the ids (both the first), as agreeing.
    save_model(build_top2_model([0.0, 0.0, 0.0, 0.0]), repository, "scale", 1)
    save_model(build_top2_model([0.0, 0.5, 0.0, 0.0]), repository, "scale", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    rows = np.array([[0.6, 0.3, 0.0, 1.0], [0.0, -1.0, 0.5, 1.0]], np.float32)
    assert server.predict("scale", rows)["ids"].tolist() == [[3, 0], [3, 2]]
    wait_until(lambda: len(seen) == 1)
    assert (seen[0].max_abs_diff, seen[0].label_agreement, seen[0].mismatch) == (None, 0.5, None)


@pytest.mark.parametrize("raised", [SystemExit(3), KeyboardInterrupt()], ids=["SystemExit", "KeyboardInterrupt"])
def test_an_on_shadow_callback_raising_a_base_exception_keeps_the_shadow_thread_running(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, raised: BaseException
) -> None:
    # An application's sink that calls sys.exit() on a fatal write (or a gevent Timeout, a BaseException) ended
    # the shadow thread: every later copy waited in a queue nobody read, then was dropped as queue_full, and
    # nothing said the thread was gone.
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    logged: list[ShadowComparison] = []

    def fragile_sink(comparison: ShadowComparison) -> None:
        logged.append(comparison)
        if len(logged) == 1:
            raise raised

    server = make_server(repository, config=shadowed(), on_shadow=fragile_sink, shadow_budget=1.0)
    for sent in (1, 2, 3):
        assert server.predict("scale", X).version == 1
        wait_until(lambda n=sent: len(logged) == n)
    shadow = stats(server, "scale")
    assert shadow["runs"] == 3 and shadow["dropped_queue_full"] == 0
    assert shadow["on_shadow_errors"] == 1
    failures = [r for r in caplog.records if "on_shadow callback" in r.getMessage()]
    assert len(failures) == 1 and "fragile_sink" in failures[0].getMessage()
    assert failures[0].exc_info is not None and failures[0].exc_info[1] is raised


class ExitingOnShadowSpan(SpanProcessor):
    """An application's span processor that calls ``sys.exit()`` (a BaseException) when the first shadow span
    ends, as an exporter's processor giving up on a fatal error might."""

    def __init__(self) -> None:
        self.raised = 0

    def on_end(self, span: ReadableSpan) -> None:
        if span.name == "inprocserve.shadow" and not self.raised:
            self.raised += 1
            raise SystemExit(3)


def test_a_base_exception_raised_in_a_shadow_run_keeps_the_shadow_thread_running(
    otel: Otel, repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # Only an Exception of a run was caught: a SystemExit raised where the run reaches the application's code
    # (its span processors) ended the one shadow thread, and every later copy waited in a queue nobody read,
    # then was dropped as queue_full, silently.
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    processor = ExitingOnShadowSpan()
    otel.switchboard.extra = processor
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    assert server.predict("scale", X).version == 1
    wait_until(lambda: processor.raised == 1)
    for sent in (1, 2):
        assert server.predict("scale", X).version == 1
        wait_until(lambda n=sent: len(seen) >= n)
    assert stats(server, "scale")["dropped_queue_full"] == 0
    assert any("shadow run of model 'scale' failed unexpectedly" in r.getMessage() for r in caplog.records)
