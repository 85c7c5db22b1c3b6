"""Reading a file from the model repository, whatever lies at its place.

A deploy tool, a sync or a mistake may leave anything where a config, checksum or data file belongs: a pipe
(opening it blocks until a writer comes, under the lifecycle lock, so no model would load), a link to a
device (``/dev/zero`` never ends), a file of gigabytes. Only a regular file is opened, never blocking.

A regular file under another process's lease (Samba's oplocks, an NFS server's delegation) refuses a
non-blocking open (``EWOULDBLOCK``), and that refusal starts the lease's break (fcntl(2)): the open is tried
again until the holder gives the file up or the kernel takes it back (``lease-break-time``, 45 s by default).
Opening it blocking after a check that it is a regular file would wait on whatever is swapped in meanwhile.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["NotARegularFileError", "open_regular_file", "read_regular_file"]

LEASE_WAIT_S = 50.0
"""How long an open waits for another process's lease on the file (the kernel's default break time, 45 s,
and a margin)."""


class NotARegularFileError(OSError):
    """The path is a folder, a pipe, a device or a socket."""


def open_regular_file(path: Path, *, lease_wait_s: float = LEASE_WAIT_S) -> BinaryIO:
    """The regular file at ``path``, open for reading (binary), never blocking on what lies there.

    Raises:
        NotARegularFileError: ``path`` is no regular file (a socket included, which refuses any open).
        OSError: it cannot be opened (``BlockingIOError``: another process held a lease on it past
            ``lease_wait_s``).
    """
    deadline, pause = time.monotonic() + lease_wait_s, 0.005
    while True:
        try:
            # O_NONBLOCK: a pipe opens at once (and is refused below) instead of waiting for a writer.
            descriptor = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
            break
        except BlockingIOError:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # a Unix socket (or a device file with no device): no file to read
                raise NotARegularFileError(f"{path} is not a regular file (a socket or a device)") from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise NotARegularFileError(f"{path} is not a regular file (a folder, a pipe or a device)")
        return os.fdopen(descriptor, "rb")  # (O_NONBLOCK does nothing to a regular file's reads)
    except BaseException:
        os.close(descriptor)
        raise


def read_regular_file(path: Path, limit: int) -> bytes:
    """The first ``limit`` bytes of the regular file at ``path`` (``limit + 1`` when it is longer, so a
    caller can tell).

    Raises:
        NotARegularFileError: ``path`` is no regular file.
        OSError: it cannot be opened or read.
    """
    with open_regular_file(path) as handle:
        return handle.read(limit + 1)
