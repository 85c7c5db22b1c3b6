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


def build_column_transformer_pipeline() -> Any:
    """What skl2onnx's ``convert_sklearn`` exports for a ``Pipeline(ColumnTransformer(...), LogisticRegression())``
    with one input per column (``initial_types=[("age", FloatTensorType([None, 1])), ("city",
    StringTensorType([None, 1])), ("n", Int64TensorType([None, 1]))]``): each column encoded on its own (the
    city through a category table), concatenated on axis 1, then ``LinearClassifier`` with integer classes ->
    ``output_label`` (``tensor(int64) [None]``) and ``ZipMap`` -> ``output_probability``."""
    cities = ["oslo", "paris", "rome"]
    graph = helper.make_graph(
        [
            helper.make_node(
                "CategoryMapper", ["city"], ["city_id"], domain="ai.onnx.ml", cats_strings=cities, cats_int64s=[0, 1, 2]
            ),
            helper.make_node("Cast", ["city_id"], ["city_f"], to=TensorProto.FLOAT),
            helper.make_node("Cast", ["n"], ["n_f"], to=TensorProto.FLOAT),
            helper.make_node("Concat", ["age", "city_f", "n_f"], ["features"], axis=1),
            helper.make_node(
                "LinearClassifier",
                ["features"],
                ["label", "probability_tensor"],
                domain="ai.onnx.ml",
                classlabels_ints=[0, 1],
                coefficients=[0.05, -0.5, 0.2, -0.05, 0.5, -0.2],
                intercepts=[0.0, 0.1],
                multi_class=1,
                post_transform="SOFTMAX",
            ),
            helper.make_node("Identity", ["label"], ["output_label"]),
            helper.make_node(
                "ZipMap", ["probability_tensor"], ["output_probability"], domain="ai.onnx.ml", classlabels_int64s=[0, 1]
            ),
        ],
        "pipeline",
        [
            helper.make_tensor_value_info("age", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("city", TensorProto.STRING, [None, 1]),
            helper.make_tensor_value_info("n", TensorProto.INT64, [None, 1]),
        ],
        [
            helper.make_tensor_value_info("output_label", TensorProto.INT64, [None]),
            helper.make_value_info(
                "output_probability",
                helper.make_sequence_type_proto(
                    helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, []))
                ),
            ),
        ],
    )
    opsets = [helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def build_lightgbm_classifier(*, features: int = 4) -> Any:
    """What onnxmltools' ``convert_lightgbm(LGBMClassifier(), zipmap=False)`` exports: a
    ``TreeEnsembleClassifier`` whose ``label`` output is declared ``tensor(int64) [1]`` although it answers one
    label per row (onnxruntime warns of the mismatch at each run of several rows), and ``probabilities``
    ``[None, 2]``. Here one tree of one split: class 1 where feature 0 is above 0."""
    graph = helper.make_graph(
        [
            helper.make_node(
                "TreeEnsembleClassifier",
                ["input"],
                ["label", "probabilities"],
                domain="ai.onnx.ml",
                nodes_treeids=[0, 0, 0],
                nodes_nodeids=[0, 1, 2],
                nodes_featureids=[0, 0, 0],
                nodes_values=[0.0, 0.0, 0.0],
                nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"],
                nodes_truenodeids=[1, 0, 0],
                nodes_falsenodeids=[2, 0, 0],
                class_treeids=[0, 0, 0, 0],
                class_nodeids=[1, 1, 2, 2],
                class_ids=[0, 1, 0, 1],
                class_weights=[0.8, 0.2, 0.3, 0.7],
                classlabels_int64s=[0, 1],
            )
        ],
        "lightgbm",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, features])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, [1]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 2]),
        ],
    )
    opsets = [helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)
