"""An optional per-version cache of answers by exact inputs.

It only stores answers: identical requests in flight share one run through ``_inflight.Coalescer``, with or
without this cache. Each version has its own cache, so an answer is never served for a different version,
and keys are ``_inflight.inputs_key`` digests, so never for different inputs. Cached arrays are read-only:
every hit returns the same arrays.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from cachetools import Cache, LRUCache, TTLCache

from ._config import CacheConfig
from ._inflight import inputs_key

__all__ = ["PredictionCache"]


class PredictionCache:
    """LRU (or TTL) cache of outputs, with hit / miss / shared counters for ``status()``. Thread-safe."""

    def __init__(self, config: CacheConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._entries: Cache[bytes, Mapping[str, Any]] = (
            TTLCache(maxsize=config.max_entries, ttl=config.ttl_s, timer=clock)
            if config.ttl_s is not None
            else LRUCache(maxsize=config.max_entries)
        )
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.shared = 0

    key = staticmethod(inputs_key)

    def get(self, key: bytes) -> Mapping[str, Any] | None:
        """The cached outputs for ``key`` (counted as a hit), or ``None``."""
        with self._lock:
            outputs = self._entries.get(key)
            if outputs is not None:
                self.hits += 1
            return outputs

    def count(self, *, shared: bool) -> None:
        """Count a request that was not a hit: it ran (a miss) or followed an identical one (shared)."""
        with self._lock:
            if shared:
                self.shared += 1
            else:
                self.misses += 1

    def store(self, key: bytes, outputs: Mapping[str, Any]) -> None:
        """Keep a successful answer; its arrays become read-only, since every later hit shares them."""
        for value in outputs.values():
            if isinstance(value, np.ndarray):
                value.flags.writeable = False
        with self._lock:
            self._entries[key] = outputs

    def status(self) -> dict[str, Any]:
        with self._lock:
            return {"entries": len(self._entries), "hits": self.hits, "misses": self.misses, "shared": self.shared}
