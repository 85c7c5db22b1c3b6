"""Planning a batch scoring job: how a whole input is cut into chunks and requests, how many rows a model run
may take, and how much may be in flight at once so the sessions stay busy and the queue never overflows.

Pure arithmetic over a version's limits (:func:`plan_scoring`), plus :func:`plan_for_version`, which reads them
from a loaded version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._errors import InvalidInputError
from ._ort_backend import row_bytes, rows_within
from ._ort_rules import usable_cores
from ._scoring_inputs import as_arrays, rows_of

if TYPE_CHECKING:
    from ._model import ModelVersion

__all__ = [
    "BESIDE_VALUES_HINT",
    "SCORING_RUN_BUDGET_S",
    "SCORING_RUN_ROWS",
    "WINDOW_BYTES",
    "ScoringPlan",
    "caller_may_run",
    "checked_whole_input",
    "plan_for_version",
    "plan_scoring",
    "scoring_run_rows",
]

# Rows per model run a scoring job may use when the model's max_batch_size is smaller: the largest batch of the
# raw onnxruntime ceiling (benchmarks/batch_scoring.py). Larger runs gain little and hold more memory.
SCORING_RUN_ROWS = 256
# ... but only as far as a run stays this short (by the version's measured per-row cost): a model slow per row
# (large inputs, large activations) keeps its max_batch_size, which then also bounds its memory.
SCORING_RUN_BUDGET_S = 0.1
# The most bytes of input rows a job keeps in flight by default (read, queued and running), where its rows are
# wide: the window counted in rows alone (two requests per session) held 16 rows of 32 MiB, 512 MiB, of a list
# of such rows at once. An explicit max_in_flight is kept as given; one request is always let through.
WINDOW_BYTES = 64 << 20


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
    exact_rows: int | None = None
    """Rows every request must hold, exactly: the model fixes axis 0 at that size (``Signature.fixed_rows``),
    so an input is cut into requests of that many rows (``None``: any number up to the limits)."""


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
    """The plan for scoring on one loaded version (see :func:`plan_scoring`); without ``max_in_flight``, its
    window holds at most :data:`WINDOW_BYTES` of input rows (counted as the version's declared row: dynamic
    inner axes at their shortest), at least one request."""
    plan = _plan_for_version(target, batch_rows=batch_rows, max_in_flight=max_in_flight, timeout_s=timeout_s)
    signature = target.signature
    if max_in_flight is not None or signature is None or plan.chunk_rows is None:
        return plan
    each = row_bytes(signature)
    if each * plan.window_rows <= WINDOW_BYTES:
        return plan
    rows = max(1, WINDOW_BYTES // each)  # (a request of more is still let through alone: see ScoringPlan)
    return dataclasses.replace(plan, window_rows=rows, max_in_flight=min(plan.max_in_flight, rows))


def _plan_for_version(
    target: ModelVersion, *, batch_rows: int | None, max_in_flight: int | None, timeout_s: float | None
) -> ScoringPlan:
    batching = target.config.batching
    sessions = target.config.pool.size
    backend = target.backend
    # The version's verdict, not the declared shapes': a model whose rows the load found to depend on each
    # other (a mean over axis 0, batch normalization in training mode), or set rows_independent = "no", runs
    # each request alone and whole; cut into chunks that shared runs, its input got answers that were neither
    # the whole input's nor each chunk's own.
    signature = target.signature
    batchable = signature is None or (signature.batchable and not target.rows_stay_whole())
    # A scikit-learn classifier's ZipMap answers a map per row: its requests are never merged, but an input
    # may still be cut into chunks (a whole input past max_request_rows was refused as one request). So may
    # the rows beside a single value (a scale, rank 0, given with each request; each chunk gets it whole) once
    # the config says each row's answer is its own: the load cannot run such a model on made-up rows to check.
    chunkable = batchable or (
        signature is not None
        and (
            (signature.rows_in_maps() and batching.rows_independent != "no")
            or (signature.rows_beside_values() and batching.rows_independent == "yes")
        )
    )
    per_row_s = None if target.run_cost is None else target.run_cost.per_row_s
    caller_runs = backend.kind == "onnxruntime" and caller_may_run(
        backend.status(), kind=backend.kind, sessions=sessions, cores=usable_cores()
    )
    exact = None if signature is None or batchable else signature.fixed_rows
    if exact is not None:
        # A model exported with its batch axis fixed (at the example's 1, say): an input could not be scored
        # at all (each whole input was one request, refused past that many rows). Requests of exactly that many
        # rows, each one run, as predict takes them.
        if batch_rows is not None and batch_rows != exact:
            raise ValueError(
                f"batch_rows={batch_rows}: model {target.name!r} version {target.version} takes exactly {exact} "
                f"row{'s' if exact > 1 else ''} per run (its file fixes axis 0 of every input and output), so its "
                f"inputs are cut into requests of {exact}; drop batch_rows"
            )
        plan = plan_scoring(
            max_batch_size=exact,
            request_row_limit=exact,
            max_queue_rows=max(batching.max_queue_rows, exact),
            sessions=sessions,
            batchable=False,
            chunkable=True,
            batch_rows=exact,
            max_in_flight=max_in_flight,
            caller_runs=caller_runs,
        )
        return dataclasses.replace(plan, exact_rows=exact)
    return plan_scoring(
        max_batch_size=target.max_batch_rows,
        request_row_limit=batching.request_row_limit,
        max_queue_rows=batching.max_queue_rows,
        sessions=sessions,
        batchable=batchable,
        chunkable=chunkable,
        batch_rows=batch_rows,
        max_in_flight=max_in_flight,
        run_rows=_within_bytes(
            target,
            _run_rows(
                batchable=batchable,
                chunkable=chunkable,
                max_batch_size=target.max_batch_rows,
                per_row_s=per_row_s,
                timeout_s=timeout_s,
            ),
        ),
        caller_runs=caller_runs,
    )


def _within_bytes(target: ModelVersion, run_rows: int | None) -> int | None:
    """``run_rows`` cut to the rows whose input fits ``batching.max_batch_bytes``, never below the version's
    ``max_batch_rows``: raised towards :data:`SCORING_RUN_ROWS` by a cheap per-row cost alone, a whole input of
    8 MiB rows ran 42 rows (336 MiB) at a time past the 64 MiB bound that keeps the batcher's runs at 8."""
    signature = target.signature
    if run_rows is None or signature is None or run_rows <= target.max_batch_rows:
        return run_rows
    fits = rows_within(target.config.batching.max_batch_bytes, row_bytes(signature), run_rows)
    return max(target.max_batch_rows, fits)


def _run_rows(
    *, batchable: bool, chunkable: bool, max_batch_size: int, per_row_s: float | None, timeout_s: float | None
) -> int | None:
    """Rows per model run of a scoring request. With a deadline per chunk, a request of several chunks would
    stretch the deadline: one chunk each. A model whose requests are never merged but whose answers have a
    row per input row (a ZipMap classifier) runs each request whole, so a request of one chunk was a run of
    ``max_batch_size`` rows, a fixed cost per 64 rows: it gets :data:`SCORING_RUN_ROWS` (its run cost is not
    measured at load; such models, scikit-learn's, are cheap per row)."""
    if timeout_s is not None:
        return None
    if batchable:
        return scoring_run_rows(max_batch_size=max_batch_size, per_row_s=per_row_s)
    return max(max_batch_size, SCORING_RUN_ROWS) if chunkable else None


def not_a_multiple(model: str, exact_rows: int, rows: int, what: str) -> InvalidInputError:
    """The refusal of ``rows`` rows (a whole input, or a batch of an iterable) for a model that takes exactly
    ``exact_rows`` per run, saying how to pad them."""
    return InvalidInputError(
        f"{model} takes exactly {exact_rows} rows per run (its file fixes axis 0 of every input and output), and "
        f"{rows} rows are not a multiple of {exact_rows}: pad the {what} to {rows + exact_rows - rows % exact_rows} "
        "rows and drop the padded rows' answers, or export the model with a dynamic batch axis"
    )


def checked_whole_input(target: ModelVersion, plan: ScoringPlan, inputs: Any, *, batch_rows: int | None) -> Any:
    """``inputs`` (converted to arrays if a whole input) if the plan can send it: a whole input to a version whose
    answers have no row per input row (an output without a batch axis) cannot be cut into chunks, so it goes as
    one request, which the per-request limit refused with advice that does not hold for such a model ("split
    it into smaller requests": each part would get an answer of its own, not a part of the answer).

    Raises:
        ValueError: ``batch_rows`` asks to cut such a whole input into chunks (it was ignored: one answer came
            where the caller counted on one per chunk).
        InvalidInputError: such a whole input has more rows than one request may carry, saying why and what to do.
    """
    if plan.exact_rows is not None and isinstance(inputs, (np.ndarray, Mapping)):
        inputs = as_arrays(inputs)
        rows = rows_of(inputs)
        if rows % plan.exact_rows:
            # (refused before any run: the last request would fail after every other was answered)
            raise not_a_multiple(f"model {target.name!r} version {target.version}", plan.exact_rows, rows, "input")
        return inputs
    if plan.chunk_rows is not None or not isinstance(inputs, (np.ndarray, Mapping)):
        return inputs
    why = target.unbatchable_reason or "its answers have no row per input row"
    signature = target.signature
    beside = signature is not None and signature.rows_beside_values()
    if batch_rows is not None:
        raise ValueError(
            f"batch_rows={batch_rows}: model {target.name!r} version {target.version} takes a whole input as one "
            f"request ({why}: answers to chunks of it would not be parts of its answer), so it cannot be cut into "
            "chunks; drop batch_rows, or pass an iterable of batches to score each batch on its own"
            f"{BESIDE_VALUES_HINT if beside else ''}"
        )
    if signature is not None and (
        set(inputs) != signature.input_names if isinstance(inputs, Mapping) else len(signature.inputs) != 1
    ):  # wrong names, or a bare array to a model of several inputs: the request's check says so (this hid it)
        return inputs
    inputs = as_arrays(inputs)
    rows, limit = rows_of(inputs), target.config.batching.request_row_limit
    if rows > limit:
        raise InvalidInputError(
            f"model {target.name!r} version {target.version}: a whole input of {rows} rows is one request for this "
            f"model ({why}: it cannot be cut into chunks), more than the {limit} rows one request may carry; raise "
            "batching.max_request_rows for it, or pass an iterable of batches to score each batch on its own"
            f"{BESIDE_VALUES_HINT if beside else ''}"
        )
    return inputs


BESIDE_VALUES_HINT = (
    "; or, if each row's answer is its own (no row's answer depends on the others), set "
    "batching.rows_independent = 'yes' in the model's config.toml: an input is then cut into chunks, each "
    "sent with the same single values (the load cannot check this on a model that takes a value of rank 0)"
)
"""Advice for a model that takes a single value beside its rows (``Signature.rows_beside_values``), added to a
refusal to cut its input into chunks."""


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
    chunkable: bool | None = None,
) -> ScoringPlan:
    """Cut chunks to the model's limits, group them into requests of about ``run_rows`` rows, and size the
    window so the queue never overflows. ``chunkable`` (default: ``batchable``): every answer has a row per
    input row, so an input may be cut into chunks, and chunks grouped into requests, though the batcher never
    merges requests (``batchable`` false: each request is one run, so ``run_rows`` sizes its requests).

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
    chunks = batchable if chunkable is None else chunkable
    return ScoringPlan(
        chunk_rows=chunk if chunks else None,
        max_in_flight=count,
        window_rows=max(window_rows, 1),
        request_rows=request if chunks and per_request > 1 else None,
        run_rows=run_rows if batchable else None,
        caller_runs=caller_runs,
    )
