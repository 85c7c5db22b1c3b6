"""The queue consumer with a worker killed mid-batch: nothing is lost.

Starts a throwaway redis-server, builds a small model and runs the drill: two consumer processes score a
queue of messages; the first is SIGKILLed at an arbitrary moment of its loop, which is almost always while
it holds a batch it has read but not acknowledged (when it happened to hold none, it is restarted and
killed again, up to five times); the second takes the dead consumer's batch over. Prints what happened
to every message. Needs redis-server (Debian package redis-server), the Redis client and onnx: from the
clone's root, ``pip install "./[testing]" redis`` (examples/README.md).
``QUEUE_DEMO_MESSAGES`` sets how many messages (default 3000).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import redis

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from consumer import GROUP, REQUESTS, RESULTS, ensure_group, produce, read_results  # noqa: E402
from redis_server import RedisServer, die_with_parent  # noqa: E402

from inprocserve.testing import build_mlp_model, save_model  # noqa: E402


def wait_until(condition: Callable[[], bool], what: str, *, timeout_s: float, interval_s: float = 0.002) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"gave up after {timeout_s:g} s waiting until {what}")
        time.sleep(interval_s)


def pending_of(client: redis.Redis, consumer: str) -> set[str]:
    entries = client.xpending_range(REQUESTS, GROUP, min="-", max="+", count=100_000, consumername=consumer)
    return {str(entry["message_id"]) for entry in entries}


@dataclass
class Drill:
    """Two consumers of one queue; ``kill_victim_mid_batch`` SIGKILLs the first while it holds a batch.

    Not thread-safe. ``close()`` kills whatever still runs.
    """

    client: redis.Redis
    url: str
    repository: Path
    logs: Path
    model: str = "scorer"
    batch_size: int = 32
    claim_idle_ms: int = 1000
    ids: list[str] = field(default_factory=list)
    rows: list[np.ndarray] = field(default_factory=list)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def add(self, rows: np.ndarray) -> None:
        self.ids += produce(self.client, rows)
        self.rows += list(rows)

    def start(self, name: str, *options: str) -> None:
        """Start consumer ``name`` (with more command-line ``options``) and wait until it is ready: its model
        loaded, its name checked (a restart after a kill waits up to ``claim_idle_ms`` there)."""
        log = self.logs / f"{name}.log"
        command = [sys.executable, str(HERE / "consumer.py"), "--repository", str(self.repository), "--model",
                   self.model, "--name", name, "--batch-size", str(self.batch_size), "--claim-idle-ms",
                   str(self.claim_idle_ms), *options]  # fmt: skip
        env = {**os.environ, "REDIS_URL": self.url}  # not on the command line: a password there shows in ps
        with log.open("wb") as out:  # a file, not a pipe nobody reads: a full pipe would stall the consumer
            self.processes[name] = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
            )
        process = self.processes[name]
        ready = f"{name} ready".encode()
        wait_until(lambda: ready in log.read_bytes() or process.poll() is not None, f"{name} started", timeout_s=120)
        if ready not in log.read_bytes():
            raise RuntimeError(f"consumer {name} exited with status {process.returncode}:\n{log.read_text()[-2000:]}")

    def kill_victim_mid_batch(self, name: str, more_rows: Callable[[], np.ndarray], *, attempts: int = 5) -> set[str]:
        """Queue more rows, SIGKILL ``name`` once another 100 results are in and it is seen holding a batch;
        return the ids it held.

        The kill still lands at an arbitrary point of the victim's loop: it may acknowledge its batch between
        the look and the kill, or the rows may all be scored before it is seen holding one (a busy machine
        left it idle at five kills in a row when it was killed at once). Then the victim is restarted and the
        drill repeated.
        """
        for _ in range(attempts):
            target = self.client.xlen(RESULTS) + 100
            self.add(more_rows())
            wait_until(lambda goal=target: self.client.xlen(RESULTS) >= goal, "100 more results", timeout_s=120)
            deadline = time.monotonic() + 5
            while not pending_of(self.client, name) and time.monotonic() < deadline:
                time.sleep(0.001)
            process = self.processes[name]
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
            orphaned = pending_of(self.client, name)
            if orphaned:
                return orphaned
            self.start(name)  # it held nothing at that instant: restart it and try again
        raise RuntimeError(f"{name} held no batch at any of {attempts} kills")

    def stop(self, name: str) -> int:
        """SIGTERM consumer ``name`` (it finishes its batch in hand) and return its exit status."""
        process = self.processes[name]
        process.send_signal(signal.SIGTERM)
        return process.wait(timeout=30)

    def all_scored(self) -> bool:
        if self.client.xpending(REQUESTS, GROUP)["pending"]:
            return False
        return len({result["request"] for result in read_results(self.client)}) == len(set(self.ids))

    def close(self) -> None:
        for process in self.processes.values():
            if process.poll() is None:
                process.kill()
                process.wait(timeout=10)


def main() -> int:
    count = int(os.environ.get("QUEUE_DEMO_MESSAGES", "3000"))
    rng = np.random.default_rng(0)
    features = 64
    with tempfile.TemporaryDirectory() as folder, RedisServer() as server:
        repository = Path(folder) / "models"
        save_model(build_mlp_model((features, 512, 512, 2), seed=1), repository, "scorer", 1)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        ensure_group(client)
        drill = Drill(client, server.url, repository, Path(folder))
        try:
            chunk = max(200, count // 10)  # queued after both consumers run; the kill comes while they score it
            drill.add(rng.standard_normal((max(0, count - chunk), features)).astype(np.float32))
            drill.start("a")
            drill.start("b")
            print(f"consumers a and b score {REQUESTS} at {server.url}")
            orphaned = drill.kill_victim_mid_batch("a", lambda: rng.standard_normal((chunk, features)).astype("f4"))
            print(f"killed consumer a (SIGKILL) while it held {len(orphaned)} unacknowledged message(s)")
            wait_until(drill.all_scored, "every message has a result", timeout_s=120, interval_s=0.1)
            print(f"consumer b exited with status {drill.stop('b')}")
        finally:
            drill.close()
        ids = drill.ids
        results = read_results(client)
        per_request = collections.Counter(result["request"] for result in results)
        by_consumer = collections.Counter(result["consumer"] for result in results)
        claimed = {result["request"] for result in results if result["delivery"] == "claimed"}
        lost = set(ids) - set(per_request)
        duplicates = {request for request, n in per_request.items() if n > 1}
        print(f"queued {len(ids)} messages; {len(results)} results for {len(per_request)} of them")
        print(f"results by consumer: {dict(by_consumer)}")
        print(f"taken over by b after the kill: {len(claimed)} (of the {len(orphaned)} a held)")
        print(f"lost: {len(lost)}; scored twice: {len(duplicates)} (all redelivered: {duplicates <= orphaned})")
        print(f"errors: {sum('error' in result for result in results)}; still pending: "
              f"{client.xpending(REQUESTS, GROUP)['pending']}")  # fmt: skip
        client.close()
        return 0 if not lost and duplicates <= orphaned else 1


if __name__ == "__main__":
    sys.exit(main())
