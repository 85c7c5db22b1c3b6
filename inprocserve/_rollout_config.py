"""The rollout section of a model's config, grouped by strategy: which version answers each request, and
which versions run in the shadow.

Grouped since flat fields for four strategies were hard to read: ``canary`` (version, percent),
``bandit`` (policy, epsilon), ``shadow`` (versions, percent), ``interleaving`` (rankers). The flat fields
of earlier releases (``candidate``, ``canary_percent``, ``bandit_policy``, ``epsilon``, ``shadow = [..]``,
``shadow_percent``, ``rankers``) are still accepted, in code and in ``config.toml``, with a
``DeprecationWarning``; they are moved into their group when the object is built and read ``None`` after.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from ._config_checks import (
    check_int,
    check_list,
    check_number,
    check_table,
    check_text,
    is_int,
    is_number,
    plain_fields,
    shown,
)
from ._errors import ConfigurationError

__all__ = [
    "FLAT_FIELDS",
    "GROUPS",
    "BanditConfig",
    "CanaryConfig",
    "InterleavingConfig",
    "RolloutConfig",
    "ShadowConfig",
    "Strategy",
    "VariantConfig",
]

Strategy = Literal["stable", "canary", "ab", "bandit"]


def _percent(name: str, value: Any) -> None:
    if not is_number(value) or not 0 <= value <= 100:
        raise ConfigurationError(f"rollout.{name} must lie in 0..100, got {shown(value)}")


def _version(name: str, value: Any) -> None:
    """A version number in the rollout config: an int >= 1 (or None: not set)."""
    if value is not None and (not is_int(value) or value < 1):
        raise ConfigurationError(
            f"rollout.{name} must be a version number, a whole number >= 1 such as {name.rsplit('.')[-1]} = 2 "
            f"(no quotes), got {shown(value)}"
        )


SHADOWS_LISTED = 64
"""The most versions ``shadow.versions`` (the configuration's, or its flag's) may list, a version listed twice
counting twice: a few versions run in the shadow at most, and a longer list is a mistake (each entry is checked
for every request: a million of them took a second a request)."""


def _versions(name: str, values: Any) -> tuple[int, ...]:
    versions = check_list(f"rollout.{name}", values)
    if any(not is_int(v) or v < 1 for v in versions):
        raise ConfigurationError(f"rollout.{name} must list positive version numbers, got {shown(list(versions))}")
    return versions


@dataclass(frozen=True, slots=True, kw_only=True)
class VariantConfig:
    """One arm of an A/B test or bandit: the version that serves it and its share of traffic."""

    version: int
    weight: float = 1.0

    def __post_init__(self) -> None:
        plain_fields(self)
        if not is_int(self.version) or self.version < 1:
            raise ConfigurationError(f"rollout variant version must be a positive int, got {shown(self.version)}")
        check_number("rollout variant weight", self.weight, 0)


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryConfig:
    """The ``canary`` strategy: a sticky share of targeting keys goes to ``version``."""

    version: int | None = None
    """The canary (candidate) version."""
    percent: float = 0.0
    """Share of targeting keys sent to it, 0-100, in steps of 0.01."""

    def __post_init__(self) -> None:
        plain_fields(self)
        _version("canary.version", self.version)
        _percent("canary.percent", self.percent)


@dataclass(frozen=True, slots=True, kw_only=True)
class BanditConfig:
    """The ``bandit`` strategy: a policy picks among ``RolloutConfig.variants`` from recorded outcomes."""

    policy: Literal["thompson", "epsilon_greedy"] = "thompson"
    epsilon: float = 0.1
    """Exploration rate of ``epsilon_greedy``."""

    def __post_init__(self) -> None:
        plain_fields(self)
        if self.policy not in ("thompson", "epsilon_greedy"):
            raise ConfigurationError(
                f"rollout.bandit.policy must be thompson or epsilon_greedy, got {shown(self.policy)}"
            )
        check_number("rollout.bandit.epsilon", self.epsilon, 0, 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class ShadowConfig:
    """Shadow traffic: versions that get a copy of each (sampled) request after the caller has its answer."""

    versions: tuple[int, ...] = ()
    percent: float = 100.0
    """Share of requests mirrored to the shadow versions."""
    max_abs_diff: float | None = None
    """A comparison whose largest absolute difference from the caller's answer is above this counts as
    ``disagree`` (in ``inprocserve.shadow.comparisons``, the ShadowDisagrees alert, ``status()``'s
    ``over_max_abs_diff``). ``None``: a finite difference never disagrees, so a regression model's shadow only
    disagrees in form, NaN or labels."""

    def __post_init__(self) -> None:
        plain_fields(self)
        object.__setattr__(self, "versions", _versions("shadow.versions", self.versions))
        if len(self.versions) > SHADOWS_LISTED:
            raise ConfigurationError(
                f"rollout.shadow.versions lists {len(self.versions)} versions; list at most {SHADOWS_LISTED}"
            )
        _percent("shadow.percent", self.percent)
        limit = self.max_abs_diff
        if limit is not None and (not is_number(limit) or not 0 <= limit < float("inf")):
            raise ConfigurationError(
                f"rollout.shadow.max_abs_diff must be a finite number >= 0 (or left out), got {shown(limit)}"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class InterleavingConfig:
    """Team-draft interleaving (``Server.interleave``): the versions of ranker A and ranker B."""

    rankers: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        plain_fields(self)
        if self.rankers is not None:
            rankers = _versions("interleaving.rankers", self.rankers)
            if len(rankers) != 2:
                raise ConfigurationError(
                    f"rollout.interleaving.rankers must name two versions, got {shown(list(rankers))}"
                )
            object.__setattr__(self, "rankers", rankers)


GROUPS: dict[str, type[Any]] = {
    "canary": CanaryConfig,
    "bandit": BanditConfig,
    "shadow": ShadowConfig,
    "interleaving": InterleavingConfig,
}

# Deprecated flat field -> (group, field in the group).
FLAT_FIELDS: dict[str, tuple[str, str]] = {
    "candidate": ("canary", "version"),
    "canary_percent": ("canary", "percent"),
    "bandit_policy": ("bandit", "policy"),
    "epsilon": ("bandit", "epsilon"),
    "shadow_percent": ("shadow", "percent"),
    "rankers": ("interleaving", "rankers"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class RolloutConfig:
    """Which version answers each request, and which versions run in the shadow.

    Every setting here is a default that a flag can override per request (flag keys start with
    ``flag_prefix``, the model name by default): see docs/rollouts.md for the keys.
    """

    strategy: Strategy = "stable"
    """``stable``: one version answers; ``canary``: a sticky percentage goes to ``canary.version``; ``ab``: a
    sticky split over ``variants``; ``bandit``: a policy (``bandit``) picks among ``variants`` from outcomes."""
    stable: int | None = None
    """The stable alias: the version that answers by default (``None``: the latest ready version)."""
    canary: CanaryConfig = field(default_factory=CanaryConfig)
    variants: Mapping[str, VariantConfig] = field(default_factory=dict)
    """A/B and bandit arms: name -> version and weight. The first listed is the control."""
    bandit: BanditConfig = field(default_factory=BanditConfig)
    shadow: ShadowConfig = field(default_factory=ShadowConfig)
    interleaving: InterleavingConfig = field(default_factory=InterleavingConfig)
    seed: int | None = None
    """Seed of the bandit's and the interleaver's random choices (for reproducible tests)."""
    salt: str = ""
    """Mixed into the bucketing hash: change it to reshuffle who is in the canary."""
    flag_prefix: str | None = None
    """Prefix of this model's flag keys (default: the model name)."""
    key_field: str = "user_id"
    """The request-context field that identifies a user for sticky bucketing (``targeting_key`` also works)."""
    capture_inputs: int = 256
    """Recent requests kept to compare a version against the serving one before promotion (0: none), holding
    at most 32 MiB per model (each model's own bound: 0 for a model never promoted frees it)."""
    # Deprecated flat fields: accepted with a DeprecationWarning, moved into their group, then None.
    candidate: int | None = None
    """Deprecated: ``canary.version``."""
    canary_percent: float | None = None
    """Deprecated: ``canary.percent``."""
    bandit_policy: Literal["thompson", "epsilon_greedy"] | None = None
    """Deprecated: ``bandit.policy``."""
    epsilon: float | None = None
    """Deprecated: ``bandit.epsilon``."""
    shadow_percent: float | None = None
    """Deprecated: ``shadow.percent``."""
    rankers: tuple[int, int] | None = None
    """Deprecated: ``interleaving.rankers``."""

    def __post_init__(self) -> None:
        plain_fields(self)
        if self.strategy not in ("stable", "canary", "ab", "bandit"):
            raise ConfigurationError(
                f"rollout.strategy must be stable, canary, ab or bandit, got {shown(self.strategy)}"
            )
        _version("stable", self.stable)
        self._group_flat_fields()
        variants = {
            name: _variant(name, value) for name, value in check_table("rollout.variants", self.variants).items()
        }
        object.__setattr__(self, "variants", variants)
        if self.strategy in ("ab", "bandit") and len(variants) < 2:
            raise ConfigurationError(f"rollout.strategy {shown(self.strategy)} needs at least two rollout.variants")
        if self.strategy == "ab" and not any(variant.weight > 0 for variant in variants.values()):
            # (it loaded, and every request was then sent to the latest version, an arm or not, as unusable)
            raise ConfigurationError(
                "rollout.strategy 'ab' needs a rollout.variants weight above 0 (all are 0: no arm gets traffic); "
                "to pause the test, set rollout.strategy = 'stable'"
            )
        check_int("rollout.capture_inputs", self.capture_inputs, 0)
        if self.seed is not None:
            check_int("rollout.seed", self.seed, 0, None)  # numpy takes no negative seed
        check_text("rollout.salt", self.salt)
        check_text("rollout.flag_prefix", self.flag_prefix, optional=True)
        check_text("rollout.key_field", self.key_field, blank=False)  # no field named "": no sticky buckets

    def _group_flat_fields(self) -> None:
        """Move deprecated flat fields (and ``shadow`` given as a list of versions) into their groups."""
        moved: dict[str, dict[str, Any]] = {}
        given: list[str] = []
        for name, (group, inner) in FLAT_FIELDS.items():
            value = getattr(self, name)
            if value is not None:
                moved.setdefault(group, {})[inner] = value
                given.append(f"{name}={value!r}")
                object.__setattr__(self, name, None)
        shadow: Any = self.shadow
        if not isinstance(shadow, ShadowConfig):
            if isinstance(shadow, Mapping):  # a [rollout.shadow] table, or a dict in code: the new shape
                object.__setattr__(self, "shadow", ShadowConfig(**shadow))
            else:
                moved.setdefault("shadow", {})["versions"] = shadow
                given.append(f"shadow={shadow!r}")
                object.__setattr__(self, "shadow", ShadowConfig())
        for group, kind in GROUPS.items():
            value = getattr(self, group)
            if isinstance(value, Mapping):
                object.__setattr__(self, group, kind(**value))
            elif not isinstance(value, kind):
                raise ConfigurationError(f"rollout.{group} must be a table ([rollout.{group}]), got {shown(value)}")
        if not moved:
            return
        old = ", ".join(given)
        new = ", ".join(f"{group}.{inner}" for group, values in moved.items() for inner in values)
        # stacklevel 4: the caller of the generated __init__ (-> __post_init__ -> here).
        warnings.warn(
            f"RolloutConfig({old}) is deprecated; set the grouped fields instead: {new} "
            "(for example canary=CanaryConfig(version=2, percent=5))",
            DeprecationWarning,
            stacklevel=4,
        )
        for group, values in moved.items():
            current = getattr(self, group)
            default = GROUPS[group]()
            for inner, value in values.items():
                given = getattr(current, inner)
                if given != getattr(default, inner) and given != value:
                    raise ConfigurationError(
                        f"rollout.{group}.{inner} ({shown(given)}) and its deprecated flat field ({shown(value)}) "
                        "disagree; "
                        f"set only rollout.{group}.{inner}"
                    )
            object.__setattr__(self, group, GROUPS[group](**{**_as_dict(current), **values}))

    @property
    def referenced_versions(self) -> set[int]:
        """Versions this configuration names: they are loaded whatever the version policy says."""
        versions = {v for v in (self.stable, self.canary.version) if v is not None}
        versions.update(variant.version for variant in self.variants.values())
        versions.update(self.shadow.versions)
        versions.update(self.interleaving.rankers or ())
        return versions

    def routes_as(self, other: RolloutConfig) -> bool:
        """Whether ``other`` routes every request as this does: equal, with the arms in the same order.
        ``==`` alone takes two ``variants`` listed in another order for the same, but the first arm is the
        control and an A/B test splits its buckets in listed order: a running server kept the old order of
        an edited ``config.toml`` while a worker started after the edit took the new one, and the two sent
        every user to another version."""
        return self == other and list(self.variants) == list(other.variants)


def _variant(name: str, value: object) -> VariantConfig:
    if isinstance(value, VariantConfig):
        return value
    table = check_table(f"rollout.variants.{name}", value)
    try:
        return VariantConfig(**table)
    except (TypeError, ConfigurationError) as exc:  # TypeError: an unknown or missing key
        raise ConfigurationError(f"rollout.variants.{name}: {exc}") from None


def _as_dict(group: Any) -> dict[str, Any]:
    return {name: getattr(group, name) for name in group.__dataclass_fields__}
