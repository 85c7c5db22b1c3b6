"""The backend seam: what the batcher runs a batch on, wherever the model's compute lives.

The batcher knows nothing of onnxruntime or of the network. It asks a backend for its *runners* (an
onnxruntime session, a connection slot to a model server), starts one worker per runner, and calls
:meth:`Backend.run` with stacked feeds. The onnxruntime backend runs local sessions; the remote backend sends
the batch to an Open Inference Protocol server (Triton, KServe, MLServer). Everything above the batcher —
validation, routing, rollouts, deadlines, telemetry — is the same for both.

Contract every backend keeps:

* :meth:`prepare` loads (or reaches) the model once per process and returns its :class:`Signature`; it raises
  :class:`~inprocserve.ModelLoadError` when the model cannot be served. In a forked child it is called again
  lazily (through :meth:`runners`), so no runtime object, thread or connection crosses a fork.
* :meth:`run` takes validated feeds for the model's inputs and returns one array per output, in
  ``signature.output_names`` order, each with the same number of rows as the feeds. It raises only
  :class:`~inprocserve.InprocserveError` subclasses: :class:`~inprocserve.InvalidInputError` when the model
  refused these values (the batcher then bisects the batch to the request at fault),
  :class:`~inprocserve.DeadlineExceededError` when ``timeout_s`` ran out,
  :class:`~inprocserve.InferenceError` (or a subclass) for everything else.
* :meth:`health` says whether the backend can take work now (``None``) or why not (a remote server that is
  down); readiness and status show it.
* :meth:`close` releases runners, threads and connections; the batcher has drained its work first.
* ``signature`` is ``None`` until the model's inputs and outputs are known, and set before the first
  ``warmup(runner)`` call (a warm-up builds its feeds from it).

A :data:`BackendFactory` builds a version's backend from its file and config; ``ModelVersion`` takes one
(``backend_factory=``), or a ready backend (``backend=``), so a new kind of backend plugs in without touching
the request path.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from opentelemetry.trace import Span

from ._signature import Signature

if TYPE_CHECKING:
    from ._config import ModelConfig

__all__ = ["Backend", "BackendFactory", "is_whole_batch", "raised_by_signal_handler", "whole_batch"]

_E = TypeVar("_E", bound=BaseException)


class Backend(Protocol):
    """One model version's compute. Thread-safe: workers call :meth:`run` concurrently, one per runner."""

    model: str
    version: int

    @property
    def signature(self) -> Signature | None:
        """The model's inputs and outputs; ``None`` until known, and set before the first warm-up call."""
        ...

    @property
    def kind(self) -> str:
        """A short name for status and logs: ``"onnxruntime"``, ``"remote"``."""
        ...

    @property
    def concurrency(self) -> int:
        """How many runs may be in flight at once; the batcher starts one worker per runner."""
        ...

    @property
    def providers(self) -> list[str]:
        """Where runs execute, for status and logs (onnxruntime providers, or the remote endpoint)."""
        ...

    def prepare(self, warmup: Callable[[Any], None] | None = None, *, probe_rows: int = 1) -> Signature:
        """Load or reach the model (once per process), run ``warmup(runner)`` on each runner, return the
        signature. ``probe_rows`` is the batch size the backend may time to tune itself."""
        ...

    def runners(self) -> list[Any]:
        """Every runner, prepared first if this process has none yet, for the batcher's workers to own."""
        ...

    def run(
        self,
        runner: Any,
        feeds: Mapping[str, np.ndarray],
        *,
        timeout_s: float | None = None,
        parent: Span | None = None,
    ) -> list[np.ndarray]:
        """Run one batch on ``runner``. ``timeout_s`` bounds the run (``None``: no deadline); ``parent`` is the
        span the run belongs to (the batch's, or the lone request's), for backends that propagate trace
        context to another process.

        A merged batch that fails is bisected down to the request that fails it, unless the error is about
        the batch as a whole: a ``DeadlineExceededError``, a ``RemoteUnavailableError``, or any
        :class:`InprocserveError` marked with :func:`whole_batch` (a run that may have happened already,
        whose rows must not be sent again, or that no part of the batch would pass)."""
        ...

    def health(self) -> str | None:
        """``None`` when the backend can take work; otherwise why it cannot (shown in readiness and status)."""
        ...

    def status(self) -> dict[str, Any]:
        """Backend facts for :meth:`Server.status` (providers, threads, endpoint, circuit state ...)."""
        ...

    def close(self) -> None:
        """Release every runner, thread and connection. Idempotent."""
        ...


class BackendFactory(Protocol):
    """Builds the backend of one model version (``path``: its model file; nothing is loaded yet)."""

    def __call__(
        self, path: Path, config: ModelConfig, *, model: str, version: int, follow_symlinks: bool = False
    ) -> Backend: ...


def whole_batch(error: _E) -> _E:
    """Mark ``error`` as about a whole batch: the batch is not bisected to find a request that fails it
    (see :meth:`Backend.run`). Returns ``error``."""
    error.whole_batch = True  # type: ignore[attr-defined]  # (an instance attribute: it survives pickling)
    return error


def is_whole_batch(error: BaseException) -> bool:
    """Whether ``error`` was marked with :func:`whole_batch`."""
    return getattr(error, "whole_batch", False) is True


def raised_by_signal_handler(error: BaseException) -> bool:
    """Whether ``error`` was raised by a signal handler that interrupted the caller's thread while it ran a
    model, not by the run: its traceback passes through a handler installed with ``signal.signal``.

    Task queues stop a task that overruns its time this way, with an ``Exception`` rather than a
    ``BaseException``: Celery's ``soft_time_limit`` (``SoftTimeLimitExceeded``), RQ's job timeout
    (``JobTimeoutException``, from ``SIGALRM``). onnxruntime computes without the GIL, so the handler runs the
    moment the run returns, inside the backend's ``except Exception``: such an error must reach the task as
    it is (its ``except SoftTimeLimitExceeded`` clean-up, the queue's own handling), not as the model's
    ``InferenceError``, and is no bug to log. Called on failures only (it looks up every signal's handler).
    The answer is kept on ``error`` (a request drops the tracebacks of the error it keeps: the followers of an
    identical request ask again later).
    """
    known = getattr(error, _SIGNALLED, None)
    if known is not None:  # (judged before: a request keeps its error without the traceback)
        return known is True
    found = _through_a_signal_handler(error)
    try:
        setattr(error, _SIGNALLED, found)
    except Exception:  # pragma: no cover - (an exception class with __slots__: judged again next time)
        pass
    return found


_SIGNALLED = "_inprocserve_raised_by_signal_handler"


def _through_a_signal_handler(error: BaseException) -> bool:
    traceback = error.__traceback__
    if traceback is None:
        return False
    if traceback.tb_next is None and traceback.tb_frame.f_globals.get("__name__", "").startswith("inprocserve."):
        return False  # raised where it was caught, in this package: by the run itself (onnxruntime's errors)
    handlers = set()
    for number in signal.valid_signals():
        try:
            handler = signal.getsignal(number)
        except (OSError, ValueError):  # pragma: no cover - a number the platform lists but cannot look up
            continue
        code = getattr(getattr(handler, "__func__", handler), "__code__", None)
        if code is not None:
            handlers.add(code)
    if not handlers:
        return False
    # (from the top: a handler that C code ran, as an import's does, is the first frame of the traceback)
    while traceback is not None:
        if traceback.tb_frame.f_code in handlers:
            return True
        traceback = traceback.tb_next
    return False
