"""The prediction cache: exact-input hits per version, shared in-flight runs, TTL, errors not cached."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import inprocserve
from inprocserve import CacheConfig, ModelConfig, VersionPolicy
from inprocserve.testing import ManualClock, build_gather_model, build_scale_model, save_model

from .conftest import HeldSession, ServerFactory, busy_inputs, run_threads, version_status


def cached(**kwargs: object) -> ModelConfig:
    return ModelConfig(cache=CacheConfig(enabled=True, **kwargs), version_policy=VersionPolicy.all())  # type: ignore[arg-type]


def cache_status(server: inprocserve.Server, model: str, version: int) -> dict:
    """The cache's counters (without how full it is: ``bytes``, ``max_bytes``, ``max_entries``)."""
    status = server.status()["models"][model]["versions"][str(version)]["cache"]
    return {key: status[key] for key in ("entries", "hits", "misses", "shared")}


def test_off_by_default(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    server.predict("scale", np.ones((1, 4), np.float32))
    assert version_status(server, "scale")["cache"] is None


def test_identical_inputs_hit_and_answers_are_read_only(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=cached())
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    first = server.predict("scale", x)
    second = server.predict("scale", x.copy())
    np.testing.assert_array_equal(first["y"], x * 2)
    assert second["y"] is first["y"]
    with pytest.raises(ValueError, match="read-only"):
        second["y"][0, 0] = 5
    other = server.predict("scale", x + 1)  # different bytes: a miss
    np.testing.assert_array_equal(other["y"], (x + 1) * 2)
    assert cache_status(server, "scale", 1) == {"entries": 2, "hits": 1, "misses": 2, "shared": 0}
    assert version_status(server, "scale")["rows_run"] == 4  # the hit never ran


def test_dtype_and_shape_are_part_of_the_key(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository, config=cached())
    a = server.predict("gather", {"index": np.array([1, 2])})
    b = server.predict("gather", {"index": np.array([[1], [2]]).reshape(2)})  # same values, same shape: a hit
    c = server.predict("gather", {"index": np.array([1])})
    assert b["rows"] is a["rows"] and c["rows"] is not a["rows"]


def test_views_of_one_buffer_are_keyed_by_their_own_values(scale_repository: Path, make_server: ServerFactory) -> None:
    # A column slice or strided view reaches the key as it is (not C-contiguous): keyed by the buffer behind
    # it, the slices of one table would share an answer; keyed by its memory order, a Fortran-ordered frame's
    # values would never hit.
    server = make_server(scale_repository, config=cached())
    table = np.arange(16, dtype=np.float32).reshape(2, 8)
    views = [table[:, :4], table[:, 4:], table[:, ::2], table[:, 1::2], table[::-1, :4]]
    for view in views:
        np.testing.assert_array_equal(server.predict("scale", view)["y"], view * 2)
    assert cache_status(server, "scale", 1) == {"entries": 5, "hits": 0, "misses": 5, "shared": 0}
    again = server.predict("scale", np.asfortranarray(table[:, 4:]))  # the same values in another memory order
    np.testing.assert_array_equal(again["y"], table[:, 4:] * 2)
    assert cache_status(server, "scale", 1)["hits"] == 1


def test_a_cached_answer_never_comes_from_another_version(repository: Path, make_server: ServerFactory) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository, config=cached())
    x = np.ones((1, 4), np.float32)
    assert server.predict("scale", x, version=1)["y"][0, 0] == 1.0
    assert server.predict("scale", x, version=2)["y"][0, 0] == 2.0
    assert server.predict("scale", x, version=1)["y"][0, 0] == 1.0


def test_identical_requests_in_flight_share_one_run(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=cached())
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=42)
    futures = [server.submit("busy", inputs) for _ in range(10)]
    blocker.release()
    answers = [future.result(timeout=60)["y"] for future in futures]
    assert all(answer is answers[0] for answer in answers)
    status = cache_status(server, "busy", 1)
    assert status["misses"] == 2 and status["shared"] == 9  # the blocker and one leader ran; 9 followed
    assert version_status(server, "busy")["rows_run"] == 3000 + 1


def test_threads_with_repeated_inputs(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=cached(max_entries=4))
    rows = [np.full((1, 4), i, np.float32) for i in range(8)]

    def call(index: int) -> None:
        for round_ in range(50):
            x = rows[(index + round_) % 8]
            np.testing.assert_array_equal(server.predict("scale", x)["y"], x * 2)

    assert run_threads(16, call) == []
    status = cache_status(server, "scale", 1)
    assert status["entries"] <= 4 and status["hits"] + status["shared"] > 0


def test_errors_are_not_cached(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(), repository, "gather", 1)
    server = make_server(repository, config=cached())
    for _ in range(2):
        with pytest.raises(inprocserve.InvalidInputError):
            server.predict("gather", {"index": np.array([99])})
    assert cache_status(server, "gather", 1)["misses"] == 2


def test_ttl_expires_entries(scale_repository: Path, make_server: ServerFactory) -> None:
    clock = ManualClock()
    server = make_server(scale_repository, config=cached(ttl_s=60), clock=clock)
    x = np.ones((1, 4), np.float32)
    server.predict("scale", x)
    clock.advance(30)
    server.predict("scale", x)
    assert cache_status(server, "scale", 1)["hits"] == 1
    clock.advance(31)  # 61 s after it was stored
    server.predict("scale", x)
    assert cache_status(server, "scale", 1)["misses"] == 2


def test_cache_config_validation() -> None:
    with pytest.raises(inprocserve.ConfigurationError):
        CacheConfig(max_entries=0)
    with pytest.raises(inprocserve.ConfigurationError):
        CacheConfig(ttl_s=0)


def test_batch_scoring_neither_reads_nor_fills_the_cache(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=cached(max_entries=3))
    hot = np.ones((1, 4), np.float32)
    server.predict("scale", hot)  # the online traffic's entry
    rows = np.arange(4000, dtype=np.float32).reshape(1000, 4)
    answers = list(server.predict_many("scale", rows, batch_rows=10))
    np.testing.assert_array_equal(np.concatenate([a["y"] for a in answers]), rows * 2)
    list(server.predict_many("scale", hot))  # not even an identical request reads it
    assert cache_status(server, "scale", 1) == {"entries": 1, "hits": 0, "misses": 1, "shared": 0}
    assert server.predict("scale", hot)["y"][0, 0] == 2.0
    assert cache_status(server, "scale", 1)["hits"] == 1  # the online entry survived the job


def test_followers_whose_leader_gave_up_keep_their_answer(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=cached())
    x = busy_inputs(1)
    blocker = hold_session(server)
    leader = server.submit("busy", x)  # queued behind the blocker
    followers = [server.submit("busy", x) for _ in range(3)]  # identical: they follow it
    assert cache_status(server, "busy", 1) == {"entries": 0, "hits": 0, "misses": 2, "shared": 3}
    leader.cancel()  # its caller gives up: the followers run by themselves
    blocker.release()
    answers = [follower.result(timeout=30)["y"] for follower in followers]
    assert all(np.array_equal(answer, answers[0]) for answer in answers)
    server.predict("busy", x)
    assert cache_status(server, "busy", 1)["hits"] == 1  # one of their answers was kept


def test_a_synchronous_follower_run_on_the_new_copy_keeps_its_answer_there(
    busy_repository: Path, make_server: ServerFactory, tmp_path: Path, hold_session: Callable[..., HeldSession]
) -> None:
    import threading

    from inprocserve import BatchingConfig

    from .conftest import BUSY_WIDTH, build_busy_model, wait_until
    from .test_inflight import reload_behind

    config = ModelConfig(
        cache=CacheConfig(enabled=True), batching=BatchingConfig(max_queue_rows=30_000, max_request_rows=30_000)
    )
    server = make_server(busy_repository, config=config)
    old = server._registry.loaded["busy"][1]
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=21)
    leader = server.submit("busy", inputs)  # gives up queued (cancelled): its follower runs by itself
    answers: list[object] = []
    follower = threading.Thread(target=lambda: answers.append(server.predict("busy", inputs)), daemon=True)
    follower.start()
    wait_until(lambda: cache_status(server, "busy", 1)["shared"] == 1)
    staged = save_model(build_busy_model(BUSY_WIDTH), tmp_path, "busy", 1)
    staged.replace(busy_repository / "busy" / "1" / "model.onnx")
    # a new copy of version 1 takes over; the follower runs there
    reload_behind(server, old, blocker, draining=leader.cancel)
    assert leader.cancelled()
    follower.join(30)
    assert answers and server._registry.loaded["busy"][1] is not old
    server.predict("busy", inputs)
    assert cache_status(server, "busy", 1)["hits"] == 1  # kept by the copy that answered, which serves now
