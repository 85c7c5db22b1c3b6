"""JSON objects that name a key once: what the server parses from clients (``/v2`` requests, admin bodies).

``json`` keeps the last value of a repeated key; other parsers keep the first (Triton's rapidjson, many
gateways and web application firewalls). A proxy that checked ``{"inputs": <allowed>, "inputs": <other>}``
would pass one request and this server run another, so such an object is refused, naming the key.
"""

from __future__ import annotations

import json
from typing import Any

from ._brief import brief

__all__ = ["DuplicateKeyError", "loads", "too_many_digits", "unique_keys"]


class DuplicateKeyError(ValueError):
    """A JSON object named one key twice (see :func:`unique_keys`)."""


def unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``'s ``object_pairs_hook``: the object, unless it names a key twice
    (:class:`DuplicateKeyError`, a ``ValueError``). A tensor's data is an array, never an object: the hook
    runs a few times per request."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))  # type: ignore[func-returns-value]
        raise DuplicateKeyError(f"an object names the key {brief(repeated)} twice; send each key once")
    return document


_DECODER = json.JSONDecoder(object_pairs_hook=unique_keys)


def loads(document: bytes | str) -> Any:
    """``json.loads(document)`` with :func:`unique_keys`, on a decoder made once: ``json.loads`` given any
    keyword builds a new decoder per call, which cost a ``/v2`` request 5.5-7.8 µs where the hook itself costs
    about 1 µs. Bytes are decoded as ``json.loads`` decodes them (UTF-8, -16 or -32 by their first bytes).

    Raises:
        DuplicateKeyError: an object names a key twice.
        ValueError: the document is not JSON (``UnicodeDecodeError`` and ``json.JSONDecodeError`` included).
        RecursionError: it is nested too deeply to parse.
    """
    if not isinstance(document, str):
        document = document.decode(json.detect_encoding(document), "surrogatepass")
    return _DECODER.decode(document)


def too_many_digits(error: ValueError) -> bool:
    """Whether ``error`` is Python's refusal to convert an integer literal of more digits than
    ``sys.get_int_max_str_digits()`` allows, which ``json`` raises as a plain ``ValueError``. Its own words
    ("use sys.set_int_max_str_digits() to increase the limit") are advice to the server's code: a client told
    so cannot act on them, and the JSON it sent is well-formed."""
    return "integer string conversion" in str(error)
