"""Reading a small file from the model repository, whatever lies at its place.

A deploy tool, a sync or a mistake may leave anything where a config or checksum file belongs: a pipe
(opening it blocks until a writer comes, under the lifecycle lock, so no model would load), a link to a
device (``/dev/zero`` never ends), a file of gigabytes. Only a regular file is read, and only its beginning.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["NotARegularFileError", "read_regular_file"]


class NotARegularFileError(OSError):
    """The path is a folder, a pipe, a device or a socket."""


def read_regular_file(path: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of the regular file at ``path`` (``limit + 1`` when it is longer, so a
    caller can tell).

    Raises:
        NotARegularFileError: ``path`` is no regular file.
        OSError: it cannot be opened or read.
    """
    try:
        # O_NONBLOCK: a pipe opens at once (and is refused below) instead of waiting for a writer.
        descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except BlockingIOError:
        # A regular file under another process's lease (Samba's oplocks) refuses a non-blocking open: a plain
        # one waits until the lease is given up, as any reader of the file would. (A pipe is refused first.)
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise NotARegularFileError(f"{path} is not a regular file") from None
        descriptor = os.open(path, os.O_RDONLY)
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotARegularFileError(f"{path} is not a regular file")
        chunks, left = [], limit + 1
        while left > 0 and (chunk := os.read(descriptor, left)):
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(descriptor)
