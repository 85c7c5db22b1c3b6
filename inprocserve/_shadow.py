"""Shadow traffic: a copy of a request runs on other versions after the caller has its answer.

Shadow work must not slow or fail the caller. An idle session is not spare CPU: on a small host one caller
keeps every core busy, and a shadow running beside it takes their time. So shadows run on a CPU budget: the
shadow thread may run for at most ``budget`` of each second of wall-clock time (a token bucket holding one
second's allowance), measured as the wall time of its own runs. A copy is admitted only when the bucket holds
what the last answered (or stopped) run of its shadow version cost for as many rows (at most the whole bucket;
``MIN_RUN_S`` for a version not yet measured), and that cost is reserved at once, so the queue never fills
with copies the budget would drop. A run longer than the allowance runs and is owed (later copies wait for the
bucket to refill); only a runaway run, past ``RUNAWAY_FACTOR`` times its expected time or ``MAX_RUN_S``, is
stopped and counted as dropped over budget. A copy too large to make cheaply on the caller's thread is not
made (``dropped_too_large``). A copy that finds the budget spent, the serving version backlogged or no idle
session on the shadow version is dropped at once and counted; nothing waits or polls. Jobs are queued (bounded
by count and by bytes, drops counted) for one background thread that sleeps on a condition while there is
nothing to do. A queued job holds its own copy of the inputs and of the primary answer: the caller may reuse
its buffers once it has its answer. Shadow errors are logged and counted, never raised. Each shadow answer is
compared with the primary one (largest absolute difference; argmax agreement for classifier-shaped outputs)
and handed to an optional callback so applications can log it. A NaN or an infinity in one answer where the
other has a different value is a difference of ``math.inf`` (and its row disagrees); equal non-finite values
(NaN in both, the same infinity) are equal.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
from opentelemetry.trace import Status, StatusCode

from . import _fork
from ._backend import raised_by_signal_handler
from ._brief import brief
from ._config_checks import is_number
from ._errors import ConfigurationError, DeadlineExceededError, InvalidInputError, VersionRetiredError
from ._held_bytes import held_bytes
from ._log_limit import LogLimit, since
from ._request import Request, Route
from ._signature import Signature
from ._stop_signal import StopSignal, stop_with
from ._telemetry import (
    ATTR_SHADOW_AGREEMENT,
    ATTR_SHADOW_DIFF,
    METRICS,
    add_safely,
    end_safely,
    record_safely,
    start_shadow_span,
)

__all__ = [
    "DEFAULT_MAX_QUEUED_BYTES",
    "MIN_RUN_S",
    "NOTHING_COMPARED",
    "Comparison",
    "ShadowComparison",
    "ShadowRunner",
    "compare_outputs",
]

logger = logging.getLogger(__name__)

DEFAULT_BUDGET = 0.02
"""Share of wall-clock time shadow runs may take (20 ms per second)."""


@dataclass(frozen=True, slots=True)
class ShadowComparison:
    """How one shadow answer compared with the answer the caller got."""

    model: str
    primary_version: int
    shadow_version: int
    request_id: str
    max_abs_diff: float | None
    """Largest absolute difference over the numeric outputs both versions produced, labels aside (None if
    none; integers against floats are both, see :func:`compare_outputs`)."""
    label_agreement: float | None
    """Share of rows that agree: the argmax of float outputs shaped [rows, classes], and labels (text, integers
    of any shape, or booleans of any shape; integers against floats too) by equality (None if there are
    none)."""
    error: str | None
    """Why the shadow run failed, if it did (the caller was never affected)."""
    latency_s: float
    """How long the shadow version took to check and run the copy (or to fail), as a request routed to it
    would; the comparison is not part of it."""
    mismatch: str | None = None
    """The first output the two answers could not be compared on, and why (the shadow version answered it
    with another number of axes, as text against numbers, or not at all); such a comparison counts as
    ``disagree``."""


class Comparison(NamedTuple):
    """Two answers to the same request, compared (see :func:`compare_outputs`)."""

    max_abs_diff: float | None
    label_agreement: float | None
    mismatch: str | None
    """The first output that could not be compared, and why (missing, other axes, text against numbers)."""


NOTHING_COMPARED = Comparison(None, None, None)


def compare_outputs(primary: Mapping[str, Any], shadow: Mapping[str, Any]) -> Comparison:
    """Max absolute difference, row agreement and the first mismatch between two answers to the same request.

    Numeric outputs give the difference, and those shaped [rows, classes] the argmax agreement; labels (text,
    as converted scikit-learn classifiers answer them, integers in both answers, of any shape, such as class
    ids or a top-k's ids, or booleans of any shape in either answer, such as a multi-label model's flags)
    give only the agreement, row by row where equal (a label one class off is not a difference of 1).
    Integers against floats (labels one version answers as floats, 1.0 for 1, or a regressor one version
    answers truncated to integers: their types cannot tell which) give both, the share of equal rows and the
    difference, on every request whatever its values (see :func:`_kind`). A ZipMap's list of per-row class
    scores is compared as the [rows, classes] array of its scores, classes in sorted order.

    An output of the first answer that the second lacks, or has with another number of axes, or as text
    against numbers, or as a ZipMap scoring other classes, cannot be compared: that is the ``mismatch`` (an
    answer of another form, which callers would get on promotion, is never counted as agreeing). Outputs of
    one form whose sizes differ (a detector that keeps one more box) are a difference of ``math.inf``, and
    their rows disagree.

    A NaN or an infinity in one answer where the other holds a different value (a finite number, the other
    infinity, or a number where the other has NaN) is a difference of ``math.inf``, and a row holding one
    disagrees whatever its argmax. Equal non-finite values (NaN in both, the same infinity in both) are equal.
    """
    diffs, agreements = [], []
    mismatch = None
    for name, first in primary.items():
        expected = first if isinstance(first, np.ndarray) else _class_scores(first)
        if expected is None:
            continue  # (not an array, nor a ZipMap's scores: not compared)
        got = shadow.get(name)
        if isinstance(got, list):  # a ZipMap's scores (the first answer's may have been made an array already)
            scores = _class_scores(got)
            got = got if scores is None else scores
        problem = _mismatch(name, expected, got)
        if problem is None:
            problem = _other_classes(name, expected, got)
        if problem is not None:
            mismatch = mismatch or problem
            continue
        assert isinstance(got, np.ndarray)
        text = expected.dtype.kind not in "biuf"  # (both: see _mismatch)
        if got.shape != expected.shape:  # one form, other sizes
            if not text:
                diffs.append(math.inf)
            agreements.append(0.0)
            continue
        if expected.size == 0:
            continue
        kind = _LABELS if text else _kind(expected, got)
        if kind is not _VALUES:
            # labels: the share of rows that agree; no difference (a label off by one class is no "0.05")
            equal = _equal_elements(expected, got) if text else expected == got
            agreements.append(float(np.mean(equal.reshape(equal.shape[0] if equal.ndim else 1, -1).all(axis=1))))
            if kind is _LABELS:
                continue
        a, b = expected.astype(np.float64), got.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN; huge - (-huge) overflows
            delta = np.abs(a - b)
        finite = np.isfinite(delta)
        unequal = None  # where a non-finite value in one answer differs from the other's
        if finite.all():  # the common case: one more pass, no masks
            diff = float(np.max(delta))
        else:
            unequal = ~finite & ~((a == b) | (np.isnan(a) & np.isnan(b)))
            diff = math.inf if unequal.any() else float(np.max(delta, where=finite, initial=0.0))
        diffs.append(diff)
        if kind is _VALUES and expected.ndim == 2 and expected.shape[1] >= 2:
            rows_agree = np.argmax(expected, axis=1) == np.argmax(got, axis=1)
            if unequal is not None:
                rows_agree &= ~unequal.any(axis=1)
            agreements.append(float(np.mean(rows_agree)))
    return Comparison(max(diffs) if diffs else None, float(np.mean(agreements)) if agreements else None, mismatch)


_LABELS, _VALUES, _BOTH = "labels", "values", "both"
"""How two numeric outputs of one shape are compared (see :func:`_kind`)."""


def _kind(expected: np.ndarray, got: np.ndarray) -> str:
    """How two numeric outputs of one shape are compared, decided by their element types alone (the types
    their versions declare), never by the values of one sample:

    - ``_LABELS``, row by row by equality: integers in both answers (class ids, [rows] or [rows, 1], a top-k's
      ids, [rows, k]), and flags (booleans) of any shape in either. A multi-label model's flags, [rows,
      labels], are no class scores: by their argmax, a row whose second label turned off read as agreeing, and
      the flag that changed as a difference of 1; so were a top-k's ids ([3, 1] against [3, 0]: both argmaxes
      the first).
    - ``_VALUES``, by their difference (and the argmax of [rows, classes] scores): floats in both answers.
    - ``_BOTH``: integers against floats. Their types cannot tell labels one version re-exports as floats (1.0
      for 1) from a regressor one version answers truncated to int64 (4 for 4.5), so both measures are kept:
      the share of rows that are equal and the largest difference, whichever version answers the caller. (By
      the first answer's type alone, labels were compared as numbers one way round and as labels the other;
      by whether the sampled floats were whole numbers, the same two regressors were compared as labels on
      one request and by their difference on the next, and a guard on either had nothing to measure on some.)
    """
    kinds = expected.dtype.kind, got.dtype.kind
    if "b" in kinds:
        return _LABELS
    integers = [kind in "iu" for kind in kinds]
    if all(integers):
        return _LABELS
    return _BOTH if any(integers) else _VALUES


def _comparable(answer: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A copy of what :func:`compare_outputs` can compare in ``answer``: its arrays, and a ZipMap's scores as
    the array :func:`_class_scores` makes of them (the caller may edit its answer once it has it)."""
    kept = {}
    for name, value in answer.items():
        array = value.copy() if isinstance(value, np.ndarray) else _class_scores(value)
        if array is not None:
            kept[name] = array
    return kept


class _ClassScores(np.ndarray):
    """A ZipMap's class scores as a [rows, classes] array, with the classes of its columns (``classes``)."""

    classes: tuple[Any, ...] = ()


def _class_scores(value: Any) -> np.ndarray | None:
    """A ZipMap's answer (one ``{class: score}`` dict per row, every row with the same classes) as a
    [rows, classes] array, classes in sorted order (a :class:`_ClassScores`, which names them); None for
    anything else."""
    if not isinstance(value, list) or not value or not all(isinstance(row, dict) for row in value):
        return None
    classes = sorted(value[0], key=str)
    if any(row.keys() != value[0].keys() for row in value):
        return None
    try:
        scores = np.array([[row[label] for label in classes] for row in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    named = scores.view(_ClassScores)
    named.classes = tuple(classes)
    return named


def _other_classes(name: str, expected: np.ndarray, got: Any) -> str | None:
    """Why two ZipMaps' scores cannot be compared: they score other classes (a candidate whose classes were
    renamed, ``"ok"`` for ``"legit"``, scored column by column, read as a perfect match, while a caller that
    reads its class's score by name would fail on promotion); None if they score the same ones, or if
    either answer does not name its classes."""
    first, second = getattr(expected, "classes", ()), getattr(got, "classes", ())
    if first and second and first != second:
        return f"output {name!r} scores the classes {list(second)} against {list(first)}"
    return None


def _mismatch(name: str, expected: np.ndarray, got: Any) -> str | None:
    """Why output ``name`` of the second answer (``got``) cannot be compared with the first's, or None."""
    if got is None:
        return f"output {name!r} is missing"
    if not isinstance(got, np.ndarray):
        return f"output {name!r} is a {type(got).__name__}, not an array"
    if got.ndim != expected.ndim:
        return f"output {name!r} has shape {list(got.shape)} against {list(expected.shape)}"
    numeric = expected.dtype.kind in "biuf", got.dtype.kind in "biuf"
    if numeric[0] != numeric[1] or (not numeric[0] and not {expected.dtype.kind, got.dtype.kind} <= set("OSU")):
        return f"output {name!r} is {got.dtype} against {expected.dtype}"
    return None


def _equal_elements(expected: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Element by element equality of two text arrays of one shape (see :func:`_same_text`)."""
    return np.asarray(_EQUAL(expected, got), dtype=bool)


def _same_text(left: Any, right: Any) -> bool:
    """Whether two elements of text outputs are the same: a string and its UTF-8 bytes are (a model server
    answers text as bytes through the remote backend, onnxruntime as strings); anything else by ``==``, and
    elements that cannot say (arrays inside an object array) are not."""
    if isinstance(left, bytes) and isinstance(right, str):
        left = left.decode("utf-8", "surrogateescape")
    elif isinstance(left, str) and isinstance(right, bytes):
        right = right.decode("utf-8", "surrogateescape")
    try:
        return bool(left == right)
    except Exception:  # (an element whose == is elementwise, or raises)
        return False


_EQUAL = np.frompyfunc(_same_text, 2, 1)


@dataclass
class ShadowStats:
    runs: int = 0
    errors: int = 0
    dropped_full: int = 0
    dropped_busy: int = 0
    dropped_budget: int = 0
    callback_errors: int = 0  # comparisons the on_shadow callback raised on
    dropped_large: int = 0  # requests whose copy would be larger than the runner copies (max_queued_bytes / 4)
    stopped_budget: int = 0  # runaway runs stopped at their limit (also counted in dropped_budget)
    compared: int = 0  # comparisons with a finite difference
    non_finite: int = 0  # comparisons where a NaN or infinity in one answer differed from the other
    mismatched: int = 0  # comparisons with an output the answers could not be compared on
    over_limit: int = 0  # comparisons whose finite difference was past the model's rollout.shadow.max_abs_diff
    max_abs_diff: float = 0.0
    total_abs_diff: float = 0.0
    agreement_total: float = 0.0  # rows that agree (each comparison's share, times its rows)
    agreement_rows: int = 0  # rows of the comparisons that measured an agreement
    by_primary: dict[int, ShadowStats] = field(default_factory=dict)
    """The same figures per version the copies were compared with (the one that answered the caller).

    Mixed together, a shadow identical to the stable version showed a label agreement of 0.5 and the
    canary's differences as its own while a 50 % canary ran: half its copies compared with the canary."""

    def count(
        self, diff: float | None, *, finite: bool, over: bool, agreement: float | None, rows: int, mismatch: str | None
    ) -> None:
        """Count one comparison (its run is counted by the caller)."""
        if mismatch is not None:
            self.mismatched += 1
        if diff is not None and not finite:
            self.non_finite += 1
        elif diff is not None:
            self.compared += 1
            self.max_abs_diff = max(self.max_abs_diff, diff)
            self.total_abs_diff += diff
            self.over_limit += over
        if agreement is not None:
            self.agreement_total += agreement * max(rows, 1)
            self.agreement_rows += max(rows, 1)

    def comparisons(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "errors": self.errors,
            "non_finite_diffs": self.non_finite,
            "mismatched": self.mismatched,
            "over_max_abs_diff": self.over_limit,
            "max_abs_diff": self.max_abs_diff if self.compared else None,
            "mean_max_abs_diff": self.total_abs_diff / self.compared if self.compared else None,
            # the share of rows that agree, as promotion's: a 1-row request counts as one row, not as much as
            # a batch of 256 (a mean of the comparisons' shares said 0.5 where 90 % of the rows agreed)
            "label_agreement": self.agreement_total / self.agreement_rows if self.agreement_rows else None,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "errors": self.errors,
            "dropped_queue_full": self.dropped_full,
            "dropped_no_spare_capacity": self.dropped_busy,
            "dropped_over_budget": self.dropped_budget,
            "dropped_too_large": self.dropped_large,
            "stopped_over_budget": self.stopped_budget,
            "on_shadow_errors": self.callback_errors,
            **{key: value for key, value in self.comparisons().items() if key not in ("runs", "errors")},
            "by_primary": {str(version): counts.comparisons() for version, counts in sorted(self.by_primary.items())},
        }


DEFAULT_MAX_QUEUED_BYTES = 32 * 2**20
"""Bytes the queued copies (inputs and primary answers) may hold together: 32 MiB. One request's copy may
hold a quarter of it (8 MiB): the copy is made on its caller's thread."""

MIN_RUN_S = 0.01
"""What a copy for a shadow version not yet measured reserves of the budget (10 ms, or the whole budget if
less), and the shortest time limit a shadow run gets."""
RUNAWAY_FACTOR = 4.0
"""A shadow run is stopped past this many times what its version's last run took for as many rows (a
runaway run: it would hold a session that callers wait for); a run longer than the budget still runs, and
the budget is owed."""
FIRST_RUN_S = 1.0
"""The time limit of a shadow version's first run, before any was measured."""
STOP_WAIT_S = 5.0
"""How long :meth:`ShadowRunner.close` waits for the shadow thread once it stopped the run in flight: an
onnxruntime run stops between two operators and a remote call at once (its socket is shut), so this is
for the operator running then, or a backend that cannot stop a run early."""
CALLBACK_WAIT_S = 0.1
"""How long :meth:`ShadowRunner.close` waits for an ``on_shadow`` callback in progress once no run is in
flight (then it leaves the callback running and says so)."""
MAX_RUN_S = 5.0
"""No shadow run takes longer than this, however long its version's last runs took: what a runaway owes
pauses every shadow for at most this / budget (250 s with the default budget)."""
VERSIONS_KEPT = 256
"""Shadow versions (of every model) whose statistics, cost and metric attributes the runner keeps, the one first
counted forgotten first past it: a release process that shadows each candidate (``<model>.shadow.versions``)
adds one per release, and every one was kept, and listed in ``status()``, for the worker's life."""
PRIMARIES_KEPT = 64
"""Versions compared with (``by_primary``) kept per shadow version, the one first compared forgotten first: a
shadow kept while the stable version follows each release compares with a new one every time."""


@dataclass(slots=True)
class _Job:
    model: str
    request_id: str
    arrays: dict[str, np.ndarray]  # the shadow's own copies: the caller may reuse its buffers
    rows: int
    primary: dict[str, np.ndarray]  # a copy of the primary answer's arrays (the caller may edit its answer)
    primary_version: Any
    shadow: Any
    primary_span: Any
    reserved: float  # seconds of budget reserved when it was admitted, settled against what its run took
    nbytes: int  # bytes its copies hold, counted against max_queued_bytes while it waits (0 but for the last
    # of one request's jobs: they share one copy, which is held until the last of them leaves the queue)


def _as_shadow_inputs(job: _Job) -> tuple[dict[str, np.ndarray], int]:
    """The copied request, checked against the shadow version's own inputs as a request routed to it would be
    (a canary of it gets the caller's inputs, validated against its signature): cast where its dtypes
    differ, and, when both versions take one input, under the shadow version's name for it.

    Raises:
        InvalidInputError: the request does not fit the shadow version's inputs.
    """
    signature: Signature | None = job.shadow.signature
    if signature is None:  # (not loaded: the run reports that)
        return dict(job.arrays), job.rows
    arrays: Any = job.arrays
    if len(arrays) == 1 and len(signature.input_names) == 1:
        arrays = next(iter(arrays.values()))
    return signature.validate(arrays, max_rows=max(job.shadow.max_request_rows, job.rows))


class ShadowRunner:
    """Runs shadow jobs on one background thread within a CPU budget. Thread-safe; the thread starts on
    first use and ends on :meth:`close`.

    Args:
        max_queued: Jobs that may wait for the thread; more are dropped (``dropped_queue_full``).
        max_queued_bytes: Bytes the waiting jobs' copies of inputs and answers may hold together; a copy
            that would go beyond is dropped (``dropped_queue_full``), and so is one request's copy larger
            than a quarter of it (8 MiB by default), whose copying would cost its caller milliseconds.
        on_result: Called with every comparison (errors it raises are logged).
        budget: Largest share of wall-clock time shadow runs may take, in (0, 1]; 1 runs every shadow
            the idle-session check lets through (nothing is reserved or owed, no run is cut short).
        clock: Monotonic clock of the budget.
        max_abs_diff_of: The largest absolute difference a model's comparisons may show and still agree
            (its ``rollout.shadow.max_abs_diff``), read as each comparison is recorded; ``None``: no bound.
    """

    def __init__(
        self,
        *,
        max_queued: int = 256,
        max_queued_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
        on_result: Callable[[ShadowComparison], None] | None = None,
        budget: float = DEFAULT_BUDGET,
        clock: Callable[[], float] = time.monotonic,
        max_abs_diff_of: Callable[[str], float | None] = lambda model: None,
    ) -> None:
        if not (is_number(budget) and 0 < budget <= 1):  # (a string or NaN: refused, not a TypeError later)
            raise ConfigurationError(f"shadow_budget must be a share of time in (0, 1], got {budget!r}")
        self.max_queued = max_queued
        self.max_queued_bytes = max_queued_bytes
        self.on_result = on_result
        self.budget = budget
        self.max_abs_diff_of = max_abs_diff_of
        self._unbounded = budget >= 1  # a second per second: the budget can never stop the one shadow thread
        self._clock = clock
        self._tokens = budget  # seconds of shadow running allowed now; holds at most one second's allowance
        self._refilled_at = clock()
        self._costs: dict[tuple[str, int], float] = {}  # what the last run of each model version took per row
        # When the shadow version whose runs the figures above count was loaded: a version loaded anew (its file
        # replaced and refreshed, or unloaded and loaded again) is another model under the same number
        self._loaded_at: dict[tuple[str, int], int] = {}  # (each version's latest load_serial seen)
        self._stats: dict[tuple[str, int], ShadowStats] = {}
        # a shadow version that fails every copy (or every copy of some clients' requests) would log a line per
        # copy: its failures are logged once a minute per version, with the count since (all are in status())
        self._failing = LogLimit()
        self._over_budget_attributes: dict[tuple[str, int], dict[str, Any]] = {}
        self._reset()
        _fork.register(self)

    def _reset(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._jobs: deque[_Job] = deque()
        self._queued_bytes = 0  # held by the queued jobs and by those being copied
        self._copying = 0  # jobs admitted whose copies are being made (outside the lock)
        self._running: _Job | None = None
        self._run_started = 0.0  # when the run in flight began (see _owed_by_run)
        self._result: ShadowComparison | None = None  # the last run's, for on_result once its time is settled
        self._thread: threading.Thread | None = None
        self._closed = False
        self._stop = StopSignal()  # close() stops the run in flight with it (see _stop_signal)

    def _after_fork_in_child(self) -> None:
        closed = self._closed
        # the parent's queued and running jobs do not exist here: the budget they reserved is free again
        lost = [*self._jobs, *([] if self._running is None else [self._running])]
        self._tokens = min(self.budget, self._tokens + sum(job.reserved for job in lost))
        self._reset()
        self._closed = closed
        if closed:
            self._stop.stop()

    def offer(
        self,
        model: str,
        request_id: str,
        arrays: Mapping[str, np.ndarray],
        rows: int,
        primary: Mapping[str, Any],
        primary_version: Any,
        shadows: Sequence[Any],
        *,
        primary_span: Any = None,
    ) -> None:
        """Queue a copy of a finished request for each shadow version; never blocks (a request admitted for
        a shadow is copied, outside the lock, on this thread), drops when over budget or full. Never raises."""
        nbytes = _nbytes(arrays.values()) + _nbytes(primary.values())
        admitted: list[tuple[Any, float]] = []
        with self._cond:
            if self._closed:
                return
            self._refill()  # checked before copying: a dropped copy costs the caller one lock
            for shadow in shadows:
                reserve = self._reservation(model, shadow.version, rows)
                left = self._tokens - self._owed_by_run()
                if left <= 0 or left < reserve:
                    self._drop_over_budget(model, shadow.version)
                    continue
                if nbytes > self.max_queued_bytes // 4:  # copied on the caller's thread: kept cheap
                    self._drop_too_large(model, shadow.version, nbytes)
                    continue
                queued = len(self._jobs) + self._copying
                # the request's shadow versions share one copy: its bytes count once, however many they are
                more = 0 if admitted else nbytes
                if queued >= self.max_queued or self._queued_bytes + more > self.max_queued_bytes:
                    self._drop_queue_full(model, shadow.version)
                    continue
                self._tokens -= reserve  # reserved now: copies admitted meanwhile see what is left
                self._copying += 1
                self._queued_bytes += more
                admitted.append((shadow, reserve))
        if not admitted:
            return
        copies: tuple[dict[str, np.ndarray], dict[str, np.ndarray]] | None = None
        stopped: Exception | None = None
        try:  # the caller may reuse its input buffers, and edit its answer, once it has it
            copies = (
                {name: np.array(array, copy=True) for name, array in arrays.items()},
                _comparable(primary),
            )
        except Exception as exc:  # out of memory, say: the copies are dropped, never the caller's answer
            if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit: raised once the
                stopped = exc  # reservations are given back (its own exception, no failure to log or count)
            else:
                _log(logging.ERROR, "copying a request of model %r for its shadows failed", model, exc_info=True)
        with self._cond:
            self._copying -= len(admitted)
            if copies is None or self._closed:
                self._queued_bytes -= nbytes
                for shadow, reserve in admitted:
                    self._tokens += reserve
                    if copies is None and stopped is None:
                        self._drop_queue_full(model, shadow.version)
                if stopped is not None:
                    raise stopped
                return
            inputs, answer = copies
            last = len(admitted) - 1
            for i, (shadow, reserve) in enumerate(admitted):  # (taken in this order: the last one frees the copy)
                held = nbytes if i == last else 0
                self._jobs.append(
                    _Job(model, request_id, inputs, rows, answer, primary_version, shadow, primary_span, reserve, held)
                )
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="inprocserve-shadow", daemon=True)
                self._thread.start()
            self._cond.notify()

    def admit(self, model: str, versions: tuple[int, ...]) -> bool:
        """Whether copies of a request may be made for ``versions`` now; if not, they are counted as dropped
        over budget. Asked while routing, so a request over budget never builds or queues a copy."""
        if self._tokens + (self._clock() - self._refilled_at) * self.budget - self._owed_by_run() > 0:
            return True  # read without the lock: offer() checks again, under it, against the expected cost
        with self._mutex:  # the condition's own lock, entered without the Condition wrapper's cost
            for version in versions:
                self._drop_over_budget(model, version)
        return False

    def _stat(self, model: str, version: int) -> ShadowStats:
        stats = self._stats.get((model, version))
        if stats is None:  # not setdefault: that would build a ShadowStats on every call
            if len(self._stats) >= VERSIONS_KEPT:
                self._forget(next(iter(self._stats)))
            stats = self._stats[(model, version)] = ShadowStats()
        return stats

    def _forget(self, key: tuple[str, int]) -> None:
        """Forget what is kept of one shadow version (its statistics, cost and attributes) (lock held)."""
        del self._stats[key]
        self._costs.pop(key, None)
        self._loaded_at.pop(key, None)
        self._over_budget_attributes.pop(key, None)

    def _note_loaded(self, job: _Job) -> None:
        """Start a shadow version's figures and measured cost afresh when its copy is for a version loaded
        after the one they count (lock held). Kept, a version whose file was fixed and refreshed read as
        differing by the replaced file's largest difference for the worker's life, its runs and agreement mixed
        with the other file's, and its first runs were stopped against the other file's time. Its drops
        (the budget's and the queue's, not the file's) are kept. A copy queued for the replaced version, taken
        later, is loaded earlier: it changes nothing (and is not run: its version is retired)."""
        loaded_at = getattr(job.shadow, "load_serial", None)  # (not the wall clock's loaded_at: it may step back)
        if loaded_at is None:
            return
        key = (job.model, job.shadow.version)
        before = self._loaded_at.get(key)
        if before is not None and loaded_at <= before:
            return
        self._loaded_at[key] = loaded_at
        if len(self._loaded_at) > 2 * VERSIONS_KEPT:  # (versions whose copies never ran: no figures to bound it)
            for forgotten in [known for known in self._loaded_at if known not in self._stats and known != key]:
                del self._loaded_at[forgotten]
        old = self._stats.get(key)
        if before is None or old is None:
            return
        self._stats[key] = ShadowStats(
            dropped_full=old.dropped_full,
            dropped_busy=old.dropped_busy,
            dropped_budget=old.dropped_budget,
            dropped_large=old.dropped_large,
            stopped_budget=old.stopped_budget,
        )
        self._costs.pop(key, None)

    def _owed_by_run(self) -> float:
        """What the run in flight has spent so far beyond its reservation: owed already, though settled only
        when it ends (the bucket refilled meanwhile, and copies offered during a long run were queued, holding
        their inputs, to be dropped after it). A read of two fields, with or without the lock."""
        job, started = self._running, self._run_started
        if job is None or self._unbounded:
            return 0.0
        return max(0.0, self._clock() - started - job.reserved)

    def _refill(self) -> None:
        """Refill the token bucket for the time gone by (lock held)."""
        now = self._clock()
        self._tokens = min(self.budget, self._tokens + (now - self._refilled_at) * self.budget)
        self._refilled_at = now

    def _reservation(self, model: str, version: int, rows: int) -> float:
        """Seconds of budget a copy of ``rows`` rows for ``version`` reserves when it is admitted (lock held):
        what its last run took per row, times these rows, at most the whole bucket (a longer run is owed
        afterwards); ``MIN_RUN_S`` while no run of it was measured (reserving the bucket would let one
        version's copies starve another's first run)."""
        if self._unbounded:
            return 0.0
        per_row = self._costs.get((model, version))
        return min(MIN_RUN_S, self.budget) if per_row is None else min(per_row * rows, self.budget)

    def _drop_over_budget(self, model: str, version: int) -> None:
        self._stat(model, version).dropped_budget += 1
        key = (model, version)
        attributes = self._over_budget_attributes.get(key)
        if attributes is None:  # built once per model and version: this runs for most requests of a busy caller
            attributes = self._over_budget_attributes[key] = _attributes(model, version, "over_budget")
        add_safely(METRICS.shadow_dropped, 1, attributes)

    def _drop_too_large(self, model: str, version: int, nbytes: int) -> None:
        stats = self._stat(model, version)
        stats.dropped_large += 1
        add_safely(METRICS.shadow_dropped, 1, _attributes(model, version, "too_large"))
        if stats.dropped_large == 1:
            _log(
                logging.WARNING,
                "model %r: a request's copy for shadow version %s would hold %.1f MiB, more than a quarter of the "
                "shadow queue's %.0f MiB: not copied (the copy is made on the caller's thread); such requests are "
                "never shadowed",
                model,
                version,
                nbytes / 2**20,
                self.max_queued_bytes / 2**20,
            )

    def _drop_queue_full(self, model: str, version: int) -> None:
        self._stat(model, version).dropped_full += 1
        add_safely(METRICS.shadow_dropped, 1, _attributes(model, version, "queue_full"))

    def _work(self) -> None:
        try:
            with stop_with(self._stop):
                self._serve()
        finally:
            # Ended by what escaped even the thread's own handling (a logging filter raising a BaseException, as
            # greenlet.kill() does): another is started, at once if copies are queued (each thread takes one at
            # least, so this ends), else by the next copy. Kept, every later copy waited in a queue nobody read,
            # silently; replaced only by the next copy, those queued meanwhile waited for it, their budget
            # reserved, and forever if none came.
            with self._cond:
                if self._thread is threading.current_thread() and not self._closed:
                    self._thread = None
                    if self._jobs:
                        self._thread = threading.Thread(target=self._work, name="inprocserve-shadow", daemon=True)
                        self._thread.start()

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._closed:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
                self._queued_bytes -= job.nbytes
                self._note_loaded(job)
                self._refill()
                allowance = self._tokens + job.reserved  # what is left of the bucket, its own reservation included
                if allowance <= 0:  # spent by the runs before this one (they took longer than they reserved)
                    self._tokens = allowance
                    self._drop_over_budget(job.model, job.shadow.version)
                    continue
                self._run_started = started = self._clock()
                self._running = job
            # A run may take what is left of the budget and more (the excess is owed: the next copies wait for
            # the bucket to refill), but not RUNAWAY_FACTOR times what its version's last run took for as many
            # rows, nor MAX_RUN_S.
            per_row = self._costs.get((job.model, job.shadow.version))
            runaway = FIRST_RUN_S if per_row is None else RUNAWAY_FACTOR * per_row * job.rows
            limit = None if self._unbounded else min(max(allowance, runaway, MIN_RUN_S), MAX_RUN_S)
            measured = False
            try:
                measured = self._run(job, limit)
            # The shadow thread must outlive any bug in one job, and a BaseException too: a SystemExit raised
            # where a run reaches the application's code (its span processors) ended the one shadow thread, and
            # every later copy waited in a queue nobody read, then was dropped as queue_full, silently.
            except BaseException:
                _log(logging.ERROR, "shadow run of model %r failed unexpectedly", job.model, exc_info=True)
            finally:
                with self._cond:
                    spent = self._clock() - started
                    if not self._unbounded:  # (a run longer than a second owed nothing: shadow_budget=1 drops none)
                        self._tokens += job.reserved - spent  # may go below zero: the next runs wait longer
                    if measured and (job.model, job.shadow.version) in self._stats:  # (not one forgotten meanwhile)
                        # (a stopped run's time is what it took at least)
                        self._costs[(job.model, job.shadow.version)] = spent / max(job.rows, 1)
                    self._running = None
                    self._cond.notify_all()  # (close() waits for the run to be out of the backend)
            # Handed over once the run's time is settled: the application's callback (a log write to a slow
            # sink) is no shadow run. Timed with the run, a 20 ms sink made a 0.2 ms shadow cost 20 ms of the
            # budget and of its expected time, and shadows were sampled 40 times less often.
            result, self._result = self._result, None
            if result is not None and self.on_result is not None:
                try:
                    self.on_result(result)
                # BaseException too: a sink calling sys.exit() (or a gevent Timeout) ended the one shadow thread,
                # and every later copy waited in a queue nobody read, then was dropped as queue_full, silently
                except BaseException as exc:  # (once a minute, with its traceback: a sink that is down raised for
                    self._count_callback_error(result)  # every comparison, 300 tracebacks for 300 copies)
                    skipped = self._failing.due("on_shadow")
                    if skipped is not None:
                        _log(
                            logging.ERROR,
                            "the on_shadow callback raised %s%s (%s); the shadow thread goes on",
                            type(exc).__name__,
                            since(skipped),
                            _callable_name(self.on_result),
                            exc_info=exc,
                        )

    def _count_callback_error(self, result: ShadowComparison) -> None:
        with self._cond:
            stat = self._stats.get((result.model, result.shadow_version))
            if stat is not None:  # (not a version forgotten meanwhile)
                stat.callback_errors += 1

    def _run(self, job: _Job, limit_s: float | None) -> bool:
        """Run ``job`` within ``limit_s`` seconds and record its outcome; whether the run measured what its
        shadow version's runs take: one that answered, or was stopped at its limit (it takes that at least).
        A run that failed measures nothing: it may have failed at its first operator (a Gather given an index
        out of range), and its time, taken for the version's, would stop its next ordinary run as a runaway."""
        from ._rollout import Decision

        shadow_batcher = job.shadow.batcher
        primary_batcher = job.primary_version.batcher
        version = job.shadow.version
        span = start_shadow_span(job.model, version, job.primary_span)
        started = time.monotonic()
        if shadow_batcher is None:  # its load failed: an error of the shadow version, not a silent loss
            self._record(job, None, f"shadow version {version} is not loaded", time.monotonic() - started, span)
            return False
        reason = f"shadow copy of request {job.request_id}"
        route = Route(job.model, version, "shadow", reason, job.request_id, [], Decision(version, "shadow", reason))
        # a request's deadline is on its batcher's clock (the server's, which tests may step)
        deadline = None if limit_s is None else shadow_batcher._clock() + limit_s
        try:
            arrays, rows = _as_shadow_inputs(job)
        except InvalidInputError as exc:  # a version whose inputs differ in a way no cast bridges
            why = f"the request does not fit shadow version {version}'s inputs: {exc}"
            self._record(job, None, why, time.monotonic() - started, span)
            return False
        request = Request(arrays, rows, route, deadline, None)
        try:  # spare capacity only: no backlog on the serving version, an idle shadow session, right now
            ran = (primary_batcher is None or primary_batcher.queued_rows == 0) and shadow_batcher.run_if_idle(request)
            # its latency, as a request routed to it would have (checked and run), without the comparison that
            # follows: comparing a large answer takes longer than running a small model on it
            latency_s = time.monotonic() - started
        except VersionRetiredError:
            # Unloaded (or replaced by a refresh) since the copy was queued: the copies still queued for it are
            # no runs of it, so they are neither compared nor counted, as close() counts none. Counted as its
            # errors, they made a version that answered every copy it ran read as failing most of them, and
            # fired the shadow disagreement alert (which counts errors) for a version just retired.
            span.set_attributes({"inprocserve.shadow.dropped": True})
            end_safely(span, "closing an inprocserve.shadow span")
            return False
        except Exception as exc:  # any other refusal: an error of the shadow version, not the caller's problem
            self._record(job, None, f"{type(exc).__name__}: {exc}", time.monotonic() - started, span)
            return False
        if not ran:
            with self._cond:
                self._stat(job.model, version).dropped_busy += 1
            add_safely(METRICS.shadow_dropped, 1, _attributes(job.model, version, "no_spare_capacity"))
            span.set_attributes({"inprocserve.shadow.dropped": True})
            end_safely(span, "closing an inprocserve.shadow span")
            return False
        if (request.error is not None and self._stop.stopped) or isinstance(request.error, VersionRetiredError):
            # close() stopped it, or its version's retirement did (an unload that gave up waiting for the run):
            # nothing to compare or count, as above
            span.set_attributes({"inprocserve.shadow.dropped": True})
            end_safely(span, "closing an inprocserve.shadow span")
            return False
        if isinstance(request.error, DeadlineExceededError) and limit_s is not None:
            # stopped at what was left of the budget: dropped over budget (it cost the budget, compared nothing)
            with self._cond:
                stats = self._stat(job.model, version)
                stats.dropped_budget += 1
                stats.stopped_budget += 1
                first = stats.stopped_budget == 1
            add_safely(METRICS.shadow_dropped, 1, _attributes(job.model, version, "over_budget"))
            span.set_attributes({"inprocserve.shadow.dropped": True})
            end_safely(span, "closing an inprocserve.shadow span")
            # said once per shadow version: a run longer than the budget's whole allowance never completes
            _log(
                logging.WARNING if first else logging.DEBUG,
                "shadow version %s of model %r stopped after %.3f s, %g times what its last run took (1 s for a "
                "first run): a runaway run holds a session callers wait for; its next run may take %g times this",
                version,
                job.model,
                limit_s,
                RUNAWAY_FACTOR,
                RUNAWAY_FACTOR,
            )
            return True
        if request.error is not None:
            self._record(job, None, f"{type(request.error).__name__}: {request.error}", latency_s, span)
            return False
        self._record(job, request.outputs, None, latency_s, span)
        return True

    def _record(
        self, job: _Job, outputs: Mapping[str, Any] | None, error: str | None, latency_s: float, span: Any
    ) -> None:
        diff, agreement, mismatch = compare_outputs(job.primary, outputs) if outputs is not None else NOTHING_COMPARED
        finite = diff is None or math.isfinite(diff)  # not: a NaN or infinity where the other answer differs
        over = False  # past the model's rollout.shadow.max_abs_diff (without one, a regression never disagreed)
        if diff is not None and finite:
            try:
                limit = self.max_abs_diff_of(job.model)
            except Exception:  # (a model retired meanwhile, say: no bound, as before one was set)
                limit = None
            over = limit is not None and diff > limit
        if span.is_recording():
            if diff is not None:
                span.set_attribute(ATTR_SHADOW_DIFF, diff)
            if agreement is not None:
                span.set_attribute(ATTR_SHADOW_AGREEMENT, agreement)
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, error[:256]))
        end_safely(span, "closing an inprocserve.shadow span")
        if error is not None:
            result = "error"
        elif mismatch is not None or not finite or over or (agreement is not None and agreement < 1):
            result = "disagree"
        else:
            result = "agree"
        add_safely(METRICS.shadow, 1, _attributes(job.model, job.shadow.version, result))
        if diff is not None and finite:  # an infinity would turn the histogram's sum into one for good
            record_safely(METRICS.shadow_diff, diff, _attributes(job.model, job.shadow.version))
        comparison = ShadowComparison(
            model=job.model,
            primary_version=job.primary_version.version,
            shadow_version=job.shadow.version,
            request_id=job.request_id,
            max_abs_diff=diff,
            label_agreement=agreement,
            error=error,
            latency_s=latency_s,
            mismatch=mismatch,
        )
        with self._cond:
            stats = self._stat(job.model, job.shadow.version)
            stats.runs += 1
            if error is not None:
                stats.errors += 1
            first_mismatch = mismatch is not None and not stats.mismatched
            # against whichever version answered: during a canary, half the copies compare with the canary
            against = stats.by_primary.get(job.primary_version.version)
            if against is None:
                if len(stats.by_primary) >= PRIMARIES_KEPT:
                    del stats.by_primary[next(iter(stats.by_primary))]
                against = stats.by_primary[job.primary_version.version] = ShadowStats()
            against.runs += 1
            against.errors += error is not None
            for counts in (stats, against):
                counts.count(diff, finite=finite, over=over, agreement=agreement, rows=job.rows, mismatch=mismatch)
        if error is not None:
            skipped = self._failing.due((job.model, job.shadow.version))
            if skipped is not None:
                _log(
                    logging.INFO,
                    "shadow version %s of model %r failed (caller unaffected): %s%s",
                    job.shadow.version,
                    job.model,
                    error,
                    since(skipped),
                )
        if first_mismatch:  # (every one is counted in the status, and given to on_shadow)
            _log(
                logging.WARNING,
                "shadow version %s of model %r answers in another form than version %s (caller unaffected): %s",
                job.shadow.version,
                job.model,
                job.primary_version.version,
                mismatch,
            )
        self._result = comparison  # (handed to on_result by _serve)

    def pending(self) -> int:
        """Copies admitted and not yet taken by the shadow thread."""
        return len(self._jobs) + self._copying

    def status(self, model: str) -> dict[str, Any]:
        with self._cond:
            return {str(v): s.to_dict() for (m, v), s in self._stats.items() if m == model}

    def close(self) -> bool:
        """Drop the queued copies, stop the run in flight and wait (up to ``STOP_WAIT_S``) until the thread
        is out of the backend for good. Returns whether it is: while it is not, its run may still be inside
        the backend, whose sessions must not be closed (onnxruntime aborts the process); a warning then names
        the run abandoned. The ``on_shadow`` callback is not waited for: it is the application's code, which
        touches no session (a log sink that hangs held every ``close()`` for ``STOP_WAIT_S``, silently); a
        warning says it is left running. Idempotent."""
        with self._cond:
            self._closed = True
            self._queued_bytes -= sum(job.nbytes for job in self._jobs)
            self._jobs.clear()
            self._cond.notify_all()
            thread = self._thread
        # Not waited out: nobody waits for a shadow's answer, and a long one (shadow_budget=1 stops none)
        # would hold close() and, at exit, outlast the wait, with onnxruntime still running it.
        self._stop.stop()
        if thread is None or thread is threading.current_thread():
            return True
        with self._cond:  # (the thread notifies once its run is settled: _serve's finally)
            self._cond.wait_for(lambda: self._running is None, timeout=STOP_WAIT_S)
            running, started = self._running, self._run_started
        if running is not None:
            _log(
                logging.WARNING,
                "closing: shadow version %s of model %r is still running the copy of request %s after %.1f s "
                "(%g s after it was told to stop); abandoned, its sessions are left to the process's end",
                running.shadow.version,
                running.model,
                running.request_id,
                self._clock() - started,
                STOP_WAIT_S,
            )
            return False
        # Out of the backend for good: past here the thread only hands its last comparison to on_shadow, finds
        # the queue closed and ends. Waited for briefly, so a prompt callback is not reported as hung.
        thread.join(timeout=min(STOP_WAIT_S, CALLBACK_WAIT_S))
        if thread.is_alive():
            _log(
                logging.WARNING,
                "closing: the on_shadow callback has not returned after %g s; not waited for (the shadow thread "
                "ends when it returns)",
                min(STOP_WAIT_S, CALLBACK_WAIT_S),
            )
        return True


def _log(level: int, message: str, *args: Any, exc_info: Any = None) -> None:
    """Log on this module's logger, whatever the application's logging filters and handlers raise: a filter
    that raised on every record ended the shadow thread (its "failed unexpectedly" log raised again), after
    which every copy waited in a queue nobody read, and reached a caller whose request was not shadowed.
    Shadow work never fails the caller, and what cannot be logged is left unsaid."""
    try:
        logger.log(level, message, *args, exc_info=exc_info, stacklevel=2)
    except Exception:  # (the application's filter or handler: nothing is left to say it with)
        pass


def _callable_name(function: Callable[..., Any]) -> str:
    """``module.qualname`` of an application's callback (its repr for an object without them)."""
    name = getattr(function, "__qualname__", None)
    module = getattr(function, "__module__", None)
    if not isinstance(name, str):
        return brief(function)
    return f"{module}.{name}" if isinstance(module, str) else name


def _nbytes(values: Any) -> int:
    """Bytes held by the arrays among ``values`` (what a copy of them takes; a text input's strings too)."""
    return held_bytes(values)


def _attributes(model: str, version: int, result: str | None = None) -> dict[str, Any]:
    attributes: dict[str, Any] = {"inprocserve.model.name": model, "inprocserve.shadow.version": version}
    if result is not None:
        attributes["inprocserve.shadow.result"] = result
    return attributes
