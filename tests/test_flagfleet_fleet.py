"""A flag changed under a real gunicorn ``--preload`` fleet: how long until every worker routes by it, with no
request failing, no worker going back to the old value once it routed by the new one, and sticky users kept on
their variant while the share does not move. Flags from a ``FileFlags`` made in the master, and from flagd's
own engine reading a flags file in each worker (``resolver_type=FILE``, set up after the fork as
docs/rollouts.md says)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_scale_model, save_model

from .ports import listening_socket
from .processes import keep_gunicorns_apart, stop_process

WORKERS = 3
USERS = [f"u{i}" for i in range(60)]

APP = """
import json, os, threading, time
from urllib.parse import parse_qs

import numpy as np

import inprocserve

KIND = os.environ["FLAGS_KIND"]
if KIND == "file":  # made in the master (--preload): each worker's reads go on from it
    FLAGS = inprocserve.FileFlags(os.environ["FLAGS_FILE"], check_interval_s=0.2)
_server = None
_lock = threading.Lock()

def server():
    global _server
    with _lock:
        if _server is None:
            if KIND == "flagd":  # a provider of this worker's own (gunicorn's post_fork, or here, after it)
                from openfeature import api
                from openfeature.contrib.provider.flagd import FlagdProvider
                from openfeature.contrib.provider.flagd.config import ResolverType

                api.set_provider_and_wait(FlagdProvider(
                    resolver_type=ResolverType.FILE, offline_flag_source_path=os.environ["FLAGS_FILE"]
                ))
                flags = inprocserve.OpenFeatureFlags()
            else:
                flags = FLAGS
            _server = inprocserve.Server(os.environ["MODELS"], flags=flags, flag_timeout_s=10.0)
        return _server

def app(environ, start_response):
    user = parse_qs(environ.get("QUERY_STRING", ""))["user"][0]
    result = server().predict("scale", np.ones((1, 4), np.float32), context={"user_id": user})
    body = json.dumps({"pid": os.getpid(), "version": result.version, "variant": result.variant,
                       "reason": result.reason, "at": time.monotonic()})
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body.encode()]
"""

CONFIG = '[rollout]\nstrategy = "canary"\nstable = 1\n\n[rollout.canary]\nversion = 2\npercent = 0\n'


def _write_flags(path: Path, kind: str, percent: float) -> None:
    """Write the flags anew and rename them over the old file, as docs/rollouts.md advises."""
    if kind == "file":
        text = json.dumps({"scale.canary.percent": percent})
    else:
        flag = {"state": "ENABLED", "variants": {"on": percent}, "defaultVariant": "on"}
        text = json.dumps({"flags": {"scale.canary.percent": flag}})
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


_SHARE = re.compile(r"canary is at (\d+(?:\.\d+)?)%|canary's (\d+(?:\.\d+)?)%")


def _share_of(reason: str) -> float:
    """The canary share a response was routed by, as its reason says it."""
    found = _SHARE.search(reason)
    assert found, reason
    return float(found.group(1) or found.group(2))


class _Fleet:
    def __init__(self, port: int) -> None:
        self.port = port
        self.answers: list[tuple[float, dict[str, Any], str]] = []  # (when, answer, user)
        self.failures: list[str] = []
        self._lock = threading.Lock()

    def ask(self, user: str) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.port}/?user={user}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                answer: dict[str, Any] = json.loads(response.read())
        except OSError as exc:
            with self._lock:
                self.failures.append(f"{user}: {exc!r}")
            raise
        with self._lock:
            self.answers.append((time.monotonic(), answer, user))
        return answer

    def load(self, stop: threading.Event) -> None:
        i = 0
        while not stop.is_set():
            try:
                self.ask(USERS[i % len(USERS)])
            except OSError:
                pass
            i += 1


def _start(tmp_path: Path, kind: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    models = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), models, "scale", version)
    (models / "scale" / "config.toml").write_text(CONFIG)
    flags_file = tmp_path / ("flags.json" if kind == "file" else "flagd.json")
    _write_flags(flags_file, kind, 0)
    (tmp_path / "fleet_app.py").write_text(APP)
    root = Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "MODELS": str(models),
        "FLAGS_FILE": str(flags_file),
        "FLAGS_KIND": kind,
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(root)]),
    }
    keep_gunicorns_apart(env)
    listener = listening_socket()
    port = listener.getsockname()[1]
    command = [sys.executable, "-m", "gunicorn", "--preload", "--workers", str(WORKERS), "--timeout", "60"]
    command += ["--bind", f"fd://{listener.fileno()}", "--chdir", str(tmp_path), "fleet_app:app"]
    log = (tmp_path / "gunicorn.log").open("w")
    with listener, log:
        master = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, pass_fds=[listener.fileno()])
    return master, port, flags_file


def _routed_by_everyone(fleet: _Fleet, since: float, share: float) -> float | None:
    """When the last of the workers first answered by ``share`` after ``since`` (None: not all have yet)."""
    firsts: dict[int, float] = {}
    with fleet._lock:
        answers = list(fleet.answers)
    for when, answer, _ in answers:
        if when >= since and _share_of(answer["reason"]) == share:
            firsts.setdefault(answer["pid"], when)
    return max(firsts.values()) if len(firsts) == WORKERS else None


@pytest.mark.parametrize("kind", ["file", "flagd"])
def test_a_canary_share_changed_reaches_every_worker_of_a_fleet_whole(tmp_path: Path, kind: str) -> None:
    pytest.importorskip("gunicorn")
    if kind == "flagd":
        pytest.importorskip("openfeature.contrib.provider.flagd")
    master, port, flags_file = _start(tmp_path, kind)
    fleet = _Fleet(port)
    stop = threading.Event()
    clients: list[threading.Thread] = []
    try:
        deadline = time.monotonic() + 90  # (each worker's boot and its first request)
        while True:
            assert master.poll() is None, (tmp_path / "gunicorn.log").read_text()
            try:
                fleet.ask("u0")
                break
            except urllib.error.HTTPError as exc:  # (the app failed: no use waiting)
                raise AssertionError((tmp_path / "gunicorn.log").read_text()) from exc
            except OSError:
                assert time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
                time.sleep(0.05)
        fleet.failures.clear()
        clients = [threading.Thread(target=fleet.load, args=(stop,)) for _ in range(WORKERS + 1)]
        for client in clients:
            client.start()
        reached: dict[float, float] = {}
        marks: list[tuple[float, float]] = []
        for share in (0, 10, 0):
            changed = time.monotonic()
            _write_flags(flags_file, kind, share)
            marks.append((changed, share))
            deadline = changed + 30
            while (done := _routed_by_everyone(fleet, changed, share)) is None:
                assert time.monotonic() < deadline, f"not every worker routes by {share}% after 30 s"
                time.sleep(0.02)
            reached[len(marks)] = done - changed
            # Sticky while the share stays: every user asked by every worker again
            hold = time.monotonic()
            while len({a["pid"] for w, a, _ in fleet.answers if w > hold}) < WORKERS or time.monotonic() - hold < 1:
                assert time.monotonic() < hold + 30
                time.sleep(0.02)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=60)
        stop_process(master)
    print(f"{kind}: every worker routed by the new share within {reached} s of the change")
    assert not fleet.failures, fleet.failures[:5]
    # No worker goes back to the old share once it answered by the new one, and while a share holds, a user
    # gets one variant on every worker. A worker's answers in the order it made them (the clock is the machine's
    # own): a client thread that read an answer may note it after another thread's next answer of that worker
    # (a worker seen going 0, 10, 0, 10, 0 under load).
    by_worker: dict[int, list[float]] = defaultdict(list)
    variants: dict[tuple[int, str], set[str]] = defaultdict(set)
    for when, answer, user in sorted(fleet.answers, key=lambda a: a[1]["at"]):
        share = _share_of(answer["reason"])
        seen = by_worker[answer["pid"]]
        if not seen or seen[-1] != share:
            seen.append(share)
        period = max(i for i, (changed, _) in enumerate(marks) if changed <= when) if when >= marks[0][0] else -1
        if period >= 0 and share == marks[period][1]:
            variants[(period, user)].add(f"{answer['variant']}:{answer['version']}")
        assert answer["version"] == (2 if answer["variant"] == "canary" else 1), answer
    for pid, shares in by_worker.items():
        assert shares in ([0.0], [0.0, 10.0], [0.0, 10.0, 0.0]), (pid, shares)
    assert all(len(seen) == 1 for seen in variants.values()), {k: v for k, v in variants.items() if len(v) > 1}
    canary_users = {user for (period, user), seen in variants.items() if period == 1 and "canary:2" in seen}
    assert 0 < len(canary_users) < len(USERS) // 3, canary_users  # about 10 % of 60 users
    assert max(reached.values()) < 10, reached
