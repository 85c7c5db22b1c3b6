"""The same-rows rule of a signature, for a version that never merges nor slices requests (apart_rows)."""

from __future__ import annotations

import numpy as np
import pytest

from inprocserve import InvalidInputError
from inprocserve._signature import Signature, TensorSpec

FLOAT = np.dtype(np.float32)
FEEDS = {"a": np.ones((1, 4), np.float32), "b": np.ones((3, 4), np.float32)}


def _two_inputs() -> Signature:
    """``a[?, 4]`` and ``b[?, 4]``, each with its output: axis 0 unnamed, so alike as far as the file tells."""
    return Signature(
        [TensorSpec("a", "tensor(float)", FLOAT, (None, 4)), TensorSpec("b", "tensor(float)", FLOAT, (None, 4))],
        [TensorSpec("ya", "tensor(float)", FLOAT, (None, 1)), TensorSpec("yb", "tensor(float)", FLOAT, (None, 1))],
    )


def test_a_signature_that_may_be_merged_refuses_inputs_of_different_rows() -> None:
    with pytest.raises(InvalidInputError, match="input 'b': has 3 rows but the other inputs have 1"):
        _two_inputs().validate(FEEDS, max_rows=16)


def test_apart_rows_takes_inputs_of_different_rows_and_keeps_the_other_checks() -> None:
    apart = _two_inputs().bounded({"a": (0.0, 2.0)}).apart_rows()
    arrays, rows = apart.validate(FEEDS, max_rows=16)
    assert rows == 1 and arrays["b"].shape == (3, 4)
    assert apart.batchable  # (as the declared shapes tell: what the scoring plan and the protocol read)
    with pytest.raises(InvalidInputError, match="expected size 4 on axis 1"):
        apart.validate({"a": FEEDS["a"], "b": np.ones((3, 5), np.float32)}, max_rows=16)
    with pytest.raises(InvalidInputError, match="'a'"):  # the bound, kept
        apart.validate({"a": FEEDS["a"] * 5, "b": FEEDS["b"]}, max_rows=16)
    assert apart.tying([]).validate(FEEDS, max_rows=16)[1] == 1
    # a version that merges after all (sharing_rows) checks them again
    with pytest.raises(InvalidInputError, match="has 3 rows"):
        apart.sharing_rows().validate(FEEDS, max_rows=16)
