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

import functools
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from types import CellType, CodeType, FrameType, MethodType
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
from opentelemetry.trace import Span

from ._signature import Signature

try:  # (signal.getsignal wraps each answer in an enum lookup that costs ~3 µs a signal)
    from _signal import getsignal as _getsignal  # type: ignore[import-not-found]  # (CPython has no stub for it)
except ImportError:  # pragma: no cover - an interpreter without CPython's _signal module
    _getsignal = signal.getsignal

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
    ``InferenceError``, and is no bug to log. A handler may be a function, a bound method, a
    ``functools.partial``, an object with ``__call__``, or any of these decorated: a frame counts as the
    handler's when it runs the handler's code with the handler's own closure and ``self`` (a decorator's
    wrapper runs the same code for every function it decorates). Called on failures only. The answer is kept
    on ``error`` (a request drops the tracebacks of the error it keeps: the followers of an identical request
    ask again later).
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

# What must hold in a frame running a handler's code for the frame to be the handler's: each of its free
# variables in the handler's own cell, its first argument the handler's ``self`` (both by identity).
_Cells = tuple[tuple[str, Any], ...]  # (name, cell): read when judged, as the frame's own variable is
_Fixed = tuple[tuple[str, object], ...]  # (name, object)
_Codes = dict[CodeType, list[tuple[_Cells, _Fixed]]]

# The handlers seen last and their codes: ``(handlers, codes)``. Listing the installed handlers is cheap with
# the interpreter's own getsignal (``signal.getsignal`` turns each into an enum member, ~200 times slower);
# unwrapping them is done again only when one was installed or removed since.
_seen: tuple[tuple[object, ...], _Codes] = ((), {})
_numbers: tuple[int, ...] = ()


def _installed_handlers() -> tuple[object, ...]:
    global _numbers
    if not _numbers:  # (the valid numbers never change in a process)
        _numbers = tuple(sorted(int(number) for number in signal.valid_signals()))
    handlers = []
    for number in _numbers:
        try:
            handler = _getsignal(number)
        except (OSError, ValueError):  # pragma: no cover - a number the platform lists but cannot look up
            continue
        if callable(handler):  # (not SIG_DFL, SIG_IGN or None: a handler not installed from Python)
            handlers.append(handler)
    return tuple(handlers)


def _handler_codes() -> _Codes:
    global _seen
    handlers = _installed_handlers()
    seen, codes = _seen
    if len(seen) == len(handlers) and all(old is new for old, new in zip(seen, handlers, strict=True)):
        return codes
    codes = {}
    failures = []
    for handler in handlers:
        try:
            _add_codes(handler, codes)
        except Exception as exc:  # an odd callable (a proxy whose attributes raise outside its context): what
            failures.append(exc)  # of it was found is kept; this runs in callers' except blocks, never raise
    for failure in failures:  # (unless a handler's exception landed meanwhile: the caller's time limit, as it is)
        if _through_the_codes(failure, codes):
            raise failure
    if not failures:  # (else looked at again next time: a failure may have left a handler half unwrapped)
        _seen = (handlers, codes)  # (one tuple: a thread that reads it sees the handlers and their codes together)
    return codes


def _add_codes(handler: object, codes: _Codes) -> None:
    """Add the code objects that run when ``handler`` is called: through partials, bound methods, callable
    objects and ``__wrapped__`` (decorators), each with what tells a frame running it for this handler."""
    receiver: tuple[object, ...] = ()  # (the ``self`` a bound method or a callable object was called with)
    seen: set[int] = set()
    target: Any = handler
    while target is not None and id(target) not in seen and len(seen) < 100:  # (a cycle, or a chain gone wild)
        seen.add(id(target))
        wrapped = getattr(target, "__wrapped__", None) if not isinstance(target, MethodType) else None
        if isinstance(target, functools.partial):
            target = target.func
            continue
        if isinstance(target, MethodType):
            receiver = (target.__self__,)
            target = target.__func__
            continue
        code = getattr(target, "__code__", None)
        if not isinstance(code, CodeType):
            if isinstance(target, type) or not callable(target):
                break  # (a class as a handler is instantiated, not run: nothing of it raises)
            call = type(target).__call__  # a callable object (a class-based decorator too)
            receiver = (target,)
            if not isinstance(getattr(call, "__code__", None), CodeType):
                target = wrapped  # (a builtin's __call__: only what it wraps runs Python code)
                continue
            code = call.__code__
            cells: _Cells = _closure_cells(code, call.__closure__)
            codes.setdefault(code, []).append((cells, _receiver_check(code, receiver)))
            receiver = ()  # (what it wraps is called with the handler's arguments, not the object)
            target = wrapped
            continue
        cells = _closure_cells(code, getattr(target, "__closure__", None))
        codes.setdefault(code, []).append((cells, _receiver_check(code, receiver)))
        target = wrapped


def _closure_cells(code: CodeType, closure: object) -> _Cells:
    cells = tuple(zip(code.co_freevars, closure or (), strict=True))  # type: ignore[call-overload]
    if not all(isinstance(cell, CellType) for _, cell in cells):  # (read when judged: only a cell never raises)
        raise TypeError(f"a closure of {code.co_name!r} holds something other than cells")
    return cells


def _receiver_check(code: CodeType, receiver: tuple[object, ...]) -> _Fixed:
    if not receiver or code.co_argcount < 1:  # (a ``*args`` wrapper: its closure tells it apart)
        return ()
    return ((code.co_varnames[0], receiver[0]),)


def _runs_for_the_handler(frame: FrameType, checks: list[tuple[_Cells, _Fixed]]) -> bool:
    for cells, fixed in checks:
        if not cells and not fixed:
            return True
        variables = frame.f_locals
        if all(variables.get(name, _MISSING) is _cell_contents(cell) for name, cell in cells) and all(
            variables.get(name, _MISSING) is value for name, value in fixed
        ):
            return True
    return False


_MISSING = object()


def _cell_contents(cell: Any) -> object:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell: the frame has no value for it either
        return _MISSING


def _through_a_signal_handler(error: BaseException) -> bool:
    traceback = error.__traceback__
    if traceback is None:
        return False
    if traceback.tb_next is None and traceback.tb_frame.f_globals.get("__name__", "").startswith("inprocserve."):
        return False  # raised where it was caught, in this package: by the run itself (onnxruntime's errors)
    codes = _handler_codes()
    return bool(codes) and _through_the_codes(error, codes)


def _through_the_codes(error: BaseException, codes: _Codes) -> bool:
    traceback = error.__traceback__
    # (from the top: a handler that C code ran, as an import's does, is the first frame of the traceback)
    while traceback is not None:
        checks = codes.get(traceback.tb_frame.f_code)
        if checks is not None and _runs_for_the_handler(traceback.tb_frame, checks):
            return True
        traceback = traceback.tb_next
    return False
