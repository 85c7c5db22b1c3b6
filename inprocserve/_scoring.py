"""Batch scoring: feed many rows (a whole array, or an iterable of batches) through ``submit`` in a bounded
window of chunks, and yield the answers in input order.

Offline jobs and queue consumers want the opposite of a web request: throughput, not latency. Keeping a few
chunks queued behind the one running keeps every session busy; bounding the window (in chunks and rows, never
more rows than the queue holds) keeps memory flat and never trips ``QueueFullError`` on the scorer's own
traffic. Input iterables are pulled lazily, one batch at a time, only when the window has room.
"""

from __future__ import annotations

import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from typing import Any, TextIO

import numpy as np

from ._errors import DeadlineExceededError, InvalidInputError, QueueFullError
from ._prediction import Prediction

__all__ = ["ProgressBar", "ScoringPlan", "plan_scoring", "score"]

Submit = Callable[[Any], "Future[Prediction]"]
Progress = Callable[[int, "int | None"], None]

# When other traffic fills the queue, a chunk is retried with growing pauses for at most this long.
_QUEUE_FULL_PATIENCE_S = 60.0
_RETRY_PAUSE_S = (0.001, 0.05)  # first and longest pause between retries
# Grace on top of a chunk's own deadline before a caller stops waiting for a run already started.
_DEADLINE_GRACE_S = 1.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoringPlan:
    """How a scoring job is cut and how much of it may be in flight at once."""

    chunk_rows: int | None
    """Rows per submitted request; ``None`` for a model without a batch axis (inputs are sent whole)."""
    max_in_flight: int
    """Submitted requests not yet yielded, at most."""
    window_rows: int
    """Rows submitted and not yet yielded, at most (one chunk is always allowed when nothing is in flight)."""


def plan_scoring(
    *,
    max_batch_size: int,
    request_row_limit: int,
    max_queue_rows: int,
    sessions: int,
    batchable: bool,
    batch_rows: int | None,
    max_in_flight: int | None,
) -> ScoringPlan:
    """Cut chunks to the model's limits and size the window so the queue never overflows.

    Raises:
        ValueError: ``batch_rows`` or ``max_in_flight`` is not a positive int, or ``batch_rows`` exceeds the
            rows one request may carry.
    """
    for name, value in (("batch_rows", batch_rows), ("max_in_flight", max_in_flight)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    if batch_rows is not None and batch_rows > request_row_limit:
        raise ValueError(
            f"batch_rows={batch_rows} is more than the {request_row_limit} rows one request may carry "
            "(batching.max_request_rows, else max_queue_rows)"
        )
    chunk = batch_rows if batch_rows is not None else min(max_batch_size, request_row_limit)
    if max_in_flight is None:
        # Two full batches per session: one running, one queued behind it, so a session never waits for the
        # scorer; chunks (or an iterable's batches) smaller than a batch are merged by the batcher.
        window_rows = min(max_queue_rows, 2 * sessions * max(chunk, max_batch_size))
        count = max(window_rows, 1)
    else:
        window_rows = min(max_queue_rows, max_in_flight * chunk)
        count = max_in_flight
    return ScoringPlan(chunk_rows=chunk if batchable else None, max_in_flight=count, window_rows=max(window_rows, 1))


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal, at most every ``interval_s`` seconds.

    Not thread-safe: it is driven by the thread that iterates the results.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 0.2,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._interval_s = interval_s
        self._width = width
        self._clock = clock
        self._started = clock()
        self._drawn_at: float | None = None
        self._last: tuple[int, int | None] = (0, None)
        self._drawn_anything = False

    def __call__(self, done_rows: int, total_rows: int | None) -> None:
        self._last = (done_rows, total_rows)
        now = self._clock()
        if self._drawn_at is not None and now - self._drawn_at < self._interval_s and done_rows != total_rows:
            return
        self._draw(now)

    def _draw(self, now: float) -> None:
        done, total = self._last
        elapsed = now - self._started
        rate = f"{done / elapsed:,.0f} rows/s" if elapsed > 0 else "- rows/s"
        if total:
            fraction = min(1.0, done / total)
            filled = int(fraction * self._width)
            bar = "#" * filled + "-" * (self._width - filled)
            text = f"[{bar}] {fraction:6.1%} {done:,}/{total:,} rows, {rate}"
        else:
            text = f"{done:,} rows, {rate}"
        self._stream.write(f"\r{text}")
        self._stream.flush()
        self._drawn_at = now
        self._drawn_anything = True

    def close(self) -> None:
        """Draw the final state and end the line."""
        self._draw(self._clock())
        if self._drawn_anything:
            self._stream.write("\n")
            self._stream.flush()


def resolve_progress(*, progress: bool | Progress | None) -> tuple[Progress | None, ProgressBar | None]:
    """``True``: a bar on stderr if it is a terminal (nothing otherwise); a callable: itself."""
    if progress is None or progress is False:
        return None, None
    if progress is True:
        isatty = getattr(sys.stderr, "isatty", None)
        if isatty is None or not isatty():
            return None, None
        bar = ProgressBar(sys.stderr)
        return bar, bar
    if callable(progress):
        return progress, None
    raise TypeError(f"progress must be True, False, None or a callable(done_rows, total_rows), got {progress!r}")


class _Job:
    """One item of output: a chunk of a whole input, or one batch of an iterable (possibly split in parts)."""

    __slots__ = ("error", "futures", "parts", "rows")

    def __init__(self, parts: list[Any], rows: int, error: BaseException | None = None) -> None:
        self.parts = parts
        self.rows = rows
        self.futures: list[Future[Prediction]] = []
        self.error = error


def score(
    submit: Submit,
    inputs: Any,
    plan: ScoringPlan,
    *,
    progress: bool | Progress | None = None,
    timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Prediction]:
    """Check ``inputs`` and return the iterator of answers (see :meth:`Server.predict_many`).

    Raises:
        TypeError: ``inputs`` is neither an array, a mapping of arrays, nor an iterable of batches.
        InvalidInputError: a whole input whose arrays disagree on their number of rows.
    """
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (np.ndarray, Mapping, Iterable)):
        raise TypeError(
            "inputs must be an array, a mapping of input name to array, or an iterable of such batches; "
            f"got {type(inputs).__name__}"
        )
    callback, bar = resolve_progress(progress=progress)
    if isinstance(inputs, (np.ndarray, Mapping)):
        whole = _as_arrays(inputs)
        rows = _rows_of(whole)
        total: int | None = rows
        jobs: Iterator[_Job] = _slices(whole, rows, plan.chunk_rows)
    else:
        total = _count_rows(inputs) if isinstance(inputs, (list, tuple)) else None
        jobs = _batches(iter(inputs), plan.chunk_rows)
    return _run(submit, jobs, total, plan, callback, bar, timeout_s, clock, sleep)


def _rows_of(item: Any) -> int:
    """Rows (the length of axis 0) of an array or a mapping of arrays.

    Raises:
        InvalidInputError: no batch axis, or arrays that disagree on their number of rows.
    """
    if isinstance(item, Mapping):
        counts = {name: _rows_of(value) for name, value in item.items()}
        if not counts:
            raise InvalidInputError("a batch is an empty mapping; give it the model's inputs")
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{name!r} has {rows}" for name, rows in counts.items())
            raise InvalidInputError(f"the inputs of a batch must have the same number of rows: {listing}")
        return next(iter(counts.values()))
    shape = getattr(item, "shape", None)
    if shape is None:
        shape = np.shape(item)
    if not shape:
        raise InvalidInputError(f"a batch needs a leading row axis; got a scalar {type(item).__name__}")
    return int(shape[0])


def _count_rows(items: list[Any] | tuple[Any, ...]) -> int | None:
    """Total rows of a list of batches, for progress; ``None`` if one is malformed (it fails in its turn)."""
    try:
        return sum(_rows_of(item) for item in items)
    except InvalidInputError:
        return None


def _as_arrays(item: Any) -> Any:
    """Convert once before slicing (a no-op for arrays), so a list is not converted again for every chunk."""
    if isinstance(item, Mapping):
        return {name: np.asarray(value) for name, value in item.items()}
    return np.asarray(item)


def _part(item: Any, start: int, stop: int) -> Any:
    if isinstance(item, Mapping):
        return {name: value[start:stop] for name, value in item.items()}
    return item[start:stop]


def _slices(inputs: Any, total: int, chunk_rows: int | None) -> Iterator[_Job]:
    """A whole input, cut into chunks (views, never copies)."""
    if chunk_rows is None or total <= chunk_rows:
        if total:
            yield _Job([inputs], total)
        return
    for start in range(0, total, chunk_rows):
        stop = min(total, start + chunk_rows)
        yield _Job([_part(inputs, start, stop)], stop - start)


def _batches(items: Iterator[Any], chunk_rows: int | None) -> Iterator[_Job]:
    """One job per item, pulled lazily; an item larger than a chunk is sent in parts and joined back.

    A failure to read or check an item becomes a failed job at that position, after which nothing more is read.
    """
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception as exc:  # the caller's iterable failed: report it where it happened
            yield _Job([], 0, error=exc)
            return
        try:
            rows = _rows_of(item)
        except InvalidInputError as exc:
            yield _Job([], 0, error=exc)
            return
        if chunk_rows is None or rows <= chunk_rows:
            yield _Job([item], rows)
        else:
            item = _as_arrays(item)
            yield _Job(
                [_part(item, start, min(rows, start + chunk_rows)) for start in range(0, rows, chunk_rows)], rows
            )


def _run(
    submit: Submit,
    jobs: Iterator[_Job],
    total: int | None,
    plan: ScoringPlan,
    callback: Progress | None,
    bar: ProgressBar | None,
    timeout_s: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[Prediction]:
    window: deque[_Job] = deque()
    in_flight = 0  # submitted requests not yet yielded
    in_flight_rows = 0
    pending: _Job | None = None  # pulled from the input, waiting for room in the window
    exhausted = False
    done_rows = 0

    def fill() -> None:
        nonlocal pending, exhausted, in_flight, in_flight_rows
        while True:
            if pending is None:
                if exhausted:
                    return
                pending = next(jobs, None)
                if pending is None:
                    exhausted = True
                    return
            job = pending
            if window and (
                in_flight + len(job.parts) > plan.max_in_flight or in_flight_rows + job.rows > plan.window_rows
            ):
                return
            pending = None
            window.append(job)
            if job.error is not None:
                exhausted = True  # nothing after a failed read is submitted
                return
            congested = False
            for part in job.parts:
                future = submit(part)
                job.futures.append(future)
                congested = congested or (future.done() and isinstance(future.exception(), QueueFullError))
            in_flight += len(job.parts)
            in_flight_rows += job.rows
            if congested:  # someone else's requests fill the queue: wait for ours to drain before adding more
                return

    if callback is not None:
        callback(0, total)
    try:
        fill()
        while window:
            job = window[0]
            try:
                result = _collect(job, submit, timeout_s, clock, sleep)
            except Exception as exc:
                if job.rows:
                    note = f"predict_many: failed at input rows {done_rows + 1}..{done_rows + job.rows} (1-based)"
                else:
                    note = f"predict_many: the batch after input row {done_rows} could not be read or checked"
                exc.add_note(note)
                raise
            window.popleft()
            in_flight -= len(job.parts)
            in_flight_rows -= job.rows
            done_rows += job.rows
            fill()  # refill before handing the result over, so the sessions work while the caller does
            if callback is not None:
                callback(done_rows, total)
            yield result
    finally:
        for queued in window:  # the caller stopped early, or a chunk failed: drop what has not run
            for future in queued.futures:
                future.cancel()
        if bar is not None:
            bar.close()


def _collect(
    job: _Job,
    submit: Submit,
    timeout_s: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Prediction:
    """Wait for every part of ``job`` (retrying parts the queue turned away) and join them into one answer."""
    if job.error is not None:
        raise job.error
    answers = []
    for index, part in enumerate(job.parts):
        answers.append(_wait(job, index, part, submit, timeout_s, clock, sleep))
    if len(answers) == 1:
        return answers[0]
    first = answers[0]
    outputs = {name: np.concatenate([answer[name] for answer in answers]) for name in first}
    return Prediction(
        outputs,
        model=first.model,
        version=first.version,
        variant=first.variant,
        reason=first.reason,
        request_id=first.request_id,
    )


def _wait(
    job: _Job,
    index: int,
    part: Any,
    submit: Submit,
    timeout_s: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Prediction:
    pause, longest = _RETRY_PAUSE_S
    give_up_at = clock() + _QUEUE_FULL_PATIENCE_S
    limit = None if timeout_s is None else timeout_s + _DEADLINE_GRACE_S
    while True:
        future = job.futures[index]
        try:
            return future.result(timeout=limit)
        except QueueFullError:
            if clock() >= give_up_at:
                raise
        except FutureTimeoutError:
            future.cancel()
            raise DeadlineExceededError(f"no answer within {timeout_s:g}s (timeout_s)") from None
        # Turned away by a queue that others fill: our earlier chunks are done, so try again after a pause.
        sleep(pause)
        pause = min(longest, pause * 2)
        job.futures[index] = submit(part)
