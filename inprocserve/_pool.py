"""The runners of one model version lent to the batcher's workers: checkout and checkin.

A runner is whatever the backend runs a batch on (an onnxruntime session, a connection slot). The backend
decides how many there are and whether they share state (one shared onnxruntime session run concurrently,
or one session each); the pool only lends them out, one run at a time each, and builds its list lazily in
each process, so nothing crosses a fork.
"""

from __future__ import annotations

from typing import Any

from . import _fork
from ._backend import Backend

__all__ = ["RunnerPool", "keep_inherited"]

# Runners inherited across fork() are never destroyed in the child: their destructors may join threads
# that do not exist there (onnxruntime's), and hang. They stay referenced here.
_inherited: list[Any] = []


def keep_inherited(runner: Any) -> None:
    """In a forked child: keep a runner inherited from the parent referenced for good (see ``_inherited``)."""
    _inherited.append(runner)


class RunnerPool:
    """Lends a backend's runners to workers, each to one run at a time.

    Not locked on its own: the batcher calls it with its lock held (one lock per request, not two), except
    :meth:`adopt`, which may build the backend's runners and is called without it.
    """

    __slots__ = ("__weakref__", "_backend", "free")

    def __init__(self, backend: Backend) -> None:
        self._backend = backend
        # The free runners; None until this process has the backend's runners. The batcher gives a runner
        # back by appending to it itself in its clean-up paths: a method call is where a pending signal
        # handler runs, and one that raises there would lose the runner.
        self.free: list[Any] | None = None
        _fork.register(self)

    def _after_fork_in_child(self) -> None:
        if self.free:
            _inherited.extend(self.free)
        self.free = None  # the child builds its own runners on first use

    @property
    def size(self) -> int:
        return self._backend.concurrency

    @property
    def adopted(self) -> bool:
        return self.free is not None

    def adopt(self) -> list[Any]:
        """The backend's runners for this process (built on first use here; may take a while). The owner
        then calls :meth:`lend` with its lock held."""
        return self._backend.runners()

    def lend(self, runners: list[Any]) -> None:
        """With the owner's lock held: take ``runners`` as the free ones, unless another thread did first."""
        if self.free is None:
            self.free = list(runners)

    def checkout(self) -> Any:
        """A free runner, or ``None`` when every runner is busy (or none was adopted yet).

        Taken with subscripts, not ``list.pop()``: CPython runs a pending signal handler right after a call
        into C returns, so one that raises (Ctrl-C's ``KeyboardInterrupt``) could drop the popped runner
        before the caller holds it, and the pool would have lost it for good."""
        free = self.free
        if not free:
            return None
        runner = free[-1]
        del free[-1]
        return runner

    def checkin(self, runner: Any) -> None:
        """Give back a runner taken with :meth:`checkout`."""
        free = self.free
        if free is not None:
            free += (runner,)  # (an operator, not a call into C: no signal handler runs between)

    def has_free(self) -> bool:
        return bool(self.free)

    def release(self) -> None:
        """Drop every reference to runners (the backend owns and closes them)."""
        self.free = []
