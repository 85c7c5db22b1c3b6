"""Shadow comparisons, leftovers of the tenth review: a regressor's values that one version answers as integers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from inprocserve import Server, ShadowComparison
from inprocserve.testing import save_model

from .conftest import ServerFactory, wait_until
from .test_shadow_hardening import shadowed, stats


def build_regressor(*, as_integers: bool) -> Any:
    """``price = 1.5 * x`` over ``[batch, 1]`` as float32 (``as_integers``: cast to int64, truncated, as a
    re-exported regressor whose last step rounds may answer it)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Mul", ["x", "scale"], ["scaled" if as_integers else "price"])]
    if as_integers:
        nodes.append(helper.make_node("Cast", ["scaled"], ["price"], to=TensorProto.INT64))
    graph = helper.make_graph(
        nodes,
        "regressor",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("price", TensorProto.INT64 if as_integers else TensorProto.FLOAT, ["batch", 1])],
        [numpy_helper.from_array(np.array([1.5], np.float32), "scale")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


def shadowed_regressors(
    repository: Path, make_server: ServerFactory, *, stable_integers: bool
) -> tuple[Server, list[ShadowComparison]]:
    """Model ``price``: version 1 the regressor answering floats (``stable_integers``: integers), shadowed by
    version 2 answering the other; the server and the comparisons seen."""
    save_model(build_regressor(as_integers=stable_integers), repository, "price", 1)
    save_model(build_regressor(as_integers=not stable_integers), repository, "price", 2)
    seen: list[ShadowComparison] = []
    server = make_server(repository, config=shadowed(), on_shadow=seen.append, shadow_budget=1.0)
    return server, seen


@pytest.mark.parametrize("stable_integers", [False, True])
def test_a_regressor_answered_as_integers_by_one_version_is_compared_by_its_difference(
    repository: Path, make_server: ServerFactory, *, stable_integers: bool
) -> None:
    # A float regressor (1.5, 3.0, 4.5) shadowed by a version that answers its values truncated to int64 (1, 3,
    # 4), or the other way round: any output one version answers as integers was compared as labels, by
    # equality, so values 0.5 apart read as a label agreement of 1/3 with no difference at all: a guard on
    # max_abs_diff had nothing to measure. Integers against floats now keep their difference (and the share of
    # equal rows, 1 of 3), whatever the values (see test_leftovers11).
    server, seen = shadowed_regressors(repository, make_server, stable_integers=stable_integers)
    server.predict("price", np.array([[1.0], [2.0], [3.0]], np.float32))
    wait_until(lambda: len(seen) == 1)
    assert (seen[0].max_abs_diff, seen[0].label_agreement, seen[0].mismatch) == (0.5, pytest.approx(1 / 3), None)
    assert stats(server, "price")["max_abs_diff"] == 0.5
