"""One servable model version: its backend, its batcher, and its lifecycle state.

The backend (onnxruntime sessions for a ``model.onnx``, a :class:`~inprocserve._remote.RemoteBackend` for a
``remote.toml``, or anything that keeps the ``Backend`` protocol) is built by a factory from the version's
file and config when the version loads, so a file that cannot be read fails the load like any other load
error; the batcher runs on the backend and knows nothing else of it.

States: ``loading`` -> ``ready`` -> ``draining`` -> ``unloaded``, or ``loading`` -> ``failed``. A version is
published for routing only once it is ``ready`` (sessions built and warmed up).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from ._array_file import UnreadableArrayFileError, load_arrays
from ._backend import Backend, BackendFactory, raised_by_signal_handler
from ._batch_ops import first_problem, row_mates_problems, rows_problem, stack_inputs
from ._batching import Batcher
from ._cache import PredictionCache
from ._config import BatchingConfig, ModelConfig
from ._drift import DriftMonitor
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    InprocserveError,
    InvalidInputError,
    ModelLoadError,
    OverloadedError,
    RemoteUnavailableError,
    ServerClosedError,
)
from ._flush_policy import RunCost
from ._heap import give_back_freed_memory
from ._integrity import resolve_model_file
from ._ort_backend import PROBE_MAX_BYTES, build_onnxruntime_backend, row_bytes, rows_within
from ._ort_rules import thread_oversubscription
from ._remote_model import read_remote_toml, unknown_keys_warning
from ._repository import is_remote
from ._request import Finisher
from ._run_cost import probe_run_cost
from ._signature import MOST_MADE_UP_RANK, PROBE_INNER_SIZES, Signature
from ._stats import LatencyHistogram
from ._telemetry import resident_memory_bytes

__all__ = ["ModelVersion", "build_backend"]

logger = logging.getLogger(__name__)

_LOAD_SERIALS = itertools.count(1)
"""Numbers each load of a version in this process, in order: tells a reload from the copy it replaced (a
shadow's figures, see ``_shadow``), where two ``time.time()`` readings can tie or go back (the clock stepped)."""
_STOPPED_RUNS_END_S = 2.0
"""How long a retirement that gave up on its runs waits for them to end once the backend stopped them: at
onnxruntime's next operator, so at once unless one operator runs for seconds."""
_MOST_LENGTHS_TIED = 6
"""Inputs' lengths (sequence axes named apart) among which a load looks for ties, at most."""
_MOST_TIE_RUNS = 40
"""One-row runs the search for tied lengths may make at a load, at most: a length changed alone takes one to
three, each candidate group one to three (a wrong one, mostly one), each tied length one more. Two lengths of
one group take 12; two groups of two, 23; four lengths of one group (ids, mask, token types, positions), 26;
five, 38. A search that would need more (six lengths of one group: 58) is given up, and the lengths stay free,
as the file names them. The runs that find a request that runs at all count too: one after a warm-up, at most
15 with it off and an input of any rank (3 lengths at each of 5 ranks)."""

_NOT_CHECKED = "(not checked: batching is off and nothing is sliced)"
"""Ends the verdict of a version whose axis 0 is named apart and whose rows the load did not check, since no
run of it ever holds rows of two requests: a doubt, not a finding that its rows depend on each other."""


class _OutOfRuns(Exception):
    """The search for tied lengths used its :data:`_MOST_TIE_RUNS`."""


def build_backend(
    path: Path,
    config: ModelConfig,
    *,
    model: str,
    version: int,
    follow_symlinks: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Backend:
    """The default :data:`~inprocserve._backend.BackendFactory`, chosen by the version's file: a
    ``remote.toml`` is served by the Open Inference Protocol server it names (its deadlines and circuit
    breaker on ``clock``), anything else by onnxruntime. Keys of the ``remote.toml`` this release does not
    know are left out, and the backend's ``config_warning`` names them (logged by :meth:`ModelVersion.load`).

    Raises:
        ModelLoadError: the ``remote.toml`` is unreadable or invalid (the message names the file and key).
    """
    if is_remote(path):
        from ._remote import RemoteBackend  # late: the remote backend's codec imports the server

        ignored: list[str] = []
        try:
            remote = read_remote_toml(path, ignored=ignored)
        except ModelLoadError as exc:
            raise ModelLoadError(f"model {model!r} version {version}: {exc}", model=model, version=version) from None
        backend = RemoteBackend(model, version, remote, clock=clock)
        if ignored:  # (served without them: logged as the version loads, shown as its config_warning meanwhile)
            backend.config_warning = unknown_keys_warning(path, ignored)
        return backend
    return build_onnxruntime_backend(path, config, model=model, version=version, follow_symlinks=follow_symlinks)


class ModelVersion:
    """Owns the backend and batcher of one version. Thread-safe; lifecycle calls come from the server.

    Args:
        backend: A ready backend to serve this version with (it is closed with the version).
        backend_factory: Builds the backend in :meth:`load` when none is given (default:
            :func:`build_backend`, by the file at ``path``, on ``clock``).
    """

    def __init__(
        self,
        name: str,
        version: int,
        path: Path,
        config: ModelConfig,
        *,
        deliver: Finisher,
        clock: Callable[[], float] = time.monotonic,
        follow_symlinks: bool = False,
        backend: Backend | None = None,
        backend_factory: BackendFactory | None = None,
    ) -> None:
        self.name = name
        self.version = version
        self.path = path
        self.config = config
        self.state = "loading"
        self.error: str | None = None
        self.loaded_at: float | None = None  # (wall clock, for status)
        self.load_serial: int | None = None  # which load was later, whatever the wall clock did meanwhile
        self.signature: Signature | None = None
        self.unbatchable_reason: str | None = None  # why requests never share a run, found at load
        self.batcher: Batcher | None = None
        self._measured_run_cost: RunCost | None = None  # the load's probe (the batcher then learns it)
        self.memory_bytes: int | None = None  # RSS growth while this version loaded; None where unmeasured
        # What its files were when it loaded (set by the registry): a refresh reloads it when they change.
        self.source_stamp: object = None
        self.drift: DriftMonitor | None = None
        self.cache = PredictionCache(config.cache, clock=clock) if config.cache.enabled else None
        self.latency = LatencyHistogram()  # fed by the server when a request to this version finishes
        self._deliver = deliver
        self._clock = clock
        self._follow_symlinks = follow_symlinks
        self._made_up_inner_size = 1  # dynamic inner axes of the warm-up's made-up request (_warm_up)
        # Axes the warm-up gave its inputs of any rank (_warm_up), or each had in its inputs_file, for the tie
        # check; None while no warm-up ran (switched off): that check then tries the ranks the warm-up would have.
        self._made_up_rank: int | dict[str, int] | None = None
        self._backend = backend
        self._backend_factory: BackendFactory = (
            backend_factory if backend_factory is not None else functools.partial(build_backend, clock=clock)
        )
        self.reject_nan = config.nan_policy == "reject"
        self.max_request_rows = config.batching.request_row_limit
        # Rows of one run: max_batch_size, fewer where that many rows pass batching.max_batch_bytes (at load)
        self.max_batch_rows = config.batching.max_batch_size

    def _load_error(self, exc: Exception) -> ModelLoadError:
        return ModelLoadError(
            f"model {self.name!r} version {self.version}: cannot load {self.path}: {type(exc).__name__}: {exc}",
            model=self.name,
            version=self.version,
        )

    def load(self) -> None:
        """Build and warm up every session, then make the version ready.

        Raises:
            ModelLoadError: the model cannot be loaded or warmed up (state becomes ``failed``).
        """
        started = time.perf_counter()
        resident_before = resident_memory_bytes()
        try:
            if self._backend is None:  # built here, so a bad file is a failed load like any other
                self._backend = self._backend_factory(
                    self.path, self.config, model=self.name, version=self.version, follow_symlinks=self._follow_symlinks
                )
            batching = self.config.batching
            signature = self.backend.prepare(
                warmup=self._warm_up, probe_rows=batching.max_batch_size if batching.enabled else 1
            )
            signature = self._rows_declared_as_one(signature)
            signature = self._axes_of_one_length(signature)
            self._check_padding(signature)
            self._finish_load(signature)
        except ServerClosedError:  # closed while it loaded (the server is shutting down): not a failed load
            raise
        except Exception as exc:
            if raised_by_signal_handler(exc):
                # The caller's task was stopped by its time limit (Celery's SoftTimeLimitExceeded, RQ's
                # JobTimeoutException) while this version loaded, e.g. in a Server built by a worker's first
                # task: not a bad file. Recorded as a failed load it stayed unservable (ModelNotFoundError for
                # every later task of the worker) until its files changed; the task's exception was lost.
                self.drift = self.batcher = None
                if self._backend is not None:
                    self._backend.close()
                raise
            # anything else is a bad file or setting that surfaced in another form (a half-copied warm-up
            # archive, a link loop in external data, a setting of the wrong type): a failed load all the same
            error = exc if isinstance(exc, ModelLoadError) else self._load_error(exc)
            if self.config_warning is not None:  # (a key left out may be why: [header] for [headers] sends no token)
                error = ModelLoadError(f"{error}; {self.config_warning}", model=self.name, version=self.version)
            self.state = "failed"
            self.error = str(error)
            self.drift = self.batcher = None
            if self._backend is not None:
                self._backend.close()
            if error is exc:
                raise
            raise error from exc
        give_back_freed_memory()  # (what building the sessions took and freed: about a third of the weights)
        resident_after = resident_memory_bytes()
        if resident_before is not None and resident_after is not None:
            # What the process grew by while the sessions were built and warmed up (weights, graph, arenas).
            # An estimate: other threads allocate meanwhile, and memory an arena takes later is not in it.
            self.memory_bytes = max(0, resident_after - resident_before)
        self.loaded_at = time.time()
        self.load_serial = next(_LOAD_SERIALS)
        self.state = "ready"
        logger.info(
            "model %r version %s ready in %.2fs on %s (pool of %d)",
            self.name,
            self.version,
            time.perf_counter() - started,
            ", ".join(self.backend.providers),
            self.backend.concurrency,
        )
        threads = getattr(self.backend, "intra_op_threads", None)  # (an onnxruntime backend's, as chosen)
        oversubscribed = (
            None if threads is None else thread_oversubscription(self.config.pool, intra_op_threads=threads)
        )
        if oversubscribed is not None:
            logger.warning("model %r version %s: %s", self.name, self.version, oversubscribed)
        if self.config_warning is not None:
            # Said once the version serves, not as its file is read: a version whose model server is down is
            # read again at every poll, and said its remote.toml's unknown keys at each (its failure, once).
            logger.warning("model %r version %s: %s", self.name, self.version, self.config_warning)

    def _rows_declared_as_one(self, signature: Signature) -> Signature:
        """The signature with axis 0 made dynamic on each output that declares it of size 1 but answers one
        value per row: onnxmltools declares a LightGBM classifier's ``label`` as ``[1]`` (onnxruntime warns
        "Expected shape from model of {1} does not match actual shape of {3}" at each run of 3 rows). Taken at
        its word, such a version was never batched, the ``score`` command refused it ("without a batch axis"),
        and a remote backend calling it refused each answer of more than one row. A run of 3 made-up rows
        shows which such outputs answer 3 rows; the others, and a model that does not run on made-up rows,
        keep their declared shape. Not with ``batching.rows_independent = "yes"``, which skips every run of
        made-up rows at load (the setting for a model that fails, or takes minutes, on them): the declared shape
        then stands.
        """
        suspects = {
            spec.name
            for spec in signature.outputs
            if spec.dtype is not None and spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] == 1
        }
        trusted = self.config.batching.rows_independent == "yes"
        if not suspects or trusted or self.backend.kind == "remote" or signature.inputs_without_dynamic_rows():
            return signature
        first, second = signature.distinct_rows(PROBE_INNER_SIZES[0])
        feeds = stack_inputs([first, second, first], [spec.name for spec in signature.inputs])
        try:
            answers = self.backend.run(self.backend.runners()[0], feeds)
        except ServerClosedError:
            raise
        except InprocserveError:
            return signature  # (made-up rows are not valid input for every model: nothing shown)
        outputs = []
        for spec, answer in zip(signature.outputs, answers, strict=True):
            assert spec.shape is not None or spec.name not in suspects
            if spec.name in suspects and isinstance(answer, np.ndarray) and answer.ndim == len(spec.shape or ()):
                if answer.shape[0] == 3:
                    spec = dataclasses.replace(spec, shape=(None, *(spec.shape or ())[1:]))
            outputs.append(spec)
        fixed = [spec.name for spec in outputs if spec.name in suspects and spec.shape and spec.shape[0] is None]
        if not fixed:
            return signature
        logger.info(
            "model %r version %s declares axis 0 of size 1 on outputs that answer one row per input row (%s): "
            "taken as rows",
            self.name,
            self.version,
            ", ".join(fixed),
        )
        return Signature(signature.inputs, outputs, rows_shared=signature.rows_shared)

    def _axes_of_one_length(self, signature: Signature) -> Signature:
        """The signature with the inputs' inner axes that the model needs of one length tied (checked as a
        shared name is: ``Signature.tied_axes``), where the file names them apart.

        A legacy ``torch.onnx.export`` given ``dynamic_axes`` as lists names ``input_ids``' and
        ``attention_mask``'s sequence axes apart; a request whose two lengths differed failed inside
        onnxruntime ("Attempting to broadcast an axis"), an ``InferenceError`` (a web view's 500) for the
        caller's mistake. A few one-row runs of zeros tell: each length changed alone fails one step longer,
        one shorter and two longer than the others (a length that only must not exceed another's runs on one
        of them, one that only must keep a sum even on the last), and changed with the others of its group
        runs at all three. A tied length that runs 1 long against the others (the model broadcasts it) may
        still be sent so (``Signature.broadcast_axes``). Only where two to :data:`_MOST_LENGTHS_TIED` such
        lengths exist, within :data:`_MOST_TIE_RUNS` runs, and not with ``batching.rows_independent = "yes"``
        (which skips the load's runs of made-up inputs) nor for a remote model server.

        An input of any rank (declared with no shape) is made up with the axes the warm-up found it runs on, or
        that it has in ``warmup.inputs_file``; with the warm-up off, with the first of the ranks the warm-up
        would have tried that runs (as a scalar alone, a MatMul refused every run, and the lengths were left
        free: a request whose lengths differed failed inside onnxruntime)."""
        units = signature.dynamic_inner_axes()
        trusted = self.config.batching.rows_independent == "yes"
        if not 2 <= len(units) <= _MOST_LENGTHS_TIED or trusted or self.backend.kind == "remote":
            return signature
        runner = self.backend.runners()[0]
        # (one step shorter runs, by the warm-up; never 1 long, which broadcasts against any length)
        base = max(self._made_up_inner_size, 2) + 1
        made = 0

        def runs(rank: int | dict[str, int], length: int, sizes: dict[tuple[str, int], int]) -> bool:
            """Whether one row runs, its dynamic inner axes ``length`` long (or of ``sizes``), its inputs of any
            rank of ``rank`` axes."""
            nonlocal made
            if made == _MOST_TIE_RUNS:
                raise _OutOfRuns
            made += 1
            try:
                self.backend.run(runner, signature.synthesize(1, length, sizes, any_rank=rank))
            except ServerClosedError:
                raise
            except InprocserveError:
                return False
            return True

        # Where the warm-up made up no request (switched off, or read from inputs_file), the lengths it would
        # have tried, until one runs (a convolution of kernel 5 over time needs 5 steps or more); where it was
        # switched off, at each of the ranks it would have tried, too (a MatMul refuses a scalar).
        starts = [base, *(size + 1 for size in signature.made_up_inner_sizes() if size + 1 > base)]
        known = self._made_up_rank
        ranks: Sequence[int | dict[str, int]] = signature.made_up_ranks() if known is None else (known,)
        try:
            start = next(((r, length) for r, length in itertools.product(ranks, starts) if runs(r, length, {})), None)
            if start is None:
                logger.info(
                    "model %r version %s: no made-up request of one length ran, so which of its inputs' lengths "
                    "must be alike is not known; they are left free",
                    self.name,
                    self.version,
                )
                return signature
            rank, base = start

            def runs_at(size: int, changed: Sequence[tuple[tuple[str, int], ...]]) -> bool:
                return runs(rank, base, {place: size for unit in changed for place in unit})

            others = (base + 1, base - 1, base + 2)  # (in turn: the second and third only where the first fails)
            lone = [unit for unit in units if not any(runs_at(size, [unit]) for size in others)]
            groups: list[tuple[tuple[tuple[str, int], ...], ...]] = []  # (each a group of lengths: units)
            while len(lone) >= 2:
                first, rest = lone[0], lone[1:]
                found = next(
                    (
                        (first, *chosen)
                        for count in range(1, len(rest) + 1)
                        for chosen in itertools.combinations(rest, count)
                        if all(runs_at(size, [first, *chosen]) for size in others)
                    ),
                    None,
                )
                lone = [unit for unit in rest if found is None or unit not in found]
                if found is not None:
                    groups.append(found)
            broadcast = [place for group in groups for unit in group if runs_at(1, [unit]) for place in unit]
        except _OutOfRuns:
            logger.info(
                "model %r version %s: %d one-row runs did not tell which of its inputs' lengths must be alike; "
                "they are left free (a request whose lengths the model cannot take fails in the model)",
                self.name,
                self.version,
                _MOST_TIE_RUNS,
            )
            return signature
        if not groups:
            return signature
        tied = [tuple(place for unit in group for place in unit) for group in groups]
        for group in tied:
            logger.info(
                "model %r version %s runs only when %s are of one length: requests whose lengths differ are refused",
                self.name,
                self.version,
                " and ".join(f"{name!r} axis {axis}" for name, axis in group),
            )
        return signature.tying(tied, broadcast)

    def _finish_load(self, signature: Signature) -> None:
        """What a load builds on top of the backend's sessions: the drift monitor, the run cost and the
        batcher (its failure fails the load like a bad file's)."""
        self.unbatchable_reason = self._batching_problem(signature)
        batchable = self.unbatchable_reason is None
        if batchable and not signature.batchable:  # (inputs named apart, taken for one batch axis)
            signature = signature.sharing_rows()  # (so every input of a request must have the same rows)
        elif not batchable and signature.batchable and self.backend.kind != "remote":  # (never merged nor
            # sliced: each request runs as it is, so its inputs need not have the same rows; a remote version's
            # answers are checked against the first input's rows by its backend, so there the refusal stays)
            signature = signature.apart_rows()
        self.signature = signature = self._bounded(signature)
        if self.config.drift.enabled:
            self.drift = DriftMonitor(
                self.config.drift,
                model=self.name,
                version=self.version,
                inputs=[spec.name for spec in signature.inputs],
                outputs=list(signature.output_names),
                folder=self.path.parent.parent,
                input_shapes={spec.name: spec.shape for spec in signature.inputs},
                output_shapes={spec.name: spec.shape for spec in signature.outputs},
                dtypes={spec.name: spec.dtype for spec in (*signature.inputs, *signature.outputs)},
            )
        batching = self._batching_within_bytes(signature, batchable=batchable)
        self.max_batch_rows = batching.max_batch_size
        self._measured_run_cost = self._measure_run_cost(signature, batchable=batchable)
        self.batcher = Batcher(
            self.backend,
            batching,
            input_names=[spec.name for spec in signature.inputs],
            output_names=signature.output_names,
            batchable=batchable,
            has_dynamic_inner_axes=signature.has_dynamic_inner_axes,
            run_cost=self._measured_run_cost,
            deliver=self._deliver,
            clock=self._clock,
        )

    def _batching_within_bytes(self, signature: Signature, *, batchable: bool) -> BatchingConfig:
        """The batching config whose ``max_batch_size`` keeps a run's input within ``max_batch_bytes`` (its
        rows counted as the warm-up made them up), at least one row; the config itself where it already does.
        Computed once here: a request pays nothing for it."""
        batching = self.config.batching
        if not batchable:
            return batching
        each = row_bytes(signature, self._made_up_inner_size)
        rows = self._rows_within_bytes(signature)
        if rows == batching.max_batch_size:
            return batching
        logger.info(
            "model %r version %s: a row's input is %d bytes, so a run takes at most %d row(s) "
            "(batching.max_batch_bytes %d; max_batch_size %d)",
            self.name,
            self.version,
            each,
            rows,
            batching.max_batch_bytes,
            batching.max_batch_size,
        )
        preferred = tuple(size for size in batching.preferred_batch_sizes if size <= rows)
        return dataclasses.replace(batching, max_batch_size=rows, preferred_batch_sizes=preferred)

    def _rows_within_bytes(self, signature: Signature) -> int:
        """The rows of one run: ``max_batch_size``, fewer where that many made-up rows pass ``max_batch_bytes``
        (a request of more is run in slices, with merging off too: the check of its rows must run then)."""
        batching = self.config.batching
        each = row_bytes(signature, self._made_up_inner_size)
        return rows_within(batching.max_batch_bytes, each, batching.max_batch_size)

    def _bounded(self, signature: Signature) -> Signature:
        """The signature that checks each request's values against the config's ``inputs`` bounds (every way
        of a request validates with the version's signature, before anything is merged or run).

        Raises:
            ModelLoadError: a bound names an input the model lacks (a typo would leave the input it meant
                unbounded), or one that holds no numbers.
        """
        bounds = {name: (each.min, each.max) for name, each in self.config.inputs.items()}
        try:
            return signature.bounded(bounds) if bounds else signature
        except ValueError as exc:
            raise ModelLoadError(
                f"model {self.name!r} version {self.version}: {exc}", model=self.name, version=self.version
            ) from None

    def _batching_problem(self, signature: Signature) -> str | None:
        """Why requests of this version must never share a run, nor a large one be run in slices (``None``:
        they may), logged once: the declared shapes, ``batching.rows_independent``, or the check that a row's
        answer is its own (:meth:`_rows_dependence`). The check runs whatever ``batching.enabled`` says, where a
        request may be larger than ``max_batch_size``: it is run in slices all the same."""
        hard = signature.axis_problem
        setting = self.config.batching.rows_independent
        if hard is not None or setting == "no":
            reason = hard or "batching.rows_independent is 'no'"
            logger.info("model %r version %s runs unbatched: %s", self.name, self.version, reason)
            return reason
        batching = self.config.batching
        if setting == "yes":
            return None  # (trusted)
        if not batching.enabled and batching.request_row_limit <= self._rows_within_bytes(signature):
            # (no run ever holds rows of two requests nor two slices of one: nothing to check; inputs or outputs
            # named apart are then not taken for one batch axis, so a request's inputs need not share rows)
            named = signature.rows_named_apart
            return None if named is None else f"{named} {_NOT_CHECKED}"
        named = signature.rows_named_apart
        remote = self.backend.kind == "remote"
        try:
            if remote:
                # (a model server is not called at load for this: three calls of a slow or metered model would
                # hold every worker's start, and the server's own dynamic batcher merges requests its own way)
                raise _Inconclusive("the model runs on a remote backend, which is not checked")
            dependence = self._rows_dependence(signature)
        except _Inconclusive as exc:
            if named is not None:
                dependence = (
                    f"{named}, and nothing showed that axis 0 is the rows ({exc}); rename the dimension in the "
                    "model, or set batching.rows_independent = 'yes'"
                )
            else:
                dependence = None if remote else self._rows_dependence_at_index_zero(signature)
                if dependence is None:
                    logger.log(
                        logging.INFO if remote else logging.WARNING,
                        "model %r version %s: could not check that each row's answer is its own (%s); requests "
                        "are merged as the declared shapes allow (set batching.rows_independent = 'yes' to merge "
                        "them, or 'no' to never merge nor slice them)",
                        self.name,
                        self.version,
                        exc,
                    )
                    return None
        if dependence is not None:
            logger.warning(
                "model %r version %s runs unbatched: %s; each request runs alone and whole (set "
                "batching.rows_independent = 'yes' if the answers may differ)",
                self.name,
                self.version,
                dependence,
            )
        return dependence

    def _rows_dependence(self, signature: Signature) -> str | None:
        """Run two distinct rows alone, then stacked as one run, and say how the answers differ (``None``:
        they agree).

        Stacked rows share a run whenever requests are merged, and a large request's slices are such runs
        too: a model that computes over the whole batch (dynamic quantization, batch normalization in training
        mode, a softmax over axis 0) or returns a count of things found on axis 0 would hand each caller an
        answer that depends on, and reveals, other callers' rows. Five runs of one or two rows (the last two each
        row beside a copy of itself, for :func:`~._batch_ops.mates_problem`); where the
        model fails on them and has dynamic inner axes, again with those axes longer (a convolution over time
        needs more than 2 steps), up to :data:`PROBE_INNER_SIZES`' last.

        Raises:
            _Inconclusive: the model would not run on any of the made-up rows (an index beyond a small table),
                or its answers could not be compared.
        """
        runner = self.backend.runners()[0]
        sizes = PROBE_INNER_SIZES if signature.has_dynamic_inner_axes else PROBE_INNER_SIZES[:1]
        failures: list[str] = []
        for size in sizes:
            stacked = _stacked(*signature.distinct_rows(size))
            try:
                problem = self._rows_compared(runner, signature, stacked)
            except ServerClosedError:
                raise
            except InprocserveError as exc:  # made-up rows are not valid input for every model
                failures.append(f"{exc}" if len(sizes) == 1 else f"dynamic inner axes of {size}: {exc}")
                if isinstance(exc, (RemoteUnavailableError, DeadlineExceededError, OverloadedError)):
                    break  # (longer rows would not reach a server that is down, nor one that is busy, either)
                continue
            return problem
        raise _Inconclusive(f"the model would not run on made-up rows: {'; '.join(failures)}")

    def _rows_compared(self, runner: Any, signature: Signature, stacked: dict[str, np.ndarray]) -> str | None:
        """How the answers of the two rows of ``stacked`` run alone, together, and each beside a copy of itself
        differ (``None``: they agree, or a run beside a copy failed, which shows nothing of the rows).

        Holds as few rows as the comparisons need, for a model whose rows are hundreds of MiB each: the inputs
        are ``stacked`` and one row's copy (each row run alone is a copy of its row, dropped once run, and each
        run beside a copy is ``stacked`` with one row copied over the other), and the outputs of at most two
        runs of two rows at once (the rows alone's are dropped once compared, and each run beside a copy's once
        compared with the run of the two rows). ``stacked`` is overwritten.

        Raises:
            InprocserveError: a run of the rows alone or together failed (made-up rows are not valid input
                for every model).
            _Inconclusive: the answers could not be compared.
        """
        outputs = signature.output_names
        # (each row alone a copy, and the second row's copy made before the run of both: feeds are the backend's
        # to use, and one that works in them, centring its input in place, would change the rows it compares)
        alone = [self.backend.run(runner, _row(stacked, row, copy=True)) for row in (0, 1)]
        second = _row(stacked, 1, copy=True)
        together = self.backend.run(runner, stacked)
        problem = _compared(functools.partial(rows_problem, outputs, alone, together))
        del alone
        if problem is not None:
            return problem
        # Runs of the size of the two stacked, so the same kernels: each row beside a copy of itself
        found: list[list[str | None]] = []
        for row in (0, 1):
            for name, array in stacked.items():  # (the first row over the second, then the second over both)
                array[1 - row :] = array[:1] if row == 0 else second[name]
            try:
                twins = self.backend.run(runner, stacked)
            except ServerClosedError:
                raise
            except InprocserveError:
                return None  # (these rows ran stacked already: that shows nothing of the rows)
            found.append(_compared(functools.partial(row_mates_problems, outputs, together, row, twins)))
            del twins
        return first_problem(found)

    def _rows_dependence_at_index_zero(self, signature: Signature) -> str | None:
        """The check of :meth:`_rows_dependence` again, for a model that would not run on its made-up rows, with
        integer inputs 0 in both rows (the other inputs still differ): every integer input at once, then each
        alone where there are several. How the answers differ, or ``None`` when that shows nothing either (no
        other input tells the rows apart, the model fails on these too, or they agree).

        An integer input that indexes the rows of the run itself (a ``Gather`` along axis 0, a beam search's
        reordering of the batch) fails on the made-up index 1 in a run of one row, so the check was
        inconclusive and such a version merged requests: stacked, a caller's index 0 picked the first
        caller's row, and every caller of a merged run got that caller's answer. Index 0 is valid alone. The
        rows it indexes may be integers too (token ids): with every integer 0 nothing told the rows apart, so
        each integer input is also set to 0 alone, the others differing."""
        integers = [spec.name for spec in signature.inputs if spec.dtype is not None and spec.dtype.kind in "iu"]
        zeroed = [] if len(integers) == len(signature.inputs) else [integers]
        if len(integers) > 1:
            zeroed += [[name] for name in integers]
        if not zeroed:
            return None
        runner = self.backend.runners()[0]
        sizes = PROBE_INNER_SIZES if signature.has_dynamic_inner_axes else PROBE_INNER_SIZES[:1]
        for names in zeroed:
            for size in sizes:
                first, second = signature.distinct_rows(size)
                second = {name: first[name] if name in names else array for name, array in second.items()}
                stacked = _stacked(first, second)
                del first, second
                try:
                    problem = self._rows_compared(runner, signature, stacked)
                except ServerClosedError:
                    raise
                except InprocserveError:
                    continue
                except _Inconclusive:  # (answers of a kind the comparison does not foresee: nothing shown)
                    break
                if problem is not None:
                    return f"{problem} (shown with integer inputs {', '.join(sorted(names))} 0 in both rows)"
                break  # (these ran and agree: the next integer inputs to set to 0)
        return None

    @property
    def run_cost(self) -> RunCost | None:
        """What a run of this version costs: measured at load, then learned from its runs (``RunCostLearner``)."""
        batcher = self.batcher
        return self._measured_run_cost if batcher is None else batcher.run_cost

    def _run_cost_status(self) -> dict[str, Any] | None:
        cost = self.run_cost
        if cost is None:
            return None
        batcher = self.batcher
        return {
            "fixed": round(cost.fixed_s * 1000, 4),
            "per_row": round(cost.per_row_s * 1000, 4),
            "from": "load" if batcher is None else batcher.run_cost_source,
        }

    def _measure_run_cost(self, signature: Signature, *, batchable: bool) -> RunCost | None:
        """Time runs of 1 and of a few rows to split a run's cost into a fixed part and a per-row part.

        The fixed part is what batching saves per merged request, and it bounds how long a free session
        may usefully wait for companions (see ``BatchingConfig.max_delay_s``). A first estimate: the batcher
        corrects it from the runs it makes (``RunCostLearner``).
        """
        batching = self.config.batching
        # (within the rows one run may take, and the load's byte bound for its made-up runs: wide rows)
        each = row_bytes(signature, self._made_up_inner_size)
        rows = rows_within(PROBE_MAX_BYTES, each, min(8, self.max_batch_rows))
        if not (batchable and batching.enabled and rows > 1):
            return None
        runner = self.backend.runners()[0]
        small = signature.synthesize(1, self._made_up_inner_size)
        large = signature.synthesize(rows, self._made_up_inner_size)
        backend = self.backend
        try:  # (the first pair also sizes the arena for both shapes)
            cost = probe_run_cost(lambda: backend.run(runner, small), lambda: backend.run(runner, large), rows)
        except InprocserveError as exc:  # zeros are not valid input for every model
            logger.info("model %r version %s: run cost not measured (%s)", self.name, self.version, exc)
            return None
        # (measured with each dynamic inner axis of the warm-up's size, 1 unless the model needs more: a longer
        # sequence weighs more, see RunCost)
        row_elements = {name: array.size for name, array in small.items()} if signature.has_dynamic_inner_axes else None
        return RunCost(fixed_s=cost.fixed_s, per_row_s=cost.per_row_s, row_elements=row_elements)

    def _check_padding(self, signature: Signature) -> None:
        padding = self.config.batching.padding
        if padding is None:
            return
        inputs = {spec.name: spec for spec in signature.inputs}
        outputs = {spec.name: spec for spec in signature.outputs}
        for kind, axes, specs in (("inputs", padding.inputs, inputs), ("outputs", padding.outputs, outputs)):
            for name, axis in axes.items():
                spec = specs.get(name)
                if spec is None or spec.shape is None or axis >= len(spec.shape):
                    known = ", ".join(s.describe() for s in specs.values())
                    raise ModelLoadError(
                        f"model {self.name!r} version {self.version}: batching.padding.{kind} names {name!r} "
                        f"axis {axis}, which the model does not have ({known})",
                        model=self.name,
                        version=self.version,
                    )
                size = spec.shape[axis]
                if kind == "outputs" and isinstance(size, int) and size >= 0:
                    # Cropped to each request's length, a fixed axis (a classifier's labels) would lose its
                    # values whenever the request shared a padded batch, and keep them when it ran alone.
                    raise ModelLoadError(
                        f"model {self.name!r} version {self.version}: batching.padding.outputs names {name!r} "
                        f"axis {axis}, which has the fixed size {size} ({spec.describe()}); only an axis that "
                        "follows the padded inputs' length can be cropped back: remove it from "
                        "batching.padding.outputs",
                        model=self.name,
                        version=self.version,
                    )

        # Outputs are cropped to each request's length along the first padded input's axis: an output axis the
        # model names after any other input axis (a number of candidates, a second padded input's length) is
        # another length. (A name no input has, an exporter's own, is left to the check of each merged batch.)
        first, first_axis = next(iter(padding.inputs.items()))
        first_shape = inputs[first].shape
        length = first_shape[first_axis] if first_shape else None
        others = {
            dim
            for spec in signature.inputs
            for axis, dim in enumerate(spec.shape or ())
            if axis > 0 and isinstance(dim, str) and (spec.name, axis) != (first, first_axis)
        } - {length}
        for name, axis in padding.outputs.items():
            shape = outputs[name].shape
            dim = shape[axis] if shape else None
            if dim in others:
                # cropped to the first padded input's length, it lost entries whenever the two were equal in a
                # merged batch, with nothing logged
                raise ModelLoadError(
                    f"model {self.name!r} version {self.version}: batching.padding.outputs names {name!r} "
                    f"axis {axis}, of length {dim!r}, which is not the length of {first!r} axis {first_axis} "
                    f"(outputs are cropped to it): remove it from batching.padding.outputs",
                    model=self.name,
                    version=self.version,
                )
        for name in padding.inputs:  # (each named in padding.inputs exists: checked above)
            dtype, value = inputs[name].dtype, padding.value_for(name)
            if dtype is not None and dtype.kind in "iub" and not _holds(dtype, value):
                # numpy casts it all the same (-inf into int64 is a huge negative token id): every merged batch
                # failed, and fell back to a run per request, or ran on garbage tokens
                raise ModelLoadError(
                    f"model {self.name!r} version {self.version}: batching.padding.value {value:g} cannot be "
                    f"held by input {name!r} ({inputs[name].describe()}); give each input its own value, such "
                    f"as value = {{ {name} = 0, ... }}",
                    model=self.name,
                    version=self.version,
                )

    def _warm_up(self, runner: Any) -> None:
        """Run each new runner once or more, so the first real request does not pay for allocations."""
        warmup = self.config.warmup
        if not warmup.enabled:
            return
        signature = self.backend.signature
        assert signature is not None
        if warmup.inputs_file:
            feeds = self._load_warmup_file(warmup.inputs_file, signature)
            for _ in range(warmup.runs):
                self.backend.run(runner, feeds)
            # (runs on these ranks, as the file's real inputs have them: the tie check makes up its inputs so)
            self._made_up_rank = {
                spec.name: np.ndim(feeds[spec.name]) for spec in signature.inputs if spec.shape is None
            }
            return
        rows = warmup.rows if signature.batchable else 1
        # A convolution over time (torch.nn.Conv1d of kernel 5) needs more steps than the made-up request's 1:
        # it failed its warm-up ("Invalid input shape: {1}") and never loaded. Its dynamic inner axes are made
        # longer, as the check of its rows makes them, and the first length that runs is kept for the next
        # session's warm-up and for the run cost. (Not for a remote model server, which the load calls no more
        # than it must: a slow or metered model, or one that is down, would hold every worker's start.)
        known = self._made_up_inner_size
        longer = signature.has_dynamic_inner_axes and self.backend.kind != "remote"
        tried = signature.made_up_inner_sizes() if longer else (1,)
        sizes = (known, *(size for size in tried if size != known))
        # An input the file declares with no shape (any rank) is made up as a scalar, then of more axes: a model
        # that needs a rank (a MatMul) failed the scalar, and a version that serves real requests never loaded.
        ranks = signature.made_up_ranks() if self.backend.kind != "remote" else (0,)
        quoted: tuple[int, InferenceError] | None = None
        for rank in ranks:
            for size in sizes:
                feeds = signature.synthesize(rows, size, any_rank=rank)
                try:
                    for _ in range(warmup.runs):
                        self.backend.run(runner, feeds)
                except InferenceError as exc:
                    if size == known:  # (each rank's failure at its first length: the last rank's is quoted)
                        quoted = (rank, exc)
                    continue
                self._made_up_inner_size, self._made_up_rank = size, rank
                return
        assert quoted is not None
        raise self._warm_up_failure(signature, rows=rows, sizes=sizes, ranks=ranks, quoted=quoted) from quoted[1]

    def _warm_up_failure(
        self,
        signature: Signature,
        *,
        rows: int,
        sizes: Sequence[int],
        ranks: Sequence[int],
        quoted: tuple[int, InferenceError],
    ) -> InferenceError:
        """The error of a warm-up that ran on none of its made-up requests: the model's failure on the first
        length of the last rank tried (``quoted``), what else was tried, and how to load such a model.

        A model that runs only on some sizes of an axis it declares dynamic (torch.onnx.export's exporter can fix
        a sequence length inside the graph) failed with onnxruntime's words alone ("cannot be reshaped"), and
        the version never loaded, with no word of what was run or how to load it. Of an input of any rank it
        quoted the scalar's failure, the first, which says only that the model needs a rank (a MatMul's "left_num_dims
        and right_num_dims must be >= 1"); each axis more gets past more of what the model needs of its input,
        so the failure with the most axes says the most of what it needs (a MatMul's "dimension mismatch")."""
        rank, failure = quoted

        def listed(rank: int) -> str:
            arrays = signature.synthesize(rows, sizes[0], any_rank=rank)
            return ", ".join(f"{name} {list(array.shape)}" for name, array in arrays.items())

        shapes = f"{listed(rank)}, of the last rank it tried, after {listed(0)}" if rank else listed(0)
        again = (
            f", and again with its dynamic inner axes {', '.join(map(str, PROBE_INNER_SIZES))} long"
            if len(sizes) > 1
            else ""
        )
        if len(ranks) > 1:
            names = ", ".join(repr(spec.name) for spec in signature.inputs if spec.shape is None)
            again += f", and with {names} of 1 to {MOST_MADE_UP_RANK} axes (declared with no shape: any rank)"
        return type(failure)(
            f"{failure.message.rstrip()} (on the warm-up's made-up request of zeros, {shapes}{again}; a model "
            "that runs only on some shapes of the inputs it declares dynamic or of any rank takes real inputs from "
            "warmup.inputs_file in its config.toml: docs/repository.md)",
            model=self.name,
            version=self.version,
        )

    def _load_warmup_file(self, name: str, signature: Signature) -> dict[str, np.ndarray]:
        path = resolve_model_file(
            self.path.parent.parent, name, what="warm-up inputs file", model=self.name, version=self.version
        )
        try:
            feeds: Any = load_arrays(path)  # (a .npy: the inputs of a one-input model)
        except UnreadableArrayFileError as exc:
            raise ModelLoadError(
                f"warm-up inputs {path} cannot be read: {exc}", model=self.name, version=self.version
            ) from exc
        try:
            arrays, _ = signature.validate(feeds, max_rows=np.iinfo(np.int32).max)
        except InvalidInputError as exc:
            raise ModelLoadError(
                f"warm-up inputs {path} do not fit the model: {exc} (save one array per input with "
                "np.savez(path, name=array, ...))",
                model=self.name,
                version=self.version,
            ) from exc
        return arrays

    @property
    def backend(self) -> Backend:
        """This version's backend; built by :meth:`load` when none was given.

        Raises:
            ModelLoadError: :meth:`load` has not built it (it has not run, or it failed before).
        """
        if self._backend is None:
            raise ModelLoadError(
                f"model {self.name!r} version {self.version} is not loaded", model=self.name, version=self.version
            )
        return self._backend

    @property
    def backend_built(self) -> bool:
        """Whether the backend exists: given, or built by :meth:`load` (the version's file was read)."""
        return self._backend is not None

    @property
    def config_warning(self) -> str | None:
        """The keys of its ``remote.toml`` this release left out (see :func:`build_backend`), or None."""
        warning = getattr(self._backend, "config_warning", None)  # (any other backend has none)
        return warning if isinstance(warning, str) else None

    @property
    def providers(self) -> list[str]:
        return [] if self._backend is None else list(self._backend.providers)

    def rows_stay_whole(self) -> bool:
        """Whether the load found, or was told, that this version's rows must never be cut apart: a whole input
        is then one request (a doubt left unchecked because batching is off is no such finding)."""
        reason = self.unbatchable_reason
        return reason is not None and not reason.endswith(_NOT_CHECKED)

    def why_unbatchable(self) -> str | None:
        """Why requests of this version run one per run and whole (found at load, or while serving);
        ``None`` when they may share runs (or the version has not loaded)."""
        batcher = self.batcher
        runtime = None if batcher is None else batcher.unbatchable_reason
        return self.unbatchable_reason or runtime

    def health(self) -> str | None:
        """``None`` when this version's backend can take work; otherwise why it cannot."""
        if self._backend is None:
            return self.error or "not loaded"
        return self._backend.health()

    def drift_observations(self) -> list[tuple[str, float, dict[str, Any]]]:
        """Drift statistics of the last window, for the observable gauges."""
        return [] if self.drift is None else self.drift.observations()

    def memory_observations(self) -> list[tuple[str, float, dict[str, Any]]]:
        """The memory this version took to load, for the ``inprocserve.model.memory`` gauge."""
        if self.memory_bytes is None:
            return []
        return [
            (
                "memory",
                float(self.memory_bytes),
                {"inprocserve.model.name": self.name, "inprocserve.model.version": self.version},
            )
        ]

    def retire(self, *, timeout_s: float | None = None) -> bool:
        """Stop taking requests, finish queued and running ones, then close the backend."""
        self.state = "draining"
        drained = self.batcher.close(timeout_s=timeout_s) if self.batcher is not None else True
        if self._backend is not None:
            self._backend.close()  # (stops the runs still in flight, if the wait above gave up on them)
            if not drained and self.batcher is not None:
                self.batcher.wait_until_idle(_STOPPED_RUNS_END_S)
            give_back_freed_memory()
        self.state = "unloaded"
        return drained

    def status(self) -> dict[str, Any]:
        """This version's facts for :meth:`Server.status`. ``backend`` names the backend's kind, ``health``
        is ``None`` or why the backend cannot take work, ``backend_status`` its own facts; the onnxruntime
        facts are also at the top level, as they always were."""
        batcher = self.batcher
        backend = self._backend
        facts = {} if backend is None else backend.status()
        return {
            "state": self.state,
            "path": str(self.path),
            "error": self.error,
            "backend": None if backend is None else backend.kind,
            "health": self.health(),
            "backend_status": facts,
            "providers": self.providers,
            "pool_size": self.config.pool.size,
            "intra_op_threads": facts.get("intra_op_threads"),
            "shared_session": facts.get("shared_session"),
            "io_binding": facts.get("io_binding"),
            "batchable": None if self.signature is None else self.why_unbatchable() is None,
            "unbatchable_reason": self.why_unbatchable(),
            "max_batch_size": self.config.batching.max_batch_size,
            "max_batch_rows": self.max_batch_rows,
            "max_delay_s": None if batcher is None else batcher.max_delay_s,
            "max_delay_ms": None if batcher is None else round(batcher.max_delay_s * 1000, 3),
            "run_cost_ms": self._run_cost_status(),
            "batches_run": 0 if batcher is None else batcher.batches_run,
            "rows_run": 0 if batcher is None else batcher.rows_run,
            "queued_rows": 0 if batcher is None else batcher.queued_rows,
            "in_flight": 0 if batcher is None else batcher.in_flight,
            "loaded_at": self.loaded_at,
            "memory_bytes": self.memory_bytes,
            "signature": None if self.signature is None else self.signature.to_dict(),
            "input_bounds": {name: {"min": each.min, "max": each.max} for name, each in self.config.inputs.items()},
            "drift": None if self.drift is None else self.drift.status(),
            "cache": None if self.cache is None else self.cache.status(),
            "latency_ms": self.latency.snapshot(),
            "batch_size": None if batcher is None else batcher.batch_sizes.snapshot(max_rows=self.max_batch_rows),
        }


_Found = TypeVar("_Found")


class _Inconclusive(Exception):
    """The load's check that a row's answer is its own could not be made (the message says why)."""


def _compared(check: Callable[[], _Found]) -> _Found:
    """``check()`` of answers to made-up rows; an error of answers of a kind the comparison does not foresee
    is :class:`_Inconclusive` (nothing shown), unless a signal handler raised it (the caller's task stopped by
    its time limit as the load compared them: its own exception)."""
    try:
        return check()
    except Exception as exc:
        if raised_by_signal_handler(exc):
            raise
        raise _Inconclusive(f"its answers to made-up rows could not be compared: {exc!r}") from exc


def _stacked(first: dict[str, np.ndarray], second: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The one-row requests ``first`` and ``second`` as one run of two rows (each input one new array)."""
    return stack_inputs([first, second], list(first))


def _row(stacked: dict[str, np.ndarray], row: int, *, copy: bool = False) -> dict[str, np.ndarray]:
    """Row ``row`` of ``stacked`` as a one-row request: views of its arrays, or copies."""
    return {name: array[row : row + 1].copy() if copy else array[row : row + 1] for name, array in stacked.items()}


def _holds(dtype: np.dtype[Any], value: float) -> bool:
    """Whether an integer or bool ``dtype`` holds ``value`` exactly."""
    if not math.isfinite(value) or value != int(value):
        return False
    if dtype.kind == "b":
        return value in (0, 1)
    limits = np.iinfo(dtype)
    return limits.min <= value <= limits.max
