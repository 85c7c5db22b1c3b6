"""The prediction cache after a third review: answers that are sequences of tensors are weighed by what they
hold against ``max_bytes``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from inprocserve import CacheConfig, ModelConfig
from inprocserve.testing import save_model

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
