"""Feature-flag providers: where rollout settings come from, read per request.

A provider answers typed lookups for a flag key and an evaluation context (the request's ``context``). It
returns the default when it does not know the flag and raises when it cannot answer; the rollout layer
turns a raising or slow provider into the stable decision, so a flag outage never fails a request.

Built in: :class:`InMemoryFlags` (set at run time), :class:`EnvFlags` (environment variables),
:class:`FileFlags` (a JSON or TOML file re-read when it changes) and :class:`OpenFeatureFlags` (any
OpenFeature provider: flagd, Unleash, LaunchDarkly ...).
"""

from __future__ import annotations

import json
import os
import threading
import time
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ._errors import InprocserveError

__all__ = ["EnvFlags", "FileFlags", "FlagError", "FlagProvider", "FlagTypeError", "InMemoryFlags", "OpenFeatureFlags"]

_MISSING = object()
_INTEGER_KEYS_KEPT = 1024


class FlagError(InprocserveError):
    """A flag provider could not evaluate a flag (raised by providers, absorbed by the rollout layer)."""


class FlagTypeError(FlagError):
    """A flag holds a value of the wrong type for its key (a string where a number belongs, say).

    The rollout layer counts these apart from provider outages: the provider answered, the flag is wrong.
    """


@runtime_checkable
class FlagProvider(Protocol):
    """What the rollout layer asks of a flag source. Implementations must be thread-safe.

    ``blocking`` says whether an evaluation may wait on I/O; such providers are evaluated on a helper
    thread with a time budget so a hung flag service cannot hang a request.
    """

    name: str
    blocking: bool

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool: ...
    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float: ...
    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str: ...
    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any: ...


class _LookupFlags:
    """Typed getters over a plain ``key -> value`` lookup, with type checks that raise :class:`FlagError`."""

    name = "static"
    blocking = False

    def _lookup(self, key: str) -> Any:
        raise NotImplementedError

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool:
        value = self._lookup(key)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise FlagTypeError(f"flag {key!r} must be a boolean, got {value!r}")
        return value

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        value = self._lookup(key)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FlagTypeError(f"flag {key!r} must be a number, got {value!r}")
        return float(value)

    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str:
        value = self._lookup(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise FlagTypeError(f"flag {key!r} must be a string, got {value!r}")
        return value

    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        value = self._lookup(key)
        return default if value is _MISSING else value


class InMemoryFlags(_LookupFlags):
    """Flags held in this process and changed at run time with :meth:`set` (thread-safe).

    Example::

        flags = inprocserve.InMemoryFlags({"fraud.canary.percent": 5})
        server = inprocserve.Server("models/", flags=flags)
        flags.set("fraud.canary.percent", 10)   # takes effect on the next request
    """

    name = "in-memory"

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = dict(values or {})
        self._lock = threading.Lock()

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._values = {**self._values, key: value}  # copy-on-write: readers never lock

    def delete(self, key: str) -> None:
        with self._lock:
            self._values = {k: v for k, v in self._values.items() if k != key}

    def _lookup(self, key: str) -> Any:
        return self._values.get(key, _MISSING)


class EnvFlags(_LookupFlags):
    """Flags from environment variables: ``fraud.canary.percent`` is read from
    ``INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT``. Values are parsed as JSON (``10``, ``true``, ``[3]``,
    ``{"a": 1}``), else taken as strings. Read on every lookup, so a change in ``os.environ`` applies at once.
    """

    name = "env"

    def __init__(self, prefix: str = "INPROCSERVE_FLAG_") -> None:
        self.prefix = prefix

    def variable(self, key: str) -> str:
        return self.prefix + "".join(c if c.isalnum() else "_" for c in key).upper()

    def _lookup(self, key: str) -> Any:
        raw = os.environ.get(self.variable(key))
        if raw is None:
            return _MISSING
        try:
            return json.loads(raw)
        except ValueError:
            return raw


class FileFlags(_LookupFlags):
    """Flags from a JSON or TOML file (by suffix), re-read when it changes.

    The file's modification time is checked at most every ``check_interval_s``; a file that is missing or
    invalid keeps the last good values and makes lookups raise :class:`FlagError` only if there never were
    any. Nested tables are flattened with dots: ``[fraud.canary] percent = 5`` is ``fraud.canary.percent``.
    """

    name = "file"

    def __init__(self, path: str | Path, *, check_interval_s: float = 1.0) -> None:
        self.path = Path(path)
        self.check_interval_s = check_interval_s
        self._lock = threading.Lock()
        self._values: dict[str, Any] | None = None
        self._stamp: tuple[int, int] | None = None
        self._checked_at = -float("inf")
        self.last_error: str | None = None
        self._reload()

    def _reload(self) -> None:
        try:
            info = self.path.stat()
            stamp = (info.st_mtime_ns, info.st_size)
            if stamp == self._stamp:
                return
            text = self.path.read_text()
            data = tomllib.loads(text) if self.path.suffix == ".toml" else json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("the top level must be a table/object")
        except (OSError, ValueError) as exc:  # keep the last good values
            self.last_error = f"{self.path}: {exc}"
            return
        self._values = _flatten(data)
        self._stamp = stamp
        self.last_error = None

    def _lookup(self, key: str) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= self.check_interval_s:
            with self._lock:
                if now - self._checked_at >= self.check_interval_s:
                    self._checked_at = now
                    self._reload()
        values = self._values
        if values is None:
            raise FlagError(f"flag file unusable: {self.last_error}")
        return values.get(key, _MISSING)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        flat[name] = value
        if isinstance(value, Mapping):
            flat.update(_flatten(value, name + "."))
    return flat


class OpenFeatureFlags:
    """Reads flags through the OpenFeature SDK (``pip install "inprocserve[openfeature]"``), so any
    OpenFeature provider drives rollouts.

    The request context becomes the evaluation context: its targeting key (``targeting_key_field``,
    default ``user_id``) becomes ``targeting_key`` and the other scalar fields become attributes. An
    evaluation that the SDK reports as an error (it returns the default with an error code) raises
    :class:`FlagError`, so it is counted like any other provider failure.
    """

    blocking = True  # remote providers may wait on the network: evaluated with a time budget

    def __init__(self, client: Any = None, *, domain: str | None = None, targeting_key_field: str = "user_id") -> None:
        try:
            from openfeature import api
            from openfeature.evaluation_context import EvaluationContext
        except ImportError as exc:
            raise ImportError(
                'OpenFeatureFlags needs the OpenFeature SDK: pip install "inprocserve[openfeature]"'
            ) from exc
        self._context_type = EvaluationContext
        self._client = client if client is not None else (api.get_client(domain) if domain else api.get_client())
        self.targeting_key_field = targeting_key_field
        self._integer_keys: set[str] = set()  # number flags the provider holds as integers
        try:
            self.name = str(self._client.provider.get_metadata().name)
        except Exception:  # metadata is optional for providers
            self.name = "openfeature"

    def _context(self, context: Mapping[str, Any]) -> Any:
        key = context.get(self.targeting_key_field, context.get("targeting_key"))
        attributes = {
            k: v
            for k, v in context.items()
            if k != self.targeting_key_field and isinstance(v, str | int | float | bool)
        }
        return self._context_type(targeting_key=None if key is None else str(key), attributes=attributes)

    def _details(self, method: str, key: str, default: Any, context: Any) -> Any:
        return getattr(self._client, method)(key, default, context)

    def _value(self, method: str, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        return self._checked(key, self._details(method, key, default, self._context(context)))

    @staticmethod
    def _checked(key: str, details: Any) -> Any:
        code = _error_code(details)
        if code is None or code == "FLAG_NOT_FOUND":  # not found: the SDK hands back the default
            return details.value
        error = FlagTypeError if code == "TYPE_MISMATCH" else FlagError
        raise error(f"OpenFeature could not evaluate {key!r}: {code} {details.error_message}")

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool:
        value = self._value("get_boolean_details", key, default, context)
        if not isinstance(value, bool):  # bool("false") is True: never guess
            raise FlagTypeError(f"flag {key!r} must be a boolean, got {value!r}")
        return value

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        """A number flag, whether the provider holds it as a float or as an integer.

        OpenFeature types numbers strictly (``get_float_details`` on ``10`` is a TYPE_MISMATCH in the SDK's
        own in-memory provider), so an integer is asked for when the float evaluation reports a mismatch.
        """
        evaluation_context = self._context(context)
        if key in self._integer_keys:  # held as an integer last time: one evaluation, not two
            value = self._integer(key, default, evaluation_context)
            if value is not None:
                return value
            self._integer_keys.discard(key)
        details = self._details("get_float_details", key, float(default), evaluation_context)
        if _error_code(details) == "TYPE_MISMATCH":
            value = self._integer(key, default, evaluation_context)
            if value is not None:
                if len(self._integer_keys) < _INTEGER_KEYS_KEPT:
                    self._integer_keys.add(key)
                return value
        value = self._checked(key, details)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FlagTypeError(f"flag {key!r} must be a number, got {value!r}")
        return float(value)

    def _integer(self, key: str, default: float, evaluation_context: Any) -> float | None:
        """The flag evaluated as an integer, or None if that is not what it holds."""
        whole = int(default) if float(default).is_integer() else 0
        details = self._details("get_integer_details", key, whole, evaluation_context)
        if _error_code(details) is not None or isinstance(details.value, bool) or not isinstance(details.value, int):
            return None
        return float(details.value)

    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str:
        value = self._value("get_string_details", key, default, context)
        if not isinstance(value, str):
            raise FlagTypeError(f"flag {key!r} must be a string, got {value!r}")
        return value

    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        return self._value("get_object_details", key, default, context)


def _error_code(details: Any) -> str | None:
    """The OpenFeature error code of an evaluation as a plain string (None when it succeeded)."""
    code = details.error_code
    return None if code is None else str(getattr(code, "value", code))
