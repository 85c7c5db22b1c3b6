"""Pure tensor operations of the batcher: group keys, stacking requests, padding, splitting outputs.

No threads and no onnxruntime here, so every rule that decides which rows go back to which request can be
tested on plain arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._config import PaddingConfig

__all__ = ["BatchShapeError", "group_key", "pad_and_stack", "split_outputs", "stack_inputs"]

Arrays = Mapping[str, np.ndarray]


class BatchShapeError(Exception):
    """The model returned outputs whose axis 0 is not the batch axis; the batch must not be split."""


def group_key(arrays: Arrays, padding: PaddingConfig | None) -> tuple[Any, ...]:
    """Requests with equal keys may share a batch: same non-batch shapes (ignoring a padded axis)."""
    if padding is None:
        return tuple([array.shape[1:] for array in arrays.values()])
    return tuple(
        [
            _without_axis(array.shape, padding.axis) if name == padding.input else array.shape[1:]
            for name, array in arrays.items()
        ]
    )


def _without_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    return (*shape[1:axis], -1, *shape[axis + 1 :])


def stack_inputs(requests: Sequence[Arrays], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate the requests' inputs along axis 0 (a single request is passed through uncopied)."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([request[name] for request in requests]) for name in names}


def pad_and_stack(
    requests: Sequence[Arrays], names: Sequence[str], padding: PaddingConfig
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Pad ``padding.input`` along ``padding.axis`` to the longest request, then stack.

    Returns the stacked inputs and each request's own length along that axis (to crop outputs back).
    """
    lengths = [request[padding.input].shape[padding.axis] for request in requests]
    longest = max(lengths)
    stacked = {}
    for name in names:
        if name != padding.input or len(set(lengths)) == 1:
            stacked[name] = np.concatenate([request[name] for request in requests])
            continue
        parts = []
        for request, length in zip(requests, lengths, strict=True):
            array = request[name]
            if length < longest:
                widths = [(0, 0)] * array.ndim
                widths[padding.axis] = (0, longest - length)
                array = np.pad(array, widths, constant_values=np.array(padding.value, dtype=array.dtype))
            parts.append(array)
        stacked[name] = np.concatenate(parts)
    return stacked, lengths


def split_outputs(
    outputs: Sequence[Any],
    names: Sequence[str],
    row_counts: Sequence[int],
    *,
    crop: tuple[Mapping[str, int], Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """Cut each output back into one mapping per request, in order, as views (no copies).

    Raises:
        BatchShapeError: an output's axis 0 does not have one entry per stacked row.
    """
    total = sum(row_counts)
    for name, output in zip(names, outputs, strict=True):
        if len(output) != total:
            raise BatchShapeError(f"output {name!r} has {len(output)} rows for a batch of {total}")
    if len(row_counts) == 1 and crop is None:
        return [dict(zip(names, outputs, strict=True))]
    results = []
    start = 0
    for _index, rows in enumerate(row_counts):
        stop = start + rows
        results.append({name: output[start:stop] for name, output in zip(names, outputs, strict=True)})
        start = stop
    if crop is not None:
        axes, lengths = crop
        for result, length in zip(results, lengths, strict=True):
            for name, axis in axes.items():
                index_ = [slice(None)] * result[name].ndim
                index_[axis] = slice(0, length)
                result[name] = result[name][tuple(index_)]
    return results
