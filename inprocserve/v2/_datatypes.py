"""The protocol's tensor datatypes, and their numpy and ONNX counterparts (both ways).

Pure tables: no I/O. ``BYTES`` elements are text here (ONNX ``tensor(string)``), carried as ``str`` in
numpy object arrays; every other datatype has a fixed little-endian element size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._brief import brief
from .._errors import InvalidInputError

__all__ = [
    "DATATYPES",
    "datatype_of",
    "datatype_of_onnx",
    "numpy_dtype",
    "onnx_of_datatype",
]

DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
"""Protocol datatype -> numpy dtype of the arrays it decodes to."""

_BY_NUMPY: dict[np.dtype[Any], str] = {dtype: name for name, dtype in DATATYPES.items()}

_ONNX: dict[str, str] = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(uint16)": "UINT16",
    "tensor(uint32)": "UINT32",
    "tensor(uint64)": "UINT64",
    "tensor(int8)": "INT8",
    "tensor(int16)": "INT16",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
    "tensor(string)": "BYTES",
}


def numpy_dtype(datatype: object, *, tensor: str) -> np.dtype[Any]:
    """The numpy dtype of a protocol datatype.

    Raises:
        InvalidInputError: ``datatype`` is not one of :data:`DATATYPES` (the message lists them).
    """
    dtype = DATATYPES.get(datatype) if isinstance(datatype, str) else None
    if dtype is None:
        raise InvalidInputError(
            f"tensor {brief(tensor)}: unknown datatype {brief(datatype)}; use one of {', '.join(DATATYPES)}"
        )
    return dtype


def datatype_of(dtype: np.dtype[Any]) -> str:
    """The protocol datatype of a numpy dtype; text and byte strings are ``BYTES``.

    Raises:
        TypeError: numpy dtypes the protocol has no datatype for (complex, datetime, structured).
    """
    name = _BY_NUMPY.get(dtype.newbyteorder("=")) if dtype.kind not in "OSU" else "BYTES"
    if name is None:
        raise TypeError(f"numpy dtype {dtype} has no Open Inference Protocol datatype")
    return name


def datatype_of_onnx(onnx_type: str) -> str:
    """The protocol datatype of an onnxruntime type string such as ``tensor(float)``; types the protocol
    cannot carry (sequences, maps) are returned unchanged, so metadata still says what they are."""
    return _ONNX.get(onnx_type, onnx_type)


_ONNX_OF: dict[str, str] = {datatype: onnx_type for onnx_type, datatype in _ONNX.items()}


def onnx_of_datatype(datatype: str) -> str | None:
    """The onnxruntime type string of a protocol datatype (``FP32`` -> ``tensor(float)``), or ``None`` for a
    name that is not one of :data:`DATATYPES`. A remote model's metadata becomes a signature through it."""
    return _ONNX_OF.get(datatype)
