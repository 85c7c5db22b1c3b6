"""Reading a file from the model repository, whatever lies at its place.

A deploy tool, a sync or a mistake may leave anything where a config, checksum or data file belongs: a pipe
(opening it blocks until a writer comes, under the lifecycle lock, so no model would load), a link to a
device (``/dev/zero`` never ends), a file of gigabytes. Only a regular file is opened, never blocking.

A regular file under another process's lease (Samba's oplocks, an NFS server's delegation) refuses a
non-blocking open (``EWOULDBLOCK``), and that refusal starts the lease's break (fcntl(2)): the open is tried
again until the holder gives the file up or the kernel takes it back (``lease-break-time``, 45 s by default).
Opening it blocking after a check that it is a regular file would wait on whatever is swapped in meanwhile.

Where the server does not follow symbolic links, a file is opened without following one (``O_NOFOLLOW``, each
folder below the version folder too): a check that a path is no link, then an open by path, followed a link
swapped in between, so what was hashed or read was not what was checked.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from pathlib import Path
from typing import BinaryIO

__all__ = ["NotARegularFileError", "SymlinkRefusedError", "open_regular_file", "read_regular_file"]

LEASE_WAIT_S = 50.0
"""How long an open waits for another process's lease on the file (the kernel's default break time, 45 s,
and a margin)."""


class NotARegularFileError(OSError):
    """The path is a folder, a pipe, a device or a socket."""


class SymlinkRefusedError(OSError):
    """The path, or a folder on it below the folder it was to stay in, is a symbolic link, which the open was
    told not to follow."""


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def open_regular_file(
    path: Path, *, lease_wait_s: float = LEASE_WAIT_S, follow_symlinks: bool = True, within: Path | None = None
) -> BinaryIO:
    """The regular file at ``path``, open for reading (binary), never blocking on what lies there.

    With ``follow_symlinks=False`` no symbolic link is followed at ``path``'s last part, nor at any folder on
    it below ``within`` (a folder that holds ``path``; itself reached as it is, links followed).

    Raises:
        NotARegularFileError: ``path`` is no regular file (a socket included, which refuses any open).
        SymlinkRefusedError: ``follow_symlinks=False`` and a link lies where it may not.
        OSError: it cannot be opened (``BlockingIOError``: another process held a lease on it past
            ``lease_wait_s``).
        ValueError: ``path`` is not below ``within``, or climbs out of it with ``..``.
    """
    deadline, pause = time.monotonic() + lease_wait_s, 0.005
    while True:
        try:
            descriptor = _open(path, follow_symlinks=follow_symlinks, within=within)
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


def _open(path: Path, *, follow_symlinks: bool, within: Path | None) -> int:
    # O_NONBLOCK: a pipe opens at once (and is refused by the caller) instead of waiting for a writer.
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)
    if follow_symlinks:
        return os.open(path, flags)
    if within is None or os.open not in os.supports_dir_fd:
        return _open_no_link(path, path, flags)
    parts = path.relative_to(within).parts  # (ValueError: not below it)
    if not parts or ".." in parts:
        raise ValueError(f"{path} climbs out of {within}")
    folder = os.open(within, os.O_RDONLY | _DIRECTORY)
    try:
        # Each folder below ``within`` is opened from the one above, none through a link: a folder swapped for
        # a link after the checks (data/ -> /elsewhere) is refused as the file itself is.
        for index, part in enumerate(parts[:-1]):
            above = folder
            folder = _open_no_link(Path(within, *parts[: index + 1]), part, os.O_RDONLY | _DIRECTORY, dir_fd=above)
            os.close(above)
        return _open_no_link(path, parts[-1], flags, dir_fd=folder)
    finally:
        os.close(folder)


def _open_no_link(path: Path, name: str | Path, flags: int, *, dir_fd: int | None = None) -> int:
    """``os.open`` of ``name`` (``path``, or its last part in the folder ``dir_fd``) with ``O_NOFOLLOW``, its
    refusal of a link (``ELOOP``) raised as :class:`SymlinkRefusedError`."""
    try:
        return os.open(name, flags | _NOFOLLOW, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.ENOTDIR and os.path.islink(path)):
            raise SymlinkRefusedError(errno.ELOOP, "a symbolic link, which is not followed", str(path)) from None
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
