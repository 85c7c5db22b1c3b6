"""Fork hygiene: objects that own threads or onnxruntime state reset themselves in a forked child.

After ``fork()`` the child has the parent's memory but none of its threads: onnxruntime thread pools,
our worker threads and any lock held at the time are unusable. Objects register here and get a call in
the child so they can start afresh, lazily, the first time they are used there (gunicorn ``--preload``).

That is all a child can be spared: onnxruntime itself does not survive a fork. Once it is imported in a
process (by an ``import``, or by building a :class:`~inprocserve.Server` there), every child that process
forks later hangs or aborts (SIGABRT) at its normal exit, in onnxruntime's own exit-time clean-up, whether
or not the child uses onnxruntime — only a child that ends with ``os._exit`` (as multiprocessing's do) is
spared. So a process that forks workers must not import onnxruntime: servers are built in the workers.
A fork from a process that has imported it logs an error, once per process.

gevent's ``monkey.patch_all()`` after inprocserve was imported is the same problem in another guise. The
locks and queues made before it (at import, in a fork hook) stay real OS ones, while the threads started
after it are greenlets of one OS thread: a greenlet that waits on such a lock blocks every greenlet of the
process, and the one that would release it never runs. gunicorn's gevent worker patches in each worker right
after the fork, so its ``--preload``'ed app, or a ``gunicorn.conf.py`` that imports
``inprocserve.gunicorn``, hung the worker at its first request (until ``--timeout`` killed it, again and
again). So when gevent reports that it patched this process (its ``GeventDidPatchAllEvent``, through
``zope.event``, which gevent depends on), the fork hooks run again (:func:`on_monkey_patch`): everything
starts afresh with gevent's primitives, as in a forked child. Nothing may run yet then; a process whose
inprocserve threads are already running is left alone, with an error saying to patch first.

uWSGI forks its workers from C and, unless given ``--py-call-osafterfork``, runs none of Python's fork
hooks in them: every hook of the package is registered with :func:`at_fork_in_child`, which also runs it
from uWSGI's post-fork hook (see :func:`_hook_uwsgi`).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
from collections.abc import Callable
from typing import Any, Protocol

from ._weak_members import WeakMembers

__all__ = [
    "ForkAware",
    "at_fork_in_child",
    "at_uwsgi_postfork",
    "in_uwsgi_helper",
    "keep",
    "on_monkey_patch",
    "patch_pending",
    "register",
    "uwsgi_module",
    "uwsgi_without_threads",
]

logger = logging.getLogger(__name__)


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


_objects: WeakMembers[ForkAware] = WeakMembers()  # (not a WeakSet: see _weak_members)


def register(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in every child forked while ``obj`` is alive."""
    _objects.add(obj)


# What fork hooks drop in a child (the parent's queued and answered requests) stays referenced here, never
# freed there: see keep.
_kept: list[Any] = []


def keep(*objects: Any) -> None:
    """In a forked child: keep ``objects``, inherited from the parent and dropped by a fork hook, referenced
    for good. Freeing them could run destructors that take a lock some thread of the parent held at the
    fork, held for good in the child: an answer's output array is onnxruntime's, freed through its
    allocator, whose mutex a worker running a batch at that moment holds. The child then hung in its fork
    hook, before it ran any code of its own (2 of about 2,000 forks of a process serving batches from 16
    threads, in the wake relay's hook)."""
    _kept.extend(objects)


def _reset_all() -> None:
    for obj in list(_objects):
        obj._after_fork_in_child()


_warned_in: int | None = None  # the pid that logged the onnxruntime error (once per process)

# Modules whose forked children never run onnxruntime's exit-time clean-up: multiprocessing's end with
# os._exit; subprocess's (with preexec_fn, the only case that calls these hooks) exec another program.
_EXITS_WITH_OS_EXIT = frozenset({"multiprocessing.popen_fork", "multiprocessing.forkserver", "subprocess"})


def _warn_if_onnxruntime_is_imported() -> None:
    """Before a fork: say why the child will hang or abort at exit, if onnxruntime is imported here."""
    global _warned_in
    if "onnxruntime" not in sys.modules or _warned_in == os.getpid():
        return
    try:
        caller = sys._getframe(1)  # the Python frame that called os.fork() (the hook is called from C)
    except ValueError:  # forked from C with no Python frame above
        caller = None
    if caller is not None and caller.f_globals.get("__name__") in _EXITS_WITH_OS_EXIT:
        return
    _warned_in = os.getpid()
    message = (
        f"process {os.getpid()} forks with onnxruntime imported: the child will hang or abort (SIGABRT) when "
        "it exits, whether or not it uses onnxruntime, unless it ends with os._exit. onnxruntime was imported, "
        "or an inprocserve Server built (for example Inprocserve.warm(app) or a Server created at import time "
        "of a --preload'ed module), before the fork: build servers in the workers instead (lazily on first "
        "use, with EAGER, or with the gunicorn post_worker_init hook), and import nothing that imports "
        "onnxruntime in the process that forks them. (Logged once per process.)"
    )
    _say_error(message)


def _say_error(message: str, log: logging.Logger = logger) -> None:
    """Log ``message`` as an error on ``log``, or write it to stderr where nothing would show it: the
    package's NullHandler keeps logging's last resort from doing so, and so does a logger disabled by a
    ``dictConfig`` that left ``disable_existing_loggers`` at its default: a Django ``LOGGING`` setting
    read in a gunicorn worker whose master had imported inprocserve (``gunicorn.conf.py`` importing the
    hook) disabled every inprocserve logger that existed, and a replaced worker said nothing at all."""
    if _handled(log) and not log.disabled:
        log.error("%s", message)
    elif (log.disabled or log.isEnabledFor(logging.ERROR)) and sys.stderr is not None:
        try:  # logging is not set up (gunicorn's master, say): still say it, as logging's last resort would
            sys.stderr.write(f"ERROR {log.name}: {message}\n")
            sys.stderr.flush()
        except (OSError, ValueError):  # a closed or broken stderr: nowhere left to say it
            pass


def _handled(log: logging.Logger) -> bool:
    """Whether a record of ``log`` reaches a handler other than the package's NullHandler."""
    current: logging.Logger | None = log
    while current is not None:
        if any(not isinstance(handler, logging.NullHandler) for handler in current.handlers):
            return True
        current = current.parent if current.propagate else None
    return False


# -- the hooks run in a forked child, by Python or by uWSGI --------------------------------------------------

_imported_in = os.getpid()
_hooks_ran_in: int | None = None  # the pid whose after-fork hooks ran (Python's or uWSGI's)
_child_hooks: list[Callable[[], None]] = []


def _note_hooks_ran() -> None:
    global _hooks_ran_in
    _hooks_ran_in = os.getpid()


def at_fork_in_child(hook: Callable[[], None]) -> None:
    """``os.register_at_fork(after_in_child=hook)``, and the same in a uWSGI worker, where Python's fork
    hooks do not run; in the order registered, once per child, as Python runs them."""
    _child_hooks.append(hook)
    if hasattr(os, "register_at_fork"):  # POSIX only
        os.register_at_fork(after_in_child=hook)


def _after_uwsgi_fork() -> None:
    """uWSGI's post-fork hook: run the package's after-fork hooks here unless Python ran them already
    (``--py-call-osafterfork``), or this is the process that imported the package (a worker that was not
    forked: uWSGI calls the hook in it too, without ``--master``)."""
    if os.getpid() == _imported_in:
        return
    if "onnxruntime" in sys.modules:  # (imported by the master: the worker has run no code of its own yet)
        _say_error(
            f"uWSGI worker {os.getpid()} was forked from a master that had imported onnxruntime: it will hang "
            "or abort (SIGABRT) when it exits (a reload, max-requests, a stop). onnxruntime was imported, or an "
            "inprocserve Server built (for example Inprocserve.warm(app) at import time of the app), in the "
            "master: build servers in the workers instead (lazily on first use, or with EAGER), or run uWSGI "
            "with --lazy-apps."
        )
    if _hooks_ran_in != os.getpid():  # (else Python ran them: --py-call-osafterfork, --py-call-uwsgi-fork-hooks)
        _note_hooks_ran()
        for hook in list(_child_hooks):
            hook()
    for hook in list(_uwsgi_hooks):
        hook()


_uwsgi_hooks: list[Callable[[], None]] = []


def at_uwsgi_postfork(hook: Callable[[], None]) -> None:
    """Call ``hook`` in each process a uWSGI master forks, once uWSGI has made it a worker, mule or spooler
    (:func:`in_uwsgi_helper` tells them apart there; Python's fork hooks, when uWSGI runs them, come before
    that is known)."""
    _uwsgi_hooks.append(hook)


_FALSE = frozenset({"", "0", "false", "no", "off"})


def uwsgi_module() -> Any:
    """uWSGI's own ``uwsgi`` module when this process runs under uWSGI, else None.

    uWSGI puts it in ``sys.modules`` before any code of the app runs. Never imported by name: outside uWSGI
    that imported whatever ``uwsgi.py`` lies on ``sys.path`` (a project's entry file for ``--wsgi-file``,
    say), and ``import inprocserve`` then ran that file, or failed in ``uwsgidecorators`` with an
    AttributeError where pyuwsgi or uwsgi is installed."""
    module = sys.modules.get("uwsgi")
    return module if module is not None and hasattr(module, "opt") and hasattr(module, "masterpid") else None


def uwsgi_without_threads() -> str | None:
    """Under a uWSGI that runs no Python thread while a worker waits for a request, what to change; else None.

    uWSGI before 2.0.27 starts Python with threads off unless given ``--enable-threads`` or ``--threads``:
    its workers then hold the GIL while they wait for a connection, so a thread of the app runs only while
    a request is being served. A worker's ``EAGER`` warm-up thread never finished: /ready answered 503
    ("warming") for good, each probe giving it a moment (uWSGI 2.0.23, 2 workers, 13 s after the start)."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return None
    if tuple(getattr(uwsgi, "version_info", (0,))[:3]) >= (2, 0, 27):  # (threads on by default since)
        return None
    has_threads = getattr(uwsgi, "has_threads", None)
    if has_threads is not None:  # uWSGI's own answer: options such as --gevent N turn threads on too
        return None if has_threads else _NO_THREADS
    options = uwsgi.opt
    enabled = options.get("enable-threads", False)
    if isinstance(enabled, bytes):
        enabled = enabled.decode(errors="replace")
    if "threads" in options or (enabled is True or (isinstance(enabled, str) and enabled.lower() not in _FALSE)):
        return None
    return _NO_THREADS


_NO_THREADS = (
    "uWSGI runs with Python threads off, so inprocserve's background threads run only while a request is "
    "served: start uWSGI with --enable-threads (or --threads N), or use uWSGI 2.0.27 or later"
)


def in_uwsgi_helper() -> bool:
    """Whether this process is a uWSGI mule or spooler: forked from the master as the workers are, but
    serving no requests (its worker id is 0)."""
    uwsgi = uwsgi_module()
    return uwsgi is not None and hasattr(uwsgi, "worker_id") and uwsgi.worker_id() == 0


def _hook_uwsgi() -> None:
    """Under uWSGI, have it call :func:`_after_uwsgi_fork` in each worker it forks. Without it a worker
    forked from a master that loaded the app (uWSGI's default, without ``--lazy-apps``) kept whatever
    the master made as it was: ``EAGER`` never built the server there (the first request did, taking the
    model's load and warm-up), and objects made in the master kept locks and threads of the master's."""
    uwsgi = uwsgi_module()
    if uwsgi is None:
        return
    decorators: Any = None
    # (uwsgidecorators raises "you have to enable the uWSGI master process" at import without --master: the
    # app then failed to load)
    if uwsgi.masterpid() != 0:
        try:
            decorators = importlib.import_module("uwsgidecorators")
        except ImportError:  # uWSGI without its Python module
            pass
    if decorators is not None:
        decorators.postfork(_after_uwsgi_fork)  # (the chain all users share)
        return
    previous = getattr(uwsgi, "post_fork_hook", None)  # chain any hook already set

    def chained() -> None:
        if previous is not None:
            previous()
        _after_uwsgi_fork()

    uwsgi.post_fork_hook = chained


if hasattr(os, "register_at_fork"):  # POSIX only
    # (the first of the package's hooks: the others are registered by modules that import this one)
    os.register_at_fork(before=_warn_if_onnxruntime_is_imported, after_in_child=_note_hooks_ran)
at_fork_in_child(_reset_all)
_hook_uwsgi()


# -- gevent's monkey-patching (see the module's docstring) ---------------------------------------------------

_patch_hooks: list[Callable[[], None]] = []
_patch_starts: list[Callable[[], None]] = []


def on_monkey_patch(hook: Callable[[], None], *, start: bool = False) -> None:
    """Call ``hook()`` (a module's fork hook, say) when gevent monkey-patches this process later: it makes
    that module's locks, queues and thread-locals anew, with gevent's classes. A ``start`` hook starts a
    thread: it is called after every other hook and every registered object's fork hook, since starting a
    thread lets other greenlets run, which must find everything made anew already."""
    (_patch_starts if start else _patch_hooks).append(hook)


def patch_pending() -> bool:
    """Whether this process is about to be monkey-patched by gevent: gunicorn's gevent worker class is loaded
    (in the master, which forks the workers that patch themselves right after the fork), or uWSGI was given
    ``--gevent-monkey-patch`` (each worker patches itself when its gevent loop starts, after the post-fork
    hook), and ``threading`` is not patched yet. A thread started now would be a real OS thread in a process
    about to be patched. (gevent's ``monkey`` module alone says nothing: importing ``gevent.pool`` or
    ``geventhttpclient`` loads it.)
    """
    monkey = sys.modules.get("gevent.monkey")
    if _uwsgi_patches_later():
        if monkey is None:  # (not imported yet: not patched yet)
            return True
    elif monkey is None or "gunicorn.workers.ggevent" not in sys.modules:
        return False
    try:
        return not monkey.is_module_patched("threading")
    except Exception:  # another gevent than the one this was written for: assume no patch is coming
        return False


def _uwsgi_patches_later() -> bool:
    """Whether this is a uWSGI whose gevent loop calls ``monkey.patch_all()`` as a worker starts it
    (``--gevent-monkey-patch``; ``--gevent-early-monkey-patch`` patches the master before the app loads)."""
    uwsgi = uwsgi_module()
    return uwsgi is not None and bool(uwsgi.opt.get("gevent-monkey-patch"))


def _on_gevent_event(event: object) -> None:
    """A ``zope.event`` subscriber: gevent notifies its events to every subscriber (and an exception raised
    here would stop its ``patch_all`` half-way, so none is)."""
    if type(event).__name__ != "GeventDidPatchAllEvent":
        return
    try:
        _after_monkey_patch()
    except Exception:
        logger.exception("inprocserve could not renew its locks after gevent's monkey.patch_all()")


# The lock class this module's locks were made with: a patch that leaves it as it was (gevent patched before
# inprocserve was imported, or patches again) has nothing to renew.
_lock_class = threading.Lock


def _after_monkey_patch() -> None:
    global _lock_class
    if threading.Lock is _lock_class:
        return
    _lock_class = threading.Lock
    running = sorted(
        thread.name
        for thread in threading.enumerate()
        if thread.name.startswith("inprocserve-") and thread.is_alive() and thread is not threading.current_thread()
    )
    if running:
        # Their locks are in use by real threads: made anew under them, requests would be stranded.
        # (said on stderr where logging is not set up: a script or worker that patches late seldom set it up)
        _say_error(
            f"gevent's monkey.patch_all() ran after inprocserve had started threads ({', '.join(running)}): their "
            "locks are real OS locks, on which a waiting greenlet blocks every other, and the process may hang. "
            "Patch before anything builds an inprocserve Server: first thing in the program (or, with gunicorn "
            "--preload, at the top of gunicorn.conf.py)"
        )
        return
    for hook in _patch_hooks:
        hook()
    _reset_all()
    for hook in _patch_starts:
        hook()


def _subscribe_to_gevent() -> None:
    try:  # installed with gevent; cheap, and it imports no gevent
        event = importlib.import_module("zope.event")
    except ImportError:
        return
    event.subscribers.append(_on_gevent_event)


_subscribe_to_gevent()
