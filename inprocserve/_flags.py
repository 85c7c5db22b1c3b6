"""Feature-flag providers: where rollout settings come from, read per request.

A provider answers typed lookups for a flag key and an evaluation context (the request's ``context``). It
returns the default when it does not know the flag and raises when it cannot answer; the rollout layer
turns a raising or slow provider into the stable decision, so a flag outage never fails a request.

Built in: :class:`InMemoryFlags` (set at run time), :class:`EnvFlags` (environment variables),
:class:`FileFlags` (a JSON or TOML file re-read when it changes) and :class:`OpenFeatureFlags` (any
OpenFeature provider: flagd, Unleash, LaunchDarkly ...).
"""

from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import numbers
import os
import queue
import reprlib
import sys
import threading
import time
import tomllib
import weakref
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from . import _fork
from ._brief import CutShort, brief_text
from ._config_checks import MAX_INTERVAL_S, is_number, shown
from ._errors import ConfigurationError, InprocserveError, InvalidInputError
from ._errors import ContextRefusedError as ContextRefusedError  # (re-exported: see below)
from ._racy import Sighting, sighting
from ._thread_values import ThreadValue

__all__ = [
    "EnvFlags",
    "FileFlags",
    "FlagError",
    "FlagProvider",
    "FlagTypeError",
    "InMemoryFlags",
    "OpenFeatureFlags",
    "targeting_key_of",
]

_MISSING = object()
_ABSENT = object()  # remembered: the provider does not have this flag (the caller's default answers)
_INTEGER_KEYS_KEPT = 1024
_ENV_KEYS_KEPT = 1024  # variable names and parsed values kept by EnvFlags
_REMEMBERED_KEPT = 1024  # flags remembered by one OpenFeatureFlags (keys come from rollout configs: few)
_LOG_EVERY_S = 60.0  # a FileFlags problem of one kind is logged at most this often
_IDLE_REFRESHER_EXIT_S = 30.0  # a FileFlags refresher with no look asked for ends; the next request starts one
_EMPTY_GRACE_S = 1.0  # an empty flags file replacing values is taken for one being written at least this long
_CLOSE_WAIT_S = 0.2  # how long FileFlags.close() waits for its refresher (one in a hung mount is left)
MAX_CONTEXT_TEXT_CHARS = 4096
"""Longest text (the targeting key, a string field) of a request's context that OpenFeatureFlags hands to a
provider: one that evaluates remotely sent a megabyte a flag, and flagd's engine took 11 ms on it per request."""
MAX_CONTEXT_FIELDS = 256
"""Most fields of a request's context that OpenFeatureFlags hands to a provider as attributes."""

logger = logging.getLogger(__name__)

# ContextRefusedError, raised below, lives in _errors with every other error; re-exported here, its name in this
# module (where it was defined before) still reaches it: _flag_reader's import, and old pickles' class path.


class FlagError(InprocserveError):
    """A flag provider could not evaluate a flag (raised by providers, absorbed by the rollout layer)."""


class FlagTypeError(FlagError):
    """A flag holds a value of the wrong type for its key (a string where a number belongs, say).

    The rollout layer counts these apart from provider outages: the provider answered, the flag is wrong.
    """


class WaitOffLoop(BaseException):
    """Raised by a flag reader whose decision must wait for a blocking provider while the request's thread
    runs an event loop that must not wait (``Server.apredict``'s routing): the request is routed on a worker
    thread instead. A ``BaseException``, like :class:`MustAsk`: it passes the rollout layer's ``except
    Exception`` untouched."""


class MustAsk(BaseException):
    """Raised by a read, inside a provider's ``remembered_only()``, whose value only the provider can give.

    The flag reader first decides from what a blocking provider remembers, on the request's own thread, and
    hands the decision to a worker thread only when a read raises this. A ``BaseException``: it passes
    through the rollout layer's ``except Exception`` (a shadow flag's failure), as it is no failure.
    """


@runtime_checkable
class FlagProvider(Protocol):
    """What the rollout layer asks of a flag source. Implementations must be thread-safe.

    ``blocking`` says whether an evaluation may wait on I/O; such providers are evaluated on a helper
    thread with a time budget so a hung flag service cannot hang a request.
    """

    @property
    def name(self) -> str: ...

    @property
    def blocking(self) -> bool: ...

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool: ...
    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float: ...
    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str: ...
    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any: ...


def _spelling_hint(value: object, kind: str) -> str:
    """How to write a flag that arrived as text of the right kind: ``True`` in an environment variable (EnvFlags
    reads JSON, whose word is ``true``), ``"true"`` or ``"10"`` quoted in a file or a mapping. Said after the
    refusal, which named the type alone ("must be a boolean, got 'True'")."""
    if not isinstance(value, str) or len(value) > 64:
        return ""
    text = value.strip()
    if kind == "boolean" and text.lower() in ("true", "false"):
        return "; write true or false, unquoted and in lower case (this was read as text)"
    if kind == "number":
        try:
            float(text)
        except ValueError:
            return ""
        return "; write the number unquoted (this was read as text)"
    return ""


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
        if not isinstance(value, bool | np.bool_):  # (numpy's too: a value set from a data frame)
            raise FlagTypeError(
                f"flag {key!r} must be a boolean, got {_value_shown(value)}{_spelling_hint(value, 'boolean')}"
            )
        return bool(value)

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        value = self._lookup(key)
        if value is _MISSING:
            return default
        if isinstance(value, np.bool_) or not is_number(value):  # (numpy's numbers too, as the flag reader's)
            raise FlagTypeError(
                f"flag {key!r} must be a number, got {_value_shown(value)}{_spelling_hint(value, 'number')}"
            )
        return _as_float(key, value)

    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str:
        value = self._lookup(key)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            raise FlagTypeError(f"flag {key!r} must be a string, got {_value_shown(value)}")
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

    Change values with :meth:`set` only: a rollout decides from the mapping of values it was handed, and
    reads it again when ``set`` or ``delete`` replaces it (a list given as a value and changed in place
    afterwards is not seen).
    """

    name = "in-memory"

    def __init__(self, values: Mapping[str, Any] | None = None) -> None:
        self._values: dict[str, Any] = dict(values or {})
        self._lock = threading.Lock()
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # (a thread of the parent's may have held it at the fork)

    def set(self, key: str, value: Any) -> None:
        with self._lock:
            self._values = {**self._values, key: value}  # copy-on-write: readers never lock

    def delete(self, key: str) -> None:
        with self._lock:
            self._values = {k: v for k, v in self._values.items() if k != key}

    def _lookup(self, key: str) -> Any:
        return self._values.get(key, _MISSING)

    def _frozen_values(self) -> Mapping[str, Any] | None:
        """Every value, the same for every context, in a mapping that ``set`` and ``delete`` replace whole
        (never change): a rollout decides from it for as long as the same mapping comes back. None once
        ``blocking`` is set on the instance: its reads then keep to the flag reader's budget."""
        return None if self.blocking else self._values


class EnvFlags(_LookupFlags):
    """Flags from environment variables: ``fraud.canary.percent`` is read from
    ``INPROCSERVE_FLAG_FRAUD_CANARY_PERCENT``. Values are parsed as JSON (``10``, ``true``, ``[3]``,
    ``{"a": 1}``), else taken as strings. Read on every lookup, so a change in ``os.environ`` applies at once.

    A rollout reads five or more flags per request: the variable's name of each key, and the value parsed
    from each text, are kept (a variable whose text changes is parsed again), so a read costs one
    ``os.environ`` lookup. A list or a table is parsed for every read: each read gets its own. A rollout
    decides from its flags read once for as long as the text of every variable read so far stays the same
    (one ``os.environ`` lookup per variable and request: see ``_frozen_values``).
    """

    name = "env"

    def __init__(self, prefix: str = "INPROCSERVE_FLAG_") -> None:
        self._prefix = prefix
        self._naming = threading.Lock()  # held to add a kept variable's name
        self._variables: dict[str, str] = {}  # key -> its variable's name
        # those names, in the order first read: a new list for every change, never changed (a snapshot of
        # their texts is known by it: an empty tuple would be the same object after a new prefix)
        self._kept: list[str] = []
        self._unkept = False  # a key's variable was read but not kept (past _ENV_KEYS_KEPT keys)
        self._parsed: dict[str, tuple[str, Any]] = {}  # variable -> (the text last read, its value)
        self._snapshot: _EnvTexts | None = None
        # the texts this thread makes a plan from (_EnvTexts.reads); not a threading.local: see _thread_values
        self._planning: ThreadValue[_EnvTexts | None] = ThreadValue(None)
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._naming = threading.Lock()  # (a thread of the parent's may have held it at the fork)

    @property
    def prefix(self) -> str:
        """What every variable's name starts with."""
        return self._prefix

    @prefix.setter
    def prefix(self, prefix: str) -> None:
        with self._naming:
            self._prefix = prefix
            self._variables = {}  # (the names made with the old one)
            self._kept = []
            self._unkept = False

    def variable(self, key: str) -> str:
        return self.prefix + "".join(c if c.isalnum() else "_" for c in key).upper()

    def _variable_of(self, key: str) -> str:
        name = self._variables.get(key)
        if name is not None:
            return name
        with self._naming:  # (a name added with a prefix replaced meanwhile would be read for good)
            name = self._variables.get(key)
            if name is None:
                name = self.variable(key)
                if len(self._variables) < _ENV_KEYS_KEPT:  # (keys come from rollout configurations: few)
                    self._variables[key] = name
                    self._kept = [*self._kept, name]
                else:
                    self._unkept = True
        return name

    def _lookup(self, key: str) -> Any:
        name = self._variable_of(key)
        texts = self._planning.get()
        raw = os.environ.get(name) if texts is None else texts.text(name)
        if raw is None:
            return _MISSING
        parsed = self._parsed.get(name)
        if parsed is not None and parsed[0] == raw:
            return parsed[1]
        try:
            value = json.loads(raw)
        except (ValueError, RecursionError):  # (not JSON, or nested too deeply for it: the text itself)
            value = raw
        if isinstance(value, list | dict):  # (mutable: a caller may change its copy)
            return value
        if len(self._parsed) < _ENV_KEYS_KEPT or name in self._parsed:
            self._parsed[name] = (raw, value)  # (one tuple, replaced whole: a racing reader sees either)
        return value

    def _frozen_values(self) -> _EnvTexts | None:
        """The text of every variable read so far, the same for every context: the same object comes back
        for as long as none of them changes (nor the names read), and a rollout decides from its flags read
        once per object. Each variable is looked up now, so a change in ``os.environ`` applies at once.
        None once ``blocking`` is set on the instance, or when more keys were read than are kept."""
        if self.blocking or self._unkept:
            return None
        names = self._kept
        texts = tuple(map(os.environ.get, names))
        last = self._snapshot
        if last is not None and last.names is names and last.texts == texts:
            return last
        self._snapshot = snapshot = _EnvTexts(self, names, texts)  # (a racing caller may make its own: alike)
        return snapshot


class _EnvTexts:
    """The texts of :class:`EnvFlags`' variables at one moment (see ``EnvFlags._frozen_values``).

    A plan made for it must be made from these texts (:meth:`reads`), not from ``os.environ`` as it is
    while the plan is made: a variable changed meanwhile, and changed back later, would give a snapshot
    equal to this one, and the plan would keep the value it had in between."""

    __slots__ = ("_by_name", "_flags", "names", "texts")

    def __init__(self, flags: EnvFlags, names: list[str], texts: tuple[str | None, ...]) -> None:
        self._flags = flags
        self.names = names
        self.texts = texts
        self._by_name = dict(zip(names, texts, strict=True))

    def text(self, name: str) -> str | None:
        """The variable's text in this snapshot; one it does not hold is read now (it is kept from now on,
        so the next snapshot holds it, and differs from this one)."""
        return self._by_name[name] if name in self._by_name else os.environ.get(name)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.text(self._flags._variable_of(key)) is not None

    @contextmanager
    def reads(self) -> Iterator[None]:
        """Within this (on this thread), the flags' reads answer from this snapshot."""
        planning = self._flags._planning
        planning.set(self)
        try:
            yield
        finally:
            planning.set(None)


class FileFlags(_LookupFlags):
    """Flags from a JSON or TOML file (by suffix, in any case), re-read when it changes.

    Requests never touch the file: they answer from the values last read, and the first request after
    ``check_interval_s`` asks a background thread (one per instance, started lazily, a daemon; see
    :meth:`close`) to look at it, so a file on a hung network mount cannot hold a request. A change is
    thus seen one check after it is made: by the first request at least ``check_interval_s`` after it, plus
    the time the read takes. The file is read again when any of its inode, device, size, modification or
    change time differ from the last read, and also, whatever they say, until a read at least ``RACY_S`` (2 s)
    after the first that saw them (git's "racy" rule: an edit within the file system's timestamp
    granularity keeps the same time; timed on this process's monotonic clock, not by comparing the
    modification time with this host's clock, which a file server's clock need not agree with). A file
    that is missing or invalid keeps the last good values, is logged (once a minute per kind of problem)
    and shown in :attr:`last_error` (``status()``'s ``source_error``); lookups raise :class:`FlagError`
    only if there never were any values. The file is UTF-8, with or without a byte order mark. Nested
    tables are flattened with dots: ``[fraud.canary] percent = 5`` is ``fraud.canary.percent``.

    An empty file (or one of white space only, JSON or TOML) means no flags. One that replaces values is
    first taken for a file being written (what a look between an editor's truncate and its write sees):
    the values keep answering, and :attr:`last_error` says so, until a look at least ``_EMPTY_GRACE_S``
    after the first that found it empty still finds it so (the thread makes that look itself); then it
    means no flags.

    Thread-safe. The first read is made by the constructor, on the caller's thread.

    Raises:
        ConfigurationError: ``check_interval_s`` is not a number of seconds from 0 to a day.
    """

    name = "file"

    def __init__(self, path: str | Path, *, check_interval_s: float = 1.0) -> None:
        if not (is_number(check_interval_s) and 0 <= check_interval_s <= MAX_INTERVAL_S):  # (NaN fails too)
            raise ConfigurationError(
                f"check_interval_s must be a number of seconds from 0 to {MAX_INTERVAL_S:.0f} (a day), "
                f"got {shown(check_interval_s)}"
            )
        self.path = Path(path)
        self.check_interval_s = float(check_interval_s)
        # the values last read, replaced whole, never changed: a rollout's plan is kept by it
        self._snapshot: _FileValues | None = None
        # the values this thread makes a plan from (_FileValues.reads); not a threading.local: see _thread_values
        self._planning: ThreadValue[_FileValues | None] = ThreadValue(None)
        self._seen: _FileSeen | None = None  # what the last good read saw (only the reading thread sets it)
        self._empty_since: float | None = None  # when looks began to find the file empty, values answering
        self.last_error: str | None = None
        """Why the file's last look failed (None after a good one), or that the instance was closed: the
        values before it still answer."""
        self.errors = 0  # failed looks at the file (only grows)
        self._logged: dict[str, float] = {}  # kind of problem -> when last logged
        self._checked_at = -math.inf
        self._looks = _Looks()
        # (the refresher holds the instance weakly: one dropped without close() is collected, and this ends it)
        self._unclosed = next(_UNCLOSED_KEYS)
        _watch_unclosed(self)
        self._refresh()
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        self._looks.reset()  # (the parent's thread did not come through the fork; its lock may be held)
        if self._unclosed in _UNCLOSED:  # (its end rang the parent's doorbell: ring the child's)
            _watch_unclosed(self)
        # a look the parent asked for, or its recheck of an empty file, was the parent's thread's to make: the
        # child's first request looks at once (a file found empty keeps its first sighting)
        self._checked_at = -math.inf

    def close(self) -> None:
        """Stop the background thread: the values last read keep answering, never refreshed again, and
        :attr:`last_error` (``status()``'s ``source_error``) says the instance is closed, for any server still
        reading it. A read stuck in a hung mount is not waited for (a daemon thread, it ends when the read
        returns). Idempotent. An instance dropped without it is collected and its thread ends."""
        _UNCLOSED.pop(self._unclosed, None)  # (its end rings no doorbell now)
        refresher = self._looks.close()
        with self._looks.lock:
            self.last_error = (
                f"closed: {self.path} is no longer looked at (FileFlags.close()); the values last read answer"
            )
        if refresher is not None and refresher is not threading.current_thread():
            refresher.join(timeout=_CLOSE_WAIT_S)

    def __enter__(self) -> FileFlags:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _lookup(self, key: str) -> Any:
        snapshot = self._planning.get()  # (a plan's: see _FileValues)
        if snapshot is None:
            snapshot = self._checked_values()
        if snapshot is None:
            raise FlagError(f"flag file unusable: {self.last_error}")
        return snapshot.values.get(key, _MISSING)

    def _frozen_values(self) -> _FileValues | None:
        """Every value, the same for every context, in an object that a reload replaces whole (never
        changes; a reread of the same bytes keeps it), after asking for a look at the file if
        ``check_interval_s`` has passed; None before the file was ever read, or once ``blocking`` is set on
        the instance. A plan made for it reads from it (:meth:`_FileValues.reads`)."""
        if self.blocking:
            return None
        return self._checked_values()

    def _checked_values(self) -> _FileValues | None:
        """The values last read; asks the background thread to look at the file when the interval passed."""
        now = time.monotonic()
        if now - self._checked_at >= self.check_interval_s:
            self._ask_for_a_look(now)
        return self._snapshot

    def _ask_for_a_look(self, now: float) -> None:
        """Have the refresher look at the file (at most one look runs, and one more waits)."""
        looks = self._looks
        with looks.lock:
            if looks.closed or now - self._checked_at < self.check_interval_s:
                return
            self._checked_at = now
            refresher = looks.thread
            if refresher is not None and not refresher.is_alive():  # (killed past its own clean-up: replaced)
                looks.thread = refresher = None
                looks.due = False
            if looks.due:  # (asked already: a look in a hung mount never ends, and nothing piles up)
                return
            looks.due = True
            if refresher is not None:
                looks.doorbell.put(None)
                return
            refresher = threading.Thread(
                target=_refreshing, args=(weakref.ref(self), looks), name="inprocserve-flag-file", daemon=True
            )
            try:
                refresher.start()
            except RuntimeError:  # (no thread to be had now: a later request asks again)
                looks.due = False
                return
            looks.thread = refresher

    def _refresh(self) -> None:
        """Look at the file and take its values if it changed; any failure keeps the last good values."""
        empty_since, self._empty_since = self._empty_since, None  # (kept by a look that finds it empty again)
        try:
            self._reload(empty_since)
        except Exception as exc:  # (a file that cannot be read or parsed: the thread lives on)
            self._failed(exc)

    def _reload(self, empty_since: float | None) -> None:
        seen = self._seen
        info = self.path.stat()
        now = time.monotonic()
        signature = (info.st_ino, info.st_dev, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        if seen is not None and seen.sight.signature == signature and seen.sight.settled:
            self._usable()
            return
        # An edit that kept this signature was made within one timestamp tick of the edit that set it: bytes
        # read RACY_S after it was first seen are the last it can hide (see _racy; timed on the monotonic
        # clock: compared with this host's, a file server 10 s behind hid an edit in the second of the one read)
        sight = sighting(signature, None if seen is None else seen.sight, now=now)
        raw = self.path.read_bytes()
        if seen is not None and raw == seen.raw and self._snapshot is not None:  # (the same values: kept whole)
            self._seen = _FileSeen(sight, raw)
            self._usable()
            return
        text = raw.decode("utf-8-sig")  # (UTF-8, and a byte order mark some editors write is no key)
        if text.strip():
            data = tomllib.loads(text) if self.path.suffix.lower() == ".toml" else json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("the top level must be a table/object")
        else:  # (no flags; or what a look between an editor's truncate and its write sees)
            self._wait_if_being_written(empty_since)
            data = {}
        self._snapshot = _FileValues(_flatten(data), self._planning)
        self._seen = _FileSeen(sight, raw)
        self._usable()

    def _wait_if_being_written(self, empty_since: float | None) -> None:
        """Raise while an empty file that replaces values may be one being written: until a look at least
        ``_EMPTY_GRACE_S`` after the first that found it empty (which the refresher makes) finds it empty."""
        snapshot = self._snapshot
        if snapshot is None or not snapshot.values:  # (no values to keep: no flags at once)
            return
        now = time.monotonic()
        if empty_since is not None and now - empty_since >= _EMPTY_GRACE_S:
            return
        self._empty_since = since = now if empty_since is None else empty_since
        with self._looks.lock:
            self._looks.recheck_at = since + _EMPTY_GRACE_S
        raise _BeingWritten(
            f"the file is empty: taken for one being written, it means no flags if still empty "
            f"{_EMPTY_GRACE_S:g} s after it was first seen so",
            first=empty_since is None,
        )

    def _usable(self) -> None:
        with self._looks.lock:
            if self.last_error is None or self._looks.closed:  # (closed: it says so for good)
                return
            self.last_error = None
        logger.info("flags file %s is usable again", self.path)

    def _failed(self, exc: Exception) -> None:
        """Keep why (``last_error``), count it, and log it at most once a minute per kind of problem."""
        kind = "unreadable" if isinstance(exc, OSError) else "invalid"
        with self._looks.lock:
            if self._looks.closed:  # (a look that ended after close(): it says so for good)
                return
            self.last_error = error = f"{self.path}: {_said(exc)}"
        if not isinstance(exc, _BeingWritten) or exc.first:  # (an empty file is counted once while it waits)
            self.errors += 1
        now = time.monotonic()
        if now - self._logged.get(kind, -math.inf) < _LOG_EVERY_S:
            return
        self._logged[kind] = now
        logger.warning("flags file %s; the last good values answer (%d failed looks so far)", error, self.errors)


class _BeingWritten(ValueError):
    """A look found the file empty where it had values: maybe a file being written (``first``: the first
    look that found it so)."""

    def __init__(self, message: str, *, first: bool) -> None:
        super().__init__(message)
        self.first = first


class _Looks:
    """The state of a :class:`FileFlags`' refresher, apart from the instance: its thread holds the instance
    weakly, and only during a look, so an instance dropped without ``close()`` is collected (its end rings
    the doorbell, and the thread, finding it gone, ends at once: see :func:`_watch_unclosed`)."""

    __slots__ = ("closed", "doorbell", "due", "lock", "recheck_at", "thread")

    def __init__(self) -> None:
        self.closed = False
        self.reset()

    def reset(self) -> None:
        self.lock = threading.Lock()  # guards this state (and FileFlags.last_error): never held across I/O
        # Rung (a put) after the state changed, to wake the thread, which waits on it out of the lock; a ring
        # before its wait is kept for it, and spare rings only make it check the state again.
        self.doorbell: queue.SimpleQueue[None] = queue.SimpleQueue()
        self.due = False  # a look at the file was asked for and has not begun
        self.recheck_at: float | None = None  # when the thread looks again by itself (an empty file)
        self.thread: threading.Thread | None = None

    def close(self) -> threading.Thread | None:
        """Have the thread end; returns it (None if none runs)."""
        with self.lock:
            self.closed = True
            self.doorbell.put(None)
            return self.thread


_UNCLOSED: dict[int, weakref.ref[FileFlags]] = {}
"""Every open :class:`FileFlags`' weak reference, whose callback rings its refresher's doorbell when the
instance is collected (held here: a weak reference collected with its object calls nothing)."""
_UNCLOSED_KEYS = itertools.count()


def _watch_unclosed(flags: FileFlags) -> None:
    """Ring the refresher's doorbell when ``flags`` is collected without ``close()``. The callback is a
    partial of ``SimpleQueue.put``, C alone (the dead reference is taken for ``put``'s ``block``, which it
    ignores): on Python 3.11 a collection inside ``sys._current_frames()`` (a sampling profiler's call) that
    runs Python code may hand the GIL to a thread that then starts or ends and waits, with the GIL, for the
    runtime's lock that collection holds: the process deadlocked (CPython gh-106883; a ``weakref.finalize``
    runs Python code). The references of instances gone are swept here, each time one is made."""
    for key, ref in list(_UNCLOSED.items()):
        if ref() is None:
            _UNCLOSED.pop(key, None)
    _UNCLOSED[flags._unclosed] = weakref.ref(flags, functools.partial(flags._looks.doorbell.put, None))


def _refreshing(flags_of: weakref.ref[FileFlags], looks: _Looks) -> None:
    """A :class:`FileFlags` refresher's loop: one look per request for one (and the recheck of an empty
    file); ends when closed, idle for ``_IDLE_REFRESHER_EXIT_S``, or its instance is gone. Whatever ends it,
    the state says it runs no more, so the next request that asks for a look starts another."""
    me = threading.current_thread()
    try:
        idle_until = time.monotonic() + _IDLE_REFRESHER_EXIT_S
        while True:
            with looks.lock:
                wait_s = None
                if not looks.due and not looks.closed:
                    now, recheck_at = time.monotonic(), looks.recheck_at
                    if recheck_at is not None and now >= recheck_at:
                        looks.recheck_at = None
                        looks.due = True
                    else:
                        until = idle_until if recheck_at is None else min(idle_until, recheck_at)
                        if now < until:
                            wait_s = until - now
                if wait_s is None:
                    if looks.closed or not looks.due:
                        looks.thread = None  # (in the same hold as the check: a request asking now starts one)
                        return
                    looks.due = False
            if wait_s is not None:
                try:
                    looks.doorbell.get(timeout=wait_s)
                except queue.Empty:
                    pass
                if flags_of() is None:  # (collected without close(): its end rang)
                    return
                continue
            flags = flags_of()
            if flags is None:
                return
            try:
                flags._refresh()
            except Exception:  # (a logging filter or handler that raised: what went wrong is kept already)
                pass
            del flags  # (held weakly while it waits)
            idle_until = time.monotonic() + _IDLE_REFRESHER_EXIT_S
    finally:
        with looks.lock:
            if looks.thread is me:  # (ended by what escaped a look: a request starts another)
                looks.thread = None
                looks.due = False


class _FileValues:
    """The values of one read of a :class:`FileFlags` file (see ``FileFlags._frozen_values``).

    A plan made for them must be made from them (:meth:`reads`), not from the values a look swaps in while
    the plan is made: the plan is kept by this object, and would pair it with the newer values."""

    __slots__ = ("_planning", "values")

    def __init__(self, values: dict[str, Any], planning: ThreadValue[_FileValues | None]) -> None:
        self.values = values
        self._planning = planning

    def __contains__(self, key: object) -> bool:
        return key in self.values

    @contextmanager
    def reads(self) -> Iterator[None]:
        """Within this (on this thread), the flags' reads answer from these values."""
        self._planning.set(self)
        try:
            yield
        finally:
            self._planning.set(None)


class _FileSeen:
    """What a good read of a :class:`FileFlags` file saw: the file's signature, when (monotonic) a read
    first saw it and whether the read is settled (see :mod:`._racy`: it can hide no later edit), and the bytes
    read."""

    __slots__ = ("raw", "sight")

    def __init__(self, sight: Sighting, raw: bytes) -> None:
        self.sight = sight
        self.raw = raw


def _described(value: object) -> str:
    """``repr(value)`` for a message, whatever the value does: a hand-written provider's may raise in it. An
    exception is its class and :func:`_said` text: a provider that failed with megabytes of text logged them."""
    if isinstance(value, BaseException):
        return f"{type(value).__name__}: {_said(value)}"
    try:
        return repr(value)
    except Exception:  # (an int of 5000 digits raises ValueError)
        return shown(value) if isinstance(value, int) else f"{type(value).__name__} (which cannot be shown)"


def _make_value_shown() -> reprlib.Repr:
    shown = CutShort()
    shown.maxstring = shown.maxother = shown.maxlong = 80
    shown.maxlist = shown.maxtuple = shown.maxdict = shown.maxset = shown.maxfrozenset = shown.maxdeque = 8
    shown.maxlevel = 3
    return shown


_VALUE_SHOWN = _make_value_shown()


def _value_shown(value: object) -> str:
    """A flag's value for a message, cut short at a cost that does not grow with it: a value of megabytes
    (a list pasted into the wrong flag) is refused on every request, and its full ``repr`` made each of
    them slower by milliseconds and carried megabytes in ``Prediction.reason`` and ``status()``."""
    try:
        return _VALUE_SHOWN.repr(value)
    except Exception:  # (an int of 5000 digits raises ValueError; a hand-written provider's value, anything)
        return shown(value) if isinstance(value, int) else f"{type(value).__name__} (which cannot be shown)"


def _said(exc: BaseException) -> str:
    """``str(exc)`` for a message, whatever the exception does: its ``__str__`` may raise too. Cut short
    (:data:`_SAID_CHARACTERS`): a provider's own error text may be megabytes, and it was kept in ``status()``,
    logged, and given as every request's ``Prediction.reason`` while the flag failed."""
    try:
        return brief_text(str(exc), _SAID_CHARACTERS)
    except Exception:
        return f"{type(exc).__name__} (which cannot be shown)"


_SAID_CHARACTERS = 1000


_PLAIN_ATTRIBUTES = (str, int, float, bool)


def _text_problem(text: str) -> str | None:
    """Why a text of a request's context must not reach a flag provider (None: it may): longer than
    :data:`MAX_CONTEXT_TEXT_CHARS`, or no UTF-8 text (a lone surrogate: bytes decoded with ``surrogateescape``),
    which a provider that sends the context over the wire fails to encode, counted as the provider failing.
    Control characters are text, and pass: a provider's rules compare them as any other."""
    if len(text) > MAX_CONTEXT_TEXT_CHARS:
        return (
            f"is {len(text):,} characters long; send at most {MAX_CONTEXT_TEXT_CHARS:,} (it goes to the flag provider "
            "with every evaluation)"
        )
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return f"is no UTF-8 text (it holds a lone surrogate: {_value_shown(text)}); send text, not bytes decoded"
    return None


def _attribute(value: str | numbers.Real | np.bool_) -> str | int | float | bool:
    """A scalar of a request's context as the plain value an evaluation context holds: numpy's (a data frame's
    row) too. flagd's rules raised TypeError on ``np.str_`` (the request answered stable, counted as the
    provider failing), and ``np.int64``, ``np.float32`` and ``np.bool_`` were left out, so no rule saw them."""
    if type(value) in _PLAIN_ATTRIBUTES:  # (the usual case, at once)
        return value  # type: ignore[return-value]
    if isinstance(value, bool | np.bool_):
        return bool(value)
    if isinstance(value, str):
        return str.__str__(value)  # (a plain str, whatever the subclass)
    if isinstance(value, numbers.Integral):
        return int(value)
    return float(value)


def _as_float(key: str, value: Any) -> float:
    """A number flag's value as a float; an int too large for one is the flag's problem, not the provider's."""
    try:
        return float(value)
    except OverflowError:
        raise FlagTypeError(f"flag {key!r} must be a number a float can hold, got {shown(value)}") from None


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
    default ``user_id``) becomes ``targeting_key`` and the other scalar fields (numpy's as plain values) become
    attributes. An evaluation that the SDK reports as an error (it returns the default with an error code) raises
    :class:`FlagError`, so it is counted like any other provider failure.

    **Static flags are remembered.** A rollout reads five or more flags per request, and the SDK costs
    tens of microseconds per evaluation (its hooks, contexts and the provider's engine). A flag that the
    provider resolved as ``STATIC`` (no targeting: the same value for every context), or that it does not
    have (``FLAG_NOT_FOUND``: the caller's default), is remembered for ``reuse_static_s`` seconds, and
    forgotten as soon as the SDK's event handlers hear that it changed (OpenFeature's
    ``PROVIDER_CONFIGURATION_CHANGED``, which flagd sends naming the flags that changed) or that the
    provider is ready again (``PROVIDER_READY``: another provider, or one reconnected). A flag with
    targeting is evaluated for every request, as before. Remembered reads run no OpenFeature hooks.
    ``reuse_static_s=0`` evaluates every read. Per process: each worker of a fleet remembers its own.
    While every flag a rollout reads is remembered, the rollout decides from a plan made from them once,
    with no read per request (made again when a value is remembered, dropped or forgotten, or the first
    remembered value expires).

    **Providers that evaluate in this process are read on the request's thread** (``blocking`` below):
    a hand-off to the flag reader's workers costs a request more than such a provider's evaluation.

    Args:
        client: An OpenFeature client (the global API's, or ``domain``'s, if omitted).
        domain: The OpenFeature domain whose client to use.
        targeting_key_field: The request-context field that becomes the targeting key.
        blocking: Whether an evaluation may wait on I/O (a remote provider): the server's flag reader then
            evaluates it on a worker thread within its time budget, unless every flag of the decision is
            remembered. ``False``: reads run on the request's thread, with no hand-off. ``None`` (the
            default) judges the client's provider, again whenever it is replaced: ``False`` for the providers
            known to evaluate in this process (flagd's ``IN_PROCESS`` and ``FILE`` resolvers, OpenFeature's
            ``InMemoryProvider`` and ``NoOpProvider``, not subclasses of them), ``True`` for any other, and
            for a flagd provider set up before this process was forked (its threads are gone, and a lock
            one of them held stays held). Pass ``True`` if hooks you added to the client or the API may
            wait on I/O: the budget is only enforced on the flag reader's workers.
        reuse_static_s: How long a static or absent flag is remembered (0: never).
        clock: The monotonic clock that times remembered flags.

    Raises:
        TypeError: ``client`` is a string (a domain: pass ``domain=``) or an OpenFeature provider (set it with
            ``openfeature.api.set_provider``, then pass its client, or none).
    """

    def __init__(
        self,
        client: Any = None,
        *,
        domain: str | None = None,
        targeting_key_field: str = "user_id",
        blocking: bool | None = None,
        reuse_static_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            from openfeature import api
            from openfeature.evaluation_context import EvaluationContext
            from openfeature.event import ProviderEvent
        except ImportError as exc:
            raise ImportError(
                'OpenFeatureFlags needs the OpenFeature SDK: pip install "inprocserve[openfeature]"'
            ) from exc
        # (either was taken, and every flag read of every request failed: the rollout answered stable for good)
        if isinstance(client, str):
            raise TypeError(
                f"client must be an OpenFeature client, got the string {_value_shown(client)}: "
                f"pass domain={_value_shown(client)} for that domain's client"
            )
        if hasattr(client, "resolve_boolean_details") and not hasattr(client, "get_boolean_details"):
            raise TypeError(
                f"client must be an OpenFeature client, got the provider {type(client).__name__}: set it with "
                "openfeature.api.set_provider(provider) (or set_provider_and_wait), then pass OpenFeatureFlags() "
                "(or domain=...: the domain it was set for)"
            )
        if blocking is not None and not isinstance(blocking, bool):
            raise ConfigurationError(f"blocking must be True, False or None (judged by the provider), got {blocking!r}")
        if isinstance(reuse_static_s, bool) or not isinstance(reuse_static_s, int | float) or not reuse_static_s >= 0:
            raise ConfigurationError(f"reuse_static_s must be a number of seconds >= 0, got {reuse_static_s!r}")
        self._context_type = EvaluationContext
        self._client = client if client is not None else (api.get_client(domain) if domain else api.get_client())
        self.targeting_key_field = targeting_key_field
        self._blocking = blocking
        # (the client's provider when last looked at, whether it may block, its name): judged once per provider
        self._judged: tuple[Any, bool, str] = (_MISSING, True, "openfeature")
        self.reuse_static_s = float(reuse_static_s)
        self._clock = clock
        self._integer_keys: set[str] = set()  # number flags the provider holds as integers
        # (kind, key) -> (remembered until, the value or _ABSENT); replaced whole when forgotten
        self._remembered: dict[tuple[str, str], tuple[float, Any]] = {}
        # Counts forgettings: an evaluation that began before one (a remote reply that crossed a change of
        # flags) remembers nothing.
        self._generation = 0
        self._changes = 0  # counts every change of what is remembered (a value stored, dropped or forgotten)
        self._now: _RememberedNow | None = None  # what is remembered, as a rollout's plan was last made from
        self._changing = threading.Lock()  # a forget, and the check-and-store of a remembered value
        self._ready_heard = False  # the SDK reports a ready provider to a handler added: that first one is no news
        # (per thread; not threading.locals: see _thread_values) whether reads answer from memory or raise
        # MustAsk, and the generation the evaluation under way began in
        self._only: ThreadValue[bool] = ThreadValue(default=False)
        self._evaluated_in: ThreadValue[int | None] = ThreadValue(None)
        self._handlers: list[tuple[Any, Any]] = []
        self._provider = _provider_of(self._client)  # the provider whose flags are remembered
        _fork.register(self)
        add_handler = getattr(self._client, "add_handler", None)  # (a client of an SDK without events: TTL only)
        if self.reuse_static_s > 0 and add_handler is not None:
            me = weakref.ref(self)  # (the SDK keeps its handlers: they must not keep this)
            for event, everything in (
                (ProviderEvent.PROVIDER_CONFIGURATION_CHANGED, False),  # the flags it names (all if none)
                (ProviderEvent.PROVIDER_READY, True),  # a provider ready (again): every flag
            ):
                handler = _forgetting(me, everything=everything)
                add_handler(event, handler)
                self._handlers.append((event, handler))

    def _after_fork_in_child(self) -> None:
        # What the parent remembered is forgotten: the SDK's event threads did not come through the fork, so
        # this process may hear of a new provider, or of new flags, late. A provider that came through the
        # fork is judged again (see _InheritedProviders).
        self._changing = threading.Lock()  # (the SDK's handler threads may have held it)
        self._remembered = {}
        self._generation += 1
        self._changes += 1
        self._now = None
        self._judged = (_MISSING, True, "openfeature")

    def _judge(self) -> tuple[Any, bool, str]:
        """The client's provider now, whether it may wait on I/O, and its name: judged again only when the
        provider was replaced (or this process forked)."""
        provider = _provider_of(self._client)
        judged = self._judged
        if judged[0] is not provider:
            try:
                name = str(provider.get_metadata().name)
            except Exception:  # metadata is optional for providers
                name = "openfeature"
            judged = self._judged = (provider, not _evaluates_in_process(provider), name)
        return judged

    @property
    def name(self) -> str:
        """The name of the client's provider now (its metadata's; ``openfeature`` if it gives none), which
        status, metrics and spans report."""
        return self._judge()[2]

    @property
    def blocking(self) -> bool:
        """Whether the client's provider may wait on I/O (see ``blocking`` above); read per decision."""
        if self._blocking is not None:
            return self._blocking
        return self._judge()[1]

    @blocking.setter
    def blocking(self, value: bool | None) -> None:
        if value is not None and not isinstance(value, bool):
            raise ConfigurationError(
                f"blocking must be True, False or None (judged by the provider), got {_described(value)}"
            )
        self._blocking = value

    def close(self) -> None:
        """Stop listening to the provider's events (an instance dropped without it listens no more either,
        but leaves a small handler in the SDK's table). Reads still work, evaluating what is not remembered
        until it expires. Idempotent."""
        handlers, self._handlers = self._handlers, []
        for event, handler in handlers:
            self._client.remove_handler(event, handler)

    def _forget(self, changed: list[str] | None = None) -> None:
        """Forget the flags named ``changed`` (every remembered flag if None; none if empty)."""
        if changed is not None and not changed:
            return
        with self._changing:  # (the SDK runs handlers on a pool of threads, beside the requests' stores)
            self._generation += 1
            self._changes += 1
            if changed is None:
                self._remembered = {}
            else:
                names = set(changed)
                self._remembered = {entry: kept for entry, kept in self._remembered.items() if entry[1] not in names}

    def remembered_only(self) -> _RememberedOnly:
        """Within this (on this thread), a read that must evaluate raises :class:`MustAsk` instead."""
        return _RememberedOnly(self._only)

    def _recall(self, kind: str, key: str, default: Any) -> Any:
        """The remembered value of a flag (``default`` for one the provider does not have), or ``_MISSING``
        (then the generation it is evaluated in is this thread's ``generation``)."""
        entry = self._remembered.get((kind, key))
        if entry is not None and entry[0] > self._clock():
            return default if entry[1] is _ABSENT else entry[1]
        if self._only.get():
            raise MustAsk
        self._evaluated_in.set(self._generation)
        return _MISSING

    def _remember(self, kind: str, key: str, value: Any, details: Any) -> Any:
        """Remember ``value`` if the provider resolved it the same for every context, and no change of
        flags was reported while it was evaluated; returns it."""
        if self.reuse_static_s <= 0:
            return value
        if _error_code(details) == "FLAG_NOT_FOUND":
            kept: Any = _ABSENT
            static, cached = True, False
        else:
            reason = details.reason
            reason = None if reason is None else str(getattr(reason, "value", reason))
            kept = value
            # flagd's remote resolver answers CACHED for a static flag it keeps: still static (checked below)
            static = reason == "STATIC"
            cached = reason == "CACHED"
        until = self._clock() + self.reuse_static_s
        with self._changing:
            if self._evaluated_in.get() != self._generation:  # flags changed while it was evaluated
                return value
            remembered = self._remembered
            if not static and not (cached and (kind, key) in remembered):
                if remembered.pop((kind, key), None) is not None:
                    self._changes += 1
                return value
            if len(remembered) >= _REMEMBERED_KEPT and (kind, key) not in remembered:
                remembered = self._remembered = {}
            remembered[(kind, key)] = (until, kept)
            self._changes += 1
        return value

    def _frozen_values(self) -> _RememberedNow | None:
        """What is remembered now, for a rollout to decide from with no read per request (its plan reads
        within :meth:`remembered_only`): the same object until a value is remembered, dropped or forgotten,
        or the first of those it holds expires. Expired values are left out (the dict keeps them: a CACHED
        answer is remembered again only for a key still in it), so a flag no longer read does not make a new
        one for every request."""
        now = self._now
        clock = self._clock()
        if now is not None and now.changes == self._changes and clock < now.until:
            return now
        with self._changing:  # (a consistent copy: requests store into the dict meanwhile)
            changes = self._changes
            entries = {entry: kept for entry, kept in self._remembered.items() if kept[0] > clock}
        until = min((kept[0] for kept in entries.values()), default=math.inf)
        now = self._now = _RememberedNow(entries, changes, until)
        return now

    def _context(self, context: Mapping[str, Any]) -> Any:
        """The evaluation context of a request's ``context``.

        Raises:
            ContextRefusedError: a key of ``context`` is not a string (OpenFeature names attributes by strings:
                a provider that sends its context over the wire raised on an int key, counted as failing), or
                a scalar of it cannot be read as the plain value it holds (a number type whose ``float()``
                raises): the request's own mistake, as a targeting key that cannot be made text is; or the
                context has more than ``MAX_CONTEXT_FIELDS`` fields handed over (text, numbers, booleans; the
                targeting key and fields of other types are none), or its targeting key or a string field is
                longer than ``MAX_CONTEXT_TEXT_CHARS`` or no UTF-8 text (see ``_text_problem``).
        """
        field = self.targeting_key_field
        fields = []
        try:
            for k, v in context.items():
                if type(k) is not str:
                    if not isinstance(k, str):
                        raise ContextRefusedError(
                            f"the context key {_value_shown(k)} is a {type(k).__name__}, not a string; send string keys"
                        )
                    k = str.__str__(k)  # (a plain str: a subclass's == may do anything)
                # (the targeting key is the rollout's bucket key: flag rules and buckets agree on who the user is)
                if k != field and isinstance(v, str | numbers.Real | np.bool_):
                    fields.append((k, v))
                    # (counted as handed over: a list, a dict or None beside them is no attribute, and counts not)
                    if len(fields) > MAX_CONTEXT_FIELDS:
                        raise ContextRefusedError(
                            f"the context has more than {MAX_CONTEXT_FIELDS} fields of text, numbers or booleans; "
                            f"send at most {MAX_CONTEXT_FIELDS} (each goes to the flag provider as an attribute of "
                            "the evaluation context)"
                        )
        except InvalidInputError:
            raise
        except Exception as exc:  # (anything a caller's mapping raises as it is read)
            raise ContextRefusedError(
                f"the context cannot be read: {type(exc).__name__}; send a dict with string keys"
            ) from None
        attributes = {}
        for k, v in fields:
            try:
                value = attributes[k] = _attribute(v)
            except Exception as exc:  # (a caller's number type: reported as a key's fault, the field unnamed)
                raise ContextRefusedError(
                    f"the context's {_value_shown(k)} ({type(v).__name__}) cannot be read as a number: "
                    f"{type(exc).__name__}; send an int, a float, a bool or a str"
                ) from None
            if type(value) is str and (problem := _text_problem(value)) is not None:
                raise ContextRefusedError(f"the context's {_value_shown(k)} {problem}")
        try:
            key = targeting_key_of(context, self.targeting_key_field)
        except InvalidInputError:  # (read keyless: the kill switch still answers; the router itself refuses
            key = None  # the key once a strategy needs it)
        if key is not None and (problem := _text_problem(key)) is not None:
            raise ContextRefusedError(f"the targeting key ({field!r} or 'targeting_key' in the context) {problem}")
        return self._context_type(targeting_key=key, attributes=attributes)

    def _details(self, method: str, key: str, default: Any, context: Any) -> Any:
        return getattr(self._client, method)(key, default, context)

    def _value(self, method: str, key: str, default: Any, context: Mapping[str, Any]) -> tuple[Any, Any]:
        """The flag's value and the SDK's details of it."""
        details = self._details(method, key, default, self._context(context))
        return self._checked(key, details), details

    @staticmethod
    def _checked(key: str, details: Any) -> Any:
        code = _error_code(details)
        if code is None or code == "FLAG_NOT_FOUND":  # not found: the SDK hands back the default
            return details.value
        error = FlagTypeError if code == "TYPE_MISMATCH" else FlagError
        # (the provider's own text, of any length: cut short, as every message that quotes a provider is)
        raise error(f"OpenFeature could not evaluate {key!r}: {code} {brief_text(str(details.error_message))}")

    def get_boolean(self, key: str, default: bool, context: Mapping[str, Any]) -> bool:
        value = self._recall("boolean", key, default)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        value, details = self._value("get_boolean_details", key, default, context)
        if not isinstance(value, bool):  # bool("false") is True: never guess
            raise FlagTypeError(f"flag {key!r} must be a boolean, got {_value_shown(value)}")
        return self._remember("boolean", key, value, details)  # type: ignore[no-any-return]

    def get_number(self, key: str, default: float, context: Mapping[str, Any]) -> float:
        """A number flag, whether the provider holds it as a float or as an integer.

        OpenFeature types numbers strictly (``get_float_details`` on ``10`` is a TYPE_MISMATCH in the SDK's
        own in-memory provider), so an integer is asked for when the float evaluation reports a mismatch.
        """
        remembered = self._recall("number", key, default)
        if remembered is not _MISSING:
            return float(remembered)
        evaluation_context = self._context(context)
        if key in self._integer_keys:  # held as an integer last time: one evaluation, not two
            answer = self._integer(key, default, evaluation_context)
            if answer is not None:
                return self._remember("number", key, *answer)  # type: ignore[no-any-return]
            self._integer_keys.discard(key)
        details = self._details("get_float_details", key, float(default), evaluation_context)
        if _error_code(details) == "TYPE_MISMATCH":
            answer = self._integer(key, default, evaluation_context)
            if answer is not None:
                if len(self._integer_keys) < _INTEGER_KEYS_KEPT:
                    self._integer_keys.add(key)
                return self._remember("number", key, *answer)  # type: ignore[no-any-return]
        value = self._checked(key, details)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise FlagTypeError(f"flag {key!r} must be a number, got {_value_shown(value)}")
        return self._remember("number", key, _as_float(key, value), details)  # type: ignore[no-any-return]

    def _integer(self, key: str, default: float, evaluation_context: Any) -> tuple[float, Any] | None:
        """The flag evaluated as an integer and the SDK's details, or None if that is not what it holds."""
        whole = int(default) if float(default).is_integer() else 0
        details = self._details("get_integer_details", key, whole, evaluation_context)
        if _error_code(details) is not None or isinstance(details.value, bool) or not isinstance(details.value, int):
            return None
        return _as_float(key, details.value), details

    def get_string(self, key: str, default: str, context: Mapping[str, Any]) -> str:
        value = self._recall("string", key, default)
        if value is not _MISSING:
            return value  # type: ignore[no-any-return]
        value, details = self._value("get_string_details", key, default, context)
        if not isinstance(value, str):
            raise FlagTypeError(f"flag {key!r} must be a string, got {_value_shown(value)}")
        return self._remember("string", key, value, details)  # type: ignore[no-any-return]

    def get_object(self, key: str, default: Any, context: Mapping[str, Any]) -> Any:
        value = self._recall("object", key, default)
        if value is not _MISSING:
            return value
        value, details = self._value("get_object_details", key, default, context)
        return self._remember("object", key, value, details)


class _RememberedNow:
    """What an :class:`OpenFeatureFlags` remembered at one moment, and until when all of it holds. A rollout
    asks it only whether its stable flag is set (``in``): a flag not remembered raises :class:`MustAsk`."""

    __slots__ = ("_entries", "changes", "until")

    def __init__(self, entries: Mapping[tuple[str, str], tuple[float, Any]], changes: int, until: float) -> None:
        self._entries = entries
        self.changes = changes
        self.until = until

    def __contains__(self, key: object) -> bool:
        entry = self._entries.get(("number", key))  # type: ignore[arg-type]
        if entry is None:  # not remembered: only the provider can say
            raise MustAsk
        return entry[1] is not _ABSENT


def _forgetting(flags: weakref.ref[OpenFeatureFlags], *, everything: bool) -> Callable[[Any], None]:
    """An OpenFeature event handler that makes ``flags`` forget, while it exists: every flag, or those the
    event's details name as changed (every flag when they name none)."""

    def forget(details: Any) -> None:
        alive = flags()
        if alive is None:
            return
        if everything:
            # The SDK reports a provider that is ready to a handler as it is added: that first report from
            # the provider whose flags are remembered is no news. Any later one (another provider, or the
            # same one ready again, say reconnected to its flag service after missing changes) forgets all.
            provider = _provider_of(alive._client)
            first, alive._ready_heard = not alive._ready_heard, True
            if first and provider is alive._provider:
                return
            alive._provider = provider
        alive._forget(None if everything else getattr(details, "flags_changed", None))

    return forget


def _evaluates_in_process(provider: Any) -> bool:
    """Whether ``provider`` is one known to answer from this process's memory, never waiting on I/O:
    OpenFeature's in-memory and no-op providers, and flagd's with an in-process resolver (flagd's engine on
    flags synced from a file or a flagd server; an evaluation may wait for the engine's lock while it takes
    new flags, a dictionary update). Exact classes only: a subclass may override an evaluation."""
    kind = type(provider)
    if kind.__module__ in _IN_PROCESS_PROVIDERS and kind.__qualname__ in _IN_PROCESS_PROVIDERS[kind.__module__]:
        return True
    if kind.__module__.startswith("openfeature.contrib.provider.flagd") and kind.__qualname__ == "FlagdProvider":
        resolver = getattr(getattr(provider, "config", None), "resolver", None)
        in_process = str(getattr(resolver, "value", resolver)) in ("in-process", "file")
        # Its engine's threads did not come through a fork, and a lock one of them held then (taking new
        # flags) stays held in the child for good: there its reads keep to the flag reader's budget.
        return in_process and not _INHERITED.came_through_fork(provider)
    return False


class _InheritedProviders:
    """The OpenFeature providers set up before this process was forked (a ``--preload`` master's, set up
    when the application was imported), whatever ``OpenFeatureFlags`` existed then."""

    def __init__(self) -> None:
        self.providers: list[Any] = []  # (held: the SDK holds them anyway, and an id could be reused)
        self.unknown = False  # forked, with providers this could not see: take each for one of them
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        if "openfeature" not in sys.modules:  # no provider was set up
            return
        try:  # (the SDK's registry: private, read only, and guarded)
            from openfeature.provider._registry import provider_registry

            found = [provider_registry._default_provider, *provider_registry._providers.values()]
        except Exception:
            self.unknown = True
            return
        self.providers = [*self.providers, *found]

    def came_through_fork(self, provider: Any) -> bool:
        return self.unknown or any(provider is inherited for inherited in self.providers)


_INHERITED = _InheritedProviders()


# module -> class names of providers that answer from memory (the OpenFeature SDK's own)
_IN_PROCESS_PROVIDERS = {
    "openfeature.provider.in_memory_provider": ("InMemoryProvider",),
    "openfeature.provider.no_op_provider": ("NoOpProvider",),
}


def _provider_of(client: Any) -> Any:
    try:
        return client.provider
    except Exception:  # (a client without one to show)
        return None


class _RememberedOnly:
    """``OpenFeatureFlags.remembered_only()``: marks the thread for the duration of a ``with`` block."""

    __slots__ = ("_only",)

    def __init__(self, only: ThreadValue[bool]) -> None:
        self._only = only

    def __enter__(self) -> None:
        self._only.set(True)

    def __exit__(self, *exc_info: object) -> None:
        self._only.set(False)


def _error_code(details: Any) -> str | None:
    """The OpenFeature error code of an evaluation as a plain string (None when it succeeded)."""
    code = details.error_code
    return None if code is None else str(getattr(code, "value", code))


def targeting_key_of(ctx: Mapping[str, Any], field: str) -> str | None:
    """The targeting key a request is bucketed by: ``ctx[field]``, else OpenFeature's ``targeting_key``; a
    key that is None or empty is no key (an anonymous request, bucketed at random), and does not hide the
    other (``{"user_id": None, "targeting_key": "u-1"}`` is u-1's, not random).

    Raises:
        InvalidInputError: the key cannot be made text (an int of 5000 digits, an object whose ``str()`` or
            ``==`` raises), or is a collection (a dict, a set, a list, a tuple), whose text is no stable id: a
            request's own mistake, not the library's.
    """
    try:
        key = ctx.get(field)
        if key is None or key == "" or key == b"":
            key = ctx.get("targeting_key")
            if key is None or key == "" or key == b"":
                return None
        if type(key) is not str and (isinstance(key, _COLLECTIONS) or (type(key) is np.ndarray and key.ndim > 0)):
            # (bucketed by its text, one user's dict fell in two buckets by its keys' order, a set's by the
            # process's hash seed, and a large one was made text on every request)
            raise InvalidInputError(
                f"the targeting key ({field!r} or 'targeting_key' in the context) is a {type(key).__name__}, "
                "no id: its text depends on its order, and is made on every request; send a string or an int"
            )
        return str(key)
    except InvalidInputError:
        raise
    except Exception as exc:  # (anything a caller's object raises)
        raise InvalidInputError(
            f"the targeting key ({field!r} or 'targeting_key' in the context) cannot be made text: "
            f"{type(exc).__name__}; send a string or an int"
        ) from None


_COLLECTIONS = (Mapping, AbstractSet, list, tuple)  # (a targeting key is a scalar: see targeting_key_of)
