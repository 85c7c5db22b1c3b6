"""Pure tensor operations of the batcher: group keys, stacking requests, padding, splitting outputs.

No threads and no onnxruntime here, so every rule that decides which rows go back to which request can be
tested on plain arrays.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ._config import PaddingConfig

__all__ = [
    "BatchShapeError",
    "check_rows",
    "first_problem",
    "group_key",
    "pad_and_stack",
    "mates_problem",
    "row_mates_problems",
    "rows_problem",
    "split_outputs",
    "stack_inputs",
]

Arrays = Mapping[str, np.ndarray]


class BatchShapeError(Exception):
    """The model returned outputs whose axis 0 is not the batch axis; the batch must not be split."""


def group_key(arrays: Arrays, padding: PaddingConfig | None) -> tuple[Any, ...]:
    """Requests with equal keys may share a batch: same non-batch shapes, a padded axis's length counted by
    its power of two only (1, 2-3, 4-7, 8-15, ...).

    Padded to the longest in its batch, a request of 8 tokens beside one of 100,000 would cost as much as the
    long one (its memory and time, and for attention models their square), and one long request would make
    its whole batch 64 times its data: with lengths of one power of two, padding at most doubles a request.
    """
    if padding is None:
        return tuple([array.shape[1:] for array in arrays.values()])
    pads = padding.inputs
    lengths = {array.shape[pads[name]] for name, array in arrays.items() if name in pads and array.ndim > pads[name]}
    if 1 in lengths and len(lengths) > 1:
        # A padded input one step long beside longer ones (a mask the model broadcasts): padded, it would stay
        # one step while the others grow, and the padded steps would go unmasked (the answer would follow the
        # batch's longest request). Such a request shares a batch only with requests of its exact shapes.
        return ("exact", *[array.shape[1:] for array in arrays.values()])
    return tuple(
        [_bucketed_axis(array.shape, pads[name]) if name in pads else array.shape[1:] for name, array in arrays.items()]
    )


def _bucketed_axis(shape: tuple[int, ...], axis: int) -> tuple[int, ...]:
    """``shape`` past axis 0, the padded ``axis`` replaced by its length's bucket (negative: never a size)."""
    return (*shape[1:axis], -1 - int(shape[axis]).bit_length(), *shape[axis + 1 :])


def stack_inputs(requests: Sequence[Arrays], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Concatenate the requests' inputs along axis 0 (a single request is passed through uncopied)."""
    if len(requests) == 1:
        return dict(requests[0])
    return {name: np.concatenate([request[name] for request in requests]) for name in names}


def pad_and_stack(
    requests: Sequence[Arrays], names: Sequence[str], padding: PaddingConfig
) -> tuple[dict[str, np.ndarray], list[int]]:
    """Pad each input of ``padding.inputs`` along its axis to the batch's longest, then stack.

    Returns the stacked inputs and each request's own length (to crop outputs back).
    """
    first, first_axis = next(iter(padding.inputs.items()))
    lengths = [request[first].shape[first_axis] for request in requests]
    stacked = {}
    for name in names:
        parts = [request[name] for request in requests]
        axis = padding.inputs.get(name)
        if axis is not None:
            longest = max(part.shape[axis] for part in parts)
            parts = [_pad_to(part, axis, longest, padding.value_for(name)) for part in parts]
        stacked[name] = np.concatenate(parts)
    return stacked, lengths


def _pad_to(array: np.ndarray, axis: int, size: int, value: float) -> np.ndarray:
    if array.shape[axis] == size:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, size - array.shape[axis])
    return np.pad(array, widths, constant_values=np.array(value).astype(array.dtype))


def check_rows(outputs: Sequence[Any], names: Sequence[str], rows: int, *, what: str = "a batch") -> None:
    """Check that every output has one entry on axis 0 per row run.

    Raises:
        BatchShapeError: an output is 0-d, or its axis 0 has another length (a data-dependent count such as
            detections, or an axis that is not the rows): cut by position, its entries would go to the wrong
            requests.
    """
    for name, output in zip(names, outputs, strict=True):
        shape = np.shape(output)
        if not shape:
            raise BatchShapeError(f"output {name!r} is a scalar (0-d) for {what} of {rows} rows: it has no batch axis")
        if shape[0] != rows:
            raise BatchShapeError(
                f"output {name!r} has {shape[0]} rows for {what} of {rows}: its outputs have no batch axis"
            )


def rows_problem(names: Sequence[str], alone: Sequence[Sequence[Any]], stacked: Sequence[Any]) -> str | None:
    """Why answers of rows run together are not those of the same rows run alone (``None``: they are).

    ``alone`` holds the outputs of one-row runs; ``stacked`` those of one run of the same rows, stacked in
    that order. Each output must have one row per row run, the same shape for each row alone (an inner length
    that follows the values, padded to a run's longest row, gives merged callers each other's length), and
    the stacked run's must equal the alone runs' concatenated: exactly for integers, bools and strings; for
    floats within a relative 1e-3 of each value, or of the output's largest value (1e-2 for float16), which
    tolerates the different kernels onnxruntime picks for different batch sizes, and NaN equal to NaN.
    """
    for index, name in enumerate(names):
        together = stacked[index]
        parts = [outputs[index] for outputs in alone]
        for rows, output in (*((1, part) for part in parts), (len(parts), together)):
            shape = np.shape(output)
            if not shape or shape[0] != rows:
                return (
                    f"output {name!r} has shape {list(shape)} for a run of {rows} row(s): its axis 0 is not the "
                    "rows (a count of things found, or another axis)"
                )
        shapes = {tuple(np.shape(part)) for part in parts}
        if len(shapes) > 1:  # (padded to the longest row of a run: merged, a caller gets another's length)
            one, other = sorted(shapes)[:2]
            return (
                f"output {name!r} has shape {list(one)} for one row and {list(other)} for another: its inner "
                "length depends on the rows"
            )
        together = np.asarray(together)
        expected_shape = (len(parts), *next(iter(shapes))[1:])
        if expected_shape != together.shape:
            return (
                f"output {name!r} has shape {list(together.shape)} for rows run together but "
                f"{list(expected_shape)} for the same rows run alone"
            )
        if together.size <= _BLOCK:
            alike = [np.concatenate(parts)]
            pairs = [(alike[0], together)]
        else:  # (each row against its slice of the run: no concatenated copy of the rows alone)
            alike = [np.asarray(part) for part in parts]
            pairs = [(part, together[row : row + 1]) for row, part in enumerate(alike)]
        rtol = 1e-2 if np.float16 in (np.result_type(*alike), together.dtype) else 1e-3
        difference = _difference(pairs, rtol=rtol, floor=rtol, scale=alike)
        if difference is not None:
            return (
                f"output {name!r} of rows run together differs from the same rows run alone ({difference}): a "
                "row's answer depends on the other rows of its run (a statistic over the batch: dynamic "
                "quantization, batch normalization in training mode, a softmax or mean over axis 0)"
            )
    return None


def mates_problem(names: Sequence[str], together: Sequence[Any], twins: Sequence[Sequence[Any]]) -> str | None:
    """Why a row's answer in a run beside another row is not its answer in a run of the same size beside a copy of
    itself (``None``: it is), the check :func:`rows_problem` cannot make within its tolerance.

    ``together`` holds the outputs of one run of rows ``r0, r1, ...``; ``twins[i]`` those of a run of the same
    number of rows, every one ``ri``. Runs of one size use the same kernels, so a row-wise model answers each
    row the same in both, to the rounding of kernels whose sums' order varies from run to run; :func:`rows_problem`
    compares runs of different sizes, whose kernels may differ (a GPU's TF32), so it allows a relative 1e-3 of
    an output's largest value, under which a batch statistic beside large values of the same output hid
    (``concat(1000 x, x - mean(x, axis=0))``: each merged caller got its row minus the others' mean). Here each
    value may differ by a relative 1e-3 of itself, plus 1e-6 of the output's largest value. Outputs whose shapes
    do not follow the rows are :func:`rows_problem`'s to report (it runs first); one that does there but has
    another shape beside a copy of its row has an inner length that depends on the other rows of its run.
    """
    return first_problem([row_mates_problems(names, together, row, outputs) for row, outputs in enumerate(twins)])


def row_mates_problems(
    names: Sequence[str], together: Sequence[Any], row: int, outputs: Sequence[Any]
) -> list[str | None]:
    """:func:`mates_problem` for row ``row`` alone, ``outputs`` those of its run beside copies of itself: what
    differs in each output (``None``: nothing), so that a caller may drop each such run's outputs before the
    next (:func:`first_problem` then names the problem :func:`mates_problem` names)."""
    problems: list[str | None] = []
    for index, name in enumerate(names):
        merged = np.asarray(together[index])
        alike = np.asarray(outputs[index])
        problems.append(None)
        if merged.ndim == 0 or row >= merged.shape[0]:
            continue  # (no rows on axis 0: rows_problem's to report, the next output's to check)
        if alike.shape != merged.shape:
            problems[-1] = (
                f"output {name!r} has shape {list(merged.shape)} for a row run beside another but "
                f"{list(alike.shape)} for the same row run beside a copy of itself: its inner length depends "
                "on the other rows of its run"
            )
            continue
        # (slices, not items: an item of a 1-D output of strings is a str, with no dtype)
        difference = _difference([(alike[row : row + 1], merged[row : row + 1])], rtol=1e-3, floor=1e-6, scale=[alike])
        if difference is not None:
            problems[-1] = (
                f"output {name!r} of a row run beside another differs from the same row run beside a copy of "
                f"itself ({difference}): a row's answer depends on the other rows of its run (a statistic over "
                "the batch: dynamic quantization, batch normalization in training mode, a softmax or mean over "
                "axis 0)"
            )
    return problems


def first_problem(rows: Sequence[Sequence[str | None]]) -> str | None:
    """The problem :func:`mates_problem` names among :func:`row_mates_problems`' of each row: the first output's
    with one, at its first row with one (``None``: none)."""
    for problems in zip(*rows, strict=True):
        found: str | None = next((problem for problem in problems if problem is not None), None)
        if found is not None:
            return found
    return None


_BLOCK = 1 << 20
"""Values compared at a time: the comparison's float64 temporaries stay a few MiB, however large the rows."""


def _difference(
    pairs: Sequence[tuple[np.ndarray, np.ndarray]], *, rtol: float, floor: float, scale: Sequence[np.ndarray]
) -> str | None:
    """How each pair's ``got`` differs from its ``expected``, of the same shape (``None``: none does): exactly for
    integers, bools and strings; for floats beyond a relative ``rtol`` of each value plus ``floor`` of the largest
    finite value of ``scale`` (the tolerances of :func:`rows_problem` and :func:`mates_problem`), NaN equal to
    NaN. Compared :data:`_BLOCK` values at a time, so that no copy of a whole output is made (a model's rows may
    be hundreds of MiB each, and the load compares outputs of a few)."""
    if any(expected.dtype.kind not in "fc" or got.dtype.kind not in "fc" for expected, got in pairs):
        return None if all(np.array_equal(expected, got) for expected, got in pairs) else "values differ"
    blocks = list(zip(_blocks([expected for expected, _ in pairs]), _blocks([got for _, got in pairs]), strict=True))
    with np.errstate(invalid="ignore", over="ignore"):
        largest = 0.0
        for block in _blocks(scale):
            finite = np.abs(block[np.isfinite(block)].astype(np.float64))
            largest = max(largest, float(finite.max())) if finite.size else largest
        atol = floor * largest
        if all(np.allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True) for expected, got in blocks):
            return None
        widest: float | None = None
        for expected, got in blocks:
            gap = np.abs(got.astype(np.float64) - expected.astype(np.float64))
            gap = gap[np.isfinite(gap)]
            widest = max(widest or 0.0, float(gap.max())) if gap.size else widest
    return f"by up to {widest:.3g}" if widest is not None else "NaN or infinity where the other has a number"


def _blocks(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The values of ``arrays`` in order, :data:`_BLOCK` at a time: one array where they are no more (the usual
    outputs: one comparison, not one per row), else each array's in views (where it is contiguous)."""
    if len(arrays) == 1 and arrays[0].size <= _BLOCK:
        return list(arrays)  # (as they are: the usual output, checked at every load)
    flat = [array.reshape(-1) for array in arrays]
    if sum(each.size for each in flat) <= _BLOCK:
        return [np.concatenate(flat)] if len(flat) > 1 else flat
    return [each[start : start + _BLOCK] for each in flat for start in range(0, max(each.size, 1), _BLOCK)]


def split_outputs(
    outputs: Sequence[Any],
    names: Sequence[str],
    row_counts: Sequence[int],
    *,
    crop: tuple[Mapping[str, int], Sequence[int]] | None = None,
) -> list[dict[str, Any]]:
    """Cut each output back into one mapping per request, in order, as views (no copies).

    Raises:
        BatchShapeError: an output's axis 0 does not have one entry per stacked row, or an axis to crop does
            not have the padded length.
    """
    check_rows(outputs, names, sum(row_counts))
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
        padded = max(lengths)
        for name, output in zip(names, outputs, strict=True):
            axis = axes.get(name)
            if axis is not None and output.shape[axis] != padded:
                # An axis of its own (candidates, labels), not the padded length: cropped, each answer would
                # lose entries whenever its request shared a padded batch, and keep them alone.
                raise BatchShapeError(
                    f"output {name!r} axis {axis} has {output.shape[axis]} entries where the inputs were padded "
                    f"to {padded}: it does not follow their length; remove it from batching.padding.outputs"
                )
        for result, length in zip(results, lengths, strict=True):
            for name, axis in axes.items():
                index = [slice(None)] * result[name].ndim
                index[axis] = slice(0, length)
                result[name] = result[name][tuple(index)]
    return results
