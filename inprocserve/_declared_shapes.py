"""The shapes a model file declares for its graph's inputs and outputs, which onnxruntime cannot always say.

Two things need the file's own words. An ONNX tensor declared without a ``shape`` (a hand-built graph, some
converters, a model whose shape information was stripped) takes any rank; one declared with an empty
``shape`` is a scalar. onnxruntime's ``NodeArg.shape`` is ``[]`` for both, so a model of any rank was taken
for one of scalars and every array refused. And some session options depend on the inputs' shapes (the
memory pattern: ``_ort_rules.memory_pattern``), which onnxruntime fixes when it builds a session, before it
can tell us its inputs. The file is walked here, field by field, with a seek over every field but the
graph's inputs and outputs (initializers, nodes: the bulk of a file that may be GBs), so only those small
``ValueInfoProto`` messages are read into memory. Protobuf's framing is decoded as :mod:`._integrity`
decodes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._integrity import _fields, _Malformed, _message, _text, _varint
from ._signature import NodeInfo, Signature

__all__ = [
    "Declared",
    "Shape",
    "Shapeless",
    "declared_tensors",
    "session_signature",
    "shapeless_tensors",
]

Shape = tuple[int | None, ...]
"""A tensor's declared sizes: an int for a fixed size, ``None`` for a dynamic one (named or not)."""

# Field numbers (onnx/onnx.proto3): ModelProto.graph; GraphProto.input, .output; ValueInfoProto.name, .type;
# TypeProto.tensor_type, .sparse_tensor_type; TypeProto.Tensor.shape; TensorShapeProto.dim; Dimension.dim_value.
_MODEL_GRAPH = 7
_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR, _TYPE_SPARSE_TENSOR = 1, 8
_TENSOR_SHAPE = 2
_SHAPE_DIM = 1
_DIM_VALUE = 1
_LENGTH_DELIMITED = 2
_MOST_VALUE_INFO_BYTES = 1 << 20  # a larger one (a doc string of a MiB) is no real model's: the file is not read
_HEAD_BYTES = 20  # a field's key and length: two varints of at most 10 bytes each


@dataclass(frozen=True, slots=True)
class Shapeless:
    """Names of the graph's tensor inputs and outputs that the file declares with no shape (any rank)."""

    inputs: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Declared:
    """One graph input or output as the file declares it: ``tensor`` whether it is a tensor (dense or sparse;
    not a sequence or a map); ``shape`` its sizes, ``None`` when it declares none (any rank, or no tensor)."""

    name: str
    tensor: bool
    shape: Shape | None


def declared_tensors(model_file: Path) -> tuple[list[Declared], list[Declared]]:
    """The graph's inputs and outputs, in the file's order, as :class:`Declared`.

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a well-formed ModelProto (or holds a value info of over a MiB).
    """
    with model_file.open("rb") as handle:
        try:
            return _walk(handle, os.fstat(handle.fileno()).st_size)
        except _Malformed as exc:
            raise ValueError(f"{model_file} is not a well-formed ONNX model: {exc}") from None


def session_signature(
    inputs: Sequence[NodeInfo],
    outputs: Sequence[NodeInfo],
    model_file: Path,
    declared: tuple[list[Declared], list[Declared]] | None = None,
) -> Signature:
    """The signature of a session of ``model_file``, from onnxruntime's ``get_inputs()``/``get_outputs()``,
    with the tensors that it reports as ``[]`` but the file declares with no shape taken as of any rank.
    The file is walked only when some tensor is reported as ``[]``, and not at all when ``declared`` holds
    what :func:`declared_tensors` read of it already.

    Raises:
        ValueError: an input of a type numpy cannot feed (as :class:`Signature` raises).
    """
    shapeless = Shapeless()
    if any(not node.shape for node in (*inputs, *outputs)):
        shapeless = shapeless_tensors(model_file, declared)
    return Signature.from_nodes(inputs, outputs, any_rank=(shapeless.inputs, shapeless.outputs))


def shapeless_tensors(model_file: Path, declared: tuple[list[Declared], list[Declared]] | None = None) -> Shapeless:
    """The graph inputs and outputs of ``model_file`` declared as tensors without a shape (from ``declared``,
    the file's :func:`declared_tensors`, when given). Empty for a file that cannot be read or walked
    (onnxruntime's view then stands; the load's own checks say what is wrong)."""
    if declared is None:
        try:
            declared = declared_tensors(model_file)
        except (OSError, ValueError):
            return Shapeless()
    inputs, outputs = declared

    def any_rank(tensors: list[Declared]) -> frozenset[str]:
        # (a name declared twice, once with a shape, keeps onnxruntime's view)
        shaped = {t.name for t in tensors if t.shape is not None}
        return frozenset(t.name for t in tensors if t.tensor and t.shape is None and t.name not in shaped)

    return Shapeless(any_rank(inputs), any_rank(outputs))


def _walk(handle: BinaryIO, size: int) -> tuple[list[Declared], list[Declared]]:
    found: dict[int, list[Declared]] = {_GRAPH_INPUT: [], _GRAPH_OUTPUT: []}
    for number, wire, start, length in _fields_in(handle, 0, size):
        if number != _MODEL_GRAPH or wire != _LENGTH_DELIMITED:
            continue
        for field, kind, at, size_of in _fields_in(handle, start, start + length):  # (a graph given twice: merged)
            if field not in found or kind != _LENGTH_DELIMITED:
                continue
            if size_of > _MOST_VALUE_INFO_BYTES:
                raise _Malformed(f"a graph input or output of {size_of} bytes")
            handle.seek(at)
            data = handle.read(size_of)
            if len(data) != size_of:
                raise _Malformed("value info runs past the end")
            found[field].append(_value_info(memoryview(data)))
    return found[_GRAPH_INPUT], found[_GRAPH_OUTPUT]


def _fields_in(handle: BinaryIO, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field number, wire type, offset of the value, length of the value) of each field of the message in
    bytes ``start`` to ``end`` of the file, reading only each field's key and length: the caller may read a
    value (the handle is moved back after it). Groups (deprecated, never written by onnx) are not walked."""
    pos = start
    while pos < end:
        handle.seek(pos)
        head = memoryview(handle.read(min(_HEAD_BYTES, end - pos)))
        key, used = _varint(head, 0)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            _, after = _varint(head, used)
            value_at, length = pos + used, after - used
        elif wire == _LENGTH_DELIMITED:
            length, after = _varint(head, used)
            value_at = pos + after
        elif wire in (1, 5):
            value_at, length = pos + used, 8 if wire == 1 else 4
        else:
            raise _Malformed(f"wire type {wire} where a model's fields are")
        if value_at + length > end:
            raise _Malformed("field runs past the end of its message")
        yield number, wire, value_at, length
        pos = value_at + length


def _value_info(data: memoryview) -> Declared:
    """A ``ValueInfoProto`` as declared (fields given twice are merged, as protobuf merges them: a shape in any
    of them is a shape, the last one's sizes)."""
    name, tensor, shape = "", False, None
    for number, _, value in _fields(data):
        if number == _VALUE_NAME:
            name = _text(value)
        elif number == _VALUE_TYPE:
            for field, _, kind in _fields(_message(value)):
                if field in (_TYPE_TENSOR, _TYPE_SPARSE_TENSOR) and isinstance(kind, memoryview):
                    tensor = True
                    for part, _, dims in _fields(kind):
                        if part == _TENSOR_SHAPE:
                            shape = _sizes(_message(dims))
    return Declared(name, tensor, shape)


def _sizes(shape: memoryview) -> Shape:
    """A ``TensorShapeProto``'s sizes: ``dim_value`` where given (below 2**63: a negative one is no fixed
    size), else ``None`` (a ``dim_param`` name, or nothing: dynamic)."""
    sizes: list[int | None] = []
    for field, _, dim in _fields(shape):
        if field != _SHAPE_DIM:
            continue
        size = None
        for part, wire, value in _fields(_message(dim)):
            if part == _DIM_VALUE and wire == 0 and isinstance(value, int):
                size = value if value < 2**63 else None
        sizes.append(size)
    return tuple(sizes)
