"""examples/queue_consumer: a real redis-server, real consumer processes, one of them SIGKILLed mid-batch."""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import json
import logging
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

from .ports import reserved_port

redis = pytest.importorskip("redis", reason="the queue consumer needs the redis client (pip install redis; dev extra)")
if shutil.which("redis-server") is None:
    pytest.skip(
        "redis-server is not installed (Debian package redis-server: apt-get install redis-server, "
        "or make system-deps)",
        allow_module_level=True,
    )

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "queue_consumer"
FEATURES = 16


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"queue_consumer_{name}", EXAMPLE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


consumer = load("consumer")
redis_server = load("redis_server")
runner = load("run")  # the example's drill: start consumers, SIGKILL one while it holds a batch


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    with redis_server.RedisServer() as server:
        yield server.url


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    connection = consumer.connect(redis_url)
    connection.flushall()
    consumer.ensure_group(connection)
    yield connection
    connection.close()


@pytest.fixture
def model_repository(repository: Path) -> Path:
    save_model(build_mlp_model((FEATURES, 256, 256, 3), seed=5), repository, "scorer", 1)
    return repository


def expected_scores(repository: Path, rows: np.ndarray) -> np.ndarray:
    with inprocserve.Server(repository=repository) as server:
        return np.asarray(server.predict("scorer", rows)["y"])


@pytest.mark.timeout(300)
def test_a_consumer_killed_mid_batch_loses_nothing(
    client: Any, redis_url: str, model_repository: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    drill = runner.Drill(client, redis_url, model_repository, tmp_path, batch_size=16, claim_idle_ms=500)
    try:
        drill.add(rng.standard_normal((300, FEATURES)).astype(np.float32))
        drill.start("victim")
        drill.start("survivor")
        more = lambda: rng.standard_normal((400, FEATURES)).astype(np.float32)  # noqa: E731
        orphaned = drill.kill_victim_mid_batch("victim", more)  # both consumers are scoring when it dies
        assert drill.processes["victim"].returncode == -signal.SIGKILL
        runner.wait_until(drill.all_scored, "every message has a result", timeout_s=120, interval_s=0.05)
        assert drill.stop("survivor") == 0, (tmp_path / "survivor.log").read_text()
    finally:
        drill.close()
    ids, rows = drill.ids, np.stack(drill.rows)

    results = consumer.read_results(client)
    per_request = collections.defaultdict(list)
    for result in results:
        per_request[result["request"]].append(result)
    assert set(per_request) == set(ids), f"lost: {sorted(set(ids) - set(per_request))[:10]}"
    assert not client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"]
    for request in orphaned:  # the survivor took over every message the victim held
        assert any(r["consumer"] == "survivor" and r["delivery"] == "claimed" for r in per_request[request])
    duplicates = {request for request, found in per_request.items() if len(found) > 1}
    assert duplicates <= orphaned, "only redelivered messages may be scored twice"
    expected = expected_scores(model_repository, rows)
    for index, request in enumerate(ids):  # every result answers its own message (no rows mixed up)
        for result in per_request[request]:
            assert "error" not in result, result
            np.testing.assert_allclose(json.loads(result["score"])["y"], expected[index], rtol=1e-4, atol=1e-6)


@pytest.fixture
def scoring(client: Any, model_repository: Path) -> Iterator[tuple[Any, inprocserve.Server]]:
    with inprocserve.Server(repository=model_repository) as server:
        yield client, server


def make(client: Any, server: inprocserve.Server, name: str, **options: Any) -> Any:
    return consumer.Consumer(client, server, consumer.ConsumerConfig(name=name, model="scorer", **options))


def test_bad_messages_get_an_error_result_and_the_rest_are_scored(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    good = consumer.produce(client, np.ones((3, FEATURES), np.float32))
    not_json = client.xadd(consumer.REQUESTS, {"features": "[1, 2,"})
    wrong_width = client.xadd(consumer.REQUESTS, {"features": json.dumps([1.0] * (FEATURES + 1))})
    no_field = client.xadd(consumer.REQUESTS, {"other": "x"})
    assert make(client, server, "w", batch_size=10).step() == 6
    results = {r["request"]: r for r in consumer.read_results(client)}
    assert all("score" in results[i] for i in good)
    assert results[not_json]["error"].startswith("bad message: ")
    assert "expected" in results[wrong_width]["error"]
    assert results[no_field]["error"] == "bad message: no 'features' field"
    assert not client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"]


def test_a_restarted_consumer_first_finishes_what_it_held(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    ids = consumer.produce(client, np.zeros((4, FEATURES), np.float32))
    client.xreadgroup(consumer.GROUP, "w", {consumer.REQUESTS: ">"}, count=2)  # its previous life read two, died
    worker = make(client, server, "w", batch_size=10, claim_idle_ms=60_000)
    assert worker.step() == 2
    assert worker.step() == 2
    assert worker.step() == 0  # idle: blocks block_ms, then returns
    deliveries = [(r["request"], r["delivery"]) for r in consumer.read_results(client)]
    assert deliveries == [(ids[0], "own-pending"), (ids[1], "own-pending"), (ids[2], "new"), (ids[3], "new")]


def test_a_message_that_keeps_failing_is_given_up(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    [message] = consumer.produce(client, np.zeros((1, FEATURES), np.float32))
    client.xreadgroup(consumer.GROUP, "dead", {consumer.REQUESTS: ">"}, count=1)  # delivery 1, never acked
    client.xclaim(consumer.REQUESTS, consumer.GROUP, "dead", 0, [message])  # delivery 2, never acked
    time.sleep(consumer.MIN_CLAIM_IDLE_MS / 1000 + 0.01)
    worker = make(client, server, "w", claim_idle_ms=consumer.MIN_CLAIM_IDLE_MS, max_deliveries=2)
    assert worker.step() == 1  # claimed: delivery 3
    [result] = consumer.read_results(client)
    assert result == {"request": message, "consumer": "w", "delivery": "claimed", "error": "gave up after 3 deliveries"}
    assert not client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"]
    [(_, dead)] = client.xrange(consumer.DEAD)  # kept whole, to be replayed once the cause is fixed
    assert dead == {"features": json.dumps([0.0] * FEATURES), "request": message, "error": result["error"]}


@pytest.mark.timeout(300)
def test_the_demo_reports_nothing_lost() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE / "run.py")],
        capture_output=True, text=True, timeout=180, check=False, env={**os.environ, "QUEUE_DEMO_MESSAGES": "600"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "killed consumer a (SIGKILL) while it held " in result.stdout
    assert re.search(r"queued (\d+) messages; \d+ results for \1 of them", result.stdout), result.stdout
    assert "lost: 0;" in result.stdout and "(all redelivered: True)" in result.stdout
    assert "consumer b exited with status 0" in result.stdout


def pending(client: Any) -> dict[str, int]:
    entries = client.xpending_range(consumer.REQUESTS, consumer.GROUP, min="-", max="+", count=1000)
    return {entry["message_id"]: entry["times_delivered"] for entry in entries}


class Flaky:
    """A real server whose predict first fails ``failures`` times with ``error``, and can refuse some rows."""

    def __init__(self, server: inprocserve.Server, failures: int = 0, error: Exception | None = None) -> None:
        self.server, self.failures, self.error = server, failures, error
        self.calls: list[int] = []  # rows per predict call

    def predict(self, model: str, rows: np.ndarray) -> Any:
        self.calls.append(len(rows))
        if self.failures:
            self.failures -= 1
            assert self.error is not None
            raise self.error
        if (rows[:, 0] == 7).any():  # a row onnxruntime would choke on
            raise inprocserve.InferenceError("onnxruntime failed")
        return self.server.predict(model, rows)


def test_poison_messages_fail_alone_and_are_dead_lettered(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    good = consumer.produce(client, np.ones((2, FEATURES), np.float32))
    poison = {
        "nested": "[" * 100_000 + "]" * 100_000,  # RecursionError in json.loads
        "huge": json.dumps([1.0] * 20_000),
        "nan": json.dumps([float("nan")] + [1.0] * (FEATURES - 1)),
        "inf": "[1e999" + ", 1" * (FEATURES - 1) + "]",
        "object": '{"a": 1}',
    }
    ids = {name: client.xadd(consumer.REQUESTS, {"features": raw}) for name, raw in poison.items()}
    assert make(client, server, "w", batch_size=20).step() == 2 + len(poison)
    results = {r["request"]: r for r in consumer.read_results(client)}
    assert all("score" in results[i] for i in good)
    for name, message_id in ids.items():
        assert results[message_id]["error"].startswith("bad message: "), (name, results[message_id])
    assert "more than 65536" in results[ids["huge"]]["error"]
    assert "NaN or infinite" in results[ids["nan"]]["error"] and "NaN or infinite" in results[ids["inf"]]["error"]
    dead = {fields["request"]: fields for _, fields in client.xrange(consumer.DEAD)}
    assert set(dead) == set(ids.values())
    assert dead[ids["nested"]]["features"] == poison["nested"]  # the original fields, to replay
    assert not client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"]


def test_a_message_that_is_not_utf8_fails_alone_and_is_dead_lettered(
    scoring: tuple[Any, inprocserve.Server], redis_url: str
) -> None:
    client, server = scoring
    good = consumer.produce(client, np.ones((2, FEATURES), np.float32))
    producer = redis.Redis.from_url(redis_url)  # another service's client, writing bytes
    binary = producer.xadd(consumer.REQUESTS, {b"features": b"\xff\xfe[1.0]", b"\xff": b"x"}).decode()
    producer.close()
    assert make(client, server, "w", batch_size=10).step() == 3
    results = {r["request"]: r for r in consumer.read_results(client)}
    assert all("score" in results[i] for i in good)
    assert results[binary]["error"].startswith("bad message: 'features' is not a JSON list"), results[binary]
    raw = redis.Redis.from_url(redis_url)
    [(_, dead)] = raw.xrange(consumer.DEAD)  # the original bytes, to replay
    raw.close()
    assert dead[b"features"] == b"\xff\xfe[1.0]" and dead[b"\xff"] == b"x"
    assert not client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"]


def test_a_consumer_refuses_a_client_that_fails_on_bytes_not_utf8(
    scoring: tuple[Any, inprocserve.Server], redis_url: str
) -> None:
    _, server = scoring
    strict = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(ValueError, match="surrogateescape"):
        make(strict, server, "w")
    strict.close()


def test_scores_are_strict_json(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    consumer.produce(client, np.full((3, FEATURES), 1e30, np.float32))  # finite input, maybe inf output
    make(client, server, "w").step()

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    for result in consumer.read_results(client):
        if "score" in result:
            json.loads(result["score"], parse_constant=refuse)
        else:
            assert result["error"] == "the model returned a non-finite score"


def test_an_inference_error_fails_only_its_message(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    rows = np.ones((5, FEATURES), np.float32)
    rows[2, 0] = 7
    ids = consumer.produce(client, rows)
    flaky = Flaky(server)
    assert make(client, flaky, "w", batch_size=10).step() == 5
    results = {r["request"]: r for r in consumer.read_results(client)}
    assert results[ids[2]]["error"] == "onnxruntime failed"
    assert all("score" in results[i] for i in ids if i != ids[2])
    assert flaky.calls == [5, 1, 1, 1, 1, 1]


def test_a_redelivered_batch_is_scored_one_message_at_a_time(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    consumer.produce(client, np.ones((3, FEATURES), np.float32))
    client.xreadgroup(consumer.GROUP, "w", {consumer.REQUESTS: ">"}, count=3)  # it died scoring these
    flaky = Flaky(server)
    assert make(client, flaky, "w").step() == 3
    assert flaky.calls == [1, 1, 1]  # so a message that kills the process can only take itself down


@pytest.mark.parametrize(
    "error",
    [
        inprocserve.ModelNotFoundError("no model 'scorer'"),
        inprocserve.OverloadedError("shed"),
        inprocserve.DeadlineExceededError("late"),
        inprocserve.RemoteUnavailableError("connection refused"),
    ],
)
def test_a_failure_of_every_message_costs_no_delivery(
    scoring: tuple[Any, inprocserve.Server], error: Exception
) -> None:
    client, server = scoring
    ids = consumer.produce(client, np.ones((4, FEATURES), np.float32))
    # "w" claims the batch again every claim_idle_ms / 2: 0.4 s here, so a thread held 0.1 s by a loaded
    # machine (as with claim_idle_ms=200) does not let the batch go idle long enough to be taken.
    worker = make(client, Flaky(server, failures=4, error=error), "w", claim_idle_ms=800, retry_initial_s=0.08)
    taken: list[Any] = []

    def peer() -> None:  # another consumer tries to take the batch over while "w" backs off
        time.sleep(1.0)  # (idle that long, had "w" not claimed it again)
        taken.append(client.xautoclaim(consumer.REQUESTS, consumer.GROUP, "peer", min_idle_time=800)[1])

    thief = threading.Thread(target=peer)
    thief.start()
    assert worker.step() == 4  # 0.08 + 0.16 + 0.32 + 0.64 s of back-off, then scored
    thief.join()
    assert taken == [[]], "the batch is kept claimed while it waits"
    results = consumer.read_results(client)
    assert [r["request"] for r in results] == ids and all("score" in r for r in results)
    assert not client.xrange(consumer.DEAD)


def test_a_long_outage_stops_the_consumer_and_keeps_the_messages(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    ids = consumer.produce(client, np.ones((3, FEATURES), np.float32))
    flaky = Flaky(server, failures=1000, error=inprocserve.OverloadedError("shed"))
    worker = make(client, flaky, "w", retry_initial_s=0.05, retry_max_s=0.1, max_outage_s=0.5)
    with pytest.raises(consumer.OutageError, match="3 message"):
        worker.run(threading.Event())
    assert pending(client) == dict.fromkeys(ids, 1)  # still there, never counted against
    assert not consumer.read_results(client)


def test_a_stop_during_back_off_leaves_the_batch_pending(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    ids = consumer.produce(client, np.ones((2, FEATURES), np.float32))
    stop = threading.Event()
    worker = make(client, Flaky(server, failures=1000, error=inprocserve.OverloadedError("shed")), "w")
    threading.Timer(0.3, stop.set).start()
    started = time.monotonic()
    worker.run(stop)
    assert time.monotonic() - started < 5
    assert pending(client) == dict.fromkeys(ids, 1)


def test_a_lost_group_is_created_again(scoring: tuple[Any, inprocserve.Server]) -> None:
    client, server = scoring
    worker = make(client, server, "w")
    stop = threading.Event()
    thread = threading.Thread(target=worker.run, args=(stop,))
    thread.start()
    try:
        first = consumer.produce(client, np.ones((2, FEATURES), np.float32))
        runner.wait_until(lambda: len(consumer.read_results(client)) == 2, "scored", timeout_s=10)
        client.flushall()  # Redis restarted without persistence
        time.sleep(0.3)
        second = consumer.produce(client, np.ones((2, FEATURES), np.float32))  # XADD re-creates the stream
        runner.wait_until(lambda: len(consumer.read_results(client)) == 2, "scored after", timeout_s=10)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert [r["request"] for r in consumer.read_results(client)] == second != first


def wait_for_write_retries(caplog: pytest.LogCaptureFixture, retries: int) -> None:
    """Wait until the consumer has failed a write and retried it ``retries`` times (a warning each), at its
    fixed pace of one a second: a fixed sleep waited as long on a quick machine, and too little on a slow one."""
    runner.wait_until(
        lambda: sum("Redis failed, retrying" in r.getMessage() for r in caplog.records) > retries,
        f"{retries} retries of the write",
        timeout_s=30,
        interval_s=0.05,
    )


@pytest.mark.timeout(60)
def test_results_that_redis_refuses_for_a_while_are_written_later_not_given_up(
    scoring: tuple[Any, inprocserve.Server], caplog: pytest.LogCaptureFixture
) -> None:
    client, server = scoring
    client.set(consumer.RESULTS, "not a stream")  # writes refused for a while, reads not (as Redis out of memory)
    ids = consumer.produce(client, np.ones((3, FEATURES), np.float32))
    stop = threading.Event()
    worker = make(client, server, "w", max_deliveries=2, claim_idle_ms=500)
    running = threading.Thread(target=worker.run, args=(stop,))
    caplog.set_level(logging.WARNING, logger="queue_consumer")
    running.start()
    try:
        wait_for_write_retries(caplog, 3)  # more than max_deliveries
        assert set(pending(client).values()) == {1}  # held, never read again
        client.delete(consumer.RESULTS)  # Redis takes writes again
        runner.wait_until(lambda: not pending(client), "the batch is acknowledged", timeout_s=10)
    finally:
        stop.set()
        running.join(timeout=30)
    results = consumer.read_results(client)
    assert [r["request"] for r in results] == ids and all("score" in r for r in results), results
    assert not client.xlen(consumer.DEAD)


def test_a_dead_letter_is_written_once_while_redis_refuses_the_results_beside_it(
    scoring: tuple[Any, inprocserve.Server], caplog: pytest.LogCaptureFixture
) -> None:
    """Writes are not one transaction: the dead letter went in at every retry while the results failed."""
    client, server = scoring
    client.set(consumer.RESULTS, "not a stream")
    good = consumer.produce(client, np.ones((2, FEATURES), np.float32))
    bad = client.xadd(consumer.REQUESTS, {"features": "[1, 2,"})
    stop = threading.Event()
    worker = make(client, server, "w", batch_size=10, claim_idle_ms=500)
    running = threading.Thread(target=worker.run, args=(stop,))
    caplog.set_level(logging.WARNING, logger="queue_consumer")
    running.start()
    try:
        wait_for_write_retries(caplog, 3)
        assert client.xlen(consumer.DEAD) == 1
        client.delete(consumer.RESULTS)
        runner.wait_until(lambda: not pending(client), "the batch is acknowledged", timeout_s=10)
    finally:
        stop.set()
        running.join(timeout=30)
    assert [r["request"] for r in consumer.read_results(client)] == [*good, bad]  # each once
    assert client.xlen(consumer.DEAD) == 1


def test_redis_refusing_every_write_for_max_outage_s_ends_the_consumer_with_the_batch_pending(
    scoring: tuple[Any, inprocserve.Server],
) -> None:
    """It was retried every second without a limit, a warning each time; status 3 lets a supervisor see it."""
    client, server = scoring
    client.set(consumer.RESULTS, "not a stream")  # for good: a key of the wrong type, or no write rights
    ids = consumer.produce(client, np.ones((2, FEATURES), np.float32))
    started = time.monotonic()
    # (2 s, the max_outage_s, or a few more: a loaded machine held the consumer's last retry; it said 3 s)
    with pytest.raises(consumer.OutageError, match=r"Redis failed for [2-9] s \(max_outage_s\)"):
        make(client, server, "w", claim_idle_ms=500, max_outage_s=2.0).run(threading.Event())
    assert time.monotonic() - started < 10
    assert sorted(pending(client)) == sorted(ids)  # for the restarted consumer, or a peer


def test_a_lost_group_that_cannot_be_created_again_is_retried_at_the_redis_pace(
    client: Any, redis_url: str, model_repository: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A consumer whose rights do not include XGROUP: creating the lost group failed, and it spun (6,000
    warnings and 1.4 s of CPU in 2 s)."""
    client.acl_setuser("scorer", enabled=True, passwords=["+secret"], keys=["*"], commands=["+@all", "-xgroup"])
    limited = consumer.connect(redis_url, username="scorer", password="secret")
    try:
        with inprocserve.Server(repository=model_repository) as server:
            client.delete(consumer.REQUESTS)  # Redis lost its data (a restart without persistence)
            stop = threading.Event()
            worker = make(limited, server, "w")
            running = threading.Thread(target=worker.run, args=(stop,))
            with caplog.at_level(logging.WARNING):
                running.start()
                time.sleep(2.0)
                stop.set()
                running.join(timeout=30)
        gone = [r for r in caplog.records if "the stream or group is gone" in r.getMessage()]
        assert 1 <= len(gone) <= 4, len(gone)
    finally:
        limited.close()
        client.acl_deluser("scorer")


def test_configuration_is_checked() -> None:
    for claim_idle_ms in [0, consumer.MIN_CLAIM_IDLE_MS - 1]:
        with pytest.raises(ValueError, match=f"claim_idle_ms must be >= {consumer.MIN_CLAIM_IDLE_MS} and more than"):
            consumer.ConsumerConfig(name="w", model="scorer", claim_idle_ms=claim_idle_ms)
    consumer.ConsumerConfig(name="w", model="scorer", claim_idle_ms=consumer.MIN_CLAIM_IDLE_MS)
    name = consumer.default_name()
    assert name.startswith(f"{socket.gethostname()}-"), "pid 1 in every container: the pid alone collides"


def run_consumer(*args: str, timeout_s: float = 60, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "REDIS_URL"}
    return subprocess.run(
        [sys.executable, str(EXAMPLE / "consumer.py"), *args],
        capture_output=True, text=True, timeout=timeout_s, check=False, env={**environment, **env},
    )  # fmt: skip


def test_a_model_not_served_exits_2_before_reading(client: Any, redis_url: str, model_repository: Path) -> None:
    ids = consumer.produce(client, np.ones((3, FEATURES), np.float32))
    result = run_consumer("--repository", str(model_repository), "--model", "scorr", REDIS_URL=redis_url)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "model 'scorr' is not served" in result.stderr and "scorer" in result.stderr
    assert not pending(client) and not consumer.read_results(client)
    assert client.xlen(consumer.REQUESTS) == len(ids)
    result = run_consumer("--repository", str(model_repository), "--model", "scorer")
    assert result.returncode == 2 and "give --redis-url or set REDIS_URL" in result.stderr
    result = run_consumer("--repository", "x", "--model", "scorer", "--claim-idle-ms", "50", REDIS_URL=redis_url)
    assert result.returncode == 2 and "claim_idle_ms must be >= 100" in result.stderr, result.stderr


# -- one live consumer per name --------------------------------------------------------------------------------


class Watching(threading.Event):
    """A ``stop`` for check_name_free, which waits on it between looks: ``started`` is set once it watches."""

    def __init__(self) -> None:
        super().__init__()
        self.started = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        self.started.set()
        return super().wait(timeout)


def test_the_name_check_passes_without_a_group_or_a_holder(client: Any) -> None:
    client.flushall()  # the first consumer ever: no stream, no group yet
    consumer.check_name_free(client, "w", claim_idle_ms=1000)
    consumer.ensure_group(client)
    consumer.check_name_free(client, "w", claim_idle_ms=1000)  # a group, but no consumer of that name
    client.xreadgroup(consumer.GROUP, "other", {consumer.REQUESTS: "0"})
    consumer.check_name_free(client, "w", claim_idle_ms=1000)


def test_the_name_check_watches_a_recent_holder_until_it_reads_or_stays_silent(
    scoring: tuple[Any, inprocserve.Server],
) -> None:
    client, server = scoring
    started = time.monotonic()  # before the read: a stall after it must not look like a shorter wait
    client.xreadgroup(consumer.GROUP, "w", {consumer.REQUESTS: "0"})  # "w" read just now, then died
    consumer.check_name_free(client, "w", claim_idle_ms=600)  # silent for 600 ms: gone
    assert 0.59 < time.monotonic() - started < 2
    looks = Watching()  # silent for longer already: it returns at once, without watching (a stall of this
    consumer.check_name_free(client, "w", claim_idle_ms=550, stop=looks)  # process only makes it longer)
    assert not looks.started.is_set()

    # a live consumer of an idle queue: it reads nothing, but it polls (every block_ms = 200 ms)
    live = make(client, server, "w", claim_idle_ms=consumer.MIN_CLAIM_IDLE_MS)
    stop = threading.Event()
    thread = threading.Thread(target=live.run, args=(stop,))
    thread.start()
    try:
        time.sleep(0.5)
        started = time.monotonic()
        with pytest.raises(consumer.NameInUseError, match="consumer name 'w' is in use"):
            consumer.check_name_free(client, "w", claim_idle_ms=5000)
        assert time.monotonic() - started < 2  # one poll, not claim_idle_ms
        for pause_s in [0.0, 0.07, 0.13]:  # a claim_idle_ms shorter than a poll: it still sees the next one
            time.sleep(pause_s)
            with pytest.raises(consumer.NameInUseError, match="consumer name 'w' is in use"):
                consumer.check_name_free(client, "w", claim_idle_ms=consumer.MIN_CLAIM_IDLE_MS)
    finally:
        stop.set()
        thread.join(timeout=10)


def test_the_name_check_sees_a_busy_consumer_whose_queue_emptied(scoring: tuple[Any, inprocserve.Server]) -> None:
    # A batch that leaves the queue empty: the consumer's next reads claim nothing and read nothing, which reset
    # no idle time before Redis 7.2. It must still be seen as live, before its next poll for new messages: it
    # re-reads its own pending list after every batch. Events, not sleeps, order the steps (a CPU stall of
    # the test process only makes a step later): the batch is held until the check watches, and the poll
    # after it until the check is over, so only a read between the batch and that poll can refuse the name.
    client, server = scoring
    # Each round has events of its own: round 1's consumer may reach its held poll only after round 2 began,
    # and a shared event cleared by then held that poll (and round 2's batch) until both waits ran out.
    steps: dict[str, threading.Event] = {}
    polls_to_hold: list[threading.Event] = []  # the check_over event each held poll waits for

    class SlowServer:
        def predict(self, *args: Any, **kwargs: Any) -> Any:
            now = dict(steps)  # (this round's)
            now["scoring_now"].set()
            assert now["release"].wait(30)
            polls_to_hold.append(now["check_over"])  # the batch's next poll for new messages waits for the check
            return server.predict(*args, **kwargs)

    class HeldPoll(redis.Redis):  # type: ignore[misc]
        def xreadgroup(self, *args: Any, **kwargs: Any) -> Any:
            if kwargs.get("block") and polls_to_hold:
                assert polls_to_hold.pop().wait(30)
            return super().xreadgroup(*args, **kwargs)

    held = HeldPoll(connection_pool=client.connection_pool)
    live = make(held, SlowServer(), "w", claim_idle_ms=3000)  # type: ignore[arg-type]
    stop = threading.Event()
    thread = threading.Thread(target=live.run, args=(stop,))
    thread.start()
    try:
        for _ in range(2):
            steps.update(scoring_now=threading.Event(), release=threading.Event(), check_over=threading.Event())
            scoring_now, release, check_over = steps["scoring_now"], steps["release"], steps["check_over"]
            consumer.produce(client, np.zeros((1, FEATURES), np.float32))
            assert scoring_now.wait(30)  # "w" read it and is scoring it: the queue is empty
            watching = Watching()
            outcome: list[BaseException | None] = []

            def check(
                watching: Watching = watching,
                outcome: list[BaseException | None] = outcome,
                check_over: threading.Event = check_over,
            ) -> None:
                try:
                    consumer.check_name_free(client, "w", claim_idle_ms=3000, stop=watching)
                    outcome.append(None)
                except BaseException as exc:
                    outcome.append(exc)
                finally:
                    check_over.set()

            checker = threading.Thread(target=check)
            checker.start()
            assert watching.started.wait(30)
            time.sleep(0.05)  # a batch longer than the check's tolerance (5 ms): a stall only makes it longer
            release.set()  # the batch ends while the check watches
            checker.join(timeout=30)
            assert outcome, "the check did not end"
            assert isinstance(outcome[0], consumer.NameInUseError), f"a live 'w' was not seen: {outcome[0]!r}"
            assert "consumer name 'w' is in use" in str(outcome[0])
            runner.wait_until(
                lambda: client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"] == 0, "scored", timeout_s=10
            )
    finally:
        stop.set()
        for event in steps.values():
            event.set()
        thread.join(timeout=10)
    assert len(consumer.read_results(client)) == 2


def start_consumer(redis_url: str, repository: Path, log: Path, name: str, *options: str) -> subprocess.Popen[bytes]:
    """consumer.py as ``name``, once it says it is ready (its model loaded and its name checked)."""
    command = [sys.executable, str(EXAMPLE / "consumer.py"), "--repository", str(repository), "--model", "scorer",
               "--name", name, *options]  # fmt: skip
    environment = {**os.environ, "REDIS_URL": redis_url}
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=environment, preexec_fn=redis_server.die_with_parent
        )
    try:
        runner.wait_until(
            lambda: f"{name} ready".encode() in log.read_bytes() or process.poll() is not None,
            f"{name} ready", timeout_s=60, interval_s=0.02,
        )  # fmt: skip
    except BaseException:
        process.kill()
        raise
    assert process.poll() is None, f"exited with {process.returncode}: {log.read_text()}"
    return process


def stop_consumer(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait(timeout=30)


@pytest.mark.timeout(120)
def test_a_name_that_a_live_consumer_uses_is_refused(
    client: Any, redis_url: str, model_repository: Path, tmp_path: Path
) -> None:
    live = start_consumer(redis_url, model_repository, tmp_path / "live.log", "worker-1", "--claim-idle-ms", "5000")
    try:
        time.sleep(1.0)  # an idle queue: it has read nothing for a second, but it polls
        try:
            result = run_consumer(
                "--repository", str(model_repository), "--model", "scorer", "--name", "worker-1",
                "--claim-idle-ms", "5000", REDIS_URL=redis_url, timeout_s=30,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            pytest.fail("a second consumer named worker-1 started while the first one was live")
        assert result.returncode == 2, result.stdout + result.stderr
        assert "consumer name 'worker-1' is in use" in result.stderr
        assert re.search(r"read or claimed \d+ ms ago", result.stderr), result.stderr
        assert "pick another --name, or stop the other consumer first" in result.stderr
        assert "worker-1 ready" not in result.stdout
        ids = consumer.produce(client, np.ones((3, FEATURES), np.float32))  # the live one is unaffected
        runner.wait_until(lambda: len(consumer.read_results(client)) == 3, "scored", timeout_s=30)
        assert {(r["request"], r["consumer"]) for r in consumer.read_results(client)} == {(i, "worker-1") for i in ids}
    finally:
        status = stop_consumer(live)
    assert status == 0, (tmp_path / "live.log").read_text()


@pytest.mark.timeout(120)
def test_a_consumer_restarted_after_a_kill_starts_under_its_name(
    client: Any, redis_url: str, model_repository: Path, tmp_path: Path
) -> None:
    options = ("--claim-idle-ms", "3000")
    first = start_consumer(redis_url, model_repository, tmp_path / "first.log", "worker-1", *options)
    runner.wait_until(  # it said "ready" before its first read: killed before that, it would leave no trace
        lambda: "worker-1" in {c["name"] for c in client.xinfo_consumers(consumer.REQUESTS, consumer.GROUP)},
        "worker-1 has read", timeout_s=30, interval_s=0.01,
    )  # fmt: skip
    first.send_signal(signal.SIGKILL)  # as a supervisor sees it: the process died; restart the slot at once
    first.wait(timeout=30)
    killed = time.monotonic()
    restarted = start_consumer(redis_url, model_repository, tmp_path / "restart.log", "worker-1", *options)
    try:
        log = (tmp_path / "restart.log").read_text()
        # the dead holder stays silent: the restart starts once it has been for --claim-idle-ms (3 s), counted
        # from the start of its last blocking read, which may have begun up to BLOCK_MS before the kill
        silent_s = (3000 - consumer.BLOCK_MS) / 1000
        assert "watching it for up to" in log or time.monotonic() - killed >= silent_s, log
        ids = consumer.produce(client, np.ones((2, FEATURES), np.float32))
        runner.wait_until(lambda: len(consumer.read_results(client)) == 2, "scored", timeout_s=30)
        assert [r["request"] for r in consumer.read_results(client)] == ids
    finally:
        status = stop_consumer(restarted)
    assert status == 0, (tmp_path / "restart.log").read_text()


@pytest.mark.timeout(120)
def test_takeover_name_starts_without_the_check(
    client: Any, redis_url: str, model_repository: Path, tmp_path: Path
) -> None:
    options = ("--claim-idle-ms", "60000")  # without --takeover-name: refused at once, or a minute's watch
    live = start_consumer(redis_url, model_repository, tmp_path / "live.log", "worker-1", *options)
    try:
        started = time.monotonic()
        second = start_consumer(
            redis_url, model_repository, tmp_path / "second.log", "worker-1", *options, "--takeover-name"
        )
        assert time.monotonic() - started < 30
        assert "watching" not in (tmp_path / "second.log").read_text()
        assert stop_consumer(second) == 0, (tmp_path / "second.log").read_text()
    finally:
        status = stop_consumer(live)
    assert status == 0, (tmp_path / "live.log").read_text()


@pytest.mark.timeout(120)
def test_sigterm_while_the_name_is_watched_exits_0_without_reading(
    client: Any, redis_url: str, model_repository: Path, tmp_path: Path
) -> None:
    client.xreadgroup(consumer.GROUP, "worker-1", {consumer.REQUESTS: "0"})  # its previous life, just now
    log = tmp_path / "watching.log"
    command = [sys.executable, str(EXAMPLE / "consumer.py"), "--repository", str(model_repository), "--model",
               "scorer", "--name", "worker-1", "--claim-idle-ms", "60000"]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "REDIS_URL": redis_url},
            preexec_fn=redis_server.die_with_parent,
        )  # fmt: skip
    try:
        runner.wait_until(
            lambda: b"watching it for up to" in log.read_bytes() or process.poll() is not None,
            "watching", timeout_s=60, interval_s=0.02,
        )  # fmt: skip
        process.send_signal(signal.SIGTERM)
        status = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
    output = log.read_text()
    assert status == 0, output
    assert "stopped before reading anything" in output and "worker-1 ready" not in output, output


def start_redis(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A redis-server on ``port`` with its data in ``folder`` (loaded from there again after a restart)."""
    process = subprocess.Popen(
        ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=redis_server.die_with_parent,
    )  # fmt: skip
    probe = redis.Redis(port=port, retry=NO_RETRY)
    try:
        runner.wait_until(
            lambda: process.poll() is not None or _answers(probe),
            f"redis-server answers on {port}", timeout_s=10, interval_s=0.02,
        )  # fmt: skip
    finally:
        probe.close()
    assert process.poll() is None, f"redis-server exited (status {process.returncode}) instead of serving on {port}"
    return process


def _answers(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


NO_RETRY = redis.retry.Retry(redis.backoff.NoBackoff(), 0)
"""Fail at once: redis-py would otherwise retry each command for about 4 s before the consumer sees it."""


@pytest.mark.timeout(60)
def test_start_up_outlives_redis_restarting_while_the_name_is_watched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = reserved_port()  # (held until the end: redis-server starts on it again after its shutdown)
    server = start_redis(port, tmp_path)
    client = redis.Redis(port=port, decode_responses=True, retry=NO_RETRY)
    try:
        consumer.ensure_group(client)
        client.xreadgroup(consumer.GROUP, "w", {consumer.REQUESTS: "0"})  # "w" read just now, then died
        config = consumer.ConsumerConfig(name="w", model="scorer", claim_idle_ms=1000, retry_initial_s=0.05)
        outcome: list[Any] = []
        checking = threading.Thread(target=lambda: outcome.append(consumer.prepare(client, config)))
        with caplog.at_level("WARNING", logger="queue_consumer"):
            checking.start()
            time.sleep(0.3)  # watching "w"
            client.shutdown(save=True)  # saved: "w" is there again after the restart, and watched again
            server.wait(timeout=10)
            time.sleep(0.3)
            server = start_redis(port, tmp_path)
            checking.join(timeout=20)
        assert outcome == [True], "a Redis failure at start-up is retried"
        assert "Redis failed at start-up (ConnectionError" in caplog.text
        assert "w" in {c["name"] for c in client.xinfo_consumers(consumer.REQUESTS, consumer.GROUP)}
    finally:
        client.close()
        server.terminate()
        server.wait(timeout=10)


def test_redis_down_at_start_up_exits_3(model_repository: Path) -> None:
    url = f"redis://127.0.0.1:{reserved_port()}/0"  # nothing listens there
    result = run_consumer(
        "--repository", str(model_repository), "--model", "scorer", "--max-outage-s", "0.5", REDIS_URL=url
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    assert "at start-up, last: ConnectionError" in result.stderr and "Traceback" not in result.stderr


def test_start_up_gives_up_after_max_outage_s() -> None:
    client = redis.Redis(port=reserved_port(), retry=NO_RETRY)  # nothing listens there
    config = consumer.ConsumerConfig(name="w", model="scorer", retry_initial_s=0.05, max_outage_s=0.3)
    started = time.monotonic()
    with pytest.raises(consumer.OutageError, match=r"Redis failed for 0\.\d s at start-up, last: ConnectionError"):
        consumer.prepare(client, config)
    assert time.monotonic() - started < 2
    stop = threading.Event()  # a stop during the back-off: nothing to read, no error
    threading.Timer(0.2, stop.set).start()
    assert consumer.prepare(client, dataclasses.replace(config, max_outage_s=60), stop=stop) is False


def test_a_wrong_password_is_exit_2_not_an_outage(model_repository: Path) -> None:
    with redis_server.RedisServer() as server:
        admin = redis.Redis.from_url(server.url)
        admin.config_set("requirepass", "right")  # (this server only: the module's other tests share another)
        admin.close()
        wrong = server.url.replace("redis://", "redis://:wrong@", 1)
        started = time.monotonic()
        result = run_consumer(
            "--repository", str(model_repository), "--model", "scorer", "--max-outage-s", "30", REDIS_URL=wrong
        )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Redis refused the consumer at start-up" in result.stderr and "Traceback" not in result.stderr
    assert time.monotonic() - started < 25  # not retried as an outage for --max-outage-s


@pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-cli is not installed (Debian: redis-tools)")
def test_the_readmes_own_redis_steps_score_a_message_sent_as_it_shows(
    client: Any, redis_url: str, tmp_path: Path
) -> None:
    """The README's "Against your own Redis" started a consumer and stopped there: which stream to send a row
    to, in which field and form, and where its score appears, were in consumer.py's docstring alone."""
    text = (EXAMPLE / "README.md").read_text().split("Against your own Redis", 1)[1]
    block = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)[0]
    lines = [shlex.split(line, comments=True) for line in block.replace("\\\n", " ").splitlines()]
    port = redis_url.rsplit(":", 1)[1].split("/")[0]  # (the README's Redis listens on 6379; this one elsewhere)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    for words in lines:  # export NAME=value, as the shell does
        if words[:1] == ["export"]:
            env.update(word.split("=", 1) for word in words[1:])
    env = {name: value.replace(":6379", f":{port}") for name, value in env.items()}
    (start,) = [words for words in lines if words[:2] == ["python", "examples/queue_consumer/consumer.py"]]
    cli = [[port if word == "6379" else word for word in words] for words in lines if words[:1] == ["redis-cli"]]
    sends, reads = [w for w in cli if "XADD" in w], [w for w in cli if "XRANGE" in w]
    assert sends and reads, "the README shows no command that sends a message and reads its result"
    save_model(build_mlp_model((8, 16, 2), input_name="transactions", seed=3), tmp_path / "models", "fraud", 1)
    (tmp_path / "examples").symlink_to(EXAMPLE.parent)  # (the commands run in a clone's root)
    client.config_set("requirepass", "password")  # (as the README's Redis: this connection stays signed in)
    try:
        with (tmp_path / "consumer.log").open("wb") as log:
            process = subprocess.Popen([sys.executable, *start[1:]], cwd=tmp_path, env=env, stdout=log, stderr=log)
        try:
            for words in sends:
                subprocess.run(words, env=env, check=True, capture_output=True, timeout=30)
            deadline = time.monotonic() + 60
            while not consumer.read_results(client):
                assert process.poll() is None, (tmp_path / "consumer.log").read_text()
                assert time.monotonic() < deadline, "no result within 60 s"
                time.sleep(0.1)
            shown = subprocess.run(reads[0], env=env, check=True, capture_output=True, text=True, timeout=30)
            assert "score" in shown.stdout and "error" not in shown.stdout, shown.stdout + shown.stderr
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=30) == 0, (tmp_path / "consumer.log").read_text()
    finally:
        client.config_set("requirepass", "")
