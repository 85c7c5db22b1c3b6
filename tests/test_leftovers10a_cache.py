"""The prediction cache, leftovers of the tenth review: an answer the cache cannot keep is still its caller's."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from inprocserve import CacheConfig, ModelConfig, _cache

from .conftest import HeldSession, ServerFactory, busy_inputs, version_status

WAIT_S = 30


def copy_out_of_memory(outputs: Any) -> Any:
    """The cache's own copy of an answer, out of memory (as a large text or ZipMap answer can be)."""
    raise MemoryError


def test_an_answer_the_cache_cannot_copy_is_still_its_callers_and_its_followers(
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: Callable[..., HeldSession],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The cache's copy of the answer it keeps raised (out of memory) in the leader's thread, after the run:
    # the leader's caller, whose answer was ready, got the MemoryError.
    server = make_server(busy_repository, config=ModelConfig(cache=CacheConfig(enabled=True)))
    blocker = hold_session(server)
    inputs = busy_inputs(1, seed=31)
    leader = server.submit("busy", inputs)
    follower = server.submit("busy", inputs)
    monkeypatch.setattr(_cache, "shareable", copy_out_of_memory)
    blocker.release()
    assert leader.result(timeout=WAIT_S)["y"].shape == (1, 512)
    assert follower.result(timeout=WAIT_S)["y"].shape == (1, 512)
    assert server.predict("busy", inputs)["y"].shape == (1, 512)  # (runs again: nothing was kept)
    cache = version_status(server, "busy")["cache"]
    assert cache["entries"] == 0 and cache["hits"] == 0, cache
