"""Fleet-wide control: servers sharing a repository follow one control file (real servers, real models)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import inprocserve
import inprocserve._registry as registry_module
from inprocserve import ModelConfig, RolloutConfig, VersionPolicy
from inprocserve._control import CONTROL_FILENAME, Control, ControlFile, ModelControl
from inprocserve.testing import build_scale_model, save_model

from .conftest import VALUES_NOT_SPEED_S, ServerFactory, wait_until
from .interruptible import interruptible

X = np.ones((1, 4), np.float32)
WAIT_S = 30


@pytest.fixture
def three_versions(repository: Path) -> Path:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


def served_version(server: inprocserve.Server, user: str = "u") -> int:
    result = server.predict("scale", X, context={"user_id": user})
    np.testing.assert_array_equal(result["y"], X * result.version)
    return result.version


def test_a_switch_on_one_server_moves_every_server_on_the_repository(
    three_versions: Path, make_server: ServerFactory
) -> None:
    first = make_server(three_versions, control_interval_s=None)
    second = make_server(three_versions, control_interval_s=None)
    assert served_version(first) == served_version(second) == 3
    first.switch("scale", 1, actor="alice")
    assert served_version(first) == 1  # the writer follows at once
    assert served_version(second) == 3  # the other one has not looked yet
    assert second.sync_control() == 1
    assert served_version(second) == 1
    written = json.loads((three_versions / CONTROL_FILENAME).read_text())
    assert written["revision"] == 1 and written["updated_by"] == "alice"
    assert written["models"]["scale"]["stable"] == 1
    status = second.status()
    assert status["control"]["revision"] == 1
    assert status["models"]["scale"]["stable_version"] == 1
    assert status["models"]["scale"]["control"]["stable"] == 1


def test_status_names_the_configured_stable_version_as_what_it_serves_before_any_switch(
    three_versions: Path, make_server: ServerFactory
) -> None:
    # config.toml's stable = 1 answers; status said stable_version 3 (the latest) until a switch set one, so a
    # fleet check waiting for "stable_version == 3" after a switch to 3 passed before any worker followed.
    config = ModelConfig(rollout=RolloutConfig(stable=1), version_policy=VersionPolicy.all())
    server = make_server(three_versions, config=config, control_interval_s=None)
    assert served_version(server) == 1
    model = server.status()["models"]["scale"]
    assert model["stable_version"] == model["answering_version"] == 1 and model["default_version"] == 3
    server.switch("scale", 2)
    model = server.status()["models"]["scale"]
    assert served_version(server) == model["stable_version"] == model["answering_version"] == 2


def test_a_new_server_starts_on_the_recorded_state(three_versions: Path, make_server: ServerFactory) -> None:
    make_server(three_versions, control_interval_s=None).switch("scale", 2)
    late = make_server(three_versions, control_interval_s=None)  # a worker (re)started after the switch
    assert served_version(late) == 2


def test_the_watcher_follows_within_its_interval(three_versions: Path, make_server: ServerFactory) -> None:
    writer = make_server(three_versions, control_interval_s=None)
    follower = make_server(three_versions, control_interval_s=0.05)
    writer.switch("scale", 1)
    deadline = time.monotonic() + 10  # generous on a loaded machine; the bound itself is benchmarked
    while served_version(follower) != 1:
        assert time.monotonic() < deadline, "the watcher never followed the control file"
        time.sleep(0.01)
    assert follower.status()["control"]["revision"] == 1


def test_rollback_returns_to_the_previous_stable_version(three_versions: Path, make_server: ServerFactory) -> None:
    server = make_server(three_versions, control_interval_s=None)
    with pytest.raises(ValueError, match="no previous stable version"):
        server.rollback("scale")
    server.switch("scale", 2)
    server.switch("scale", 1)
    assert server.rollback("scale") == 2
    assert served_version(server) == 2
    assert server.rollback("scale") == 1  # twice: back where we were


def test_a_rollback_with_nothing_to_go_back_to_is_refused_naming_the_stable_version(
    three_versions: Path, make_server: ServerFactory
) -> None:
    config = ModelConfig(rollout=RolloutConfig(stable=1), version_policy=VersionPolicy.all())
    server = make_server(three_versions, config=config, control_interval_s=None)
    with pytest.raises(inprocserve.NothingToRollBackError) as refused:
        server.rollback("scale")
    assert isinstance(refused.value, inprocserve.InprocserveError) and isinstance(refused.value, ValueError)
    assert (refused.value.model, refused.value.version) == ("scale", 1)
    assert "its stable version is 1" in str(refused.value) and "switch to it" in str(refused.value)
    assert not (three_versions / CONTROL_FILENAME).exists()  # nothing was written
    server.switch("scale", 1)  # to the version that serves: still nothing to go back to
    with pytest.raises(inprocserve.NothingToRollBackError, match="its stable version is 1"):
        server.rollback("scale")
    assert ControlFile(three_versions).read().revision == 1 and served_version(server) == 1


def test_the_command_line_refuses_a_rollback_with_nothing_to_go_back_to(
    three_versions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inprocserve.__main__ import main

    assert main(["rollback", str(three_versions), "scale"]) == 1
    error = capsys.readouterr().err
    assert "no previous stable version to roll back to" in error and "its stable version is 3" in error
    assert not (three_versions / CONTROL_FILENAME).exists()


class _SwitchedMeanwhile(ControlFile):
    """The server's control file, on which another operator's CLI switches ``scale`` to each of ``versions``
    (a list per write) just before this server's next writes take the file's lock: after the rollback read the
    version to go back to and loaded it, before it wrote."""

    meanwhile: ClassVar[list[list[int]]] = []

    def update(self, change: Any, *, actor: str | None = None) -> Control:
        from inprocserve.__main__ import main

        if self.meanwhile:
            for version in self.meanwhile.pop(0):
                # (--no-load-check: the other writer's switch to 4 is to a version that cannot load, on purpose)
                switch = ["switch", "--no-load-check", str(self.folder), "scale", str(version), "--actor", "other"]
                assert main(switch) == 0
        return super().update(change, actor=actor)


def test_a_rollback_loads_what_another_writers_switch_leaves_to_go_back_to(
    three_versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The version to go back to was loaded before the control file's lock was taken, and read again inside
    it: moved meanwhile by another writer's switch, the new one was written unloaded, so a version that cannot
    load was written for the whole fleet (the docs promise it is refused and never written)."""
    save_model(build_scale_model(4.0), three_versions, "scale", 4)
    good = (three_versions / "scale" / "4" / "model.onnx").read_bytes()
    (three_versions / "scale" / "4" / "model.onnx").write_bytes(b"not onnx")
    monkeypatch.setattr("inprocserve._server.ControlFile", _SwitchedMeanwhile)
    only_3 = ModelConfig(version_policy=VersionPolicy.specific(3))
    server = make_server(three_versions, config=only_3, control_interval_s=None)
    server.switch("scale", 2)
    server.switch("scale", 3)  # previous stable: 2, loaded
    _SwitchedMeanwhile.meanwhile[:] = [[4, 3]]  # then previous stable 4, which cannot load
    with pytest.raises(inprocserve.ModelLoadError):
        server.rollback("scale")
    assert ControlFile(three_versions).read().models["scale"] == ModelControl(stable=3, previous_stable=4)
    assert served_version(server) == 3
    (three_versions / "scale" / "4" / "model.onnx").write_bytes(good)  # fixed: the next rollback goes to it
    _SwitchedMeanwhile.meanwhile[:] = [[2, 3]]  # previous stable 2 again, meanwhile
    assert server.rollback("scale") == 2
    assert ControlFile(three_versions).read().models["scale"] == ModelControl(stable=2, previous_stable=3)
    assert served_version(server) == 2
    _SwitchedMeanwhile.meanwhile[:] = [[1], [3], [2]]  # moved before every try (to 2, 1, then 3): none written
    with pytest.raises(inprocserve.ConfigurationError, match="moved 3 times during this rollback"):
        server.rollback("scale")
    written = ControlFile(three_versions).read()
    assert written.models["scale"] == ModelControl(stable=2, previous_stable=3) and written.updated_by == "other"


def test_canary_is_sticky_per_user_on_every_server(three_versions: Path, make_server: ServerFactory) -> None:
    servers = [make_server(three_versions, control_interval_s=None) for _ in range(3)]
    servers[0].switch("scale", 1)
    servers[0].set_canary("scale", 3, percent=30)
    for server in servers[1:]:
        server.sync_control()
    users = [f"user-{i}" for i in range(200)]
    seen = {user: {served_version(server, user) for server in servers} for user in users}
    assert all(len(versions) == 1 for versions in seen.values())  # one version per user, whichever server
    share = sum(versions == {3} for versions in seen.values()) / len(users)
    assert 0.15 < share < 0.45
    assert all(versions <= {1, 3} for versions in seen.values())
    with pytest.raises(ValueError, match=r"removes the canary and takes no percent \(got 50\)"):
        servers[0].set_canary("scale", None, percent=50)  # meant as "send 50 %", it removed the canary
    servers[1].sync_control()
    assert {served_version(servers[1], user) for user in users} == {1, 3}
    servers[0].set_canary("scale", None, percent=0)
    servers[1].sync_control()
    assert {served_version(servers[1], user) for user in users} == {1}


def test_kill_switch_wins_over_the_configured_canary_and_flags(
    three_versions: Path, make_server: ServerFactory
) -> None:
    config = ModelConfig(
        version_policy=VersionPolicy.all(),
        rollout=RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=3, percent=100)),
    )
    flags = inprocserve.InMemoryFlags({"scale.canary.percent": 100, "scale.canary.version": 3})
    server = make_server(three_versions, config=config, flags=flags, control_interval_s=None)
    other = make_server(three_versions, config=config, control_interval_s=None)
    assert served_version(server) == 3
    server.kill("scale")
    other.sync_control()
    for user in ("a", "b", "c"):
        assert served_version(server, user) == 1
        assert served_version(other, user) == 1
    assert server.predict("scale", X).reason == "kill switch is on (control file)"
    server.resume("scale")
    assert served_version(server) == 3


def test_the_kill_switch_sends_everyone_to_the_stable_version_the_stable_flag_names(
    three_versions: Path, make_server: ServerFactory
) -> None:
    # rollouts.md's flag-driven rollout ends with the stable flag naming the new version; the fleet's kill
    # switch must stop the canary without sending everyone back to the version configured before it
    config = ModelConfig(
        version_policy=VersionPolicy.all(),
        rollout=RolloutConfig(strategy="canary", stable=1, canary=inprocserve.CanaryConfig(version=3, percent=0)),
    )
    flags = inprocserve.InMemoryFlags({"scale.stable": 2, "scale.canary.percent": 50})
    server = make_server(
        three_versions, config=config, flags=flags, flag_timeout_s=VALUES_NOT_SPEED_S, control_interval_s=None
    )
    users = [f"user-{i}" for i in range(40)]
    assert {served_version(server, user) for user in users} == {2, 3}
    server.kill("scale")
    assert {served_version(server, user) for user in users} == {2}
    assert server.predict("scale", X).reason == "kill switch is on (control file)"
    flags.set("scale.stable", 7)  # a version that is not loaded: the configured stable version, as for any request
    assert served_version(server) == 1
    flags.delete("scale.stable")
    assert served_version(server) == 1


def test_reload_makes_every_server_rescan(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    first = make_server(repository, control_interval_s=None)
    second = make_server(repository, control_interval_s=None)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    assert first.reload() == []
    assert served_version(first) == 2
    assert served_version(second) == 1
    second.sync_control()
    assert served_version(second) == 2


def test_a_version_that_cannot_load_is_never_published(three_versions: Path, make_server: ServerFactory) -> None:
    (three_versions / "scale" / "4").mkdir()
    (three_versions / "scale" / "4" / "model.onnx").write_bytes(b"not onnx")
    server = make_server(three_versions, control_interval_s=None)
    with pytest.raises(inprocserve.ModelLoadError):
        server.switch("scale", 4)
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.switch("scale", 9)
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.kill("nope")
    assert not (three_versions / CONTROL_FILENAME).exists()
    with pytest.raises(ValueError, match="percent"):
        server.set_canary("scale", 2, percent=101)
    with pytest.raises(ValueError, match="version"):
        server.switch("scale", 0)


def test_an_invalid_control_file_keeps_the_last_revision(three_versions: Path, make_server: ServerFactory) -> None:
    server = make_server(three_versions, control_interval_s=None)
    server.switch("scale", 2)
    (three_versions / CONTROL_FILENAME).write_text('{"revision": 9, "models": {"scale": {"stable": "two"}}}')
    assert server.sync_control() == 1
    assert served_version(server) == 2
    assert "stable must be a positive int" in server.status()["control"]["error"]
    with pytest.raises(inprocserve.ConfigurationError, match="stable must be a positive int"):
        server.switch("scale", 1)  # a writer refuses to overwrite what it cannot read


def test_a_worker_started_while_the_control_file_is_damaged_is_not_ready_until_it_reads_it(
    three_versions: Path, make_server: ServerFactory
) -> None:
    """Workers started before the damage keep the last valid revision; one (re)started after it has none,
    and serving the models' own configs would undo the fleet's rollback and kill switch."""
    writer = make_server(three_versions, control_interval_s=None)
    writer.switch("scale", 1)
    writer.kill("scale")
    control_file = three_versions / CONTROL_FILENAME
    good = control_file.read_bytes()
    control_file.write_bytes(good[: len(good) // 2])  # a hand edit or a broken sync
    assert writer.sync_control() == 2 and served_version(writer) == 1  # keeps what it read
    assert writer.readiness().ready

    # a recycled worker, its watcher's interval long enough that only the test's sync_control() reads
    late = make_server(three_versions, control_interval_s=600)
    readiness = late.readiness()
    assert not readiness.ready
    assert "follows no revision of the control file" in readiness.reasons["scale"]
    assert "not valid JSON" in readiness.reasons["scale"]
    assert str(three_versions) not in readiness.reasons["scale"]  # (readiness quotes no paths)
    assert late.status()["control"]["read"] is False
    assert writer.status()["control"]["read"] is True

    control_file.write_bytes(good)  # repaired: the next sync reads it
    assert late.sync_control() == 2
    assert late.readiness().ready and late.status()["control"]["read"] is True
    assert served_version(late) == 1
    control_file.write_text("{")  # damaged again later: this worker now keeps what it read
    late.sync_control()
    assert late.readiness().ready and served_version(late) == 1


def test_a_worker_started_while_the_control_file_is_damaged_routes_no_request_until_it_reads_it(
    three_versions: Path, make_server: ServerFactory
) -> None:
    """Not ready is not enough: gunicorn's accept loop ignores /ready, and a worker serving its models' own
    config would answer with the canary the fleet killed. It refuses (HTTP 503), and serves once it reads."""
    writer = make_server(three_versions, control_interval_s=None)
    writer.switch("scale", 1)
    writer.set_canary("scale", 3, percent=100)
    writer.kill("scale")
    control_file = three_versions / CONTROL_FILENAME
    good = control_file.read_bytes()
    control_file.write_bytes(good[:40])  # a hand edit, or a sync caught half-way

    late = make_server(three_versions, control_interval_s=600)  # (only the test's sync_control() reads)
    with pytest.raises(inprocserve.ControlStateUnknownError) as refused:
        late.predict("scale", X, context={"user_id": "u"})
    assert refused.value.model == "scale"
    assert "control file .inprocserve-control.json is not valid JSON" in str(refused.value)
    assert str(three_versions) not in str(refused.value)  # (HTTP clients read it: no paths)
    assert late.predict("scale", X, version=3).version == 3  # pinned: the control file routes it nowhere else
    assert writer.predict("scale", X, context={"user_id": "u"}).version == 1  # it read the file before the damage

    control_file.write_bytes(good)
    assert late.sync_control() == 3
    assert served_version(late) == 1  # the kill switch, not the canary


def recycled_on_a_damaged_file(repository: Path, make_server: ServerFactory) -> inprocserve.Server:
    """A worker started while the control file is damaged, then the file repaired; its watcher's interval
    is long enough that only the test's sync_control() calls read it."""
    control_file = repository / CONTROL_FILENAME
    good = control_file.read_bytes()
    control_file.write_text("{")
    late = make_server(repository, control_interval_s=600)
    assert not late.readiness().ready
    control_file.write_bytes(good)
    return late


def assert_not_ready_until_applied(late: inprocserve.Server, paused: threading.Event, go_on: threading.Event) -> None:
    """One sync_control() (the watcher's) pauses while it applies the revision; another (the
    application's, or an admin endpoint's) must wait for the lock, not mark the file followed."""
    watcher = threading.Thread(target=late.sync_control)
    watcher.start()
    assert paused.wait(WAIT_S)
    other = threading.Thread(target=late.sync_control)
    other.start()
    other.join(0.5)  # (had it returned at once, it would have marked the file followed)
    assert not late.readiness().ready
    go_on.set()
    watcher.join(WAIT_S)
    other.join(WAIT_S)
    assert late.readiness().ready


def test_a_worker_is_ready_only_once_it_follows_the_revision_it_read(
    three_versions: Path, make_server: ServerFactory
) -> None:
    """The file, repaired, is read before the lifecycle lock (a hot reload may hold it for seconds) and
    adopted under it: until then the worker still routes no request, and is not ready."""
    writer = make_server(three_versions, control_interval_s=None)
    writer.switch("scale", 1)
    late = recycled_on_a_damaged_file(three_versions, make_server)
    with late._registry.lock:  # as a hot reload would hold it
        syncing = threading.Thread(target=late.sync_control)
        syncing.start()
        wait_until(lambda: late.status()["control"]["error"] is None)  # read, waiting for the lock
        assert not late.readiness().ready
        with pytest.raises(inprocserve.ControlStateUnknownError):
            served_version(late)
    syncing.join(10)
    assert late.readiness().ready and served_version(late) == 1


def test_a_worker_is_not_ready_while_it_applies_the_revision_it_read(
    three_versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Half-way through adopting it (the revision taken, its models not yet marked to apply), another
    sync_control() found the file equal to what the worker follows, with nothing pending, and marked it
    followed: ready, with the kill switch not yet applied."""
    writer = make_server(three_versions, control_interval_s=None)
    writer.switch("scale", 1)
    writer.kill("scale")
    late = recycled_on_a_damaged_file(three_versions, make_server)
    adopting, go_on = threading.Event(), threading.Event()
    info = registry_module.logger.info

    def paused_info(message: str, *args: Any, **kwargs: Any) -> None:  # (adopt logs the revision it follows)
        if message.startswith("following control revision"):
            adopting.set()
            assert go_on.wait(WAIT_S)
        info(message, *args, **kwargs)

    monkeypatch.setattr(registry_module.logger, "info", paused_info)
    assert_not_ready_until_applied(late, adopting, go_on)
    assert served_version(late) == 1


def test_a_worker_is_not_ready_while_it_applies_a_reload_it_read(
    three_versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A revision that only asks for a reload: the worker is not ready until its refresh is done (it was
    marked applied before the refresh began, and another sync_control() then marked the file followed)."""
    writer = make_server(three_versions, control_interval_s=None)
    writer.reload()
    late = recycled_on_a_damaged_file(three_versions, make_server)
    refreshing, go_on = threading.Event(), threading.Event()
    refresh = late._registry.refresh

    def held_refresh() -> list[str]:
        refreshing.set()
        assert go_on.wait(WAIT_S)
        return refresh()

    monkeypatch.setattr(late._registry, "refresh", held_refresh)
    assert_not_ready_until_applied(late, refreshing, go_on)


def test_a_switch_cut_short_by_the_exit_reports_no_control_error(
    three_versions: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A worker exiting while it loads the versions of a switch: nothing is retried, nothing is wrong."""
    writer = make_server(three_versions, control_interval_s=None)
    late = make_server(
        three_versions, config=ModelConfig(version_policy=VersionPolicy.specific(3)), control_interval_s=None
    )
    writer.switch("scale", 1)
    writer.switch("scale", 2)  # the revision keeps 1 for a rollback: the late worker loads 1 and 2
    loading, go_on = threading.Event(), threading.Event()
    load_version = registry_module.Registry._load_version

    def held(registry: Any, *args: Any, **kwargs: Any) -> None:
        loading.set()
        assert go_on.wait(WAIT_S)
        load_version(registry, *args, **kwargs)

    monkeypatch.setattr(registry_module.Registry, "_load_version", held)
    syncing = threading.Thread(target=late.sync_control)
    syncing.start()
    assert loading.wait(WAIT_S)
    late._registry.stop_poller()  # what the exit's clean-up of an unclosed server does first
    go_on.set()
    syncing.join(WAIT_S)
    assert late.status()["control"]["error"] is None
    assert "not applied here" not in caplog.text


def test_without_a_watcher_a_damaged_control_file_does_not_hold_readiness(
    three_versions: Path, make_server: ServerFactory
) -> None:
    """control_interval_s=None: nothing would read the file again (the application calls sync_control()
    itself), so readiness does not wait for it; status still says the file was not followed."""
    (three_versions / CONTROL_FILENAME).write_text("{")
    server = make_server(three_versions, control_interval_s=None)
    assert server.readiness().ready
    assert server.status()["control"]["read"] is False
    assert "not valid JSON" in server.status()["control"]["error"]


def test_a_control_file_nested_too_deeply_is_damaged_not_a_crash(
    three_versions: Path, make_server: ServerFactory
) -> None:
    """json.loads raises RecursionError, not ValueError, on deep nesting: the worker must start and say why."""
    (three_versions / CONTROL_FILENAME).write_text("[" * 100_000)
    server = make_server(three_versions, control_interval_s=None)
    assert server.readiness().ready
    assert "nested too deeply" in server.status()["control"]["error"]
    assert served_version(server) == 3


def test_a_revision_past_2_63_is_a_damaged_control_file(three_versions: Path, make_server: ServerFactory) -> None:
    """A revision of 4,300 digits was read, and every write then failed: its successor has more digits than
    Python turns into text, a ValueError the admin endpoints answered 400 (the client's fault), while
    ``validate`` passed the file."""
    from inprocserve import web
    from inprocserve.__main__ import main

    server = make_server(three_versions, control_interval_s=None)
    server.switch("scale", 2)
    control = three_versions / CONTROL_FILENAME
    control.write_text('{"revision": ' + "9" * 4300 + ', "models": {"scale": {"stable": 1}}}')
    assert server.sync_control() == 1  # the revision read before stays in force
    assert served_version(server) == 2
    assert "revision must be at most 2**63-1" in server.status()["control"]["error"]
    with pytest.raises(inprocserve.ConfigurationError, match=r"revision must be at most 2\*\*63-1"):
        server.kill("scale")
    answer = web.admin_answer(server, "kill", "scale", b"", actor="ops")
    assert (answer.status, answer.body["error"]) == (409, "configuration")
    assert "the file is damaged" in answer.body["message"]
    assert main(["validate", str(three_versions)]) == 1
    assert len(control.read_text()) > 4300  # nothing written
    control.write_text(json.dumps({"revision": 2**63 - 1, "reload": 2**63 - 1, "models": {}}))
    with pytest.raises(inprocserve.ConfigurationError, match=r"revision is 2\*\*63-1 already"):
        server.kill("scale")  # written, every server would refuse the file
    control.write_text(json.dumps({"revision": 5, "reload": 2**63 - 1, "models": {}}))
    with pytest.raises(inprocserve.ConfigurationError, match=r"reload is 2\*\*63-1 already"):
        server.reload()
    assert ControlFile(three_versions).read().revision == 5


def test_a_missing_control_file_is_revision_0_and_ready(three_versions: Path, make_server: ServerFactory) -> None:
    server = make_server(three_versions, control_interval_s=None)
    assert server.readiness().ready
    assert server.status()["control"] == {**server.status()["control"], "revision": 0, "read": True, "error": None}


def test_a_worker_follows_a_version_it_has_not_loaded(three_versions: Path, make_server: ServerFactory) -> None:
    only_one = ModelConfig(version_policy=VersionPolicy.specific(1))
    writer = make_server(three_versions, config=only_one, control_interval_s=None)
    follower = make_server(three_versions, config=only_one, control_interval_s=None)
    writer.switch("scale", 2)
    follower.sync_control()  # loads and warms version 2 before routing to it
    assert follower.models == {"scale": [1, 2]}
    assert served_version(follower) == 2
    follower.refresh()  # the version policy does not unload what the control file names
    assert served_version(follower) == 2


def test_without_a_repository_control_stays_in_this_process(make_server: ServerFactory, tmp_path: Path) -> None:
    save_model(build_scale_model(1.0), tmp_path, "a", 1)
    save_model(build_scale_model(2.0), tmp_path, "a", 2)
    server = make_server()
    server.load("scale", path=tmp_path / "a" / "1" / "model.onnx", version=1)
    server.load("scale", path=tmp_path / "a" / "2" / "model.onnx", version=2)
    server.switch("scale", 1)
    assert served_version(server) == 1
    server.kill("scale")
    assert server.status()["control"]["revision"] == 2 and server.status()["control"]["file"] is None


def test_status_without_paths_names_no_path(three_versions: Path, make_server: ServerFactory) -> None:
    (three_versions / "broken" / "1").mkdir(parents=True)
    (three_versions / "broken" / "1" / "model.onnx").write_bytes(b"nope")
    server = make_server(three_versions, control_interval_s=None)
    full = json.dumps(server.status())
    assert str(three_versions) in full
    public = server.status(include_paths=False)
    assert str(three_versions) not in json.dumps(public)
    assert str(three_versions.resolve()) not in json.dumps(public)
    assert public["models"]["broken"]["versions"]["1"]["state"] == "failed"
    assert public["worker"]["pid"] > 0 and public["worker"]["hostname"]


def _write_many(repository: str, worker: int, count: int) -> None:
    control = ControlFile(repository)
    for index in range(count):
        control.set_model(f"m{worker}", lambda state, i=index: ModelControl(stable=i + 1), actor=f"w{worker}")


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")  # no fork: this test process runs onnxruntime threads
    processes = [context.Process(target=_write_many, args=(str(tmp_path), worker, 25)) for worker in range(3)]
    threads = [threading.Thread(target=_write_many, args=(str(tmp_path), worker, 25)) for worker in (3, 4)]
    for runner in [*processes, *threads]:
        runner.start()
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    for thread in threads:
        thread.join(timeout=60)
    final = ControlFile(tmp_path).read()
    assert final.revision == 5 * 25
    assert {name: state.stable for name, state in final.models.items()} == {f"m{w}": 25 for w in range(5)}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_while_the_command_line_waits_for_the_lock_is_one_line(three_versions: Path, stop: int) -> None:
    """An on-call engineer's `switch` waited for a lock another writer held, and Ctrl-C ended it in a
    KeyboardInterrupt traceback; it now says in one line that it was stopped and where to look. SIGTERM (a
    `timeout` around it, a cancelled CI job) ended it with status 143 and nothing at all on stderr."""
    import fcntl

    lock_path = three_versions / ".inprocserve-control.lock"
    descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.lockf(descriptor, fcntl.LOCK_EX)  # (a record lock: the command line's process waits for it)
        command = [sys.executable, "-m", "inprocserve", "switch", str(three_versions), "scale", "2"]
        # (interruptible: a shell ignores SIGINT in its background commands, as CI's may run this one)
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=interruptible
        ) as process:
            try:
                wait_until(lambda: _holds_open(process.pid, lock_path) or process.poll() is not None, timeout_s=30)
                assert process.poll() is None, "the command ended before it was seen waiting for the lock"
                process.send_signal(stop)
                out, err = process.communicate(timeout=30)
            finally:
                if process.poll() is None:  # (a failed test leaves no command running into the next tests)
                    process.kill()
    finally:
        os.close(descriptor)
    assert process.returncode == 128 + stop, err
    assert out == ""
    stopped_by = f"error: stopped by {signal.Signals(stop).name}"
    assert err.startswith(stopped_by) and "Traceback" not in err and err.count("\n") == 1, err
    assert ControlFile(three_versions).read().revision == 0  # (nothing was written)


# In the child: SIGTERM arrives just before the written temporary file is renamed over the control file.
_TERMINATED_BEFORE_THE_RENAME = """
import os, signal, sys
from inprocserve.__main__ import main
real_replace = os.replace
def replace(source, target, *args, **kwargs):
    if str(target).endswith("inprocserve-control.json"):
        os.kill(os.getpid(), signal.SIGTERM)
    return real_replace(source, target, *args, **kwargs)
os.replace = replace
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_between_the_temporary_file_and_its_rename_leaves_neither(three_versions: Path) -> None:
    """`timeout 5 python -m inprocserve kill ...` firing as the change was written: SIGTERM killed the command
    on the spot, leaving its .inprocserve-control.<random>.tmp in the repository, one more per stopped run."""
    assert ControlFile(three_versions).set_model("scale", lambda state: ModelControl(stable=2)).revision == 1
    before = (three_versions / CONTROL_FILENAME).read_bytes()
    command = [sys.executable, "-c", _TERMINATED_BEFORE_THE_RENAME, "kill", str(three_versions), "scale"]
    process = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert process.returncode == 128 + signal.SIGTERM, process.stderr
    assert process.stdout == ""
    err = process.stderr
    assert err.startswith("error: stopped by SIGTERM") and err.count("\n") == 1, err
    assert [p.name for p in three_versions.iterdir() if p.name.endswith(".tmp")] == []
    assert (three_versions / CONTROL_FILENAME).read_bytes() == before  # whole, and the change not made


def _holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.path.realpath(fd) == os.path.realpath(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:  # (a descriptor closed while listed)
        return False


def test_control_documents_are_validated() -> None:
    with pytest.raises(inprocserve.ConfigurationError, match="canary_percent"):
        Control.from_dict({"models": {"m": {"canary_percent": 120}}})
    # keys of another release are kept, not refused (tests/test_rolling_upgrade.py); known ones are checked
    assert Control.from_dict({"revision": 1, "surprise": True, "models": {"m": {"bogus": 1}}}).unknown_keys == [
        "surprise",
        "models.m.bogus",
    ]
    with pytest.raises(inprocserve.ConfigurationError, match=r"models\.m"):
        Control.from_dict({"models": {"m": []}})
    assert Control.from_dict({}).revision == 0


def test_the_command_line_drives_the_fleet(three_versions: Path, make_server: ServerFactory) -> None:
    from inprocserve.__main__ import main

    server = make_server(three_versions, control_interval_s=None)
    repo = str(three_versions)
    assert main(["switch", repo, "scale", "1", "--actor", "ops"]) == 0
    server.sync_control()
    assert served_version(server) == 1
    assert main(["canary", repo, "scale", "2", "100"]) == 0
    server.sync_control()
    assert served_version(server) == 2
    assert main(["kill", repo, "scale"]) == 0
    server.sync_control()
    assert served_version(server) == 1
    assert main(["resume", repo, "scale"]) == 0
    assert main(["canary", repo, "scale", "none"]) == 0
    assert main(["switch", repo, "scale", "3"]) == 0
    assert main(["rollback", repo, "scale"]) == 0
    server.sync_control()
    assert served_version(server) == 1
    assert main(["reload", repo]) == 0
    assert server.sync_control() == ControlFile(three_versions).read().revision == 8
    assert ControlFile(three_versions).read().updated_by is not None
    assert main(["switch", repo, "scale", "9"]) == 1  # no such version: nothing written
    assert main(["kill", repo, "nope"]) == 1
    assert main(["canary", repo, "scale", "2", "150"]) == 1
    assert ControlFile(three_versions).read().revision == 8


def test_a_model_named_like_a_number_the_scan_reads_as_no_version_is_no_version_folder(
    three_versions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The repository's check read `01` (a model's name: letters, digits, '.', '_' and '-') holding a loose
    model.onnx as a version folder, as `isdecimal()` does, where the scan reads no version of that name: the
    command refused the repository as a model folder."""
    from inprocserve.__main__ import main

    (three_versions / "01").mkdir()
    (three_versions / "01" / "model.onnx").write_bytes((three_versions / "scale" / "1" / "model.onnx").read_bytes())
    assert main(["kill", str(three_versions), "scale"]) == 0, capsys.readouterr().err


def test_the_command_line_refuses_a_models_folder_given_as_the_repository(
    three_versions: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`reload models/fraud` wrote a control file into the model's folder, which no server reads, and exited 0:
    the operator believed the fleet reloaded. `switch models/fraud fraud 2` said the model was not there."""
    from inprocserve.__main__ import main

    model_folder = three_versions / "scale"
    for command in (["reload"], ["switch", "scale", "2"], ["kill", "scale"], ["canary", "scale", "2", "10"]):
        assert main([command[0], str(model_folder), *command[1:]]) == 2, command
        error = capsys.readouterr().err
        assert "looks like a model folder, not a repository (it holds version folders: 1, 2, 3)" in error, error
        assert f"give the folder that holds it ({three_versions.resolve()})" in error
    assert sorted(entry.name for entry in model_folder.iterdir()) == ["1", "2", "3"]  # nothing written there
    assert not (three_versions / CONTROL_FILENAME).exists()


def test_a_writer_also_applies_what_others_wrote_meanwhile(repository: Path, make_server: ServerFactory) -> None:
    for name in ("a", "b"):
        for version in (1, 2):
            save_model(build_scale_model(float(version)), repository, name, version)
    config = ModelConfig(version_policy=VersionPolicy.all())
    first = make_server(repository, config=config, control_interval_s=None)
    second = make_server(repository, config=config, control_interval_s=None)
    first.switch("a", 1)  # second has not looked yet...
    second.switch("b", 1)  # ...and writes on top of it: it must follow "a" too
    assert second.predict("a", X).version == 1
    assert second.predict("b", X).version == 1
    first.sync_control()
    assert first.predict("b", X).version == 1


NOBODY = 65534
needs_root = pytest.mark.skipif(getattr(os, "geteuid", lambda: -1)() != 0, reason="needs root (to be another user)")


@pytest.fixture
def nobodys_repository() -> Any:
    """A repository owned by the servers' user (nobody), reachable by it (pytest's tmp_path is root's, 0700).
    Skips where root cannot be nobody: a user namespace that maps no uid 65534 (``unshare -r``, some sandboxes),
    or a root without CAP_CHOWN, CAP_SETUID or CAP_SETGID."""
    folder = Path(tempfile.mkdtemp(prefix="inprocserve-nobody-"))
    try:
        try:
            os.chown(folder, NOBODY, NOBODY)
        except OSError as exc:
            pytest.skip(f"root cannot give a file to uid {NOBODY} here (no such user in its namespace?): {exc}")
        if _as_user(NOBODY, lambda: None) != 0:
            pytest.skip(f"root cannot become uid {NOBODY} here (no CAP_SETUID or CAP_SETGID, or no such user)")
        for version in (1, 2):
            save_model(build_scale_model(float(version)), folder, "scale", version)
        for path in (folder, *folder.rglob("*")):
            os.chown(path, NOBODY, NOBODY)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _as_user(uid: int, write: Any) -> int:
    """Run ``write()`` in a child forked and dropped to ``uid``: 0 written, 3 refused naming another user's lock
    file and the fix, 4 refused naming the folder, 1 else."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            os.setgid(uid)
            os.setuid(uid)
            write()
            status = 0
        except inprocserve.ControlFileUnavailableError as exc:
            message = str(exc)
            status = 3 if "chown" in message and "holds no state" in message else 1
            status = 4 if "repository folder is not writable" in message else status
        finally:
            os._exit(status)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@needs_root
def test_a_root_operators_write_leaves_the_control_file_writable_for_the_servers_user(
    nobodys_repository: Path,
) -> None:
    """`sudo python -m inprocserve canary ...` once must not lock the app's user (the admin endpoints) out."""
    control = ControlFile(nobodys_repository)
    control.set_model("scale", lambda state: ModelControl(canary_version=2, canary_percent=10))  # as root
    assert _as_user(NOBODY, lambda: control.set_model("scale", lambda state: ModelControl(kill=True))) == 0
    assert control.read().models["scale"].kill
    assert {path.stat().st_uid for path in nobodys_repository.glob(".inprocserve-control*")} == {NOBODY}


@needs_root
def test_a_lock_file_another_user_owns_is_refused_naming_the_fix(nobodys_repository: Path) -> None:
    lock = nobodys_repository / ".inprocserve-control.lock"
    lock.touch(mode=0o644)  # root's, as an older release's CLI left it
    assert _as_user(NOBODY, lambda: ControlFile(nobodys_repository).bump_reload()) == 3
    ControlFile(nobodys_repository).bump_reload()  # root's next write gives it to the folder's owner
    assert lock.stat().st_uid == NOBODY
    assert _as_user(NOBODY, lambda: ControlFile(nobodys_repository).bump_reload()) == 0


@needs_root
def test_a_repository_folder_the_user_cannot_write_is_named_as_the_cause(nobodys_repository: Path) -> None:
    os.chown(nobodys_repository, 0, 0)
    nobodys_repository.chmod(0o755)  # root's: nobody may read it, not add the lock file
    assert _as_user(NOBODY, lambda: ControlFile(nobodys_repository).bump_reload()) == 4


def test_a_lock_file_in_a_group_writable_repository_is_group_writable(three_versions: Path) -> None:
    """A team sharing the repository through its group: the first writer's lock file must not refuse the others."""
    three_versions.chmod(0o2775)
    ControlFile(three_versions).bump_reload()
    assert (three_versions / ".inprocserve-control.lock").stat().st_mode & 0o020


@needs_root
def test_a_root_write_never_gives_away_a_file_a_planted_lock_link_names(nobodys_repository: Path) -> None:
    """Whoever may write the repository folder (the servers' user) could plant the lock file as a link to a file
    of root's: root's next write (`sudo python -m inprocserve canary ...`) gave that file to the folder's owner,
    writable by all."""
    secret = Path(tempfile.mkdtemp(prefix="inprocserve-root-")) / "secret"
    try:
        secret.write_text("root only\n")
        secret.chmod(0o600)
        nobodys_repository.chmod(0o777)
        lock = nobodys_repository / ".inprocserve-control.lock"
        assert _as_user(NOBODY, lambda: lock.symlink_to(secret)) == 0
        with pytest.raises(inprocserve.ControlFileUnavailableError, match="symbolic link"):
            ControlFile(nobodys_repository).bump_reload()
        lock.unlink()
        os.link(secret, lock)  # (a hard link: where fs.protected_hardlinks is off, anyone may make one)
        ControlFile(nobodys_repository).bump_reload()
        assert (secret.stat().st_uid, secret.stat().st_mode & 0o777) == (0, 0o600)
    finally:
        shutil.rmtree(secret.parent, ignore_errors=True)


def test_a_write_never_changes_the_mode_of_a_file_swapped_in_for_its_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whoever may write the repository folder may rename a link over the write's temporary file while it is
    written (its fsync takes milliseconds): the chmod by name that followed made the link's target 0644, a
    file of root's readable by all when root wrote (reproduced with a real second user: won at the first try)."""
    repository = tmp_path / "models"
    repository.mkdir()
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    secret.chmod(0o600)
    real_fsync = os.fsync

    def swap_then_fsync(descriptor: int) -> None:
        for temporary in repository.glob(".inprocserve-control.*.tmp"):
            link = repository / "planted"
            link.symlink_to(secret)
            os.replace(link, temporary)
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", swap_then_fsync)
    with contextlib.suppress(OSError, inprocserve.ConfigurationError):
        ControlFile(repository).bump_reload()
    assert secret.stat().st_mode & 0o777 == 0o600


def test_a_revision_naming_a_version_that_failed_on_another_config_tries_it_on_the_config_in_force(
    repository: Path, make_server: ServerFactory
) -> None:
    # follow() checked whether the failed version's files changed, not whether its configuration did: the
    # canary was refused with the old config's error until the next refresh (a refresh retried it at once)
    save_model(build_scale_model(1.0), repository, "scale", 1)  # 4 features
    server = make_server(repository, control_interval_s=None)
    save_model(build_scale_model(2.0, features=8), repository, "scale", 2)
    missing = ModelConfig(warmup=inprocserve.WarmupConfig(inputs_file="missing.npz"))
    with pytest.raises(inprocserve.ModelLoadError, match=r"missing\.npz"):
        server.load("scale", version=2, config=missing)  # version 2 failed on it; the config in force is kept
    other = make_server(repository, control_interval_s=None)
    other.set_canary("scale", 2, percent=50)
    assert server.sync_control() == 1
    assert server.status()["control"]["error"] is None
    assert server.models == {"scale": [1, 2]}
    assert server.predict("scale", np.ones((1, 8), np.float32), version=2)["y"][0, 0] == 2.0


def test_a_revision_naming_a_version_only_a_build_loaded_by_path_holds_here_is_not_served_by_the_build(
    repository: Path, make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # A build of one's own, loaded by path beside the releases, takes the next number (3); release 3 lands
    # later, and the fleet is switched to it: this worker served the build as the fleet's version 3
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    writer = make_server(repository, control_interval_s=None)
    follower = make_server(repository, control_interval_s=None)
    build = save_model(build_scale_model(7.0), tmp_path / "builds", "scale", 1)
    assert follower.load("scale", path=build) == 3
    follower.load("scale", version=2)  # handed back to the repository: the build serves beside the releases
    save_model(build_scale_model(3.0), repository, "scale", 3)  # release 3
    writer.refresh()
    writer.switch("scale", 3)
    with caplog.at_level("ERROR", logger="inprocserve._registry"):
        follower.sync_control()
        follower.sync_control()  # (retried: said once)
    assert served_version(follower) == 2  # not the build: its answers are 7 x, not 3 x
    said = [r.getMessage() for r in caplog.records if "build loaded by path" in r.getMessage()]
    assert len(said) == 1, said
    assert str(build) in said[0] and str(repository / "scale" / "3" / "model.onnx") in said[0]
    assert "server.load('scale', version=3)" in said[0]
    error = follower.status()["control"]["error"]
    assert error is not None and "build loaded by path" in error
    follower.load("scale", version=3)  # the release in place of the build: the revision applies
    follower.sync_control()
    assert served_version(follower) == 3
    assert follower.status()["control"]["error"] is None


@pytest.mark.parametrize("change", ["switch", "set_canary"])
def test_a_switch_to_a_number_a_build_loaded_by_path_holds_here_is_refused_and_nothing_is_written(
    repository: Path, make_server: ServerFactory, tmp_path: Path, change: str
) -> None:
    # The operator on the worker that holds the build: the fleet would have moved to release 3 while this
    # worker refused it (control.error only), and the call said nothing
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository, control_interval_s=None)
    build = save_model(build_scale_model(7.0), tmp_path / "builds", "scale", 1)
    assert server.load("scale", path=build) == 3
    server.load("scale", version=2)
    save_model(build_scale_model(3.0), repository, "scale", 3)  # release 3, in the repository
    revision = server.status()["control"]["revision"]
    with pytest.raises(inprocserve.ModelNotFoundError, match=r"version 3 here is a build loaded by path") as refused:
        if change == "switch":
            server.switch("scale", 3)
        else:
            server.set_canary("scale", 3, percent=10)
    assert str(build) in str(refused.value) and "server.load('scale', version=3)" in str(refused.value)
    assert server.status()["control"]["revision"] == revision  # nothing written
    server.load("scale", version=3)  # the release in place of the build: the switch goes through
    getattr(server, change)("scale", 3, **({} if change == "switch" else {"percent": 10}))
