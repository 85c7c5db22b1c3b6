"""The compatibility gate beside a rollout configuration: the version a rollout names as stable is the one a
new version is compared with, from the first load on, and status says so as switch() and promote() do."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import inprocserve
from inprocserve.testing import save_model

from .conftest import ServerFactory, rollout


def build_label_model(dtype: int = TensorProto.INT64) -> onnx.ModelProto:
    """``label = argmax(x)`` on float32 ``x[batch, 4]``, as an output of type ``dtype``."""
    nodes = [
        helper.make_node("ArgMax", ["x"], ["index"], axis=1, keepdims=0),
        helper.make_node("Cast", ["index"], ["label"], to=dtype),
    ]
    graph = helper.make_graph(
        nodes,
        "label",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("label", dtype, ["batch"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def rows(count: int = 1) -> np.ndarray:
    return np.ones((count, 4), np.float32)


def test_status_compares_a_new_version_with_the_configured_stable_one_from_the_start(
    repository: Path, make_server: ServerFactory
) -> None:
    """Versions 1 (int64 labels) and 2 (float labels) on disk at start-up, ``stable=1``: version 2 was shown
    compatible and the default, though switch() and promote() refuse it for the changed output type, and a
    refresh later turned it incompatible and the default back to 1."""
    save_model(build_label_model(TensorProto.INT64), repository, "labels", 1)
    save_model(build_label_model(TensorProto.FLOAT), repository, "labels", 2)
    server = make_server(repository, config=rollout(stable=1))
    expected = ["output 'label': type tensor(int64) became tensor(float)"]

    def shown() -> tuple[int, int, bool, list[str]]:
        status = server.status()["models"]["labels"]
        second = status["versions"]["2"]
        return status["default_version"], status["answering_version"], second["compatible"], second["incompatibilities"]

    assert shown() == (1, 1, False, expected)
    assert server.predict("labels", rows()).version == 1
    assert server.predict("labels", rows(), version=2).version == 2  # servable when pinned
    with pytest.raises(inprocserve.PromotionRefusedError, match=r"tensor\(int64\) became tensor\(float\)"):
        server.switch("labels", 2)
    server.refresh()
    assert shown() == (1, 1, False, expected)  # the same after a refresh


def test_a_worker_that_starts_after_a_fleet_switch_compares_with_the_switched_to_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """The fleet was switched back to version 1 (forced); a worker that started then showed version 2, whose
    output type differs, as compatible and its default."""
    save_model(build_label_model(TensorProto.INT64), repository, "labels", 1)
    save_model(build_label_model(TensorProto.FLOAT), repository, "labels", 2)
    config = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    make_server(repository, config=config).switch("labels", 1, force=True)
    status = make_server(repository, config=config).status()["models"]["labels"]
    assert (status["default_version"], status["answering_version"]) == (1, 1)
    assert status["versions"]["2"]["incompatibilities"] == ["output 'label': type tensor(int64) became tensor(float)"]


def test_every_served_version_is_shown_as_switch_would_judge_it(repository: Path, make_server: ServerFactory) -> None:
    """Versions 1 and 3 return int64 labels, version 2 floats; all served, 3 the default. Version 2, as a
    canary, was shown compatible with nothing listed (only the newest version was ever compared), though
    switch() refuses it and one caller in ten meets its other output type."""
    for version, dtype in ((1, TensorProto.INT64), (2, TensorProto.FLOAT), (3, TensorProto.INT64)):
        save_model(build_label_model(dtype), repository, "labels", version)
    server = make_server(repository, config=rollout())
    server.set_canary("labels", 2, percent=10)  # routed as configured: the gate decides the default only
    status = server.status()["models"]["labels"]
    assert (status["default_version"], status["answering_version"]) == (3, 3)
    shown = {number: (entry["compatible"], entry["incompatibilities"]) for number, entry in status["versions"].items()}
    assert shown == {
        "1": (True, []),
        "2": (False, ["output 'label': type tensor(int64) became tensor(float)"]),
        "3": (True, []),
    }
    with pytest.raises(inprocserve.PromotionRefusedError, match=r"type tensor\(int64\) became tensor\(float\)"):
        server.switch("labels", 2)


def _classifier(output: str) -> onnx.ModelProto:
    """Softmax scores of ``x[batch, 2]`` as a ZipMap of int64 or string keys, a plain tensor, or a label."""
    nodes = [helper.make_node("Softmax", ["x"], ["scores"], axis=1)]
    if output.startswith("zipmap"):
        text = output == "zipmap-text"
        labels = {"classlabels_strings": ["no", "yes"]} if text else {"classlabels_int64s": [0, 1]}
        nodes.append(helper.make_node("ZipMap", ["scores"], ["p"], domain="ai.onnx.ml", **labels))
        scores = helper.make_tensor_type_proto(TensorProto.FLOAT, [])
        kind = helper.make_sequence_type_proto(
            helper.make_map_type_proto(TensorProto.STRING if text else TensorProto.INT64, scores)
        )
        declared = helper.make_value_info("p", kind)
    elif output == "scores":
        nodes.append(helper.make_node("Identity", ["scores"], ["p"]))
        declared = helper.make_tensor_value_info("p", TensorProto.FLOAT, ["batch", 2])
    else:  # "text": the label as a string
        nodes.append(helper.make_node("ArgMax", ["scores"], ["index"], axis=1, keepdims=0))
        labels = {"keys_int64s": [0, 1], "values_strings": ["no", "yes"]}
        nodes.append(helper.make_node("LabelEncoder", ["index"], ["p"], domain="ai.onnx.ml", **labels))
        declared = helper.make_tensor_value_info("p", TensorProto.STRING, ["batch"])
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])]
    graph = helper.make_graph(nodes, "classifier", inputs, [declared])
    opsets = [helper.make_opsetid("", 13), helper.make_opsetid("ai.onnx.ml", 2)]
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    return model


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        ("zipmap", "zipmap-text", "type seq(map(int64,tensor(float))) became seq(map(string,tensor(float)))"),
        ("zipmap", "scores", "type seq(map(int64,tensor(float))) became tensor(float)"),
        ("text", "zipmap", "type tensor(string) became seq(map(int64,tensor(float)))"),
    ],
)
def test_a_classifier_whose_output_changes_form_is_held_back_and_named(
    repository: Path, make_server: ServerFactory, before: str, after: str, expected: str
) -> None:
    save_model(_classifier(before), repository, "clf", 1)
    server = make_server(repository, config=rollout(), poll_interval_s=None)
    save_model(_classifier(after), repository, "clf", 2)
    assert server.refresh() == []
    status = server.status()["models"]["clf"]
    assert (status["default_version"], status["versions"]["2"]["incompatibilities"]) == (1, [f"output 'p': {expected}"])
    with pytest.raises(inprocserve.PromotionRefusedError, match=re.escape(expected)):
        server.switch("clf", 2)
