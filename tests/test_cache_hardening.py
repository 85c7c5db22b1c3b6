"""The prediction cache and the sharing of identical requests after a review: an answer is only cached in,
and only shared from, the copy of a version that computed it (a hot reload serves two copies side by side);
answers that are not arrays are copied for each caller; a cached slice does not keep its whole batch alive;
the answers kept are bounded in bytes, not only in entries."""

from __future__ import annotations

import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve import BatchingConfig, CacheConfig, ModelConfig, RolloutConfig
from inprocserve.testing import build_scale_model, save_model

from .conftest import (
    BUSY_WIDTH,
    HeldSession,
    ServerFactory,
    SessionHolder,
    build_busy_model,
    busy_inputs,
    wait_until,
)

CACHED = ModelConfig(cache=CacheConfig(enabled=True))


def test_an_answer_of_the_copy_replaced_by_a_reload_is_not_cached_in_the_new_copy(
    repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    save_model(build_busy_model(BUSY_WIDTH, layers=16), repository, "busy", 1)
    server = make_server(repository, models={"busy": CACHED})
    old_copy = server._registry.routes["busy"].versions[1]
    blocker = hold_session(server, "busy")  # held until the reload swapped the copies, however long it takes
    x = busy_inputs(2, seed=42)
    queued = server.submit("busy", x)  # queued on the old copy, behind the blocker
    save_model(build_busy_model(BUSY_WIDTH, layers=15), repository, "busy", 1)  # version 1 rewritten
    reload = threading.Thread(target=server.refresh)
    reload.start()
    wait_until(lambda: server._registry.routes["busy"].versions[1] is not old_copy, timeout_s=60)
    assert not queued.done(), "the old copy answered before the reload swapped the copies"
    blocker.release()
    old_answer = queued.result(60)["y"]  # answered by the old copy after the swap
    reload.join(60)
    truth = ort.InferenceSession(str(repository / "busy" / "1" / "model.onnx")).run(["y"], x)[0]
    new_answer = server.predict("busy", x)["y"]
    np.testing.assert_allclose(new_answer, truth, rtol=1e-5, atol=1e-6)  # not the old copy's answer
    assert not np.allclose(old_answer, truth)  # (the two models do differ on these inputs)


def test_a_request_to_the_new_copy_never_follows_the_old_copy_s_identical_request(
    repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    save_model(build_busy_model(BUSY_WIDTH, layers=16), repository, "busy", 1)
    big_queue = ModelConfig(cache=CacheConfig(enabled=True), batching=BatchingConfig(max_queue_rows=40_000))
    server = make_server(repository, models={"busy": big_queue})
    old_copy = server._registry.routes["busy"].versions[1]
    blocker = hold_session(server, "busy")  # held until the reload finished and the new copy answered
    x = busy_inputs(2, seed=42)
    on_old_copy = server.submit("busy", x)  # queued behind the blocker: in flight on the old copy
    save_model(build_busy_model(BUSY_WIDTH, layers=15), repository, "busy", 1)  # version 1 rewritten
    reload = threading.Thread(target=server.refresh)
    reload.start()
    wait_until(lambda: server._registry.routes["busy"].versions[1] is not old_copy, timeout_s=60)
    assert not on_old_copy.done(), "the old copy answered before the test could send its identical request"
    on_new_copy = server.submit("busy", x)  # identical inputs, same version number, the new copy
    truth = ort.InferenceSession(str(repository / "busy" / "1" / "model.onnx")).run(["y"], x)[0]
    np.testing.assert_allclose(on_new_copy.result(60)["y"], truth, rtol=1e-5, atol=1e-6)
    blocker.release()
    assert not np.allclose(on_old_copy.result(60)["y"], truth)  # (the two models do differ on these inputs)
    reload.join(60)


def build_zipmap_classifier() -> object:
    """A classifier as skl2onnx exports them: probabilities as a tensor and as a ZipMap (a list of maps)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    probabilities = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 2])
    zipmap = helper.make_value_info(
        "output_probability",
        helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
        ),
    )
    graph = helper.make_graph(
        [
            helper.make_node("Softmax", ["x"], ["probs"], axis=1),
            helper.make_node(
                "ZipMap", ["probs"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
            ),
        ],
        "classifier",
        [x],
        [probabilities, zipmap],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_a_cached_answer_that_is_not_an_array_is_each_caller_s_own(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_zipmap_classifier(), repository, "classifier", 1)
    server = make_server(repository, models={"classifier": CACHED})
    x = np.array([[0.0, 1.0]], np.float32)
    first = server.predict("classifier", x)
    expected = [dict(entry) for entry in first["output_probability"]]
    first["output_probability"][0][1] = 0.0  # a caller post-processing its own answer in place
    first["output_probability"].append({"extra": 1})
    second = server.predict("classifier", x)  # a cache hit
    assert server.status()["models"]["classifier"]["versions"]["1"]["cache"]["hits"] == 1
    assert second["output_probability"] == expected


def test_a_cached_row_of_a_batch_does_not_keep_the_batch_alive(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0, features=256), repository, "wide", 1)
    server = make_server(repository, models={"wide": CACHED})
    futures = [server.submit("wide", np.full((1, 256), i, np.float32)) for i in range(64)]
    answers = [future.result(30)["y"] for future in futures]
    batcher = server._registry.routes["wide"].versions[1].batcher
    assert batcher is not None and batcher.batches_run < 64  # some requests were merged into one run
    cache = server._registry.routes["wide"].versions[1].cache
    assert cache is not None
    for i, answer in enumerate(answers):
        hit = server.predict("wide", np.full((1, 256), i, np.float32))["y"]
        np.testing.assert_array_equal(hit, answer)
        assert not isinstance(hit.base, np.ndarray) or hit.base.nbytes <= 2 * hit.nbytes  # not the batch's output


def test_distinct_large_requests_hold_at_most_max_bytes(repository: Path, make_server: ServerFactory) -> None:
    # Each request may carry max_request_rows rows (4,096): 10,000 entries of such answers of a model with 16
    # outputs a row held 2.5 GiB. With the default 64 MiB bound, 500 of them (125 MiB of answers) hold 64.
    save_model(build_scale_model(2.0, features=16), repository, "wide", 1)
    no_samples = RolloutConfig(capture_inputs=0)  # (promotion samples hold up to 32 MiB more of inputs)
    server = make_server(repository, models={"wide": ModelConfig(cache=CacheConfig(enabled=True), rollout=no_samples)})
    rng = np.random.default_rng(0)
    batches = [rng.standard_normal((4096, 16), dtype=np.float32) for _ in range(500)]
    server.predict("wide", batches[0])
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for x in batches[1:]:
            server.predict("wide", x)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 70 * 2**20  # (125 MiB without the bound)
    status = server.status()["models"]["wide"]["versions"]["1"]["cache"]
    assert 200 <= status["entries"] <= 256  # 256 KiB each
    np.testing.assert_array_equal(server.predict("wide", batches[-1])["y"], batches[-1] * 2)
    assert server.status()["models"]["wide"]["versions"]["1"]["cache"]["hits"] == 1  # the latest is kept


def test_status_shows_how_full_the_cache_is(repository: Path, make_server: ServerFactory) -> None:
    # max_bytes bounds the cache, but status showed only its entries: an operator could not see how near it was.
    save_model(build_scale_model(2.0, features=16), repository, "wide", 1)
    small_cache = ModelConfig(cache=CacheConfig(enabled=True, max_bytes=64 * 2**10, max_entries=100))
    server = make_server(repository, models={"wide": small_cache})

    def cache() -> dict[str, Any]:
        return server.status()["models"]["wide"]["versions"]["1"]["cache"]

    assert cache()["bytes"] == 0 and cache()["max_bytes"] == 64 * 2**10 and cache()["max_entries"] == 100
    server.predict("wide", np.ones((256, 16), np.float32))  # a 16 KiB answer
    held = cache()["bytes"]
    assert 16 * 2**10 <= held < 17 * 2**10
    for value in range(2, 6):  # four more: five would hold 80 KiB, over the bound
        server.predict("wide", np.full((256, 16), value, np.float32))
    assert cache()["entries"] == 3 and cache()["bytes"] == 3 * held <= cache()["max_bytes"]


def test_an_answer_larger_than_max_bytes_is_not_kept_and_evicts_nothing(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(2.0, features=16), repository, "wide", 1)
    small_cache = ModelConfig(cache=CacheConfig(enabled=True, max_bytes=64 * 2**10))
    server = make_server(repository, models={"wide": small_cache})
    one_row = np.ones((1, 16), np.float32)
    server.predict("wide", one_row)
    server.predict("wide", np.ones((2048, 16), np.float32) * 3)  # a 128 KiB answer: over the bound
    server.predict("wide", np.ones((2048, 16), np.float32) * 3)
    server.predict("wide", one_row)
    status = server.status()["models"]["wide"]["versions"]["1"]["cache"]
    assert status["entries"] == 1 and status["hits"] == 1 and status["misses"] == 3 and status["shared"] == 0


def test_max_bytes_is_a_count_of_bytes_from_one() -> None:
    assert CacheConfig().max_bytes == 64 * 2**20
    for bad in (0, -1, 1.5, True, "64", 2**41):
        with pytest.raises(inprocserve.ConfigurationError, match=r"cache\.max_bytes"):
            CacheConfig(max_bytes=bad)  # type: ignore[arg-type]


def test_an_answer_is_weighed_once_and_not_under_the_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Weighing 4,096 rows of a ZipMap's maps takes about a millisecond: the cache weighed each answer twice,
    # the second time with its lock held, so every hit of the version waited for it.
    from inprocserve import _cache

    cache = None
    weighed: list[bool] = []
    entry_bytes = _cache._entry_bytes

    def weigh(outputs: Any) -> int:
        assert cache is not None
        weighed.append(cache._lock.locked())
        return entry_bytes(outputs)

    monkeypatch.setattr(_cache, "_entry_bytes", weigh)
    cache = _cache.PredictionCache(CacheConfig(enabled=True))
    maps = [{0: 0.25, 1: 0.75} for _ in range(4096)]
    cache.store(b"k", {"label": np.zeros(4096, np.int64), "probabilities": maps})
    assert weighed == [False]
    got = cache.get(b"k")
    assert got is not None and got["probabilities"] == maps


def test_a_store_when_every_entry_expires_as_it_is_made_is_kept() -> None:
    # A full TTL cache expires entries when it counts them and again when it evicts one: every entry counted
    # could expire in between, and the eviction raised KeyError('TTLCache is empty') out of predict.
    from inprocserve._cache import PredictionCache

    now = [0.0]

    def clock() -> float:  # every read half a second later: the entry lives one read
        now[0] += 0.5
        return now[0]

    cache = PredictionCache(CacheConfig(enabled=True, max_entries=1, ttl_s=1.0), clock=clock)
    for index in range(5):
        cache.store(bytes([index]), {"y": np.full((1, 2), index, np.float32)})
    assert cache.status()["entries"] <= 1


@pytest.mark.parametrize("max_batch_size", [1, 64])
def test_followers_of_a_leader_that_gave_up_share_one_run(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder, max_batch_size: int
) -> None:
    # 20 callers of the same hot request follow a leader whose caller gives up (cancelled, or its deadline passes)
    # while it waits for the session:
    # each of them ran by itself, 20 runs one by one for a model that runs requests alone (max_batch_size 1),
    # or a merged run of 20 identical rows, where one run of one row answers them all.
    config = ModelConfig(cache=CacheConfig(enabled=True), batching=BatchingConfig(max_batch_size=max_batch_size))
    server = make_server(busy_repository, models={"busy": config})
    held = hold_session(server, rows=1)
    leader = server.submit("busy", busy_inputs(1, index=7))
    followers = [server.submit("busy", busy_inputs(1, index=7)) for _ in range(20)]
    assert leader.cancel()  # (its caller gives up, as at its deadline: the followers run without it)
    ran_before = len(hold_session.rows)
    held.release()
    answers = [future.result(30)["y"] for future in followers]
    for answer in answers[1:]:
        np.testing.assert_array_equal(answer, answers[0])
    assert hold_session.rows[ran_before:] == [1]  # one run of the hot request's row (20 runs, or one of 20 rows)


def test_identical_requests_follow_past_max_queue_rows_and_share_one_run(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    # max_queue_rows bounds the rows waiting for a run: identical requests in flight are not among them (they
    # wait for their leader's answer, adding no run and no wait to anyone), so 200 callers of one hot request
    # are all answered by one run where a queue of 4 rows refuses distinct requests. A follower holds its own
    # request (a few KiB with its inputs): nothing but its callers bounds them.
    config = ModelConfig(cache=CacheConfig(enabled=True), batching=BatchingConfig(max_queue_rows=4))
    server = make_server(busy_repository, models={"busy": config})
    held = hold_session(server, rows=1)
    hot = [server.submit("busy", busy_inputs(1, index=7)) for _ in range(200)]
    distinct = [server.submit("busy", busy_inputs(1, index=index, seed=index + 1)) for index in range(8)]
    ran_before = len(hold_session.rows)
    held.release()
    refused = [future for future in distinct if isinstance(future.exception(30), inprocserve.QueueFullError)]
    for future in hot:
        future.result(30)
    assert len(refused) >= 4  # (the hot request's leader and 3 distinct ones fill the queue's 4 rows)
    assert sum(hold_session.rows[ran_before:]) <= 4  # the hot request ran once (beside the distinct rows queued)
    cache = server.status()["models"]["busy"]["versions"]["1"]["cache"]
    assert cache["shared"] == 199
