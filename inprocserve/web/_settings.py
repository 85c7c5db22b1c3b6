"""The checks of an integration's settings that a server built later, in each worker, would refuse: the
server's shadow arguments, its ``config=``/``models=`` and ``flags=``, on/off settings and durations."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

from .._config import check_model_configs
from .._config_checks import MAX_INTERVAL_S, check_bool, check_int, is_number, shown
from .._errors import ConfigurationError
from .._flag_reader import MAX_FLAG_TIMEOUT_S
from .._flags import FlagProvider
from .._shadow import DEFAULT_MAX_QUEUED_BYTES

# -- shadow settings --------------------------------------------------------------------------------------

SHADOW_SETTINGS: Mapping[str, Any] = MappingProxyType(
    {"shadow_budget": 0.02, "shadow_queue": 256, "shadow_queue_bytes": DEFAULT_MAX_QUEUED_BYTES, "on_shadow": None}
)
"""The shadow arguments of :class:`~inprocserve.Server` and their defaults (docs/rollouts.md, "Shadow
traffic"), for an integration's settings."""


def shadow_setting_problem(argument: str, value: object) -> str | None:
    """What ``Server`` would refuse in ``value`` for its shadow argument ``argument`` (a key of
    :data:`SHADOW_SETTINGS`), as "must be ..., got ..."; ``None`` if it is fine. An integration that builds
    its server lazily in each worker calls this at start-up, so a bad setting fails there, once."""
    if argument == "on_shadow":
        return None if value is None or callable(value) else f"must be a callable or None, got {value!r}"
    if argument == "shadow_budget":  # (NaN fails the comparison too)
        return None if is_number(value) and 0 < value <= 1 else f"must be a share of time in (0, 1], got {value!r}"  # type: ignore[operator]
    check: dict[str, Callable[[], None]] = {
        "shadow_queue": lambda: check_int(argument, value, 1),
        "shadow_queue_bytes": lambda: check_int(argument, value, 1, None),
    }
    if argument not in check:
        raise ValueError(f"{argument!r} is not a shadow setting; one of {sorted(SHADOW_SETTINGS)}")
    try:
        check[argument]()
    except ConfigurationError as exc:
        return str(exc).removeprefix(f"{argument} ")
    return None


def model_configs_problem(config: object, models: object, *, names: tuple[str, str]) -> str | None:
    """What ``Server`` would refuse in ``config`` (a :class:`~inprocserve.ModelConfig` or ``None``) and
    ``models`` (a dict of model name -> ``ModelConfig``), with the settings called ``names``; ``None`` if
    they are fine. A ``config.toml``-shaped dict there let every worker start and serve nothing."""
    try:
        check_model_configs(config, models, names=names)
    except TypeError as exc:
        return str(exc)
    return None


def flags_setting_problem(value: object) -> str | None:
    """What ``Server`` would refuse in ``value`` for its ``flags=`` (``None`` or an
    :class:`~inprocserve.FlagProvider`), as "must be ..., got ..."; ``None`` if it is fine. A lazily built
    server refused it at each worker's first request, and then at every request (a 500 each time)."""
    if value is None or (isinstance(value, FlagProvider) and not isinstance(value, type)):
        return None
    if isinstance(value, type):
        return f"must be a flag provider, got the class {value.__name__}: pass {value.__name__}(...)"
    refusal = (
        "must be an inprocserve.FlagProvider (InMemoryFlags, EnvFlags, FileFlags, OpenFeatureFlags, ...) or None, "
        f"got {shown(value)}"
    )
    # A team's own provider that lacks one member was told only its repr: say which members and what they are
    # (not for a value that has none of them, a string say, where the list would be noise)
    missing = [member for member in _FLAG_PROVIDER_MEMBERS if not hasattr(value, member)]
    if len(missing) == len(_FLAG_PROVIDER_MEMBERS):
        return refusal
    meanings = "; ".join(f"{member}: {_FLAG_PROVIDER_MEMBERS[member]}" for member in missing)
    return f"{refusal}, which lacks {', '.join(missing)} ({meanings})"


_FLAG_PROVIDER_MEMBERS = {
    "name": "a str naming the provider in logs, status and metrics",
    "blocking": "a bool, True if an evaluation may wait on I/O (it is then run on a helper thread within "
    "flag_timeout_s), False for one that reads memory",
    "get_boolean": "a method (key, default, context) -> bool",
    "get_number": "a method (key, default, context) -> float",
    "get_string": "a method (key, default, context) -> str",
    "get_object": "a method (key, default, context) -> the flag's value",
}
"""What :class:`~inprocserve.FlagProvider` asks of a provider, and what each member is."""


def bool_setting_problem(value: object) -> str | None:
    """What is wrong with ``value`` for an on/off setting, as "must be ..., got ..."; ``None`` for a bool.
    A string is true whatever it says: ``os.environ.get("FOLLOW_SYMLINKS", "false")`` turned the
    integrity check's refusal of linked model folders off."""
    try:
        check_bool("", value)
    except ConfigurationError:
        return f"must be True or False, got {shown(value)}" + (
            " (a string is true whatever it says)" if isinstance(value, str) else ""
        )
    return None


# -- durations ---------------------------------------------------------------------------------------------

SECONDS_SETTINGS: Mapping[str, tuple[bool, bool, float | None]] = MappingProxyType(
    {
        "timeout_s": (True, False, math.inf),  # (infinity: no deadline, as predict(timeout_s=inf) takes it)
        "poll_interval_s": (True, False, MAX_INTERVAL_S),
        "control_interval_s": (True, False, MAX_INTERVAL_S),
        "flag_timeout_s": (False, False, MAX_FLAG_TIMEOUT_S),
        "retry_after_s": (False, True, None),
    }
)
"""An integration's settings in seconds: whether ``None`` is allowed, whether 0 is, and the largest value
(``None``: any finite one; ``timeout_s``: a view's default budget; ``retry_after_s``: what a 503 tells
clients; the others are :class:`~inprocserve.Server`'s arguments)."""


def seconds_setting_problem(setting: str, value: object) -> str | None:
    """What is wrong with ``value`` for the duration ``setting`` (a key of :data:`SECONDS_SETTINGS`), as
    "must be ..., got ..."; ``None`` if it is fine. Checked at start-up: a string or NaN there would fail
    every request (a 500), or the first request of every worker, which builds the server."""
    none_ok, zero_ok, highest = SECONDS_SETTINGS[setting]
    if value is None and none_ok:
        return None
    try:
        number = float(value) if is_number(value) else math.nan  # type: ignore[arg-type]
    except OverflowError:  # an int past any float
        number = math.inf
    if (number >= 0 if zero_ok else number > 0) and (number <= highest if highest is not None else number < math.inf):
        return None
    bounds = (">= 0" if zero_ok else "> 0") + (f" and <= {highest:g}" if highest not in (None, math.inf) else "")
    kind = "a finite number" if highest is None else "a number"
    return f"must be {kind} of seconds {bounds}{', or None' if none_ok else ''}, got {shown(value)}"
