"""A real gunicorn fleet restarted under load: every request a worker took is answered, none reset.

docs/deployment.md, "Restarts under load": a graceful reload (SIGHUP) and ``--max-requests`` recycling while
client threads send requests, with a shadow version mirroring every request (each exiting worker has copies
queued or running, and requests waiting in its batcher). Each request opens its own connection, so a worker
that exits between two requests costs nothing: any reset, refusal or 5xx is a request the fleet dropped.
The load lasts ``SOAK_SECONDS`` (3 s at least): ``make soak`` runs it longer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_gunicorn_fleet import ROW, Fleet, assert_clean_shutdown, assert_master_clean

SHADOWED = "[rollout]\nstable = 2\n[rollout.shadow]\nversions = [1]\n"


def outcome(fleet: Fleet, user: str) -> str:
    """What one request got: "ok", or what went wrong (a status, the exception's type)."""
    body = json.dumps({"rows": ROW}).encode()
    call = urllib.request.Request(
        f"{fleet.base}/score", data=body, headers={"Content-Type": "application/json", "X-User-Id": user}
    )
    try:
        with urllib.request.urlopen(call, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        return f"{error.code}: {error.read()[:200]!r}"
    except OSError as error:  # (reset, refused, cut off)
        return f"{type(error).__name__}: {error}"
    if answer["version"] != 2 or answer["y"] != [[2.0] * 4]:
        return f"wrong answer: {answer}"
    return "ok"


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    recycled = ("--max-requests", "60", "--max-requests-jitter", "20")
    fleet = Fleet(tmp_path, "eager-hook", *recycled, config_toml=SHADOWED)
    try:
        fleet.wait_ready()
        yield fleet
    finally:
        fleet.stop()


def test_a_reload_and_recycling_under_load_answer_every_request(fleet: Fleet) -> None:
    seconds = max(3.0, float(os.environ.get("SOAK_SECONDS", "0")))
    tallies = [Counter[str]() for _ in range(8)]
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            tallies[index][outcome(fleet, f"user-{index}")] += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(tallies))]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    reloads = 0
    while time.monotonic() - started < seconds:
        time.sleep(1.0)
        fleet.process.send_signal(signal.SIGHUP)  # a deploy: new workers forked, the old ones finish and exit
        reloads += 1
    time.sleep(1.0)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    outcomes = sum(tallies, Counter[str]())
    assert set(outcomes) == {"ok"}, (outcomes, fleet.log()[-3000:])
    # every SIGHUP handled: the master queues them and may be a while at the last on a loaded machine
    handled = time.monotonic() + 30
    while fleet.log().count("Handling signal: hup") < reloads and time.monotonic() < handled:
        time.sleep(0.1)
    log = fleet.log()
    assert log.count("Handling signal: hup") == reloads, log
    assert len(re.findall(r"Autorestarting worker after current request", log)) >= 2, (outcomes, log)
    assert_clean_shutdown(fleet, fleet.stop())
    assert_master_clean(fleet, eager=True)
