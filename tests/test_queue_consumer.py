"""examples/queue_consumer: a real redis-server, real consumer processes, one of them SIGKILLed mid-batch."""

from __future__ import annotations

import collections
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

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
    connection = redis.Redis.from_url(redis_url, decode_responses=True)
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
    assert results[no_field]["error"] == "bad message: 'features'"
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
    assert make(client, server, "w", claim_idle_ms=0, max_deliveries=2).step() == 1  # claimed: delivery 3
    [result] = consumer.read_results(client)
    assert result == {"request": message, "consumer": "w", "delivery": "claimed", "error": "gave up after 3 deliveries"}
    assert not client.xpending(consumer.REQUESTS, consumer.GROUP)["pending"]


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
