"""The shortest way of ``predict``: a lone request with no deadline, to a version with no cache, drift
monitoring, shadows or rollout, is run at once on its caller's thread without a ``Request`` object. It must
answer, count, record and fail exactly like the full way, and step aside whenever the full way is needed."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from opentelemetry.trace import SpanKind

import inprocserve
from inprocserve import _server
from inprocserve.testing import build_scale_model, save_model

from .conftest import (
    BUSY_WIDTH,
    HeldSession,
    ServerFactory,
    busy_inputs,
    run_in_forked_child,
    version_status,
    wait_until,
)
from .test_telemetry import Otel

# The process-wide SDK (providers can be set once per process), as a fixture:
from .test_telemetry import otel as otel


@pytest.fixture
def forbid_full_way(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to fail any request that takes the full way from then on (the full way builds a
    ``Request``): what still succeeds took the short one."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("this request took the full way")

    def forbid() -> None:
        monkeypatch.setattr(_server, "Request", refuse)

    return forbid


def first_request(server: inprocserve.Server, model: str, inputs: Any) -> None:
    """A process's first request to a version adopts its runners, the full way."""
    server.predict(model, inputs)


def test_a_lone_request_is_answered_without_the_queue(
    scale_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = make_server(scale_repository)
    first_request(server, "scale", np.ones((2, 4), np.float32))
    forbid_full_way()
    first = server.predict("scale", {"x": np.ones((3, 4), np.float32)})
    second = server.predict("scale", np.full((1, 4), 2.0, np.float32))  # a bare array for a one-input model
    np.testing.assert_allclose(first["y"], np.full((3, 4), 2.0))
    np.testing.assert_allclose(second["y"], np.full((1, 4), 4.0))
    assert (first.model, first.version, first.variant, first.reason) == ("scale", 1, "default", "latest ready version")
    assert first.request_id != second.request_id
    status = version_status(server, "scale")
    assert status["batches_run"] == 3 and status["rows_run"] == 6
    assert status["in_flight"] == 0 and status["queued_rows"] == 0
    assert status["latency_ms"]["count"] == 3 and status["latency_ms"]["errors"] == 0
    histogram = status["batch_size"]["histogram"]
    assert (histogram["1"], histogram["2"], histogram["3-4"]) == (1, 1, 1)


def test_the_short_way_keeps_recent_inputs_for_guarded_promotion(
    scale_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = make_server(scale_repository)
    first_request(server, "scale", np.full((1, 4), -1.0, np.float32))
    forbid_full_way()
    for value in range(3):
        server.predict("scale", np.full((1, 4), value, np.float32))
    recent = server._registry.routes["scale"].router.recent
    assert [float(inputs["x"][0, 0]) for inputs in recent] == [-1.0, 0.0, 1.0, 2.0]


def test_invalid_input_gets_the_full_ways_error(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    with pytest.raises(inprocserve.InvalidInputError, match=r"model 'scale' version 1: .*axis 1"):
        server.predict("scale", np.ones((1, 5), np.float32))
    assert version_status(server, "scale")["in_flight"] == 0


def test_a_failing_run_is_raised_counted_and_leaves_the_server_serving(
    busy_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = make_server(busy_repository)
    first_request(server, "busy", busy_inputs(1))
    forbid_full_way()
    with pytest.raises(inprocserve.InferenceError):
        server.predict("busy", busy_inputs(1, index=99))  # an index outside the table fails in onnxruntime
    answer = server.predict("busy", busy_inputs(2))
    assert answer["picked"].shape == (2, 2)
    status = version_status(server, "busy")
    assert status["latency_ms"]["errors"] == 1 and status["latency_ms"]["count"] == 2
    assert status["in_flight"] == 0 and status["batches_run"] == 2
    assert len(server._registry.routes["busy"].router.recent) == 3  # failed inputs are kept, as the full way does


def test_an_interrupted_caller_gives_the_runner_back(
    scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(scale_repository)
    server.predict("scale", np.ones((1, 4), np.float32))
    execution = server._registry.routes["scale"].default.batcher._execution  # type: ignore[union-attr]
    run = execution._run_batch

    def interrupted(*args: Any, **kwargs: Any) -> Any:  # Ctrl-C arriving while onnxruntime runs
        monkeypatch.setattr(execution, "_run_batch", run)
        raise KeyboardInterrupt

    monkeypatch.setattr(execution, "_run_batch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        server.predict("scale", np.ones((1, 4), np.float32))
    status = version_status(server, "scale")  # refused, as the full way refuses an interrupted request
    assert status["in_flight"] == 0 and status["latency_ms"]["errors"] == 0
    np.testing.assert_allclose(server.predict("scale", np.ones((1, 4), np.float32))["y"], np.full((1, 4), 2.0))


def test_a_busy_version_queues_the_request_with_the_span_it_opened(
    otel: Otel,
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    server = make_server(busy_repository)
    blocker = hold_session(server)
    blocker.let_go_once(lambda: version_status(server, "busy")["queued_rows"] == 1)  # the predict below queued
    signature = server._registry.routes["busy"].default.signature
    assert signature is not None
    validate = signature.validate
    validated: list[int] = []

    def counted(*args: Any, **kwargs: Any) -> Any:
        validated.append(1)
        return validate(*args, **kwargs)

    monkeypatch.setattr(signature, "validate", counted)
    with otel.tracer.start_as_current_span("GET /score", kind=SpanKind.SERVER) as web:
        answer = server.predict("busy", busy_inputs(1))  # the only runner is busy: it waits in the queue
    blocker.release()
    assert answer["picked"].shape == (1, 2)
    assert len(validated) == 1  # the full way continues from the short way's validated inputs
    mine = [
        span
        for span in otel.finished("inprocserve.predict")
        if span.parent is not None and span.parent.span_id == web.get_span_context().span_id
    ]
    assert len(mine) == 1  # one span, opened by the short way and closed by the full one
    attributes = dict(mine[0].attributes or {})
    assert attributes["inprocserve.outcome"] == "ok" and attributes["inprocserve.request.queue_wait_s"] > 0


def attributes_of_a_request_span(otel: Otel, server: inprocserve.Server, inputs: Any) -> dict[str, Any]:
    """Predict ``scale`` inside a web request's span; the attributes of the one request span it made."""
    otel.spans.clear()
    with otel.tracer.start_as_current_span("GET /score", kind=SpanKind.SERVER):
        server.predict("scale", inputs)
    (span,) = otel.finished("inprocserve.predict")
    return dict(span.attributes or {})


def test_a_sampled_request_on_the_short_way_has_the_full_ways_span_and_metric(
    otel: Otel, scale_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = make_server(scale_repository)
    first_request(server, "scale", np.ones((1, 4), np.float32))
    forbid_full_way()
    attributes = attributes_of_a_request_span(otel, server, np.ones((2, 4), np.float32))
    assert attributes["inprocserve.model.version"] == 1 and attributes["inprocserve.rollout.variant"] == "default"
    assert attributes["inprocserve.request.rows"] == 2 and attributes["inprocserve.batch.rows"] == 2
    assert attributes["inprocserve.batch.compute_s"] > 0 and attributes["inprocserve.request.queue_wait_s"] == 0
    assert attributes["inprocserve.outcome"] == "ok"
    points = [
        point
        for point in otel.metric_points("inprocserve.request.duration")
        if point.attributes.get("inprocserve.model.name") == "scale"
    ]
    assert sum(point.count for point in points) >= 1


def canary_server(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    """Model ``scale`` in versions 1 and 2 (v multiplies by v), in a 50 % canary of version 2; each version
    has adopted its runners (a process's first request to a version takes the full way)."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    canary = inprocserve.CanaryConfig(version=2, percent=50.0)
    rollout = inprocserve.RolloutConfig(strategy="canary", stable=1, canary=canary)
    server = make_server(repository, models={"scale": inprocserve.ModelConfig(rollout=rollout)})
    for version in (1, 2):
        server.predict("scale", np.ones((1, 4), np.float32), version=version)
    return server


def test_a_pinned_version_of_a_model_in_a_canary_takes_the_short_way(
    repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = canary_server(repository, make_server)
    forbid_full_way()
    answer = server.predict("scale", np.ones((1, 4), np.float32), version=2, context={"user_id": "u1"})
    np.testing.assert_allclose(answer["y"], np.full((1, 4), 2.0))
    assert (answer.version, answer.variant, answer.reason) == (2, "pinned", "version requested by caller")


def test_requests_routed_by_a_rollout_take_the_short_way_and_their_outcomes_count(
    repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = canary_server(repository, make_server)
    forbid_full_way()
    answers = [server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": f"u{i}"}) for i in range(40)]
    assert {(answer.variant, answer.version) for answer in answers} == {("stable", 1), ("canary", 2)}
    for answer in answers:
        np.testing.assert_allclose(answer["y"], np.full((1, 4), float(answer.version)))
        assert server.record_outcome(answer.request_id, 1.0) == answer.variant
    again = server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u0"})
    assert again.variant == answers[0].variant  # sticky by user, as the full way routes


def test_a_shadowed_request_on_the_short_way_is_copied_to_its_shadow(
    repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    comparisons: list[inprocserve.ShadowComparison] = []
    shadowed = inprocserve.ModelConfig(
        rollout=inprocserve.RolloutConfig(stable=1, shadow=inprocserve.ShadowConfig(versions=(2,))),
        version_policy=inprocserve.VersionPolicy.all(),
    )
    server = make_server(repository, config=shadowed, on_shadow=comparisons.append, shadow_budget=1.0)
    for version in (1, 2):
        server.predict("scale", np.ones((1, 4), np.float32), version=version)  # each version adopts its runners
    forbid_full_way()
    answer = server.predict("scale", np.ones((1, 4), np.float32))
    assert (answer.version, answer.variant) == (1, "stable")
    wait_until(lambda: len(comparisons) == 1)
    (comparison,) = comparisons
    assert (comparison.request_id, comparison.shadow_version, comparison.max_abs_diff) == (answer.request_id, 2, 1.0)


def test_the_short_way_feeds_drift_monitoring(
    scale_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    monitored = inprocserve.ModelConfig(drift=inprocserve.DriftConfig(capture_reference=20, window=20))
    server = make_server(scale_repository, config=monitored)
    first_request(server, "scale", np.zeros((1, 4), np.float32))
    forbid_full_way()
    rng = np.random.default_rng(8)
    for _ in range(19):  # the rest of the reference
        server.predict("scale", rng.normal(0, 1, (1, 4)).astype(np.float32))
    wait_until(lambda: version_status(server, "scale")["drift"]["reference_ready"])
    for _ in range(20):  # one window, shifted far
        server.predict("scale", rng.normal(5, 1, (1, 4)).astype(np.float32))
    wait_until(lambda: version_status(server, "scale")["drift"]["windows"] == 1)
    assert version_status(server, "scale")["drift"]["drifting"] is True


def test_a_deadline_on_the_short_way_stops_the_run(
    busy_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    whole = inprocserve.ModelConfig(  # whole requests in one run, one thread: no timing probe of a huge batch
        batching=inprocserve.BatchingConfig(max_batch_size=4096), pool=inprocserve.PoolConfig(intra_op_threads=1)
    )
    server = make_server(busy_repository, models={"busy": whole})
    first_request(server, "busy", busy_inputs(1))
    forbid_full_way()
    assert server.predict("busy", busy_inputs(1), timeout_s=60)["picked"].shape == (1, 2)
    with pytest.raises(inprocserve.DeadlineExceededError):
        server.predict("busy", busy_inputs(3000), timeout_s=0.005)  # a quarter of a second or more of work
    status = version_status(server, "busy")
    assert status["in_flight"] == 0 and status["latency_ms"]["errors"] == 1 and status["latency_ms"]["count"] == 2


def test_requests_that_share_runs_without_a_cache_take_the_full_way(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    sharing = inprocserve.ModelConfig(cache=inprocserve.CacheConfig(share_in_flight=True))
    server = make_server(repository, models={"scale": sharing})
    first_request(server, "scale", np.zeros((1, 4), np.float32))
    built: list[Any] = []
    full_way = _server.Request

    def counted(*args: Any, **kwargs: Any) -> Any:
        built.append(args)
        return full_way(*args, **kwargs)

    monkeypatch.setattr(_server, "Request", counted)
    answer = server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "u1"})
    assert answer["y"].shape == (1, 4)
    assert len(built) == 1
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)


def test_a_caller_interrupted_while_validating_is_recorded_as_refused(
    otel: Otel, scale_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(scale_repository)
    first_request(server, "scale", np.ones((1, 4), np.float32))
    signature = server._registry.routes["scale"].default.signature
    assert signature is not None

    def interrupted(*args: Any, **kwargs: Any) -> Any:  # Ctrl-C arriving while a large input is checked
        raise KeyboardInterrupt

    monkeypatch.setattr(signature, "validate", interrupted)
    otel.spans.clear()
    with pytest.raises(KeyboardInterrupt):
        server.predict("scale", np.ones((1, 4), np.float32))
    (span,) = otel.finished("inprocserve.predict")
    assert dict(span.attributes or {})["error.type"] == "KeyboardInterrupt"
    assert version_status(server, "scale")["in_flight"] == 0


# -- the version's cache on the short way ------------------------------------------------------------------

WAIT_S = 30  # every wait is bounded: a caller left behind fails the test instead of hanging it


def cached(**batching: Any) -> inprocserve.ModelConfig:
    return inprocserve.ModelConfig(
        cache=inprocserve.CacheConfig(enabled=True),
        batching=inprocserve.BatchingConfig(**batching),
        pool=inprocserve.PoolConfig(intra_op_threads=1),
    )


def cache_status(server: inprocserve.Server, model: str) -> dict[str, int]:
    """The cache's counters (without how full it is: ``bytes``, ``max_bytes``, ``max_entries``)."""
    status = version_status(server, model)["cache"]
    return {key: status[key] for key in ("entries", "hits", "misses", "shared")}


def hold(owner: Any, name: str, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the next call of ``owner.name`` until the returned event is set, then make it for real: what the
    test does meanwhile happens while that call is under way, whatever the machine's speed."""
    real = getattr(owner, name)
    go = threading.Event()

    def held(*args: Any, **kwargs: Any) -> Any:
        monkeypatch.setattr(owner, name, real)
        assert go.wait(WAIT_S), "the test never released the call"
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, held)
    return go


def gate_runs(server: inprocserve.Server, model: str, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Hold the next run of ``model`` (on the caller's thread, in onnxruntime's place) until the returned event
    is set (see :func:`hold`)."""
    execution = server._registry.routes[model].default.batcher._execution  # type: ignore[union-attr]
    return hold(execution, "_run_batch", monkeypatch)


def test_cache_hits_and_misses_take_the_short_way(
    scale_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server = make_server(scale_repository, config=cached())
    first_request(server, "scale", np.zeros((1, 4), np.float32))
    forbid_full_way()
    x = np.ones((1, 4), np.float32)
    miss = server.predict("scale", x)  # run on this thread, its answer kept
    hit = server.predict("scale", x.copy())
    np.testing.assert_allclose(hit["y"], np.full((1, 4), 2.0))
    assert hit["y"] is miss["y"] and not hit["y"].flags.writeable  # the cached arrays, shared read-only
    assert (hit.version, hit.variant) == (1, "default") and hit.request_id != miss.request_id
    assert cache_status(server, "scale") == {"entries": 2, "hits": 1, "misses": 2, "shared": 0}
    status = version_status(server, "scale")
    assert status["batches_run"] == 2 and status["latency_ms"]["count"] == 3 and status["in_flight"] == 0


def test_a_cache_hit_on_the_short_way_is_recorded_as_the_full_way_records_it(
    otel: Otel, scale_repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    def lookups() -> dict[str, int]:  # (the SDK is the process's: its counters hold earlier tests' lookups)
        return {
            point.attributes.get("inprocserve.cache.result"): point.value
            for point in otel.metric_points("inprocserve.cache.requests")
            if point.attributes.get("inprocserve.model.name") == "scale"
        }

    server = make_server(scale_repository, config=cached())
    first_request(server, "scale", np.ones((2, 4), np.float32))  # a miss, the full way
    forbid_full_way()
    before = lookups()
    attributes = attributes_of_a_request_span(otel, server, np.ones((2, 4), np.float32))
    assert attributes["inprocserve.model.version"] == 1 and attributes["inprocserve.rollout.variant"] == "default"
    assert attributes["inprocserve.request.rows"] == 2 and attributes["inprocserve.outcome"] == "ok"
    assert "inprocserve.batch.rows" not in attributes  # nothing ran
    after = lookups()
    assert after.get("hit", 0) - before.get("hit", 0) == 1 and after.get("miss") == before.get("miss")


def test_identical_requests_follow_a_miss_running_on_the_short_way(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(busy_repository, config=cached())
    first_request(server, "busy", busy_inputs(1, seed=1))
    inputs = busy_inputs(2, seed=2)
    go = gate_runs(server, "busy", monkeypatch)
    with ThreadPoolExecutor(1) as caller:
        leader = caller.submit(server.predict, "busy", inputs)
        wait_until(lambda: version_status(server, "busy")["in_flight"] == 1)  # its run has begun
        followers = [server.submit("busy", inputs) for _ in range(3)]
        wait_until(lambda: cache_status(server, "busy")["shared"] == 3)
        go.set()
        answers = [leader.result(timeout=WAIT_S), *(follower.result(timeout=WAIT_S) for follower in followers)]
    assert all(answer["y"] is answers[0]["y"] for answer in answers)  # one run's answer, for all four
    assert version_status(server, "busy")["rows_run"] == 1 + 2
    assert cache_status(server, "busy") == {"entries": 2, "hits": 0, "misses": 2, "shared": 3}


def test_followers_of_a_miss_failing_on_the_short_way_get_its_error(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(busy_repository, config=cached())
    first_request(server, "busy", busy_inputs(1, seed=1))
    poisoned = busy_inputs(1, index=99, seed=3)  # passes validation, fails inside onnxruntime
    go = gate_runs(server, "busy", monkeypatch)
    with ThreadPoolExecutor(1) as caller:
        leader = caller.submit(server.predict, "busy", poisoned)
        wait_until(lambda: version_status(server, "busy")["in_flight"] == 1)
        follower = server.submit("busy", poisoned)
        wait_until(lambda: cache_status(server, "busy")["shared"] == 1)
        go.set()
        errors = [leader.exception(timeout=WAIT_S), follower.exception(timeout=WAIT_S)]
    assert all(isinstance(error, inprocserve.InferenceError) for error in errors)
    assert str(errors[0]) == str(errors[1])
    assert cache_status(server, "busy")["entries"] == 1  # errors are not cached
    assert server.predict("busy", busy_inputs(1, seed=3))["y"].shape == (1, BUSY_WIDTH)  # the key was freed


def test_followers_of_a_miss_interrupted_on_the_short_way_run_by_themselves(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(busy_repository, config=cached())
    first_request(server, "busy", busy_inputs(1, seed=1))
    inputs = busy_inputs(1, seed=4)
    execution = server._registry.routes["busy"].default.batcher._execution  # type: ignore[union-attr]
    run = execution._run_batch
    go = threading.Event()

    def interrupted(*args: Any, **kwargs: Any) -> Any:  # Ctrl-C arriving while onnxruntime runs
        monkeypatch.setattr(execution, "_run_batch", run)
        assert go.wait(WAIT_S)
        raise KeyboardInterrupt

    monkeypatch.setattr(execution, "_run_batch", interrupted)
    with ThreadPoolExecutor(1) as caller:
        leader = caller.submit(server.predict, "busy", inputs)
        wait_until(lambda: version_status(server, "busy")["in_flight"] == 1)
        follower = server.submit("busy", inputs)
        wait_until(lambda: cache_status(server, "busy")["shared"] == 1)
        go.set()
        assert isinstance(leader.exception(timeout=WAIT_S), KeyboardInterrupt)
        assert follower.result(timeout=WAIT_S)["y"].shape == (1, BUSY_WIDTH)  # it ran by itself
    status = version_status(server, "busy")
    assert status["in_flight"] == 0 and status["rows_run"] == 1 + 1
    server.predict("busy", inputs)  # the follower that ran by itself kept its answer: a hit
    assert cache_status(server, "busy") == {"entries": 2, "hits": 1, "misses": 2, "shared": 1}
    assert version_status(server, "busy")["rows_run"] == 1 + 1


def test_a_miss_that_finds_the_version_busy_goes_the_full_way_counted_once(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=cached(max_batch_size=4096))
    first_request(server, "busy", busy_inputs(1, seed=1))
    blocker = hold_session(server)  # the only runner is taken: the short way leads, then hands over to the queue
    inputs = busy_inputs(1, seed=5)
    with ThreadPoolExecutor(1) as caller:
        answer = caller.submit(server.predict, "busy", inputs)
        wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)
        follower = server.submit("busy", inputs)  # follows the queued request: the short way let go of its key
        blocker.release()
        assert answer.result(timeout=WAIT_S)["y"] is follower.result(timeout=WAIT_S)["y"]
    assert cache_status(server, "busy") == {"entries": 3, "hits": 0, "misses": 3, "shared": 1}


def test_requests_that_follow_a_miss_whose_session_was_taken_meanwhile_still_share_its_run(
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    """A miss leads identical requests before it takes the session; if the session was taken meanwhile (the
    caller's thread paused between the two, as under load), the full way takes its lead over: what followed
    it still shares its one run."""
    server = make_server(busy_repository, config=cached(max_batch_size=4096))
    first_request(server, "busy", busy_inputs(1, seed=1))
    go = hold(server._registry.routes["busy"].default.batcher, "run_plain", monkeypatch)
    inputs = busy_inputs(1, seed=6)
    with ThreadPoolExecutor(1) as caller:
        leader = caller.submit(server.predict, "busy", inputs)  # leads, then pauses before taking the session
        wait_until(lambda: len(server._sharing) == 1)
        followers = [server.submit("busy", inputs) for _ in range(3)]
        wait_until(lambda: cache_status(server, "busy")["shared"] == 3)
        blocker = hold_session(server)  # the session is taken before the leader comes back
        go.set()
        wait_until(lambda: version_status(server, "busy")["queued_rows"] == 1)  # the leader went the full way
        blocker.release()
        answers = [leader.result(timeout=WAIT_S), *(follower.result(timeout=WAIT_S) for follower in followers)]
    assert all(answer["y"] is answers[0]["y"] for answer in answers)
    assert version_status(server, "busy")["rows_run"] == 1 + 3000 + 1  # one run for the four
    assert cache_status(server, "busy") == {"entries": 3, "hits": 0, "misses": 3, "shared": 3}


def test_a_miss_interrupted_on_its_way_to_the_queue_leaves_no_lead_behind(
    busy_repository: Path,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    hold_session: Callable[..., HeldSession],
) -> None:
    server = make_server(busy_repository, config=cached(max_batch_size=4096))
    first_request(server, "busy", busy_inputs(1, seed=1))
    blocker = hold_session(server)  # the session is taken: the miss leads, then goes the full way

    def interrupted(*args: Any, **kwargs: Any) -> Any:  # Ctrl-C arriving as the full way builds its request
        monkeypatch.undo()
        raise KeyboardInterrupt

    monkeypatch.setattr(_server, "Request", interrupted)
    inputs = busy_inputs(1, seed=7)
    with pytest.raises(KeyboardInterrupt):
        server.predict("busy", inputs)
    assert len(server._sharing) == 1  # the blocker's lead only: the interrupted one was ended
    blocker.release()
    assert server.submit("busy", inputs).result(timeout=WAIT_S)["y"].shape == (1, BUSY_WIDTH)


def test_a_hit_in_a_forked_worker_before_its_first_run_is_counted_once(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    """A worker forked after the cache filled (gunicorn --preload) has not adopted its runners yet; a hit
    needs none, so it is answered on the short way, counted once."""
    server = make_server(scale_repository, config=cached())
    x = np.ones((1, 4), np.float32)
    server.predict("scale", x)  # a miss, kept

    def in_the_worker() -> str:
        answer = server.predict("scale", x)
        np.testing.assert_allclose(answer["y"], np.full((1, 4), 2.0))
        return json.dumps(cache_status(server, "scale"))

    assert json.loads(run_in_forked_child(in_the_worker)) == {"entries": 1, "hits": 1, "misses": 1, "shared": 0}


class _Flags(inprocserve.InMemoryFlags):
    """A canary decided by flags, read with a pause (``delay_s``), or interrupted (``interrupt``); the wall
    time of its first read is kept."""

    def __init__(self, values: dict[str, Any]) -> None:
        super().__init__(values)
        self.delay_s = 0.0
        self.interrupt = False
        self.first_read_ns: int | None = None

    def _lookup(self, key: str) -> Any:
        if self.first_read_ns is None:
            self.first_read_ns = time.time_ns()
        if self.interrupt:
            raise KeyboardInterrupt  # Ctrl-C (or a signal handler's exception) while the flags are read
        time.sleep(self.delay_s)
        return super()._lookup(key)


def flag_canary(repository: Path, make_server: ServerFactory) -> tuple[inprocserve.Server, _Flags]:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    flags = _Flags({"scale.strategy": "canary", "scale.canary.percent": 50.0, "scale.canary.version": 2})
    all_versions = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository, flags=flags, config=all_versions)
    for version in (1, 2):
        server.predict("scale", np.ones((1, 4), np.float32), version=version)  # each version adopts its runners
    return server, flags


def test_the_short_ways_span_covers_the_rollout_decision(
    otel: Otel, repository: Path, make_server: ServerFactory, forbid_full_way: Callable[[], None]
) -> None:
    server, flags = flag_canary(repository, make_server)
    forbid_full_way()
    flags.delay_s, flags.first_read_ns = 0.002, None
    otel.spans.clear()
    server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "a"})
    (span,) = otel.finished("inprocserve.predict")
    assert flags.first_read_ns is not None and span.start_time is not None
    assert span.start_time <= flags.first_read_ns  # it began before the flags were read, as the full way's


def test_a_caller_interrupted_while_the_rollout_decides_is_recorded_as_refused(
    otel: Otel, repository: Path, make_server: ServerFactory
) -> None:
    server, flags = flag_canary(repository, make_server)
    otel.spans.clear()
    flags.interrupt = True
    with pytest.raises(KeyboardInterrupt):
        server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": "a"})
    flags.interrupt = False
    spans = otel.finished("inprocserve.predict")
    assert [dict(span.attributes or {}).get("error.type") for span in spans] == ["KeyboardInterrupt"]
