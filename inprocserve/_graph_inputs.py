"""The shapes a model file declares for its graph's inputs, read before onnxruntime builds a session.

Some session options depend on them (the memory pattern: ``_ort_rules.memory_pattern``), and onnxruntime
fixes a session's options when it builds the session, before it can tell us its inputs. The file is walked
field by field, seeking past everything but the graph's inputs (its nodes and weights), so a model of
gigabytes of inline weights costs a few small reads, not a copy.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["Shape", "input_shapes"]

Shape = tuple[int | None, ...]
"""An input's declared sizes: an int for a fixed size, ``None`` for a dynamic one (named or not)."""

# Field numbers of onnx/onnx.proto3 on the path ModelProto.graph.input[].type.tensor_type.shape.dim[].
_MODEL_GRAPH, _GRAPH_INPUT = 7, 11
_VALUE_INFO_TYPE, _TYPE_TENSOR, _TYPE_SPARSE_TENSOR, _TENSOR_SHAPE, _SHAPE_DIM, _DIM_VALUE = 2, 1, 8, 2, 1, 1
_LENGTH_DELIMITED, _VARINT = 2, 0
_MAX_INPUT_BYTES = 1 << 20  # one input's declaration: a name and a type; more is no real model's


class _Malformed(ValueError):
    """The bytes are not a well-formed protobuf message."""


def input_shapes(model_file: Path) -> list[Shape | None]:
    """The declared shape of each graph input, in order; ``None`` for an input without a tensor shape (a
    sequence, a map, or a tensor of unknown rank).

    Raises:
        OSError: the file cannot be read.
        ValueError: it is not a well-formed ModelProto.
    """
    shapes: list[Shape | None] = []
    with model_file.open("rb") as handle:
        end = handle.seek(0, io.SEEK_END)
        handle.seek(0)
        for number, length in _fields(handle, end):
            if number == _MODEL_GRAPH:
                graph_end = handle.tell() + length
                for field, size in _fields(handle, graph_end):
                    if field == _GRAPH_INPUT:
                        if size > _MAX_INPUT_BYTES:
                            raise _Malformed(f"a graph input of {size} bytes")
                        shapes.append(_shape(handle.read(size)))
    return shapes


def _shape(value_info: bytes) -> Shape | None:
    shape: Shape | None = None
    buffer = io.BytesIO(value_info)
    for field, size in _fields(buffer, len(value_info)):
        if field != _VALUE_INFO_TYPE:
            continue
        for kind, kind_size in _fields(buffer, buffer.tell() + size):
            if kind not in (_TYPE_TENSOR, _TYPE_SPARSE_TENSOR):
                continue
            for part, part_size in _fields(buffer, buffer.tell() + kind_size):
                if part == _TENSOR_SHAPE:
                    shape = tuple(_dims(buffer, buffer.tell() + part_size))
    return shape


def _dims(buffer: BinaryIO, end: int) -> Iterator[int | None]:
    for field, size in _fields(buffer, end):
        if field != _SHAPE_DIM:
            continue
        value: int | None = None
        dim_end = buffer.tell() + size
        while buffer.tell() < dim_end:  # Dimension: dim_value (a varint) or dim_param (a name: dynamic)
            key = _varint(buffer)
            if key >> 3 == _DIM_VALUE and key & 7 == _VARINT:
                number = _varint(buffer)
                value = number if number < 2**63 else None  # (a negative size: not a fixed one)
            else:
                _skip(buffer, key & 7)
        yield value


def _fields(handle: BinaryIO, end: int) -> Iterator[tuple[int, int]]:
    """(field number, length) of each length-delimited field up to ``end``, the handle at the field's bytes;
    past them when the next is asked for, whatever the caller read. Fields of other wire types are skipped."""
    while handle.tell() < end:
        key = _varint(handle)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire != _LENGTH_DELIMITED:
            _skip(handle, wire)
            continue
        length = _varint(handle)
        start = handle.tell()
        if start + length > end:
            raise _Malformed("a field runs past the end of its message")
        yield number, length
        handle.seek(start + length)
    if handle.tell() != end:
        raise _Malformed("a field runs past the end of its message")


def _skip(handle: BinaryIO, wire: int) -> None:
    if wire == _VARINT:
        _varint(handle)
    elif wire == _LENGTH_DELIMITED:
        handle.seek(_varint(handle), io.SEEK_CUR)
    elif wire in (1, 5):
        handle.seek(8 if wire == 1 else 4, io.SEEK_CUR)
    else:  # (groups: deprecated, in no ONNX file)
        raise _Malformed(f"unexpected wire type {wire}")


def _varint(handle: BinaryIO) -> int:
    result = shift = 0
    while True:
        byte = handle.read(1)
        if not byte or shift > 63:
            raise _Malformed("a truncated or overlong varint")
        result |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return result
        shift += 7
