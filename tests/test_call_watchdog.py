"""The watchdog that ends an HTTP call at its deadline, on real socket pairs: it shuts the socket of a call
still running at its deadline (ending a blocked read), and never touches the socket of a call that ended,
which the pool may already have handed to another call."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from inprocserve._call_watchdog import CallWatchdog


@pytest.fixture
def watchdog() -> Iterator[CallWatchdog]:
    dog = CallWatchdog(name="test-watchdog")
    yield dog
    dog.close()


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair()
    yield ours, theirs
    ours.close()
    theirs.close()


def test_a_call_past_its_deadline_has_its_blocked_read_ended(
    watchdog: CallWatchdog, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    ours.settimeout(30)  # the per-read timeout alone would hold the read for 30 s
    watch = watchdog.watch(0.2)
    watch.arm(ours)
    assert ours.recv(1) == b""  # the shutdown ends the read as an end of data
    assert watch.end() is True


def test_a_call_that_ended_in_time_keeps_its_socket(
    watchdog: CallWatchdog, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, theirs = pair
    watch = watchdog.watch(1.0)  # (0.05 s: a stall of the test between arm and end let the deadline pass first)
    watch.arm(ours)
    assert watch.end() is False
    later = watchdog.watch(1.1)  # the thread wakes for the first deadline and goes on to this one
    while not later.fired:
        time.sleep(0.01)
    theirs.sendall(b"x")  # the connection, back in a pool, still works for the next call
    assert ours.recv(1) == b"x"
    assert watchdog.watched == 0  # both entries left the heap


def test_a_socket_armed_after_the_deadline_is_shut_at_once(
    watchdog: CallWatchdog, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    watch = watchdog.watch(0.0)
    while not watch.fired:
        time.sleep(0.01)
    watch.arm(ours)  # the connection came out of the pool after the deadline
    ours.settimeout(30)
    assert ours.recv(1) == b""


def test_an_earlier_deadline_wakes_the_thread(
    watchdog: CallWatchdog, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    slow = watchdog.watch(3600)  # the thread now sleeps towards this one
    quick = watchdog.watch(0.05)
    quick.arm(ours)
    ours.settimeout(30)
    assert ours.recv(1) == b""
    assert quick.fired and not slow.fired
    slow.end()


def test_close_stops_the_thread_and_later_watches_never_fire(watchdog: CallWatchdog) -> None:
    watchdog.watch(3600)
    (thread,) = [t for t in threading.enumerate() if t.name == "test-watchdog"]
    watchdog.close()
    assert not thread.is_alive()
    late = watchdog.watch(0.0)
    time.sleep(0.05)
    assert not late.fired
    watchdog.close()  # idempotent


def test_close_ends_the_calls_still_running(pair: tuple[socket.socket, socket.socket]) -> None:
    dog = CallWatchdog(name="test-watchdog-close")
    ours, _ = pair
    watch = dog.watch(3600)
    watch.arm(ours)
    dog.close()  # the owner closes: no call may outlive it
    ours.settimeout(30)
    assert ours.recv(1) == b""
    assert watch.end() is True


def test_a_late_fire_leaves_a_connection_another_call_took_from_the_pool(
    watchdog: CallWatchdog, pair: tuple[socket.socket, socket.socket]
) -> None:
    # urllib3 gives a connection back to its pool as the last byte of an answer is read, before the call
    # that read it ends its watch: another call may take it in between
    ours, theirs = pair
    first = watchdog.watch(30)
    first.arm(ours)
    second = watchdog.watch(30)
    second.arm(ours)  # the next call reuses the connection
    first.fire()  # the first call is stopped (its deadline, or its server closing) before it ended
    theirs.sendall(b"x")
    assert ours.recv(1) == b"x"  # the second call's connection still works
    assert first.end() is True and second.end() is False
    third = watchdog.watch(30)
    third.arm(ours)
    third.fire()
    ours.settimeout(30)
    assert ours.recv(1) == b""  # the call that owns it is stopped: shut


def test_calls_that_end_long_before_their_deadline_do_not_pile_up(watchdog: CallWatchdog) -> None:
    """The usual call ends well within its timeout; its entry must not stay for the length of the timeout
    (at thousands of calls a second over a 30 s timeout that was tens of thousands of entries)."""
    waiting = watchdog.watch(3600)  # one call still running all along
    for _ in range(10_000):
        watchdog.watch(30).end()
    assert watchdog.watched <= 2 * 64 + 1
    assert not waiting.fired
    waiting.end()


def test_a_sweep_keeps_every_call_still_running(
    watchdog: CallWatchdog, pair: tuple[socket.socket, socket.socket]
) -> None:
    ours, _ = pair
    running = [watchdog.watch(3600) for _ in range(100)]
    for _ in range(1_000):
        watchdog.watch(30).end()
    quick = watchdog.watch(0.05)  # after the sweeps: the thread still finds the earliest deadline
    quick.arm(ours)
    ours.settimeout(30)
    assert ours.recv(1) == b""
    assert watchdog.watched >= len(running)
    assert not any(watch.fired for watch in running)
    for watch in running:
        watch.end()


def test_a_call_armed_again_on_another_socket_leaves_nothing_of_the_first_behind(watchdog: CallWatchdog) -> None:
    # A TLS connection arms its call twice (the plain socket for the handshake, then the TLS one), as a call
    # that opens a second connection does: the first socket's entry stayed until its id was reused, one per
    # such call for the life of the process
    sockets = [socket.socket() for _ in range(4)]
    try:
        for first, second in (sockets[:2], sockets[2:]):
            watch = watchdog.watch(30.0)
            watch.arm(first)
            watch.arm(second)
            assert watch.end() is False
        assert watchdog._owners == {}
        # and a socket the pool handed to another call meanwhile keeps that call's entry
        taken, mine = sockets[:2]
        watch, other = watchdog.watch(30.0), watchdog.watch(30.0)
        watch.arm(taken)
        other.arm(taken)
        watch.arm(mine)
        assert watchdog._owners == {id(taken): other, id(mine): watch}
        watch.end(), other.end()
    finally:
        for sock in sockets:
            sock.close()
