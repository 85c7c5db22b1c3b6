"""Fleet control hardening: a revision applied in part is retried, rollback after a first switch, whole
documents followed, a fork-safe bounded control-file lock, the CLI's errors, and no paths in 404s.

Real servers, real ONNX models, real files, a real fork and real CLI subprocesses.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
import inprocserve._registry as registry_module
from inprocserve import ConfigurationError, ModelConfig, RolloutConfig, VersionPolicy, web
from inprocserve._cli_status import healthy
from inprocserve._control import CONTROL_FILENAME, Control, ControlFile, ControlFileUnavailableError, ModelControl
from inprocserve.testing import ManualClock, build_scale_model, save_model

from .conftest import ServerFactory, race_rounds

X = np.ones((1, 4), np.float32)


def answer(server: inprocserve.Server, model: str) -> int:
    result = server.predict(model, X)
    np.testing.assert_array_equal(result["y"], X * result.version)  # version v scales by v
    return result.version


def write(repository: Path, **models: ModelControl) -> Control:
    """Write a revision as another host (or the CLI) would: straight to the file, no server involved."""
    control = ControlFile(repository)
    for name, state in models.items():
        control.set_model(name, lambda _old, state=state: state, actor="elsewhere")
    return control.read()


@pytest.fixture
def fleet(repository: Path) -> Path:
    """``alpha`` v1, ``fraud`` v1 and v2 (version v answers x * v)."""
    save_model(build_scale_model(1.0), repository, "alpha", 1)
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    return repository


def alternate_while(
    work: Callable[[int], None],
    server: inprocserve.Server,
    fleet: Path,
    states: tuple[ModelControl, ...],
    *,
    rounds: int,
    stop: threading.Event,
) -> None:
    """Write the fleet's control file through ``states`` ``rounds`` times, each applied at once, while 8
    threads run ``work(index)``; then set ``stop`` and join them."""
    threads = [threading.Thread(target=work, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(rounds):
            for state in states:
                write(fleet, fraud=state)
                server.sync_control()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


# -- 1. a revision that cannot be applied in full ---------------------------------------------------------


def test_a_revision_that_fails_for_one_model_applies_the_others_and_is_retried(
    fleet: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(fleet, control_interval_s=None)
    assert answer(server, "fraud") == 2
    save_model(build_scale_model(3.0), fleet, "alpha", 3)
    (fleet / "alpha" / "config.toml").write_text("this is [not toml\n")  # loading alpha v3 now raises
    written = write(fleet, alpha=ModelControl(stable=3), fraud=ModelControl(stable=1))
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        for _ in range(3):
            assert server.sync_control() == written.revision
    assert answer(server, "fraud") == 1  # the model that could be applied was
    error = server.status()["control"]["error"]
    assert error is not None and "applied only in part" in error and "alpha" in error and "fraud" not in error
    assert not healthy(server.status())
    logged = [r for r in caplog.records if "not applied here" in r.getMessage()]
    assert len(logged) == 1  # once per distinct error, not on every retry
    (fleet / "alpha" / "config.toml").unlink()  # fixed: the next sync applies what was left
    assert server.sync_control() == written.revision
    assert answer(server, "alpha") == 3
    assert server.status()["control"]["error"] is None
    assert server.status()["models"]["alpha"]["stable_version"] == 3


def test_a_version_not_in_this_hosts_copy_yet_is_loaded_once_it_arrives(
    fleet: Path, make_server: ServerFactory
) -> None:
    """A synced copy may get the control file before the model folder it names."""
    server = make_server(fleet, control_interval_s=None)
    write(fleet, fraud=ModelControl(stable=3))
    server.sync_control()
    assert answer(server, "fraud") == 2  # nothing to switch to yet
    assert "version 3 is not in the repository" in server.status()["control"]["error"]
    save_model(build_scale_model(3.0), fleet, "fraud", 3)
    server.sync_control()
    assert answer(server, "fraud") == 3
    assert server.status()["control"]["error"] is None


def test_a_worker_started_before_the_version_its_control_file_names_arrives_follows_once_it_does(
    fleet: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker (re)started on a host whose synced copy has the control file but not yet the model folder."""
    write(fleet, fraud=ModelControl(stable=3))
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        server = make_server(fleet, control_interval_s=None)
    assert answer(server, "fraud") == 2  # nothing to switch to yet
    assert "version 3 is not in the repository" in server.status()["control"]["error"]
    assert any("not applied here" in r.getMessage() for r in caplog.records)
    save_model(build_scale_model(3.0), fleet, "fraud", 3)
    server.sync_control()
    assert answer(server, "fraud") == 3
    assert server.status()["control"]["error"] is None


def test_a_strict_worker_refuses_to_start_without_the_version_its_control_file_names(
    fleet: Path, make_server: ServerFactory
) -> None:
    write(fleet, fraud=ModelControl(stable=3))
    with pytest.raises(inprocserve.ModelLoadError, match="model 'fraud': version 3 is not in the repository"):
        make_server(fleet, control_interval_s=None, strict=True)


def test_a_worker_starts_with_one_scan_whatever_its_control_file_names_elsewhere(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Models of other hosts, and a previous stable version pruned here, have nothing to serve now: a start
    scanned the repository again for each of them, under the lifecycle lock, and warned of each prune."""
    others = {f"other{number}": ModelControl(stable=2, previous_stable=1) for number in range(20)}
    write(fleet, fraud=ModelControl(stable=2, previous_stable=7), **others)
    real_scan = registry_module.scan_repository
    scans = []

    def counted(*args: object, **kwargs: object) -> object:
        scans.append(args)
        return real_scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_module, "scan_repository", counted)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server = make_server(fleet, control_interval_s=None)
    assert len(scans) == 1
    assert answer(server, "fraud") == 2 and server.status()["control"]["error"] is None
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_named_version_that_fails_to_load_is_retried_only_once_its_files_change(
    fleet: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    broken = fleet / "fraud" / "3" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not onnx yet: still being copied")
    server = make_server(
        fleet, config=ModelConfig(version_policy=VersionPolicy.specific(1, 2)), control_interval_s=None
    )
    write(fleet, fraud=ModelControl(stable=3))
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        for _ in range(3):
            server.sync_control()
    attempts = [r for r in caplog.records if r.getMessage().startswith("model 'fraud' version 3 failed to load")]
    assert len(attempts) == 1  # not loaded again on every sync while its files stay the same
    assert "version 3 failed to load: model 'fraud'" not in attempts[0].getMessage()  # (named once)
    assert len([r for r in caplog.records if "not applied here" in r.getMessage()]) == 1  # nor logged again
    assert answer(server, "fraud") == 2
    assert "version 3 failed to load" in server.status()["control"]["error"]
    save_model(build_scale_model(3.0), fleet, "fraud", 3)  # the copy completes
    server.sync_control()
    assert answer(server, "fraud") == 3
    assert server.status()["control"]["error"] is None


def test_a_reload_whose_rescan_fails_still_applies_the_switch_and_rescans_later(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server(fleet, control_interval_s=None)
    save_model(build_scale_model(3.0), fleet, "alpha", 3)  # only a re-scan finds it
    write(fleet, fraud=ModelControl(stable=1, kill=True))
    ControlFile(fleet).bump_reload(actor="elsewhere")
    real_scan = registry_module.scan_repository
    calls = {"failed": 0}

    def one_hiccup(*args: object, **kwargs: object) -> object:
        # The stand-in for one NFS hiccup (ESTALE, EIO) during the re-scan: the first scan fails.
        if calls["failed"] == 0:
            calls["failed"] += 1
            raise inprocserve.ConfigurationError("model repository is not a directory (stale file handle)")
        return real_scan(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(registry_module, "scan_repository", one_hiccup)
    server.sync_control()
    assert calls["failed"] == 1
    assert answer(server, "fraud") == 1  # the kill and the switch written with the reload are applied
    assert server.predict("fraud", X).reason == "kill switch is on (control file)"
    assert "reload" in server.status()["control"]["error"]
    assert answer(server, "alpha") == 1  # not re-scanned yet
    server.sync_control()  # same file: the re-scan is retried
    assert answer(server, "alpha") == 3
    assert server.status()["control"]["error"] is None


def test_a_served_version_gone_from_the_repository_keeps_serving_and_is_reported(
    fleet: Path, make_server: ServerFactory
) -> None:
    """Falling back to the latest version would undo the fleet's switch, kill switch on or not."""
    server = make_server(fleet, control_interval_s=None)
    server.switch("fraud", 1)
    server.kill("fraud")
    shutil.rmtree(fleet / "fraud" / "1")  # a clean-up, a bad sync
    server.refresh()  # what the hot-reload poller does
    assert answer(server, "fraud") == 1
    error = server.status()["control"]["error"]
    assert "applied only in part" not in error and "retried" not in error  # (nothing is retried)
    assert "control revision 2 serves model 'fraud' version 1 from memory: not in the repository any more" in error
    fresh = make_server(fleet, control_interval_s=None)  # a worker started now cannot load it: it says so too
    assert "model 'fraud': version 1 is not in the repository (yet)" in fresh.status()["control"]["error"]

    server.switch("fraud", 2)  # the operator moves the fleet on
    server.refresh()
    assert answer(server, "fraud") == 2
    assert server.status()["control"]["error"] is None


def test_a_version_gone_from_the_repository_is_not_written_as_the_fleets(
    fleet: Path, make_server: ServerFactory
) -> None:
    """Still loaded here, it would serve from memory, but every worker that starts could not load it and would
    serve another version: switch, rollback, canary, promote and the admin endpoints refuse it, as the CLI does."""
    server = make_server(fleet, config=ModelConfig(version_policy=VersionPolicy.all()), control_interval_s=None)
    server.switch("fraud", 1)
    server.switch("fraud", 2)  # 1 is the previous stable version, for a rollback
    shutil.rmtree(fleet / "fraud" / "1")  # a clean-up, a bad sync: still loaded here
    before = ControlFile(fleet).read()
    gone = r"model 'fraud': version 1 is not in the repository \(versions: 2\); nothing was written"
    with pytest.raises(inprocserve.ModelNotFoundError, match=gone):
        server.rollback("fraud")
    with pytest.raises(inprocserve.ModelNotFoundError, match=gone):
        server.switch("fraud", 1)
    with pytest.raises(inprocserve.ModelNotFoundError, match=gone):
        server.set_canary("fraud", 1, percent=10.0)
    with pytest.raises(inprocserve.ModelNotFoundError, match=gone):
        server.promote("fraud", 1, min_samples=0)
    for action, body in (("rollback", None), ("switch", {"version": 1}), ("canary", {"version": 1, "percent": 5})):
        assert web.admin_answer(server, action, "fraud", body, actor="ops").status == 404
    assert ControlFile(fleet).read() == before
    assert answer(server, "fraud") == 2
    server.set_canary("fraud", None, percent=0)  # what is in the repository is still written
    assert ControlFile(fleet).read().revision == before.revision + 1


def test_a_kill_switch_does_not_wait_for_a_hot_reload_of_another_model(fleet: Path, make_server: ServerFactory) -> None:
    """The poller holds the lifecycle lock while it loads a new model (here a remote version whose server
    takes the connection and never answers; a large warm-up likewise): a revision that needs no load must
    not wait for it (docs/operations.md: control_interval_s plus the load time of a version not loaded)."""
    write(fleet, fraud=ModelControl(stable=1, previous_stable=2, canary_version=2, canary_percent=100.0))
    server = make_server(fleet, poll_interval_s=0.1, control_interval_s=0.1)
    assert server.predict("fraud", X, context={"user_id": "u"}).version == 2  # the canary
    with socket.create_server(("127.0.0.1", 0)) as silent:
        (fleet / "slow" / "1").mkdir(parents=True)
        (fleet / "slow" / "1" / "remote.toml").write_text(
            f'url = "http://127.0.0.1:{silent.getsockname()[1]}"\nmodel = "slow"\ntimeout_s = 20.0\n'
        )
        silent.settimeout(30)
        connection, _ = silent.accept()  # the poller is loading it, and waits for an answer
        with connection:
            write(
                fleet,
                fraud=ModelControl(stable=1, previous_stable=2, canary_version=2, canary_percent=100.0, kill=True),
            )
            written = time.monotonic()
            while server.predict("fraud", X, context={"user_id": "u"}).version != 1:
                assert time.monotonic() - written < 3.0, "the kill switch waited for the hot reload"
                time.sleep(0.01)
            assert "slow" not in server.models  # (still loading: the lock was held all along)


def test_a_kill_switch_does_not_wait_for_a_hot_reload_when_the_revision_names_another_hosts_model(
    fleet: Path, make_server: ServerFactory
) -> None:
    """A control file shared by hosts names every host's models: one with nothing loaded here has nothing to
    load before the revision routes (another host's; its part is left to the retry), so a kill switch written
    with it is followed at once, as above."""
    server = make_server(fleet, poll_interval_s=0.1, control_interval_s=0.1)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        (fleet / "slow" / "1").mkdir(parents=True)
        (fleet / "slow" / "1" / "remote.toml").write_text(
            f'url = "http://127.0.0.1:{silent.getsockname()[1]}"\nmodel = "slow"\ntimeout_s = 20.0\n'
        )
        silent.settimeout(30)
        connection, _ = silent.accept()  # the poller is loading it, and waits for an answer
        with connection:
            write(fleet, elsewhere=ModelControl(stable=3), fraud=ModelControl(kill=True))
            written = time.monotonic()
            while server.predict("fraud", X).reason != "kill switch is on (control file)":
                assert time.monotonic() - written < 3.0, "the kill switch waited for the hot reload"
                time.sleep(0.01)
            assert "slow" not in server.models  # (still loading: the lock was held all along)
    assert server.status()["control"]["error"] is None


def test_what_a_revision_followed_at_once_leaves_to_load_is_tried_at_once_even_during_a_retry(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watcher's retry of a failing revision (under the lifecycle lock) backs off when it ends; a revision
    followed at once meanwhile asked for a try now (its previous stable version, for rollbacks, to load), and
    the retry's back-off must not put it off (up to 60 s)."""
    clock = ManualClock()
    server = make_server(fleet, control_interval_s=None, clock=clock)  # fraud: v2 loaded, not v1
    write(fleet, fraud=ModelControl(stable=3))  # not in the repository: retried with a back-off
    assert server.sync_control() == 1 and server.status()["control"]["error"] is not None
    scan, paused = registry_module.scan_repository, []

    def then_another_host(*args: Any, **kwargs: Any) -> Any:
        if not paused:  # the retry, under the lifecycle lock: a switch back to v2 is followed at once meanwhile
            paused.append(True)
            write(fleet, fraud=ModelControl(stable=2, previous_stable=1))
            syncing = threading.Thread(target=server.sync_control)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive() and answer(server, "fraud") == 2
        return scan(*args, **kwargs)

    monkeypatch.setattr(registry_module, "scan_repository", then_another_host)
    clock.advance(60.0)
    server._operations.sync_control(retry_now=False)  # the watcher's retry
    assert paused and 1 not in server.models["fraud"]
    server._operations.sync_control(retry_now=False)  # its next interval: no back-off for the new revision
    assert server.models["fraud"] == [1, 2]
    assert server.status()["control"]["error"] is None


def test_a_writer_does_not_undo_a_newer_revision_followed_at_once_before_it_follows_its_own(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill() writes its revision, releases the file's lock, then follows it; in between, another host writes
    a newer revision, which the watcher (or the admin /sync) follows at once under the routing lock alone:
    kill() must not put its older revision back in force (until the next interval)."""
    server = make_server(fleet, config=ModelConfig(version_policy=VersionPolicy.all()), control_interval_s=None)
    assert answer(server, "fraud") == 2
    set_model = ControlFile.set_model

    def then_another_host(self: ControlFile, name: str, change: Any, *, actor: str | None = None) -> Control:
        written = set_model(self, name, change, actor=actor)
        if actor is None:  # this worker's kill(), its file lock released
            write(fleet, fraud=ModelControl(stable=1))
            syncing = threading.Thread(target=server.sync_control)  # the watcher: at once (v1 is loaded)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive() and answer(server, "fraud") == 1
        return written

    monkeypatch.setattr(ControlFile, "set_model", then_another_host)
    server.kill("alpha")
    assert server.status()["control"]["revision"] == 2
    assert answer(server, "fraud") == 1
    assert server.predict("alpha", X).reason == "kill switch is on (control file)"


def test_a_sync_does_not_undo_a_newer_revision_followed_at_once_between_its_read_and_its_adopt(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher reads a revision that needs a load, under the lifecycle lock; before it adopts it, an admin
    /sync follows a newer one that needs none, at once: the watcher must not put the older one back in force,
    nor warn that the file went back (it did not)."""
    server = make_server(fleet, control_interval_s=None)  # fraud: v2 loaded (the latest), not v1
    write(fleet, fraud=ModelControl(stable=1))  # v1 to load: not followed at once
    read, watcher, paused = ControlFile.read, threading.current_thread(), []

    def then_another_host(self: ControlFile) -> Control:
        control = read(self)
        if threading.current_thread() is watcher and server._registry.lock._is_owned() and not paused:
            paused.append(control.revision)
            write(fleet, fraud=ModelControl(stable=2, kill=True))
            syncing = threading.Thread(target=server.sync_control)  # the admin /sync: at once (v2 is loaded)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive() and server.status()["control"]["revision"] == 2
        return control

    monkeypatch.setattr(ControlFile, "read", then_another_host)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        assert server.sync_control() == 2
    assert paused == [1]
    assert server.predict("fraud", X).reason == "kill switch is on (control file)"
    assert answer(server, "fraud") == 2
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def _paused_reads(
    monkeypatch: pytest.MonkeyPatch, paused: Callable[[], bool]
) -> tuple[queue.Queue[None], queue.Queue[None]]:
    """Pause each read of the control file for which ``paused()`` is true, once it has read the file: it puts
    to the first queue, then waits for the second (a slow NFS read, which a test cannot otherwise produce)."""
    read, started, proceed = ControlFile.read, queue.Queue[None](), queue.Queue[None]()

    def slow(self: ControlFile) -> Control:
        control = read(self)
        if paused():
            started.put(None)
            proceed.get(timeout=30)
        return control

    monkeypatch.setattr(ControlFile, "read", slow)
    return started, proceed


def _held_up(action: Callable[[], object], proceed: queue.Queue[None]) -> bool:
    """Whether ``action`` (in a thread) is still waiting after 3 s, while a read is paused; the read is then let
    go, and ``action`` finishes."""
    acting = threading.Thread(target=action)
    acting.start()
    acting.join(3.0)
    held_up = acting.is_alive()
    proceed.put(None)
    acting.join(10)
    assert not acting.is_alive()
    return held_up


def test_a_slow_read_of_the_control_file_by_a_sync_holds_up_no_publish(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sync (the watcher, the admin /sync) that follows a revision at once reads the file (file I/O, on NFS
    for a fleet) without the routing lock, which a hot reload takes to swap in the version it loaded (so do
    writers and close()): a slow read must hold up none of them. The pause in the read is injected."""
    server = make_server(fleet, control_interval_s=None)
    write(fleet, fraud=ModelControl(kill=True))  # another host; nothing to load: followed at once
    syncing = threading.Thread(target=server.sync_control)  # the admin /sync
    started, proceed = _paused_reads(monkeypatch, lambda: threading.current_thread() is syncing)

    def hot_reload() -> None:  # alpha v1's file replaced by a rename (a new inode): loaded again, swapped in
        save_model(build_scale_model(1.0), fleet.parent / "new", "alpha", 1)
        os.replace(fleet.parent / "new" / "alpha" / "1" / "model.onnx", fleet / "alpha" / "1" / "model.onnx")
        server.refresh()

    syncing.start()
    reads = 0
    while syncing.is_alive():
        try:
            started.get(timeout=0.05)
        except queue.Empty:
            continue
        reads += 1
        assert not _held_up(hot_reload, proceed), f"a hot reload waited for the sync's read {reads}"
    assert reads >= 1
    assert server.status()["control"]["revision"] == 1
    assert server.predict("fraud", X).reason == "kill switch is on (control file)"


def test_a_slow_read_of_the_control_file_by_a_writer_does_not_hold_up_a_revision_followed_at_once(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill() reads the file again after writing when a newer revision was followed at once meanwhile (so as
    not to undo it); it holds the lifecycle lock, not the routing lock, while it reads: a kill switch another
    host writes meanwhile is followed at once all the same. The pause in the read is injected."""
    server = make_server(fleet, config=ModelConfig(version_policy=VersionPolicy.all()), control_interval_s=None)
    set_model, armed = ControlFile.set_model, threading.Event()
    killing = threading.Thread(target=server.kill, args=("alpha",))

    def then_another_host(self: ControlFile, name: str, change: Any, *, actor: str | None = None) -> Control:
        written = set_model(self, name, change, actor=actor)
        if actor is None:  # this worker's kill(), its file lock released: a newer revision is followed at once
            write(fleet, fraud=ModelControl(stable=1))
            syncing = threading.Thread(target=server.sync_control)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive() and server.status()["control"]["revision"] == 2
            armed.set()  # kill()'s next read is slow
        return written

    def paused() -> bool:
        if threading.current_thread() is not killing or not armed.is_set():
            return False
        armed.clear()
        return True

    monkeypatch.setattr(ControlFile, "set_model", then_another_host)
    started, proceed = _paused_reads(monkeypatch, paused)
    killing.start()
    started.get(timeout=10)

    def another_kill_switch() -> None:
        write(fleet, fraud=ModelControl(stable=1, kill=True))
        assert server.sync_control() == 3

    assert not _held_up(another_kill_switch, proceed), "a revision followed at once waited for a writer's read"
    killing.join(10)
    assert server.status()["control"]["revision"] == 3
    assert server.predict("alpha", X).reason == "kill switch is on (control file)"
    assert server.predict("fraud", X).reason == "kill switch is on (control file)"


def test_a_sync_does_not_undo_a_revision_a_writer_of_this_process_follows_between_its_read_and_the_lock(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A sync reads the file, then takes the routing lock to follow what it read at once; kill() in this process
    may write and follow a newer revision in between (the read is not under that lock): the sync must not put
    the older one back in force, nor warn that the file went back. The pause after the read is injected."""
    server = make_server(fleet, control_interval_s=None)
    write(fleet, fraud=ModelControl(kill=True))  # another host; nothing to load: followed at once
    syncing, reads = threading.Thread(target=server.sync_control), []

    def first_read_of_the_sync() -> bool:
        reads.append(threading.current_thread())
        return reads.count(syncing) == 1 and reads[-1] is syncing

    started, proceed = _paused_reads(monkeypatch, first_read_of_the_sync)
    syncing.start()
    started.get(timeout=10)  # the sync read revision 1
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.kill("alpha")  # revision 2, followed here
        proceed.put(None)
        syncing.join(10)
    assert not syncing.is_alive()
    assert server.status()["control"]["revision"] == 2
    assert server.predict("alpha", X).reason == "kill switch is on (control file)"
    assert server.predict("fraud", X).reason == "kill switch is on (control file)"
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_writer_follows_what_it_wrote_over_a_file_restored_from_a_backup_that_cannot_be_read_again(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another host restored an older backup of the control file, which this worker does not follow yet: its
    kill() writes the backup's revision + 1, lower than the revision it follows. Were the file read again
    and the read failed (a tool rewriting it in place; the failure is injected), judging by revisions would
    keep the revision followed, and the worker would serve without its own kill switch."""
    control_file = fleet / CONTROL_FILENAME
    write(fleet, fraud=ModelControl(stable=2))
    backup = control_file.read_bytes()  # revision 1
    for kill in (True, False, True):
        write(fleet, alpha=ModelControl(kill=kill))  # revisions 2 to 4
    server = make_server(fleet, control_interval_s=None)
    assert server.status()["control"]["revision"] == 4
    control_file.write_bytes(backup)  # another host restores the backup; no watcher here to see it yet
    set_model, read, unreadable = ControlFile.set_model, ControlFile.read, threading.Event()

    def then_unreadable(self: ControlFile, name: str, change: Any, *, actor: str | None = None) -> Control:
        written = set_model(self, name, change, actor=actor)
        unreadable.set()
        return written

    def half_written(self: ControlFile) -> Control:
        if unreadable.is_set():
            raise ConfigurationError(f"control file {self.path} is not valid JSON: caught half-way")
        return read(self)

    monkeypatch.setattr(ControlFile, "set_model", then_unreadable)
    monkeypatch.setattr(ControlFile, "read", half_written)
    server.kill("fraud")
    unreadable.clear()
    assert server.status()["control"]["revision"] == 2
    assert server.predict("fraud", X).reason == "kill switch is on (control file)"
    assert server.predict("alpha", X).reason != "kill switch is on (control file)"  # the backup's state


def test_a_retry_does_not_report_its_problem_under_a_revision_followed_at_once_meanwhile(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The watcher's retry of a revision that names a version not in the repository scans it, under the
    lifecycle lock; a revision that needs nothing is followed at once meanwhile: the retry's problem belongs
    to the old revision, and must not show in status as the new one's, applied only in part (nor may the new
    one be logged as applied in full before it is tried)."""
    clock = ManualClock()
    server = make_server(fleet, control_interval_s=None, clock=clock)
    write(fleet, fraud=ModelControl(stable=3))  # not in the repository: retried with a back-off
    assert server.sync_control() == 1 and "version 3" in server.status()["control"]["error"]
    scan, paused = registry_module.scan_repository, []

    def then_another_host(*args: Any, **kwargs: Any) -> Any:
        if not paused:  # the retry, under the lifecycle lock: a switch back to v2 is followed at once meanwhile
            paused.append(True)
            write(fleet, fraud=ModelControl(stable=2))
            syncing = threading.Thread(target=server.sync_control)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive() and answer(server, "fraud") == 2
        return scan(*args, **kwargs)

    monkeypatch.setattr(registry_module, "scan_repository", then_another_host)
    clock.advance(60.0)
    with caplog.at_level(logging.INFO, logger="inprocserve"):
        server._operations.sync_control(retry_now=False)  # the watcher's retry
        assert paused
        assert server.status()["control"]["error"] is None
        assert not [r for r in caplog.records if "applied in full" in r.getMessage()]  # (not tried yet)
    server._operations.sync_control(retry_now=False)  # its next interval: the new revision, applied in full
    assert server.status()["control"] == {**server.status()["control"], "revision": 2, "error": None}
    assert answer(server, "fraud") == 2


def test_a_refresh_keeps_a_version_a_revision_followed_at_once_meanwhile_keeps_for_a_rollback(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refresh chooses the versions to unload, then unloads them; a revision followed at once in between
    (under the routing lock alone) may name one as its previous stable version, which every worker keeps
    loaded for an instant rollback: it stays loaded. A pause at the unload is injected (the window is too
    short to hit otherwise)."""
    server = make_server(fleet, control_interval_s=None)  # fraud: the latest, v2
    write(fleet, fraud=ModelControl(canary_version=1, canary_percent=10.0))
    assert server.sync_control() == 1 and server.models["fraud"] == [1, 2]
    write(fleet, fraud=ModelControl())  # the canary ends (followed at once): v1 is unloaded by the next refresh
    assert server.sync_control() == 2 and server.models["fraud"] == [1, 2]
    registry, switched = server._registry, []
    retire = registry.retire

    def then_another_host(name: str, numbers: list[int], **kwargs: Any) -> None:
        if name == "fraud" and not switched:  # a switch from v1 to v2, written elsewhere: nothing to load here
            switched.append(numbers)
            write(fleet, fraud=ModelControl(stable=2, previous_stable=1))
            syncing = threading.Thread(target=server.sync_control)
            syncing.start()
            syncing.join(10)
            assert not syncing.is_alive() and server.status()["control"]["revision"] == 3
        retire(name, numbers, **kwargs)

    monkeypatch.setattr(registry, "retire", then_another_host)
    server.refresh()
    assert switched == [[1]]
    assert server.models["fraud"] == [1, 2]  # the rollback target: loaded, so a rollback is instant
    assert server.status()["control"]["error"] is None


def test_the_watcher_retries_until_the_revision_applies(fleet: Path, make_server: ServerFactory) -> None:
    server = make_server(fleet, control_interval_s=0.05)
    write(fleet, fraud=ModelControl(stable=3))
    deadline = time.monotonic() + 30  # a hang detector, not a timing assertion
    while server.status()["control"]["error"] is None:
        assert time.monotonic() < deadline, "the watcher never reported the missing version"
        time.sleep(0.02)
    save_model(build_scale_model(3.0), fleet, "fraud", 3)
    while answer(server, "fraud") != 3:
        assert time.monotonic() < deadline, "the watcher never retried the revision"
        time.sleep(0.02)
    while server.status()["control"]["error"] is not None:
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_the_watcher_backs_off_a_revision_that_keeps_failing(fleet: Path, make_server: ServerFactory) -> None:
    # Each try may scan the whole repository, or connect to a remote server, under the lifecycle lock.
    clock = ManualClock()
    server = make_server(fleet, control_interval_s=None, clock=clock)
    write(fleet, fraud=ModelControl(stable=3))  # not in this host's copy
    tries: list[float] = []
    apply = server._registry._apply_control

    def counted() -> list[str]:
        tries.append(clock())
        return apply()

    server._registry._apply_control = counted  # type: ignore[method-assign]
    server.sync_control()  # adopts the revision: one try
    for _ in range(40):  # the watcher's calls, 0.25 s apart, for 10 s
        server._operations.sync_control(retry_now=False)
        clock.advance(0.25)
    assert [t - tries[0] for t in tries] == [0.0, 1.0, 3.0, 7.0]  # after 1 s, then 2 s, then 4 s
    server.sync_control()  # asked for: at once
    assert len(tries) == 5


# -- 3. rollback after the first switch --------------------------------------------------------------------


@pytest.mark.parametrize(("configured", "before"), [(1, 1), (None, 3)])
def test_the_first_switch_can_be_rolled_back(
    repository: Path, make_server: ServerFactory, configured: int | None, before: int
) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "m", version)
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=configured))
    server = make_server(repository, models={"m": config}, control_interval_s=None)
    assert answer(server, "m") == before
    server.switch("m", 2)
    assert answer(server, "m") == 2
    assert server.rollback("m") == before
    assert answer(server, "m") == before
    assert server.rollback("m") == 2  # twice: back where we were


def test_the_cli_records_the_configured_version_on_the_first_switch(fleet: Path, make_server: ServerFactory) -> None:
    from inprocserve.__main__ import main

    server = make_server(fleet, control_interval_s=None)
    assert main(["switch", str(fleet), "fraud", "1"]) == 0
    assert ControlFile(fleet).read().models["fraud"].previous_stable == 2  # the latest: what answered before
    assert main(["rollback", str(fleet), "fraud"]) == 0
    server.sync_control()
    assert answer(server, "fraud") == 2


def test_a_rollback_reads_its_target_under_the_lock(fleet: Path, make_server: ServerFactory) -> None:
    """A switch written by another process after this one last read the file moves the rollback's target:
    rolling back must undo that switch, not force the version this process had seen as previous."""
    save_model(build_scale_model(3.0), fleet, "fraud", 3)
    config = ModelConfig(version_policy=VersionPolicy.all())
    server = make_server(fleet, config=config, control_interval_s=None)
    server.switch("fraud", 1)  # previous 3
    server.switch("fraud", 2)  # previous 1
    other = ControlFile(fleet)
    original_read = ControlFile.read
    reads = {"count": 0}

    def read_then_race(self: ControlFile) -> Control:
        current = original_read(self)
        reads["count"] += 1
        if reads["count"] == 1:  # the rollback's first look: another host switches right after it
            other.set_model("fraud", lambda state: replace(state, stable=3, previous_stable=2), actor="other")
        return current

    ControlFile.read = read_then_race  # type: ignore[method-assign]
    try:
        target = server.rollback("fraud")
    finally:
        ControlFile.read = original_read  # type: ignore[method-assign]
    assert target == 2  # undoes the other host's switch to 3
    assert ControlFile(fleet).read().models["fraud"].stable == 2
    assert answer(server, "fraud") == 2


# -- 4. the whole document, not its revision ---------------------------------------------------------------


def _replace_by_rename(repository: Path, document: dict[str, object]) -> None:
    temporary = repository / ".sync.tmp"
    temporary.write_text(json.dumps(document))
    temporary.replace(repository / CONTROL_FILENAME)


def test_another_document_under_the_same_revision_is_followed(
    fleet: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(fleet, control_interval_s=None)
    server.kill("fraud", actor="a host's admin endpoint")  # written to this host's copy: revision 1
    assert answer(server, "fraud") == 2 and server.status()["models"]["fraud"]["control"]["kill"] is True
    source = ControlFile(fleet).read().to_dict()  # the sync brings the source's revision 1: a switch, no kill
    source["updated_by"] = "alice@source"
    source["models"] = {"fraud": {"stable": 1, "previous_stable": 2, "kill": False}}
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        _replace_by_rename(fleet, source)
        assert server.sync_control() == 1
    assert server.status()["models"]["fraud"]["control"]["kill"] is False
    assert answer(server, "fraud") == 1
    assert any("another document under revision 1" in r.getMessage() for r in caplog.records)


def test_a_revision_that_goes_down_is_followed_with_a_warning(
    fleet: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    server = make_server(fleet, control_interval_s=None)
    server.switch("fraud", 1)
    server.kill("fraud")
    assert server.sync_control() == 2
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        (fleet / CONTROL_FILENAME).unlink()
        assert server.sync_control() == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("went back from revision 2 to 0" in message for message in warnings)
    assert answer(server, "fraud") == 2  # no override left: the latest version, no kill switch
    assert server.predict("fraud", X).reason != "kill switch is on (control file)"


def test_the_writers_own_revision_is_not_adopted_again(fleet: Path, make_server: ServerFactory) -> None:
    """What a writer wrote reads back as the same document: following it again changes nothing."""
    server = make_server(fleet, control_interval_s=None)
    server.set_canary("fraud", 1, percent=12.5)
    followed = server.status()["control"]
    assert server.sync_control() == followed["revision"]
    assert ControlFile(fleet).read() == Control.from_dict(json.loads((fleet / CONTROL_FILENAME).read_text()))
    assert server.status()["control"] == followed


# -- 5. the control-file lock ------------------------------------------------------------------------------


def test_a_fork_while_a_writer_holds_the_lock_does_not_keep_it(tmp_path: Path) -> None:
    control = ControlFile(tmp_path, lock_timeout_s=30)
    inside, release = threading.Event(), threading.Event()

    def slow(current: Control) -> Control:
        inside.set()
        release.wait(timeout=30)
        return replace(current, reload=current.reload + 1)

    writer = threading.Thread(target=lambda: control.update(slow))
    writer.start()
    assert inside.wait(timeout=30)
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # lives on, like a multiprocessing worker, until the parent is done
        os.close(write_end)
        os.read(read_end, 1)
        os._exit(0)
    os.close(read_end)
    try:
        release.set()
        writer.join(timeout=30)
        # Another process must get the lock now, while the child still lives.
        script = (
            "import sys; from inprocserve._control import ControlFile\n"
            "c = ControlFile(sys.argv[1], lock_timeout_s=20)\n"
            "print(c.bump_reload(actor='next').revision)\n"
        )
        result = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "2"
    finally:
        os.write(write_end, b"x")
        os.close(write_end)
        os.waitpid(child, 0)


def test_a_writer_gives_up_on_a_lock_held_too_long(tmp_path: Path) -> None:
    holder_script = (
        "import fcntl, os, sys\n"
        "fd = os.open(os.path.join(sys.argv[1], '.inprocserve-control.lock'), os.O_RDWR | os.O_CREAT)\n"
        "fcntl.lockf(fd, fcntl.LOCK_EX)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_script, str(tmp_path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        control = ControlFile(tmp_path, lock_timeout_s=0.3)
        with pytest.raises(ControlFileUnavailableError, match=r"\.inprocserve-control\.lock is held by another"):
            control.bump_reload()
        assert isinstance(ControlFileUnavailableError("x"), inprocserve.ConfigurationError)
        assert control.read().revision == 0  # nothing written
    finally:
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.close()
        holder.wait(timeout=60)
        holder.stdout.close()
    assert ControlFile(tmp_path).bump_reload().revision == 1


# -- 6. the command line -----------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inprocserve", *args], capture_output=True, text=True, timeout=120, check=False
    )


def test_a_control_file_that_cannot_be_written_is_exit_status_2_with_one_line(fleet: Path) -> None:
    (fleet / ".inprocserve-control.lock").mkdir()  # any OSError on the lock: EACCES, EROFS, ESTALE ...
    result = _cli("switch", str(fleet), "fraud", "1")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: control-file lock ")
    assert not (fleet / CONTROL_FILENAME).exists()


def test_a_rollback_to_a_version_removed_from_the_repository_is_refused(fleet: Path) -> None:
    """As a switch to it is: written, it would send every worker to the latest version instead."""
    save_model(build_scale_model(3.0), fleet, "fraud", 3)
    assert _cli("switch", str(fleet), "fraud", "1").returncode == 0
    assert _cli("switch", str(fleet), "fraud", "3").returncode == 0  # previous stable: 1
    shutil.rmtree(fleet / "fraud" / "1")
    result = _cli("rollback", str(fleet), "fraud")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "the version to roll back to, 1, is not in the repository (versions: 2, 3)" in result.stderr
    assert ControlFile(fleet).read().models["fraud"] == ModelControl(stable=3, previous_stable=1)  # unchanged


def test_a_linked_control_file_is_followed_and_never_written(fleet: Path, make_server: ServerFactory) -> None:
    """A control file managed elsewhere (a ConfigMap's link): a write would replace the link with a file,
    and the fleet would stop following the link's target without a word."""
    managed = fleet.parent / "configmap"
    managed.mkdir()
    (managed / CONTROL_FILENAME).write_text(json.dumps({"revision": 1, "models": {"fraud": {"stable": 2}}}))
    (fleet / CONTROL_FILENAME).symlink_to(managed / CONTROL_FILENAME)
    server = make_server(fleet, control_interval_s=None)
    with pytest.raises(ControlFileUnavailableError, match=r"is a symbolic link .* managed elsewhere"):
        server.kill("fraud")
    result = _cli("switch", str(fleet), "fraud", "1")
    assert result.returncode == 2 and "is a symbolic link" in result.stderr
    assert (fleet / CONTROL_FILENAME).is_symlink()
    (managed / CONTROL_FILENAME).write_text(json.dumps({"revision": 2, "models": {"fraud": {"stable": 1}}}))
    assert server.sync_control() == 2
    assert answer(server, "fraud") == 1


def test_a_linked_control_file_whose_target_is_gone_keeps_the_fleet_state(
    fleet: Path, make_server: ServerFactory
) -> None:
    """The ConfigMap (or share) the link points into is not mounted: the file cannot be read, it is not absent.
    Read as absent it was revision 0 on every worker: the kill switch and the canary were silently dropped."""
    managed = fleet.parent / "configmap"
    managed.mkdir()
    document = {
        "revision": 4,
        "models": {"fraud": {"stable": 1, "kill": True, "canary_version": 2, "canary_percent": 100}},
    }
    (managed / CONTROL_FILENAME).write_text(json.dumps(document))
    (fleet / CONTROL_FILENAME).symlink_to(managed / CONTROL_FILENAME)
    server = make_server(fleet, control_interval_s=60)
    assert answer(server, "fraud") == 1  # killed: the stable version, not the canary (nor the latest)
    shutil.rmtree(managed)  # unmounted
    assert server.sync_control() == 4
    assert answer(server, "fraud") == 1
    error = server.status()["control"]["error"]
    assert error is not None and "is a symbolic link to a file that does not exist" in error
    starting = make_server(fleet, control_interval_s=60)  # a worker started meanwhile fails closed
    with pytest.raises(inprocserve.ControlStateUnknownError, match="symbolic link to a file that does not exist"):
        answer(starting, "fraud")


def test_a_repository_folder_briefly_gone_keeps_the_fleet_state(fleet: Path, make_server: ServerFactory) -> None:
    """A release swapped in by two renames (or a share's hiccup): while the folder is not there, its control
    file cannot be read; it is not absent. Read as absent, it was revision 0 on every worker: the kill switch
    and the switch were dropped (the latest version served) until the folder came back."""
    write(fleet, fraud=ModelControl(stable=1, previous_stable=2, kill=True))
    server = make_server(fleet, control_interval_s=60)
    assert answer(server, "fraud") == 1
    away = fleet.parent / "models.old"
    fleet.rename(away)  # the old release out; the new one not in yet
    try:
        assert server.sync_control() == 1
        assert answer(server, "fraud") == 1
        assert server.status()["models"]["fraud"]["control"]["kill"] is True
        error = server.status()["control"]["error"]
        assert error is not None and "the repository folder is not there" in error
        with pytest.raises(ControlFileUnavailableError, match="the repository folder is not there"):
            ControlFile(fleet).read()  # as the CLI's status, validate and the plug-ins' check read it
    finally:
        away.rename(fleet)
    assert server.sync_control() == 1
    assert server.status()["control"]["error"] is None
    assert answer(server, "fraud") == 1


def test_a_pipe_at_the_control_files_place_blocks_no_reader_or_writer(fleet: Path, make_server: ServerFactory) -> None:
    """A named pipe where the control file belongs (a deploy tool's, or a mistake): a plain open() waits for a
    writer that never comes. The watcher stopped following, every admin change hung holding the lifecycle lock
    and the control file's lock, and a new worker's Server() never returned."""
    write(fleet, fraud=ModelControl(stable=1, previous_stable=2, kill=True))
    server = make_server(fleet, control_interval_s=60)
    (fleet / CONTROL_FILENAME).unlink()
    os.mkfifo(fleet / CONTROL_FILENAME)
    outcomes: queue.Queue[tuple[str, object]] = queue.Queue()

    def attempt(name: str, call: Callable[[], object]) -> None:
        try:
            outcomes.put((name, call()))
        except Exception as exc:  # (the outcome checked below)
            outcomes.put((name, exc))

    calls: dict[str, Callable[[], object]] = {
        "sync": server.sync_control,
        "kill": lambda: server.kill("alpha"),
        "read": ControlFile(fleet).read,
        "start": lambda: make_server(fleet, control_interval_s=60).status()["control"],
    }
    for name, call in calls.items():
        threading.Thread(target=attempt, args=(name, call), daemon=True).start()
    try:
        got = dict(outcomes.get(timeout=30) for _ in calls)
    finally:
        with contextlib.suppress(OSError):  # let a reader that blocked (before the fix) go
            os.close(os.open(fleet / CONTROL_FILENAME, os.O_WRONLY | os.O_NONBLOCK))
    assert got["sync"] == 1
    assert answer(server, "fraud") == 1  # killed: the revision read stays in force
    fix = "is not a regular file (a pipe, a device or a folder): replace it with a copy"
    for name in ("kill", "read"):
        assert isinstance(got[name], ControlFileUnavailableError) and fix in str(got[name]), name
    started = got["start"]
    assert isinstance(started, dict) and started["read"] is False and fix in started["error"]
    assert server.status()["control"]["error"] is not None and fix in server.status()["control"]["error"]


def test_canary_needs_a_percent(fleet: Path) -> None:
    result = _cli("canary", str(fleet), "fraud", "2")
    assert result.returncode == 2
    assert "needs a PERCENT" in result.stderr
    assert not (fleet / CONTROL_FILENAME).exists()
    assert _cli("canary", str(fleet), "fraud", "2", "10").returncode == 0
    refused = _cli("canary", str(fleet), "fraud", "none", "50")  # removed the canary, exit 0
    assert refused.returncode == 2 and "takes no PERCENT (got 50)" in refused.stderr
    assert ControlFile(fleet).read().models["fraud"].canary_version == 2  # nothing written
    assert _cli("canary", str(fleet), "fraud", "none").returncode == 0
    assert ControlFile(fleet).read().models["fraud"].canary_version is None


def test_status_is_unhealthy_with_a_control_error() -> None:
    document = {"closed": False, "models": {"m": {"ready": True}}, "control": {"error": None, "revision": 3}}
    assert healthy(document)
    document["control"] = {"error": "control revision 3 is applied only in part: ...", "revision": 3}
    assert not healthy(document)


# -- 8. no file-system path in a 404 -----------------------------------------------------------------------


def test_the_not_found_message_of_a_model_that_failed_to_load_quotes_no_path(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "good", 1)
    broken = repository / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not onnx")
    server = make_server(repository, control_interval_s=None)
    with pytest.raises(inprocserve.ModelNotFoundError, match="failed to load") as raised:
        server.predict("broken", X)
    message = str(raised.value)
    assert str(repository) not in message and str(repository.resolve()) not in message
    assert "model.onnx" not in message and "/" not in message.replace("'", "")
    assert "cannot load" in server.status()["models"]["broken"]["versions"]["1"]["error"]  # status keeps it


def _canary_and_its_promotion(fleet: Path) -> tuple[ModelControl, ModelControl]:
    """The revisions of a promotion: "stable 1, canary 3 at 50 %" (written to the fleet) and "stable 3"."""
    save_model(build_scale_model(3.0), fleet, "fraud", 3)
    canary = ModelControl(stable=1, canary_version=3, canary_percent=50.0)
    write(fleet, fraud=canary)
    return canary, ModelControl(stable=3, previous_stable=1)


def test_a_revision_that_promotes_the_canary_never_sends_its_users_to_the_old_stable_version(
    fleet: Path, make_server: ServerFactory
) -> None:
    # A worker that reads "canary removed" and "its version made stable" in one revision (both written within
    # one control interval, as a promotion does) applied them one after the other: for a moment the canary's
    # users were routed by the new strategy with the old stable version, which no revision serves them.
    canary, promoted = _canary_and_its_promotion(fleet)
    server = make_server(fleet, config=ModelConfig(version_policy=VersionPolicy.all()), control_interval_s=3600)
    users = [f"user-{i}" for i in range(400)]
    in_canary = [user for user in users if server.predict("fraud", X, context={"user_id": user}).version == 3]
    stop = threading.Event()
    old_version: list[tuple[str, str]] = []

    def predict(index: int) -> None:
        while not stop.is_set():
            for user in in_canary[index::8]:
                result = server.predict("fraud", X, context={"user_id": user})
                if result.version != 3:
                    old_version.append((user, result.reason))

    alternate_while(predict, server, fleet, (promoted, canary), rounds=race_rounds(50, 150), stop=stop)
    assert old_version == []


def test_a_revision_that_loads_the_version_it_makes_stable_never_sends_a_request_to_another(
    fleet: Path, make_server: ServerFactory
) -> None:
    # The routes (the loaded versions) were replaced after the router's change: a request that read the routes
    # before a revision loaded version k and made it stable, and decided after, took the new stable version
    # k, found it not among the versions it read, and went to the latest of them (v2), which neither the
    # revision before (v1) nor after (vk) serves. A short switch interval makes the window frequent.
    write(fleet, fraud=ModelControl(stable=1))
    server = make_server(fleet, config=ModelConfig(version_policy=VersionPolicy.all()), control_interval_s=3600)
    assert answer(server, "fraud") == 1
    served = {1}
    stop = threading.Event()
    other: list[tuple[int, list[int]]] = []

    def predict() -> None:
        while not stop.is_set():
            before = set(served)
            version = server.predict("fraud", X, context={"user_id": "u"}).version
            if version not in before | served:
                other.append((version, sorted(before | served)))

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    threads = [threading.Thread(target=predict) for _ in range(8)]
    for thread in threads:
        thread.start()
    try:
        for k in range(3, 3 + race_rounds(40, 150)):
            save_model(build_scale_model(float(k)), fleet, "fraud", k)  # named by the revision: loaded then
            served.add(k)
            write(fleet, fraud=ModelControl(stable=k, previous_stable=1))
            server.sync_control()
            write(fleet, fraud=ModelControl(stable=1, previous_stable=k))
            server.sync_control()
            served.discard(k)
    finally:
        sys.setswitchinterval(interval)
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert other == []


def test_an_outcome_by_key_during_a_promotion_is_credited_by_one_state(fleet: Path, make_server: ServerFactory) -> None:
    # record_outcome(key=...) found its variant from the router's state read attribute by attribute: during a
    # promotion (canary removed, its version made stable) a canary user's outcome was credited to "stable",
    # which neither the canary state ("canary") nor the promoted one said. The promoted one (a stable version
    # alone, no flags) now credits every key to "stable" (version 3, which served them), as it does with flags:
    # a mixed read names "stable" too, so the race checks that nothing else is credited, and each state at rest
    # that it credits what it says.
    canary, promoted = _canary_and_its_promotion(fleet)
    server = make_server(fleet, config=ModelConfig(version_policy=VersionPolicy.all()), control_interval_s=3600)
    users = [f"user-{i}" for i in range(400)]
    in_canary = [user for user in users if server.predict("fraud", X, context={"user_id": user}).version == 3]
    stop = threading.Event()
    credited: list[str | None] = []

    def record(index: int) -> None:
        while not stop.is_set():
            for user in in_canary[index::8]:
                variant = server.record_outcome(None, 1.0, model="fraud", key=user)
                if variant not in ("canary", "stable", None):
                    credited.append(variant)

    alternate_while(record, server, fleet, (promoted, canary), rounds=race_rounds(40, 100), stop=stop)
    assert credited == []
    for state, variant in ((canary, "canary"), (promoted, "stable")):
        write(fleet, fraud=state)
        server.sync_control()
        assert {server.record_outcome(None, 1.0, model="fraud", key=user) for user in in_canary} == {variant}


class _SlowFlags(inprocserve.InMemoryFlags):
    """A flag service that takes 50 ms to evaluate the strategy flag (on the flag reader's workers)."""

    name = "slow"
    blocking = True

    def get_string(self, key: str, default: str, context: Any) -> str:
        time.sleep(0.05)
        return super().get_string(key, default, context)


def test_a_decision_overlapped_by_two_revisions_that_load_their_stable_version_gets_one_of_them(
    repository: Path, make_server: ServerFactory
) -> None:
    # A request whose routes were replaced while it decided decides again with those routes; overlapped
    # again by a revision that loaded another version and made it stable, it was made again with those
    # routes still: the new stable version not among them, the latest of them (v99) answered, which no
    # revision made stable (6 of 8 requests here). Routes and routing state are now one snapshot, read once.
    for version in (1, 99):
        save_model(build_scale_model(float(version)), repository, "fraud", version)
    write(repository, fraud=ModelControl(stable=1))
    config = ModelConfig(
        version_policy=VersionPolicy.all(),
        rollout=RolloutConfig(strategy="canary", canary=inprocserve.CanaryConfig(version=99, percent=0)),
    )
    server = make_server(repository, config=config, flags=_SlowFlags({}), flag_timeout_s=5, control_interval_s=3600)
    named = {1}
    stop = threading.Event()
    other: list[int] = []
    answered: list[int] = []

    def predict() -> None:
        while not stop.is_set():
            before = set(named)
            version = server.predict("fraud", X, context={"user_id": "u"}).version
            answered.append(version)
            if version not in before | named:
                other.append(version)

    threads = [threading.Thread(target=predict) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        for k in range(2, 40):
            save_model(build_scale_model(float(k)), repository, "fraud", k)  # named by the revision: loaded then
            named.add(k)
            write(repository, fraud=ModelControl(stable=k, previous_stable=k - 1))
            server.sync_control()
            time.sleep(0.01)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert answered
    assert other == []


class _CountedSlowFlags(inprocserve.InMemoryFlags):
    """A flag service whose strategy flag takes 50 ms to evaluate, counting its evaluations per request (each
    request's context names it)."""

    name = "slow"
    blocking = True

    def __init__(self) -> None:
        super().__init__({})
        self.reads: dict[int, int] = {}
        self._lock = threading.Lock()

    def get_string(self, key: str, default: str, context: Any) -> str:
        with self._lock:
            self.reads[context["n"]] = self.reads.get(context["n"], 0) + 1
        time.sleep(0.05)
        return super().get_string(key, default, context)


def test_a_storm_of_revisions_over_slow_flag_decisions_routes_every_request_by_one_state(
    fleet: Path, make_server: ServerFactory
) -> None:
    # A decision read the routing state (alias, strategy, canary) attribute by attribute while its flags were
    # evaluated: revisions every 20 ms flipping "stable 1, canary 3 at 50 %" and "stable 3" sent canary users
    # to version 1 (the old alias with the new strategy), which neither revision serves them, and a decision
    # a change overlapped was made again, up to 7 times (7 flag budgets). Now one state is read once.
    canary, promoted = _canary_and_its_promotion(fleet)
    flags = _CountedSlowFlags()
    server = make_server(
        fleet,
        config=ModelConfig(version_policy=VersionPolicy.all()),
        flags=flags,
        flag_timeout_s=10,
        control_interval_s=3600,
    )
    requests = iter(range(10**9))
    in_canary = [
        user
        for user in (f"user-{i}" for i in range(16))
        if server.predict("fraud", X, context={"user_id": user, "n": next(requests)}).version == 3
    ]
    assert in_canary
    stop = threading.Event()
    mixed: list[tuple[str, int, str]] = []
    answered: list[int] = []

    def predict(index: int) -> None:
        while not stop.is_set():
            user = in_canary[index % len(in_canary)]
            result = server.predict("fraud", X, context={"user_id": user, "n": next(requests)})
            answered.append(result.version)
            if result.version != 3:  # canary (3) under the first revision, stable (3) under the second
                mixed.append((user, result.version, result.reason))

    threads = [threading.Thread(target=predict, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            for state in (promoted, canary):
                write(fleet, fraud=state)
                server.sync_control()
                time.sleep(0.02)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert len(answered) >= 8
    assert mixed == []
    assert set(flags.reads.values()) == {1}  # each decision evaluated its flags once
