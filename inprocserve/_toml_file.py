"""Reading a model's TOML files (``config.toml``, ``remote.toml``) from the repository, whatever lies there.

A deploy tool, a sync or a mistake may leave anything at a config file's place: a pipe (opening it blocks until
a writer comes, under the lifecycle lock, so no model would load), a link to a device (``/dev/zero`` never
ends), a file of gigabytes, a document nested past Python's recursion limit, a byte-order mark. Each is an
error naming the file, or read as its author meant it.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path
from typing import Any

from ._errors import ConfigurationError

__all__ = ["MAX_TOML_BYTES", "read_toml"]

MAX_TOML_BYTES = 1 << 20
"""Largest config file read: a model's settings take a few hundred bytes."""


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML document at ``path``.

    Raises:
        ConfigurationError: naming ``path``: it is not a regular file (a folder, a pipe, a device, a broken
            link), cannot be read, is larger than :data:`MAX_TOML_BYTES`, or is not valid TOML.
    """
    try:
        # O_NONBLOCK: a pipe opens at once (and is refused below) instead of waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except BlockingIOError:
        # A regular file under another process's lease (Samba's oplocks) refuses a non-blocking open: a
        # plain one waits until the lease is given up, as any reader of the file would.
        descriptor = _open_regular_file(path)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot be read: {exc}") from exc
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise ConfigurationError(f"{path}: not a regular file (a folder, a pipe or a device); write the file there")
    with os.fdopen(descriptor, "rb") as handle:
        try:
            raw = handle.read(MAX_TOML_BYTES + 1)
        except OSError as exc:
            raise ConfigurationError(f"{path}: cannot be read: {exc}") from exc
    if len(raw) > MAX_TOML_BYTES:
        raise ConfigurationError(f"{path}: larger than {MAX_TOML_BYTES} bytes: not a model's settings")
    try:
        # A byte-order mark (as some Windows editors write) is not TOML: tomllib's "Invalid statement (at line
        # 1, column 1)" would not say what to fix, and the file is otherwise what its author meant.
        return tomllib.loads(raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"{path}: not valid TOML: {exc}") from exc
    except RecursionError:
        raise ConfigurationError(f"{path}: not valid TOML: nested too deeply") from None


def _open_regular_file(path: Path) -> int:
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # (a pipe must not be opened blocking: checked first)
            raise ConfigurationError(f"{path}: not a regular file (a folder, a pipe or a device); write the file there")
        return os.open(path, os.O_RDONLY)  # (checked again once open: fstat below)
    except OSError as exc:
        raise ConfigurationError(f"{path}: cannot be read: {exc}") from exc
