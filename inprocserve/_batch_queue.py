"""The batcher's queue of requests: arrival order, a row count, and which requests the next batch takes.

Not locked on its own: the batcher calls it with its lock held. It moves requests' states (queued ->
running, or done when expired or cancelled) but answers none: the batcher does, after releasing its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import CancelledError
from typing import Any

from ._request import DONE, QUEUED, RUNNING, Request

__all__ = ["BatchQueue"]

# Requests of another shape set aside while a batch is taken: bounded, so one taking stays cheap.
_MAX_SKIPPED = 64
# Given-up requests left behind a queued one before the queue is compacted (and while they are at least half
# of it): each holds its inputs, and max_queue_rows counts none of them.
_MAX_LINGERING = 64


class BatchQueue:
    """Queued requests in arrival order, with the number of rows they hold (``rows``)."""

    __slots__ = ("_lingering", "_requests", "rows")

    def __init__(self) -> None:
        self._requests: deque[Request] = deque()
        self.rows = 0
        self._lingering = 0  # withdrawn requests still in the deque (at most: a request answered otherwise is not)

    def __bool__(self) -> bool:
        return bool(self._requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._requests)

    def append(self, request: Request) -> None:
        # rows first: nothing between the two lets a signal handler run, so an interruption leaves both done
        # or neither (the batcher relies on it)
        self.rows += request.rows
        self._requests.append(request)

    def withdraw(self, request: Request) -> None:
        """Stop counting a queued request whose caller gave up (it is skipped when it comes up), and drop
        the given-up requests at the head of the queue: one left behind holds its inputs until a worker
        takes a batch, which an idle version, whose callers run inline, may not do for a long while."""
        self.rows -= request.rows
        requests = self._requests
        lingering = self._lingering + 1  # (this one, unless it goes with the head)
        while requests and requests[0].state != QUEUED:
            requests.popleft()
            lingering -= 1
        self._lingering = lingering = max(0, lingering) if requests else 0
        # Behind a request still queued (a worker busy with a long run, callers with short deadlines), the
        # withdrawn ones would pile up until a worker takes a batch: 26,000 requests in 8 s here, with the
        # queue's bound at 64 rows, each holding its inputs. Past _MAX_LINGERING, and once they are half the
        # queue, it keeps its queued requests only (a pass over it, paid once per as many withdrawals).
        if lingering > _MAX_LINGERING and 2 * lingering > len(requests):
            self._requests = deque(r for r in requests if r.state == QUEUED)
            self._lingering = 0

    def only(self) -> Request | None:
        """The request, if the queue holds exactly one and it is still queued."""
        if len(self._requests) != 1:
            return None
        request = self._requests[0]
        return request if request.state == QUEUED else None

    def oldest(self) -> Request | None:
        """The oldest request still queued."""
        return next((r for r in self._requests if r.state == QUEUED), None)

    def clear(self) -> list[Request]:
        """Empty the queue; returns the requests that were still queued."""
        leftovers = [r for r in self._requests if r.state == QUEUED]
        self._requests.clear()
        self.rows = 0
        self._lingering = 0
        return leftovers

    def take(self, *, max_rows: int, merge: bool, now: float) -> tuple[list[Request], list[Request]]:
        """Pop the next batch: the oldest request and the compatible ones after it (equal ``key``), up to
        ``max_rows`` rows (one request without ``merge``). Also returns the requests found expired at
        ``now`` or cancelled by their caller on the way, marked done (with ``CancelledError`` for the
        cancelled ones); the batch's requests are marked running."""
        queue = self._requests
        batch: list[Request] = []
        expired: list[Request] = []
        skipped: list[Request] = []
        rows = 0
        key: Any = None
        while queue and len(skipped) < _MAX_SKIPPED:
            request = queue[0]
            if request.state != QUEUED:  # abandoned by a caller whose deadline passed
                queue.popleft()
                self._lingering = max(0, self._lingering - 1)
                continue
            if batch and request.key != key:
                skipped.append(queue.popleft())
                continue
            if rows and rows + request.rows > max_rows:
                break
            queue.popleft()
            self.rows -= request.rows
            if request.deadline is not None and request.deadline <= now:
                request.state = DONE
                expired.append(request)
                continue
            future = request.future
            if future is not None and not future.set_running_or_notify_cancel():
                request.state = DONE  # the caller cancelled: drop it before it runs
                request.error = CancelledError()
                expired.append(request)  # its telemetry is closed with the expired ones
                continue
            request.state = RUNNING
            key = request.key
            batch.append(request)
            rows += request.rows
            if rows >= max_rows or not merge:
                break
        if skipped:
            queue.extendleft(reversed(skipped))
        # Given-up requests now at the head go with this batch, not with the next one taken: a batch that
        # filled up stopped before them, and with nothing queued behind them no worker takes another batch
        # (an idle version's callers run inline). Each held its inputs, its caller's task and the error it
        # got with that error's traceback: under a Flask async view, the thread of the view's event loop.
        while queue and queue[0].state != QUEUED:
            queue.popleft()
            self._lingering = max(0, self._lingering - 1)
        return batch, expired
