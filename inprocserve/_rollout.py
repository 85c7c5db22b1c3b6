"""Routing decisions: flags plus the request context decide which version answers and which shadow it.

A :class:`Router` per model reads its flags on every request (so a rollout changes without a restart),
buckets targeting keys with a stable hash (so a user keeps their variant across processes and restarts),
and keeps the outcome statistics of A/B tests, bandits and interleaving. A failing or slow flag provider
yields the stable decision and is counted; it never fails a request.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any

import numpy as np
from cachetools import TTLCache

from . import _fork
from ._config import RolloutConfig
from ._experiments import BUCKETS, Interleaving, VariantStats, bucket, compare, epsilon_greedy, pick_weighted, thompson
from ._flags import FlagProvider
from ._telemetry import ATTR_FLAG_PROVIDER, METRICS

__all__ = ["Decision", "FlagReader", "Router"]

logger = logging.getLogger(__name__)

_ASSIGNMENTS_KEPT = 100_000
_ASSIGNMENT_TTL_S = 3600.0
_LOG_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Decision:
    """Which version answers a request, under which variant name, why, and which versions shadow it."""

    version: int
    variant: str
    reason: str
    shadows: tuple[int, ...] = ()
    flags: tuple[tuple[str, str], ...] = ()
    """The flags read for this decision, as (key, value) — recorded on the span by the telemetry layer."""
    provider: str | None = None
    """The name of the flag provider that answered."""


class FlagReader:
    """Evaluates flags for routers: typed reads, a time budget, failure counting, rate-limited logs.

    Thread-safe. Providers marked ``blocking`` are evaluated on a small helper pool so that a hung flag
    service costs a request at most ``timeout_s``.
    """

    def __init__(self, provider: FlagProvider, *, timeout_s: float = 0.05) -> None:
        self.provider = provider
        self.timeout_s = timeout_s
        self.failures = 0
        self.timeouts = 0
        self._lock = threading.Lock()
        self._last_log = -float("inf")
        self._executor: ThreadPoolExecutor | None = None
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._executor = None  # its threads did not survive the fork

    def run(self, decide: Callable[[], Decision], fallback: Callable[[str], Decision]) -> Decision:
        """Run ``decide`` (which reads flags) within the budget; on failure return ``fallback(reason)``."""
        started = time.monotonic()
        try:
            if self.provider.blocking:
                decision = self._pool().submit(decide).result(timeout=self.timeout_s)
            else:
                decision = decide()
        except FutureTimeout:
            self._count("timeouts", f"flag provider {self.provider.name!r} took longer than {self.timeout_s:g}s")
            return fallback("flag provider timed out")
        except Exception as exc:  # any provider failure means: stable
            self._count("failures", f"flag provider {self.provider.name!r} failed: {exc!r}")
            return fallback("flag provider failed")
        if time.monotonic() - started > self.timeout_s:
            self._count("timeouts", f"flag provider {self.provider.name!r} took longer than {self.timeout_s:g}s")
            return fallback("flag provider too slow")
        return decision

    def _pool(self) -> ThreadPoolExecutor:
        if self._executor is None:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="inprocserve-flags")
        return self._executor

    def _count(self, counter: str, message: str) -> None:
        METRICS.flag_failures.add(
            1, {ATTR_FLAG_PROVIDER: self.provider.name, "inprocserve.flags.failure": counter.rstrip("s")}
        )
        with self._lock:
            setattr(self, counter, getattr(self, counter) + 1)
            now = time.monotonic()
            if now - self._last_log < _LOG_EVERY_S:
                return
            self._last_log = now
            total = self.failures + self.timeouts
        logger.warning("%s; the stable version answers (%d flag failures so far)", message, total)

    def boolean(self, key: str, default: bool, context: Mapping[str, Any], used: list[tuple[str, str]]) -> bool:
        value = self.provider.get_boolean(key, default, context)
        used.append((key, str(value)))
        return value

    def number(self, key: str, default: float, context: Mapping[str, Any], used: list[tuple[str, str]]) -> float:
        value = self.provider.get_number(key, default, context)
        used.append((key, str(value)))
        return value

    def string(self, key: str, default: str, context: Mapping[str, Any], used: list[tuple[str, str]]) -> str:
        value = self.provider.get_string(key, default, context)
        used.append((key, value))
        return value

    def obj(self, key: str, default: Any, context: Mapping[str, Any], used: list[tuple[str, str]]) -> Any:
        value = self.provider.get_object(key, default, context)
        used.append((key, str(value)))
        return value

    def status(self) -> dict[str, Any]:
        return {"provider": self.provider.name, "failures": self.failures, "timeouts": self.timeouts}


class _NoFlags:
    """Stands in when the server has no flag provider: every flag has its configured default."""

    provider = None

    def run(self, decide: Callable[[], Decision], fallback: Callable[[str], Decision]) -> Decision:
        return decide()

    def boolean(self, key: str, default: bool, context: Any, used: Any) -> bool:
        return default

    def number(self, key: str, default: float, context: Any, used: Any) -> float:
        return default

    def string(self, key: str, default: str, context: Any, used: Any) -> str:
        return default

    def obj(self, key: str, default: Any, context: Any, used: Any) -> Any:
        return default

    def status(self) -> None:
        return None


_EMPTY: Mapping[str, Any] = {}


class Router:
    """Routing state of one model: the stable alias, the rollout config, and experiment statistics.

    Thread-safe: ``decide`` may run on any number of threads; changes (alias, config) replace values
    atomically.
    """

    def __init__(self, model: str, config: RolloutConfig, flags: FlagReader | None) -> None:
        self.model = model
        self._flags: FlagReader | _NoFlags = flags or _NoFlags()
        self._lock = threading.Lock()
        self._stats: dict[str, VariantStats] = {}
        self._assignments: TTLCache[str, str] = TTLCache(maxsize=_ASSIGNMENTS_KEPT, ttl=_ASSIGNMENT_TTL_S)
        self._interleavings: TTLCache[str, Interleaving] = TTLCache(maxsize=_ASSIGNMENTS_KEPT, ttl=_ASSIGNMENT_TTL_S)
        self.interleaving_wins = {"A": 0, "B": 0, "ties": 0, "queries": 0}
        self.stable_alias: int | None = None
        self.killed = False  # the fleet's kill switch (control file): stable only, whatever flags say
        self._default_decisions: dict[int, Decision] = {}
        self.recent: deque[Mapping[str, np.ndarray]] = deque(maxlen=max(1, config.capture_inputs))
        self.update(config)

    def update(self, config: RolloutConfig) -> None:
        """Apply a (re)loaded configuration; statistics are kept."""
        self.config = config
        self.prefix = config.flag_prefix or self.model
        self._capture = config.capture_inputs > 0
        if self.recent.maxlen != max(1, config.capture_inputs):
            self.recent = deque(self.recent, maxlen=max(1, config.capture_inputs))
        seed = config.seed
        self._rng = np.random.default_rng(seed)
        self._coin = random.Random(seed)
        # With no flags and nothing but a stable version, decide() can skip straight to the answer.
        self.trivial = isinstance(self._flags, _NoFlags) and config.strategy == "stable" and not config.shadow

    # -- the decision ---------------------------------------------------------------------------------------

    def decide(self, ready: Mapping[int, Any], latest: int, context: Mapping[str, Any] | None) -> Decision:
        """Which ready version answers, and which shadow it. Never raises for flag problems."""
        stable = self._stable(ready, latest)
        if self.killed:
            return Decision(stable, "stable", "kill switch is on (control file)")
        if self.trivial:
            if stable == latest and self.stable_alias is None and self.config.stable is None:
                return self._default_decisions.get(stable) or self._remember_default(stable)
            return Decision(stable, "stable", "stable alias")
        ctx = context if context is not None else _EMPTY

        def fallback(reason: str) -> Decision:
            return Decision(stable, "stable", reason)

        decision = self._flags.run(lambda: self._decide(ready, stable, ctx), fallback)
        provider = self._flags.provider
        if provider is None or not decision.flags:
            return decision
        return Decision(
            decision.version, decision.variant, decision.reason, decision.shadows, decision.flags, provider.name
        )

    def _remember_default(self, version: int) -> Decision:
        decision = Decision(version, "default", "latest ready version")
        self._default_decisions = {version: decision}  # replaced whole: readers never see a half-built dict
        return decision

    def _stable(self, ready: Mapping[int, Any], latest: int) -> int:
        alias = self.stable_alias if self.stable_alias is not None else self.config.stable
        return alias if alias is not None and alias in ready else latest

    def _decide(self, ready: Mapping[int, Any], stable: int, ctx: Mapping[str, Any]) -> Decision:
        flags, prefix, config = self._flags, self.prefix, self.config
        used: list[tuple[str, str]] = []
        wanted = flags.number(f"{prefix}.stable", float(stable), ctx, used)
        if int(wanted) in ready:
            stable = int(wanted)
        if flags.boolean(f"{prefix}.kill", False, ctx, used):
            return Decision(stable, "stable", "kill switch is on", (), tuple(used))
        strategy = flags.string(f"{prefix}.strategy", config.strategy, ctx, used)
        key = ctx.get(config.key_field, ctx.get("targeting_key"))
        position = bucket(self.model, config.salt, str(key)) if key is not None else random.randrange(BUCKETS)
        if strategy == "canary":
            version, variant, reason = self._canary(ready, stable, position, ctx, used)
        elif strategy in ("ab", "bandit"):
            version, variant, reason = self._arms(strategy, ready, stable, position, ctx, used)
        else:
            version, variant, reason = stable, "stable", "stable version"
        shadows = self._shadows(ready, version, ctx, used)
        return Decision(version, variant, reason, shadows, tuple(used))

    def _canary(
        self, ready: Mapping[int, Any], stable: int, position: int, ctx: Mapping[str, Any], used: list[tuple[str, str]]
    ) -> tuple[int, str, str]:
        flags, prefix = self._flags, self.prefix
        percent = flags.number(f"{prefix}.canary.percent", self.config.canary_percent, ctx, used)
        candidate = flags.number(f"{prefix}.canary.version", float(self.config.candidate or 0), ctx, used)
        version = int(candidate)
        if version not in ready:
            return stable, "stable", f"canary version {version} is not ready"
        if position < percent * (BUCKETS / 100):
            return version, "canary", f"bucket {position / 100:.2f}% is under the canary's {percent:g}%"
        return stable, "stable", f"bucket {position / 100:.2f}% is above the canary's {percent:g}%"

    def _arms(
        self,
        strategy: str,
        ready: Mapping[int, Any],
        stable: int,
        position: int,
        ctx: Mapping[str, Any],
        used: list[tuple[str, str]],
    ) -> tuple[int, str, str]:
        variants = self.config.variants
        if strategy == "ab":
            defaults = {name: v.weight for name, v in variants.items()}
            weights = self._flags.obj(f"{self.prefix}.ab.weights", defaults, ctx, used)
            name = pick_weighted(position, [(n, float(weights.get(n, 0))) for n in variants])
            reason = f"A/B bucket {position / 100:.2f}%"
        else:
            with self._lock:
                arms = {n: self._stats.setdefault(n, VariantStats()) for n in variants}
                if self.config.bandit_policy == "thompson":
                    name = thompson(arms, self._rng)
                else:
                    name = epsilon_greedy(arms, self._rng, self.config.epsilon)
            reason = f"bandit ({self.config.bandit_policy})"
        version = variants[name].version
        if version not in ready:
            return stable, "stable", f"variant {name!r} version {version} is not ready"
        return version, name, reason

    def _shadows(
        self, ready: Mapping[int, Any], answering: int, ctx: Mapping[str, Any], used: list[tuple[str, str]]
    ) -> tuple[int, ...]:
        flags, prefix = self._flags, self.prefix
        wanted = flags.obj(f"{prefix}.shadow.versions", list(self.config.shadow), ctx, used)
        if not wanted:
            return ()
        percent = flags.number(f"{prefix}.shadow.percent", self.config.shadow_percent, ctx, used)
        if percent < 100 and random.random() * 100 >= percent:
            return ()
        return tuple(int(v) for v in wanted if int(v) in ready and int(v) != answering)

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def served(self, request_id: str, decision: Decision, arrays: Mapping[str, np.ndarray]) -> None:
        """Note who served a request (for outcomes) and keep its inputs (for guarded promotion)."""
        if self._capture:
            self.recent.append(arrays)  # validated arrays are never modified afterwards: no copy needed
        if decision.variant in ("default", "pinned"):
            return
        with self._lock:
            self._stats.setdefault(decision.variant, VariantStats()).served += 1
            if self.config.strategy != "stable" or decision.variant == "canary":
                self._assignments[request_id] = decision.variant

    def record_outcome(
        self, request_id: str | None, reward: float, key: str | None, latest: int, ready: Mapping[int, Any]
    ) -> str | None:
        """Attribute ``reward`` to the variant that served ``request_id`` (or that ``key`` is bucketed to)."""
        with self._lock:
            variant = self._assignments.get(request_id) if request_id is not None else None
        if variant is None and key is not None:
            variant = self.decide(ready, latest, {self.config.key_field: key}).variant
        if variant is None:
            return None
        with self._lock:
            self._stats.setdefault(variant, VariantStats()).add(float(reward))
        return variant

    def remember_interleaving(self, request_id: str, interleaving: Interleaving) -> None:
        with self._lock:
            self._interleavings[request_id] = interleaving
            self.interleaving_wins["queries"] += 1

    def record_click(self, request_id: str, item: int) -> str | None:
        """Credit the team whose ranker contributed ``item``; returns "A", "B" or None if unknown."""
        with self._lock:
            interleaving = self._interleavings.get(request_id)
            if interleaving is None or item not in interleaving.order:
                return None
            before = _winner(interleaving.clicks)
            team = interleaving.team_of(item)
            interleaving.clicks[team] += 1
            after = _winner(interleaving.clicks)
            if before is not None:
                self.interleaving_wins[before] -= 1
            if after is not None:
                self.interleaving_wins[after] += 1
            return team

    def interleave(self, ranking_a: list[int], ranking_b: list[int], length: int | None) -> Interleaving:
        from ._experiments import team_draft

        with self._lock:
            return team_draft(ranking_a, ranking_b, self._coin, length)

    def status(self) -> dict[str, Any]:
        with self._lock:
            stats = {name: s.to_dict() for name, s in self._stats.items()}
            variants = list(self.config.variants) or ["stable", "canary"]
            control = self._stats.get(variants[0])
            tests = {
                name: compare(control, s)
                for name, s in self._stats.items()
                if control is not None and name != variants[0] and s.outcomes
            }
            wins = dict(self.interleaving_wins)
        return {
            "strategy": self.config.strategy,
            "stable_alias": self.stable_alias if self.stable_alias is not None else self.config.stable,
            "variants": stats,
            "tests": tests,
            "interleaving": wins if wins["queries"] else None,
            "flags": self._flags.status(),
            "configured": _configured(self.config),
        }


def _configured(config: RolloutConfig) -> dict[str, Any]:
    """The rollout as configured (flags may override any of it per request)."""
    return {
        "candidate": config.candidate,
        "canary_percent": config.canary_percent,
        "arms": {name: {"version": arm.version, "weight": arm.weight} for name, arm in config.variants.items()},
        "bandit_policy": config.bandit_policy,
        "shadow": list(config.shadow),
        "shadow_percent": config.shadow_percent,
    }


def _winner(clicks: Mapping[str, int]) -> str | None:
    if clicks["A"] == clicks["B"]:
        return "ties" if clicks["A"] else None
    return "A" if clicks["A"] > clicks["B"] else "B"
