"""Reading a model's TOML files (``config.toml``, ``remote.toml``) from the repository, whatever lies there:
anything but a regular file (see :mod:`._regular_file`), a file of megabytes, a document nested past Python's
recursion limit, a byte-order mark, UTF-16 or another encoding, an integer of thousands of digits. Each is an
error naming the file, or read as its author meant it.
"""

from __future__ import annotations

import codecs
import sys
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._close_match import TYPO_CUTOFF, close_match
from ._errors import ConfigurationError
from ._regular_file import NotARegularFileError, read_regular_file

__all__ = [
    "MAX_TOML_BYTES",
    "SHOWN_UNKNOWN_KEYS",
    "name_unknown_key",
    "name_unknown_keys",
    "read_toml",
    "shown_unknown_keys",
]

MAX_TOML_BYTES = 1 << 20
"""Largest config file read: a model's settings take a few hundred bytes."""

SHOWN_UNKNOWN_KEYS = 20
"""Unknown keys of a ``config.toml`` or ``remote.toml`` named in its warning; the rest are counted. A file of the
most that is read (1 MiB) holds 80,000 short keys: naming each (matching it against the known keys) took 2.6 s
of every read of a ``config.toml``, at each poll of the repository, and made a warning of 1.5 MB in every
``status()``."""


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``.

    Raises:
        ConfigurationError: naming ``path``: it is not a regular file (a folder, a pipe, a device, a broken
            link), cannot be read, is larger than :data:`MAX_TOML_BYTES`, or is not valid TOML.
    """
    try:
        raw = read_regular_file(path, MAX_TOML_BYTES)
    except NotARegularFileError:
        raise ConfigurationError(
            f"{path}: not a regular file (a folder, a pipe or a device); write the file there"
        ) from None
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot be read: {exc}") from exc
    if len(raw) > MAX_TOML_BYTES:
        raise ConfigurationError(f"{path}: larger than {MAX_TOML_BYTES} bytes: not a model's settings")
    try:
        text = _decoded(raw)
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        where = f"line {line}: " if exc.encoding == "utf-8" else ""
        raise ConfigurationError(
            f"{path}: not {exc.encoding.upper()} text ({where}byte 0x{exc.object[exc.start]:02x}); save it as "
            "UTF-8 (TOML's encoding)"
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    except ValueError:  # tomllib's int() of more digits than Python converts (4300): "Exceeds the limit ..."
        raise ConfigurationError(
            f"{path}: not valid TOML: it holds an integer of more than {sys.get_int_max_str_digits()} digits, "
            "which no setting takes; write the value meant"
        ) from None
    except RecursionError:
        raise ConfigurationError(f"{path}: not valid TOML: nested too deeply") from None


def _decoded(raw: bytes) -> str:
    """A TOML file's text. A byte-order mark (as some Windows editors write) is not TOML: tomllib's "Invalid
    statement (at line 1, column 1)" would not say what to fix, and the file is otherwise what its author
    meant. Windows PowerShell's ``Out-File`` and ``>`` write UTF-16 with one, read as such (as checksum files
    are, :mod:`._integrity`).

    Raises:
        UnicodeDecodeError: the bytes are not UTF-8 (nor UTF-16 after its byte-order mark).
    """
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16")
    return raw.removeprefix(codecs.BOM_UTF8).decode("utf-8")


def name_unknown_key(where: str, key: str, known: Iterable[str]) -> str:
    """How a key left out is named: ``[rollout] stabel (stable?)`` when it is one letter or two off a known key
    (a typo there, the setting it meant is not in force on any worker), else ``[batching] max_batch_bytes``."""
    close = close_match(key, known, cutoff=TYPO_CUTOFF)
    return f"{where}{key}" + (f" ({close}?)" if close else "")


def name_unknown_keys(ignored: list[str], where: str, keys: Iterable[str], known: Iterable[str]) -> None:
    """Append ``keys`` to ``ignored``, named as :func:`name_unknown_key` names them while ``ignored`` holds fewer
    than :data:`SHOWN_UNKNOWN_KEYS`, bare after that (only counted: see :func:`shown_unknown_keys`)."""
    known = list(known)
    for key in keys:
        ignored.append(name_unknown_key(where, key, known) if len(ignored) < SHOWN_UNKNOWN_KEYS else key)


def shown_unknown_keys(ignored: list[str]) -> list[str]:
    """The keys of ``ignored`` a warning names: the first :data:`SHOWN_UNKNOWN_KEYS`, then how many more."""
    if len(ignored) <= SHOWN_UNKNOWN_KEYS:
        return list(ignored)
    return [*ignored[:SHOWN_UNKNOWN_KEYS], f"{len(ignored) - SHOWN_UNKNOWN_KEYS} more"]
