"""An optional per-version cache of answers by exact inputs.

It only stores answers: identical requests in flight share one run through ``_inflight.Coalescer``, with or
without this cache. Each version has its own cache, so an answer is never served for a different version,
and keys are ``_inflight.inputs_key`` digests, so never for different inputs. Cached number arrays are
read-only for good: every hit returns the same arrays (a text array: a read-only copy of its own).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from cachetools import Cache, LRUCache, TTLCache

from . import _fork
from ._config import CacheConfig
from ._held_bytes import held_bytes
from ._inflight import inputs_key, sealed, sealed_copy, shareable
from ._log_limit import LogLimit, since

__all__ = ["PredictionCache"]

logger = logging.getLogger(__name__)


class PredictionCache:
    """LRU (or TTL) cache of outputs, with hit / miss / shared counters for ``status()``. Thread-safe.

    Bounded twice: ``max_entries`` answers, holding ``max_bytes`` in all (the least recently used go first
    past either). A count alone bounds nothing a caller cannot raise: each answer may have
    ``max_request_rows`` rows.

    A forked child (a ``--preload`` worker) starts with the parent's entries, unless a parent thread was
    inside the cache at the fork: its lock is then held in the child by a thread that does not exist there,
    and the entries may be half changed, so the child starts with an empty cache and a lock of its own. The
    parent's answers are never freed in the child (see :meth:`_after_fork_in_child`).
    """

    def __init__(self, config: CacheConfig, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._config = config
        self._clock = clock
        self._entries = self._new_entries()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.shared = 0
        self._store_log = LogLimit(clock=clock)  # (an answer that cannot be kept may be every request's)
        _fork.register(self)

    def _new_entries(self) -> Cache[bytes, tuple[int, Mapping[str, Any]]]:
        config = self._config
        # (sized in bytes: the count of entries is kept to max_entries by store). Each entry is its size and
        # its answer: weighed once, before the lock is taken (4,096 rows of a ZipMap's maps take a
        # millisecond to weigh, which held every hit of the version waiting when the cache weighed it)
        if config.ttl_s is not None:
            return TTLCache(maxsize=config.max_bytes, ttl=config.ttl_s, timer=self._clock, getsizeof=_size_of)
        return LRUCache(maxsize=config.max_bytes, getsizeof=_size_of)

    def _after_fork_in_child(self) -> None:
        # The parent's answers are never freed here: their arrays are onnxruntime's outputs, freed under a
        # lock that a worker of the parent may have held at the fork, held for good here (_fork.keep). Evicted
        # or expired in the child, they stay referenced (in memory shared with the parent until it frees its).
        entries = self._entries
        if self._lock.acquire(blocking=False):  # no thread was inside at the fork: the entries are whole
            self._lock.release()
            # (every entry held, expired ones too: Cache's own iteration skips none)
            _fork.keep([Cache.__getitem__(entries, key) for key in list(Cache.__iter__(entries))])
            return
        _fork.keep(entries)
        self._entries = self._new_entries()
        self._lock = threading.Lock()

    key = staticmethod(inputs_key)

    def get(self, key: bytes) -> Mapping[str, Any] | None:
        """The cached outputs for ``key`` (counted as a hit), or ``None``: arrays shared read-only, any other
        output (a list of maps, as a ZipMap gives) a copy of its own (see :func:`shareable`)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
        return None if entry is None else shareable(entry[1])

    def count(self, *, shared: bool) -> None:
        """Count a request that was not a hit: it ran (a miss) or followed an identical one (shared)."""
        with self._lock:
            if shared:
                self.shared += 1
            else:
                self.misses += 1

    def store(self, key: bytes, outputs: Mapping[str, Any]) -> None:
        """Keep a successful answer; its number arrays become read-only for good (:func:`sealed`: the caller it
        answered gets them so too), since every later hit shares them (any other output, text included, is kept
        as a copy, and each hit gets a copy of its own: :func:`shareable`). An array that is a small slice of a
        batch's output is kept as a copy: the slice would keep the whole batch's output alive (up to
        ``max_batch_size`` times its own size) for as long as it is cached.

        An answer that cannot be copied or sealed (an output ``deepcopy`` refuses, out of memory) is not kept,
        and that is logged (at most once a minute): never raised to the caller it answered, whose answer is
        ready (the caller's answer may be sealed already, as a kept one is)."""
        if _least_bytes(outputs) > self._config.max_bytes:
            # too large to keep whatever is copied (what it holds of its own, at least): neither copied nor
            # sealed for nothing (a row of a batch over max_bytes was copied, then dropped)
            return
        try:
            kept, size = self._kept(outputs)
        except Exception as exc:  # (a KeyboardInterrupt in the caller's thread goes on up)
            skipped = self._store_log.due(type(exc).__name__)
            if skipped is not None:
                logger.warning("an answer was not cached: it could not be copied (%r)%s", exc, since(skipped))
            return
        if size > self._config.max_bytes:
            return  # larger than max_bytes alone: not kept (it would evict every other answer)
        with self._lock:
            entries = self._entries
            if key not in entries and len(entries) >= self._config.max_entries:
                try:
                    entries.popitem()  # (the least recently used: as many entries as the count allows)
                except KeyError:  # every entry len() counted expired before this (a TTLCache expires both)
                    pass
            entries[key] = (size, kept)  # (and more go while the answers would hold more than max_bytes)

    @staticmethod
    def _kept(outputs: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
        """What :meth:`store` keeps of ``outputs``, and its size; seals the caller's number arrays."""
        kept = dict(shareable(outputs))  # (text and other values copied: the caller it answered may change its)
        for name, value in kept.items():
            if isinstance(value, np.ndarray) and not value.dtype.hasobject:  # (text: a copy of its own already)
                base = value.base
                if isinstance(base, np.ndarray) and value.nbytes * 2 < base.nbytes:
                    kept[name] = sealed_copy(value)  # (the caller it answered keeps its row as it was)
                    continue
                kept[name] = shared = sealed(value)
                if shared is not value and isinstance(outputs, dict):  # the caller it answered holds outputs
                    outputs[name] = shared  # (holding the array itself, it could make it writable again)
        return kept, _entry_bytes(kept)

    @property
    def held_bytes(self) -> int:
        """What the cached answers hold, as counted against ``max_bytes``."""
        with self._lock:
            return int(self._entries.currsize)

    def status(self) -> dict[str, Any]:
        """Counters, and how full the cache is: ``bytes`` held by its answers against ``max_bytes``, and
        ``entries`` against ``max_entries`` (the least recently used go past either)."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "hits": self.hits,
                "misses": self.misses,
                "shared": self.shared,
                "bytes": int(self._entries.currsize),
                "max_bytes": self._config.max_bytes,
                "max_entries": self._config.max_entries,
            }


def _size_of(entry: tuple[int, Mapping[str, Any]]) -> int:
    return entry[0]


_ENTRY_OVERHEAD = 512
"""What an entry costs beyond its answer's data, in bytes (its key, dict, arrays' headers, the cache's links)."""


def _least_bytes(outputs: Mapping[str, Any]) -> int:
    """The least an answer kept holds, copied or not: its arrays' own buffers (not the batch a row views, nor a
    text array's strings) and the fixed cost per entry; quick (a ZipMap's maps and texts, slow to weigh, are
    left for :func:`_entry_bytes`)."""
    return _ENTRY_OVERHEAD + sum(value.nbytes for value in outputs.values() if isinstance(value, np.ndarray))


def _entry_bytes(outputs: Mapping[str, Any]) -> int:
    """What a kept answer holds: each array's buffer (the whole batch's, for a row kept as a view of it), a
    sequence output's tensors, the strings of a text output, a ZipMap's maps, and a fixed cost per entry."""
    total = _ENTRY_OVERHEAD
    for value in outputs.values():
        if isinstance(value, np.ndarray):
            total += _array_bytes(value)
        elif isinstance(value, list):  # a ZipMap's rows (a dict of Python floats each), or a sequence's tensors
            item = _map_item_bytes(value)
            total += sum(
                sys.getsizeof(row) + item * len(row)
                if isinstance(row, dict)
                else _array_bytes(row)
                if isinstance(row, np.ndarray)
                else 64
                for row in value
            )
        else:
            total += sys.getsizeof(value)
    return total


def _map_item_bytes(rows: list[Any]) -> int:
    """What one entry of a ZipMap's map holds beside the map's table: its score (a float) and its key, a class
    number (56 bytes for both) or a label's text, a string of its own in every row: weighed from the first
    row's labels (counted as class numbers, 50 answers with long labels held 23 MB where 14 were counted)."""
    first = rows[0] if rows else None
    if not isinstance(first, dict) or not first or not isinstance(next(iter(first)), str):
        return 56
    return 24 + -(-sum(map(sys.getsizeof, first)) // len(first))


def _array_bytes(value: np.ndarray) -> int:
    """What an array holds: its buffer (the whole batch's, for a row kept as a view of it) and the strings of
    a text array. (A tensor of a sequence output was weighed as 64 bytes: answers of 512 KiB each, 20 of them
    kept under a 2 MiB bound.)"""
    base = value
    while isinstance(base.base, np.ndarray):
        base = base.base
    return held_bytes([value]) + (base.nbytes - value.nbytes if base is not value else 0)
