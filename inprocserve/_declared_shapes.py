"""Which graph inputs and outputs a model file declares with no shape at all, which onnxruntime cannot say.

An ONNX tensor declared without a ``shape`` (a hand-built graph, some converters, a model whose shape
information was stripped) takes any rank; one declared with an empty ``shape`` is a scalar. onnxruntime's
``NodeArg.shape`` is ``[]`` for both, so a model of any rank was taken for one of scalars and every array
refused. The file tells them apart: it is walked here, field by field, with a seek over every field but
the graph's inputs and outputs (initializers, nodes: the bulk of a file that may be GBs), so only those
small ``ValueInfoProto`` messages are read into memory. Protobuf's framing is decoded as
:mod:`._integrity` decodes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from ._integrity import _fields, _Malformed, _message, _text, _varint
from ._signature import NodeInfo, Signature

__all__ = ["Shapeless", "session_signature", "shapeless_tensors"]

# Field numbers (onnx/onnx.proto3): ModelProto.graph; GraphProto.input, .output; ValueInfoProto.name, .type;
# TypeProto.tensor_type; TypeProto.Tensor.shape.
_MODEL_GRAPH = 7
_GRAPH_INPUT, _GRAPH_OUTPUT = 11, 12
_VALUE_NAME, _VALUE_TYPE = 1, 2
_TYPE_TENSOR = 1
_TENSOR_SHAPE = 2
_LENGTH_DELIMITED = 2
_MOST_VALUE_INFO_BYTES = 1 << 20  # a larger one (a doc string of a MiB) is not read: onnxruntime's view stands
_HEAD_BYTES = 20  # a field's key and length: two varints of at most 10 bytes each


@dataclass(frozen=True, slots=True)
class Shapeless:
    """Names of the graph's tensor inputs and outputs that the file declares with no shape (any rank)."""

    inputs: frozenset[str] = frozenset()
    outputs: frozenset[str] = frozenset()


def session_signature(inputs: Sequence[NodeInfo], outputs: Sequence[NodeInfo], model_file: Path) -> Signature:
    """The signature of a session of ``model_file``, from onnxruntime's ``get_inputs()``/``get_outputs()``,
    with the tensors that it reports as ``[]`` but the file declares with no shape taken as of any rank.
    The file is walked only when some tensor is reported as ``[]``.

    Raises:
        ValueError: an input of a type numpy cannot feed (as :class:`Signature` raises).
    """
    shapeless = Shapeless()
    if any(not node.shape for node in (*inputs, *outputs)):
        shapeless = shapeless_tensors(model_file)
    return Signature.from_nodes(inputs, outputs, any_rank=(shapeless.inputs, shapeless.outputs))


def shapeless_tensors(model_file: Path) -> Shapeless:
    """The graph inputs and outputs of ``model_file`` declared as tensors without a shape. Empty for a file
    that cannot be read or walked (onnxruntime's view then stands; the load's own checks say what is wrong)."""
    try:
        with model_file.open("rb") as handle:
            return _walk(handle, os.fstat(handle.fileno()).st_size)
    except (OSError, _Malformed):
        return Shapeless()


def _walk(handle: BinaryIO, size: int) -> Shapeless:
    found: dict[int, set[str]] = {_GRAPH_INPUT: set(), _GRAPH_OUTPUT: set()}
    declared: dict[int, set[str]] = {_GRAPH_INPUT: set(), _GRAPH_OUTPUT: set()}
    for number, wire, start, length in _fields_in(handle, 0, size):
        if number != _MODEL_GRAPH or wire != _LENGTH_DELIMITED:
            continue
        for field, kind, at, size_of in _fields_in(handle, start, start + length):  # (a graph given twice: merged)
            if field not in found or kind != _LENGTH_DELIMITED or size_of > _MOST_VALUE_INFO_BYTES:
                continue
            handle.seek(at)
            data = handle.read(size_of)
            if len(data) != size_of:
                raise _Malformed("value info runs past the end")
            name, shapeless = _value_info(memoryview(data))
            (found if shapeless else declared)[field].add(name)
    # (a name declared twice, once with a shape, keeps onnxruntime's view)
    return Shapeless(
        frozenset(found[_GRAPH_INPUT] - declared[_GRAPH_INPUT]),
        frozenset(found[_GRAPH_OUTPUT] - declared[_GRAPH_OUTPUT]),
    )


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


def _value_info(data: memoryview) -> tuple[str, bool]:
    """A ``ValueInfoProto``'s name, and whether it is a tensor with no shape (fields given twice are merged,
    as protobuf merges them: a shape in any of them is a shape)."""
    name, tensor, shape = "", False, False
    for number, _, value in _fields(data):
        if number == _VALUE_NAME:
            name = _text(value)
        elif number == _VALUE_TYPE:
            for field, _, kind in _fields(_message(value)):
                if field == _TYPE_TENSOR and isinstance(kind, memoryview):
                    tensor = True
                    shape = shape or any(sub == _TENSOR_SHAPE for sub, _, _ in _fields(kind))
    return name, tensor and not shape
