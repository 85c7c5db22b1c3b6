"""Reading another thread's frame from a test without deadlocking Python 3.11 (see :func:`frame_of`).

A module of its own, importing nothing heavy: a child process runs it alone to show the deadlock it avoids
(tests/test_stuck_test_guard.py)."""

from __future__ import annotations

import gc
import sys
from types import FrameType


def frame_of(thread: int | None) -> FrameType | None:
    """The frame ``thread`` (an ident) runs now, as ``sys._current_frames()`` gives it, read with the garbage
    collector off. In Python 3.11 a collection that runs inside ``sys._current_frames()`` (its frame objects
    are allocations) and frees a ``threading.local`` waits for a lock the call itself holds, with the GIL:
    every thread of the process waits for good (CPython gh-106883, in 3.11.7; 3.12 collects only between
    bytecodes). A fresh-clone run of the suite sat so for 40 minutes in a test polling the main thread."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return sys._current_frames().get(thread)  # type: ignore[arg-type]
    finally:
        if enabled:
            gc.enable()
