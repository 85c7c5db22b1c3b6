"""Which variant served each recent request of a rollout, for outcomes reported by request id, kept in
arrays indexed by the request's number rather than in a dict of strings and tuples.

Every routed request of a rollout is noted, and a note is kept for an hour, up to 100,000 of them: a
rollout that takes 28 requests a second in one worker fills that within the hour. An ordered dict of the id
strings and ``(expiry, variant, serial)`` tuples held about 246 bytes a note, 24.6 MB a rolled-out model
in every worker process; these arrays hold 28 bytes a note (2.8 MB when full), and grow to that only as
needed.
"""

from __future__ import annotations

import enum
import time
from array import array
from collections.abc import Callable

import numpy as np

__all__ = ["COUNTED", "Assignments", "Counted"]

_FIRST_CAPACITY = 1024
_MAX_DIGITS = 18  # a request's number as its id writes it: fits a signed 64-bit slot
_EMPTY = -1  # the number of a slot that holds no note (request numbers are never negative)


class Counted(enum.Enum):
    """What :meth:`Assignments.take` gives for a request whose outcome was counted already (any string may
    name a variant, the empty one too)."""

    COUNTED = "counted"


COUNTED = Counted.COUNTED


class Assignments:
    """Request id -> the variant that served it and the statistics it was counted in, for outcomes reported
    by request id: each kept ``ttl_s`` after it was served, until ``size`` later request numbers have been
    handed out (the oldest go first), so at most ``size`` of them. Not thread-safe: the router's lock
    guards it.

    The serial number of the statistics a request was counted in is its proof of version: a variant's
    statistics are of one version, and start afresh (another number) when another version serves it, so an
    outcome credits only the statistics its request was counted in, if they are still the variant's (an old
    version's late outcome credits nothing).

    A request id is ``<prefix>-<number>`` (:class:`~inprocserve._prediction.RequestIds`: a prefix of the
    process's own, and a counter). The note of number ``n`` lives in slot ``n % capacity`` of four arrays:
    the number itself (to tell it from another in the same slot), when it expires, the serial, and the
    variant (an index into the few variant names seen). The capacity starts small and doubles, up to
    ``size``, when a note would take the slot of a note still kept; at ``size``, a note takes the slot of
    one ``size`` numbers older. An id of another prefix starts the notes afresh: a forked worker's ids (its
    parent's notes are no use there). An id of any other form is not kept (and never found).
    """

    __slots__ = (
        "_capacity",
        "_clock",
        "_expires",
        "_head",
        "_index_of",
        "_names",
        "_numbered_from",
        "_numbers",
        "_prefix",
        "_serials",
        "_size",
        "_ttl_s",
        "_variants",
    )

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._size = size
        self._ttl_s = ttl_s
        self._clock = clock
        self._prefix: str | None = None
        self._head = "\0"  # the prefix and its dash, which the ids noted start with (none yet)
        self._numbered_from = 0
        self._start_afresh()

    def _start_afresh(self) -> None:
        self._names: list[str | Counted] = [COUNTED]  # variant index -> name (0: counted already)
        self._index_of: dict[str | Counted, int] = {COUNTED: 0}
        self._allocate(min(self._size, _FIRST_CAPACITY))

    def _allocate(self, capacity: int) -> None:
        self._capacity = capacity
        self._numbers = array("q", [_EMPTY]) * capacity
        self._expires = array("d", [0.0]) * capacity
        self._serials = array("q", [0]) * capacity
        self._variants = array("i", [0]) * capacity

    def note(self, request_id: str, variant: str | Counted, serial: int = 0) -> None:
        """Remember that ``variant`` served ``request_id``, counted in its statistics of this ``serial``
        number (``COUNTED``: credit nothing for it). Noted again, it expires from now."""
        digits = request_id[self._numbered_from :] if request_id.startswith(self._head) else ""
        if 0 < len(digits) <= _MAX_DIGITS and digits.isdigit() and digits.isascii():  # (as _parsed reads it)
            number = int(digits)
        else:  # another prefix (or another form)
            parsed = _parsed(request_id)
            if parsed is None:
                return
            self._prefix, number = parsed
            self._head = self._prefix + "-"
            self._numbered_from = len(self._head)
            self._start_afresh()
        now = self._clock()
        slot = number % self._capacity
        held = self._numbers[slot]
        while held != _EMPTY and held != number and self._expires[slot] > now and self._capacity < self._size:
            self._grow(now)
            slot = number % self._capacity
            held = self._numbers[slot]
        if held > number:  # (a note this late: the slot's newer one stays)
            return
        index = self._index_of.get(variant)
        if index is None:
            index = self._index_of[variant] = len(self._names)
            self._names.append(variant)
        self._numbers[slot] = number
        self._expires[slot] = now + self._ttl_s
        self._serials[slot] = serial
        self._variants[slot] = index

    def take(self, request_id: str) -> tuple[str, int] | Counted | None:
        """The variant that served ``request_id`` and the serial number of the statistics it was counted in,
        once: an outcome counts once per request, so a retried report (or a second click on the page) cannot
        outweigh the requests that were reported once. The note stays, marked ``COUNTED``, so that a repeat
        is known for one and is not credited by key either."""
        parsed = _parsed(request_id)
        if parsed is None or parsed[0] != self._prefix:
            return None
        number = parsed[1]
        slot = number % self._capacity
        if self._numbers[slot] != number or self._expires[slot] <= self._clock():
            return None
        variant = self._names[self._variants[slot]]
        if variant is COUNTED:
            return COUNTED
        self._variants[slot] = 0
        return variant, self._serials[slot]

    def _grow(self, now: float) -> None:
        """Double the capacity (up to ``size``), keeping the notes not expired (of two that then share a
        slot, which only the last step to ``size`` allows, the newer)."""
        numbers, expires = np.frombuffer(self._numbers, np.int64), np.frombuffer(self._expires, np.float64)
        serials, variants = np.frombuffer(self._serials, np.int64), np.frombuffer(self._variants, np.int32)
        kept = np.flatnonzero((numbers != _EMPTY) & (expires > now))
        self._allocate(min(self._size, self._capacity * 2))
        slots = numbers[kept] % self._capacity
        if self._capacity % (len(numbers) * 2):  # (not a doubling: two may now share a slot; the newer stays)
            newest_first = np.argsort(-numbers[kept], kind="stable")
            kept = kept[newest_first][np.unique(slots[newest_first], return_index=True)[1]]
            slots = numbers[kept] % self._capacity
        np.frombuffer(self._numbers, np.int64)[slots] = numbers[kept]
        np.frombuffer(self._expires, np.float64)[slots] = expires[kept]
        np.frombuffer(self._serials, np.int64)[slots] = serials[kept]
        np.frombuffer(self._variants, np.int32)[slots] = variants[kept]

    def __len__(self) -> int:
        """How many notes are kept (not expired)."""
        numbers, expires = np.frombuffer(self._numbers, np.int64), np.frombuffer(self._expires, np.float64)
        return int(np.count_nonzero((numbers != _EMPTY) & (expires > self._clock())))


def _parsed(request_id: object) -> tuple[str, int] | None:
    """``(prefix, number)`` of a request id ``<prefix>-<number>``; None for anything else (an outcome's
    request id is the client's: any object, any text)."""
    if type(request_id) is not str:
        return None
    prefix, dash, digits = request_id.rpartition("-")
    if not dash or not 0 < len(digits) <= _MAX_DIGITS or not digits.isascii() or not digits.isdigit():
        return None
    return prefix, int(digits)
