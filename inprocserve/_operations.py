"""Rollout operations: switch, rollback, canary, kill switch, fleet reload, guarded promotion, interleaving
and outcomes, and following the repository's control file.

Every change goes through the registry's lifecycle lock, is written to the control file (with a repository)
so the fleet follows it, and is then adopted by this process. Flags are read only through each model's
``Router`` (and so its ``FlagReader``): a failing provider never reaches the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import numbers
import os
import threading
from collections.abc import Callable, Mapping, Set
from concurrent.futures import Future
from typing import Any

import numpy as np

from ._assignments import _COUNTED, RequestNumber
from ._brief import brief
from ._config_checks import check_int, check_number, is_int, shown
from ._control import (
    CONTROL_FILENAME,
    Control,
    ControlFile,
    ModelControl,
    describe_unknown_keys,
    nothing_to_roll_back,
    switched,
    validate_percent,
    validate_version,
)
from ._drift import replaying
from ._errors import (
    ConfigurationError,
    ControlFileUnavailableError,
    InferenceError,
    InvalidInputError,
    ModelNotFoundError,
    PromotionRefusedError,
)
from ._log_limit import LogLimit, since
from ._prediction import Prediction, RequestIds
from ._registry import Registry, Routes, configured_canary_version, did_you_mean
from ._reports import InterleavedRanking, PromotionReport
from ._repository import scan_repository
from ._shadow import compare_outputs
from ._signature import incompatibilities

__all__ = ["Operations", "RolloutMethods"]

logger = logging.getLogger(__name__)

_MODELS_LOOKED_UP = 100
"""How many control entries for models not served here are looked up in the repository per revision."""

_TYPOS_SHOWN = 5
"""How many of them a warning names."""

_COLLECTIONS = (Mapping, Set, list, tuple)
"""Keys that are no id (``targeting_key_of`` in ``_flags`` refuses a request's key of these kinds)."""

# Tries of a rollback whose version to go back to another writer moves between its load and its write
_ROLLBACK_TRIES = 3


class _TargetMoved(Exception):
    """Raised inside the control file's lock: the version a rollback goes back to is not the one it loaded (a
    signal to try again, never raised to a caller)."""


# Reads of the control file by one follower while other revisions keep being followed at once between its read
# and the routing lock (each such revision is followed within an interval: more than one in a row is rare)
_READS = 3


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
        self._read_error: str | None = None  # why the control file cannot be read now, if it cannot
        # each problem reading it is logged when it starts, and again only a minute after its last line: a file
        # that flaps (rewritten in place by a sync, read half-written now and then) is not two lines per flap
        self._read_log = LogLimit()
        # whether _read_error has been logged: one back within a minute of its last line is only counted, and
        # must still be logged once that minute is up if it stays (else the log's last word, 'can be read
        # again', stood for good while the file stayed damaged)
        self._read_error_logged = False
        # whether this server follows a revision read from the file (an absent file reads as revision 0):
        # until then a worker started while the file was unreadable reports not ready (see control_read)
        self._read_once = control_file is None
        # the keys of the file this release ignores (a newer release's, or a typo), as last logged: each set
        # is logged once, when it first appears, not at every read (see Control.extra)
        self._unknown_keys: list[str] = []
        # the revision last checked for entries naming no model of the repository (see _note_models_not_here)
        self._models_checked: Control | None = None
        # where the repository folder led when the revision followed was read (see _warn_if_unusual)
        self._followed_folder = self._real_folder()
        self._ids = ids
        self._predict = predict
        self._submit = submit
        self._watcher: threading.Thread | None = None
        self._stop = threading.Event()
        registry.follow_written = self.follow_written

    @property
    def control_path(self) -> str | None:
        return None if self._control_file is None else str(self._control_file.path)

    @property
    def control_error(self) -> str | None:
        """Status's ``control.error``: why the control file cannot be read, and why a part of the revision
        in force is not applied here (``None`` when it is read and applied in full)."""
        errors = [error for error in (self._read_error, self._registry.control_problem) if error]
        return "; ".join(errors) or None

    @property
    def control_read(self) -> bool:
        """Whether this server follows a revision of its control file (True with no control file; an absent
        file reads as revision 0). False: the file could not be read since the server started, and the
        server follows revision 0 (every model's own config), which may undo the fleet's switches,
        rollbacks and kill switches; while its watcher has not read and adopted a revision, readiness fails
        (see ``web.readiness``) and requests that do not pin a version are refused
        (``ControlStateUnknownError``)."""
        return self._read_once

    def read_initial_control(self) -> None:
        """Before the first load: follow the control file from the start (nothing to apply yet)."""
        control = self._read_control()
        if control is not None:
            self._registry.control = control
            self._read_once = True
        elif self.control_interval_s is not None:  # fail closed until the watcher reads it (see _unread)
            self._registry.refuse_routing(self._unread())

    def _real_folder(self) -> str | None:
        """Where the repository folder leads now (through symbolic links), if it has a control file at all."""
        if self._control_file is None:
            return None
        try:
            return os.path.realpath(self._control_file.folder, strict=True)
        except OSError:  # (gone, unmounted: not a swap to tell apart)
            return None

    def _unread(self) -> str:
        """Why requests are refused while the control file was never read: by its name, not its path (the
        message reaches HTTP clients), and what is wrong with it."""
        problem = (self._read_error or "cannot be read").replace(
            self.control_path or CONTROL_FILENAME, CONTROL_FILENAME
        )
        return (
            f"this worker has never read the fleet's control file ({problem}), so it does not know the fleet's "
            "switches, canaries and kill switches: no request is routed until its watcher reads the file "
            f"(every {self.control_interval_s:g} s); retry later"
        )

    def _followed(self) -> None:
        """With the lifecycle lock or the routing lock held: this server now follows a revision read from the
        file."""
        self._read_once = True
        if self._registry.routing_refusal is not None:
            self._registry.refuse_routing(None)

    def follow_initial_control(self) -> list[str]:
        """After the first load: note what it could not apply of the revision read by
        :meth:`read_initial_control` (a version it names that is not here yet), to be retried until it
        applies, as for later revisions; returns those problems."""
        with self._registry.lock:
            return self._registry.follow_initial_control()

    def _adopt(self, control: Control, *, seen: int, retry_now: bool = True) -> list[str]:
        """With the lifecycle lock held: follow ``control``, read from the file or just written to it once the
        registry's control generation was ``seen`` — or what the file holds, if a revision was followed at
        once since.

        A revision that needs no load may be followed at once meanwhile (:meth:`_follow_at_once` needs only
        the routing lock): read after ``control``, it is newer (the file's revisions only grow), and following
        ``control`` would undo it until the next interval. So the file is read again then, before the routing
        lock is taken (a read is file I/O, on NFS for a fleet: under that lock it would hold up every
        publish), until no revision was followed between a read and the lock (:data:`_READS` reads at most;
        then, or when the file cannot be read, the higher revision wins). A revision older than the one
        followed, with none followed since it was read, is the file's own going back (restored from a
        backup): warned about, and followed. And a writer whose revision nothing followed at once since
        follows it without reading the file again: a read that fails then would have left it behind."""
        registry = self._registry
        reads = 0
        while True:
            with registry.routing:
                moved = registry.control_generation != seen
                if not moved or reads == _READS:
                    if moved and control.revision <= registry.control.revision:
                        control = registry.control  # (still moving, or unreadable: the file's order decides)
                    adopted = control != registry.control  # the whole document, not its revision
                    if adopted:
                        self._warn_if_unusual(registry.control, control)
                        registry.adopt(control)
                    break
            now = registry.control_generation
            read = self._read_control()
            if read is None:  # (no file, or unreadable now: compared as it is, with what is followed)
                reads = _READS
                continue
            control, seen, reads = read, now, reads + 1
        problems = registry.apply_adopted(control) if adopted else registry.retry_control(now=retry_now)
        self._followed()
        return problems

    def start_watcher(self) -> None:
        """Start the control-file watcher; :meth:`close` stops and joins it."""
        if self.control_interval_s is None or self._registry.closed:
            return
        self._watcher = threading.Thread(target=self._watch, name="inprocserve-control", daemon=True)
        self._watcher.start()

    def close(self) -> None:
        """Stop the watcher (idempotent); it finishes the sync it is in, if any."""
        self.stop_watcher()
        self.join_watcher(timeout_s=5.0)

    def stop_watcher(self) -> None:
        """Ask the watcher to stop once the sync it is in, if any, is done (see :meth:`join_watcher`)."""
        self._stop.set()

    def join_watcher(self, *, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a stopped watcher to end; False if it is still running."""
        watcher = self._watcher
        if watcher is not None and watcher is not threading.current_thread():
            watcher.join(timeout=timeout_s)
            return not watcher.is_alive()
        return True

    def after_fork_in_child(self) -> None:
        self._stop = threading.Event()
        self.start_watcher()

    def record_outcome(
        self, request_id: str | None, reward: float, *, model: str | None = None, key: str | None = None
    ) -> str | None:
        """See :meth:`Server.record_outcome`."""
        given: object = reward  # typed float, but any real number works (numpy's float32 included)
        if isinstance(given, bool | np.bool_) or not isinstance(given, numbers.Real):
            raise TypeError(f"reward must be a number, got {type(given).__name__}")
        if key is not None and model is None:  # (it credited nothing and returned None, as an unknown id does)
            raise TypeError("record_outcome(key=...) needs model=...: a targeting key is bucketed per model")
        if request_id is None and key is None:
            raise TypeError("record_outcome() needs a request_id, or model= and key=")
        if key is not None:
            key = _key_text(key)
        if model is None:
            assert request_id is not None  # (checked above: key= needs model=)
            return self._outcome_of_request(request_id, reward)
        routes = self._registry.routes_of(model)
        return routes.router.record_outcome(
            request_id, reward, key, routes.default.version, routes.versions, routes.state
        )

    def _outcome_of_request(self, request_id: str, reward: float) -> str | None:
        """An outcome by request id alone: ask each model until one knows the id. An id is one request's, of
        one model, so none after it does: a repeated report (counted already) asked every other model too."""
        names = list(self._registry.routes)
        # (parsed once, not once per model asked: see RequestNumber; one model asked parses it once anyway)
        found = RequestNumber(request_id) if len(names) > 1 and isinstance(request_id, str) else request_id
        for name in names:
            routes = self._registry.routes_of(name)
            credited = routes.router.outcome_of_request(found, reward, routes.state)
            if credited is not None:
                return None if credited is _COUNTED else credited
        return None

    def switch(self, model: str, version: int, *, actor: str | None = None, force: bool = False) -> None:
        """See :meth:`Server.switch`."""
        version = validate_version(version)  # (a numpy integer as a plain int: it is written as JSON)
        with self._registry.lock:
            routes = self._registry.serving(model, version)
            # read once (a flag provider may be asked): judged against, and recorded as switched from, one version
            current = routes.router.stable_version(routes.versions, routes.default.version, state=routes.state)
            if not force:
                self._refuse_if_incompatible(routes, model, version, current)
            self._refuse_if_a_build(model, version)
            self._refuse_if_gone(model, version, self._registry.repository_versions(model))
            self._registry.incompatible.get(model, {}).pop(version, None)  # the operator accepted its signature
            self._change_control(model, lambda state: switched(state, version, current=current), actor)
            logger.info("model %r: stable version is now %s", model, version)
        self._warn_if_a_flag_overrides(model, version)

    def _refuse_if_a_build(self, model: str, version: int) -> None:
        """Refuse to make the fleet serve ``version`` where a build loaded by path holds it here: every other
        worker would serve the release of that number and this one neither (it refuses a revision naming its
        build: the registry's ``follow``), with nothing said to the operator but ``control.error``."""
        build = self._registry.build_by_path(model, version)
        if build is not None:
            raise ModelNotFoundError(
                f"model {model!r}: version {version} here is a build loaded by path ({build}), not the "
                f"repository's release {version}; nothing was written: serve the release here first with "
                f"server.load({model!r}, version={version}) (in place of the build)",
                model=model,
                version=version,
            )

    @staticmethod
    def _refuse_if_gone(model: str, version: int, versions: set[int] | None) -> None:
        """Refuse to make the fleet serve a version that is not in the repository (``versions``; ``None``: the
        model is not served from one), as the CLI does: one still loaded here serves from memory, but every
        worker that starts cannot load it and serves another version."""
        if versions is not None and version not in versions:
            known = ", ".join(map(str, sorted(versions))) or "none"
            raise ModelNotFoundError(
                f"model {model!r}: version {version} is not in the repository (versions: {known}); nothing was "
                "written: a worker that starts could not load it",
                model=model,
                version=version,
            )

    @staticmethod
    def _refuse_if_incompatible(
        routes: Routes, model: str, version: int, stable: int | None = None, *, promoting: bool = False
    ) -> None:
        # Against the version requests get (a ``<model>.stable`` flag's, where one is set; status(), which never
        # calls a flag provider, judges against the switched-to or configured version): judged against that one
        # while the flag sent everyone to another, a switch to a version that breaks the flag's callers once it
        # is cleared went through, and one to the version everyone used was refused. (``stable``: the caller's,
        # read once for its comparison and its record too.)
        if stable is None:
            stable = routes.router.stable_version(routes.versions, routes.default.version, state=routes.state)
        if stable == version:
            return
        current, target = routes.versions[stable].signature, routes.versions[version].signature
        assert current is not None and target is not None
        problems = incompatibilities(current, target)
        if problems:
            report = {"model": model, "from": stable, "to": version, "incompatibilities": problems}
            # (promote() takes no force: the switch's advice pointed its caller to a TypeError)
            anyway = (
                f"switch({model!r}, {version}, force=True) makes it stable anyway"
                if promoting
                else 'pass force=True to switch anyway (over HTTP, the body\'s "force": true)'
            )
            raise PromotionRefusedError(
                f"model {model!r} version {version} is not compatible with version {stable}, which serves now: "
                f"{'; '.join(problems)}; {anyway}",
                report=report,
                model=model,
                version=version,
            )

    def rollback(self, model: str, *, actor: str | None = None) -> int:
        """See :meth:`Server.rollback`."""
        with self._registry.lock:
            self._registry.known(model)
            for _ in range(_ROLLBACK_TRIES):
                try:
                    return self._roll_back(model, actor)
                except _TargetMoved:  # another writer switched meanwhile: load what it leaves to go back to
                    continue
            raise ControlFileUnavailableError(
                f"model {model!r}: its previous stable version moved {_ROLLBACK_TRIES} times during this rollback "
                "(other writers are switching it); nothing was changed. Retry once they are done"
            )

    def _roll_back(self, model: str, actor: str | None) -> int:
        """With the lifecycle lock held: one try of :meth:`rollback`. The version to go back to is loaded and
        warmed before the control file's lock is taken (it is normally loaded: the control state keeps the
        previous stable version loaded), and read again inside it: when another writer's switch moved it
        meanwhile, nothing is written (written unloaded, a version that cannot load reached the whole fleet).

        Raises:
            NothingToRollBackError: the state read inside the lock records no version to go back to.
            _TargetMoved: the version to go back to is not the one loaded; nothing was written.
        """
        hint = self._current_control().models.get(model, ModelControl()).previous_stable
        if hint is not None:
            self._registry.serving(model, hint)
        versions = self._registry.repository_versions(model)
        target: list[int] = []

        def back(state: ModelControl) -> ModelControl:
            previous = state.previous_stable
            if previous is None:
                raise nothing_to_roll_back(model, state.stable if state.stable is not None else self._stable(model))
            if previous != hint:  # (never loaded here while holding the file's lock: every writer would wait)
                raise _TargetMoved
            self._refuse_if_gone(model, previous, versions)
            target[:] = [previous]
            return switched(state, previous)  # back to what served before: never refused

        self._change_control(model, back, actor)
        logger.info("model %r: rolled back; stable version is now %s", model, target[0])
        return target[0]

    def _stable(self, model: str) -> int | None:
        """The version ``model`` serves as stable here, by its config (``None`` where nothing of it is loaded)."""
        routes = self._registry.routes.get(model)
        if routes is None:
            return None
        return routes.router.stable_version(routes.versions, routes.default.version, state=routes.state)

    def set_canary(self, model: str, version: int | None, *, percent: float, actor: str | None = None) -> int | None:
        """See :meth:`Server.set_canary`."""
        share = validate_percent(percent)
        if version is None and share:  # (meant as "send 50 %", it removed the canary)
            raise ValueError(
                f"set_canary({model!r}, None, ...) removes the canary and takes no percent (got {share:g})"
            )
        with self._registry.lock:
            if version is None:
                self._registry.known(model)
            else:
                version = validate_version(version)
                self._registry.serving(model, version)
                self._refuse_if_a_build(model, version)
                self._refuse_if_gone(model, version, self._registry.repository_versions(model))

            # The configured canary's version, recorded with the stop: a later deploy's canary of another version
            # is a new decision, and runs (see ModelControl.canary_off_version).
            stopped = configured_canary_version(self._registry, model) if version is None else None

            def change(state: ModelControl) -> ModelControl:
                if version is None:  # (the configured canary stopped too: see ModelControl.canary_off)
                    return dataclasses.replace(
                        state, canary_version=None, canary_percent=0.0, canary_off=True, canary_off_version=stopped
                    )
                return dataclasses.replace(state, canary_version=version, canary_percent=share, canary_off=False)

            self._change_control(model, change, actor)
            if version is None:
                logger.info(
                    "model %r: canary stopped (the configured one too%s)",
                    model,
                    "" if stopped is None else f": version {stopped}",
                )
            else:
                logger.info("model %r: canary is now %s at %g%%", model, version, share)
        if version is not None:
            self._warn_if_canary_flags_override(model, version, share)
        else:
            self._warn_if_stopped_canary_flagged(model)
        return stopped

    def resume_configured_canary(self, model: str, *, actor: str | None = None) -> None:
        """See :meth:`Server.resume_configured_canary`."""
        with self._registry.lock:
            self._registry.known(model)
            self._change_control(
                model,
                lambda state: dataclasses.replace(state, canary_version=None, canary_percent=0.0, canary_off=False),
                actor,
            )
            logger.info("model %r: the canary is the configured one again", model)

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
            seen = self._registry.control_generation
            problems = self._adopt(self._control_file.bump_reload(actor=actor), seen=seen)
        # A hold the re-scan found is named in the control file now, outside the lifecycle lock (see sync_control):
        # this worker's watcher finds nothing new to follow, and a worker without a poller has no later refresh.
        self._registry.pin_holds()
        return problems

    def sync_control(self, *, retry_now: bool = True) -> int:
        """See :meth:`Server.sync_control`. ``retry_now=False`` (the watcher): a revision applied only in
        part is tried again when its back-off allows, not on every call, and the lifecycle lock is waited for
        at most one interval (a hot reload may hold it while it loads: the next interval reads the file again,
        and follows at once a revision that needs no load)."""
        self._sync_control(retry_now=retry_now)
        # A hold the revision's re-scan found (a fleet-wide reload) is named in the control file now, outside the
        # lifecycle lock: a worker without a poller, which learns of new versions only so, had it never named. At
        # every read, not only one that follows a revision: a name that failed (the file's lock held) is tried
        # again here, where such a worker has no later refresh (a no-op with no hold to name).
        self._registry.pin_holds()
        return self._registry.control.revision

    def _sync_control(self, *, retry_now: bool) -> None:
        registry = self._registry
        seen = registry.control_generation
        control = self._read_control()
        if control is not None and control != registry.control and self._follow_at_once(control, seen=seen):
            return
        # (the file holds what this server follows; marked followed under the lock, see _followed)
        if (control is None or (control == registry.control and self._read_once)) and not registry.control_pending:
            return
        wait_s = -1 if retry_now or self.control_interval_s is None else self.control_interval_s
        if not registry.lock.acquire(timeout=wait_s):
            return
        try:
            if not registry.closed:
                self._sync_locked(retry_now=retry_now)
        finally:
            registry.lock.release()

    def follow_written(self, control: Control, seen: int) -> None:
        """Without the registry's locks: follow ``control``, which this server wrote outside them (the gate's
        name or advance, see :meth:`Registry.pin_holds`) once its control generation was ``seen``, as
        :meth:`_change_control` follows a switch, if it needs no load (else the next read of the file follows
        it)."""
        self._follow_at_once(control, seen=seen)

    def _follow_at_once(self, control: Control, *, seen: int) -> bool:
        """Follow ``control``, read once the registry's control generation was ``seen``, if it needs no load
        and no re-scan (a kill switch, a canary, a switch among loaded versions), under the routing lock alone
        (see :meth:`Registry.adopt_at_once`); False if it needs more, or another revision keeps being followed
        meanwhile (the sync under the lifecycle lock then follows the file).

        A revision followed since ``control`` was read (a writer of this process follows what it wrote, after
        writing) may be newer: the file is read again then, before the routing lock is taken (see
        :meth:`_adopt`), so a revision read before could not flip this server back for an interval."""
        registry = self._registry
        for _ in range(_READS):
            with registry.routing:
                if registry.control_generation == seen:
                    previous = registry.control
                    if control == previous or not registry.adopt_at_once(control):
                        return False
                    self._warn_if_unusual(previous, control)
                    self._followed()
                    return True
            seen = registry.control_generation
            read = self._read_control()
            if read is None:
                return False
            control = read
        return False

    def _sync_locked(self, *, retry_now: bool) -> None:
        registry = self._registry
        # Read again under the lock: a revision read before a writer of this process took the lock
        # may be older than the one it wrote and adopted, and adopting it would flip back for one interval.
        # (_adopt reads it once more if a revision is followed at once meanwhile.)
        seen = registry.control_generation
        control = self._read_control()
        if control is not None and control != registry.control:  # the whole document, not its revision
            self._adopt(control, seen=seen, retry_now=retry_now)
        else:
            if control is not None:
                self._followed()
            registry.retry_control(now=retry_now)

    def _warn_if_unusual(self, previous: Control, control: Control) -> None:
        """Log a revision that went down, or another document under the same revision."""
        folder = self._real_folder()
        swapped = None not in (folder, self._followed_folder) and folder != self._followed_folder
        was, self._followed_folder = self._followed_folder, folder
        if control.revision < previous.revision and swapped:
            # A deploy that swaps a symbolic link (models -> releases/43) to a new repository folder brings that
            # folder's control file, usually none: every worker follows revision 0, and the fleet's switches,
            # canaries and kill switches are dropped. Said as such, with the fix, not as a deleted file.
            logger.warning(
                "control file %s went back from revision %d to %d: the repository is another folder now (%s, "
                "was %s: a deploy that swapped a symbolic link to a new folder?), with its own control file; "
                "following it. Copy %s into the new folder before such a swap, or the fleet's switches, "
                "canaries and kill switches are dropped",
                self.control_path,
                previous.revision,
                control.revision,
                folder,
                was,
                CONTROL_FILENAME,
            )
        elif control.revision < previous.revision:
            logger.warning(
                "control file %s went back from revision %d to %d (deleted, restored from a backup, or "
                "an older synced copy, or written to a synced copy: write to the source of the sync); "
                "following it",
                self.control_path,
                previous.revision,
                control.revision,
            )
        elif control.revision == previous.revision:
            logger.warning(
                "control file %s holds another document under revision %d (now: %s; before: %s): "
                "edited by hand without raising the revision, or two writers wrote separate copies (a host's "
                "synced copy written to?); following the file",
                self.control_path,
                control.revision,
                control.origin(),  # (what is known of each: a hand edit records neither author nor time)
                previous.origin(),
            )

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
        seen = self._registry.control_generation
        if self._control_file is not None:
            control = self._control_file.set_model(model, change, actor=actor)
        else:
            state = change(self._registry.control.models.get(model) or ModelControl())
            control = dataclasses.replace(
                self._registry.control,
                revision=self._registry.control.revision + 1,
                models={**self._registry.control.models, model: state},
            )
        self._adopt(control, seen=seen)  # also applies what other writers changed since this server last looked

    def _read_control(self) -> Control | None:
        if self._control_file is None:
            return None
        try:
            control = self._control_file.read()
        except ConfigurationError as exc:
            skipped = None
            if str(exc) != self._read_error or not self._read_error_logged:
                # a new problem (logged, unless it is the last one back within a minute), or one not logged yet
                if self._read_error is not None and str(exc) != self._read_error:
                    self._read_log.forget()  # another problem than the one logged: logged at once
                skipped = self._read_log.due()
                self._read_error_logged = skipped is not None
            if skipped is not None:
                if self._read_once:
                    logger.error(
                        "%s; revision %d stays in force%s", exc, self._registry.control.revision, since(skipped)
                    )
                elif self.control_interval_s is None:
                    logger.error(
                        "%s; this server has read no revision of it: it serves every model by its own config%s",
                        exc,
                        since(skipped),
                    )
                else:
                    logger.error(
                        "%s; this worker has read no revision of it: it routes no request (ControlStateUnknownError) "
                        "and reports not ready until it reads and follows one%s",
                        exc,
                        since(skipped),
                    )
            self._read_error = str(exc)
            return None
        if self._read_error is not None and self._read_log.ended():  # its error was logged: say it is over, once
            logger.info("control file %s can be read again (revision %d)", self.control_path, control.revision)
        self._read_error = None
        self._note_unknown_keys(control)
        self._note_models_not_here(control)
        return control

    def _note_unknown_keys(self, control: Control) -> None:
        """Log once the keys of the control file this release does not know, and that they are gone."""
        unknown = control.unknown_keys
        if unknown == self._unknown_keys:
            return
        if unknown:
            logger.warning(
                "control file %s (revision %d) has keys this release of inprocserve does not know: %s. They are "
                "ignored here and kept when this server writes the file (written by a newer release during a "
                "rolling upgrade? if not, a typo: a key the servers do not follow)",
                self.control_path,
                control.revision,
                describe_unknown_keys(unknown),
            )
        else:
            logger.info(
                "control file %s (revision %d) has no unknown keys any more", self.control_path, control.revision
            )
        self._unknown_keys = unknown

    def _note_models_not_here(self, control: Control) -> None:
        """Warn once per revision of entries that look like a typo for a model served here: a hand edit's
        ``"frud": {"kill": true}`` for ``fraud`` was followed by every worker, in force for no model, and
        nothing said so, where a misspelt key is named. Entries for models of other hosts are the fleet's
        own (one control file for every host): only a name close to one served here (and not in this
        repository, its own folder looked up) is said, at most ``_MODELS_LOOKED_UP`` looked up per revision."""
        if control is self._models_checked or control == self._models_checked:
            return
        served = list(self._registry.loaded)
        if not served:  # (the read before the first load: looked at once models are, not taken as checked)
            return
        self._models_checked = control
        repository = self._registry.repository
        if repository is None or not control.models:
            return
        typos: list[str] = []
        looked_up = 0
        for name in control.models:
            if name in served or looked_up == _MODELS_LOOKED_UP:
                continue
            hint = did_you_mean(name, served)
            if not hint:  # (another host's model, most likely)
                continue
            looked_up += 1
            try:
                scan = scan_repository(repository, follow_symlinks=self._registry.follow_symlinks, only=name)
            except Exception:  # (a file-system hiccup: nothing to say of this name now)
                continue
            if name not in scan.models and not scan.problems:  # (a folder with problems: the scan says so)
                # ('frud' (did you mean 'fraud'?)): the hint's own '; did you mean …?' made a list of several
                # read "'a'; did you mean 'b'?, 'c'; …" and the sentence end in "?."
                typos.append(f"{brief(name)} ({hint.removeprefix('; ')})")
        if not typos:
            return
        more = f" and {len(typos) - _TYPOS_SHOWN} more" if len(typos) > _TYPOS_SHOWN else ""
        logger.warning(
            "control file %s (revision %d) has entries for models that are not in this repository, named like "
            "models served here: %s%s; nothing here follows them (if they are typos in a hand edit, correct "
            "them; entries for other hosts' models are fine)",
            self.control_path,
            control.revision,
            ", ".join(typos[:_TYPOS_SHOWN]),
            more,
        )

    def _watch(self) -> None:
        assert self.control_interval_s is not None
        while not self._stop.wait(self.control_interval_s):
            try:
                self.sync_control(retry_now=False)
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
        # (at once, before any comparison runs: a NaN bound failed no comparison, so it promoted any candidate)
        if max_abs_diff is not None:
            check_number("promote(): max_abs_diff", max_abs_diff, 0.0)
        if min_label_agreement is not None:
            check_number("promote(): min_label_agreement", min_label_agreement, 0.0, 1.0)
        check_int("promote(): min_samples", min_samples, 0)
        with self._registry.lock:
            routes = self._registry.serving(model, version)
            self._refuse_if_gone(model, version, self._registry.repository_versions(model))
            # Judged against the version whose answers it is compared with (a ``<model>.stable`` flag's, where
            # one is set: what requests get): judged against another, a candidate with the signature of the
            # version serving every request was refused as incompatible with one that served none.
            stable = routes.router.stable_version(routes.versions, routes.default.version, state=routes.state)
            # (its answers could not even be compared)
            self._refuse_if_incompatible(routes, model, version, stable, promoting=True)
            samples = list(routes.router.recent)
            report = PromotionReport(model=model, from_version=stable, to_version=version, samples=len(samples))
            if stable == version:  # comparing it with itself would always pass, and promote nothing
                reason = (
                    f"version {version} is the stable version already (the one candidates are compared with); "
                    "to compare it with another version, make that one stable first (switch())"
                )
                report = dataclasses.replace(report, samples=0, reason=reason)
                raise PromotionRefusedError(reason, report=report.to_dict(), model=model, version=version)
            if len(samples) < min_samples:
                reason = f"only {len(samples)} recent input(s) to compare on, {min_samples} required"
                report = dataclasses.replace(report, reason=reason)
                raise PromotionRefusedError(reason, report=report.to_dict(), model=model, version=version)
            diffs, mismatch = [], None
            agreeing = compared_rows = 0.0  # rows that agree, of the rows of samples that measured an agreement
            compared = failed = 0
            failure = ""
            for arrays in samples:
                try:
                    # (replays of inputs already served: drift counted them when they were served, and the
                    # candidate's windows, or its captured reference, are for its own traffic)
                    with replaying():
                        expected = self._predict(model, arrays, version=stable)
                except InvalidInputError:
                    # A request the stable version refuses (a client's index past a table: its caller was refused
                    # too) was sampled as it was routed; it says nothing of the candidate. Raised, that client's
                    # error failed every promote() for as long as the input stayed among the samples.
                    continue
                try:
                    with replaying():
                        got = self._predict(model, arrays, version=version)
                except InferenceError as exc:  # the candidate fails on a real input the stable version answers
                    failed += 1
                    failure = failure or str(exc)
                    continue
                compared += 1
                diff, agreement, differs = compare_outputs(expected, got)
                if diff is not None:
                    diffs.append(diff)
                if agreement is not None:  # over the rows: a 1-row sample weighs as one row, not as a batch
                    rows = max(_rows(arrays), 1)
                    agreeing += agreement * rows
                    compared_rows += rows
                mismatch = mismatch or differs
            report = dataclasses.replace(
                report,
                samples=compared,
                max_abs_diff=max(diffs) if diffs else None,
                label_agreement=agreeing / compared_rows if compared_rows else None,
                mismatch=mismatch,
            )
            if failed:
                # (raised as it was, the candidate's error read as the operator's own invalid input)
                reason = (
                    f"version {version} failed on {failed} of {compared + failed} recent input(s) the stable "
                    f"version answers: {failure}"
                )
                report = dataclasses.replace(report, reason=reason)
                logger.warning("model %r: promotion of version %s refused: %s", model, version, reason)
                raise PromotionRefusedError(reason, report=report.to_dict(), model=model, version=version)
            if compared < min_samples:
                reason = (
                    f"only {compared} recent input(s) the stable version answers to compare on, {min_samples} "
                    f"required ({len(samples) - compared} of {len(samples)} it refuses)"
                )
                report = dataclasses.replace(report, reason=reason)
                raise PromotionRefusedError(reason, report=report.to_dict(), model=model, version=version)
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
            self._change_control(model, lambda state: switched(state, version, current=stable), None)  # the fleet
            report = dataclasses.replace(report, reason="within bounds")
            logger.info("model %r: promoted version %s over %s (%s)", model, version, stable, report.to_dict())
        self._warn_if_a_flag_overrides(model, version)
        return report

    def _warn_if_a_flag_overrides(self, model: str, version: int) -> None:
        """Say so when ``version``, just made stable, is not what default traffic gets: a ``<model>.stable``
        flag that is set wins over the alias (docs/operations.md), and a switch or promotion was logged as done
        while every request stayed on the flag's version."""
        try:
            routes = self._registry.routes_of(model)
            serving = routes.router.stable_version(routes.versions, routes.default.version, state=routes.state)
        except Exception:  # (a version unloaded meanwhile, a provider that fails: nothing to say here)
            return
        if serving != version:
            logger.warning(
                "model %r: version %s is now the stable alias, but requests without a context get version %s: "
                "the %r flag is set and wins over the alias; change or clear the flag to move traffic",
                model,
                version,
                serving,
                routes.state.keys.stable,
            )

    def _warn_if_canary_flags_override(self, model: str, version: int, percent: float) -> None:
        """Say so when the ``<model>.canary.percent`` or ``<model>.canary.version`` flag, set, wins over what
        :meth:`set_canary` just set (as :meth:`_warn_if_a_flag_overrides` says of the stable flag): the canary
        was logged as set while requests kept the flag's share or version."""
        try:
            keys = self._registry.routes_of(model).state.keys
        except Exception:  # (unloaded meanwhile: nothing to say here)
            return
        flagged_percent = self._registry.flag_number(keys.canary_percent, percent)
        flagged_version = self._registry.flag_number(keys.canary_version, float(version))
        overriding = [
            key
            for key, flagged, wanted in (
                (keys.canary_percent, flagged_percent, percent),
                (keys.canary_version, flagged_version, float(version)),
            )
            if flagged != wanted
        ]
        if overriding:
            logger.warning(
                "model %r: the canary is now version %s at %g%%, but requests get version %g at %g%%: the %s "
                "flag%s set and win%s over what set_canary sets; change or clear the flag to move traffic",
                model,
                version,
                percent,
                flagged_version,
                flagged_percent,
                " and ".join(map(repr, overriding)),
                "s are" if len(overriding) > 1 else " is",
                "" if len(overriding) > 1 else "s",
            )

    def _warn_if_stopped_canary_flagged(self, model: str) -> None:
        """Say so when the ``<model>.canary.percent`` flag, set, wins over the canary :meth:`set_canary` just
        stopped: the canary was logged as stopped while requests kept the flag's share."""
        try:
            keys = self._registry.routes_of(model).state.keys
        except Exception:  # (unloaded meanwhile: nothing to say here)
            return
        flagged = self._registry.flag_number(keys.canary_percent, 0.0)
        if flagged:
            logger.warning(
                "model %r: the canary is now stopped, but the %r flag is set (%g%%) and wins over the control file "
                "for a canary strategy; change or clear the flag to move traffic",
                model,
                keys.canary_percent,
                flagged,
            )

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
        if length is not None and not (is_int(length) and length >= 1):  # (naming the model, as every error does)
            raise InvalidInputError(
                f"model {model!r}: interleave: length must be a whole number >= 1 (or None), got {shown(length)}",
                model=model,
            )
        routes = self._registry.routes_of(model)
        router = routes.router
        rankers = router.rankers(routes.versions, context, routes.state)
        if not rankers or len(rankers) != 2:  # (a rankers flag that cannot be used gives the configured ones)
            raise ConfigurationError(
                f"model {model!r}: interleaving needs two rankers: [rollout.interleaving] rankers = [A, B], or the "
                f"flag {routes.state.keys.rankers!r} set to two loaded versions (one it cannot use is shown in "
                "status()['models'][model]['rollout']['flags']['unusable_flags'])"
            )
        first = self._submit(model, inputs, version=rankers[0], context=context, timeout_s=timeout_s)
        second = self._submit(model, inputs, version=rankers[1], context=context, timeout_s=timeout_s)
        # Items are the rows of the inputs (as every input has them), and a ranker gives one score per item: any
        # other output is refused. A classifier's [P(class 0), P(class 1)] was ranked by its first column (the
        # verdict pointed the wrong way) and a scalar output raised numpy's TypeError.
        counts = set()
        for value in inputs.values() if isinstance(inputs, Mapping) else (inputs,):
            shape = getattr(value, "shape", None)
            if shape is not None and len(shape):
                counts.add(int(shape[0]))
            elif shape is None and isinstance(value, list | tuple):
                counts.add(len(value))
        items = counts.pop() if len(counts) == 1 else None
        scores = []
        for version, answer in zip(rankers, (first.result(), second.result()), strict=True):
            name = output or next(iter(answer))
            values = np.asarray(answer[name])
            shape = values.shape
            if (
                values.dtype.kind not in "biuf"
                or not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1))
                or (items is not None and shape[0] != items)
            ):
                chosen = "" if output else f" (the first; outputs: {', '.join(answer)})"
                raise InvalidInputError(
                    f"model {model!r}: interleave() ranks items by one score each, but output {name!r}{chosen} of "
                    f"version {version} is {values.dtype} of shape {list(shape)}"
                    + (f" for {items} items" if items is not None else "")
                    + ": pass output= naming an output of one number per item (shape [n] or [n, 1]), or export "
                    "the rankers with one (a classifier's probability of the relevant class alone)",
                    model=model,
                    version=version,
                )
            scores.append(values.astype(np.float64).reshape(-1))
        ranking_a = [int(i) for i in np.argsort(-scores[0], kind="stable")]
        ranking_b = [int(i) for i in np.argsort(-scores[1], kind="stable")]
        mixed = router.interleave(ranking_a, ranking_b, length)
        request_id = self._ids.next()
        router.remember_interleaving(request_id, mixed, rankers)
        return InterleavedRanking(
            request_id=request_id, model=model, rankers=(rankers[0], rankers[1]), order=mixed.order, teams=mixed.teams
        )

    def record_click(self, request_id: str, item: int, *, model: str | None = None) -> str | None:
        """See :meth:`Server.record_click`."""
        if not is_int(item):  # (int() would take True, "1" and 1.7 as items 1, 1 and 1, and fail on NaN)
            raise InvalidInputError(
                ("" if model is None else f"model {model!r}: ")
                + "record_click: item must be the index of a ranked item (an int from the ranking's order), "
                f"got {shown(item)}",
                model=model,
            )
        for name in [model] if model is not None else list(self._registry.routes):
            team = self._registry.routes_of(name).router.record_click(request_id, int(item))
            if team is not None:
                return team
        return None


class RolloutMethods:
    """The rollout methods of :class:`~inprocserve.Server` (it inherits them), each delegating to the
    server's :class:`Operations`; kept here so the server's module holds the request path."""

    _operations: Operations

    def record_outcome(
        self, request_id: str | None, reward: float, *, model: str | None = None, key: str | None = None
    ) -> str | None:
        """Attribute an outcome (a click, a conversion, a reward: any finite number) to the variant
        that served ``request_id`` — or, with ``model`` and ``key``, to the variant that targeting key is
        bucketed to. Returns the variant credited, or ``None`` if the request is unknown (or too old) or its
        outcome was recorded already: by request id, an outcome counts once, so a retried report cannot
        count twice (report one reward per request: 1.0 for a conversion, 0.0 for none).

        Outcomes feed the per-variant statistics in :meth:`status` and the bandit policies. Every routed
        request's variant is remembered (a stable version serving alone included), but not a ``default`` or
        ``pinned`` one's: those credit nothing.

        Raises:
            TypeError: ``reward`` is not a number (``True`` is not one), or neither a ``request_id`` nor
                ``model`` and ``key`` were given (``key`` without ``model`` credited nothing, silently), or
                ``key`` cannot be made text (its ``str()`` raises).
            ValueError: ``reward`` is not finite, or past the largest reward taken (``10**400`` too).
        """
        return self._operations.record_outcome(request_id, reward, model=model, key=key)

    def switch(self, model: str, version: int, *, actor: str | None = None, force: bool = False) -> None:
        """Blue/green: make ``version`` the stable version of ``model`` on every worker and host.

        The version is loaded and warmed up here first (a version that cannot load is never published);
        then, with a repository, the change is written to its control file, which every server on that
        repository follows within ``control_interval_s`` (see docs/operations.md, "Running a fleet").
        Without a repository it changes this process only. :meth:`rollback` returns to the previous one.

        A version whose signature would break the callers of the stable version (renamed, added or removed
        inputs, removed outputs, other dtypes, ranks or fixed sizes) is refused unless ``force=True``.

        Args:
            model: The model name.
            version: The version to serve.
            actor: Who made the change, recorded in the control file (default: user@host:pid).
            force: Switch even to a version whose signature is incompatible with the stable one.

        Raises:
            ModelNotFoundError: the version is not in the repository (even one still loaded here whose folder
                was removed: a worker that starts could not load it), or not loaded, without one.
            ModelLoadError: it cannot be loaded.
            ConfigurationError: the control file is invalid or cannot be written.
            PromotionRefusedError: the signatures are incompatible and ``force`` is not set; the differences
                are in the message and in ``report["incompatibilities"]``.
        """
        self._operations.switch(model, version, actor=actor, force=force)

    def rollback(self, model: str, *, actor: str | None = None) -> int:
        """Switch ``model`` back to the stable version it had before the last :meth:`switch`; returns it.

        After the first switch, that is the version that answered default traffic before it (``config.toml``'s
        ``rollout.stable``, or the latest version). The target is read inside the control file's lock, so a
        switch written meanwhile by another worker or host is the one undone. Rolling back twice returns to
        where you started (the version rolled back from becomes the previous). It is never refused for an
        incompatible signature: it returns to a version that served before.

        Raises:
            NothingToRollBackError: no switch of this model was recorded, so there is nothing to roll back to
                (a ``ValueError`` too); nothing was changed.
            ModelNotFoundError, ModelLoadError, ConfigurationError: as :meth:`switch`.
        """
        return self._operations.rollback(model, actor=actor)

    def set_canary(self, model: str, version: int | None, *, percent: float, actor: str | None = None) -> int | None:
        """Send ``percent`` % of targeting keys (sticky buckets) to ``version``, on every worker and host.

        It replaces the model's configured strategy while set; ``version=None`` (pass ``percent=0`` with it)
        stops the canary: the one set here is removed, and a configured canary (``config.toml``'s
        ``[rollout.canary]``) sends no one to its version either until :meth:`resume_configured_canary` or
        another ``set_canary`` (A/B, bandit and shadows are left as configured: :meth:`kill` stops those).
        Raising the percentage keeps the keys already in the canary.

        Raises:
            ValueError: ``percent`` is not in 0..100, or ``version`` is not a positive int, or it is ``None``
                with a ``percent`` other than 0.
            ModelNotFoundError, ModelLoadError, ConfigurationError: as :meth:`switch`.

        Returns:
            For a stop, the configured canary's version it recorded (the stop holds while the configuration
            names that version); ``None`` where it recorded none (no configured canary, or a ``config.toml`` on
            disk that no longer names the loaded one), and when a canary is set.
        """
        return self._operations.set_canary(model, version, percent=percent, actor=actor)

    def resume_configured_canary(self, model: str, *, actor: str | None = None) -> None:
        """Hand ``model``'s canary back to its configuration, on every worker and host: a canary set with
        :meth:`set_canary` is removed, and one stopped with ``set_canary(model, None, percent=0)`` runs again
        as ``config.toml``'s ``[rollout.canary]`` (or ``ModelConfig(rollout=...)``) sets it.

        Raises:
            ModelNotFoundError: unknown model. ConfigurationError: the control file cannot be written.
        """
        self._operations.resume_configured_canary(model, actor=actor)

    def kill(self, model: str, *, actor: str | None = None) -> None:
        """Kill switch: every request to ``model`` gets its stable version, on every worker and host, whatever
        the configured strategy or a flag provider says (no canary, A/B, bandit or shadow). Undo with
        :meth:`resume`.

        Raises:
            ModelNotFoundError: unknown model. ConfigurationError: the control file cannot be written.
        """
        self._operations.kill(model, actor=actor)

    def resume(self, model: str, *, actor: str | None = None) -> None:
        """Turn the kill switch of ``model`` off again (see :meth:`kill`)."""
        self._operations.resume(model, actor=actor)

    def reload(self, *, actor: str | None = None) -> list[str]:
        """Re-scan the repository on every worker and host (a fleet-wide :meth:`refresh`); returns the
        problems this process found. The others follow within ``control_interval_s`` plus their load time.
        """
        return self._operations.reload(actor=actor)

    def sync_control(self) -> int:
        """Follow the control file now (the watcher thread calls this every ``control_interval_s``);
        returns the revision this server follows. Any document that differs from the one followed is
        followed (a revision that went down, e.g. a deleted file, with a warning). An invalid file is
        logged and shown in :meth:`status`, and the last valid revision stays in force. A part of the
        revision that could not be applied (a version missing or failing to load, an invalid
        ``config.toml``, a failed re-scan) is shown in status as ``control.error`` and retried here at once;
        the watcher retries it with a back-off (1 s, doubling up to 60 s)."""
        return self._operations.sync_control()

    def promote(
        self,
        model: str,
        version: int,
        *,
        max_abs_diff: float | None = None,
        min_label_agreement: float | None = None,
        min_samples: int = 1,
    ) -> PromotionReport:
        """Guarded promotion: make ``version`` stable only if it agrees with the serving version.

        The candidate is loaded and warmed up on recent real inputs (kept per model, see
        ``RolloutConfig.capture_inputs``); its answers are compared with the stable version's, and the
        switch happens only if the largest absolute difference and the label agreement (the argmax of class
        scores; labels, text or integers, by equality) are within the given bounds. A bound that nothing
        could be measured against refuses (``min_label_agreement`` for a model answering neither class scores
        nor labels), and so does a candidate whose answers differ in form whatever the bounds (an output
        missing, with other axes, text against numbers). Returns the comparison report, a
        :class:`PromotionReport` (which also reads like the dict of earlier releases: ``report["from"]``,
        ``report["reason"]``; ``report.to_dict()`` gives it).

        Raises:
            ModelNotFoundError, ModelLoadError, ConfigurationError: as :meth:`switch`; ConfigurationError
                also for a bound that is not a finite number in its range (NaN, a string, ``True``: a NaN
                bound passed every comparison), before anything runs.
            PromotionRefusedError: the candidate's signature is incompatible with the stable version's
                (use :meth:`switch` with ``force=True``), its answers differ in form, the comparison failed a
                bound (or had nothing to measure it on), or there were fewer than ``min_samples`` recent
                inputs; the report is on the exception, and nothing was switched.
        """
        return self._operations.promote(
            model, version, max_abs_diff=max_abs_diff, min_label_agreement=min_label_agreement, min_samples=min_samples
        )

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
        """Team-draft interleaving of two rankers (``RolloutConfig.interleaving``, or the ``<model>.rankers``
        flag): both score the same items (one row per item), and the result list mixes their rankings with
        per-item attribution. Report clicks with :meth:`record_click`; wins per pair of rankers are in
        :meth:`status`.

        Raises:
            InvalidInputError: the inputs do not fit the model, or the scored ``output`` (the first one by
                default) is not one number per item (``[n]`` or ``[n, 1]``: a classifier's two columns of
                probabilities are refused, not ranked by the first).
        """
        return self._operations.interleave(
            model, inputs, output=output, length=length, context=context, timeout_s=timeout_s
        )

    def record_click(self, request_id: str, item: int, *, model: str | None = None) -> str | None:
        """Credit a click on ``item`` (its index in the ranked inputs) of an :meth:`interleave` result to
        the ranker that contributed it. Each item of a result counts once: a second click on it (a double
        click, a client's retry) returns its ranker again and changes nothing. Returns ``"A"``, ``"B"``, or
        ``None`` if the result is unknown or ``item`` was not in it."""
        return self._operations.record_click(request_id, item, model=model)


def _rows(arrays: Mapping[str, Any]) -> int:
    """The rows of a sampled request (the first axis of its inputs; 1 for a scalar input)."""
    for array in arrays.values():
        shape = getattr(array, "shape", ())
        return int(shape[0]) if shape else 1
    return 1


def _key_text(key: object) -> str:
    """``record_outcome``'s targeting key as the text it is bucketed by, as a request's key is made text; a key
    that cannot be made text (an object whose ``str()`` raises, an int of 5000 digits) is the caller's mistake,
    said as one, not whatever its ``str()`` raised."""
    # (as targeting_key_of refuses a request's; an array of values too, whose text "[1 2]" no request's key
    # was made: a 0-d array, or numpy's scalar, is one value, made text as it)
    if type(key) is not str and (isinstance(key, _COLLECTIONS) or (isinstance(key, np.ndarray) and key.ndim > 0)):
        raise TypeError(
            f"record_outcome(key=...) must be a string or an int, as the requests' targeting keys are; got a "
            f"{type(key).__name__}, whose text is no stable id (no request with it as its key was routed)"
        )
    try:
        return str(key)
    except Exception as exc:  # (anything a caller's object raises)
        raise TypeError(
            f"record_outcome(key=...) must be a string or an int, as the requests' targeting keys are: its "
            f"str() raised {type(exc).__name__}"
        ) from None
