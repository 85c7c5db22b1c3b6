"""``Server.predict_many``: batch scoring in order, in chunks, lazily, with progress and clean early stops."""

from __future__ import annotations

import gc
import io
import itertools
import math
import pickle
import threading
import time
import traceback
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve._scoring import ProgressBar, caller_may_run, plan_scoring, scoring_run_rows
from inprocserve.testing import (
    ManualClock,
    build_add_model,
    build_gather_model,
    build_mlp_model,
    build_sum_model,
    save_model,
)
from tests.conftest import HeldSession, ServerFactory, busy_inputs, occupy, version_status, wait_until
from tests.test_cache_hardening import build_zipmap_classifier


def _config(**batching: Any) -> inprocserve.ModelConfig:
    return inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(**batching))


def _rows(x: int, features: int = 4) -> np.ndarray:
    return np.arange(x * features, dtype=np.float32).reshape(x, features)


def test_whole_array_is_cut_at_max_batch_size_and_answered_in_order(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=8))
    x = _rows(30)
    answers = list(server.predict_many("scale", x))
    assert [len(answer["y"]) for answer in answers] == [8, 8, 8, 6]
    np.testing.assert_array_equal(np.concatenate([answer["y"] for answer in answers]), x * 2)
    assert all(answer.model == "scale" and answer.version == 1 for answer in answers)


def test_batch_rows_sets_the_chunk_and_may_not_exceed_a_request(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=8, max_request_rows=16))
    answers = list(server.predict_many("scale", _rows(12), batch_rows=5))
    assert [len(answer["y"]) for answer in answers] == [5, 5, 2]
    with pytest.raises(ValueError, match="batch_rows=17 is more than the 16 rows"):
        server.predict_many("scale", _rows(12), batch_rows=17)
    with pytest.raises(ValueError, match="batch_rows must be a positive int"):
        server.predict_many("scale", _rows(12), batch_rows=0)
    with pytest.raises(ValueError, match="max_in_flight must be a positive int"):
        server.predict_many("scale", _rows(12), max_in_flight=0)


def test_a_mapping_of_arrays_is_sliced_together(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_add_model(), repository, "add", 1)
    server = make_server(repository, config=_config(max_batch_size=4))
    a = _rows(10, 3)
    inputs = {"a": a, "b": a + 1, "n": np.arange(10, dtype=np.int64).reshape(10, 1)}
    answers = list(server.predict_many("add", inputs))
    assert [len(answer["total"]) for answer in answers] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([answer["total"] for answer in answers]), 2 * a + 1)
    np.testing.assert_array_equal(np.concatenate([answer["count"] for answer in answers]).ravel(), np.arange(10) * 2)
    with pytest.raises(inprocserve.InvalidInputError, match="same number of rows"):
        server.predict_many("add", {"a": a, "b": a[:9], "n": inputs["n"]})


def test_iterable_batches_get_one_answer_each_and_large_ones_are_split(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=4, max_request_rows=8))
    batches = [_rows(3), _rows(10) + 100, _rows(1) - 5]
    answers = list(server.predict_many("scale", iter(batches)))
    assert [len(answer["y"]) for answer in answers] == [3, 10, 1]
    for batch, answer in zip(batches, answers, strict=True):
        np.testing.assert_array_equal(answer["y"], batch * 2)
    # The ten-row batch went to the model in parts no larger than a request (8 + 2), joined back.
    histogram = version_status(server, "scale")["batch_size"]["histogram"]
    assert "9-16" not in histogram and histogram["5-8"] == 1  # no run of more than 8 rows, one of 5..8


def test_a_fast_model_is_scored_in_runs_larger_than_max_batch_size(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # Offline work may run larger batches than a web request: for a model this fast, up to SCORING_RUN_ROWS
    # rows per run, still answered chunk by chunk of max_batch_size rows.
    server = make_server(scale_repository, config=_config(max_batch_size=4))
    x = _rows(600)
    answers = list(server.predict_many("scale", x))
    assert [len(answer["y"]) for answer in answers] == [4] * 150
    np.testing.assert_array_equal(np.concatenate([answer["y"] for answer in answers]), x * 2)
    status = version_status(server, "scale")
    assert status["rows_run"] == 600
    assert status["batches_run"] == 3  # 256 + 256 + 88 rows, not 150 runs of 4
    # With a deadline per chunk, each chunk stays a request (and a run) of its own.
    list(server.predict_many("scale", _rows(12), timeout_s=30))
    assert version_status(server, "scale")["batches_run"] - status["batches_run"] == 3


def server_leaving_a_core_idle(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, **batching: Any
) -> inprocserve.Server:
    """The busy model on one session of one intra-op thread (batches of 8) on two usable cores, whatever this
    host has: a core is left for the iterating thread's own runs. (On a host of one CPU, as a CI runner pinned
    or quota'd to one, the iterating thread runs no request, and these tests were skipped there.)"""
    monkeypatch.setattr("inprocserve._scoring_plan.usable_cores", lambda: 2)
    limits = {"max_batch_size": 8, "max_request_rows": 3000, **batching}
    config = inprocserve.ModelConfig(
        pool=inprocserve.PoolConfig(intra_op_threads=1), batching=inprocserve.BatchingConfig(**limits)
    )
    return make_server(repository, config=config)


def test_the_iterating_thread_runs_requests_beside_a_busy_worker(
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: Callable[..., HeldSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One session with one intra-op thread leaves a core idle: the scoring thread runs requests on it too.
    server = server_leaving_a_core_idle(busy_repository, make_server, monkeypatch, max_queue_rows=8)
    blocker = hold_session(server)  # the only worker is held until this thread has run rows itself
    items = [busy_inputs(4, index=i % 10, seed=i) for i in range(12)]
    seen: list[tuple[bool, int]] = []

    def batches() -> Iterator[dict[str, np.ndarray]]:
        for item in items:
            seen.append((blocker.done(), version_status(server, "busy")["rows_run"]))
            if seen[-1][1] >= 4:
                blocker.let_go()
            yield item

    answers = list(server.predict_many("busy", batches()))
    # Rows were answered while the worker was still busy with the blocker: this thread ran them.
    assert any(not done and rows_run >= 4 for done, rows_run in seen), seen
    assert blocker.release()
    expected = [server.predict("busy", item) for item in items]
    for got, want in zip(answers, expected, strict=True):
        np.testing.assert_array_equal(got["picked"], want["picked"])
        np.testing.assert_allclose(got["y"], want["y"], rtol=1e-5)


@pytest.mark.parametrize(("max_in_flight", "most_queued"), [(None, 512), (1, 256)])
def test_a_batch_larger_than_the_window_is_sent_as_room_frees(
    busy_repository: Path,
    make_server: ServerFactory,
    max_in_flight: int | None,
    most_queued: int,
    hold_session: Callable[..., HeldSession],
) -> None:
    # One batch of many requests' worth of rows (a queue consumer's big message) was queued in all its parts at
    # once, past the window and max_in_flight, up to max_queue_rows, so other callers got QueueFullError. Each
    # part now takes its own place in the window. Requests are at most 256 rows here, so the window holds at
    # most two (one with max_in_flight=1), whatever the machine measures.
    server = make_server(busy_repository, config=_config(max_batch_size=8))
    big = busy_inputs(1200, seed=5)
    expected = np.concatenate([answer["y"] for answer in server.predict_many("busy", big)])
    peak, stop = [0], threading.Event()

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], version_status(server, "busy")["queued_rows"])
            if peak[0]:
                blocker.let_go()  # (once seen queued behind it: then room frees part by part)
            time.sleep(0.001)

    watcher = threading.Thread(target=watch)
    blocker = hold_session(server)  # the parts queue behind it until the watcher saw them queued
    watcher.start()
    try:
        (answer,) = server.predict_many("busy", iter([big]), max_in_flight=max_in_flight)
    finally:
        stop.set()
        watcher.join()
    assert blocker.done()
    assert 0 < peak[0] <= most_queued
    np.testing.assert_allclose(answer["y"], expected, rtol=1e-5)


def test_the_iterating_thread_runs_a_large_batch_part_by_part(
    busy_repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The iterating thread ran every part of a large batch itself in one go (2000 rows here) while the answer
    # ahead of it waited; its runs are now held to the window's rows, part by part, like queued ones.
    server = server_leaving_a_core_idle(busy_repository, make_server, monkeypatch)
    small, big = busy_inputs(8, seed=1), busy_inputs(2000, seed=2)
    before = version_status(server, "busy")["rows_run"]
    blocker = occupy(server)  # the small batch queues behind it; the large one is left to the iterating thread
    answers = server.predict_many("busy", [small, big])
    first = next(answers)
    # Run so far: the blocker, the small batch, at most a window (512 rows) on this thread and a window queued.
    assert version_status(server, "busy")["rows_run"] - before <= 3000 + 8 + 512 + 512
    second = next(answers)
    assert blocker.done()
    np.testing.assert_allclose(first["y"], server.predict("busy", small)["y"], rtol=1e-5)
    expected = np.concatenate([answer["y"] for answer in server.predict_many("busy", big)])
    np.testing.assert_allclose(second["y"], expected, rtol=1e-5)


def test_equal_to_raw_onnxruntime(repository: Path, make_server: ServerFactory) -> None:
    path = save_model(build_mlp_model((32, 64, 5)), repository, "mlp", 1)
    server = make_server(repository, config=_config(max_batch_size=16))
    x = np.random.default_rng(1).standard_normal((203, 32)).astype(np.float32)
    got = np.concatenate([answer["y"] for answer in server.predict_many("mlp", x)])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(got, session.run(None, {"x": x})[0], rtol=1e-5, atol=1e-6)


def test_a_generator_may_reuse_one_buffer_for_every_batch(scale_repository: Path, make_server: ServerFactory) -> None:
    # a decoder filling one preallocated buffer per message: the batches still queued pointed at it
    server = make_server(scale_repository, config=_config(max_batch_size=8))
    buffer = np.empty((8, 4), np.float32)
    large = {"x": np.empty((20, 4), np.float32)}  # sent in parts of 8 rows

    def decoded(into: np.ndarray, batch: Any) -> Iterator[Any]:
        for message in range(100):
            into[:] = message
            yield batch

    class Tensor:  # a CPU tensor's shape: np.asarray of it is a view of its memory
        def __init__(self, array: np.ndarray) -> None:
            self.array, self.shape = array, array.shape

        def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
            return self.array.copy() if copy else self.array

    for batches in (
        decoded(buffer, buffer),
        decoded(large["x"], large),
        decoded(buffer, memoryview(buffer)),  # an array-like over the buffer was not copied
        decoded(buffer, {"x": memoryview(buffer)}),
        decoded(buffer, Tensor(buffer)),
    ):
        answers = [answer["y"] for answer in server.predict_many("scale", batches)]
        assert [float(answer.min()) for answer in answers] == [2.0 * message for message in range(100)]
        assert [float(answer.max()) for answer in answers] == [2.0 * message for message in range(100)]


def test_a_generator_is_read_lazily(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=4))
    pulled = 0

    def endless() -> Iterator[np.ndarray]:
        nonlocal pulled
        for index in itertools.count():
            pulled += 1
            yield np.full((2, 4), index, dtype=np.float32)

    answers = server.predict_many("scale", endless(), max_in_flight=3)
    assert pulled == 0  # nothing is read before the first answer is asked for
    first = [next(answers) for _ in range(5)]
    assert [float(answer["y"][0, 0]) for answer in first] == [0, 2, 4, 6, 8]
    assert pulled <= 5 + 3 + 1  # the answers taken, the window, and one batch waiting for room
    answers.close()


def test_closing_early_cancels_the_queued_chunks(
    busy_repository: Path, make_server: ServerFactory, hold_session: Callable[..., HeldSession]
) -> None:
    server = make_server(busy_repository, config=_config(max_batch_size=64))
    blocker: list[HeldSession] = []

    def batches() -> Iterator[dict[str, np.ndarray]]:
        yield busy_inputs(10)
        # Before the next batch is read, hold the only session: what follows can only queue.
        blocker.append(hold_session(server))
        for seed in range(1, 10):
            yield busy_inputs(10, seed=seed)

    before = version_status(server, "busy")["rows_run"]
    answers = server.predict_many("busy", batches(), max_in_flight=4)
    assert len(next(answers)["y"]) == 10
    assert not blocker[0].done()
    answers.close()
    blocker[0].release()
    wait_until(lambda: version_status(server, "busy")["in_flight"] == 0)
    # The first batch and the blocker ran; the batches queued behind the blocker were dropped.
    assert version_status(server, "busy")["rows_run"] - before == 10 + 3000


def test_an_exception_in_the_consumer_stops_the_job(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=2))
    with pytest.raises(RuntimeError, match="consumer gave up"):
        for _answer in server.predict_many("scale", _rows(10_000)):
            raise RuntimeError("consumer gave up")
    wait_until(lambda: version_status(server, "scale")["in_flight"] == 0)
    assert version_status(server, "scale")["rows_run"] < 10_000


def test_a_failing_chunk_raises_at_its_position(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=10), repository, "gather", 1)
    server = make_server(repository, config=_config(max_batch_size=4))
    index = np.arange(12, dtype=np.int64) % 10
    index[9] = 99  # fails inside onnxruntime, in the third chunk (rows 9..12)
    answers = server.predict_many("gather", index)
    assert len(next(answers)["rows"]) == 4
    assert len(next(answers)["rows"]) == 4
    with pytest.raises(inprocserve.InferenceError) as caught:
        next(answers)
    assert "input rows 9..12" in "".join(caught.value.__notes__)
    with pytest.raises(StopIteration):
        next(answers)
    assert isinstance(pickle.loads(pickle.dumps(caught.value)), inprocserve.InferenceError)


def test_a_failing_part_of_a_large_batch_raises_at_the_batch(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_gather_model(table_rows=10), repository, "gather", 1)
    server = make_server(repository, config=_config(max_batch_size=4, max_request_rows=64))
    big = np.arange(600, dtype=np.int64) % 10
    big[500] = 99  # fails inside onnxruntime, in a late part of the batch (requests of at most 64 rows)
    answers = server.predict_many("gather", iter([np.arange(2, dtype=np.int64), big, np.arange(2, dtype=np.int64)]))
    assert len(next(answers)["rows"]) == 2
    with pytest.raises(inprocserve.InferenceError) as caught:
        next(answers)
    assert "input rows 3..602" in "".join(caught.value.__notes__)
    with pytest.raises(StopIteration):
        next(answers)
    good = big.copy()
    good[500] = 0
    (answer,) = server.predict_many("gather", [good])
    whole = np.concatenate([chunk["rows"] for chunk in server.predict_many("gather", good)])
    np.testing.assert_array_equal(answer["rows"], whole)


def test_a_bad_batch_or_a_failing_iterable_raises_at_its_position(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository)
    answers = server.predict_many("scale", [_rows(2), np.zeros((2, 5), np.float32), _rows(2)])
    assert len(next(answers)["y"]) == 2
    with pytest.raises(inprocserve.InvalidInputError, match="expected size 4 on axis 1"):
        next(answers)

    def broken() -> Iterator[np.ndarray]:
        yield _rows(3)
        raise OSError("the queue went away")

    answers = server.predict_many("scale", broken())
    assert len(next(answers)["y"]) == 3
    with pytest.raises(OSError, match="the queue went away") as caught:
        next(answers)
    assert "the batch after input row 3 could not be read" in "".join(caught.value.__notes__)


def test_a_ragged_batch_raises_a_typed_error_at_its_position(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # Nested lists of unequal length make no array: numpy's bare ValueError escaped before the answers of the
    # batches ahead of it (a generator), or at the call (a list of batches), without the rows note.
    server = make_server(scale_repository)
    ragged = [[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]]

    def batches() -> Iterator[Any]:
        yield _rows(2)
        yield _rows(3)
        yield ragged
        yield _rows(2)

    seen: list[tuple[int, int | None]] = []
    for inputs in (batches(), [_rows(2), _rows(3), ragged, _rows(2)], [_rows(2), _rows(3), {"x": ragged}]):
        seen.clear()
        answers = server.predict_many("scale", inputs, progress=lambda done, total: seen.append((done, total)))
        assert [len(next(answers)["y"]) for _ in range(2)] == [2, 3]
        with pytest.raises(inprocserve.InvalidInputError, match="is ragged") as caught:
            next(answers)
        assert "the batch after input row 5 could not be read or checked" in "".join(caught.value.__notes__)
        assert seen == [(0, None), (2, None), (5, None)]  # a list with a ragged batch cannot be counted
        with pytest.raises(StopIteration):
            next(answers)
    # A ragged whole input fails at the call, typed, naming the input.
    with pytest.raises(inprocserve.InvalidInputError, match="input 'x' is ragged"):
        server.predict_many("scale", {"x": ragged})
    assert server.predict("scale", _rows(1))["y"].tolist() == [[0.0, 2.0, 4.0, 6.0]]


def test_a_batch_of_no_rows_is_answered_with_no_rows_in_its_place(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository)
    batches = [_rows(5), _rows(0), _rows(3)]  # a queue consumer's empty poll between two full ones
    seen: list[tuple[int, int | None]] = []
    answers = list(server.predict_many("scale", iter(batches), progress=lambda done, total: seen.append((done, total))))
    # one answer per batch, in order, so the answers still line up with the batches (zip)
    assert [answer["y"].shape for answer in answers] == [(5, 4), (0, 4), (3, 4)]
    assert answers[1]["y"].dtype == np.float32 and answers[1].version == 1
    assert seen[-1] == (8, None)
    # a whole input of no rows has no chunks, so no answers; predict itself still refuses a request of 0 rows
    assert list(server.predict_many("scale", _rows(0))) == []
    with pytest.raises(inprocserve.InvalidInputError, match="0 rows"):
        server.predict("scale", _rows(0))


def test_an_empty_list_from_a_consumer_that_polled_nothing_is_a_batch_of_no_rows(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository)
    polls = [[[1, 2, 3, 4]], [], [[5, 6, 7, 8], [1, 1, 1, 1]]]  # messages decoded into lists of rows
    answers = list(server.predict_many("scale", iter(polls)))
    assert [answer["y"].shape for answer in answers] == [(1, 4), (0, 4), (2, 4)]
    (answer,) = server.predict_many("scale", iter([{"x": []}]))  # a mapping of the input names to empty lists
    assert answer["y"].shape == (0, 4)


def build_string_label_model() -> object:
    """x [batch, 2] -> label [batch] (a string: "a" or "b", by the larger feature)."""
    graph = helper.make_graph(
        [
            helper.make_node("ArgMax", ["x"], ["index"], axis=1, keepdims=0),
            helper.make_node(
                "LabelEncoder", ["index"], ["label"], domain="ai.onnx.ml", keys_int64s=[0, 1], values_strings=["a", "b"]
            ),
        ],
        "labels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"])],
    )
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_a_batch_of_no_rows_is_answered_as_a_run_would_be_for_strings_and_zipmaps(
    repository: Path, make_server: ServerFactory
) -> None:
    # A scikit-learn classifier as skl2onnx exports it (a ZipMap of probabilities: a list of maps, one per row)
    # is run request by request, and its empty batch was refused as a request of 0 rows, ending the job; a
    # string output's empty answer was a str array beside the object arrays of the runs.
    save_model(build_zipmap_classifier(), repository, "classifier", 1)
    save_model(build_string_label_model(), repository, "labels", 1)
    server = make_server(repository)
    row, none = np.array([[0.0, 1.0]], np.float32), np.zeros((0, 2), np.float32)
    answers = list(server.predict_many("classifier", iter([row, none, [], row])))
    assert [len(answer["output_probability"]) for answer in answers] == [1, 0, 0, 1]
    assert answers[1]["output_probability"] == [] and answers[1]["probs"].shape == (0, 2)
    with pytest.raises(inprocserve.InvalidInputError, match="expected 2 dimensions"):  # still checked at its place
        list(server.predict_many("classifier", iter([np.zeros(0, np.float32)])))
    answers = list(server.predict_many("labels", iter([row, none])))
    assert [answer["label"].dtype for answer in answers] == [np.dtype(object)] * 2
    assert answers[1]["label"].shape == (0,)


def test_a_malformed_batch_of_no_rows_is_still_refused_at_its_place(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository)
    answers = server.predict_many("scale", iter([_rows(5), np.zeros((0, 5), np.float32), _rows(5)]))
    assert len(next(answers)["y"]) == 5
    with pytest.raises(inprocserve.InvalidInputError, match="expected size 4 on axis 1") as caught:
        next(answers)
    assert caught.value.__notes__ == ["predict_many: failed at the batch after input row 5, which has 0 rows"]


def test_a_consumer_that_waits_for_messages_gets_each_answer_without_waiting_for_later_messages(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    # A queue consumer's iterator blocks until the next message comes. The answers of messages already in
    # must not wait for it: they were held until the window filled (hundreds of messages) or the input ended.
    server = make_server(scale_repository)
    events: list[str] = []

    def consumer() -> Iterator[np.ndarray]:
        for message in range(6):
            if message:
                time.sleep(0.2)  # the broker has nothing for a while
            events.append(f"read {message}")
            yield _rows(1) + message

    for answer in server.predict_many("scale", consumer(), max_in_flight=1):
        events.append(f"answer {int(answer['y'][0, 0] / 2)}")
    # one in flight: each answer is handed over before the next message is waited for
    assert events == [f"{what} {message}" for message in range(6) for what in ("read", "answer")]

    events.clear()
    for answer in server.predict_many("scale", consumer()):  # the default window
        events.append(f"answer {int(answer['y'][0, 0] / 2)}")
    # an answer in by the time the next message came is handed over before the one after it is waited for
    for message in range(4):
        assert events.index(f"answer {message}") < events.index(f"read {message + 2}")


def test_bad_arguments_fail_at_the_call(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict_many("nope", _rows(2))
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict_many("scale", _rows(2), version=7)
    with pytest.raises(TypeError, match="inputs must be an array"):
        server.predict_many("scale", 42)
    with pytest.raises(TypeError, match="inputs must be an array"):
        server.predict_many("scale", "rows.csv")
    with pytest.raises(TypeError, match="progress must be"):
        server.predict_many("scale", _rows(2), progress="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s must be > 0"):
        server.predict_many("scale", _rows(2), timeout_s=0)
    with pytest.raises(TypeError, match="timeout_s must be a number"):
        server.predict_many("scale", _rows(2), timeout_s="30")  # type: ignore[arg-type]
    assert list(server.predict_many("scale", _rows(0))) == []


def test_no_deadline_spelled_as_for_predict(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository)
    for no_deadline in (math.inf, 1e12):  # what predict, submit and apredict take for "no deadline"
        answers = list(server.predict_many("scale", _rows(10), timeout_s=no_deadline))
        np.testing.assert_array_equal(np.concatenate([a["y"] for a in answers]), _rows(10) * 2)


def test_progress_callback_values(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=8))
    seen: list[tuple[int, int | None]] = []
    list(server.predict_many("scale", _rows(30), progress=lambda done, total: seen.append((done, total))))
    assert seen == [(0, 30), (8, 30), (16, 30), (24, 30), (30, 30)]
    seen.clear()
    list(server.predict_many("scale", iter([_rows(3), _rows(5)]), progress=lambda d, t: seen.append((d, t))))
    assert seen == [(0, None), (3, None), (8, None)]
    seen.clear()
    list(server.predict_many("scale", [_rows(3), _rows(5)], progress=lambda d, t: seen.append((d, t))))
    assert seen == [(0, 8), (3, 8), (8, 8)]


def test_a_progress_callback_that_raises_is_not_reported_as_failed_rows(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=8))

    def progress(done: int, total: int | None) -> None:
        if done >= 16:
            raise RuntimeError("the dashboard is down")

    answers = []
    with pytest.raises(RuntimeError, match="the dashboard is down") as raised:
        for answer in server.predict_many("scale", _rows(40), progress=progress):
            answers.append(answer["y"])
    # the caller's own error, raised as it is: no chunk failed, so no rows are named as failed
    assert not getattr(raised.value, "__notes__", None)
    np.testing.assert_array_equal(np.concatenate(answers), _rows(8) * 2)
    assert len(list(server.predict_many("scale", _rows(40)))) == 5  # and the server scores on


def test_progress_true_draws_nothing_when_stderr_is_not_a_terminal(
    scale_repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    server = make_server(scale_repository)
    assert len(list(server.predict_many("scale", _rows(100), progress=True))) == 2
    assert capsys.readouterr().err == ""


def test_progress_bar_redraws_at_most_every_interval() -> None:
    stream, clock = io.StringIO(), ManualClock()
    bar = ProgressBar(stream, interval_s=0.5, width=10, clock=clock)
    bar(0, 100)
    clock.advance(0.1)
    bar(10, 100)  # too soon: not drawn
    clock.advance(0.5)
    bar(50, 100)
    bar(100, 100)  # the last row is always drawn
    bar.close()
    frames = stream.getvalue().split("\r")[1:]
    full = "[" + "#" * 10
    assert [frame.split("] ")[0] for frame in frames] == ["[" + "-" * 10, "[#####-----", full, full]
    assert "50/100 rows" in frames[1] and "rows/s" in frames[1]
    assert stream.getvalue().endswith("\n")
    unknown = io.StringIO()
    bar = ProgressBar(unknown, clock=clock)
    bar(7, None)
    assert unknown.getvalue().startswith("\r7 rows, ")


def test_progress_bar_fits_the_terminal_and_covers_a_shorter_line() -> None:
    # a ten-million-row job at over a million rows/s on an 80-column terminal: the line wrapped, and every
    # redraw left a row behind
    stream, clock = io.StringIO(), ManualClock()
    bar = ProgressBar(stream, interval_s=0.0, clock=clock, columns=80)
    clock.advance(1.0)
    bar(1_100_000, 10_000_000)  # 1,100,000 rows/s
    clock.advance(9.0)
    bar(2_300_000, 10_000_000)  # 230,000 rows/s: a shorter line
    frames = stream.getvalue().split("\r")[1:]
    assert all(len(frame) < 80 for frame in frames), frames
    assert frames[0].startswith("[##-") and frames[0].endswith("10,000,000 rows, 1,100,000 rows/s")
    assert frames[1].rstrip().endswith("230,000 rows/s") and len(frames[1]) == len(frames[0])  # blanks over the rest
    narrow = io.StringIO()
    ProgressBar(narrow, clock=clock, columns=40)(2_300_000, 10_000_000)
    assert narrow.getvalue() == "\r23.0% 2,300,000/10,000,000 rows, - rows"  # no room for a bar: the numbers first


def test_no_queue_full_error_with_a_tiny_queue(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=2, max_queue_rows=3))
    x = _rows(101)
    got = np.concatenate([answer["y"] for answer in server.predict_many("scale", x, max_in_flight=50)])
    np.testing.assert_array_equal(got, x * 2)


def test_a_queue_filled_by_others_is_waited_out(busy_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(busy_repository, config=_config(max_batch_size=8, max_queue_rows=8, max_request_rows=3000))
    blocker = occupy(server)
    others = [server.submit("busy", busy_inputs(4, seed=seed)) for seed in (1, 2)]  # the queue is now full
    assert version_status(server, "busy")["queued_rows"] == 8
    answers = list(server.predict_many("busy", busy_inputs(20)))
    assert [len(answer["y"]) for answer in answers] == [8, 8, 4]
    assert blocker.done() and all(other.done() for other in others)


def test_the_window_never_holds_more_rows_than_the_queue() -> None:
    plan = plan_scoring(
        max_batch_size=64,
        request_row_limit=4096,
        max_queue_rows=100,
        sessions=4,
        batchable=True,
        batch_rows=None,
        max_in_flight=None,
    )
    assert (plan.chunk_rows, plan.window_rows) == (64, 100)
    plan = plan_scoring(
        max_batch_size=8,
        request_row_limit=4096,
        max_queue_rows=4096,
        sessions=2,
        batchable=True,
        batch_rows=None,
        max_in_flight=None,
    )
    assert (plan.chunk_rows, plan.window_rows) == (8, 32)  # two batches per session
    plan = plan_scoring(
        max_batch_size=8,
        request_row_limit=4096,
        max_queue_rows=4096,
        sessions=1,
        batchable=True,
        batch_rows=2,
        max_in_flight=None,
    )
    assert (plan.chunk_rows, plan.window_rows) == (2, 16)  # small chunks: enough of them to fill two batches
    plan = plan_scoring(
        max_batch_size=8,
        request_row_limit=4096,
        max_queue_rows=20,
        sessions=1,
        batchable=True,
        batch_rows=4,
        max_in_flight=50,
    )
    assert (plan.chunk_rows, plan.max_in_flight, plan.window_rows) == (4, 50, 20)
    plan = plan_scoring(
        max_batch_size=8,
        request_row_limit=4096,
        max_queue_rows=20,
        sessions=1,
        batchable=False,
        batch_rows=None,
        max_in_flight=None,
    )
    assert plan.chunk_rows is None  # no batch axis: inputs go whole


def test_nested_lists_are_accepted_where_arrays_are(scale_repository: Path, make_server: ServerFactory) -> None:
    server = make_server(scale_repository, config=_config(max_batch_size=4))
    x = _rows(10)
    whole = list(server.predict_many("scale", {"x": x.tolist()}))
    assert [len(answer["y"]) for answer in whole] == [4, 4, 2]
    (split,) = server.predict_many("scale", [x.tolist()])  # a list of batches: one batch of ten rows
    np.testing.assert_array_equal(split["y"], x * 2)


def test_scoring_runs_grow_only_for_models_fast_per_row() -> None:
    assert scoring_run_rows(max_batch_size=64, per_row_s=1e-5) == 256
    assert scoring_run_rows(max_batch_size=64, per_row_s=0.001) == 100  # a run stays under 0.1 s
    assert scoring_run_rows(max_batch_size=64, per_row_s=0.01) == 64  # never below max_batch_size
    assert scoring_run_rows(max_batch_size=512, per_row_s=1e-6) == 512
    assert scoring_run_rows(max_batch_size=8, per_row_s=None) == 8  # no measurement: the configured size
    assert scoring_run_rows(max_batch_size=8, per_row_s=0.0) == 256


def test_requests_hold_whole_chunks_within_every_limit() -> None:
    def plan(**overrides: Any) -> Any:
        args: dict[str, Any] = {
            "max_batch_size": 64,
            "request_row_limit": 4096,
            "max_queue_rows": 4096,
            "sessions": 1,
            "batchable": True,
            "batch_rows": None,
            "max_in_flight": None,
            "run_rows": 256,
        }
        args.update(overrides)
        return plan_scoring(**args)

    assert (plan().chunk_rows, plan().request_rows, plan().run_rows, plan().window_rows) == (64, 256, 256, 512)
    assert plan(batch_rows=100).request_rows == 200  # whole chunks only
    assert plan(batch_rows=300).request_rows is None  # a chunk larger than a run: one chunk per request
    assert plan(request_row_limit=128).request_rows == 128
    assert plan(max_queue_rows=100).request_rows is None
    assert plan(run_rows=None).request_rows is None
    assert plan(batchable=False).run_rows is None
    assert plan(batchable=False).request_rows is None  # no row per input row: sent whole
    # A ZipMap classifier: never merged, but its chunks are grouped into requests as large as a run
    assert (plan(batchable=False, chunkable=True).request_rows, plan(batchable=False, chunkable=True).run_rows) == (
        256,
        None,
    )


def test_the_iterating_thread_runs_only_beside_a_shared_cpu_session_that_leaves_a_core() -> None:
    cpu = {"providers": ["CPUExecutionProvider"], "intra_op_threads": 1, "shared_session": True}
    assert caller_may_run(cpu, kind="onnxruntime", sessions=1, cores=2)
    assert not caller_may_run(cpu, kind="onnxruntime", sessions=2, cores=2)  # the workers use every core
    assert not caller_may_run({**cpu, "intra_op_threads": 2}, kind="onnxruntime", sessions=1, cores=2)
    assert caller_may_run({**cpu, "intra_op_threads": 2}, kind="onnxruntime", sessions=1, cores=4)
    assert not caller_may_run({**cpu, "shared_session": False}, kind="onnxruntime", sessions=1, cores=8)
    assert not caller_may_run({**cpu, "providers": ["CUDAExecutionProvider"]}, kind="onnxruntime", sessions=1, cores=8)
    assert not caller_may_run({"providers": ["http://127.0.0.1:1"]}, kind="remote", sessions=1, cores=8)


def test_a_batch_sent_in_parts_is_answered_by_one_version_under_a_canary(
    repository: Path, make_server: ServerFactory
) -> None:
    # Each part of a large batch is routed on its own: a canary at 50 % answered about half of a batch's
    # rows with each version, in one Prediction labelled with the first part's version.
    from inprocserve import CanaryConfig, RolloutConfig, VersionPolicy
    from inprocserve.testing import build_scale_model

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)  # y = version * x
    canary = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50))
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=VersionPolicy.all(), rollout=canary))
    batch = np.ones((2000, 4), np.float32)  # more rows than one request takes: sent in parts
    versions = set()
    for answer in server.predict_many("scale", [batch] * 6):
        assert answer["y"].shape == (2000, 4)
        np.testing.assert_array_equal(answer["y"], batch * answer.version)
        versions.add(answer.version)
    assert versions <= {1, 2}


def test_a_batch_sent_in_parts_is_routed_once_and_run_once(repository: Path, make_server: ServerFactory) -> None:
    # The parts of one batch follow its first part's routing: routed one by one, a canary at 50 % split
    # most batches between the versions, and the parts on the other version were scored a second time.
    from inprocserve import CanaryConfig, RolloutConfig, VersionPolicy
    from inprocserve.testing import build_scale_model

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)  # y = version * x
    canary = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50))
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=VersionPolicy.all(), rollout=canary))
    batch = np.ones((2000, 4), np.float32)  # more rows than one request takes: sent in parts
    versions = []
    for answer in server.predict_many("scale", [batch] * 40):
        np.testing.assert_array_equal(answer["y"], batch * answer.version)
        versions.append(answer.version)
    # The canary still splits the job, batch by batch: the batches have no key, so each is drawn at random
    # and all 40 alike is 2 * 0.5 ** 40 (2e-12 a run; 30 batches were 2 ** -29, 2e-9).
    assert set(versions) == {1, 2}
    served = server.status()["models"]["scale"]["versions"]
    assert served["1"]["rows_run"] + served["2"]["rows_run"] == 40 * 2000  # no row run twice


def test_the_parts_of_a_batch_do_not_follow_a_decision_the_kill_switch_overturned(
    repository: Path, make_server: ServerFactory
) -> None:
    # The parts follow their first part's routing only while the routing stands: killed between parts, the
    # canary answered the whole batch (every later part went to it), where the kill sends everyone to the
    # stable version on the next request.
    from inprocserve import CanaryConfig, RolloutConfig, VersionPolicy
    from inprocserve.testing import build_scale_model

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)  # y = version * x
    canary = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=100))
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=VersionPolicy.all(), rollout=canary))
    dispatch = server._dispatch
    parts = []

    def kill_after_the_first_part(*args: Any, **kwargs: Any) -> Any:
        parts.append(kwargs.get("decided"))
        if len(parts) == 2:
            server.kill("scale")
        return dispatch(*args, **kwargs)

    server._dispatch = kill_after_the_first_part  # type: ignore[method-assign]
    batch = np.ones((20000, 4), np.float32)  # many parts
    (answer,) = server.predict_many("scale", [batch])
    assert answer.version == 1
    np.testing.assert_array_equal(answer["y"], batch)
    served = server.status()["models"]["scale"]["versions"]
    assert served["2"]["rows_run"] <= 20000 // 10  # the parts dispatched before the kill took effect


def test_a_batch_sent_in_parts_is_answered_when_the_last_parts_version_is_unloaded_meanwhile(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The job pins no version: a canary rolled back while a batch's parts are scored again on the last
    # part's version (the canary) must not fail the job with "no servable version 2"; the parts agree on
    # a version still served. (Parts disagree when a reload lands between them; here each part is routed on
    # its own, as if one did every time.)
    from inprocserve import CanaryConfig, RolloutConfig, VersionPolicy, _scoring
    from inprocserve.testing import build_scale_model

    class RoutedEachTime(_scoring.SameRoute):
        decision = property(lambda self: None, lambda self, value: None)  # type: ignore[assignment]

    monkeypatch.setattr(_scoring, "SameRoute", RoutedEachTime)

    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)  # y = version * x
    canary = RolloutConfig(strategy="canary", stable=1, canary=CanaryConfig(version=2, percent=50))
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=VersionPolicy.all(), rollout=canary))
    wait, unloaded = _scoring._wait, []

    def unload_before_the_rescore(*args: Any, pin: int | None = None) -> Any:
        if pin == 2 and not unloaded:  # the rollback lands between the last part's answer and the re-score
            server.unload("scale", 2)
            unloaded.append(True)
        return wait(*args, pin=pin)

    monkeypatch.setattr(_scoring, "_wait", unload_before_the_rescore)
    batch = np.ones((2000, 4), np.float32)  # more rows than one request takes: sent in parts
    answers = list(server.predict_many("scale", [batch] * 80))
    # The batches have no key: each part's version is drawn at random, and a batch whose last part is on 2
    # and an earlier one on 1 comes at least one time in four, so none in 80 is 0.75 ** 80 (1e-10 a run;
    # 40 batches failed one run in 100,000).
    assert unloaded
    assert len(answers) == 80
    for answer in answers:
        np.testing.assert_array_equal(answer["y"], batch * answer.version)


def test_an_error_of_the_callers_own_code_keeps_its_frames(scale_repository: Path, make_server: ServerFactory) -> None:
    """A failing iterable (the caller's loader) or progress callback was raised without any traceback below
    ``predict_many`` (dropped with the library's frames, which held the job's parts in a cycle): the line of
    the caller's code that failed was shown nowhere, and a callback's error was noted as failed input rows
    that had been answered ("failed at input rows 3..2")."""
    server = make_server(scale_repository)

    def load_batches() -> Iterator[np.ndarray]:
        yield _rows(2)
        columns: dict[str, float] = {}
        yield np.full((2, 4), columns["price"], np.float32)  # the caller's bug

    with pytest.raises(KeyError) as caught:
        list(server.predict_many("scale", load_batches()))
    frames = [frame.name for frame in traceback.extract_tb(caught.value.__traceback__)]
    assert frames[-1] == "load_batches"
    assert caught.value.__notes__ == ["predict_many: the batch after input row 2 could not be read or checked"]

    def report(done: int, total: int | None) -> None:
        if done:
            print(f"{done / total:.0%}")  # type: ignore[operator]  # (total is None for an iterator)

    with pytest.raises(TypeError) as caught_in_callback:
        list(server.predict_many("scale", iter([_rows(2), _rows(2)]), progress=report))
    frames = [frame.name for frame in traceback.extract_tb(caught_in_callback.value.__traceback__)]
    assert frames[-1] == "report"
    assert not getattr(caught_in_callback.value, "__notes__", None)  # (raised as it is: no rows failed)


def test_a_failing_iterable_keeps_no_inputs_without_the_collector(
    scale_repository: Path, make_server: ServerFactory
) -> None:
    """The caller's frames kept with its error hold none of the job's parts: freed once the error is dropped."""
    server = make_server(scale_repository)
    first = _rows(3)
    kept = weakref.ref(first)

    def load_batches(first: np.ndarray) -> Iterator[np.ndarray]:
        yield first
        raise OSError("the queue went away")

    gc.collect()
    gc.disable()
    try:
        with pytest.raises(OSError, match="the queue went away"):
            list(server.predict_many("scale", load_batches(first)))
        del first
        wait_until(lambda: kept() is None, timeout_s=5.0)
    finally:
        gc.enable()


def test_a_zipmap_classifiers_whole_input_is_cut_into_chunks(repository: Path, make_server: ServerFactory) -> None:
    # A scikit-learn classifier's scores come as a ZipMap (a map per row): its requests are never merged, and
    # a whole input of more rows than one request may carry was sent as one request and refused.
    from tests.toolkit_models import build_string_label_classifier

    save_model(build_string_label_classifier(), repository, "classifier", 1)
    server = make_server(repository)
    x = np.random.default_rng(0).standard_normal((5000, 4)).astype(np.float32)  # > max_request_rows (4096)
    answers = list(server.predict_many("classifier", x, batch_rows=1000))
    assert [len(answer["output_label"]) for answer in answers] == [1000] * 5
    session = ort.InferenceSession(str(repository / "classifier" / "1" / "model.onnx"))
    labels, maps = session.run(None, {"X": x})
    assert np.concatenate([answer["output_label"] for answer in answers]).tolist() == labels.tolist()
    assert [row for answer in answers for row in answer["output_probability"]] == maps


def test_a_zipmap_classifiers_chunks_are_run_several_at_a_time(repository: Path, make_server: ServerFactory) -> None:
    # Its requests are never merged, so one request per chunk was one run per 64 rows: 2-3x slower than runs
    # of 256. Its chunks are grouped into requests of SCORING_RUN_ROWS rows now, still answered chunk by chunk.
    from tests.toolkit_models import build_string_label_classifier

    save_model(build_string_label_classifier(), repository, "classifier", 1)
    server = make_server(repository)
    x = np.random.default_rng(0).standard_normal((600, 4)).astype(np.float32)
    answers = list(server.predict_many("classifier", x))
    assert [len(answer["output_probability"]) for answer in answers] == [64] * 9 + [24]
    assert all(isinstance(answer["output_probability"], list) for answer in answers)
    session = ort.InferenceSession(str(repository / "classifier" / "1" / "model.onnx"))
    labels, maps = session.run(None, {"X": x})
    assert np.concatenate([answer["output_label"] for answer in answers]).tolist() == labels.tolist()
    assert [row for answer in answers for row in answer["output_probability"]] == maps
    status = version_status(server, "classifier")
    assert (status["rows_run"], status["batches_run"]) == (600, 3)  # 256 + 256 + 88 rows, not 10 runs
    # With a deadline per chunk, each chunk stays a request (and a run) of its own.
    list(server.predict_many("classifier", x[:130], timeout_s=30))
    assert version_status(server, "classifier")["batches_run"] - status["batches_run"] == 3


def test_a_zipmap_classifiers_batch_sent_in_parts_answers_a_list_of_maps(
    repository: Path, make_server: ServerFactory
) -> None:
    # A batch of an iterable larger than a chunk is sent in parts and joined back: the ZipMap's maps, a list
    # per request, were joined by np.concatenate into an object array, unlike any request's answer.
    from tests.toolkit_models import build_string_label_classifier

    save_model(build_string_label_classifier(), repository, "classifier", 1)
    server = make_server(repository)
    x = np.random.default_rng(0).standard_normal((25, 4)).astype(np.float32)
    whole = server.predict("classifier", x)
    (answer,) = server.predict_many("classifier", iter([x]), batch_rows=10)
    assert isinstance(answer["output_probability"], list)
    assert answer["output_probability"] == whole["output_probability"]
    np.testing.assert_array_equal(answer["output_label"], whole["output_label"])


def test_a_whole_input_too_large_for_a_model_without_rows_in_its_answers_says_why_and_what_to_do(
    repository: Path, make_server: ServerFactory
) -> None:
    # Such a model's whole input cannot be cut into chunks (its answer is not a row per row): it goes as one
    # request, and past the per-request limit it was told to "split it into smaller requests", which would
    # answer each part on its own.
    save_model(build_sum_model(), repository, "sum", 1)  # total = sum(x): no batch axis in its answer
    server = make_server(
        repository, config=inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_request_rows=100))
    )
    with pytest.raises(inprocserve.InvalidInputError) as refused:
        server.predict_many("sum", np.ones((101, 4), np.float32))
    message = str(refused.value)
    assert "a whole input of 101 rows is one request for this model" in message
    assert "no dynamic axis 0" in message  # why it cannot be cut
    assert "raise batching.max_request_rows for it, or pass an iterable of batches" in message
    (answer,) = server.predict_many("sum", {"x": np.ones((100, 4), np.float32).tolist()})
    assert float(answer["total"]) == 400.0
    assert [float(answer["total"]) for answer in server.predict_many("sum", iter([np.ones((100, 4))] * 2))] == [
        400.0
    ] * 2


def test_batch_rows_for_a_model_whose_whole_input_cannot_be_cut_is_refused_not_ignored(
    repository: Path, make_server: ServerFactory
) -> None:
    # batch_rows was ignored for such a model: one answer came for the whole input where the caller counted
    # on one per chunk (zip(chunks, answers) silently paired the first chunk with the whole input's total)
    save_model(build_sum_model(), repository, "sum", 1)
    server = make_server(repository)
    with pytest.raises(ValueError) as refused:
        server.predict_many("sum", np.ones((50, 4), np.float32), batch_rows=10)
    message = str(refused.value)
    assert message.startswith("batch_rows=10: model 'sum' version 1 takes a whole input as one request")
    assert "no dynamic axis 0" in message and "drop batch_rows, or pass an iterable of batches" in message
    # an iterable's batches are each scored whole, as they always were: batch_rows changes nothing there
    answers = server.predict_many("sum", iter([np.ones((20, 4), np.float32)] * 2), batch_rows=10)
    assert [float(answer["total"]) for answer in answers] == [80.0, 80.0]


def test_a_whole_input_under_wrong_names_is_told_of_its_names_first_whatever_its_rows(
    repository: Path, make_server: ServerFactory
) -> None:
    # the refusal of a whole input too large for one request came before the names were checked: a caller
    # who raised the limit as told was then told the input's name was wrong
    save_model(build_sum_model(), repository, "sum", 1)
    server = make_server(
        repository, config=inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_request_rows=100))
    )
    with pytest.raises(inprocserve.InvalidInputError, match=r"missing input\(s\) 'x'; unknown input\(s\) 'features'"):
        list(server.predict_many("sum", {"features": np.ones((101, 4), np.float32)}))
    with pytest.raises(inprocserve.InvalidInputError, match="a whole input of 101 rows is one request"):
        server.predict_many("sum", {"x": np.ones((101, 4), np.float32)})


def test_a_whole_input_refused_at_the_call_names_the_model_and_version_as_predict_does(
    repository: Path, make_server: ServerFactory
) -> None:
    # a ragged, masked or uneven whole input was refused without the model's name, and error.model was None
    save_model(build_add_model(), repository, "add", 1)
    server = make_server(repository)
    masked = np.ma.masked_array(np.ones((200, 3), np.float32), mask=False)
    masked[150, 0] = np.ma.masked
    n = np.ones((200, 1), np.int64)
    for inputs, words in (
        ({"a": masked, "b": masked.data, "n": n}, "input 'a': a masked array with 1 masked"),
        ({"a": [[1.0, 2.0, 3.0], [1.0]], "b": [[1.0] * 3] * 2, "n": [[1]] * 2}, "input 'a' is ragged"),
        ({"a": masked.data, "b": masked.data[:199], "n": n}, "'b' has 199"),
    ):
        with pytest.raises(inprocserve.InvalidInputError) as refused:
            server.predict_many("add", inputs)
        assert str(refused.value).startswith("model 'add' version 1: ") and words in str(refused.value)
        assert (refused.value.model, refused.value.version) == ("add", 1)
