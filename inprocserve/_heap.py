"""Give the memory that loading or retiring a model version freed back to the operating system.

glibc's allocator keeps most of what a process frees: past its first freed large block it serves blocks of up
to 32 MiB from its heaps instead of mapping them, and what is freed there stays resident. Building a version's
sessions allocates and frees a good share of its weights again (protobuf parsing, pre-packing): a 144 MiB
model left the process at 272 MB resident after its load, 237 MB once trimmed; a retired version's weights
likewise stayed resident after it was unloaded (134 MB against 92 for an 18 MiB model). So a load and a
retirement each end with one ``malloc_trim``, off the request path. Other C libraries (musl, macOS) have none;
there this does nothing.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

__all__ = ["give_back_freed_memory"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    import ctypes  # (on the first load, not with the package)

    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; absent from musl
    except (AttributeError, OSError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def give_back_freed_memory() -> None:
    """Return the free pages of every heap of the C allocator to the operating system (glibc only). It takes
    the allocator's locks while it walks the heaps (milliseconds; 80 ms for 1 GB of freed blocks), so it is
    called where a version finished loading or was retired, never per request."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
