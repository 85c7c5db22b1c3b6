"""Batch scoring: feed many rows (a whole array, or an iterable of batches) through ``submit`` in a bounded
window of chunks, and yield the answers in input order.

Offline jobs and queue consumers want the opposite of a web request: throughput, not latency. Keeping a few
chunks queued behind the one running keeps every session busy; bounding the window (in chunks and rows, never
more rows than the queue holds) keeps memory flat and never trips ``QueueFullError`` on the scorer's own
traffic. Input iterables are pulled lazily, one batch at a time, only when the window has room.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass
from types import CodeType, TracebackType
from typing import TYPE_CHECKING, Any, Protocol, TextIO

import numpy as np

from ._backend import is_whole_batch
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    QueueFullError,
    RemoteUnavailableError,
)
from ._ort_rules import usable_cores
from ._prediction import Prediction
from ._request import drop_tracebacks

if TYPE_CHECKING:
    from ._model import ModelVersion

__all__ = [
    "ProgressBar",
    "SameRoute",
    "ScoringPlan",
    "caller_may_run",
    "note_copy",
    "plan_for_version",
    "plan_scoring",
    "score",
    "scoring_run_rows",
]


_COPY = "_inprocserve_copy"  # the attribute of a part's future naming the loaded copy that answers it


def note_copy(future: Future[Any], copy: object) -> None:
    """Note on a part's future which loaded copy of its version answers it (the :class:`ModelVersion`): a
    version rewritten in place keeps its number, and the parts of one batch must agree on the copy, not
    just on the number (see ``_on_one_version``)."""
    setattr(future, _COPY, copy)


def _copy_of(future: Future[Any]) -> object:
    return getattr(future, _COPY, None)


class SameRoute:
    """The routing of a batch sent in parts: the first part is routed as any request is (a rollout's
    decision, its shadows), and its decision is kept here for the later parts, which are queued by it
    without being routed again. Routed one by one, a canary at 50 % split most batches between two versions,
    and each such part had to be scored again on one of them (43 % more model runs in a review's job).

    Only while the model's published snapshot (its versions and routing state, replaced whole on any
    change) is the one read before that part was routed (:meth:`holds`): a kill switch, a canary moved or a
    stable version switched between parts routes the next part afresh, and the parts after it follow that
    one; the parts then agree on the last part's version (see ``_on_one_version``). Followed blindly, every
    later part of a batch went to the version just killed."""

    __slots__ = ("decision", "routes")

    def __init__(self) -> None:
        self.decision: Any = None  # the first part's Decision, once it was routed
        self.routes: Any = None  # the model's published snapshot read before it was routed

    def holds(self, routes: Any) -> bool:
        """Whether the kept decision was made with ``routes`` (the same object) published."""
        return self.decision is not None and routes is self.routes


class Submit(Protocol):
    """Sends one request of a scoring job and returns its future (see :func:`score`); ``pin``: to that version,
    whatever the job's own routing; ``route``: the parts of one batch share it (:class:`SameRoute`).

    A request the queue turns away (``QueueFullError``) is not counted as shed: the job waits for room and
    sends it again, and nobody is refused; only ``last_try=True``, the try after which the job gives up and
    raises the error to its caller, is counted as the shed it then is. Counted at every try, a job that
    waited for other traffic counted dozens of sheds a second and fired the operator's shedding alert."""

    def __call__(
        self,
        part: Any,
        *,
        beside: bool = False,
        pin: int | None = None,
        route: SameRoute | None = None,
        last_try: bool = False,
    ) -> Future[Prediction]: ...


Progress = Callable[[int, "int | None"], None]
# Answers a batch of no rows of an iterable without running the model (its future, done): see :func:`score`.
AnswerEmpty = Callable[[Any], "Future[Prediction]"]

# When other traffic fills the queue, a chunk is retried with growing pauses for at most this long.
_QUEUE_FULL_PATIENCE_S = 60.0
_RETRY_PAUSE_S = (0.001, 0.05)  # first and longest pause between retries
_ROUTE_AGAIN_ATTEMPTS = 3  # a batch's last part routed again when the version its parts were to agree on is unloaded
# Grace on top of a chunk's own deadline before a caller stops waiting for a run already started.
_DEADLINE_GRACE_S = 1.0


# Rows per model run a scoring job may use when the model's max_batch_size is smaller: the largest batch of the
# raw onnxruntime ceiling (benchmarks/batch_scoring.py). Larger runs gain little and hold more memory.
SCORING_RUN_ROWS = 256
# ... but only as far as a run stays this short (by the version's measured per-row cost): a model slow per row
# (large inputs, large activations) keeps its max_batch_size, which then also bounds its memory.
SCORING_RUN_BUDGET_S = 0.1


@dataclass(frozen=True, slots=True, kw_only=True)
class ScoringPlan:
    """How a scoring job is cut and how much of it may be in flight at once."""

    chunk_rows: int | None
    """Rows per answer of a whole input; ``None`` for a model without a batch axis (inputs are sent whole)."""
    max_in_flight: int
    """Submitted requests not yet answered, at most (each part of a batch sent in parts counts)."""
    window_rows: int
    """Rows queued and not yet answered, at most (one request is always allowed when nothing is queued); the
    caller's own runs may hold as many again."""
    request_rows: int | None = None
    """Rows per submitted request: a whole number of chunks (``None``: one chunk)."""
    run_rows: int | None = None
    """Rows per model run of a larger request (``None``: the version's ``max_batch_size``)."""
    caller_runs: bool = False
    """Whether the thread iterating the answers runs requests itself, beside the workers."""


def scoring_run_rows(*, max_batch_size: int, per_row_s: float | None) -> int:
    """Rows per model run for a scoring job: ``max_batch_size``, raised up to :data:`SCORING_RUN_ROWS` while a
    run is predicted to stay under :data:`SCORING_RUN_BUDGET_S` (no estimate: ``max_batch_size``)."""
    if per_row_s is None:
        return max_batch_size
    fits = SCORING_RUN_ROWS if per_row_s <= 0 else int(SCORING_RUN_BUDGET_S / per_row_s)
    return max(max_batch_size, min(SCORING_RUN_ROWS, fits))


def caller_may_run(facts: Mapping[str, Any], *, kind: str, sessions: int, cores: int) -> bool:
    """Whether the iterating thread may run scoring requests too: only on one shared onnxruntime CPU session
    (``session.run`` is thread-safe) whose runs leave a core idle. A small model gets one intra-op thread per
    session (a parallel operator would cost more in wake-ups than it saves), so with the default single
    session it keeps one core busy; the caller's run fills another. ``facts`` is the backend's status."""
    threads = facts.get("intra_op_threads")
    providers = facts.get("providers") or [None]
    return (
        kind == "onnxruntime"
        and bool(facts.get("shared_session"))
        and providers[0] == "CPUExecutionProvider"
        and isinstance(threads, int)
        and threads * (sessions + 1) <= cores
    )


def plan_for_version(
    target: ModelVersion, *, batch_rows: int | None, max_in_flight: int | None, timeout_s: float | None
) -> ScoringPlan:
    """The plan for scoring on one loaded version (see :func:`plan_scoring`)."""
    batching = target.config.batching
    sessions = target.config.pool.size
    backend = target.backend
    batchable = target.signature is None or target.signature.batchable
    per_row_s = None if target.run_cost is None else target.run_cost.per_row_s
    return plan_scoring(
        max_batch_size=batching.max_batch_size,
        request_row_limit=batching.request_row_limit,
        max_queue_rows=batching.max_queue_rows,
        sessions=sessions,
        batchable=batchable,
        batch_rows=batch_rows,
        max_in_flight=max_in_flight,
        # with a deadline per chunk, a request of several chunks would stretch the deadline: one chunk each
        run_rows=scoring_run_rows(max_batch_size=batching.max_batch_size, per_row_s=per_row_s)
        if batchable and timeout_s is None
        else None,
        caller_runs=backend.kind == "onnxruntime"
        and caller_may_run(backend.status(), kind=backend.kind, sessions=sessions, cores=usable_cores()),
    )


def plan_scoring(
    *,
    max_batch_size: int,
    request_row_limit: int,
    max_queue_rows: int,
    sessions: int,
    batchable: bool,
    batch_rows: int | None,
    max_in_flight: int | None,
    run_rows: int | None = None,
    caller_runs: bool = False,
) -> ScoringPlan:
    """Cut chunks to the model's limits, group them into requests of about ``run_rows`` rows, and size the
    window so the queue never overflows.

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
    # A request holds as many whole chunks as fit in one run (and in a request, and in the queue).
    per_request = max(1, min(run_rows or chunk, request_row_limit, max_queue_rows) // chunk)
    request = chunk * per_request
    if max_in_flight is None:
        # Two full batches per session: one running, one queued behind it, so a session never waits for the
        # scorer; chunks (or an iterable's batches) smaller than a batch are merged by the batcher.
        window_rows = min(max_queue_rows, 2 * sessions * max(request, max_batch_size))
        count = max(window_rows, 1)
    else:
        window_rows = min(max_queue_rows, max_in_flight * request)
        count = max_in_flight
    return ScoringPlan(
        chunk_rows=chunk if batchable else None,
        max_in_flight=count,
        window_rows=max(window_rows, 1),
        request_rows=request if batchable and per_request > 1 else None,
        run_rows=run_rows if batchable else None,
        caller_runs=caller_runs,
    )


class ProgressBar:
    """A one-line progress bar redrawn in place on a terminal, at most every ``interval_s`` seconds.

    The line is fitted to the terminal's width (``columns``: fixed; ``None``: the stream's terminal, asked at
    each redraw), the bar shrinking first: a line wider than the terminal wraps, and ``\r`` then goes back
    only to the start of its last row, so on an 80-column terminal every redraw of the 86-character line of
    a million-row job left a new line behind. A line shorter than the one before it is padded over its
    leftovers (``230,000 rows/s`` after ``1,100,000 rows/s`` showed ``230,000 rows/ss``).

    Not thread-safe: it is driven by the thread that iterates the results.
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        interval_s: float = 0.2,
        width: int = 30,
        clock: Callable[[], float] = time.monotonic,
        columns: int | None = None,
    ) -> None:
        self._stream = stream if stream is not None else sys.stderr
        self._columns = columns
        self._shown = 0  # characters of the line on screen
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
        room = self._room()
        if total:
            fraction = min(1.0, done / total)
            counts = f" {fraction:6.1%} {done:,}/{total:,} rows, {rate}"
            width = min(self._width, room - len(counts) - 2)  # what the counts leave of the line (2: brackets)
            if width >= 5:
                filled = int(fraction * width)
                text = "[" + "#" * filled + "-" * (width - filled) + "]" + counts
            else:
                text = counts.lstrip()
        else:
            text = f"{done:,} rows, {rate}"
        text = text[:room]
        self._stream.write(f"\r{text.ljust(self._shown)}")
        self._shown = len(text)
        self._stream.flush()
        self._drawn_at = now
        self._drawn_anything = True

    def _room(self) -> int:
        """Characters a line may hold: one less than the terminal's columns (a full row wraps on some)."""
        columns = self._columns
        if columns is None:
            try:
                columns = os.get_terminal_size(self._stream.fileno()).columns
            except (AttributeError, OSError, ValueError):  # not a terminal, or no file behind the stream
                columns = 0
            columns = columns or shutil.get_terminal_size().columns  # (a terminal of unknown size says 0)
        return max(columns - 1, 20)

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
    """One answer's worth of input: chunks of a whole input (answered chunk by chunk), or one batch of an
    iterable (possibly sent in parts, answered as one once every part is in).

    Each part is a request of its own in the window: a batch larger than the window is submitted part by
    part as room frees, never all at once."""

    __slots__ = (
        "answers",
        "chunk_rows",
        "copies",
        "error",
        "futures",
        "own",
        "part_rows",
        "parts",
        "route",
        "rows",
    )

    def __init__(
        self,
        parts: list[Any],
        rows: int,
        error: BaseException | None = None,
        *,
        chunk_rows: int | None = None,
        part_rows: list[int] | None = None,
    ) -> None:
        self.parts = parts
        self.rows = rows
        self.part_rows = part_rows if part_rows is not None else [rows] * len(parts)  # rows of each part
        self.futures: list[Future[Prediction]] = []  # one per part submitted so far, in order
        self.own: list[bool] = []  # per submitted part: run by the iterating thread itself rather than queued
        self.answers: list[Prediction] = []  # the answers of the parts in so far
        self.copies: list[object] = []  # per answer: the loaded copy of its version that answered (note_copy)
        self.error = error
        self.chunk_rows = chunk_rows  # rows per answer when the job holds several chunks (None: one answer)
        self.route = SameRoute() if len(parts) > 1 else None  # a batch sent in parts is routed once

    def unsent(self) -> bool:
        """Whether parts are left to submit."""
        return len(self.futures) < len(self.parts)


def score(
    submit: Submit,
    inputs: Any,
    plan: ScoringPlan,
    *,
    progress: bool | Progress | None = None,
    timeout_s: float | None = None,
    answer_empty: AnswerEmpty | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Prediction]:
    """Check ``inputs`` and return the iterator of answers (see :meth:`Server.predict_many`).

    ``submit(part, beside=...)`` sends one request: queued for the workers, or (``beside=True``, only when
    ``plan.caller_runs``) run at once on the calling thread; either way it returns the request's future.
    ``answer_empty(batch)``: the answer of a batch of no rows of an iterable (a queue consumer's empty poll, a
    filter that dropped every row), in its place, with no model run (``None``: it is submitted like any other).

    Raises:
        TypeError: ``inputs`` is neither an array, a mapping of arrays, nor an iterable of batches.
        InvalidInputError: a whole input whose arrays disagree on their number of rows, or a ragged one.
    """
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (np.ndarray, Mapping, Iterable)):
        raise TypeError(
            "inputs must be an array, a mapping of input name to array, or an iterable of such batches; "
            f"got {type(inputs).__name__}"
        )
    callback, bar = resolve_progress(progress=progress)
    request_rows = plan.request_rows or plan.chunk_rows
    if isinstance(inputs, (np.ndarray, Mapping)):
        whole = _as_arrays(inputs)
        rows = _rows_of(whole)
        total: int | None = rows
        jobs: Iterator[_Job] = _slices(whole, rows, request_rows, plan.chunk_rows)
    else:
        total = _count_rows(inputs) if isinstance(inputs, (list, tuple)) else None
        jobs = _batches(iter(inputs), request_rows)
    return _run(submit, jobs, total, plan, callback, bar, timeout_s, answer_empty, clock, sleep)


def _rows_of(item: Any, name: str | None = None) -> int:
    """Rows (the length of axis 0) of an array or a mapping of arrays.

    Raises:
        InvalidInputError: no batch axis, a ragged nested list, or arrays that disagree on their number of rows.
    """
    if isinstance(item, Mapping):
        counts = {key: _rows_of(value, str(key)) for key, value in item.items()}
        if not counts:
            raise InvalidInputError("a batch is an empty mapping; give it the model's inputs")
        if len(set(counts.values())) > 1:
            listing = ", ".join(f"{key!r} has {rows}" for key, rows in counts.items())
            raise InvalidInputError(f"the inputs of a batch must have the same number of rows: {listing}")
        return next(iter(counts.values()))
    shape = getattr(item, "shape", None)
    if shape is None:
        try:
            shape = np.shape(item)
        except (ValueError, TypeError) as exc:  # numpy's own words, untyped: make it the caller's input error
            raise _ragged(name, exc) from exc
    if not shape:
        raise InvalidInputError(f"a batch needs a leading row axis; got a scalar {type(item).__name__}")
    return int(shape[0])


def _ragged(name: str | None, exc: Exception) -> InvalidInputError:
    what = "a batch" if name is None else f"input {name!r}"
    if isinstance(exc, ValueError):
        return InvalidInputError(f"{what} is ragged: its nested lists differ in length and make no array ({exc})")
    return InvalidInputError(f"{what} cannot be made an array ({type(exc).__name__}: {exc})")


def _count_rows(items: list[Any] | tuple[Any, ...]) -> int | None:
    """Total rows of a list of batches, for progress; ``None`` if one is malformed (it fails in its turn)."""
    try:
        return sum(_rows_of(item) for item in items)
    except Exception:  # whatever checking a batch raises is raised again at its position, after the answers before it
        return None


def _as_arrays(item: Any) -> Any:
    """Convert once before slicing (a no-op for arrays), so a list is not converted again for every chunk.

    Raises:
        InvalidInputError: a ragged nested list.
    """
    if isinstance(item, Mapping):
        return {name: _as_array(value, str(name)) for name, value in item.items()}
    return _as_array(item, None)


def _as_array(value: Any, name: str | None) -> np.ndarray:
    try:
        return np.asarray(value)
    except (ValueError, TypeError) as exc:
        raise _ragged(name, exc) from exc


def _owned(item: Any) -> Any:
    """A batch of an iterable with its arrays copied: it stays queued after the iterable is resumed for the next
    one, and a generator that fills one buffer for every batch (a decoder's, a queue client's) overwrote the
    batches still queued, which were then scored on later rows without a word (159 of 200 answers wrong in
    a review's run). Lists are converted when they are sent, before the next batch is read."""
    if isinstance(item, Mapping):
        return {name: _owned_array(value) for name, value in item.items()}
    return _owned_array(item)


def _owned_array(value: Any) -> Any:
    """A copy of one array of a batch. Not only of an ndarray: any array-like whose ``np.asarray`` is a view of
    the caller's memory (a memoryview, a CPU tensor, an object with ``__array__``) is as reused a buffer;
    copied only if an ndarray, 98 of 100 such batches were scored on later rows."""
    if isinstance(value, (list, tuple)):  # converted when sent, before the next batch is read
        return value
    return np.array(value, order="C")  # a copy, always (and a plain ndarray: a memmap's copy holds no file)


def _part(item: Any, start: int, stop: int) -> Any:
    if isinstance(item, Mapping):
        return {name: value[start:stop] for name, value in item.items()}
    return item[start:stop]


def _slices(inputs: Any, total: int, request_rows: int | None, chunk_rows: int | None) -> Iterator[_Job]:
    """A whole input, cut into requests of whole chunks (views, never copies)."""
    if request_rows is None or total <= request_rows:
        if total:
            yield _Job([inputs], total, chunk_rows=chunk_rows)
        return
    for start in range(0, total, request_rows):
        stop = min(total, start + request_rows)
        yield _Job([_part(inputs, start, stop)], stop - start, chunk_rows=chunk_rows)


def _batches(items: Iterator[Any], part_rows: int | None) -> Iterator[_Job]:
    """One job per item, pulled lazily; an item larger than a request is sent in parts and joined back.

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
            item = _owned(item)
            if part_rows is not None and rows > part_rows:
                item = _as_arrays(item)
        except Exception as exc:  # a malformed batch: report it at its position, after the answers before it
            yield _Job([], 0, error=exc)
            return
        if part_rows is None or rows <= part_rows:
            yield _Job([item], rows)
        else:
            starts = range(0, rows, part_rows)
            sizes = [min(rows, start + part_rows) - start for start in starts]
            yield _Job(
                [_part(item, start, start + size) for start, size in zip(starts, sizes, strict=True)],
                rows,
                part_rows=sizes,
            )


def _run(
    submit: Submit,
    jobs: Iterator[_Job],
    total: int | None,
    plan: ScoringPlan,
    callback: Progress | None,
    bar: ProgressBar | None,
    timeout_s: float | None,
    answer_empty: AnswerEmpty | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[Prediction]:
    # The window holds requests (one part of a job each), submitted or run and not yet answered, in input
    # order; a failed read takes a place too (part 0 of a job with none). Room is counted per request, so a
    # batch larger than the window is sent as its earlier parts are answered, and the job's own traffic
    # never fills the queue.
    window: deque[tuple[_Job, int]] = deque()
    in_flight = 0  # requests in the window
    queued_rows = 0  # rows in the window sent to the workers' queue
    own_rows = 0  # rows in the window run by this thread
    pending: _Job | None = None  # pulled from the input, with parts waiting for room in the window
    exhausted = False
    done_rows = 0

    def pull() -> _Job | None:
        nonlocal pending, exhausted
        if pending is None and not exhausted:
            pending = next(jobs, None)
            exhausted = pending is None
        return pending

    def room(job: _Job, rows_in_window: int) -> bool:
        """Whether the next part of ``job`` fits: one request is always allowed when none is in the window."""
        if job.error is not None:
            return True  # a failed read sends nothing
        rows = job.part_rows[len(job.futures)]
        return in_flight < plan.max_in_flight and not (rows_in_window and rows_in_window + rows > plan.window_rows)

    def send(job: _Job, *, beside: bool) -> Future[Prediction] | None:
        """Submit (or run) the next part of ``job`` into the window; None for a failed read, after which
        nothing more is read or submitted."""
        nonlocal pending, exhausted, in_flight, queued_rows, own_rows
        index = len(job.futures)
        if job.error is not None:  # it sends nothing, and only marks the failed read's place
            window.append((job, index))
            pending, exhausted = None, True
            return None
        if not job.rows and answer_empty is not None:
            future = answer_empty(job.parts[index])  # answered already: it only keeps its place in the order
        else:
            future = submit(job.parts[index], beside=beside, route=job.route)
        job.futures.append(future)
        job.own.append(beside)
        window.append((job, index))
        if not job.unsent():
            pending = None
        in_flight += 1
        if beside:
            own_rows += job.part_rows[index]
        else:
            queued_rows += job.part_rows[index]
        return future

    def release(job: _Job, index: int) -> None:
        """The request at the head of the window is answered: give its room to the next ones."""
        nonlocal in_flight, queued_rows, own_rows
        window.popleft()
        if job.error is not None:
            return
        in_flight -= 1
        if job.own[index]:
            own_rows -= job.part_rows[index]
        else:
            queued_rows -= job.part_rows[index]

    def fill() -> None:
        """Queue requests for the workers while the window has room."""
        while (job := pull()) is not None and room(job, queued_rows):
            future = send(job, beside=False)
            if future is None:
                return
            if future.done() and isinstance(future.exception(), QueueFullError):
                return  # someone else's requests fill the queue: wait for ours to drain before adding more

    def run_own() -> bool:
        """While the oldest request is still running elsewhere, run the next one on this thread."""
        job = pull()
        if job is None or not room(job, own_rows):
            return False
        send(job, beside=True)
        return True

    if callback is not None:
        callback(0, total)
    try:
        fill()
        while window:
            job, index = window[0]
            if plan.caller_runs and job.error is None and not job.futures[index].done() and run_own():
                fill()
                continue
            job_start = done_rows
            released = False
            answers = _answers(job, index, submit, timeout_s, clock, sleep)
            while True:
                # Only the scoring of this request is reported as a failure of its rows: the progress callback
                # and the caller's code at the yield below run outside this try (a callback that raised was
                # reported as "failed at input rows 1025..1024", a chunk that had not failed).
                try:
                    step = next(answers, None)
                    if step is not None and not released:  # this request is in: give its room to the next ones
                        release(job, index)
                        released = True
                        fill()  # refill before handing the result over, so the sessions work while the caller does
                except Exception as exc:
                    left = job_start + job.rows - done_rows
                    if job.rows:
                        # a chunk scored on its own failed: its rows; the request failed as a whole (its deadline, a
                        # remote server's failure: nothing is scored again chunk by chunk): all it had left
                        chunk = job.chunk_rows
                        if chunk is not None and isinstance(exc, InferenceError) and _one_requests(exc):
                            left = min(left, chunk)
                        last = done_rows + left
                        note = f"predict_many: failed at input rows {done_rows + 1}..{last} (1-based)"
                    elif job.error is None:  # read and sent, and refused: a batch of no rows
                        note = f"predict_many: failed at the batch after input row {done_rows}, which has 0 rows"
                    else:
                        note = f"predict_many: the batch after input row {done_rows} could not be read or checked"
                    exc.add_note(note)
                    # Raised with this frame's traceback, the error held the frames of this generator (its
                    # window of jobs, their futures, one holding the error) and of _wait: a cycle that kept the
                    # inputs of every part until the collector's next full pass. Raised with none of them, from
                    # here on, and this frame lets go of its jobs (the window is emptied below).
                    # The caller's own iterable that raised it keeps its frames below the read (they hold none
                    # of those).
                    if exc is job.error:
                        exc.__traceback__ = _frames_below(exc.__traceback__, _batches.__code__)
                    else:
                        drop_tracebacks(exc)
                    pending = None
                    del job, answers
                    raise
                if step is None:
                    break
                rows, answer = step
                if answer is None:  # an earlier part of a batch: its answer waits for the other parts
                    continue
                done_rows += rows
                if callback is not None:
                    callback(done_rows, total)
                yield answer
    finally:
        for queued, index in window:  # the caller stopped early, or a chunk failed: drop what has not run
            if queued.error is None:
                queued.futures[index].cancel()
        window.clear()
        if bar is not None:
            bar.close()


def _one_requests(error: InferenceError) -> bool:
    """Whether ``error`` may come from one chunk's rows (a request scored again chunk by chunk finds which),
    rather than from the remote server the request went to (:class:`RemoteUnavailableError`, or an error
    about the whole run: ``is_whole_batch``)."""
    return not isinstance(error, RemoteUnavailableError) and not is_whole_batch(error)


def _frames_below(traceback: TracebackType | None, code: CodeType) -> TracebackType | None:
    """The part of ``traceback`` below the frame that runs ``code`` (``None`` if it has no such frame)."""
    while traceback is not None:
        if traceback.tb_frame.f_code is code:
            return traceback.tb_next
        traceback = traceback.tb_next
    return None


def _answers(
    job: _Job,
    index: int,
    submit: Submit,
    timeout_s: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> Iterator[tuple[int, Prediction | None]]:
    """Wait for part ``index`` of ``job`` (retrying it if the queue turned it away); yield ``(0, None)`` for
    a part before the last, else the job's answers with their row counts: one per chunk of a whole input, or
    one (parts joined) for an iterable's batch.

    A request of several chunks that the model refused is scored again chunk by chunk, so the answers
    before the failing chunk are still given and the error is raised at that chunk, as if each chunk had
    been a request of its own.
    """
    if job.error is not None:
        raise job.error
    try:
        job.answers.append(_wait(job, index, job.parts[index], submit, timeout_s, clock, sleep))
        job.copies.append(_copy_of(job.futures[index]))
    except InferenceError as exc:
        # A remote server that is down, or that ran the rows and answered unreadably, is not asked again
        # (as the batcher never bisects such a batch): each chunk would send rows it may have run already,
        # which a remote model's retry_after_send = false promises not to, to a server failing already.
        if job.chunk_rows is None or job.rows <= job.chunk_rows or not _one_requests(exc):
            raise
        whole = job.parts[0]
        for start in range(0, job.rows, job.chunk_rows):
            stop = min(job.rows, start + job.chunk_rows)
            piece = _Job([_part(whole, start, stop)], stop - start)
            piece.futures.append(submit(piece.parts[0]))
            yield stop - start, _wait(piece, 0, piece.parts[0], submit, timeout_s, clock, sleep)
        return
    if index + 1 < len(job.parts):
        yield 0, None
        return
    answers = job.answers
    if len(answers) > 1:
        _on_one_version(job, submit, timeout_s, clock, sleep)
    joined = (
        answers[0] if len(answers) == 1 else _join(answers, {name: [a[name] for a in answers] for name in answers[0]})
    )
    if job.chunk_rows is None or job.rows <= job.chunk_rows:
        yield job.rows, joined
        return
    for start in range(0, job.rows, job.chunk_rows):
        stop = min(job.rows, start + job.chunk_rows)
        yield stop - start, _join([joined], {name: joined[name][start:stop] for name in joined})


def _on_one_version(
    job: _Job,
    submit: Submit,
    timeout_s: float | None,
    clock: Callable[[], float],
    sleep: Callable[[float], None],
) -> None:
    """Make the answers of a batch sent in parts all come from one version, the last part's, as one request's
    would: the parts follow the first part's routing (:class:`SameRoute`), but a version unloaded between
    parts sends the later ones elsewhere, and the batch's one answer, labelled with the first part's
    version, would mix two models' rows. A part answered by another version is scored again, pinned to
    the last part's (the one most likely still loaded after a reload), and the answer takes its labels.

    That version may be unloaded meanwhile (a canary rolled back while the parts are scored again): the
    job was not pinned, so it does not fail for it; the last part is routed again, as a part sent now would
    be, and the parts are made to agree with its new answer."""
    answers, copies = job.answers, job.copies
    last = len(answers) - 1

    def again(index: int, pin: int | None) -> tuple[Prediction, object]:
        rescored = _Job([job.parts[index]], job.part_rows[index])
        rescored.futures.append(submit(rescored.parts[0]) if pin is None else submit(rescored.parts[0], pin=pin))
        answer = _wait(rescored, 0, rescored.parts[0], submit, timeout_s, clock, sleep, pin=pin)
        return answer, _copy_of(rescored.futures[0])

    for attempt in range(_ROUTE_AGAIN_ATTEMPTS + 1):
        target, copy = answers[last], copies[last]
        try:
            for index, answer in enumerate(answers[:last]):
                # (the same number from another copy: the version was rewritten in place between the parts)
                if answer.version != target.version or copies[index] is not copy:
                    answer, copies[index] = again(index, target.version)
                    if copies[index] is not copy:  # the last part's copy is replaced too: route it again
                        raise ModelNotFoundError(f"model {target.model!r} version {target.version} was reloaded")
                    answers[index] = Prediction(
                        dict(answer),
                        model=target.model,
                        version=target.version,
                        variant=target.variant,
                        reason=target.reason,
                        request_id=answer.request_id,
                    )
            return
        except ModelNotFoundError:
            if attempt == _ROUTE_AGAIN_ATTEMPTS:
                raise
        answers[last], copies[last] = again(last, None)  # (raises ModelNotFoundError itself if the model is gone)


def _join(answers: list[Prediction], outputs: Mapping[str, Any]) -> Prediction:
    """A Prediction of ``outputs`` (lists are concatenated; arrays are taken as they are), answered like the
    first of ``answers``."""
    first = answers[0]
    return Prediction(
        {name: np.concatenate(value) if isinstance(value, list) else value for name, value in outputs.items()},
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
    *,
    pin: int | None = None,
) -> Prediction:
    pause, longest = _RETRY_PAUSE_S
    give_up_at = clock() + _QUEUE_FULL_PATIENCE_S
    limit = None if timeout_s is None else timeout_s + _DEADLINE_GRACE_S
    last_try = False
    while True:
        future = job.futures[index]
        try:
            return future.result(timeout=limit)
        except QueueFullError:
            if last_try:  # (counted as shed by submit: the job gives up with it)
                raise
        except FutureTimeoutError:
            future.cancel()
            raise DeadlineExceededError(f"no answer within {timeout_s:g}s (timeout_s)") from None
        # Turned away by a queue that others fill: our earlier chunks are done, so try again after a pause.
        sleep(pause)
        pause = min(longest, pause * 2)
        last_try = clock() >= give_up_at
        job.futures[index] = (
            submit(part, route=job.route, last_try=last_try)
            if pin is None
            else submit(part, pin=pin, last_try=last_try)
        )
