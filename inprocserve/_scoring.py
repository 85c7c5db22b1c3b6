"""Batch scoring: feed many rows (a whole array, or an iterable of batches) through ``submit`` in a bounded
window of chunks, and yield the answers in input order.

Offline jobs and queue consumers want the opposite of a web request: throughput, not latency. Keeping a few
chunks queued behind the one running keeps every session busy; bounding the window (in chunks and rows, never
more rows than the queue holds) keeps memory flat and never trips ``QueueFullError`` on the scorer's own
traffic. Input iterables are pulled lazily, one batch at a time, only when the window has room.

The plan of a job (:mod:`._scoring_plan`), its progress bar (:mod:`._scoring_progress`) and the checks and
slicing of its inputs (:mod:`._scoring_inputs`) live in modules of their own; this one runs the window.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from types import CodeType, TracebackType
from typing import Any, Protocol

import numpy as np

from ._backend import is_whole_batch, raised_by_signal_handler
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    QueueFullError,
    RemoteUnavailableError,
)
from ._prediction import Prediction
from ._request import drop_tracebacks, let_go_of_future
from ._scoring_inputs import as_arrays, count_rows, owned, part_of, rows_of
from ._scoring_plan import (
    ScoringPlan,
    caller_may_run,
    not_a_multiple,
    plan_for_version,
    plan_scoring,
    scoring_run_rows,
)
from ._scoring_progress import Progress, ProgressBar, resolve_progress
from ._signature import is_arrow_stream

# (the plan's and the bar's names are kept importable from here, where they were defined before)
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


# Answers a batch of no rows of an iterable without running the model (its future, done): see :func:`score`.
AnswerEmpty = Callable[[Any], "Future[Prediction]"]

# When other traffic fills the queue, a chunk is retried with growing pauses for at most this long.
_QUEUE_FULL_PATIENCE_S = 60.0
_RETRY_PAUSE_S = (0.001, 0.05)  # first and longest pause between retries
_ROUTE_AGAIN_ATTEMPTS = 3  # a batch's last part routed again when the version its parts were to agree on is unloaded
# A read of the input this slow is taken for one that waits (a queue consumer's poll): answers in are then handed
# over before the next read, rather than held until it returns.
_SLOW_READ_S = 0.005
# Grace on top of a chunk's own deadline before a caller stops waiting for a run already started.
_DEADLINE_GRACE_S = 1.0


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
    batch_of: Callable[[Any], Any] | None = None,
    named: Callable[[BaseException], BaseException] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Prediction]:
    """Check ``inputs`` and return the iterator of answers (see :meth:`Server.predict_many`).

    ``submit(part, beside=...)`` sends one request: queued for the workers, or (``beside=True``, only when
    ``plan.caller_runs``) run at once on the calling thread; either way it returns the request's future.
    ``answer_empty(batch)``: the answer of a batch of no rows of an iterable (a queue consumer's empty poll, a
    filter that dropped every row), in its place, with no model run (``None``: it is submitted like any other).
    ``batch_of(batch)``: an iterable's batch as it is sent (a data frame's columns read as the inputs by name);
    what it raises is that batch's error, at its position.
    ``named(error)``: a batch's refusal as the caller names it (the model it was sent to: a refusal of a rows
    count, say, is checked before any request of the batch is made, which the server names).

    Raises:
        TypeError: ``inputs`` is neither an array, a mapping of arrays, nor an iterable of batches.
        InvalidInputError: a whole input whose arrays disagree on their number of rows, or a ragged one.
    """
    if isinstance(inputs, (str, bytes)) or not isinstance(inputs, (np.ndarray, Mapping, Iterable)):
        hint = " (a pyarrow dataset: pass dataset.to_batches())" if is_arrow_stream(inputs) else ""
        raise TypeError(
            "inputs must be an array, a mapping of input name to array, or an iterable of such batches; "
            f"got {type(inputs).__name__}{hint}"
        )
    callback, bar = resolve_progress(progress=progress)
    request_rows = plan.request_rows or plan.chunk_rows
    if isinstance(inputs, (np.ndarray, Mapping)):
        whole = as_arrays(inputs)
        rows = rows_of(whole)
        total: int | None = rows
        jobs: Iterator[_Job] = _slices(whole, rows, request_rows, plan.chunk_rows)
    else:
        total = count_rows(inputs) if isinstance(inputs, (list, tuple)) else None
        jobs = _batches(iter(inputs), request_rows, batch_of, exact_rows=plan.exact_rows, named=named)
    iterable = not isinstance(inputs, (np.ndarray, Mapping))
    return _run(submit, jobs, total, plan, callback, bar, timeout_s, answer_empty, clock, sleep, iterable=iterable)


def _slices(inputs: Any, total: int, request_rows: int | None, chunk_rows: int | None) -> Iterator[_Job]:
    """A whole input, cut into requests of whole chunks (views, never copies)."""
    if request_rows is None or total <= request_rows:
        if total:
            yield _Job([inputs], total, chunk_rows=chunk_rows)
        return
    for start in range(0, total, request_rows):
        stop = min(total, start + request_rows)
        yield _Job([part_of(inputs, start, stop)], stop - start, chunk_rows=chunk_rows)


def _batches(
    items: Iterator[Any],
    part_rows: int | None,
    batch_of: Callable[[Any], Any] | None = None,
    *,
    exact_rows: int | None = None,
    named: Callable[[BaseException], BaseException] | None = None,
) -> Iterator[_Job]:
    """One job per item, pulled lazily; an item larger than a request is sent in parts and joined back.

    A failure to read or check an item becomes a failed job at that position, after which nothing more is read.
    ``exact_rows``: the model takes exactly that many rows per run; an item of rows that are no multiple of it
    is such a failure, before any of its parts runs (the last part would fail after the others ran).
    ``named``: what such a failure (a malformed batch, not the iterable's own exception) is reported as.
    """
    while True:
        try:
            item = next(items)
        except StopIteration:
            return
        except Exception as exc:  # the caller's iterable failed: report it where it happened
            if raised_by_signal_handler(exc):  # the task's time limit as it read: the task's now, after no answer
                raise
            yield _Job([], 0, error=exc)
            return
        try:
            if batch_of is not None:
                item = batch_of(item)
            rows = rows_of(item)
            if exact_rows is not None and rows % exact_rows:
                raise not_a_multiple("it", exact_rows, rows, "batch")  # (named by the caller: see score)
            item = owned(item)
            if part_rows is not None and rows > part_rows:
                item = as_arrays(item)
        except Exception as exc:  # a malformed batch: report it at its position, after the answers before it
            if raised_by_signal_handler(exc):  # (the task's time limit as it was checked: as above)
                raise
            yield _Job([], 0, error=exc if named is None else named(exc))
            return
        if part_rows is None or rows <= part_rows:
            yield _Job([item], rows)
        else:
            starts = range(0, rows, part_rows)
            sizes = [min(rows, start + part_rows) - start for start in starts]
            yield _Job(
                [part_of(item, start, start + size) for start, size in zip(starts, sizes, strict=True)],
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
    *,
    iterable: bool,
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
    last_read_s = 0.0  # how long the last read of the input took
    done_rows = 0

    def pull(rows_in_window: int, *, read: bool = True) -> _Job | None:
        """The next job: the one read already and not yet sent whole, else (``read``) the next one read now."""
        nonlocal pending, exhausted, last_read_s
        if pending is None and not exhausted and read and may_read(rows_in_window):
            started = time.perf_counter()
            pending = next(jobs, None)
            last_read_s = time.perf_counter() - started
            exhausted = pending is None
        return pending

    def reads_wait() -> bool:
        """Whether reading the input takes long enough that an answer must not wait for a read: a queue
        consumer waiting for messages (a whole input's next slice, a generator's decoded batch, is read at once)."""
        return last_read_s >= _SLOW_READ_S

    def may_read(rows_in_window: int) -> bool:
        """Whether to read the next batch now: only while the window has room for a request, and, where reads
        wait, while no answer is ready to hand over. A batch read ahead of room, or while an answer was ready,
        held the answers already in until the read returned: a consumer sent one message every 2 s had its
        first answer after 4 s with ``max_in_flight=1``, and by default only once hundreds of messages had
        come to fill the window."""
        if in_flight >= plan.max_in_flight or rows_in_window >= plan.window_rows:
            return False
        if window and reads_wait():
            head, index = window[0]
            if head.error is not None or head.futures[index].done():
                return False
        return True

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

    def fill(*, read: bool = True) -> None:
        """Queue requests for the workers while the window has room (``read=False``: only the parts of a job
        read already)."""
        while (job := pull(queued_rows, read=read)) is not None and room(job, queued_rows):
            future = send(job, beside=False)
            if future is None:
                return
            if future.done() and isinstance(future.exception(), QueueFullError):
                return  # someone else's requests fill the queue: wait for ours to drain before adding more

    def run_own() -> bool:
        """While the oldest request is still running elsewhere, run the next one on this thread."""
        job = pull(own_rows)
        if job is None or not room(job, own_rows):
            return False
        send(job, beside=True)
        return True

    if callback is not None:
        callback(0, total)
    try:
        while True:
            fill()  # (after an answer is handed over: an iterable is read only then, see may_read)
            if not window:
                break
            job, index = window[0]
            if plan.caller_runs and job.error is None and not job.futures[index].done() and run_own():
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
                        # refill before handing the result over, so the sessions work while the caller does; an
                        # iterable's next batch is read once it is handed over (a read may wait: see may_read)
                        fill(read=not iterable)
                except Exception as exc:
                    if raised_by_signal_handler(exc):  # the task's time limit as it waited: no rows of it failed,
                        pending = None  # and it keeps the traceback that says so (the window is emptied below)
                        del job, answers
                        raise
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
                future = queued.futures[index]
                let_go_of_future(future)  # (the task's time limit as this thread took its lock: see there)
                future.cancel()
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
            piece = _Job([part_of(whole, start, stop)], stop - start)
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
        # (slices taken as they are: a ZipMap's slice is a list of maps, not a list of parts to join)
        yield stop - start, _answer_like(joined, {name: joined[name][start:stop] for name in joined})


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
    """A Prediction of ``outputs`` (lists of parts are joined; arrays are taken as they are), answered like the
    first of ``answers``."""
    return _answer_like(
        answers[0], {name: _joined(value) if isinstance(value, list) else value for name, value in outputs.items()}
    )


def _answer_like(first: Prediction, outputs: dict[str, Any]) -> Prediction:
    """A Prediction of ``outputs`` as they are, answered like ``first`` (its model, version, route, id)."""
    return Prediction(
        outputs,
        model=first.model,
        version=first.version,
        variant=first.variant,
        reason=first.reason,
        request_id=first.request_id,
    )


def _joined(parts: list[Any]) -> Any:
    """The parts of one output, joined as one request's answer would hold it: arrays concatenated, and a
    ZipMap's lists of maps (one per row) made one list (``np.concatenate`` made them an object array)."""
    if parts and all(isinstance(part, list) for part in parts):
        return [row for part in parts for row in part]
    return np.concatenate(parts)


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
        except BaseException:  # (a part scored again is in no window: its future's lock is let go here)
            let_go_of_future(future)
            raise
        # Turned away by a queue that others fill: our earlier chunks are done, so try again after a pause.
        sleep(pause)
        pause = min(longest, pause * 2)
        last_try = clock() >= give_up_at
        job.futures[index] = (
            submit(part, route=job.route, last_try=last_try)
            if pin is None
            else submit(part, pin=pin, last_try=last_try)
        )
