"""Rate limits for the log lines of steady problems.

A problem that repeats for every request, batch or poll (a model that fails every run, a repository folder
that is gone) must not log a line each time: under load that is thousands of lines a minute, which cost
money in a log store, bury other lines, and can fill a disk; and a client can cause some of them at any
rate. :class:`LogLimit` says when such a problem is due to be logged: the first time, then at most every
``every_s`` while it keeps happening, with the count of the times not logged since; and whether a problem
that ends was going on, so its end is logged once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

from . import _fork

__all__ = ["LOG_EVERY_S", "LogLimit", "since"]

LOG_EVERY_S = 60.0
"""How often a steady problem is logged again while it lasts (once a minute, as the flag readers do)."""

_MAX_KEYS = 1024  # problems followed at once: past it the oldest is forgotten (and logged again if it recurs)


class LogLimit:
    """When to log each of several steady problems, told apart by a key (a model, a kind of problem).

    Thread-safe, and fork-safe: a forked child gets a lock of its own.

    Args:
        every_s: Least time between two lines of one problem.
        clock: Monotonic clock (tests step a ``ManualClock``).
    """

    def __init__(self, every_s: float = LOG_EVERY_S, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s = every_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [when last logged, times not logged since, going on, its end not said since that line]
        self._state: dict[Hashable, list[float | int | bool]] = {}
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        """A forked child's lock of its own: a thread of the parent asking at the instant of the fork (the drift
        scorer, which asks for every window it scores) held it for good there, and the child's first ask hung
        (its drift scoring thread, for the worker's life). What was logged when is kept."""
        self._lock = threading.Lock()

    def due(self, key: Hashable = None) -> int | None:
        """Count one occurrence of ``key``'s problem. Returns None when it should not be logged now, else
        how many occurrences were not logged since its last line (0 the first time).

        A problem that ended less than ``every_s`` after its last line and recurs is the same problem going on:
        one that flaps (a mount that comes and goes between polls, a server up for a probe and down again, a
        drift score around its threshold) is still logged at most every ``every_s``, not twice per flap."""
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is not None and now - state[0] < self.every_s:
                state[1] += 1
                state[2] = True  # going on (again)
                return None
            skipped = 0 if state is None else int(state[1])
            if state is None and len(self._state) >= _MAX_KEYS:
                del self._state[next(iter(self._state))]
            self._state[key] = [now, 0, True, True]
            return skipped

    def uncount(self, key: Hashable = None) -> None:
        """Forget the occurrences of ``key``'s problem not logged so far, keeping when it was last logged: a
        line about it was written another way (a different error of it, logged at once as news), so the next
        line's count starts from that one."""
        with self._lock:
            state = self._state.get(key)
            if state is not None:
                state[1] = 0

    def would_log(self, key: Hashable = None) -> bool:
        """Whether :meth:`due` would log ``key``'s problem now; counts nothing."""
        with self._lock:
            state = self._state.get(key)
            return state is None or self._clock() - state[0] >= self.every_s

    def ended(self, key: Hashable = None) -> bool:
        """``key``'s problem is over; True if a line about it was logged since its end was last said (log its
        end then). After a flap whose start was not logged, its end is not either: each end line answers a
        problem line."""
        now = self._clock()
        with self._lock:
            state = self._state.get(key)
            if state is None or not state[2]:
                return False
            announced = bool(state[3])
            if now - state[0] >= self.every_s:
                del self._state[key]  # a recurrence is due to be logged anyway: nothing to remember
            else:
                state[2] = state[3] = False  # remembered until every_s after its last line (see due)
            return announced

    def forget(self, key: Hashable = None) -> None:
        """Forget ``key``'s problem: its next occurrence is logged as the first (another problem took its place)."""
        with self._lock:
            self._state.pop(key, None)


def since(skipped: int) -> str:
    """The tail of a repeated line: `` (N more since the last line)``, or nothing."""
    return f" ({skipped} more since the last such line)" if skipped else ""
