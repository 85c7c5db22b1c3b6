"""The client side of the Open Inference Protocol codec: encode an inference request, decode its response
(the remote backend's wire format). The server side, and the pieces both share, are in ``_codec.py``."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .._brief import brief
from .._errors import InvalidInputError
from ._codec import (
    InferResponse,
    Limits,
    TensorHeader,
    _assemble,
    _bool_words,
    _from_binary,
    _from_json,
    _header_length,
    _parse_json,
    _tensor_header,
    _to_binary,
    _to_json,
)
from ._datatypes import datatype_of

__all__ = ["decode_infer_response", "encode_infer_request"]


def encode_infer_request(
    inputs: Mapping[str, Any],
    *,
    binary: bool = True,
    outputs: Iterable[str] | None = None,
    binary_output: bool = True,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode arrays as an inference request body; returns ``(body, headers)``.

    Args:
        inputs: Input name -> array-like (its numpy dtype picks the datatype).
        binary: Send the inputs as binary tensors (else JSON ``data``).
        outputs: The outputs to ask for (default: all).
        binary_output: Ask for the outputs as binary tensors.

    Raises:
        InvalidInputError: a ``BYTES`` input sent as JSON (``binary=False``) holds ``bytes`` that are not UTF-8
            text: a JSON string cannot carry them (each such byte became U+FFFD, so two different images were
            sent as one input).
    """
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, value in inputs.items():
        array = np.asarray(value)
        entry: dict[str, Any] = {"name": name, "shape": list(array.shape), "datatype": datatype_of(array.dtype)}
        if binary:
            raw = _to_binary(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = _to_json(array, name)
        tensors.append(entry)
    document: dict[str, Any] = {}
    if request_id is not None:
        document["id"] = request_id
    merged = dict(parameters or {})
    if outputs is None:
        merged["binary_data_output"] = binary_output
    document["inputs"] = tensors
    if outputs is not None:
        document["outputs"] = [{"name": name, "parameters": {"binary_data": binary_output}} for name in outputs]
    if merged:
        document["parameters"] = merged
    return _assemble(document, chunks)


_SCAN_ABOVE_BYTES = 1 << 20
"""A JSON document longer than this has its outputs' names and shapes scanned for before it is parsed."""
_OUTPUT_HEADER = re.compile(
    rb'\{(?>[^{}\[\]]*?(?<=[{,\s])"name"\s*:)\s*"((?:[^"\\]|\\.){1,1024}?)"'
    rb'(?>[^{}\[\]]*?(?<=[,\s])"shape"\s*:)\s*\[\s*([0-9][0-9,\s]{0,400}?)\s*\]'
)
"""The start of a tensor's object, ``{"name": "y", ... "shape": [1, 3]``: its name, then its shape, with only
scalar members between (``"datatype": "FP32"``), as Triton, MLServer and this package write them.

A key is matched only where its quote follows ``{``, ``,`` or whitespace: inside a JSON string a quote follows
a backslash, so neither a datum holding ``{\\"name\\": ...`` nor a key ending in ``\\"name`` or ``\\"shape``
(``"note\\"shape": [9]``) passes for one. Each key is the first of its name after the one before (atomic groups): an
object is never searched again for a later ``"name"``, which made the scan quadratic, a 200 KB answer of
repeated ``"name": "a",`` holding its caller 22 s, the GIL all along, before any deadline could end it."""


def _scan_headers(json_part: bytes) -> list[TensorHeader]:
    """The names and shapes of the tensors a JSON answer declares, found by a scan of its bytes (fast: no
    Python object per element); those written in another order are not found (their check waits for the
    parse).

    Parsing an answer's JSON takes 11 to 25 times its length in memory (a Python object per element): a
    server answering a one-row call with 40 MB of JSON that declares 10 million rows took the caller 424 MiB
    and 4 s to refuse it on its shape, and up to 1 GiB is read (11 GiB and more parsed)."""
    headers: list[TensorHeader] = []
    for match in _OUTPUT_HEADER.finditer(json_part):
        try:
            name = json.loads(b'"' + match.group(1) + b'"')
            shape = tuple(int(dim) for dim in match.group(2).split(b","))
        except ValueError:  # (an empty dimension, a name that is not JSON text: left to the parse)
            continue
        headers.append(TensorHeader(name, "", shape))
    return headers


def decode_infer_response(body: bytes, headers: Mapping[str, str], *, limits: Limits | None = None) -> InferResponse:
    """Decode an inference response body (JSON, or JSON followed by binary tensors).

    Raises:
        InvalidInputError: the body is not a well-formed inference response.
    """
    return decode_checked_response(body, headers, limits=limits)


def decode_checked_response(
    body: bytes,
    headers: Mapping[str, str],
    *,
    limits: Limits | None = None,
    check: Callable[[Sequence[TensorHeader]], Container[str] | None] | None = None,
    checkpoint: Callable[[], None] | None = None,
) -> InferResponse:
    """:func:`decode_infer_response`, with ``check`` called on every output's header (name, datatype, declared
    shape) before any output's data is decoded; for a JSON document over 1 MiB, first also on the names and
    shapes a scan of its bytes finds (datatype ``""``), before it is parsed. It raises to refuse the answer,
    and returns the names of the outputs to decode (``None``: all); the others are checked for framing only,
    never decoded.

    Decoding costs far more than reading: a ``BYTES`` element becomes a Python ``str`` (about 1 us and 50 bytes
    each), so a server answering a one-row call with 96 MB of 2-byte elements held its caller 17 s past a 0.5 s
    deadline, the GIL all along, to find then that the answer had 16 million rows.

    ``checkpoint`` (when given) is called before the JSON is parsed, before each output is decoded, and every
    65,536 ``BYTES`` elements while one is; it raises to stop the decoding (the caller's deadline
    passed). An answer whose shapes fit the batch can still take long to decode: a ``BYTES`` output declared
    ``[-1, -1]`` answered with one row of 4 million elements took 1.9 s, after a 0.5 s deadline.
    """
    limits = limits or Limits()
    json_length = _header_length(headers, len(body))
    json_part = body if json_length is None else body[:json_length]
    if check is not None and len(json_part) > _SCAN_ABOVE_BYTES:
        scanned = _scan_headers(json_part)
        if scanned:
            check(scanned)  # (raises to refuse the answer before its JSON is parsed)
    if checkpoint is not None:
        checkpoint()
    # (an answer: see there; said "the request JSON is malformed" of an answer, its words a request's)
    document = _parse_json(json_part, checkpoint, from_client=False, what="its JSON")
    if not isinstance(document, dict) or not isinstance(document.get("outputs"), list):
        # Some servers and gateways answer a failure with status 200 and the protocol's error document: its
        # message is what says what went wrong ("CUDA out of memory"), and was dropped.
        said = document.get("error") if isinstance(document, dict) else None
        detail = "" if said is None else f"; it says: {str(said)[:500]}"
        raise InvalidInputError(f"the response body is not an inference response (no 'outputs' list){detail}")
    binary = memoryview(body)[len(body) if json_length is None else json_length :]
    parameters = document.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise InvalidInputError(f"the answer's 'parameters' must be a JSON object, got a {_json_type(parameters)}")
    planned: list[tuple[TensorHeader, Any, int | None, int]] = []
    seen: set[str] = set()
    offset = 0
    for index, raw in enumerate(document["outputs"]):
        name, datatype, shape, tensor_parameters = _tensor_header(raw, index, limits)
        if name in seen:
            # Decoded one after the other into a dict, the last one silently won: which values the model meant
            # cannot be told.
            raise InvalidInputError(f"output {brief(name)} appears twice in the answer; fix the model server")
        seen.add(name)
        size = tensor_parameters.get("binary_data_size")
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= len(binary) - offset:
            planned.append((TensorHeader(name, datatype, tuple(shape)), raw, size, offset))
            offset += size
        elif size is None and "data" in raw:
            planned.append((TensorHeader(name, datatype, tuple(shape)), raw, None, 0))
        else:
            raise InvalidInputError(f"output {name!r}: no data, or a binary_data_size that does not fit the body")
    if offset != len(binary):
        # Sizes that do not claim the whole binary section lie about it (a server that wrote FP64 bytes for an
        # output declared FP32, with the size FP32 takes: the first half was read as the values, silently), as
        # a request's are refused on the server side.
        raise InvalidInputError(
            f"the binary section has {len(binary)} bytes but the outputs' binary_data_size add up to {offset}"
        )
    wanted = None if check is None else check([header for header, _, _, _ in planned])
    # A true among FP32 numbers was read as 1.0 (a server's bug passed as a value): looked for in the data, at C
    # speed, only when the text says true or false at all (a count of bytes, cheap next to the parse).
    bools_in_data = _bool_words(json_part) > 0
    outputs: dict[str, np.ndarray] = {}
    for header, raw, size, start in planned:
        name, datatype, shape = header.name, header.datatype, list(header.shape)
        if wanted is not None and name not in wanted:
            continue
        if checkpoint is not None:
            checkpoint()
        if size is not None:
            outputs[name] = _from_binary(
                binary[start : start + size], datatype, shape, name, role="output", checkpoint=checkpoint
            )
        else:
            outputs[name] = _from_json(
                raw["data"],
                datatype,
                shape,
                name,
                limits,
                role="output",
                bools_in_data=bools_in_data,
                null_is_nan=True,
                nested_as_shape=False,  # (a server's answer, read as Triton reads nested data: in order)
                checkpoint=checkpoint,
            )
            if datatype == "BYTES":
                _check_unicode(outputs[name], name)
    version = document.get("model_version")
    return InferResponse(
        model_name=str(document.get("model_name", "")),
        model_version=None if version is None else str(version),
        outputs=outputs,
        parameters=parameters or {},
        id=document.get("id"),
    )


def _json_type(value: object) -> str:
    return {list: "list", str: "string", bool: "boolean", int: "number", float: "number"}.get(type(value), "value")


def _check_unicode(array: np.ndarray, name: str) -> None:
    """Refuse a ``BYTES`` output read from JSON whose text UTF-8 cannot encode: a lone surrogate, which a JSON
    string can write (``"\\ud800"``) and no text tensor holds (onnxruntime fails the run of a string that is not
    UTF-8). Handed on, it broke whoever encoded the answer: the ``/v2`` endpoint raised ``UnicodeEncodeError``
    as it wrote a binary tensor, after the request was recorded as answered. (A binary tensor's elements are
    decoded as UTF-8 already, and refused if they are not.)

    Raises:
        InvalidInputError: the element, and why (the remote backend makes it the model's ``InferenceError``).
    """
    flat = array.reshape(-1).tolist()
    try:
        "".join(flat).encode("utf-8")  # (one pass in C: the common case)
    except UnicodeEncodeError:
        index = next(index for index, text in enumerate(flat) if not _encodable(text))
        raise InvalidInputError(
            f"output {brief(name)}: BYTES element #{index} is not valid Unicode text (it holds a lone surrogate, "
            "which JSON can write and UTF-8 cannot); fix the text the model server answers"
        ) from None


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
