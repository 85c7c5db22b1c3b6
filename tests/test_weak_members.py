"""Sets of objects held weakly that one thread walks while others add to them (``_weak_members``)."""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from inprocserve._recorder import Recorder
from inprocserve._telemetry import METRICS
from inprocserve._weak_members import WeakMembers


class Member:
    """Something held weakly."""


def test_a_member_leaves_when_it_is_freed() -> None:
    members: WeakMembers[Member] = WeakMembers()
    kept, dropped = Member(), Member()
    members.add(kept)
    members.add(dropped)
    members.add(kept)  # (added twice: one member)
    del dropped
    gc.collect()
    assert list(members) == [kept]
    assert len(members) == 1


def added_while_walked(add: Callable[[], object], walk: Callable[[], object], seconds: float = 2.0) -> list[str]:
    """Walk with ``walk`` for ``seconds`` while another thread calls ``add`` (keeping the last 200 things it
    returns alive); the errors the walks raised."""
    stop = threading.Event()

    def adding() -> None:
        alive: list[object] = []
        while not stop.is_set():
            alive.append(add())
            del alive[:-200]

    adder = threading.Thread(target=adding)
    adder.start()
    errors: list[str] = []
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            try:
                walk()
            except RuntimeError as exc:
                errors.append(str(exc))
    finally:
        stop.set()
        adder.join()
    return errors


def test_a_walk_while_another_thread_adds_members_never_fails() -> None:
    """``list(weakref.WeakSet())`` while another thread added raised "Set changed size during iteration"
    (about 1 walk in 600 here)."""
    members: WeakMembers[Member] = WeakMembers()

    def add() -> Member:
        member = Member()
        members.add(member)
        return member

    assert added_while_walked(add, lambda: list(members)) == []


@pytest.fixture
def no_pending_records() -> Iterator[None]:
    yield
    METRICS.flush()


@pytest.mark.usefixtures("no_pending_records")
def test_a_metric_collection_while_versions_load_records_every_version() -> None:
    """The collection's flush of every version's pending durations walked the recorders while a version
    loading on another thread added its own: the flush raised, and that collection went without them."""
    count = iter(range(10**9))
    assert added_while_walked(lambda: Recorder("loading", next(count)), METRICS.flush) == []
