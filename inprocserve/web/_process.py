"""The app's server in this process: :class:`ProcessLocalServer`, and :func:`server_or_none` for a server that
cannot be built here (:data:`NO_SERVER`, logged at most once a minute)."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import _fork
from .._errors import ServerClosedError
from .._log_limit import LogLimit, since

if TYPE_CHECKING:
    from .._server import Server

logger = logging.getLogger(__package__)  # "inprocserve.web": records name the public module, as users configure it

NO_SERVER = "the model server could not start in this worker (its log says why); retry later"
"""What a client is told when the app's server cannot be built in its process (its cause names files)."""

_UNBUILT = LogLimit()  # a probe every few seconds at a worker whose server cannot be built: a line a minute


def server_or_none(server_factory: Callable[[], Server], asked: str) -> Server | None:
    """The app's server, built by ``server_factory()`` if it is not yet (the plug-ins' lazy mode); ``None`` if it
    cannot be built in this process (its repository gone at a worker's first request, an invalid ``config.toml``),
    logged at most once a minute with the cause, which a client must not see: it names the server's files.
    ``asked``: what asked for it, for the log.

    Raises:
        ServerClosedError: the app closed its server for good (the plug-ins' ``Inprocserve.close(app)``,
            ``close_server()``): no failure to build, so neither :data:`NO_SERVER` nor an error logged; answer
            it as a 503 with its message (the probes and pages here do).
    """
    try:
        return server_factory()
    except ServerClosedError:  # (it was answered "could not start", and logged at ERROR every minute)
        raise
    except Exception as exc:  # (a later call builds it again: the worker serves once the cause is gone)
        skipped = _UNBUILT.due()
        if skipped is not None:
            logger.error("%s: the model server cannot be built in this process: %s%s", asked, exc, since(skipped))
        return None


# -- one server per process ------------------------------------------------------------------------------


class ProcessLocalServer:
    """One server per process, built by ``factory`` on first use and built anew in a forked child.

    A server's threads and onnxruntime sessions do not survive ``fork()``, so a child never uses its
    parent's server (it is not closed there either: it belongs to the parent). That does not make a fork
    after the first :meth:`get` safe: once onnxruntime is imported in a process, every child it forks
    hangs or aborts (SIGABRT) when it exits, in onnxruntime's own exit-time clean-up, even if the parent's
    server was closed first (inprocserve logs an error at such a fork). So in a process that forks workers
    (a gunicorn ``--preload`` master) never call :meth:`get`: call it in the workers, lazily or through
    :func:`inprocserve.build_after_fork`. Thread-safe: concurrent first uses build once.

    Args:
        factory: Builds the server (called with this holder's lock held).
    """

    def __init__(self, factory: Callable[[], Server]) -> None:
        self._factory = factory
        self._lock = threading.Lock()
        self._server: Server | None = None
        self._pid: int | None = None
        _fork.register(self)

    def get(self) -> Server:
        """This process's server, built now if this is its first use here.

        Raises:
            Whatever ``factory`` raises (the next call tries again).
        """
        server, pid = self._server, self._pid
        if server is not None and pid == os.getpid():
            return server
        with self._lock:
            if self._server is None or self._pid != os.getpid():
                self._server = self._factory()
                self._pid = os.getpid()
            return self._server

    @property
    def started(self) -> bool:
        """Whether this process's server is built."""
        return self._server is not None and self._pid == os.getpid()

    @property
    def building(self) -> bool:
        """Whether a thread of this process is building the server right now (eager warm-up)."""
        return self._lock.locked() and not self.started

    def close(self) -> None:
        """Close this process's server; the next :meth:`get` builds a new one."""
        with self._lock:
            if self._server is not None and self._pid == os.getpid():
                self._server.close()
            self._server = None
            self._pid = None

    def _after_fork_in_child(self) -> None:
        # A lock held by a parent thread at fork time would stay held forever in the child.
        self._lock = threading.Lock()
