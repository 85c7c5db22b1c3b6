"""Which versions of a model found on disk are served (``version_policy`` in code or in config.toml)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._config_checks import check_int, check_list, is_int, plain_fields, shown
from ._errors import ConfigurationError

__all__ = ["VersionPolicy", "parse_version_policy"]


@dataclass(frozen=True, slots=True)
class VersionPolicy:
    """Which versions found on disk are served: the latest N, all of them, or specific ones."""

    kind: Literal["latest", "all", "specific"] = "latest"
    count: int = 1
    versions: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        plain_fields(self)
        if self.kind not in ("latest", "all", "specific"):
            raise ConfigurationError(f"version policy must be latest, all or specific, got {shown(self.kind)}")
        if self.kind == "latest" and (not is_int(self.count) or self.count < 1):  # True is an int, to Python
            raise ConfigurationError(f"version policy latest needs a count >= 1 (an integer), got {shown(self.count)}")
        versions = check_list("version policy versions", self.versions)
        for version in versions:
            check_int("version policy versions", version, 1, None)
        if self.kind == "specific" and not versions:
            raise ConfigurationError(f"version policy specific needs positive versions, got {shown(self.versions)}")
        object.__setattr__(self, "versions", versions)

    @classmethod
    def latest(cls, count: int = 1) -> VersionPolicy:
        return cls("latest", count=count)

    @classmethod
    def all(cls) -> VersionPolicy:
        return cls("all")

    @classmethod
    def specific(cls, *versions: int) -> VersionPolicy:
        return cls("specific", versions=tuple(sorted(set(versions))))

    def select(self, available: list[int]) -> list[int]:
        """The versions to serve out of those available, ascending."""
        found = sorted(available)
        if self.kind == "all":
            return found
        if self.kind == "latest":
            return found[-self.count :]
        return [v for v in found if v in self.versions]


_POLICY_KEYS = ("latest", "specific")


def parse_version_policy(value: Any, source: str) -> VersionPolicy:
    """A config.toml ``version_policy``: ``"latest"``, ``"all"``, ``{ latest = N }`` or ``{ specific = [...] }``."""
    if value == "latest":
        return VersionPolicy.latest()
    if value == "all":
        return VersionPolicy.all()
    if isinstance(value, Mapping):  # (a typo in a key was refused as the whole form, naming no key)
        unknown = [key for key in value if key not in _POLICY_KEYS]
        if unknown:
            raise ConfigurationError(
                f"{source}: version_policy: unknown key {shown(unknown[0])}; known keys are {', '.join(_POLICY_KEYS)}"
            )
        if len(value) > 1:
            raise ConfigurationError(
                f"{source}: version_policy takes one of latest or specific, not both: "
                "{ latest = N } or { specific = [1, 2] }"
            )
    if isinstance(value, Mapping) and len(value) == 1:
        ((kind, arg),) = value.items()
        try:
            if kind == "latest" and type(arg) is int:  # not a bool: { latest = true } is no count
                return VersionPolicy.latest(arg)
            if kind == "specific" and isinstance(arg, list) and all(type(v) is int for v in arg):
                return VersionPolicy.specific(*arg)
        except ConfigurationError as exc:  # { latest = 0 }, { specific = [0] }
            raise ConfigurationError(f"{source}: {exc}") from None
    raise ConfigurationError(
        f'{source}: version_policy must be "latest", "all", {{ latest = N }} or {{ specific = [1, 2] }}, '
        f"got {shown(value)}"
    )


def policy_in_code(value: object) -> str:
    """How to write ``value``, a config.toml ``version_policy`` given to ``ModelConfig`` in code, as the
    :class:`VersionPolicy` it means (or the three ways to make one): for the message that refuses it, which
    named the type alone ("version_policy must be a VersionPolicy, got 'all'")."""
    if isinstance(value, str | Mapping):
        try:
            policy = parse_version_policy(value, "version_policy")
        except ConfigurationError:
            pass
        else:
            if policy.kind == "latest":
                return f"inprocserve.VersionPolicy.latest({policy.count})"
            if policy.kind == "specific":
                return f"inprocserve.VersionPolicy.specific({', '.join(map(str, policy.versions))})"
            return "inprocserve.VersionPolicy.all()"
    return "inprocserve.VersionPolicy.latest(N), .all() or .specific(1, 3)"
