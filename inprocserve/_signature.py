"""A model's inputs and outputs, and the validation of a request against them.

Validation runs on the caller's thread before anything is queued, so a bad request fails alone and at
once, with a message that names the input, what the model expects and what was given.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ._brief import brief
from ._errors import InvalidInputError

__all__ = [
    "ANY_RANK",
    "UNREADABLE",
    "Bounds",
    "NodeInfo",
    "Signature",
    "TensorSpec",
    "convertible",
    "incompatibilities",
    "is_arrow_stream",
]

Dim = int | str | None
ANY_RANK = "any rank"
"""How a tensor of unknown rank (no shape declared) is described: ``x: tensor(float) [any rank]``."""
Bounds = tuple[float | None, float | None]
"""An input's ``(min, max)``, as configured (``ModelConfig.inputs``); ``None``: unbounded on that side."""

# onnxruntime's type strings for the tensor element types it can take from numpy.
_ONNX_TO_NUMPY: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(double)": np.dtype(np.float64),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(uint16)": np.dtype(np.uint16),
    "tensor(uint32)": np.dtype(np.uint32),
    "tensor(uint64)": np.dtype(np.uint64),
    "tensor(bool)": np.dtype(np.bool_),
    "tensor(string)": np.dtype(object),
}


class NodeInfo(Protocol):
    """What onnxruntime's ``NodeArg`` offers; kept as a protocol so this module never imports it."""

    @property
    def name(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def shape(self) -> Sequence[Dim] | None: ...


def _is_dynamic(dim: Dim) -> bool:
    return not isinstance(dim, int) or dim < 0


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output: its name, element type and shape (``None``/symbol for dynamic axes)."""

    name: str
    onnx_type: str
    dtype: np.dtype[Any] | None
    """The numpy dtype, or ``None`` for non-tensor values (sequences, maps)."""
    shape: tuple[Dim, ...] | None
    raw_bytes: bool = False
    """For a string tensor: ``bytes`` elements are sent as they are (a remote server's ``BYTES`` tensor, which
    carries any bytes), not decoded as the UTF-8 text an ONNX string tensor holds."""

    @classmethod
    def from_node(cls, node: NodeInfo, *, any_rank: bool = False) -> TensorSpec:
        """``any_rank``: the model file declares no shape for it, which onnxruntime reports as ``[]``, as it
        reports a scalar; such a tensor's shape is ``None`` (see :mod:`._declared_shapes`)."""
        shape = None if node.shape is None or (any_rank and not node.shape) else tuple(node.shape)
        return cls(node.name, node.type, _ONNX_TO_NUMPY.get(node.type), shape)

    @property
    def is_string(self) -> bool:
        return self.onnx_type == "tensor(string)"

    @property
    def is_maps_per_row(self) -> bool:
        """A sequence of maps, one per row of the input: what a ZipMap answers (skl2onnx's classifiers)."""
        return _maps_per_row(self)

    @property
    def has_dynamic_batch(self) -> bool:
        """True when axis 0 exists and is dynamic, so rows of several requests can be stacked on it."""
        return self.dtype is not None and bool(self.shape) and _is_dynamic(self.shape[0])  # type: ignore[index]

    def describe(self) -> str:
        dims = ANY_RANK if self.shape is None else ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.onnx_type} [{dims}]"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "type": self.onnx_type, "shape": None if self.shape is None else list(self.shape)}


class Signature:
    """The model's signature, with the checks precomputed so validation stays cheap per request.

    Thread-safe: immutable after construction.
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        rows_shared: bool = False,
        rows_apart: bool = False,
        tied_axes: Sequence[Sequence[tuple[str, int]]] = (),
        broadcast_axes: Collection[tuple[str, int]] = (),
    ) -> None:
        self.inputs: tuple[TensorSpec, ...] = tuple(inputs)
        self.outputs: tuple[TensorSpec, ...] = tuple(outputs)
        self.input_names: frozenset[str] = frozenset(spec.name for spec in self.inputs)
        self.rows_shared = rows_shared
        self.rows_apart = rows_apart
        """The version never merges requests nor slices one (``batching.rows_independent = "no"``, or the load
        found a row's answer is not its own): nothing then needs a request's inputs to have the same rows, and
        they are not checked to (see :meth:`apart_rows`)."""
        self.tied_axes: tuple[tuple[tuple[str, int], ...], ...] = tuple(tuple(group) for group in tied_axes)
        """Inner axes of inputs, named apart, that the load found the model needs of one length (a legacy
        ``torch.onnx.export`` given ``dynamic_axes`` as lists names ``input_ids`` and ``attention_mask``'s
        sequence axes apart): each group ``((input, axis), ...)`` is checked as a shared name is."""
        self.broadcast_axes: frozenset[tuple[str, int]] = frozenset(broadcast_axes)
        """The places among :attr:`tied_axes` where the load found the model takes a length of 1 against any
        other (it broadcasts: an attention mask of one step over every token); a 1 there is not checked."""
        self.bounds: Mapping[str, Bounds] = {}
        """Input name -> the values it may hold, checked by :meth:`validate` (see :meth:`bounded`)."""
        self.output_names: tuple[str, ...] = tuple(spec.name for spec in self.outputs)
        unsupported = [spec.describe() for spec in self.inputs if spec.dtype is None]
        if unsupported:
            raise ValueError(f"inputs of these types cannot be fed from numpy: {', '.join(unsupported)}")
        self.axis_problem: str | None = _batch_axis_problem(self.inputs, self.outputs)
        """Why axis 0 can never be the rows, whatever the load's run of the model or the config says (no
        dynamic axis 0, a non-tensor output, a name of axis 0 that names another axis); ``None``: it may be."""
        self.rows_named_apart: str | None = (
            None if self.axis_problem is not None else _rows_named_apart(self.inputs, self.outputs)
        )
        """How axis 0 is named apart on two inputs, or on an output unlike the inputs (``None``: alike, or
        unnamed). Exporters name each tensor's rows apart (tf2onnx's ``unk__10``/``unk__12``, torch's
        ``input_ids_dynamic_axes_1``), so that alone does not refuse merging; but a parameter ``indices[k]``
        or a count ``[n_found, 4]`` is named so too, and then only the load's run of the model can tell:
        merging is refused when that run cannot be made (unless ``batching.rows_independent = "yes"``)."""
        inputs_apart = None if self.axis_problem is not None or rows_shared else _inputs_named_apart(self.inputs)
        self.unbatchable_reason: str | None = self.axis_problem or inputs_apart
        """Why the declared shapes do not show that axis 0 is one batch axis of every input and output
        (``None``: as far as they tell, it is, or ``rows_shared`` says that the inputs named apart share it)."""
        self.batchable: bool = self.unbatchable_reason is None
        """Rows of several requests can be stacked on axis 0 of every input and split off every output, as far
        as the declared shapes tell (the load also runs the model to check it: ``ModelVersion``); then every
        input of a request must have the same rows."""
        self._same_rows: bool = (self.batchable and not rows_apart) or self.rows_in_maps()
        """Every input of a request must have the same rows: axis 0 is the rows of every input, as the declared
        shapes tell, and the version may merge or slice requests on it (not :attr:`rows_apart`: a run of one
        request, whole, is what onnxruntime itself takes, whatever rows each input has), or as they tell of
        every output but a ZipMap's maps (a scikit-learn classifier, whose mismatched inputs failed inside
        onnxruntime's Concat as an InferenceError, not naming them)."""
        self.has_dynamic_inner_axes: bool = any(
            spec.shape is None or any(_is_dynamic(d) for d in spec.shape[1:]) for spec in self.inputs
        )
        """Some input has a dynamic axis other than axis 0, so requests may differ in shape beyond rows."""
        # Per input: (spec, rank or None, ((axis, size), ...) for fixed axes).
        self._checks = tuple(
            (
                spec,
                None if spec.shape is None else len(spec.shape),
                () if spec.shape is None else tuple((a, d) for a, d in enumerate(spec.shape) if not _is_dynamic(d)),
            )
            for spec in self.inputs
        )
        # Named symbolic dims that appear more than once must agree across inputs ("batch", "seq" ...).
        places: dict[str, list[tuple[str, int]]] = {}
        for spec in self.inputs:
            for axis, dim in enumerate(spec.shape or ()):
                if isinstance(dim, str) and dim:
                    places.setdefault(dim, []).append((spec.name, axis))
        self._shared_symbols = {symbol: where for symbol, where in places.items() if len(where) > 1}
        for index, group in enumerate(self.tied_axes):
            self._shared_symbols[f"{_TIED}{index}"] = list(group)
        self._single = self.inputs[0].name if len(self.inputs) == 1 else None
        output_rows = {spec.shape[0] for spec in self.outputs if spec.shape and isinstance(spec.shape[0], str)}
        self._rows_from: str | None = None
        """Where the inputs need not share axis 0: the input whose axis 0 is named as an output's (the rows the
        answers have; a table beside it, ``[k, 4]``, is not), which holds a request's rows whatever the order
        the model declares its inputs in (the first input's, it was: ``max_request_rows`` bounded a table
        declared first). ``None``: the first input's, as the declared shapes tell nothing better."""
        if not self._same_rows:
            self._rows_from = next(
                (spec.name for spec in self.inputs if spec.shape and spec.shape[0] and spec.shape[0] in output_rows),
                None,
            )
        only = self.inputs[0] if len(self.inputs) == 1 else None
        self._plain: tuple[str, np.dtype[Any], int, tuple[tuple[int, Any], ...]] | None = None
        """A one-input model's (name, dtype, rank, fixed axes), for :meth:`validate`'s shortest way: a dict holding
        one array of that dtype, rank and fixed sizes, of 1 to ``max_rows`` rows (``None``: no such way)."""
        if only is not None and only.shape and only.dtype is not None and only.dtype is not _TEXT_DTYPE:
            if not only.is_string and not self._shared_symbols:
                self._plain = (only.name, only.dtype, self._checks[0][1] or 0, self._checks[0][2])
        self.fixed_rows: int | None = _fixed_rows(self.inputs, self.outputs)
        """The rows of every run where the model fixes axis 0 at one size on every input and output (``None``:
        it does not): a model exported without a dynamic batch axis (``torch.onnx.export`` without
        ``dynamic_axes`` fixes it at the example's 1) takes exactly that many rows per request, and batch
        scoring cuts an input into requests of that many rows."""
        self._fixed_rows_hint = (
            ""
            if self.fixed_rows is None
            else f" (the model takes exactly {self.fixed_rows} row{'s' if self.fixed_rows > 1 else ''} per request: "
            f"its file fixes axis 0 of every input and output; predict_many and score cut "
            f"{'any rows' if self.fixed_rows == 1 else f'a multiple of {self.fixed_rows} rows'} into such requests)"
        )

    @classmethod
    def from_nodes(
        cls,
        inputs: Sequence[NodeInfo],
        outputs: Sequence[NodeInfo],
        *,
        any_rank: tuple[Collection[str], Collection[str]] = ((), ()),
    ) -> Signature:
        """``any_rank``: the names of the inputs, and of the outputs, that the model file declares with no
        shape (:func:`._declared_shapes.shapeless_tensors`), which onnxruntime's nodes cannot tell from scalars."""
        unranked_inputs, unranked_outputs = any_rank
        return cls(
            [TensorSpec.from_node(n, any_rank=n.name in unranked_inputs) for n in inputs],
            [TensorSpec.from_node(n, any_rank=n.name in unranked_outputs) for n in outputs],
        )

    def empty_answer(self, *, as_run: bool = False) -> dict[str, Any]:
        """Zero rows of each output, with the output's dtype and axes: what an input of no rows is answered with
        (an axis the model leaves open, named or unknown, gets size 0: there is nothing to size it by).

        ``as_run``: as a run of the model would answer (batch scoring's answer to an empty batch, handed out
        beside the answers of runs): a string output as onnxruntime's object array, and a sequence of maps (a
        ZipMap: a scikit-learn classifier's probabilities, one map per row) as an empty list. Otherwise (the
        columns of an output file) a string output is a ``str`` array and a sequence is refused.

        Raises:
            InvalidInputError: an output is not a tensor (a sequence or a map), so no empty answer can be shaped.
        """
        answer: dict[str, Any] = {}
        for spec in self.outputs:
            if as_run and _maps_per_row(spec):
                answer[spec.name] = []
                continue
            if spec.dtype is None:
                raise InvalidInputError(
                    f"the input has no rows, and output {spec.describe()} is not a tensor to give zero rows of; "
                    "give an input with at least one row"
                )
            dims = [d if isinstance(d, int) and d >= 0 else 0 for d in (spec.shape or (None,))[1:]]
            dtype = np.dtype(np.str_) if spec.is_string and not as_run else spec.dtype
            answer[spec.name] = np.zeros((0, *dims), dtype=dtype)
        return answer

    def rows_in_maps(self) -> bool:
        """Whether the only outputs that keep axis 0 from being the rows are sequences of maps, one per row (a
        ZipMap: such a model is run request by request, yet an input of no rows has an answer of no rows,
        :meth:`empty_answer` with ``as_run``)."""
        rest = [spec for spec in self.outputs if not _maps_per_row(spec)]
        return len(rest) < len(self.outputs) and Signature(self.inputs, rest, rows_shared=self.rows_shared).batchable

    def rows_beside_values(self) -> bool:
        """Whether the only inputs that keep axis 0 from being the rows are single values (rank 0: a scale or a
        threshold given with each request, beside inputs of rows), with every other input and output naming
        axis 0 alike or leaving it unnamed (a ZipMap's maps aside): such a model's requests are never merged
        (two may give different values), yet an input of no rows has an answer of no rows
        (:meth:`empty_answer`, as batch scoring answers an empty batch)."""
        rows = [spec for spec in self.inputs if spec.shape != ()]
        if not rows or len(rows) == len(self.inputs):
            return False
        beside = Signature(rows, [spec for spec in self.outputs if not _maps_per_row(spec)])
        return beside.batchable and beside.rows_named_apart is None

    def sharing_rows(self) -> Signature:
        """This signature for a version that merges requests although its inputs name axis 0 apart (the
        load's run of the model, or ``batching.rows_independent = "yes"``, took them for one batch axis):
        every input of a request must then have the same rows, or stacked requests would be split wrongly."""
        return Signature(
            self.inputs, self.outputs, rows_shared=True, tied_axes=self.tied_axes, broadcast_axes=self.broadcast_axes
        ).bounded(self.bounds)

    def apart_rows(self) -> Signature:
        """This signature for a version that never merges requests nor slices one although the declared shapes
        make axis 0 one batch axis (``batching.rows_independent = "no"``, or the load found a row's answer is not
        its own): a request's inputs need not have the same rows then, as where the file names axis 0 apart on
        each (``a[n, 4]`` beside ``b[m, 4]``: the model may take a table beside the rows). It was refused, as
        if it were to be merged, while the same model with axis 0 named apart was served."""
        return Signature(
            self.inputs, self.outputs, rows_apart=True, tied_axes=self.tied_axes, broadcast_axes=self.broadcast_axes
        ).bounded(self.bounds)

    def tying(
        self, groups: Sequence[Sequence[tuple[str, int]]], broadcast: Collection[tuple[str, int]] = ()
    ) -> Signature:
        """This signature with ``groups`` of inputs' inner axes that must be of one length (:attr:`tied_axes`),
        but where ``broadcast`` places may be 1 long (:attr:`broadcast_axes`)."""
        return Signature(
            self.inputs,
            self.outputs,
            rows_shared=self.rows_shared,
            rows_apart=self.rows_apart,
            tied_axes=(*self.tied_axes, *groups),
            broadcast_axes=self.broadcast_axes | set(broadcast),
        ).bounded(self.bounds)

    def bounded(self, bounds: Mapping[str, Bounds]) -> Signature:
        """This signature with the values of inputs bounded: ``bounds`` maps an input name to its ``(min,
        max)``, and :meth:`validate` refuses a request holding a value outside them. Without any bound, this
        signature itself: the validation of a model without bounds does nothing more per request.

        Raises:
            ValueError: a name the model has no input of, or an input of strings or booleans, or of an integer
                type none of whose values lies within the bounds (``min = 300`` for a ``uint8``).
        """
        checks = _bound_checks(self.inputs, bounds)
        if not checks:
            return self
        return _BoundedSignature(
            self.inputs,
            self.outputs,
            rows_shared=self.rows_shared,
            rows_apart=self.rows_apart,
            tied_axes=self.tied_axes,
            broadcast_axes=self.broadcast_axes,
            bounds=bounds,
            checks=checks,
        )

    def dynamic_inner_axes(self) -> list[tuple[tuple[str, int], ...]]:
        """The inputs' dynamic axes other than axis 0, one entry per length a request chooses: a name's every
        place (``seq`` of two inputs is one length), or one unnamed axis alone."""
        named: dict[str, list[tuple[str, int]]] = {}
        units: list[tuple[tuple[str, int], ...]] = []
        for spec in self.inputs:
            for axis, dim in enumerate(spec.shape or ()):
                if axis == 0 or not _is_dynamic(dim):
                    continue
                if isinstance(dim, str) and dim:
                    if dim not in named:
                        named[dim] = []
                        units.append(())  # (its place, filled below in order of first appearance)
                    named[dim].append((spec.name, axis))
                else:
                    units.append(((spec.name, axis),))
        names = iter(named.values())
        return [unit if unit else tuple(next(names)) for unit in units]

    def to_dict(self) -> dict[str, Any]:
        return {
            "inputs": [spec.to_dict() for spec in self.inputs],
            "outputs": [spec.to_dict() for spec in self.outputs],
            "batchable": self.batchable,
        }

    # -- validation -------------------------------------------------------------------------------------

    def validate(
        self, inputs: object, *, max_rows: int, reject_nan: bool = False, no_rows_ok: bool = False
    ) -> tuple[dict[str, np.ndarray], int]:
        """Check and coerce a request; return ``(arrays by input name, rows)``. ``no_rows_ok``: a request of 0
        rows passes (batch scoring answers an iterable's empty batch without running it: :meth:`empty_answer`),
        also where the model fixes axis 0 at a size (its other axes are checked all the same).

        Raises:
            InvalidInputError: on unknown, missing or extra names, a dtype that cannot be cast safely,
                non-numeric values, a wrong rank or fixed dimension, inconsistent batch sizes, too many
                rows, or NaN/infinity when ``reject_nan`` is set.
        """
        plain = self._plain
        if plain is not None and not reject_nan:
            # The most common request (a lone predict's): one array, of the input's dtype and shape, by name or
            # bare, taken as it is. Anything else (or any problem) takes the checks below, which say what is wrong.
            name, dtype, plain_rank, plain_fixed = plain
            if type(inputs) is dict:
                array = inputs.get(name) if len(inputs) == 1 else None
            else:
                array = inputs
            if type(array) is np.ndarray and array.dtype is dtype:
                shape = array.shape
                if len(shape) == plain_rank:
                    for axis, size in plain_fixed:
                        if shape[axis] != size:
                            break
                    else:
                        if 0 < shape[0] <= max_rows:
                            return {name: array}, shape[0]
        # a dict, or a bare array (never a mapping), skips the ABC check: it costs 0.5 µs for an array
        if type(inputs) is not dict and (type(inputs) is np.ndarray or not isinstance(inputs, Mapping)):
            # A frame's class has `columns` (pandas', polars'): asked of the class, a tensor, memoryview or tuple
            # pays a lookup, not the frame test (1 to 4 µs a request), nor an instance's __getattr__ (xarray's)
            kind = type(inputs)
            if kind is not np.ndarray and kind is not list and hasattr(kind, "columns") and _is_data_frame(inputs):
                inputs = _frame_inputs(inputs, self)  # its columns by name, as predict_many reads a frame
            elif self._single is None or isinstance(inputs, (str, bytes)):
                names = ", ".join(sorted(self.input_names))
                raise InvalidInputError(
                    f"inputs must be a mapping of input name to array (this model takes: {names}); "
                    f"got {type(inputs).__name__}"
                )
            else:
                inputs = {self._single: inputs}
        if len(inputs) != len(self.inputs) or not self.input_names.issuperset(inputs):
            self._raise_for_names(inputs)
        arrays: dict[str, np.ndarray] = {}
        rows = -1
        for spec, rank, fixed in self._checks:
            array = _coerce(spec, inputs[spec.name])
            if rank is not None:
                if array.ndim != rank:
                    raise InvalidInputError(
                        f"input {spec.name!r}: expected {rank} dimensions {_shape_text(spec.shape)}, "
                        f"got {array.ndim} (shape {list(array.shape)}){_column_hint(spec, array)}"
                    )
                for axis, size in fixed:
                    if array.shape[axis] != size and not (no_rows_ok and axis == 0 and not array.shape[0]):
                        raise InvalidInputError(
                            f"input {spec.name!r}: expected size {size} on axis {axis} {_shape_text(spec.shape)}, "
                            f"got shape {list(array.shape)}{self._fixed_rows_hint if axis == 0 else ''}"
                        )
            if array.ndim:
                if rows < 0:
                    if self._rows_from is None or spec.name == self._rows_from:
                        rows = array.shape[0]
                elif self._same_rows and array.shape[0] != rows:
                    raise InvalidInputError(
                        f"input {spec.name!r}: has {array.shape[0]} rows but the other inputs have {rows}; "
                        "all inputs need the same number of rows"
                    )
            if reject_nan and array.dtype.kind == "f" and not np.isfinite(array).all():
                bad = int(array.size - np.count_nonzero(np.isfinite(array)))
                raise InvalidInputError(
                    f"input {spec.name!r}: holds {bad} NaN or infinite value(s) and this model's nan_policy "
                    "is 'reject'; clean the data or set nan_policy = 'allow'"
                )
            arrays[spec.name] = array
        if self._shared_symbols:
            self._check_shared_symbols(arrays)
        if rows < 0:
            rows = 1
        if rows == 0 and not no_rows_ok:
            raise InvalidInputError("the request has 0 rows; send at least one row")
        if rows > max_rows:
            raise InvalidInputError(
                f"the request has {rows} rows, more than the {max_rows} allowed per request "
                "(batching.max_request_rows); split it into smaller requests"
            )
        return arrays, rows

    def _raise_for_names(self, inputs: Mapping[Any, Any]) -> None:
        bad_keys = [k for k in inputs if not isinstance(k, str)]
        if bad_keys:
            raise InvalidInputError(f"input names must be strings, got {brief(bad_keys[0])}")
        missing = sorted(self.input_names - set(inputs))
        # (the caller's names, maybe a client's: a few of them, each cut short, so the message stays small)
        unknown = [name for name in inputs if name not in self.input_names]
        parts = []
        if missing:
            parts.append(f"missing input(s) {', '.join(map(repr, missing))}")
        if unknown:
            shown = ", ".join(map(brief, sorted(unknown[:_UNKNOWN_SHOWN])))
            more = f" and {len(unknown) - _UNKNOWN_SHOWN} more" if len(unknown) > _UNKNOWN_SHOWN else ""
            parts.append(f"unknown input(s) {shown}{more}")
        expected = ", ".join(spec.describe() for spec in self.inputs)
        raise InvalidInputError(f"{'; '.join(parts)}; the model takes {expected}")

    def _check_shared_symbols(self, arrays: Mapping[str, np.ndarray]) -> None:
        for symbol, where in self._shared_symbols.items():
            sizes = {(name, axis): arrays[name].shape[axis] for name, axis in where}
            if len(set(sizes.values())) > 1:
                tied = symbol.startswith(_TIED)  # (named apart in the file; the load found the model needs them alike)
                if tied:  # (but a length of 1 that the model broadcasts against the others is no mismatch)
                    lengths = {size for place, size in sizes.items() if size != 1 or place not in self.broadcast_axes}
                    if len(lengths) <= 1:
                        continue
                listing = ", ".join(f"{name!r} axis {axis} = {size}" for (name, axis), size in sizes.items())
                if tied:
                    ones = [f"{name!r} axis {axis}" for name, axis in where if (name, axis) in self.broadcast_axes]
                    but = f" ({' and '.join(ones)} may also be 1)" if ones else ""
                    raise InvalidInputError(
                        f"these axes must be of one length{but} (at load the model failed whenever they differed), "
                        f"got {listing}"
                    )
                raise InvalidInputError(f"dimension {symbol!r} must be the same in every input, got {listing}")

    def inputs_without_dynamic_rows(self) -> list[str]:
        """The inputs that are not a tensor with a dynamic axis 0 (no made-up rows can be stacked on them)."""
        return [spec.name for spec in self.inputs if not spec.has_dynamic_batch]

    def distinct_rows(self, inner_size: int = 2) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Two one-row requests whose values differ, the same at every load: floats from a seeded normal, 0
        and 1 for integers (an index valid for any table of two rows or more), False and True, "" and "a";
        fixed inner axes as declared, dynamic ones of ``inner_size``. The load runs them alone and stacked to
        check that a row's answer does not depend on the rows beside it (``ModelVersion``). Only for a
        signature with no :attr:`axis_problem` (every input has a dynamic axis 0)."""
        rng = np.random.default_rng(_PROBE_SEED)
        first: dict[str, np.ndarray] = {}
        second: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            assert spec.dtype is not None and spec.shape is not None
            shape = [1, *(d if isinstance(d, int) and d >= 0 else inner_size for d in spec.shape[1:])]
            if spec.is_string:
                first[spec.name], second[spec.name] = np.full(shape, "", object), np.full(shape, "a", object)
            elif spec.dtype.kind in "biu":
                first[spec.name], second[spec.name] = np.zeros(shape, spec.dtype), np.ones(shape, spec.dtype)
            else:
                first[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
                second[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
        return first, second

    # -- warm-up ----------------------------------------------------------------------------------------

    def made_up_inner_sizes(self) -> tuple[int, ...]:
        """The lengths to try, in turn, for the dynamic inner axes of made-up requests of zeros (the warm-up's,
        the thread probe's, the quantize comparison's) until the model runs on one: 1, then
        :data:`PROBE_INNER_SIZES` where the model has such axes (a convolution of kernel 5 over time fails on
        fewer than 5 steps)."""
        return (1, *PROBE_INNER_SIZES) if self.has_dynamic_inner_axes else (1,)

    def made_up_ranks(self) -> Sequence[int]:
        """The ranks to try, in turn, for the inputs of any rank (declared with no shape) of made-up requests
        (the warm-up's, the thread probe's, the search for tied lengths'), each with every one of
        :meth:`made_up_inner_sizes`: a scalar, then arrays of 1 to :data:`MOST_MADE_UP_RANK` axes (a MatMul
        refuses a scalar). Only a scalar where no input is of any rank (``any_rank`` is then of no use)."""
        shapeless = any(spec.shape is None for spec in self.inputs)
        return range(MOST_MADE_UP_RANK + 1) if shapeless else (0,)

    def synthesize(
        self,
        rows: int,
        inner_size: int = 1,
        sizes: Mapping[tuple[str, int], int] | None = None,
        *,
        any_rank: int | Mapping[str, int] = 0,
    ) -> dict[str, np.ndarray]:
        """Zero-filled inputs of ``rows`` rows (other dynamic axes of ``inner_size``, or of ``sizes[(input,
        axis)]``), for warm-up runs; an input of any rank (no shape declared) gets ``any_rank`` axes of
        ``inner_size`` (a scalar by default), or ``any_rank[name]`` (each its own, as a warm-up file has them)."""
        arrays = {}
        for spec in self.inputs:
            assert spec.dtype is not None
            rank = any_rank if isinstance(any_rank, int) else any_rank.get(spec.name, 0)
            declared = spec.shape if spec.shape is not None else (None,) * rank
            shape = [d if isinstance(d, int) and d >= 0 else inner_size for d in declared]
            if sizes:
                for axis in range(1, len(shape)):
                    shape[axis] = sizes.get((spec.name, axis), shape[axis])
            if shape and _is_dynamic((spec.shape or (None,))[0]):
                shape[0] = rows
            if spec.is_string:
                arrays[spec.name] = np.full(shape, "", dtype=object)
            else:
                arrays[spec.name] = np.zeros(shape, dtype=spec.dtype)
        return arrays


# -- bounds on values ---------------------------------------------------------------------------------------

_BoundCheck = tuple[str, Any, Any, bool, Bounds]
"""One bounded input: its name, the bounds to compare with (``None``: that side cannot be crossed), whether
they are integers (compared as Python ints, exactly) or of the input's float type, and the bounds as set."""


class _BoundedSignature(Signature):
    """A signature whose :meth:`validate` also checks the values of bounded inputs (:meth:`Signature.bounded`):
    a subclass, so that the validation of models without bounds stays as it was, not one test longer.

    Thread-safe: immutable after construction.
    """

    def __init__(
        self,
        inputs: Sequence[TensorSpec],
        outputs: Sequence[TensorSpec],
        *,
        rows_shared: bool,
        rows_apart: bool,
        tied_axes: Sequence[Sequence[tuple[str, int]]],
        broadcast_axes: Collection[tuple[str, int]],
        bounds: Mapping[str, Bounds],
        checks: tuple[_BoundCheck, ...],
    ) -> None:
        super().__init__(
            inputs,
            outputs,
            rows_shared=rows_shared,
            rows_apart=rows_apart,
            tied_axes=tied_axes,
            broadcast_axes=broadcast_axes,
        )
        self.bounds = dict(bounds)
        self._bound_checks = checks

    def validate(
        self, inputs: object, *, max_rows: int, reject_nan: bool = False, no_rows_ok: bool = False
    ) -> tuple[dict[str, np.ndarray], int]:
        """:meth:`Signature.validate`, then each bounded input's values: one pass for its smallest and one for its
        largest value, or a lone value read as it is (the converted array's: as the model gets them).

        Raises:
            InvalidInputError: as :meth:`Signature.validate`, or a value of a bounded input outside its bounds.
        """
        arrays, rows = super().validate(inputs, max_rows=max_rows, reject_nan=reject_nan, no_rows_ok=no_rows_ok)
        for name, low, high, integers, given in self._bound_checks:
            array = arrays[name]
            if array.size == 1:  # (the common case, a length or a count: .item() costs a tenth of min and max)
                smallest = largest = array.item()  # (a Python int or float; NaN passes, left to nan_policy)
            elif not array.size:
                continue
            else:
                smallest, largest = array.min(), array.max()
                if integers:  # (as Python ints: numpy 1.x compares a uint64 with a Python int through float64)
                    smallest, largest = int(smallest), int(largest)
                elif smallest != smallest:  # NaN, which min and max spread: left to nan_policy, the rest bounded
                    numbers = array[~np.isnan(array)]
                    if not numbers.size:
                        continue
                    smallest, largest = numbers.min(), numbers.max()
            if (low is not None and smallest < low) or (high is not None and largest > high):
                raise _out_of_bounds(name, array, low, high, given, smallest, largest, integers=integers)
        return arrays, rows


def _bound_checks(inputs: Sequence[TensorSpec], bounds: Mapping[str, Bounds]) -> tuple[_BoundCheck, ...]:
    """The checks of :meth:`Signature.bounded`, each bound as the input's type holds it: an integer input's
    rounded inwards to an integer (``max = 4.5``: 4), and left out where no value of its type can cross it
    (``min = 0`` for a ``uint8``); a float input's in its float type (``max = 0.1`` is float32's 0.1, which a
    client's float32 0.1 does not exceed)."""
    specs = {spec.name: spec for spec in inputs}
    checks: list[_BoundCheck] = []
    for name, given in bounds.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(s.describe() for s in inputs)
            raise ValueError(f"inputs.{name} bounds an input the model does not have (it takes {known})")
        dtype = spec.dtype
        if dtype is None or dtype.kind not in "iuf":
            raise ValueError(
                f"inputs.{name} bounds input {spec.describe()}, which holds no numbers to bound (only integer "
                "and float inputs take bounds)"
            )
        low_given, high_given = given
        if dtype.kind == "f":
            finite = float(np.finfo(dtype).max)
            # (a bound past the type's range is its largest finite value: infinity stays outside it)
            low = None if low_given is None else dtype.type(max(low_given, -finite))
            high = None if high_given is None else dtype.type(min(high_given, finite))
            checks.append((name, low, high, False, given))
            continue
        info = np.iinfo(dtype)
        low = None if low_given is None else math.ceil(low_given)
        high = None if high_given is None else math.floor(high_given)
        if (low is not None and low > info.max) or (high is not None and high < info.min):
            raise ValueError(
                f"inputs.{name} bounds input {spec.describe()} to {_range_text(given)}, where no value of "
                f"{dtype} ({info.min}..{info.max}) lies"
            )
        low = None if low is None or low <= info.min else low
        high = None if high is None or high >= info.max else high
        if low is not None or high is not None:
            checks.append((name, low, high, True, given))
    return tuple(checks)


def _out_of_bounds(
    name: str, array: np.ndarray, low: Any, high: Any, given: Bounds, smallest: Any, largest: Any, *, integers: bool
) -> InvalidInputError:
    """The refusal of a request whose input ``name`` holds a value outside its bounds (the error path: the
    values out of bounds are counted). Values past both bounds are named on both sides: naming one side
    alone made a client that fixed those values resend, only to be refused for the others."""
    sides: list[str] = []
    extremes: list[str] = []
    if low is not None and smallest < low:
        count = int(np.count_nonzero(array < low))
        sides.append(_side_text(count, smallest, f"below its min {given[0]!r}", integers=integers))
        extremes += [] if count == 1 else [f"the smallest {_number_text(smallest, integers=integers)}"]
    if high is not None and largest > high:
        count = int(np.count_nonzero(array > high))
        sides.append(_side_text(count, largest, f"above its max {given[1]!r}", integers=integers))
        extremes += [] if count == 1 else [f"the largest {_number_text(largest, integers=integers)}"]
    which = f"{', '.join(extremes)}; " if extremes else ""
    return InvalidInputError(
        f"input {name!r}: {' and '.join(sides)} ({which}bounded by the model's config, inputs.{name}); send "
        f"values {_range_text(given)}"
    )


def _number_text(value: Any, *, integers: bool) -> str:
    """A value out of bounds as a message quotes it (cut short, as every quoted value is)."""
    return brief(int(value) if integers else float(value))


def _side_text(count: int, worst: Any, side: str, *, integers: bool) -> str:
    """``7 is above its max 4``, or ``2 values are above its max 4`` for several."""
    values = f"{_number_text(worst, integers=integers)} is" if count == 1 else f"{count} values are"
    return f"{values} {side}"


def _range_text(bounds: Bounds) -> str:
    low, high = bounds
    if low is None:
        return f"of at most {high!r}"
    if high is None:
        return f"of at least {low!r}"
    return f"from {low!r} to {high!r}"


# -- the batch axis -----------------------------------------------------------------------------------------


def _fixed_rows(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> int | None:
    """The one size at which every input and output tensor fixes axis 0 (see ``Signature.fixed_rows``)."""
    sizes = {
        spec.shape[0] if spec.dtype is not None and spec.shape and isinstance(spec.shape[0], int) else -1
        for spec in (*inputs, *outputs)
    }
    if len(sizes) != 1:
        return None
    (size,) = sizes
    return size if size >= 1 else None


_PROBE_SEED = 20240611
_TIED = "\x00tied "  # (the key of a group of tied axes among the names of shared dimensions: no name starts so)
_UNKNOWN_SHOWN = 8  # unknown input names a refusal names (a request may send thousands)
MOST_MADE_UP_RANK = 4
"""The most axes a made-up request gives an input declared with no shape (any rank), after a scalar."""
PROBE_INNER_SIZES = (2, 16, 64)
"""Sizes of dynamic inner axes for the load's made-up rows, tried in turn until the model runs on them: 2, not
1 (a row of one element hides what a reduction or a transpose does to it), and larger for a model that needs
a longer sequence (a convolution of kernel 5 over time)."""


def _maps_per_row(spec: TensorSpec) -> bool:
    """A sequence of maps: what ZipMap answers, one map per row of its input (scikit-learn classifiers'
    probabilities as skl2onnx exports them by default)."""
    return spec.onnx_type.startswith("seq(map(")


def _batch_axis_problem(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str | None:
    """Why axis 0 can never be taken for the batch axis of every input and output (``None``: it may be).

    Every input and output needs to be a tensor with a dynamic axis 0, and no name of an axis 0 (a
    ``dim_param``) may name another axis of any input or output: an output ``[seq, batch]`` of an input
    ``[batch, seq]`` (a sequence-first export) has a dynamic axis 0 that is not the rows, and stacked and
    split by position, its values went to the wrong callers whenever its length equalled the rows. Unnamed
    dynamic axes, and axes 0 named apart (:func:`_rows_named_apart`), are left to the load's run of the model.
    """
    if not inputs:
        return "it has no inputs"
    named: dict[str, tuple[str, str]] = {}  # axis-0 name -> (kind, tensor) where first seen
    for kind, specs in (("input", inputs), ("output", outputs)):
        for spec in specs:
            if spec.dtype is None:
                return f"{kind} {spec.describe()} is not a tensor, so it has no rows to split"
            if spec.shape is None:
                return f"{kind} {spec.describe()} declares no shape, so nothing tells that its axis 0 is the rows"
            if not spec.has_dynamic_batch:
                return f"{kind} {spec.describe()} has no dynamic axis 0 to stack rows on"
            dim = spec.shape[0] if spec.shape else None
            if isinstance(dim, str) and dim:
                named.setdefault(dim, (kind, spec.name))
    for symbol, (first_kind, first_name) in named.items():
        for kind, specs in (("input", inputs), ("output", outputs)):
            for spec in specs:
                for axis, dim in enumerate(spec.shape or ()):
                    if axis > 0 and dim == symbol:
                        return (
                            f"{symbol!r}, the name of axis 0 of {first_kind} {first_name!r}, is also axis {axis} "
                            f"of {kind} {spec.describe()}: axis 0 is not only the rows"
                        )
    return None


def _inputs_named_apart(inputs: Sequence[TensorSpec]) -> str | None:
    """How two inputs name axis 0 apart (torch's ``input_ids_dynamic_axes_1`` and
    ``attention_mask_dynamic_axes_1``; a parameter ``indices[k]`` beside ``data[batch, 4]``), or ``None``."""
    first: dict[str, str] = {}  # axis-0 name -> the first input named so
    for spec in inputs:
        dim = spec.shape[0] if spec.shape else None
        if isinstance(dim, str) and dim:
            first.setdefault(dim, spec.name)
    if len(first) < 2:
        return None
    (rows, name), (other, other_name) = list(first.items())[:2]
    return f"axis 0 is {rows!r} on input {name!r} but {other!r} on input {other_name!r}"


def _rows_named_apart(inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> str | None:
    """How axis 0 is named apart on two inputs, or on an output unlike the inputs (tf2onnx's ``unk__7`` for
    an input's ``unk__6``; a count ``n_found``), or ``None``."""
    apart = _inputs_named_apart(inputs)
    if apart is not None:
        return apart
    rows = next((spec.shape[0] for spec in inputs if spec.shape and isinstance(spec.shape[0], str)), None)
    if not rows:
        return None
    for spec in outputs:
        dim = spec.shape[0] if spec.shape else None
        if isinstance(dim, str) and dim and dim != rows:
            return f"axis 0 is {rows!r} on the inputs but {dim!r} on output {spec.name!r}"
    return None


# -- compatibility ------------------------------------------------------------------------------------------


def incompatibilities(serving: Signature, candidate: Signature) -> list[str]:
    """What would break for callers of ``serving`` if ``candidate`` answered them instead (empty: nothing).

    A candidate is compatible when every request valid for ``serving`` is valid for it, and every output
    those callers read is still there with the same dtype, rank and fixed sizes:

    * inputs: the same names (none missing, none new: callers do not send it), the same dtypes and ranks;
      an axis the candidate fixes must have had that size fixed before (a fixed axis that became dynamic
      is fine);
    * outputs: every serving output is still produced (new ones are fine), with the same dtype and rank;
      an axis fixed before must keep its size (a dynamic axis that became fixed is fine).

    Axes of unknown rank (no shape) are not compared. Each problem is one human-readable line.
    """
    problems: list[str] = []
    new_inputs = {spec.name: spec for spec in candidate.inputs}
    for spec in serving.inputs:
        other = new_inputs.pop(spec.name, None)
        if other is None:
            problems.append(f"input {spec.name!r} is gone (serving takes {spec.describe()})")
            continue
        problems.extend(_compare(spec, other, "input", fixed_from=other, fixed_to=spec))
    for spec in new_inputs.values():
        problems.append(f"input {spec.name!r} is new ({spec.describe()}); callers do not send it")
    new_outputs = {spec.name: spec for spec in candidate.outputs}
    for spec in serving.outputs:
        other = new_outputs.get(spec.name)
        if other is None:
            problems.append(f"output {spec.name!r} is gone (serving produces {spec.describe()})")
            continue
        problems.extend(_compare(spec, other, "output", fixed_from=spec, fixed_to=other))
    return problems


def _compare(old: TensorSpec, new: TensorSpec, kind: str, *, fixed_from: TensorSpec, fixed_to: TensorSpec) -> list[str]:
    """Compare one tensor; every axis fixed in ``fixed_from`` must have the same fixed size in ``fixed_to``."""
    if old.onnx_type != new.onnx_type:
        return [f"{kind} {old.name!r}: type {old.onnx_type} became {new.onnx_type}"]
    if old.shape is None or new.shape is None:
        return []
    if len(old.shape) != len(new.shape):
        before, after = f"{len(old.shape)} {_shape_text(old.shape)}", f"{len(new.shape)} {_shape_text(new.shape)}"
        return [f"{kind} {old.name!r}: rank {before} became {after}"]
    assert fixed_from.shape is not None and fixed_to.shape is not None
    for axis, (need, have) in enumerate(zip(fixed_from.shape, fixed_to.shape, strict=True)):
        if not _is_dynamic(need) and need != have:
            return [
                f"{kind} {old.name!r}: axis {axis} was {_dim_text(old.shape[axis])}, is {_dim_text(new.shape[axis])}"
            ]
    return []


def _dim_text(dim: Dim) -> str:
    return "dynamic" if _is_dynamic(dim) else str(dim)


def _column_hint(spec: TensorSpec, array: np.ndarray) -> str:
    """How to send a column where the model takes ``[rows, 1]``: skl2onnx declares each input of a
    ``ColumnTransformer`` so, and ``df["age"].to_numpy()`` (or a JSON list of values) is one axis short. An
    empty list is one axis short too, of every input of rows: it holds no row (numpy makes it shape [0])."""
    if array.ndim == 1 and spec.shape is not None and len(spec.shape) == 2 and spec.shape[1] == 1:
        return "; send one value per row as a column: array.reshape(-1, 1), or [[v] for v in values]"
    if array.shape == (0,) and spec.shape is not None and len(spec.shape) > 1:  # (a JSON [] holds no row)
        return "; an empty list holds no row: send at least one row"
    return ""


def _shape_text(shape: tuple[Dim, ...] | None) -> str:
    if shape is None:
        return ""
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def convertible(given: np.dtype[Any], expected: np.dtype[Any]) -> bool:
    """Whether numbers of dtype ``given`` may be sent for an input of dtype ``expected``: a cast of the same
    kind or wider (never float to int, never a bool for a number or back), and any integer to any integer,
    whose values are then checked against the target's range (a JSON list of small numbers is int64, and
    must reach a uint8 image input)."""
    if (given.kind == "b") != (expected.kind == "b"):
        return False
    if given.kind in "iu" and expected.kind in "iu":
        return True
    return bool(np.can_cast(given, expected, casting="same_kind"))


_TEXT_DTYPE = np.dtype(object)  # (numpy's dtypes of builtin types are singletons: compared by identity)


def _text(name: str, value: Any, *, raw_bytes: bool = False) -> np.ndarray:
    """An input of ONNX strings as an array of Python ``str``, every element checked: onnxruntime turns
    anything else into its ``str()`` (``None`` into ``"None"``) and fails to run on text that is not valid
    Unicode (a lone surrogate, which JSON can carry). ``bytes`` holding UTF-8 text are decoded; with
    ``raw_bytes`` (a remote ``BYTES`` tensor), ``bytes`` are kept as they are, whatever they hold."""
    array = np.asarray(value, dtype=object) if not isinstance(value, np.ndarray) else value
    if array.dtype.kind == "S" and raw_bytes:
        # numpy's fixed-width bytes drop trailing zero bytes (np.array([b"ab\0"])[0] is b"ab"): binary data
        # sent that way would reach the model server changed, so only an array that keeps them is taken.
        raise InvalidInputError(
            f"input {name!r}: a numpy array of dtype {array.dtype} drops the trailing zero bytes of each element; "
            "send the bytes as an array of dtype object (np.array(values, dtype=object)) or a list"
        )
    # (S: numpy's bytes, e.g. np.array([b"paris"]), decoded as UTF-8 below; T: numpy 2's variable-width text,
    # np.dtypes.StringDType, whose missing value, if it has one, becomes its na_object and is refused below)
    if array.dtype.kind not in "OUST":
        raise InvalidInputError(
            f"input {name!r}: expected strings (tensor(string)), got an array of {array.dtype}; send text: a list "
            "of str, or a numpy array of dtype str or object"
        )
    array = array.astype(object, copy=False)
    decoded: dict[int, str] = {}
    for index, element in enumerate(array.flat):
        if isinstance(element, str):
            if element.isascii():
                continue
            try:
                element.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidInputError(
                    f"input {name!r}: element #{index} is not valid Unicode text (it holds a lone surrogate "
                    "code point); send UTF-8 text"
                ) from None
        elif isinstance(element, bytes):
            if raw_bytes:
                continue
            try:
                decoded[index] = element.decode("utf-8")
            except UnicodeDecodeError:
                raise InvalidInputError(
                    f"input {name!r}: element #{index} is bytes that are not UTF-8 text; this input takes text "
                    "(an ONNX string tensor, or a remote BYTES tensor sent as JSON, without the binary extension): "
                    "encode binary data as text (base64, say) if the model expects that"
                ) from None
        else:
            raise InvalidInputError(
                f"input {name!r}: expected strings (tensor(string)), element #{index} is "
                f"{type(element).__name__}; send text"
            )
    if decoded:
        array = array.copy()  # (never the caller's array) C-ordered, so its flat view takes the decoded text
        flat = array.reshape(-1)
        for index, text in decoded.items():
            flat[index] = text
    return array


_INTEGERS = ("integers", "non-integer", (int, np.integer))
_OBJECT_KINDS: dict[str, tuple[str, str, tuple[type, ...]]] = {
    "b": ("booleans", "non-boolean", (bool, np.bool_)),
    "i": _INTEGERS,
    "u": _INTEGERS,
}
"""What an object array's elements must be for an input of each dtype kind; numbers (ints or floats) else."""
_NUMBERS = ("numbers", "non-numeric", (int, float, np.integer, np.floating))


def _objects(array: np.ndarray, expected: np.dtype[Any]) -> str:
    """What an object array sent for numbers holds: the first element that is not of the input's kind (bools for
    a bool input, integers for an integer one, numbers for a float one), or, when every one is (``df.values``
    of a pandas frame with a text column, sliced to its numbers), how to convert it. (A float for an integer
    input is named, as a float64 array for it is refused: ``.astype`` would cut 2.7 to 2.)"""
    what, odd, allowed = _OBJECT_KINDS.get(expected.kind, _NUMBERS)
    boolean = expected.kind == "b"
    for index, element in enumerate(array.flat):
        if isinstance(element, (bool, np.bool_)) != boolean or not isinstance(element, allowed):
            if is_arrow_stream(element):  # (a stream of batches, which predict_many scores)
                return f"got a pyarrow {type(element).__name__}, a stream of batches: score it with predict_many"
            return f"element #{index} is {type(element).__name__} (ragged or {odd} values); send {what}"
    dtype = "bool" if boolean else f"np.{expected.name}"
    return (
        f"got {what} held as Python objects (a numpy array of dtype object, as pandas' .values of a frame with a "
        f"text column gives); convert it with .astype({dtype})"
    )


UNREADABLE = (ValueError, TypeError, RuntimeError)
"""What ``np.asarray`` raises for a value it cannot read: a ragged list (``ValueError``), and an array of another
library that refuses to be one (torch: ``RuntimeError`` for a tensor that requires grad, ``TypeError`` for a
bfloat16, sparse or non-CPU one), with that library's advice in its message."""


def is_arrow_stream(value: object) -> bool:
    """Whether ``value`` is a pyarrow ``RecordBatchReader`` or dataset: a stream of batches, for ``predict_many``
    (a dataset itself is not iterable: its ``to_batches()`` is), by its class, without importing pyarrow."""
    stream = hasattr(value, "to_batches") or hasattr(value, "read_next_batch")
    return stream and type(value).__module__.partition(".")[0] == "pyarrow" and not hasattr(value, "num_columns")


def _coerce(spec: TensorSpec, value: Any) -> np.ndarray:
    expected = spec.dtype
    assert expected is not None
    if type(value) is np.ndarray and value.dtype == expected and expected is not _TEXT_DTYPE:
        return value  # the common case: no copy, no checks
    # (a plain array of another dtype, a list: two type tests, 16 ns; isinstance alone took 46 ns for an array)
    if type(value) is not np.ndarray and type(value) is not list and isinstance(value, np.ma.MaskedArray):
        value = unmasked(value, spec.name)
    if spec.is_string:
        return _text(spec.name, value, raw_bytes=spec.raw_bytes)
    try:
        array = np.asarray(value)
    except UNREADABLE as exc:
        raise InvalidInputError(
            f"input {spec.name!r}: cannot be turned into an array of {expected} ({exc}); "
            "send a rectangular list of numbers or a numpy array"
        ) from None
    given = array.dtype
    if type(value) in (list, tuple) and given.kind in "iuf" and _holds_bool(value, array.ndim):
        # (numpy reads True as 1 beside numbers, and a list of flags alone is refused below: a caller's mix-up,
        # a checkbox's value in a row of numbers, was scored as 1.0 without a word)
        raise InvalidInputError(
            f"input {spec.name!r}: a list that mixes True/False into numbers (numpy would read True as 1); send "
            f"numbers only, 1 and 0 for a flag"
        )
    if given == expected:
        return array
    if expected.kind in "iu" and given.kind in "fO" and type(value) is list:
        # (integers past int64, uint64's upper half, which numpy reads as float64, or as objects past uint64)
        exact = _exact_integers(spec.name, value, expected)
        if exact is not None:
            return exact
    if expected.kind == "f" and given.kind == "O" and type(value) is list:
        # (an integer past uint64, which numpy reads as an object: what JavaScript's JSON.stringify writes for 1e20)
        floats = _integers_as_floats(spec.name, value)
        if floats is not None:
            array, given = floats, floats.dtype
    if given.kind not in "biuf":
        if given.kind == "O":
            raise InvalidInputError(
                f"input {spec.name!r}: expected numbers of dtype {expected}, {_objects(array, expected)}"
            )
        raise InvalidInputError(f"input {spec.name!r}: expected numbers of dtype {expected}, got dtype {given}")
    if not convertible(given, expected):
        nan = np.isnan(array) if given.kind == "f" and expected.kind in "iub" else None
        if nan is not None and nan.any():
            # (the cast it would suggest makes NaN an arbitrary integer; pandas' Int64 with NA comes as NaN)
            row = f" in row {int(nan.reshape(len(array), -1).any(axis=1).argmax())}" if array.ndim else ""
            raise InvalidInputError(
                f"input {spec.name!r}: expected dtype {expected}, got {given} holding NaN (a missing value){row}, "
                f"which {expected} cannot hold; fill or drop missing values first"
            )
        raise InvalidInputError(
            f"input {spec.name!r}: expected dtype {expected}, got {given}, which cannot be converted without "
            f"losing meaning; convert it yourself (for example array.astype('{expected}')) if that is intended"
        )
    if expected.kind in "iu" and given.kind in "iu" and array.size:
        info = np.iinfo(expected)
        # As Python ints: numpy 1.x compares a uint64 with a Python int through float64, where 2**63 + 5 equals
        # 2**63 - 1, and that value would wrap to a negative int64 unseen (numpy 2 compares exactly).
        low, high = int(array.min()), int(array.max())
        if low < info.min or high > info.max:
            raise InvalidInputError(
                f"input {spec.name!r}: values from {low} to {high} do not fit in {expected} ({info.min}..{info.max})"
            )
    if expected.kind == "f":  # float64 -> float32 (or anything -> float16) can overflow to infinity
        try:
            with np.errstate(over="raise"):
                return array.astype(expected)
        except FloatingPointError:
            limit = float(np.finfo(expected).max)
            raise InvalidInputError(
                f"input {spec.name!r}: holds finite values beyond the range of {expected} (about ±{limit:.4g}), "
                f"which would become infinity; scale or clip them (NaN and infinity themselves pass through)"
            ) from None
    return array.astype(expected)


_FLAGS = frozenset((bool, np.bool_))


def _holds_bool(items: list[Any] | tuple[Any, ...], ndim: int) -> bool:
    """Whether a rectangular list of ``ndim`` levels holds a ``bool`` or ``numpy.bool_``: the element types
    looked at in C (about 22 ns an element, about what ``np.asarray`` takes to read it: 1.1 µs for a row of 30
    numbers, 5 ms for a 224 x 224 x 3 image)."""
    for _ in range(ndim - 1):
        items = itertools.chain.from_iterable(items)  # type: ignore[assignment]
    return not _FLAGS.isdisjoint(map(type, items))


def _exact_integers(name: str, value: list[Any], expected: np.dtype[Any]) -> np.ndarray | None:
    """A rectangular list of integers (Python's or numpy's) as ``expected``, exactly: numpy reads a list
    holding an int past int64 as float64 (2**64 - 1 becomes 1.8446744073709552e19, refused as floats) and one
    past uint64 as objects. ``None`` when the list holds anything else (the caller's usual refusal follows).

    Raises:
        InvalidInputError: an integer does not fit in ``expected``, naming the range.
    """
    objects = _numbers_as_objects(value, floats=False)
    if objects is None:
        return None
    flat = objects.ravel()
    low, high = int(min(flat)), int(max(flat))
    info = np.iinfo(expected)
    if low < info.min or high > info.max:
        raise InvalidInputError(
            f"input {name!r}: values from {low} to {high} do not fit in {expected} ({info.min}..{info.max})"
        )
    return objects.astype(expected)


def _numbers_as_objects(value: list[Any], *, floats: bool) -> np.ndarray | None:
    """A rectangular, non-empty list as an array of objects if it holds integers only (Python's or numpy's, no
    bools), or with ``floats`` integers and floats; else ``None``."""
    try:
        objects = np.array(value, dtype=object)
    except UNREADABLE:
        return None
    numbers = np.integer | np.floating if floats else np.integer
    if not objects.size or not all(
        t is int or (floats and t is float) or (t is not np.bool_ and issubclass(t, numbers))
        for t in set(map(type, objects.ravel()))
    ):
        return None
    return objects


def _integers_as_floats(name: str, value: list[Any]) -> np.ndarray | None:
    """A rectangular list of numbers that holds integers past uint64 (numpy reads them as objects) as float64,
    for a float input, as the Open Inference Protocol's codec reads them. ``None`` when the list holds
    anything but Python's or numpy's integers and floats (the caller's usual refusal follows).

    Raises:
        InvalidInputError: an integer is beyond any float (about 1.8e308).
    """
    objects = _numbers_as_objects(value, floats=True)
    if objects is None:
        return None
    try:
        return np.array([float(number) for number in objects.ravel()], dtype=np.float64).reshape(objects.shape)
    except OverflowError:
        raise InvalidInputError(
            f"input {name!r}: holds an integer beyond the range of any float (about ±1.8e308); scale or clip it"
        ) from None


def unmasked(value: np.ma.MaskedArray[Any, Any], name: str | None) -> np.ndarray:
    """A masked array's values, if none is masked. ``np.asarray`` (and ``np.array``) take the values under the mask
    too, so a masked (missing) entry was scored as whatever number it hid, without a word. ``name``: the input's,
    for the message (``None``: a one-input model's bare array).

    Raises:
        InvalidInputError: an entry is masked, naming the first row that holds one.
    """
    mask: np.ndarray = np.ma.getmaskarray(value)
    if mask.dtype.names is not None:  # a record array's mask has a field per field (.any() raised numpy's TypeError)
        from numpy.lib import recfunctions

        mask = recfunctions.structured_to_unstructured(mask, dtype=np.bool_)  # (a last axis: the fields)
    if mask.any():
        rows = mask.reshape(value.shape[0], -1).any(axis=1) if value.ndim else None
        row = "" if rows is None else f" (first in row {int(rows.argmax())})"
        raise InvalidInputError(
            f"{'the input' if name is None else f'input {name!r}'}: a masked array with {int(mask.sum())} masked "
            f"(missing) value(s){row}; fill them (array.filled(value)) or drop those rows first"
        )
    return np.asarray(value.data)


def _is_data_frame(value: object) -> bool:
    from ._scoring_columns import is_data_frame  # (it imports this module)

    return is_data_frame(value)


def _frame_inputs(frame: object, signature: Signature) -> dict[str, Any]:
    from ._scoring_columns import frame_inputs

    arrays = frame_inputs(frame, signature)
    if isinstance(arrays, dict):
        return arrays
    return {signature.inputs[0].name: arrays}  # (a one-input numeric model: the frame's values, its matrix)
