"""Checks shared by every configuration dataclass.

config.toml hands over whatever TOML holds, and Python takes True for an int: every field is checked for its
type as well as its range, so a quoted "false" or a 1.5 fails at start-up, naming the key, not later.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ._errors import ConfigurationError

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_COUNT",
    "MAX_DELAY_S",
    "MAX_INTERVAL_S",
    "check_bool",
    "check_bound",
    "check_int",
    "check_list",
    "check_number",
    "check_table",
    "check_text",
    "is_int",
    "is_number",
    "plain_fields",
    "shown",
]

MAX_BATCH_ROWS = 65_536
"""Most rows of one run or one warm-up request: rows allocated at once, beyond which a value is a mistake."""
MAX_COUNT = 16 * 2**20
"""Most rows or entries any bounded buffer (queue, cache, drift window) is configured to hold."""
MAX_INTERVAL_S = 86_400.0
"""Longest interval of a background thread's polling: more than a day between two looks at the repository is
a typo, and a wait past a lock's limit (``threading.TIMEOUT_MAX``, centuries; an infinite one) ends the
thread with an ``OverflowError``."""
MAX_DELAY_S = 60.0
"""Longest wait for a batch's companions: a minute is far past any latency budget, so more is a unit mistake
(milliseconds written as seconds)."""


def check_int(key: str, value: object, low: int, high: int | None = MAX_COUNT) -> None:
    """An integer (numpy's too) from ``low`` to ``high``: not a bool (``True`` is an int to Python), not a
    float."""
    if not is_int(value) or value < low or (high is not None and value > high):  # type: ignore[operator]
        bounds = f">= {low}" if high is None else f">= {low} and <= {high}"
        raise ConfigurationError(f"{key} must be {bounds} (an integer), got {shown(value)}")


def check_number(key: str, value: object, low: float, high: float | None = None, *, above: bool = False) -> None:
    """A finite int or float (not a bool) >= ``low`` (> with ``above``) and <= ``high``: NaN fails every
    comparison, so a plain ``value < low`` test would let it through."""
    number = float(value) if is_number(value) and _finite(value) else math.nan  # type: ignore[arg-type]
    valid = (number > low if above else number >= low) and (high is None or number <= high)
    if not valid:
        bounds = f"{'>' if above else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ConfigurationError(f"{key} must be a finite number {bounds}, got {shown(value)}")


def check_bound(key: str, value: object) -> None:
    """A bound on values (``InputBounds.min``/``max``): unset, or a finite int or float, not a bool (``True``
    is 1 to Python) nor NaN (every comparison with it is false: it would bound nothing)."""
    if value is not None and not (is_number(value) and _finite(value)):
        raise ConfigurationError(f"{key} must be a finite number (an integer or a float), or unset, got {shown(value)}")


def is_int(value: object) -> bool:
    """An integer, numpy's too, and not a bool (``True`` is an int to Python)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    """A real number, numpy's too, and not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _finite(value: object) -> bool:
    try:
        return math.isfinite(value)  # type: ignore[arg-type]
    except OverflowError:  # an int past any float
        return False


def check_bool(key: str, value: object, *, optional: bool = False) -> None:
    """A real bool (numpy's too): a quoted ``"false"`` is a non-empty string, which Python takes for true."""
    if not isinstance(value, bool | np.bool_) and not (optional and value is None):
        unset = ", or unset" if optional else ""
        raise ConfigurationError(f"{key} must be true or false (no quotes){unset}, got {shown(value)}")


def check_text(key: str, value: object, *, optional: bool = False, blank: bool = True, path: bool = False) -> None:
    """A string (``blank``: possibly empty; ``path``: or an ``os.PathLike``), or ``None`` when ``optional``."""
    if path and isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not (isinstance(value, str) and (blank or value)) and not (optional and value is None):
        what = ("a path" if path else "a string") if blank else ("a non-empty path" if path else "a non-empty string")
        raise ConfigurationError(f"{key} must be {what}{', or unset' if optional else ''}, got {shown(value)}")


def check_table(key: str, value: object) -> Mapping[Any, Any]:
    """A table (a mapping in code)."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{key} must be a table, got {shown(value)}")
    return value


def check_list(key: str, values: object) -> tuple[Any, ...]:
    """A list (any iterable in code) as a tuple; a string or a table is not taken for a list of its letters
    or keys."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise ConfigurationError(f"{key} must be a list, got {shown(values)}")
    return tuple(values)


def plain_fields(config: Any) -> None:
    """Turn the numpy numbers and bools, other real numbers (a ``Fraction``) and the ``os.PathLike`` paths of
    a frozen config dataclass's fields (and of the tuples it holds) into Python's own, before they are
    checked: settings computed with numpy are accepted, and what is stored is what the rest of the library
    (``is False`` tests, ``int`` methods, float formatting) and ``status()``'s JSON expect."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        plain = _plain(value)
        if plain is not value:
            object.__setattr__(config, field.name, plain)


def _plain(value: Any) -> Any:
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)  # (not .item(): a longdouble's item is a longdouble)
    if isinstance(value, np.generic):
        return value.item()
    if type(value) not in (int, float, bool) and isinstance(value, numbers.Real):  # a Fraction, say
        return float(value)  # (what the checks accept as a number, stored as the float the library computes with)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        return [_plain(item) for item in value.tolist()]
    if isinstance(value, list | tuple) and any(isinstance(item, np.generic | os.PathLike) for item in value):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, Mapping) and any(isinstance(item, np.generic | os.PathLike) for item in value.values()):
        return {key: _plain(item) for key, item in value.items()}
    return value


def shown(value: object) -> str:
    """``repr(value)`` for a message, cut short: a setting or a flag's value may be anything, and an int of
    5000 digits has no repr at all (Python refuses the conversion)."""
    try:
        text = repr(value)
    except ValueError:
        return f"an {type(value).__name__} too large to show"
    return text if len(text) <= 60 else f"{text[:57]}..."
