"""Model lifecycle: load, warm up, gate, publish, retire and refresh model versions, and the hot-reload poller.

The registry owns what the server serves: the loaded versions, the routing snapshot of each model (its
versions and its immutable routing state, replaced whole on every change, read without a lock by the request
path), failures, the control state it follows, and the lifecycle lock that serializes every change. The
server's request path only reads :attr:`Registry.routes`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISDIR as stat_is_dir
from stat import S_ISREG as stat_is_file

from . import _fork
from ._backend import raised_by_signal_handler
from ._brief import brief
from ._close_match import close_match
from ._config import CanaryConfig, ModelConfig, RolloutConfig, load_model_config
from ._control import CONTROL_FILENAME, Control, ControlFile, ModelControl, default_actor
from ._errors import (
    ConfigurationError,
    ControlFileUnavailableError,
    ModelLoadError,
    ModelNotFoundError,
    ServerClosedError,
    failure_text,
)
from ._integrity import HashingStopped, external_data_locations, hashing_stops_on
from ._log_limit import LogLimit, since
from ._model import ModelVersion
from ._ort_rules import OPTIMIZED_GRAPH
from ._remote_model import RemoteModel
from ._repository import (
    CONFIG_FILENAME,
    MODEL_FILENAME,
    REMOTE_FILENAME,
    ModelSource,
    RepositoryScan,
    is_remote,
    scan_repository,
    validate_model_name,
)
from ._request import Finisher
from ._rollout import FlagReader, Router, RoutingState
from ._signature import incompatibilities
from ._telemetry import METRICS, add_safely

__all__ = ["Registry", "Routes"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Routes:
    """An immutable snapshot of one model: its servable versions and the routing state that routes to them;
    replaced whole, read without a lock. A request reads it once, and is routed by that state to those
    versions (a version a new state makes stable, loaded by the same change, is among them)."""

    default: ModelVersion
    versions: Mapping[int, ModelVersion]
    router: Router
    """Where decisions are made, and experiment statistics kept (the same object across publishes)."""
    state: RoutingState


# (path, mtime_ns, size, inode, ctime_ns or 0) of each file a load reads (see _stamp)
_Stamp = tuple[tuple[str, int, int, int, int], ...]
_CONTROL_RETRY_CAP_S = 60.0  # longest wait between two tries of a control revision that does not apply
_PUBLISHED_KEPT = 4096
"""Names and (name, version) pairs ever published that are kept for the metrics of refusals (see
``Registry.published``): past it, only those published now are (a version per release, for weeks)."""
_RELOAD_DRAIN_S = 30.0
"""How long a refresh waits (holding the lifecycle lock) for a version it stopped serving to drain; past it, the
rest of the drain goes on in a thread of its own (see Registry._drain): with ``pool.max_run_s`` off, one stuck run
stopped hot reload of every model. 30 s, as ``Server.close`` waits per version by default."""
_LOAD_ATTEMPTS = 3  # loads of a version whose files keep changing while it loads, before it waits for a refresh
_WRITTEN_BY_LOADS = OPTIMIZED_GRAPH  # files a load itself writes (the optimized-graph cache): not changes
_PIN_LOCK_WAIT_S = 0.5
"""How long naming a held-back model's stable version waits for the control file's lock (see
Registry._pin_holds): held longer (an operator's write), it is tried again at a later refresh or read of the
control file, without waiting (taken only if free) until a name is written."""
_HEAL_FIRST_S = 1.0  # a worker started past a failed repository check, without polling: first retry (see start_healer)
_HEAL_CAP_S = 60.0  # ... and the longest wait between two of its retries
_EMPTY_CONFIG_SETTLE_S = 2.0  # how long a serving model's config.toml stays empty before it is applied (see
# Registry._config_being_written: an in-place write truncates it first)


class _Removed(Exception):  # a signal inside the registry, never raised to a caller
    """A version's file that a refresh's scan found was removed before (or while) it loaded.

    A refresh scans the whole repository first, then syncs model after model, each possibly loading for
    seconds: a version deleted or moved away meanwhile (``rm -r models/fraud/2`` while another model loads)
    is no failed load and no change to reload. It was reported as both ("changed on disk ... reloading it",
    then an error "model file ... does not exist", the ``failed`` counter, ``refresh()``'s problems, and
    ``Server(strict=True)`` refused to start); it is skipped now, and the next scan drops it."""


@dataclass(slots=True)
class _Failure:
    error: str
    path: Path  # the version's file (or remote.toml), which the error may quote: status hides it like a loaded one's
    # what the failed load read, with its change times (_stamp(access=True)), to retry only when it changes;
    # None: retry on every refresh
    stamp: _Stamp | None
    # A retry after its files changed failed too: they may be still being written (a slow copy in place). It
    # is tried again only once they stop changing, seen the same at two refreshes in a row (``seen``: what
    # the last refresh saw), not at every poll of the copy (an error, a failed-load count and a read of the
    # partial file each time).
    changing: bool = False
    seen: _Stamp | None = None
    # The configuration it failed with: another one (``load(name, config=...)``, which no file records) is a
    # change too. Without it a version that failed on a wrong config= was not tried on the right one.
    config: ModelConfig | None = None


class Registry:
    """Every model's versions and their lifecycle. Thread-safe: changes hold :attr:`lock` (a control revision
    that needs no load only :attr:`routing`, see :meth:`adopt_at_once`); readers of :attr:`routes` take a
    snapshot without either.

    It starts and stops one thread, the poller (``poll_interval_s``), which calls :meth:`refresh`.
    """

    def __init__(
        self,
        repository: Path | None,
        *,
        defaults: ModelConfig,
        models: Mapping[str, ModelConfig],
        deliver: Finisher,
        flags: FlagReader | None,
        shadow_gate: Callable[[str, tuple[int, ...]], bool],
        poll_interval_s: float | None,
        clock: Callable[[], float],
        follow_symlinks: bool,
    ) -> None:
        self.repository = repository
        self._defaults = defaults
        self._code_configs = dict(models)
        self._deliver = deliver
        self._flags = flags
        self._shadow_gate = shadow_gate
        self._clock = clock
        self._follow_symlinks = follow_symlinks
        self.routes: dict[str, Routes] = {}
        # every name routed here (metrics keep them after an unload), and every (name, version): the oldest of
        # them forgotten past _PUBLISHED_KEPT (see _forget_published)
        self.published: set[str] = set()
        self.published_versions: set[tuple[str, int]] = set()
        self._published_limit = _PUBLISHED_KEPT  # (see _forget_published)
        self.loaded: dict[str, dict[int, ModelVersion]] = {}
        self.failures: dict[str, dict[int, _Failure]] = {}
        self.config_errors: dict[str, str] = {}
        # keys of a model's config.toml this release ignores (a newer release's, or a typo), as logged: status's
        # config_warning; each set is logged once, when it first appears (see load_model_config)
        self.config_warnings: dict[str, str] = {}
        self._explicit: set[str] = set()  # loaded with load(path=...): refresh() leaves them alone
        self._unloaded: set[str] = set()  # unloaded by hand: refresh() does not bring them back
        self._unloaded_versions: dict[str, set[int]] = {}  # versions unloaded by hand, likewise
        # Versions unloaded by hand, then loaded again for a control revision or an operation that names them
        # (a pinned request loads nothing: see _why_not): served while they are named, never the policy's choice
        # (a canary on one took the default).
        self._kept_from_policy: dict[str, set[int]] = {}
        # versions loaded by hand (load(name, version=N)): served whatever the policy, until unloaded by hand
        self._loaded_by_hand: dict[str, set[int]] = {}
        # Versions loaded by path (load(path=...)) of a model handed back to the repository by load(name, version=N):
        # served as loaded (never replaced by the repository's file of that number, nor retired by its policy) until
        # unloaded by hand or load(name) hands the whole model to the policy
        self._by_path: dict[str, set[int]] = {}
        self._shadowed: dict[str, set[int]] = {}  # releases numbered as one of those, as warned (see _sync_model)
        # Versions held back from the default by the compatibility gate, and why (per model).
        self.incompatible: dict[str, dict[int, list[str]]] = {}
        # Holds with no stable version named anywhere (model: the version serving, the one held back): the
        # version serving is named the stable version in the control file after the refresh that found the hold,
        # outside the locks (see _pin_holds); and the holds whose write failed, as warned (once each)
        self._holds_to_pin: dict[str, tuple[int, int]] = {}
        self._pin_warned: set[tuple[str, int, int]] = set()
        self._pinning = threading.RLock()  # held by the thread running _pin_holds (see pin_holds)
        # The next try waits for the control file's lock whatever failed before (a forked worker's first: it
        # contends with its siblings, each finding the master's hold or advance at once; see after_fork_in_child)
        self._pin_waits = False
        # Whether the gate's write tried last waited for the lock, and whether the failure of this try did (see
        # _gate_file: a failure without waiting does not fail a new hold's first try)
        self._gate_waited = False
        self._failed_waiting = False
        # Whether a wait of this try ran out though its write was found done (a sibling's slow write of it): the
        # rest of the try takes the lock only if free, as after a failure (one wait per try; see _write_gate_name)
        self._gate_ran_out = False
        # The last failed name of each hold or advance (model: "hold" and the hold's versions, or "advance" and
        # the advance's, and why): status's fleet_hold_error while that hold or advance is still to be written
        self._pin_errors: dict[str, tuple[tuple[str, int, int], str]] = {}
        # A stable version the gate named (ModelControl.stable_by_gate) follows the gate: (model: that version,
        # the newer one the gate found compatible with it and made the default) is written the stable version
        # after the refresh (see _advance_gate_names); and the advances whose write failed, as warned (once each)
        self._to_advance: dict[str, tuple[int, int]] = {}
        self._advance_warned: set[tuple[str, int, int]] = set()
        # A stable version the gate named that is gone from disk (model: that version): the name is removed from the
        # control file after the refresh (see _unname_gone); and the removals whose write failed, as warned (once each)
        self._to_unname: dict[str, int] = {}
        self._unname_warned: set[tuple[str, int, int]] = set()
        # The gate's named version whose folder the poller's refreshes found gone, and when first (model: version,
        # clock time): its removal is queued once it has stayed gone for _EMPTY_CONFIG_SETTLE_S (see _sync_model)
        self._named_folder_gone: dict[str, tuple[int, float]] = {}
        # The gate's named version whose folder has no model file (or is gone): its entries as last seen (names,
        # sizes, modification times; None, no folder) and since when (model: version, entries, clock time)
        self._named_folder_seen: dict[str, tuple[int, tuple[tuple[str, int, int], ...] | None, float]] = {}
        # Follows at once a revision the gate wrote (read under the file's lock once the control generation was
        # the int): set by the server's operations, as a writer of this process follows what it wrote (a switch
        # on this server). Unset (or a revision that needs a load), it is followed at the next read of the file.
        self.follow_written: Callable[[Control, int], object] | None = None
        # A control revision's re-scan runs (refresh() under the lifecycle lock): it names no stable version
        self._rescanning = False
        self.routers: dict[str, Router] = {}  # kept while a version is loaded: statistics survive reloads
        self._latest: dict[str, int] = {}  # the highest version the policy selects (the default stable)
        self.control = Control()  # the fleet-wide rollout state this process follows
        # Bumped (under the routing lock) each time adopt() or adopt_at_once() replaces it: a follower that read
        # the file before takes the routing lock, and sees whether another revision was followed since its read
        self.control_generation = 0
        self.routing_refusal: str | None = None  # why no request is routed (see refuse_routing)
        # What adopt() could not apply yet (retried by retry_control), and why (key: model, or "" for the reload)
        self._control_pending: set[str] = set()
        self._control_reload_pending = False
        self._control_problems: dict[str, str] = {}
        self._control_warned: set[tuple[str, int, str]] = set()  # previous-stable problems logged once
        # Versions the control state serves that left the repository while loaded: they keep serving (see _gone)
        self._gone: dict[str, set[int]] = {}
        self._control_retry_at = 0.0  # retry_control() waits for this clock time (backing off)
        self._control_backoff_s = 0.0  # (both changed under the lifecycle lock only)
        # A revision followed at once left a part to apply: retry_control() tries it now, from a fresh back-off
        # (set under the routing lock: a try in progress under the lifecycle lock cannot overwrite it)
        self._control_retry_soon = False
        # The files of the versions a pending part waits for, as the last try saw them (``tried``) and as the
        # watcher's last interval saw them (``seen``): once they changed since the try and then stayed the same
        # for an interval (the version arrived, and is not being copied any more), or a poll loaded it, the
        # part is tried again at once, not after the back-off (up to 60 s). See _awaited_files.
        self._control_awaited_tried: dict[tuple[str, int], tuple[_Stamp | None, ...]] = {}
        self._control_awaited_seen: dict[tuple[str, int], tuple[_Stamp | None, ...]] | None = None
        self._policy_problems: dict[str, str] = {}  # models whose version policy selects nothing (logged once)
        # Each model folder's version numbers as its last sync found them: what not_found() says of a name or
        # version that is not served but is on disk (a model folder with no valid version folder, a version
        # its policy does not select), where "unknown model" sent people looking for a typo.
        self._on_disk: dict[str, frozenset[int]] = {}
        self._reference_problems: dict[str, str] = {}  # models whose rollout names absent versions (logged once)
        # The last load failure of each version (its error, the files it read, and whether it was logged): a
        # remote version whose server is down is tried again at every refresh (every poll), and is logged once,
        # not each time.
        self._load_errors: dict[tuple[str, int], tuple[str, _Stamp | None, bool]] = {}
        # A version copied in place (cp, kubectl cp, tar) that stalls for longer than an interval is tried half-made
        # again at each stall, by a poll or by the control watcher, and each failure has other files: it logged an
        # ERROR per stall (one a second, for a slow copy). A version's failures are logged at most once a minute
        # (key: model and version) until it loads; status shows the latest one. A failure held back so is logged
        # at the first refresh that finds it still there a minute after the last line (see _log_held_failure):
        # the last failure of a copy is often the one that stays (a broken file, not a half-made one).
        self._load_log = LogLimit(clock=clock)
        # A failure whose error differs from the version's last one is news (a checksum mismatch fixed, and now a
        # file the checksum file lists is missing): logged at once, though the limit above holds it, but at most
        # once a minute (key: model and version) besides the limit's own lines, so a copy whose every stall fails
        # with another error logs at most two lines a minute, not one a stall
        self._load_news = LogLimit(clock=clock)
        self._scan_problems: set[str] = set()  # the last scan's problems (each logged once while it lasts)
        # a repository folder that cannot be scanned (gone, unmounted) fails every poll: logged when it starts,
        # then once a minute, and once when it can be scanned again
        self._scan_failures = LogLimit()
        # a bad config.toml is logged when it appears (again, if it flaps, at most once a minute), and once when
        # it is repaired (key: the model)
        self._config_log = LogLimit()
        # models whose config_errors entry has been logged: one back within a minute of its line is only
        # counted, and is logged once that minute is up if it stays (the log's last word was 'valid again')
        self._config_error_logged: set[str] = set()
        # an empty config.toml (being written?): its inode, mtime and ctime, and when it was first seen so
        self._empty_configs: dict[str, tuple[tuple[int, int, int] | None, float]] = {}
        self._config_files: set[str] = set()  # models whose settings in force were read from a config.toml
        # a loaded version whose folder has lost its model file (being replaced?): when that was first seen so
        self._missing_files: dict[tuple[str, int], float] = {}
        self._unmatched: set[str] = set()  # names of models= that matched no model (warned about once)
        self._load_configs: dict[str, ModelConfig] = {}  # load(name, config=...) of a repository model: kept
        # The rollout of the configuration in force of each model served from the repository (set by each sync):
        # what it is routed by, not its default version's copy's, which keeps its old configuration when its
        # reload on the new one fails (the file's version policy applied, and its rollout did not)
        self._rollouts: dict[str, RolloutConfig] = {}
        self.lock = threading.RLock()
        # The routing lock: held only to change what requests see (the loaded versions, the routing snapshots,
        # the control state), never while a version loads, warms up or drains, so that the control watcher can
        # apply a revision that needs no load (a kill switch) while a hot reload holds the lifecycle lock.
        # Taken after the lifecycle lock, never before it.
        self.routing = threading.RLock()
        self.closed = False
        self._poll_interval_s = poll_interval_s
        self._poller: threading.Thread | None = None
        self._stop = threading.Event()
        # Versions a refresh left to drain on threads of their own (see _drain), or that unload() drains without the
        # lifecycle lock, each with the thread that drains it: close() closes those still draining once its wait is
        # over, as it does a loaded version (see close_draining)
        self._drainers: dict[ModelVersion, threading.Thread] = {}
        # While unload() holds the lifecycle lock: what it retires, drained once it releases the lock (see unload)
        self._deferred: list[tuple[str, ModelVersion]] | None = None
        # What load(name, config=...) built before it changed anything (see _stage), taken by the sync's loads
        self._staged: dict[tuple[str, int], tuple[ModelVersion, _Stamp | None]] = {}

    def load(
        self,
        name: str,
        *,
        path: str | Path | None = None,
        version: int | None = None,
        config: ModelConfig | None = None,
        remote: RemoteModel | None = None,
        by_hand: bool = False,
        with_the_rest: bool = False,
    ) -> int:
        """See :meth:`Server.load` (the lifecycle lock serializes it with every other change). ``by_hand``:
        called by :meth:`Server.load`, not for a control revision or an operation (which load a version
        for as long as they name it, and leave the policy to the next refresh). ``with_the_rest``: ``version``
        of a model served from the repository is loaded with what its policy and control state serve, and
        published with them (see :meth:`serving`)."""
        validate_model_name(name)
        if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
            raise ValueError(f"version must be a positive int, got {version!r}")
        if remote is not None and not isinstance(remote, RemoteModel):
            raise TypeError(f"remote must be an inprocserve.RemoteModel, got {type(remote).__name__}")
        if remote is not None and path is not None:
            raise ValueError(f"model {name!r}: pass path= (a local file) or remote= (a model server), not both")
        with self.lock:
            self.check_open()
            if path is None and remote is None:
                source = self.find_in_repository(name)
                if version is not None and version not in source.versions:
                    raise ModelNotFoundError(
                        f"model {name!r} has no version {version} in the repository{self._kept_out(source, version)}",
                        model=name,
                        version=version,
                    )
                kept_config = self._load_configs.get(name)
                effective = self.config_for(name, source, config)
                # (after the refusals above, which change nothing: a load of a version not there forgot the hand
                # unload, and the next refresh served the model taken out of service)
                marks = self._marks(name)  # (put back if the load fails: it changes nothing, hand unloads included)
                self._named_by_load(name, version, by_hand=by_hand)
                if version is not None:
                    try:
                        self._load_version(name, version, source.versions[version], effective)
                    except BaseException:  # a failed load changes nothing: its config= in force, the next
                        # refresh or control revision loaded every version on the config the call failed with
                        self._undo_failed_load(name, marks, kept_config)
                        raise
                    if by_hand:  # (the repository's copy of it replaced the path's, if any: refreshed as any other)
                        self._by_path.get(name, set()).discard(version)
                    if by_hand and name in self._explicit:  # handed back to the repository (after the load: a
                        # failed one changes nothing): a model loaded by path before stayed out of every refresh, so
                        # its new versions were never served. What the path loaded keeps serving beside it.
                        self._explicit.discard(name)
                        self._by_path[name] = {
                            n for n, copy in self.loaded.get(name, {}).items() if copy.path != source.versions.get(n)
                        }
                    if with_the_rest and not by_hand and name not in self._explicit:
                        for number in self._control_versions(name):  # (loaded by the sync, as follow() would)
                            self._named_again(name, number)
                        for problem in self._sync_model(name, source, effective, named={version}):
                            logger.warning("model %r: loading it to serve version %s: %s", name, version, problem)
                        return version
                    # (a model loaded by path, for a pinned request or an operation, has no policy to apply:
                    # its other versions are no repository's)
                    if not by_hand or name in self._explicit:
                        self.publish(name)
                        return version
                    # Kept whatever the policy (a later refresh unloaded one it does not select, and pinned
                    # requests to it failed), and the policy applied at once, as unload(name, version) does:
                    # version N loaded again after a hand unload takes the default now, not at the next poll.
                    # One the policy selects is left to it: marked, a bad release loaded again once fixed
                    # stayed loaded beside every later version, for the life of the process.
                    unloaded = self._unloaded_versions.get(name, set())
                    if version not in effective.version_policy.select(
                        [v for v in source.versions if v not in unloaded]
                    ):
                        self._loaded_by_hand.setdefault(name, set()).add(version)
                    for problem in self._sync_model(name, source, effective):
                        if problem != self._reference_problems.get(name):  # (logged once, as load(name) leaves it)
                            logger.warning("model %r: after loading version %s: %s", name, version, problem)
                    return version
                # Handed back to the repository: a model loaded by path before is refreshed again (its versions
                # loaded by path are replaced or retired by the policy below), where it stayed out of every refresh.
                self._explicit.discard(name)
                if config is not None:  # all or nothing: a version that fails on it changes nothing that serves
                    try:
                        self._stage(name, source, effective)
                    except BaseException:
                        self._undo_failed_load(name, marks, kept_config)
                        raise
                # (a rollout naming an absent version is logged: the model loads, and load() says so by returning)
                try:
                    synced = self._sync_model(name, source, effective)
                finally:
                    self._unstage(name)
                if self._stop.is_set() and _stopping(name) in synced:  # (close() stopped it: see _build)
                    raise self._stopped_load(name, None)
                problems = [p for p in synced if p != self._reference_problems.get(name)]
                routes = self.routes.get(name)
                if problems and (routes is not None or name not in self._policy_problems):
                    raise ModelLoadError("; ".join(problems), model=name)
                if routes is None:
                    raise ModelNotFoundError(
                        f"model {name!r}: its version_policy selects none of the versions in the repository "
                        f"({', '.join(map(str, sorted(source.versions))) or 'none'})",
                        model=name,
                    )
                return max(routes.versions)
            asked = version
            if version is None:
                version = self._next_version(name)
            if path is None:
                file = _remote_path(name, version)
            else:
                file = Path(path)
                if file.is_dir():  # a version folder: its model.onnx, or its remote.toml
                    remote_file = file / REMOTE_FILENAME
                    has_remote = remote_file.is_file() and not (file / MODEL_FILENAME).exists()
                    file = remote_file if has_remote else file / MODEL_FILENAME
            code = self._code_configs.get(name)
            effective = config or (self._defaults if code is None else self._defaults.overlaid(code))
            # A load that fails changes nothing: marked before it, a repository model was left out of every
            # refresh and control revision for good (new versions never served, removed ones never retired),
            # or one unloaded by hand came back at the next refresh.
            marked = name not in self._explicit
            self._explicit.add(name)
            rollout = self._rollouts.pop(name, None)  # (routed by its versions' own configuration from now on)
            try:
                self._load_version(name, version, file, effective, remote=remote)
            except BaseException:
                if marked:
                    self._explicit.discard(name)
                if rollout is not None:
                    self._rollouts[name] = rollout
                raise
            self._named_by_load(name, asked, by_hand=by_hand)
            loaded = list(self.loaded[name])
            self._latest[name] = self._gate(name, max(loaded), loaded, effective.rollout)
            self.publish(name)
            return version

    def _named_by_load(self, name: str, version: int | None, *, by_hand: bool) -> None:
        """What :meth:`load` of ``name`` (``version``) undoes of earlier hand unloads and loads."""
        self._unloaded.discard(name)
        if version is None:  # the policy's choice again: versions unloaded or loaded by hand are forgotten
            self._unloaded_versions.pop(name, None)
            self._kept_from_policy.pop(name, None)
            self._loaded_by_hand.pop(name, None)
            self._by_path.pop(name, None)
        elif by_hand:
            self._unloaded_versions.get(name, set()).discard(version)
            self._kept_from_policy.get(name, set()).discard(version)
        else:
            self._named_again(name, version)

    def _marks(self, name: str) -> tuple[bool, bool, list[set[int] | None]]:
        """What :meth:`load` changes of the marks hand loads and unloads left on ``name`` before it loads anything
        (see :meth:`_named_by_load`), for :meth:`_restore_marks`: a load that failed had forgotten a hand unload,
        and the next refresh served again the model (or version) taken out of service."""
        hand = (self._unloaded_versions, self._kept_from_policy, self._loaded_by_hand, self._by_path)
        return name in self._unloaded, name in self._explicit, [None if name not in d else set(d[name]) for d in hand]

    def _undo_failed_load(
        self, name: str, marks: tuple[bool, bool, list[set[int] | None]], kept_config: ModelConfig | None
    ) -> None:
        """What a failed :meth:`load` put back: the marks it cleared (``marks``, from :meth:`_marks`) and the
        configuration in force before it (``kept_config``; ``None``: none was passed before)."""
        self._restore_marks(name, marks)
        if kept_config is None:
            self._load_configs.pop(name, None)
        else:
            self._load_configs[name] = kept_config

    def _restore_marks(self, name: str, marks: tuple[bool, bool, list[set[int] | None]]) -> None:
        unloaded, explicit, kept = marks
        for flag, marked in ((unloaded, self._unloaded), (explicit, self._explicit)):
            if flag:
                marked.add(name)
            else:
                marked.discard(name)
        for versions, hand in zip(
            kept, (self._unloaded_versions, self._kept_from_policy, self._loaded_by_hand, self._by_path), strict=True
        ):
            if versions is None:
                hand.pop(name, None)
            else:
                hand[name] = versions

    def _named_again(self, name: str, version: int) -> None:
        """``version`` is loaded because a control revision or an operation names it: one unloaded by hand
        serves as named, never as the policy's choice, until loaded by hand again."""
        unloaded_by_hand = self._unloaded_versions.get(name, set())
        if version in unloaded_by_hand:
            unloaded_by_hand.discard(version)
            self._kept_from_policy.setdefault(name, set()).add(version)

    def unload(self, name: str, version: int | None = None, *, timeout_s: float | None = None) -> None:
        """See :meth:`Server.unload` (the lifecycle lock serializes it with every other change). What it takes out
        of service is drained once the lock is released: waited for under it (up to ``timeout_s``, without limit
        by default), one stuck run stopped every refresh, poll and load of every model behind the unload."""
        with self.lock:
            outer, self._deferred = self._deferred, []  # (an unload within an unload: each drains its own)
            try:
                self._unload(name, version, timeout_s=timeout_s)
            finally:
                retiring, self._deferred = self._deferred, outer
                current = threading.current_thread()
                for _name, each in retiring:  # (close() closes them once its own wait is over: see close_draining)
                    self._drainers[each] = current
        for model, each in retiring:
            self._unload_drained(model, each, timeout_s=timeout_s)

    def _unload(self, name: str, version: int | None, *, timeout_s: float | None) -> None:
        with self.lock:
            loaded = self.loaded.get(name, {})
            if not loaded or (version is not None and version not in loaded):
                raise ModelNotFoundError(f"model {name!r} version {version} is not loaded", model=name, version=version)
            if version is None:
                self._unloaded.add(name)
                self._loaded_by_hand.pop(name, None)
                self._by_path.pop(name, None)
                self._shadowed.pop(name, None)
                self._load_configs.pop(name, None)  # a later load(name) reads the repository's configuration
                self._rollouts.pop(name, None)
                self._forget_gate(name)
                self.retire(name, list(loaded), timeout_s=timeout_s)
                return
            self._unloaded_versions.setdefault(name, set()).add(version)
            self._kept_from_policy.get(name, set()).discard(version)
            self._loaded_by_hand.get(name, set()).discard(version)
            self._by_path.get(name, set()).discard(version)
            source: ModelSource | None = None
            config: ModelConfig | None = None
            if self.repository is not None and name not in self._explicit:
                try:
                    scan = scan_repository(self.repository, follow_symlinks=self._follow_symlinks, only=name)
                    source = scan.models.get(name)
                    config = self.config_for(name, source, None) if source is not None else None
                except ConfigurationError as exc:
                    logger.error("model %r: no fallback for the unloaded version %s: %s", name, version, exc)
                    source = None
            if source is None or config is None:
                self.retire(name, [version], timeout_s=timeout_s)
                return
            problems = self._sync_model(name, source, config, timeout_s=timeout_s, bounded=False)
            for problem in problems:
                logger.warning("model %r: after unloading version %s: %s", name, version, problem)
            if version in self.loaded.get(name, {}):  # no other version to fall back to
                self.retire(name, [version], timeout_s=timeout_s)

    def refresh(self, *, settle_empty_configs: bool = False) -> list[str]:
        """See :meth:`Server.refresh` (the lifecycle lock serializes it with every other change).

        ``settle_empty_configs`` (the poller's refreshes): a serving model's empty ``config.toml`` is applied
        only once it has stayed empty a while (see :meth:`_config_being_written`). A refresh asked for
        (:meth:`Server.refresh`, a fleet-wide ``reload``) applies the file as it is: its caller wrote it, and a
        reload that only started the wait left every worker on the old settings for good.

        A version the compatibility gate holds back with no stable version named is held by the whole fleet
        once the refresh is over: see :meth:`_pin_holds`."""
        problems = self._refresh(settle_empty_configs=settle_empty_configs)
        self.pin_holds()
        return problems

    def pin_holds(self) -> None:
        """Name the stable version of each model whose gate holds a version back with none named (see
        :meth:`_pin_holds`), unless there is none or a control revision's re-scan runs: call it without the
        registry's locks held (after a refresh, or after following a control revision that re-scanned)."""
        if (
            (self._holds_to_pin or self._to_advance or self._to_unname)
            and not self._rescanning
            and self.repository is not None
        ):
            # One thread names at a time (the watcher's read, a poll's refresh): once a try failed, the lock is
            # taken only if free, and one thread's try found it held by the other's and failed, the fleet
            # unpinned until a later read. Waited for: a try is short, or its one wait for the lock (0.5 s).
            with self._pinning:
                # The advance first: with the gate's version gone in the poll that found a compatible one (a
                # snapshot synced in one go), both are due; removed first, the name was not there to advance, and
                # until the next poll the fleet was unnamed (a worker that started then served the held version).
                # Advanced, the name is no longer on the version gone, and its removal writes nothing.
                # (one try, one wait for the file's lock: the first failure fails the rest, of every kind)
                failure: ConfigurationError | OSError | None = None
                self._gate_ran_out = False
                if self._to_advance:
                    failure = self._advance_gate_names(failure)
                if self._to_unname:
                    failure = self._unname_gone(failure)
                if self._holds_to_pin:
                    self._pin_holds(failure)
                self._pin_waits = False  # (a forked worker's first try of each, the name and its advance, waited)

    def _refresh(self, *, settle_empty_configs: bool) -> list[str]:
        if self.repository is None:
            return []
        with self.lock:
            if self.closed:
                return []
            try:
                scan = scan_repository(self.repository, follow_symlinks=self._follow_symlinks)
            except ConfigurationError as exc:
                skipped = self._scan_failures.due()
                if skipped is not None:
                    logger.error(
                        "cannot scan the model repository: %s; the loaded models keep serving%s", exc, since(skipped)
                    )
                return [str(exc)]
            if self._scan_failures.ended():
                logger.info("the model repository %s can be scanned again", self.repository)
            problems = list(scan.problems)
            for name, source in scan.models.items():
                if self._stop.is_set():  # the process is exiting (see stop_poller): load no more models
                    return problems
                if name in self._explicit or name in self._unloaded:
                    continue
                if not settle_empty_configs:
                    self._empty_configs.pop(name, None)
                elif self._config_being_written(name, source):
                    continue  # (the settings in force keep serving until the next poll reads the file)
                try:
                    config = self.config_for(name, source, None)
                except Exception as exc:  # a bad config.toml (or a bug reading one) stops this model alone
                    if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit as it read
                        raise  # the file: its own exception, not the model's bad config (unservable until fixed)
                    error = str(exc) if isinstance(exc, ConfigurationError) else f"{type(exc).__name__}: {exc}"
                    previous = self.config_errors.get(name)
                    if previous != error or name not in self._config_error_logged:
                        # a new problem (logged, unless it is the last one back within a minute), or not logged yet
                        if previous is not None and previous != error:
                            self._config_log.forget(name)  # another problem than the one logged: logged at once
                        skipped = self._config_log.due(name)
                        if skipped is not None:
                            logger.error("model %r not (re)loaded: %s%s", name, error, since(skipped))
                            self._config_error_logged.add(name)
                        else:
                            self._config_error_logged.discard(name)
                    self.config_errors[name] = error
                    problems.append(error)
                    continue
                # A repaired config.toml is said once (its error was logged; without this line the log's last
                # word on the model would stay "not (re)loaded" while it serves the new settings)
                if self.config_errors.pop(name, None) is not None and self._config_log.ended(name):
                    logger.info("model %r: its configuration is valid again; it is applied", name)
                if source.config_path is None:
                    self._config_files.discard(name)
                else:
                    self._config_files.add(name)
                source = self._with_files_being_written(name, source, settle=settle_empty_configs)
                try:
                    problems.extend(self._sync_model(name, source, config, settle=settle_empty_configs))
                except Exception as exc:  # an unexpected failure in one model must not keep the others stale
                    if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit: its own error
                        raise
                    logger.exception("model %r: refresh failed", name)
                    problems.append(f"model {name!r}: refresh failed: {type(exc).__name__}: {exc}")
            for name in list(self.loaded):
                if name not in scan.models and name not in self._explicit and name not in scan.unreadable:
                    logger.info("model %r is gone from the repository; unloading it", name)
                    self.retire(name, list(self.loaded[name]), bounded=True)
            for name in list(self.failures):
                if name not in scan.models and name not in self._explicit and name not in scan.unreadable:
                    del self.failures[name]
            for name in [name for name in self.config_warnings if name not in scan.models]:
                del self.config_warnings[name]
            for name in list(self.config_errors):  # a model folder removed while its config.toml was bad: status
                if name not in scan.models and name not in scan.unreadable:  # listed it, with that error, for good
                    del self.config_errors[name]
                    self._config_log.forget(name)
                    self._config_error_logged.discard(name)
            for name in [name for name in self._empty_configs if name not in scan.models]:
                del self._empty_configs[name]
            for key in [key for key in self._missing_files if key[0] not in scan.models]:
                del self._missing_files[key]
            for key in [key for key in self._load_errors if key[1] not in self.failures.get(key[0], {})]:
                del self._load_errors[key]  # (a version gone from disk, or whose failure was forgotten)
                self._load_log.forget(key)
                self._load_news.forget(key)
            for hand in (self._unloaded_versions, self._kept_from_policy, self._loaded_by_hand, self._by_path):
                for name in list(hand):
                    if name not in scan.models and name not in scan.unreadable:  # (unreadable: not gone)
                        del hand[name]
            self._forget_gone_models(scan)
            for problem in scan.problems:
                if problem not in self._scan_problems:  # logged once: a poll every second would repeat it
                    logger.warning("model repository: %s", problem)
            self._scan_problems = set(scan.problems)
            self._warn_unmatched_configs(scan)
            return problems

    def _config_being_written(self, name: str, source: ModelSource) -> bool:
        """Whether ``name``'s ``config.toml`` is empty, and not yet for long, while the model serves: written in
        place (an editor's save, ``cat new > config.toml``), a file is empty between its truncation and the
        write; read then, it meant the defaults (an unpinned stable version, the "latest" policy), and for a
        poll the model reloaded every version on them, answered by the wrong version and unloaded the ones
        the policy no longer selected. So with a file gone that the settings in force were read from: an
        editor's save that moves the file to its backup, then writes a new one (vim's), or ``rm`` then ``cp``,
        left no config.toml for a moment, and a poll then did the same. Either is applied once seen unchanged for
        ``_EMPTY_CONFIG_SETTLE_S`` (by a later poll): an empty file meant is rare. Only the poller's refreshes
        wait so: a refresh asked for applies the file as it is (see :meth:`refresh`)."""
        path = source.config_path
        try:
            info = None if path is None else path.stat()
        except OSError:  # (removed since the scan)
            info = None
        if name not in self.loaded or (info is None and name not in self._config_files) or (info and info.st_size):
            self._empty_configs.pop(name, None)
            return False
        seen = None if info is None else (info.st_ino, info.st_mtime_ns, info.st_ctime_ns)
        first = self._empty_configs.get(name)
        if first is not None and first[0] == seen:
            return self._clock() - first[1] < _EMPTY_CONFIG_SETTLE_S
        self._empty_configs[name] = (seen, self._clock())
        return True

    def _with_files_being_written(self, name: str, source: ModelSource, *, settle: bool) -> ModelSource:
        """``source`` with each loaded version whose folder is there without its model file, and not yet for
        long, kept as loaded (the poller's refreshes only: ``settle``). A file replaced by deleting it and
        writing it again (``tar -x`` over the release, ``rm`` then ``cp``) is missing for a moment: a poll then
        retired the version, and the model went back to the version before it (loaded again for it), or served
        nothing, until the next poll loaded it again. It is retired once its file has stayed missing for
        ``_EMPTY_CONFIG_SETTLE_S``, as an emptied ``config.toml`` is applied (see :meth:`_config_being_written`)."""
        loaded = self.loaded.get(name, {})
        for key in [key for key in self._missing_files if key[0] == name and (not settle or key[1] not in loaded)]:
            del self._missing_files[key]
        if not settle:
            return source
        kept: dict[int, Path] = {}
        for number, version in loaded.items():
            folder = source.folder / str(number)
            if number in source.versions or version.path.parent != folder or not folder.is_dir():
                self._missing_files.pop((name, number), None)
                continue
            first = self._missing_files.setdefault((name, number), self._clock())
            if self._clock() - first < _EMPTY_CONFIG_SETTLE_S:
                kept[number] = version.path
        return dataclasses.replace(source, versions={**source.versions, **kept}) if kept else source

    def _warn_unmatched_configs(self, scan: RepositoryScan) -> None:
        """Warn once about each name of ``models=`` that matches no model (a typo leaves the real one on its
        other settings, silently): it still applies to a model of that name loaded later."""
        for name in self._code_configs:
            if name in scan.models or name in scan.unreadable or name in self.loaded or name in self._unmatched:
                continue
            self._unmatched.add(name)
            logger.warning(
                "models= names %r, which is not in the model repository (its models: %s); its settings apply "
                "only if a model of that name is loaded later",
                name,
                ", ".join(sorted(scan.models)) or "none",
            )

    def _sync_model(
        self,
        name: str,
        source: ModelSource,
        config: ModelConfig,
        *,
        timeout_s: float | None = None,
        named: frozenset[int] | set[int] = frozenset(),
        bounded: bool = True,
        settle: bool = False,
    ) -> list[str]:
        """Make the loaded versions of ``name`` match its version policy and its files; the lifecycle lock is
        held. ``named``: versions kept loaded besides (an operation's, before its control revision names them).
        ``settle``: a poller's refresh (files gone for a moment are given a while, see :meth:`refresh`).

        A version that fails to load is skipped (until its file changes): the policy is applied again to
        the rest, so a broken new version leaves the working ones serving. A loaded version whose files or
        configuration changed is loaded again and swapped in; if that fails, the loaded one keeps serving.
        """
        problems: list[str] = []
        self._on_disk[name] = frozenset(source.versions)
        # The gate's name of a version gone from disk holds nothing: a worker that starts cannot load it, and serves
        # the newest version while the running ones serve it from memory. Removed after the refresh (see
        # _unname_gone); an operator's stable version gone from disk stays named (see _gone_but_served). Not with no
        # version on disk at all (a release copied in again, its folders removed first): no worker serves another
        # one then, and the name, removed, was gone for good once the copy was back (the fleet on the newest).
        # Nor, in the poller's refreshes (``settle``), before its folder has stayed gone for _EMPTY_CONFIG_SETTLE_S:
        # a folder removed and copied again (rm -rf then cp -r, an rsync that recreates it) is gone for one scan, and
        # the name, removed then, was gone for good once the folder was back (a worker started later served the
        # incompatible newest). A refresh asked for takes the repository as it is (see _with_files_being_written).
        # Its folder there without its model file is gone too, once it has stayed so for _EMPTY_CONFIG_SETTLE_S,
        # whichever refresh finds it (from when the poller first found the file missing): never at once, as it is
        # being written again (rm then cp, tar -x), and a worker that started meanwhile removed the name for good;
        # kept for good, it held nothing (the version retired as the loader retires one, a worker that starts cannot
        # load it and served the newest, running workers served it from memory: the split the name prevents).
        # Whose entries change is being written (rsync, aws s3 sync and gsutil write the model file under a temporary
        # name and rename it at the end: the folder has none for as long as the copy takes): the clock starts again
        # at each change, so the name is removed once the folder has stayed without its file, unchanged, for
        # _EMPTY_CONFIG_SETTLE_S (removed 2 s after the folder went away, mid-copy, every worker went to the held
        # version for good). Followed from the first refresh that finds the file missing, while a poll still keeps
        # a loaded version as it was (see _with_files_being_written).
        state = self.control.models.get(name)
        gone = state.stable if state is not None and state.gate_named else None
        folder = source.folder / str(gone)
        no_file = gone is not None and name not in self._explicit and _no_version_file(folder)
        changed = False
        if no_file and gone is not None:
            entries = _folder_entries(folder)
            seen = self._named_folder_seen.get(name)
            changed = seen is None or seen[:2] != (gone, entries)
            if changed:
                self._named_folder_seen[name] = (gone, entries, self._clock())
        else:
            self._named_folder_seen.pop(name, None)
        if no_file and gone not in source.versions and source.versions:
            assert gone is not None
            emptied = os.path.lexists(folder)
            first = self._named_folder_gone.get(name)
            if first is None or first[0] != gone:
                since = self._missing_files.get((name, gone), self._clock()) if emptied else self._clock()
                first = self._named_folder_gone[name] = (gone, since)
            unchanged_since = max(first[1], self._named_folder_seen[name][2])
            if (not settle and not emptied) or (
                not changed
                and (self._to_unname.get(name) == gone or self._clock() - unchanged_since >= _EMPTY_CONFIG_SETTLE_S)
            ):
                self._to_unname[name] = gone
            else:
                self._to_unname.pop(name, None)
        else:
            self._named_folder_gone.pop(name, None)
            self._to_unname.pop(name, None)
        failures = self.failures.setdefault(name, {})
        retried: set[int] = set()  # failed versions tried again because their files changed
        for number, failure in list(failures.items()):  # forget failures of files or configs that changed
            path = source.versions.get(number)
            now = None if path is None else _stamp(path, access=True)
            same_config = failure.config is None or not _configs_differ(failure.config, config)
            if path is not None and now == failure.stamp and same_config:
                self._log_held_failure(name, number)
                continue
            if now is not None and failure.changing and now != failure.seen and same_config:  # still changing
                failure.seen = now
                continue
            del failures[number]
            retried.add(number)
        problems.extend(self._absent_references(name, source, config))
        router = self.routers.get(name)
        unloaded = self._unloaded_versions.get(name, set())
        by_path = self._by_path.get(name, set())  # (kept as the path loaded them)
        shadowed = self._shadowed_releases(name, source, by_path)
        removed: set[int] = set()  # versions of the scan whose files are gone since (see _Removed)
        for number, current in list(self.loaded.get(name, {}).items()):
            if self._stop.is_set():  # the process is exiting (see stop_poller): load nothing more
                return [*problems, _stopping(name)]
            path = source.versions.get(number)
            if path is None or number in failures or number in unloaded or number in by_path:
                continue
            stamp = _stamp(path)
            if stamp is None:  # removed since the scan (see _Removed): no change to load, the next scan retires it
                continue
            if not self._changed(current, path, config, stamp=stamp):
                continue
            logger.info("model %r version %s changed on disk or in its configuration; reloading it", name, number)
            try:
                self._load_version(name, number, path, config, scanned=True)
            except _Removed:
                continue
            except ServerClosedError:  # (stopped by close(), as the check above would have)
                return [*problems, _stopping(name)]
            except ModelLoadError as exc:
                self._mark_changing(name, number, retried)
                problems.append(
                    f"{_load_problem(name, number, path, exc)} (version {number} as loaded before keeps serving)"
                )
        while True:
            # A failed reload of a loaded version leaves it usable: the loaded one keeps serving.
            current_versions = self.loaded.get(name, {})
            usable = [
                v
                for v in source.versions
                if (v not in failures or v in current_versions)
                and v not in unloaded
                and v not in removed
                and v not in shadowed
            ]
            kept_out = self._kept_from_policy.get(name, set())
            selectable = [v for v in usable if v not in kept_out] if kept_out else usable
            selected = config.version_policy.select(selectable)
            # Versions the rollout names (stable alias, canary, arms, shadows) are served whatever the policy.
            extra = (
                config.rollout.referenced_versions
                | self._loaded_by_hand.get(name, set())
                | self._control_versions(name)
                | ({router.state.alias} if router and router.state.alias else set())
                | named
            )
            wanted = sorted(set(selected) | {v for v in extra if v in usable})
            missing = [v for v in wanted if v not in self.loaded.get(name, {})]
            if not missing:
                break
            for number in missing:
                if self._stop.is_set():  # the process is exiting (see stop_poller): load nothing more
                    return [*problems, _stopping(name)]
                try:
                    self._load_version(name, number, source.versions[number], config, scanned=True)
                except _Removed:
                    removed.add(number)
                except ServerClosedError:  # (stopped by close(), as the check above would have)
                    return [*problems, _stopping(name)]
                except ModelLoadError as exc:
                    self._mark_changing(name, number, retried)
                    problems.append(_load_problem(name, number, source.versions[number], exc))
        if not failures:
            self.failures.pop(name, None)
        if not wanted:
            loaded_now = list(self.loaded.get(name, {}))
            if not source.versions and loaded_now:  # every version folder is gone: stop serving it
                logger.info("model %r has no version folder left in the repository; unloading it", name)
                self.retire(name, loaded_now, timeout_s=timeout_s, bounded=bounded)
            elif usable:  # a policy that selects nothing (a typo?) never unloads what serves
                # (and with nothing loaded yet, at start-up, the model serves nothing: that is said too, or
                # it vanished without a word, strict=True passed and /ready answered 200)
                keeps = _keep_serving(loaded_now) if loaded_now else "the model serves nothing (ModelNotFoundError)"
                problem = (
                    f"model {name!r}: its version_policy selects none of the versions in the repository "
                    f"({', '.join(map(str, sorted(source.versions)))}); {keeps}"
                )
                problems.append(_said_once(self._policy_problems, name, problem))
            return problems
        self._policy_problems.pop(name, None)
        latest = max(selected) if selected else max(wanted)
        # (a version kept from the policy answers too; but with the policy selecting none, a typo, the highest kept
        # is a hand load's, a canary's or an operation's: never one the gate's name follows fleet-wide)
        default = self._gate(name, latest, usable, config.rollout, selected=bool(selected), policy=selected)
        self._latest[name] = default
        # The control state is read again under the routing lock: the watcher may have just made a loaded
        # version stable (without the lifecycle lock), and it stays. A held-back default stays, whatever the
        # policy says.
        with self.routing:
            self._rollouts[name] = config.rollout
            loaded = set(self.loaded.get(name, {}))
            named = self._control_versions(name) & loaded & (set(source.versions) - unloaded)
            keep = set(wanted) | {default} | named | self._gone_but_served(name, source) | (by_path & loaded)
            held = self.incompatible.get(name, {})
            for number in [v for v in held if v not in keep]:
                held.pop(number, None)
            self.publish(name, keep=keep)
        stale = [v for v in loaded if v not in keep]
        if stale:  # (one the watcher makes served meanwhile, without the lifecycle lock, stays)
            self.retire(name, stale, timeout_s=timeout_s, spare_named=set(source.versions) - unloaded, bounded=bounded)
        return problems

    def _shadowed_releases(self, name: str, source: ModelSource, by_path: set[int]) -> set[int]:
        """The repository's versions of ``name`` numbered as a build loaded by path that keeps serving (see
        :attr:`_by_path`): the build keeps its number, and the release is not served (nor chosen by the policy)
        until it is loaded by name (``load(name, version=N)``, ``load(name)``), with a warning once.
        A build loaded by path takes the next number, which a later release may take too: the release was never
        loaded, without a word, and the policy made the build, as that version, the default."""
        loaded = self.loaded.get(name, {})
        shadowed = {n for n in by_path if n in source.versions and n in loaded and loaded[n].path != source.versions[n]}
        warned = self._shadowed.setdefault(name, set())
        for number in sorted(shadowed - warned):
            logger.warning(
                "model %r: version %s in the repository (%s) is not served: version %s here is a build loaded by "
                "path (%s), which keeps its number and serves requests pinned to it; serve the release with "
                "server.load(%r, version=%s) (in place of the build) or server.load(%r) (the whole model by its "
                "policy)",
                name,
                number,
                source.versions[number],
                number,
                loaded[number].path,
                name,
                number,
                name,
            )
        warned &= shadowed  # (said again if it comes back)
        warned |= shadowed
        if not warned:
            del self._shadowed[name]
        return shadowed

    def _forget_gone_models(self, scan: RepositoryScan) -> None:
        """Forget what is kept per model name of the models gone from the repository and no longer loaded (a
        repository that gains and loses a model folder per experiment added an entry to each of these per
        name, for the worker's life)."""
        for kept in (
            self.incompatible,
            self._latest,
            self._policy_problems,
            self._reference_problems,
            self._on_disk,
            self._rollouts,
            self._shadowed,
        ):
            for name in [name for name in kept if self._gone_for_good(name, scan)]:
                del kept[name]
        for name in {
            *self._holds_to_pin,
            *self._to_advance,
            *self._to_unname,
            *self._pin_errors,
            *self._named_folder_gone,
            *self._named_folder_seen,
        }:
            if self._gone_for_good(name, scan):
                self._forget_gate(name)
        for name in [name for name in self._config_files if self._gone_for_good(name, scan)]:
            self._config_files.discard(name)

    def _forget_gate(self, name: str) -> None:
        """Forget the gate's writes still due for ``name``, their failures and its holds (a model gone from the
        repository, or unloaded): kept, a failure of its name showed as a fleet not held for the worker's life, and
        made every later model's new hold take the control file's lock only if free (see :meth:`_pin_holds`); and a
        model unloaded and loaded again took its hold for one already reported (no warning, not counted)."""
        self.incompatible.pop(name, None)
        for due in (self._holds_to_pin, self._to_advance, self._to_unname, self._pin_errors, self._named_folder_gone):
            due.pop(name, None)
        self._named_folder_seen.pop(name, None)
        for warned in (self._pin_warned, self._advance_warned, self._unname_warned):
            warned.difference_update({key for key in warned if key[0] == name})

    def _gone_for_good(self, name: str, scan: RepositoryScan) -> bool:
        """Whether ``name`` is gone from the repository, and nothing of it is loaded or loaded by path."""
        return (
            name not in scan.models
            and name not in scan.unreadable
            and name not in self._explicit
            and name not in self.loaded
        )

    def _forget_published(self) -> None:
        """Keep only the names and versions published now (under the routing lock; changed in place: the
        server's telemetry holds the sets' ``__contains__``). Refusals of an older one are recorded as of a name
        or version never served."""
        self.published.intersection_update(self.routes)
        self.published_versions.intersection_update(
            (name, number) for name, routes in self.routes.items() for number in routes.versions
        )
        # (twice what is published now, at least: thousands of models loaded do not make every publish forget)
        self._published_limit = max(_PUBLISHED_KEPT, 2 * (len(self.published) + len(self.published_versions)))

    def _mark_changing(self, name: str, number: int, retried: set[int]) -> None:
        """After a failed load of ``number``: if it was a retry, its files changed since its last failure and
        it failed again, so they may be being written still (see :class:`_Failure`)."""
        failure = self.failures.get(name, {}).get(number)
        if failure is not None and number in retried and failure.stamp is not None:
            failure.changing, failure.seen = True, failure.stamp

    def _gone_but_served(self, name: str, source: ModelSource) -> set[int]:
        """The loaded versions the control state serves (its stable version, an active canary) that are gone
        from the repository: they keep serving from memory, as falling back to the latest version would undo
        the fleet's switch or kill switch; each is logged once and shown in status (``control.error``) while
        the state names it, as a worker that starts now cannot load it."""
        loaded = self.loaded.get(name, {})
        gone = {v for v in _served(self.control.models.get(name)) if v in loaded and v not in source.versions}
        # (not the gate's name of a version gone: removed, or advanced, after this refresh, with no one to page;
        # its failure is warned of and shown as the model's fleet_hold_error)
        # (nor one whose folder the poller found gone a moment ago: likely copied back at once, else removed)
        # Nor shown in status's control.error: it said "put it back, or switch the fleet" of a folder being copied
        # again, and `status` exited 1, failing a healthy deploy's check
        settling = self._named_folder_gone.get(name, (None, 0.0))[0]
        paged = gone - {self._to_unname.get(name), settling}
        for number in sorted(paged - self._gone.get(name, set())):
            logger.error(
                "model %r: version %s, which control revision %d serves, is gone from the repository; it keeps "
                "serving as loaded here, but a worker that starts now cannot load it: restore it, or switch "
                "the fleet to another version",
                name,
                number,
                self.control.revision,
            )
        if paged:
            self._gone[name] = paged
        else:
            self._gone.pop(name, None)
        return gone

    def _gate(
        self,
        name: str,
        candidate: int,
        available: list[int],
        rollout: RolloutConfig,
        *,
        selected: bool = True,
        policy: Collection[int] = (),
    ) -> int:
        """The compatibility gate: the version that becomes the default of ``name`` — ``candidate``, unless
        its signature would break callers of the version answering default traffic (the stable alias of the
        control file, else ``rollout.stable``, the configuration about to be published; else the current
        default) and that version is still ``available``. A held-back candidate stays loaded and servable
        with ``version=``; status, the log and a counter say why; the default is then the newest version of
        ``policy`` (the versions the policy selects) newer than that one and compatible with it, else that one.
        ``selected``: the version policy selects ``candidate`` (not so when it selects none and the highest
        version kept loaded besides stands in)."""
        held = self.incompatible.setdefault(name, {})
        advancing = self._to_advance.pop(name, None)
        routes = self.routes.get(name)
        loaded = self.loaded.get(name, {})
        # Before the first publish (start-up, a first load) the stable version named answers too: with no
        # routes, the candidate used to be the default unchecked, shown compatible while switch() refused it.
        alias = routes.state.alias if routes is not None else self._control_stable(name)
        pin = alias if alias is not None else rollout.stable
        baseline = loaded.get(pin) if pin is not None else None
        baseline = baseline or (routes.default if routes is not None else None)
        new = loaded.get(candidate)

        def stand_in() -> int | None:
            # Several versions new at once (a policy that selects several): the newest held back, the newest of the
            # others compatible with the version serving serves (2 of 2 and 3 dropped together, 3 incompatible: 2
            # never served, where dropped a poll apart it went live). Each is judged against the version serving;
            # from the next sync the held one is judged against the one that serves then, one step at a time.
            assert baseline is not None and baseline.signature is not None
            for number in sorted(policy, reverse=True) if selected else ():
                version = loaded.get(number)
                if (
                    baseline.version < number < candidate
                    and number in available
                    and version is not None
                    and version.signature is not None
                    and not incompatibilities(baseline.signature, version.signature)
                ):
                    return number
            return None

        # The version serving gone from disk (or unloaded) leaves the candidate nothing to be held against, unless
        # a version found with it is compatible with what the callers send (1 gone in the poll that brought 2 and
        # an incompatible 3, a snapshot synced in one go: 3 served, where a poll apart 2 did and 3 was held). Not
        # gone, for a hold: the gate's name whose folder the poller found gone a moment ago, kept while it settles
        # (see _sync_model): dropped for that poll, the hold was found again once the folder was copied back, its
        # warning logged and counted again, and status's default_version said the held version meanwhile. (A
        # compatible candidate waits for the folder as before: advanced meanwhile, it recorded no rollback target.)
        settling = self._named_folder_gone.get(name, (None, 0.0))[0]
        gone = baseline is not None and baseline.version not in available
        if (
            gone
            and baseline is not None
            and new is not None
            and baseline.version == settling != self._to_unname.get(name)
            and baseline.signature is not None
            and new.signature is not None
            and incompatibilities(baseline.signature, new.signature)
        ):
            gone = False
        if new is None or baseline is None or baseline.version == candidate or (gone and stand_in() is None):
            held.pop(candidate, None)
            self._holds_to_pin.pop(name, None)
            return candidate
        assert baseline.signature is not None and new.signature is not None
        problems = incompatibilities(baseline.signature, new.signature)
        state = self.control.models.get(name)

        def advance(newer: int) -> None:
            # A stable version the gate named follows the gate, fleet-wide, as the default does in one worker: the
            # newer version found compatible with it is named in its place (see _advance_gate_names). Not while
            # an operator's canary runs: advanced, the stable version took the canary's version (or one past it)
            # and all traffic went to what the operator meant for a share of it.
            if (
                state is not None
                and state.gate_named
                and not state.canary_active
                and selected
                and alias == state.stable == baseline.version < newer
                and rollout.stable is None
                and self.repository is not None
                and name not in self._explicit
            ):
                if advancing != (baseline.version, newer):  # a new advance (one that ended and came back too): as
                    # a new hold, its first try waits for the lock, and its failure is warned of again
                    error = self._pin_errors.get(name)
                    if error is not None and error[0][0] == "advance":
                        self._pin_errors.pop(name, None)
                    self._advance_warned = {key for key in self._advance_warned if key[0] != name}
                self._to_advance[name] = (baseline.version, newer)

        if not problems:
            held.pop(candidate, None)
            self._holds_to_pin.pop(name, None)
            advance(candidate)
            return candidate
        found = stand_in()
        serving = found if found is not None else baseline.version
        advance(serving)
        # With no stable version named anywhere (the control file names none, even one gone from disk or one
        # only a build loaded by path holds here; nor does the configuration), the hold lived in this worker's
        # memory only: a worker that started later (recycled, restarted, scaled up) had no version serving to
        # compare with and served the new one, and the fleet split. The version serving is named the stable
        # version in the control file (see _pin_holds), which every worker follows; a stable version named is
        # an operator's choice, never overridden. Recorded at each sync while the hold lasts: a failed write is
        # tried again at a later refresh.
        # The gate's name of a version gone from disk, to be removed after this refresh and not advanced (a canary
        # runs), names nothing: the version serving is named once it is removed, in the same refresh (named at the
        # next poll, a worker that started meanwhile served the held version)
        unnamed = (
            state is not None
            and state.stable is not None
            and self._to_unname.get(name) == state.stable
            and name not in self._to_advance
        )
        named = rollout.stable is not None or (state is not None and state.stable is not None and not unnamed)
        pinned = not named and self.repository is not None and name not in self._explicit
        if pinned:
            hold = (serving, candidate)
            if self._holds_to_pin.get(name) != hold:  # a new hold (one that ended and came back too): the failure
                # of an earlier one's name made its first try take the lock only if free, showed in status before
                # it was tried, and kept its own failure's warning silent
                self._pin_errors.pop(name, None)
                self._pin_warned = {key for key in self._pin_warned if key[0] != name}
            self._holds_to_pin[name] = hold
        else:
            self._holds_to_pin.pop(name, None)
        if held.get(candidate) != problems:
            held[candidate] = problems
            # With a stable version named that is not loaded (gone from disk: the baseline is then the version
            # serving by default), or none named and none to be named here (a model loaded by path), the
            # decision lives in this worker's memory only: a worker that starts now has no version serving to
            # compare with and takes the newest. Said here, where the operator learns of the hold, with how to
            # hold the fleet.
            fleet = ""
            # A control file that is a symbolic link (managed elsewhere: a ConfigMap) is written by neither the
            # gate nor switch() nor the CLI's switch: the warning said the version serving was named there and
            # offered `switch --force` to promote, which failed (see _hand_named, the same rule for FLEET NOT HELD)
            linked = self._control_linked()
            promote = "switch(..., force=True)"
            if linked:  # (a stable version the control file names outranks config.toml's)
                promote = (
                    f"[rollout] stable = {candidate} in its config.toml"
                    if alias is None
                    else f"stable = {candidate} in the fleet's control file where it is managed"
                )
            if pinned and linked:
                fleet = (
                    f" No stable version is named, and this worker cannot name version {serving} in the fleet's "
                    f"control file ({CONTROL_FILENAME}, a symbolic link): a worker that starts now serves version "
                    f"{candidate}. To hold every worker "
                    f"on version {serving}, name it ({self._hand_named(name, serving)}); to promote version "
                    f"{candidate} once its callers are ready, name that one there instead."
                )
            elif pinned:
                fleet = (
                    f" No stable version is named, so version {serving} is named the stable version in "
                    f"the fleet's control file ({CONTROL_FILENAME}, by this worker unless another names one first): "
                    f"every worker, running or starting later, serves it by default, and the name follows each later "
                    f"version compatible with it, until a switch names another. To promote version "
                    f"{candidate} once its callers are ready: `python -m inprocserve switch --force REPOSITORY "
                    f"{name} {candidate}`."
                )
            elif pin is None or baseline.version != pin:
                why = "No stable version is named" if pin is None else f"The stable version named, {pin}, is not loaded"
                switch = f"`python -m inprocserve switch --force REPOSITORY {name} {serving}`"
                # (a stable version the fleet's control file names outranks config.toml's: naming it there
                # held no worker that starts later)
                if alias is None:
                    way = (
                        self._hand_named(name, serving)
                        if self.repository is not None
                        else f"[rollout] stable = {serving} in the model's config.toml, or {switch}"
                    )
                elif linked:
                    way = (
                        f"stable = {serving} in the fleet's control file where it is managed, as it names version "
                        f"{pin}; it is a symbolic link, which `python -m inprocserve switch` does not write"
                    )
                else:
                    way = f"{switch}, as the fleet's control file names version {pin}"
                forced = "" if linked else f": forced, as workers started since may serve version {candidate}"
                fleet = (
                    f" {why}, so a worker that starts now serves version {candidate}: to hold every worker on "
                    f"version {serving}, name it ({way}{forced})."
                )
            # A stable version named and loaded keeps answering default traffic whatever the default is (an
            # operator's, config.toml's, or the gate's while a canary runs): the stand-in serves only where no
            # stable version answers, or the gate's name advances to it (the warning said it served, 1 did), or
            # the gate's name of a version gone is removed (the warning said 1, gone, kept serving: 3 did)
            stands_in = serving != baseline.version and (
                pin is None or baseline.version != pin or name in self._to_advance or unnamed
            )
            serves = (
                f"which served by default; version {serving}, compatible with it, serves by default"
                if stands_in
                else "which keeps serving by default"
            )
            logger.warning(
                "model %r version %s is not compatible with version %s, %s "
                "(pin version=%s, or %s to promote it): %s.%s",
                name,
                candidate,
                baseline.version,
                serves,
                candidate,
                promote,
                "; ".join(problems),
                fleet,
            )
            add_safely(
                METRICS.incompatible, 1, {"inprocserve.model.name": name, "inprocserve.model.version": candidate}
            )
        return serving

    def _pin_holds(self, failure: ConfigurationError | OSError | None = None) -> ConfigurationError | OSError | None:
        """Name, in the repository's control file, the version serving of each model whose compatibility gate
        holds a version back with no stable version named anywhere (see :meth:`_gate`), so that every worker,
        running or starting later, serves it by default: without it a worker that started after the new
        version appeared served it, and the same request got a 4xx from some workers and an answer from others.

        Run after a refresh, on its thread, outside the registry's locks (requests never wait for it), with a
        short wait for the file's lock. A compare-and-set: the stable version is written only if the file, read
        under its lock, still names none for the model (every worker of every host finds the same hold at its
        next poll: one writes, the others write nothing), and never over an operator's choice. A write that
        fails (a read-only repository, a control file that is a symbolic link, the lock held) is logged once,
        at warning, and tried again at a later refresh while the hold lasts."""
        assert self.repository is not None
        # Each write's file (see _gate_file): waits for the lock on a new hold's first try only. The first write
        # that fails fails the rest alike (one file, one lock): they are not tried this time, or each waited for a
        # stuck lock in turn (the watcher, which tries at each read, followed nothing meanwhile); but a failure of
        # a try without waiting does not fail a new hold's first. ``failure``: an advance's or removal's of this
        # try (see pin_holds), returned for the next kind.
        for name, (baseline, candidate) in list(self._holds_to_pin.items()):
            if self.closed or self._stop.is_set():
                return failure
            if not self._still_to_pin(name, baseline, candidate):
                continue

            def due(
                state: ModelControl | None, name: str = name, baseline: int = baseline, candidate: int = candidate
            ) -> bool:
                # Not over a stable version named meanwhile (another worker, an operator); and checked again under
                # the file's lock: the wait for it (up to 0.5 s) left time for an unload, a refresh that retired the
                # version, or close(), and the fleet was pinned to a version gone here
                return (state is None or state.stable is None) and self._still_to_pin(name, baseline, candidate)

            key = ("hold", baseline, candidate)
            try:
                control_file = self._gate_file(name, failure)
                control = self._write_gate_name(control_file, name, baseline, due=due)
            except (ConfigurationError, OSError) as exc:
                self._gate_failed(exc, failure)
                failure = exc
                way = self._hand_named(name, baseline)
                self._gate_write_failed(
                    name,
                    key,
                    self._pin_warned,
                    f"version {baseline} could not be named the stable version in the fleet's control file while "
                    f"version {candidate} is held back ({exc}); a worker that starts now serves version {candidate} "
                    f"until it is (tried again at the next refresh or read of the control file), or until version "
                    f"{baseline} is named by hand: {way}",
                    "model %r: version %s could not be named the stable version in the fleet's control file "
                    "while version %s is held back (%s); tried again at the next refresh or read of the control "
                    "file. Until then a worker that starts now serves version %s: to hold every worker on version "
                    "%s, name it (%s)",
                    (name, baseline, candidate, exc, candidate, baseline, way),
                )
                continue
            self._gate_written(name, key, self._holds_to_pin, self._pin_warned)
            if control is not None:
                logger.info(
                    "model %r: version %s is named the stable version in control file %s (revision %d, by %s), as "
                    "version %s is held back as not compatible with it: every worker, running or starting later, "
                    "serves version %s by default. To promote version %s once its callers are ready: `python -m "
                    "inprocserve switch --force REPOSITORY %s %s`",
                    name,
                    baseline,
                    control_file.path,
                    control.revision,
                    control.updated_by,
                    candidate,
                    baseline,
                    candidate,
                    name,
                    candidate,
                )
        return failure

    def _control_linked(self) -> bool:
        """Whether the repository's control file is a symbolic link (managed elsewhere: a ConfigMap), which the
        gate's writes, ``switch()`` and the CLI's switch refuse to write."""
        return self.repository is not None and os.path.islink(self.repository / CONTROL_FILENAME)

    def _hand_named(self, name: str, version: int) -> str:
        """How an operator names ``version`` the stable version of ``name`` by hand when the gate's name could not
        be written (see :meth:`_pin_holds`): in the model's config.toml, or with the CLI's switch; config.toml
        alone where the control file is a symbolic link (managed elsewhere: a ConfigMap), which the CLI refuses
        to write as the gate was refused (the switch offered there failed, exit status 2)."""
        assert self.repository is not None
        toml = f"[rollout] stable = {version} in the model's config.toml"
        if self._control_linked():
            return (
                f"{toml}; the control file is a symbolic link, managed elsewhere, which `python -m inprocserve "
                "switch` does not write either"
            )
        return f"{toml}, or `python -m inprocserve switch --force REPOSITORY {name} {version}`"

    def fleet_hold_error(self, name: str) -> str | None:
        """What status shows as ``name``'s ``fleet_hold_error``: why the version serving could not be named the
        stable version in the control file (see :meth:`_pin_holds`), or a compatible version in place of the one
        the gate named (see :meth:`_advance_gate_names`), while that hold or advance is still to be written (one
        gone, the error goes with it). Read without the locks, as status reads."""
        error = self._pin_errors.get(name)  # (one look)
        if error is None:
            return None
        (kind, *versions), why = error
        if kind == "gone":
            gone = self._to_unname.get(name)
            due = None if gone is None else (gone, gone)
        else:
            due = (self._holds_to_pin if kind == "hold" else self._to_advance).get(name)
        if due != tuple(versions):
            return None
        return why

    def _still_to_pin(self, name: str, baseline: int, candidate: int) -> bool:
        """Whether ``baseline`` is still to be named the stable version of ``name`` (see :meth:`_pin_holds`): the
        server open, ``candidate`` still held back against it, ``baseline`` still loaded (never a version that
        cannot load here), no stable version named by the configuration, and no gate's name of a version gone
        still to be removed first (its failed removal's error, shown in status, was cleared by the name found
        there). Read without the registry's locks (each table in one look)."""
        if self.closed or self._stop.is_set():
            return False
        rollout = self._rollouts.get(name)
        return (
            self._holds_to_pin.get(name) == (baseline, candidate)
            and name not in self._to_unname
            and candidate in self.incompatible.get(name, {})
            and baseline in self.loaded.get(name, {})
            and (rollout is None or rollout.stable is None)
        )

    def _advance_gate_names(
        self, failure: ConfigurationError | OSError | None = None
    ) -> ConfigurationError | OSError | None:
        """Name, in the control file, the version the gate made the default of each model whose stable version
        the gate named (``stable_by_gate``) when it is newer than that one and compatible with it (see
        :meth:`_gate`): good versions keep reaching every worker, running or starting later, while an
        incompatible one stays held (before, the gate's name froze the fleet's rollouts at the first
        incompatible version until an operator switched).

        Run where :meth:`_pin_holds` runs, as it runs: a compare-and-set (written only if the file, read under
        its lock, still names that version with the gate's mark: one worker of the fleet writes, an operator's
        choice is never overridden), a short wait for the file's lock (none while its last try's failure shows), a
        failure logged once and tried again at a later refresh or read of the control file."""
        assert self.repository is not None
        # (as in _pin_holds: a new advance's first try waits, even one that follows a failed advance whose version
        # was withdrawn, as every worker of the fleet finds it at once and they contend; a failure fails the rest)
        for name, (stable, newer) in list(self._to_advance.items()):
            if not self._still_to_advance(name, stable, newer):
                continue

            def due(state: ModelControl | None, name: str = name, stable: int = stable, newer: int = newer) -> bool:
                # (another worker advanced it, an operator wrote since, or a canary runs: left as it is)
                return (
                    state is not None
                    and _names_by_gate(state, stable)
                    and not state.canary_active
                    and self._still_to_advance(name, stable, newer)
                )

            key = ("advance", stable, newer)
            try:
                control_file = self._gate_file(name, failure)
                control = self._write_gate_name(control_file, name, newer, due=due, replaces=stable)
            except (ConfigurationError, OSError) as exc:
                self._gate_failed(exc, failure)
                failure = exc
                self._gate_write_failed(
                    name,
                    key,
                    self._advance_warned,
                    f"version {newer}, compatible with version {stable} that the compatibility gate named the stable "
                    f"version, could not be named in its place in the fleet's control file ({exc}): "
                    + (
                        f"version {stable} is gone from disk, so running workers serve it from memory and a worker "
                        f"that starts now serves the newest version"
                        if stable not in self._on_disk.get(name, frozenset())
                        else f"the fleet stays on version {stable} (a worker that starts now serves it)"
                    )
                    + " until it is, tried again at the next refresh or read of the control file",
                    "model %r: version %s, compatible with version %s that the compatibility gate named the "
                    "stable version, could not be named in its place in the fleet's control file (%s); tried "
                    "again at the next refresh or read of the control file",
                    (name, newer, stable, exc),
                )
                continue
            self._gate_written(name, key, self._to_advance, self._advance_warned)
            if control is not None:
                logger.info(
                    "model %r: version %s, compatible with version %s that the compatibility gate named the stable "
                    "version, is named the stable version in its place in control file %s (revision %d, by %s): "
                    "every worker serves it by default",
                    name,
                    newer,
                    stable,
                    control_file.path,
                    control.revision,
                    control.updated_by,
                )
        return failure

    def _unname_gone(self, failure: ConfigurationError | OSError | None = None) -> ConfigurationError | OSError | None:
        """Remove, from the control file, the stable version the gate named (``stable_by_gate``) of each model
        whose named version is gone from disk (see :meth:`_sync_model`): the name held the fleet on the version
        that was serving, and a worker that starts cannot load it any more, so running workers served it from
        memory while each new one served the newest version, the split the name exists to prevent, for good.
        Without the name every worker is back on its version policy and its own gate (the version gone is
        retired, the newest serves), as before the fleet hold. An operator's stable version is never removed.

        Run where :meth:`_pin_holds` runs, as it runs: a compare-and-set (only if the file, read under its lock,
        still names that version with the gate's mark: one worker of the fleet writes), a short wait for the
        file's lock (none while its last try's failure shows), a failure logged once, shown as the model's
        ``fleet_hold_error`` and tried again at a later refresh or read of the control file."""
        assert self.repository is not None
        # (as in _pin_holds: a removal's first try waits; a failure fails the rest)
        for name, gone in list(self._to_unname.items()):
            if self._to_unname.get(name) == gone and not _no_version_file(self.repository / name / str(gone)):
                # restored since the scan (see _still_to_unname): nothing to remove, no failure to show (status said
                # the fleet was not held until the next refresh, for good in a worker without a poller)
                self._to_unname.pop(name, None)
                self._gate_written(name, ("gone", gone, gone), {}, self._unname_warned)
                continue
            if not self._still_to_unname(name, gone):
                continue
            advance = self._to_advance.get(name)
            if advance is not None and self._still_to_advance(name, *advance):
                # Its advance is due too (1 gone in the poll that found 3 compatible with it), and failed in this
                # try (written, it is no longer due): the one to act on first, whose failure status shows (the
                # removal's shown in its place said a worker that starts serves the newest, held, version as if
                # that were the fix). Written later, it leaves the removal nothing to write.
                continue

            def due(state: ModelControl | None, name: str = name, gone: int = gone) -> bool:
                # (another worker removed it, or an operator wrote since: left as it is)
                return state is not None and _names_by_gate(state, gone) and self._still_to_unname(name, gone)

            key = ("gone", gone, gone)
            try:
                control_file = self._gate_file(name, failure)
                control = self._write_gate_name(control_file, name, None, due=due)
            except (ConfigurationError, OSError) as exc:
                self._gate_failed(exc, failure)
                failure = exc
                self._gate_write_failed(
                    name,
                    key,
                    self._unname_warned,
                    f"version {gone}, the stable version the compatibility gate named, is gone from disk, and the "
                    f"name could not be removed from the fleet's control file ({exc}): running workers serve it "
                    f"from memory and a worker that starts now serves the newest version until it is, tried again "
                    f"at the next refresh or read of the control file",
                    "model %r: version %s, the stable version the compatibility gate named, is gone from disk, and "
                    "the name could not be removed from the fleet's control file (%s); tried again at the next "
                    "refresh or read of the control file",
                    (name, gone, exc),
                )
                continue
            if self._to_unname.get(name) == gone:
                self._to_unname.pop(name, None)
            self._gate_written(name, key, {}, self._unname_warned)
            if control is not None:
                logger.info(
                    "model %r: version %s, the stable version the compatibility gate named, is gone from disk: the "
                    "name is removed from control file %s (revision %d, by %s), and every worker serves the "
                    "version its policy and its gate choose",
                    name,
                    gone,
                    control_file.path,
                    control.revision,
                    control.updated_by,
                )
        return failure

    def _still_to_unname(self, name: str, gone: int) -> bool:
        """Whether the gate's name of ``gone`` is still to be removed (see :meth:`_unname_gone`): the server open,
        and ``gone`` still named by the gate, not on disk at the last scan and its folder not back since (restored
        after a removal that failed: retried at a read of the control file, with no scan, the name of a version
        back on disk was removed). Read without the registry's locks."""
        if self.closed or self._stop.is_set():
            return False
        assert self.repository is not None
        return (
            self._to_unname.get(name) == gone
            and gone not in self._on_disk.get(name, frozenset())
            and _no_version_file(self.repository / name / str(gone))
        )

    def _gate_file(self, name: str, failure: ConfigurationError | OSError | None) -> ControlFile:
        """The control file for a gate's write of ``name`` in this try (see :meth:`pin_holds`), or raises the
        try's ``failure``. While the model's last failure shows (see :meth:`fleet_hold_error`), the lock is taken
        only if free: the watcher tries at each read of the file (every 0.5 s by default), and each wait for a
        stuck lock made a kill switch or a canary followed an interval late for as long as it stayed stuck; taken
        when free, it is still written at the first read after. A new hold, advance or removal's first try waits
        (every worker of the fleet finds it at once, and they contend), even where another model's failure shows:
        it failed at once with that one's, and a sibling's write of a moment left the fleet unheld. The try's first
        failure fails the rest (one file, one lock), unless it was a try that did not wait and this one waits; a
        wait that ran out though its write was found done makes the rest take the lock only if free."""
        assert self.repository is not None
        waits = (self._pin_waits or self.fleet_hold_error(name) is None) and not self._gate_ran_out
        if failure is not None and (self._failed_waiting or not waits):
            raise failure
        self._gate_waited = waits
        return ControlFile(self.repository, lock_timeout_s=_PIN_LOCK_WAIT_S if waits else 0.0)

    def _gate_failed(self, exc: ConfigurationError | OSError, failure: ConfigurationError | OSError | None) -> None:
        """Record whether ``exc``, a gate's write failure, came from a try that waited for the lock (not the try's
        earlier ``failure`` raised again): a later write's first try then fails with it (see :meth:`_gate_file`)."""
        if exc is not failure:
            self._failed_waiting = self._gate_waited

    def _write_gate_name(
        self,
        control_file: ControlFile,
        name: str,
        version: int | None,
        *,
        due: Callable[[ModelControl | None], bool],
        replaces: int | None = None,
    ) -> Control | None:
        """The one place the gate writes a stable version for the fleet (its name, :meth:`_pin_holds`, and its
        advance, :meth:`_advance_gate_names`) or removes it (:meth:`_unname_gone`, ``version`` None): ``version``
        as ``name``'s stable version, marked as the gate's (``stable_by_gate``; both keys cleared, the rest of
        the entry as it was, when None), then followed here at once. A compare-and-set: written only if ``due``
        holds of the model's entry in the file, read first without the lock (a file that needs nothing takes
        none) and again under it (one worker of the fleet writes; the others, and a registry that changed its
        mind while it waited for the lock, write nothing). Returns the revision written, or None if none was.
        Raises what :meth:`ControlFile.update` raises (the lock held, a file that is a symbolic link, a read-only
        folder), unless the file, read again, no longer needs the write (another worker wrote it meanwhile).

        ``replaces`` (an advance: the gate's version it names ``version`` in place of) is recorded as the model's
        ``previous_stable`` in the same write, as a switch records the version it replaces, so ``rollback`` goes
        back to it; not one gone from disk, nor one whose folder is there without its model file (a worker could
        not load it: the one recorded before stays)."""
        if not due(control_file.read().models.get(name)):
            return None
        written: list[Control] = []

        def name_it(control: Control) -> Control:
            state = control.models.get(name)
            if not due(state):
                return control
            written.append(control)
            named = dataclasses.replace(state or ModelControl(), stable=version, stable_by_gate=version)
            if (
                replaces is not None
                and replaces != version
                and not _no_version_file(control_file.folder / name / str(replaces))
            ):
                named = dataclasses.replace(named, previous_stable=replaces)
            return dataclasses.replace(control, models={**control.models, name: named})

        seen = self.control_generation
        try:
            control = control_file.update(name_it, actor=f"compatibility gate ({default_actor()})")
        except ControlFileUnavailableError:
            # The wait for the lock ran out (or the write failed), and the file may say it already: every worker
            # finds the same hold at once, and a sibling's write of it held the lock past this wait (its folder's
            # fsync on a slow share). The fleet is held, yet status said FLEET NOT HELD (a deploy check failed) and
            # the warning that a worker that starts serves the held version. A failure only while still due.
            try:
                still_due = due(control_file.read().models.get(name))
            except (ConfigurationError, OSError):
                still_due = True
            if still_due:
                raise
            self._gate_ran_out = self._gate_ran_out or self._gate_waited
            return None
        if not written:
            return None
        self._follow_written(control, seen)
        return control

    def _gate_write_failed(
        self,
        name: str,
        key: tuple[str, int, int],
        warned: set[tuple[str, int, int]],
        error: str,
        warning: str,
        args: tuple[object, ...],
    ) -> None:
        """A gate's write (``key``: ``"hold"`` or ``"advance"`` and its versions) failed: status's
        ``fleet_hold_error`` says ``error`` while it is still due (see :meth:`fleet_hold_error`), and ``warning``
        is logged once per name or advance (``warned``)."""
        self._pin_errors[name] = (key, error)
        if (name, key[1], key[2]) not in warned:
            warned.add((name, key[1], key[2]))
            logger.warning(warning, *args)

    def _gate_written(
        self, name: str, key: tuple[str, int, int], due: dict[str, tuple[int, int]], warned: set[tuple[str, int, int]]
    ) -> None:
        """A gate's write (``key``) is done (written, or no longer needed in the file): no longer due, its failure
        no longer shown, and a later failure of the model's warned again."""
        if due.get(name) == key[1:]:
            due.pop(name, None)
        warned.difference_update({warning for warning in warned if warning[0] == name})
        self._pin_errors.pop(name, None)

    def _follow_written(self, control: Control, seen: int) -> None:
        """Follow ``control``, the revision the gate just wrote (read under the file's lock once the control
        generation was ``seen``), at once: the worker that wrote an advance served the version it replaced until
        its next read of the file, and one that wrote a name did not advance it until then."""
        if self.follow_written is not None and not self.closed:
            self.follow_written(control, seen)

    def _still_to_advance(self, name: str, stable: int, newer: int) -> bool:
        """Whether ``newer`` is still to be named in place of ``stable`` (see :meth:`_advance_gate_names`): the
        server open, the gate's last decision unchanged, ``newer`` still loaded, no stable version named by the
        configuration. Read without the registry's locks (each table in one look)."""
        if self.closed or self._stop.is_set():
            return False
        rollout = self._rollouts.get(name)
        return (
            self._to_advance.get(name) == (stable, newer)
            and newer in self.loaded.get(name, {})
            and (rollout is None or rollout.stable is None)
        )

    def _next_version(self, name: str) -> int:
        return max(self.loaded.get(name, {}), default=0) + 1

    def _load_version(
        self,
        name: str,
        number: int,
        path: Path,
        config: ModelConfig,
        *,
        remote: RemoteModel | None = None,
        scanned: bool = False,
    ) -> None:
        """Load one version (from ``path``, or from the model server ``remote`` names) and keep it in
        :attr:`loaded`; a failure is recorded, logged and raised, and never replaces a loaded version.

        ``scanned``: ``path`` is what a refresh's scan found. If the load fails and the file is gone by then,
        :class:`_Removed` is raised instead: nothing is recorded, logged as an error or counted."""
        loaded = self.loaded.get(name, {})
        stamp = None if remote is not None else _stamp(path)  # before loading: a write during it shows next time
        current = loaded.get(number)
        if remote is None and current is not None and not self._changed(current, path, config, stamp=stamp):
            return
        for attempt in range(1, _LOAD_ATTEMPTS + 1):
            seen = None if remote is not None else _stamp(path, access=True)  # what a failure waits to see change
            read = None if remote is not None else _model_files(path)
            candidate, failed = self._build(name, number, path, config, remote=remote, scanned=scanned)
            if remote is not None or _model_files(path) == read:
                if failed is None:
                    break
                # A remote version whose file was read failed at its server, which may come back: no stamp,
                # so the next refresh tries again. Any other failure waits for its files to change from what
                # they were before this load: a copy that finished while the load failed on its first half is
                # a change, and is tried again.
                server_failed = is_remote(path) and candidate.backend_built
                self._record_failure(name, number, path, failed, None if server_failed else seen, config)
                raise failed
            # Every session is built from the file by its path (and the signature from the first one): a file
            # renamed over it while they were built (the atomic-write deploy: write .tmp, then os.replace) left a
            # copy whose sessions came from two files, or whose signature was the old file's (a failed warm-up,
            # or a version serving for a poll interval with the wrong signature). Such a copy is never served:
            # it is built again from the files as they are now.
            candidate.retire()
            if scanned and not path.exists():
                logger.info("model %r version %s was removed from the repository while it was loaded", name, number)
                raise _Removed
            logger.info(
                "model %r version %s: its files changed while it loaded (attempt %d of %d); loading it again",
                name,
                number,
                attempt,
                _LOAD_ATTEMPTS,
            )
            stamp = _stamp(path)
        else:
            error = ModelLoadError(
                f"model {name!r} version {number}: its files at {path.parent} kept changing while it loaded "
                f"({_LOAD_ATTEMPTS} attempts); it is loaded once they stop changing (copy a release beside the "
                "old one and rename it into place)",
                model=name,
                version=number,
            )
            # (the stamp from before the last attempt: the files differ from it now, so the next refresh retries)
            self._record_failure(name, number, path, error, seen, config)
            raise error
        if scanned and current is not None:
            self._gate_rewrite(name, current, candidate, path, seen)
        add_safely(METRICS.lifecycle, 1, {"inprocserve.model.name": name, "inprocserve.model.event": "loaded"})
        self._load_errors.pop((name, number), None)
        self._load_log.forget((name, number))  # (its next failure is another copy's: logged at once)
        self._load_news.forget((name, number))
        candidate.source_stamp = stamp
        with self.routing:
            previous = self.loaded.get(name, {}).get(number)
            self.loaded.setdefault(name, {})[number] = candidate
            self.failures.get(name, {}).pop(number, None)
            if previous is not None:  # same version number, new file: swap, then drain the old one
                self.publish(name)
        if previous is not None:
            # the replaced copy is unloaded like any other version (counted: without it every hot reload added a
            # "loaded" event and no "unloaded" one), and a stuck run of it does not hold the refresh (see _drain)
            self._drain(name, [previous], timeout_s=None, bounded=True)

    def _stage(self, name: str, source: ModelSource, config: ModelConfig) -> None:
        """Build, unpublished, every version ``load(name, config=...)`` loads or reloads on ``config``, kept for
        the sync that follows (see :meth:`_build`); the first that fails raises, and what was built is let go.
        A load that failed part-way kept its configuration, with some versions reloaded on it beside others on
        the old one, where a failed load changes nothing that serves."""
        loaded = self.loaded.get(name, {})
        unloaded = self._unloaded_versions.get(name, set())
        by_path = self._by_path.get(name, set())
        kept_out = self._kept_from_policy.get(name, set())
        usable = [v for v in source.versions if v not in unloaded]
        wanted = set(config.version_policy.select([v for v in usable if v not in kept_out]))
        # (the versions the sync adds whatever the policy, the control file's among them: left out, one that
        # failed on ``config`` was built by the sync, outside all or nothing, and the call raised with the rest
        # serving on ``config``)
        router = self.routers.get(name)
        named = config.rollout.referenced_versions | self._loaded_by_hand.get(name, set())
        named |= self._control_versions(name) | ({router.state.alias} if router and router.state.alias else set())
        wanted |= named & set(usable)
        if not wanted:  # (refused by the sync after the loaded versions were reloaded on ``config``, kept in force)
            error = ModelLoadError if name in self.routes else ModelNotFoundError
            raise error(
                f"model {name!r}: the version_policy of the configuration passed selects none of the versions in the "
                f"repository ({', '.join(map(str, sorted(source.versions))) or 'none'}); nothing changed",
                model=name,
            )
        wanted |= {v for v in loaded if v in usable and v not in by_path}
        try:
            for number in sorted(wanted):
                path = source.versions[number]
                stamp = _stamp(path)
                current = loaded.get(number)
                if current is not None and not self._changed(current, path, config, stamp=stamp):
                    continue
                candidate, failed = self._build(name, number, path, config, remote=None, scanned=False)
                if failed is not None:
                    candidate.retire()
                    raise ModelLoadError(
                        f"model {name!r}: version {number} failed to load on the configuration passed: "
                        f"{failure_text(failed, name, number)}; nothing changed (the configuration and versions in "
                        "force before go on serving)",
                        model=name,
                        version=number,
                    ) from failed
                self._staged[(name, number)] = (candidate, stamp)
        except BaseException:
            self._unstage(name)
            raise

    def _unstage(self, name: str) -> None:
        """Let go of what :meth:`_stage` built for ``name`` and no load took."""
        for key in [key for key in self._staged if key[0] == name]:
            self._staged.pop(key)[0].retire()

    def _build(
        self, name: str, number: int, path: Path, config: ModelConfig, *, remote: RemoteModel | None, scanned: bool
    ) -> tuple[ModelVersion, ModelLoadError | None]:
        """Build and load one copy of a version (see :meth:`_load_version`): the copy, and why it failed to
        load if it did (nothing recorded yet); or the copy :meth:`_stage` built of it, if its files are the same."""
        staged = self._staged.pop((name, number), None)
        if staged is not None:
            if staged[0].path == path and staged[0].config is config and staged[1] == _stamp(path):
                return staged[0], None
            staged[0].retire()
        backend = None
        if remote is not None:
            from ._remote import RemoteBackend  # late: the remote backend's codec imports the server

            backend = RemoteBackend(name, number, remote, clock=self._clock)
        candidate = ModelVersion(
            name,
            number,
            path,
            config,
            deliver=self._deliver,
            clock=self._clock,
            follow_symlinks=self._follow_symlinks,
            backend=backend,
        )
        try:
            with hashing_stops_on(self._stop):  # (close() is not held by a multi-GB data file's hashing)
                candidate.load()
        except ModelLoadError as exc:
            if _stopped_by_close(exc):  # (no operator has anything to fix: nothing is recorded as failed)
                text = failure_text(exc, name, number)
                logger.info("model %r version %s was not loaded, the server closing: %s", name, number, text)
                raise self._stopped_load(name, number) from exc
            if scanned and not path.exists():
                logger.info("model %r version %s was removed from the repository while it was loaded", name, number)
                raise _Removed from exc
            return candidate, exc
        return candidate, None

    @staticmethod
    def _stopped_load(name: str, number: int | None) -> ServerClosedError:
        """What the caller of a load that ``close()`` stopped gets (see :meth:`_build`): the server is closing,
        as every other call on it is told. A ``ModelLoadError`` there read as a bad file (the admin endpoints
        answered 422, "model_load_failed", where a closing server answers 503 and its client retries)."""
        which = f"model {name!r}" if number is None else f"model {name!r} version {number}"
        return ServerClosedError(f"{which} was not loaded: the server is closing", model=name, version=number)

    def _gate_rewrite(
        self, name: str, current: ModelVersion, candidate: ModelVersion, path: Path, seen: _Stamp | None
    ) -> None:
        """The compatibility gate for a version rewritten in place (a new file under the same number), found by
        a refresh: if the loaded copy answers default traffic (see :meth:`_gate`) and the new one's signature
        would break its callers, the new copy is refused like a failed reload (the loaded one keeps serving,
        tried again when the files change). Without it such a rewrite went live with no check, where the same
        file as a new version was held back. ``load(name, version=N)`` by hand loads it on purpose."""
        routes = self.routes.get(name)
        if routes is None:
            return
        alias = routes.state.pin
        baseline = (routes.versions.get(alias) if alias is not None else None) or routes.default
        if baseline is not current or current.signature is None or candidate.signature is None:
            return
        problems = incompatibilities(current.signature, candidate.signature)
        if not problems:
            return
        candidate.retire()
        add_safely(
            METRICS.incompatible, 1, {"inprocserve.model.name": name, "inprocserve.model.version": current.version}
        )
        error = ModelLoadError(
            f"model {name!r} version {current.version}: the new {path} is not compatible with the loaded copy, "
            f"which answers default traffic: {'; '.join(problems)}. Deploy it as a new "
            f"version (callers can pin it first), or load it on purpose: server.load({name!r}, "
            f"version={current.version})",
            model=name,
            version=current.version,
        )
        self._record_failure(name, current.version, path, error, seen, candidate.config)
        raise error

    def _record_failure(
        self, name: str, number: int, path: Path, exc: ModelLoadError, seen: _Stamp | None, config: ModelConfig
    ) -> None:
        self.failures.setdefault(name, {})[number] = _Failure(str(exc), path, seen, config=config)
        last = self._load_errors.get((name, number))
        repeated = last is not None and last == (str(exc), seen, True)  # (logged already)
        key = (name, number)
        if repeated:
            skipped = None
        elif (
            last is not None
            and last[0] != str(exc)
            and not self._load_log.would_log(key)
            and self._load_news.due(key) is not None
        ):
            skipped = 0  # another error within the limit's minute: news (not counted as one of its held back)
            self._load_log.uncount(key)  # (the next line counts what was held back since this one)
        else:
            skipped = self._load_log.due(key)
        self._load_errors[(name, number)] = (str(exc), seen, repeated or skipped is not None)
        text = failure_text(exc, name, number)  # (the line names the model and version already)
        if skipped is None:
            logger.debug("model %r version %s failed to load: %s", name, number, text)
        else:
            logger.error("model %r version %s failed to load: %s%s", name, number, text, since(skipped))
        add_safely(METRICS.lifecycle, 1, {"inprocserve.model.name": name, "inprocserve.model.event": "failed"})

    def _log_held_failure(self, name: str, number: int) -> None:
        """Log the last failure of a version whose files did not change since, if the once-a-minute limit held
        it back and allows it now: a version that stalled in a copy (logged) and then failed with another
        error for good (a corrupt file, an opset this onnxruntime lacks) is not tried again while its files
        stay the same, and that error was never logged (status alone showed it)."""
        key = (name, number)
        last = self._load_errors.get(key)
        if last is None or last[2] or not self._load_log.would_log(key):
            return
        skipped = (self._load_log.due(key) or 1) - 1  # (this failure was one of those not logged)
        text = failure_text(ModelLoadError(last[0]), name, number)
        logger.error("model %r version %s failed to load: %s%s", name, number, text, since(skipped))
        self._load_errors[key] = (last[0], last[1], True)

    @staticmethod
    def _changed(current: ModelVersion, path: Path, config: ModelConfig, *, stamp: _Stamp | None) -> bool:
        """Whether a loaded version no longer matches what would be loaded now: another file, another
        configuration, or files that changed since it loaded (a rewritten ``model.onnx`` or
        ``remote.toml``, external weights, the model folder's ``config.toml`` or warm-up archive). A
        configuration whose rollout lists its arms in another order is another (``==`` takes it for the same:
        see RolloutConfig.routes_as), so ``load(config=...)`` that reorders them is applied."""
        if current.path != path or _configs_differ(current.config, config):
            return True
        return current.source_stamp != stamp

    def publish(self, name: str, keep: set[int] | None = None) -> None:
        """Replace the routing snapshot of ``name`` (atomic for readers)."""
        with self.routing:
            self._publish(name, keep)

    def _publish(self, name: str, keep: set[int] | None, *, unaliased: bool = False) -> None:
        """Publish ``name``'s versions (those of ``keep``) with its routing state, as one snapshot.
        ``unaliased``: the control file names no stable version (any more), so the configuration's answers."""
        loaded = self.loaded.get(name, {})
        versions = {v: mv for v, mv in loaded.items() if keep is None or v in keep}
        if not versions:
            self.routes.pop(name, None)
            if name not in self.loaded:  # gone (removed or unloaded): its router's request ids and samples too
                self.routers.pop(name, None)
            return
        latest = self._latest.get(name)
        default = versions[latest] if latest in versions else versions[max(versions)]
        state = self.control.models.get(name)
        builds = self._builds_named(name, state)
        if state is not None and builds:  # (what names a build is not followed: see follow)
            state = dataclasses.replace(
                state,
                stable=None if state.stable in builds else state.stable,
                canary_version=None if state.canary_version in builds else state.canary_version,
            )
        configured = self._rollouts.get(name, default.config.rollout)
        rollout = configured if state is None else controlled(configured, state, model=name)
        router = self.routers.get(name)
        if router is None:
            router = self.routers[name] = Router(name, rollout, self._flags, shadow_gate=self._shadow_gate)
        routing = router.state
        alias: int | None = routing.alias  # (the control file wins over config.toml)
        if state is not None and state.stable is not None:
            alias = state.stable
        elif unaliased:
            alias = None
        killed = state is not None and state.kill
        if not routing.routes_as(rollout, alias=alias, killed=killed, refusal=self.routing_refusal):
            routing = router.state_for(rollout, alias=alias, killed=killed, refusal=self.routing_refusal)
        published = self.routes.get(name)
        if not (  # (a hot-reload poll publishes every model: one that changes nothing is no change)
            published is not None
            and published.router is router
            and published.state is routing
            and published.default is default
            and published.versions.keys() == versions.keys()
            and all(published.versions[number] is version for number, version in versions.items())
        ):
            router.adopt(routing)
            # One assignment: a request reads the versions and the state that routes to them together.
            self.routes[name] = Routes(default=default, versions=dict(versions), router=router, state=routing)
        if state is not None and state.stable is not None:  # an operator switched the fleet to it: accepted
            self.incompatible.get(name, {}).pop(state.stable, None)
        self.published.add(name)
        self.published_versions.update((name, number) for number in versions)
        if len(self.published) + len(self.published_versions) > self._published_limit:
            self._forget_published()

    def refuse_routing(self, reason: str | None) -> None:
        """Refuse to route any request of any model, now and after every publish, saying ``reason``
        (``None``: route again). Requests that pin a version are served."""
        with self.routing:
            self.routing_refusal = reason
            for name, router in list(self.routers.items()):
                current = router.state
                if current.refusal == reason:
                    continue
                routing = router.state_for(current.config, alias=current.alias, killed=current.killed, refusal=reason)
                router.adopt(routing)
                routes = self.routes.get(name)
                if routes is not None and routes.router is router:
                    self.routes[name] = dataclasses.replace(routes, state=routing)

    def retire(
        self,
        name: str,
        numbers: list[int],
        *,
        timeout_s: float | None = None,
        spare_named: set[int] | None = None,
        bounded: bool = False,
    ) -> None:
        """Stop routing to ``numbers``, then drain them (without the routing lock). ``spare_named``: not those
        the control state serves when they are taken out, nor those of ``spare_named`` it keeps loaded (a
        previous stable version, for an instant rollback), as it may have changed since ``numbers`` were
        chosen (see :meth:`adopt_at_once`). ``bounded``: a refresh's (see :meth:`_drain`)."""
        self._drain(name, self._detach(name, numbers, spare_named=spare_named), timeout_s=timeout_s, bounded=bounded)

    def _detach(self, name: str, numbers: list[int], *, spare_named: set[int] | None) -> list[ModelVersion]:
        with self.routing:
            if spare_named is not None:
                state = self.control.models.get(name)
                spared = _served(state) | (self._control_versions(name) & spare_named)
                numbers = [v for v in numbers if v not in spared]
            loaded = self.loaded.get(name, {})
            retiring = [loaded.pop(number) for number in numbers if number in loaded]
            if not loaded:
                self.loaded.pop(name, None)
            self.publish(name)
        return retiring

    def _drain(
        self, name: str, retiring: list[ModelVersion], *, timeout_s: float | None, bounded: bool = False
    ) -> None:
        """Drain and unload ``retiring``. ``bounded`` (a refresh, a hot reload: no caller asked to wait), with
        no ``timeout_s``, of a version whose runs have no time limit (``pool.max_run_s`` off): each is waited for
        at most ``_RELOAD_DRAIN_S``, then left to finish its runs (never cut) and unload on a thread of its own,
        with a warning, so that the lifecycle lock is released. (With the limit on, every run ends within it:
        the drain is waited for here, as before, and the version stops taking requests before this returns.)"""
        if self._deferred is not None and not bounded:  # unload()'s: drained once it releases the lifecycle lock
            self._deferred.extend((name, version) for version in retiring)
            return
        for version in retiring:
            if not bounded or timeout_s is not None or self.closed or version.config.pool.max_run_s is not None:
                self._unload_drained(name, version, timeout_s=timeout_s)
                continue
            drainer = threading.Thread(
                target=self._unload_drained,
                args=(name, version),
                kwargs={"timeout_s": None},
                name="inprocserve-drain",
                daemon=True,
            )
            self._drainers[version] = drainer
            drainer.start()
            drainer.join(_RELOAD_DRAIN_S)
            if drainer.is_alive():
                logger.warning(
                    "model %r version %s: a run is still running %g s after it stopped serving (pool.max_run_s is "
                    "off); the refresh goes on, and the version is unloaded when its last run ends",
                    name,
                    version.version,
                    _RELOAD_DRAIN_S,
                )

    def _unload_drained(self, name: str, version: ModelVersion, *, timeout_s: float | None) -> None:
        try:
            drained = version.retire(timeout_s=timeout_s)
            add_safely(METRICS.lifecycle, 1, {"inprocserve.model.name": name, "inprocserve.model.event": "unloaded"})
            logger.info("model %r version %s unloaded%s", name, version.version, "" if drained else " (timed out)")
        finally:
            self._drainers.pop(version, None)

    def find_in_repository(self, name: str) -> ModelSource:
        if self.repository is None:
            raise ModelNotFoundError(f"no repository configured; pass path= to load model {name!r}", model=name)
        scan = scan_repository(self.repository, follow_symlinks=self._follow_symlinks, only=name)
        source = scan.models.get(name)
        # Each message quotes the model's folder, never the repository alone: the admin endpoints answer these
        # with every path under the repository made relative to it (``web.admin_answer``), which left the
        # repository's own path, at the end of "is not in the repository /srv/app/models", in the HTTP answer.
        folder = self.repository / name
        if name in scan.unreadable:
            raise ModelNotFoundError(f"model {name!r}: its folder {folder} cannot be read", model=name)
        if source is None:
            # A folder the scan refused (a symbolic link without follow_symlinks, a link to nothing, a file) is
            # there: "there is no folder" sent people looking for what they could see; the scan's problem says
            # why it is left out and what to do.
            kept_out = [problem for problem in scan.problems if problem.startswith(f"{folder}:")]
            if kept_out:
                raise ModelNotFoundError(f"model {name!r} cannot be loaded ({kept_out[0]})", model=name)
            raise ModelNotFoundError(
                f"model {name!r} is not in the repository (there is no folder {folder})", model=name
            )
        if not source.versions:
            raise ModelNotFoundError(
                f"model {name!r} is not in the repository: its folder {folder} holds no version folder with a "
                f"{MODEL_FILENAME} or {REMOTE_FILENAME} (<model>/<version>/{MODEL_FILENAME}, the version a whole "
                "number such as 1)",
                model=name,
            )
        return source

    def _kept_out(self, source: ModelSource, version: int) -> str:
        """Why the scan left version folder ``version`` of ``source`` out, for the error of a load that names it
        (a link loop, a link refused, no model file), or ``""``: said only in the log and ``refresh()``'s
        answer, the load's "has no version 3" sent people looking for a folder that was there."""
        folder = f"{source.folder / str(version)}:"
        assert self.repository is not None  # (source came from it)
        for problem in scan_repository(
            self.repository, follow_symlinks=self._follow_symlinks, only=source.name
        ).problems:
            if problem.startswith(folder):
                return f" ({problem})"
        return ""

    def config_for(self, name: str, source: ModelSource, override: ModelConfig | None) -> ModelConfig:
        """The effective config: code defaults < ``config=`` < ``config.toml`` < ``models=`` (per field);
        a ``config`` passed to :meth:`load` replaces all of them, and stays in force for that model (through
        refreshes and control revisions) until the model is unloaded or loaded with another ``config``."""
        if override is not None:
            self._load_configs[name] = override
        kept = self._load_configs.get(name)
        if kept is not None:  # (its config.toml is not read: only the settings of this config are told)
            self._note_config_warnings(name, None, [], kept.drift.warnings())
            return kept
        config = self._defaults
        ignored: list[str] = []
        if source.config_path is not None:
            config = load_model_config(source.config_path, config, ignored=ignored)
            # The keys it knows are applied by every worker alike, whether it serves the model already or starts
            # (a worker's settings depend on the file, never on when it read it): a serving worker that refused
            # such a file kept the settings it had while one that started (a recycled gunicorn worker) applied
            # the file, and one host served two versions (``rollout.stable``) or two canaries, for as long as
            # the older worker lived. The keys left out are logged and shown in status (config_warning), and
            # ``validate`` fails on them: a typo there (``stabel = 2`` for ``stable``) is not followed.
        code = self._code_configs.get(name)
        config = config if code is None else config.overlaid(code, source=f"models[{name!r}]")
        # (none, once the file is gone); settings that load but do nothing, of any layer, are told alike
        self._note_config_warnings(name, source.config_path, ignored, config.drift.warnings())
        return config

    def _note_config_warnings(self, name: str, path: Path | None, ignored: list[str], settings: list[str]) -> None:
        """Log once the keys of ``name``'s ``config.toml`` that this release ignores, and the ``settings`` that
        load but do nothing (``DriftConfig.warnings``), and show them in status."""
        parts = list(settings)
        if ignored:
            parts.insert(
                0,
                f"{path}: this release of inprocserve does not know {', '.join(ignored)}, and serves the model "
                "without them (written for a newer release? if not, a typo)",
            )
        warning = "; ".join(parts) or None
        if warning == self.config_warnings.get(name):
            return
        if warning is None:  # (a config.toml removed said its warning for good, naming a file not there)
            del self.config_warnings[name]
            logger.info("model %r: its configuration has no unknown keys or ineffective settings any more", name)
            return
        logger.warning("model %r: %s", name, warning)
        self.config_warnings[name] = warning

    def config_warning(self, name: str) -> str | None:
        """What status shows as ``name``'s ``config_warning``: its ``config.toml``'s (see
        :meth:`_note_config_warnings`), then each loaded version's ``remote.toml``'s, for as long as it is
        loaded. Read without the lifecycle lock, from a copy of the table, as status reads."""
        warning = self.config_warnings.get(name)  # (one look: a reload may drop the name between two)
        parts = [] if warning is None else [warning]
        versions = self.loaded.get(name, {})
        parts.extend(
            warning for _number, version in sorted(versions.copy().items()) if (warning := version.config_warning)
        )
        return "; ".join(parts) or None

    def unselected(self) -> dict[str, str]:
        """Models that serve nothing because their ``version_policy`` selects none of the versions on disk
        (a typo such as ``{ specific = [12] }`` at start-up), by name, with the problem: status lists each as
        not ready with it as its ``config_error``, where the model was missing from status and ``/ready``
        answered 200 while another model served. Read without the lifecycle lock, from copies of the tables.
        Each problem without the "model 'NAME': " that the log and ``refresh()`` need: status shows it under
        the model's own key, where the name said again read as a second model's."""
        loaded = dict(self.loaded)
        return {
            name: problem.removeprefix(f"model {name!r}: ")
            for name, problem in dict(self._policy_problems).items()
            if not loaded.get(name)
        }

    def check_open(self) -> None:
        if self.closed:
            raise ServerClosedError("the server is closed")

    # -- hot reload poller ---------------------------------------------------------------------------------

    def start_poller(self) -> None:
        """Start the hot-reload thread (``poll_interval_s``); the registry stops and joins it in :meth:`close`."""
        if self._poll_interval_s is None or self.closed:
            return
        self._poller = threading.Thread(target=self._poll, name="inprocserve-refresh", daemon=True)
        self._poller.start()

    def start_healer(self) -> None:
        """Without a poller: refresh, waiting 1 s and then twice as long each time up to a minute, until no
        model has a failed load or an invalid ``config.toml``, then stop (the poller's thread, joined by
        :meth:`close`). For a worker started past a failed repository check (``_prefork.check_at_start``):
        without it, the models that failed were served by that worker only at its next recycle or reload,
        which without ``--max-requests`` could be days (a 404 or 503 for every request it took)."""
        if self._poll_interval_s is not None or self.closed or self._poller is not None:
            return
        self._poller = threading.Thread(target=self._heal, name="inprocserve-heal", daemon=True)
        self._poller.start()

    def _heal(self) -> None:
        delay, retried = _HEAL_FIRST_S, False
        while (self.config_errors or any(self.failures.values())) and not self._stop.wait(delay):
            retried = True
            try:
                self.refresh(settle_empty_configs=True)
            except Exception:  # (as the poller: survive anything a repository throws at it)
                logger.exception("model repository refresh failed")
            delay = min(delay * 2, _HEAL_CAP_S)
        if retried and not self._stop.is_set():
            logger.info("every model that failed to load as this worker started loads now; no more retries")

    def _poll(self) -> None:
        assert self._poll_interval_s is not None
        while not self._stop.wait(self._poll_interval_s):
            try:
                self.refresh(settle_empty_configs=True)
            except Exception:  # the poller must survive anything a repository throws at it
                logger.exception("model repository refresh failed")

    def adopt(self, control: Control) -> None:
        """With the lifecycle lock and the routing lock held: make ``control`` the state this server follows,
        and mark every model whose state changed (all of them, re-scanning the repository, on a new reload
        revision) for :meth:`apply_adopted`, which applies them once the routing lock is released (a load
        must not hold it)."""
        previous = self.control
        # What changed is marked pending before the revision is: a reader without the lock (the control-file
        # check of Operations.sync_control) must never see the new revision with nothing pending to apply.
        self._control_reload_pending |= control.reload != previous.reload
        self._control_pending.update(_changed_models(previous, control))
        self.control = control
        self.control_generation += 1
        self._control_warned.clear()
        self._control_backoff_s = 0.0  # a new revision: try it at once, and retry it soon

    def apply_adopted(self, control: Control) -> list[str]:
        """With the lifecycle lock held, after :meth:`adopt` of ``control``: apply what it marked.

        Each model is applied on its own: one that cannot be applied (a version it names is missing or
        fails to load, its ``config.toml`` is invalid, the re-scan failed) leaves the others applied, is
        logged once per distinct error, shown in status (``control.error``), and tried again by
        :meth:`retry_control` (every ``control_interval_s``) until it applies. Returns the problems found:
        the re-scan's (as :meth:`refresh`), then those that left a part of the revision unapplied."""
        logger.info("following control revision %d (%s)", control.revision, control.origin())
        return self._try_control()

    def adopt_at_once(self, control: Control) -> bool:
        """With the routing lock held, not the lifecycle lock: follow ``control`` now if it needs no load and
        no re-scan (a kill switch, a canary percentage, a switch among loaded versions): a hot reload may hold
        the lifecycle lock for seconds while it loads another model. Returns False, having changed nothing,
        when it needs more (a version it serves is not loaded here, a reload): :meth:`adopt` it then.

        What it leaves to load (a previous stable version, for rollbacks), and a model whose earlier revision
        is still pending, is marked pending, for :meth:`retry_control` at once."""
        previous = self.control
        changed = _changed_models(previous, control)
        if self.closed or control.reload != previous.reload:
            return False
        if not all(self._servable_now(name, control.models.get(name)) for name in changed):
            return False
        self.control = control
        self.control_generation += 1
        self._control_warned.clear()
        logger.info("following control revision %d (%s)", control.revision, control.origin())
        for name in sorted(changed):
            self._route_by_control(name)
            if name in self._control_pending or not self._control_versions(name) <= set(self.loaded.get(name, {})):
                self._control_pending.add(name)
                self._control_retry_soon = True
        return True

    def _servable_now(self, name: str, state: ModelControl | None) -> bool:
        """Whether ``state`` can route ``name`` with what is loaded (nothing to load, or nothing that
        :meth:`follow` would load for it). A model with nothing loaded here routes nothing either way: most
        often another host's (a shared control file names them all), else one not loaded yet; its part is
        left to :meth:`retry_control`, which must not hold back the models this host serves."""
        if state is None or name in self._explicit or name in self._unloaded:
            return True
        loaded = set(self.loaded.get(name, {}))
        return not loaded or (_served(state) <= loaded and not self._builds_named(name, state))

    def build_by_path(self, name: str, version: int) -> Path | None:
        """The file of the build loaded by path that holds ``version`` of ``name`` here (``None``: a release,
        or not loaded): the fleet's version N is the repository's release N, which such a build is not."""
        if version not in self._by_path.get(name, ()):
            return None
        loaded = self.loaded.get(name, {}).get(version)
        return None if loaded is None else loaded.path

    def _builds_named(self, name: str, state: ModelControl | None) -> dict[int, Path]:
        """The versions ``state`` serves (its stable version, its canary) that only a build loaded by path holds
        here (see :attr:`_by_path`), and the build's file: the fleet's version N is a release, and a build of
        one's own numbered N served the fleet's traffic as it."""
        by_path = self._by_path.get(name)
        if state is None or not by_path:
            return {}
        loaded = self.loaded.get(name, {})
        named = {state.stable, state.canary_version} & by_path
        return {number: loaded[number].path for number in sorted(n for n in named if n is not None and n in loaded)}

    def failing_versions(self, name: str) -> int:
        """How many of ``name``'s versions whose last load failed would serve if they loaded (the
        ``inprocserve.model.failed_versions`` gauge, which the ModelLoadFailed alert reads): one the model's
        version policy selects among its versions on disk, a version serving an older copy (a reload that
        failed), or one its rollout names. A version outside the policy (version 2 corrupt, then version 3
        released and serving under ``latest``) or unloaded by hand is not counted: its failure stays recorded,
        untried, while its files stay as they are, and held the alert on for good. Read without the lock (by
        the metrics' collection): each mapping is copied once."""
        if name in self._unloaded:  # unloaded by hand: refresh() neither loads nor forgets its versions
            return 0
        failed = dict(self.failures.get(name) or {})
        by_hand = set(self._unloaded_versions.get(name, ()))
        on_disk = self._on_disk.get(name)
        loaded = self.loaded.get(name, {})
        count = 0
        for number, failure in failed.items():
            if number in by_hand:
                continue
            config = failure.config
            if (
                number in loaded
                or config is None
                or on_disk is None  # (no scan names its versions: a load(path=...) by hand)
                or number in config.rollout.referenced_versions
                or number in config.version_policy.select([v for v in on_disk if v not in by_hand])
            ):
                count += 1
        return count

    @property
    def control_pending(self) -> bool:
        """Whether a part of :attr:`control` is not applied yet (see :attr:`control_problem`)."""
        return self._control_reload_pending or bool(self._control_pending)

    @property
    def control_problem(self) -> str | None:
        """Why a part of :attr:`control` is not applied (``None`` when all of it is), or serves only from
        memory (a version it serves that is gone from the repository: see :meth:`_gone_but_served`)."""
        revision = self.control.revision
        texts = []
        problems = self._control_problems  # (read once: a retry replaces it whole while status reads it)
        if problems:
            details = "; ".join(problem for _key, problem in sorted(problems.items()))
            texts.append(
                f"control revision {revision} is applied only in part (retried until it applies: as soon as a version "
                f"it waits for arrives, else after a back-off of up to {_CONTROL_RETRY_CAP_S:g} s): {details}"
            )
        gone: list[str] = []
        for name, numbers in sorted(self._gone.copy().items()):  # (still loaded and served: the state may move)
            served = _served(self.control.models.get(name)) & numbers & set(self.loaded.get(name, {}))
            gone.extend(f"model {name!r} version {number}" for number in sorted(served))
        if gone:  # applied, and nothing to retry: but a worker that starts now cannot follow it
            texts.append(
                f"control revision {revision} serves {', '.join(gone)} from memory: not in the repository any "
                "more, so a worker that starts cannot load it (put it back, or switch the fleet to another version)"
            )
        return "; ".join(texts) or None

    def follow_initial_control(self) -> list[str]:
        """With the lifecycle lock held, after the first load, which followed :attr:`control` already: note
        what that load could not apply (a stable or active canary version of a model served here that is not
        in this repository yet, or failed to load), as :meth:`adopt` does for a later revision: logged once,
        shown in status, and retried by :meth:`retry_control` until it applies. Returns those problems.

        Nothing is loaded or scanned again here: the first load just tried (a remote model server that did
        not answer would be waited for twice), models this host does not carry have nothing to serve, and a
        previous stable version (for rollbacks) serves nothing now. The watcher's first retry comes after
        its back-off (1 s)."""
        problems: dict[str, str] = {}
        for name, state in sorted(self.control.models.items()):
            if (name not in self.loaded and name not in self.failures) or {name} & (self._explicit | self._unloaded):
                continue  # (not in this repository, or loaded by name: follow() leaves those alone too)
            loaded, failures = self.loaded.get(name, {}), self.failures.get(name, {})
            missing = [
                f"version {number} failed to load: {failures[number].error}"
                if number in failures
                else f"version {number} is not in the repository (yet)"
                for number in sorted(v for v in (state.stable, state.canary_version) if v in state.versions)
                if number not in loaded
            ]
            if missing:
                self._control_pending.add(name)
                problems[name] = f"model {name!r}: {'; '.join(missing)}"
        if problems:
            self._report_control_problems(problems)
            self._control_backoff_s = 1.0
            self._control_retry_at = self._clock() + self._control_backoff_s
            self._control_awaited_tried = self._awaited_files()
        return [problems[key] for key in sorted(problems)]

    def retry_control(self, *, now: bool = True) -> list[str]:
        """With the lifecycle lock held: apply again what :meth:`adopt` could not apply (nothing if all was).

        With ``now=False`` (the control-file watcher) it backs off while a try keeps failing (1 s, doubling
        up to 60 s): each try may scan the repository or connect to a remote model server, under the
        lifecycle lock. An explicit ``sync_control()`` tries at once."""
        waiting = not now and not self._control_retry_soon and self._clock() < self._control_retry_at
        if not self.control_pending:
            return []
        if waiting:
            files = self._awaited_files()
            settled, self._control_awaited_seen = files == self._control_awaited_seen, files
            if not settled or files == self._control_awaited_tried:  # (still being copied, or as tried)
                return []
        return self._try_control()

    def _awaited_files(self) -> dict[tuple[str, int], tuple[_Stamp | None, ...]]:
        """The files of each version that a pending part of the control state serves and that is not loaded.

        A host that lagged behind the fleet (its synced copy got the control file before the version) backed
        off to a try a minute: the version served nothing for up to 60 s after it arrived, and once a poll
        loaded it, status still said it was "not in the repository (yet)" until the next try. A stat of each
        awaited file per interval (none once all is applied) finds the arrival instead; a version is tried
        once its files stay the same for an interval, so one copied in place (``cp``, ``kubectl cp``) is not
        loaded half-made and failed at every interval of its copy."""
        if self.repository is None:
            return {}
        with self.routing:  # (a revision followed at once changes both under it)
            wanted = {name: _served(self.control.models.get(name)) for name in self._control_pending}
        return {
            (name, number): tuple(
                _stamp(self.repository / name / str(number) / file, access=True)
                for file in (MODEL_FILENAME, REMOTE_FILENAME)
            )
            for name, numbers in sorted(wanted.items())
            for number in sorted(numbers - set(self.loaded.get(name, {})))
        }

    def _try_control(self) -> list[str]:
        with self.routing:  # (what a revision followed at once leaves from now on asks for a try of its own)
            if self._control_retry_soon:
                self._control_retry_soon = False
                self._control_backoff_s = 0.0
        problems = self._apply_control()
        if self.control_pending:  # the next try waits twice as long as the last (1 s first)
            self._control_backoff_s = min(_CONTROL_RETRY_CAP_S, 2 * self._control_backoff_s or 1.0)
            self._control_retry_at = self._clock() + self._control_backoff_s
        self._control_awaited_tried = self._awaited_files()
        return problems

    @property
    def follow_symlinks(self) -> bool:
        """Whether scans of the repository follow symbolic links (as this server was made)."""
        return self._follow_symlinks

    def _apply_control(self) -> list[str]:
        problems: dict[str, str] = {}
        rescanned: list[str] = []
        if self._control_reload_pending:
            try:
                if self.repository is not None:  # refresh() logs a failed scan but does not raise it
                    scan_repository(self.repository, follow_symlinks=self._follow_symlinks)
            except Exception as exc:  # a file-system hiccup (NFS ESTALE, EIO): re-scan on the next retry
                if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit: its own error
                    raise  # (the reload stays pending: the next sync scans again)
                problems[""] = f"reload (re-scan of the repository) failed: {exc}"
            else:  # pending until the refresh is done: a sync without the lock must not take it as applied
                # (the holds it finds are named stable after a later refresh, outside the locks: see refresh)
                self._rescanning = True
                try:
                    rescanned = self.refresh()
                finally:
                    self._rescanning = False
                self._control_reload_pending = False
        for name in sorted(self._control_pending):
            if self._stop.is_set():  # the process is exiting (see stop_poller): load no more models
                return rescanned
            state = self.control.models.get(name)
            try:
                missing = self.follow(name)
            except Exception as exc:  # e.g. an invalid config.toml: the other models still apply
                if raised_by_signal_handler(exc):  # the caller's task stopped by its time limit as it loaded a
                    raise  # version: no problem of the model's (it stays pending: the next sync follows it)
                problems[name] = f"model {name!r}: {exc}"
                continue
            if self._stop.is_set():  # stopped meanwhile: nothing is retried, nothing to report
                return rescanned
            with self.routing:
                if self.control.models.get(name) != state:  # adopt_at_once() changed it meanwhile: `missing` is
                    continue  # the old state's; it stays pending, and the next try (soon) follows the new one
                if missing:
                    problems[name] = f"model {name!r}: {'; '.join(missing)}"
                    continue
                self._control_pending.discard(name)
        self._report_control_problems(problems)
        return rescanned + [problems[key] for key in sorted(problems)]

    def _report_control_problems(self, problems: dict[str, str]) -> None:
        """Log each problem once (not on every retry while it stays the same), and when all is applied."""
        for key, problem in sorted(problems.items()):
            if self._control_problems.get(key) != problem:
                logger.error(
                    "control revision %d not applied here: %s (it is retried until it applies)",
                    self.control.revision,
                    problem,
                )
        if self._control_problems and not problems and not self.control_pending:
            logger.info("control revision %d is now applied in full", self.control.revision)
        self._control_problems = problems

    def follow(self, name: str) -> list[str]:
        """With the lifecycle lock held: load what the control state of ``name`` needs, then publish it.

        Returns why a version the state serves (its stable version, an active canary) is not loaded; empty
        when all are, or when the model is not in this repository (nothing to serve). The previous stable
        version is loaded too when it can be (rollbacks are then instant), but one that is missing or fails
        is only logged: it serves nothing now. A version that failed to load is loaded again only once its
        files changed (as :meth:`refresh` does). Raises what loading raises besides ``ModelNotFoundError``
        and ``ModelLoadError`` (an invalid ``config.toml``, a repository that cannot be scanned)."""
        missing: list[str] = []
        state = self.control.models.get(name)
        if state is not None and self.repository is not None and not {name} & (self._explicit | self._unloaded):
            needed = sorted(state.versions - set(self.loaded.get(name, {})))
            source = None
            if needed:
                scan = scan_repository(self.repository, follow_symlinks=self._follow_symlinks, only=name)
                source = scan.models.get(name)
            files = {} if source is None else source.versions
            for number in needed if files else []:  # a model not in this repository has nothing to serve
                if self._stop.is_set():  # the process is exiting (see stop_poller): load nothing more
                    return []  # (_apply_control records nothing for it)
                problem = None
                if number not in files:
                    problem = f"version {number} is not in the repository (yet)"
                elif self._failed_unchanged(name, number, source):
                    problem = f"version {number} failed to load: {self.failures[name][number].error}"
                else:
                    try:
                        self.load(name, version=number)
                    except ServerClosedError:  # (the process is exiting: close() stopped the load)
                        return []
                    except ModelLoadError as exc:  # (worded as a retry words it: logged once)
                        problem = f"version {number} failed to load: {exc}"
                    except ModelNotFoundError as exc:
                        problem = f"version {number}: {exc}"
                if problem is None:
                    continue
                if number in (state.stable, state.canary_version):
                    missing.append(problem)
                elif (name, number, problem) not in self._control_warned:  # the previous stable, for a rollback
                    self._control_warned.add((name, number, problem))
                    logger.warning(
                        "model %r: control revision %d keeps version %s for a rollback, but %s",
                        name,
                        self.control.revision,
                        number,
                        problem,
                    )
            for number, build in self._builds_named(name, state).items():
                release = (source.versions if source is not None else self._repository_files(name)).get(number)
                where = f"the repository's release ({release})" if release else "the release (not in the repository)"
                missing.append(
                    f"version {number} here is a build loaded by path ({build}), not {where}: the build does not "
                    f"serve the fleet's traffic as version {number}; serve the release with "
                    f"server.load({name!r}, version={number}) (in place of the build)"
                )
        self._route_by_control(name)
        return missing

    def _repository_files(self, name: str) -> Mapping[int, Path]:
        """The version files of ``name`` in the repository (none if it cannot be scanned)."""
        if self.repository is None:
            return {}
        try:
            source = scan_repository(self.repository, follow_symlinks=self._follow_symlinks, only=name).models.get(name)
        except Exception:  # (a file-system hiccup: the message names no release then)
            return {}
        return {} if source is None else source.versions

    def _route_by_control(self, name: str) -> None:
        """Publish ``name`` with its control state (what is loaded of it)."""
        with self.routing:
            router = self.routers.get(name)
            state = self.control.models.get(name)
            unaliased = (
                router is not None and router.state.alias is not None and (state is None or state.stable is None)
            )
            if name in self.loaded:
                self._publish(name, None, unaliased=unaliased)
            elif unaliased:  # (nothing published: the state a later publish starts from)
                assert router is not None
                current = router.state
                router.adopt(
                    router.state_for(current.config, alias=None, killed=current.killed, refusal=current.refusal)
                )

    def _failed_unchanged(self, name: str, number: int, source: ModelSource | None) -> bool:
        """Whether ``number`` failed to load and neither the files that load read nor the configuration it
        failed on changed since (as :meth:`_sync_model` checks both): a version that failed on a wrong
        ``load(config=...)`` was refused on the right one, until the next refresh tried it."""
        failure = self.failures.get(name, {}).get(number)
        if failure is None or failure.stamp is None or self.repository is None:
            return False
        folder = self.repository / name / str(number)  # where a repository scan finds the version's file
        if not any(failure.stamp == _stamp(folder / file, access=True) for file in (MODEL_FILENAME, REMOTE_FILENAME)):
            return False
        if failure.config is None or source is None:
            return True
        return not _configs_differ(failure.config, self.config_for(name, source, None))

    def _absent_references(self, name: str, source: ModelSource, config: ModelConfig) -> list[str]:
        """The versions ``config.rollout`` names (stable, canary, arms, shadows) that are not in the
        repository, as a problem logged once: a typo such as ``stable = 33`` for 3 made the server answer with
        the latest version, the one the pin was there to hold back, without a word."""
        absent = sorted(v for v in config.rollout.referenced_versions if v not in source.versions)
        if not absent:
            self._reference_problems.pop(name, None)
            return []
        problem = (
            f"model {name!r}: its rollout names version(s) {', '.join(map(str, absent))}, not in the repository "
            f"({', '.join(map(str, sorted(source.versions))) or 'none'}): requests meant for them get another"
        )
        return [_said_once(self._reference_problems, name, problem)]

    def _control_stable(self, name: str) -> int | None:
        """The stable version the control file names for ``name`` (``None``: none, or one only a build loaded
        by path holds here, which is not followed: see :meth:`_builds_named`)."""
        state = self.control.models.get(name)
        if state is None or state.stable is None or state.stable in self._builds_named(name, state):
            return None
        return state.stable

    def _control_versions(self, name: str) -> set[int]:
        state = self.control.models.get(name)
        return set() if state is None else state.versions

    def flag_number(self, key: str, default: float) -> float:
        """The number flag ``key`` gives a request without a context: ``default`` when no flag provider is
        configured, the flag is not set or unusable, or the provider fails (as a request's read falls back)."""
        flags = self._flags
        if flags is None:
            return default
        return flags.run(
            lambda: flags.number(key, default, {}, []), lambda _reason: default, effect="its value is taken as unset"
        )

    def routes_of(self, model: str) -> Routes:
        routes = self.routes.get(model)
        if routes is None:
            raise self.not_found(model, None)
        return routes

    def serving(self, model: str, version: int) -> Routes:
        """With the lifecycle lock held: make sure ``version`` is loaded, warmed up and routable.

        On a model that serves nothing here (unloaded by hand, or not loaded yet), what its policy and control
        state serve is loaded with it, and published at once: published alone, ``version`` answered every
        request until the operation's control revision loaded the rest, and for good where the revision named
        nothing else (a canary beside the policy's latest)."""
        self.check_open()
        routes = self.routes.get(model)
        if routes is None or version not in routes.versions:
            self.load(model, version=version, with_the_rest=routes is None)
        return self.routes_of(model)

    def repository_versions(self, model: str) -> set[int] | None:
        """The versions of ``model`` in the repository now (scanned), or ``None`` when it is not served from
        one (no repository, or loaded by path). Raises ``ModelNotFoundError`` when it is not in it any more."""
        if self.repository is None or model in self._explicit:
            return None
        return set(self.find_in_repository(model).versions)

    def known(self, model: str) -> None:
        self.check_open()
        validate_model_name(model)
        if model not in self.loaded:
            self.find_in_repository(model)

    def not_found(self, model: object, version: object) -> Exception:
        if not isinstance(model, str):  # checked only on this slow path, to keep predict cheap
            return TypeError(f"model must be a str, got {type(model).__name__}")
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
            return TypeError(f"version must be an int or None, got {type(version).__name__}")
        if self.closed:
            return ServerClosedError("the server is closed", model=model, version=version)
        routes = self.routes.get(model)
        if routes is None:
            served = sorted(self.routes)
            known = ", ".join(served) or "none"
            failure = self.failures.get(model)
            # Not the load error itself: it quotes file-system paths, and this message reaches HTTP clients
            # (the 404 of a prediction). status() and the log keep the detail.
            hint = (
                f"; it failed to load (version {', '.join(map(str, sorted(failure)))}: see the server's status or log)"
                if failure
                else ""
            )
            if not hint and model in self._policy_problems:  # (in the repository, and none of it selected)
                hint = "; its version_policy (config.toml) selects none of its versions: see the server's status"
            if not hint and self.repository is None and not self.routes:  # (the plug-ins' setting read too early)
                hint = (
                    "; this server has no model repository and serves nothing loaded by hand: pass "
                    "Server(repository=...), or set INPROCSERVE_REPOSITORY (Flask: before Inprocserve(app) reads "
                    "it) or INPROCSERVE['REPOSITORY'] (Django)"
                )
            if not hint and self._on_disk.get(model) == frozenset():  # (its folder is there, laid out wrong)
                hint = (
                    f"; its folder in the repository has no version folder with a {MODEL_FILENAME} "
                    f"(<model>/<version>/{MODEL_FILENAME}, the version a whole number such as 1): see the "
                    "server's log, or run python -m inprocserve validate on the repository"
                )
            if not hint:
                hint = did_you_mean(model, served)
            # version=None here says "no such model" (a known model's missing version carries the version):
            # RequestTelemetry.refused records such refusals under one model name, not the caller's.
            return ModelNotFoundError(f"unknown model {brief(model)} (servable models: {known}){hint}", model=model)
        versions = ", ".join(map(str, sorted(routes.versions)))
        hint = self._why_not(model, version)
        return ModelNotFoundError(
            f"model {brief(model)} has no servable version {version} (servable: {versions}){hint}",
            model=model,
            version=version,
        )

    def _why_not(self, model: str, version: object) -> str:
        """Why ``version`` of a served ``model`` is not served though it is in the repository, as a hint for
        :meth:`not_found` ("" when it is not there): it failed to load, was unloaded by hand, or its model's
        version_policy leaves it out."""
        if not isinstance(version, int) or version not in self._on_disk.get(model, frozenset()):
            return ""
        if version in self.failures.get(model, {}):
            return f"; version {version} is in the repository but failed to load: see the server's status or log"
        if version in self._unloaded_versions.get(model, ()):
            return (
                f"; version {version} is in the repository but was unloaded (Server.unload): "
                f"Server.load({model!r}, version={version}) serves it again"
            )
        return (
            f"; version {version} is in the repository, but the model's version_policy does not select it: "
            'serve it with version_policy = "all" (or { specific = [...] }) in its config.toml'
        )

    def close(self, *, timeout_s: float | None) -> bool:
        """Signal the poller to stop, then drain and retire every version; returns ``False`` if already
        closed. Join the poller with :meth:`join_poller` once the lock is released. Closed already, it still
        retires what is loaded: a forked child's copy of a server its parent was closing (see
        :meth:`after_fork_in_child`) holds the versions the parent's close had not reached at the fork."""
        with self.lock:
            opened = not self.closed
            self.closed = True
            self._stop.set()
            for name in list(self.loaded):
                self.retire(name, list(self.loaded[name]), timeout_s=timeout_s)
            self.routes.clear()
        self.close_draining(timeout_s=timeout_s)
        return opened

    def close_draining(self, *, timeout_s: float | None) -> None:
        """Retire the versions a refresh left to drain on threads of their own (see :meth:`_drain`), as
        :meth:`close` retires a loaded one: wait up to ``timeout_s`` for their runs, then close them, stopping
        the runs still in flight. They are no longer in :attr:`loaded`: only waited for, a stuck run went on after
        ``close()``, its version's sessions and threads never closed. For :meth:`close` and the clean-up of a
        server nobody closed. Without the lifecycle lock (a drain may take ``timeout_s``)."""
        for version, drainer in list(self._drainers.items()):
            if drainer.is_alive():
                version.retire(timeout_s=timeout_s)  # (its thread then ends, and logs the unload)

    def shadow_max_abs_diff(self, model: str) -> float | None:
        """``model``'s ``rollout.shadow.max_abs_diff`` as routed now (for the shadow runner's comparisons)."""
        routes = self.routes.get(model)
        return None if routes is None else routes.state.config.shadow.max_abs_diff

    def join_poller(self, *, timeout_s: float = 5.0) -> bool:
        """After :meth:`close` or :meth:`stop_poller`, without the lock (the poller may be waiting for it):
        wait up to ``timeout_s`` for the poller to end; False if it is still running."""
        poller = self._poller
        if poller is not None and poller is not threading.current_thread():
            poller.join(timeout=timeout_s)
            return not poller.is_alive()
        return True

    def stop_poller(self) -> None:
        """Ask the poller to stop (see :meth:`join_poller`), and any refresh or control revision being
        applied to load no model after the one it is loading now (the process is exiting)."""
        self._stop.set()

    def after_fork_in_child(self, *, closing: bool = False) -> None:
        """In a forked child: fresh lock and event (the parent's may be held), and a new poller. ``closing``:
        the parent was closing the server at the fork. Closed here too, and routing nothing from now on (a
        half-closed server served on: its flags and shadows perhaps closed already, with nothing in the child
        to finish the closing); its versions are left for the child's close() or exit clean-up to retire."""
        self.lock = threading.RLock()
        self.routing = threading.RLock()
        self._stop = threading.Event()
        # The parent's threads, and what they drain: closed by the parent, not waited for or closed again here
        # (this copy's runs are the parent's, and never end here)
        self._drainers = {}
        self._deferred = None
        self._rescanning = False  # (another thread's re-scan at the fork: over, in the child)
        self._pinning = threading.RLock()  # (another thread's name at the fork: never ends in the child)
        # Kept: the holds still to be named, and the failures of their names (warned and shown). The child serves
        # the same versions, so the same holds: it names them at its first refresh or read of the control file
        # (a --preload master's failed name is not lost), shows the failure in its status until then, and does
        # not repeat in each worker the warning the master logged. Its first try waits for the lock all the same:
        # the workers forked at once each try at their first read, and contend as workers finding a new hold do
        # (taken only if free, the master's failure made all but one fail, and show the fleet not held).
        self._pin_waits = True
        if closing:
            self.closed = True
            self._stop.set()
            self.routes.clear()
        self.start_poller()


def _stopped_by_close(error: BaseException) -> bool:
    """Whether a load failed because the server's stop event cut its hashing short (see
    :func:`~._integrity.hashing_stops_on`): :class:`HashingStopped` in ``error``'s chain (a cause, or the error
    being handled when it was raised). Told by its cause, not by the stop event being set when it is recorded:
    a corrupt file or a checksum mismatch found just as ``close()`` began was logged at INFO, as if the close
    had stopped it."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        if isinstance(link, HashingStopped):
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False


def controlled(rollout: RolloutConfig, state: ModelControl, *, model: str | None = None) -> RolloutConfig:
    """A model's rollout config with the control file's canary laid over it: a canary the file sets replaces
    the configured strategy; else a canary an operator stopped (``canary_off``) sends no one to the configured
    canary's version (at 0 %, as ``canary MODEL 2 0`` would: a ``<prefix>.canary.percent`` flag still wins, and
    the configured shadows run on). Other strategies are left as configured (``kill`` stops those); their
    configured canary is at 0 % too, so a ``<prefix>.strategy`` flag that turns the canary on sends no one to it.

    A stop that recorded the version it stopped (``canary_off_version``) holds only while the configured canary
    is that version: a deploy's new canary version runs at its configured share (``model``, where given, has
    that logged once per worker; see :func:`_warn_stop_not_applying`). The configured version is compared, not
    a ``<prefix>.canary.version`` flag's (read later, per request)."""
    if state.canary_version is not None:
        canary = CanaryConfig(version=state.canary_version, percent=state.canary_percent)
        return dataclasses.replace(rollout, strategy="canary", canary=canary)
    if state.canary_off and not stop_outdated(state, rollout.canary.version):
        # (any strategy: a `strategy` flag may make it a canary at run time)
        return dataclasses.replace(rollout, canary=dataclasses.replace(rollout.canary, percent=0.0))
    if state.canary_off and model is not None:
        _warn_stop_not_applying(model, state.canary_off_version, rollout.canary.version)
    return rollout


def stop_outdated(state: ModelControl, configured: int | None) -> bool:
    """Whether ``state``'s stop of a canary (``canary_off``) was of another version than ``configured``, the
    configured canary's now: stopped with its version known (``canary_off_version``), and a canary of another
    version configured since (a deploy's new canary, which runs)."""
    stopped = state.canary_off_version
    return state.canary_off and stopped is not None and configured is not None and configured != stopped


def configured_canary_version(registry: Registry, name: str) -> int | None:
    """The canary version ``name``'s own configuration names (``ModelConfig(rollout=...)`` in code, else the
    ``config.toml`` its serving versions were loaded with), what a stop records (``canary_off_version``);
    ``None`` without one, with nothing of ``name`` loaded here, or when the model's ``config.toml`` names
    another canary now (a deploy this worker has not read yet, that others may run: the stop then holds for
    any version rather than record this worker's)."""
    configured = registry._rollouts.get(name)
    if configured is None:
        routes = registry.routes.get(name)
        if routes is None:
            return None
        configured = routes.default.config.rollout
    version = configured.canary.version
    if version is None or registry.repository is None or name in registry._explicit or name in registry._load_configs:
        return version
    path = registry.repository / name / CONFIG_FILENAME
    try:
        config = load_model_config(path, registry._defaults, ignored=[]) if path.exists() else registry._defaults
    except (ConfigurationError, OSError):
        return None
    code = registry._code_configs.get(name)
    config = config if code is None else config.overlaid(code, source=f"models[{name!r}]")
    return version if config.rollout.canary.version == version else None


_STOPS_NOT_APPLYING: set[tuple[str, int | None, int | None]] = set()
"""(model, version stopped, configured version) already warned of in this process (see
:func:`_warn_stop_not_applying`): each publish of the model's routes calls :func:`controlled` again."""
_STOPS_NOT_APPLYING_LOCK = threading.Lock()


def _forget_stops_warned() -> None:
    """In a forked worker: warn once in this worker too (a ``--preload`` master may have warned already), with a
    lock of its own (one another of the master's threads held at the fork is held forever here)."""
    global _STOPS_NOT_APPLYING, _STOPS_NOT_APPLYING_LOCK
    _STOPS_NOT_APPLYING = set()
    _STOPS_NOT_APPLYING_LOCK = threading.Lock()


_fork.at_fork_in_child(_forget_stops_warned)


def _warn_stop_not_applying(model: str, stopped: int | None, configured: int | None) -> None:
    """Log, once per model and worker (process), that the control file's stop of canary ``stopped`` no longer
    holds: the configuration now names canary ``configured``, which runs at its configured share."""
    with _STOPS_NOT_APPLYING_LOCK:
        if (model, stopped, configured) in _STOPS_NOT_APPLYING:
            return
        _STOPS_NOT_APPLYING.add((model, stopped, configured))
    logger.warning(
        "model %r: the control file's stop of canary version %s does not apply to the configured canary version "
        "%s, which now runs; `canary ... none` stops it",
        model,
        stopped,
        configured,
    )


_GUESSED_AMONG = 8
"""At most this many served names of about the sent name's length are compared with it: a comparison costs
tens of microseconds, and any client may send unknown names (16 ms a request among 1,000 names)."""

_TYPO_LENGTHS = 3
"""A typo's name is at most this many characters longer or shorter than the name meant (``fraud-v2``)."""


def did_you_mean(model: str, served: list[str]) -> str:
    """The served model name closest to ``model`` (a typo: ``fruad`` for ``fraud``), as a hint for
    :meth:`Registry.not_found`; "" when none is close. Only names within a few characters of its length are
    compared (a typo's), and none when more than ``_GUESSED_AMONG`` are: the work is bounded whatever a
    client sends, however long the name or many the models."""
    length = len(model)
    near = [name for name in served if abs(len(name) - length) <= _TYPO_LENGTHS]
    if not near or len(near) > _GUESSED_AMONG:
        return ""
    meant = close_match(model, near)
    return "" if meant is None else f"; did you mean {brief(meant)}?"


def _changed_models(previous: Control, control: Control) -> set[str]:
    """The models whose control state differs between two revisions."""
    names = set(control.models) | set(previous.models)
    return {name for name in names if control.models.get(name) != previous.models.get(name)}


def _served(state: ModelControl | None) -> set[int]:
    """The versions a model's control state serves: its stable version, and its canary while active."""
    if state is None:
        return set()
    return {v for v in (state.stable, state.canary_version if state.canary_active else None) if v is not None}


def _keep_serving(versions: Collection[int]) -> str:
    """ "version 3 keeps serving", "versions 2, 3 keep serving": a problem's message, read by people."""
    if len(versions) == 1:
        return f"version {next(iter(versions))} keeps serving"
    return f"versions {', '.join(map(str, sorted(versions)))} keep serving"


def _said_once(said: dict[str, str], name: str, problem: str) -> str:
    """``problem`` of model ``name``, logged as a warning unless it is what ``said`` holds for the model already
    (a refresh at every poll would repeat it); kept in ``said`` (which a refresh without it empties)."""
    if said.get(name) != problem:
        logger.warning("%s", problem)
    said[name] = problem
    return problem


def _remote_path(name: str, version: int) -> Path:
    """The path a version loaded with ``remote=`` stands under in status: where its ``remote.toml`` would be
    in a repository, under ``<remote>`` (nothing is read from it, and no text quotes it)."""
    return Path("<remote>", name, str(version), REMOTE_FILENAME)


def _stamp(path: Path, *, access: bool = False) -> _Stamp | None:
    """What a version's load read: the name, mtime, size and inode of its file, of the other files in its
    folder (external weights still being copied), of the external-data files the model names in subfolders
    (``data/weights.bin``) and of the files of its model's folder (its ``config.toml``, a warm-up archive),
    links by what they point to (a dangling one too: its target may arrive later), but not the
    optimized-graph cache a load writes there, nor hidden files (an editor's swap file beside the
    ``config.toml`` it edits, rsync's temporary copy, NFS's ``.nfs...``: the scan ignores them too, and each
    reloaded every version of the model, emptying its caches and drift windows, with twice its memory for
    the time), unless the model names one as its external data. A change to any of them reloads a loaded
    version, or retries a failed one; ``None`` if the file is gone.

    Subfolders are not walked: a refresh stamps every version at every poll, and a version folder may hold
    anything. The external-data locations come from the model file, walked once per version of it (see
    :func:`~inprocserve._integrity.external_data_locations`), so a poll costs a stat per such file.

    A copy that keeps the mtime and size (``rsync -a``, a rename into place) is a new inode. The change time
    is left out (0): a ``chmod`` or a hard-link backup moves it, and every version would reload. (A file deleted
    and created again with its old size and mtime, as ``tar -x`` over the old one does, may get its old inode
    back: docs/repository.md says how to deploy so that it is seen.)

    ``access=True`` puts the change time in: what a failed version waits for. A load that failed because a
    file could not be read (copied with a umask that keeps the server out) is fixed by a ``chmod``, a
    ``chown`` or an ACL, which change nothing else: without it, the version stayed failed until a restart."""
    try:
        info = path.stat()
    except OSError:
        return None
    entries = [(str(path), info.st_mtime_ns, info.st_size, info.st_ino, info.st_ctime_ns if access else 0)]
    for folder in (path.parent, path.parent.parent):
        try:
            with os.scandir(folder) as listing:
                for entry in listing:
                    if _WRITTEN_BY_LOADS.fullmatch(entry.name) or entry.name.startswith("."):
                        continue
                    if entry.is_symlink():  # (what it points to: a checksum whose target arrives later)
                        try:
                            stat = entry.stat(follow_symlinks=True)
                        except OSError:
                            stat = None
                        if stat is None or not stat_is_file(stat.st_mode):  # dangling, or a folder: one marker,
                            entries.append((entry.path, -1, -1, -1, -1))  # which changes once it is a regular file
                            continue
                    elif entry.is_file(follow_symlinks=False):
                        stat = entry.stat(follow_symlinks=False)
                    else:
                        continue
                    entries.append(
                        (entry.path, stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns if access else 0)
                    )
        except OSError:
            continue
    if path.suffix == ".onnx":
        entries.extend(_nested_external_data(path, access=access))
    return tuple(sorted(entries))


def _model_files(path: Path) -> tuple[tuple[str, int, int, int, int], ...] | None:
    """The identity of what a version's sessions are built from, which a load compares before and after
    building them: its file and the external-data files it names (name, mtime, size, inode and change time, so
    a file renamed over it and back is a change too). Not the rest of its folders, as :func:`_stamp` does: a
    file loaded by ``load(path=...)`` may sit in a busy folder. ``None`` if the file is gone."""
    try:
        info = path.stat()
    except OSError:
        return None
    entries = [(str(path), info.st_mtime_ns, info.st_size, info.st_ino, info.st_ctime_ns)]
    if path.suffix == ".onnx":
        for location in external_data_locations(path):
            try:
                stat = (path.parent / location).stat()
            except OSError:
                entries.append((location, -1, -1, -1, -1))
                continue
            entries.append((location, stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns))
    return tuple(entries)


def _nested_external_data(model_file: Path, *, access: bool) -> list[tuple[str, int, int, int, int]]:
    """The stamp entries of the external-data files ``model_file`` names below its folder, and of hidden ones
    beside it (the others beside it are in the folder's listing already): links followed, a missing one as a
    marker."""
    entries = []
    for location in external_data_locations(model_file):
        data = model_file.parent / location
        if data.parent == model_file.parent and not data.name.startswith("."):
            continue
        try:
            stat = data.stat()
        except OSError:
            entries.append((str(data), -1, -1, -1, -1))
            continue
        entries.append((str(data), stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_ctime_ns if access else 0))
    return entries


def _configs_differ(old: ModelConfig, new: ModelConfig) -> bool:
    """Whether a version loaded (or failed) on ``old`` is to be loaded again on ``new`` (see Registry._changed)."""
    return old != new or not old.rollout.routes_as(new.rollout)


def _load_problem(name: str, number: int, path: Path, exc: ModelLoadError) -> str:
    """A load failure as refresh() reports it: named by its version's folder, which a remote model server's
    error ("http://host/v2/models/x: cannot connect") would not name."""
    message = str(exc)
    if str(path.parent) in message or message.startswith(f"model {name!r} version {number}"):
        return message  # (named already)
    return f"model {name!r} version {number}: {message}"


def _names_by_gate(state: ModelControl | None, stable: int) -> bool:
    """Whether ``state`` names ``stable`` the stable version with the compatibility gate's mark."""
    return state is not None and state.stable == stable and state.gate_named


def _no_version_file(folder: Path) -> bool:
    """Whether a version's ``folder`` is gone from disk, or there without its model file (nor ``remote.toml``):
    no worker that starts can load that version (see ``Registry._sync_model``)."""
    return not any(os.path.exists(folder / file) for file in (MODEL_FILENAME, REMOTE_FILENAME))


def _folder_entries(folder: Path) -> tuple[tuple[str, int, int], ...] | None:
    """A version's ``folder`` as it stands (its own inode and modification time, which change as an entry is
    added, removed or renamed, even one gone again since; and each entry's path, size and modification time,
    those of its sub-folders too, as external data the model names in one, ``data/weights.bin``, is copied before
    the model file by a copy in name order; links not followed), or None where it cannot be listed (gone): what
    changes while a copy writes it. An entry removed while it is listed is left out (its folder's modification
    time tells of it), not taken for a folder that cannot be listed."""
    try:
        info = os.stat(folder)
    except OSError:
        return None
    entries = [("", info.st_ino, info.st_mtime_ns)]
    pending = [(str(folder), "")]
    while pending:
        path, prefix = pending.pop()
        try:
            with os.scandir(path) as listing:
                found = list(listing)
        except OSError:  # (a sub-folder removed since its parent was listed, or one that cannot be: its own
            if not prefix:  # entry is there)
                return None
            continue
        for entry in found:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:  # (removed since the listing)
                continue
            name = prefix + entry.name
            entries.append((name, info.st_size, info.st_mtime_ns))
            if stat_is_dir(info.st_mode):
                pending.append((entry.path, name + "/"))
    return tuple(sorted(entries))


def _stopping(name: str) -> str:
    return f"model {name!r}: not (re)loaded: the server is stopping"


def close_versions(loaded: dict[str, dict[int, ModelVersion]]) -> None:
    """Last-resort cleanup when a server is garbage-collected or the interpreter exits unclosed."""
    for versions in list(loaded.values()):
        for version in list(versions.values()):
            version.retire(timeout_s=1.0)
