"""A request on its way through the server: where it goes (:class:`Route`) and how it ends (:class:`Request`).

Every finished request goes through one of two doors, both here: :meth:`Request.complete` for one request
(an inline run, a failure, a cache hit, a follower of an identical request) and :func:`complete_batch` for
the requests of one successful batch (the same thing, with the wake-ups relayed). Either stores the answer,
then wakes the synchronous caller or hands the request to the server's ``deliver`` hook, which resolves its
future. Whoever finishes a request decides *whether* it is answered (a caller that gave up is not); these
decide nothing, they only answer.

``Route`` is a ``NamedTuple`` rather than a frozen dataclass: it is built once per request on the hot path,
and a tuple's construction costs a fraction of a dataclass's, with the same named, read-only fields.
"""

from __future__ import annotations

import copy
import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

import numpy as np

from . import _fork
from ._prediction import Prediction, prediction_of
from ._wake_relay import DONE_WAKING, RELAY

if TYPE_CHECKING:
    from ._rollout import Decision

__all__ = [
    "ABANDONED",
    "DONE",
    "QUEUED",
    "RUNNING",
    "BatchTiming",
    "Finisher",
    "Request",
    "Route",
    "complete_batch",
    "finish_detached",
    "let_go_of_future",
    "wake_after_batch",
]

# A request's states. QUEUED -> RUNNING -> DONE, or QUEUED/RUNNING -> ABANDONED when its synchronous caller
# gave up at its deadline (its answer is then dropped). Only the batcher moves them, under its lock.
QUEUED, RUNNING, DONE, ABANDONED = range(4)
_log = logging.getLogger(__name__)
_allocate_lock = threading.Lock


def _gevent_locks() -> None:
    """gevent patched the process after this module was imported: the callers' waiters are its locks now (a
    real one blocked every greenlet of the process while its caller waited, see _fork)."""
    global _allocate_lock
    _allocate_lock = threading.Lock


_fork.on_monkey_patch(_gevent_locks)


class Route(NamedTuple):
    """The routing of one request: which version answers, why, its id, and the versions that shadow it."""

    model: str
    version: int
    variant: str
    reason: str
    request_id: str
    shadows: Sequence[Any]  # ModelVersion objects that get a copy of the request (spare capacity only)
    decision: Decision


class BatchTiming:
    """Shared by the requests of one executed batch, for their spans and metrics."""

    __slots__ = ("compute_s", "rows")

    def __init__(self, rows: int) -> None:
        self.rows = rows
        self.compute_s = 0.0


class Request:
    """One caller's request: validated inputs, its route, where the answer goes, and its state.

    Not thread-safe on its own: the batcher that runs it moves its state under its lock, and exactly one
    thread calls :meth:`complete` (or :func:`complete_batch`) once.
    """

    __slots__ = (
        "arrays",
        "batch",
        "baton",
        "cache_key",
        "callers",
        "deadline",
        "deliver",
        "enqueued_at",
        "error",
        "follows",
        "future",
        "key",
        "member_spans",
        "outputs",
        "queue_wait_s",
        "queued_on",
        "rerun_key",
        "route",
        "rows",
        "run_rows",
        "runner",
        "shared_as",
        "span",
        "started",
        "state",
        "waiter",
    )

    def __init__(
        self,
        arrays: dict[str, np.ndarray],
        rows: int,
        route: Route,
        deadline: float | None,
        future: Future[Any] | None,
        *,
        deliver: Finisher | None = None,
    ) -> None:
        self.arrays = arrays
        self.rows = rows
        self.route = route
        self.deadline = deadline
        self.future = future
        self.deliver = deliver  # the server's hook that resolves the future; the batcher sets it at submit
        self.queued_on: Any = None  # the batcher it was last given to: the copy of the version that runs it
        self.key: Any = None
        self.runner: Any = None  # the runner taken to run it on its caller's thread, until given back
        self.state = QUEUED
        self.outputs: dict[str, Any] | None = None
        self.error: BaseException | None = None
        self.enqueued_at = 0.0
        # None until answered; then the relay that wakes it (its caller hands its place on once awake), the
        # request its place is being handed to (during a hand-over), or DONE_WAKING (answered alone, its
        # place handed on or taken back, or its caller gave up): see _wake_relay
        self.baton: Any = None
        self.span: Any = None  # the request's OpenTelemetry span, linked from the batch span
        self.cache_key: bytes | None = None  # set when this request runs for identical ones in flight
        self.shared_as: Any = None  # then, the key its followers joined (it names the copy that runs it)
        self.started = 0.0  # perf_counter() when the caller asked
        self.queue_wait_s = 0.0
        self.batch: BatchTiming | None = None
        # Rows per model run when this request alone is larger (None: the batcher's max_batch_size). Batch
        # scoring sets it: an offline chunk may run in larger slices than a web request.
        self.run_rows: int | None = None
        # How many callers' requests this one carries: more than one when an event loop merged its tasks'
        # requests into one (``_loop_batching``); the batcher counts them all in flight.
        self.callers = 1
        self.member_spans: list[Any] | None = None  # those callers' request spans, linked from the batch span
        self.follows = False  # a synchronous caller's request that followed an identical one in flight
        self.rerun_key: bytes | None = None  # a follower's inputs key: its answer is kept if it runs by itself
        # A synchronous caller blocks on this lock until the answer is in (the cheapest wake-up CPython has).
        self.waiter: Any = None
        if future is None:
            self.waiter = _allocate_lock()
            self.waiter.acquire()

    def wait(self, timeout_s: float | None) -> bool:
        """Block the synchronous caller until the answer is in (True) or ``timeout_s`` passed (False);
        once awake, hand its place in the wake relay on."""
        if timeout_s is None:
            self.waiter.acquire()
        elif timeout_s <= 0 or not self.waiter.acquire(timeout=timeout_s):
            return False
        if self.baton is RELAY:
            RELAY.passed(self)
        return True

    def prediction(self) -> Prediction:
        """The caller's answer: the outputs, and the route that produced them."""
        route = self.route
        assert self.outputs is not None
        return prediction_of(self.outputs, route.model, route.version, route.variant, route.reason, route.request_id)

    def complete(self, outputs: dict[str, Any] | None, error: BaseException | None) -> None:
        """Store the answer (``outputs``, or the ``error``), then wake the synchronous caller or hand the
        request to ``deliver`` (which resolves its future).

        The request gets its own copy of the error (:func:`own_error`), without the tracebacks of the thread
        that caught it. ``error`` itself is left as it is: its caller may be raising it meanwhile."""
        if error is not None:
            error = own_error(error)
        self.outputs = outputs
        self.error = error
        self.state = DONE
        if self.future is None:
            self.baton = DONE_WAKING  # answered alone, not through the relay
            self.waiter.release()
        else:
            deliver = self.deliver
            if deliver is None:  # a bug in whoever built the request; never strand the future
                raise RuntimeError("a request with a future was completed before it had a deliver hook")
            deliver(self)


Finisher = Callable[[Request], None]
E = TypeVar("E", bound=BaseException)


def let_go_of_future(future: object) -> None:
    """Release the lock of a ``concurrent.futures.Future`` that this thread was left holding by an interruption.

    For the caller's thread interrupted (a signal handler raised: a task's time limit, Ctrl-C), on its way out
    only. A future's methods take its lock with ``with self._condition``, and ``Condition.__enter__`` is Python
    code: CPython runs a pending signal handler as the lock's C ``acquire`` returns, inside ``__enter__``, and
    the handler's exception leaves the ``with`` unentered, the lock held by this thread for good. The worker
    that then took or answered the request blocked on it forever (with the batcher's lock held, as it takes a
    queued request), and every later request of its version waited behind it. Nothing if this thread does
    not hold it (nor for an event loop's stand-in, which has no such lock)."""
    condition = getattr(future, "_condition", None)
    if isinstance(condition, threading.Condition) and condition._is_owned():  # type: ignore[attr-defined]
        condition._release_save()  # type: ignore[attr-defined]  # (every level of the RLock: it was never entered)


def drop_tracebacks(error: E) -> E:
    """Drop the tracebacks of ``error`` and of the errors it chains (its cause, the error being handled
    when it was raised), before it is stored on its request for a caller elsewhere to raise.

    Those tracebacks hold the frames of the thread that ran the request (a worker's, most often) with their
    locals: the batch, its requests, their inputs. A request holds its error, so every failed request's
    inputs stayed in a reference cycle until the garbage collector's next pass over the generation the
    cycle had reached: a full pass, for a request that waited in a busy queue, which in a large process
    comes minutes apart, while a storm of failures (a bad deploy, an overload's deadlines) adds more.
    Raised by its caller, the error gets that caller's own traceback instead of frames of another thread;
    the messages of the chained errors stay, and a bug's traceback was logged where it was caught. So does
    an error that ``submit`` catches before the request is queued (invalid inputs, a full queue): its frames
    hold the future it is set on. Returns ``error``."""
    seen: set[int] = set()
    link: BaseException | None = error
    pending: list[BaseException] = []
    while link is not None:
        if id(link) not in seen:
            seen.add(id(link))
            link.__traceback__ = None
            for chained in (link.__cause__, link.__context__):
                if chained is not None:
                    pending.append(chained)
        link = pending.pop() if pending else None
    return error


def own_error(error: E) -> E:
    """A copy of ``error`` (the same class, message, attributes and notes) and of the errors it chains (its
    cause, the error being handled when it was raised), none with a traceback, for one caller to raise.
    ``error`` and its chained errors are left as they are; one that cannot be copied is kept, without its
    tracebacks (:func:`drop_tracebacks`).

    One exception object raised by several callers (the requests of a batch that failed as a whole: its
    deadline, a remote server down, a close; followers of an identical request; an event loop's merged
    tasks) carries all their tracebacks: each ``raise`` puts its caller's frames in front of the ones there,
    so a caller's traceback showed other threads' stacks, and kept their frames (and inputs) as long as any
    of them kept the error. Nor may a copy drop the tracebacks of the errors it shares: a request that
    followed one run on its caller's thread (``predict``'s shortest way, with a cache) is handed the error
    that caller is raising, and dropping its tracebacks there left that caller's traceback without the
    frames that raised it, and onnxruntime's error (its cause) without any."""
    return _own_copy(error, {})  # type: ignore[return-value]


def _own_copy(error: BaseException, copies: dict[int, BaseException]) -> BaseException:
    own = copies.get(id(error))
    if own is not None:
        return own
    try:
        own = copy.copy(error)
    except Exception:
        own = error
    if type(own) is not type(error) or own is error or not _same_args(own, error):
        own = _rebuilt(error)
    if own is None:
        copies[id(error)] = error  # (it cannot be copied: kept, without its tracebacks)
        return drop_tracebacks(error)
    _copy_slots(error, own)
    copies[id(error)] = own  # (before its chain: a chain may lead back to it)
    cause, context = error.__cause__, error.__context__
    own.__cause__ = None if cause is None else _own_copy(cause, copies)
    own.__context__ = None if context is None else _own_copy(context, copies)
    own.__suppress_context__ = error.__suppress_context__
    notes = getattr(error, "__notes__", None)
    if notes is not None:
        own.__notes__ = list(notes)
    own.__traceback__ = None
    return own


def _rebuilt(error: BaseException) -> BaseException | None:
    """A copy of ``error`` made without calling its ``__init__``, or ``None``: for an error whose class cannot be
    called again with its ``args``, such as our ``TransportError`` (its ``sent`` is keyword-only) and urllib3's
    ``NewConnectionError`` (its message is built from the connection, which its ``__reduce__`` leaves out).
    Those were kept as they were, shared by every caller of a failed batch, and their tracebacks dropped for
    all of them. Not for a class built on a built-in error with fields of its own that only ``__init__`` sets
    (``OSError``, ``UnicodeDecodeError``, ``StopIteration``, ...: a larger instance than ``BaseException``'s)."""
    cls = type(error)
    builtin = next(base for base in cls.__mro__ if base.__module__ == "builtins")
    if builtin.__basicsize__ != BaseException.__basicsize__:
        return None
    try:
        own: BaseException = BaseException.__new__(cls, *error.args)
        own.args = error.args
        own.__dict__.update(error.__dict__)
    except Exception:
        return None
    return own


def _copy_slots(error: BaseException, own: BaseException) -> None:
    """Copy the ``__slots__`` attributes of ``error``'s classes onto its copy: ``copy.copy`` of an exception takes
    its ``args`` and ``__dict__`` only, so a copy lost them (an ``AttributeError`` when its handler read one)."""
    for cls in type(error).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            private = slot.startswith("__") and not slot.endswith("__")
            name = f"_{cls.__name__.lstrip('_')}{slot}" if private else slot  # (as Python mangles it)
            try:
                setattr(own, name, getattr(error, name))
            except AttributeError:  # (unset on the error: unset on the copy too)
                pass


def _same_args(own: BaseException, error: BaseException) -> bool:
    """Whether the copy ``own`` has the arguments of ``error``. A copy is made by calling the class with the
    error's arguments: one whose ``__init__`` builds its message from others (``DeviceError(7)`` saying
    ``device failed with code 7``) took that message for its first argument, and said ``device failed with
    code device failed with code 7``."""
    try:
        return bool(own.args == error.args)
    except Exception:  # (arguments that do not compare, arrays: the same objects are the same arguments)
        return len(own.args) == len(error.args) and all(a is b for a, b in zip(own.args, error.args, strict=True))


def finish_detached(request: Request, outputs: Any, error: BaseException | None, deliver: Finisher) -> None:
    """Answer a request that never went through a batcher (a cache hit, or a follower of an identical
    request in flight): the waiting caller wakes, or its future resolves through ``deliver``."""
    request.deliver = deliver
    request.complete(outputs, error)


class _HeldWakes(threading.local):
    wakes: list[Callable[[], None]] | None = None


_held = _HeldWakes()


def _gevent_held() -> None:
    """gevent patched the process after this module was imported: ``_held`` of gevent's ``local``, one per
    greenlet (made before, one per OS thread: every greenlet of the process shared it, see _fork)."""
    global _held
    _held = cast(_HeldWakes, type("_HeldWakes", (threading.local,), {"wakes": None})())


_fork.on_monkey_patch(_gevent_held)


def wake_after_batch(wake: Callable[[], None]) -> bool:
    """While this thread hands out a batch's answers, hold ``wake`` until the last one is handed out (so an
    event loop awaiting many of them is woken once, not once per answer). Returns False, without holding
    it, when no batch is being handed out here: then the caller wakes the loop itself."""
    wakes = _held.wakes
    if wakes is None:
        return False
    wakes.append(wake)
    return True


def complete_batch(requests: Sequence[Request], results: Sequence[dict[str, Any]]) -> None:
    """Answer the requests of one successful batch (``results[i]`` is ``requests[i]``'s outputs).

    Synchronous callers join the process's wake relay (``_wake_relay``): woken in the order they were
    answered, a few at a time, each handing its place on once it runs. Futures are resolved here, with the
    wake-ups of event loops held until the last.
    """
    waiters: list[Request] = []
    futures: list[Request] = []
    for request, outputs in zip(requests, results, strict=True):
        request.outputs = outputs
        request.error = None
        request.state = DONE
        (futures if request.future is not None else waiters).append(request)
    if waiters:  # queued once every answer is in: a caller may be woken at any moment from here on
        RELAY.add(waiters)
    if futures:
        held: list[Callable[[], None]] = []  # answers bound for an event loop wake it once, after the last
        outer, _held.wakes = _held.wakes, held
        try:
            for request in futures:  # answer stored above: hand it straight to the hook
                deliver = request.deliver
                if deliver is None:
                    raise RuntimeError("a request with a future was completed before it had a deliver hook")
                try:
                    deliver(request)
                except Exception:  # (the hook resolved its future first): the rest must still be answered
                    _log.exception("handing over the answer of a request of a batch failed")
        finally:
            _held.wakes = outer
            for wake in held:
                wake()
