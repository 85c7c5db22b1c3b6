"""Rollout operations: switch, rollback, canary, kill switch, fleet reload, guarded promotion, interleaving
and outcomes, and following the repository's control file.

Every change goes through the registry's lifecycle lock, is written to the control file (with a repository)
so the fleet follows it, and is then adopted by this process. Flags are read only through each model's
``Router`` (and so its ``FlagReader``): a failing provider never reaches the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._control import Control, ControlFile, ModelControl, switched, validate_percent, validate_version
from ._errors import ConfigurationError, PromotionRefusedError
from ._prediction import Prediction, RequestIds
from ._registry import Registry, Routes
from ._shadow import compare_outputs
from ._signature import incompatibilities

__all__ = ["InterleavedRanking", "Operations", "PromotionReport"]

logger = logging.getLogger(__name__)

_REPORT_KEYS = {"model": "model", "from": "from_version", "to": "to_version", "samples": "samples"}
_REPORT_KEYS |= {"max_abs_diff": "max_abs_diff", "label_agreement": "label_agreement", "reason": "reason"}


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionReport:
    """What a guarded promotion compared and decided.

    It also reads like the dict ``promote()`` returned before (``report["from"]``, ``report["reason"]``);
    :meth:`to_dict` gives that dict, which ``PromotionRefusedError.report`` carries.
    """

    model: str
    from_version: int
    """The stable version the candidate was compared with (never a canary or arm a request might draw)."""
    to_version: int
    samples: int
    """Recent real inputs both versions answered."""
    max_abs_diff: float | None = None
    """Largest absolute difference between their numeric outputs (``None``: none to compare)."""
    label_agreement: float | None = None
    """Share of rows whose argmax agreed (``None``: no class outputs)."""
    reason: str = ""
    """``"within bounds"`` when promoted, else why it was refused."""

    def violations(self, *, max_abs_diff: float | None, min_label_agreement: float | None) -> list[str]:
        """The bounds this comparison breaks, as messages (empty: it may be promoted)."""
        problems = []
        if max_abs_diff is not None and self.max_abs_diff is not None and self.max_abs_diff > max_abs_diff:
            problems.append(f"max abs diff {self.max_abs_diff:.3g} > {max_abs_diff:g}")
        agreement = self.label_agreement
        if min_label_agreement is not None and agreement is not None and agreement < min_label_agreement:
            problems.append(f"label agreement {agreement:.3f} < {min_label_agreement:g}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON-ready dict with the keys ``from``, ``to``, ``samples`` ..."""
        return {key: getattr(self, name) for key, name in _REPORT_KEYS.items()}

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, _REPORT_KEYS[key])
        except KeyError:
            raise KeyError(key) from None


@dataclass(frozen=True, slots=True)
class InterleavedRanking:
    """An interleaved result list: item indices (rows of the inputs) in display order, and for each
    position the ranker ("A" or "B") that contributed it."""

    request_id: str
    model: str
    rankers: tuple[int, int]
    order: list[int]
    teams: list[str]


class Operations:
    """The rollout operations of one server. Thread-safe (changes hold the registry's lock).

    It starts and stops one thread, the control-file watcher (``control_interval_s``).
    """

    def __init__(
        self,
        registry: Registry,
        *,
        control_file: ControlFile | None,
        control_interval_s: float | None,
        ids: RequestIds,
        predict: Callable[..., Prediction],
        submit: Callable[..., Future[Prediction]],
    ) -> None:
        self._registry = registry
        self._control_file = control_file
        self.control_interval_s = None if control_file is None else control_interval_s
        self.control_error: str | None = None
        self._ids = ids
        self._predict = predict
        self._submit = submit
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()

    @property
    def control_path(self) -> str | None:
        return None if self._control_file is None else str(self._control_file.path)

    def read_initial_control(self) -> None:
        """Before the first load: follow the control file from the start (nothing to apply yet)."""
        self._registry.control = self._read_control() or self._registry.control

    def start_watcher(self) -> None:
        """Start the control-file watcher; :meth:`close` stops and joins it."""
        if self.control_interval_s is None or self._registry.closed:
            return
        self._watcher = threading.Thread(target=self._watch, name="inprocserve-control", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop the watcher (idempotent); it finishes the sync it is in, if any."""
        self._stop.set()
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=5)

    def after_fork_in_child(self) -> None:
        self._stop = threading.Event()
        self.start_watcher()

    def record_outcome(
        self, request_id: str | None, reward: float, *, model: str | None = None, key: str | None = None
    ) -> str | None:
        """See :meth:`Server.record_outcome`."""
        if not isinstance(reward, int | float) or isinstance(reward, bool):
            raise TypeError(f"reward must be a number, got {type(reward).__name__}")
        names = [model] if model is not None else list(self._registry.routes)
        for name in names:
            routes = self._registry.routes_of(name)
            variant = routes.router.record_outcome(
                request_id, reward, key if model is not None else None, routes.default.version, routes.versions
            )
            if variant is not None:
                return variant
        return None

    def switch(self, model: str, version: int, *, actor: str | None = None, force: bool = False) -> None:
        """See :meth:`Server.switch`."""
        validate_version(version)
        with self._registry.lock:
            routes = self._registry.serving(model, version)
            if not force:
                self._refuse_if_incompatible(routes, model, version)
            self._registry.incompatible.get(model, {}).pop(version, None)  # the operator accepted its signature
            self._change_control(model, lambda state: switched(state, version), actor)
            logger.info("model %r: stable version is now %s", model, version)

    @staticmethod
    def _refuse_if_incompatible(routes: Routes, model: str, version: int) -> None:
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
        """See :meth:`Server.rollback`."""
        previous = self._current_control().models.get(model, ModelControl()).previous_stable
        if previous is None:
            raise ValueError(f"model {model!r} has no previous stable version to roll back to (no switch recorded)")
        self.switch(model, previous, actor=actor, force=True)  # back to what served before: never refused
        return previous

    def set_canary(self, model: str, version: int | None, *, percent: float, actor: str | None = None) -> None:
        """See :meth:`Server.set_canary`."""
        share = validate_percent(percent)
        with self._registry.lock:
            if version is None:
                self._registry.known(model)
            else:
                validate_version(version)
                self._registry.serving(model, version)

            def change(state: ModelControl) -> ModelControl:
                if version is None:
                    return dataclasses.replace(state, canary_version=None, canary_percent=0.0)
                return dataclasses.replace(state, canary_version=version, canary_percent=share)

            self._change_control(model, change, actor)
            logger.info("model %r: canary is now %s at %g%%", model, version, share)

    def kill(self, model: str, *, actor: str | None = None) -> None:
        """See :meth:`Server.kill`."""
        self._set_kill(model, killed=True, actor=actor)

    def resume(self, model: str, *, actor: str | None = None) -> None:
        """See :meth:`Server.resume`."""
        self._set_kill(model, killed=False, actor=actor)

    def reload(self, *, actor: str | None = None) -> list[str]:
        """See :meth:`Server.reload`."""
        if self._control_file is None:
            return self._registry.refresh()
        with self._registry.lock:
            self._registry.check_open()
            return self._registry.adopt(self._control_file.bump_reload(actor=actor))

    def sync_control(self) -> int:
        """See :meth:`Server.sync_control`."""
        control = self._read_control()
        if control is None or control.revision == self._registry.control.revision:
            return self._registry.control.revision
        with self._registry.lock:
            # Read again under the lock: a revision read before a writer of this process took the lock
            # may be older than the one it wrote and adopted, and adopting it would flip back for one interval.
            control = self._read_control()
            if (
                control is not None
                and not self._registry.closed
                and control.revision != self._registry.control.revision
            ):
                self._registry.adopt(control)
            return self._registry.control.revision

    def _set_kill(self, model: str, *, killed: bool, actor: str | None) -> None:
        with self._registry.lock:
            self._registry.known(model)
            self._change_control(model, lambda state: dataclasses.replace(state, kill=killed), actor)
            logger.info("model %r: kill switch %s", model, "on" if killed else "off")

    def _current_control(self) -> Control:
        if self._control_file is None:
            return self._registry.control
        return self._control_file.read()

    def _change_control(self, model: str, change: Callable[[ModelControl], ModelControl], actor: str | None) -> None:
        """With the lifecycle lock held: write the change (to the file with a repository), then follow it."""
        if self._control_file is not None:
            control = self._control_file.set_model(model, change, actor=actor)
        else:
            state = change(self._registry.control.models.get(model) or ModelControl())
            control = dataclasses.replace(
                self._registry.control,
                revision=self._registry.control.revision + 1,
                models={**self._registry.control.models, model: state},
            )
        self._registry.adopt(control)  # also applies what other writers changed since this server last looked

    def _read_control(self) -> Control | None:
        if self._control_file is None:
            return None
        try:
            control = self._control_file.read()
        except ConfigurationError as exc:
            if str(exc) != self.control_error:
                logger.error("%s; revision %d stays in force", exc, self._registry.control.revision)
            self.control_error = str(exc)
            return None
        self.control_error = None
        return control

    def _watch(self) -> None:
        assert self.control_interval_s is not None
        while not self._stop.wait(self.control_interval_s):
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
    ) -> PromotionReport:
        """See :meth:`Server.promote`."""
        with self._registry.lock:
            routes = self._registry.serving(model, version)
            self._refuse_if_incompatible(routes, model, version)  # its answers could not even be compared
            stable = routes.router.stable_version(routes.versions, routes.default.version)
            samples = list(routes.router.recent)
            report = PromotionReport(model=model, from_version=stable, to_version=version, samples=len(samples))
            if len(samples) < min_samples:
                reason = f"only {len(samples)} recent input(s) to compare on, {min_samples} required"
                report = dataclasses.replace(report, reason=reason)
                raise PromotionRefusedError(reason, report=report.to_dict(), model=model, version=version)
            diffs, agreements = [], []
            for arrays in samples:
                expected = self._predict(model, arrays, version=stable)
                got = self._predict(model, arrays, version=version)
                diff, agreement = compare_outputs(expected, got)
                if diff is not None:
                    diffs.append(diff)
                if agreement is not None:
                    agreements.append(agreement)
            report = dataclasses.replace(
                report,
                max_abs_diff=max(diffs) if diffs else None,
                label_agreement=sum(agreements) / len(agreements) if agreements else None,
            )
            problems = report.violations(max_abs_diff=max_abs_diff, min_label_agreement=min_label_agreement)
            if problems:
                report = dataclasses.replace(report, reason="; ".join(problems))
                logger.warning("model %r: promotion of version %s refused: %s", model, version, report.reason)
                raise PromotionRefusedError(
                    f"promotion of model {model!r} version {version} refused: {report.reason}",
                    report=report.to_dict(),
                    model=model,
                    version=version,
                )
            self._change_control(model, lambda state: switched(state, version), None)  # the whole fleet
            report = dataclasses.replace(report, reason="within bounds")
            logger.info("model %r: promoted version %s over %s (%s)", model, version, stable, report.to_dict())
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
        """See :meth:`Server.interleave`."""
        routes = self._registry.routes_of(model)
        router = routes.router
        rankers = router.rankers(routes.versions, context)
        if not rankers or len(rankers) != 2:
            raise ConfigurationError(f"model {model!r}: interleaving needs rollout.rankers = [A, B]")
        first = self._submit(model, inputs, version=rankers[0], context=context, timeout_s=timeout_s)
        second = self._submit(model, inputs, version=rankers[1], context=context, timeout_s=timeout_s)
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
        """See :meth:`Server.record_click`."""
        for name in [model] if model is not None else list(self._registry.routes):
            team = self._registry.routes_of(name).router.record_click(request_id, int(item))
            if team is not None:
                return team
        return None
