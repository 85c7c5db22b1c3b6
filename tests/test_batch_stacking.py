"""A worker stacks a batch's rows the same way whichever copy it takes (``stack_holding_gil``)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from inprocserve._batch_execution import stack_holding_gil
from inprocserve._batch_ops import stack_inputs

rng = np.random.default_rng(3)

BATCHES: dict[str, list[dict[str, Any]]] = {
    "wide rows (copied holding the GIL)": [{"x": rng.standard_normal((1, 1024)).astype(np.float32)} for _ in range(5)],
    "several rows and inputs": [
        {"x": rng.standard_normal((n, 2, 300)).astype(np.float16), "k": np.arange(n, dtype=np.int64)[:, None]}
        for n in (1, 3, 2)
    ],
    "an empty part": [{"x": np.zeros((0, 600), np.int32)}, {"x": np.ones((2, 600), np.int32)}],
    "a part not contiguous": [{"x": rng.standard_normal((2, 600))}, {"x": rng.standard_normal((3, 1200))[:, ::2]}],
    "the other byte order": [{"x": rng.standard_normal((2, 600)).astype(">f4")} for _ in range(2)],
    "objects": [{"x": np.array([["a"] * 600], dtype=object)}, {"x": np.array([["b"] * 600], dtype=object)}],
    "narrow rows": [{"x": rng.standard_normal((1, 256)).astype(np.float32)} for _ in range(4)],
    "a large batch": [{"x": rng.standard_normal((300, 600)).astype(np.float32)} for _ in range(2)],
}


@pytest.mark.parametrize("name", BATCHES)
def test_a_batch_stacks_as_numpy_concatenates_it(name: str) -> None:
    batch = BATCHES[name]
    names = list(batch[0])
    got, expected = stack_holding_gil(batch, names), stack_inputs(batch, names)
    for key in names:
        assert got[key].dtype == expected[key].dtype
        assert got[key].shape == expected[key].shape
        np.testing.assert_array_equal(got[key], expected[key])
        assert got[key].flags.writeable
