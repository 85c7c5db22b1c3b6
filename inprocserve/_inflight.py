"""Identical requests in flight share one run: the first (the leader) runs, the others follow its answer.

Independent of the result cache: the cache only stores answers, this only shares runs. The key hashes the
input names, dtypes, shapes and bytes (blake2b), together with the model and version, so an answer is never
shared across versions or different inputs.

The leader's duty is to call :meth:`Coalescer.release` exactly once, whatever happens to it. The server does
so in its one post-answer hook (answers, errors, deadlines, cancellations) and when the leader is refused
before it was queued; ``release`` is idempotent, so a second call is harmless. A follower whose leader failed
for a reason that is the leader's own (cancelled, past its deadline, its version retired under it) runs
instead of inheriting that error: the first of them to learn it leads the others, as the leader did (unless
its re-run must go to another copy or version: then each runs by itself); any other error is the
followers' too.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import CancelledError, Future
from typing import TYPE_CHECKING, Any

import numpy as np

from ._backend import raised_by_signal_handler
from ._batching import Batcher
from ._deadlines import Watchdog
from ._drift import is_replaying
from ._errors import (
    DeadlineExceededError,
    InferenceError,
    ModelNotFoundError,
    ServerClosedError,
    VersionRetiredError,
)
from ._request import Finisher, Request, finish_detached
from ._request_telemetry import RequestTelemetry

if TYPE_CHECKING:
    from ._model import ModelVersion

__all__ = ["Coalescer", "Lead", "LeaderGone", "Sharing", "inputs_key", "seal", "sealed", "sealed_copy", "shareable"]

Key = tuple[str, int, int, bytes]  # model, version, the copy's identity, the inputs' digest


class Lead:
    """What ``predict``'s short way holds while its request leads identical requests (:meth:`Sharing.lead`),
    until :meth:`Sharing.finish` or :meth:`Sharing.take_over` ends it (once: a second call does nothing)."""

    __slots__ = ("done", "key", "shared_as")

    def __init__(self, key: bytes, shared_as: Key | None) -> None:
        self.key = key
        """The inputs' digest: where the answer is cached."""
        self.shared_as = shared_as
        """The key identical requests follow (``None``: the version shares no runs)."""
        self.done = False


class LeaderGone(Exception):  # a signal between leader and followers; never reaches a caller
    """Set on followers' futures when the leader failed for a reason of its own: run on your own."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def inputs_key(arrays: Mapping[str, np.ndarray]) -> bytes:
    """A digest of the validated inputs: names, dtypes, shapes and bytes (string tensors by value)."""
    digest = hashlib.blake2b(digest_size=16)
    for name, array in arrays.items():
        dtype = array.dtype
        # one header per input: the name (its length first), the dtype's short code (byte order, kind, size:
        # "<f4", a C attribute, where str() runs numpy's Python naming code: about 4 µs, as much as the hash;
        # a structured dtype's code omits its fields) and the shape
        code = str(dtype) if dtype.kind == "V" else dtype.str
        digest.update(f"{len(name)}:{name}{code}{array.shape}".encode())
        if dtype.kind == "O":  # string tensors: each element's kind, length and bytes, so none can
            for item in array.ravel():  # pass for another (a separator inside a string, bytes against text)
                if isinstance(item, bytes):
                    kind, data = b"b", item
                else:
                    kind = b"s" if isinstance(item, str) else b"r"
                    data = (item if isinstance(item, str) else repr(item)).encode("utf-8", "surrogatepass")
                digest.update(kind + len(data).to_bytes(8, "little"))
                digest.update(data)
        else:
            digest.update(array.data if array.flags.c_contiguous else np.ascontiguousarray(array).data)
    return digest.digest()


def _shared_key(target: ModelVersion, key: bytes) -> Key:
    """What identical requests to ``target`` follow: the copy, not just the version number (during a reload
    the old and new copies of a version serve side by side, and a request routed to one must never get the
    other's answer), and the inputs' digest."""
    return (target.name, target.version, id(target), key)


def _leader_only(error: BaseException) -> bool:
    """Whether ``error`` concerns the leader alone (its caller, deadline or routing), not the inputs. So
    does anything that is not an ``Exception``: the leader's thread was interrupted (``KeyboardInterrupt``,
    ``SystemExit``), which followers on other threads must never receive; and so does an ``Exception`` that
    a signal handler raised in the leader's thread (its task's time limit: Celery's
    ``SoftTimeLimitExceeded``, RQ's ``JobTimeoutException``), which followers received as their own error."""
    return (
        isinstance(error, CancelledError | DeadlineExceededError | VersionRetiredError)
        or not isinstance(error, Exception)
        or raised_by_signal_handler(error)
    )


def shareable(outputs: Mapping[str, Any]) -> Mapping[str, Any]:
    """``outputs`` to hand to one more caller: number arrays are shared (they were sealed: :func:`sealed`); a
    text array, which numpy keeps in no memory that could be sealed, is a read-only copy of its own (its
    strings shared: Python never changes one in place; 1 to 3 µs for a few, about 20 µs for 4,096); any other
    value (a sequence of maps, as a ZipMap output gives) is copied, since a caller may change it in place.

    A text answer was shared as a read-only view of an array that owns its memory: ``answer.base.setflags(
    write=True)`` made that writable again, and a write through it changed what every later hit, or every
    follower (and the leader), got."""
    if all(isinstance(value, np.ndarray) and not value.dtype.hasobject for value in outputs.values()):
        return outputs
    return {name: _own(value) for name, value in outputs.items()}


def _own(value: Any) -> Any:
    """A caller's own copy of an output that cannot be shared safely (see :func:`shareable`)."""
    if not isinstance(value, np.ndarray):
        return _copied(value)
    if not value.dtype.hasobject:
        return value
    return _read_only(value.copy())  # (read-only as a shared answer is: the same answer, the same rules)


def sealed(value: np.ndarray) -> np.ndarray:
    """``value`` read-only for good, for several callers to share: itself where no array it is a view of
    (``.base``, ``.base.base``...) can be made writable again (onnxruntime's memory, or a sealed copy), else a
    copy that nobody can write (:func:`sealed_copy`). The one sealing of the cache and of identical requests in
    flight.

    A read-only view of an array that owns its memory (a row of a merged batch, copied; a text output) was
    shared before: ``answer.base.setflags(write=True)``, numpy's usual advice for 'assignment destination is
    read-only', made that writable again, and a write through it changed the answer that every later hit, or
    every follower (and the leader), got. A text (``object``) array cannot be held in memory nobody can write:
    it is made read-only here, and every other caller gets a copy of its own (:func:`shareable`)."""
    if value.dtype.hasobject:
        return _read_only(value)
    array: Any = value
    while isinstance(array, np.ndarray):
        writeable = array.flags.writeable
        array.flags.writeable = False
        try:
            array.flags.writeable = True
        except ValueError:  # (refused: nobody can make this one writable again; the one it views, maybe)
            array = array.base
            continue
        array.flags.writeable = writeable  # (left as it was: the copy is shared, not this)
        return sealed_copy(value)
    value.flags.writeable = False
    return value


def sealed_copy(value: np.ndarray) -> np.ndarray:
    """A read-only copy of ``value`` over memory nobody can write: an immutable ``bytes`` (a text array: a
    read-only copy, see :func:`sealed`)."""
    if value.dtype.hasobject:
        return sealed(value.copy())
    return np.frombuffer(value.tobytes(), dtype=value.dtype).reshape(value.shape)


def _read_only(array: np.ndarray) -> np.ndarray:
    """A text array read-only: a read-only view of it (of a copy, if it is a view of memory others may write)."""
    array.flags.writeable = False
    if array.base is not None:
        array = array.copy()
        array.flags.writeable = False
    return array.view()


def seal(outputs: Mapping[str, Any]) -> None:
    """Make the arrays of ``outputs``, an answer about to be shared, read-only for good (:func:`sealed`),
    in place: the caller it answers holds the same mapping."""
    for name, value in outputs.items():
        if isinstance(value, np.ndarray):
            shared = sealed(value)
            if shared is not value and isinstance(outputs, dict):
                outputs[name] = shared


def _copied(value: Any) -> Any:
    """A copy of a non-tensor output: a ZipMap's list of maps of numbers as new maps (a tenth of deepcopy's
    cost: about 2 ms for 4,096 rows), anything else by deepcopy."""
    if isinstance(value, list) and all(type(item) is dict for item in value):
        return [dict(item) for item in value]
    return copy.deepcopy(value)


class Coalescer:
    """The map of in-flight keys to the leader's future. Thread-safe; holds no threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # key -> the future its followers wait on, made by the first follower (``None`` until one joins: most
        # leaders are never followed, and a Future with its Condition costs a few microseconds to make)
        self._leaders: dict[Key, Future[Mapping[str, Any]] | None] = {}

    def join(self, key: Key) -> Future[Mapping[str, Any]] | None:
        """``None``: the caller leads and must :meth:`release` ``key``; else the leader's future to follow.

        A follower's future resolves with the leader's outputs, fails with the leader's error, or fails with
        :class:`LeaderGone` when the follower should run by itself.
        """
        with self._lock:
            if key not in self._leaders:
                self._leaders[key] = None
                return None
            future = self._leaders[key]
            if future is None:
                future = self._leaders[key] = Future()
            return future

    def lead(self, key: Key) -> bool:
        """Lead ``key`` (as :meth:`join` returning ``None``) unless an identical request is in flight: then
        return False having joined nothing."""
        with self._lock:
            if key in self._leaders:
                return False
            self._leaders[key] = None
            return True

    def release(self, key: Key, outputs: Mapping[str, Any] | None, error: BaseException | None) -> None:
        """The leader is done (answered, failed or refused): free its key and wake its followers. Idempotent."""
        with self._lock:
            future = self._leaders.pop(key, None)
        if future is None:  # nobody followed it (or released already)
            return
        if outputs is not None:  # one answer for several callers: none may change it for the others
            try:
                seal(outputs)
                outputs = shareable(outputs)  # (text: followers' copies are made from one the leader never holds)
            except BaseException as exc:  # (an output deepcopy refuses, out of memory): never left waiting, the
                future.set_exception(LeaderGone(exc))  # followers run by themselves; the leader keeps its answer
                if not isinstance(exc, Exception):  # (its thread interrupted: that goes on up)
                    raise
                return
        if error is not None:
            future.set_exception(LeaderGone(error) if _leader_only(error) else error)
        elif outputs is None:  # no answer and no error: never leave followers waiting
            future.set_exception(LeaderGone(RuntimeError("the leader finished without an answer")))
        else:
            future.set_result(outputs)

    def __len__(self) -> int:
        with self._lock:
            return len(self._leaders)


class _Following:
    """What a leader's done-callback holds of one follower: the follower and its version, until its caller
    gives up (a synchronous caller past its deadline or interrupted; a ``submit`` future cancelled or past
    its deadline; an event loop's task cancelled or answered by its deadline). A future keeps its callbacks
    until it is done, so a leader running long kept every given-up follower, with its own copy of the inputs,
    alive: 400 callers of the hot request with a 1 ms deadline held 50 MiB while one run of 64 rows was held up.
    Whoever :meth:`take` s it first, under the Sharing lock, answers the follower: the leader's callback,
    or its caller giving up (its future done first, or a ``submit`` follower's deadline alarm: see
    Sharing._given_up); the other finds nothing. A follower whose leader gave up and who follows another
    follower that leads now is :meth:`restore` d: its caller's give-up hooks hold this object."""

    __slots__ = ("alarm", "deadline", "deadlines", "expire", "lock", "request", "target")

    def __init__(self, request: Request, target: ModelVersion, lock: threading.Lock) -> None:
        self.request: Request | None = request
        self.target: ModelVersion | None = target
        self.lock = lock
        self.alarm: Any = None  # a submit follower's deadline on ``deadlines``, disarmed once taken
        self.deadlines: Watchdog | None = None
        self.deadline: float | None = None  # (on the Sharing's clock) and what its alarm calls: to arm it again
        self.expire: Callable[[], None] | None = None

    def clear(self) -> None:
        self.request = self.target = None

    def take(self) -> tuple[Request, ModelVersion] | None:
        with self.lock:
            request, target, alarm = self.request, self.target, self.alarm
            self.request = self.target = self.alarm = None
        if alarm is not None and self.deadlines is not None:
            self.deadlines.disarm(alarm)
        return None if request is None or target is None else (request, target)

    def restore(self, request: Request, target: ModelVersion, now: float, *, locked: bool = False) -> None:
        """Held again after :meth:`take`: the follower follows a new leader (its deadline alarm armed again).
        A give-up of its caller in between found nothing to take: its answer, when it comes, is dropped (a
        cancelled future) or recorded as what the caller got, as any follower's that gave up late.
        ``locked``: the Sharing lock (this one's) is held already.

        Held again before its alarm is armed, under the lock its action takes: an alarm already due (its
        deadline passed as its leader gave up) fires at once on the watchdog's thread, which, run before
        the follower was held again, found nothing to give up, and the follower waited past its deadline
        for the new leader's run. (The watchdog calls the action without its own lock: no lock-order cycle.)"""
        if locked:
            self._hold(request, target, now)
            return
        with self.lock:
            self._hold(request, target, now)

    def _hold(self, request: Request, target: ModelVersion, now: float) -> None:
        self.request, self.target = request, target
        if self.deadlines is not None and self.deadline is not None and self.expire is not None:
            self.alarm = self.deadlines.arm(self.deadline - now, self.expire, unlocked=True)

    def leader_done(
        self, follow: Callable[[Request, ModelVersion, Future[Mapping[str, Any]], _Following], None]
    ) -> Callable[[Future[Mapping[str, Any]]], None]:
        def done(leader: Future[Mapping[str, Any]]) -> None:
            taken = self.take()
            if taken is not None:  # (else nobody waits for it any more)
                follow(taken[0], taken[1], leader, self)

        return done


class Sharing:
    """How the server answers a request without a run of its own: from the version's cache, or by following
    an identical request in flight (``CacheConfig.share_in_flight``). Thread-safe; holds one thread, a
    watchdog started with the first ``submit`` follower that has a deadline (:meth:`close` stops it).

    Args:
        deliver: The server's per-request hook that resolves a ``submit`` future.
        telemetry: Counts hits, misses and shared runs.
        serving: The copy of a model version that serves now (a table lookup, never a load): a follower
            whose re-run the copy it was routed to refuses, because a reload replaced that copy, runs there.
        default: The version of a model that serves its default traffic now (a table lookup too): a
            follower routed by default whose version was unloaded by a hot reload runs there.
        closed: Whether the server is closed (a follower with nowhere to run is told so).
    """

    def __init__(
        self,
        deliver: Finisher,
        telemetry: RequestTelemetry,
        *,
        clock: Callable[[], float],
        serving: Callable[[str, int], ModelVersion | None] = lambda model, version: None,
        default: Callable[[str], ModelVersion | None] = lambda model: None,
        closed: Callable[[], bool] = lambda: False,
    ) -> None:
        self._coalescer = Coalescer()
        self._deliver = deliver
        self._telemetry = telemetry
        self._clock = clock
        self._serving = serving
        self._default = default
        self._closed = closed
        # Synchronous followers not (yet) queued: their caller waits for them without the batcher, whose
        # deadline bookkeeping counts queued requests only. The lock orders a follower's re-run against its
        # caller giving up. These hold the requests themselves (compared by identity), never their ids: an
        # id outlives its object and may name a later request.
        self._lock = threading.Lock()
        # (each with what its leader's callback holds of it: cleared when its caller gives up, see _Following)
        self._waiting: dict[Request, _Following] = {}
        # Synchronous followers queued to run by themselves, and the batcher that queued them.
        self._requeued: dict[Request, Batcher] = {}
        # Gives up ``submit`` followers at their deadline (nothing else would until their leader finishes);
        # its thread starts with the first such follower.
        self._deadlines = Watchdog("inprocserve-follower-deadlines")

    def close(self) -> None:
        """Stop the deadline thread (the server closed: leaders are answered or refused, and so followers)."""
        self._deadlines.close()

    def __len__(self) -> int:
        """Leaders in flight."""
        return len(self._coalescer)

    def answered_without_run(self, target: ModelVersion, request: Request, key: bytes | None = None) -> bool:
        """Answer ``request`` from the version's cache, or make it follow an identical request in flight;
        returns whether it needs no run of its own. Otherwise it may lead: its key is set, and
        the server's post-answer hook (or its refusal path) must call :meth:`release`. ``key``: the digest of
        ``request.arrays``, when the caller has it already (``predict``'s short way looked the cache up)."""
        cache = target.cache
        share = target.config.cache.share_in_flight
        if cache is None and not share:
            return False  # the common case costs one attribute read: no hashing
        if key is None:
            key = inputs_key(request.arrays)
        assert target.batcher is not None  # a routed version is loaded
        telemetry = target.batcher.telemetry
        if cache is not None:
            outputs = cache.get(key)
            if outputs is not None:
                self._telemetry.cache_result(telemetry, "hit")
                finish_detached(request, outputs, None, self._deliver)
                return True
        if share is not False and is_replaying():
            share = False  # (see lead())
        shared_as = _shared_key(target, key)
        # held by the request before it joins: from the moment a key is joined, whatever refuses the request
        # (an interruption included) releases it through the request (see Server._dispatch)
        request.cache_key, request.shared_as = key, shared_as
        leader = None if share is False else self._coalescer.join(shared_as)
        if leader is not None:
            request.cache_key = request.shared_as = None
            request.rerun_key = key  # (if its leader gives up, it runs by itself and its answer is kept)
        elif share is False:
            request.shared_as = None  # (a leader that nobody can follow joins no key)
        if cache is not None:
            cache.count(shared=leader is not None)
        self._telemetry.cache_result(telemetry, "miss" if leader is None else "shared")
        if leader is None:
            return False
        following = _Following(request, target, self._lock)
        future = request.future
        if future is None:
            with self._lock:
                self._waiting[request] = following
                request.follows = True
        else:  # (a caller that gives up lets it go at once, as a synchronous one does)
            gave_up = functools.partial(self._given_up, following)
            watch = getattr(future, "when_given_up", None)  # an event loop's task: its own future tells
            if watch is not None:
                watch(gave_up)
            else:  # (a submit future is done before its answer only if cancelled)
                future.add_done_callback(lambda _future: gave_up(CancelledError()))
                if request.deadline is not None:  # nor is it let go at its deadline by anything else
                    route = request.route
                    late = DeadlineExceededError(
                        f"model {route.model!r} version {route.version}: no answer within the request's "
                        "deadline (it waited for an identical request in flight)",
                        model=route.model,
                        version=route.version,
                    )
                    following.deadlines, following.deadline = self._deadlines, request.deadline
                    following.expire = functools.partial(gave_up, late)
                    following.alarm = self._deadlines.arm(
                        request.deadline - self._clock(), following.expire, unlocked=True
                    )
        leader.add_done_callback(following.leader_done(self._follow))
        return True

    def following(self, request: Request, batcher: Batcher) -> bool:
        """Whether the caller of ``request`` (synchronous) waits for it here (:meth:`wait`): it follows a
        leader, its leader's answer is being handed to it, or it was queued to run by itself on another copy
        of its version than ``batcher``'s. If not, its caller waits for it in ``batcher`` (it was queued
        there to run by itself meanwhile, and is forgotten here, or it never followed)."""
        with self._lock:
            requeued_on = self._requeued.get(request)
            if requeued_on is batcher:
                del self._requeued[request]
                return False
            return request.follows or requeued_on is not None

    def wait(self, request: Request, batcher: Batcher) -> None:
        """Block a synchronous follower's caller until it is answered or its deadline passes.

        Raises:
            DeadlineExceededError: the deadline passed first (a re-run it got meanwhile is withdrawn).
        """
        try:  # (answered by a batch after a re-run, it hands its place in the wake relay on)
            answered = request.wait(None if request.deadline is None else request.deadline - self._clock())
        except BaseException:  # its thread was interrupted: nobody waits for it any more
            self.give_up(request)
            raise
        with self._lock:
            following = self._waiting.pop(request, None)
            requeued_on = self._requeued.pop(request, None)
        waiting = following is not None
        if following is not None:
            following.clear()  # (its caller no longer waits: the leader must not keep its inputs)
        if answered:
            return
        if requeued_on is not None:
            requeued_on.wait(request)  # re-run meanwhile: the batcher withdraws it, or it was just answered
            return
        if not waiting:  # its leader's answer (or a refused re-run's error) is being handed over right now
            request.waiter.acquire()
            return
        route = request.route
        raise DeadlineExceededError(
            f"model {route.model!r} version {route.version}: no answer within the request's deadline "
            "(it waited for an identical request in flight)",
            model=route.model,
            version=route.version,
        )

    def give_up(self, request: Request) -> None:
        """A synchronous follower's caller was interrupted: nobody waits for it any more."""
        with self._lock:
            requeued_on = self._requeued.pop(request, None)
            following = self._waiting.pop(request, None)
        if following is not None:
            following.clear()
        if requeued_on is not None:  # re-run meanwhile: withdrawn, or it leaves the wake relay
            requeued_on.interrupted(request)

    def _given_up(self, following: _Following, given: BaseException) -> None:
        """A follower's caller gave up, ``given`` what it got instead of its answer: a cancellation, an event
        loop's task's deadline, or a ``submit`` follower's deadline (its alarm on ``_deadlines``); a follower
        answered by its leader already finds nothing to take. Not answered yet, it is answered now with
        ``given``, as a queued request dropped for it is: recorded once, and its inputs let go instead of
        kept until its leader finishes."""
        taken = following.take()
        if taken is None:
            return
        future = taken[0].future
        # Cancelled by its caller (as its deadline fired, too: recorded as what it got). Notified as a worker
        # taking a cancelled future does: concurrent.futures.wait and as_completed count it done only then.
        if type(future) is Future and not future.set_running_or_notify_cancel():
            given = CancelledError()
        finish_detached(taken[0], None, given, self._deliver)

    def _follow(
        self,
        request: Request,
        target: ModelVersion,
        leader: Future[Mapping[str, Any]],
        following: _Following,
    ) -> None:
        """An identical request's leader is done: take its answer or error; or, when the leader failed for a
        reason of its own (cancelled, past its deadline, retired under it), run this one by itself, leading
        the leader's other followers (:meth:`_lead_again`), or follow the one of them that leads now."""
        error = leader.exception()
        rerun = isinstance(error, LeaderGone)
        refused: BaseException | None = None
        again: Future[Mapping[str, Any]] | None = None
        let_go: list[Key] = []
        if request.future is None:
            with self._lock:  # held through the re-run's queueing: its caller sees it queued, or not at all
                if self._waiting.pop(request, None) is None:
                    return  # its caller gave up at its deadline
                if rerun:
                    again = self._lead_again(request, target)
                    if again is not None:  # (waiting again: its caller's deadline lets it go, see wait())
                        following.restore(request, target, self._clock(), locked=True)
                        self._waiting[request] = following
                    else:
                        refused, queued_on = self._queue(request, target, let_go)
                        if queued_on is not None:
                            self._requeued[request] = queued_on
        elif rerun:
            again = self._lead_again(request, target)
            if again is not None:
                following.restore(request, target, self._clock())  # (its caller's give-up hooks hold it)
            else:
                refused, _ = self._queue(request, target, let_go)
        elif type(request.future) is Future and not request.future.set_running_or_notify_cancel():
            # its caller cancelled it just as its leader answered (after this took it): recorded as what
            # the caller got, not as the answer it never sees; once running, it can no longer be cancelled
            finish_detached(request, None, CancelledError(), self._deliver)
            return
        for key in let_go:  # (outside the lock, as what follows: their callbacks take it)
            self._coalescer.release(key, None, CancelledError())
        if again is not None:  # (a leader done already calls back at once)
            again.add_done_callback(following.leader_done(self._follow))
            return
        if rerun:
            if refused is not None:  # finished outside the lock: a future's callbacks may call the server
                finish_detached(request, None, refused, self._deliver)
            return
        answer = None
        if error is None:
            try:
                answer = shareable(leader.result())  # (its own copy of what callers may change in place)
            except Exception as exc:  # (out of memory): answered with an error, never left waiting
                error = InferenceError(
                    f"model {target.name!r} version {target.version}: the answer of an identical request in "
                    f"flight could not be copied for this one ({type(exc).__name__}: {exc}); retry"
                )
        finish_detached(request, answer, error, self._deliver)

    def _lead_again(self, request: Request, target: ModelVersion) -> Future[Mapping[str, Any]] | None:
        """A follower whose leader gave up runs by itself: the first of the leader's followers to get here
        leads the others (its answer wakes them, through :meth:`release`, as any leader's does) and ``None``
        is returned; the others get its future to follow. They ran one by one before: 20 callers of a hot
        request whose first caller gave up made 20 runs (or one run of 20 identical rows)."""
        key = request.rerun_key
        if key is None or is_replaying():  # (a replay leads nobody: see lead())
            return None
        shared_as = _shared_key(target, key)
        again = self._coalescer.join(shared_as)
        if again is None:
            request.shared_as = shared_as  # (with its cache_key, set as it is queued: released once answered)
        return again

    def _queue(
        self, request: Request, target: ModelVersion, let_go: list[Key]
    ) -> tuple[BaseException | None, Batcher | None]:
        """Queue a follower to run by itself: on ``target``, or on the copy of its version that replaced it
        meanwhile. Returns the error if it is refused, else the batcher it is queued on. ``let_go``: gets
        the key of the followers it led, if it runs elsewhere (see :meth:`_lead_no_more`)."""
        request.cache_key = request.rerun_key  # it runs for itself now: its answer is kept, as a leader's is
        name, number = target.name, target.version
        for serving in (target, self._serving(name, number)):
            if serving is None or serving.batcher is None:
                break
            if serving is not target and serving.batcher is target.batcher:
                break
            if serving is not target and not _validated_alike(serving, target):
                break  # its inputs were validated for the old copy's signature, which the new one changed
            if serving is not target:
                self._lead_no_more(request, let_go)
            try:
                serving.batcher.submit(request, run_inline=False)
                serving.batcher.wake()  # an event loop's request defers its wake to the loop: none is coming here
            except VersionRetiredError:
                continue  # this copy drains after a reload: the copy serving now, if any, takes it
            except BaseException as exc:
                return exc, None
            return None, serving.batcher
        self._lead_no_more(request, let_go)
        moved = self._queue_on_default(request, target)
        if moved is not None:
            return moved
        if self._closed():
            return ServerClosedError(f"model {name!r}: the server closed", model=name, version=number), None
        return ModelNotFoundError(f"model {name!r} version {number} was unloaded", model=name, version=number), None

    def _lead_no_more(self, request: Request, let_go: list[Key]) -> None:
        """A follower that leads its leader's other followers again (:meth:`_lead_again`) runs elsewhere than
        on the copy they were routed to (a reload replaced it, or a new version took its default traffic):
        its answer is not theirs to share (it names another copy or version). Before it is queued there, it
        stops leading them; ``_follow`` lets them go to run by themselves (as they did before any follower
        led them), outside the Sharing lock, which their callbacks take."""
        shared_as, request.shared_as = request.shared_as, None
        if shared_as is not None:
            let_go.append(shared_as)

    def _queue_on_default(
        self, request: Request, target: ModelVersion
    ) -> tuple[BaseException | None, Batcher | None] | None:
        """A follower routed by default (no version pinned, no rollout) whose version a hot reload unloaded:
        the version that serves the model's default traffic now runs it, as a request refused by a retiring
        version is routed again, if it takes the same inputs and that many rows. ``None`` if not."""
        route = request.route
        serving = self._default(target.name) if route.variant == "default" else None
        if (
            serving is None
            or serving.version == target.version
            or serving.batcher is None
            or not _validated_alike(serving, target)
            or request.rows > serving.max_request_rows
        ):
            return None
        reason = f"{route.reason}; version {route.version} was unloaded while it waited"
        request.route = route._replace(
            version=serving.version,
            reason=reason,
            shadows=(),
            decision=route.decision._replace(version=serving.version, reason=reason, shadows=()),
        )  # (before it is queued: a worker may answer it at once, with this route)
        try:
            serving.batcher.submit(request, run_inline=False)
            serving.batcher.wake()
        except VersionRetiredError:  # replaced in turn meanwhile: refused, named by its first route
            request.route = route
            return None
        except BaseException as exc:
            return exc, None
        return None, serving.batcher

    def release(self, request: Request, target: ModelVersion | None, error: BaseException | None) -> None:
        """If ``request`` led identical requests: keep its answer in the cache, and wake them. Idempotent."""
        key = request.cache_key
        if key is None:
            return
        request.cache_key = None
        shared_as, request.shared_as = request.shared_as, None
        self._released(target, key, shared_as, request.outputs if error is None else None, error)

    def lead(self, target: ModelVersion, key: bytes) -> Lead | None:
        """For ``predict``'s short way, after a miss in ``target``'s cache: lead the requests with inputs
        ``key`` so that identical ones follow this caller's request, which must end the lead with
        :meth:`finish` (its run is done, or it failed or was interrupted before it was queued) or hand it to
        the full way (:meth:`take_over`). ``None``: an identical request is in flight (the full way follows
        it)."""
        if target.config.cache.share_in_flight is False or is_replaying():
            # A replay (promote() re-running recent inputs) leads nobody: the requests that followed it were
            # answered on its thread, inside drift.replaying(), so live requests identical to a replay (a
            # ``submit`` or an event loop's task) were never fed to drift monitoring.
            return Lead(key, None)
        shared_as = _shared_key(target, key)
        return Lead(key, shared_as) if self._coalescer.lead(shared_as) else None

    def finish(
        self, target: ModelVersion, lead: Lead, outputs: Mapping[str, Any] | None, error: BaseException | None
    ) -> None:
        """The request that :meth:`lead` returned ``lead`` for is done (its run answered or failed, or it was
        refused or interrupted before it was queued): count the miss, keep its answer in the cache, and hand
        it (or ``error``) to the requests that followed it. Does nothing for a lead that ended already."""
        if lead.done:
            return
        lead.done = True
        try:
            self._count_miss(target)
        finally:  # (followers are woken whatever happens to the counts)
            self._released(target, lead.key, lead.shared_as, outputs, error)

    def take_over(self, target: ModelVersion, request: Request, lead: Lead) -> None:
        """The request that :meth:`lead` returned ``lead`` for goes the full way after all (the session was
        taken meanwhile): ``request`` leads from now on, as one :meth:`answered_without_run` made a leader
        (its answer is kept and handed to its followers by :meth:`release`), and the miss is counted."""
        lead.done = True
        request.cache_key = lead.key
        request.shared_as = lead.shared_as
        self._count_miss(target)

    def _count_miss(self, target: ModelVersion) -> None:
        """Count a request that leads (as :meth:`answered_without_run` counts one) and runs: a miss."""
        if target.cache is not None:
            target.cache.count(shared=False)
        assert target.batcher is not None  # a routed version is loaded
        self._telemetry.cache_result(target.batcher.telemetry, "miss")

    def _released(
        self,
        target: ModelVersion | None,
        key: bytes,
        shared_as: Key | None,
        outputs: Mapping[str, Any] | None,
        error: BaseException | None,
    ) -> None:
        """Keep a leader's answer in the cache, then wake its followers (even if keeping it failed: nobody
        may wait forever)."""
        try:
            if outputs is not None and target is not None and target.cache is not None:
                target.cache.store(key, outputs)
        finally:
            if shared_as is not None:  # (a leader that nobody could follow joined no key)
                self._coalescer.release(shared_as, outputs, error)


def _validated_alike(serving: ModelVersion, target: ModelVersion) -> bool:
    """Whether a request validated for ``target`` is valid for ``serving`` without a check: the same inputs,
    the same bounds on their values, and no NaN check of ``serving``'s that ``target`` skipped (a request
    moved to a version that bounds a value, or rejects NaN, would reach its run unchecked)."""
    ours, theirs = serving.signature, target.signature
    return (
        ours is not None
        and theirs is not None
        and ours.inputs == theirs.inputs
        and ours.bounds == theirs.bounds
        and not (serving.reject_nan and not target.reject_nan)
    )
