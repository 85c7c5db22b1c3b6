"""Pre-fork servers (gunicorn ``--preload``): check in the master, build and warm in each worker.

onnxruntime must never be imported in a process that forks: every child it forks afterwards hangs or
aborts (SIGABRT) at exit, in onnxruntime's exit-time clean-up (see :mod:`inprocserve._fork`, which logs
an error at such a fork). So the master process only *checks* the repository — layout, ``config.toml`` files,
and each model's signature read with the ``onnx`` package (no onnxruntime) — and every worker builds and
warms its own sessions right after the fork, before it takes traffic:

* automatically: :func:`build_after_fork` registers a builder in the master; each worker forked from it
  runs the builder on a background thread as soon as it starts (its readiness endpoint answers 503 until
  the builder is done, and requests that arrive earlier wait for it instead of building again);
* or synchronously in a gunicorn hook: ``post_worker_init = inprocserve.gunicorn.post_worker_init``
  (see :mod:`inprocserve.gunicorn`), so a worker accepts no connection before its models are warm.
"""

from __future__ import annotations

import atexit
import inspect
import itertools
import logging
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import Any

from . import _fork
from ._backend import raised_by_signal_handler
from ._config import ModelConfig, check_model_configs, load_model_config
from ._config_checks import check_bool
from ._control import CONTROL_FILENAME, Control, ControlFile
from ._errors import ConfigurationError, ModelLoadError
from ._remote_model import read_remote_toml
from ._repository import ModelSource, is_remote, scan_repository

__all__ = [
    "build_after_fork",
    "check_at_start",
    "check_repository",
    "has_builders",
    "refuse_at_start",
    "replacement_worker",
    "shield_exit",
    "warm_worker",
]

logger = logging.getLogger(__name__)


class _Builder:
    """A registered builder: held weakly when it is a bound method (the plug-ins pass their app state's
    ``warm``), so that registering does not keep an app alive after it is dropped."""

    def __init__(self, build: Callable[[], object], pid: int) -> None:
        self.pid = pid  # the process whose direct children run it on a thread; -1: only warm_worker() runs it
        self.done_in: int | None = None  # the pid it last completed in
        self.key = key = next(_keys)
        self._build: Callable[[], Callable[[], object] | None]
        if inspect.ismethod(build):
            # (a weak reference to the object, not weakref.WeakMethod: at the exit of a process whose app is in
            # a module, Python 3.13 calls a WeakMethod's own callback after the WeakMethod is gone, and it
            # printed "Exception ignored in: <function WeakMethod.__new__.<locals>._cb ...> AttributeError" at
            # every exit of every EAGER worker and of the master)
            owner = weakref.ref(build.__self__, lambda _: _builders.pop(key, None))
            function = build.__func__
            self._build = lambda: None if (obj := owner()) is None else function.__get__(obj)
        else:
            self._build = lambda: build

    def get(self) -> Callable[[], object] | None:
        """The builder, or ``None`` once the object whose method it is has been garbage-collected."""
        return self._build()


_keys = itertools.count()
# Registration order; a dead weak builder removes itself (dict operations are atomic: no lock, which a
# weakref callback, run by the garbage collector on any thread at any moment, could not take safely).
_builders: dict[int, _Builder] = {}
_lock = threading.Lock()


def build_after_fork(build: Callable[[], object], *, background: bool = True) -> None:
    """Run ``build`` in every process forked from this one, right after the fork.

    ``build`` must be idempotent and thread-safe (the plug-ins pass their "server for this process"
    getter): it may be called both by the automatic background thread and by :func:`warm_worker`.

    A bound method (``holder.get``) is held weakly: it is dropped once its object is garbage-collected, so
    registering does not keep an app (or anything else) alive, and a dropped app is not built in later
    children; keep the object referenced for as long as its builder should run. Any other callable (a
    function, a lambda) is held for the life of the process. Registering the same builder again does
    nothing.

    Args:
        build: Builds and warms this process's server(s).
        background: Start ``build`` on a thread in each forked child automatically. With ``False`` only
            :func:`warm_worker` (for example the gunicorn hook) runs it.

    Raises:
        ConfigurationError: ``background`` under a uWSGI that runs Python threads only during requests
            (before 2.0.27, without ``--enable-threads`` or ``--threads``): the thread would never finish.
    """
    problem = _fork.uwsgi_without_threads() if background else None
    if problem is not None:  # (the build thread would never finish: fail the app's start instead)
        raise ConfigurationError(f"EAGER builds each worker's server on a thread after the fork; {problem}")
    pid = os.getpid() if background else -1
    with _lock:
        for entry in _registered():
            if entry.pid == pid and entry.get() == build:
                return
        entry = _Builder(build, pid)
        _builders[entry.key] = entry


def _registered() -> list[_Builder]:
    return list(_builders.copy().values())  # a copy first: a weakref callback may remove one meanwhile


def has_builders() -> bool:
    """Whether any builder (of a live object) is registered for :func:`warm_worker` to run."""
    return any(entry.get() is not None for entry in _registered())


def warm_worker() -> list[str]:
    """Run every registered builder in this process now (once per process); returns the errors."""
    errors: list[str] = []
    for entry in _registered():
        build = entry.get()
        if build is None or entry.done_in == os.getpid():
            continue
        try:
            build()
        except Exception as exc:  # one broken app must not keep the others from warming
            if raised_by_signal_handler(exc):  # the process's own signal handler stopped the build (a start-up
                raise  # time limit): its exception, not a broken app to log and go on past (built next time)
            logger.exception("building the inprocserve server in worker %d failed", os.getpid())
            errors.append(str(exc))
            continue
        finally:
            del build  # the thread holds no strong reference to the app once its build is done
        entry.done_in = os.getpid()
    return errors


_shielded_in: int | None = None


def shield_exit() -> None:
    """Ignore SIGTERM once this process has begun to exit (idempotent; called by every Server).

    A worker that is already exiting (``max_requests`` recycling, a graceful stop) closes its sessions
    during interpreter shutdown, after CPython has put SIGTERM back to its default action; a SIGTERM
    from the master then (it sends one to every child on its own shutdown) would kill the worker halfway
    through, and gunicorn would report it as killed by a signal. An ignored signal is left ignored by
    CPython's shutdown, so the exit completes; SIGKILL after the graceful timeout still stops it.
    """
    global _shielded_in
    if _shielded_in != os.getpid():
        _shielded_in = os.getpid()
        atexit.register(_ignore_termination)  # runs before the servers' own exit-time close (LIFO)


def _ignore_termination() -> None:
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


_warm_after_patch = False  # the warm-up of this forked child waits for gevent's patch (see _after_fork_in_child)

_cores_for_next_child: frozenset[int] | None = None
"""The cores the next process forked here keeps to: set in a gunicorn master by ``inprocserve.gunicorn.pre_fork``
just before it forks a worker, applied first thing in that worker (see :func:`keep_next_child_on`), and
forgotten in the master right after the fork."""


def keep_next_child_on(cores: frozenset[int] | None) -> None:
    """Have the next process forked from this one keep to ``cores`` from its first moment: before this
    module's fork hook starts the warm-up thread, so that thread, and every thread it starts (the server's,
    onnxruntime's), keeps to them, and the sessions it builds count those cores for their threads. gunicorn
    calls its ``post_fork`` hook only after Python's fork hooks ran: setting the worker's affinity there
    left the warm-up thread, started in between, on every core (with everything it started)."""
    global _cores_for_next_child
    _cores_for_next_child = cores


def _forget_next_child_cores() -> None:
    """After a fork, in the parent: the choice was for that child only (a later fork of the master, such as
    gunicorn's re-exec on SIGUSR2, is not a worker)."""
    global _cores_for_next_child
    _cores_for_next_child = None


def _keep_to_chosen_cores() -> None:
    global _cores_for_next_child
    cores, _cores_for_next_child = _cores_for_next_child, None
    if cores is None:
        return
    try:
        os.sched_setaffinity(0, cores)
    except OSError as exc:  # (a core taken away from the process meanwhile)
        logger.warning("worker %d could not keep to core(s) %s (%s); it uses every core", os.getpid(), cores, exc)


def _after_fork_in_child() -> None:
    global _lock, _warm_after_patch, _forked_as_replacement
    _keep_to_chosen_cores()  # (first: the warm-up thread started below keeps to them)
    _lock = threading.Lock()
    _warm_after_patch = False
    _forked_as_replacement = _gunicorn_replacement_at_fork()
    if _fork.uwsgi_module() is None:  # (under uWSGI: from its post-fork hook, once the worker is told apart)
        _start_builders()


def _start_builders() -> None:
    global _warm_after_patch
    parent = os.getppid()
    if any(entry.pid == parent and entry.get() is not None for entry in _registered()) and not _fork.in_uwsgi_helper():
        # (a uWSGI mule or spooler serves no requests: built there, a server only held memory)
        if _fork.patch_pending():
            # gunicorn's gevent worker: it patches the process right after the fork. Started now, the thread
            # was a real OS thread that built the server while gevent patched it, half with real locks and
            # half with gevent's, and the server's own threads became greenlets of the warm thread's hub,
            # which never ran them once it ended: the worker's requests hung. Started once the process is
            # patched, it is a greenlet like the others. (A process that is never patched builds its
            # server at its first request, or in the gunicorn hook.)
            _warm_after_patch = True
            return
        # Only in direct children of the process that registered. Not a daemon thread: a worker told to
        # stop (SIGTERM) while the thread is inside onnxruntime's session creation would abort at exit;
        # the interpreter's exit waits for it instead (gunicorn's graceful timeout still bounds that).
        threading.Thread(target=warm_worker, name="inprocserve-warm").start()


def _gevent_lock() -> None:
    global _lock
    _lock = threading.Lock()


def _warm_once_patched() -> None:
    global _warm_after_patch
    if _warm_after_patch:
        _warm_after_patch = False
        threading.Thread(target=_warm_after_a_yield, name="inprocserve-warm").start()


def _warm_after_a_yield() -> None:
    """The warm-up, once the code that patched gets on. The patch event comes inside gunicorn's
    ``GeventWorker.patch()``, before the worker installs its signal handlers, and a greenlet runs at once
    when started: building there kept the worker on the master's inherited handlers for the whole build,
    and a SIGTERM then (a deploy right after a start) was swallowed: the worker served on until the graceful
    timeout killed it. (gevent's ``time.sleep(0)`` lets every other ready greenlet run first.)"""
    time.sleep(0)
    warm_worker()


_fork.at_fork_in_child(_after_fork_in_child)
if hasattr(os, "register_at_fork"):  # POSIX only
    os.register_at_fork(after_in_parent=_forget_next_child_cores)
_fork.at_uwsgi_postfork(_start_builders)
_fork.on_monkey_patch(_gevent_lock)
_fork.on_monkey_patch(_warm_once_patched, start=True)


def check_repository(
    repository: str | Path,
    *,
    config: ModelConfig | None = None,
    models: Mapping[str, ModelConfig] | None = None,
    follow_symlinks: bool = False,
) -> dict[str, Any]:
    """Check a repository without onnxruntime: layout, every ``config.toml``, and each served version's
    signature (read with the ``onnx`` package, if installed). Safe to call in a process that will fork.
    Each model's config is layered as the Server does (defaults < ``config`` < ``config.toml`` <
    ``models``, per field), and the versions checked are those the Server would load: the ones its
    version policy selects and the ones its rollout names (stable, canary, arms, shadows).
    A remote version's ``remote.toml`` is read, but its server is not contacted: no connection may cross
    the fork, and each worker reads the remote model's metadata itself.
    Pass the ``follow_symlinks`` the Server gets: without it linked model and version folders (a release
    linked into the repository) are only listed in ``problems``, not checked, while the workers serve them.

    Returns:
        ``{"models": {name: {version: {"inputs": [...], "outputs": [...]}}}, "problems": [...],
        "signatures_checked": bool}``; a remote version's entry is ``{"remote": endpoint}``. Layout
        problems that a server would skip are listed, not raised.

    Raises:
        ConfigurationError: the repository is not a folder, a ``config.toml`` is invalid, or the control file
            cannot be read (each worker would refuse its routed requests). A version the control file names
            that is not in the repository is listed in ``problems``; those it names are checked.
        ModelLoadError: a model file that would be served is not a readable ONNX model, or a
            ``remote.toml`` is invalid.
    """
    check_model_configs(config, models)
    check_bool("follow_symlinks", follow_symlinks)
    scan = scan_repository(Path(repository), follow_symlinks=follow_symlinks)
    onnx: Any
    try:
        import onnx
    except ImportError:
        onnx = None
        logger.warning(
            "the onnx package is not installed: the repository's layout and configs are checked before the "
            "fork, but not its model files (install onnx, or the plug-in's 'eager' extra, to check them)"
        )
    report: dict[str, Any] = {"models": {}, "problems": list(scan.problems), "signatures_checked": onnx is not None}
    control = _read_control(Path(repository))
    failures: list[str] = []
    for name, source in scan.models.items():
        effective = _effective_config(name, source, config, models or {})
        # What the Server loads: the versions its policy selects, and those the rollout names (stable,
        # canary, arms, shadows), which it loads whatever the policy, and those the control file names.
        referenced = {v for v in effective.rollout.referenced_versions if v in source.versions}
        state = control.model(name)
        if state is not None:
            referenced |= state.versions & set(source.versions)
            # (every worker serves another version meanwhile; a previous stable version removed since only
            # leaves nothing to roll back to, as validate and the workers see it)
            served = {state.stable, state.canary_version if state.canary_active else None}
            missing = sorted(v for v in served if v is not None and v not in source.versions)
            if missing:
                report["problems"].append(
                    f"model {name!r}: the control file {CONTROL_FILENAME} (revision {control.revision}) serves "
                    f"version(s) {', '.join(map(str, missing))}, not in the repository"
                )
        absent = sorted(effective.rollout.referenced_versions - set(source.versions))
        if absent:  # (a typo such as stable = 33 for 3: the workers serve the latest version instead)
            report["problems"].append(
                f"model {name!r}: its rollout names version(s) {', '.join(map(str, absent))}, not in the repository"
            )
        if source.versions and not effective.version_policy.select(list(source.versions)) and not referenced:
            report["problems"].append(  # (a typo such as { specific = [12] }: the workers serve it nothing)
                f"model {name!r}: its version_policy selects none of the versions in the repository "
                f"({', '.join(map(str, sorted(source.versions)))}); the model serves nothing"
            )
        versions: dict[int, Any] = {}
        for number in sorted(set(effective.version_policy.select(list(source.versions))) | referenced):
            if is_remote(source.versions[number]):
                try:
                    remote = read_remote_toml(source.versions[number], ignored=[])  # (as a server reads it)
                    versions[number] = {"remote": remote.endpoint}
                except ModelLoadError as exc:
                    failures.append(f"model {name!r} version {number}: {exc}")
                continue
            if onnx is None:
                versions[number] = None
                continue
            try:
                versions[number] = _signature(onnx, source.versions[number])
            except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for a bad file
                if raised_by_signal_handler(exc):  # the caller's time limit as the file was read: not the file's
                    raise  # fault (it was reported as an unreadable model: ModelLoadError)
                failures.append(f"model {name!r} version {number}: not a readable ONNX model ({exc})")
        report["models"][name] = versions
    if failures:
        raise ModelLoadError("; ".join(failures))
    return report


def check_at_start(
    repository: str | Path,
    *,
    config: ModelConfig | None = None,
    models: Mapping[str, ModelConfig] | None = None,
    follow_symlinks: bool = False,
) -> list[str]:
    """The plug-ins' start-up check in eager mode: :func:`check_repository`, whose errors fail the app's
    load, except in a gunicorn worker that replaces an earlier one (see :func:`replacement_worker`).

    Without ``--preload`` every gunicorn worker loads the app, and so runs this check, each time it is
    started; a worker whose app fails to load makes gunicorn halt the whole server ("Worker failed to
    boot"), the workers that serve included. A repository caught mid-change (a ``config.toml`` saved
    with a typo, a model file still being copied) when a worker was recycled (``--max-requests``),
    replaced after a crash, or added (``TTIN``) stopped the fleet for good, although every running server
    served around it. Such a worker logs the failure once and starts: its server serves what loads,
    ``/ready`` names the model it does not serve, and each refresh retries it, as in lazy mode. A first
    start still fails on a broken repository: that is the check's purpose.

    Returns:
        The report's ``problems`` (to log), or ``[]`` when a replacement worker started past a failed check.

    Raises:
        ConfigurationError, ModelLoadError: what :func:`check_repository` raises, outside a replacement worker.
    """
    try:
        report = check_repository(repository, config=config, models=models, follow_symlinks=follow_symlinks)
    except (ConfigurationError, ModelLoadError) as exc:
        refuse_at_start(exc, repository=repository)
        return []
    except Exception as exc:
        # A signal handler's exception as the check read the repository (gunicorn's own handlers run the
        # worker_int and worker_abort hooks; SIGUSR1 reopens its log files): raised as it is, it failed a
        # replacement worker's load, and gunicorn halted the whole server. There, it is a failed check.
        if not raised_by_signal_handler(exc) or replacement_worker() is None:
            raise
        stopped = ModelLoadError(f"a signal handler's exception stopped the check: {exc!r}")
        stopped.__cause__ = exc
        refuse_at_start(stopped, repository=repository)
        return []
    problems: list[str] = report["problems"]
    return problems


_tolerated: set[tuple[int, str]] = set()  # (pid, what) said by refuse_at_start in this process
# refuse_at_start let this process, or the one it was forked from (a reloaded uWSGI master), start past a
# failed check: its servers retry what failed without a poller (Registry.start_healer)
_started_past_failure = False
# a gunicorn worker forked after the first ones (see _gunicorn_replacement_at_fork, and below replacement_worker)
_forked_as_replacement = False


def retries_failed_loads() -> bool:
    """Whether a server built in this process without a poller retries its failed loads until they load
    (``Registry.start_healer``): in a worker started after the server's first ones, which found the
    repository mid-change, as one recycled or crash-replaced is apt to, and then served the models that
    failed nothing until it was replaced in turn. A first start does not: a refresh or a reload does it.

    Such a worker: one that started past a failed start-up check (:func:`refuse_at_start`), a gunicorn
    worker forked after the first ones (a ``--preload`` master's: it loads no app, and so runs no check),
    or a respawned uWSGI worker (:func:`replacement_worker`)."""
    if _started_past_failure or _forked_as_replacement:
        return True
    return _fork.uwsgi_module() is not None and replacement_worker() is not None


def _gunicorn_replacement_at_fork() -> bool:
    """In a child just forked: whether gunicorn's arbiter forked it as a worker started after the server's
    first ones (its ``age`` above ``workers``, or from a ``HUP`` reload), told by the arbiter's frames below."""
    if "gunicorn.arbiter" not in sys.modules:
        return False
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code.co_name
        if code in ("spawn_worker", "reload") and _is_arbiter(frame.f_locals.get("self")):
            if code == "reload":
                return True
            worker = frame.f_locals.get("worker")
            age = getattr(worker, "age", None)
            first = getattr(getattr(worker, "cfg", None), "workers", None)
            if isinstance(age, int) and isinstance(first, int) and age > first:
                return True
        frame = frame.f_back
    return False


def refuse_at_start(error: ConfigurationError | ModelLoadError, *, repository: str | os.PathLike[str]) -> None:
    """Raise ``error``, the repository's state found as the app loads, unless this process is a worker
    that replaces an earlier one (:func:`replacement_worker`): there, log it and return, so the worker
    starts (see :func:`check_at_start`). The plug-ins' settings checks call it for a repository that is
    not a folder (a release swapped in by two renames, a network mount briefly gone); their other
    settings are no repository state, and always raise.

    Raises:
        ConfigurationError, ModelLoadError: ``error``, outside a replacement worker.
    """
    global _started_past_failure
    replacing = replacement_worker()
    if replacing is None:
        raise error
    _started_past_failure = True
    # (said once per worker: a missing folder fails the settings check and the eager check alike)
    what = "missing" if not _is_folder(repository) else str(error)
    if (os.getpid(), what) in _tolerated:
        return
    _tolerated.add((os.getpid(), what))
    _fork._say_error(  # (on stderr where logging is not set up: a gunicorn worker seldom set it up)
        f"{replacing}, and the repository check failed: {error}. It starts anyway (a worker that fails to load "
        "stops the whole server, or serves nothing for good): it serves the models that load, /ready names "
        "those it does not serve, and it retries them until they load (each refresh with poll_interval_s; without "
        "it, after 1 s, then twice as long each time up to a minute); a server that "
        "found no repository folder is built again at the next request",
        logger,
    )


_RELOAD_AFTER_S = 2.0  # a uWSGI master process that started this long before uWSGI did was executed again


def _is_folder(path: str | os.PathLike[str]) -> bool:
    try:
        return Path(path).is_dir()
    except (OSError, TypeError, ValueError):
        return False


def replacement_worker() -> str | None:
    """If this process is a gunicorn worker loading its app after the server's first workers were started
    (one recycled by ``--max-requests``, replaced after a crash or a timeout, added by ``TTIN``, or started
    by a ``HUP`` reload), a uWSGI ``--lazy-apps`` worker that was respawned, or a uWSGI process after a
    graceful reload, a description of it; otherwise ``None``.

    gunicorn numbers its workers by ``age``, 1 for the first it forks: the first start forks ages 1 to
    ``workers``, and every later worker is older than that. The worker is found on the call stack: the
    app is loaded inside its ``load_wsgi`` (or ``init_process``), with or without a ``gunicorn.conf.py``,
    and a worker forked by a ``HUP`` reload has the arbiter's ``reload`` below it (a reload that raises
    ``workers`` starts some whose age is not above it).
    A ``--preload``ed app is loaded in the master, before any worker: ``None`` there.
    """
    uwsgi = _fork.uwsgi_module()
    if uwsgi is not None:
        return _respawned_uwsgi_worker(uwsgi)
    base = sys.modules.get("gunicorn.workers.base")  # (never imported here: only a gunicorn process has it)
    worker_type = getattr(base, "Worker", None)
    if not isinstance(worker_type, type):
        return None
    worker: Any = None
    frame: FrameType | None = sys._getframe(1)
    while frame is not None:
        code = frame.f_code.co_name
        if worker is None and code in ("load_wsgi", "init_process"):
            candidate = frame.f_locals.get("self")
            worker = candidate if isinstance(candidate, worker_type) else None
        elif worker is not None and code == "reload" and _is_arbiter(frame.f_locals.get("self")):
            # (the arbiter's HUP reload forks the new workers; with a raised --workers, some are young)
            return f"gunicorn worker {os.getpid()} was started by a reload (HUP) of a running server"
        frame = frame.f_back
    if worker is None:
        return None
    age, first = getattr(worker, "age", None), getattr(getattr(worker, "cfg", None), "workers", None)
    if isinstance(age, int) and isinstance(first, int) and age > first:
        return f"gunicorn worker {os.getpid()} (age {age}) was started after the server's first {first}"
    return None


def _respawned_uwsgi_worker(uwsgi: Any) -> str | None:
    """A uWSGI worker that loads the app itself (``--lazy-apps``) after a respawn (``--max-requests``,
    ``--harakiri``, a crash, a reload of that worker): its app failing to load stopped the whole uWSGI
    under ``--need-app``, and without it left the worker answering 500 to every request, for good.

    Or any uWSGI process after a graceful reload of the running server (``SIGHUP``, ``--touch-reload``,
    ``uwsgi --reload``): uWSGI executes itself again, counting the reloads in ``UWSGI_RELOADS``, and loads
    the app again (in the master, by default); failing there, a reload while the repository was
    mid-change stopped uWSGI for good ("no app loaded. GAME OVER" under ``--need-app``)."""
    reload = _uwsgi_reload(uwsgi)
    if reload is not None:
        return f"uWSGI process {os.getpid()} loads the app again after a reload ({reload})"
    try:
        worker_id = uwsgi.worker_id()
        if not isinstance(worker_id, int) or worker_id <= 0:
            return None  # the master: a preforking uWSGI loads the app there, once, before any worker
        for entry in uwsgi.workers():
            respawns = entry.get("respawn_count")
            if entry.get("id") == worker_id and isinstance(respawns, int) and respawns > 0:
                return f"uWSGI worker {worker_id} (pid {os.getpid()}) was respawned (respawn_count {respawns})"
    except Exception:  # (an embedded uWSGI without that API: no way to tell, so a first start)
        logger.debug("could not read uWSGI's worker table", exc_info=True)
    return None


def _uwsgi_reload(uwsgi: Any) -> str | None:
    """How uWSGI tells that it executed itself again (a graceful reload), or None for a first start.

    uWSGI takes any ``UWSGI_RELOADS`` in its environment for a reload (``uwsgi.is_a_reload``): it counts
    reloads there, and a reload executes the master again in the same process. So a fresh uWSGI started
    from an environment that holds one (a uWSGI app that starts another uWSGI passes its own on) was taken
    for a reload, and its first start let a failed repository check through. A reload is believed only if
    the master process started at least ``_RELOAD_AFTER_S`` before this uWSGI did (``uwsgi.started_on``;
    the process's start from ``/proc``, which an ``exec`` keeps): a fresh master started with it. (Where there
    is no ``/proc``, uWSGI's word is taken.) The flag, not the variable: pyuwsgi's Python copies the
    environment before uWSGI counts, so it reads ``UWSGI_RELOADS`` 0 after the first reload."""
    reloads = os.environ.get("UWSGI_RELOADS", "")
    said = getattr(uwsgi, "is_a_reload", None)
    if not (said if isinstance(said, bool) else reloads.isdigit() and int(reloads) > 0):
        return None
    try:
        master = uwsgi.masterpid() or os.getpid()  # (0 without --master: the process itself)
        started_on = float(uwsgi.started_on)
        with open(f"/proc/{int(master)}/stat", encoding="ascii", errors="replace") as stat:
            ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # (field 22, starttime; comm may hold spaces)
        with open("/proc/stat", encoding="ascii", errors="replace") as system:
            booted = next(int(line.split()[1]) for line in system if line.startswith("btime "))
        age = started_on - (booted + ticks / os.sysconf("SC_CLK_TCK"))
    except Exception:  # (no /proc, an embedded uWSGI without that API: uWSGI's word)
        logger.debug("could not tell a uWSGI reload from a first start", exc_info=True)
        return f"UWSGI_RELOADS {reloads or 'set'}"
    if age < _RELOAD_AFTER_S:
        logger.info(
            "uWSGI master %s started with UWSGI_RELOADS=%r in its environment (passed on by the process that "
            "started it?): taken for a first start, not a reload",
            master,
            reloads,
        )
        return None
    return f"master {master}, started {age:.0f} s before this reload"


def _is_arbiter(value: object) -> bool:
    """Whether ``value`` is gunicorn's master (defined before the import-time check below, which calls it)."""
    arbiter_type = getattr(sys.modules.get("gunicorn.arbiter"), "Arbiter", None)
    return isinstance(arbiter_type, type) and isinstance(value, arbiter_type)


# An app a gunicorn worker loads itself (no --preload, no hook file importing inprocserve in the master) imports
# the package there, after the fork: a worker started after the first ones is told here instead.
_forked_as_replacement = replacement_worker() is not None


def _read_control(repository: Path) -> Control:
    """The fleet's control file, read as each worker reads it at start-up.

    A worker that cannot read it refuses every request that pins no version until it can
    (``ControlStateUnknownError``): unchecked here, a control file cut short by a hand edit, or linked to a
    ConfigMap that is not mounted, passed the master's check, and every worker it forked then refused
    its traffic."""
    try:
        return ControlFile(repository).read()
    except ConfigurationError as exc:
        raise type(exc)(f"{exc}; every worker would refuse the requests it routes until it is fixed") from exc


def _effective_config(
    name: str, source: ModelSource, config: ModelConfig | None, models: Mapping[str, ModelConfig]
) -> ModelConfig:
    """The config a Server gives the model (as ``Registry.config_for``): code defaults < ``config=`` <
    ``config.toml`` < ``models=``, per field."""
    effective = config or ModelConfig()
    if source.config_path is not None:
        effective = load_model_config(source.config_path, effective, ignored=[])  # (as a server reads it)
    code = models.get(name)
    return effective if code is None else effective.overlaid(code, source=f"models[{name!r}]")


def _signature(onnx: Any, path: Path) -> dict[str, Any]:
    model = onnx.load(str(path), load_external_data=False)
    initializers = {tensor.name for tensor in model.graph.initializer}

    def describe(value: Any) -> dict[str, Any]:
        shape = [
            dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else None)
            for dim in value.type.tensor_type.shape.dim
        ]
        return {"name": value.name, "shape": shape}

    inputs = [describe(v) for v in model.graph.input if v.name not in initializers]
    if not inputs or not model.graph.output:
        raise ModelLoadError(f"the graph has {len(inputs)} input(s) and {len(model.graph.output)} output(s)")
    return {"inputs": inputs, "outputs": [describe(v) for v in model.graph.output]}
