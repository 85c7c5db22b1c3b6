"""The Server facade: loads models, routes each request to a version, and owns every model's lifecycle."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import _fork
from ._batching import Request, VersionRetiredError, finish_detached, handoff_cost_s
from ._config import ModelConfig, RolloutConfig, load_model_config
from ._control import Control, ControlFile, ModelControl, switched, validate_percent, validate_version, worker_identity
from ._deadlines import check_timeout
from ._errors import (
    ConfigurationError,
    DeadlineExceededError,
    InprocserveError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    OverloadedError,
    PromotionRefusedError,
    ServerClosedError,
)
from ._flags import FlagProvider
from ._loop_batching import apredict as _loop_apredict
from ._model import ModelVersion
from ._prediction import Prediction, RequestIds
from ._prefork import shield_exit
from ._repository import MODEL_FILENAME, ModelSource, scan_repository, validate_model_name
from ._request import Route
from ._rollout import Decision, FlagReader, Router
from ._scoring import plan_scoring, score
from ._sessions import onnxruntime_version
from ._shadow import ShadowComparison, ShadowRunner, compare_outputs
from ._signature import incompatibilities
from ._telemetry import METRICS, end_request_span, metering, outcome, start_request_span
from .web import Readiness, readiness

__all__ = ["Server"]

logger = logging.getLogger(__name__)

_RETRIES_ON_RETIRED = 3


@dataclass(frozen=True, slots=True)
class _Routes:
    """An immutable snapshot of one model's servable versions; replaced whole, read without a lock."""

    default: ModelVersion
    versions: Mapping[int, ModelVersion]
    router: Router


@dataclass(frozen=True, slots=True)
class InterleavedRanking:
    """An interleaved result list: item indices (rows of the inputs) in display order, and for each
    position the ranker ("A" or "B") that contributed it."""

    request_id: str
    model: str
    rankers: tuple[int, int]
    order: list[int]
    teams: list[str]


@dataclass(slots=True)
class _Failure:
    error: str
    stamp: tuple[int, int] | None  # (mtime_ns, size) of the file that failed, to retry only when it changes


class Server:
    """Serves ONNX models inside this process.

    Thread-safe: call :meth:`predict`, :meth:`submit` and :meth:`apredict` from any number of threads or
    event loops. Lifecycle calls (:meth:`load`, :meth:`unload`, :meth:`refresh`, :meth:`close`) are
    serialized internally and never block requests to versions they do not touch.

    Args:
        repository: A folder laid out as ``<model>/<version>/model.onnx``; every model found is loaded.
            ``None`` starts empty (use :meth:`load`).
        config: Defaults for every model; a model's ``config.toml`` is laid over them.
        models: Per-model configuration in code (name -> ``ModelConfig``), laid over ``config.toml`` field
            by field: the settings whose value differs from the library default override the file, the
            others keep the file's (or ``config``'s) value. See ``ModelConfig.overlaid``.
        poll_interval_s: If set, a background thread calls :meth:`refresh` this often (hot reload).
        control_interval_s: How often a background thread re-reads the repository's control file (the
            fleet-wide rollout state, see :meth:`switch`); every worker follows a change within this bound
            plus the load time of a version it has not loaded yet. ``None`` disables watching.
        shadow_budget: Largest share of wall-clock time shadow runs may take (0.02: 20 ms a second);
            shadow copies beyond it are dropped and counted, so shadows use spare capacity only.
        follow_symlinks: Accept model folders, version folders, model files and external-data files that
            are symbolic links (refused by default; see docs/repository.md, "Integrity").
        clock: A monotonic clock (tests may step a manual one).

    Raises:
        ConfigurationError: the repository is not a folder, or a ``config.toml`` is invalid.
        ModelLoadError: a model could not be loaded at start-up (``strict=True`` only).
    """

    def __init__(
        self,
        repository: str | Path | None = None,
        *,
        config: ModelConfig | None = None,
        models: Mapping[str, ModelConfig] | None = None,
        poll_interval_s: float | None = None,
        strict: bool = False,
        flags: FlagProvider | None = None,
        flag_timeout_s: float = 0.05,
        on_shadow: Callable[[ShadowComparison], None] | None = None,
        shadow_queue: int = 256,
        control_interval_s: float | None = 0.5,
        shadow_budget: float = 0.02,
        clock: Callable[[], float] = time.monotonic,
        follow_symlinks: bool = False,
    ) -> None:
        if control_interval_s is not None and not control_interval_s > 0:
            raise ConfigurationError(f"control_interval_s must be > 0, got {control_interval_s}")
        if poll_interval_s is not None and not poll_interval_s > 0:
            raise ConfigurationError(f"poll_interval_s must be > 0, got {poll_interval_s}")
        if poll_interval_s is not None and repository is None:
            raise ConfigurationError("poll_interval_s needs a repository to poll")
        self._repository = None if repository is None else Path(repository)
        self._defaults = config or ModelConfig()
        self._code_configs = dict(models or {})
        self._clock = clock
        self._follow_symlinks = follow_symlinks
        self._ids = RequestIds()
        self._routes: dict[str, _Routes] = {}
        self._loaded: dict[str, dict[int, ModelVersion]] = {}
        self._failures: dict[str, dict[int, _Failure]] = {}
        self._config_errors: dict[str, str] = {}
        self._explicit: set[str] = set()  # loaded with load(path=...): refresh() leaves them alone
        self._unloaded: set[str] = set()  # unloaded by hand: refresh() does not bring them back
        self._unloaded_versions: dict[str, set[int]] = {}  # versions unloaded by hand, likewise
        # Versions held back from the default by the compatibility gate, and why (per model).
        self._incompatible: dict[str, dict[int, list[str]]] = {}
        self._lifecycle = threading.RLock()
        self._closed = False
        self._poll_interval_s = poll_interval_s
        self._poller: threading.Thread | None = None
        self._stop_polling = threading.Event()
        if flags is not None and not isinstance(flags, FlagProvider):
            raise TypeError(f"flags must implement inprocserve.FlagProvider, got {type(flags).__name__}")
        self._flags = None if flags is None else FlagReader(flags, timeout_s=flag_timeout_s, clock=clock)
        self._attribute_cache: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._gauge_source = _gauge_source(weakref.ref(self))
        METRICS.add_source(self._gauge_source)
        self._routers: dict[str, Router] = {}  # kept across reloads: experiment statistics survive them
        self._latest: dict[str, int] = {}  # the highest version the policy selects (the default stable)
        self._shadow = ShadowRunner(max_queued=shadow_queue, on_result=on_shadow, budget=shadow_budget)
        # Fleet-wide rollout state: the repository's control file, or this process alone without one.
        self._control_file = None if self._repository is None else ControlFile(self._repository)
        self._control = Control()
        self._control_error: str | None = None
        self._control_interval_s = None if self._repository is None else control_interval_s
        self._watcher: threading.Thread | None = None
        # At interpreter exit (or garbage collection) of a server nobody closed: stop its threads before
        # the interpreter finalizes, while onnxruntime may still be running on them.
        self._finalizer = weakref.finalize(self, _close_versions, self._loaded, self._shadow)
        shield_exit()  # an exiting worker finishes closing its sessions even if its master sends SIGTERM
        _fork.register(self)
        if self._repository is not None:
            self._control = self._read_control() or self._control  # the first load already follows it
            problems = self.refresh()
            if strict and problems:
                raise ModelLoadError("; ".join(problems))
        self._start_poller()
        self._start_watcher()

    # -- requests ------------------------------------------------------------------------------------------

    def predict(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None = None,
        context: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        """Run ``model`` on ``inputs`` and wait for the answer.

        Args:
            model: The model name.
            inputs: Input name -> array-like with a leading batch axis (a bare array for one-input models).
            version: Pin a version; ``None`` lets the server choose (the latest ready version).
            context: Request attributes for routing decisions (for example ``{"user_id": ...}``).
            timeout_s: The request's deadline, in seconds from now: a request still queued then is never
                run, and one running then is stopped by onnxruntime (inline or on a worker), so control
                returns within the deadline plus the operator running at that moment. ``None``,
                ``math.inf`` or anything >= 1e6 s: no deadline.

        Raises:
            ValueError: ``timeout_s`` is NaN, zero or negative (``TypeError`` if it is not a number).
            ModelNotFoundError: unknown model or version.
            InvalidInputError: the inputs do not match the model's signature.
            OverloadedError: the queue is full.
            DeadlineExceededError: no answer within ``timeout_s``.
            InferenceError: onnxruntime failed on this request.
            ServerClosedError: the server is closed.
        """
        request, target = self._dispatch(model, inputs, version, context, timeout_s, None, inline=True)
        batcher = target.batcher
        assert batcher is not None
        try:
            batcher.wait(request)
        except DeadlineExceededError as exc:
            self._finish(request, exc)
            raise
        self._finish(request, request.error)
        if request.error is not None:
            raise request.error
        if request.route.shadows:
            self._offer_shadows(request, target)
        if target.drift is not None:
            target.drift.observe(request.arrays, request.outputs, request.rows)  # type: ignore[arg-type]
        return _prediction(request)

    def submit(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None = None,
        context: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Future[Prediction]:
        """Like :meth:`predict`, but return at once with a ``concurrent.futures.Future``.

        Every library error (including invalid input) is delivered through the future. Cancelling the
        future before its batch runs drops the request.
        """
        future: Future[Prediction] = Future()
        try:
            self._dispatch(model, inputs, version, context, timeout_s, future, inline=False)
        except InprocserveError as exc:
            future.set_exception(exc)
        return future

    async def apredict(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None = None,
        context: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> Prediction:
        """Like :meth:`predict`, for asyncio code: the answer is delivered on the caller's event loop.

        Requests of many tasks on one loop are queued together and answered with one wake of the loop per
        batch (docs/batching.md, "Async callers"). Cancelling the awaiting task drops the request if it has
        not started running.
        """
        limit = check_timeout(timeout_s)  # inf and huge values mean no deadline, for the loop's timer too
        return await _loop_apredict(self, model, inputs, version=version, context=context, timeout_s=limit)

    def predict_many(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None = None,
        context: Mapping[str, Any] | None = None,
        batch_rows: int | None = None,
        max_in_flight: int | None = None,
        progress: bool | Callable[[int, int | None], None] | None = None,
        timeout_s: float | None = None,
    ) -> Iterator[Prediction]:
        """Score many rows for offline jobs and queue consumers; yield the answers in input order.

        ``inputs`` is either a whole input (an array, or input name -> array), cut into chunks of
        ``batch_rows`` rows (default: the version's ``max_batch_size``) with one :class:`Prediction` per
        chunk; or an iterable of batches (arrays or mappings), read lazily, with one :class:`Prediction` per
        batch (a batch larger than a chunk is sent in parts and joined back). A bounded window is kept
        submitted (default: two full batches of rows per session; ``max_in_flight``: at most that many
        requests; never more rows than ``max_queue_rows``) so the sessions stay busy without
        :class:`QueueFullError`; when other traffic fills the queue a chunk is retried. Each chunk is routed
        like a :meth:`predict` call: pin ``version`` to score a whole job on one version. Closing the
        iterator early (``break``, an exception) cancels the chunks still queued.

        Thread-safe like :meth:`submit`; the returned iterator belongs to the thread that iterates it.

        Args:
            progress: ``True``: a progress bar on stderr when it is a terminal; a callable: called with
                ``(done_rows, total_rows)`` after each answer (``total_rows`` is ``None`` for an iterator).
            timeout_s: A deadline for each chunk.

        Raises:
            ModelNotFoundError: unknown model or version (at once).
            ValueError, TypeError: bad arguments (at once).
            InvalidInputError: a whole input whose arrays disagree on their number of rows (at once).
            InprocserveError: a chunk failed; raised when iteration reaches it, after the answers before
                it, with a note naming its rows. Nothing after it is submitted.
        """
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        routes = self._routes.get(model)
        target = None if routes is None else routes.default if version is None else routes.versions.get(version)
        if target is None:
            raise self._not_found(model, version)
        batching = target.config.batching
        plan = plan_scoring(
            max_batch_size=batching.max_batch_size,
            request_row_limit=batching.request_row_limit,
            max_queue_rows=batching.max_queue_rows,
            sessions=target.config.pool.size,
            batchable=target.signature is None or target.signature.batchable,
            batch_rows=batch_rows,
            max_in_flight=max_in_flight,
        )

        def submit(chunk: Any) -> Future[Prediction]:
            return self.submit(model, chunk, version=version, context=context, timeout_s=timeout_s)

        return score(submit, inputs, plan, progress=progress, timeout_s=timeout_s)

    def _dispatch(
        self,
        model: str,
        inputs: Any,
        version: int | None,
        context: Mapping[str, Any] | None,
        timeout_s: float | None,
        future: Future[Prediction] | None,
        *,
        inline: bool,
    ) -> tuple[Request, ModelVersion]:
        if timeout_s is not None:
            timeout_s = check_timeout(timeout_s)
        started = time.perf_counter()
        span = start_request_span(model)
        deadline = None if timeout_s is None else self._clock() + timeout_s
        decision: Decision | None = None
        target: ModelVersion | None = None
        try:
            for _ in range(_RETRIES_ON_RETIRED):
                routes, target, decision = self._route(model, version, context)
                signature = target.signature
                assert signature is not None and target.batcher is not None
                try:
                    arrays, rows = signature.validate(
                        inputs, max_rows=target.max_request_rows, reject_nan=target.reject_nan
                    )
                except InvalidInputError as exc:  # name the model: the caller may serve several
                    raise InvalidInputError(
                        f"model {target.name!r} version {target.version}: {exc.message}",
                        model=target.name,
                        version=target.version,
                    ) from None
                request_id = self._ids.next()
                shadows = [routes.versions[v] for v in decision.shadows if v in routes.versions]
                route = Route(
                    target.name, target.version, decision.variant, decision.reason, request_id, shadows, decision
                )
                request = Request(arrays, rows, route, deadline, future)
                request.span = span
                request.started = started
                if target.cache is not None and self._answered_by_cache(target, request):
                    routes.router.served(request_id, decision, arrays)
                    return request, target
                try:
                    target.batcher.submit(request, run_inline=inline)
                except VersionRetiredError as exc:
                    self._release_followers(target, request, exc)
                    continue  # the version was replaced between routing and queueing: route again
                except BaseException as exc:
                    self._release_followers(target, request, exc)
                    raise
                routes.router.served(request_id, decision, arrays)
                return request, target
            raise ModelNotFoundError(f"model {model!r} is being unloaded", model=model, version=version)
        except BaseException as exc:  # refused before it was queued: close its telemetry, then raise
            self._refused(span, started, model, target, decision, exc)
            raise

    @staticmethod
    def _release_followers(target: ModelVersion, request: Request, error: BaseException) -> None:
        """A cache leader refused before it ran must not leave identical requests waiting for it."""
        if request.cache_key is not None and target.cache is not None:
            target.cache.finish(request.cache_key, None, error)
            request.cache_key = None

    def _answered_by_cache(self, target: ModelVersion, request: Request) -> bool:
        """Serve a request from the version's cache, or make it follow an identical one in flight; else
        mark it the leader whose answer the cache will keep. Returns whether it needs no run of its own."""
        cache = target.cache
        assert cache is not None
        key = cache.key(request.arrays)
        outputs, pending, leader = cache.lookup(key)
        attributes = self._metric_attributes(target.name, target.version)
        if outputs is not None:
            METRICS.cache.add(1, {**attributes, "inprocserve.cache.result": "hit"})
            finish_detached(request, outputs, None, self._deliver)
            return True
        if not leader:
            assert pending is not None
            METRICS.cache.add(1, {**attributes, "inprocserve.cache.result": "shared"})
            pending.add_done_callback(
                lambda done: finish_detached(
                    request, None if done.exception() else done.result(), done.exception(), self._deliver
                )
            )
            return True
        METRICS.cache.add(1, {**attributes, "inprocserve.cache.result": "miss"})
        request.cache_key = key
        return False

    def _refused(
        self,
        span: Any,
        started: float,
        model: str,
        target: ModelVersion | None,
        decision: Decision | None,
        error: BaseException,
    ) -> None:
        version = None if target is None else target.version
        variant = None if decision is None else decision.variant
        end_request_span(
            span,
            version=version,
            variant=variant,
            reason=None if decision is None else decision.reason,
            rows=0,
            queue_wait_s=None,
            batch=None,
            flags=() if decision is None else decision.flags,
            provider=None if decision is None else decision.provider,
            error=error,
        )
        if isinstance(model, str):
            attributes = self._metric_attributes(model, version, variant, error, finished=True)
            METRICS.request_duration.record(time.perf_counter() - started, attributes)
            if isinstance(error, OverloadedError):
                METRICS.shed.add(1, self._metric_attributes(model, version))

    def _finish(self, request: Request, error: BaseException | None) -> None:
        """Close the request's span and record its metrics (on whichever thread finished it)."""
        route = request.route
        model, version, variant, reason = route.model, route.version, route.variant, route.reason
        if request.cache_key is not None:  # the leader of identical requests: keep its answer, free them
            routes = self._routes.get(model)
            target = None if routes is None else routes.versions.get(version)
            if target is not None and target.cache is not None:
                target.cache.finish(request.cache_key, request.outputs if error is None else None, error)
            request.cache_key = None
        serving = self._routes.get(model)
        finished = None if serving is None else serving.versions.get(version)
        if finished is not None:  # latency percentiles in status(), with or without an OpenTelemetry SDK
            finished.latency.record(time.perf_counter() - request.started, failed=error is not None)
        decision = route.decision
        end_request_span(
            request.span,
            version=version,
            variant=variant,
            reason=reason,
            rows=request.rows,
            queue_wait_s=request.queue_wait_s if request.batch is not None else None,
            batch=request.batch,
            flags=decision.flags,
            provider=decision.provider,
            error=error,
        )
        if not metering():
            return
        METRICS.request_duration.record(
            time.perf_counter() - request.started,
            self._metric_attributes(model, version, variant, error, finished=True),
        )
        if request.enqueued_at:  # requests run at once on their caller's thread never queued
            METRICS.queue_wait.record(request.queue_wait_s, self._metric_attributes(model, version))
        if isinstance(error, DeadlineExceededError):
            METRICS.deadlines.add(1, self._metric_attributes(model, version))

    def _metric_attributes(
        self,
        model: str,
        version: int | None,
        variant: str | None = None,
        error: BaseException | None = None,
        *,
        finished: bool = False,
    ) -> dict[str, Any]:
        """Metric attributes; a finished request's also carry its outcome, and error.type if it failed."""
        error_type = None if error is None else type(error).__name__
        key = (model, version, variant, finished, error_type)
        attributes = self._attribute_cache.get(key)
        if attributes is None:
            attributes = {"inprocserve.model.name": model}
            if version is not None:
                attributes["inprocserve.model.version"] = version
            if variant is not None:
                attributes["inprocserve.rollout.variant"] = variant
            if finished:
                attributes["inprocserve.outcome"] = outcome(error)
            if error_type is not None:
                attributes["error.type"] = error_type  # semantic convention: the exception's class
            if len(self._attribute_cache) < 10_000:  # bounded: model x version x variant x error class
                self._attribute_cache[key] = attributes
        return attributes

    def _route(
        self, model: str, version: int | None, context: Mapping[str, Any] | None
    ) -> tuple[_Routes, ModelVersion, Decision]:
        routes = self._routes.get(model)
        if routes is None:
            raise self._not_found(model, version)
        if version is None:
            decision = routes.router.decide(routes.versions, routes.default.version, context)
            return routes, routes.versions.get(decision.version) or routes.default, decision
        target = routes.versions.get(version)
        if target is None:
            raise self._not_found(model, version)
        return routes, target, Decision(version, "pinned", "version requested by caller")

    def _offer_shadows(self, request: Request, target: ModelVersion) -> None:
        assert request.outputs is not None
        self._shadow.offer(
            target.name,
            request.route.request_id,
            request.arrays,
            request.rows,
            request.outputs,
            target,
            request.route.shadows,
            primary_span=request.span,
        )

    def _deliver(self, request: Request) -> None:
        """Resolve a ``submit`` future (runs on the thread that finished the request), then shadow it."""
        future = request.future
        assert future is not None
        self._finish(request, request.error)
        try:
            if request.error is not None:
                future.set_exception(request.error)
            else:
                future.set_result(_prediction(request))
        except InvalidStateError:  # cancelled by its caller meanwhile
            return
        if request.error is None and request.outputs is not None:
            routes = self._routes.get(request.route.model)
            target = None if routes is None else routes.versions.get(request.route.version)
            if target is not None and target.drift is not None:
                target.drift.observe(request.arrays, request.outputs, request.rows)
        if request.error is None and request.route.shadows:
            target = (
                self._routes[request.route.model].versions.get(request.route.version)
                if request.route.model in self._routes
                else None
            )
            if target is not None:
                self._offer_shadows(request, target)

    def _not_found(self, model: object, version: object) -> Exception:
        if not isinstance(model, str):  # checked only on this slow path, to keep predict cheap
            return TypeError(f"model must be a str, got {type(model).__name__}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            return TypeError(f"version must be an int or None, got {type(version).__name__}")
        if self._closed:
            return ServerClosedError("the server is closed", model=model, version=version)
        routes = self._routes.get(model)
        if routes is None:
            known = ", ".join(sorted(self._routes)) or "none"
            failure = self._failures.get(model)
            hint = f"; it failed to load: {next(iter(failure.values())).error}" if failure else ""
            return ModelNotFoundError(f"unknown model {model!r} (servable models: {known}){hint}", model=model)
        versions = ", ".join(map(str, sorted(routes.versions)))
        return ModelNotFoundError(
            f"model {model!r} has no servable version {version} (servable: {versions})", model=model, version=version
        )

    # -- rollouts ------------------------------------------------------------------------------------------

    def _routes_of(self, model: str) -> _Routes:
        routes = self._routes.get(model)
        if routes is None:
            raise self._not_found(model, None)
        return routes

    def _serving(self, model: str, version: int) -> _Routes:
        """With the lifecycle lock held: make sure ``version`` is loaded, warmed up and routable."""
        self._check_open()
        routes = self._routes.get(model)
        if routes is None or version not in routes.versions:
            self.load(model, version=version)
        return self._routes_of(model)

    def record_outcome(
        self, request_id: str | None, reward: float, *, model: str | None = None, key: str | None = None
    ) -> str | None:
        """Attribute an outcome (a click, a conversion, a reward in [0, 1] for bandits) to the variant
        that served ``request_id`` — or, with ``model`` and ``key``, to the variant that targeting key is
        bucketed to. Returns the variant credited, or ``None`` if the request is unknown (or too old).

        Outcomes feed the per-variant statistics in :meth:`status` and the bandit policies.
        """
        if not isinstance(reward, int | float) or isinstance(reward, bool):
            raise TypeError(f"reward must be a number, got {type(reward).__name__}")
        names = [model] if model is not None else list(self._routes)
        for name in names:
            routes = self._routes_of(name)
            variant = routes.router.record_outcome(
                request_id, reward, key if model is not None else None, routes.default.version, routes.versions
            )
            if variant is not None:
                return variant
        return None

    def switch(self, model: str, version: int, *, actor: str | None = None, force: bool = False) -> None:
        """Blue/green: make ``version`` the stable version of ``model`` on every worker and host.

        The version is loaded and warmed up here first (a version that cannot load is never published);
        then, with a repository, the change is written to its control file, which every server on that
        repository follows within ``control_interval_s`` (see docs/operations.md, "Running a fleet").
        Without a repository it changes this process only. :meth:`rollback` returns to the previous one.

        A version whose signature would break the callers of the stable version (renamed, added or removed
        inputs, removed outputs, other dtypes, ranks or fixed sizes) is refused unless ``force=True``.

        Args:
            model: The model name.
            version: The version to serve.
            actor: Who made the change, recorded in the control file (default: user@host:pid).
            force: Switch even to a version whose signature is incompatible with the stable one.

        Raises:
            ModelNotFoundError: the version is not in the repository (or not loaded, without one).
            ModelLoadError: it cannot be loaded.
            ConfigurationError: the control file is invalid or cannot be written.
            PromotionRefusedError: the signatures are incompatible and ``force`` is not set; the differences
                are in the message and in ``report["incompatibilities"]``.
        """
        validate_version(version)
        with self._lifecycle:
            routes = self._serving(model, version)
            if not force:
                self._refuse_if_incompatible(routes, model, version)
            self._incompatible.get(model, {}).pop(version, None)  # the operator accepted its signature
            self._change_control(model, lambda state: switched(state, version), actor)
            logger.info("model %r: stable version is now %s", model, version)

    @staticmethod
    def _refuse_if_incompatible(routes: _Routes, model: str, version: int) -> None:
        stable = routes.router.stable_version(routes.versions, routes.default.version)
        if stable == version:
            return
        current, target = routes.versions[stable].signature, routes.versions[version].signature
        assert current is not None and target is not None
        problems = incompatibilities(current, target)
        if problems:
            report = {"model": model, "from": stable, "to": version, "incompatibilities": problems}
            raise PromotionRefusedError(
                f"model {model!r} version {version} is not compatible with version {stable}, which serves now: "
                f"{'; '.join(problems)}; pass force=True to switch anyway",
                report=report,
                model=model,
                version=version,
            )

    def rollback(self, model: str, *, actor: str | None = None) -> int:
        """Switch ``model`` back to the stable version it had before the last :meth:`switch`; returns it.

        Rolling back twice returns to where you started (the version rolled back from becomes the previous).
        It is never refused for an incompatible signature: it returns to a version that served before.

        Raises:
            ValueError: no switch of this model was recorded, so there is nothing to roll back to.
            ModelNotFoundError, ModelLoadError, ConfigurationError: as :meth:`switch`.
        """
        previous = self._current_control().models.get(model, ModelControl()).previous_stable
        if previous is None:
            raise ValueError(f"model {model!r} has no previous stable version to roll back to (no switch recorded)")
        self.switch(model, previous, actor=actor, force=True)  # back to what served before: never refused
        return previous

    def set_canary(self, model: str, version: int | None, *, percent: float, actor: str | None = None) -> None:
        """Send ``percent`` % of targeting keys (sticky buckets) to ``version``, on every worker and host.

        It replaces the model's configured strategy while set; ``version=None`` removes it (the model's
        configured rollout applies again). Raising the percentage keeps the keys already in the canary.

        Raises:
            ValueError: ``percent`` is not in 0..100, or ``version`` is not a positive int.
            ModelNotFoundError, ModelLoadError, ConfigurationError: as :meth:`switch`.
        """
        share = validate_percent(percent)
        with self._lifecycle:
            if version is None:
                self._known(model)
            else:
                validate_version(version)
                self._serving(model, version)

            def change(state: ModelControl) -> ModelControl:
                if version is None:
                    return dataclasses.replace(state, canary_version=None, canary_percent=0.0)
                return dataclasses.replace(state, canary_version=version, canary_percent=share)

            self._change_control(model, change, actor)
            logger.info("model %r: canary is now %s at %g%%", model, version, share)

    def kill(self, model: str, *, actor: str | None = None) -> None:
        """Kill switch: every request to ``model`` gets its stable version, on every worker and host, whatever
        the configured strategy or a flag provider says (no canary, A/B, bandit or shadow). Undo with
        :meth:`resume`.

        Raises:
            ModelNotFoundError: unknown model. ConfigurationError: the control file cannot be written.
        """
        self._set_kill(model, killed=True, actor=actor)

    def resume(self, model: str, *, actor: str | None = None) -> None:
        """Turn the kill switch of ``model`` off again (see :meth:`kill`)."""
        self._set_kill(model, killed=False, actor=actor)

    def reload(self, *, actor: str | None = None) -> list[str]:
        """Re-scan the repository on every worker and host (a fleet-wide :meth:`refresh`); returns the
        problems this process found. The others follow within ``control_interval_s`` plus their load time.
        """
        if self._control_file is None:
            return self.refresh()
        with self._lifecycle:
            self._check_open()
            return self._adopt(self._control_file.bump_reload(actor=actor))

    def sync_control(self) -> int:
        """Follow the control file now (the watcher thread calls this every ``control_interval_s``);
        returns the revision this server follows. An invalid file is logged and shown in :meth:`status`,
        and the last valid revision stays in force."""
        control = self._read_control()
        if control is None or control.revision == self._control.revision:
            return self._control.revision
        with self._lifecycle:
            # Read again under the lock: a revision read before a writer of this process took the lock
            # may be older than the one it wrote and adopted, and adopting it would flip back for one interval.
            control = self._read_control()
            if control is not None and not self._closed and control.revision != self._control.revision:
                self._adopt(control)
            return self._control.revision

    def _adopt(self, control: Control) -> list[str]:
        """With the lifecycle lock held: make ``control`` the state this server follows, and apply every
        model whose state changed (all of them, re-scanning the repository, on a new reload revision)."""
        previous, self._control = self._control, control
        logger.info(
            "following control revision %d (by %s at %s)", control.revision, control.updated_by, control.updated_at
        )
        if control.reload != previous.reload:
            return self.refresh()
        for name in sorted(set(control.models) | set(previous.models)):
            if control.models.get(name) != previous.models.get(name):
                self._follow(name)
        return []

    def _set_kill(self, model: str, *, killed: bool, actor: str | None) -> None:
        with self._lifecycle:
            self._known(model)
            self._change_control(model, lambda state: dataclasses.replace(state, kill=killed), actor)
            logger.info("model %r: kill switch %s", model, "on" if killed else "off")

    def _known(self, model: str) -> None:
        self._check_open()
        validate_model_name(model)
        if model not in self._loaded:
            self._find_in_repository(model)

    def _current_control(self) -> Control:
        if self._control_file is None:
            return self._control
        return self._control_file.read()

    def _change_control(self, model: str, change: Callable[[ModelControl], ModelControl], actor: str | None) -> None:
        """With the lifecycle lock held: write the change (to the file with a repository), then follow it."""
        if self._control_file is not None:
            control = self._control_file.set_model(model, change, actor=actor)
        else:
            state = change(self._control.models.get(model) or ModelControl())
            control = dataclasses.replace(
                self._control, revision=self._control.revision + 1, models={**self._control.models, model: state}
            )
        self._adopt(control)  # also applies what other writers changed since this server last looked

    def _follow(self, name: str) -> None:
        """With the lifecycle lock held: load what the control state of ``name`` needs, then publish it."""
        state = self._control.models.get(name)
        if state is not None and self._repository is not None and not {name} & (self._explicit | self._unloaded):
            for number in sorted(state.versions - set(self._loaded.get(name, {}))):
                try:
                    self.load(name, version=number)
                except (ModelNotFoundError, ModelLoadError) as exc:
                    logger.error(
                        "model %r: control revision %d names version %s: %s", name, self._control.revision, number, exc
                    )
        if name in self._loaded:
            self._publish(name)

    def _control_versions(self, name: str) -> set[int]:
        state = self._control.models.get(name)
        return set() if state is None else state.versions

    def _read_control(self) -> Control | None:
        if self._control_file is None:
            return None
        try:
            control = self._control_file.read()
        except ConfigurationError as exc:
            if str(exc) != self._control_error:
                logger.error("%s; revision %d stays in force", exc, self._control.revision)
            self._control_error = str(exc)
            return None
        self._control_error = None
        return control

    def _start_watcher(self) -> None:
        if self._control_interval_s is None or self._closed:
            return
        self._watcher = threading.Thread(target=self._watch, name="inprocserve-control", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self._control_interval_s is not None
        while not self._stop_polling.wait(self._control_interval_s):
            try:
                self.sync_control()
            except Exception:  # the watcher must survive anything the file system throws at it
                logger.exception("following the control file failed")

    def promote(
        self,
        model: str,
        version: int,
        *,
        max_abs_diff: float | None = None,
        min_label_agreement: float | None = None,
        min_samples: int = 1,
    ) -> dict[str, Any]:
        """Guarded promotion: make ``version`` stable only if it agrees with the serving version.

        The candidate is loaded and warmed up on recent real inputs (kept per model, see
        ``RolloutConfig.capture_inputs``); its answers are compared with the stable version's, and the
        switch happens only if the largest absolute difference and the argmax agreement are within the
        given bounds. Returns the comparison report.

        Raises:
            PromotionRefusedError: the candidate's signature is incompatible with the stable version's
                (use :meth:`switch` with ``force=True``), the comparison failed a bound, or there were fewer
                than ``min_samples`` recent inputs; the report is on the exception, and nothing was switched.
        """
        with self._lifecycle:
            routes = self._serving(model, version)
            self._refuse_if_incompatible(routes, model, version)  # its answers could not even be compared
            stable = routes.router.stable_version(routes.versions, routes.default.version)
            samples = list(routes.router.recent)
            report: dict[str, Any] = {"model": model, "from": stable, "to": version, "samples": len(samples)}
            if len(samples) < min_samples:
                report["reason"] = f"only {len(samples)} recent input(s) to compare on, {min_samples} required"
                raise PromotionRefusedError(report["reason"], report=report, model=model, version=version)
            diffs, agreements = [], []
            for arrays in samples:
                expected = self.predict(model, arrays, version=stable)
                got = self.predict(model, arrays, version=version)
                diff, agreement = compare_outputs(expected, got)
                if diff is not None:
                    diffs.append(diff)
                if agreement is not None:
                    agreements.append(agreement)
            report["max_abs_diff"] = max(diffs) if diffs else None
            report["label_agreement"] = sum(agreements) / len(agreements) if agreements else None
            problems = []
            if (
                max_abs_diff is not None
                and report["max_abs_diff"] is not None
                and report["max_abs_diff"] > max_abs_diff
            ):
                problems.append(f"max abs diff {report['max_abs_diff']:.3g} > {max_abs_diff:g}")
            agreement_seen = report["label_agreement"]
            if min_label_agreement is not None and agreement_seen is not None and agreement_seen < min_label_agreement:
                problems.append(f"label agreement {agreement_seen:.3f} < {min_label_agreement:g}")
            if problems:
                report["reason"] = "; ".join(problems)
                logger.warning("model %r: promotion of version %s refused: %s", model, version, report["reason"])
                raise PromotionRefusedError(
                    f"promotion of model {model!r} version {version} refused: {report['reason']}",
                    report=report,
                    model=model,
                    version=version,
                )
            self._change_control(model, lambda state: switched(state, version), None)  # the whole fleet
            report["reason"] = "within bounds"
            logger.info("model %r: promoted version %s over %s (%s)", model, version, stable, report)
            return report

    def interleave(
        self,
        model: str,
        inputs: Any,
        *,
        output: str | None = None,
        length: int | None = None,
        context: Mapping[str, Any] | None = None,
        timeout_s: float | None = None,
    ) -> InterleavedRanking:
        """Team-draft interleaving of two rankers (``RolloutConfig.rankers``, or the ``<model>.rankers``
        flag): both score the same items (one row per item), and the result list mixes their rankings with
        per-item attribution. Report clicks with :meth:`record_click`; wins per ranker are in :meth:`status`.
        """
        routes = self._routes_of(model)
        router = routes.router
        rankers = router.rankers(routes.versions, context)
        if not rankers or len(rankers) != 2:
            raise ConfigurationError(f"model {model!r}: interleaving needs rollout.rankers = [A, B]")
        first = self.submit(model, inputs, version=rankers[0], context=context, timeout_s=timeout_s)
        second = self.submit(model, inputs, version=rankers[1], context=context, timeout_s=timeout_s)
        scores = []
        for answer in (first.result(), second.result()):
            name = output or next(iter(answer))
            scores.append(np.asarray(answer[name], dtype=np.float64).reshape(len(answer[name]), -1)[:, 0])
        ranking_a = [int(i) for i in np.argsort(-scores[0], kind="stable")]
        ranking_b = [int(i) for i in np.argsort(-scores[1], kind="stable")]
        mixed = router.interleave(ranking_a, ranking_b, length)
        request_id = self._ids.next()
        router.remember_interleaving(request_id, mixed)
        return InterleavedRanking(
            request_id=request_id, model=model, rankers=(rankers[0], rankers[1]), order=mixed.order, teams=mixed.teams
        )

    def record_click(self, request_id: str, item: int, *, model: str | None = None) -> str | None:
        """Credit a click on ``item`` (its index in the ranked inputs) of an :meth:`interleave` result to
        the ranker that contributed it. Returns ``"A"``, ``"B"``, or ``None`` if the result is unknown."""
        for name in [model] if model is not None else list(self._routes):
            team = self._routes_of(name).router.record_click(request_id, int(item))
            if team is not None:
                return team
        return None

    # -- lifecycle -----------------------------------------------------------------------------------------

    def load(
        self,
        name: str,
        *,
        path: str | Path | None = None,
        version: int | None = None,
        config: ModelConfig | None = None,
    ) -> int:
        """Load a model version and make it servable; returns the version number.

        With ``path`` (a ``.onnx`` file) no repository is needed; ``version`` defaults to one more than the
        highest loaded. Without ``path`` the model is (re)loaded from the repository per its version policy,
        or just ``version`` if given. A version that fails to load never replaces a working one.

        Raises:
            ModelLoadError: the model cannot be loaded or warmed up.
            ModelNotFoundError: no such model in the repository, or an invalid name.
        """
        validate_model_name(name)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValueError(f"version must be a positive int, got {version!r}")
        with self._lifecycle:
            self._check_open()
            self._unloaded.discard(name)
            if version is None:
                self._unloaded_versions.pop(name, None)
            else:
                self._unloaded_versions.get(name, set()).discard(version)
            if path is None:
                source = self._find_in_repository(name)
                if version is not None and version not in source.versions:
                    raise ModelNotFoundError(
                        f"model {name!r} has no version {version} in the repository", model=name, version=version
                    )
                effective = self._config_for(name, source, config)
                if version is not None:
                    self._load_version(name, version, source.versions[version], effective)
                    self._publish(name)
                    return version
                problems = self._sync_model(name, source, effective)
                if problems:
                    raise ModelLoadError("; ".join(problems), model=name)
                return max(self._routes[name].versions)
            file = Path(path)
            if file.is_dir():
                file = file / MODEL_FILENAME
            if version is None:
                version = max(self._loaded.get(name, {}), default=0) + 1
            self._explicit.add(name)
            code = self._code_configs.get(name)
            effective = config or (self._defaults if code is None else self._defaults.overlaid(code))
            self._load_version(name, version, file, effective)
            loaded = list(self._loaded[name])
            self._latest[name] = self._gate(name, max(loaded), loaded)
            self._publish(name)
            return version

    def unload(self, name: str, version: int | None = None, *, timeout_s: float | None = None) -> None:
        """Stop serving a model (or one version) after its queued and running requests finish.

        What is unloaded by hand stays unloaded across refreshes until it is loaded again. For a model
        from the repository, unloading one version applies the version policy to the remaining versions
        at once: with ``latest`` the next highest version is loaded and warmed up first, then takes over.

        Raises:
            ModelNotFoundError: the model or version is not loaded.
        """
        with self._lifecycle:
            loaded = self._loaded.get(name, {})
            if not loaded or (version is not None and version not in loaded):
                raise ModelNotFoundError(f"model {name!r} version {version} is not loaded", model=name, version=version)
            if version is None:
                self._unloaded.add(name)
                self._retire(name, list(loaded), timeout_s=timeout_s)
                return
            self._unloaded_versions.setdefault(name, set()).add(version)
            source: ModelSource | None = None
            config: ModelConfig | None = None
            if self._repository is not None and name not in self._explicit:
                try:
                    source = scan_repository(self._repository).models.get(name)
                    config = self._config_for(name, source, None) if source is not None else None
                except ConfigurationError as exc:
                    logger.error("model %r: no fallback for the unloaded version %s: %s", name, version, exc)
                    source = None
            if source is None or config is None:
                self._retire(name, [version], timeout_s=timeout_s)
                return
            problems = self._sync_model(name, source, config, timeout_s=timeout_s)
            for problem in problems:
                logger.warning("model %r: after unloading version %s: %s", name, version, problem)
            if version in self._loaded.get(name, {}):  # no other version to fall back to
                self._retire(name, [version], timeout_s=timeout_s)

    def refresh(self) -> list[str]:
        """Re-scan the repository: load new versions, retire removed ones. Returns problems found.

        New versions are loaded and warmed up before they take traffic; removed versions drain first.
        Failures are logged and kept in :meth:`status`; they never interrupt serving.
        """
        if self._repository is None:
            return []
        with self._lifecycle:
            if self._closed:
                return []
            try:
                scan = scan_repository(self._repository, follow_symlinks=self._follow_symlinks)
            except ConfigurationError as exc:
                logger.error("cannot scan the model repository: %s", exc)
                return [str(exc)]
            problems = list(scan.problems)
            for name, source in scan.models.items():
                if name in self._explicit or name in self._unloaded:
                    continue
                try:
                    config = self._config_for(name, source, None)
                except ConfigurationError as exc:
                    self._config_errors[name] = str(exc)
                    problems.append(str(exc))
                    logger.error("model %r not (re)loaded: %s", name, exc)
                    continue
                self._config_errors.pop(name, None)
                problems.extend(self._sync_model(name, source, config))
            for name in list(self._loaded):
                if name not in scan.models and name not in self._explicit:
                    logger.info("model %r is gone from the repository; unloading it", name)
                    self._retire(name, list(self._loaded[name]))
            for name in list(self._failures):
                if name not in scan.models and name not in self._explicit:
                    del self._failures[name]
            for name in list(self._unloaded_versions):
                if name not in scan.models:
                    del self._unloaded_versions[name]
            for problem in scan.problems:
                logger.warning("model repository: %s", problem)
            return problems

    def _sync_model(
        self, name: str, source: ModelSource, config: ModelConfig, *, timeout_s: float | None = None
    ) -> list[str]:
        """Make the loaded versions of ``name`` match its version policy; the lifecycle lock is held.

        A version that fails to load is skipped (until its file changes): the policy is applied again to
        the rest, so a broken new version leaves the working ones serving.
        """
        problems: list[str] = []
        failures = self._failures.setdefault(name, {})
        for number in list(failures):  # forget failures of files that changed or vanished
            path = source.versions.get(number)
            if path is None or _stamp(path) != failures[number].stamp:
                del failures[number]
        router = self._routers.get(name)
        unloaded = self._unloaded_versions.get(name, set())
        while True:
            usable = [v for v in source.versions if v not in failures and v not in unloaded]
            selected = config.version_policy.select(usable)
            # Versions the rollout names (stable alias, canary, arms, shadows) are served whatever the policy.
            extra = (
                config.rollout.referenced_versions
                | self._control_versions(name)
                | ({router.stable_alias} if router and router.stable_alias else set())
            )
            wanted = sorted(set(selected) | {v for v in extra if v in usable})
            missing = [v for v in wanted if v not in self._loaded.get(name, {})]
            if not missing:
                break
            for number in missing:
                try:
                    self._load_version(name, number, source.versions[number], config)
                except ModelLoadError as exc:
                    problems.append(str(exc))
        if not failures:
            self._failures.pop(name, None)
        if not wanted:
            return problems
        latest = max(selected) if selected else max(wanted)
        default = self._gate(name, latest, usable)
        self._latest[name] = default
        keep = set(wanted) | {default}  # a held-back default stays loaded whatever the policy says
        held = self._incompatible.get(name, {})
        for number in [v for v in held if v not in keep]:
            del held[number]
        self._publish(name, keep=keep)
        stale = [v for v in self._loaded.get(name, {}) if v not in keep]
        if stale:
            self._retire(name, stale, timeout_s=timeout_s)
        return problems

    def _gate(self, name: str, candidate: int, available: list[int]) -> int:
        """The compatibility gate: the version that becomes the default of ``name`` — ``candidate``, unless
        its signature would break callers of the version answering default traffic now (the stable alias,
        or the current default) and that version is still ``available``. A held-back candidate stays
        loaded and servable with ``version=``; status, the log and a counter say why."""
        held = self._incompatible.setdefault(name, {})
        routes = self._routes.get(name)
        if routes is None:
            return candidate
        router = routes.router
        alias = router.stable_alias if router.stable_alias is not None else router.config.stable
        baseline = routes.versions.get(alias) if alias is not None else None
        baseline = baseline or routes.default
        new = self._loaded.get(name, {}).get(candidate)
        if new is None or baseline.version == candidate or baseline.version not in available:
            held.pop(candidate, None)
            return candidate
        assert baseline.signature is not None and new.signature is not None
        problems = incompatibilities(baseline.signature, new.signature)
        if not problems:
            held.pop(candidate, None)
            return candidate
        if held.get(candidate) != problems:
            held[candidate] = problems
            logger.warning(
                "model %r version %s is not compatible with version %s, which keeps serving by default "
                "(pin version=%s, or switch(..., force=True) to promote it): %s",
                name,
                candidate,
                baseline.version,
                candidate,
                "; ".join(problems),
            )
            METRICS.incompatible.add(1, {"inprocserve.model.name": name, "inprocserve.model.version": candidate})
        return baseline.version

    def _load_version(self, name: str, number: int, path: Path, config: ModelConfig) -> None:
        loaded = self._loaded.get(name, {})
        if number in loaded and loaded[number].path == path:
            return
        candidate = ModelVersion(
            name, number, path, config, deliver=self._deliver, clock=self._clock, follow_symlinks=self._follow_symlinks
        )
        try:
            candidate.load()
        except ModelLoadError as exc:
            self._failures.setdefault(name, {})[number] = _Failure(str(exc), _stamp(path))
            logger.error("model %r version %s failed to load: %s", name, number, exc)
            METRICS.lifecycle.add(1, {"inprocserve.model.name": name, "inprocserve.model.event": "failed"})
            raise
        METRICS.lifecycle.add(1, {"inprocserve.model.name": name, "inprocserve.model.event": "loaded"})
        previous = loaded.get(number)
        self._loaded.setdefault(name, {})[number] = candidate
        self._failures.get(name, {}).pop(number, None)
        if previous is not None:  # same version number, new file: swap, then drain the old one
            self._publish(name)
            previous.retire()

    def _publish(self, name: str, keep: set[int] | None = None) -> None:
        """Replace the routing snapshot of ``name`` (atomic for readers)."""
        loaded = self._loaded.get(name, {})
        versions = {v: mv for v, mv in loaded.items() if keep is None or v in keep}
        if not versions:
            self._routes.pop(name, None)
            return
        latest = self._latest.get(name)
        default = versions[latest] if latest in versions else versions[max(versions)]
        state = self._control.models.get(name)
        rollout = default.config.rollout if state is None else _controlled(default.config.rollout, state)
        router = self._routers.get(name)
        if router is None:
            router = self._routers[name] = Router(name, rollout, self._flags, shadow_gate=self._shadow.admit)
        elif router.config != rollout:
            router.update(rollout)
        if state is not None:  # the control file wins over in-process switches and config.toml
            router.stable_alias = state.stable if state.stable is not None else router.stable_alias
            if state.stable is not None:  # an operator switched the fleet to it: its signature is accepted
                self._incompatible.get(name, {}).pop(state.stable, None)
        router.killed = state is not None and state.kill
        self._routes[name] = _Routes(default=default, versions=dict(versions), router=router)

    def _retire(self, name: str, numbers: list[int], *, timeout_s: float | None = None) -> None:
        loaded = self._loaded.get(name, {})
        retiring = [loaded.pop(number) for number in numbers if number in loaded]
        if not loaded:
            self._loaded.pop(name, None)
        self._publish(name)  # stop routing to them before draining
        for version in retiring:
            drained = version.retire(timeout_s=timeout_s)
            METRICS.lifecycle.add(1, {"inprocserve.model.name": name, "inprocserve.model.event": "unloaded"})
            logger.info("model %r version %s unloaded%s", name, version.version, "" if drained else " (timed out)")

    def _find_in_repository(self, name: str) -> ModelSource:
        if self._repository is None:
            raise ModelNotFoundError(f"no repository configured; pass path= to load model {name!r}", model=name)
        source = scan_repository(self._repository, follow_symlinks=self._follow_symlinks).models.get(name)
        if source is None or not source.versions:
            raise ModelNotFoundError(f"model {name!r} is not in the repository {self._repository}", model=name)
        return source

    def _config_for(self, name: str, source: ModelSource, override: ModelConfig | None) -> ModelConfig:
        """The effective config: code defaults < ``config=`` < ``config.toml`` < ``models=`` (per field);
        a ``config`` passed to :meth:`load` replaces all of them."""
        if override is not None:
            return override
        config = self._defaults
        if source.config_path is not None:
            config = load_model_config(source.config_path, config)
        code = self._code_configs.get(name)
        return config if code is None else config.overlaid(code, source=f"models[{name!r}]")

    def _check_open(self) -> None:
        if self._closed:
            raise ServerClosedError("the server is closed")

    # -- hot reload poller ---------------------------------------------------------------------------------

    def _start_poller(self) -> None:
        if self._poll_interval_s is None or self._closed:
            return
        self._poller = threading.Thread(target=self._poll, name="inprocserve-refresh", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        assert self._poll_interval_s is not None
        while not self._stop_polling.wait(self._poll_interval_s):
            try:
                self.refresh()
            except Exception:  # the poller must survive anything a repository throws at it
                logger.exception("model repository refresh failed")

    def _after_fork_in_child(self) -> None:
        self._lifecycle = threading.RLock()
        self._stop_polling = threading.Event()
        self._start_poller()
        self._start_watcher()

    # -- status and shutdown -------------------------------------------------------------------------------

    def status(self, *, include_paths: bool = True) -> dict[str, Any]:
        """A JSON-ready snapshot: every model, its versions, their state, errors, providers and queues;
        which worker answered (pid, hostname, start time) and the control revision it follows.

        Args:
            include_paths: ``False`` removes every file-system path (the repository, model files, and
                paths quoted in error messages), for status shown to callers who are not administrators.
        """
        snapshot = self._status()
        return snapshot if include_paths else _without_paths(snapshot, self._known_paths())

    def readiness(self, required: Sequence[str] | None = None) -> Readiness:
        """Whether this server can answer: open, with at least one model, and every model in ``required``
        (default: every model found) servable; ``reasons`` says why not, per model, without paths."""
        return readiness(self, required)

    def _known_paths(self) -> list[str]:
        paths = {str(self._repository)} if self._repository is not None else set()
        if self._repository is not None:
            paths.add(str(self._repository.resolve()))
        for versions in list(self._loaded.values()):
            for model_version in list(versions.values()):
                paths.update({str(model_version.path), str(model_version.path.parent.parent)})
        return sorted(paths, key=len, reverse=True)  # longest first: a folder must not eat part of its file

    def _status(self) -> dict[str, Any]:
        with self._lifecycle:
            models: dict[str, Any] = {}
            names = set(self._loaded) | set(self._failures) | set(self._config_errors)
            for name in sorted(names):
                routes = self._routes.get(name)
                versions: dict[str, Any] = {}
                for number, failure in self._failures.get(name, {}).items():
                    versions[str(number)] = {"state": "failed", "error": failure.error}
                held = self._incompatible.get(name, {})
                for number, model_version in sorted(self._loaded.get(name, {}).items()):
                    entry = model_version.status()
                    entry["serving"] = routes is not None and number in routes.versions
                    entry["compatible"] = number not in held
                    entry["incompatibilities"] = list(held.get(number, ()))
                    versions[str(number)] = entry
                router = self._routers.get(name)
                state = self._control.models.get(name)
                stable = None if router is None or routes is None else router.stable_alias
                models[name] = {
                    "default_version": None if routes is None else routes.default.version,
                    "stable_version": stable
                    if routes is not None and stable in routes.versions
                    else (None if routes is None else routes.default.version),
                    "control": None if state is None else state.to_dict(),
                    "ready": routes is not None,
                    "config_error": self._config_errors.get(name),
                    "versions": versions,
                    "rollout": None if router is None else router.status(),
                    "shadow": self._shadow.status(name),
                }
            return {
                "closed": self._closed,
                "repository": None if self._repository is None else str(self._repository),
                "onnxruntime": onnxruntime_version(),
                "thread_handoff_us": round(handoff_cost_s() * 1e6, 1),
                "worker": worker_identity(),
                "control": {
                    **{key: value for key, value in self._control.to_dict().items() if key != "models"},
                    "file": None if self._control_file is None else str(self._control_file.path),
                    "interval_s": self._control_interval_s,
                    "error": self._control_error,
                },
                "models": models,
            }

    @property
    def models(self) -> dict[str, list[int]]:
        """Servable model names and their servable versions."""
        return {name: sorted(routes.versions) for name, routes in self._routes.items()}

    def close(self, *, timeout_s: float | None = 30.0) -> None:
        """Stop taking requests, let queued and running ones finish (up to ``timeout_s`` per version),
        then release every session. Idempotent; later calls raise :class:`ServerClosedError`."""
        with self._lifecycle:
            if self._closed:
                return
            self._closed = True
            self._stop_polling.set()
            self._shadow.close()
            if self._flags is not None:
                self._flags.close()
            for name in list(self._loaded):
                self._retire(name, list(self._loaded[name]), timeout_s=timeout_s)
            self._routes.clear()
        self._finalizer.detach()
        METRICS.remove_source(self._gauge_source)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<inprocserve.Server models={self.models} closed={self._closed}>"


def _controlled(rollout: RolloutConfig, state: ModelControl) -> RolloutConfig:
    """A model's rollout config with the control file's canary laid over it."""
    if state.canary_version is None:
        return rollout
    return dataclasses.replace(
        rollout, strategy="canary", candidate=state.canary_version, canary_percent=state.canary_percent
    )


_PATH_KEYS = frozenset({"path", "repository", "file", "folder", "optimized_path", "inputs_file"})


def _without_paths(value: Any, paths: list[str]) -> Any:
    """``value`` with every path-valued key dropped and every known path in a string replaced."""
    if isinstance(value, dict):
        return {key: _without_paths(item, paths) for key, item in value.items() if key not in _PATH_KEYS}
    if isinstance(value, list | tuple):
        return [_without_paths(item, paths) for item in value]
    if isinstance(value, str):
        for path in paths:
            if path in value:
                value = value.replace(path, "<path>")
        return value
    return value


def _prediction(request: Request) -> Prediction:
    route = request.route
    assert request.outputs is not None
    return Prediction(
        request.outputs,
        model=route.model,
        version=route.version,
        variant=route.variant,
        reason=route.reason,
        request_id=route.request_id,
    )


def _gauge_source(server_ref: weakref.ref[Server]) -> Callable[[], list[tuple[str, float, dict[str, Any]]]]:
    """Queue depth and in-flight requests of every serving version, for the observable gauges."""

    def observe() -> list[tuple[str, float, dict[str, Any]]]:
        server = server_ref()
        if server is None:
            return []
        values = []
        for name, routes in list(server._routes.items()):
            for number, model_version in routes.versions.items():
                batcher = model_version.batcher
                if batcher is None:
                    continue
                attributes = {"inprocserve.model.name": name, "inprocserve.model.version": number}
                values.append(("queue", float(batcher.queued_rows), attributes))
                values.append(("in_flight", float(batcher.in_flight), attributes))
                values.extend(model_version.drift_observations())
                values.extend(model_version.memory_observations())
        return values

    return observe


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        info = path.stat()
    except OSError:
        return None
    return (info.st_mtime_ns, info.st_size)


def _close_versions(loaded: dict[str, dict[int, ModelVersion]], shadow: ShadowRunner) -> None:
    """Last-resort cleanup when a Server is garbage-collected or the interpreter exits unclosed."""
    shadow.close()
    for versions in list(loaded.values()):
        for version in list(versions.values()):
            version.retire(timeout_s=1.0)
