"""Routing decisions: flags plus the request context decide which version answers and which shadow it.

A :class:`Router` per model reads its flags on every request (so a rollout changes without a restart),
buckets targeting keys with a stable hash (so a user keeps their variant across processes and restarts),
and keeps the outcome statistics of A/B tests, bandits and interleaving. A failing or slow flag provider
yields the stable decision and is counted; it never fails a request.

Design: what routes (configuration, stable alias, kill switch, refusal, and what is derived from them) is
one immutable :class:`RoutingState`, built once per change and published with the model's versions in the
registry's ``Routes`` (one assignment). Every decision takes the state published with the versions it read,
once, and reads nothing else of the routing: a change never waits for decisions, nor a decision for a
change, and no decision is made twice. What changes per request (statistics, assignments, bandit draws,
interleavings, input samples, the draws' generators) stays on the :class:`Router`, under its lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import numbers
import random
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Collection, Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol, TypeVar

import numpy as np
from cachetools import TTLCache

from . import _fork
from ._assignments import _COUNTED, RequestNumber, _Assignments, _Counted
from ._backend import raised_by_signal_handler
from ._config import RolloutConfig
from ._config_checks import is_number, shown
from ._errors import ControlStateUnknownError, InvalidInputError
from ._experiments import (
    AB_SALT_SUFFIX,
    BUCKETS,
    Interleaving,
    VariantStats,
    bucket,
    compare,
    epsilon_greedy,
    lower_always_valid_p,
    pick_arm,
    pick_weighted,
    thompson,
)
from ._flag_reader import DECISION_FALLBACK, FlagReader, UnusableFlag
from ._flags import FlagTypeError, MustAsk, WaitOffLoop, _value_shown, targeting_key_of
from ._held_bytes import held_bytes
from ._rollout_config import SHADOWS_LISTED

__all__ = ["Decision", "FlagReader", "Router", "RoutingState"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_ASSIGNMENTS_KEPT = 100_000
_CAPTURE_EVERY = 64  # once the promotion samples are full, one routed request in this many is sampled
_NEVER = 2**62  # served()'s count without capture_inputs: it never reaches 0 (decremented once per request)
_CAPTURED_BYTES = 32 * 2**20
"""Bound on the bytes the promotion samples of one model hold (``capture_inputs`` of them at most): 256
copies of an image model's batches would otherwise hold gigabytes in every worker."""
_ASSIGNMENT_TTL_S = 3600.0
_STABLE_READS_AGREED = 64
"""Good reads of the stable flag in a row that must name one version before a decision whose flags fail gives
it (see ``Router._fallback_stable``): a flag that names one version to every context does within a second of
traffic; one that targets, with contexts mixed, rarely does, and its failures give the configured version."""
_LARGEST_REWARD = 1e100
"""Bound on a reward's size: the statistics add rewards and their squares, and a few rewards near 1e308 made
the sums infinite (a mean of inf, a status that strict JSON cannot carry), for good."""
_INTERLEAVED_ITEMS_KEPT = 8_000_000
"""Bound on the interleavings remembered for clicks, in items (each costs ~5 bytes: ~40 MB at most)."""
_INTERLEAVING_OVERHEAD = 64
"""What one remembered interleaving costs beyond its items, counted in items (its objects: ~300 bytes)."""
_RANKER_PAIRS_KEPT = 8
"""Pairs of rankers whose interleaving wins are kept (see ``Router.remember_interleaving``): the least
recently interleaved goes first past this many (a rankers flag that names many pairs over days)."""
_STRATEGIES = ("stable", "canary", "ab", "bandit")
_RETURN_AFTER_S = 10.0
"""How long the version a variant's statistics are of must have served none of its requests before they go
back to a version they left (see ``Router._stats_of_version``): longer than a request takes to run, so that
requests still running on the old version when a flag moved the variant never restart it backwards."""
_WARNED_SERIALS_KEPT = 1024
"""Statistics remembered as warned about (see ``Router._warn_two_versions``)."""
_LEFT_KEPT = 64
"""Versions remembered as left per variant (see ``Router._stats_of_version``), the earliest left forgotten
first: a stable version that follows the latest one loaded leaves one at every release, for as long as the
configuration stays, and a worker living through months of hourly releases kept every number. A request of a
version left this many versions ago is no request still running from before the change."""
_NO_SHADOW = "the request is mirrored to no shadow"  # (a shadow flag's problem, for the warning)


class Decision(NamedTuple):
    """Which version answers a request, under which variant name, why, and which versions shadow it.

    Immutable, and made for every routed request: a named tuple is made in half the time of a frozen
    dataclass (0.6 µs against 1.2 here, about three times that beside onnxruntime's runs)."""

    version: int
    variant: str
    reason: str
    shadows: tuple[int, ...] = ()
    flags: tuple[tuple[str, Any], ...] = ()
    """The flags read for this decision, as (key, value as read) — recorded on the span by the telemetry
    layer, which makes text of the values of the few requests it records."""
    provider: str | None = None
    """The name of the flag provider that answered."""


class Served(Protocol):
    """A request :meth:`Router.served_many` notes: its decision and its inputs."""

    @property
    def decision(self) -> Decision: ...

    @property
    def arrays(self) -> Mapping[str, np.ndarray]: ...


class _FlagKeys(NamedTuple):
    """The keys of a rollout's flags, made once per configuration rather than once per read."""

    stable: str
    kill: str
    strategy: str
    canary_percent: str
    canary_version: str
    ab_weights: str
    shadow_versions: str
    shadow_percent: str
    rankers: str

    @classmethod
    def of(cls, prefix: str) -> _FlagKeys:
        return cls(*(f"{prefix}.{field.replace('_', '.')}" for field in cls._fields))


class _NoFlags:
    """Stands in when the server has no flag provider: every flag has its configured default."""

    provider = None

    def run(self, decide: Callable[[], T], fallback: Callable[[str], T], *, effect: str = DECISION_FALLBACK) -> T:
        try:
            return decide()
        except UnusableFlag as exc:  # the config names a version that failed to load, say
            return fallback(self.note_unusable(exc))

    def note_unusable(self, exc: Exception, effect: str = DECISION_FALLBACK) -> str:
        return f"unusable setting: {exc}"

    def before_draw(self) -> None:
        return None

    def abandoned(self) -> bool:
        return False

    def note_failure(self, exc: Exception, effect: str = DECISION_FALLBACK) -> str:
        return f"failed: {exc!r}"

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


@dataclass(frozen=True, slots=True)
class _Unflagged:
    """What a rollout decides from when no flag can differ from one request to the next: its configuration
    with no flag provider (``of``), or with the values of a provider that are the same for every context
    (``Router._plan_from_flags``), checked once as ``_decide`` checks each flag's value. None, rather than a
    plan, for a value ``_decide`` would refuse: it says why, request by request."""

    strategy: str
    key_field: str
    salt: str
    """What keys are bucketed by: ``rollout.salt``, with ``AB_SALT_SUFFIX`` for an A/B test."""
    canary_version: int
    canary_percent: float
    canary_edge: int
    """Buckets below this go to the canary (whole buckets: 0.07 % is 7 of them, never 8)."""
    weights: tuple[tuple[str, float], ...]
    arm_versions: Mapping[str, int]
    shadows: tuple[int, ...]
    shadow_percent: float
    needed: tuple[int, ...]
    """Versions that must be loaded for this plan to hold (the canary's, the shadows')."""
    stable: int | None = None
    """The version a ``<prefix>.stable`` flag names (None: the alias, the configuration or the latest)."""
    killed: bool = False
    """The kill switch flag is on."""
    stable_key: str = ""
    """With flags: the stable flag's key, read first (its value is the stable version as a float)."""
    reads: tuple[tuple[str, Any], ...] = ()
    """With flags: the flags read after the stable one, as read (the decision's ``flags``)."""
    provider: str | None = None
    """With flags: the provider's name."""

    @classmethod
    def of(cls, config: RolloutConfig) -> _Unflagged | None:
        strategy = config.strategy
        canary_percent, shadow_percent = config.canary.percent, config.shadow.percent
        if strategy not in _STRATEGIES or not 0 <= canary_percent <= 100 or not 0 <= shadow_percent <= 100:
            return None
        weights = tuple((name, float(v.weight)) for name, v in config.variants.items())
        if strategy in ("ab", "bandit") and not weights:
            return None
        # (the configuration stores weights as ints and floats, as _weights wants a flag's: see plain_fields)
        if strategy == "ab" and not (
            all(w >= 0 and not math.isinf(w) for _, w in weights) and sum(w for _, w in weights) > 0
        ):
            return None
        canary_version = config.canary.version or 0
        needed = list(config.shadow.versions)
        if strategy == "canary" and canary_percent != 0:
            needed.append(canary_version)
        shadows = tuple(config.shadow.versions)
        return cls.made(config, strategy, canary_version, canary_percent, weights, shadows, shadow_percent, needed)

    @classmethod
    def made(
        cls,
        config: RolloutConfig,
        strategy: str,
        canary_version: int,
        canary_percent: float,
        weights: tuple[tuple[str, float], ...],
        shadows: tuple[int, ...],
        shadow_percent: float,
        needed: list[int],
        **flagged: Any,
    ) -> _Unflagged:
        """The plan of ``config`` with these values checked (and ``flagged``: what a provider's values add);
        the canary's edge and the arms' versions are derived here."""
        edge = round(canary_percent * (BUCKETS // 100))
        arm_versions = {name: v.version for name, v in config.variants.items()}
        shadows = tuple(dict.fromkeys(shadows))  # (a version listed twice is mirrored once, as in _shadows)
        return cls(
            strategy,
            config.key_field,
            _salt(config, strategy),
            canary_version,
            canary_percent,
            edge,
            weights,
            arm_versions,
            shadows,
            shadow_percent,
            tuple(needed),
            **flagged,
        )


@dataclass(frozen=True, slots=True, eq=False)
class RoutingState:
    """One model's routing state, immutable: the rollout configuration, the stable alias, the kill switch, the
    refusal, and what is derived from them once (the flag keys, the plan of a rollout with no flags).

    Built once per change (:meth:`Router.state_for`) and published whole, with the versions it routes to, on
    the registry's ``Routes``: a decision reads it once, and routes by the state before a change or the one
    after it, never by a mix (a revision that removed a canary and made its version stable, read attribute
    by attribute, sent the canary's users to the old stable version, which neither revision serves them).
    Nothing waits for a change, and no decision is made twice for one."""

    config: RolloutConfig
    alias: int | None
    """The stable version the control file names (None: the configuration's, else the latest)."""
    killed: bool
    """The fleet's kill switch (control file): stable only, whatever flags say."""
    refusal: str | None
    """Why no request may be routed (a worker that has never read its damaged control file does not know the
    fleet's switches and kill switches: it refuses rather than undo them); None: routed."""
    keys: _FlagKeys
    pin: int | None
    """The stable version named: the alias, else the configuration's (None: the latest ready version; one
    named but not loaded leaves the latest answering too)."""
    trivial: bool
    """No flags and nothing but a stable version: the decision needs no key, flag or draw."""
    latest: bool
    """Every request goes to the latest ready version (trivial, routed, no kill switch, no stable named)."""
    unflagged: _Unflagged | None
    """With no flags, the plan every decision is made from (None: with flags, or a configuration ``_decide``
    refuses request by request)."""
    serial: int = 0
    """Its router's count of the states it made, this one's: a later state has a larger one (see
    ``Router._arm_born``)."""

    def stable_of(self, ready: Mapping[int, Any], latest: int) -> int:
        """The stable version among ``ready``: the one named if it is loaded, else the latest."""
        pin = self.pin
        return pin if pin is not None and pin in ready else latest

    def routes_as(self, config: RolloutConfig, *, alias: int | None, killed: bool, refusal: str | None) -> bool:
        """Whether a state of these values would route every request as this one does (a publish that
        changes nothing publishes nothing)."""
        return (
            self.config.routes_as(config) and self.alias == alias and self.killed == killed and self.refusal == refusal
        )


def _checked_reward(reward: float) -> float:
    """``reward`` as a float; ValueError for one that is not finite or past ``_LARGEST_REWARD``."""
    given = reward
    try:
        reward = float(reward)
    except OverflowError:  # an int past any float (10**400): too large, as 1e101 is
        reward = math.inf
    if not (math.isfinite(reward) and abs(reward) <= _LARGEST_REWARD):
        raise ValueError(
            f"reward must be a finite number (1.0/0.0 for a conversion or none, any value within "
            f"+-{_LARGEST_REWARD:g}), got {shown(given)}"
        )
    return reward


class Router:
    """One model's routing: decisions from a :class:`RoutingState`, and the experiment statistics.

    Thread-safe: ``decide`` may run on any number of threads. The routing state is immutable and replaced
    whole (:meth:`adopt`), so a decision reads it once; what changes per request (variant statistics,
    assignments, bandit draws, interleavings, input samples, the draws' generators) is changed under the
    router's lock.
    """

    def __init__(
        self,
        model: str,
        config: RolloutConfig,
        flags: FlagReader | None,
        *,
        shadow_gate: Callable[[str, tuple[int, ...]], bool] | None = None,
    ) -> None:
        """``shadow_gate(model, versions)`` says whether shadow copies may be made now (the shadow runner's
        budget); asked only for requests that would be mirrored, so a copy over budget costs nothing more."""
        self.model = model
        self._flags: FlagReader | _NoFlags = flags or _NoFlags()
        self._shadow_gate = shadow_gate
        self._lock = threading.Lock()
        self._stats: dict[str, VariantStats] = {}
        # The lowest always-valid p-value of each test (control, treatment) over every outcome so far: a
        # sequential test's p-value is the running minimum, so that its verdict does not hang on when
        # status() happens to be read (kept under the lock, with the statistics)
        self._lowest_p: dict[tuple[str, str], float] = {}
        # The tests each variant is in, of a configuration (see _credit; changed under the lock)
        self._pairs: tuple[RolloutConfig | None, Mapping[str, tuple[tuple[str, str], ...]]] = (None, {})
        self._arm_versions: dict[str, int] = {}  # the version each arm's statistics are of (see _configure)
        # Arms a reload removed from the configuration: (their final statistics, when) for as long as an outcome
        # by request id of a request they served may come (the hour ids are remembered), shown apart in status
        # (see _retire_arms; changed under the lock)
        self._removed: dict[str, tuple[VariantStats, float]] = {}
        # The serial of the routing state that began the numbers of each configured arm, and of "canary" and
        # "stable" (added, or pointed at another version: see _restart_changed_arms, _retire_arms; changed under
        # the lock): a request decided by an earlier state is of an earlier life of the arm (removed and added
        # back, or moved to another version and back, since) and counts nowhere in this one (its state gives the
        # arm the same version)
        self._arm_born: dict[str, int] = {}
        self._state_serials = itertools.count(1)  # (numbers the states state_for makes)
        self._canary_version: int | None = None  # the configured canary's, whose statistics "canary" holds
        self._stable_version: int | None = None  # the stable version named (alias or configured) "stable" holds
        self._stats_state: RoutingState | None = None  # the state those versions were last checked against
        # The versions each variant's statistics have left since the configuration last changed them, and
        # (its statistics, their served count, when) of a request of such a version, for the hold of
        # _RETURN_AFTER_S before going back to one (see _stats_of_version; both changed under the lock)
        self._left: dict[str, dict[int, None]] = {}  # (in the order left: an ordered set, at most _LEFT_KEPT)
        # (its statistics, their served count, when, since when such requests come while it serves)
        self._quiet: dict[str, tuple[VariantStats, int, float, float]] = {}
        self._warned_serials: set[int] = set()  # statistics whose variant was seen served by two versions at once
        self._serials = itertools.count(1)  # numbers each VariantStats made (see _Assignments)
        self._assignments = _Assignments(_ASSIGNMENTS_KEPT, _ASSIGNMENT_TTL_S)
        # The arm a bandit last drew for a targeting key: a draw is not a function of the key, so an outcome
        # reported by key can only be credited to what was drawn (set under the lock the draw holds anyway).
        # Keyed by a digest of the key (:func:`_draw_key`), never the key's text: a client's megabyte of user id
        # was held for the hour, up to 100 000 of them.
        self._bandit_keys: TTLCache[bytes, str] = TTLCache(maxsize=_ASSIGNMENTS_KEPT, ttl=_ASSIGNMENT_TTL_S)
        # Whether a draw may be remembered for a key (set by a draw, cleared once none is left): while not, no
        # request looks into _bandit_keys (a look takes the lock) to forget one.
        self._drew_for_keys = False
        self._interleavings: TTLCache[str, _Interleaved] = TTLCache(
            maxsize=_INTERLEAVED_ITEMS_KEPT, ttl=_ASSIGNMENT_TTL_S, getsizeof=_Interleaved.size
        )
        # The interleaving wins of each pair of rankers (A's version, B's version), the pair interleaved last
        # at the end: wins are of one pair, as a variant's statistics are of one version (changed under the lock)
        self._wins: OrderedDict[tuple[int, ...], dict[str, int]] = OrderedDict()
        self._default_decisions: dict[int, Decision] = {}
        # (values, configuration, plan) of the last plan made from a provider's values (see _flagged_plan)
        self._flagged: tuple[Container[str], RolloutConfig, _Unflagged | None] | None = None
        # (The stable flag's key; the version it named at its last good reads in this process, None for none
        # or the configured one; how many good reads in a row named it): what a decision whose flags fail
        # gives, once _STABLE_READS_AGREED reads of that key agreed (one tuple, replaced whole: read and
        # written without the lock). The key is kept: a configuration naming another flag (a new flag_prefix)
        # starts with no reads of it, and the old flag's version was given on a failure
        self._stable_said: tuple[str, int | None, int] = ("", None, 0)
        self.recent: deque[Mapping[str, np.ndarray]] = deque(maxlen=max(1, config.capture_inputs))
        self._recent_bytes = 0  # what the samples in ``recent`` hold (changed under the lock)
        self._recent_sizes: deque[int] = deque()  # each sample's bytes, in the order of ``recent``
        self._too_large_said = False
        self._keys_told: tuple[str, str] | None = None  # (the provider's field, key_field) last warned of
        self.state = self.state_for(config)
        """The routing state this router was last given (the registry publishes the same object with the
        versions; a request decides by the one published with the versions it read)."""
        self._configure(self.state)
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        """The parent's threads are not in a forked child: a lock one of them held at the fork (a request's
        note) would stay held there, and the child's requests would wait for it for ever. The routing state
        is immutable: the child routes by the one published at the fork, as the registry's. The child's request
        ids have another prefix (see _Assignments.after_fork_in_child). Without a ``seed``, the child's draws
        are its own: generators seeded in the parent (a gunicorn ``--preload`` master) drew the same bandit
        arms and interleaving coins in every worker."""
        self._lock = threading.Lock()
        self._assignments.after_fork_in_child()
        if self.state.config.seed is None:
            self._rng = np.random.default_rng()
            self._coin = random.Random()

    def state_for(
        self, config: RolloutConfig, *, alias: int | None = None, killed: bool = False, refusal: str | None = None
    ) -> RoutingState:
        """The routing state of ``config`` with these values, everything derived from them made once here."""
        pin = alias if alias is not None else config.stable
        # With no flags and nothing but a stable version, decide() can skip straight to the answer.
        trivial = isinstance(self._flags, _NoFlags) and config.strategy == "stable" and not config.shadow.versions
        return RoutingState(
            config,
            alias,
            killed,
            refusal,
            _FlagKeys.of(config.flag_prefix or self.model),
            pin,
            trivial,
            trivial and refusal is None and not killed and pin is None,
            # With no flags every flag reads its configured value: decide() reads the configuration directly.
            _Unflagged.of(config) if type(self._flags) is _NoFlags else None,
            next(self._state_serials),
        )

    def adopt(self, state: RoutingState) -> None:
        """Make ``state`` this router's (the registry publishes the same object with the versions, in the
        same step); a new configuration also resizes the input samples and reseeds the draws. Statistics
        are kept. With the registry's routing lock held (one change at a time)."""
        if not state.config.routes_as(self.state.config):
            self._configure(state)
        else:  # (the same configuration: a switch or rollback by the control file may yet name another stable)
            self._restart_changed_arms(state)
        self.state = state

    def update(self, config: RolloutConfig) -> None:
        """Apply a (re)loaded configuration, keeping the alias, kill switch and refusal; statistics are kept.
        For a router used on its own: a registry's router changes only by :meth:`adopt` of a state it
        publishes with the versions (a change made here would be read with versions published before it)."""
        current = self.state
        state = self.state_for(config, alias=current.alias, killed=current.killed, refusal=current.refusal)
        self._configure(state)
        self.state = state

    def _configure(self, state: RoutingState) -> None:
        """What a configuration sets beside the routing state: the input samples kept, the draws' seed."""
        config = state.config
        self._capture = config.capture_inputs > 0
        self._capture_size = config.capture_inputs  # every request is sampled until there are this many
        self._until_capture = 1 if self._capture else _NEVER  # (see _sample_due)
        if self.recent.maxlen != max(1, config.capture_inputs):
            with self._lock:
                self.recent = deque(self.recent, maxlen=max(1, config.capture_inputs))
                while len(self._recent_sizes) > len(self.recent):  # (the oldest went)
                    self._recent_sizes.popleft()
                self._recent_bytes = sum(self._recent_sizes)
        # A provider whose values hold for every context: decide() reads them once per change of values.
        self._frozen_values = getattr(self._flags, "frozen_values", None)
        seed = config.seed
        self._rng = np.random.default_rng(seed)
        self._coin = random.Random(seed)
        if state.trivial:  # (decide() returns before any key is looked at: no later request could forget them)
            with self._lock:
                self._bandit_keys.clear()
                self._drew_for_keys = False
        self._restart_changed_arms(state)
        self._warn_if_keys_differ(config)
        self._warn_if_canary_has_no_version(config)

    def _warn_if_canary_has_no_version(self, config: RolloutConfig) -> None:
        """Say so at load when a canary with a share of traffic names no version and no flag provider can name
        one: every request then answers with the stable version, and only each prediction's reason said why."""
        canary = config.canary
        if (
            type(self._flags) is _NoFlags
            and config.strategy == "canary"
            and canary.percent > 0
            and canary.version is None
        ):
            logger.warning(
                "model %r: rollout.strategy is 'canary' at %g%% but rollout.canary.version is not set (and there is "
                "no flag provider to set %r): every request gets the stable version; set rollout.canary.version",
                self.model,
                canary.percent,
                f"{config.flag_prefix or self.model}.canary.version",
            )

    def _warn_if_keys_differ(self, config: RolloutConfig) -> None:
        """Say so, once per pair of fields, when the flag provider takes the targeting key from another context
        field than this rollout's buckets (``OpenFeatureFlags(targeting_key_field=...)`` beside
        ``rollout.key_field``): a flag's rule on the targeting key (a fractional split, a list of users) would
        judge another user than the bucket the request is sticky to."""
        field = getattr(getattr(self._flags, "provider", None), "targeting_key_field", None)
        if not isinstance(field, str) or field == config.key_field or self._keys_told == (field, config.key_field):
            return
        self._keys_told = (field, config.key_field)
        logger.warning(
            "model %r: rollout.key_field is %r, but the flag provider takes the targeting key from the context's "
            "%r: a flag's rule on the targeting key sees another user than the rollout's sticky buckets; pass "
            "targeting_key_field=%r to OpenFeatureFlags, or set rollout.key_field = %r",
            self.model,
            config.key_field,
            field,
            config.key_field,
            field,
        )

    def _restart_changed_arms(self, state: RoutingState) -> None:
        """Start afresh the statistics of an arm that now names another version than they were recorded for.

        They were kept by arm name alone: an arm pointed from version 2 to 3 by a reload went on adding
        version 3's outcomes to version 2's, its test compared the mixture (a worse version 3 still showed
        as significantly better for thousands of outcomes) and a bandit credited version 3 with version 2's
        record. Requests served by the old version, and a bandit's draws of the arm, are forgotten with them:
        an outcome reported for them now credits nothing (their statistics are no longer the arm's).

        So does a new configured canary (``canary.version``): "canary" and "stable" start afresh, a new
        experiment against the stable version as it is now. So does another stable version named (a switch,
        a rollback, ``rollout.stable``): "stable" held the old one's outcomes, and the canary was compared
        with the mixture. A version that a flag, or the latest version loaded, gives a variant is followed
        request by request instead (:meth:`_stats_of_version`); a configuration change is seen here at
        once, before any request, and starts a new experiment: the versions left are forgotten."""
        config = state.config
        with self._lock:
            self._stats_state = state
            changed = {
                name
                for name, arm in config.variants.items()
                if self._arm_versions.get(name, arm.version) != arm.version
            }
            added = [name for name in config.variants if name not in self._arm_versions]
            self._arm_versions.update((name, arm.version) for name, arm in config.variants.items())
            gone = [name for name in self._arm_versions if name not in config.variants]
            if gone or self._removed:
                self._retire_arms(gone, config)
            canary = config.canary.version
            if canary is not None:
                if self._canary_version not in (None, canary):
                    changed.update(("canary", "stable"))
                self._canary_version = canary
            stable = state.pin
            if stable is not None:
                if self._stable_version not in (None, stable):
                    changed.update(("canary", "stable"))
                self._stable_version = stable
            for name in (*added, *changed):  # (numbers begun here: requests decided by earlier states are not of
                self._arm_born[name] = state.serial  # them, whatever version a later change points them back at)
            if not changed:
                return
            for name in changed:
                self._left.pop(name, None)
            self._restart(changed)

    def _retire_arms(self, names: Collection[str], config: RolloutConfig) -> None:
        """End the arms ``names``, no longer configured (under the lock): they leave the variants, the tests and
        a bandit's draws at once (an outcome by key for a key last drawn to one credits nothing: which request
        it is of is unknown). Their final statistics are kept apart (status' ``removed_variants``) while an
        outcome by request id of a request they served may still come, and credit it (it is the arm's); an
        arm configured again starts afresh. Also forgets the removed arms whose requests' ids are forgotten.
        Before: kept by name for the life of the process, listed among the variants and credited by key."""
        now = time.monotonic()
        for name in names:
            version = self._arm_versions.pop(name)
            self._arm_born.pop(name, None)
            self._left.pop(name, None)
            stats = self._stats.get(name)
            if stats is None or stats.version not in (None, version):  # (none yet: an A/B arm's request running)
                stats = VariantStats(version=version, serial=next(self._serials))
            elif stats.version is None:  # (made by an outcome by key before any request of the arm was noted)
                stats.version = version  # (the arm's requests still running are of it: they count in them)
            self._removed[name] = (stats, now)
        self._restart(names)
        for name in [
            n for n, (_, when) in self._removed.items() if n in config.variants or now - when > _ASSIGNMENT_TTL_S
        ]:
            del self._removed[name]

    def _restart(self, names: Collection[str]) -> None:
        """Start the statistics of ``names`` afresh, with the tests they are in and a bandit's draws of them
        (under the lock). Requests counted in the old statistics credit nothing from now on: their outcomes
        find another object (or none) under the variant's name."""
        for name in names:
            self._stats.pop(name, None)
            self._quiet.pop(name, None)
        for pair in [pair for pair in self._lowest_p if pair[0] in names or pair[1] in names]:
            del self._lowest_p[pair]
        if self._drew_for_keys:
            for key in [key for key, arm in self._bandit_keys.items() if arm in names]:
                del self._bandit_keys[key]

    def _stats_of_version(self, variant: str, version: int) -> VariantStats | None:
        """The statistics of ``variant`` for a request that ``version`` serves now: started afresh if they are
        of another version; None if the request is to count nowhere (under the lock). Only a request moves
        them: an outcome by key credits them as they are (see :meth:`record_outcome`).

        A variant's statistics are of one version at a time. A ``<prefix>.canary.version`` or
        ``<prefix>.stable`` flag, or a stable version that follows the latest one loaded, changes a
        variant's version without a configuration change: the first request that another version serves
        starts "canary" and "stable" afresh (a new experiment, as a new configured canary does; an arm's
        alone), and the requests counted before credit nothing (late outcomes of the old version).

        Never straight back: requests decided before the change and still running on the old version, or a
        targeting flag that gives one variant two versions at once, would restart the statistics at every
        alternation and keep none. A request of a version the statistics left counts nowhere until the
        version they are of has served none of the variant's requests for ``_RETURN_AFTER_S`` since such a
        request came (a flag moved back, the latest version unloaded): then it starts them afresh. (The
        clock is read on this path alone: a request of the version the statistics are of costs a comparison.)
        Two versions served together under one variant keep the statistics of the one that came later (the
        other's requests count nowhere): such a flag is two experiments, and takes two arms (an A/B test) to
        measure. Once both have served it for ``_RETURN_AFTER_S`` (each within ``_RETURN_AFTER_S`` of the
        other's last request), a warning says so (:meth:`_warn_two_versions`)."""
        stats = self._stats.get(variant)
        if stats is None:
            return self._started(variant, version)
        current = stats.version
        if current == version:
            return stats
        if current is None:  # (made before any version was known: a bandit's arms shown in status)
            stats.version = version
            return stats
        left = self._left.get(variant)
        if left is not None and version in left:
            now = time.monotonic()
            quiet = self._quiet.get(variant)
            if quiet is None or quiet[0] is not stats or quiet[1] != stats.served:  # (served since the last look)
                # both versions served within _RETURN_AFTER_S of each other since `since`
                if quiet is None or quiet[0] is not stats or now - quiet[2] >= _RETURN_AFTER_S:
                    since = now
                else:
                    since = quiet[3]
                self._quiet[variant] = (stats, stats.served, now, since)
                if now - since >= _RETURN_AFTER_S:
                    self._warn_two_versions(variant, stats, version)
                return None
            if now - quiet[2] < _RETURN_AFTER_S:
                return None
            del left[version]
        self._note_left(variant, current)
        self._restart(("canary", "stable") if variant in ("canary", "stable") else (variant,))
        return self._started(variant, version)

    def _note_left(self, variant: str, version: int) -> None:
        """Remember that ``variant``'s statistics left ``version``, forgetting the version it left earliest past
        :data:`_LEFT_KEPT` (under the lock)."""
        left = self._left.setdefault(variant, {})
        left.pop(version, None)  # (left again: now the latest left)
        left[version] = None
        if len(left) > _LEFT_KEPT:
            del left[next(iter(left))]

    def _warn_two_versions(self, variant: str, stats: VariantStats, other: int) -> None:
        """Say once per statistics that ``variant`` has been served by their version and ``other`` at once for
        longer than requests still running after a change would explain (under the lock): a targeting flag
        that gives one variant two versions, whose statistics keep the later one's requests alone."""
        if stats.serial in self._warned_serials:
            return
        if len(self._warned_serials) >= _WARNED_SERIALS_KEPT:  # (a flag flapping for days: bounded anyway)
            self._warned_serials.clear()
        self._warned_serials.add(stats.serial)
        logger.warning(
            "inprocserve: model %r: variant %r has been served by versions %s and %s at once for over %g s; "
            "its statistics count version %s's requests only. A flag that gives one variant two versions runs "
            "two experiments: give each version its own arm (an A/B test) to measure both (docs/rollouts.md)",
            self.model,
            variant,
            stats.version,
            other,
            _RETURN_AFTER_S,
            stats.version,
        )

    def _started(self, variant: str, version: int | None) -> VariantStats:
        """New statistics of ``variant``, of ``version``, numbered apart from every earlier ones (under the
        lock)."""
        stats = self._stats[variant] = VariantStats(version=version, serial=next(self._serials))
        return stats

    # -- the decision ---------------------------------------------------------------------------------------

    def decide(
        self,
        ready: Mapping[int, Any],
        latest: int,
        context: Mapping[str, Any] | None,
        state: RoutingState | None = None,
    ) -> Decision:
        """Which ready version answers, and which shadow it. Never raises for flag problems.

        ``state``: the routing state published with ``ready`` (None: this router's, :attr:`state`), read
        once: the decision is made from it alone, whatever changes meanwhile.

        Raises :class:`InvalidInputError` for a ``context`` that is not a mapping, and
        :class:`ControlStateUnknownError` while the state's ``refusal`` is set.
        """
        if state is None:
            state = self.state
        if context is not None and type(context) is not dict and not isinstance(context, Mapping):
            raise _not_a_mapping(self.model, context)
        if state.latest:
            return self._default_decisions.get(latest) or self._remember_default(latest)
        if state.refusal is not None:
            raise ControlStateUnknownError(f"model {self.model!r}: {state.refusal}", model=self.model)
        stable = state.stable_of(ready, latest)
        if state.killed:
            if self._drew_for_keys and context:  # (served otherwise: see _forget_draw)
                self._forget_draw_of(context, state.config.key_field)
            if type(self._flags) is not _NoFlags:
                # A set stable flag names the stable version here too (a failing provider or an unusable value
                # gives the configured one): without it, the fleet's kill switch sent everyone back to the
                # version the flags had moved them off (rollouts.md's last step sets the stable flag).
                stable = self._flagged_stable(ready, stable, context, state)
            return Decision(stable, "stable", "kill switch is on (control file)")
        if state.trivial:
            return Decision(stable, "stable", "stable alias")
        ctx = context if context is not None else _EMPTY
        plan = state.unflagged
        if plan is None and self._frozen_values is not None:
            plan = self._flagged_plan(self._frozen_values(), state.config)
        if plan is not None:
            try:
                decision = self._decide_unflagged(plan, ready, stable, ctx, state)
            except Exception:  # (a targeting key it cannot bucket, say: the flag-reading path answers as it does)
                decision = None
            if decision is not None:
                return decision

        def fallback(reason: str) -> Decision:
            # The stable version serves the key: an arm drawn for it before, or by this very decision when it
            # ran past the budget and was abandoned, no longer says where its outcomes by key go.
            if self._drew_for_keys and ctx:
                self._forget_draw_of(ctx, state.config.key_field)
            return Decision(self._fallback_stable(ready, stable, state.keys.stable), "stable", reason)

        try:
            return self._flags.run(lambda: self._decide(ready, stable, ctx, state), fallback)
        except WaitOffLoop:  # (nothing was decided: it is routed again off the event loop)
            raise
        except InvalidInputError as exc:
            # The request's own mistake (a targeting key that cannot be made text, a context key that is no
            # string). Found by the flag code, which knows no model, it named none, and a caller of many models
            # could not tell whose request it was (errors.md: the model is set). No draw is forgotten: it is
            # found before a bandit draws (the key is read first, and a shadow flag's refusal forgets its own
            # draw in _decide), so the arm remembered for the key is an earlier request's, which that request's
            # outcome by key still credits; forgetting it for a refused request credited that outcome nowhere.
            raise self._of_this_model(exc) from None
        except BaseException:
            # The request ends without an answer (gevent's Timeout or a KeyboardInterrupt while a flag worker
            # decided): nobody served the key, and no fallback forgets an arm the decision drew for it before it
            # was given up (one drawn after is never remembered: see FlagReader.abandoned).
            if self._drew_for_keys and ctx:
                self._forget_draw_of(ctx, state.config.key_field)
            raise

    def _of_this_model(self, error: InvalidInputError) -> InvalidInputError:
        """``error`` naming this model: the flag code that refuses a request's context knows no model."""
        if error.model is not None:
            return error
        return InvalidInputError(f"model {self.model!r}: {error.message}", model=self.model)

    def _remember_default(self, version: int) -> Decision:
        decision = Decision(version, "default", "latest ready version")
        self._default_decisions = {version: decision}  # replaced whole: readers never see a half-built dict
        return decision

    def stable_version(
        self,
        ready: Mapping[int, Any],
        latest: int,
        context: Mapping[str, Any] | None = None,
        state: RoutingState | None = None,
    ) -> int:
        """The stable version (alias, config, or the ``<prefix>.stable`` flag), with no canary or arm draw,
        of ``state`` (None: this router's).

        Guarded promotion compares a candidate with this version, never with a request's random variant.
        """
        if state is None:
            state = self.state
        stable = state.stable_of(ready, latest)
        if isinstance(self._flags, _NoFlags):
            return stable
        return self._flagged_stable(ready, stable, context, state)

    def _flagged_stable(
        self, ready: Mapping[int, Any], stable: int, context: Mapping[str, Any] | None, state: RoutingState
    ) -> int:
        """The ``<prefix>.stable`` flag's version: ``stable`` when it is not set or its value is unusable; when
        the provider fails, what ``_fallback_stable`` gives."""
        ctx = context if context is not None else _EMPTY
        try:
            return self._flags.run(
                lambda: self._read_stable(ready, stable, ctx, [], state.keys),
                lambda reason: self._fallback_stable(ready, stable, state.keys.stable),
                effect="the stable version answers (the one the stable flag last named, else the configured one)",
            )
        except InvalidInputError as exc:
            raise self._of_this_model(exc) from None

    def rankers(
        self, ready: Mapping[int, Any], context: Mapping[str, Any] | None, state: RoutingState | None = None
    ) -> tuple[int, ...] | None:
        """The two versions to interleave: the ``<prefix>.rankers`` flag, else ``rollout.interleaving.rankers``
        (of ``state``; None: this router's).

        Read through the flag reader like every other flag: a failing provider or an unusable value gives
        the configured rankers (and is counted), never an exception.
        """
        if state is None:
            state = self.state
        configured = state.config.interleaving.rankers
        if context is not None and not isinstance(context, Mapping):
            raise _not_a_mapping(self.model, context)
        ctx = context if context is not None else _EMPTY
        key = state.keys.rankers

        def read() -> tuple[int, ...] | None:
            wanted = self._flags.obj(key, list(configured or ()), ctx, [])
            if _no_versions(wanted):
                return configured
            if not isinstance(wanted, list | tuple) or len(wanted) != 2:
                raise UnusableFlag(key, f"{key!r} must be a list of two versions, got {_value_shown(wanted)}")
            return tuple(_version(key, v, ready) for v in wanted)

        try:
            return self._flags.run(read, lambda reason: configured, effect="the configured rankers interleave")
        except InvalidInputError as exc:
            raise self._of_this_model(exc) from None

    def _read_stable(
        self,
        ready: Mapping[int, Any],
        stable: int,
        ctx: Mapping[str, Any],
        used: list[tuple[str, Any]],
        keys: _FlagKeys,
    ) -> int:
        key = keys.stable
        try:
            named = _version(key, self._flags.number(key, float(stable), ctx, used), ready)
        except UnusableFlag:  # (a version not loaded, say: the configured one answers, as it always has)
            self._stable_said = (key, None, 0)
            raise
        self._note_stable(key, stable, named)
        return named

    def _note_stable(self, key: str, default: int, named: int) -> None:
        """Keep the version the stable flag ``key`` named (``default``: the stable version it was read
        against, what the flag's absence gives). A decision from a plan of a provider's values counts as one
        read too, as it would reading every flag: a plan only saves the reads, it never changes a decision."""
        said = None if named == default else named
        held_key, held, reads = self._stable_said
        if held_key != key:
            reads = 0
        if held != said or not reads:
            self._stable_said = (key, said, 1)
        elif reads < _STABLE_READS_AGREED:
            self._stable_said = (key, said, reads + 1)

    def _fallback_stable(self, ready: Mapping[int, Any], stable: int, key: str) -> int:
        """The version a decision whose flags failed (the provider raised, hung or was busy, or a flag's value
        is unusable) gives: the one the stable flag named at its last ``_STABLE_READS_AGREED`` good reads in
        this process, all alike, while it is loaded (as it would with the provider answering: the flag
        overrides the configured stable version); else ``stable``, which a stable flag whose own value is
        unusable gives too.
        A provider outage, or a typo in another flag, after the stable flag moved everyone to a new version
        (docs/rollouts.md, step 6) sent the whole fleet back to the old one. One read is not enough: a flag
        that targets (a tenant on the new version, the rest on the old) names each context's own version, and
        the last request's would go to every context. Only reads of ``key``, the stable flag the configuration
        reads, count: one naming another flag (a new ``flag_prefix``) gave the old flag's version."""
        held_key, said, reads = self._stable_said
        if held_key != key:  # (the configuration names another stable flag, not read since)
            return stable
        return said if said is not None and reads >= _STABLE_READS_AGREED and said in ready else stable

    def _decide(self, ready: Mapping[int, Any], stable: int, ctx: Mapping[str, Any], state: RoutingState) -> Decision:
        used: list[tuple[str, Any]] = []
        routed = self._route(ready, stable, ctx, used, state, draw=True)
        assert routed is not None  # (only a decision without a draw has none)
        version, variant, reason, killed = routed
        shadows: tuple[int, ...] = ()
        if not killed:
            try:
                shadows, problem = self._shadows(ready, version, ctx, used, state)
            except InvalidInputError:
                # The request's context, refused by the first flag evaluated for it: a bandit's arm drawn for its
                # key above (replacing any earlier one) served nothing, and must credit none of its outcomes.
                if self._drew_for_keys:
                    self._forget_draw_of(ctx, state.config.key_field)
                raise
            if problem is not None:
                reason = f"{reason}; shadows off: {problem}"
        if not used:
            return Decision(version, variant, reason, shadows)
        provider = self._flags.provider  # (the flags read, and who answered them, go on a recorded span)
        return Decision(version, variant, reason, shadows, tuple(used), None if provider is None else provider.name)

    def _decide_unflagged(
        self, plan: _Unflagged, ready: Mapping[int, Any], stable: int, ctx: Mapping[str, Any], state: RoutingState
    ) -> Decision | None:
        """``_decide`` with no flag provider, from the configuration alone: the same decision, reason and
        random draws, without a flag reader's call, key and checks per flag (a canary's decision took a
        fifth of a lone mlp-small request in place). None, before any draw, where a configured version is
        not loaded: ``_decide`` says which, as it does with flags. With a provider's values (the plan's
        ``stable_key`` set), the decision names the flags read, as ``_decide`` does."""
        if plan.stable is not None:
            if plan.stable in ready:
                self._note_stable(state.keys.stable, stable, plan.stable)
            stable = plan.stable
        elif plan.stable_key:  # (the provider's values have no stable flag: the stable version answers)
            self._note_stable(state.keys.stable, stable, stable)
        if stable not in ready:
            return None
        for version in plan.needed:
            if version not in ready:
                return None
        if plan.killed:
            if self._drew_for_keys:
                self._forget_draw_of(ctx, plan.key_field)
            return Decision(
                stable,
                "stable",
                "kill switch is on",
                (),
                ((plan.stable_key, float(stable)), *plan.reads),
                plan.provider,
            )
        strategy = plan.strategy
        if strategy == "stable":
            version, variant, reason = stable, "stable", "stable version"
            if self._drew_for_keys:
                self._forget_draw_of(ctx, plan.key_field)
        else:
            text = targeting_key_of(ctx, plan.key_field)
            if strategy != "bandit" and self._drew_for_keys:
                self._forget_draw(text)
            # (a keyed request's bucket is a canary's alone: an A/B split picks by key and arm, a bandit draws)
            position = random.randrange(BUCKETS) if text is None else 0
            if text is not None and strategy == "canary":
                position = bucket(self.model, plan.salt, text)
            if strategy == "canary":
                percent = plan.canary_percent
                if percent == 0:
                    version, variant, reason = stable, "stable", "the canary is at 0%"
                elif position < plan.canary_edge:
                    version, variant = plan.canary_version, "canary"
                    reason = f"bucket {position / 100:.2f}% is under the canary's {percent:g}%"
                else:
                    version, variant = stable, "stable"
                    reason = f"bucket {position / 100:.2f}% is above the canary's {percent:g}%"
            elif strategy == "ab":
                variant, reason = _ab_arm(self.model, plan.salt, text, position, plan.weights)
                version = plan.arm_versions[variant]
                if version not in ready:
                    version, variant, reason = stable, "stable", f"variant {variant!r} version {version} is not ready"
            else:
                try:
                    version, variant, reason = self._arms(strategy, ready, stable, position, ctx, [], text, state)
                except UnusableFlag:  # (its arms were removed by a reload meanwhile: _decide says so)
                    return None
        shadows: tuple[int, ...] = ()
        if plan.shadows:
            percent = plan.shadow_percent
            if not (percent < 100 and random.random() * 100 >= percent):
                mirrored = tuple(v for v in plan.shadows if v != version)
                if mirrored and (self._shadow_gate is None or self._shadow_gate(self.model, mirrored)):
                    shadows = mirrored
        if not plan.stable_key:  # (no flags)
            return Decision(version, variant, reason, shadows)
        used = ((plan.stable_key, float(stable)), *plan.reads)
        return Decision(version, variant, reason, shadows, used, plan.provider)

    def _flagged_plan(self, values: Container[str] | None, config: RolloutConfig) -> _Unflagged | None:
        """The plan for the provider's ``values`` (None: it has none to give now) under ``config``, made once
        per mapping and configuration: the provider replaces the mapping whole when a value changes."""
        if values is None:
            return None
        cached = self._flagged
        if cached is not None and cached[0] is values and cached[1] is config:
            return cached[2]
        plan = self._plan_from_flags(config, values)
        self._flagged = (values, config, plan)
        return plan

    def _plan_from_flags(self, config: RolloutConfig, values: Container[str]) -> _Unflagged | None:
        """Read every flag once, as ``_decide`` reads it (same keys, defaults, order and checks, with an empty
        context: these values hold for every context), into a plan; None where ``_decide`` would refuse a
        value or turn shadows off, so that it says why, request by request."""
        flags = self._flags
        assert isinstance(flags, FlagReader)  # (only a flag reader hands out frozen values)
        keys = _FlagKeys.of(config.flag_prefix or self.model)
        variants = config.variants
        reads: list[tuple[str, Any]] = []
        try:
            with flags.plan_reads(values):  # (a flag not remembered raises MustAsk: no plan)
                stable = None
                if keys.stable in values:  # (else the default answers: the stable version of each request)
                    stable = _whole(keys.stable, flags.number(keys.stable, 0.0, _EMPTY, []))
                needed: list[int] = []  # (a stable flag's version is checked as every stable version is)
                killed = flags.boolean(keys.kill, False, _EMPTY, reads)
                strategy, canary_version, canary_percent = "stable", 0, 0.0
                weights: tuple[tuple[str, float], ...] = ()
                shadows: tuple[int, ...] = ()
                shadow_percent = 0.0
                if not killed:
                    strategy = flags.string(keys.strategy, config.strategy, _EMPTY, reads)
                    # (arms with none configured: _decide refuses them, but after drawing a bucket)
                    if strategy not in _STRATEGIES or (strategy in ("ab", "bandit") and not variants):
                        return None
                    if strategy == "canary":
                        percent = flags.number(keys.canary_percent, config.canary.percent, _EMPTY, reads)
                        canary_percent = _percent(keys.canary_percent, percent)
                        default = float(config.canary.version or 0)
                        candidate = flags.number(keys.canary_version, default, _EMPTY, reads)
                        if canary_percent != 0:
                            canary_version = _whole(keys.canary_version, candidate)
                            needed.append(canary_version)
                    elif strategy == "ab":
                        defaults = {name: v.weight for name, v in variants.items()}
                        given = _weights(keys.ab_weights, flags.obj(keys.ab_weights, defaults, _EMPTY, reads), variants)
                        weights = tuple((name, given.get(name, 0.0)) for name in variants)
                    wanted = flags.obj(keys.shadow_versions, list(config.shadow.versions), _EMPTY, reads)
                    if not _no_versions(wanted):
                        if not isinstance(wanted, list | tuple) or len(wanted) > SHADOWS_LISTED:
                            return None
                        shadows = tuple(_whole(keys.shadow_versions, v) for v in wanted)
                        percent = flags.number(keys.shadow_percent, config.shadow.percent, _EMPTY, reads)
                        shadow_percent = _percent(keys.shadow_percent, percent)
                        needed.extend(shadows)
        except (Exception, MustAsk):  # (unusable, or the provider failed: _decide says so, and counts it)
            return None
        provider = flags.provider
        return _Unflagged.made(
            config,
            strategy,
            canary_version,
            canary_percent,
            weights,
            shadows,
            shadow_percent,
            needed,
            stable=stable,
            killed=killed,
            stable_key=keys.stable,
            reads=tuple(reads),
            provider=None if provider is None else provider.name,
        )

    def _route(
        self,
        ready: Mapping[int, Any],
        stable: int,
        ctx: Mapping[str, Any],
        used: list[tuple[str, Any]],
        state: RoutingState,
        *,
        draw: bool,
    ) -> tuple[int, str, str, bool] | None:
        """(version, variant, reason, killed) of a request, shadows aside. ``draw=False`` (attributing an
        outcome by key) makes no bandit draw: it returns None where a bandit would have to draw."""
        flags, keys, config = self._flags, state.keys, state.config
        stable = self._read_stable(ready, stable, ctx, used, keys)
        if flags.boolean(keys.kill, False, ctx, used):
            if draw and self._drew_for_keys:
                self._forget_draw_of(ctx, config.key_field)
            return stable, "stable", "kill switch is on", True
        strategy = flags.string(keys.strategy, config.strategy, ctx, used)
        if strategy not in _STRATEGIES:
            raise UnusableFlag(
                keys.strategy, f"{keys.strategy!r} is {_value_shown(strategy)}, not one of {', '.join(_STRATEGIES)}"
            )
        if strategy == "bandit" and not draw:
            return None
        if strategy == "stable":  # (no bucket: the user's key is hashed only for a strategy that splits traffic)
            if draw and self._drew_for_keys:
                self._forget_draw_of(ctx, config.key_field)
            return stable, "stable", "stable version", False
        if strategy == "bandit":  # (a try on the request's thread stops before any draw: see before_draw)
            flags.before_draw()
        text = targeting_key_of(ctx, config.key_field)
        if strategy != "bandit" and draw and self._drew_for_keys:
            self._forget_draw(text)
        # (keyed: a canary's bucket alone, as in _decide_unflagged)
        position = random.randrange(BUCKETS) if text is None else 0
        if text is not None and strategy == "canary":
            position = bucket(self.model, _salt(config, strategy), text)
        if strategy == "canary":
            version, variant, reason = self._canary(ready, stable, position, ctx, used, state)
        else:
            version, variant, reason = self._arms(strategy, ready, stable, position, ctx, used, text, state)
        return version, variant, reason, False

    def _canary(
        self,
        ready: Mapping[int, Any],
        stable: int,
        position: int,
        ctx: Mapping[str, Any],
        used: list[tuple[str, Any]],
        state: RoutingState,
    ) -> tuple[int, str, str]:
        flags, keys, canary = self._flags, state.keys, state.config.canary
        percent = _percent(keys.canary_percent, flags.number(keys.canary_percent, canary.percent, ctx, used))
        key = keys.canary_version
        candidate = flags.number(key, float(canary.version or 0), ctx, used)
        if percent == 0:
            return stable, "stable", "the canary is at 0%"
        if candidate == 0 and canary.version is None:  # (it said the flag "names version 0, which is not loaded")
            raise UnusableFlag(key, f"the canary has no version: set rollout.canary.version, or the {key!r} flag")
        version = _version(key, candidate, ready)  # a canary on a version not loaded would silently stay at 0 %
        if position < round(percent * (BUCKETS // 100)):  # whole buckets: 0.07 % is 7 of them, never 8
            return version, "canary", f"bucket {position / 100:.2f}% is under the canary's {percent:g}%"
        return stable, "stable", f"bucket {position / 100:.2f}% is above the canary's {percent:g}%"

    def _arms(
        self,
        strategy: str,
        ready: Mapping[int, Any],
        stable: int,
        position: int,
        ctx: Mapping[str, Any],
        used: list[tuple[str, Any]],
        key: str | None,
        state: RoutingState,
    ) -> tuple[int, str, str]:
        config = state.config
        variants = config.variants
        if not variants:
            raise UnusableFlag(state.keys.strategy, f"strategy {strategy!r} needs rollout.variants, none are set")
        if strategy == "ab":
            defaults = {name: v.weight for name, v in variants.items()}
            flag = state.keys.ab_weights
            weights = _weights(flag, self._flags.obj(flag, defaults, ctx, used), variants)
            shares = [(n, weights.get(n, 0.0)) for n in variants]
            name, reason = _ab_arm(self.model, _salt(config, strategy), key, position, shares)
        else:
            # A bandit draws among the arms that can serve: an arm whose version is not loaded never gets an
            # outcome, so it would stay untried (epsilon-greedy's first pick) or uncertain (Thompson's Beta(1, 1)
            # outdraws arms of a low reward rate) and send most requests to the stable version for good.
            serving = [n for n, v in variants.items() if v.version in ready]
            if not serving:
                versions = ", ".join(str(v.version) for v in variants.values())
                return stable, "stable", f"no bandit arm is ready (versions {versions})"
            self._flags.before_draw()  # (a try that may yet be abandoned must not draw)
            remembered_as = None if key is None else _draw_key(key)  # (a digest: outside the lock)
            with self._lock:
                stats = {  # (status shows every arm)
                    n: self._stats.get(n) or self._started(n, v.version) for n, v in variants.items()
                }
                arms = {n: stats[n] for n in serving}
                if config.bandit.policy == "thompson":
                    name = thompson(arms, self._rng)
                else:
                    name = epsilon_greedy(arms, self._rng, config.bandit.epsilon)
                # (a decision its caller gave up, which answered with the stable version, remembers no draw:
                # checked under the lock the fallback's forgetting takes, which comes after the giving up)
                if remembered_as is not None and not self._flags.abandoned():
                    self._bandit_keys[remembered_as] = name
                    self._drew_for_keys = True
            reason = f"bandit ({config.bandit.policy})"
        version = variants[name].version
        if version not in ready:
            return stable, "stable", f"variant {name!r} version {version} is not ready"
        return version, name, reason

    def _shadows(
        self,
        ready: Mapping[int, Any],
        answering: int,
        ctx: Mapping[str, Any],
        used: list[tuple[str, Any]],
        state: RoutingState,
    ) -> tuple[tuple[int, ...], str | None]:
        """Shadow versions for this request, and why shadows are off if a shadow flag is unusable (a bad
        shadow flag turns mirroring off; it never changes who answers)."""
        flags, keys, shadow = self._flags, state.keys, state.config.shadow
        key = keys.shadow_versions
        try:
            wanted = flags.obj(key, list(shadow.versions), ctx, used)
            if _no_versions(wanted):
                return (), None
            if not isinstance(wanted, list | tuple):
                raise UnusableFlag(key, f"{key!r} must be a list of versions, got {_value_shown(wanted)}")
            if len(wanted) > SHADOWS_LISTED:  # (each entry is checked: a million of them took a second a request)
                raise UnusableFlag(
                    key, f"{key!r} lists {len(wanted)} versions; list at most {SHADOWS_LISTED}: {_value_shown(wanted)}"
                )
            # (a version listed twice, [2, 2], gets one copy: two would double its load and count each request
            # twice in its comparison)
            versions = tuple(dict.fromkeys(_version(key, v, ready) for v in wanted))
            percent_key = keys.shadow_percent
            percent = _percent(percent_key, flags.number(percent_key, shadow.percent, ctx, used))
        except (UnusableFlag, FlagTypeError) as exc:
            return (), flags.note_unusable(exc, _NO_SHADOW)
        except InvalidInputError:  # the request's own context (rollouts.md), never counted as the provider failing
            raise
        except Exception as exc:  # the provider failed on a shadow flag: no shadows, the answer stands
            if raised_by_signal_handler(exc):  # (the caller's task stopped by its time limit: its own exception)
                raise
            return (), flags.note_failure(exc, _NO_SHADOW)
        if percent < 100 and random.random() * 100 >= percent:
            return (), None
        mirrored = tuple(v for v in versions if v != answering)
        if mirrored and self._shadow_gate is not None and not self._shadow_gate(self.model, mirrored):
            return (), None
        return mirrored, None

    # -- bookkeeping -----------------------------------------------------------------------------------------

    def served(
        self,
        request_id: str,
        decision: Decision,
        arrays: Mapping[str, np.ndarray],
        state: RoutingState | None = None,
    ) -> None:
        """Note who served a request (for outcomes) and sample its inputs (for guarded promotion);
        ``state``: the routing state that made ``decision`` (None: this router's).

        The samples are copies (a caller that reuses one buffer must not rewrite them) of every request
        until there are ``capture_inputs`` of them, or as many as ``_CAPTURED_BYTES`` holds, then of one
        request in ``_CAPTURE_EVERY``, the oldest going first. Inputs of requests pinned to a version
        (``version=``, and promotion's own comparisons) are not sampled, nor those of a request larger than
        ``_CAPTURED_BYTES`` alone.
        """
        variant = decision.variant
        if variant == "default":  # (nearly every request: a count, and now and then a sample; nothing to note)
            self._until_capture -= 1
            if self._until_capture <= 0:
                self._sample_due(arrays)
            return
        if variant == "pinned":
            return
        self._until_capture -= 1
        if self._until_capture <= 0:
            self._sample_due(arrays)
        state = self.state if state is None else state
        with self._lock:
            if state is not self._stats_state and not self._of_current_version(variant, state):
                # Decided before a reload that pointed the variant at another version (the request ran
                # meanwhile): the old version's request counts nowhere, its outcome credits nothing by id or key.
                # One that removed its arm: the arm served it, and its final statistics count it.
                removed = self._removed_stats(variant)
                if removed is not None and removed.version == decision.version:
                    removed.served += 1
                    self._assignments.note(request_id, variant, removed.serial)
                else:
                    self._assignments.note(request_id, _COUNTED)
                return
            stats = self._stats.get(variant)
            if stats is None or stats.version != decision.version:  # (another version: a flag, the latest one)
                stats = self._stats_of_version(variant, decision.version)
                if stats is None:  # a version the statistics left: counts nowhere
                    self._assignments.note(request_id, _COUNTED)
                    return
            stats.served += 1
            # Every routed request's variant, and the statistics it counts in, is remembered: the one thing that
            # makes its id creditable, once and only for this model. A stable version alone with no flag provider
            # (a switch, rollout.stable) skipped it, and the outcomes of the requests it served were dropped,
            # while status showed them served with a mean reward of 0.0 (and a flag provider or a shadow credited
            # them); a note costs under a microsecond, within a lone request's noise (docs/rollouts.md).
            self._assignments.note(request_id, variant, stats.serial)

    def _forget_draw_of(self, ctx: Mapping[str, Any], field: str) -> None:
        """:meth:`_forget_draw` for a request routed without its key (the kill switch, the stable strategy):
        a key that cannot be made text fails no such request, as it would not have without a bandit before."""
        with contextlib.suppress(InvalidInputError):
            self._forget_draw(targeting_key_of(ctx, field))

    def _forget_draw(self, key: str | None) -> None:
        """A request of ``key`` was routed by another strategy than the bandit, or by the kill switch (flags or
        a reload ended the bandit for it): the arm last drawn for it no longer says where its outcomes by key
        go. Once no draw is remembered, requests stop looking (the bandit may draw again later)."""
        if key is not None:
            remembered_as = _draw_key(key)  # (a digest: outside the lock)
            with self._lock:
                self._bandit_keys.pop(remembered_as, None)
                if not self._bandit_keys:  # (len() expires old draws: under the lock)
                    self._drew_for_keys = False

    def served_many(
        self,
        request_ids: Sequence[str],
        requests: Sequence[Served],
        state: RoutingState | None = None,
        progress: list[int] | None = None,
    ) -> None:
        """:meth:`served` of each of ``requests`` (an event loop's merged requests), in order, with its id in
        ``request_ids``: requests of the default variant none of which is due to be sampled (nearly every
        batch) are counted together. ``progress``: ``[n]``, increased by each request noted (or whose note
        was interrupted), so that a caller interrupted before this noted them all can call again for the rest
        (see ``_loop_batching._noted_served``); an interruption is raised once all are noted, the first if
        several."""
        count = len(requests)
        if self._until_capture > count:
            for request in requests:
                if request.decision.variant != "default":
                    break
            else:
                # Counted before the decrement, as each request of the slow path below is before its note:
                # interrupted between the two, the caller's next call decremented again (a sample due a batch
                # early); this way the decrement is skipped (a sample a batch late, as a lost decrement is).
                if progress is not None:
                    progress[0] += count
                self._until_capture -= count
                return
        interruption: BaseException | None = None
        for request_id, request in zip(request_ids, requests, strict=False):  # (ids: as many or more)
            # Counted before its note: counted after it, an interruption just after served() returned left the
            # request noted but not counted, and the caller's next call noted it again (served twice).
            if progress is not None:
                progress[0] += 1
            try:
                self.served(request_id, request.decision, request.arrays, state)
            except Exception:
                raise
            except BaseException as exc:  # (gevent's Timeout, Ctrl-C on the loop's thread: raised once all are noted)
                # Every request here was answered: raised on at once, the ones after it were counted served
                # nowhere and their outcomes credited to no variant (record_outcome gave None).
                if interruption is None:
                    interruption = exc
        if interruption is not None:
            raise interruption

    def _sample_due(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A routed request's turn to be sampled: :meth:`served`'s count reached 0. A copy costs about 1 µs
        alone but 6-8 µs between two runs of a small model (its code and memory cold after each run): one
        request in 8 cost every lone predict about 1 µs. So every request is sampled until the samples are
        full (the count is left at 1), then one in _CAPTURE_EVERY (an unlocked count: a lost decrement skips
        nothing that matters). Without ``capture_inputs`` the count starts too high to reach 0."""
        if not self._capture:
            self._until_capture = _NEVER
            return
        self._sample(arrays)
        self._until_capture = _CAPTURE_EVERY if len(self.recent) >= self._capture_size else 1

    def _sample(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Keep a copy of a request's inputs in ``recent``, the oldest going first past ``capture_inputs``
        samples or ``_CAPTURED_BYTES``."""
        nbytes = _sample_bytes(arrays)
        if nbytes > _CAPTURED_BYTES:
            if not self._too_large_said:
                self._too_large_said = True
                logger.warning(
                    "model %r: a request of %.1f MiB is not sampled for guarded promotion (promote() compares on "
                    "at most %d MiB of recent inputs); such requests never are",
                    self.model,
                    nbytes / 2**20,
                    _CAPTURED_BYTES // 2**20,
                )
            return
        sample = {name: np.array(array) for name, array in arrays.items()}
        with self._lock:
            recent = self.recent
            while recent and (len(recent) >= (recent.maxlen or 1) or self._recent_bytes + nbytes > _CAPTURED_BYTES):
                if len(recent) < (recent.maxlen or 1):  # full by bytes: sample one request in _CAPTURE_EVERY now
                    self._capture_size = min(self._capture_size, len(recent))
                recent.popleft()
                self._recent_bytes -= self._recent_sizes.popleft()
            recent.append(sample)
            self._recent_sizes.append(nbytes)
            self._recent_bytes += nbytes

    def record_outcome(
        self,
        request_id: str | RequestNumber | None,
        reward: float,
        key: str | None,
        latest: int,
        ready: Mapping[int, Any],
        state: RoutingState | None = None,
    ) -> str | None:
        """Attribute ``reward`` to the variant that served ``request_id`` (or that ``key`` is bucketed to, by
        ``state``, the routing state published with ``ready``; None: this router's). A caller asking several
        routers passes a :class:`RequestNumber`, so the id is parsed once for all of them.

        Raises ValueError for a reward that is not a finite number. By request id, an outcome counts once
        (a repeat credits nothing and returns None). By key, a canary or A/B test credits the
        variant the key is bucketed to now; a bandit credits the arm it last drew for that key in this
        process (within an hour), and nothing (None) if it drew none.
        """
        reward = _checked_reward(reward)
        state = self.state if state is None else state
        credited = self._credit_request(request_id, reward, state) if request_id is not None else None
        if credited is _COUNTED:  # this request's outcome was counted already (or counts nowhere)
            return None
        if credited is not None:
            return credited
        if key is None or str(key) == "":  # (an empty key is no key: not bucketed)
            return None
        routed = self._variant_of_key(str(key), ready, latest, state)
        if routed is None:
            return None
        variant, version = routed
        with self._lock:
            # Bucketed by ``state``, read before this lock: a reload since may have pointed the variant at
            # another version and started its statistics afresh, which this outcome of the old one must not join.
            if not self._of_current_version(variant, state):
                return None
            # An outcome by key cannot tell which version served it, and the version the key gets now is read
            # from the key alone (a flag's rule on another attribute of the requests reads otherwise): it
            # credits the statistics as they are, and never starts them afresh (a request does, see served).
            # Restarting them here wiped "canary" and "stable" at every such outcome and labelled "canary" with
            # a version that served none of it; then held off, every outcome by key credited nothing.
            stats = self._stats.get(variant)
            if stats is None:
                stats = self._started(variant, None)  # (of the version its first request brings)
            elif version is not None and version in self._left.get(variant, ()):
                return None  # the key gets a version the statistics left: which one served it is unknown
            self._credit(variant, stats, reward, state.config)
        return variant

    def outcome_of_request(
        self, request_id: str | RequestNumber, reward: float, state: RoutingState | None = None
    ) -> str | _Counted | None:
        """:meth:`record_outcome` by request id alone, saying whether the id is this router's: the variant
        credited; ``_COUNTED`` for an id of its requests that credits nothing (counted already, or its
        statistics started afresh since); None for an id it does not know (another model's request, or one
        too old). A request id is one request's, of one model: a caller asking every model stops at the
        first that knows it. Raises ValueError as :meth:`record_outcome` does."""
        return self._credit_request(request_id, _checked_reward(reward), self.state if state is None else state)

    def _credit_request(
        self, request_id: str | RequestNumber, reward: float, state: RoutingState
    ) -> str | _Counted | None:
        """See :meth:`outcome_of_request` (``reward`` checked)."""
        with self._lock:
            taken = self._assignments.take(request_id)
            if isinstance(taken, tuple):  # credited in the same step: a reload cannot restart the arm in between
                variant, serial = taken
                stats = self._stats.get(variant)
                if stats is None or stats.serial != serial:
                    stats = self._removed_stats(variant, serial)
                    if stats is None:
                        return _COUNTED  # its statistics started afresh since (another version): credits nothing
                self._credit(variant, stats, reward, state.config)
                return variant
        return taken

    def _removed_stats(self, variant: str, serial: int | None = None) -> VariantStats | None:
        """The statistics of ``variant``, an arm a reload removed, while outcomes of its requests may come (and
        numbered ``serial``, if given); None otherwise (under the lock)."""
        removed = self._removed.get(variant)
        if removed is None:
            return None
        if time.monotonic() - removed[1] > _ASSIGNMENT_TTL_S:
            del self._removed[variant]
            return None
        return removed[0] if serial is None or removed[0].serial == serial else None

    def _credit(self, variant: str, stats: VariantStats, reward: float, config: RolloutConfig) -> None:
        """Add an outcome to ``variant``'s statistics, ``stats``, and follow the tests it is in (under the lock)."""
        stats.add(reward)
        pairs = self._pairs
        if pairs[0] is not config:  # (made once per configuration: every outcome looks its tests up)
            pairs = self._pairs = (config, _tests_of_variants(config))
        for pair in pairs[1].get(variant, ()):
            self._follow_test(pair)

    def _of_current_version(self, variant: str, state: RoutingState) -> bool:
        """Whether ``state`` gives ``variant`` the version its statistics are of now (under the lock)."""
        arm = state.config.variants.get(variant)
        if arm is not None:
            # (not at all where a reload removed the arm since: its requests count in its final statistics alone)
            # (nor where the arm was added back since: the request is of its earlier life, its state older)
            return (
                self._arm_versions.get(variant, arm.version) == arm.version
                and variant not in self._removed
                and state.serial >= self._arm_born.get(variant, 0)
            )
        if variant in ("canary", "stable"):
            return (
                state.config.canary.version in (None, self._canary_version)
                and state.pin in (None, self._stable_version)
                and state.serial >= self._arm_born.get(variant, 0)
            )
        return True

    def _follow_test(self, pair: tuple[str, str]) -> None:
        """Lower the test's always-valid p-value to where this outcome puts it (under the lock): one
        statistic, a few microseconds, and only once both sides have the outcomes a test needs."""
        control, treatment = self._stats.get(pair[0]), self._stats.get(pair[1])
        if control is not None and treatment is not None:
            self._lowest_p[pair] = lower_always_valid_p(control, treatment, self._lowest_p.get(pair, 1.0))

    def _variant_of_key(
        self, key: str, ready: Mapping[int, Any], latest: int, state: RoutingState
    ) -> tuple[str, int | None] | None:
        """The variant a targeting key gets and its version (None: a drawn arm no longer configured), with no
        side effect: no bandit draw, no shadow, no count.

        The bandit's last draw for the key comes first: it served the key's last request, whatever the flags
        say now of a context this call does not have (a rule on another attribute) or cannot read (a failing
        provider). A later request of the key routed by another strategy forgets it (:meth:`_forget_draw`).

        From one routing state, as :meth:`decide`: a promotion (canary removed, its version made stable)
        read attribute by attribute credited a canary user's outcome to "stable", which neither state says."""
        if state.latest:  # its requests are "default": counted in no variant, nothing to attribute
            return None
        remembered_as = _draw_key(key)
        with self._lock:
            drawn = self._bandit_keys.get(remembered_as)
        if drawn is not None:
            arm = state.config.variants.get(drawn)
            # (an arm no longer configured: drawn by a decision made before the reload that removed it)
            return None if arm is None else (drawn, arm.version)
        stable = state.stable_of(ready, latest)
        if state.killed:
            return "stable", self._flagged_stable(ready, stable, {state.config.key_field: key}, state)
        ctx = {state.config.key_field: key}

        def variant() -> tuple[str, int | None] | None:
            routed = self._route(ready, stable, ctx, [], state, draw=False)
            return None if routed is None else (routed[1], routed[0])

        return self._flags.run(variant, lambda reason: None, effect="the outcome by key credits no variant")

    def remember_interleaving(
        self, request_id: str, interleaving: Interleaving, rankers: tuple[int, ...] | None = None
    ) -> None:
        """Keep an interleaving of ``rankers`` (A's version, B's; None: the configured ones) for
        :meth:`record_click`: compactly (~5 bytes an item), for an hour, and at most
        ``_INTERLEAVED_ITEMS_KEPT`` items in all (the oldest are forgotten first).

        Wins are counted per pair of rankers: a rankers flag or a reload that names another pair starts its
        own count, and a click on an interleaving of the old pair credits the old pair's. Added together,
        "A" and "B" were other versions from one query to the next (version 2 was B, then A, and its losses
        as A showed as wins of A)."""
        pair = tuple(rankers if rankers is not None else self.state.config.interleaving.rankers or ())
        stored = _Interleaved(interleaving.order, interleaving.teams)
        with self._lock:
            wins = self._wins.get(pair)
            if wins is None:
                wins = self._wins[pair] = {"A": 0, "B": 0, "ties": 0, "queries": 0}
                if len(self._wins) > _RANKER_PAIRS_KEPT:
                    self._wins.popitem(last=False)
            else:
                self._wins.move_to_end(pair)
            wins["queries"] += 1
            stored.wins = wins
            try:
                self._interleavings[request_id] = stored
            except ValueError:  # larger than the whole bound: its clicks cannot be credited
                pass

    def record_click(self, request_id: object, item: int) -> str | None:
        """Credit the team whose ranker contributed ``item``, once per item of a page, in the wins of the pair
        of rankers that made the page; returns "A", "B" or None if unknown (an id that is no text too, as
        :meth:`record_outcome` has it: a click endpoint hands on a client's JSON, an object or a list)."""
        if not isinstance(request_id, str):
            return None
        with self._lock:
            interleaving = self._interleavings.get(request_id)
            position = None if interleaving is None else interleaving.position_of(item)
            if interleaving is None or position is None:
                return None
            team = interleaving.team_at(position)
            if not interleaving.first_click_at(position):  # a double click, a retried request: counted once
                return team
            before = _winner(interleaving.clicks)
            interleaving.clicks[team] += 1
            after = _winner(interleaving.clicks)
            if before is not None:
                interleaving.wins[before] -= 1
            if after is not None:
                interleaving.wins[after] += 1
            return team

    def interleave(self, ranking_a: list[int], ranking_b: list[int], length: int | None) -> Interleaving:
        from ._experiments import team_draft

        with self._lock:
            return team_draft(ranking_a, ranking_b, self._coin, length)

    def status(self) -> dict[str, Any]:
        state = self.state
        config = state.config
        with self._lock:
            stats = {name: s.to_dict() for name, s in self._stats.items()}
            removed = {name: s.to_dict() for name in list(self._removed) if (s := self._removed_stats(name))}
            tests = {}
            for pair in _test_pairs(config):  # only with outcomes on both sides: no difference against nothing
                control, treatment = self._stats.get(pair[0]), self._stats.get(pair[1])
                if control is not None and treatment is not None and control.outcomes and treatment.outcomes:
                    tests[pair[1]] = compare(control, treatment, lowest_always_valid_p=self._lowest_p.get(pair, 1.0))
            pairs = [{"rankers": list(pair), **wins} for pair, wins in reversed(self._wins.items())]
        return {
            "strategy": config.strategy,
            "stable_alias": state.pin,
            "variants": stats,
            "removed_variants": removed,
            "tests": tests,
            "interleaving": {**pairs[0], "earlier": pairs[1:]} if pairs else None,
            "flags": self._flags.status(),
            "configured": _configured(config),
        }


class _Interleaved:
    """A remembered interleaving, compact: item indices in an array of 4-byte ints where they fit, the teams
    as one byte each (a list of Python ints and strs took ~18 KiB for 1000 items; this takes ~5 KiB). A
    clicked position's team byte is stored in lower case: a click costs no memory of its own."""

    __slots__ = ("clicks", "order", "teams", "wins")

    wins: dict[str, int]
    """The wins of the pair of rankers that made it, where its clicks count (set once it is remembered)."""

    def __init__(self, order: list[int], teams: list[str]) -> None:
        small = not order or (min(order) >= 0 and max(order) < 2**32)
        self.order = np.asarray(order, dtype=np.uint32 if small else np.int64)
        self.teams = bytearray("".join(teams).encode("ascii"))
        self.clicks = {"A": 0, "B": 0}

    def size(self) -> int:
        """Its cost against ``_INTERLEAVED_ITEMS_KEPT``."""
        return len(self.order) + _INTERLEAVING_OVERHEAD

    def position_of(self, item: int) -> int | None:
        """Where ``item`` was shown, None if it was not."""
        if self.order.dtype == np.uint32 and not 0 <= item < 2**32:
            return None
        where = np.flatnonzero(self.order == item)
        return int(where[0]) if len(where) else None

    def team_at(self, position: int) -> str:
        """ "A" or "B": the ranker that placed the item at ``position``."""
        return chr(self.teams[position]).upper()

    def first_click_at(self, position: int) -> bool:
        """Whether this is the first click on the item at ``position``: a page's item counts once for its
        ranker, so a user who clicks it again (or a client that retries) cannot tip the page."""
        team = self.teams[position]
        if chr(team).islower():
            return False
        self.teams[position] = ord(chr(team).lower())
        return True


def _sample_bytes(arrays: Mapping[str, Any]) -> int:
    """Bytes a promotion sample's arrays hold (a text input's strings too)."""
    return held_bytes(arrays.values())


def _no_versions(value: object) -> bool:
    """Whether a flag that lists versions (shadows, rankers) lists none: an empty list, or null. Any other
    value that is no list is unusable, and says so: ``false``, ``0``, ``""`` or ``{}`` turned shadows off
    without a word (a value the rollout cannot use never makes it silently do nothing)."""
    return value is None or (type(value) in (list, tuple) and not value)


def _not_a_mapping(model: str, context: Any) -> InvalidInputError:
    return InvalidInputError(
        f"model {model!r}: context must be a mapping such as {{'user_id': 'u-123'}} (or None), "
        f"got {type(context).__name__}",
        model=model,
    )


def _configured(config: RolloutConfig) -> dict[str, Any]:
    """The rollout as configured (flags may override any of it per request)."""
    return {
        "candidate": config.canary.version,
        "canary_percent": config.canary.percent,
        "arms": {name: {"version": arm.version, "weight": arm.weight} for name, arm in config.variants.items()},
        "bandit_policy": config.bandit.policy,
        "shadow": list(config.shadow.versions),
        "shadow_percent": config.shadow.percent,
    }


def _draw_key(key: str) -> bytes:
    """What a bandit's draw for a targeting key is remembered under: 16 bytes of blake2b of the key, whatever
    its length (a request's key is a client's text, as long as it likes). Two keys share a draw by chance once
    in 2**64 pairs or so, far below a reward's noise."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def _whole(key: str, value: Any) -> int:
    """A flag value that names a version (a whole number), or :class:`UnusableFlag` saying why it does not."""
    # (an int is whole as it is: float() of one past any float raised OverflowError, counted as the provider
    # failing where a list flag, shadow.versions or rankers, held it)
    # (numpy's numbers too: a provider backed by numpy data hands back list(array)'s np.int64)
    if not isinstance(value, bool | np.bool_):
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):
            number = float(value)
            if number.is_integer():  # (NaN and the infinities are not)
                return int(number)
    raise UnusableFlag(key, f"{key!r} must name a version (a whole number), got {_value_shown(value)}")


def _version(key: str, value: Any, ready: Mapping[int, Any]) -> int:
    """A flag value that names a loaded version, or :class:`UnusableFlag` saying why it does not."""
    version = _whole(key, value)
    if version not in ready:
        loaded = ", ".join(map(str, sorted(ready))) or "none"
        raise UnusableFlag(
            key, f"{key!r} names version {_value_shown(version)}, which is not loaded (loaded: {loaded})"
        )
    return version


def _percent(key: str, value: float) -> float:
    if not 0 <= value <= 100:  # NaN fails this too
        raise UnusableFlag(key, f"{key!r} must be a percentage from 0 to 100, got {value:g}")
    return value


def _tests_of_variants(config: RolloutConfig) -> dict[str, tuple[tuple[str, str], ...]]:
    """Variant name -> the (control, treatment) pairs of :func:`_test_pairs` it is in."""
    tests: dict[str, tuple[tuple[str, str], ...]] = {}
    for pair in _test_pairs(config):
        for name in dict.fromkeys(pair):
            tests[name] = (*tests.get(name, ()), pair)
    return tests


def _salt(config: RolloutConfig, strategy: str) -> str:
    """What a strategy buckets keys by: ``rollout.salt``, apart from a canary's buckets for an A/B test."""
    return config.salt + AB_SALT_SUFFIX if strategy == "ab" else config.salt


def _test_pairs(config: RolloutConfig) -> list[tuple[str, str]]:
    """The (control, treatment) pairs that ``tests`` compares: the canary with stable, each arm with the first."""
    arms = list(config.variants)
    return [("stable", "canary")] + [(arms[0], name) for name in arms[1:]]


def _weights(key: str, value: Any, variants: Mapping[str, Any]) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise UnusableFlag(key, f"{key!r} must map variant names to weights, got {_value_shown(value)}")
    unknown = list(itertools.islice((name for name in value if name not in variants), 9))  # (a few say enough)
    if unknown:
        raise UnusableFlag(
            key, f"{key!r} names unknown variants {_value_shown(unknown)} (variants: {', '.join(variants)})"
        )
    weights: dict[str, float] = {}
    for name, weight in value.items():
        try:  # (an int past any float overflows both the test and float())
            usable = not isinstance(weight, np.bool_) and is_number(weight) and weight >= 0  # (numpy's too)
            weights[name] = float(weight) if usable and not math.isinf(weight) else math.nan
        except OverflowError:
            weights[name] = math.nan
        if math.isnan(weights[name]):
            raise UnusableFlag(
                key, f"{key!r}: the weight of {name!r} must be a finite number >= 0, got {shown(weight)}"
            )
    if not sum(weights.values()) > 0:
        raise UnusableFlag(key, f"{key!r}: the weights must not all be 0")
    return weights


def _ab_arm(
    model: str, salt: str, key: str | None, position: int, weights: Sequence[tuple[str, float]]
) -> tuple[str, str]:
    """The arm of an A/B split and why: the key's (:func:`pick_arm`), or with no key the random ``position``'s
    share of the buckets."""
    if key is None:
        return pick_weighted(position, weights), f"A/B bucket {position / 100:.2f}% (no targeting key: at random)"
    return pick_arm(model, salt, key, weights), "A/B arm of the targeting key"


def _winner(clicks: Mapping[str, int]) -> str | None:
    if clicks["A"] == clicks["B"]:
        return "ties" if clicks["A"] else None
    return "A" if clicks["A"] > clicks["B"] else "B"
