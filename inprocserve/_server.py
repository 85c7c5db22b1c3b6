"""The Server facade: predict / submit / apredict / close, read top to bottom.

``_dispatch`` routes a request (``Router``), validates it (``Signature``), then answers it from the cache or
lets it follow an identical request in flight (``_inflight.Sharing``), or queues it on its version's
batcher. Whatever answers it, ``_answered`` then runs everything that follows an answer, once. Model
lifecycle lives in ``_registry``, rollout operations in ``_operations`` (``Server`` inherits their public
methods from ``RolloutMethods``), status in ``_snapshot``; the public methods here delegate to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import numbers
import time
import weakref
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import trace as _trace
from opentelemetry.metrics import _internal as _metrics_state
from opentelemetry.trace import INVALID_SPAN

from . import _fork, _reaper
from ._backend import raised_by_signal_handler
from ._config import ModelConfig, check_model_configs
from ._config_checks import MAX_INTERVAL_S, check_bool, is_number, shown
from ._control import ControlFile
from ._deadlines import check_timeout
from ._drift import DriftScorer
from ._errors import (
    ConfigurationError,
    ConfigurationTypeError,
    InferenceError,
    InprocserveError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    QueueFullError,
    ServerClosedError,
    VersionRetiredError,
)
from ._flags import FlagProvider, WaitOffLoop
from ._inflight import Lead, Sharing, inputs_key
from ._loop_batching import apredict as _loop_apredict
from ._loop_batching import given_up as _loop_given_up
from ._model import ModelVersion
from ._operations import Operations, RolloutMethods
from ._prediction import Prediction, RequestIds, prediction_of
from ._prefork import retries_failed_loads, shield_exit
from ._registry import Registry, Routes, close_versions
from ._remote_model import RemoteModel
from ._repository import ModelSource
from ._request import BatchTiming, Request, Route, drop_tracebacks
from ._request_telemetry import RequestTelemetry
from ._rollout import Decision, FlagReader, _not_a_mapping
from ._scoring import SameRoute, note_copy, score
from ._scoring_columns import frame_inputs, is_data_frame, whole_array_of
from ._scoring_plan import checked_whole_input, plan_for_version
from ._shadow import DEFAULT_MAX_QUEUED_BYTES, STOP_WAIT_S, ShadowComparison, ShadowRunner
from ._snapshot import brief_status, gauge_source, server_status
from ._telemetry import METRICS, end_safely, start_request_span
from ._thread_values import ThreadValue
from .web import Readiness, flags_setting_problem, readiness, shadow_setting_problem

__all__ = ["Server"]

logger = logging.getLogger(__name__)

_RETRIES_ON_RETIRED = 3
_AnswerCheck = Callable[[Mapping[str, Any], int, ModelVersion | None], object]
"""Called with a request's answer (its outputs), the number of the version that answered it and the loaded
copy that ran it (``None`` where it was unloaded or replaced since: then only the number is known); what it
raises refuses it (see :meth:`Server._predict_checked`)."""
_NO_SHADOWS: tuple[Any, ...] = ()  # the route of a request that nothing shadows (most of them)


class Server(RolloutMethods):
    """Serves ONNX models inside this process.

    Thread-safe: call :meth:`predict`, :meth:`submit` and :meth:`apredict` from any number of threads or
    event loops. Lifecycle calls (:meth:`load`, :meth:`unload`, :meth:`refresh`, :meth:`close`) are
    serialized internally and never block requests to versions they do not touch.

    Args:
        repository: A folder laid out as ``<model>/<version>/model.onnx``; every model found is loaded. A
            relative path is read from the working directory of now, for good (see :attr:`repository`).
            ``None`` starts empty (use :meth:`load`).
        config: Defaults for every model; a model's ``config.toml`` is laid over them.
        models: Per-model configuration in code (name -> ``ModelConfig``), laid over ``config.toml`` field
            by field: the settings whose value differs from the library default override the file, the
            others keep the file's (or ``config``'s) value. See ``ModelConfig.overlaid``.
        poll_interval_s: If set, a background thread calls :meth:`refresh` this often (hot reload; at most a
            day).
        control_interval_s: How often a background thread re-reads the repository's control file (the
            fleet-wide rollout state, see :meth:`switch`); every worker follows a change within this bound
            plus the load time of a version it has not loaded yet (at most a day). ``None`` disables watching.
        strict: Raise :class:`ModelLoadError` at start-up when a model fails to load, or a stable or canary
            version the control file names is not here (by default the failure is reported in
            :meth:`status` and the other models serve).
        flags: Where feature flags are read (rollouts driven by flags); ``None``: the configuration only.
        flag_timeout_s: The budget of one flag evaluation (at most 60 s); past it the configured rollout
            answers.
        on_shadow: Called on the shadow thread with every shadow comparison (its errors are logged).
        shadow_queue: Shadow copies that may wait for the shadow thread; more are dropped and counted.
        shadow_queue_bytes: Bytes the waiting copies (inputs and answers) may hold together (32 MiB); a
            request whose copy would take more than a quarter of it is not shadowed (``dropped_too_large``).
        shadow_budget: Largest share of wall-clock time shadow runs may take (0.02: 20 ms a second);
            shadow copies beyond it are dropped and counted, so shadows use spare capacity only.
        follow_symlinks: Accept model folders, version folders, model files and external-data files that
            are symbolic links (refused by default; see docs/repository.md, "Integrity").
        clock: A monotonic clock (tests may step a manual one).

    Raises:
        ConfigurationError: the repository is not a folder, a ``config.toml`` is invalid, or an argument is
            out of its range or of the wrong kind (``shadow_queue=0``, a string for a number, NaN).
        ConfigurationTypeError: ``config`` is not a ``ModelConfig``, or ``models`` not a dict of name ->
            ``ModelConfig`` (a ``config.toml``-shaped dict is refused: ``ModelConfig().merged({...})`` builds
            one from it), or ``flags`` not a flag provider (``None``, or an instance of ``InMemoryFlags``,
            ``EnvFlags``, ``FileFlags``, ``OpenFeatureFlags`` or another ``FlagProvider``; a dict of flag values
            is refused: ``InMemoryFlags({...})`` serves one). A ``ConfigurationError`` and a ``TypeError``.
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
        shadow_queue_bytes: int = DEFAULT_MAX_QUEUED_BYTES,
    ) -> None:
        check_model_configs(config, models)  # (a config.toml-shaped dict would load nothing, at every refresh)
        for name, flag in (("strict", strict), ("follow_symlinks", follow_symlinks)):
            check_bool(name, flag)  # ("false" from an environment variable is true)
        for name, seconds in (("control_interval_s", control_interval_s), ("poll_interval_s", poll_interval_s)):
            # (NaN fails > too; more than a day is a typo, and a wait past a lock's limit ends the thread)
            if seconds is not None and not (is_number(seconds) and 0 < seconds <= MAX_INTERVAL_S):
                raise ConfigurationError(
                    f"{name} must be > 0 and <= {MAX_INTERVAL_S:.0f} (seconds, a day) or None, got {shown(seconds)}"
                )
        shadows = (
            ("shadow_budget", shadow_budget),
            ("shadow_queue", shadow_queue),
            ("shadow_queue_bytes", shadow_queue_bytes),
            ("on_shadow", on_shadow),
        )
        for argument, value in shadows:  # (the plug-ins check their settings by the same rules at start-up)
            problem = shadow_setting_problem(argument, value)
            if problem is not None:
                raise ConfigurationError(f"{argument} {problem}")
        if poll_interval_s is not None and repository is None:
            raise ConfigurationError("poll_interval_s needs a repository to poll")
        problem = flags_setting_problem(flags)
        if problem is not None:  # (a provider's class, or a dict of flag values: its message names InMemoryFlags)
            raise ConfigurationTypeError(f"flags {problem}")
        given = None if repository is None else Path(repository)
        # Absolute once, here: a chdir later (a daemonizing server, a test, a command) must not move it. Not
        # resolve(): a link on the path (a release switched by a link) keeps its meaning at every poll.
        try:
            folder = None if given is None else given.absolute()
        except OSError as exc:  # (getcwd() of a working directory deleted under the process: an old release's)
            raise ConfigurationError(
                f"the model repository {str(given)!r} is relative and the working directory it is read from "
                f"cannot be read ({exc.strerror}): pass an absolute path"
            ) from None
        if given is not None and not given.is_dir():  # (a typo served nothing: 404s naming no cause)
            where = "" if given.is_absolute() else f" (read from the working directory: {folder})"
            raise ConfigurationError(
                f"the model repository {str(given)!r} is not a folder{where}: create it, or point repository= at "
                "the folder that holds <model>/<version>/model.onnx"
            )
        self._clock = clock
        self._ids = RequestIds()
        self._flags = None if flags is None else FlagReader(flags, timeout_s=flag_timeout_s, clock=clock)
        self._telemetry = RequestTelemetry()
        # The threads this server starts, each stopped and joined by close(): shadow runs, drift scoring,
        # the hot-reload poller (registry) and the control-file watcher (operations).
        # What the server's parts keep (its threads, and the clean-up of a server nobody closed) holds the server
        # weakly: one they held strongly would keep a server nobody closed, its sessions and threads, for good.
        self._sharings: list[Sharing] = []  # [self._sharing], for the clean-up (a forked child makes another)
        self._weak_deliver = _weakly(
            self._deliver, functools.partial(_deliver_without_server, self._sharings, self._telemetry)
        )
        self._shadow = ShadowRunner(
            max_queued=shadow_queue,
            max_queued_bytes=shadow_queue_bytes,
            on_result=on_shadow,
            budget=shadow_budget,
        )
        self._drift = DriftScorer()
        self._registry = Registry(
            folder,
            defaults=config or ModelConfig(),
            models=models or {},
            deliver=self._weak_deliver,
            flags=self._flags,
            shadow_gate=self._shadow.admit,
            poll_interval_s=poll_interval_s,
            clock=clock,
            follow_symlinks=follow_symlinks,
        )
        # a refusal is recorded under the name it asked for only if this server ever served that name (after
        # an unload or close too); any other name is the caller's string, recorded as _unknown
        self._telemetry.served = self._registry.published.__contains__
        self._telemetry.served_version = self._registry.published_versions.__contains__
        self._operations = Operations(
            self._registry,
            control_file=None if folder is None else ControlFile(folder),
            control_interval_s=control_interval_s,
            ids=self._ids,
            predict=_weakly(self.predict, _gone),
            submit=_weakly(self.submit, _gone),
        )
        self._shadow.max_abs_diff_of = self._registry.shadow_max_abs_diff
        self._sharing = self._new_sharing()
        self._gauge_source = gauge_source(weakref.ref(self._registry))
        METRICS.add_source(self._gauge_source)
        # At interpreter exit (or garbage collection) of a server nobody closed: stop its threads before
        # the interpreter finalizes, while onnxruntime may still be running on them. The collector's call
        # only hands the clean-up to a thread of its own (see _reaper): it may run on any thread, holding
        # any lock, one of this server's threads too.
        self._closing = _reaper.Closing()  # (close() and that clean-up: whichever begins first closes it)
        self._finalizer = _reaper.watch(
            self,
            _close_unclosed,
            self._closing,
            self._registry.loaded,
            self._shadow,
            self._drift,
            self._flags,
            self._gauge_source,
            self._sharings,
            weakref.ref(self._registry),  # (a poller or watcher that ended lets them go with the server)
            weakref.ref(self._operations),
        )
        shield_exit()  # an exiting worker finishes closing its sessions even if its master sends SIGTERM
        _fork.register(self)
        if folder is not None:
            try:
                self._operations.read_initial_control()  # the first load already follows the control file
                problems = self.refresh()
                problems += self._operations.follow_initial_control()  # (strict: the fleet's version too)
                if strict and problems:
                    raise ModelLoadError("; ".join(problems))
            except BaseException:  # a server that fails to start leaves nothing running (threads, metrics)
                self.close()
                raise
        self._registry.start_poller()
        if (self._registry.failures or self._registry.config_errors) and retries_failed_loads():
            # (a worker started after the first ones, no poller: retry what failed until it loads)
            self._registry.start_healer()
        self._operations.start_watcher()

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
            inputs: Input name -> array-like with a leading batch axis (a bare array for one-input models), or
                a data frame whose columns are the inputs by name (as :meth:`predict_many` reads one).
            version: Pin a version (an int; a numpy integer too); ``None`` lets the server choose (the latest
                ready version).
            context: Request attributes for routing decisions (for example ``{"user_id": ...}``).
            timeout_s: The request's deadline, in seconds from now: a request still queued then is never
                run, and one running then is stopped by onnxruntime (inline or on a worker), so control
                returns within the deadline plus the operator running at that moment. ``None``,
                ``math.inf`` or anything >= 1e6 s: no deadline.

        Raises:
            ValueError: ``timeout_s`` is NaN, zero or negative (``TypeError`` if it is not a number).
            TypeError: ``version`` is not an int (``True`` and ``1.0`` are refused, not read as version 1).
            ModelNotFoundError: unknown model or version.
            InvalidInputError: the inputs do not match the model's signature.
            OverloadedError: the queue is full.
            DeadlineExceededError: no answer within ``timeout_s``.
            InferenceError: onnxruntime failed on this request.
            ServerClosedError: the server is closed.
            ControlStateUnknownError: this server started while the fleet's control file could not be read,
                and has not read it since (a request that pins a version is still answered).
        """

        if timeout_s is not None:
            timeout_s = check_timeout(timeout_s)
        answer, opened = self._predict_plain(model, inputs, version, context, timeout_s)
        if answer is not None:
            return answer
        return self._predict_full(model, inputs, version, context, timeout_s, opened)

    def _predict_checked(
        self,
        model: str,
        inputs: Any,
        *,
        version: int | None,
        context: Mapping[str, Any] | None,
        timeout_s: float | None,
        check: _AnswerCheck,
    ) -> Prediction:
        """:meth:`predict`, with ``check`` called on the answer (its outputs, and the version that answered)
        before the request is recorded: what it raises is the request's refusal, recorded as such (latency
        errors, the span's and metrics' error) and raised. For the ``/v2`` endpoints, whose requests name
        outputs that only the answering version, known once the request ran, may lack (under a canary or
        flags). Identical requests that followed it, the version's cache, drift monitoring and shadow copies
        still get the answer: it is that version's own answer to those inputs."""
        if timeout_s is not None:
            timeout_s = check_timeout(timeout_s)
        answer, opened = self._predict_plain(model, inputs, version, context, timeout_s, check=check)
        if answer is not None:
            return answer
        return self._predict_full(model, inputs, version, context, timeout_s, opened, check)

    def _predict_full(
        self,
        model: str,
        inputs: Any,
        version: int | None,
        context: Mapping[str, Any] | None,
        timeout_s: float | None,
        opened: _Opened | None,
        check: _AnswerCheck | None = None,
    ) -> Prediction:
        """:meth:`predict`'s full way (see :meth:`_dispatch`), for what its shortest way left to it."""
        try:
            request, target = self._dispatch(
                model, inputs, version, context, timeout_s, None, inline=True, opened=opened
            )
        except BaseException as exc:
            if opened is not None and opened.lead is not None:
                # Interrupted before the full way took the lead over (a signal handler raised as _dispatch
                # began): identical requests already follow it, and waited for good. (Nothing if it ended.)
                self._sharing.finish(opened.target, opened.lead, None, exc)
            raise
        batcher = target.batcher
        assert batcher is not None
        try:
            # a request that follows an identical one in flight is not in the batcher's queue
            if (target.cache is not None or target.config.cache.share_in_flight) and self._sharing.following(
                request, batcher
            ):
                self._sharing.wait(request, batcher)
            else:
                batcher.wait(request)
        except BaseException as exc:  # its deadline, or the caller's thread interrupted: free its followers
            # (an interruption: an off-loop task's error names the version; the route's, as a follower whose
            # version was unloaded while it waited was routed again to the one serving now, and queued there)
            _mark_routed(exc, request.route.version)
            self._answered(request, self._version_of(request, target), exc)
            raise
        refused = None
        outputs = request.outputs
        answering = self._version_of(request, target)
        if check is not None and request.error is None and outputs is not None:  # (refused: what its caller gets)
            try:
                refused = _refusal(check, outputs, request.route.version, answering)
            except BaseException as exc:  # (its thread interrupted in the check: the requests following it go
                _mark_routed(exc, request.route.version)  # on without it, not wait)
                self._answered(request, answering, exc)
                raise
        self._answered(request, answering, request.error, given=refused)
        error = request.error if refused is None else refused
        if error is None:
            return request.prediction()
        del request, refused, outputs  # this frame joins the error's traceback: no local may lead back to it
        try:
            raise error
        finally:
            del error

    def _predict_plain(
        self,
        model: str,
        inputs: Any,
        version: int | None,
        context: Mapping[str, Any] | None,
        timeout_s: float | None,
        max_run_s: float | None = None,
        *,
        check: _AnswerCheck | None = None,
    ) -> tuple[Prediction | None, _Opened | None]:
        """The shortest way for the most common call at low load: a request run at once on this thread when a
        runner is idle and nothing is queued, or answered from the version's cache, however it was routed (a
        rollout's decision is made once, here). No :class:`Request`, no queue, one lock round trip to take the
        runner and one to give it back; the same deadline, span, metrics, latency, counts, drift monitoring
        and shadow copies as the full way (docs/performance.md, "Where a lone request's time goes"). A cache
        miss runs here too, leading identical requests that arrive meanwhile (they follow it the full way), and
        its answer is kept; one with an identical request in flight already goes the full way, which follows
        it. ``timeout_s`` was checked already.
        ``max_run_s``: run only a request whose run should take at most this long by the version's measured
        run cost, in this process (:meth:`Batcher.runs_within`: an event loop's thread must not block long),
        to a version with nothing queued or running (an event loop's task whose request finds another one
        running is in step with the other tasks, which merging serves better than runs of one).

        Returns ``(answer, None)``; or ``(None, opened)`` when it does not apply: ``opened`` holds what was
        done for the request already (its start, deadline and span; its route and validated inputs), which
        the full way continues from, or is ``None`` when nothing was (an unknown model or version is left to
        the full way, which names them). Invalid input is refused here, as the full way refuses it.
        ``check``: see :meth:`_predict_checked` (an answer it refuses raises here, recorded as refused).
        """
        started = time.perf_counter()
        deadline = None if timeout_s is None else self._clock() + timeout_s
        try:
            plain = self._plain_route(model, version, context, lone=True)
        except WaitOffLoop:  # an event loop's request whose flags must be waited for: routed again off the loop
            raise
        except BaseException as exc:  # interrupted while deciding (reading flags): refused, as the full way's
            self._telemetry.refused(start_request_span(model, since=started), started, model, None, None, exc)
            raise
        if plain is None:
            return None, None
        routes, target, decision = plain
        batcher, signature, cache = target.batcher, target.signature, target.cache
        assert batcher is not None and signature is not None  # (checked by _plain_route)
        key = None
        try:
            arrays, rows = signature.validate(inputs, max_rows=target.max_request_rows, reject_nan=target.reject_nan)
            if cache is not None:
                key = inputs_key(arrays)
                outputs = cache.get(key)
        except BaseException as exc:  # refused (or interrupted) before it ran: as the full way refuses it
            refusal = _naming(target, exc)
            span = start_request_span(model, since=started)
            self._telemetry.refused(span, started, model, target.version, decision, refusal)
            _mark_routed(refusal, target.version)  # (an interruption: as the full way notes it)
            # (this frame joins the error's traceback: its local must not lead back to the error, or the inputs
            # it holds stay in a reference cycle until the collector's next full pass)
            if refusal is exc:
                del refusal
                raise
            try:
                raise refusal from None
            finally:
                del refusal
        recorder = batcher.telemetry
        # (no tracer provider, no span: _telemetry.tracing()'s test inlined, not two calls answering INVALID_SPAN)
        span = INVALID_SPAN if _trace._TRACER_PROVIDER is None else recorder.start_request_span(since=started)
        if cache is not None and outputs is not None:  # a hit (which takes no runner)
            self._telemetry.cache_result(recorder, "hit")
            answer = self._plain_answer(started, span, routes, target, decision, arrays, rows, None, outputs, check)
            return answer, None
        if not batcher.adopted or (cache is None and target.config.cache.share_in_flight):
            # a process's first request adopts the runners, and identical requests share runs: the full way
            return None, _Opened(started, span, deadline, routes, target, decision, arrays, rows, key)
        lead = None
        if cache is not None:
            # a miss: run here, leading identical requests; unless an identical request is in flight (the full
            # way follows it), or an event loop's thread would wait (the full way queues it)
            too_long = max_run_s is not None and not (batcher.idle and batcher.runs_within(rows, max_run_s, arrays))
            lead = None if too_long or key is None else self._sharing.lead(target, key)
            if lead is None:
                return None, _Opened(started, span, deadline, routes, target, decision, arrays, rows, key)
        elif max_run_s is not None and not (batcher.idle and batcher.runs_within(rows, max_run_s, arrays)):
            return None, _Opened(started, span, deadline, routes, target, decision, arrays, rows)
        try:  # whatever happens, a lead ends: identical requests that follow it would wait forever
            timing = None if span is INVALID_SPAN or not span.is_recording() else BatchTiming(rows)
            try:
                outputs = batcher.run_plain(
                    arrays, rows, parent=span, timing=timing, deadline=deadline, from_loop=max_run_s is not None
                )
            except Exception as exc:  # its run failed: answered with the error, like an inline run of the full way
                if lead is not None:
                    self._sharing.finish(target, lead, None, exc)
                elapsed_s = time.perf_counter() - started
                target.latency.record(elapsed_s, failed=True)
                self._telemetry.plain_answered(
                    span, decision, target.version, rows, timing, exc, elapsed_s, recorder, lone=True
                )
                routes.router.served(self._ids.next(), decision, arrays, routes.state)
                raise
            except BaseException as exc:  # this thread was interrupted: refused, like the full way's
                self._telemetry.refused(span, started, model, target.version, decision, exc)
                _mark_routed(exc, target.version)  # (as the full way notes it: an off-loop task's error names it)
                raise
            if outputs is None:  # busy, or companions expected: the full way queues it (and takes over its lead)
                return None, _Opened(started, span, deadline, routes, target, decision, arrays, rows, key, lead)
            if lead is not None:
                self._sharing.finish(target, lead, outputs, None)
        except BaseException as exc:
            if lead is not None:
                self._sharing.finish(target, lead, None, exc)  # (nothing, if it ended already)
            raise
        return self._plain_answer(started, span, routes, target, decision, arrays, rows, timing, outputs, check), None

    def _plain_answer(
        self,
        started: float,
        span: Any,
        routes: Routes,
        target: ModelVersion,
        decision: Decision,
        arrays: dict[str, Any],
        rows: int,
        timing: BatchTiming | None,
        outputs: Mapping[str, Any],
        check: _AnswerCheck | None,
    ) -> Prediction:
        """Record a request answered on the shortest way (run on this thread, or a cache hit: ``timing`` is
        ``None``) as the full way records an inline run or a hit, feed the version's drift monitoring and
        offer copies to the decision's shadows (as :meth:`_answered` does), and make its answer; or, when
        ``check`` refuses the answer, record the request as refused, and raise the refusal (drift monitoring
        and shadows still get the answer, as :meth:`_answered` gives them one its caller did not get)."""
        batcher = target.batcher
        assert batcher is not None  # (checked by _plain_route)
        elapsed_s = time.perf_counter() - started
        if check is None:  # (every predict call: the hottest path, which pays this test and the one below only)
            refused = None
            target.latency.record(elapsed_s)
        else:
            refused = _refusal(check, outputs, target.version, target)
            target.latency.record(elapsed_s, failed=refused is not None)
        if span is not INVALID_SPAN or _metrics_state._METER_PROVIDER is not None:  # (else nothing to end or record)
            self._telemetry.plain_answered(
                span, decision, target.version, rows, timing, refused, elapsed_s, batcher.telemetry, lone=True
            )
        request_id = self._ids.next()
        routes.router.served(request_id, decision, arrays, routes.state)  # keeps recent inputs for promotion
        if target.drift is not None:
            target.drift.observe(arrays, outputs, rows, scorer=self._drift)
        if decision.shadows:
            shadows = [routes.versions[v] for v in decision.shadows if v in routes.versions]
            if shadows:
                self._shadow.offer(target.name, request_id, arrays, rows, outputs, target, shadows, primary_span=span)
        if refused is not None:
            try:
                raise refused
            finally:  # (this frame joins the refusal's traceback: its local must not lead back to it)
                del refused
        return prediction_of(outputs, target.name, target.version, decision.variant, decision.reason, request_id)

    def _plain_route(
        self, model: str, version: int | None, context: Mapping[str, Any] | None, *, lone: bool = False
    ) -> tuple[Routes, ModelVersion, Decision] | None:
        """The route of a request that may take a short way. ``lone``: for ``predict``'s short way, which
        takes any loaded version, routed by any rollout (its answer feeds the version's cache, drift
        monitoring and shadows, as the full way's does), and hands what it cannot run itself to the full way
        with its decision; else (an event loop's merged requests) only a version whose runners this process
        has adopted, with no cache, drift monitoring or sharing of identical requests, routed with no rollout
        or shadow (or pinned). ``None`` otherwise, and for anything the full way refuses (an unknown model or
        version: it raises, naming them)."""
        try:
            routes = self._registry.routes.get(model)
            if routes is None:
                return None
            if version is not None:
                if type(version) is not int or (
                    context is not None and type(context) is not dict and not isinstance(context, Mapping)
                ):
                    return None  # (the full way takes a numpy integer, refuses True or 1.0, and refuses the context)
                decision = _pinned(version)
                target = routes.versions.get(version)
            elif lone or routes.state.trivial:
                # (by the routing state published with the versions: see _route)
                decision = routes.router.decide(routes.versions, routes.default.version, context, routes.state)
                target = routes.versions.get(decision.version) or routes.default  # (as the full way routes)
            else:
                return None
        except Exception as exc:  # e.g. an unhashable name: the full way raises it again and records the refusal
            if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit as it was routed (a
                raise  # flag provider's read): its own exception, not a reason to route it again the full way
            return None
        if target is None or target.batcher is None or target.signature is None:
            return None
        if not lone and (
            target.cache is not None
            or target.drift is not None
            or target.config.cache.share_in_flight
            or not target.batcher.adopted  # (a process's first request adopts the runners the full way)
        ):
            return None
        return routes, target, decision

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
        future before its batch runs drops the request. The input arrays are queued as they are (no copy, as
        ``predict`` does not copy them either): do not write into them until the future is done.
        """
        future: Future[Prediction] = Future()
        try:
            self._dispatch(model, inputs, version, context, timeout_s, future, inline=False)
        except InprocserveError as exc:  # (refused before it queued: invalid inputs, a full queue)
            future.set_exception(drop_tracebacks(exc))  # its frames (this one's future, the inputs): a cycle
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
        not started running (a request merged with other tasks' runs unless all of them were cancelled; the
        cancelled task gets nothing either way).
        """
        # inf and huge values mean no deadline, for the loop's timer too (None: no call to say so)
        limit = None if timeout_s is None else check_timeout(timeout_s)
        answer = _loop_apredict(self, model, inputs, version=version, context=context, timeout_s=limit)
        if type(answer) is Prediction:  # a lone request, answered at once (no other task could join it)
            return answer
        try:  # (type() above is cheaper than an ABC's isinstance)
            return await answer  # type: ignore[misc,no-any-return]  # (an awaitable now: typing.cast costs a call)
        except asyncio.CancelledError:  # the task was cancelled: its request leaves the queue if still there
            _loop_given_up(answer)
            raise
        finally:  # this frame joins an error's traceback: it must not keep the future that holds the error
            del answer

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

        ``inputs`` is either a whole input (an array, or an array of another library with a shape, such as a
        pandas ``Series`` or a tensor, or a memoryview; input name -> array; or a data frame, pandas' or polars',
        or a pyarrow ``Table``, whose columns are the inputs by name as a CSV file's are for the ``score``
        command: docs/performance.md, "Batch scoring"), cut into chunks of ``batch_rows`` rows (default: the
        version's ``max_batch_size``) with one :class:`Prediction` per chunk; or an iterable of batches (arrays,
        mappings, data frames or pyarrow ``RecordBatch``es, read as above), read lazily, with one
        :class:`Prediction` per batch (a batch larger than a request is sent in parts and joined back; each
        batch's arrays are copied as it is read, so a generator may reuse one buffer; a batch of no rows is
        answered in its place with zero rows of each output, without a model run). For a model fast per row,
        requests hold several chunks, up to 256 rows and ``batching.max_batch_bytes`` of input, each run as one
        onnxruntime run (not in slices of the rows one run takes: ``max_batch_size``, fewer for wide rows), and so do a
        ZipMap classifier's, whose requests are never merged; where the version's sessions leave a core idle,
        the iterating thread runs requests itself beside the workers (docs/performance.md, "Batch scoring"). A
        bounded window is kept submitted (default: two full requests of rows per session, and at most 64 MiB of
        input rows, at least one request; ``max_in_flight``: at most that many requests, as given; never more
        queued rows than ``max_queue_rows``) so the sessions stay busy without :class:`QueueFullError`; when
        other traffic fills the queue a request is retried (not counted as shed). A batch of an iterable is read
        only while the window has room, never between an answer coming in and its hand-over; a queue consumer
        whose reads wait for messages and that must answer each one before waiting for the next passes
        ``max_in_flight=1``. Each request is routed like
        a :meth:`predict` call: pin ``version`` to score a whole job on one version (the parts of one batch
        follow its first part's routing while that routing stands, and are answered by one version:
        docs/performance.md, "Batch scoring"). The version's prediction cache is neither read nor filled (nor are
        identical requests in flight shared). Closing the iterator early (``break``, an exception) cancels the
        requests still queued.

        Thread-safe like :meth:`submit`; the returned iterator belongs to the thread that iterates it.

        Args:
            progress: ``True``: a progress bar on stderr when it is a terminal; a callable: called with
                ``(done_rows, total_rows)`` after each answer (``total_rows`` is ``None`` for an iterator).
            timeout_s: A deadline for each chunk (``None``, ``math.inf`` or anything >= 1e6 s: none).

        Raises:
            ModelNotFoundError: unknown model or version (at once).
            ValueError, TypeError: bad arguments (at once), among them ``batch_rows`` with a whole input to a
                model whose answers have no row per input row (such an input cannot be cut into chunks).
            InvalidInputError: a whole input whose arrays disagree on their number of rows, or a ragged
                one, or a masked array with a masked value (in any chunk); a data frame whose columns do not
                fit the inputs, or hold a missing value (at once).
            InprocserveError: a chunk failed, or a batch of an iterable could not be read or checked (a
                ragged one: ``InvalidInputError``); raised when iteration reaches it, after the answers before
                it, with a note naming its rows. Nothing after it is submitted.
        """
        timeout_s = check_timeout(timeout_s)  # (math.inf and huge values: no deadline, as for predict)
        if version is not None and type(version) is not int:
            version = version_number(version)
        routes = self._routes.get(model)
        target = None if routes is None else routes.default if version is None else routes.versions.get(version)
        if target is None:
            raise self._not_found(model, version)
        plan = plan_for_version(target, batch_rows=batch_rows, max_in_flight=max_in_flight, timeout_s=timeout_s)
        signature = target.signature
        if signature is not None and is_data_frame(inputs):  # its columns by name, as a CSV file's
            inputs = frame_inputs(inputs, signature)
        else:  # a pandas Series, a tensor: one whole input (iterated, its items were taken for batches)
            inputs = whole_array_of(inputs)
        inputs = checked_whole_input(target, plan, inputs, batch_rows=batch_rows)

        def batch_of(item: Any) -> Any:
            # an iterable's batch that is a frame is read as predict reads one: made an array by owned() (its
            # values in column order), it was refused, or scored on the wrong columns, without a word
            return frame_inputs(item, signature) if signature is not None and is_data_frame(item) else item

        def submit(
            part: Any,
            *,
            beside: bool = False,
            pin: int | None = None,
            route: SameRoute | None = None,
            last_try: bool = False,
        ) -> Future[Prediction]:
            future: Future[Prediction] = Future()
            follows = route is not None and pin is None and version is None
            decided = None
            published = None
            if follows and route is not None:
                published = self._routes.get(model)  # (read before it decides: a later one routes the next afresh)
                if published is not None and route.holds(published):
                    decided = route.decision

            def dispatch(decided: Decision | None) -> Request:
                request, copy = self._dispatch(
                    model,
                    part,
                    version if pin is None else pin,
                    context,
                    timeout_s,
                    future,
                    inline=False,
                    run_rows=plan.run_rows,
                    beside=beside,
                    planned=target,
                    shared=False,  # an offline job would evict the online entries, and fill them with its own
                    decided=decided,
                    decided_with=published,
                    retried=not last_try,  # a full queue is waited out (see Submit): no shed until the last try
                )
                note_copy(future, copy)  # (the parts of a batch agree on it: see _scoring._on_one_version)
                return request

            try:
                try:
                    request = dispatch(decided)
                except ModelNotFoundError:
                    if decided is None:
                        raise
                    # the batch's version was unloaded since its first part: this part is routed afresh (the
                    # batch's parts are then made to agree on one version when they are all in, see score)
                    decided = None
                    request = dispatch(None)
                if decided is None and route is not None and published is not None:
                    # routed afresh (the first part, or the routing changed since): the next parts follow it
                    route.decision, route.routes = request.route.decision, published
            except InprocserveError as exc:
                future.set_exception(drop_tracebacks(exc))  # its frames (this one's future, the part): a cycle
            return future

        def answer_empty(part: Any) -> Future[Prediction]:
            # A batch of no rows (an empty poll, a filter that dropped every row) is routed and checked like any
            # batch, and answered with zero rows of each output in its place, without a model run: refused as
            # a request of 0 rows, it ended the whole job. (A model with no batch axis refuses it as before.)
            future: Future[Prediction] = Future()
            try:
                _, target, decision = self._route(model, version, context)
                signature = target.signature
                assert signature is not None
                fixed = signature.fixed_rows is not None  # (exactly N rows per run: its outputs have rows too)
                # (a ZipMap's maps, and a scale of rank 0 beside the rows, keep requests apart but not the rows)
                if not (signature.batchable or signature.rows_in_maps() or fixed or signature.rows_beside_values()):
                    return submit(part)
                try:
                    # ([]: a list of no rows has no shape to check)
                    if not _no_values(part, signature.input_names):
                        signature.validate(part, max_rows=target.max_request_rows, no_rows_ok=True)
                    outputs = signature.empty_answer(as_run=True)  # (strings and maps as a run gives them)
                except InvalidInputError as exc:
                    raise _naming(target, exc) from None
                future.set_result(
                    prediction_of(
                        outputs, target.name, target.version, decision.variant, decision.reason, self._ids.next()
                    )
                )
            except InprocserveError as exc:
                future.set_exception(drop_tracebacks(exc))
            return future

        try:
            return score(
                submit,
                inputs,
                plan,
                progress=progress,
                timeout_s=timeout_s,
                answer_empty=answer_empty,
                batch_of=batch_of,
                named=functools.partial(_naming_model, model),
            )
        except InvalidInputError as exc:  # a whole input refused at once (ragged, masked): named as predict names it
            raise _naming(target, exc) from None

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
        run_rows: int | None = None,
        beside: bool = False,
        planned: ModelVersion | None = None,
        opened: _Opened | None = None,
        readmit: bool = False,
        shared: bool = True,
        decided: Decision | None = None,
        decided_with: Routes | None = None,
        retried: bool = False,
    ) -> tuple[Request, ModelVersion]:
        """Route, validate, then answer from the cache, follow an identical request, or queue; every
        request that gets here is answered through :meth:`_answered`, or raises having been refused.

        Batch scoring sets ``run_rows`` (rows per model run of a large request) and ``beside`` (run it now
        on this thread, beside the workers: :meth:`Batcher.run_beside`), both planned for the version
        ``planned``: a request routed to another one (a canary, or a version loaded meanwhile) is queued
        like any other, within that version's own limits. ``opened``: what :meth:`_predict_plain` did for
        this request before it found the way busy (its start, deadline, span, route and validated inputs;
        its lead of identical requests, which the request takes over, or ends if it is refused).
        ``readmit``: with ``opened``, the request is part of a merged request still counted in flight on
        ``opened.target`` (see :meth:`Batcher.submit`), queued there again on its own. ``shared=False``
        (batch scoring): the request neither reads nor fills the version's cache, nor follows or leads
        identical requests in flight. ``decided``: the request is routed as this decision says (the version
        it names, its variant, reason and shadows) without asking the rollout again (the later parts of a
        batch that batch scoring sends in parts), with ``decided_with`` published (another snapshot published
        since: routed afresh); ``ModelNotFoundError`` if that version is not served. ``retried``: its caller
        sends it again if the queue turns it away (batch scoring), so that ``QueueFullError`` is not counted as a
        shed, nor as a request: nobody was refused."""
        lead = None
        if opened is None:
            if timeout_s is not None:
                timeout_s = check_timeout(timeout_s)
            started = time.perf_counter()
            span: Any = None  # started once routed: one sent off an event loop (WaitOffLoop) leaves none behind
            deadline = None if timeout_s is None else self._clock() + timeout_s
        else:
            started, span, deadline = opened.started, opened.span, opened.deadline
            lead, led = opened.lead, opened.target
        # its span was asked for a version that computes here, which leaves a dropped root span unmade (see
        # start_request_span): routed again to a remote version, it is asked for anew, for its traceparent
        span_local = opened is not None and _computes_here(opened.target)
        decision: Decision | None = None
        target: ModelVersion | None = None
        request: Request | None = None
        answering: Request | None = None
        try:
            for _ in range(_RETRIES_ON_RETIRED):
                requeued = readmit and opened is not None
                if opened is not None:  # routed and validated already (only once: a retry routes again)
                    routes, target, decision, arrays, rows, key = (
                        opened.routes,
                        opened.target,
                        opened.decision,
                        opened.arrays,
                        opened.rows,
                        opened.key,
                    )
                    opened = None
                else:
                    routed = None if decided is None else self._route_decided(model, decided, decided_with)
                    routes, target, decision = routed or self._route(model, version, context)
                    arrays, rows = self._validated(target, inputs)
                    key = None
                if span is None or (span is INVALID_SPAN and span_local and not _computes_here(target)):
                    batcher = target.batcher
                    span = (
                        start_request_span(model, since=started)
                        if batcher is None
                        else batcher.telemetry.start_request_span(since=started)
                    )
                    span_local = _computes_here(target)
                request = Request(arrays, rows, self._route_of(routes, target, decision), deadline, future)
                request.span = span
                request.started = started
                as_planned = target is planned
                if as_planned:
                    request.run_rows = run_rows
                if lead is not None:  # it leads identical requests already: it runs, they follow it
                    self._sharing.take_over(target, request, lead)
                    lead, runs = None, True
                else:
                    runs = not shared or not self._sharing.answered_without_run(target, request, key)
                if runs:
                    assert target.batcher is not None
                    try:
                        if beside and as_planned:
                            target.batcher.run_beside(request)
                        else:
                            target.batcher.submit(request, run_inline=inline, readmit=requeued)
                    except BaseException as exc:  # refused before it was queued: whoever follows it must not wait
                        self._sharing.release(request, None, exc)
                        if isinstance(exc, VersionRetiredError):
                            request = None
                            continue  # the version was replaced between routing and queueing: route again
                        raise
                answering, request = request, None  # queued, or answered without a run: it is answered
                routes.router.served(answering.route.request_id, decision, answering.arrays, routes.state)
                return answering, target
            if self._registry.closed:  # (closed at interpreter exit, see _close_unclosed: not a model unloading)
                raise ServerClosedError("the server is closed", model=model, version=version)
            raise ModelNotFoundError(f"model {model!r} is being unloaded", model=model, version=version)
        except WaitOffLoop:  # an event loop's request whose flags must be waited for: apredict routes it again
            if span is not None:  # on a worker thread, as a new request (a span only when routed again, retried)
                end_safely(span, "closing a request span")
            raise
        except BaseException as exc:  # refused before it was queued: close its telemetry, then raise
            if target is not None:
                _mark_routed(exc, target.version)
            if answering is not None:  # queued already: a signal handler raised in the caller's thread
                assert target is not None
                if future is None:  # a synchronous caller never waits for it: given up as predict gives it up
                    self._given_up_unwaited(answering, target, exc)
                raise  # (a future's request is answered through the future, as if nothing happened)
            if lead is not None:  # (refused before its request took the lead over)
                self._sharing.finish(led, lead, None, exc)
            if request is not None:  # refused between its lookup and its queueing: free what it leads
                self._sharing.release(request, None, exc)
            if span is None:  # refused while routing or validating
                span = start_request_span(model, since=started)
            self._telemetry.refused(
                span,
                started,
                model,
                None if target is None else target.version,
                decision,
                exc,
                counted=not (retried and isinstance(exc, QueueFullError)),
            )
            raise

    def _given_up_unwaited(self, request: Request, target: ModelVersion, error: BaseException) -> None:
        """A synchronous request queued (or following an identical one) whose caller's thread was interrupted
        before it began to wait for it: given up as :meth:`predict` gives up an interrupted wait (withdrawn,
        or its answer dropped), and the requests that follow it are released (left waiting, they hung)."""
        batcher = target.batcher
        assert batcher is not None
        if (target.cache is not None or target.config.cache.share_in_flight) and self._sharing.following(
            request, batcher
        ):
            self._sharing.give_up(request)
        else:
            batcher.interrupted(request)
        self._answered(request, self._version_of(request, target), error)

    def _refused_early(self, model: str, version: int | None, error: BaseException, started: float) -> None:
        """Record a request refused before :meth:`predict` (the ``/v2`` endpoints check a request's headers
        and body first), as :meth:`predict` records the requests it refuses."""
        self._telemetry.refused(start_request_span(model), started, model, version, None, error)

    def _new_sharing(self) -> Sharing:
        """Identical requests in flight, none yet (a forked child makes its own: a leader in flight in the
        parent never answers there)."""
        registry = self._registry  # (not the server: its deadline thread would keep the server, see _weakly)
        sharing = Sharing(
            self._weak_deliver,
            self._telemetry,
            clock=self._clock,
            serving=functools.partial(_serving_copy, registry),
            default=functools.partial(_default_version, registry),
            closed=lambda: registry.closed,
        )
        self._sharings[:] = [sharing]
        return sharing

    def _version_of(self, request: Request, target: ModelVersion) -> ModelVersion | None:
        """The version to record a synchronous request against: the one it was routed to, or, for a
        follower run on the version that serves now (its own was unloaded, or replaced by a new copy of it:
        see ``Sharing``), that one."""
        queued_on = request.queued_on
        if request.route.version == target.version and (queued_on is None or queued_on is target.batcher):
            return target
        return self._answering_version(request)

    def _answering_version(self, request: Request) -> ModelVersion | None:
        """The loaded copy of the version that ran ``request``: ``None`` if it was unloaded, or reloaded
        since (its answer is not the new copy's, to cache, monitor or time)."""
        routes = self._registry.routes.get(request.route.model)
        version = None if routes is None else routes.versions.get(request.route.version)
        if version is not None and request.queued_on is not None and version.batcher is not request.queued_on:
            return None
        return version

    def _route(
        self, model: str, version: int | None, context: Mapping[str, Any] | None
    ) -> tuple[Routes, ModelVersion, Decision]:
        routes = self._registry.routes.get(model)
        if routes is None:
            raise self._not_found(model, version)
        if version is None:
            # Decided by the routing state published with these versions, read once with them: a change made
            # meanwhile (a revision that loads a version and makes it stable) is the next request's.
            decision = routes.router.decide(routes.versions, routes.default.version, context, routes.state)
            return routes, routes.versions.get(decision.version) or routes.default, decision
        if type(version) is not int:
            version = version_number(version)
        if context is not None and not isinstance(context, Mapping):  # (as a routed request's is refused)
            raise _not_a_mapping(model, context)
        target = routes.versions.get(version)
        if target is None:
            raise self._not_found(model, version)
        return routes, target, _pinned(version)

    def _route_decided(
        self, model: str, decision: Decision, decided_with: Routes | None
    ) -> tuple[Routes, ModelVersion, Decision] | None:
        """The route of a request that follows ``decision``, made for an earlier request while ``decided_with``
        was published (see :meth:`_dispatch`'s ``decided``); None if another snapshot is published now: the
        request is routed afresh. Followed with a newer one, it was noted with a state that may have pointed
        its variant at another version since (an A/B arm moved by a reload): its run of the old version
        counted as the new one's."""
        routes = self._registry.routes.get(model)
        if routes is not decided_with:
            return None
        target = None if routes is None else routes.versions.get(decision.version)
        if routes is None or target is None:
            raise self._not_found(model, decision.version)
        return routes, target, decision

    @staticmethod
    def _validated(target: ModelVersion, inputs: Any) -> tuple[dict[str, Any], int]:
        signature = target.signature
        assert signature is not None
        try:
            return signature.validate(inputs, max_rows=target.max_request_rows, reject_nan=target.reject_nan)
        except InvalidInputError as exc:
            raise _naming(target, exc) from None

    def _route_of(self, routes: Routes, target: ModelVersion, decision: Decision) -> Route:
        shadows = (
            [routes.versions[v] for v in decision.shadows if v in routes.versions] if decision.shadows else _NO_SHADOWS
        )
        return Route(
            target.name, target.version, decision.variant, decision.reason, self._ids.next(), shadows, decision
        )

    def _deliver(self, request: Request) -> None:
        """Resolve a ``submit`` future, on the thread that finished the request, after :meth:`_answered`."""
        future = request.future
        assert future is not None
        answer: Prediction | Exception | None = None
        try:
            version = self._answering_version(request)
            given = None
            try:
                if request.error is None:
                    # built before it is recorded: one that cannot be (no memory) is recorded as what its caller
                    # gets, an error (it was counted answered, while a merged task's was counted an error)
                    answer = _built(request)
            finally:  # (also if a signal handler's exception interrupted the building: recorded, and the
                # identical requests that follow it released; skipped, they waited for good)
                try:
                    if answer is None and request.error is None:  # interrupted (it goes on up): once more, here,
                        answer = _built(request)  # so that what is recorded is what the future gets
                except BaseException as exc:
                    # (recorded as answered before that try, it counted a success its caller never saw)
                    answer = _interrupted(request, exc)
                    raise
                finally:
                    if isinstance(answer, Exception):
                        given = answer
                    elif answer is not None and type(future) is not Future:  # an event loop's task may have
                        given_error = getattr(future, "given_error", None)  # been answered by its own deadline
                        given = None if given_error is None else given_error()
                    self._answered(request, version, request.error, given=given)
        finally:  # the future is resolved even if what follows an answer failed (its error goes on up)
            _resolve(future, request, answer)

    def _answered(
        self,
        request: Request,
        target: ModelVersion | None,
        error: BaseException | None,
        *,
        given: BaseException | None = None,
    ) -> None:
        """Everything that follows an answer or a failure, once per request, on the thread that finished it:
        release identical requests that followed it (and cache the answer), record latency, close the span
        and record metrics; then, for an answer, feed drift monitoring and offer shadow copies.

        ``target`` is the version that answered, if it still serves (``None``: nothing is recorded on it).
        ``given``: what the caller got instead of this answer (its own deadline answered it meanwhile), which
        its latency and telemetry record; followers, drift and shadows still get the answer.
        """
        if request.cache_key is not None:  # it led identical requests (or its answer is to be cached)
            self._sharing.release(request, target, error)
        elapsed_s = time.perf_counter() - request.started
        recorded = error if given is None else given
        recorder = None
        if target is not None:  # latency percentiles in status(), with or without an OpenTelemetry SDK
            target.latency.record(elapsed_s, failed=recorded is not None)
            recorder = None if target.batcher is None else target.batcher.telemetry
        self._telemetry.answered(request, recorded, elapsed_s, recorder)
        outputs = request.outputs
        if error is not None or outputs is None or target is None:
            return
        if target.drift is not None:
            target.drift.observe(request.arrays, outputs, request.rows, scorer=self._drift)
        route = request.route
        if route.shadows:
            self._shadow.offer(
                route.model,
                route.request_id,
                request.arrays,
                request.rows,
                outputs,
                target,
                route.shadows,
                primary_span=request.span,
            )

    # -- lifecycle (see _registry) -----------------------------------------------------------------------

    def load(
        self,
        name: str,
        *,
        path: str | Path | None = None,
        version: int | None = None,
        config: ModelConfig | None = None,
        remote: RemoteModel | None = None,
    ) -> int:
        """Load a model version and make it servable; returns the version number.

        With ``path`` (a ``.onnx`` file, a ``remote.toml``, or a version folder holding one) no repository is
        needed; ``version`` defaults to one more than the
        highest loaded. With ``remote`` the version runs on the Open Inference Protocol server it names
        (its signature comes from the server's metadata), numbered like ``path``. Without either the model
        is (re)loaded from the repository per its version policy (versions loaded or unloaded by hand before
        go back to it), or just ``version`` if given (a version folder with ``remote.toml`` is served remotely;
        the policy is then applied at once, and a version it does not select stays loaded across refreshes
        until it is unloaded by hand or the model loaded again by name). A version that fails to load never
        replaces a working one.

        Raises:
            ModelLoadError: the model cannot be loaded or warmed up (a remote server that is unreachable,
                or has no such model, is one).
            ModelNotFoundError: no such model in the repository, or an invalid name.
            ValueError: both ``path`` and ``remote``.
            ConfigurationTypeError: ``config`` is not a ``ModelConfig`` (a ``TypeError`` too).
            ServerClosedError: the server is closed, or :meth:`close` stopped the load (nothing was loaded).
        """
        check_model_configs(config, None)
        return self._registry.load(name, path=path, version=version, config=config, remote=remote, by_hand=True)

    def unload(self, name: str, version: int | None = None, *, timeout_s: float | None = None) -> None:
        """Stop serving a model (or one version) after its queued and running requests finish.

        What is unloaded by hand stays unloaded across refreshes until it is loaded again. For a model
        from the repository, unloading one version applies the version policy to the remaining versions
        at once: with ``latest`` the next highest version is loaded and warmed up first, then takes over.

        Args:
            timeout_s: How long to wait for the unloaded versions' queued and running requests: those still
                queued then get :class:`ServerClosedError` and a run still going is stopped by onnxruntime.
                ``None``: wait until they finish (a run's own ``pool.max_run_s`` still bounds it). Other models'
                hot reload and loads go on meanwhile; :meth:`close` stops what is left once its own wait is over.

        Raises:
            ModelNotFoundError: the model or version is not loaded.
        """
        self._registry.unload(name, version, timeout_s=timeout_s)

    def refresh(self) -> list[str]:
        """Re-scan the repository: load new versions, retire removed ones. Returns problems found.

        New versions are loaded and warmed up before they take traffic; removed versions drain first.
        Failures are logged and kept in :meth:`status`; they never interrupt serving.
        """
        return self._registry.refresh()

    # -- status and shutdown -------------------------------------------------------------------------------

    def status(self, *, include_paths: bool = True) -> dict[str, Any]:
        """A JSON-ready snapshot: every model, its versions, their state, errors, providers and queues;
        which worker answered (pid, hostname, start time) and the control revision it follows.

        Args:
            include_paths: ``False`` removes every file-system path (the repository, model files, and
                paths quoted in error messages), for status shown to callers who are not administrators.
        """
        return server_status(self._registry, self._operations, self._shadow.status, include_paths=include_paths)

    def _brief_status(self, models: Collection[str] | None = None, *, signatures: bool = False) -> dict[str, Any]:
        """For readiness and the protocol's model endpoints (per call, unauthenticated): ``status(include_paths
        =False)`` cut to ``closed``, ``control`` and the ``models`` named (all when ``None``), each version
        with its state, error, health and (``signatures``) signature only (see ``_snapshot.brief_status``)."""
        return brief_status(self._registry, self._operations, models, signatures=signatures)

    def readiness(self, required: Sequence[str] | None = None) -> Readiness:
        """Whether this server can answer: open, with at least one model, and every model in ``required``
        (default: every model found) servable; ``reasons`` says why not, per model, without paths."""
        return readiness(self, required)

    @property
    def models(self) -> dict[str, list[int]]:
        """Servable model names and their servable versions (thread-safe: read while models load)."""
        # The table copied in one C call first: walked in Python, a model published or unloaded by another
        # thread meanwhile raised "dictionary changed size during iteration" (each model's versions are a
        # snapshot, never changed)
        return {name: sorted(routes.versions) for name, routes in list(self._registry.routes.items())}

    @property
    def repository(self) -> Path | None:
        """The model repository folder this server reads, absolute: a relative path given is taken from the
        working directory as the server is built, and stays that folder after a ``chdir`` (links on it are kept,
        not resolved); ``None`` when it has none (models loaded in code, by path). Error messages quote its files
        under it."""
        return self._registry.repository

    def close(self, *, timeout_s: float | None = 30.0) -> None:
        """Stop taking requests, let queued and running ones finish (up to ``timeout_s`` per version),
        then release every session. Requests still queued then get :class:`ServerClosedError`, and so do
        runs still in flight: onnxruntime stops them at their next operator (a run that outlasts the wait,
        such as a loop whose trip count a client chose, would hold its session and then abort the process
        at exit). Idempotent; later calls raise :class:`ServerClosedError`. A call made while the server is
        being closed on another thread (another ``close()``, or the clean-up at interpreter exit of servers
        nobody closed) waits up to ``timeout_s`` (``None``: until it ends) for that closing to end."""
        if not self._closing.begin():
            self._closing.wait(timeout_s)
            return
        try:
            self._close(timeout_s)
        finally:
            self._closing.end()

    def _close(self, timeout_s: float | None) -> None:
        # (each part's close is idempotent: in a forked child, this finishes a closing the parent had begun)
        # A refresh holds the lock below until it has loaded every version it found: told to stop first, it
        # stops after the load in progress, where close() waited for all of them (each a release's load and
        # warm-up) only to unload them, past a worker's graceful-shutdown timeout (the exit's clean-up did so).
        self._registry.stop_poller()
        with self._registry.lock:
            self._shadow.close()
            if self._flags is not None:
                self._flags.close()
            self._registry.close(timeout_s=timeout_s)
        # Join the threads outside the lock: each may be waiting for it, and finds the server closed.
        self._registry.join_poller()
        self._operations.close()
        self._drift.close()
        self._sharing.close()
        self._finalizer.detach()
        METRICS.remove_source(self._gauge_source)

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<inprocserve.Server models={self.models} closed={self._registry.closed}>"

    # -- for the modules that share the request path (_loop_batching, _scoring_io) and their tests ----------

    @property
    def _routes(self) -> dict[str, Routes]:
        return self._registry.routes

    def _not_found(self, model: object, version: object) -> Exception:
        return self._registry.not_found(model, version)

    def _config_for(self, name: str, source: ModelSource, override: ModelConfig | None) -> ModelConfig:
        return self._registry.config_for(name, source, override)

    @staticmethod
    def _noting_routes() -> object:
        return noting_routes()

    @staticmethod
    def _stop_noting() -> None:
        stop_noting()

    @staticmethod
    def _routed_version(exc: BaseException, asked: int | None, reader: object) -> int | None:
        return routed_version(exc, asked, reader)

    def _after_fork_in_child(self) -> None:
        # A close() (or the exit's clean-up) under way in the parent: closed here too, and closed for good by
        # the child's own close() or exit clean-up, at once (no thread here would end the parent's).
        closing = self._closing.after_fork_in_child()
        _reaper.start()  # (the parent's clean-up thread is not in the child)
        self._registry.after_fork_in_child(closing=closing)
        self._operations.after_fork_in_child()
        # a leader in flight in the parent never answers here; its lock may have been held at the fork
        self._sharing = self._new_sharing()


# How long an exiting process waits for the version a hot reload or a control-file switch is loading (no
# other is started once it exits): under gunicorn's 30 s defaults for --graceful-timeout and --timeout.
_EXIT_WAIT_S = 20.0


def _weakly(method: Callable[..., Any], orphaned: Callable[..., Any]) -> Callable[..., Any]:
    """``method`` of a server, held weakly: a call once the server is garbage goes to ``orphaned`` with the
    same arguments (the server's parts outlive it: its threads end after it, in its clean-up)."""
    held = weakref.WeakMethod(method)

    def call(*args: Any, **kwargs: Any) -> Any:
        bound = held()
        return orphaned(*args, **kwargs) if bound is None else bound(*args, **kwargs)

    return call


def _serving_copy(registry: Registry, model: str, version: int) -> ModelVersion | None:
    routes = registry.routes.get(model)
    return None if routes is None else routes.versions.get(version)


def _default_version(registry: Registry, model: str) -> ModelVersion | None:
    routes = registry.routes.get(model)
    return None if routes is None else routes.default


def _deliver_without_server(sharings: list[Sharing], telemetry: RequestTelemetry, request: Request) -> None:
    """Resolve a ``submit`` future that a server nobody holds any more answered (in its clean-up), wake the
    identical requests that followed it, and close its span and record its metrics (as ``_answered``)."""
    future = request.future
    assert future is not None
    try:
        for sharing in sharings:
            sharing.release(request, None, request.error)
        telemetry.answered(request, request.error, time.perf_counter() - request.started, None)
    finally:  # the future is resolved even if what comes before failed (its error goes on up)
        _resolve(future, request)


def _resolve(future: Any, request: Request, answer: Prediction | Exception | None = None) -> None:
    """Give a ``submit`` future (or an event loop's task) the request's error, or ``answer``, its answer as
    :func:`_built` built it (``None``: built here). An answer that cannot be built (out of memory) is the
    caller's error, logged once: the future left unset waited for good (an event loop's task too, its answer
    claimed from its own deadline before the failure). Raised on, it reached whoever finished the request:
    ``submit``'s own caller (an answer from the cache), or a worker or the loop, which logged a batch or a run
    as failed that had run."""
    with contextlib.suppress(InvalidStateError):  # cancelled by its caller meanwhile
        if request.error is not None:
            future.set_exception(request.error)
            return
        if answer is None:
            try:
                answer = _built(request)
            except BaseException as exc:  # a signal handler's (gevent's Timeout, Ctrl-C): goes on up, and the
                # future gets an error naming it (left unset, its caller waited for good)
                future.set_exception(_interrupted(request, exc))
                raise
        if isinstance(answer, Exception):
            future.set_exception(answer)
        else:
            future.set_result(answer)


def _interrupted(request: Request, exc: BaseException) -> InferenceError:
    """The error of a caller whose answer's building ``exc`` (a signal handler's) interrupted."""
    route = request.route
    return InferenceError(
        f"model {route.model!r}: building the answer was interrupted by {type(exc).__name__}; retry",
        model=route.model,
        version=route.version,
    )


def _built(request: Request) -> Prediction | Exception:
    """The caller's answer to ``request``, which has one; or, logged, the error building it failed with (no
    memory for it), without its traceback (which would hold this frame and the future's)."""
    try:
        return request.prediction()
    except Exception as exc:
        route = request.route
        logger.exception(
            "model %r version %s: a request's answer could not be built; its caller gets the error",
            route.model,
            route.version,
        )
        return drop_tracebacks(exc)


def _gone(*args: Any, **kwargs: Any) -> Any:
    raise ServerClosedError("the server was garbage-collected without close(); it serves nothing")


def _close_unclosed(closing: _reaper.Closing, *parts: Any) -> None:
    """The clean-up of a server nobody closed (see :func:`_clean_up_unclosed`), unless a ``close()`` on another
    thread began first (at interpreter exit): then wait for that one (bounded), not run it a second time."""
    if not closing.begin():
        if not closing.wait(_EXIT_WAIT_S):
            logger.error(
                "a close() of the server on another thread is still running after %gs; exiting anyway", _EXIT_WAIT_S
            )
        return
    try:
        _clean_up_unclosed(*parts)
    finally:
        closing.end()


def _clean_up_unclosed(
    loaded: dict[str, dict[int, ModelVersion]],
    shadow: ShadowRunner,
    drift: DriftScorer,
    flags: FlagReader | None,
    gauge: Callable[[], Any],
    sharings: list[Sharing],
    registry_ref: weakref.ref[Registry],
    operations_ref: weakref.ref[Operations],
) -> None:
    """Last-resort cleanup when a Server is garbage-collected or the interpreter exits unclosed (a web
    worker's server, that nothing closes, at the worker's exit), on :mod:`._reaper`'s thread (at exit, on the
    main thread): it takes the server's locks and joins its threads, which the thread the collector ran on
    may hold or be. The hot-reload poller and the control-file watcher are stopped first, and waited for, and
    so is a load on another thread (see :func:`_loads_finished`): any may be building a version's sessions,
    and onnxruntime aborts the process at exit (``std::terminate``, SIGABRT) if a thread is still inside it
    then. The shadow run in flight is stopped,
    not waited out (nobody waits for its answer); should its thread still be inside a session after the
    wait, the sessions are left to the process's end rather than closed under it."""
    registry, operations = registry_ref(), operations_ref()
    if registry is not None:
        # Closed from here on: a thread still serving at exit (a daemon thread's event loop, a threaded dev
        # server's request) is refused with ServerClosedError (HTTP 503), not told that its model is being
        # unloaded (ModelNotFoundError, a 404), once the versions below are closed under it.
        registry.closed = True
        registry.stop_poller()
    if operations is not None:
        operations.stop_watcher()
    deadline = time.monotonic() + _EXIT_WAIT_S
    if registry is not None and not registry.join_poller(timeout_s=_EXIT_WAIT_S):
        logger.error("the hot-reload thread is still loading a version after %gs; exiting anyway", _EXIT_WAIT_S)
    if operations is not None and not operations.join_watcher(timeout_s=max(0.0, deadline - time.monotonic())):
        logger.error("the control-file thread is still applying a revision after %gs; exiting anyway", _EXIT_WAIT_S)
    if registry is not None and not _loads_finished(registry, deadline):
        logger.error("a model is still loading after %gs; exiting anyway", _EXIT_WAIT_S)
    if shadow.close():
        close_versions(loaded)
        if registry is not None:  # (versions a refresh or an unload left draining: not in loaded any more)
            registry.close_draining(timeout_s=1.0)
    else:
        logger.error("a shadow run is still in flight after %gs; exiting without closing the sessions", STOP_WAIT_S)
    drift.close(timeout_s=1.0)
    if flags is not None:
        flags.close()
    METRICS.remove_source(gauge)
    for sharing in sharings:
        sharing.close()


def _loads_finished(registry: Registry, deadline: float) -> bool:
    """Wait until ``deadline`` for a load running on another thread than the poller's: the server's own
    construction, on whatever thread built it (the plug-ins' lazy build: a request's thread, a daemon under
    the development server), or :meth:`Server.load`. Every load holds the registry's lock, and none starts
    once the poller is stopped; exiting while one was inside onnxruntime's session creation aborted the
    process ("terminate called without an active exception", SIGABRT), a Ctrl-C during the first request."""
    if not registry.lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
        return False
    registry.lock.release()
    return True


def _no_values(batch: Any, names: Collection[str]) -> bool:
    """Whether ``batch`` is an empty list (or a mapping of the model's input names to empty lists): a consumer
    that decodes its messages into lists of rows polled nothing. It has no shape to check (``[]`` is taken for
    a 1-D array, which a model of rows of features refused as the wrong rank)."""

    def empty(value: Any) -> bool:
        return isinstance(value, (list, tuple)) and not value

    if isinstance(batch, Mapping):
        return bool(batch) and set(batch) == set(names) and all(empty(value) for value in batch.values())
    return empty(batch)


_ROUTED_TO = "_inprocserve_routed_to"
"""The attribute that tells which version a request was routed to, set on an interruption (gevent's
``Timeout``, ``KeyboardInterrupt``) raised out of the full way once it was routed: it is raised on as it is (a
synchronous caller's Ctrl-C stays a ``KeyboardInterrupt``), and whoever turns it into an error for a task
(``_off_loop``) names that version, not the one its caller asked for (``None`` when routed). The note is
``(reader, version)``: made only while a reader waits for it on this thread (:func:`noting_routes`), and read
only by that reader. gevent raises one ``Timeout`` instance again: a note made for nobody (a synchronous
caller's request), or for an earlier call, named the version an earlier request ran in a later one that was
never routed."""

_noting: ThreadValue[object | None] = ThreadValue(None)  # the token of the call that reads this thread's notes now
# (one per caller: a greenlet under gevent's patch, also one made after this module was imported, as gunicorn's
# --preload does. A threading.local made here was one for all of a thread's greenlets then: another greenlet's
# call that ended stopped the reading of the one interrupted, whose error named the version asked for.)


def noting_routes() -> object:
    """Start reading the notes made on this thread (until :func:`stop_noting`); returns the reader's token."""
    reader = object()
    _noting.set(reader)
    return reader


def stop_noting() -> None:
    _noting.set(None)


def _mark_routed(exc: BaseException, version: int) -> None:
    """Note on ``exc`` (not an :class:`Exception`: those name their version themselves) that its request was
    routed to ``version``, for the reader on this thread (nothing without one)."""
    reader = _noting.get()
    if reader is not None and not isinstance(exc, Exception):
        with contextlib.suppress(AttributeError, TypeError):  # (an instance without a __dict__: nothing noted)
            setattr(exc, _ROUTED_TO, (reader, version))


def routed_version(exc: BaseException, asked: int | None, reader: object) -> int | None:
    """The version the request that ``exc`` interrupted was routed to, as noted for ``reader``, or ``asked``
    if it was not routed yet (or the note is another's); the note is taken off."""
    note = getattr(exc, _ROUTED_TO, None)
    if not isinstance(note, tuple) or note[0] is not reader:
        return asked
    with contextlib.suppress(AttributeError, TypeError):
        delattr(exc, _ROUTED_TO)
    routed: int = note[1]
    return routed


def _naming(target: ModelVersion, error: BaseException) -> BaseException:
    """An :class:`InvalidInputError` that names the model and version (the caller may serve several), for one
    that does not; any other error as it is."""
    if not isinstance(error, InvalidInputError):
        return error
    return InvalidInputError(
        f"model {target.name!r} version {target.version}: {error.message}", model=target.name, version=target.version
    )


def _naming_model(model: str, error: BaseException) -> BaseException:
    """An :class:`InvalidInputError` that names no model, named after ``model`` (a batch of ``predict_many``
    refused as it was read, before it was routed to a version); any other error as it is."""
    if not isinstance(error, InvalidInputError) or error.model is not None:
        return error
    named = InvalidInputError(f"model {model!r}: {error.message}", model=model)
    named.__cause__ = error.__cause__
    named.__suppress_context__ = True
    if hasattr(error, "__notes__"):
        named.__notes__ = list(error.__notes__)
    return named


def version_number(version: object) -> int:
    """The version a caller pinned, as an int: an ``int``, or another integral number (a numpy integer).

    Raises:
        TypeError: anything else: ``True`` and ``1.0`` equal version 1 as dict keys, and must not pin it.
    """
    if isinstance(version, bool) or not isinstance(version, numbers.Integral):
        raise TypeError(f"version must be an int or None, got {type(version).__name__}")
    return int(version)


def _refusal(
    check: _AnswerCheck, outputs: Mapping[str, Any], version: int, answering: ModelVersion | None
) -> Exception | None:
    """What ``check`` raised for this answer, or ``None``: any error is the request's refusal (one raised out of
    the recording would leave the requests that followed it waiting for good)."""
    try:
        check(outputs, version, answering)
    except Exception as exc:
        return exc
    return None


def _pinned(version: int) -> Decision:
    """The routing decision of a request that pinned ``version``."""
    return Decision(version, "pinned", "version requested by caller")


def _computes_here(target: ModelVersion) -> bool:
    """Whether ``target`` computes in this process (its request spans are never sent on)."""
    return target.batcher is not None and target.batcher.telemetry.local


@dataclass(slots=True)
class _Opened:
    """What :meth:`Server._predict_plain` did for a request before handing it to the full way."""

    started: float
    span: Any
    deadline: float | None
    routes: Routes
    target: ModelVersion
    decision: Decision
    arrays: dict[str, Any]
    rows: int
    key: bytes | None = None
    """The inputs' digest (``_inflight.inputs_key``), when a lookup in the version's cache missed already."""
    lead: Lead | None = None
    """Its lead of identical requests (a cache miss that found the session taken): the full way takes it
    over (:meth:`Sharing.take_over`), or ends it if it refuses the request."""
