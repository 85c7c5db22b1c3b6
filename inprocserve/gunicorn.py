"""gunicorn server hooks: warm every worker before it takes traffic.

In ``gunicorn.conf.py``::

    from inprocserve.gunicorn import post_worker_init  # noqa: F401

gunicorn calls ``post_worker_init`` in each worker after the app is loaded and before the worker accepts
connections, so a worker answers its first request with warm sessions. It runs the builders that the
Flask and Django plug-ins register in eager mode (and any registered with
:func:`inprocserve.build_after_fork`), in the worker, never in the master: the master process, which
forks the workers, must not import onnxruntime (a worker forked after it was imported hangs or aborts at
exit; inprocserve logs an error at such a fork).

With as many workers as cores, ``pre_fork`` and ``post_fork`` keep each worker, and every thread it starts, on
a share of the cores of its own (one core each; docs/deployment.md, "One core per worker", says when that
pays)::

    from inprocserve.gunicorn import post_fork, post_worker_init, pre_fork  # noqa: F401

Under gunicorn's ``asgi`` worker on uvloop (what ``--asgi-loop auto`` picks where uvloop is installed), the hook
also makes sure that a stop signal which reached the worker while it booted is heard: see
:func:`_hear_signals_held_by_uvloop`.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from . import _prefork
from ._cpu_quota import current_cpu_quota
from ._prefork import has_builders, warm_worker

__all__ = ["cores_for_next_worker", "post_fork", "post_worker_init", "pre_fork"]

logger = logging.getLogger(__name__)

_CORES = "_inprocserve_cores"  # the attribute of a gunicorn worker object holding the cores it keeps to
_quota_logged = False  # (the master says once that a CPU quota left the workers free)


def pre_fork(server: Any, worker: Any) -> None:
    """A gunicorn ``pre_fork`` hook, in the master: choose the cores the worker about to be forked keeps to.

    Chosen here, not in the worker, because the master knows which cores it gave each live worker (the
    worker objects of ``server.WORKERS``) the moment it forks the next one; a worker that looked at its
    siblings' affinity instead could look before a sibling forked just before it had set its own, and take
    the same core. The worker keeps to them from its first moment, before any thread of inprocserve's starts
    there (``_prefork.keep_next_child_on``); :func:`post_fork` checks that every thread does.

    A process under a CPU quota smaller than the cores it may run on (a container's CPU limit without a
    cpuset of its own) is left free: its cores are shared with other containers, and keeping a worker to one
    of them could keep it on the busiest. That is said once in gunicorn's log."""
    global _quota_logged
    if not hasattr(os, "sched_setaffinity"):  # (Linux only)
        return
    cores = sorted(os.sched_getaffinity(0))
    quota = current_cpu_quota()
    if quota is not None and quota.whole_cores < len(cores):
        chosen = frozenset(cores)
        if not _quota_logged:
            _quota_logged = True
            _log_of(server).info(
                "inprocserve: a CPU quota of %.2f cores (%s) on %d cores: workers are not kept to cores of their own",
                quota.cores,
                quota.source,
                len(cores),
            )
    else:
        chosen = cores_for_next_worker(cores, server.num_workers, _staying(server))
    setattr(worker, _CORES, chosen)
    _prefork.keep_next_child_on(chosen if len(chosen) < len(cores) else None)


def post_fork(server: Any, worker: Any) -> None:
    """A gunicorn ``post_fork`` hook, in the new worker: make sure that it, and every thread it runs (the
    warm-up's, any a fork hook started), keeps to the cores :func:`pre_fork` chose; threads started from now
    on (gthread's pool, inprocserve's workers, onnxruntime's) inherit them. Logs the cores to gunicorn's log;
    without ``pre_fork`` in the same configuration, an error there saying to import it (the worker then uses
    every core)."""
    log = _log_of(worker)
    if not hasattr(os, "sched_setaffinity"):
        log.warning("inprocserve: keeping workers to cores of their own needs Linux; %d uses every core", os.getpid())
        return
    cores = getattr(worker, _CORES, None)
    if cores is None:
        log.error(
            "inprocserve's post_fork hook found no cores chosen for worker %d: import pre_fork from "
            "inprocserve.gunicorn too (or call it from your own pre_fork); the worker uses every core",
            os.getpid(),
        )
        return
    if not _threads_keep_to(cores):  # (the worker itself keeps to them already: see pre_fork)
        _keep_every_thread_to(cores)
    log.info("inprocserve: worker %d keeps to core(s) %s", os.getpid(), ",".join(map(str, sorted(cores))))


def _staying(server: Any) -> list[frozenset[int]]:
    """The cores kept by the live workers that will stay beside the one about to be forked: the youngest
    ``num_workers - 1`` of them. Past that count (a ``HUP`` forks every new worker before the old ones are
    told to stop; a scale-down leaves more than it wants until it kills some), gunicorn stops the oldest, so
    the old workers' layout, however lopsided, does not shape the new one."""
    live = sorted(server.WORKERS.values(), key=lambda sibling: getattr(sibling, "age", 0))
    staying = live[max(0, len(live) - (server.num_workers - 1)) :] if server.num_workers > 1 else []
    return [kept for kept in (getattr(sibling, _CORES, None) for sibling in staying) if kept]


def _log_of(owner: Any) -> Any:
    """gunicorn's logger of the arbiter or worker (its error log), else this module's."""
    log = getattr(owner, "log", None)
    return log if log is not None and hasattr(log, "info") else logger


def _thread_ids() -> list[int]:
    try:
        return [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:  # (no /proc: this thread alone)
        return [0]


def _threads_keep_to(cores: frozenset[int]) -> bool:
    for tid in _thread_ids():
        try:
            if frozenset(os.sched_getaffinity(tid)) != cores:
                return False
        except OSError:  # exited meanwhile
            continue
    return True


def _keep_every_thread_to(cores: frozenset[int]) -> None:
    """Set every thread's affinity (Linux keeps one per thread), again until none is left out: a thread
    started while the first pass ran inherited its starter's, maybe before that one was set."""
    for _ in range(5):
        for tid in _thread_ids():
            try:
                os.sched_setaffinity(tid, cores)
            except OSError:  # exited meanwhile
                continue
        if _threads_keep_to(cores):
            return


def cores_for_next_worker(cores: Sequence[int], workers: int, siblings: Iterable[frozenset[int]]) -> frozenset[int]:
    """The cores a new worker should keep to: ``cores`` (those the server may use) split into
    ``min(workers, len(cores))`` shares of consecutive cores, as even as possible (one core each once there
    are as many workers as cores, so no core is left to none), and of those the share that the live
    ``siblings`` (the cores each keeps to) use least: the share a replaced worker left, or, with more
    workers than cores, a core fewest workers share. Ties go to the lowest cores."""
    cores = sorted(cores)
    count = max(1, min(workers, len(cores)))
    size, larger = divmod(len(cores), count)
    shares, start = [], 0
    for index in range(count):
        end = start + size + (1 if index < larger else 0)
        shares.append(frozenset(cores[start:end]))
        start = end
    taken: Counter[int] = Counter()
    for kept in siblings:
        taken.update(kept)
    return min(shares, key=lambda share: (max(taken[core] for core in share), sum(taken[core] for core in share)))


def post_worker_init(worker: Any) -> None:
    """Build and warm this worker's inprocserve servers now (a gunicorn ``post_worker_init`` hook). Says how
    it went in gunicorn's log (its error log), as :func:`post_fork` does: logged to this module's logger, the
    lines reached no log where the app configures no logging, and a worker whose models failed to load said
    nothing."""
    _hear_signals_held_by_uvloop(worker)
    log = _log_of(worker)
    if not has_builders():
        # The hook alone builds nothing: it logged "servers warm in 0.00s", and each worker built its server
        # at its first request after all (cold, and every request that came meanwhile waited for it).
        log.warning(
            "worker %d: inprocserve's post_worker_init hook found no server to build: set INPROCSERVE_EAGER = "
            "True (Flask) or INPROCSERVE['EAGER'] = True (Django), or register yours with "
            "inprocserve.build_after_fork(...); each worker builds its server at its first request meanwhile",
            os.getpid(),
        )
        return
    started = time.perf_counter()
    try:
        errors = warm_worker()
    except Exception:  # (warm_worker raises only a signal handler's exception: see there)
        # An exception leaving this hook fails the worker's boot, and gunicorn then halts the whole server
        # ("Worker failed to boot"), the workers that serve included: a handler's exception (a start-up time
        # limit of the app's own, a hook that gunicorn's SIGINT or SIGABRT handler calls) stops the warm-up
        # alone, and the worker starts and builds its servers at their first request. A handler that means
        # to stop the worker raises SystemExit, as gunicorn's own do: that is not caught here.
        log.exception(
            "worker %d: a signal handler's exception stopped the inprocserve warm-up; the worker starts, and "
            "builds its servers at their first request",
            os.getpid(),
        )
        return
    if errors:
        log.error("worker %d: inprocserve warm-up failed: %s", os.getpid(), "; ".join(errors))
    else:
        log.info("worker %d: inprocserve servers warm in %.2fs", os.getpid(), time.perf_counter() - started)


def _hear_signals_held_by_uvloop(worker: Any) -> None:
    """Have the worker's uvloop hear, once it runs, a signal that came before it ran.

    gunicorn's ``asgi`` worker adds its signal handlers to its event loop before it imports the app and runs
    this hook, and runs the loop only afterwards. uvloop records a signal that comes meanwhile (a SIGTERM from
    a master told to stop while the worker imports a large app or warms its models), but acts on what it
    recorded only when a later signal wakes it, and gunicorn sends no other before its graceful timeout: the
    worker served on, and the master killed it with SIGKILL at ``--graceful-timeout`` (measured: 4 of 4 stops
    right after a start, and 3 of 3 stops after a load with ``--max-requests``, took the full timeout).
    A SIGWINCH, which gunicorn's asgi worker takes and ignores, sent to the worker once its loop runs, wakes
    it: uvloop then acts on every signal it recorded, SIGTERM included. Nothing is sent on asyncio's own loops
    (they hear such a signal when they start) or under any other worker class.
    """
    loop: Any = getattr(worker, "loop", None)
    winch = getattr(signal, "SIGWINCH", None)
    if loop is None or winch is None or not type(loop).__module__.startswith("uvloop") or loop.is_running():
        return
    # Only where the loop itself takes SIGWINCH (gunicorn's worker handed it to the loop, whose handler ignores
    # it): anywhere else the signal could reach a handler of the app's, or none.
    taken_by_loop = getattr(signal.getsignal(winch), "__self__", None) is loop
    if taken_by_loop:
        loop.call_soon(os.kill, os.getpid(), winch)
