"""Tiny models shaped like what the data-science toolkits export, built with ``onnx.helper`` so the tests need
no scikit-learn: each builder says which export its graph mirrors."""

from __future__ import annotations

from typing import Any

from onnx import TensorProto, helper

CLASSES = ["bird", "cat", "dog"]


def build_string_label_classifier(*, features: int = 4) -> Any:
    """What skl2onnx's ``to_onnx(LogisticRegression().fit(X, labels), X[:1])`` exports for string labels:
    ``LinearClassifier`` -> ``output_label`` (``tensor(string) [None]``) and its scores through ``ZipMap`` ->
    ``output_probability`` (``seq(map(string,tensor(float)))``, one map per row), with the input ``X``
    (``tensor(float) [None, features]``)."""
    coefficients = [((c + 1) * (f + 1) % 5 - 2) * 0.5 for c in range(len(CLASSES)) for f in range(features)]
    graph = helper.make_graph(
        [
            helper.make_node(
                "LinearClassifier",
                ["X"],
                ["label", "probability_tensor"],
                domain="ai.onnx.ml",
                classlabels_strings=CLASSES,
                coefficients=coefficients,
                intercepts=[0.1, -0.2, 0.05],
                multi_class=1,
                post_transform="SOFTMAX",
            ),
            helper.make_node("Identity", ["label"], ["output_label"]),
            helper.make_node(
                "ZipMap",
                ["probability_tensor"],
                ["output_probability"],
                domain="ai.onnx.ml",
                classlabels_strings=CLASSES,
            ),
        ],
        "LinearClassifier",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, features])],
        [
            helper.make_tensor_value_info("output_label", TensorProto.STRING, [None]),
            helper.make_value_info(
                "output_probability",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.STRING, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            ),
        ],
    )
    opsets = [helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)
