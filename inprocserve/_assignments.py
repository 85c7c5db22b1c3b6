"""Who served each routed request of a rollout, by request id, for the outcomes reported by request id.

Every routed request of a rollout is noted (a router's :class:`_Assignments`), for an hour and up to 100 000
of them: at 28 requests a second a model's notes are full within the hour, in every worker that serves it. An
ordered dict of id strings held about 247 bytes a note (24.7 MB a model in each such worker); the columns
here hold about 25, and give the same answers: every note is kept for its hour, up to the bound (the oldest
dropped first), and an outcome is credited once.
"""

from __future__ import annotations

import enum
import math
import time
from array import array
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["_COUNTED", "RequestNumber", "_Assignments", "_Counted"]


class _Counted(enum.Enum):
    """What :meth:`_Assignments.take` gives for a request whose outcome was counted already (any string may
    name a variant, the empty one too)."""

    COUNTED = "counted"


_COUNTED = _Counted.COUNTED

_LARGEST_NUMBER = 2**63 - 1  # (the number column's: a signed 64-bit integer, 19 digits)
_LARGEST_DIGITS = len(str(_LARGEST_NUMBER))
_NAME_BITS = 16  # (the low bits of the served column: the index of the variant's name; 0 is _COUNTED)
_NAMES_KEPT = 2**_NAME_BITS
_LARGEST_SERIAL = 2 ** (63 - _NAME_BITS) - 1  # (the high bits: the serial number)
_DIGITS = "0123456789"


def _number_in(request_id: str, prefix: str | None) -> int:
    """The number of ``request_id`` if it is ``prefix`` and a number written as ``str`` writes it, else -1: an
    id with a sign, a space, an underscore, a digit of another script or a leading zero (``p-07``) is no
    request's id, though ``int`` reads them all."""
    if prefix is None:
        return -1
    digits = request_id.removeprefix(prefix)
    if len(digits) == len(request_id) or len(digits) > _LARGEST_DIGITS:  # (not this prefix; too many digits)
        return -1
    try:
        number = int(digits)
    except ValueError:
        return -1
    return number if 0 <= number <= _LARGEST_NUMBER and str(number) == digits else -1


class RequestNumber:
    """A request id, and its number under the prefix last asked for (see :func:`_number_in`), parsed once for
    the notes of every model an outcome is looked for in: without ``model=``, an outcome by request id asks
    each rolled-out model, whose notes take the same prefix (the server's), so the id was parsed once per
    model (with ten models, ~2 us of an outcome's ~12). Not thread-safe: one per call."""

    __slots__ = ("_number", "_prefix", "request_id")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self._prefix: str | None = None
        self._number = -1  # (the number under no prefix)

    def under(self, prefix: str | None) -> int:
        """The id's number if it is ``prefix`` and a number, else -1 (parsed again for another prefix only)."""
        if prefix != self._prefix:
            self._number = _number_in(self.request_id, prefix)
            self._prefix = prefix
        return self._number


class _Assignments:
    """Request id -> the variant that served it and the statistics it was counted in, for outcomes reported
    by request id: each kept ``ttl_s`` after it was served, and at most ``size`` of them (the oldest go
    first). Not thread-safe: the router's lock guards it.

    The serial number of the statistics a request was counted in is its proof of version: a variant's
    statistics are of one version, and start afresh (another number) when another version serves it, so an
    outcome credits only the statistics its request was counted in, if they are still the variant's (an old
    version's late outcome credits nothing). A number, not the statistics object: no note is an object the
    garbage collector tracks (100 000 tracked tuples made every note ~90 ns slower).

    Every routed request of a rollout is noted, so a note must cost little, in time and in memory. A server's
    request ids are its prefix and a counter (``RequestIds``): the note of such an id is a row of three
    ``array`` columns (the number; when it expires; the serial and the index of the variant's name in one
    integer: 24 bytes), the rows in the order of their numbers, so a look-up is a binary search (``bisect``,
    in C) in a window that is one row wide where the rollout routes all the process's requests. The counter is
    the whole process's, shared by its models, so a rollout's numbers have gaps: they are the rows' keys,
    never their places. A request takes its number before the router's lock, so two threads may note theirs in
    either order: a note below the last one goes to its sorted place (near the end, where an insert moves few
    rows). The oldest rows (the lowest numbers: the requests that took theirs first) go first by moving
    ``_head`` past them; once those are an eighth of the columns, the rows kept move down over them (a
    compaction: one ``memmove`` of the kept rows per column, 2.4 MB in all at 100 000 of them, once in ~12 500
    notes: at most eight rows moved per row dropped).

    An id is a row only if it is this prefix and a number as ``str`` writes it (no sign, no leading zero):
    ``p-07`` is not request 7 of ``p-``, nor is an id of another prefix (another server's, a parent process's
    after a fork, one made up) any number of this one. Such ids, and an id noted again (it expires from then
    on, behind the others), are kept as they were before the columns, in an ordered dict of their own
    (``_others``, in the order of expiry); the bound and the expiry count both together, the note that expires
    first going first. The prefix is that of the first id noted while no row is kept.
    """

    __slots__ = (
        "_clock",
        "_expires",
        "_front_expires",
        "_head",
        "_name_index",
        "_names",
        "_numbers",
        "_others",
        "_prefix",
        "_served",
        "_size",
        "_ttl_s",
    )

    def __init__(self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._numbers = array("q")  # the request's number (its id less the prefix), in ascending order
        self._expires = array("d")  # when the note expires (by ``clock``)
        self._served = array("q")  # serial << _NAME_BITS | the index of the variant's name (0: _COUNTED)
        self._head = 0  # the rows before it are dropped (see _compact)
        self._names: list[str | _Counted] = [_COUNTED]
        self._name_index: dict[str | _Counted, int] = {_COUNTED: 0}
        self._prefix: str | None = None
        self._others: OrderedDict[str, tuple[float, str | _Counted, int]] = OrderedDict()
        self._size = size
        self._ttl_s = ttl_s
        self._clock = clock
        # When the oldest note expires, or earlier: the oldest only ever gets a later one (a note expires after
        # all the others), so a note looks for expired ones only from this time on.
        self._front_expires = -math.inf

    def note(self, request_id: str, variant: str | _Counted, serial: int = 0) -> None:
        """Remember that ``variant`` served ``request_id``, counted in its statistics of this ``serial``
        number (``_COUNTED``: credit nothing for it)."""
        now = self._clock()
        expires = now + self._ttl_s
        numbers, others = self._numbers, self._others
        number = _number_in(request_id, self._prefix)
        index = self._name_index.get(variant)
        last = numbers[-1] if numbers else -1
        if (
            index is not None
            and number > last
            and 0 <= serial <= _LARGEST_SERIAL
            and (not others or request_id not in others)  # (in _others: noted before, see _note_otherwise)
        ):
            numbers.append(number)  # (nearly every note: the next number, of a variant named before)
            self._expires.append(expires)
            self._served.append(serial << _NAME_BITS | index)
        else:
            self._note_otherwise(request_id, number, expires, variant, serial)
        if len(numbers) - self._head + len(others) > self._size:  # (at the bound: the oldest goes)
            if others:
                self._drop_oldest()
            else:
                head = self._head = self._head + 1
                if (head >= 64 and head * 8 >= len(numbers)) or head == len(numbers):
                    self._compact()
        if now >= self._front_expires:
            for _ in range(2):  # those expired first, two per note: a note never does unbounded work
                if self._oldest_expires() > now:
                    break
                self._drop_oldest()
            self._front_expires = self._oldest_expires()  # (this note's, at least, is there)

    def take(self, given: object) -> tuple[str, int] | _Counted | None:
        """The variant that served the request ``given`` (its id, or a :class:`RequestNumber`) and the serial
        number of the statistics it was counted in, once: an outcome counts once per request, so a retried
        report (or a second click on the page) cannot outweigh the requests that were reported once. The note
        stays, marked ``_COUNTED``, so that a repeat is known for one and is not credited by key either. A
        :class:`RequestNumber` is parsed at most once for all the notes it is looked for in (one per model)."""
        if isinstance(given, str):  # (first: the plain id is what one model asked is given)
            request_id = given
            number = _number_in(request_id, self._prefix) if len(self._numbers) > self._head else -1
        elif isinstance(given, RequestNumber):
            request_id = given.request_id
            number = given.under(self._prefix) if len(self._numbers) > self._head else -1
        else:  # a caller's number or bytes is no request's id (none is noted): as the ordered dict, nothing
            return None
        row = self._row_of(number) if number >= 0 else -1
        if row >= 0:
            if self._expires[row] <= self._clock():
                return None
            served = self._served[row]
            if served == 0:
                return _COUNTED
            self._served[row] = 0
            variant = self._names[served & (_NAMES_KEPT - 1)]
            assert isinstance(variant, str)  # (index 0 alone names _COUNTED)
            return variant, served >> _NAME_BITS
        if not self._others:
            return None
        entry = self._others.get(request_id)
        if entry is None or entry[0] <= self._clock():
            return None
        if entry[1] is _COUNTED:
            return _COUNTED
        self._others[request_id] = (entry[0], _COUNTED, 0)  # (in place: the order of expiry is kept)
        return entry[1], entry[2]

    def __len__(self) -> int:
        return len(self._numbers) - self._head + len(self._others)

    def after_fork_in_child(self) -> None:
        """A forked child's request ids have another prefix (``RequestIds`` starts afresh there): the rows of
        the parent's requests join ``_others`` (still credited, as they were before the fork), and the child's
        first note takes the columns for its own prefix. A one-time cost in a child whose parent routed
        requests (which a parent that builds no server, as ``_fork`` asks, never does).

        A thread of the parent may have been changing the columns at the fork (the router's lock held, and
        the columns changed one after the other): then they are of unequal lengths, their rows no longer line
        up, and they are dropped (those requests credit nothing) rather than credit another request's variant."""
        columns = (self._numbers, self._expires, self._served)
        head, prefix, names = self._head, self._prefix, self._names
        if head < len(self._numbers) and len({len(column) for column in columns}) == 1:
            rows = zip(self._numbers[head:], self._expires[head:], self._served[head:], strict=True)
            moved = [
                (f"{prefix}{number}", (expires, names[served & (_NAMES_KEPT - 1)], served >> _NAME_BITS))
                for number, expires, served in rows
            ]
            # (in the order of expiry, as _others must be: sorted is stable, ties keep their order)
            self._others = OrderedDict(sorted([*moved, *self._others.items()], key=lambda item: item[1][0]))
        self._head, self._prefix = 0, None
        for column in columns:
            del column[:]

    def _note_otherwise(
        self, request_id: str, number: int, expires: float, variant: str | _Counted, serial: int
    ) -> None:
        """:meth:`note` of an id of no number (-1) or a number below the last one, noted before, of a variant
        not named before or a serial past the column's."""
        if number < 0 and self._head == len(self._numbers):
            number = self._adopt_prefix_of(request_id)
        index = self._name_index.get(variant)
        if index is None:
            index = self._named(variant)
        others = self._others
        if others and request_id in others:  # (noted again: it expires from now, behind the others)
            del others[request_id]
            number = -1
        numbers, head = self._numbers, self._head
        # (a number below every row kept, the newest note, would be the first row dropped at the bound)
        below_every_row = head < len(numbers) and number < numbers[head]
        if number < 0 or index is None or not 0 <= serial <= _LARGEST_SERIAL or below_every_row:
            if number >= 0:  # (noted before as a row, perhaps: that row would answer for it, stale)
                self._drop_row(number)
            others[request_id] = (expires, variant, serial)
        elif not self._add_row(number, expires, serial << _NAME_BITS | index):
            others[request_id] = (expires, variant, serial)

    def _adopt_prefix_of(self, request_id: str) -> int:
        """Take the prefix of ``request_id`` (all but its final digits) for the rows', none being kept, and
        return its number; -1, keeping the prefix, if it ends in no number as ``str`` writes one."""
        digits = len(request_id) - len(request_id.rstrip(_DIGITS))
        if digits == 0:
            return -1
        prefix = request_id[:-digits]
        number = _number_in(request_id, prefix)  # (-1 for an empty prefix: an id of digits alone)
        if number >= 0:
            self._prefix = prefix
        return number

    def _named(self, variant: str | _Counted) -> int | None:
        """The index of a variant name not seen before; None once the index bits can number no more."""
        if len(self._names) >= _NAMES_KEPT:  # (65 535 names in a process's life: no configuration names them)
            return None
        self._names.append(variant)  # (before the index names it: a fork in between leaves no index unnamed)
        index = self._name_index[variant] = len(self._names) - 1
        return index

    def _add_row(self, number: int, expires: float, served: int) -> bool:
        """Add a row at its sorted place; False, adding none, if ``number`` is noted already (its row dropped:
        noted again, it expires after the notes taken later, so it is kept in ``_others``)."""
        numbers = self._numbers
        if self._head == len(numbers) or number > numbers[-1]:
            numbers.append(number)
            self._expires.append(expires)
            self._served.append(served)
            return True
        row = bisect_left(numbers, number, self._head)  # (< len(numbers): number <= the last)
        if numbers[row] == number:
            for column in (numbers, self._expires, self._served):
                del column[row]
            return False
        numbers.insert(row, number)
        self._expires.insert(row, expires)
        self._served.insert(row, served)
        return True

    def _drop_row(self, number: int) -> None:
        """Drop the row of ``number``, if there is one (its id is noted again, in ``_others``)."""
        row = self._row_of(number)
        if row >= 0:
            for column in (self._numbers, self._expires, self._served):
                del column[row]

    def _row_of(self, number: int) -> int:
        """The row of ``number``, or -1.

        The numbers are distinct integers in ascending order, so a number's row is at most its distance above
        the first row's and at least its distance below the last's: where a rollout routes all of a process's
        requests, that is one row (no search), and where it routes a share, the search is of a window about
        the inverse of that share wide."""
        numbers, head = self._numbers, self._head
        last = len(numbers) - 1
        if last < head:
            return -1
        above_first, below_last = number - numbers[head], numbers[last] - number
        if above_first < 0 or below_last < 0:
            return -1
        low, high = max(head, last - below_last), min(last, head + above_first)
        if numbers[low] == number:
            return low
        row = bisect_left(numbers, number, low, high + 1)
        return row if row <= high and numbers[row] == number else -1

    def _oldest_expires(self) -> float:
        """When the note that expires first does (inf: none is kept)."""
        head = self._head
        oldest = self._expires[head] if head < len(self._expires) else math.inf
        if self._others:
            oldest = min(oldest, next(iter(self._others.values()))[0])
        return oldest

    def _drop_oldest(self) -> None:
        """Drop the note that expires first (of the oldest row and ``_others``' first)."""
        head, others = self._head, self._others
        if head < len(self._expires) and not (others and next(iter(others.values()))[0] < self._expires[head]):
            head = self._head = head + 1
            if (head >= 64 and head * 8 >= len(self._numbers)) or head == len(self._numbers):
                self._compact()
        elif others:
            others.popitem(last=False)

    def _compact(self) -> None:
        """Move the rows kept down over those dropped, once these are an eighth of the columns (or all of
        them): each compaction moves at most eight rows per row dropped since the last."""
        head, self._head = self._head, 0  # (first: a fork before the columns are moved finds them unequal)
        for column in (self._numbers, self._expires, self._served):
            del column[:head]
