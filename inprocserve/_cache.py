"""An optional per-version prediction cache, with identical in-flight requests sharing one run.

Keys hash the input names, dtypes, shapes and bytes (blake2b), and each version has its own cache, so an
answer is never served for a different version or different inputs. Cached arrays are read-only: every
hit returns the same arrays.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from typing import Any

import numpy as np
from cachetools import Cache, LRUCache, TTLCache

from ._config import CacheConfig

__all__ = ["PredictionCache"]


class PredictionCache:
    """LRU (or TTL) cache of outputs plus a map of in-flight keys. Thread-safe."""

    def __init__(self, config: CacheConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: Cache[bytes, Mapping[str, Any]] = (
            TTLCache(maxsize=config.max_entries, ttl=config.ttl_s, timer=clock)
            if config.ttl_s is not None
            else LRUCache(maxsize=config.max_entries)
        )
        self._lock = threading.Lock()
        self._inflight: dict[bytes, Future[Mapping[str, Any]]] = {}
        self.hits = 0
        self.misses = 0
        self.shared = 0

    @staticmethod
    def key(arrays: Mapping[str, np.ndarray]) -> bytes:
        digest = hashlib.blake2b(digest_size=16)
        for name, array in arrays.items():
            digest.update(name.encode())
            digest.update(str(array.dtype).encode())
            digest.update(repr(array.shape).encode())
            if array.dtype.kind == "O":  # string tensors
                digest.update("\x1f".join(map(str, array.ravel())).encode())
            else:
                digest.update(np.ascontiguousarray(array).data)
        return digest.digest()

    def lookup(self, key: bytes) -> tuple[Mapping[str, Any] | None, Future[Mapping[str, Any]] | None, bool]:
        """``(cached outputs, in-flight future, leader)``: a hit, or a run to wait for, or the duty to run."""
        with self._lock:
            outputs = self._entries.get(key)
            if outputs is not None:
                self.hits += 1
                return outputs, None, False
            future = self._inflight.get(key)
            if future is not None:
                self.shared += 1
                return None, future, False
            self.misses += 1
            future = Future()
            self._inflight[key] = future
            return None, future, True

    def finish(self, key: bytes, outputs: Mapping[str, Any] | None, error: BaseException | None) -> None:
        """The leader's answer: cache it (not errors), release the followers, forget the in-flight key."""
        if outputs is not None:
            for value in outputs.values():
                if isinstance(value, np.ndarray):
                    value.flags.writeable = False  # shared by every later hit
        with self._lock:
            future = self._inflight.pop(key, None)
            if outputs is not None:
                self._entries[key] = outputs
        if future is not None:
            if error is not None:
                future.set_exception(error)
            else:
                assert outputs is not None
                future.set_result(outputs)

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses, "shared": self.shared}
