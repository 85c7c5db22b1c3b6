"""A real gunicorn fleet (gthread, 4 workers, --preload) on 127.0.0.1, in lazy and eager modes.

What it shows: one admin switch reaches every worker and never flips back (how soon is measured and printed,
not asserted: the documented bound is ``make demo``'s and the benchmarks', never a timed test's);
a user id sees one version on every worker (and after a graceful reload); the master never imports
onnxruntime; SIGHUP, SIGTERM and max-requests recycling leave no worker killed by a signal; with no stable version
named, the compatibility gate's hold on an incompatible version reaches workers recycled later, and its
name follows a compatible version.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_mlp_model, build_scale_model, save_model
from tests.ports import listening_socket
from tests.processes import gunicorn_has_control_socket

# Each test starts a four-worker gunicorn fleet and waits on it: 10-70 s on an idle 2-core host, up to the
# default 120 s limit beside CPU-bound load (flakehunt2's loaded runs). The waits have their own deadlines and
# messages; this limit only stops a hung fleet.
pytestmark = pytest.mark.timeout(300)

HERE = Path(__file__).parent
CONTROL_INTERVAL_S = 0.2
# How long the tests wait for every worker to follow the control file. A condition polled, with a deadline that
# only a fleet that never follows reaches: the documented bound (control_interval_s plus the load of a version a
# worker does not have) is a performance target, shown by `make demo` and the benchmarks; asserted here, at
# interval + 3 s, it failed a 2-core host at nice 19 beside busy processes (the tests print the time measured).
FOLLOW_DEADLINE_S = 60.0
WORKERS = 4
ADMIN = {"Authorization": "Bearer s3cret", "Content-Type": "application/json"}
ROW = [[1.0, 1.0, 1.0, 1.0]]

MODES = {
    "lazy": {"INPROCSERVE_TEST_EAGER": "0", "INPROCSERVE_TEST_HOOK": "0"},
    "eager": {"INPROCSERVE_TEST_EAGER": "1", "INPROCSERVE_TEST_HOOK": "0"},  # plug-in's own post-fork warm-up
    "eager-hook": {"INPROCSERVE_TEST_EAGER": "1", "INPROCSERVE_TEST_HOOK": "1"},  # inprocserve.gunicorn hook
}


class Fleet:
    """One gunicorn master and its workers; the log goes to a file (a pipe could fill and block it)."""

    def __init__(
        self,
        tmp_path: Path,
        mode: str,
        *extra: str,
        poll_interval_s: float = 0.0,
        config_toml: str = "",
        versions: tuple[int, ...] = (1, 2),
    ) -> None:
        self.repository = tmp_path / "models"
        for version in versions:
            save_model(build_scale_model(float(version)), self.repository, "scale", version)
        if config_toml:
            (self.repository / "scale" / "config.toml").write_text(config_toml)
        self.report = tmp_path / "master.jsonl"
        self.log_path = tmp_path / "gunicorn.log"
        listener = listening_socket()  # handed to gunicorn: no other process can take its port first
        self.base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        env = {
            **os.environ,
            **MODES[mode],
            "INPROCSERVE_TEST_REPOSITORY": str(self.repository),
            "INPROCSERVE_TEST_MASTER_REPORT": str(self.report),
            "INPROCSERVE_TEST_CONTROL_INTERVAL_S": str(CONTROL_INTERVAL_S),
            "INPROCSERVE_TEST_POLL_INTERVAL_S": str(poll_interval_s),
            "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
        }
        # gunicorn 27's control socket, on by default, as users run it: its master stops and restarts the socket's
        # thread around each fork. Its own path, not the one per user other tests' gunicorns share (see
        # tests/processes.py, which switches it off for them).
        control_socket: list[str] = []
        if gunicorn_has_control_socket():
            env.pop("GUNICORN_CMD_ARGS", None)
            control_socket = ["--control-socket", str(tmp_path / "gunicorn.ctl")]
        command = [
            sys.executable, "-m", "gunicorn", *control_socket,
            "--config", str(HERE / "gunicorn_fleet_conf.py"),
            "--preload", "--worker-class", "gthread", "--workers", str(WORKERS), "--threads", "4",
            "--bind", f"fd://{listener.fileno()}", "--graceful-timeout", "20", "--timeout", "60",
            "--log-level", "info", *extra, "gunicorn_fleet_app:app",
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")  # closed in stop()
        with listener:
            self.process = subprocess.Popen(
                command, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=HERE, pass_fds=[listener.fileno()]
            )

    def call(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        call = urllib.request.Request(f"{self.base}{path}", data=data, headers=headers or {})
        if body is not None:
            call.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(call, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"null")

    def score(self, user: str) -> dict[str, Any]:
        status, answer = self.call("/score", {"rows": ROW}, {"X-User-Id": user})
        assert status == 200, answer
        assert answer["y"] == [[float(answer["version"])] * 4]  # every answer checked against its version
        return dict(answer)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 120
        while True:
            try:
                if self.call("/-/inprocserve/ready")[0] == 200:
                    return
            except OSError:  # (refused, reset, or timed out: the socket listens before gunicorn has the app)
                pass
            assert self.process.poll() is None, self.log()
            assert time.monotonic() < deadline, "gunicorn did not become ready\n" + self.log()
            time.sleep(0.1)

    def worker_pids(self, *, at_least_revision: int = 0, exclude: set[int] = frozenset()) -> set[int]:  # type: ignore[assignment]
        """Ask /models until WORKERS distinct live workers (not in ``exclude``) report the revision."""
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while len(seen) < WORKERS:
            assert time.monotonic() < deadline, f"only workers {seen} reported revision {at_least_revision}"
            status, models = self.call("/-/inprocserve/models")
            if status != 200:  # (a worker with no server answers 503 and an error, with no pid: a KeyError before)
                continue
            pid = models["worker"]["pid"]
            if models["control"]["revision"] >= at_least_revision and pid not in exclude:
                seen.add(pid)
        return seen

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            code = -9
        self._log.close()
        return code

    def master_report(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.report.read_text().splitlines()]


@pytest.fixture
def fleet_factory(tmp_path: Path) -> Iterator[Any]:
    fleets: list[Fleet] = []

    def start(
        mode: str, *extra: str, poll_interval_s: float = 0.0, config_toml: str = "", versions: tuple[int, ...] = (1, 2)
    ) -> Fleet:
        fleet = Fleet(
            tmp_path, mode, *extra, poll_interval_s=poll_interval_s, config_toml=config_toml, versions=versions
        )
        fleets.append(fleet)
        fleet.wait_ready()
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


def assert_clean_shutdown(fleet: Fleet, code: int) -> None:
    log = fleet.log_path.read_text(errors="replace")
    assert code == 0, log
    assert "was sent" not in log, log  # gunicorn's words for a worker killed by a signal (SIGSEGV, SIGABRT...)
    assert "exited with code" not in log, log
    assert "Traceback" not in log, log


def assert_master_clean(fleet: Fleet, *, eager: bool) -> None:
    report = fleet.master_report()
    assert {entry["event"] for entry in report} >= {"ready", "exit"}
    assert len({entry["pid"] for entry in report}) == 1
    assert not any(entry["onnxruntime"] for entry in report), report  # never imported, so never a session
    if eager:
        assert all(entry["onnx"] for entry in report), report  # the master checked the models with onnx


@pytest.mark.parametrize("mode", list(MODES))
def test_one_switch_moves_every_worker_and_users_stay_sticky(mode: str, fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory(mode)
    first_generation = fleet.worker_pids()
    assert fleet.score("anyone")["version"] == 2  # the latest version, before any switch

    # 1. One admin switch, to one worker.
    status, answer = fleet.call("/-/inprocserve/models/scale/switch", {"version": 1}, ADMIN)
    switched_at = time.monotonic()
    assert status == 200, answer
    observations: list[tuple[float, int, int, float]] = []  # (sent at, pid, version, answered at)
    lock = threading.Lock()
    stop = threading.Event()

    def client(index: int) -> None:
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            sent = time.monotonic()
            answer = fleet.score(f"client-{index}")
            with lock:
                observations.append((sent, answer["pid"], answer["version"], time.monotonic()))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + FOLLOW_DEADLINE_S
    while time.monotonic() < deadline:  # until every worker has answered with v1 for a while
        with lock:
            followed = {pid for sent, pid, version, _ in observations if version == 1 and sent > switched_at + 1}
        if followed >= first_generation:
            break
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(timeout=60)
    assert {pid for _, pid, _, _ in observations} == first_generation
    assert followed >= first_generation, (
        f"workers {sorted(first_generation - followed)} never answered with the switched-to version 1 in"
        f" {FOLLOW_DEADLINE_S:g}s\n{fleet.log()[-3000:]}"
    )
    for pid in first_generation:
        mine = [(sent, version, answered) for sent, p, version, answered in observations if p == pid]
        # sent times bound processing times from below, answered times from above
        last_old = max((sent for sent, version, _ in mine if version == 2), default=switched_at)
        print(f"worker {pid} followed the switch: its last v2 answer was sent {last_old - switched_at:.2f}s after it")
        first_new = min(answered for _, version, answered in mine if version == 1)
        flipped = [sent - first_new for sent, version, _ in mine if version == 2 and sent > first_new]
        assert not flipped, f"worker {pid} answered v2 again, {flipped[0]:.3f}s after it had answered v1"

    # 2. A canary: each user id sees one version, whichever worker answers.
    status, answer = fleet.call("/-/inprocserve/models/scale/canary", {"version": 2, "percent": 50}, ADMIN)
    assert status == 200, answer
    fleet.worker_pids(at_least_revision=answer["revision"])
    users = [f"user-{i}" for i in range(24)]
    versions = {user: {fleet.score(user)["version"] for _ in range(12)} for user in users}
    assert all(len(seen) == 1 for seen in versions.values()), versions
    assert {v for seen in versions.values() for v in seen} == {1, 2}
    assignment = {user: next(iter(seen)) for user, seen in versions.items()}

    # 3. Graceful reload (SIGHUP): a new generation of workers, the same state, no worker killed.
    fleet.process.send_signal(signal.SIGHUP)
    second_generation = fleet.worker_pids(at_least_revision=answer["revision"], exclude=first_generation)
    deadline = time.monotonic() + 60
    while not all(f"Worker exiting (pid: {pid})" in fleet.log() for pid in first_generation):
        assert time.monotonic() < deadline, fleet.log()
        time.sleep(0.2)
    assert {user: fleet.score(user)["version"] for user in users} == assignment  # sticky across restarts
    assert second_generation.isdisjoint(first_generation)

    # 4. SIGTERM: every worker and the master exit cleanly.
    assert_clean_shutdown(fleet, fleet.stop())
    assert_master_clean(fleet, eager=mode != "lazy")


def test_max_requests_recycling_exits_cleanly(fleet_factory: Any) -> None:
    fleet: Fleet = fleet_factory("eager-hook", "--max-requests", "15")
    pids: set[int] = set()
    deadline = time.monotonic() + 90
    # Until workers were recycled and replaced, not a fixed count of requests: each replacement imports onnxruntime
    # and warms its versions, seconds apiece on a loaded 2-core host, and 120 requests booted about 8 of them.
    while len(pids) <= WORKERS or len(re.findall(r"Autorestarting worker after current request", fleet.log())) < 2:
        assert time.monotonic() < deadline, f"workers {pids} answered\n{fleet.log()}"
        pids |= {fleet.score(f"user-{i}")["pid"] for i in range(15)}
    assert_clean_shutdown(fleet, fleet.stop())
    assert_master_clean(fleet, eager=True)


@pytest.mark.parametrize("stop", ["SIGTERM", "SIGHUP"])
def test_workers_stopped_while_a_hot_reload_loads_a_version_exit_cleanly(stop: str, fleet_factory: Any) -> None:
    """A deploy copies a model in and stops or reloads the workers at once: each worker's hot-reload thread
    is still building the new version's sessions when its server is closed at exit, and onnxruntime aborted
    such a worker (SIGABRT) before the exit waited for the thread."""
    fleet: Fleet = fleet_factory("eager-hook", poll_interval_s=0.1)
    (fleet.repository / "slow").mkdir()
    (fleet.repository / "slow" / "config.toml").write_text("[warmup]\nrows = 2048\nruns = 10\n")
    save_model(build_mlp_model((512, 512, 512, 512, 2)), fleet.repository, "slow", 1)
    # Until every worker's poller has found it (seconds of warm-up each: 10 runs of 2,048 rows), not a fixed second:
    # on a loaded host the pollers may not all have found it by then, and a stop before that tests no load.
    found: set[int] = set()
    warming: set[int] = set()  # seen still warming it up: what the stop below must find
    saved = time.monotonic()
    deadline = saved + 60
    while len(found) < WORKERS:
        assert time.monotonic() < deadline, f"only workers {found} found 'slow'\n{fleet.log()}"
        status, models = fleet.call("/-/inprocserve/models")
        slow = models["models"].get("slow") if status == 200 else None  # (None: not found yet)
        if slow is not None:
            found.add(models["worker"]["pid"])
            if not slow["ready"]:
                warming.add(models["worker"]["pid"])
    # (one worker done already is no matter; all of them, and the stop tests nothing: make the warm-up longer)
    assert warming, "every worker had warmed 'slow' up before it was seen: the stop would find no load under way"
    print(f"every worker found 'slow' {time.monotonic() - saved:.2f}s after it was saved; {len(warming)} seen warming")
    if stop == "SIGHUP":  # graceful reload: the old workers exit, new ones are forked
        fleet.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 60
        while fleet.log().count("Booting worker") < 2 * WORKERS:
            assert time.monotonic() < deadline, fleet.log()
            time.sleep(0.1)
        fleet.wait_ready()
    assert_clean_shutdown(fleet, fleet.stop())


def test_a_worker_started_on_a_damaged_control_file_serves_nothing_until_it_reads_it(fleet_factory: Any) -> None:
    """/ready answering 503 does not take a worker out of gunicorn's accept loop: a worker started (here by
    SIGTTIN; a crash restart or max-requests recycling likewise) while the control file cannot be parsed
    refuses requests itself (503), or it would serve its models' own config: the canary the fleet killed."""
    fleet: Fleet = fleet_factory("eager-hook")
    for action, body in (("switch", {"version": 1}), ("canary", {"version": 2, "percent": 100}), ("kill", {})):
        status, answer = fleet.call(f"/-/inprocserve/models/scale/{action}", body, ADMIN)
        assert status == 200, answer
    first_generation = fleet.worker_pids(at_least_revision=answer["revision"])
    control = fleet.repository / ".inprocserve-control.json"
    good = control.read_bytes()
    control.write_bytes(good[:40])  # a hand edit, or a sync caught half-way
    fleet.process.send_signal(signal.SIGTTIN)  # gunicorn adds a worker

    refused = 0
    deadline = time.monotonic() + 60
    while refused < 3:  # until the new worker has taken requests
        assert time.monotonic() < deadline, fleet.log()
        status, answer = fleet.call("/score", {"rows": ROW}, {"X-User-Id": "alice"})
        if status == 200:
            assert answer["version"] == 1 and answer["pid"] in first_generation, answer
        else:
            assert (status, answer["error"]) == (503, "unavailable"), answer
            assert "control file .inprocserve-control.json is not valid JSON" in answer["message"], answer
            refused += 1

    control.write_bytes(good)
    repaired = time.monotonic()
    deadline = repaired + FOLLOW_DEADLINE_S
    while True:  # until the new worker answers, with the kill switch on
        assert time.monotonic() < deadline, f"the new worker still refused requests after the repair\n{fleet.log()}"
        status, answer = fleet.call("/score", {"rows": ROW}, {"X-User-Id": "alice"})
        if status != 200:  # (the new worker, until its next read of the repaired file)
            assert status == 503, answer
            continue
        assert answer["version"] == 1, answer
        if answer["pid"] not in first_generation:
            break
    print(f"the new worker served {time.monotonic() - repaired:.2f}s after the control file was repaired")
    assert_clean_shutdown(fleet, fleet.stop())


# ~7 gunicorn workers boot, each importing onnxruntime and warming its versions: 120 s (the suite's timeout) was the
# whole run on a 2-core host beside two busy processes
@pytest.mark.timeout(300)
def test_recycled_workers_serve_the_version_the_gate_named_and_follow_a_compatible_one(fleet_factory: Any) -> None:
    """A deploy drops version 2, which takes 5 features where version 1 takes 4, into a fleet serving 1 with
    no stable version named. The workers hold it back, and one names version 1 stable in the control file,
    marked as the gate's; workers recycled by ``--max-requests`` afterwards start on 1 (they served 2: the
    callers' 4-feature rows got a 4xx from every new worker). A compatible version 3 then moves every
    worker, old and new, to 3: the gate's name follows it."""
    fleet: Fleet = fleet_factory(
        "eager-hook", "--workers", "3", "--max-requests", "12", poll_interval_s=0.1, versions=(1,)
    )
    control = fleet.repository / ".inprocserve-control.json"

    def answers(count: int) -> list[tuple[int, Any, int | None]]:
        """``count`` requests with version 1's shape: (status, version or error answer, pid)."""
        seen = []
        for i in range(count):
            status, answer = fleet.call("/score", {"rows": ROW}, {"X-User-Id": f"user-{i}"})
            if status == 200:
                assert answer["y"] == [[float(answer["version"])] * 4], answer
                seen.append((status, answer["version"], answer["pid"]))
            else:
                seen.append((status, answer, None))
        return seen

    def gate_names(version: int) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        while True:
            entry = json.loads(control.read_text())["models"]["scale"] if control.exists() else {}
            if entry.get("stable") == version and entry.get("stable_by_gate") == version:
                return dict(entry)
            assert time.monotonic() < deadline, f"the control file names {entry}, not {version} by the gate"
            time.sleep(0.1)

    def answers_until(done: Any, version: int) -> list[tuple[int, Any, int | None]]:
        """Requests with version 1's shape until ``done(pids that answered)``, each answered by ``version``.

        Until a condition, not a count: each worker recycled boots a worker that imports onnxruntime and warms
        its versions, seconds apiece on a loaded 2-core host, and a fixed count of requests (120 here took more
        than the test's whole timeout beside two busy processes) recycled far more workers than the test needs."""
        seen: list[tuple[int, Any, int | None]] = []
        deadline = time.monotonic() + 90
        while not done({pid for _, _, pid in seen}):
            assert time.monotonic() < deadline, f"{seen[-24:]}\n{fleet.log()}"
            seen += answers(12)
            assert all(status == 200 and v == version for status, v, _ in seen), [
                a for a in seen if a[:2] != (200, version)
            ]
        return seen

    before = answers(6)
    assert {version for _, version, _ in before} == {1}, before
    old_pids = {pid for _, _, pid in before}

    save_model(build_scale_model(2.0, features=5), fleet.repository, "scale", 2)  # incompatible: 5 features
    gate_names(1)
    # Until every worker has read the file: one recycled after version 2 appeared and before the name was written
    # (the fleet's start-up calls count towards --max-requests too) serves 2 until it reads the file (documented;
    # CI caught one, 400 from version 2, once a sleep in place of this wait was dropped). The workers started
    # after these, which only the file holds, are the test.
    revision = json.loads(control.read_text())["revision"]
    old_pids |= fleet.worker_pids(at_least_revision=revision)
    answers_until(lambda pids: len(pids - old_pids) >= 3, 1)  # 3 workers recycled every 12 requests
    assert len(re.findall(r"Autorestarting worker after current request", fleet.log())) >= 3

    save_model(build_scale_model(3.0), fleet.repository, "scale", 3)  # compatible with 1: the name advances
    gate_names(3)
    # Each running worker loads and warms 3 once its poll finds it (or the file names it), and a worker whose boot
    # read the file before the name advanced serves 1 until it follows (its control interval plus the load of 3:
    # documented): seconds each on a loaded host, so the wait is the other waits' 60 s. Meanwhile every answer is 1
    # or 3, and a worker that answered 3 never answers 1 again. (A round of 12 answers all 3 was taken for "every
    # worker follows": 12 requests need not reach every worker, and one still booting answered 1 after such a
    # round on a loaded host.)
    on_3: set[int] = set()
    deadline = time.monotonic() + 60
    while len(on_3) < 4:  # old and recycled workers alike
        assert time.monotonic() < deadline, f"only workers {on_3} answered 3\n{fleet.log()}"
        for status, version, pid in answers(12):
            assert status == 200 and version in (1, 3), (status, version)
            if version == 3:
                on_3.add(pid)  # type: ignore[arg-type]
            else:
                assert pid not in on_3, f"worker {pid} answered 1 after it had answered 3"
    # Workers recycled from now on booted long after the name advanced: the file alone starts them on 3.
    answers_until(lambda pids: len(pids - on_3) >= 2, 3)
    assert_clean_shutdown(fleet, fleet.stop())
