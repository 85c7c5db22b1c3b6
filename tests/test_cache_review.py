"""The prediction cache after a third review: answers that are sequences of tensors, or maps with text
labels, are weighed by what they hold against ``max_bytes``; a cached answer cannot be made writable again, so
no caller can change it for the next."""

from __future__ import annotations

import sys
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from onnx import TensorProto, helper

from inprocserve import CacheConfig, ModelConfig
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def build_sequence_model(width: int) -> Any:
    """A model whose output is a sequence of tensors (``SequenceConstruct``: the input, twice)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", width])
    tensors = helper.make_tensor_type_proto(TensorProto.FLOAT, ["batch", width])
    parts = helper.make_value_info("parts", helper.make_sequence_type_proto(tensors))
    graph = helper.make_graph([helper.make_node("SequenceConstruct", ["x", "x"], ["parts"])], "parts", [x], [parts])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def test_answers_that_are_sequences_of_tensors_are_bounded_by_max_bytes(
    repository: Path, make_server: ServerFactory
) -> None:
    # Each tensor of a sequence output was weighed as 64 bytes: 20 answers of 512 KiB each (10 MiB) were
    # counted as 13 KB against a 2 MiB bound, all kept.
    save_model(build_sequence_model(1024), repository, "parts", 1)
    bounded = ModelConfig(cache=CacheConfig(enabled=True, max_bytes=2 * 2**20))
    server = make_server(repository, models={"parts": bounded})
    for value in range(20):
        answer = server.predict("parts", np.full((64, 1024), value, np.float32))  # 2 x 256 KiB
        assert len(answer["parts"]) == 2 and answer["parts"][1][0, 0] == value
    status = server.status()["models"]["parts"]["versions"]["1"]["cache"]
    assert status["entries"] == 3, status  # (four would hold 2 MiB and their bookkeeping)
    assert 3 * 2**19 <= status["bytes"] <= status["max_bytes"]


def build_text_model() -> Any:
    """``y = x`` on text: onnxruntime answers a string output as an object array that owns its memory."""
    x = helper.make_tensor_value_info("x", TensorProto.STRING, ["batch", 1])
    y = helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "text", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)


def change_in_place(answer: np.ndarray, value: Any) -> None:
    """What a caller does when told 'assignment destination is read-only' (numpy's usual advice)."""
    try:
        answer.setflags(write=True)
    except ValueError:  # (refused: the answer stays as it is)
        return
    answer.flat[0] = value


def test_a_cached_row_of_a_batch_made_writable_again_cannot_change_the_next_hit(
    repository: Path, make_server: ServerFactory
) -> None:
    # A row cut from a merged batch is cached as a copy, which owns its memory: its read-only flag could be set
    # back, and a caller who did so changed the answer every later identical request got.
    save_model(build_scale_model(2.0, features=256), repository, "wide", 1)
    server = make_server(repository, models={"wide": ModelConfig(cache=CacheConfig(enabled=True))})
    futures = [server.submit("wide", np.full((1, 256), i, np.float32)) for i in range(64)]
    for future in futures:
        future.result(30)
    for i in range(64):
        change_in_place(server.predict("wide", np.full((1, 256), i, np.float32))["y"], -1.0)  # cache hits
    for i in range(64):
        np.testing.assert_array_equal(server.predict("wide", np.full((1, 256), i, np.float32))["y"][0, 0], 2.0 * i)


def build_labelled_classifier(labels: list[str]) -> Any:
    """A classifier as skl2onnx exports one with text labels: its ZipMap answers ``{label: score}`` a row."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", len(labels)])
    probabilities = helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", len(labels)])
    scores = helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
    zipmap = helper.make_value_info("output_probability", helper.make_sequence_type_proto(scores))
    nodes = [
        helper.make_node("Softmax", ["x"], ["probs"], axis=1),
        helper.make_node("ZipMap", ["probs"], ["output_probability"], domain="ai.onnx.ml", classlabels_strings=labels),
    ]
    graph = helper.make_graph(nodes, "classifier", [x], [probabilities, zipmap])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def test_maps_with_text_labels_are_weighed_with_their_labels(repository: Path, make_server: ServerFactory) -> None:
    # Each row's map holds its own copy of every label: weighed as if its keys were small integers, 50 answers
    # of a classifier with long label names held 23 MB where the cache counted 14 against max_bytes.
    labels = [f"catalogue-category-{index:04d}-of-the-shop" for index in range(200)]
    save_model(build_labelled_classifier(labels), repository, "classifier", 1)
    server = make_server(repository, models={"classifier": ModelConfig(cache=CacheConfig(enabled=True))})
    held = 0
    for seed in range(10):
        answer = server.predict("classifier", np.random.default_rng(seed).standard_normal((16, 200), np.float32))
        for row in answer["output_probability"]:  # (each caller's copy holds what the cached one does)
            held += sys.getsizeof(row) + sum(sys.getsizeof(label) + sys.getsizeof(row[label]) for label in row)
        held += answer["probs"].nbytes
    counted = server.status()["models"]["classifier"]["versions"]["1"]["cache"]["bytes"]
    assert held <= counted < 1.2 * held, (counted, held)


def change_through_bases(answer: np.ndarray, value: Any) -> bool:
    """What a caller whose answer refuses ``setflags(write=True)`` may try next: the arrays it is a view of
    (``answer.base``, ``answer.base.base``...). Whether one of them took the change."""
    base = answer.base
    while isinstance(base, np.ndarray):
        try:
            base.setflags(write=True)
        except ValueError:
            base = base.base
            continue
        base.flat[0] = value
        return True
    return False


def test_a_cached_row_of_a_batch_cannot_be_changed_through_the_array_it_is_a_view_of(
    repository: Path, make_server: ServerFactory
) -> None:
    # A row cut from a merged batch was cached as a read-only view of a copy of its own, and that copy, which
    # owns its memory, is the view's .base: made writable again and changed, it changed every later hit.
    save_model(build_scale_model(2.0, features=256), repository, "wide", 1)
    server = make_server(repository, models={"wide": ModelConfig(cache=CacheConfig(enabled=True))})
    futures = [server.submit("wide", np.full((1, 256), i, np.float32)) for i in range(64)]
    answers = [future.result(30)["y"] for future in futures]  # (the answers that filled the cache)
    hits = [server.predict("wide", np.full((1, 256), i, np.float32))["y"] for i in range(64)]
    changed = [change_through_bases(answer, -1.0) for answer in answers + hits]
    for i in range(64):
        np.testing.assert_array_equal(server.predict("wide", np.full((1, 256), i, np.float32))["y"][0, 0], 2.0 * i)
    assert not any(changed)


def test_an_answer_larger_than_max_bytes_is_neither_copied_nor_sealed() -> None:
    # The cache copied a row of a merged batch, and sealed every other answer read-only, before it weighed
    # the answer against max_bytes: one too large to keep cost a copy of its size for nothing, and left its
    # caller an answer read-only though nothing shares it.
    from inprocserve._cache import PredictionCache

    cache = PredictionCache(CacheConfig(enabled=True, max_bytes=64 * 2**10))
    batch = np.ones((8, 65536), np.float32)  # 8 rows of 256 KiB, each over max_bytes alone
    row, whole = batch[2:3], np.ones((1, 65536), np.float32)
    tracemalloc.start()
    try:
        cache.store(b"row", {"y": row})
        cache.store(b"whole", {"y": whole})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**10, peak  # (a copy of the row: 256 KiB)
    assert row.flags.writeable and whole.flags.writeable
    assert cache.status()["entries"] == 0


@pytest.mark.parametrize("how", ["made writable again", "through its base"])
@pytest.mark.parametrize("changed", ["the answer that filled the cache", "a cache hit"])
def test_a_cached_text_answer_changed_by_its_caller_cannot_change_the_next_hit(
    repository: Path, make_server: ServerFactory, changed: str, how: str
) -> None:
    # Text answers own their memory, so their read-only flag could be set back: a caller that did so and
    # changed its answer changed what every later identical request got from the cache. Text cannot be kept in
    # memory nobody can write either: every hit was a read-only view of the one cached array, and
    # answer.base.setflags(write=True) made it writable again: a write through it changed every later hit.
    save_model(build_text_model(), repository, "text", 1)
    server = make_server(repository, models={"text": ModelConfig(cache=CacheConfig(enabled=True))})
    words = np.array([["hello"]], object)
    answer = server.predict("text", words)["y"]
    if changed == "a cache hit":
        answer = server.predict("text", words)["y"]
    if how == "through its base":
        change_through_bases(answer, "changed")
    change_in_place(answer, "changed")
    assert server.predict("text", words)["y"].tolist() == [["hello"]]
    assert server.status()["models"]["text"]["versions"]["1"]["cache"]["hits"] >= 1
