"""Values that others sent, cut short for messages, log lines and span attributes.

A client chooses its tensor names, model names, parameter keys and header values, and a flag provider its
values and its own error text: any of them may be megabytes. Quoted whole, a 10 MB tensor name made a 10 MB
400 answer, the same text in the log and on the span, and copies of it in memory for each request. Every
message that quotes such a value quotes :func:`brief` of it (or :func:`brief_text` of a text that is not
quoted, such as another library's error message), at a cost that does not grow with the value.
"""

from __future__ import annotations

import itertools
import reprlib
from collections.abc import Mapping
from typing import Any

__all__ = ["BRIEF_CHARACTERS", "CutShort", "brief", "brief_text"]

BRIEF_CHARACTERS = 64
"""How many characters of a long string are shown; the rest is said as its length."""


class CutShort(reprlib.Repr):
    """``reprlib.Repr`` without its costs that grow with the value: it sorts a whole dict or set to show its
    first items (76 ms for a dict of a million keys in the wrong flag, on every request), and shows bytes or
    a mapping of another type with their whole ``repr`` (15 ms for 5 MB of bytes) before cutting it."""

    def repr_dict(self, x: dict[Any, Any], level: int) -> str:
        return self._mapping(x, level, "{", "}")

    def repr_set(self, x: set[Any], level: int) -> str:
        return self._items(x, level, "{", "}", self.maxset) if x else "set()"

    def repr_frozenset(self, x: frozenset[Any], level: int) -> str:
        return self._items(x, level, "frozenset({", "})", self.maxfrozenset) if x else "frozenset()"

    def repr_bytes(self, x: bytes, level: int) -> str:
        return self._cut(repr(x[: self.maxstring]), longer=len(x) > self.maxstring)

    def repr_bytearray(self, x: bytearray, level: int) -> str:
        return self._cut(repr(x[: self.maxstring]), longer=len(x) > self.maxstring)

    def repr_instance(self, x: Any, level: int) -> str:
        if isinstance(x, Mapping):
            return self._mapping(x, level, f"{type(x).__name__}({{", "})")
        return super().repr_instance(x, level)

    def _mapping(self, x: Mapping[Any, Any], level: int, left: str, right: str) -> str:
        if not x:
            return left + right
        if level <= 0:
            return left + self.fillvalue + right
        pieces = [
            f"{self.repr1(key, level - 1)}: {self.repr1(x[key], level - 1)}"
            for key in itertools.islice(x, self.maxdict)
        ]
        if len(x) > self.maxdict:
            pieces.append(self.fillvalue)
        return left + ", ".join(pieces) + right

    def _items(self, x: set[Any] | frozenset[Any], level: int, left: str, right: str, limit: int) -> str:
        if level <= 0:
            return left + self.fillvalue + right
        pieces = [self.repr1(item, level - 1) for item in itertools.islice(x, limit)]
        if len(x) > limit:
            pieces.append(self.fillvalue)
        return left + ", ".join(pieces) + right

    def _cut(self, text: str, *, longer: bool) -> str:
        return text[:-1] + self.fillvalue + text[-1] if longer else text


def _make_brief() -> CutShort:
    cut = CutShort()
    cut.maxstring = cut.maxother = cut.maxlong = BRIEF_CHARACTERS
    cut.maxlist = cut.maxtuple = cut.maxdict = cut.maxset = cut.maxfrozenset = cut.maxdeque = 8
    cut.maxlevel = 3
    return cut


_BRIEF = _make_brief()


def brief(value: object) -> str:
    """``repr(value)`` cut short: a string of more than :data:`BRIEF_CHARACTERS` characters as its first
    ones and its length (``'nnnn'...(10000000 characters)``), a container as its first 8 items."""
    if isinstance(value, str):
        if len(value) <= BRIEF_CHARACTERS:
            return repr(value)
        return f"{value[:BRIEF_CHARACTERS]!r}...({len(value)} characters)"
    try:
        return _BRIEF.repr(value)
    except Exception:  # (an int of 5000 digits has no repr; a hand-written object's __repr__ may raise)
        return f"{type(value).__name__} (which cannot be shown)"


def brief_text(text: str, limit: int = 4 * BRIEF_CHARACTERS) -> str:
    """``text`` (not quoted: another library's error message, say) cut to ``limit`` characters, the rest
    said as its length."""
    return text if len(text) <= limit else f"{text[:limit]}...({len(text)} characters)"
