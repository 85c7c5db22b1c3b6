"""Fleet-wide rollout control: one file in the model repository that every worker and host follows.

A switch, rollback, canary percentage, kill switch or reload made on one worker must reach every worker
of every host. The model repository is the one thing they all share already (a local folder for the
workers of one host; shared storage such as NFS/EFS, or a synced copy, across hosts), so the control
state lives there, in ``<repository>/.inprocserve-control.json`` (a dot-file, so repository scans skip
it)::

    {"revision": 7, "reload": 1, "updated_at": "2026-01-01T12:00:00Z", "updated_by": "alice@host:123",
     "models": {"fraud": {"stable": 3, "previous_stable": 2, "canary_version": 4, "canary_percent": 10.0,
                          "kill": false}}}

Writers (``Server`` methods, the admin endpoints, the CLI) hold an exclusive POSIX record lock
(``lockf``) on a sibling lock file, read, change, and replace the file atomically (temporary file,
``fsync``, ``os.replace``), so readers never see a half-written file and concurrent writers never lose an
update. ``revision`` only grows. Readers need no lock: they re-read the file (it is a few hundred bytes)
every ``control_interval_s``, and follow any document that differs from the one they follow.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import math
import os
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from stat import S_ISREG as stat_is_file
from typing import Any

from . import _fork
from . import _unique_json as unique_json
from ._close_match import close_match
from ._config_checks import is_int, is_number, shown
from ._errors import ConfigurationError, ControlFileUnavailableError, NothingToRollBackError
from ._regular_file import NotARegularFileError, read_regular_file
from ._unique_json import DuplicateKeyError

__all__ = [
    "CONTROL_FILENAME",
    "Control",
    "ControlFile",
    "ControlFileUnavailableError",
    "ModelControl",
    "worker_identity",
]

CONTROL_FILENAME = ".inprocserve-control.json"
_LOCK_FILENAME = ".inprocserve-control.lock"
_NO_FOLLOW = getattr(os, "O_NOFOLLOW", 0)  # (not on Windows, which has no record locks here either)
_MAX_BYTES = 1 << 20  # a control file is a few hundred bytes; refuse to parse anything absurd
LOCK_TIMEOUT_S = 10.0
"""How long a writer waits for the control-file lock before giving up (another writer holds it)."""
_LOCK_RETRY_S = 0.02


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelControl:
    """The fleet-wide rollout state of one model; ``None`` fields leave the model's own config in charge."""

    stable: int | None = None
    """The stable version every worker serves (``None``: the model's configured or latest version)."""
    previous_stable: int | None = None
    """The stable version before the last switch: where :meth:`Server.rollback` goes."""
    canary_version: int | None = None
    """The canary version; with ``canary_percent`` > 0 it replaces the model's configured strategy."""
    canary_percent: float = 0.0
    """Share of targeting keys (sticky buckets) sent to ``canary_version``, 0-100."""
    kill: bool = False
    """Kill switch: every request gets the stable version (no canary, A/B, bandit or shadow)."""
    stable_by_gate: int | None = None
    """The stable version the compatibility gate named, not an operator: while ``stable`` is that version
    (:attr:`gate_named`), it follows the newest version the policy selects that is compatible with it (each
    worker advances it, see ``Registry._advance_gate_names``), while an incompatible one stays held. Any
    operator's write of the stable version (switch, rollback, promote) clears it. Written to the file only
    when set: files without it stay as they were. An older release reads it as an unknown key and writes it
    back as read, with whatever stable version it writes: bound to the version the gate named, it no longer
    counts once anyone else (an older release's switch, a hand edit) names another."""
    canary_off: bool = False
    """An operator stopped the canary (``canary MODEL none``): the model's configured canary (``config.toml``'s
    ``[rollout.canary]`` or ``ModelConfig(rollout=...)``) sends no one to its version, while its shadows, if
    any, run on; A/B, bandit and interleaving are untouched (stop those with :attr:`kill`). A canary this file
    sets (``canary_version``) still replaces the configured strategy, and setting one clears this, as does
    handing the canary back to the configuration (``canary MODEL config``). Without it, ``canary_version=None``
    only removed a canary this file had set: the configured one kept answering its share. Written to the file
    only when true: files without it stay as they were. An older release reads it as an unknown key, keeps it
    and ignores it: its workers keep sending the configured canary its share (a fleet mid-upgrade)."""
    canary_off_version: int | None = None
    """The configured canary's version when it was stopped, where the stopper knew it (``Server.set_canary``
    and the admin, its model's configuration; never the CLI, which cannot know whether the servers run with
    ``config.toml`` or a configuration in code naming another canary): the stop then holds only while
    the configured canary is that version, so a later deploy's new canary version runs at its configured
    share (a new decision). ``None``: the stop holds whatever version the configuration names (a stop made
    with the CLI, or no configured canary). Meaningless without :attr:`canary_off`: read as ``None`` then.
    Written to the file only when set; an older release keeps it as an unknown key."""
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Keys of the file's entry for this model that this release does not know (see :attr:`Control.extra`)."""

    def __post_init__(self) -> None:
        for name in ("stable", "previous_stable", "canary_version"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigurationError(f"control: {name} must be a positive int or null, got {shown(value)}")
        percent = self.canary_percent
        if isinstance(percent, bool) or not isinstance(percent, int | float) or not 0 <= percent <= 100:
            raise ConfigurationError(f"control: canary_percent must lie in 0..100, got {shown(percent)}")
        object.__setattr__(self, "canary_percent", float(percent))
        if not isinstance(self.kill, bool):
            raise ConfigurationError(f"control: kill must be true or false, got {shown(self.kill)}")
        if not isinstance(self.canary_off, bool):
            raise ConfigurationError(f"control: canary_off must be true or false, got {shown(self.canary_off)}")
        gate = self.stable_by_gate
        if gate is not None and (isinstance(gate, bool) or not isinstance(gate, int) or gate < 1):
            raise ConfigurationError(f"control: stable_by_gate must be a positive int or null, got {shown(gate)}")
        stopped = self.canary_off_version
        if stopped is not None and (isinstance(stopped, bool) or not isinstance(stopped, int) or stopped < 1):
            raise ConfigurationError(
                f"control: canary_off_version must be a positive int (the canary version stopped) or null, got "
                f"{shown(stopped)}"
            )
        if not self.canary_off:  # (handed back by an older release, which kept it as an unknown key)
            object.__setattr__(self, "canary_off_version", None)

    @property
    def gate_named(self) -> bool:
        """Whether the stable version is the one the compatibility gate named (see :attr:`stable_by_gate`)."""
        return self.stable is not None and self.stable_by_gate == self.stable

    @property
    def canary_active(self) -> bool:
        return self.canary_version is not None and self.canary_percent > 0

    @property
    def versions(self) -> set[int]:
        """Versions this state keeps loaded on every worker (the previous stable too: rollbacks are instant)."""
        wanted = {v for v in (self.stable, self.previous_stable) if v is not None}
        if self.canary_active:
            assert self.canary_version is not None
            wanted.add(self.canary_version)
        return wanted

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "stable": self.stable,
            "previous_stable": self.previous_stable,
            "canary_version": self.canary_version,
            "canary_percent": self.canary_percent,
            "kill": self.kill,
        }
        if self.stable_by_gate is not None:  # (only then: a file without a gate's name stays byte-identical)
            data["stable_by_gate"] = self.stable_by_gate
        if self.canary_off:  # (only then, as stable_by_gate: a file without a stopped canary stays byte-identical)
            data["canary_off"] = True
            if self.canary_off_version is not None:  # (the version stopped, where the stopper knew it)
                data["canary_off_version"] = self.canary_off_version
        return data

    def to_document(self) -> dict[str, Any]:
        """:meth:`to_dict` plus the keys this release does not know, as read: what a write puts back."""
        return {**self.extra, **self.to_dict()}


@dataclass(frozen=True, slots=True, kw_only=True)
class Control:
    """One revision of the control file."""

    revision: int = 0
    reload: int = 0
    """Bumped by a fleet-wide reload: every worker re-scans the repository when it sees a new value."""
    updated_at: str | None = None
    updated_by: str | None = None
    models: Mapping[str, ModelControl] = field(default_factory=dict)
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)
    """Top-level keys that this release does not know, as read, and written back by every update.

    A rolling upgrade runs two releases on one control file: a key added by the newer one (top level or in a
    model's entry) refused the whole file on every older worker, which then stopped following the fleet (a
    kill switch written meanwhile was not applied), refused every request when it started
    (``ControlStateUnknownError``), and refused every write. Such keys are now ignored by this release, kept
    by its writes (so the newer release's state survives a switch made on an older host), and reported
    (logged once, ``control.unknown_keys`` in status, a warning of ``validate``) so a typo is still seen."""
    _unknown_keys: list[str] | None = field(default=None, init=False, repr=False, compare=False, hash=False)
    """:attr:`unknown_keys`, worked out once for this revision (see there)."""

    def __post_init__(self) -> None:
        # (also on every write: what a writer follows is what its readers read, or it warned of another document)
        for name in ("updated_at", "updated_by"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, shown_audit(value))

    def model(self, name: str) -> ModelControl | None:
        return self.models.get(name)

    def origin(self) -> str:
        """Who wrote this revision and when, for a log line: ``by ACTOR at TIME``, or what is known of them.
        Revision 0 with neither is no control file (or one no change has been written to: a new repository, a
        release swapped in without its control file), whose line said ``(by None at None)``."""
        # (a hand edit's "updated_by": "" or "  " is no more known than a missing one: it read "(by  at )")
        author = self.updated_by if self.updated_by and self.updated_by.strip() else None
        when = self.updated_at if self.updated_at and self.updated_at.strip() else None
        if author is None and when is None:
            if self.revision == 0 and not self.models and not self.reload and not self.extra:
                return "no change written yet: no control file, or an empty one"
            return "its author and time are not recorded: written by hand?"
        by = "by an unrecorded author" if author is None else f"by {author}"
        return by if when is None else f"{by} at {when}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "reload": self.reload,
            "updated_at": self.updated_at,
            "updated_by": self.updated_by,
            "models": {name: state.to_dict() for name, state in sorted(self.models.items())},
        }

    def to_document(self) -> dict[str, Any]:
        """The file's document: :meth:`to_dict` plus the keys this release does not know, as read."""
        return {
            **self.extra,
            **self.to_dict(),
            "models": {name: state.to_document() for name, state in sorted(self.models.items())},
        }

    @property
    def unknown_keys(self) -> list[str]:
        """The keys this release ignores, by their place: ``format``, ``models.fraud.pinned``; each name of
        more than ``SHOWN_KEY_CHARACTERS`` cut short, its unprintable characters escaped (see
        :func:`_shown_name`). Worked out once per revision: a file can hold 80,000 of them, and sorting and
        cutting them all again took each readiness probe and status call 20 ms (0.05 ms without them). The
        same list each time: copy it before changing it."""
        if self._unknown_keys is None:
            keys = [_shown_name(key) for key in sorted(self.extra)]
            for name, state in sorted(self.models.items()):
                keys.extend(f"models.{_shown_name(name)}.{_shown_name(key)}" for key in sorted(state.extra))
            object.__setattr__(self, "_unknown_keys", keys)
        assert self._unknown_keys is not None
        return self._unknown_keys

    @classmethod
    def from_dict(cls, data: Any) -> Control:
        """Parse a control document; raises ``ConfigurationError`` saying what is wrong."""
        if not isinstance(data, dict):
            raise ConfigurationError("control: the document must be a JSON object")
        extra = {key: value for key, value in data.items() if key not in _CONTROL_KEYS}  # (see extra)
        revision, reload = data.get("revision", 0), data.get("reload", 0)
        for name, value in (("revision", revision), ("reload", reload)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"control: {name} must be an int >= 0, got {shown(value)}")
            if value > _MAX_COUNTER:  # (see _MAX_COUNTER)
                raise ConfigurationError(
                    f"control: {name} must be at most 2**63-1, got {shown(value)}: the file is damaged; set it back "
                    f"to the control.{name} that the servers report in status"
                )
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise ConfigurationError("control: models must be an object of model name -> state")
        parsed: dict[str, ModelControl] = {}
        for name, state in models.items():
            if not isinstance(state, dict):
                raise ConfigurationError(f"control: models.{_shown_name(name)} must be an object")
            known = {key: value for key, value in state.items() if key in _MODEL_KEYS}
            unknown = {key: value for key, value in state.items() if key not in _MODEL_KEYS}
            try:
                parsed[name] = ModelControl(**known, extra=unknown)
            except ConfigurationError as exc:  # (which of the fleet's models: "canary_percent ..." named none)
                problem = str(exc).removeprefix("control: ")
                raise ConfigurationError(f"control: models.{_shown_name(name)}.{problem}") from None
        return cls(
            revision=revision,
            reload=reload,
            updated_at=_optional_str(data.get("updated_at")),
            updated_by=_optional_str(data.get("updated_by")),
            models=parsed,
            extra=extra,
        )


_MAX_COUNTER = 2**63 - 1
"""The largest ``revision`` and ``reload`` read. One of 4,300 digits was read, and made every write fail: its
successor has more digits than Python turns into text, a ``ValueError`` the admin endpoints blamed on the
client (400) while ``validate`` passed the file."""

_CONTROL_KEYS = frozenset({"revision", "reload", "updated_at", "updated_by", "models"})
_MODEL_KEYS = frozenset(
    {
        "stable",
        "previous_stable",
        "canary_version",
        "canary_percent",
        "kill",
        "stable_by_gate",
        "canary_off",
        "canary_off_version",
    }
)


SHOWN_UNKNOWN_KEYS = 20
"""Unknown keys of the control file named in status, its log line and ``validate``; the rest are counted.

A file of the 1 MiB servers read holds 80,000 short keys: all named, every ``status()`` carried 790 kB of
them (and the status page and the CLI as much), the warning was one line of 630 kB, and naming each with a
close known key took 1.7 s of the server's start."""


SHOWN_KEY_CHARACTERS = 100
"""How much of each name of an unknown key (and of its model) status, its log line and ``validate`` show."""


def shown_key(key: str, limit: int = SHOWN_KEY_CHARACTERS) -> str:
    """``key`` cut to its first ``limit`` characters and ``...``. One key of 900 kB (the 1 MiB servers read
    holds it) was named whole in every ``status()``, on the unauthenticated ``GET /models`` too. A key cut
    once is cut the same again (a status read back from another server)."""
    return key if len(key) <= limit else f"{key[:limit]}..."


def _shown_name(name: str) -> str:
    """A key or a model's name in the file, for status, a message or a log line: its characters that are not
    printable as escapes (``\\n``, ``\\x1b``), then cut as :func:`shown_key` cuts (the same again when applied
    to its own result). The name is whatever the file holds: quoted whole, 5,000 characters and a line break
    went into ``control.error`` on every ``status()`` and readiness call, and a line break made the log line
    two, the second one whatever the file said."""
    head = name[: SHOWN_KEY_CHARACTERS + 1]  # (escaped whole, a key of 900 kB cost a millisecond each time)
    return shown_key(head if head.isprintable() else repr(head)[1:-1])


def describe_unknown_keys(keys: list[str]) -> str:
    """:attr:`Control.unknown_keys` for a person: a key close to a known one is named with it
    (``models.fraud.kil (kill?)``): a hand edit's typo, which no server follows (a kill switch not in force).
    The first ``SHOWN_UNKNOWN_KEYS`` are named, the rest counted."""
    described = []
    for key in keys[:SHOWN_UNKNOWN_KEYS]:
        last = key.rsplit(".", 1)[-1] if key.startswith("models.") else key
        known = _MODEL_KEYS if key.startswith("models.") else _CONTROL_KEYS
        close = close_match(last, sorted(known), cutoff=0.75)
        described.append(key + (f" ({close}?)" if close else ""))
    return ", ".join(described) + more_keys(len(keys), len(described))


def more_keys(total: int, shown: int) -> str:
    """``", and 79980 more"`` after the ``shown`` of ``total`` keys named; empty when all were."""
    return f", and {total - shown} more" if total > shown else ""


def shown_unknown_keys(control: Mapping[str, Any]) -> str | None:
    """The unknown keys of a status document's ``control`` section as one line (the first
    ``SHOWN_UNKNOWN_KEYS``, then a count), or ``None`` when there are none. A server of before the count sent
    every key, each whole: the line is bounded all the same."""
    unknown = control.get("unknown_keys")
    if not isinstance(unknown, list) or not unknown:
        return None
    count = control.get("unknown_keys_count")
    total = max(count if isinstance(count, int) and not isinstance(count, bool) else 0, len(unknown))
    # (a model's key, its model's name and its own cut by unknown_keys, stays whole)
    shown = [shown_key(str(key), 3 * SHOWN_KEY_CHARACTERS) for key in unknown[:SHOWN_UNKNOWN_KEYS]]
    return ", ".join(shown) + more_keys(total, len(shown))


SHOWN_AUDIT_CHARACTERS = 200
"""How much of ``updated_by`` and ``updated_at`` a revision keeps (the rest is cut, see :func:`shown_audit`)."""


def shown_audit(text: str) -> str:
    """``updated_by`` or ``updated_at`` as a revision holds it: its characters that are not printable as
    escapes (``\\n``, ``\\x1b``), then cut to ``SHOWN_AUDIT_CHARACTERS`` and ``...``; the same again when applied
    to its own result. They are free text (``--actor``, ``actor=``, a hand edit): 900 kB of it went whole into
    every ``status()`` and each worker's "following control revision" log line, and a line break in it forged
    a line of the log."""
    head = text[: SHOWN_AUDIT_CHARACTERS + 1]  # (escaped whole, a 900 kB actor cost a millisecond each read)
    return shown_key(head if head.isprintable() else repr(head)[1:-1], SHOWN_AUDIT_CHARACTERS)


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


class ControlFile:
    """Reads and atomically rewrites the control file of one repository.

    Thread- and process-safe: every update holds an exclusive POSIX record lock (``lockf``) on the lock
    file, and, within one process, a thread lock per lock file (record locks belong to a process, so its
    threads would not exclude each other). Updates from any number of workers, hosts sharing the folder
    (record locks over NFS go to the server) and the CLI are serialized, and readers only ever see whole
    revisions. A record lock is not inherited by a forked child, so a fork while one thread writes cannot
    leave the lock held by the child; a writer waits at most ``lock_timeout_s`` for it.
    """

    def __init__(self, repository: str | Path, *, lock_timeout_s: float = LOCK_TIMEOUT_S) -> None:
        self.folder = Path(repository)
        self.path = self.folder / CONTROL_FILENAME
        self._lock_path = self.folder / _LOCK_FILENAME
        self.lock_timeout_s = lock_timeout_s
        # The last file read and what it parsed to: the watcher reads the file every interval, and one of
        # 850 kB (a newer release's keys) was parsed, compared and its keys sorted again each time, 75 ms of
        # CPU per read for a file that had not changed. (One tuple, replaced whole: threads share it.)
        self._last: tuple[bytes, Control] | None = None

    def read(self) -> Control:
        """The current revision; an absent file in a repository folder that is there is revision 0 (nothing
        overridden).

        Raises:
            ConfigurationError: the file is not a valid control document, or (``ControlFileUnavailableError``)
                it cannot be read, or the repository folder is not there.
        """
        raw = self._read_bytes()
        if raw is None:
            return Control()
        if len(raw) > _MAX_BYTES:
            raise ConfigurationError(f"control file {self.path} is larger than {_MAX_BYTES} bytes")
        last = self._last
        if last is not None and last[0] == raw:
            return last[1]
        try:
            # (a key named twice: json keeps the last, so a kill switch added by hand above a model's entry was
            # dropped, silently; which one was meant is the operator's to say)
            data = unique_json.loads(raw)
        except DuplicateKeyError as exc:
            raise ConfigurationError(
                f"control file {self.path} is not a valid control document: "
                f"{str(exc).removesuffix('; send each key once')} (JSON keeps only the last one, which may not be "
                "the one meant): merge them into one"
            ) from None
        except ValueError as exc:
            raise ConfigurationError(f"control file {self.path} is not valid JSON: {exc}") from exc
        except RecursionError:  # (no revision nests: a damaged or hostile file)
            raise ConfigurationError(f"control file {self.path} is not valid JSON: nested too deeply") from None
        control = Control.from_dict(data)
        self._last = (raw, control)
        return control

    def _read_bytes(self) -> bytes | None:
        """The file's first ``_MAX_BYTES + 1`` bytes, or ``None`` when it is absent from a folder that is there.

        Not found, it is looked for again once the folder is found there: a folder swapped back in between the
        open and that check may hold it. A stale NFS file handle (``ESTALE``) is opened again once: a read that
        raced another host's rename of the file over the one it opened (every write) names a file the server
        removed, while the file is there, whole; refused, the worker logged an error and reported
        ``control.error`` for a whole interval, and one starting then routed no request until its next read."""
        looked_again = stale_again = False
        while True:
            try:
                # (never a plain open(): a pipe there blocked every reader and writer for good, the watcher, an
                # admin change holding the lifecycle lock and the file's lock, the CLI, a new worker's start)
                return read_regular_file(self.path, _MAX_BYTES)
            except FileNotFoundError:
                self._refuse_a_broken_link()
                self._refuse_a_missing_folder()
                if looked_again:
                    return None
                looked_again = True
            except NotARegularFileError as exc:
                raise ControlFileUnavailableError(
                    f"control file {self.path} is not a regular file (a pipe, a device or a folder): replace it "
                    "with a copy of the fleet's control file (removed, it is absent: revision 0, every switch, "
                    "canary and kill switch dropped); no change can be written until then"
                ) from exc
            except OSError as exc:
                if exc.errno == errno.ESTALE and not stale_again:
                    stale_again = True
                    continue
                raise ControlFileUnavailableError(f"control file {self.path} cannot be read: {exc}") from exc

    def _refuse_a_broken_link(self) -> None:
        """A control file that is a symbolic link to nothing (a ConfigMap or a share that is not mounted, a
        renamed key) cannot be read; it is not absent. Read as absent, it was revision 0 on every worker: the
        fleet's kill switches, canaries and switches were silently dropped, logged only as a file that "went
        back" (deleted, restored from a backup)."""
        if os.path.islink(self.path):  # (its target is not named: the message reaches HTTP clients)
            raise ControlFileUnavailableError(
                f"control file {self.path} is a symbolic link to a file that does not exist (not mounted?)"
            )

    def _refuse_a_missing_folder(self) -> None:
        """A repository folder that is not there (a release swapped in by two renames, a network share's
        hiccup) holds a control file that cannot be read now; it is not absent. Read as absent, it was revision
        0 on every worker: the fleet's kill switches, canaries and switches were silently dropped until the
        folder came back."""
        try:
            is_folder = self.folder.is_dir()
        except OSError as exc:  # (EACCES, ESTALE: passed through by is_dir, a plain OSError out of read())
            raise ControlFileUnavailableError(
                f"control file {self.path} cannot be read: the repository folder cannot be looked at "
                f"({exc.strerror or exc}: a parent folder this user may not search? a share's hiccup?)"
            ) from exc
        if not is_folder:
            raise ControlFileUnavailableError(
                f"control file {self.path} cannot be read: the repository folder is not there (being swapped? "
                "a share not mounted?); if it was moved for good, point the servers at its new place"
            )

    def update(self, change: Callable[[Control], Control], *, actor: str | None = None) -> Control:
        """Apply ``change`` to the current revision and write the result as the next revision.

        A ``change`` that returns the revision it was given (the same object) writes nothing, and that revision
        is returned: a compare-and-set (the compatibility gate names a stable version only where the file,
        read under the lock, names none; every worker that holds the same version back tries, one writes).

        Raises:
            ConfigurationError: the repository folder is missing, or the current file is invalid.
            ControlFileUnavailableError: (a ``ConfigurationError``) the repository folder cannot be looked at
                (``EACCES``, ``ESTALE``), the lock or the file cannot be opened or written, another writer held
                the lock longer than ``lock_timeout_s``, or the file is a symbolic link (managed elsewhere:
                readers follow it, writers leave it alone).
            Whatever ``change`` raises (nothing is written then).
        """
        try:
            is_folder = self.folder.is_dir()
        except OSError as exc:  # (is_dir passes EACCES and ESTALE through: the admin endpoints answered 500)
            raise ControlFileUnavailableError(
                f"control file {self.path} cannot be written: the repository folder cannot be looked at "
                f"({exc.strerror or exc}: a parent folder this user may not search? a share's hiccup?); nothing "
                "was changed"
            ) from exc
        if not is_folder:
            raise ConfigurationError(f"model repository {str(self.folder)!r} is not a directory")
        self._refuse_a_link()
        with self._locked():
            current = self.read()
            changed = change(current)
            if changed is current:
                return current
            stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            result = replace(
                changed, revision=current.revision + 1, updated_at=stamp, updated_by=actor or default_actor()
            )
            for name, value in (("revision", result.revision), ("reload", result.reload)):
                if value > _MAX_COUNTER:  # (written, every server would refuse the file)
                    raise ConfigurationError(
                        f"control file {self.path}: its {name} is 2**63-1 already; nothing was changed. Set it back "
                        f"by hand to the control.{name} that the servers report in status"
                    )
            try:
                self._write(result)
            except OSError as exc:
                raise ControlFileUnavailableError(
                    f"control file {self.path} cannot be written: {exc}; nothing was changed"
                ) from exc
            return result

    def _refuse_a_link(self) -> None:
        """A control file that is a symbolic link is managed elsewhere (a Kubernetes ConfigMap, a deploy tool):
        the atomic rename of a write would replace the link with a file, which every reader would then follow
        instead of the link's target, silently dropping the next change made where it is managed."""
        try:
            target = os.readlink(self.path)
        except OSError:  # not a link (or no file yet): written as usual
            return
        raise ControlFileUnavailableError(
            f"control file {self.path} is a symbolic link (to {target}): it is managed elsewhere (a ConfigMap?), "
            "and a write here would replace the link; change it where it is managed. Nothing was changed"
        )

    def set_model(
        self, name: str, change: Callable[[ModelControl], ModelControl], *, actor: str | None = None
    ) -> Control:
        """Update one model's state (created empty if absent)."""

        def apply(control: Control) -> Control:
            state = change(control.models.get(name) or ModelControl())
            return replace(control, models={**control.models, name: state})

        return self.update(apply, actor=actor)

    def bump_reload(self, *, actor: str | None = None) -> Control:
        return self.update(lambda control: replace(control, reload=control.reload + 1), actor=actor)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold this process's thread lock for the lock file, then its record lock, each waited for at most
        ``lock_timeout_s`` (polled: a record lock has no timed wait)."""
        import fcntl

        deadline = time.monotonic() + self.lock_timeout_s
        thread_lock = _thread_lock(self._lock_path)
        if not thread_lock.acquire(timeout=max(self.lock_timeout_s, 0.0)):
            raise self._lock_timeout("another thread of this process")
        try:
            descriptor = self._open_lock()
            try:
                while True:
                    try:
                        fcntl.lockf(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except (BlockingIOError, PermissionError):  # held by another process (EAGAIN / EACCES)
                        if time.monotonic() >= deadline:
                            raise self._lock_timeout("another process") from None
                        time.sleep(_LOCK_RETRY_S)
                    except OSError as exc:
                        raise ControlFileUnavailableError(
                            f"control-file lock {self._lock_path} cannot be taken: {exc}; nothing was changed"
                        ) from exc
                yield
            finally:
                os.close(descriptor)  # closing releases the record lock
        finally:
            thread_lock.release()

    def _open_lock(self) -> int:
        """The lock file, open for writing (an exclusive record lock needs a descriptor open for writing,
        locally and over NFS), shared as the repository folder is (see :meth:`_share_like_folder`)."""
        try:
            # Never through a link: root's write would chown the link's target to the folder's owner (any file
            # of root's, for whoever may write the repository folder).
            descriptor = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | _NO_FOLLOW, 0o644)
        except PermissionError as exc:
            if not self._lock_path.exists():  # (the folder refuses the new file: no one else's lock to blame)
                raise ControlFileUnavailableError(
                    f"control-file lock {self._lock_path} cannot be created: {exc.strerror}; the repository folder "
                    f"is not writable by this user (uid {os.geteuid()}), so the control file cannot be written "
                    "either. Nothing was changed"
                ) from exc
            raise ControlFileUnavailableError(
                f"control-file lock {self._lock_path} cannot be opened for writing by this user (uid "
                f"{os.geteuid()}): {exc.strerror}. It was probably created by another user (such as root running "
                "the CLI); it holds no state: give it to the user the servers run as (`chown`), make it group-"
                "writable, or remove it while no writer runs. Nothing was changed"
            ) from exc
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ControlFileUnavailableError(
                    f"control-file lock {self._lock_path} is a symbolic link, which is never followed (the lock "
                    "file holds no state): remove it while no writer runs. Nothing was changed"
                ) from exc
            raise ControlFileUnavailableError(
                f"control-file lock {self._lock_path} cannot be opened: {exc}; nothing was changed"
            ) from exc
        with contextlib.suppress(OSError):  # (best effort: sharing it is not needed for this write)
            _share_like_folder(descriptor, self.folder)
        return descriptor

    def _lock_timeout(self, holder: str) -> ControlFileUnavailableError:
        # (a zero timeout takes it only if free, as the gate's retries do: "for more than 0 s" named a wait that
        # never happened)
        held = (
            f"for more than {self.lock_timeout_s:g} s"
            if self.lock_timeout_s > 0
            else "(taken only if free: not waited for)"
        )
        return ControlFileUnavailableError(
            f"control-file lock {self._lock_path} is held by {holder} {held}; "
            f"nothing was changed. Retry; if it stays held, find the process holding it (e.g. `fuser "
            f"{self._lock_path}`) and stop it"
        )

    def _write(self, control: Control) -> None:
        document = control.to_document()
        payload = json.dumps(document, indent=2, sort_keys=True).encode() + b"\n"
        if len(payload) > _MAX_BYTES:
            # Keys of another release (Control.extra) are written back: indented, a file that every server read
            # (620 kB of a newer release's list) grew past what they read, and the write that did it (a kill
            # switch) made the file unreadable to the whole fleet: the switch not followed, workers that start
            # refusing every request, every later write refused. Written compact then, or not at all.
            payload = json.dumps(document, separators=(",", ":"), sort_keys=True).encode() + b"\n"
        if len(payload) > _MAX_BYTES:
            raise ConfigurationError(
                f"control file {self.path}: this change would make it {len(payload)} bytes, more than the "
                f"{_MAX_BYTES} bytes servers read; nothing was changed. Its keys this release does not know "
                f"({', '.join(control.unknown_keys[:5]) or 'none'}{', ...' if len(control.unknown_keys) > 5 else ''}) "
                "hold the bulk: remove them by hand"
            )
        descriptor, temporary = tempfile.mkstemp(prefix=".inprocserve-control.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(descriptor, "wb") as handle:
                if os.geteuid() == 0:  # root's CLI: the file stays the repository owner's (see _share_like_folder)
                    with contextlib.suppress(OSError):
                        owner = os.stat(self.folder)
                        os.fchown(handle.fileno(), owner.st_uid, owner.st_gid)
                # (by its descriptor: by its name, the chmod followed whatever whoever may write the folder put
                # there meanwhile, a link to a file of root's that root's write then made readable by all)
                os.fchmod(handle.fileno(), 0o644)
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, self.path)  # atomic: readers see the old or the new file, never a mix
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            folder = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)


def _share_like_folder(descriptor: int, folder: Path) -> None:
    """Give the lock file the repository folder's owner (when this is root) and its group and other write
    bits, so that every user who may write the control file may take the lock.

    Created 0644 by whoever wrote first, it locked the others out for good: after one ``sudo python -m
    inprocserve canary ...`` the lock was root's, and every later write by the servers' user (the admin
    endpoints, ``Server.switch``, the CLI without sudo) failed to open it (409); in a group-writable folder
    shared by a team, the first operator's lock file likewise refused the others. Only a regular file of one
    link is changed: a hard link planted in the folder (where ``fs.protected_hardlinks`` is off) names another
    file, which root would give away."""
    owner = os.stat(folder)
    lock = os.fstat(descriptor)
    if not stat_is_file(lock.st_mode) or lock.st_nlink != 1:  # (a hard link to another file: leave it as it is)
        return
    if os.geteuid() == 0 and (lock.st_uid, lock.st_gid) != (owner.st_uid, owner.st_gid):
        with contextlib.suppress(OSError):  # (root squashed on NFS cannot)
            os.fchown(descriptor, owner.st_uid, owner.st_gid)  # (also gives back a lock file root made before)
    mode = lock.st_mode & 0o777
    if mode | (owner.st_mode & 0o022) != mode:
        os.fchmod(descriptor, mode | (owner.st_mode & 0o022))


# One thread lock per lock file (record locks do not exclude the threads of one process), made anew in a
# forked child: a lock a parent's thread held at the fork would never be released there.
_thread_locks: dict[str, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)  # one lock per file, whatever path names it
    with _thread_locks_guard:
        lock = _thread_locks.get(key)
        if lock is None:
            lock = _thread_locks[key] = threading.Lock()
        return lock


def _reset_thread_locks() -> None:
    global _thread_locks_guard
    _thread_locks_guard = threading.Lock()
    _thread_locks.clear()


def switched(state: ModelControl, version: int, *, current: int | None = None) -> ModelControl:
    """``state`` with ``version`` as its stable version, the old one kept for a rollback.

    The old one is ``state.stable``; when no switch recorded one, ``current`` — the version answering
    default traffic now (from ``config.toml``'s ``rollout.stable`` or the version policy) — so the first
    switch can be rolled back too. An operator's choice: a stable version the compatibility gate named stops
    following newer compatible versions (``stable_by_gate`` cleared)."""
    now = state.stable if state.stable is not None else current
    previous = now if now is not None and now != version else state.previous_stable
    if previous == version:
        previous = None
    return replace(state, stable=version, previous_stable=previous, stable_by_gate=None)


def nothing_to_roll_back(model: str, stable: int | None) -> NothingToRollBackError:
    """The refusal of a rollback of ``model``, whose state records no previous stable version; ``stable`` is
    the version it serves as stable (``None``: not known), named so the operator sees where it stands. The
    server and the CLI raise it with the same words."""
    serving = "" if stable is None else f" (its stable version is {stable})"
    return NothingToRollBackError(
        f"model {model!r} has no previous stable version to roll back to: no switch of it from one version to "
        f"another was recorded{serving}; nothing was changed. A rollback undoes a switch: to serve another "
        "version, switch to it",
        model=model,
        version=stable,
    )


def validate_percent(percent: object) -> float:
    """``percent`` as a float in 0..100: any real number (numpy's too), not a bool, NaN or infinity.

    Raises:
        ValueError: anything else (an int past any float too: 10**400 raised OverflowError).
    """
    try:
        number = float(percent) if is_number(percent) else math.nan  # type: ignore[arg-type]
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"percent must be a number in 0..100, got {shown(percent)}")
    if not 0 <= number <= 100:
        raise ValueError(f"percent must lie in 0..100, got {shown(percent)}")
    return number + 0.0  # (-0.0 lies in 0..100 too: stored, logged and echoed as 0)


def validate_version(version: object) -> int:
    """``version`` as an int: any integer >= 1 (numpy's too, as ``predict(version=...)`` takes), not a bool.

    Raises:
        ValueError: anything else.
    """
    if not is_int(version) or int(version) < 1:  # type: ignore[call-overload]
        raise ValueError(f"version must be a positive int, got {shown(version)}")
    return int(version)  # type: ignore[call-overload, no-any-return]


# -- which worker answered ------------------------------------------------------------------------------

_started_at = time.time()


def _reset_started_at() -> None:
    global _started_at
    _started_at = time.time()


_fork.at_fork_in_child(_reset_started_at)
_fork.at_fork_in_child(_reset_thread_locks)
_fork.on_monkey_patch(_reset_thread_locks)


def worker_identity() -> dict[str, Any]:
    """This process as status reports it: pid, hostname and when it started (or was forked)."""
    return {"pid": os.getpid(), "hostname": socket.gethostname(), "started_at": _started_at}


def default_actor() -> str:
    """Who wrote a revision when the caller does not say: user@host:pid (never raises)."""
    return f"{_user_name()}@{socket.gethostname()}:{os.getpid()}"


_USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")  # getpass.getuser()'s, in its order


def _user_name() -> str:
    """The user for the audit trail: the terminal's login name, else the environment's (as
    ``getpass.getuser()`` reads it), else the account of the process's uid, else ``uid<N>``. A cron job or a
    container often has no terminal and no ``USER``, and its uid may have no account: read as "unknown",
    its writes named nobody."""
    try:
        return os.getlogin()
    except OSError:  # (no controlling terminal: cron, systemd, containers)
        pass
    for variable in _USER_VARIABLES:
        if user := os.environ.get(variable):
            return user
    getuid = getattr(os, "getuid", None)
    if getuid is None:  # (no uids on this platform)
        return "unknown"
    uid = getuid()
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (ImportError, KeyError):  # (an arbitrary uid, as containers and OpenShift run, has no account)
        return f"uid{uid}"
