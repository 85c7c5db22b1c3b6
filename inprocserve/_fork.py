"""Fork hygiene: objects that own threads or onnxruntime state reset themselves in a forked child.

After ``fork()`` the child has the parent's memory but none of its threads: onnxruntime thread pools,
our worker threads and any lock held at the time are unusable. Objects register here and get a call in
the child so they can start afresh, lazily, the first time they are used there (gunicorn ``--preload``).
"""

from __future__ import annotations

import os
import weakref
from typing import Protocol

__all__ = ["ForkAware", "register"]


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: weakref.WeakSet[ForkAware] = weakref.WeakSet()


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` is alive."""
    _objects.add(obj)


def _reset_all() -> None:
    for obj in list(_objects):
        obj._after_fork_in_child()


if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_child=_reset_all)
