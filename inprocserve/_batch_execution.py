"""Running one batch on a backend: merge (stack or pad), chunk oversize requests, bisect on failure, split.

The batcher decides *what* runs together and *when*; this decides *how*: it stacks the requests' inputs,
asks the backend to run them within the latest deadline in the batch, cuts the outputs back into one answer
per request, and, when a merged batch fails, bisects it until only the failing request(s) get the error.
It records the batch's span and metrics. It holds no lock and starts no thread.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ._backend import Backend, is_whole_batch, raised_by_signal_handler
from ._batch_ops import BatchShapeError, check_rows, pad_and_stack, split_outputs, stack_inputs
from ._config import PaddingConfig
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    RemoteUnavailableError,
    RunTimeLimitError,
    ServerClosedError,
)
from ._recorder import Recorder
from ._request import DONE, BatchTiming, Request
from ._stats import BatchSizeHistogram
from ._telemetry import end_batch_span, start_batch_span, tracing

__all__ = ["BatchExecution"]

logger = logging.getLogger(__name__)

Results = list[dict[str, Any]]

HOLD_GIL_BELOW_BYTES = 1 << 20  # a batch's input stacked under this many bytes is copied without letting go of the GIL
NUMPY_GIL_FREE_ABOVE = 500  # numpy lets the GIL go for a copy of more elements than this (NPY_MIN_BUSY_LOOP_SIZE)


def stack_holding_gil(requests: Sequence[Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`stack_inputs`, copying small inputs without letting the GIL go.

    ``np.concatenate`` lets the GIL go for each part of more than 500 elements (one row of mlp-large's 1,024
    features), and a worker stacks a batch just after waking the callers of the batch before: each time it
    let go, those callers took the GIL, and it waited for them to block again before its run could start
    (0.9-1.3 ms a 32-row batch of mlp-large with 64 callers, its runner idle meanwhile: 13-17 % of its time).
    A ``memoryview`` copy keeps it. Parts that are not alike and C-contiguous, of a dtype with objects or
    of the other byte order, or
    batches of ``HOLD_GIL_BELOW_BYTES`` or more (a copy long enough for others to use the GIL meanwhile), and
    inputs whose rows hold ``NUMPY_GIL_FREE_ABOVE`` elements or fewer (mlp-small's: numpy keeps the GIL for a
    part of one such row), are stacked by :func:`stack_inputs` as before: narrow rows are told by the first
    part, before the parts are walked, so a small model's batch is not walked twice."""
    if len(requests) == 1:
        return dict(requests[0])
    stacked: dict[str, np.ndarray] = {}
    for name in names:
        first = requests[0][name]
        if first.ndim == 0 or math.prod(first.shape[1:]) <= NUMPY_GIL_FREE_ABOVE:
            return stack_inputs(requests, names)
        parts = [request[name] for request in requests]
        dtype, tail = first.dtype, first.shape[1:]
        total = largest = 0
        for part in parts:
            if part.dtype != dtype or part.shape[1:] != tail or not part.flags.c_contiguous or part.ndim == 0:
                return stack_inputs(requests, names)
            total += part.nbytes
            largest = max(largest, part.size)
        if (
            largest <= NUMPY_GIL_FREE_ABOVE  # (np.concatenate keeps the GIL for these, and copies quicker)
            or dtype.hasobject
            or not dtype.isnative
            or total >= HOLD_GIL_BELOW_BYTES
        ):
            return stack_inputs(requests, names)
        out = np.empty((sum(part.shape[0] for part in parts), *tail), dtype=dtype)
        if total:
            into = out.data.cast("B")
            at = 0
            for part in parts:
                size = part.nbytes
                if size:  # (an empty part has no bytes to copy, and a view of it cannot be cast)
                    into[at : at + size] = part.data.cast("B")
                    at += size
        stacked[name] = out
    return stacked


class BatchExecution:
    """Runs batches of one model version on its backend, reporting each request's outcome.

    Thread-safe as long as the callbacks are: workers run batches concurrently, each on its own runner.

    Args:
        backend: Where batches run.
        input_names / output_names: The model's signature, in order.
        padding: How to pad requests of different lengths into one batch (``None``: stack as they are).
        chunk_rows: Run a request with more rows than this in slices (``None``: always whole).
        succeeded: Called with requests that ran and their outputs, in order.
        failed: Called with one request and its error.
        unbatchable: Called with a reason when the model's outputs turn out to have no batch axis (a merged
            batch's, or a slice's, do not have one entry per row); from then on nothing is merged or sliced.
        clock: The monotonic clock the requests' deadlines are on.
        telemetry: The version's metric recorder: batch size and duration once per ``session.run`` (each slice
            of a request run in slices, each run of a bisected batch), queue wait once per batch.
    """

    def __init__(
        self,
        backend: Backend,
        *,
        input_names: Sequence[str],
        output_names: Sequence[str],
        padding: PaddingConfig | None,
        chunk_rows: int | None,
        succeeded: Callable[[list[Request], Results], None],
        failed: Callable[[Request, BaseException], None],
        unbatchable: Callable[[str], None],
        clock: Callable[[], float],
        telemetry: Recorder,
    ) -> None:
        self.model = backend.model
        self.version = backend.version
        self._backend = backend
        self._run_batch = backend.run
        self._input_names = tuple(input_names)
        self._output_names = tuple(output_names)
        self._padding = padding
        self.chunk_rows = chunk_rows
        self._succeeded = succeeded
        self._failed = failed
        self._unbatchable = unbatchable
        self._clock = clock
        self.batch_sizes = BatchSizeHistogram()
        self._telemetry = telemetry

    def execute(self, runner: Any, batch: list[Request], *, inline: bool = False) -> BatchTiming | None:
        """Run a batch and record its telemetry. A request run ``inline`` (alone, on its caller's thread)
        gets no separate batch span: its request span already carries the compute time and rows, and with
        an SDK installed each span costs tens of microseconds.

        Returns the batch's timing when it was one run that succeeded (a measure of the run's cost), else
        ``None`` (a request run in slices, a batch that failed or was bisected).

        Raises:
            BaseException: one that is not an ``Exception`` (gevent's ``Timeout``, ``SystemExit``,
                ``KeyboardInterrupt``) out of the run, once every unanswered request of the batch has been
                failed with an :class:`InferenceError` naming it."""
        started = self._clock()
        timing = _RunTiming(batch[0].rows if len(batch) == 1 else sum(request.rows for request in batch))
        longest_wait = 0.0
        for request in batch:
            request.queue_wait_s = max(0.0, started - request.enqueued_at) if request.enqueued_at else 0.0
            request.batch = timing
            if request.queue_wait_s > longest_wait:
                longest_wait = request.queue_wait_s
        span = (
            None
            if inline or not tracing()
            else start_batch_span(self.model, self.version, _request_spans(batch), local=self._telemetry.local)
        )
        one_run = False
        interrupted: BaseException | None = None
        try:
            # the span the backend's run belongs to: the batch's, or a lone request's own
            parent = span if span is not None else batch[0].span if inline or len(batch) == 1 else None
            one_run = self._run_isolating(runner, batch, parent)
        except Exception as exc:  # a bug, or the runner failed as a whole: fail the batch, keep the worker
            if not raised_by_signal_handler(exc):  # (an inline run's caller stopped by its task's time limit)
                logger.exception("model %r version %s: batch failed unexpectedly", self.model, self.version)
            self._fail_unanswered(batch, exc)
        except BaseException as exc:  # gevent's Timeout, SystemExit, KeyboardInterrupt out of the run
            # Raised on to whoever runs the batch (a worker logs it, an inline caller's thread stops), but
            # the batch's callers are answered first: they waited for good on futures no one would set.
            interrupted = exc
            error = InferenceError(
                f"model {self.model!r} version {self.version}: the batch's run was interrupted by "
                f"{type(exc).__name__}; retry",
                model=self.model,
                version=self.version,
            )
            error.__cause__ = exc
            self._fail_unanswered(batch, error)
        if span is not None:
            failed = all(request.error is not None for request in batch)
            end_batch_span(
                span,
                rows=timing.rows,
                requests=sum(request.callers for request in batch),
                compute_s=timing.compute_s,
                error=batch[0].error if failed else None,
            )
        if not inline:  # (status()'s batch_size counted each run as it ended: see _ran)
            self._telemetry.runs_finished(timing.runs, queue_wait_s=longest_wait)
        if interrupted is not None:
            try:
                raise interrupted
            finally:  # (its traceback holds this frame: no cycle kept until the collector's pass)
                interrupted = None
                del error
        whole = len(batch) > 1 or self._slice_rows(batch[0]) is None
        return timing if one_run and whole else None

    def _fail_unanswered(self, batch: list[Request], error: BaseException) -> None:
        """Fail each request of ``batch`` not answered yet with ``error``. One whose hand-over fails (what
        follows its failure: the server records it, resolves its future) is logged, and the requests after it
        are still failed, as a successful batch's are answered (``complete_batch``): raised on, they were
        never answered, their callers waited forever, and they stayed counted in flight (``close()`` waited)."""
        stopped: Exception | None = None
        for request in batch:
            if request.state != DONE:
                try:
                    self._failed(request, error)
                except Exception as exc:  # (its future was resolved first: see Server._deliver)
                    if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit: no bug, and
                        stopped = stopped or exc  # raised on once the others are answered (an inline run's caller)
                    else:
                        logger.exception(
                            "model %r version %s: handing over a failed batch's error failed", self.model, self.version
                        )
        if stopped is not None:
            try:
                raise stopped
            finally:  # (its traceback holds this frame: no cycle kept until the collector's pass)
                stopped = None

    def run_alone(self, runner: Any, request: Request) -> tuple[dict[str, Any] | None, BaseException | None]:
        """Run one request on its own, on its caller's thread: ``(outputs, None)``, or ``(None, error)``.

        The lone request of an idle server is the most common run at low load, so it takes the shortest
        way: one backend call, no batch bookkeeping, no bisection, no batch span (its request span carries
        the rows and compute time, and is the run's parent). A request larger than ``chunk_rows`` is not
        run here (see :attr:`runs_alone`). An error is returned, never raised, except a ``BaseException``
        that is not an ``Exception`` (the caller's thread interrupted), which propagates.
        """
        timing = BatchTiming(request.rows)
        request.batch = timing
        deadline = request.deadline
        started = time.perf_counter()
        try:
            outputs = self._run_batch(
                runner,
                request.arrays,
                timeout_s=None if deadline is None else deadline - self._clock(),
                parent=request.span,
            )
            names = self._output_names
            if len(names) == 1 == len(outputs):  # (see run_plain)
                return {names[0]: outputs[0]}, None
            return dict(zip(names, outputs, strict=True)), None
        except InprocserveError as exc:  # the request's own failure (its input, its deadline)
            return None, exc
        except Exception as exc:  # a bug, or the runner failed as a whole (or the caller's task was stopped)
            if not raised_by_signal_handler(exc):
                logger.exception("model %r version %s: run failed unexpectedly", self.model, self.version)
            return None, exc
        finally:
            timing.compute_s = time.perf_counter() - started
            self.batch_sizes.record(timing.rows)

    def run_plain(
        self,
        runner: Any,
        arrays: dict[str, Any],
        rows: int,
        *,
        parent: Any,
        timing: BatchTiming | None,
        timeout_s: float | None = None,
    ) -> dict[str, Any]:
        """Run a lone request's ``arrays`` (``rows`` rows, at most ``chunk_rows``) on its caller's thread,
        stopped after ``timeout_s``, and return its outputs by name; raise its error. :meth:`Batcher.run_plain`
        calls this for :meth:`Server.predict`'s shortest way, which has no :class:`Request`. ``timing``: the
        compute time is written to it (a sampled request span shows it)."""
        started = 0.0 if timing is None else time.perf_counter()
        try:
            outputs = self._run_batch(runner, arrays, timeout_s=timeout_s, parent=parent)
            names = self._output_names
            if len(names) == 1 == len(outputs):  # (most models': a dict display, not zip's, cold after a run)
                return {names[0]: outputs[0]}
            return dict(zip(names, outputs, strict=True))
        except InprocserveError:  # the request's own failure
            raise
        except Exception as exc:  # a bug, or the runner failed as a whole: the caller gets it, the log says more
            if not raised_by_signal_handler(exc):  # (not its task's time limit: see raised_by_signal_handler)
                logger.exception("model %r version %s: run failed unexpectedly", self.model, self.version)
            raise
        finally:
            if timing is not None:
                timing.compute_s = time.perf_counter() - started
            self.batch_sizes.record(rows)

    def runs_alone(self, request: Request) -> bool:
        """Whether :meth:`run_alone` takes ``request`` (it is not cut into slices)."""
        return self.chunk_rows is None or request.rows <= self.chunk_rows

    def _run_isolating(self, runner: Any, batch: list[Request], parent: Any) -> bool:
        """Run ``batch``; if it fails, bisect so only the failing request(s) get the error. Returns whether
        the batch succeeded as it was given (not bisected, no error). A request's failed hand-over is logged
        (:meth:`_fail_unanswered`): raised on, the requests after it got its error instead of theirs."""
        try:
            results = self._run(runner, batch, parent)
        except (DeadlineExceededError, RemoteUnavailableError, ServerClosedError) as exc:
            # About the batch as a whole, not one request's input: every request in it is past its deadline,
            # or the remote model server is down (a 5xx, a dropped connection, its circuit open), or the
            # version closed under the run (its retirement stopped it). No bisection: it would send the rows
            # again, which a failing server may have run already, or to a closed backend, 2N-1 runs for nothing.
            self._fail_unanswered(batch, exc)
            return False
        except RunTimeLimitError as exc:
            # A run past pool.max_run_s: bisecting would spend a limit per level on the halves that hold the
            # slow request (log2(N)+1 limits of a session); each request alone spends one more limit in all.
            if len(batch) == 1:
                self._fail_unanswered(batch, exc)
                return False
            for request in batch:
                self._run_isolating(runner, [request], parent)
            return False
        except InprocserveError as exc:
            # one request, or an error about the batch as a whole (Backend.run: the remote server ran its
            # rows, or refused whoever sent them): every request gets it, nothing is sent again
            if len(batch) == 1 or is_whole_batch(exc):
                self._fail_unanswered(batch, exc)
                return False
            middle = len(batch) // 2
            self._run_isolating(runner, batch[:middle], parent)
            self._run_isolating(runner, batch[middle:], parent)
            return False
        except BatchShapeError as exc:
            self.chunk_rows = None
            self._unbatchable(str(exc))
            for request in batch:
                self._run_isolating(runner, [request], parent)
            return False
        self._succeeded(batch, results)
        return True

    def _time_left(self, batch: list[Request]) -> float | None:
        """Seconds until the run of ``batch`` must stop: until the latest deadline in it, so a merged batch
        is stopped only once every request in it is past its deadline (``None``: one has no deadline)."""
        if len(batch) == 1:
            deadline = batch[0].deadline
            return None if deadline is None else deadline - self._clock()
        latest = 0.0
        for request in batch:
            if request.deadline is None:
                return None
            latest = max(latest, request.deadline)
        return latest - self._clock()

    def _run(self, runner: Any, batch: list[Request], parent: Any) -> Results:
        timeout_s = self._time_left(batch)
        if len(batch) == 1:  # the common case at low load: no stacking, no lists to split
            request = batch[0]
            step = self._slice_rows(request)
            if step is not None:
                return [self._run_in_chunks(runner, request, parent, step)]
            started = time.perf_counter()
            try:
                outputs = self._run_batch(runner, request.arrays, timeout_s=timeout_s, parent=parent)
            finally:  # (a failing batch's halves are run again, and each run counts)
                self._ran(request.batch, request.rows, time.perf_counter() - started)
            return [dict(zip(self._output_names, outputs, strict=True))]
        crop = None
        if self._padding is not None:
            feeds, lengths = pad_and_stack([r.arrays for r in batch], self._input_names, self._padding)
            crop = (self._padding.outputs, lengths)
        else:
            feeds = stack_holding_gil([r.arrays for r in batch], self._input_names)
        started = time.perf_counter()
        try:
            outputs = self._run_batch(runner, feeds, timeout_s=timeout_s, parent=parent)
        finally:
            self._ran(batch[0].batch, sum(request.rows for request in batch), time.perf_counter() - started)
        return split_outputs(outputs, self._output_names, [r.rows for r in batch], crop=crop)

    def _ran(self, timing: BatchTiming | None, rows: int, seconds: float) -> None:
        """A ``session.run`` of ``rows`` rows of the batch timed by ``timing`` ended (or failed) after ``seconds``:
        add it to the batch's compute time, to ``status()``'s ``batch_size``, and to the runs the batch's metrics
        record (:meth:`execute`)."""
        self.batch_sizes.record(rows)
        if timing is not None:
            timing.compute_s += seconds
            if isinstance(timing, _RunTiming):
                timing.runs.append((rows, seconds))

    def _slice_rows(self, request: Request) -> int | None:
        """The rows of each slice a lone ``request`` is run in, or ``None`` when it is run whole."""
        step = self.chunk_rows if self.chunk_rows is None or request.run_rows is None else request.run_rows
        return step if step is not None and request.rows > step else None

    def _run_in_chunks(self, runner: Any, request: Request, parent: Any, step: int) -> dict[str, Any]:
        """A request larger than ``max_batch_size`` (or its own ``run_rows``) runs in slices that are stitched
        back together. The batch's compute time is the sum of the slices' runs.

        Raises:
            BatchShapeError: a slice's output does not have one entry per row of the slice (a count of things
                found, a scalar): stitched, its entries would be numbered within each slice, not the request;
                or the slices' outputs differ in an inner length (one that follows the rows run together, or
                is padded to the longest of them), so they cannot be stitched at all. The request is then run
                again whole, and no request is sliced or merged any more.
        """
        parts = []
        timing = request.batch
        for start in range(0, request.rows, step):
            chunk = {name: array[start : start + step] for name, array in request.arrays.items()}
            left = None if request.deadline is None else request.deadline - self._clock()
            started = time.perf_counter()
            rows = min(step, request.rows - start)
            try:
                outputs = self._run_batch(runner, chunk, timeout_s=left, parent=parent)
            finally:  # (each slice is a run, one that failed too)
                self._ran(timing, rows, time.perf_counter() - started)
            check_rows(outputs, self._output_names, rows, what="a slice of a large request")
            parts.append(outputs)
        _check_stitching(parts, self._output_names)
        return {name: np.concatenate([part[index] for part in parts]) for index, name in enumerate(self._output_names)}


def _check_stitching(parts: Sequence[Sequence[Any]], names: Sequence[str]) -> None:
    """Check that the slices' outputs ``parts`` (each in the order of ``names``) can be stitched on axis 0.

    Raises:
        BatchShapeError: an output's inner axes differ between two slices (numpy's ``concatenate`` raised a plain
            ``ValueError`` for them, which reached the caller as if its request were wrong).
    """
    first = parts[0]
    for part in parts[1:]:
        for index, name in enumerate(names):
            if np.shape(part[index])[1:] != np.shape(first[index])[1:]:
                raise BatchShapeError(
                    f"output {name!r} has inner shape {np.shape(first[index])[1:]} for one slice of a large request"
                    f" and {np.shape(part[index])[1:]} for another: its length follows the rows run together"
                )


class _RunTiming(BatchTiming):
    """The timing of a batch :meth:`BatchExecution.execute` runs, with each of its ``session.run`` calls:
    ``(rows, seconds)``, in order (one for a batch that ran whole; a slice each for a request run in slices; a
    run each of a failing batch and of the halves it was bisected into)."""

    __slots__ = ("runs",)

    def __init__(self, rows: int) -> None:
        super().__init__(rows)
        self.runs: list[tuple[int, float]] = []


def _request_spans(batch: list[Request]) -> Iterator[Any]:
    """The request spans a batch span links to: each request's, and those of the callers an event loop
    merged into one request (``Request.member_spans``). A generator: read only for a batch span that may be
    recorded (see ``start_batch_span``)."""
    for request in batch:
        yield request.span
        if request.member_spans:
            yield from request.member_spans
