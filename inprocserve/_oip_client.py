"""The HTTP side of the Open Inference Protocol client: a bounded keep-alive connection pool to one server.

Built on urllib3 2.3+ (the ``remote`` extra), chosen by measurement (``benchmarks/remote_client.py``, figures in
``docs/scaling.md``): against the standard library's ``http.client`` on one kept-alive connection it costs
about 0.2-0.3 ms more per call over loopback (per batch, not per request), small next to the hop and the
model, and it brings what a hand-made pool would have to grow: a thread-safe pool bounded at
``max_connections`` that blocks when full, separate connect and read timeouts, detection of connections the
server closed while idle, and TLS with certificate verification for ``https://``.

This module knows HTTP, not the protocol's documents or the library's errors: transport failures come out
as :class:`TransportError`, which says whether the request may have reached the server, because that is what
decides whether a retry is safe. :mod:`inprocserve._remote` maps both to the library's error tree.
"""

from __future__ import annotations

import contextlib
import functools
import http.client
import ipaddress
import os
import queue
import socket
import ssl
import sys
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import _fork, _stop_signal
from ._call_watchdog import CallWatchdog, Watch
from ._extras import require
from ._request import drop_tracebacks
from ._stop_signal import THIS_THREAD

__all__ = ["MAX_RESPONSE_BYTES", "HttpClient", "HttpResponse", "TransportError"]

MAX_RESPONSE_BYTES = 1 << 30
"""A response body longer than this is refused (a broken server must not exhaust the process's memory)."""
_CHUNK = 1 << 20
_WINDOW = 16 << 10  # (the most compressed input given to zlib at once: see _Inflater.inflate)
_ERROR_BODY_BYTES = 64 << 10
"""How much of an error answer's body (a status of 300 or more) is read: enough for its message. An error is
judged by its status, so a long one (a validation error that echoes the inputs back) is the same error as a
short one, not an answer too long; the rest is left unread, and its connection closed rather than reused."""
_WAKE_S = 0.05  # (the longest a call waiting for a free slot sleeps before it looks again: see _Slots.get)
_CLEAN_UP_TRIES = 3  # (an interrupted call's clean-up, run again where it is interrupted itself)
_IDLE_S = 1.0
"""A kept-alive connection idle longer than this is closed rather than used again. A server closes a
connection idle past its own keep-alive timeout (gunicorn 2 s, uvicorn and so MLServer 5 s, Node 5 s), and a
request sent just as it does is answered by the close: on a connection idle that long, one call in 30 failed
so (``RemoteUnavailableError``, counted against the server). It cannot be sent again safely: the server may
have read it (RFC 9112, 9.3.1, and urllib3 does not retry a POST either), so the connection is not used
that close to the server's timeout. A new connection costs a connect (a TLS handshake for ``https://``),
only after a second without calls. A server that says its timeout (``Keep-Alive: timeout=5``: Node, Apache,
nginx when told to) has its connections used up to a second before it (see :func:`_idle_limit`)."""
_calls = threading.local()  # .watch: the call this thread is making, for the connection to arm with its socket
# (.holding: whether that call holds one of the pool's slots; .taken: the connection it took with its slot, closed
# if a free slot comes back for it; .answered_on: the connection its answer came on, see _give_back_lost)


def _gevent_local() -> None:
    """gevent patched the process after this module was imported: one ``_calls`` per greenlet, not one shared
    by all the greenlets of the thread (a call's connection armed another call's watch, see _fork)."""
    global _calls, THIS_THREAD
    _calls = threading.local()
    THIS_THREAD = _stop_signal.THIS_THREAD  # (renewed by its module's hook, which ran before this one)


_fork.on_monkey_patch(_gevent_local)


@dataclass(frozen=True, slots=True)
class HttpResponse:
    """A whole response: status, body (read to the end, so the connection goes back to the pool; of an error
    answer, only its first 64 KiB) and headers (names lower-cased)."""

    status: int
    body: bytes
    headers: dict[str, str]
    ended_by_close: bool = False
    """Whether the body had no length said (no ``Content-Length``, not chunked: an HTTP/1.0 answer, say) and
    ended where the server closed the connection: a body cut short by a close then looks whole here, and only
    what it holds can tell (:mod:`inprocserve._remote` takes one that holds less than it declares for cut, a
    transport failure)."""


class TransportError(Exception):
    """No HTTP response came back.

    Attributes:
        sent: Whether the request may have reached the server (``False``: it certainly did not, as when the
            connection was refused, so retrying cannot run it twice).
        timed_out: Whether it failed because the call's time ran out (not ``connect_timeout_s``: a host that
            does not answer a connection attempt in that time is down, as one that refuses it).
        too_long: Whether the answer's body ran past the size the call allowed (it was not read to its end).
        lasting: Whether trying again cannot help (a certificate the system does not trust: each retry was one
            more handshake refused the same way, after a backoff).
    """

    def __init__(
        self, message: str, *, sent: bool, timed_out: bool = False, too_long: bool = False, lasting: bool = False
    ) -> None:
        super().__init__(message)
        self.sent = sent
        self.timed_out = timed_out
        self.too_long = too_long
        self.lasting = lasting


class HttpClient:
    """Keep-alive HTTP/1.1 connections to one server, at most ``max_connections`` at once.

    Thread-safe: urllib3's pool hands each call its own connection; a call that finds all of them busy waits
    for one (up to its timeout). Not fork-safe by itself: its owner drops it in a forked child
    (:meth:`forget`) and builds a new one there. Owns a :class:`CallWatchdog` thread (started by the first
    call, stopped by :meth:`close`) that shuts a call's socket when the call outlives its timeout.

    Args:
        base_url: ``http://host:port`` or ``https://host:port``, with an optional path prefix (a gateway's).
        max_connections: Connections kept and used at most (the backend's concurrency).
        connect_timeout_s: Cap on establishing a connection.
        headers: Sent with every request (authorization, routing); never logged.
    """

    def __init__(
        self, base_url: str, *, max_connections: int, connect_timeout_s: float, headers: Mapping[str, str]
    ) -> None:
        self._urllib3: Any = require("urllib3", extra="remote", feature="a remote model (RemoteModel)")
        parts = urlsplit(base_url)
        self._prefix = parts.path.rstrip("/")
        self._connect_timeout_s = connect_timeout_s
        self._headers = dict(headers)
        self._pool: Any = self._urllib3.connection_from_url(
            f"{parts.scheme}://{parts.netloc}", maxsize=max_connections, block=True
        )
        self._pool.ConnectionCls = _watched(self._pool.ConnectionCls, _Resolver())
        self._slots = _Slots(max_connections, self._pool, self._urllib3.exceptions.ClosedPoolError)
        self._watchdog = CallWatchdog(name=f"inprocserve-http-deadline-{parts.netloc}")
        self._pid = os.getpid()

    def request(
        self,
        method: str,
        path: str,
        *,
        timeout_s: float,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        max_bytes: int = MAX_RESPONSE_BYTES,
    ) -> HttpResponse:
        """Send one request and read its whole response.

        Args:
            path: From the server root, such as ``/v2/models/fraud``; the base URL's prefix is put in front.
            timeout_s: Cap on the whole call: waiting for a free connection, connecting, sending, and reading
                the answer. A watchdog shuts the socket when it runs out, so a server that trickles its
                headers or its body a byte at a time cannot hold the call longer. (A connection attempt
                has no socket to shut yet: it is bounded by ``connect_timeout_s`` on its own, resolving the
                host's name included, so the worst case is ``timeout_s`` plus that, when the connection is
                opened at the very end; a TLS handshake after it is within ``timeout_s``.)
            max_bytes: The longest body taken (at most :data:`MAX_RESPONSE_BYTES`): reading stops past it.
                An error answer (status 300 or more) is returned whatever its length, with only the first
                64 KiB of its body (enough for its message).

        Raises:
            TransportError: no whole response (connection refused or reset, a timeout, the pool closed, a
                body over ``max_bytes``).
        """
        deadline = time.monotonic() + timeout_s
        urllib3 = self._urllib3
        exceptions = urllib3.exceptions
        timeout = urllib3.Timeout(connect=min(self._connect_timeout_s, timeout_s), read=timeout_s)
        watch = self._watchdog.watch(timeout_s)
        stop = THIS_THREAD.signal  # a call on the shadow thread ends, as at its deadline, when the server closes
        unhook = None if stop is None else stop.hook(watch.fire)
        _calls.watch = watch
        _calls.holding = False
        _calls.taken = None
        try:
            try:
                response = self._pool.urlopen(
                    method,
                    self._prefix + path,
                    body=body,
                    headers={**self._headers, **(headers or {})},
                    retries=False,  # the caller decides what is safe to retry
                    redirect=False,
                    timeout=timeout,
                    pool_timeout=timeout_s,
                    preload_content=False,  # read below, against the deadline and the size cap
                    decode_content=False,  # undone below, a piece at a time (see _Inflater)
                )
            except BaseException:
                if getattr(_calls, "holding", False):  # (see _give_back_lost)
                    _despite_interruptions(self._give_back_lost)
                raise
            try:
                data = self._read(response, deadline, timeout_s, watch, min(max_bytes, MAX_RESPONSE_BYTES))
            except BaseException:
                # Interrupted before _read's clean-up gave the connection back or dropped it (Ctrl-C's
                # KeyboardInterrupt or gevent's Timeout as it was called, or as its clean-up began): the
                # connection is dropped here. Kept, its slot was lost to the pool for good, and with every slot
                # lost so, each later call waited its whole timeout for none. (Noted by the pool's slots, not by
                # _read: a clean-up begun may yet be interrupted before its release.)
                if getattr(_calls, "holding", False):
                    _despite_interruptions(lambda: (response.close(), response.release_conn()))
                raise
        except TransportError:
            raise
        except (exceptions.HTTPError, OSError) as exc:
            # urllib3 keeps the error it raises in a local of the frame that raised it (connectionpool.urlopen's
            # ``new_e``), whose traceback holds that frame: a reference cycle, which held the frames of this
            # call's callers (that frame's ``f_back``: a predict on its caller's thread, its inputs) until the
            # collector's next full pass. Its tracebacks go; what it says is in the message.
            drop_tracebacks(exc)
            raise _failed(exc, exceptions, timeout, timeout_s, watch, self._connect_timeout_s) from None
        finally:
            _calls.watch = _calls.answered_on = None
            watch.end()
            if unhook is not None:
                unhook()
        headers = {name.lower(): value for name, value in response.headers.items()}
        chunked = "chunked" in headers.get("transfer-encoding", "").lower()
        return HttpResponse(
            response.status, data, headers, ended_by_close="content-length" not in headers and not chunked
        )

    def _give_back_lost(self) -> None:
        """urllib3 had this call's answer, its response holding the connection, and the call was interrupted
        (Ctrl-C's KeyboardInterrupt, gevent's Timeout: a signal handler runs as urllib3's code calls a Python
        function) before the response reached :meth:`request`: nothing else gives the slot back. The
        connection is closed (its answer unread) and the pool gets a free slot. Kept, the slot was lost for
        good, and with every slot lost so, each later call waited its whole timeout for none."""
        answered_on = getattr(_calls, "answered_on", None)
        _calls.answered_on = None
        if answered_on is not None:
            answered_on.close()
        self._pool._put_conn(None)  # (notes the slot given back: see _Slots._put)

    @staticmethod
    def _read(response: Any, deadline: float, timeout_s: float, watch: Watch, max_bytes: int) -> bytes:
        chunks: list[bytes] = []
        total = 0
        whole = False
        # An error answer is its status: only the start of its body is read, for the message, however long it
        # is (a 422 longer than a batch's outputs was refused as too long, a server failure, not the caller's).
        prefix = _ERROR_BODY_BYTES if response.status >= 300 else None
        read = 0  # (bytes of the body as it came, coded or not)
        try:
            inflater = _inflater(response.headers.get("Content-Encoding"), error_answer=prefix is not None)
            while True:  # bounded: by the deadline, and by the size cap
                if time.monotonic() > deadline:
                    raise _late(timeout_s)
                if inflater is not None and inflater.pending:  # (inflated no further than the cap: see below)
                    chunk = inflater.inflate(b"")
                else:
                    if prefix is not None and read > prefix:
                        # A coded error answer is read as far as an uncoded one, 64 KiB as they came: its gzip
                        # members that inflate to nothing (20 bytes each, inflated one by one) were all read, so a
                        # redirect's body of 60 MB ran past a 3 s timeout_s, a DeadlineExceededError counted
                        # against the server, not the redirect's advice.
                        break
                    # what has arrived (read() would wait for all of it)
                    chunk = response.read1(_CHUNK if prefix is None else prefix + 1 - read)
                    read += len(chunk)
                    if not chunk:
                        if inflater is not None:
                            inflater.end()
                        whole = True
                        break
                    if inflater is not None:
                        chunk = inflater.inflate(chunk)  # (at most _CHUNK bytes; the rest on the next turns)
                if prefix is not None and total + len(chunk) > prefix:
                    chunks.append(chunk[: prefix - total])  # the rest stays unread: the connection is dropped
                    break
                total += len(chunk)
                if total > max_bytes:
                    raise TransportError(f"the answer is longer than {max_bytes} bytes", sent=True, too_long=True)
                chunks.append(chunk)
        except _Unreadable as exc:
            if prefix is None:
                raise TransportError(str(exc), sent=True, lasting=exc.lasting) from None
            # (an error answer is its status: its message is what could be read of it, and its connection dropped)
        finally:
            # End the watch before the connection can go back to the pool, where another call may take it.
            late = watch.end()
            if whole and not late and response.status >= 200:
                response.release_conn()  # read to the end: the connection can be reused
            else:
                response.close()  # half-read or shut down: the connection is unusable, drop it
                response.release_conn()
        if late:  # the end of data may be the shutdown's, not the answer's
            raise _late(timeout_s)
        if response.status < 200:  # 101: what follows on the connection is not an HTTP answer
            raise TransportError(f"the server answered {response.status}, not a final HTTP answer", sent=True)
        return b"".join(chunks)

    def close(self) -> None:
        """Close every pooled connection, and end the calls in flight at once. Idempotent; calls after it
        fail with :class:`TransportError`."""
        if self._pid == os.getpid():
            self._pool.close()
            self._slots.close()  # (after: urllib3's close takes the idle connections out first)
            self._watchdog.close()

    def forget(self) -> None:
        """Drop the pool without touching its sockets: in a forked child they are the parent's."""
        self._pid = -1
        self._watchdog.forget()


class _Unreadable(Exception):
    """An answer's body that cannot be read: its ``Content-Encoding`` is one not undone here, or its compressed
    stream is broken (``lasting``: the same answer again, as an encoding not undone)."""

    def __init__(self, message: str, *, lasting: bool = False) -> None:
        super().__init__(message)
        self.lasting = lasting


_UNDONE = ("gzip", "x-gzip", "deflate")
"""The content codings undone here (one of them, once): what :mod:`zlib` reads."""


def _inflater(content_encoding: str | None, *, error_answer: bool) -> _Inflater | None:
    """The inflater of an answer's ``Content-Encoding`` (``None``: none, or ``identity``).

    The request asks for none (``http.client`` sends ``Accept-Encoding: identity``), but a server may compress
    unasked, and a ``headers`` entry may ask for ``gzip``. urllib3 undid any coding it knows, in whole pieces:
    before 2.6 (the ``remote`` extra takes 2.3), each piece read at once, so a 16 KiB answer coded ``gzip,
    gzip`` inflated to 10 GiB in memory before the size cap was looked at (a ``MemoryError``, not an error of
    the call), and a 1 MiB ``gzip`` one to 250 MiB for a 4 KiB cap. Here one ``gzip`` (of one member or
    several) or ``deflate`` is undone a megabyte at a time, so the size cap counts the bytes it makes as they
    come; any other coding (``br``, ``zstd``, two in a row) is refused: the answer was not asked for so, and
    :mod:`zlib` does not read it.

    Raises:
        _Unreadable: a coding not undone here (an error answer's body is then left unread: it is its status).
    """
    codings = [c.strip().lower() for c in (content_encoding or "").split(",")]
    codings = [coding for coding in codings if coding not in ("", "identity")]
    if not codings:
        return None
    if len(codings) == 1 and codings[0] in _UNDONE:
        return _Inflater(codings[0])
    if error_answer:
        raise _Unreadable("")
    raise _Unreadable(
        f"the answer came with Content-Encoding {str(content_encoding)[:100]!r} (asked for identity), which is not "
        "undone here: only one gzip or deflate is; have the server (or the proxy in front) answer uncompressed",
        lasting=True,
    )


class _Inflater:
    """Undoes a body's ``gzip`` or ``deflate`` coding, at most :data:`_CHUNK` bytes a turn: what a piece of it
    inflates to past that stays compressed (zlib's ``unconsumed_tail``) until it is asked for, so a piece that
    inflates a thousand times over is never held whole.

    A ``gzip`` body may be several members one after another (RFC 1952, 2.2: what ``gzip -c a > x; gzip -c b
    >> x`` writes, and what urllib3 and curl read): each is inflated in turn, against the same turn's
    :data:`_CHUNK`, so many members in one piece read (100,000 of 20 bytes in a 2 MB answer) make one turn's
    work in proportion to that piece, and a member inflating past the size cap is cut there as one alone is.
    Bytes after a member that are not another one are refused, as bytes after a ``deflate`` stream are."""

    __slots__ = ("_coding", "_fed", "_full", "_head", "_magic", "_members", "_tail", "_zlib")

    def __init__(self, coding: str) -> None:
        self._coding = coding
        self._zlib: Any = None
        self._head = b""  # (the first bytes, until two tell zlib's framing from raw deflate)
        self._tail = b""  # (input read and not given to zlib yet: past a turn's _CHUNK, or the next member's)
        self._full = False  # the last turn made a whole _CHUNK: zlib may hold more of it (see pending)
        self._fed = False
        self._members = 1  # (the gzip member being inflated, counted from 1)
        self._magic = b""  # (the first two bytes of a member after the first: a gzip member's are 1f 8b)

    @property
    def pending(self) -> bool:
        """Whether input already read inflates further: input zlib has not taken yet, or output it holds. A
        turn cut at :data:`_CHUNK` may have taken every byte read and still hold the rest of a match it was
        copying (a raw deflate stream has no trailer left unread after it): the body's end read next was taken
        for a stream cut short, and an answer inflating to a little over 1 MiB refused."""
        return bool(self._tail) or (self._full and not self._zlib.eof)

    def inflate(self, data: bytes) -> bytes:
        self._fed = self._fed or bool(data)
        if self._zlib is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            # 47: zlib's framing or gzip's, told apart by the header; -15: a raw deflate stream, which some
            # servers send as deflate (RFC 9110 means the zlib format)
            framed = self._coding != "deflate" or data[0] == 0x1F or _zlib_header(data)
            self._zlib = zlib.decompressobj(47 if framed else -15)
        given = memoryview(self._tail + data)
        taken = 0  # (of given: what zlib has been given and has not handed back)
        out = bytearray()
        while True:  # one member, or a window of one, a turn of the loop; bounded by what is given and _CHUNK
            if self._zlib.eof:
                if taken == len(given):
                    break
                if self._coding == "deflate":
                    raise _Unreadable(f"the answer's {self._coding} body goes on after its compressed stream ends")
                self._zlib = zlib.decompressobj(31)  # (a next member: gzip's framing only)
                self._members += 1
                self._magic = b""
            # A window at a time: zlib copies what it does not take (unused_data at a member's end), and given
            # whole, 100,000 members of 20 bytes in a 2 MB body took 1.8 s in copies of the rest of it (0.3 s so).
            window = given[taken : taken + _WINDOW]
            if len(self._magic) < 2 and self._members > 1:  # (what _broken tells a broken member from other bytes by)
                self._magic += bytes(window[: 2 - len(self._magic)])
            try:
                out += self._zlib.decompress(window, _CHUNK - len(out))
            except zlib.error as exc:
                raise self._broken(exc) from None
            left = self._zlib.unused_data if self._zlib.eof else self._zlib.unconsumed_tail
            taken += len(window) - len(left)
            if len(out) == _CHUNK or (not self._zlib.eof and taken == len(given)):  # (full, or wants more input)
                break
        self._tail = bytes(given[taken:])
        self._full = len(out) == _CHUNK
        return bytes(out)

    def _broken(self, error: zlib.error) -> _Unreadable:
        if self._members == 1:
            return _Unreadable(f"the answer's {self._coding} body is not a {self._coding} stream ({error})")
        if self._magic == b"\x1f\x8b":
            # A member whose header says gzip and whose data or checksum is broken (a proxy's corruption, a
            # member cut and another begun): it was told 'bytes that are not a gzip member', which sent its reader
            # looking for a page or padding appended to the answer.
            return _Unreadable(
                f"the answer's {self._coding} body is broken after gzip member {self._members - 1}: member "
                f"{self._members}, a gzip member by its header, does not inflate ({error})"
            )
        return _Unreadable(
            f"the answer's {self._coding} body goes on after its compressed stream ends (after gzip member "
            f"{self._members - 1}) with bytes that are not a gzip member ({error})"
        )

    def end(self) -> None:
        """The body ended: so must its compressed stream (an empty body is taken as empty)."""
        if self._fed and (self._zlib is None or not self._zlib.eof):
            raise _Unreadable(f"the answer's {self._coding} body ends before its compressed stream does")


def _zlib_header(data: bytes) -> bool:
    """Whether ``data`` opens with a zlib header: the deflate method, and a check making the two bytes a
    multiple of 31."""
    return data[0] & 0x0F == 8 and (data[0] << 8 | data[1]) % 31 == 0


def _despite_interruptions(clean_up: Callable[[], object]) -> None:
    """Run ``clean_up`` (an interrupted call's: it may run again) to its end even where it is interrupted itself
    (Ctrl-C pressed again, an outer gevent Timeout, as the call cleans up): it is run again, up to
    ``_CLEAN_UP_TRIES`` times while the call's slot is not back, then the last interruption is raised. Cut
    short, the slot it gives back was lost for good: with max_connections=1, every later call waited its whole
    timeout and failed. Once the slot is back it is not run again: the connection it gave back may be another
    call's by then (a thread took it from the pool), and urllib3's response, interrupted before it let go of it,
    closed it again under that call (its answer never came, 'the connection failed')."""
    interruption: BaseException | None = None
    for _ in range(_CLEAN_UP_TRIES):
        try:
            clean_up()
        except Exception:
            raise
        except BaseException as exc:  # (KeyboardInterrupt, gevent's Timeout: not an error of the clean-up)
            interruption = exc
            if getattr(_calls, "holding", False):  # (noted by the pool's slots: see _Slots._put)
                continue
        break
    if interruption is not None:
        raise interruption


def _stdlib_lifo_queue() -> Any:
    """The standard library's ``LifoQueue``, also where gevent patched ``queue`` before this module was imported
    (gevent's advice; gunicorn's gevent worker without ``--preload``): the class gevent put there has none of its
    lock and conditions, and :class:`_Slots` built on it failed every call ('the connection pool is closed',
    urllib3's word for the AttributeError of its first wait) and raised from close(). Its locks are made as a
    pool is, so under the patch they are gevent's."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is not None:
        with contextlib.suppress(Exception):  # (another gevent than the one this was written for)
            return monkey.get_original("queue", "LifoQueue")
    return queue.LifoQueue


if TYPE_CHECKING:
    _LifoQueue = queue.LifoQueue
else:
    _LifoQueue = _stdlib_lifo_queue()


class _Slots(_LifoQueue[Any]):
    """urllib3's queue of a pool's connections (``None``: a free slot without one), put in its place, whose
    waiters :meth:`close` ends at once. urllib3's own close takes the idle connections out and gives back none
    that a call in flight returns: a call waiting for one waited its whole timeout, for nothing, after close()
    had ended every call in flight at once."""

    def __init__(self, maxsize: int, pool: Any, closed_error: type[Exception]) -> None:
        super().__init__(maxsize)
        self._pool = pool
        self._closed = False
        while True:  # (the slots urllib3 made: all free, none connected yet)
            try:
                self.put_nowait(pool.pool.get_nowait())
            except queue.Empty:
                break
        pool.pool = self
        self._closed_error = functools.partial(closed_error, pool, "Pool is closed.")

    def close(self) -> None:
        with self.mutex:
            self._closed = True
            self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:  # noqa: FBT001, FBT002 (Queue.get's)
        with self.not_empty:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._qsize():
                if self._closed:  # (urllib3 lets it through: the call fails as with a pool found closed)
                    raise self._closed_error()
                left = None if deadline is None else deadline - time.monotonic()
                if not block or (left is not None and left <= 0):
                    raise queue.Empty
                # In slices: a call that gives a slot back and is interrupted (Ctrl-C, gevent's Timeout) as its
                # not_empty.notify() begins, the slot back already, wakes no one: a waiter slept on to the end of its
                # timeout beside a free slot, and failed. (Woken by a slice's end, it takes the slot.)
                left = _WAKE_S if left is None else min(left, _WAKE_S)
                self.not_empty.wait(left)
            item = self._get()
            self.not_full.notify()
            return item

    def _get(self) -> Any:
        # Noted before the slot is taken, with nothing in between where a signal handler runs (Ctrl-C's
        # KeyboardInterrupt: as a Python function begins, or a call into C returns): noted after, an
        # interruption as it was taken (as not_full.notify() began) left a call holding a slot not noted so,
        # whose free slot urllib3's clean-up gives back was refused (see put), and the slot was lost for good.
        # The same for the connection taken: noted before it leaves the queue (an index and a del, no call). Popped
        # first, an interruption as pop() returned left it noted nowhere: urllib3's clean-up gave a free slot back
        # and the connection was left open to the garbage collector (a ResourceWarning, the server's end held).
        _calls.holding = True  # (this thread's call holds a slot: see HttpClient._give_back_lost)
        _calls.taken = item = self.queue[-1]  # (closed if it comes back as a free slot: see put)
        del self.queue[-1]
        return item

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:  # noqa: FBT001, FBT002
        if getattr(_calls, "watch", None) is not None and not getattr(_calls, "holding", False):
            # A call interrupted (Ctrl-C, gevent's Timeout) as it waited for a slot: urllib3's clean-up gives one
            # back for it, though it took none. Added, the pool held one more than max_connections from then on.
            if item is not None:
                item.close()
            return
        taken, _calls.taken = getattr(_calls, "taken", None), None
        if item is None and taken is not None:  # (its call dropped it, or was interrupted before it had it)
            taken.close()
        super().put(item, block, timeout)

    def _put(self, item: Any) -> None:
        # Noted before the slot is back, with nothing in between where a signal handler runs: noted after, an
        # interruption as the append returned left the call noted as holding a slot it had given back, and
        # request() gave it back again (a full pool's FullPoolError raised in place of the interruption; one
        # slot more than max_connections in a pool with other calls in flight).
        _calls.holding = False  # (a slot given back: the call that gives it holds none now)
        if self._closed or self._pool.pool is None:  # (urllib3's close: its pool let go of first)
            # Given back as close() ran: urllib3 saw its pool open, then its close took the idle connections
            # out and closed them before this one came in. Kept, it stayed open (the server's end held too)
            # until the collector found it, a ResourceWarning.
            if item is not None:
                item.close()
        else:
            self.queue.append(item)  # (LifoQueue._put's, spelled out: a call of it is a point where a handler runs)


def _failed(
    exc: BaseException, exceptions: Any, timeout: Any, timeout_s: float, watch: Watch, connect_timeout_s: float
) -> TransportError:
    """The :class:`TransportError` of urllib3's error ``exc`` (``exceptions``: urllib3's module of them)."""
    if isinstance(exc, _Handshake):  # a connection whose TLS handshake failed: nothing was sent on it
        if watch.end():  # the deadline's shutdown ended it
            return TransportError(f"no connection within {timeout_s:.3g} s", sent=False, timed_out=True)
        if not getattr(exc, "timed_out", False):
            lasting = getattr(exc, "lasting", False)
            return TransportError(f"cannot connect: {getattr(exc, 'detail', exc)}", sent=False, lasting=lasting)
        # CPython bounds a handshake by the socket's timeout: the connect timeout. Run out, it came back from
        # urllib3 as a read timeout, "no answer within" the call's timeout_s (which had not run out) and the
        # caller's DeadlineExceededError, where a server that does not answer a connection attempt is down.
        if timeout.connect_timeout < connect_timeout_s:  # cut short by the time the call had left: its deadline
            return TransportError(f"no connection within {timeout.connect_timeout:.3g} s", sent=False, timed_out=True)
        return TransportError(
            f"cannot connect: no TLS handshake within connect_timeout_s = {connect_timeout_s:.3g} s", sent=False
        )
    if isinstance(exc, exceptions.NewConnectionError):  # before ConnectTimeoutError: it subclasses it
        return TransportError(f"cannot connect: {_reason(exc)}", sent=False)
    if isinstance(exc, exceptions.ConnectTimeoutError):
        if timeout.connect_timeout < connect_timeout_s:  # cut short by the time the call had left: its deadline
            return TransportError(f"no connection within {timeout.connect_timeout:.3g} s", sent=False, timed_out=True)
        # The whole connect_timeout_s with no answer to the connection attempt: the host is down, or its port
        # black-holed (a firewall, a full accept queue), as a refused connection says it is down. Said as a
        # timeout, it was a DeadlineExceededError naming the call's timeout_s, of which it had spent a fraction,
        # and it never counted for the circuit when the caller's deadline was the shorter.
        if isinstance(exc, _ResolveTimeout):  # (a name server that does not answer: the host cannot be reached)
            return TransportError(f"cannot connect: {_reason(exc)} (connect_timeout_s)", sent=False)
        return TransportError(
            f"cannot connect: no answer to the connection attempt within connect_timeout_s = {connect_timeout_s:.3g} s",
            sent=False,
        )
    if isinstance(exc, exceptions.EmptyPoolError):
        return TransportError(f"no free connection within {timeout_s:.3g} s", sent=False, timed_out=True)
    if isinstance(exc, exceptions.ClosedPoolError):
        return TransportError("the connection pool is closed", sent=False)
    if isinstance(exc, exceptions.ReadTimeoutError):
        return TransportError(f"no answer within {timeout_s:.3g} s", sent=True, timed_out=True)
    # reset or closed mid-exchange: it may have run
    if watch.end():  # the watchdog shut the socket: the deadline passed mid-exchange
        return _late(timeout_s)
    return TransportError(f"the connection failed: {_reason(exc)}", sent=True)


def _late(timeout_s: float) -> TransportError:
    return TransportError(f"no whole answer within {timeout_s:.3g} s", sent=True, timed_out=True)


def _watched(connection_class: Any, resolver: _Resolver) -> Any:
    """A subclass of urllib3's connection class that resolves its host within the connect timeout (see
    :class:`_Resolver`) and hands its socket to the calling thread's :class:`Watch`: as soon as it exists
    (before a TLS handshake), once connected and at each request (a kept-alive connection is reused without
    connecting again)."""
    urllib3 = require("urllib3", extra="remote", feature="a remote model (RemoteModel)")
    exceptions = urllib3.exceptions
    tls = issubclass(connection_class, urllib3.connection.HTTPSConnection)
    resolve_timeout = type("ResolveTimeoutError", (exceptions.ConnectTimeoutError, _ResolveTimeout), {})
    handshake_failed = type("TLSHandshakeError", (exceptions.NewConnectionError, _Handshake), {})

    class WatchedConnection(connection_class):  # type: ignore[misc]
        response_class = _FinalResponse
        idle_since: float | None = None  # when its last answer came (None: not used since it connected)
        idle_limit: float | None = None  # from the server's Keep-Alive header (None: not said, _IDLE_S)
        _handshake_handle: socket.socket | None = None  # what the watch shuts while TLS is set up (see _new_conn)

        @property
        def is_connected(self) -> bool:
            # urllib3 asks this of a pooled connection before it hands it out, and closes it when False.
            if self.idle_since is not None:
                limit = _IDLE_S if self.idle_limit is None else self.idle_limit
                if time.monotonic() - self.idle_since > limit:
                    return False  # near the server's keep-alive timeout: see _IDLE_S
            return bool(super().is_connected)

        def connect(self) -> None:
            self.idle_since = None
            try:
                super().connect()
            except OSError as exc:  # (ssl.SSLError, a reset): the TLS handshake failed, so nothing was sent
                if not tls:
                    raise
                _close_abandoned_tls_sockets(exc)
                # Said as a failure to connect (urllib3 lets its own errors through as they are), not as an
                # SSLError: that came out as a connection that failed mid-exchange (sent=True), so a server
                # that dropped a connection at its handshake (restarting, behind a balancer) failed the call
                # where a refused connection is retried.
                detail = f"the TLS handshake failed: {_reason(exc)}"
                code = getattr(exc, "verify_code", None)
                if code in _UNTRUSTED:  # (a private CA's, most often: say what to do)
                    detail += (
                        " (the server's certificate is checked against the system's trusted CAs; the environment "
                        "variable SSL_CERT_FILE names a bundle to trust instead, with the CA that signed it)"
                    )
                elif code in _MISMATCHED:  # (trusted: trusting its CA again, as that advice said, changed nothing)
                    detail += " (the host in the URL must be a name or an address that the certificate names)"
                wrong_protocol = isinstance(exc, ssl.SSLError) and _not_tls(exc)
                if wrong_protocol:  # (its answer to the ClientHello is not TLS: plain HTTP, most often)
                    detail += " (the server does not speak TLS there: is its URL http://?)"
                error = handshake_failed(self, detail)
                error.detail = detail  # (urllib3's message starts with the connection's repr)
                error.timed_out = isinstance(exc, TimeoutError)  # (bounded by connect_timeout_s, see _failed)
                # (the same on every retry: a certificate not trusted, a server that does not speak TLS)
                error.lasting = isinstance(exc, ssl.SSLCertVerificationError) or wrong_protocol
                raise error from None
            finally:
                # The watch moves to the connection's socket before the handshake's duplicate is closed: arm
                # takes the watchdog's lock, so once it returns no shutdown of the duplicate is under way or to
                # come. Closed while the watch still named it, a deadline firing in between shut it down as it
                # was closed (CPython reads a socket's descriptor for shutdown() after letting go of the GIL),
                # which could shut whatever another thread had just been given under that number. A deadline
                # that fired first is not lost: arm shuts the connection's socket at once.
                _arm(self.sock)
                handle, self._handshake_handle = self._handshake_handle, None
                if handle is not None:
                    handle.close()  # (the connection stays open: this was only a second descriptor of it)

        def close(self) -> None:
            # urllib3 closes a connection that failed (urlopen's finally) before the call's watch ends: the watch
            # lets go of the socket first, as in connect's finally, so no deadline's shutdown of it is under way
            # or to come once its descriptor's number is free for another connection.
            _release(self.sock)
            super().close()

        def _new_conn(self) -> Any:
            host: str = self._dns_host  # type: ignore[has-type]
            timeout: Any = self.timeout  # type: ignore[has-type]
            limited = isinstance(timeout, int | float)
            if _is_address(host) or not limited:
                sock = super()._new_conn()
            else:
                started = time.monotonic()
                infos = self._resolved(host, timeout)
                # (the time resolving took comes off the connect's: connect_timeout_s bounds both together)
                self.timeout = max(0.001, timeout - (time.monotonic() - started))
                try:
                    sock = self._connect_any(infos)
                finally:
                    self._dns_host, self.timeout = host, timeout
            if tls:
                # Armed before the TLS handshake, which the connect timeout bounds, not the call's: a connection
                # opened late in a call (after waiting for a slot) had a handshake dripped by its server run past
                # the call's timeout. By a duplicate of the socket: the handshake detaches this one (no file
                # descriptor left to shut down), and a shutdown of either ends the connection of both.
                try:
                    self._handshake_handle = sock.dup()
                except OSError as exc:  # (out of file descriptors: no handshake began; said as a socket not made)
                    sock.close()  # (left to the collector, one more descriptor held meanwhile)
                    raise exceptions.NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
                _arm(self._handshake_handle)
            return sock

        def _resolved(self, host: str, timeout: float) -> list[Any]:
            # The call's watch ends the wait as it would shut a socket (close(), a closing server's shadow call):
            # there is none yet, and close() waited for a stalled lookup's whole connect timeout
            woken = threading.Event()
            _arm(_Wake(woken))
            try:
                return resolver.resolve(host, self.port, timeout_s=timeout, woken=woken)
            except _Ended:  # (its deadline: the caller's timeout, as a connect it cut short; close(): closed)
                raise resolve_timeout(self, f"the call ended while resolving {host!r}") from None
            except TimeoutError:
                raise resolve_timeout(self, f"resolving {host!r} took longer than {timeout:.3g} s") from None
            except socket.gaierror as exc:
                raise exceptions.NameResolutionError(host, self, exc) from None
            except UnicodeError:  # (a label empty or over 63 characters: what urllib3 says of it)
                raise exceptions.LocationParseError(f"'{host}', label empty or too long") from None

        def _connect_any(self, infos: list[Any]) -> Any:
            # Each address the resolver gave, in its order, as urllib3 (create_connection) tries them; the
            # host's name stays for TLS (server_hostname, the certificate's check) once this returns.
            error: BaseException | None = None
            for address in dict.fromkeys(str(info[4][0]) for info in infos):
                self._dns_host = address
                try:
                    return super()._new_conn()
                except exceptions.HTTPError as exc:  # (NewConnectionError, ConnectTimeoutError: the next one)
                    error = exc
            assert error is not None  # (getaddrinfo gives at least one address, or raises)
            raise error

        def request(self, *args: Any, **kwargs: Any) -> None:
            _arm(self.sock)
            super().request(*args, **kwargs)

        def getresponse(self, *args: Any, **kwargs: Any) -> Any:
            sock = self.sock
            response = super().getresponse(*args, **kwargs)
            if self.sock is None and sock is not None and sock.fileno() != -1:
                # http.client closes the connection of an answer marked Connection: close once its headers
                # are read, and close() let the watch go of the socket: the body is read on over the same
                # descriptor (the answer's file keeps it open), so it is watched again. Let go of, a body that
                # stalled outlived the call's deadline by up to the read timeout.
                _arm(sock)
            # From the answer's headers: its body is read at once, so this is at most that read too early,
            # and a connection is only ever closed sooner for it. (urllib3 puts the connection back in the
            # pool as the last byte is read, before the caller could mark it.)
            self.idle_since = time.monotonic()
            self.idle_limit = _idle_limit(response.headers.get("Keep-Alive"))
            _calls.answered_on = self  # (the connection a call interrupted in urllib3 drops: see _give_back_lost)
            return response

    WatchedConnection.__name__ = WatchedConnection.__qualname__ = f"Watched{connection_class.__name__}"
    return WatchedConnection


def _not_tls(error: ssl.SSLError) -> bool:
    """Whether a handshake failed on an answer to its ClientHello that is not TLS: OpenSSL 3.0 says "wrong
    version number"; 3.2 and later "record layer failure", a reason a Python built before them does not
    know (its ``reason`` is ``None``, only its message says it: ``[SSL] record layer failure``)."""
    reason = getattr(error, "reason", None)
    return reason in ("WRONG_VERSION_NUMBER", "RECORD_LAYER_FAILURE") or "record layer failure" in str(error)


_UNTRUSTED = frozenset({2, 18, 19, 20, 21})
"""OpenSSL's verify codes of a certificate whose CA is not trusted (X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT,
DEPTH_ZERO_SELF_SIGNED_CERT, SELF_SIGNED_CERT_IN_CHAIN, UNABLE_TO_GET_ISSUER_CERT_LOCALLY,
UNABLE_TO_VERIFY_LEAF_SIGNATURE): what trusting that CA mends."""
_MISMATCHED = frozenset({62, 64})
"""OpenSSL's verify codes of a certificate that does not name the host (X509_V_ERR_HOSTNAME_MISMATCH,
IP_ADDRESS_MISMATCH)."""


class _ResolveTimeout(Exception):
    """Marks the ``ConnectTimeoutError`` of a name that did not resolve in time (see :func:`_failed`)."""


class _Handshake(Exception):
    """Marks the error of a TLS handshake that failed: the connection never carried the request."""


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


class _Ended(Exception):
    """A wait for a lookup that the call's watch ended (see :class:`_Wake`)."""


class _Wake:
    """Stands for the socket a call waiting on a lookup does not have yet: its watch's shutdown of it (the
    client closed, a closing server's shadow call) ends the wait."""

    __slots__ = ("_event",)

    def __init__(self, event: threading.Event) -> None:
        self._event = event

    def shutdown(self, how: int) -> None:
        self._event.set()


class _Lookup:
    __slots__ = ("done", "error", "infos", "waiters")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.infos: list[Any] = []
        self.error: BaseException | None = None
        self.waiters: list[threading.Event] = []  # (each caller's, set as the lookup ends)


class _Resolver:
    """Name resolution within a timeout, for one client's connections.

    ``getaddrinfo`` takes no timeout, and urllib3 calls it before its connect timeout starts: a resolver that
    stalled (a DNS server that drops queries: the C library waits ``timeout`` x ``attempts`` of resolv.conf per
    name server, 5 s x 2 by default, and longer through a stuck nscd or systemd-resolved) held a call past its
    deadline, with its pool slot, and no watchdog could end it (there is no socket to shut yet). Here the
    lookup runs on a thread of its own, and the connection waits for it only up to its connect timeout (the
    call's deadline where that is shorter). A lookup that stalls is shared by every connection to the same
    host and port while it lasts, so a stalled resolver holds one thread, not one per call; it ends when
    ``getaddrinfo`` returns, and nothing is cached past it (the system's resolver keeps its own cache).

    Thread-safe.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], _Lookup] = {}

    def resolve(self, host: str, port: int, *, timeout_s: float, woken: threading.Event | None = None) -> list[Any]:
        """``getaddrinfo(host, port)`` for a stream socket; ``woken``, set by another thread, ends the wait.

        Raises:
            _Ended: ``woken`` was set first.
            TimeoutError: no answer within ``timeout_s`` (the lookup goes on, for the next caller).
            socket.gaierror: the name does not resolve.
            UnicodeError: the name cannot be encoded (IDNA: a label empty or too long).
        """
        key = (host, port)
        with self._lock:
            lookup = self._pending.get(key)
            if lookup is None:
                lookup = self._pending[key] = _Lookup()
                threading.Thread(
                    target=self._look_up, args=(key, lookup), name=f"inprocserve-resolve-{host}", daemon=True
                ).start()
            event = threading.Event() if woken is None else woken
            lookup.waiters.append(event)
        if not event.wait(timeout_s):
            raise TimeoutError(f"resolving {host!r} took longer than {timeout_s:.3g} s")
        if not lookup.done.is_set():
            raise _Ended(f"the wait for {host!r} was ended")
        error = lookup.error
        if error is not None:  # (a copy: the lookup's error may be raised on several threads at once)
            raise type(error)(*error.args)
        return lookup.infos

    def _look_up(self, key: tuple[str, int], lookup: _Lookup) -> None:
        try:
            # (the family urllib3 itself asks for: IPv4 only where the host has no IPv6)
            connection = require("urllib3", extra="remote", feature="a remote model (RemoteModel)").util.connection
            lookup.infos = socket.getaddrinfo(*key, connection.allowed_gai_family(), socket.SOCK_STREAM)
        except (OSError, UnicodeError) as exc:  # (UnicodeError: the IDNA encoding of a name such as 'a..b')
            lookup.error = exc
        finally:
            with self._lock:
                if self._pending.get(key) is lookup:
                    del self._pending[key]
                waiters, lookup.waiters = lookup.waiters, []
            lookup.done.set()
            for waiter in waiters:
                waiter.set()


def _idle_limit(keep_alive: str | None) -> float | None:
    """How long a connection may be left idle and used again, by the timeout a server's ``Keep-Alive``
    header announces (``timeout=5``, in seconds): a second less, or half of it where that is longer (a
    timeout under 2 s). ``None`` when it announces none (gunicorn and uvicorn do not): :data:`_IDLE_S` then.
    Without it, calls one or two seconds apart to a server that keeps connections 5 s or more (Node, nginx,
    Apache) each opened a new connection: 4 ms more a call on loopback over ``https://``, a TLS handshake of
    one or two round trips more across a network."""
    if not keep_alive:
        return None
    for part in keep_alive.split(","):
        name, _, value = part.partition("=")
        if name.strip().lower() == "timeout":
            try:
                timeout = float(value.strip().strip('"'))
            except ValueError:
                return None
            if not 0 < timeout < float("inf"):
                return None
            return max(timeout - 1.0, timeout / 2)
    return None


class _FinalResponse(http.client.HTTPResponse):
    """An HTTP response that reads past interim (1xx) responses to the final one, as RFC 9110 (15.2) asks of
    every HTTP/1.1 client.

    ``http.client`` skips only ``100 Continue``: any other 1xx (``103 Early Hints``, sent by some proxies and
    gateways) came back as the answer, with no body and the connection still fit for reuse, while the real
    answer was still to come on it; the next call that took the connection read that answer as its own, so
    its callers got another batch's rows. ``101 Switching Protocols`` (never asked for here) is returned as
    it is, and :meth:`HttpClient._read` drops its connection.
    """

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()  # type: ignore[misc]
            if not 102 <= status < 200:
                return version, status, reason
            http.client.parse_headers(self.fp)  # the interim response's headers, skipped; its body is empty


def _arm(sock: Any) -> None:
    watch: Watch | None = getattr(_calls, "watch", None)
    if watch is not None:
        watch.arm(sock)


def _release(sock: Any) -> None:
    watch: Watch | None = getattr(_calls, "watch", None)
    if watch is not None:
        watch.release(sock)


def _close_abandoned_tls_sockets(exc: BaseException) -> None:
    """Close the ``ssl.SSLSocket`` a failed TLS wrap left open. CPython's ``SSLSocket._create`` takes over the
    socket's descriptor, then, when the connection was reset before the handshake (its ``getpeername`` finds it
    not connected, and the ``recv`` it tries then is reset), raises without closing it: only the exception's
    traceback held it, and the socket stayed open until the collector found it (a ``ResourceWarning``, and a
    descriptor held meanwhile, on a server whose balancer reset connections)."""
    traceback = exc.__traceback__
    while traceback is not None:
        candidate = traceback.tb_frame.f_locals.get("self")
        if isinstance(candidate, ssl.SSLSocket) and candidate.fileno() != -1:
            with contextlib.suppress(OSError):
                candidate.close()
        traceback = traceback.tb_next


def _reason(error: BaseException) -> str:
    # urllib3 wraps the OSError; its own message repeats the connection object's repr, which says nothing.
    inner: BaseException = error
    while inner.__context__ is not None and not isinstance(inner, OSError | ConnectionError):
        inner = inner.__context__
    if isinstance(inner, OSError) and inner.strerror:
        return inner.strerror
    return str(error.args[-1] if error.args else error)[:200]
