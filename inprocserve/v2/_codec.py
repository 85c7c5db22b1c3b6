"""Inference requests and responses of the Open Inference Protocol (KServe v2 REST), as bytes <-> numpy.

Covers JSON tensors and the binary tensor data extension: with an ``Inference-Header-Content-Length``
header, the body is that many bytes of JSON followed by the raw tensors, in the order the JSON lists
them, each as long as its ``binary_data_size`` parameter says. Numbers are little-endian; a ``BYTES``
element is a 4-byte little-endian length followed by that many bytes; ``BOOL`` is one byte.

Everything here is pure (no I/O, no server) and treats the body as hostile: sizes, element counts,
ranks and nesting are capped by :class:`Limits`, and every way a request can be wrong raises
:class:`~inprocserve.InvalidInputError` with a message that says what to fix.
"""

from __future__ import annotations

import itertools
import json
import math
import struct
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._brief import brief
from .._errors import ConfigurationError, InvalidInputError
from .._headers import MAX_USER_ID_LENGTH, checked_user_id
from .._prediction import Prediction
from .._unique_json import DuplicateKeyError, too_many_digits, unique_keys
from ._datatypes import DATATYPES, datatype_of, numpy_dtype

# An integer user id longer than a user id may be (in decimal digits) is refused before it is turned into text.
_MAX_USER_ID_BITS = math.ceil(MAX_USER_ID_LENGTH * math.log2(10))

__all__ = [
    "HEADER_LENGTH",
    "InferRequest",
    "InferResponse",
    "Limits",
    "RequestedOutput",
    "TensorHeader",
    "decode_infer_request",
    "encode_infer_response",
    "uncarried_output",
]

HEADER_LENGTH = "Inference-Header-Content-Length"
"""The binary tensor data extension's header: how many leading bytes of the body are JSON."""

_LENGTH = struct.Struct("<I")
_SCALAR = (str, int, float, bool)


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Caps on what one request may ask of the server; anything over them is a 400, never a crash.

    Thread-safe: immutable.
    """

    max_body_bytes: int = 64 * 2**20
    """Largest request body, after any ``Content-Encoding`` is undone."""
    max_json_bytes: int = 16 * 2**20
    """Largest JSON part of a request: the whole body, or the ``Inference-Header-Content-Length`` bytes before
    binary tensors. Python's ``json`` parses in one C call that holds the GIL: every other thread of the worker
    waits while it runs (0.5 s for 16 MiB of numbers here, 1.3 s for 16 MiB of nested empty lists, four times
    that at the body's cap). Binary tensors cost no parse; send large tensors so."""
    max_elements: int = 16 * 2**20
    """Most tensor elements in one request, over all its inputs."""
    max_bytes_elements: int = 2**20
    """Most ``BYTES`` (text) elements in one request, over all its inputs: each becomes a Python ``str``
    of about 50 bytes or more, so they cost far more memory than numbers."""
    max_json_depth: int = 32
    """Deepest nesting of JSON ``data`` arrays (a flat row-major list has depth 1)."""
    max_tensors: int = 64
    """Most inputs, and most requested outputs, in one request."""
    max_rank: int = 16
    """Most dimensions of one tensor."""

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_json_bytes",
            "max_elements",
            "max_bytes_elements",
            "max_json_depth",
            "max_tensors",
            "max_rank",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"Limits.{name} must be an int >= 1, got {value!r}")


@dataclass(frozen=True, slots=True)
class RequestedOutput:
    """An output the client asked for; ``binary`` is ``None`` when the request-wide default applies."""

    name: str
    binary: bool | None = None


@dataclass(frozen=True, slots=True)
class TensorHeader:
    """What a request declares about one input, before its data is decoded: enough to check it against
    the model (see ``check`` of :func:`decode_infer_request`)."""

    name: str
    datatype: str
    shape: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class InferRequest:
    """A decoded inference request.

    Attributes:
        inputs: Input name -> array of the datatype and shape the request declared.
        datatypes: Input name -> the datatype as sent.
        outputs: The outputs asked for, in order, or ``None`` for every output of the model.
        parameters: The request's ``parameters``, as sent (``timeout``, ``user_id`` and any others).
        id: The request's ``id``, echoed in the response.
        binary_output: Whether outputs without their own ``binary_data`` parameter are sent binary.
        timeout_s: The ``timeout`` parameter (microseconds on the wire) in seconds; ``None`` or 0 is none.
        user_id: The ``user_id`` parameter, as a string, for rollout decisions.
    """

    inputs: dict[str, np.ndarray]
    datatypes: dict[str, str]
    outputs: tuple[RequestedOutput, ...] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
    binary_output: bool = False
    timeout_s: float | None = None
    user_id: str | None = None


@dataclass(frozen=True, slots=True)
class InferResponse:
    """A decoded inference response (what a client reads back)."""

    model_name: str
    model_version: str | None
    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


# -- server side: decode a request, encode a response -------------------------------------------------------


def decode_infer_request(
    body: bytes,
    headers: Mapping[str, str],
    *,
    limits: Limits | None = None,
    check: Callable[[Sequence[TensorHeader]], None] | None = None,
) -> InferRequest:
    """Decode an inference request body (JSON, or JSON followed by binary tensors).

    Every tensor's header (name, datatype, shape, element count, binary size) is checked first, and
    ``check`` sees them all, before any tensor's data is decoded: a request that cannot fit the model is
    refused without the memory its data would take once decoded.

    Args:
        body: The whole request body, with any ``Content-Encoding`` already undone.
        headers: The request headers (looked up case-insensitively).
        limits: The caps to enforce (default :class:`Limits`).
        check: Called once with every input's :class:`TensorHeader`, in request order, before any data is
            decoded; raises :class:`~inprocserve.InvalidInputError` (or any error) to refuse the request.

    Raises:
        InvalidInputError: the body is too large, not JSON, nested too deep, not an inference request,
            declares an unknown datatype or a bad shape, holds more elements than allowed, or its binary
            section does not match what the JSON declares.
    """
    limits = limits or Limits()
    if len(body) > limits.max_body_bytes:
        raise InvalidInputError(
            f"the request body is {len(body)} bytes, more than the {limits.max_body_bytes} allowed; "
            "send fewer rows per request"
        )
    if not body:  # (json's "Expecting value: line 1 column 1 (char 0)" blamed JSON no one sent)
        raise InvalidInputError(EMPTY_REQUEST)
    json_length = _header_length(headers, len(body))
    json_text = body if json_length is None else body[:json_length]
    if len(json_text) > limits.max_json_bytes:
        raise json_too_large(len(json_text), limits.max_json_bytes)
    # (a JSON part the header cut wrong was said to be malformed JSON: the client's JSON blamed, not the length)
    cut = (
        ""
        if json_length is None
        else f"; it is the body's first {json_length} bytes, as {HEADER_LENGTH} says: check that the header "
        "counts the JSON's bytes exactly"
    )
    document = _parse_json(json_text, malformed_hint=cut)
    binary = memoryview(body)[len(body) if json_length is None else json_length :]
    if not isinstance(document, dict):
        raise InvalidInputError("the request body must be a JSON object with an 'inputs' list")
    request_id = document.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInputError(f"'id' must be a string, got {type(request_id).__name__}")
    parameters = _parameters(document.get("parameters"), "the request")
    _refuse_sequence(parameters)
    raw_inputs = document.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInputError("the request needs an 'inputs' list with at least one tensor")
    if len(raw_inputs) > limits.max_tensors:
        raise InvalidInputError(f"the request has {len(raw_inputs)} inputs, more than the {limits.max_tensors} allowed")
    # First every tensor's header (cheap: at most max_tensors of them), then the data.
    planned: list[tuple[TensorHeader, dict[str, Any], int | None, int]] = []
    names: set[str] = set()
    offset = 0
    elements = 0
    text_elements = 0
    for index, raw in enumerate(raw_inputs):
        name, datatype, shape, tensor_parameters = _tensor_header(raw, index, limits)
        if name in names:
            raise InvalidInputError(f"input {brief(name)} appears twice; send each input once")
        names.add(name)
        count = math.prod(shape)
        elements += count
        if elements > limits.max_elements:
            raise InvalidInputError(
                f"the request holds more than {limits.max_elements} tensor elements (input {brief(name)} has "
                f"shape {shape}); send fewer rows per request"
            )
        if datatype == "BYTES":
            text_elements += count
            if text_elements > limits.max_bytes_elements:
                raise InvalidInputError(
                    f"the request holds more than {limits.max_bytes_elements} BYTES (text) elements (input "
                    f"{brief(name)} has shape {shape}); send fewer rows per request"
                )
        size = tensor_parameters.get("binary_data_size")
        if size is not None:
            if isinstance(size, bool) or not isinstance(size, int) or size < 0:
                raise InvalidInputError(
                    f"input {brief(name)}: binary_data_size must be an int >= 0, got {_json_brief(size)}"
                )
            if "data" in raw:
                raise InvalidInputError(f"input {brief(name)}: has both 'data' and binary_data_size; send one of them")
            if offset + size > len(binary):
                raise InvalidInputError(
                    f"input {brief(name)}: binary_data_size {size} runs past the end of the binary section "
                    f"({len(binary) - offset} bytes left); check {HEADER_LENGTH} and the sizes"
                )
        elif "data" not in raw:
            raise InvalidInputError(f"input {brief(name)}: has neither 'data' nor a binary_data_size parameter")
        planned.append((TensorHeader(name, datatype, tuple(shape)), raw, size, offset))
        offset += size or 0
    if offset != len(binary):
        raise InvalidInputError(
            f"the binary section has {len(binary)} bytes but the inputs' binary_data_size add up to {offset}"
        )
    binary_output = parameters.get("binary_data_output", False)
    if not isinstance(binary_output, bool):
        raise InvalidInputError(f"parameter binary_data_output must be true or false, got {_json_brief(binary_output)}")
    outputs = _requested_outputs(document.get("outputs"), limits)
    timeout_s = _timeout_s(parameters.get("timeout"))
    user_id = _user_id(parameters.get("user_id"))
    if check is not None:
        check([header for header, _, _, _ in planned])
    # json turns true/false into bools that numpy would take as 1/0 among numbers; look for them in a numeric
    # tensor's data only when the text has more true/false words than the document has bools elsewhere
    bools_in_data = False
    if any(size is None and header.datatype not in ("BOOL", "BYTES") for header, _, size, _ in planned):
        words = _bool_words(json_text)  # (a byte count: cheap next to the parse; the walk below only if any)
        if words:
            outside = _bools_outside_data(document)
            bools_in_data = outside is None or words > outside
    inputs: dict[str, np.ndarray] = {}
    datatypes: dict[str, str] = {}
    for header, raw, size, start in planned:
        name, datatype, shape = header.name, header.datatype, list(header.shape)
        if size is not None:
            inputs[name] = _from_binary(binary[start : start + size], datatype, shape, name)
        else:
            array = _from_json(raw["data"], datatype, shape, name, limits, bools_in_data=bools_in_data)
            # Python's json reads a literal past float64 (1e400) as infinity, as it reads the token Infinity:
            # such a literal is refused, as 1e39 is for FP32 (looked for only in data that holds an infinity)
            if array.dtype.kind == "f" and np.isinf(array).any() and _overflowed(raw["data"], array):
                raise InvalidInputError(
                    f"input {brief(name)}: 'data' holds a number too large for any float (such as 1e400); send a "
                    "value that fits, or the token Infinity (or -Infinity) if infinity is meant"
                )
            inputs[name] = array
        datatypes[name] = datatype
    return InferRequest(
        inputs=inputs,
        datatypes=datatypes,
        outputs=outputs,
        parameters=parameters,
        id=request_id,
        binary_output=binary_output,
        timeout_s=timeout_s,
        user_id=user_id,
    )


def encode_infer_response(
    prediction: Prediction | Mapping[str, Any],
    requested: Sequence[RequestedOutput] | None = None,
    *,
    binary: bool = False,
    model_name: str | None = None,
    model_version: int | str | None = None,
    request_id: str | None = None,
    parameters: Mapping[str, Any] | None = None,
    uncarried: Mapping[str, str] | None = None,
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as a response body; returns ``(body, headers)``.

    Args:
        prediction: The answer (a :class:`~inprocserve.Prediction` names its model and version itself).
        requested: The outputs to send, in order; ``None`` sends every output.
        binary: Send outputs without their own choice as binary tensors.
        uncarried: The model's tensor outputs of a type the protocol has no datatype for, with their ONNX type
            (``tensor(float8e4m3fn)``: onnxruntime answers its bits as ``uint8``, which would be sent as
            ``UINT8`` numbers the model never meant): left out of every output, refused by name.

    Raises:
        InvalidInputError: a requested output is not an output of the model, or a ``BYTES`` output to send
            as JSON holds ``bytes`` that are not UTF-8 text.
        TypeError: an output has a numpy dtype the protocol cannot carry.
    """
    if isinstance(prediction, Prediction):
        model_name = prediction.model if model_name is None else model_name
        model_version = prediction.version if model_version is None else model_version
    uncarried = uncarried or {}
    if requested is None:  # every output the protocol can carry
        wanted = [RequestedOutput(name) for name in carried_outputs(prediction, uncarried, model_name)]
    else:
        wanted = list(requested)
    outputs: list[tuple[dict[str, Any], np.ndarray | None]] = []  # each entry, and its array to write as JSON
    chunks: list[bytes] = []
    for output in wanted:
        if output.name not in prediction:
            raise InvalidInputError(
                f"output {brief(output.name)} is not an output of model {model_name!r}; "
                f"outputs: {', '.join(prediction)}"
            )
        value = prediction[output.name]
        if output.name in uncarried:
            raise uncarried_output(output.name, model_name, uncarried[output.name])
        if not _is_tensor(value):
            raise InvalidInputError(
                f"output {brief(output.name)} of model {model_name!r} is a sequence or map (an ONNX ZipMap, say), "
                "which the protocol cannot carry; ask for the model's tensor outputs with 'outputs'"
            )
        array = np.asarray(value)
        entry: dict[str, Any] = {"name": output.name, "datatype": datatype_of(array.dtype), "shape": list(array.shape)}
        if binary if output.binary is None else output.binary:
            raw = _to_binary(array)
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
            outputs.append((entry, None))
        else:
            outputs.append((entry, array))
    document: dict[str, Any] = {"model_name": model_name}
    if model_version is not None:
        document["model_version"] = str(model_version)
    if request_id is not None:
        document["id"] = request_id
    if parameters:
        document["parameters"] = dict(parameters)
    if all(data is None or data.size <= _JSON_SLICE for _, data in outputs):  # (most answers: one json.dumps)
        document["outputs"] = [
            entry if data is None else {**entry, "data": _to_json(data, entry["name"], "output")}
            for entry, data in outputs
        ]
        return _assemble(document, chunks)
    # The document as json.dumps writes it, "outputs" last, each output's "data" written in slices: in one call,
    # a JSON answer of 16 Mi FP32 held the GIL for 10 s (every other thread of the worker stalled) and took
    # 1.8 GiB (a Python float per element, then the text, then its bytes) for a 323 MB answer.
    head = json.dumps({**document, "outputs": []}, separators=(",", ":")).encode()
    parts = [head[: -len(b"[]}")], b"["]
    for index, (entry, data) in enumerate(outputs):
        text = json.dumps(entry, separators=(",", ":")).encode()
        parts += [b","] if index else []
        if data is None:
            parts.append(text)
        else:
            parts += [text[:-1], b',"data":[', *_json_elements(data, entry["name"], "output"), b"]}"]
    parts.append(b"]}")
    return _assemble_parts(parts, chunks)


def carried_outputs(outputs: Mapping[str, Any], uncarried: Mapping[str, str], model: object) -> list[str]:
    """The outputs an answer that names none sends: its tensors of a type the protocol has a datatype for.

    Raises:
        InvalidInputError: the answer has outputs, and none of them is one.
    """
    carried = [name for name, value in outputs.items() if _is_tensor(value) and name not in uncarried]
    if not carried and len(outputs):
        raise InvalidInputError(
            f"model {model!r} has no tensor outputs: {', '.join(outputs)} are sequences or maps, "
            "which the protocol cannot carry"
        )
    return carried


def uncarried_output(name: str, model: object, onnx_type: str) -> InvalidInputError:
    """The refusal of a requested output whose tensor type (float8, say) the protocol has no datatype for."""
    return InvalidInputError(
        f"output {brief(name)} of model {brief(model)} is a {onnx_type}, which the protocol has no datatype for; "
        "ask for the model's other outputs with 'outputs'"
    )


# -- pieces ----------------------------------------------------------------------------------------------------


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict: compare names case-insensitively, as HTTP does
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _header_length(headers: Mapping[str, str], body_length: int) -> int | None:
    raw = _header(headers, HEADER_LENGTH)
    if raw is None:
        return None
    # ASCII digits only: int() also takes "1_04", "+104" and other scripts' digits, and a length read so was
    # blamed on the JSON it cut short ("the request JSON is malformed")
    text = raw.strip()
    if not text.isascii() or not text.isdigit():
        raise InvalidInputError(f"{HEADER_LENGTH} must be a number of bytes, got {raw[:40]!r}")
    digits = text.lstrip("0") or "0"
    if len(digits) > 18 or int(digits) > body_length:  # (thousands of digits: never given to int())
        raise InvalidInputError(f"{HEADER_LENGTH} is {digits[:40]}, outside the body's {body_length} bytes")
    return int(digits)


def json_too_large(size: int, limit: int) -> InvalidInputError:
    """The refusal of a request whose JSON is over ``Limits.max_json_bytes`` (``size`` bytes, or at least so many
    where the body is refused as it is read)."""
    return InvalidInputError(
        f"the request's JSON is {size} bytes or more, over the {limit} allowed (Limits.max_json_bytes); send large "
        f"tensors as binary data (binary_data_size and the {HEADER_LENGTH} header, as tritonclient does with "
        "binary_data=True), or fewer rows per request"
    )


EMPTY_REQUEST = (
    "the request body is empty; send the inference request, a JSON object with an 'inputs' list (a body sent "
    "chunked also arrives empty where the server could not read its framing: granian hands such a body on so)"
)
"""Said of a request with no body. granian hands a chunked body whose framing it cannot read (a chunk size that
is no number) to the application as an empty one, where gunicorn and werkzeug raise an error the plug-ins
answer 400 naming it; to the endpoint the two are one."""

_HOOKED_PARSE_ABOVE_BYTES = 1 << 20
"""A JSON document longer than this, parsed with a ``checkpoint``, has its numbers parsed through it."""


def _parse_json(
    raw: bytes | memoryview,
    checkpoint: Callable[[], None] | None = None,
    *,
    from_client: bool = True,
    malformed_hint: str = "",
    what: str = "the request JSON",
) -> Any:
    """``raw`` parsed. With ``checkpoint``, a document over 1 MiB calls it every :data:`CHECK_EVERY` numbers:
    ``json.loads`` is one call that holds the GIL throughout, and a one-row answer of 10 million FP32 (a
    dynamic non-batch axis) took 2 s to parse, past a 0.5 s deadline, every other thread of the process
    stalled. Numbers parsed through a Python function cost about 30% more, and let other threads run between
    them. (Text has no such hook: a document of strings is parsed in one go.) A client's request may name a key
    once (``_unique_json``); an answer read from a model server (``from_client=False``) is read as json reads it.
    ``malformed_hint`` ends the message of malformed JSON (where it came from, when that may be the fault);
    ``what`` starts each message (``"its JSON"``: an answer's, whose caller says whose)."""
    if checkpoint is not None and len(raw) > _HOOKED_PARSE_ABOVE_BYTES:
        seen = 0

        def counted(convert: Callable[[str], Any]) -> Callable[[str], Any]:
            def parse(text: str) -> Any:
                nonlocal seen
                seen += 1
                if not seen % CHECK_EVERY:
                    checkpoint()
                return convert(text)

            return parse

        hooks: dict[str, Any] = {"parse_float": counted(float), "parse_int": counted(int)}
    else:
        hooks = {}
    try:
        if from_client and not hooks:  # (a decoder made once: json.loads given any keyword makes one per call)
            text = bytes(raw)
            return _CLIENT_DECODER.decode(text.decode(json.detect_encoding(text), "surrogatepass"))
        if from_client:
            hooks["object_pairs_hook"] = unique_keys
            hooks["parse_constant"] = _CONSTANTS.__getitem__
        return json.loads(bytes(raw), **hooks)
    except RecursionError:
        raise InvalidInputError(f"{what} is nested too deeply to parse") from None
    except DuplicateKeyError as exc:
        raise InvalidInputError(f"{what} is ambiguous: {exc}") from None
    except ValueError as exc:  # malformed, not UTF-8, or an integer of more digits than Python converts
        if from_client and too_many_digits(exc):
            raise InvalidInputError(
                f"{what} holds an integer of more than {sys.get_int_max_str_digits()} digits, which no "
                "datatype, shape or parameter takes; send numbers that fit the tensor's datatype"
            ) from None
        raise InvalidInputError(f"{what} is malformed: {exc}{malformed_hint}") from None


_JSON_WORDS = {None: "null", True: "true", False: "false"}
_SHOWN_CHARACTERS = 40


def _json_brief(value: object, depth: int = 2) -> str:
    """A value read from the request's JSON, shown as the client wrote it (``null``, ``true``, ``"text"``),
    cut short as :func:`brief` does: Python's ``None``, ``True`` and ``'text'`` named values the client never
    sent (a JavaScript client's ``null`` was refused as "got None")."""
    if value is None or isinstance(value, bool):
        return _JSON_WORDS[value]
    if isinstance(value, str):
        if len(value) <= _SHOWN_CHARACTERS:
            return json.dumps(value, ensure_ascii=False)
        return f"{json.dumps(value[:_SHOWN_CHARACTERS], ensure_ascii=False)}...({len(value)} characters)"
    if isinstance(value, list) and depth > 0:
        shown = [_json_brief(item, depth - 1) for item in value[:8]]
        return "[" + ", ".join(shown + (["..."] if len(value) > 8 else [])) + "]"
    if isinstance(value, list | dict):
        return "[...]" if isinstance(value, list) else "{...}"
    return brief(value)


def _parameters(raw: object, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInputError(f"{where}: 'parameters' must be a JSON object, got {type(raw).__name__}")
    for key, value in raw.items():
        if value is not None and not isinstance(value, _SCALAR):
            raise InvalidInputError(f"{where}: parameter {brief(key)} must be a string, number or boolean")
    return raw


def _refuse_sequence(parameters: Mapping[str, Any]) -> None:
    """Refuse a request of a sequence (``sequence_id`` other than 0 or "", or ``sequence_start`` or ``sequence_end``
    true, as tritonclient sends them): the models here keep no state between requests, so answering it as a
    lone request would drop the state the client relies on, silently."""
    if parameters.get("sequence_id") not in (None, 0, "") or any(
        parameters.get(flag) is True for flag in ("sequence_start", "sequence_end")
    ):
        raise InvalidInputError(
            "the sequence extension is not supported (sequence_id, sequence_start, sequence_end): models served "
            "here keep no state between requests; send each request without them"
        )


def _tensor_header(raw: object, index: int, limits: Limits) -> tuple[str, str, list[int], dict[str, Any]]:
    if not isinstance(raw, dict):
        raise InvalidInputError(f"tensor #{index} must be a JSON object with name, shape, datatype")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidInputError(f"tensor #{index}: 'name' must be a non-empty string")
    datatype = raw.get("datatype")
    numpy_dtype(datatype, tensor=name)  # raises for an unknown datatype
    assert isinstance(datatype, str)
    shape = raw.get("shape")
    if not isinstance(shape, list) or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape):
        raise InvalidInputError(f"tensor {brief(name)}: 'shape' must be a list of ints >= 0, got {_json_brief(shape)}")
    if len(shape) > limits.max_rank:
        raise InvalidInputError(
            f"tensor {brief(name)}: {len(shape)} dimensions, more than the {limits.max_rank} allowed"
        )
    if any(d > limits.max_elements for d in shape):  # also keeps math.prod small
        raise InvalidInputError(f"tensor {brief(name)}: shape {shape} has more than {limits.max_elements} elements")
    # An empty tensor's other sizes count too: numpy refuses to shape even an empty array past its address space
    # ([1, 0, 2**24, 2**24, 2**24] of FP32), and its ValueError was a 500
    if 0 in shape and math.prod(d for d in shape if d) > limits.max_elements:
        raise InvalidInputError(
            f"tensor {brief(name)}: shape {shape} is empty, but its other sizes make more than {limits.max_elements} "
            "elements; send the sizes the model takes"
        )
    tensor_parameters = _parameters(raw.get("parameters"), f"tensor {brief(name)}")
    for unsupported in ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset"):
        if unsupported in tensor_parameters:
            raise InvalidInputError(
                f"tensor {brief(name)}: the shared memory extension is not supported; send the data"
            )
    return name, datatype, shape, tensor_parameters


def _requested_outputs(raw: object, limits: Limits) -> tuple[RequestedOutput, ...] | None:
    """The outputs a request names, ``None`` for every output: no ``outputs``, or an empty list, which KServe's
    and MLServer's servers answer with every output too (answered with none, the model ran for an empty answer)."""
    if raw is None or raw == []:
        return None
    if not isinstance(raw, list) or len(raw) > limits.max_tensors:
        raise InvalidInputError(f"'outputs' must be a list of at most {limits.max_tensors} {{'name': ...}} objects")
    requested: list[RequestedOutput] = []
    for index, entry in enumerate(raw):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise InvalidInputError(f"outputs #{index}: must be an object with a non-empty 'name'")
        assert isinstance(entry, dict)
        parameters = _parameters(entry.get("parameters"), f"output {brief(name)}")
        if parameters.get("classification"):
            raise InvalidInputError(f"output {brief(name)}: the classification extension is not supported")
        if "shared_memory_region" in parameters:
            raise InvalidInputError(f"output {brief(name)}: the shared memory extension is not supported")
        binary = parameters.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InvalidInputError(
                f"output {brief(name)}: binary_data must be true or false, got {_json_brief(binary)}"
            )
        if any(r.name == name for r in requested):
            raise InvalidInputError(f"output {brief(name)} is requested twice")
        requested.append(RequestedOutput(name, binary))
    return tuple(requested)


def _timeout_s(raw: object) -> float | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise InvalidInputError(f"parameter timeout must be a number of microseconds >= 0, got {_json_brief(raw)}")
    try:
        microseconds = float(raw)  # (an integer too large for a float overflows here)
    except OverflowError:
        microseconds = math.inf
    if not microseconds >= 0 or not math.isfinite(microseconds):
        raise InvalidInputError(f"parameter timeout must be a number of microseconds >= 0, got {str(raw)[:40]}")
    return None if microseconds == 0 else microseconds / 1e6


def _user_id(raw: object) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        raise InvalidInputError(f"parameter user_id must be a string or an integer, got {_json_brief(raw)}")
    if isinstance(raw, int) and raw.bit_length() > _MAX_USER_ID_BITS:  # (str() of a huge one costs, or fails)
        raise InvalidInputError(f"parameter user_id: an integer of {raw.bit_length()} bits is not a user id")
    return checked_user_id(str(raw), "parameter user_id")  # the rule of the X-User-Id header


CHECK_EVERY = 1 << 16
"""How many ``BYTES`` elements are decoded between two calls of a decoder's ``checkpoint`` (about 25 ms)."""


def _from_binary(
    raw: memoryview,
    datatype: str,
    shape: list[int],
    name: str,
    *,
    role: str = "input",
    checkpoint: Callable[[], None] | None = None,
) -> np.ndarray:
    """A binary tensor as an array of ``datatype`` and ``shape``. ``checkpoint`` (when given) is called every
    :data:`CHECK_EVERY` ``BYTES`` elements, and raises to stop the decoding (a deadline passed)."""
    count = math.prod(shape)
    if datatype == "BYTES":
        return np.array(_split_bytes(raw, count, name, role, checkpoint), dtype=object).reshape(shape)
    dtype = DATATYPES[datatype]
    if datatype == "BOOL":
        dtype = np.dtype(np.uint8)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInputError(
            f"{role} {brief(name)}: shape {shape} of {datatype} needs {expected} bytes, "
            f"but binary_data_size is {len(raw)}"
        )
    # Copied: the body's buffer may be unaligned and is read-only; the model gets an ordinary array.
    array = np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype.newbyteorder("="))
    if datatype == "BOOL":
        array = array != 0
    return array.reshape(shape)


def _split_bytes(
    raw: memoryview, count: int, name: str, role: str, checkpoint: Callable[[], None] | None = None
) -> list[str]:
    elements: list[str] = []
    offset = 0
    # In runs of CHECK_EVERY elements, ``checkpoint`` between them: each element costs about 0.4 us, so a one-row
    # answer of 4 million elements (a dynamic non-batch axis passes the shape checks) took 1.9 s to decode,
    # after a 0.5 s deadline. (No cost per element: the inner loop is the one there was.)
    for start in range(0, count, CHECK_EVERY):
        if checkpoint is not None:
            checkpoint()
        for _ in range(min(CHECK_EVERY, count - start)):
            if offset + 4 > len(raw):
                raise InvalidInputError(f"{role} {brief(name)}: the BYTES data ends before its {count} elements")
            (length,) = _LENGTH.unpack_from(raw, offset)
            offset += 4
            if offset + length > len(raw):
                raise InvalidInputError(f"{role} {brief(name)}: a BYTES element of {length} bytes runs past its data")
            try:
                elements.append(str(raw[offset : offset + length], "utf-8"))
            except UnicodeDecodeError:
                raise InvalidInputError(
                    f"{role} {brief(name)}: BYTES element #{len(elements)} is not UTF-8 text "
                    "(BYTES tensors here hold text, as ONNX string tensors do)"
                ) from None
            offset += length
    if offset != len(raw):
        raise InvalidInputError(
            f"{role} {brief(name)}: {len(raw) - offset} bytes left over after its {count} BYTES elements"
        )
    return elements


def _bool_words(text: bytes) -> int:
    """How many ``true``/``false`` words the JSON text holds (bool literals, or words inside strings)."""
    return text.count(b"true") + text.count(b"false")


class _InfinityToken(float):
    """The token ``Infinity`` or ``-Infinity`` of a client's JSON, told from a number literal too large for any
    float (``1e400``), which json reads as a plain infinity."""


_CONSTANTS = {"Infinity": _InfinityToken("inf"), "-Infinity": _InfinityToken("-inf"), "NaN": math.nan}
_CLIENT_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys, parse_constant=_CONSTANTS.__getitem__)
"""A client's JSON: each key named once (``_unique_json``), the infinity tokens told from overflowed literals."""


def _leaves(data: object, depth: int) -> Any:
    """The values of rectangular nested lists ``depth`` levels deep (a lone value: itself), read lazily in C."""
    items: Any = data if isinstance(data, list) else [data]
    for _ in range(depth - 1):
        items = itertools.chain.from_iterable(items)
    return items


def _overflowed(data: object, array: np.ndarray) -> bool:
    """Whether a tensor's JSON ``data``, decoded as ``array``, holds a number literal too large for any float:
    it has more infinite values than ``Infinity`` tokens. Counted in C: parsed again with a Python hook on
    every number, a 64 MB request with one Infinity among 16 Mi FP32 took 24 s to decode instead of 6."""
    depth = 0
    probe = data
    while isinstance(probe, list) and probe:  # (rectangular: numpy read it so)
        depth += 1
        probe = probe[0]
    tokens = sum(map(isinstance, _leaves(data, max(depth, 1)), itertools.repeat(_InfinityToken)))
    return tokens < int(np.count_nonzero(np.isinf(array)))


_OUTSIDE_DATA_VALUES = 1 << 12
"""Most values :func:`_bools_outside_data` walks; past them, each tensor's data is looked at itself (in C)."""


def _bools_outside_data(document: dict[str, Any]) -> int | None:
    """How many bools the document holds outside its inputs' ``data`` (parameters and the like: small), or
    ``None`` past :data:`_OUTSIDE_DATA_VALUES` values there: a key the protocol does not have may hold a long
    list, and walked in Python, 30 Mi zeros under one made a 60 MB request that said ``true`` anywhere take 15 s
    to decode instead of 5."""
    budget = _OUTSIDE_DATA_VALUES - len(document)
    if budget < 0:
        return None
    pending: list[Any] = []
    for key, value in document.items():
        if key == "inputs" and isinstance(value, list):  # (at most Limits.max_tensors of them)
            for tensor in value:
                if isinstance(tensor, dict):
                    budget -= len(tensor)
                    if budget < 0:
                        return None
                    pending += [v for k, v in tensor.items() if k != "data"]
                else:
                    pending.append(tensor)
        else:
            pending.append(value)
    count = 0
    while pending:
        value = pending.pop()
        if value is True or value is False:
            count += 1
        elif isinstance(value, dict | list):
            budget -= len(value)
            if budget < 0:
                return None
            pending += value.values() if isinstance(value, dict) else value
    return count


def _holds_bool(data: object, depth: int) -> bool:
    """Whether rectangular nested lists ``depth`` levels deep hold a bool, the values' types looked at in C (a
    walk in Python took 12 s for 16 Mi numbers, which the word ``true`` in any string of a request set off)."""
    return bool in set(map(type, _leaves(data, depth)))


def _from_json(
    data: object,
    datatype: str,
    shape: list[int],
    name: str,
    limits: Limits,
    *,
    bools_in_data: bool = False,
    role: str = "input",
    null_is_nan: bool = False,
    nested_as_shape: bool = True,
    checkpoint: Callable[[], None] | None = None,
) -> np.ndarray:
    """A tensor's JSON ``data`` as an array of ``datatype`` and ``shape``, every value checked. ``role`` names
    the tensor in errors (``"output"`` for a response's). With ``null_is_nan``, a ``null`` in floating-point
    data is NaN: MLServer and KServe's Python server write NaN so in their answers (JSON has no number for
    it). A request's ``null`` is refused: it is more likely a missing value than a NaN. With
    ``nested_as_shape``, nested lists must be nested as ``shape`` says (see :func:`_nesting_problem`).
    ``checkpoint``: as for :func:`_from_binary`, every :data:`CHECK_EVERY` ``BYTES`` elements checked."""
    count = math.prod(shape)
    depth = 0
    probe = data
    while isinstance(probe, list):
        depth += 1
        if depth > limits.max_json_depth:
            raise InvalidInputError(
                f"{role} {brief(name)}: 'data' is nested deeper than {limits.max_json_depth} levels; send a flat list"
            )
        probe = probe[0] if probe else None
    if not isinstance(data, list):
        data = [data]  # a lone scalar, for a tensor of one element
    if datatype == "BYTES":
        try:
            nested = np.array(data, dtype=object)
        except ValueError:  # ragged nesting
            nested = np.array([None], dtype=object)
        flat = nested.reshape(-1)
        if flat.size != count or not _all_text(flat, checkpoint):
            raise InvalidInputError(f"{role} {brief(name)}: BYTES 'data' must be {count} strings for shape {shape}")
        if nested_as_shape and (problem := _nesting_problem(nested.shape, shape)) is not None:
            raise InvalidInputError(f"{role} {brief(name)}: {problem}")
        return flat.reshape(shape)
    try:
        array = np.array(data)
    except (ValueError, TypeError, OverflowError):
        raise InvalidInputError(
            f"{role} {brief(name)}: 'data' must be a list of numbers (flat, row-major) or rectangular nested lists"
        ) from None
    if array.size != count:
        raise InvalidInputError(
            f"{role} {brief(name)}: 'data' holds {array.size} values but shape {shape} needs {count}"
        )
    if nested_as_shape and (problem := _nesting_problem(array.shape, shape)) is not None:
        raise InvalidInputError(f"{role} {brief(name)}: {problem}")
    dtype = DATATYPES[datatype]
    if dtype.kind == "f" and array.dtype.kind == "O" and array.size:  # integers past uint64, or nulls
        array = _floats(data, array, datatype, name, role, null_is_nan=null_is_nan)
    if dtype.kind in "iu" and array.dtype.kind in "fO" and array.size:  # past int64 and below 0: floats or objects
        array = _integers(data, array, datatype, name, role)
    kinds = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}[dtype.kind]  # never bools as numbers, or floats as ints
    if array.size and array.dtype.kind not in kinds:
        raise InvalidInputError(
            f"{role} {brief(name)}: 'data' holds {_refused_values(array, dtype)}, which is not {datatype}"
        )
    if bools_in_data and dtype.kind != "b" and array.dtype.kind != "b" and _holds_bool(data, array.ndim):
        raise InvalidInputError(
            f"{role} {brief(name)}: 'data' mixes true/false with numbers, which is not {datatype}; send 1 and 0, "
            "or the tensor as BOOL"
        )
    if dtype.kind in "iu" and array.size and array.dtype.kind in "iu":
        info = np.iinfo(dtype)
        if array.min() < info.min or array.max() > info.max:
            raise InvalidInputError(f"{role} {brief(name)}: values do not fit in {datatype} ({info.min}..{info.max})")
    if dtype.kind == "f":
        with np.errstate(over="ignore"):
            cast = array.astype(dtype)
        if array.size and (np.isinf(cast) & ~np.isinf(array)).any():
            raise InvalidInputError(f"{role} {brief(name)}: values are too large for {datatype}")
        return cast.reshape(shape)
    return array.astype(dtype).reshape(shape)


def _nesting_problem(nested: tuple[int, ...], shape: list[int]) -> str | None:
    """What is wrong with ``data`` nested as ``nested`` for a tensor of ``shape``, or ``None``: the protocol
    takes a tensor's values flat in row-major order, or nested as the tensor is (its "natural" form). Nested
    any other way (rows of 2 for a shape of [2, 4], or a [1, 4] matrix for a shape of [4]) the values were
    taken in order and laid out as the shape says: a client that had its features and rows mixed up got an
    answer computed on scrambled inputs instead of an error."""
    if len(nested) <= 1 or list(nested) == shape:
        return None
    return (
        f"'data' is nested as {list(nested)}, but the tensor's shape is {shape}; send the values flat, in "
        "row-major order, or nested as the shape says"
    )


def _all_text(flat: np.ndarray, checkpoint: Callable[[], None] | None) -> bool:
    """Whether every element of the object array ``flat`` is a ``str``, checked in runs of :data:`CHECK_EVERY`
    with ``checkpoint`` between them."""
    for start in range(0, flat.size, CHECK_EVERY):
        if checkpoint is not None:
            checkpoint()
        if any(not isinstance(x, str) for x in flat[start : start + CHECK_EVERY]):
            return False
    return True


def _is_tensor(value: object) -> bool:
    """Whether an output is a tensor the protocol can carry: onnxruntime answers a sequence (of maps, from a
    ZipMap) as a list, which ``np.asarray`` would make an object array of dicts, sent as their text."""
    if isinstance(value, np.ndarray):
        array = value
    else:  # a list of numbers or text given to encode_infer_response is a tensor still, not one of tensors
        if isinstance(value, dict) or (
            isinstance(value, list | tuple) and any(isinstance(item, np.ndarray | dict) for item in value)
        ):
            return False
        try:
            array = np.asarray(value)
        except (ValueError, TypeError):  # ragged
            return False
    if array.dtype.kind != "O":
        return True
    return all(isinstance(element, str | bytes) for element in array.flat)


_NUMBERS = frozenset((int, float, _InfinityToken))
"""The types of a JSON number (an infinity token's among them)."""
_NUMBERS_OR_NULL = _NUMBERS | {type(None)}


def _floats(data: object, array: np.ndarray, datatype: str, name: str, role: str, *, null_is_nan: bool) -> np.ndarray:
    """Floating-point JSON data that numpy made an array of objects, as float64: integers past uint64's range
    (JavaScript's ``JSON.stringify`` and Go's ``encoding/json`` write a float below 1e21 such as 1e20 as
    ``100000000000000000000``, which Python reads as an int numpy cannot hold), and with ``null_is_nan`` a
    ``null`` as NaN (MLServer writes NaN so in its answers: JSON has no number for it). Data holding anything
    else (text, bools, ``null`` in a request) is returned as it was, for the caller to refuse.

    Raises:
        InvalidInputError: an integer too large for any float (hundreds of digits).
    """
    try:
        flat = np.array(data, dtype=object).reshape(-1)
    except ValueError:  # ragged
        return array
    # (the types, and the conversion, looked at in C: in Python, one 1e20 written so among 12 Mi FP32 took the
    # request 6 s to decode instead of 1.6)
    if flat.size != array.size or not set(map(type, flat)) <= (_NUMBERS_OR_NULL if null_is_nan else _NUMBERS):
        return array
    try:
        return flat.astype(np.float64).reshape(array.shape)  # (None: NaN)
    except OverflowError:  # an integer past float64's range
        raise InvalidInputError(f"{role} {brief(name)}: values are too large for {datatype}") from None


def _refused_values(array: np.ndarray, dtype: np.dtype[Any]) -> str:
    """What a tensor's ``data`` holds that its datatype refuses, said so that the client knows what to send:
    a ``null`` (JSON has no NaN: clients such as KServe's write one so) and a float sent for an integer tensor
    each read "values of mixed or unsupported types" before."""
    if array.dtype.kind == "U":
        return "text"
    # (the types looked at in C, as in _floats: a Python step per value took a refused body of millions longer)
    types = set(map(type, array.flat)) if array.dtype.kind == "O" else set()
    if type(None) in types:
        return "null (a missing value: JSON has no NaN; send such a tensor in binary)"
    if dtype.kind in "iu" and (array.dtype.kind == "f" or float in types):
        return "numbers with a fraction or an exponent (1.5, 2.0, 1e3): send whole numbers"
    if dtype.kind != "b" and array.dtype.kind == "b":
        return "true/false"
    return "values of mixed or unsupported types"


def _integers(data: object, array: np.ndarray, datatype: str, name: str, role: str) -> np.ndarray:
    """JSON integers for an integer datatype, as exact Python integers: numpy turns a list that mixes values
    past int64's range (a UINT64 above 2**63) with others into float64 (or objects), which would round them.
    Anything but integers is returned as it was, for the caller to refuse."""
    exact = np.array(data, dtype=object)
    if exact.shape != array.shape or set(map(type, exact.flat)) != {int}:  # (in C: see _floats)
        return array
    info = np.iinfo(DATATYPES[datatype])
    if min(exact.flat) < info.min or max(exact.flat) > info.max:
        raise InvalidInputError(f"{role} {brief(name)}: values do not fit in {datatype} ({info.min}..{info.max})")
    return exact.astype(DATATYPES[datatype])


def _to_binary(array: np.ndarray) -> bytes:
    if array.dtype.kind in "OSU":
        parts: list[bytes] = []
        for element in array.reshape(-1):
            raw = element if isinstance(element, bytes) else str(element).encode()
            parts.append(_LENGTH.pack(len(raw)))
            parts.append(raw)
        return b"".join(parts)
    if array.dtype.kind == "b":
        array = array.astype(np.uint8)
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def _to_json(array: np.ndarray, name: str, role: str = "input") -> list[Any]:
    if array.dtype.kind in "OSU":
        return [_json_text(x, index, name, role) for index, x in enumerate(array.reshape(-1))]
    flat: list[Any] = array.reshape(-1).tolist()
    return flat


_JSON_SLICE = 1 << 14
"""Elements of an output written as JSON per ``json.dumps`` call (other threads run between calls)."""


def _json_elements(array: np.ndarray, name: str, role: str) -> list[bytes]:
    """``array``'s elements as the text between the brackets of its JSON ``data`` list, in pieces, exactly as
    ``json.dumps(_to_json(array, ...), separators=(",", ":"))`` writes them."""
    flat = array.reshape(-1)
    text = flat.dtype.kind in "OSU"
    pieces: list[bytes] = []
    for start in range(0, flat.size, _JSON_SLICE):
        part = flat[start : start + _JSON_SLICE]
        values = [_json_text(x, start + i, name, role) for i, x in enumerate(part)] if text else part.tolist()
        pieces += [b","] if pieces else []
        pieces.append(json.dumps(values, separators=(",", ":"))[1:-1].encode())
    return pieces


def _json_text(element: Any, index: int, name: str, role: str) -> str:
    """A ``BYTES`` element as a JSON string: ``bytes`` must be UTF-8 text (a JSON string cannot hold other bytes;
    replaced by U+FFFD, two different images were sent as the same text)."""
    if not isinstance(element, bytes):
        return str(element)
    try:
        return element.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInputError(
            f"{role} {brief(name)}: BYTES element #{index} is bytes that are not UTF-8 text, which JSON cannot carry; "
            "send it as a binary tensor, or encode it as text (base64, say) if the model expects that"
        ) from None


def _assemble(document: dict[str, Any], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    return _assemble_parts([json.dumps(document, separators=(",", ":")).encode()], chunks)


def _assemble_parts(parts: list[bytes], chunks: list[bytes]) -> tuple[bytes, dict[str, str]]:
    """A body of the JSON document written in ``parts``, then the binary ``chunks``, and its headers."""
    header = b"".join(parts)
    del parts[:]  # (its pieces, as large as the JSON itself, are not kept while it is copied again)
    if not chunks:
        return header, {"Content-Type": "application/json"}
    return b"".join([header, *chunks]), {
        "Content-Type": "application/octet-stream",
        HEADER_LENGTH: str(len(header)),
    }
