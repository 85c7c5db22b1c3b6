"""The partial files an optimized graph is written to: held by the load that writes one, swept once left.

A load creates ``<graph>.<pid>-<thread>.partial``, onnxruntime writes the graph into it while it builds the
session, and the load renames it into place. A process that dies meanwhile leaves it (a whole model's
size), so loads delete partial files older than :data:`STALE_S`. Age alone is measured by two clocks,
the file system's (the file's time) and this host's: a wall clock stepped forward (a VM resumed, NTP
correcting a wrong boot time) or a file server whose clock is behind makes a partial file being written
look old, and another worker's load deleted it (its graph was then never cached). So the writer holds an
exclusive ``flock`` on the file until it is renamed or removed, taken before it has its ``.partial`` name, and a
sweep deletes an old file only if it can take that lock: a live writer keeps its file whatever the clocks
say, and a dead one's lock went with it. Where ``flock`` does not reach (no ``fcntl``, or a file system
that refuses it) age alone decides.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

try:
    import fcntl

    _FLOCK = True
except ImportError:  # (Windows)
    _FLOCK = False

__all__ = ["OPENING_SUFFIX", "PARTIAL_SUFFIX", "STALE_S", "create", "let_go", "remove_stale"]

PARTIAL_SUFFIX = ".partial"
OPENING_SUFFIX = ".opening"  # (as long as PARTIAL_SUFFIX: the name fits wherever the partial's does)
STALE_S = 3600.0
"""A partial file older than this, whose writer holds no lock on it, was left by a process that died."""

_lock = threading.Lock()
_held: dict[str, int] = {}  # partial file -> the descriptor its writer's lock is on


def create(partial: Path, content: bytes) -> int:
    """Create ``partial`` holding ``content``, locked by this process until :func:`let_go`, and return its
    modification time (the file system's clock, in ns). The file is created and locked as ``.opening``, then
    renamed: a sweep finds a live file unlocked only in the few calls between its creation and its lock (and
    deletes it only if its fresh time looks an hour old: the creation then fails, and no graph is cached that
    once). Without ``fcntl`` (Windows, where a file held open can be neither renamed nor deleted) it is
    written in place and closed; a lock the file system refuses leaves age alone to decide.

    Raises:
        OSError: the file cannot be created or written (nothing is left behind).
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    if not _FLOCK:
        descriptor = os.open(partial, flags, 0o644)
        try:
            os.write(descriptor, content)
            return os.fstat(descriptor).st_mtime_ns
        except BaseException:
            _unlink(partial)
            raise
        finally:
            os.close(descriptor)
    opening = partial.with_name(partial.name.removesuffix(PARTIAL_SUFFIX) + OPENING_SUFFIX)
    key = str(partial)
    descriptor = os.open(opening, flags, 0o644)
    # The descriptor is put in _held inside the try: an exception a signal handler raised between the rename
    # and that left it open, and the file locked, for the life of the process.
    try:
        os.write(descriptor, content)
        made_ns = os.fstat(descriptor).st_mtime_ns
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            pass
        os.replace(opening, partial)
        with _lock:
            earlier = _held.pop(key, None)
            _held[key] = descriptor
    except BaseException:
        with _lock:
            if _held.get(key) == descriptor:
                del _held[key]
        os.close(descriptor)
        _unlink(opening)
        _unlink(partial)  # (renamed already, or no file: the name is this process's and thread's own)
        raise
    if earlier is not None:
        os.close(earlier)
    return made_ns


def let_go(partial: Path) -> None:
    """Close the descriptor :func:`create` kept for ``partial`` (its lock goes with it); idempotent."""
    with _lock:
        descriptor = _held.pop(str(partial), None)
    if descriptor is not None:
        os.close(descriptor)


def _being_written(partial: Path) -> bool:
    """Whether a live process holds ``partial``'s lock (tried without waiting). A shared lock, which the
    writer's exclusive one refuses: an NFS or SMB client emulates ``flock`` with byte-range locks, and an
    exclusive one there needs a file opened for writing (on the read-only descriptor, EBADF: taken for a file
    system that refuses locks, and the age alone decided, the very case of a file server's clock behind)."""
    if not _FLOCK:
        return False
    try:
        descriptor = os.open(partial, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return True  # (gone, or not ours to open: nothing to delete)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:  # (a file system that refuses flock: age alone decides)
        return False
    finally:
        os.close(descriptor)
    return False


def remove_stale(folder: Path, is_partial: Callable[[str], bool]) -> None:
    """Delete the partial files of ``folder`` (by name) older than :data:`STALE_S` that no writer holds."""
    cutoff = time.time() - STALE_S
    try:
        with os.scandir(folder) as listing:
            partials = [Path(entry.path) for entry in listing if is_partial(entry.name)]
    except OSError:
        return
    for partial in partials:
        try:
            if partial.stat().st_mtime < cutoff and not _being_written(partial):
                partial.unlink()
        except OSError:
            continue


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


def _forget_in_child() -> None:
    """A forked child's copies of the descriptors: closed there (the parent's locks stay, on its own)."""
    global _lock
    _lock = threading.Lock()  # (another thread may have held it at the fork)
    for descriptor in _held.values():
        try:
            os.close(descriptor)
        except OSError:
            pass
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)
