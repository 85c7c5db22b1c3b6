"""Checks shared by every configuration dataclass.

config.toml hands over whatever TOML holds, and Python takes True for an int: every field is checked for its
type as well as its range, so a quoted "false" or a 1.5 fails at start-up, naming the key, not later.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

from ._errors import ConfigurationError

__all__ = [
    "MAX_BATCH_ROWS",
    "MAX_COUNT",
    "check_bool",
    "check_int",
    "check_list",
    "check_number",
    "check_table",
    "check_text",
]

MAX_BATCH_ROWS = 65_536
"""Most rows of one run or one warm-up request: rows allocated at once, beyond which a value is a mistake."""
MAX_COUNT = 16 * 2**20
"""Most rows or entries any bounded buffer (queue, cache, drift window) is configured to hold."""


def check_int(key: str, value: object, low: int, high: int | None = MAX_COUNT) -> None:
    """An integer from ``low`` to ``high``: not a bool (``True`` is an int to Python), not a float."""
    if type(value) is not int or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f">= {low} and <= {high}"
        raise ConfigurationError(f"{key} must be {bounds} (an integer), got {value!r}")


def check_number(key: str, value: object, low: float, high: float | None = None, *, above: bool = False) -> None:
    """A finite int or float (not a bool) >= ``low`` (> with ``above``) and <= ``high``: NaN fails every
    comparison, so a plain ``value < low`` test would let it through."""
    valid = (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > low if above else value >= low)
        and (high is None or value <= high)
    )
    if not valid:
        bounds = f"{'>' if above else '>='} {low}" + ("" if high is None else f" and <= {high}")
        raise ConfigurationError(f"{key} must be a finite number {bounds}, got {value!r}")


def check_bool(key: str, value: object, *, optional: bool = False) -> None:
    """A real bool: a quoted ``"false"`` is a non-empty string, which Python takes for true."""
    if not isinstance(value, bool) and not (optional and value is None):
        unset = ", or unset" if optional else ""
        raise ConfigurationError(f"{key} must be true or false (no quotes){unset}, got {value!r}")


def check_text(key: str, value: object, *, optional: bool = False, blank: bool = True) -> None:
    """A string (``blank``: possibly empty), or ``None`` when ``optional``."""
    if not (isinstance(value, str) and (blank or value)) and not (optional and value is None):
        what = "a string" if blank else "a non-empty string"
        raise ConfigurationError(f"{key} must be {what}{', or unset' if optional else ''}, got {value!r}")


def check_table(key: str, value: object) -> Mapping[Any, Any]:
    """A table (a mapping in code)."""
    if not isinstance(value, Mapping):
        raise ConfigurationError(f"{key} must be a table, got {value!r}")
    return value


def check_list(key: str, values: object) -> tuple[Any, ...]:
    """A list (any iterable in code) as a tuple; a string or a table is not taken for a list of its letters
    or keys."""
    if isinstance(values, str | bytes | Mapping) or not isinstance(values, Iterable):
        raise ConfigurationError(f"{key} must be a list, got {values!r}")
    return tuple(values)
