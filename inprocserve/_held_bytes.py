"""What a copy of a request's arrays keeps in memory, for the bounds on copies kept aside (promotion samples,
shadow copies).

``ndarray.nbytes`` counts an array's buffer: for numbers that is all of it, but a text input (a
``tensor(string)`` model's, an ``object`` array) holds 8-byte pointers there, to strings that the copy keeps
alive. Counted by ``nbytes`` alone, 256 samples of 500 KB texts weighed 16 KB and held 128 MB.

A classifier's ZipMap answers a list of ``{class: score}`` dicts, which a shadow copy keeps as a
[rows, classes] float64 array (``_shadow._comparable``): counted as that array.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["held_bytes"]


def held_bytes(values: Iterable[Any]) -> int:
    """Bytes held by the arrays among ``values``: their buffers, the elements of ``object`` arrays, and a
    ZipMap's class scores as the float64 array a shadow copy makes of them."""
    total = 0
    for value in values:
        if isinstance(value, np.ndarray):
            total += value.nbytes
            if value.dtype.kind == "O":  # (only what is copied aside is weighed: a sampled request, a shadow)
                total += sum(map(sys.getsizeof, value.flat))
        elif isinstance(value, list):  # a ZipMap's rows of class scores
            total += 8 * sum(len(row) for row in value if isinstance(row, dict))
    return total
