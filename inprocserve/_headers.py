"""Parsing of the request values that the Flask and Django plug-ins read from HTTP requests.

One implementation for both plug-ins, so they accept and refuse the same values. Anything a client sends
is untrusted: every refusal is an :class:`InvalidInputError` (HTTP 400) whose message names the header and
says what is accepted, never an ``OverflowError`` or a traceback from deep inside the library.
"""

from __future__ import annotations

import re

from ._brief import brief
from ._errors import InvalidInputError

__all__ = ["MAX_TIMEOUT_MS", "MAX_USER_ID_LENGTH", "parse_timeout_ms", "parse_user_id"]

MAX_TIMEOUT_MS = 86_400_000.0
"""The largest deadline header accepted: one day. A larger budget is a client bug, not a real deadline."""

MAX_USER_ID_LENGTH = 256
"""The longest user id header accepted (it is hashed for bucketing and may be recorded on spans)."""

# ASCII digits only (``\d`` would take other scripts' digits, which float() also parses), at most 12 of
# them before an optional fraction of at most 6: no sign, exponent, nan, inf, underscores or hex.
_TIMEOUT = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,6})?")
# Printable ASCII without spaces at the ends: what any user id scheme (numbers, UUIDs, emails) needs.
_USER_ID = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?")


def parse_timeout_ms(value: str | None, *, header: str = "X-Request-Timeout-Ms") -> float | None:
    """The remaining time budget a client sent, in milliseconds; ``None`` when the header is absent.

    Accepted: a plain decimal number of milliseconds from 0 to :data:`MAX_TIMEOUT_MS` (one day), such as
    ``250`` or ``12.5``, with optional surrounding spaces. ``0`` means the budget is already spent.

    Raises:
        InvalidInputError: anything else (empty, negative, ``nan``, ``inf``, exponents, overlong digits,
            more than a day); the message names ``header`` and the accepted form.
    """
    if value is None:
        return None
    text = value.strip()
    if not _TIMEOUT.fullmatch(text):
        raise InvalidInputError(f"header {header}: {brief(value)} {_why_not_a_deadline(text)}")
    milliseconds = float(text)
    if milliseconds > MAX_TIMEOUT_MS:
        raise InvalidInputError(
            f"header {header}: {text} ms is more than a day; send at most {MAX_TIMEOUT_MS:.0f} milliseconds"
        )
    return milliseconds


def _why_not_a_deadline(text: str) -> str:
    """What is wrong with a refused deadline header, and what to send: a value that is a plain number but for
    its length, or two values joined with a comma, was told to send "a plain number, such as 250", as it had."""
    accepted = f"a plain number of milliseconds from 0 to {MAX_TIMEOUT_MS:.0f}, such as 250 or 12.5"
    if "," in text:  # (WSGI and ASGI servers and proxies join a repeated header's values with commas)
        return (
            "holds a comma: the header was sent more than once (its values are joined with commas), or with a "
            f"decimal comma; send it once, as {accepted}"
        )
    whole, point, fraction = text.partition(".")
    if _TIMEOUT.fullmatch(whole) and point and fraction.isascii() and fraction.isdigit() and len(fraction) > 6:
        return f"has {len(fraction)} digits after the point; send at most 6 digits after the point ({accepted})"
    return f"is not a deadline; send {accepted}"


def parse_user_id(value: str | None, *, header: str = "X-User-Id") -> str | None:
    """The user id a client sent for sticky rollout assignment; ``None`` when the header is absent.

    Accepted: 1 to :data:`MAX_USER_ID_LENGTH` printable ASCII characters but the comma; spaces at the ends
    are dropped. A comma is what WSGI servers (gunicorn, werkzeug, wsgiref) and proxies put between the values
    of a header sent more than once: ``alice`` and ``bob`` arrive as ``alice,bob``, which became one made-up
    user, sticky in its own canary and experiment buckets, when which user asked is unknown.

    Raises:
        InvalidInputError: an empty, overlong or non-printable value, or one with a comma (the header sent more
            than once); the message names ``header``.
    """
    if value is None:
        return None
    if "," in value:
        raise InvalidInputError(
            f"header {header}: {brief(value)} holds a comma: the header was sent more than once (its values are "
            "joined with commas), so which user asked is unknown; send it once, with a user id without commas"
        )
    return checked_user_id(value, f"header {header}")


def checked_user_id(value: str, where: str) -> str:
    """``value`` as a user id (the rule of :func:`parse_user_id`), from ``where`` (named in the error), such as
    ``"parameter user_id"`` of a protocol request."""
    text = value.strip()
    if len(text) > MAX_USER_ID_LENGTH or not _USER_ID.fullmatch(text):
        raise InvalidInputError(
            f"{where}: {brief(value)} is not a user id; send 1 to {MAX_USER_ID_LENGTH} printable ASCII characters"
        )
    return text
