"""Score messages from a Redis stream in batches, with a consumer group; acknowledge only after the result
is written, so a consumer that dies mid-batch loses nothing.

One message = one row to score: ``XADD scoring:requests * features '[0.1, 0.2, ...]'``. Each consumer
process embeds an ``inprocserve.Server`` and loops:

1. take over messages another consumer read but did not acknowledge for ``claim_idle_ms`` (``XAUTOCLAIM``:
   that consumer died or hangs), else read up to ``batch_size`` new ones (``XREADGROUP ... COUNT n``);
2. score the whole batch with one ``server.predict`` call;
3. write one result per message (``XADD scoring:results``, carrying the request's message id);
4. ``XACK`` the batch, only now.

A kill between 1 and 4 leaves the batch in the group's pending list; another consumer claims it after
``claim_idle_ms`` and scores it again. A message is therefore scored at least once: a kill between 3 and 4
writes its result twice (the second one marked ``delivery=claimed``). Make the result write idempotent
(keyed by the request id) where duplicates matter. A message that keeps failing is given up after
``max_deliveries`` and gets an ``error`` result, so it cannot block the queue.

Run ``python consumer.py --help``; ``run.py`` beside this file shows the whole thing with a killed worker.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import redis

import inprocserve

__all__ = ["GROUP", "REQUESTS", "RESULTS", "Consumer", "ConsumerConfig", "ensure_group", "produce", "read_results"]

logger = logging.getLogger("queue_consumer")

REQUESTS = "scoring:requests"
RESULTS = "scoring:results"
GROUP = "scorers"


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsumerConfig:
    name: str
    """This consumer's name in the group: stable across restarts of the same worker slot."""
    model: str
    batch_size: int = 32
    """Most messages per XREADGROUP, scored by one predict call."""
    block_ms: int = 200
    """How long one XREADGROUP waits for new messages; also how often a stop request is noticed."""
    claim_idle_ms: int = 5000
    """Take over messages that another consumer has held unacknowledged this long."""
    max_deliveries: int = 5
    """Give up on a message delivered this many times (an ``error`` result, then acknowledged)."""

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.block_ms < 1 or self.claim_idle_ms < 0 or self.max_deliveries < 1:
            raise ValueError("batch_size, block_ms and max_deliveries must be >= 1, claim_idle_ms >= 0")


def ensure_group(client: redis.Redis, *, stream: str = REQUESTS, group: str = GROUP) -> None:
    """Create the consumer group (and the stream) if missing; it starts at the stream's first message."""
    try:
        client.xgroup_create(stream, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


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


class Consumer:
    """One member of the consumer group, scoring with ``server``.

    Not thread-safe: one thread calls ``step()`` or ``run()``. The server is the caller's, and stays open.
    """

    def __init__(self, client: redis.Redis, server: inprocserve.Server, config: ConsumerConfig) -> None:
        self.client = client
        self.server = server
        self.config = config
        self.scored = 0
        self._claim_cursor = "0-0"
        self._own_pending_done = False

    def step(self) -> int:
        """Handle one batch; return how many messages it acknowledged (0 when the queue was idle)."""
        batch, delivery = self._next_batch()
        if not batch:
            return 0
        results = self._score(batch, delivery)
        pipe = self.client.pipeline(transaction=False)
        for fields in results.values():
            pipe.xadd(RESULTS, fields)
        pipe.execute()  # the results are written ...
        self.client.xack(REQUESTS, GROUP, *results)  # ... and only then the messages acknowledged
        self.scored += len(results)
        return len(results)

    def run(self, stop: threading.Event) -> None:
        """Call ``step()`` until ``stop`` is set; the batch in hand when it is set is finished first.

        A failed step (Redis unreachable, the server overloaded or failing) is logged and retried after a
        second; its messages stay pending and are claimed again after ``claim_idle_ms``.
        """
        while not stop.is_set():
            try:
                self.step()
            except (inprocserve.InprocserveError, redis.RedisError) as exc:
                logger.warning("%s: batch not acknowledged, retrying in 1 s: %s", self.config.name, exc)
                stop.wait(1.0)

    # -- reading -----------------------------------------------------------------------------------------

    def _next_batch(self) -> tuple[list[tuple[str, Mapping[str, str]]], str]:
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
        return (reply[0][1] if reply else []), "new"

    def _deliveries(self, ids: Sequence[str]) -> dict[str, int]:
        ordered = sorted(ids, key=_id_key)  # ids compare as (milliseconds, sequence), not as text
        entries = self.client.xpending_range(
            REQUESTS, GROUP, min=ordered[0], max=ordered[-1], count=10_000, consumername=self.config.name
        )
        return {str(entry["message_id"]): int(entry["times_delivered"]) for entry in entries}

    # -- scoring -----------------------------------------------------------------------------------------

    def _score(self, batch: list[tuple[str, Mapping[str, str]]], delivery: str) -> dict[str, dict[str, str]]:
        """One result (fields to write) per message id, in batch order."""
        results: dict[str, dict[str, str]] = {}
        rows: dict[str, np.ndarray] = {}
        deliveries = self._deliveries([i for i, _ in batch]) if delivery != "new" else {}
        for message_id, fields in batch:
            base = {"request": message_id, "consumer": self.config.name, "delivery": delivery}
            results[message_id] = base
            if deliveries.get(message_id, 1) > self.config.max_deliveries:
                base["error"] = f"gave up after {deliveries[message_id]} deliveries"
                continue
            try:
                row = np.asarray(json.loads(fields["features"]), dtype=np.float32)
                if row.ndim != 1:
                    raise ValueError(f"features must be a flat list of numbers, got shape {row.shape}")
            except (KeyError, ValueError, TypeError) as exc:
                base["error"] = f"bad message: {exc}"
                continue
            rows[message_id] = row
        if rows:
            self._predict(rows, results)
        return results

    def _predict(self, rows: dict[str, np.ndarray], results: dict[str, dict[str, str]]) -> None:
        try:
            if len({row.shape for row in rows.values()}) != 1:
                raise inprocserve.InvalidInputError("the batch mixes feature counts")
            prediction = self.server.predict(self.config.model, np.stack(list(rows.values())))
        except inprocserve.InvalidInputError as exc:
            if len(rows) == 1:
                results[next(iter(rows))]["error"] = str(exc)
                return
            for message_id, row in rows.items():  # a bad message: score each alone, so only it fails
                self._predict({message_id: row}, results)
            return
        for index, message_id in enumerate(rows):
            outputs = {name: prediction[name][index].tolist() for name in prediction}
            results[message_id].update(score=json.dumps(outputs), version=str(prediction.version))


def _id_key(message_id: str) -> tuple[int, int]:
    milliseconds, _, sequence = message_id.partition("-")
    return int(milliseconds), int(sequence or 0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--redis-url", required=True, help="e.g. redis://127.0.0.1:6379/0")
    parser.add_argument("--repository", required=True, help="the model repository folder")
    parser.add_argument("--model", required=True, help="the model that scores the messages")
    parser.add_argument("--name", default=f"consumer-{os.getpid()}", help="this consumer's name in the group")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--claim-idle-ms", type=int, default=5000)
    parser.add_argument("--max-deliveries", type=int, default=5)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    config = ConsumerConfig(
        name=args.name, model=args.model, batch_size=args.batch_size,
        claim_idle_ms=args.claim_idle_ms, max_deliveries=args.max_deliveries,
    )  # fmt: skip
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):  # finish the batch in hand, then exit
        signal.signal(signum, lambda *_: stop.set())
    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    ensure_group(client)
    started = time.monotonic()
    with inprocserve.Server(repository=args.repository, strict=True) as server:
        consumer = Consumer(client, server, config)
        print(f"{args.name} ready", flush=True)
        consumer.run(stop)
    logger.info("stopped after scoring %d message(s) in %.1f s", consumer.scored, time.monotonic() - started)
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
