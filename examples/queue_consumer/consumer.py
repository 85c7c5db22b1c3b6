"""Score messages from a Redis stream in batches, with a consumer group; acknowledge only after the result
is written, so a consumer that dies mid-batch loses nothing.

One message = one row to score: ``XADD scoring:requests * features '[0.1, 0.2, ...]'``. Each consumer
process embeds an ``inprocserve.Server`` and loops:

1. take over messages another consumer read but did not acknowledge for ``claim_idle_ms`` (``XAUTOCLAIM``:
   that consumer died or hangs), else read up to ``batch_size`` new ones (``XREADGROUP ... COUNT n``);
2. score the whole batch with one ``server.predict`` call (a batch read a second time, which may be what
   killed its previous reader, is scored one message at a time instead, so a poison message fails alone);
3. write one result per message (``XADD scoring:results``, carrying the request's message id);
4. ``XACK`` the batch, only now.

A kill between 1 and 4 leaves the batch in the group's pending list; another consumer claims it after
``claim_idle_ms`` and scores it again. A message is therefore scored at least once: a kill between 3 and 4
writes its result twice (the second one marked ``delivery=claimed``), and so does a connection lost while
Redis takes the writes of step 3 (Redis may have applied them: they are sent again, marked alike). Make the
result write idempotent (keyed by the request id) where duplicates matter.

Two kinds of failure, handled differently:

* a failure the *message* causes (not JSON, not a flat list of finite numbers, too large, the wrong number
  of features, a model error when it is scored alone) gets an ``error`` result at once, and a copy of the
  message (its original fields) in the dead-letter stream ``scoring:dead`` to replay after a fix;
* a failure that affects *every* message (the model not loaded, the server overloaded or past its
  deadline, a remote model server down) is never blamed on the messages: the consumer keeps its batch,
  backs off and retries it, keeping the batch claimed so that no other consumer takes it over, and exits
  with status 3 after ``max_outage_s`` so that a supervisor restarts it and the outage is noticed.

A message delivered more than ``max_deliveries`` times (its readers died, again and again) is given up: an
``error`` result and a dead-letter copy, so that it cannot block the queue.

Consumer names must be unique among the live consumers of the group: a consumer first re-reads the
messages its name still holds, so two live consumers sharing a name would score the same messages twice.
The default, ``<hostname>-<pid>``, is unique per container (the pid alone is 1 in every container); set
``--name`` to a stable per-slot name (a StatefulSet pod name, ``worker-1``) so that a restarted worker
finishes what it held. At start-up a consumer refuses a name that a live consumer uses (exit status 2;
``check_name_free``); the restart of a consumer that died waits until its previous life has been silent for
``claim_idle_ms`` (at least 0.5 s; ``--takeover-name`` skips the check). Redis failing at start-up is
retried with back-off, as it is while running, and ends the process with status 3 after ``max_outage_s``.

Run ``python consumer.py --help``; ``run.py`` beside this file shows the whole thing with a killed worker.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis

import inprocserve

__all__ = [
    "DEAD",
    "ENCODING_ERRORS",
    "GROUP",
    "REQUESTS",
    "RESULTS",
    "Consumer",
    "ConsumerConfig",
    "NameInUseError",
    "OutageError",
    "check_name_free",
    "connect",
    "ensure_group",
    "prepare",
    "produce",
    "read_results",
]

logger = logging.getLogger("queue_consumer")

REQUESTS = "scoring:requests"
RESULTS = "scoring:results"
DEAD = "scoring:dead"
"""Messages given up, with their original fields (plus ``request``, ``error``): fix the cause, then XADD
them back to ``scoring:requests``."""
GROUP = "scorers"
BLOCK_MS = 200
"""How long one XREADGROUP of an idle consumer waits for new messages (``ConsumerConfig.block_ms``)."""
MIN_CLAIM_IDLE_MS = 100
"""The shortest ``claim_idle_ms``: a batch is read, scored, written and acknowledged in several Redis round
trips, and a GC pause or a slow Redis call alone can take this long; below it, consumers would take over
live consumers' batches and score them twice."""
MAX_FEATURES_BYTES = 64 * 1024
"""The largest ``features`` field decoded: far above any real row, far below what can hurt the parser."""

Batch = list[tuple[str, Mapping[str, str]]]
Scored = tuple[dict[str, dict[str, str]], dict[str, Mapping[str, str]]]
"""One result (fields to write) per message id, in batch order; and the messages refused or given up, with
their original fields, for the dead-letter stream."""


class OutageError(RuntimeError):
    """Scoring failed for every message for longer than ``max_outage_s``, or Redis did, at start-up (nothing
    was read) or while running (the batch in hand is left pending)."""


class NameInUseError(RuntimeError):
    """A live consumer of the group already uses this consumer's name."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerConfig:
    name: str
    """This consumer's name in the group: unique among live consumers, stable across restarts of a slot."""
    model: str
    batch_size: int = 32
    """Most messages per XREADGROUP, scored by one predict call."""
    block_ms: int = BLOCK_MS
    """How long one XREADGROUP waits for new messages; also how often a stop request is noticed."""
    claim_idle_ms: int = 5000
    """Take over messages that another consumer has held unacknowledged this long. It must exceed the
    slowest batch (scoring plus writing), or a live consumer's batch is taken over and scored twice; at
    least ``MIN_CLAIM_IDLE_MS``."""
    max_deliveries: int = 5
    """Give up on a message delivered this many times (an ``error`` result, then acknowledged)."""
    retry_initial_s: float = 0.5
    """First wait after a failure that affects every message; doubled after each further failure."""
    retry_max_s: float = 30.0
    """Longest wait between two attempts at a batch that failed for every message."""
    max_outage_s: float = 300.0
    """Give up retrying (``OutageError``: exit status 3) after failing this long; the batch stays pending."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.block_ms < 1 or self.max_deliveries < 1:
            raise ValueError("batch_size, block_ms and max_deliveries must be >= 1")
        if self.claim_idle_ms < MIN_CLAIM_IDLE_MS:
            raise ValueError(
                f"claim_idle_ms must be >= {MIN_CLAIM_IDLE_MS} and more than the slowest batch takes (reading, "
                f"scoring, writing and acknowledging it), or live consumers' batches are taken over and scored "
                f"twice; got {self.claim_idle_ms}"
            )
        if not 0 < self.retry_initial_s <= self.retry_max_s or self.max_outage_s <= 0:
            raise ValueError("need 0 < retry_initial_s <= retry_max_s and max_outage_s > 0")


def ensure_group(client: redis.Redis, *, stream: str = REQUESTS, group: str = GROUP) -> None:
    """Create the consumer group (and the stream) if missing; it starts at the stream's first message."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def prepare(
    client: redis.Redis, config: ConsumerConfig, *, check_name: bool = True, stop: threading.Event | None = None
) -> bool:
    """What a consumer does before it reads: create the group (``ensure_group``) and check that no live
    consumer uses ``config.name`` (``check_name_free``; skipped when ``check_name`` is false). Return False if
    ``stop`` was set meanwhile (read nothing then), True otherwise.

    Redis failing (unreachable, loading its data, timing out) is retried with back-off, from
    ``retry_initial_s`` doubling to ``retry_max_s``, and the name check starts over; after such a failure it
    watches a holder for at least 1.5 s (``_after_outage_ms``): the outage silenced every consumer, a live
    one too, which reads again within about a second of Redis answering (``Consumer.run``).

    Raises:
        NameInUseError: a live consumer uses the name.
        OutageError: Redis kept failing for ``max_outage_s``.
    """
    stop = stop if stop is not None else threading.Event()
    failing_since: float | None = None  # when the first failed attempt began: never reset during start-up
    wait_s, min_watch_ms = config.retry_initial_s, 0
    while not stop.is_set():
        attempt = time.monotonic()
        try:
            ensure_group(client)
            if time.monotonic() - attempt > _SLOW_REPLY_S:  # the client's own retries hid an outage
                min_watch_ms = max(min_watch_ms, _after_outage_ms(config.block_ms))
            if check_name:
                check_name_free(
                    client, config.name, claim_idle_ms=config.claim_idle_ms, block_ms=config.block_ms,
                    min_watch_ms=min_watch_ms, stop=stop,
                )  # fmt: skip
            return not stop.is_set()
        except redis.AuthenticationError:  # (a ConnectionError to redis-py) a wrong password: not an outage
            raise
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            now = time.monotonic()
            failing_since = attempt if failing_since is None else failing_since
            if now - failing_since >= config.max_outage_s:
                raise OutageError(
                    f"Redis failed for {now - failing_since:.1f} s at start-up, last: {type(exc).__name__}: {exc}; "
                    "nothing was read"
                ) from exc
            logger.warning(
                "%s: Redis failed at start-up (%s: %s); retrying in %.1f s",
                config.name, type(exc).__name__, exc, wait_s,
            )  # fmt: skip
            min_watch_ms = _after_outage_ms(config.block_ms)
            if stop.wait(wait_s):
                break
            wait_s = min(wait_s * 2, config.retry_max_s)
    return False


def check_name_free(
    client: redis.Redis,
    name: str,
    *,
    claim_idle_ms: int,
    block_ms: int = BLOCK_MS,
    min_watch_ms: int = 0,
    stream: str = REQUESTS,
    group: str = GROUP,
    poll_s: float = 0.05,
    stop: threading.Event | None = None,
) -> None:
    """Return once no live consumer of the group is named ``name``; raise ``NameInUseError`` if one is.

    Redis keeps each consumer's ``idle`` time (XINFO CONSUMERS), which its reads and claims reset. A live
    ``Consumer`` resets it once per poll while the queue is idle (every ``block_ms``: see ``_next_batch``),
    after every batch, and every ``claim_idle_ms / 2`` while it backs off; a batch takes less than
    ``claim_idle_ms`` (``ConsumerConfig``). So a live consumer is never silent for ``max(claim_idle_ms, 2 *
    block_ms + 100 ms)`` (``_live_silence_ms``: a batch, or a poll and a stall as long again), whatever
    ``claim_idle_ms`` is. A consumer of that name that is missing, or has been silent that long, is gone
    (peers take over its messages by then anyway); one silent for less is watched until it resets its idle
    time (it is live: refused) or stays silent that long (it died, e.g. SIGKILLed, and this is its restart:
    return). ``min_watch_ms`` makes the watch last at least that long however long the holder has been
    silent (``prepare`` sets it after a Redis outage, which silenced every consumer). A live consumer is
    refused within about ``block_ms`` when the queue is idle, after its batch when it is busy; a restart
    waits until its previous life has been silent for that bound. Returns at once when ``stop`` is set.

    Raises:
        NameInUseError: a consumer named ``name`` read or claimed while this one watched.
        redis.RedisError: Redis failed (``prepare`` retries a connection failure or a timeout).
    """
    asked = time.monotonic()
    observed = _idle_of(client, name, stream, group)
    if observed is None:
        return
    if time.monotonic() - asked > _SLOW_REPLY_S:  # the client's own retries hid an outage: watch as after one
        min_watch_ms = max(min_watch_ms, _after_outage_ms(block_ms))
    now_ms, first_idle_ms = observed
    wait_ms = max(_live_silence_ms(claim_idle_ms, block_ms) - first_idle_ms, min_watch_ms)
    if wait_ms <= 0:
        return
    last_seen_ms = now_ms - first_idle_ms  # on Redis's clock: its TIME, read with the idle time
    logger.info(
        "%s: a consumer with this name read %d ms ago; watching it for up to %.1f s before starting (a live "
        "one reads again meanwhile; --takeover-name skips this)", name, first_idle_ms, wait_ms / 1000,
    )  # fmt: skip
    deadline = time.monotonic() + wait_ms / 1000
    stop = stop if stop is not None else threading.Event()
    while not stop.wait(min(poll_s, max(0.0, deadline - time.monotonic()))):
        asked = time.monotonic()
        observed = _idle_of(client, name, stream, group)
        if observed is None:  # deleted meanwhile (XGROUP DELCONSUMER)
            return
        if time.monotonic() - asked > _SLOW_REPLY_S:  # an outage the client's retries hid silenced everyone
            deadline = max(deadline, time.monotonic() + _after_outage_ms(block_ms) / 1000)
        now_ms, idle_ms = observed
        if now_ms - idle_ms > last_seen_ms + _SEEN_TOLERANCE_MS:
            raise NameInUseError(
                f"consumer name {name!r} is in use: a live consumer of group {group!r} on {stream!r} with that "
                f"name read or claimed {idle_ms} ms ago (and {first_idle_ms} ms before this one began watching "
                "it). Names must be unique among live consumers (two would score the same messages twice): "
                "pick another --name, or stop the other consumer first; if you know that it is gone, start "
                "with --takeover-name"
            )
        if time.monotonic() >= deadline:
            return


_HEARTBEAT_MARGIN_MS = 100
_SLOW_REPLY_S = 1.0
_SOCKET_TIMEOUT_S = 5.0  # above any BLOCK of a read (block_ms), so a blocking read never times out
"""A reply from Redis slower than this during the start-up check means an outage that the client's own
retries hid (redis-py retries a failed command by default): it silenced every consumer, a live one too."""
_REDIS_RETRY_S = 1.0
"""How long ``Consumer.run`` waits after a Redis failure before it reads again."""


def _live_silence_ms(claim_idle_ms: int, block_ms: int) -> int:
    """The longest a live consumer goes without resetting its idle time: one batch (under ``claim_idle_ms``),
    or one poll of an idle queue (``block_ms``) plus a stall as long again and a margin."""
    return max(claim_idle_ms, 2 * block_ms + _HEARTBEAT_MARGIN_MS)


def _after_outage_ms(block_ms: int) -> int:
    """How soon a live consumer reads again once Redis answers after an outage: its wait after a failure
    (``_REDIS_RETRY_S``), then as ``_live_silence_ms``."""
    return int(_REDIS_RETRY_S * 1000) + 2 * block_ms + _HEARTBEAT_MARGIN_MS


_SEEN_TOLERANCE_MS = 5
"""How far two readings of one silent consumer's last-seen time may differ (Redis rounds idle times to ms)."""


def _idle_of(client: redis.Redis, name: str, stream: str, group: str) -> tuple[float, int] | None:
    """Redis's clock (ms) and the idle time (ms) of consumer ``name``, read in one transaction; None when the
    stream, the group or the consumer does not exist."""
    pipe = client.pipeline(transaction=True)
    pipe.time()
    pipe.xinfo_consumers(stream, group)
    try:
        (seconds, microseconds), consumers = pipe.execute()
    except redis.ResponseError as exc:
        if "NOGROUP" in str(exc) or "no such key" in str(exc):  # not created yet: nobody holds the name
            return None
        raise
    for consumer in consumers:
        if consumer["name"] == name:
            return seconds * 1000 + microseconds / 1000, int(consumer["idle"])
    return None


def produce(client: redis.Redis, rows: np.ndarray, *, stream: str = REQUESTS) -> list[str]:
    """Add one message per row; return their ids in order."""
    pipe = client.pipeline(transaction=False)
    for row in rows:
        pipe.xadd(stream, {"features": json.dumps(row.tolist())})
    return [str(message_id) for message_id in pipe.execute()]


def read_results(client: redis.Redis, *, stream: str = RESULTS) -> list[dict[str, str]]:
    """Every result written so far, oldest first (each a dict of the fields the consumer wrote)."""
    results, last = [], "-"
    while True:
        chunk = client.xrange(stream, min=last, max="+", count=1000)
        if last != "-":
            chunk = chunk[1:]  # xrange's min is inclusive: the first entry was the last of the previous chunk
        if not chunk:
            return results
        results.extend(fields for _, fields in chunk)
        last = chunk[-1][0]


class _BadMessage(Exception):
    """The message itself cannot be scored: it gets an error result, however often it is retried."""


def decode(fields: Mapping[str, str]) -> np.ndarray:
    """The message's row of features; ``_BadMessage`` for anything else, whatever the parser raised."""
    raw = fields.get("features")
    if raw is None:
        raise _BadMessage("no 'features' field")
    if len(raw) > MAX_FEATURES_BYTES:
        raise _BadMessage(f"'features' is {len(raw)} bytes, more than {MAX_FEATURES_BYTES}")
    try:  # Exception, not a list: deeply nested JSON raises RecursionError, odd values OverflowError ...
        row = np.asarray(json.loads(raw), dtype=np.float32)
    except Exception as exc:
        raise _BadMessage(f"'features' is not a JSON list of numbers: {type(exc).__name__}: {exc}") from None
    if row.ndim != 1:
        raise _BadMessage(f"'features' must be a flat list of numbers, got shape {row.shape}")
    if not np.isfinite(row).all():  # NaN scores nothing useful, and 1e999 is inf once parsed
        raise _BadMessage("'features' holds NaN or infinite values")
    return row


def _caused_by_message(exc: inprocserve.InprocserveError) -> bool:
    """Input and model errors are the rows' doing; a remote server down, overload, deadlines, a model not
    loaded are not, and must not cost the messages a delivery."""
    return isinstance(exc, inprocserve.InferenceError) and not isinstance(exc, inprocserve.RemoteUnavailableError)


ENCODING_ERRORS = "surrogateescape"
"""How ``Consumer``'s client decodes bytes that are not UTF-8. With ``"strict"`` (redis-py's default), one such
message makes every read of it raise ``UnicodeDecodeError`` before its batch can be scored: the consumer
crashes, and so does every consumer that takes the batch over, forever."""


def connect(url: str, **options: object) -> redis.Redis:
    """A client for ``Consumer``: replies decoded to ``str``, and bytes that are not UTF-8 (a producer in
    another language, a binary payload) kept as lone surrogates instead of failing the whole read; they are
    encoded back to the same bytes when written, so a dead-letter copy is the original message."""
    return redis.Redis.from_url(url, decode_responses=True, encoding_errors=ENCODING_ERRORS, **options)


class Consumer:
    """One member of the consumer group, scoring with ``server``.

    Not thread-safe: one thread calls ``step()`` or ``run()``. The server is the caller's, and stays open.
    ``client`` decodes replies with ``encoding_errors=ENCODING_ERRORS`` (make it with ``connect``; a client
    that does not is refused with ``ValueError``). ``stop``, when set, interrupts the waits between retries
    (``run()`` sets it to its own).
    """

    def __init__(
        self,
        client: redis.Redis,
        server: inprocserve.Server,
        config: ConsumerConfig,
        stop: threading.Event | None = None,
    ) -> None:
        encoder = client.get_encoder()
        if not encoder.decode_responses or encoder.encoding_errors != ENCODING_ERRORS:
            raise ValueError(
                f"the Redis client must decode replies with encoding_errors={ENCODING_ERRORS!r} (use connect()): "
                "otherwise one message that is not UTF-8 stops every consumer that reads it"
            )
        self.client = client
        self.server = server
        self.config = config
        self.stop = stop if stop is not None else threading.Event()
        self.scored = 0
        self._claim_cursor = "0-0"
        self._own_pending_done = False
        self._in_hand: Scored | None = None
        """A batch scored whose results are not written or not acknowledged yet (Redis failed meanwhile): the
        next step writes them, rather than read the batch again, which Redis counts as another delivery."""
        self._unwritten: list[tuple[str, Mapping[str, str]]] | None = None
        """The writes of the batch in hand (stream, fields) that Redis has not taken yet; None until tried."""

    def step(self) -> int:
        """Handle one batch; return how many messages it acknowledged (0 when the queue was idle, or when
        ``stop`` was set while the batch waited to be retried: it stays pending).

        Raises:
            OutageError: every attempt failed for ``max_outage_s`` (see the module's docstring).
        """
        if self._in_hand is None:
            batch, delivery = self._next_batch()
            if not batch:
                return 0
            self._in_hand = self._score_with_retries(batch, delivery)
            if self._in_hand is None:
                return 0
        results, dead = self._in_hand
        if self._unwritten is None:
            self._unwritten = []
            for message_id, fields in results.items():
                self._unwritten.append((RESULTS, fields))
                if message_id in dead:  # replayable: the original fields, and why it was refused
                    self._unwritten.append(
                        (DEAD, {**dead[message_id], "request": message_id, "error": fields["error"]})
                    )
        if self._unwritten:
            # Not a transaction: Redis applies each write it can. Those it refused (out of memory, a key of
            # the wrong type) are tried again at the next step, alone, so no result or dead letter is written
            # twice while Redis refuses the others.
            pipe = self.client.pipeline(transaction=False)
            for stream, fields in self._unwritten:
                pipe.xadd(stream, dict(fields))
            replies = pipe.execute(raise_on_error=False)
            refused = [
                (write, reply)
                for write, reply in zip(self._unwritten, replies, strict=True)
                if isinstance(reply, Exception)
            ]
            self._unwritten = [write for write, _ in refused]
            if refused:
                raise refused[0][1]
        self.client.xack(REQUESTS, GROUP, *results)  # the results are written: only now acknowledged
        self._in_hand, self._unwritten = None, None
        self.scored += len(results)
        # the next step opens by reading this consumer's own (now empty) pending list: that read resets its
        # idle time in XINFO CONSUMERS, which check_name_free watches (an empty XAUTOCLAIM or XREADGROUP >
        # does not, before Redis 7.2), so a busy consumer is seen after every batch
        self._own_pending_done = False
        return len(results)

    def run(self, stop: threading.Event | None = None) -> None:
        """Call ``step()`` until ``stop`` is set; the batch in hand when it is set is finished first.

        A Redis failure is logged and retried after a second; the batch in hand stays pending. A batch
        already scored is kept claimed meanwhile, and its results written once Redis takes them, each write
        once (reading it again would count as one more delivery each time: a long refusal to write, such as
        Redis out of memory, would give good messages up); any other is read again (first thing, by this
        consumer). A group that vanished (Redis restarted without persistence, FLUSHALL) is created again.

        Raises:
            OutageError: scoring failed for every message, or Redis failed at every step, for
                ``max_outage_s`` (what is in hand stays pending, for the restarted consumer or another).
        """
        if stop is not None:
            self.stop = stop
        failing_since: float | None = None
        while not self.stop.is_set():
            try:
                self.step()
            except redis.RedisError as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                if now - failing_since >= self.config.max_outage_s:  # (what is in hand stays pending)
                    raise OutageError(
                        f"{self.config.name}: Redis failed for {now - failing_since:.0f} s (max_outage_s): {exc}"
                    ) from exc
                if self._in_hand is None:
                    self._restart_reading()
                if isinstance(exc, redis.ResponseError) and _group_lost(exc):
                    logger.warning(
                        "%s: the stream or group is gone (Redis lost its data?): creating it", self.config.name
                    )
                    try:
                        ensure_group(self.client)
                        continue
                    except redis.RedisError:  # (not allowed, or Redis down: the next step says so, after a wait)
                        pass
                else:
                    logger.warning("%s: Redis failed, retrying in %g s: %s", self.config.name, _REDIS_RETRY_S, exc)
                self._hold_in_hand(_REDIS_RETRY_S)
            else:
                failing_since = None

    def _hold_in_hand(self, seconds: float) -> None:
        """Wait ``seconds`` (or until ``stop``), keeping the scored batch in hand claimed while Redis lets it."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self._in_hand is not None:
                with contextlib.suppress(redis.RedisError):  # Redis down: the next step says so
                    self.client.xclaim(REQUESTS, GROUP, self.config.name, 0, list(self._in_hand[0]), justid=True)
            if self.stop.wait(min(left, self.config.claim_idle_ms / 2000)):
                return

    def _restart_reading(self) -> None:
        self._own_pending_done = False  # re-read what this consumer holds before anything new
        self._claim_cursor = "0-0"

    # -- reading -----------------------------------------------------------------------------------------

    def _next_batch(self) -> tuple[Batch, str]:
        config = self.config
        if not self._own_pending_done:  # a restarted worker first finishes what its previous life held
            reply = self.client.xreadgroup(GROUP, config.name, {REQUESTS: "0"}, count=config.batch_size)
            messages = [(i, f) for i, f in reply[0][1] if f] if reply else []
            if messages:
                return messages, "own-pending"
            self._own_pending_done = True
        self._claim_cursor, claimed, deleted = self.client.xautoclaim(
            REQUESTS, GROUP, config.name, min_idle_time=config.claim_idle_ms,
            start_id=self._claim_cursor, count=config.batch_size,
        )  # fmt: skip
        if deleted:  # trimmed from the stream while pending: nothing left to score
            self.client.xack(REQUESTS, GROUP, *deleted)
        if claimed:
            logger.info("%s took over %d message(s) from a consumer that stopped", config.name, len(claimed))
            return claimed, "claimed"
        reply = self.client.xreadgroup(
            GROUP, config.name, {REQUESTS: ">"}, count=config.batch_size, block=config.block_ms
        )
        if not reply:
            # Idle: re-read this consumer's own pending list first next time. It is empty by now, but reading
            # it resets this consumer's idle time in XINFO CONSUMERS, which check_name_free watches; before
            # Redis 7.2 a poll that reads nothing does not.
            self._own_pending_done = False
        return (reply[0][1] if reply else []), "new"

    def _deliveries(self, ids: Sequence[str]) -> dict[str, int]:
        ordered = sorted(ids, key=_id_key)  # ids compare as (milliseconds, sequence), not as text
        entries = self.client.xpending_range(
            REQUESTS, GROUP, min=ordered[0], max=ordered[-1], count=10_000, consumername=self.config.name
        )
        return {str(entry["message_id"]): int(entry["times_delivered"]) for entry in entries}

    def _keep_claimed(self, batch: Batch) -> None:
        """Reset the batch's idle time, so that no other consumer takes it over while this one waits to
        retry it. JUSTID: unlike a normal claim, this does not count as a delivery."""
        self.client.xclaim(REQUESTS, GROUP, self.config.name, 0, [i for i, _ in batch], justid=True)

    # -- scoring -----------------------------------------------------------------------------------------

    def _score_with_retries(self, batch: Batch, delivery: str) -> Scored | None:
        """Score the batch, retrying a failure that affects every message with exponential backoff; None
        if ``stop`` was set meanwhile (the batch stays pending, and is read again by this name)."""
        config = self.config
        started, wait_s = time.monotonic(), config.retry_initial_s
        while True:
            try:
                return self._score(batch, delivery)
            except inprocserve.InprocserveError as exc:
                failing_s = time.monotonic() - started
                if failing_s >= config.max_outage_s:
                    raise OutageError(
                        f"scoring failed for every message for {failing_s:.0f} s, last: {type(exc).__name__}: "
                        f"{exc}; {len(batch)} message(s) left pending"
                    ) from exc
                logger.warning(
                    "%s: scoring failed for the whole batch (%s: %s); keeping its %d message(s), retry in %.1f s",
                    config.name, type(exc).__name__, exc, len(batch), wait_s,
                )  # fmt: skip
            if self._wait(batch, wait_s):
                self._restart_reading()  # stopped: the next start (or a peer) reads the batch again
                return None
            wait_s = min(wait_s * 2, config.retry_max_s)

    def _wait(self, batch: Batch, seconds: float) -> bool:
        """Wait ``seconds`` holding ``batch``; True if ``stop`` was set meanwhile."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._keep_claimed(batch)
            if self.stop.wait(min(left, self.config.claim_idle_ms / 2000)):
                return True
        self._keep_claimed(batch)
        return self.stop.is_set()

    def _score(self, batch: Batch, delivery: str) -> Scored:
        """Score the batch (see ``Scored``).

        Raises:
            InprocserveError: a failure that is not the messages' doing (see ``_caused_by_message``).
        """
        results: dict[str, dict[str, str]] = {}
        dead: dict[str, Mapping[str, str]] = {}
        rows: dict[str, np.ndarray] = {}
        deliveries = self._deliveries([i for i, _ in batch]) if delivery != "new" else {}
        for message_id, fields in batch:
            results[message_id] = {"request": message_id, "consumer": self.config.name, "delivery": delivery}
            if deliveries.get(message_id, 1) > self.config.max_deliveries:
                results[message_id]["error"] = f"gave up after {deliveries[message_id]} deliveries"
                dead[message_id] = fields
                continue
            try:
                rows[message_id] = decode(fields)
            except _BadMessage as exc:
                results[message_id]["error"] = f"bad message: {exc}"
                dead[message_id] = fields
        if delivery == "new":  # one predict call for the batch
            self._predict(rows, results)
        else:  # read before, maybe by a consumer this batch killed: one message at a time
            for message_id, row in rows.items():
                self._predict({message_id: row}, results)
        originals = dict(batch)
        for message_id, result in results.items():  # refused by the model: dead-lettered too
            if "error" in result and message_id not in dead:
                dead[message_id] = originals[message_id]
        return results, dead

    def _predict(self, rows: dict[str, np.ndarray], results: dict[str, dict[str, str]]) -> None:
        if not rows:
            return
        try:
            if len({row.shape for row in rows.values()}) != 1:
                raise inprocserve.InvalidInputError("the batch mixes feature counts")
            prediction = self.server.predict(self.config.model, np.stack(list(rows.values())))
        except inprocserve.InprocserveError as exc:
            if not _caused_by_message(exc):
                raise  # every message would fail alike: the caller retries the batch, blaming none
            if len(rows) == 1:
                results[next(iter(rows))]["error"] = str(exc)
                return
            for message_id, row in rows.items():  # a bad message: score each alone, so only it fails
                self._predict({message_id: row}, results)
            return
        for index, message_id in enumerate(rows):
            outputs = {name: prediction[name][index].tolist() for name in prediction}
            try:  # strict JSON: NaN is not JSON, and readers of the results would choke on it
                score = json.dumps(outputs, allow_nan=False)
            except ValueError:
                results[message_id]["error"] = "the model returned a non-finite score"
                continue
            results[message_id].update(score=score, version=str(prediction.version))


def _group_lost(exc: redis.ResponseError) -> bool:
    """NOGROUP: the group is gone; UNBLOCKED: the stream was deleted under a blocked XREADGROUP."""
    return str(exc).startswith(("NOGROUP", "UNBLOCKED"))


def _id_key(message_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = message_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def default_name() -> str:
    """``<hostname>-<pid>``: the pid alone is 1 in every container, and two live consumers with one name
    would score the same messages twice (each first re-reads what the name holds)."""
    return f"{socket.gethostname()}-{os.getpid()}"


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status: 0 stopped by SIGTERM/SIGINT; 2 bad arguments, the model is not served, a live consumer
    uses ``--name``, or Redis refused the consumer at start-up (a wrong password, ACLs); 3 scoring failed for
    every message, or Redis did, for ``--max-outage-s`` (restart it; nothing was acknowledged)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--redis-url", default=os.environ.get("REDIS_URL"),
        help="e.g. redis://127.0.0.1:6379/0; default: $REDIS_URL (keeps a password out of ps)",
    )  # fmt: skip
    parser.add_argument("--repository", required=True, help="the model repository folder")
    parser.add_argument("--model", required=True, help="the model that scores the messages")
    parser.add_argument(
        "--name", default=default_name(),
        help="this consumer's name in the group, unique among live consumers (default: <hostname>-<pid>)",
    )  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--claim-idle-ms", type=int, default=5000,
        help=f"take over messages another consumer has held this long; must exceed the slowest batch "
        f"(at least {MIN_CLAIM_IDLE_MS})",
    )  # fmt: skip
    parser.add_argument("--max-deliveries", type=int, default=5)
    parser.add_argument(
        "--max-outage-s", type=float, default=300.0,
        help="exit 3 after scoring fails for every message, or Redis fails, this long",
    )  # fmt: skip
    parser.add_argument(
        "--takeover-name", action="store_true",
        help="start without checking that no live consumer uses --name (which otherwise exits with status 2, "
        "or waits up to max(--claim-idle-ms, 0.5 s) for a consumer of that name that was reading just now and "
        "stopped; 1.5 s at least after Redis failed at start-up): "
        "for a supervisor that restarts a slot and knows its previous process is gone",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if not args.redis_url:
        parser.error("give --redis-url or set REDIS_URL")
    try:
        config = ConsumerConfig(
            name=args.name, model=args.model, batch_size=args.batch_size,
            claim_idle_ms=args.claim_idle_ms, max_deliveries=args.max_deliveries, max_outage_s=args.max_outage_s,
        )  # fmt: skip
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then exit
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    with inprocserve.Server(repository=args.repository, strict=True) as server:
        if args.model not in server.models:  # a typo, or not deployed: read nothing rather than fail it all
            logger.error("model %r is not served from %s (served: %s)", args.model, args.repository,
                         ", ".join(sorted(server.models)) or "none")  # fmt: skip
            return 2
        # timeouts: a hung Redis fails a call (retried as an outage) instead of blocking it, and SIGTERM, forever
        client = connect(args.redis_url, socket_timeout=_SOCKET_TIMEOUT_S, socket_connect_timeout=5)
        try:
            if not prepare(client, config, check_name=not args.takeover_name, stop=stop):
                logger.info("stopped before reading anything")  # SIGTERM while it watched the name
                return 0
            consumer = Consumer(client, server, config, stop)
            print(f"{args.name} ready", flush=True)
            consumer.run()
        except NameInUseError as exc:  # before anything was read under the name
            logger.error("%s", exc)
            return 2
        except OutageError as exc:
            logger.error("%s; exiting", exc)
            return 3
        except (redis.AuthenticationError, redis.ResponseError) as exc:  # at start-up: fix the setup first
            logger.error("Redis refused the consumer at start-up (check REDIS_URL's password and the user's ACL "
                         "rights on the streams): %s: %s", type(exc).__name__, exc)  # fmt: skip
            return 2
        finally:
            client.close()
    logger.info("stopped after scoring %d message(s) in %.1f s", consumer.scored, time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
