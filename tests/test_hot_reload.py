"""Hot reload: new versions become servable only when ready; failures never replace a working version."""

from __future__ import annotations

import concurrent.futures
import gc
import logging
import os
import re
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import _batching, _ort_backend, _registry
from inprocserve._model import ModelVersion
from inprocserve._registry import Registry
from inprocserve.testing import ManualClock, build_mlp_model, build_scale_model, save_model

from .conftest import (
    ServerFactory,
    SessionHolder,
    build_busy_model,
    past_the_tick,
    run_in_forked_child,
    wait_until,
)


def one(server: inprocserve.Server) -> inprocserve.Prediction:
    return server.predict("scale", np.ones((1, 4), np.float32))


def test_refresh_loads_a_new_version_and_retires_the_old(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    assert one(server).version == 1
    save_model(build_scale_model(2.0), repository, "scale", 2)
    assert server.refresh() == []
    assert server.models == {"scale": [2]}
    result = one(server)
    assert (result.version, float(result["y"][0, 0])) == (2, 2.0)
    assert "1" not in server.status()["models"]["scale"]["versions"]


def test_refresh_notices_removed_versions_and_models(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    save_model(build_scale_model(1.0), repository, "other", 1)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    assert server.models == {"other": [1], "scale": [1, 2]}
    shutil.rmtree(repository / "scale" / "2")
    shutil.rmtree(repository / "other")
    server.refresh()
    assert server.models == {"scale": [1]}
    with pytest.raises(inprocserve.ModelNotFoundError):
        server.predict("other", np.ones((1, 4), np.float32))


def test_a_broken_new_version_never_replaces_a_working_one(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    broken = repository / "scale" / "2" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"half-copied file")
    problems = server.refresh()
    assert len(problems) == 1 and "cannot load" in problems[0]
    assert server.models == {"scale": [1]}
    assert one(server).version == 1
    versions = server.status()["models"]["scale"]["versions"]
    assert versions["2"]["state"] == "failed"
    assert server.refresh() == []  # an unchanged broken file is not retried on every refresh
    save_model(build_scale_model(2.0), repository, "scale", 2)  # the copy completes
    assert server.refresh() == []
    assert one(server).version == 2


def test_load_raises_for_a_broken_version_and_keeps_serving(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    broken = repository / "scale" / "2" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"")
    with pytest.raises(inprocserve.ModelLoadError):
        server.load("scale", version=2)
    assert one(server).version == 1


def test_unload_survives_refresh_until_loaded_again(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    server.unload("scale")
    server.refresh()
    assert server.models == {}
    assert server.load("scale") == 1
    assert server.models == {"scale": [1]}


def test_an_unloaded_version_stays_unloaded_under_the_all_policy(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    server.unload("scale", 2)
    assert server.models == {"scale": [1]}
    server.refresh()
    assert server.models == {"scale": [1]}
    assert server.load("scale", version=2) == 2
    server.refresh()
    assert server.models == {"scale": [1, 2]}


def test_a_version_loaded_again_after_its_unload_takes_the_default_at_once(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository)
    server.unload("scale", 2)  # (a bad release, say)
    assert one(server).version == 1
    assert server.load("scale", version=2) == 2  # fixed: back to the policy's choice, not at the next poll
    assert one(server).version == 2
    assert server.models == {"scale": [2]}


def test_a_canary_on_a_version_unloaded_by_hand_serves_it_as_the_canary_only(
    repository: Path, make_server: ServerFactory
) -> None:
    """set_canary loaded the version for the fleet's control file, and so forgot its unload by hand: the next
    refresh made it the policy's latest, taking the default traffic for every user, and the version it had
    fallen back to was retired."""
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository)
    server.unload("scale", 3)  # a bad release: back to 2
    server.set_canary("scale", 3, percent=10)  # tried on a tenth of the users meanwhile
    for _ in range(2):
        server.refresh()
        assert server.models == {"scale": [2, 3]}
        assert server.status()["models"]["scale"]["answering_version"] == 2
        served = {
            server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": f"u{i}"}).version
            for i in range(200)
        }
        assert served == {2, 3}
    server.set_canary("scale", None, percent=0)
    server.refresh()
    assert server.models == {"scale": [2]} and one(server).version == 2  # still unloaded once no longer named
    assert server.load("scale", version=3) == 3  # loaded by hand: the policy's again
    assert server.models == {"scale": [3]} and one(server).version == 3


def test_a_fleet_operation_on_a_model_unloaded_by_hand_serves_it_whole(
    repository: Path, make_server: ServerFactory
) -> None:
    """An operation on a model with nothing loaded published the version it named alone: a 10 % canary
    answered every user until the next refresh, and a switch recorded no version to roll back to."""
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository)
    server.unload("scale")
    server.set_canary("scale", 2, percent=10)
    assert server.models == {"scale": [2, 3]}
    served = {
        server.predict("scale", np.ones((1, 4), np.float32), context={"user_id": f"u{i}"}).version for i in range(200)
    }
    assert served == {2, 3} and server.status()["models"]["scale"]["answering_version"] == 3
    server.set_canary("scale", None, percent=0)
    server.unload("scale")
    server.switch("scale", 2)
    assert one(server).version == 2
    assert server.rollback("scale") == 3  # the policy's latest answered before the switch
    assert one(server).version == 3


def test_a_version_loaded_by_hand_serves_its_pinned_requests_across_refreshes(
    repository: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository)
    assert server.load("scale", version=1) == 1  # for a comparison against the old model, say
    for _ in range(2):
        assert one(server).version == 3  # the policy's choice keeps the default traffic
        answer = server.predict("scale", np.ones((1, 4), np.float32), version=1)
        assert answer.version == 1 and answer["y"][0, 0] == 1.0
        server.refresh()  # (it unloaded version 1 again, and pinned requests to it failed)
    assert server.models == {"scale": [1, 3]}
    server.unload("scale", 1)
    server.refresh()
    assert server.models == {"scale": [3]}


def test_a_version_loaded_again_after_its_unload_gives_way_to_a_later_version(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository)
    server.unload("scale", 2)  # a bad release, fixed in place, then loaded again
    server.load("scale", version=2)
    save_model(build_scale_model(3.0), repository, "scale", 3)
    server.refresh()
    assert one(server).version == 3
    assert server.models == {"scale": [3]}  # (version 2 stayed loaded beside every later version)


def test_loading_the_model_hands_versions_loaded_by_hand_back_to_the_policy(
    repository: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    server = make_server(repository)
    server.load("scale", version=1)  # compared against the current model for a while
    assert server.models == {"scale": [1, 3]}
    assert server.load("scale") == 3  # done: the policy's choice alone, as unloaded versions come back
    assert server.models == {"scale": [3]}
    server.refresh()
    assert server.models == {"scale": [3]}


def test_a_repository_version_loaded_beside_one_loaded_by_path_leaves_it_serving(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    mine = save_model(build_scale_model(10.0), tmp_path / "builds", "scale", 1)  # a build of my own
    server = make_server(repository)
    server.unload("scale")
    assert server.load("scale", path=mine) == 1
    assert server.load("scale", version=2) == 2  # the repository's, to compare with
    assert server.predict("scale", np.ones((1, 4), np.float32), version=1)["y"][0, 0] == 10.0  # (unloaded)
    assert server.models == {"scale": [1, 2]}


def test_loading_versions_by_hand_does_not_repeat_a_rollout_problem(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    (repository / "scale" / "config.toml").write_text("[rollout]\nstable = 9\n")  # (a typo for 3)
    caplog.set_level(logging.WARNING, logger="inprocserve")
    server = make_server(repository)
    for version in (1, 2, 1):
        server.load("scale", version=version)
    said = [r for r in caplog.records if "its rollout names version(s) 9" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in said]  # (once per load by hand too)


def test_unloading_the_latest_version_falls_back_to_the_previous_one(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository)
    assert server.models == {"scale": [2]}
    server.unload("scale", 2)
    assert server.models == {"scale": [1]}
    assert one(server).version == 1
    server.refresh()
    assert server.models == {"scale": [1]}
    server.load("scale")  # loading the model again forgets what was unloaded by hand
    assert server.models == {"scale": [2]}


def test_unloading_the_only_version_leaves_the_model_unserved(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    server.unload("scale", 1)
    assert server.models == {}
    server.refresh()
    assert server.models == {}


def test_background_polling_picks_up_new_versions(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository, poll_interval_s=0.05)
    save_model(build_scale_model(3.0), repository, "scale", 3)
    wait_until(lambda: server.models == {"scale": [3]})
    assert float(one(server)["y"][0, 0]) == 3.0


def test_reload_while_32_threads_call_predict(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    stop = threading.Event()
    failures: list[BaseException] = []
    seen: set[int] = set()
    lock = threading.Lock()

    def call(index: int) -> None:
        x = np.full((1 + index % 3, 4), index, np.float32)
        while not stop.is_set():
            try:
                result = server.predict("scale", x)
                # every answer comes whole from one ready version: y = x * version
                np.testing.assert_array_equal(result["y"], x * result.version)
                with lock:
                    seen.add(result.version)
            except BaseException as exc:
                with lock:
                    failures.append(exc)
                return

    threads = [threading.Thread(target=call, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    for version in (2, 3, 4):
        time.sleep(0.1)
        save_model(build_scale_model(float(version)), repository, "scale", version)
        assert server.refresh() == []
    time.sleep(0.1)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert failures == []
    assert seen >= {1, 4}
    assert server.models == {"scale": [4]}


def _half_copied_warmup(folder: Path) -> None:
    np.savez(folder / "warmup.npz", x=np.ones((1, 4), np.float32))
    whole = (folder / "warmup.npz").read_bytes()
    (folder / "warmup.npz").write_bytes(whole[: len(whole) // 2])
    (folder / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')


@pytest.mark.parametrize(
    "spoil",
    [
        lambda folder: (folder / "config.toml").write_bytes(b'nan_policy = "\xff"\n'),  # not UTF-8
        lambda folder: (folder / "config.toml").write_text("[batching.padding]\ninputs = 3\n"),  # wrong type
        lambda folder: (folder / "config.toml").write_text("[warmup]\ninputs_file = 3\n"),
        lambda folder: (folder / "config.toml").write_text("[pool]\nsize = 2.5\n"),
        _half_copied_warmup,
    ],
    ids=[
        "config not utf-8",
        "padding inputs not a table",
        "warm-up file not a path",
        "pool size 2.5",
        "half a warm-up",
    ],
)
def test_one_bad_entry_is_refused_and_the_rest_of_the_repository_still_reloads(
    repository: Path, make_server: ServerFactory, spoil: Any
) -> None:
    # Whatever shape a bad file or setting takes, it is that model's problem, said in refresh()'s answer and
    # the log: the other models still get their new versions, and a process starting on it still starts.
    for name in ("a", "b"):
        save_model(build_scale_model(1.0), repository, name, 1)
    server = make_server(repository)
    spoil(repository / "a")
    save_model(build_scale_model(3.0), repository, "a", 2)
    save_model(build_scale_model(2.0), repository, "b", 2)
    problems = server.refresh()
    assert problems and all("'b'" not in problem for problem in problems)
    assert server.models["b"] == [2]
    assert server.predict("a", np.ones((1, 4), np.float32)).version == 1  # what served before still serves
    started = make_server(repository)
    assert started.models["b"] == [2]


def test_a_done_callback_that_calls_the_server_never_deadlocks_a_hot_reload(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A submit() future's done-callback runs on the worker that answered it. If it calls into the server
    # (status(), load()) while a hot reload retires that worker's version, it waits for the lock the reload
    # holds, while the reload waits for the worker: closing a version waits for its workers a bounded time.
    monkeypatch.setattr(_batching, "_WORKER_EXIT_S", 0.5)
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    retiring = threading.Event()
    retire = server._registry.retire

    def noted_retire(*args: Any, **kwargs: Any) -> None:
        retiring.set()  # (called with the lifecycle lock held)
        retire(*args, **kwargs)

    monkeypatch.setattr(server._registry, "retire", noted_retire)
    statuses: list[Any] = []

    def look_at_the_server(_: Any) -> None:
        assert retiring.wait(30)
        statuses.append(server.status())

    future = server.submit("scale", np.ones((1, 4), np.float32))
    future.add_done_callback(look_at_the_server)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    reload = threading.Thread(target=server.refresh, daemon=True)
    reload.start()
    reload.join(timeout=30)
    assert not reload.is_alive(), "the hot reload deadlocked with the callback"
    wait_until(lambda: len(statuses) == 1)
    assert server.models["scale"] == [2]


def test_readiness_and_status_answer_while_a_version_loads(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hot reload holds the lifecycle lock while it builds and warms up the new version (seconds for a large
    # model). Readiness probes that waited for it would time out, and take every pod out of service at once.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    loading, finish = threading.Event(), threading.Event()
    load = ModelVersion.load

    def held_load(self: ModelVersion) -> None:
        if self.version == 2:
            loading.set()
            assert finish.wait(30)
        load(self)

    monkeypatch.setattr(ModelVersion, "load", held_load)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    reload = threading.Thread(target=server.refresh, daemon=True)
    reload.start()
    try:
        assert loading.wait(30)  # the reload holds the lock now, building version 2
        answers: list[Any] = []
        probe = threading.Thread(target=lambda: answers.append((server.readiness(), server.status())), daemon=True)
        probe.start()
        probe.join(timeout=20)
        assert answers, "readiness waited for the hot reload"
        readiness, status = answers[0]
        assert readiness.ready and status["models"]["scale"]["default_version"] == 1
    finally:
        finish.set()
    reload.join(timeout=30)
    assert server.models["scale"] == [2]


def test_a_version_that_failed_mid_copy_loads_once_the_rest_arrives(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    # A copy lands model.onnx first and its external weights a moment later; or config.toml names a warm-up
    # archive that is copied after the version. The failed load is retried once what it read changes, not
    # only when model.onnx does.
    onnx = pytest.importorskip("onnx")
    save_model(build_mlp_model((16, 32, 2)), repository, "m", 1)
    server = make_server(repository)
    staged = tmp_path / "staged"
    staged.mkdir()
    onnx.save_model(
        build_mlp_model((16, 32, 2), seed=7),
        staged / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    (repository / "m" / "2").mkdir()
    shutil.copy2(staged / "model.onnx", repository / "m" / "2" / "model.onnx")
    assert any("weights.bin" in problem for problem in server.refresh())  # mid-copy: version 2 fails
    shutil.copy2(staged / "weights.bin", repository / "m" / "2" / "weights.bin")
    assert server.refresh() == [] and server.models["m"] == [2]
    (repository / "m" / "config.toml").write_text('[warmup]\ninputs_file = "warmup.npz"\n')
    save_model(build_mlp_model((16, 32, 2), seed=8), repository, "m", 3)
    assert server.refresh()  # its warm-up archive is not there yet
    np.savez(repository / "m" / "warmup.npz", x=np.ones((1, 16), np.float32))
    assert server.refresh() == [] and server.models["m"] == [3]


def test_a_model_replaced_by_one_of_its_size_and_modification_time_is_reloaded(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    """rsync -a (or a copy renamed into place) keeps the size and mtime of a same-shaped release: only the
    inode tells."""
    path = save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    before = path.stat()
    staged = path.with_name(".model.onnx.staged")
    staged.write_bytes(save_model(build_scale_model(5.0), tmp_path, "scale", 1).read_bytes())
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(staged, path)
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert server.refresh() == []
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"].tolist() == [[5.0] * 4]


def test_a_link_to_a_version_folder_reloads_nothing_when_its_version_goes(
    repository: Path, make_server: ServerFactory
) -> None:
    """A link left out while it pointed at a folder counted once it dangled: pruning version 1 reloaded 2."""
    for version in (1, 2, 3):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    (repository / "scale" / "latest").symlink_to("1")
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    loaded = server.status()["models"]["scale"]["versions"]["2"]["loaded_at"]
    shutil.rmtree(repository / "scale" / "1")
    server.refresh()
    (repository / "scale" / "latest").unlink()
    (repository / "scale" / "latest").symlink_to("3")
    server.refresh()
    assert server.status()["models"]["scale"]["versions"]["2"]["loaded_at"] == loaded


def test_a_change_of_metadata_alone_reloads_nothing(repository: Path, make_server: ServerFactory) -> None:
    """A chmod or a hard-link backup (rsnapshot, cp -al) moves the change time of every file: counted as a
    change, it reloaded every version of the fleet and rebuilt their optimized graphs."""
    path = save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = 8\n")
    server = make_server(repository)
    loaded = server.status()["models"]["scale"]["versions"]["1"]["loaded_at"]
    time.sleep(0.01)
    os.chmod(path, 0o644)
    os.link(path, repository.parent / "backup-model.onnx")
    os.chmod(repository / "scale" / "config.toml", 0o644)
    assert server.refresh() == []
    assert server.status()["models"]["scale"]["versions"]["1"]["loaded_at"] == loaded


def test_a_copy_that_finishes_while_its_load_fails_is_tried_again(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A refresh reads a half-copied model.onnx; the copy finishes while that load is failing. The failure
    # must be tied to the half file it read: the whole one is loaded (by the same refresh, as the file
    # changed while it loaded).
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    whole = build_scale_model(3.0).SerializeToString()
    target = repository / "scale" / "2" / "model.onnx"
    target.parent.mkdir()
    target.write_bytes(whole[: len(whole) // 2])
    real_check = _ort_backend.check_version

    def check_then_copy_finishes(path: Path, **kwargs: Any) -> None:
        try:
            real_check(path, **kwargs)
        finally:
            if target.stat().st_size != len(whole):
                target.write_bytes(whole)

    monkeypatch.setattr(_ort_backend, "check_version", check_then_copy_finishes)
    assert server.refresh() == []
    result = one(server)
    assert (result.version, float(result["y"][0, 0])) == (2, 3.0)


def test_loading_a_model_whose_policy_selects_nothing_says_so(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    save_model(build_scale_model(1.0), repository, "pinned", 1)
    (repository / "pinned" / "config.toml").write_text("version_policy = { specific = [5] }\n")
    with pytest.raises(inprocserve.ModelNotFoundError, match="selects none of the versions in the repository \\(1\\)"):
        server.load("pinned")


def test_a_version_rewritten_in_place_is_reloaded_and_swapped_in(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    assert float(one(server)["y"][0, 0]) == 2.0
    staged = save_model(build_scale_model(3.0), tmp_path, "scale", 1)
    staged.replace(repository / "scale" / "1" / "model.onnx")  # a release copied over version 1, atomically
    assert server.refresh() == []
    result = one(server)
    assert (result.version, float(result["y"][0, 0])) == (1, 3.0)


def test_an_unchanged_repository_reloads_nothing(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = 8\n")
    server = make_server(repository)
    loaded_at = server.status()["models"]["scale"]["versions"]["1"]["loaded_at"]
    for _ in range(3):
        assert server.refresh() == []
    assert server.status()["models"]["scale"]["versions"]["1"]["loaded_at"] == loaded_at


def test_hidden_files_beside_a_model_reload_nothing(repository: Path, make_server: ServerFactory) -> None:
    """An editor's swap file beside the config.toml it edits, rsync's temporary copy of a release, NFS's
    ``.nfs`` files: the scan ignores them, and each reloaded every version of the model (its caches and drift
    windows emptied, twice its memory while the copy loaded)."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    loaded_at = server.status()["models"]["scale"]["versions"]["1"]["loaded_at"]
    (repository / "scale" / ".config.toml.swp").write_bytes(b"an editor's swap file")
    (repository / "scale" / "1" / ".model.onnx.Xy12ab").write_bytes(b"rsync's copy, half written")
    assert server.refresh() == []
    (repository / "scale" / "1" / ".model.onnx.Xy12ab").write_bytes(b"rsync's copy, written further")
    (repository / "scale" / ".nfs0000000001").write_bytes(b"")
    assert server.refresh() == []
    assert server.status()["models"]["scale"]["versions"]["1"]["loaded_at"] == loaded_at


def test_a_hidden_external_data_file_the_model_names_is_still_watched(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    onnx = pytest.importorskip("onnx")
    for seed, folder in ((7, repository / "m" / "1"), (8, tmp_path / "staged")):
        folder.mkdir(parents=True)
        onnx.save_model(
            build_mlp_model((16, 32, 2), seed=seed),
            folder / "model.onnx",
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location=".weights.bin",
            size_threshold=0,
        )
    server = make_server(repository)
    x = np.ones((1, 16), np.float32)
    before = server.predict("m", {"x": x})["y"]
    (tmp_path / "staged" / ".weights.bin").replace(repository / "m" / "1" / ".weights.bin")  # new weights only
    assert server.refresh() == []
    assert not np.allclose(server.predict("m", {"x": x})["y"], before)


def test_a_config_toml_change_applies_to_the_loaded_versions(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    assert server.status()["models"]["scale"]["versions"]["1"]["max_batch_size"] == 64
    (repository / "scale" / "config.toml").write_text(
        '[batching]\nmax_batch_size = 7\n[rollout]\nstrategy = "canary"\n[rollout.canary]\nversion = 1\npercent = 5\n'
    )
    assert server.refresh() == []
    model = server.status()["models"]["scale"]
    assert model["versions"]["1"]["max_batch_size"] == 7
    assert model["rollout"]["strategy"] == "canary"


def test_a_broken_rewrite_leaves_the_loaded_version_serving_until_it_is_fixed(
    repository: Path, make_server: ServerFactory, tmp_path: Path
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    (repository / "scale" / "1" / "model.onnx").write_bytes(b"half-copied file")
    (problem,) = server.refresh()
    assert "cannot load" in problem and "as loaded before keeps serving" in problem
    assert float(one(server)["y"][0, 0]) == 2.0
    entry = server.status()["models"]["scale"]["versions"]["1"]
    assert entry["state"] == "ready" and entry["serving"] and "cannot load" in entry["reload_error"]
    assert server.refresh() == []  # not tried again until the file changes: no error every poll
    staged = save_model(build_scale_model(4.0), tmp_path, "scale", 1)
    staged.replace(repository / "scale" / "1" / "model.onnx")
    assert server.refresh() == []
    assert float(one(server)["y"][0, 0]) == 4.0
    assert server.status()["models"]["scale"]["versions"]["1"]["reload_error"] is None


@pytest.mark.parametrize("policy", [inprocserve.VersionPolicy.latest(), inprocserve.VersionPolicy.all()])
def test_a_model_whose_last_version_folder_is_removed_stops_serving(
    repository: Path, make_server: ServerFactory, policy: inprocserve.VersionPolicy
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=policy))
    shutil.rmtree(repository / "scale" / "1")  # the model's folder (and its config.toml) stays
    server.refresh()
    assert "scale" not in server.models
    with pytest.raises(inprocserve.ModelNotFoundError):
        one(server)


def test_load_with_a_new_config_reloads_a_loaded_version(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (repository / "scale" / "config.toml").write_text("[batching]\nmax_batch_size = 7\n")
    server = make_server(repository)
    config = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=5))
    assert server.load("scale", config=config) == 1
    assert server.status()["models"]["scale"]["versions"]["1"]["max_batch_size"] == 5
    assert server.refresh() == []  # the configuration given to load stays in force
    assert server.status()["models"]["scale"]["versions"]["1"]["max_batch_size"] == 5
    server.unload("scale")
    server.load("scale")  # unloaded, then loaded plainly: config.toml's again
    assert server.status()["models"]["scale"]["versions"]["1"]["max_batch_size"] == 7
    file = repository / "scale" / "1" / "model.onnx"
    assert server.load("other", path=file, config=config) == 1
    assert server.load("other", path=file, version=1) == 1  # no config: the defaults again
    assert server.status()["models"]["other"]["versions"]["1"]["max_batch_size"] == 64


@pytest.mark.parametrize(
    ("policy", "keeps"),
    [
        (inprocserve.VersionPolicy.latest(), "version 2 keeps serving"),  # (it said "versions 2 keep serving")
        (inprocserve.VersionPolicy.all(), "versions 1, 2 keep serving"),
    ],
)
def test_a_version_policy_that_selects_nothing_never_unloads_what_serves(
    repository: Path, make_server: ServerFactory, policy: inprocserve.VersionPolicy, keeps: str
) -> None:
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=policy))
    (repository / "scale" / "config.toml").write_text("version_policy = { specific = [12] }\n")  # meant [1, 2]
    (problem,) = server.refresh()
    assert problem.endswith(f"selects none of the versions in the repository (1, 2); {keeps}")
    assert one(server).version == 2


def test_a_version_policy_that_selects_nothing_at_start_up_is_a_problem_not_a_silent_absence(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The same typo in the config.toml a server starts on: the model vanished without a word (not in status,
    # /ready 200, strict=True passed, the pre-fork check and `validate` passed), every request a 404.
    save_model(build_scale_model(2.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    (repository / "scale" / "config.toml").write_text("version_policy = { specific = [12] }\n")  # meant [1, 2]
    expected = "'scale': its version_policy selects none of the versions in the repository (1, 2)"
    with pytest.raises(inprocserve.ModelLoadError, match=re.escape(expected)):
        make_server(repository, strict=True)
    make_server(repository)
    assert f"model {expected}; the model serves nothing (ModelNotFoundError)" in caplog.text
    assert any(expected in problem for problem in inprocserve.check_repository(repository)["problems"])
    from inprocserve._cli_models import validate_repository

    report = validate_repository(repository)
    assert not report["ok"] and report["models"]["scale"]["policy_error"].startswith(expected.split(": ", 1)[1])


def test_a_rollout_that_names_a_version_not_in_the_repository_says_so(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # `stable = 12` for 1 (to hold back version 2): the server answered with version 2, the one the pin was
    # there to hold back, with nothing in the log; strict=True, the pre-fork check and `validate` passed.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    (repository / "scale" / "config.toml").write_text("[rollout]\nstable = 12\n")  # meant 1
    expected = "'scale': its rollout names version(s) 12, not in the repository"
    with pytest.raises(inprocserve.ModelLoadError, match=re.escape(expected)):
        make_server(repository, strict=True)
    server = make_server(repository)
    assert f"model {expected} (1, 2): requests meant for them get another" in caplog.text
    assert one(server).version == 2
    assert any(expected in problem for problem in inprocserve.check_repository(repository)["problems"])
    from inprocserve._cli_models import validate_repository

    report = validate_repository(repository)
    assert not report["ok"] and report["models"]["scale"]["policy_error"].startswith(expected.split(": ", 1)[1])
    caplog.clear()
    assert server.refresh() == [f"model {expected} (1, 2): requests meant for them get another"]
    assert caplog.text == ""  # logged once, not at every poll
    (repository / "scale" / "config.toml").write_text("[rollout]\nstable = 1\n")
    assert server.refresh() == []
    assert one(server).version == 1


def test_the_optimized_graph_a_load_writes_does_not_reload_the_version(
    repository: Path, make_server: ServerFactory
) -> None:
    past_the_tick(save_model(build_scale_model(2.0), repository, "scale", 1))
    config = inprocserve.ModelConfig(pool=inprocserve.PoolConfig(optimized_model_cache=True))
    server = make_server(repository, config=config)
    assert list((repository / "scale" / "1").glob("model.optimized-*.onnx"))  # written by the load
    loaded_at = server.status()["models"]["scale"]["versions"]["1"]["loaded_at"]
    assert server.refresh() == []
    assert server.status()["models"]["scale"]["versions"]["1"]["loaded_at"] == loaded_at


# A process that exits while its server's background thread builds a version: a web worker told to stop
# (SIGTERM, SIGHUP, --max-requests) just after a deploy copied a version in or switched the fleet. Nobody
# closes such a server: it is closed at interpreter exit, where onnxruntime aborts the process if a thread
# is still inside it. Version 2's warm-up is long enough that the exit comes in the middle of its load.
_EXIT_DURING_LOAD = """
import sys, time
from pathlib import Path
import inprocserve
from inprocserve._control import ControlFile, ModelControl
from inprocserve.testing import save_model
from tests.conftest import build_busy_model

repository, thread = Path(sys.argv[1]), sys.argv[2]
model = build_busy_model(512, 16)
save_model(model, repository, "busy", 1)
if thread == "poller":  # a new version copied in: the hot-reload thread loads it
    server = inprocserve.Server(repository, poll_interval_s=0.05)
    (repository / "busy" / "config.toml").write_text("[warmup]\\nrows = 256\\nruns = 30\\n")
    save_model(model, repository, "busy", 2)
else:  # the fleet switched to a version this worker does not serve: the control-file thread loads it
    save_model(model, repository, "busy", 2)
    server = inprocserve.Server(repository, control_interval_s=0.05)
    (repository / "busy" / "config.toml").write_text("[warmup]\\nrows = 256\\nruns = 30\\n")
    ControlFile(repository).set_model("busy", lambda _old: ModelControl(stable=1), actor="deploy")
time.sleep(0.7)
print("exiting while", server.status()["models"]["busy"]["versions"].keys(), flush=True)
"""


@pytest.mark.parametrize("thread", ["poller", "watcher"])
def test_a_process_that_exits_while_a_version_loads_exits_cleanly(thread: str, tmp_path: Path) -> None:
    from .conftest import run_python

    result = run_python(_EXIT_DURING_LOAD, str(tmp_path), thread, timeout_s=180)
    assert "terminate called" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 0, f"exit status {result.returncode}: {result.stderr[-2000:]}"
    assert "exiting while" in result.stdout


# Five models copied in at once; the process exits while the first one loads.
_EXIT_DURING_MANY_LOADS = """
import logging, os, sys, time
from pathlib import Path
import inprocserve
from inprocserve.testing import save_model
from tests.conftest import build_busy_model

logging.basicConfig(level=logging.INFO, format="%(message)s")
repository, staging = Path(sys.argv[1]), Path(sys.argv[2])
model = build_busy_model(512, 16)
save_model(model, repository, "first", 1)
server = inprocserve.Server(repository, poll_interval_s=0.05)
for index in range(5):  # built aside, then moved in at once: one scan of the poller finds all five
    save_model(model, staging, f"new{index}", 1)
    (staging / f"new{index}" / "config.toml").write_text("[warmup]\\nrows = 256\\nruns = 30\\n")
for index in range(5):
    os.rename(staging / f"new{index}", repository / f"new{index}")
deadline = time.monotonic() + 120  # exit once the first one's load has begun (it shows in status), the rest queued
while not any(name.startswith("new") for name in server.status()["models"]) and time.monotonic() < deadline:
    time.sleep(0.002)
logging.getLogger("test").info("exiting")  # (in the log's own stream: what was loaded before it is known)
"""


def test_a_process_that_exits_during_a_hot_reload_loads_no_model_after_the_one_in_progress(tmp_path: Path) -> None:
    from .conftest import run_python

    (tmp_path / "models").mkdir()
    (tmp_path / "staging").mkdir()
    result = run_python(_EXIT_DURING_MANY_LOADS, str(tmp_path / "models"), str(tmp_path / "staging"), timeout_s=180)
    assert result.returncode == 0 and "terminate called" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    exit_at = lines.index("exiting")
    ready = [index for index, line in enumerate(lines) if line.startswith("model 'new") and " ready in " in line]
    after = [index for index in ready if index > exit_at]
    # at most the one loading at the exit finishes after it, and the loads queued behind it never start (the exit
    # comes once the first load has begun, however fast the machine loads: so one, or two if the next one
    # finished while the exit began)
    assert len(after) <= 1 and 1 <= len(ready) <= 2, lines


def _refreshing_four_new_versions(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> tuple[inprocserve.Server, list[int], threading.Event, threading.Thread]:
    """A server of version 1 whose refresh found versions 2 to 5 at once and is loading 2, held until the
    returned event is set: the server, the versions whose loads began, the event, the refresh's thread."""
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository, config=inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all()))
    for version in (2, 3, 4, 5):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    loads: list[int] = []
    loading, go_on = threading.Event(), threading.Event()
    load_version = Registry._load_version

    def held(registry: Registry, name: str, number: int, *args: Any, **kwargs: Any) -> None:
        loads.append(number)
        loading.set()
        assert go_on.wait(30)
        load_version(registry, name, number, *args, **kwargs)

    monkeypatch.setattr(Registry, "_load_version", held)
    refreshing = threading.Thread(target=server.refresh)
    refreshing.start()
    assert loading.wait(30)
    return server, loads, go_on, refreshing


def test_a_stopping_server_loads_no_version_after_the_one_in_progress(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions 2 to 5 of one model arrive at once: the exit stops the refresh after the version it is
    loading (the other loads would run on past the exit's wait, and abort the process)."""
    server, loads, go_on, refreshing = _refreshing_four_new_versions(repository, make_server, monkeypatch)
    server._registry.stop_poller()  # what the exit's clean-up of an unclosed server does first
    go_on.set()
    refreshing.join(30)
    assert loads == [2]


def test_a_stopping_server_refuses_a_load_by_name_and_says_why(repository: Path, make_server: ServerFactory) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server._registry.stop_poller()  # the process is exiting
    # (it answered 1 as if version 2 were not wanted; then a ModelLoadError, read as a bad file: a 422 or 500)
    with pytest.raises(inprocserve.ServerClosedError, match="model 'scale' was not loaded: the server is closing"):
        server.load("scale")


class _OnLog(logging.Handler):
    """Runs ``action`` once, when a record starting with ``prefix`` is logged (a step at a known moment)."""

    def __init__(self, prefix: str, action: Any) -> None:
        super().__init__(logging.INFO)
        self.prefix, self.action = prefix, action

    def emit(self, record: logging.LogRecord) -> None:
        if self.action is not None and record.getMessage().startswith(self.prefix):
            self.action, action = None, self.action
            action()


@pytest.mark.parametrize("loaded", [True, False], ids=["a-loaded-version", "a-new-version"])
def test_a_version_removed_while_a_refresh_loads_another_model_is_no_failed_load(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture, loaded: bool
) -> None:
    save_model(build_scale_model(1.0), repository, "a", 1)
    save_model(build_scale_model(1.0), repository, "b", 1)
    if loaded:
        save_model(build_scale_model(2.0), repository, "b", 2)
    server = make_server(repository)
    # A refresh scans every model, then loads model after model: while it loads a's new release, an operator
    # removes b's version 2 (served, or just copied in), which the scan found.
    save_model(build_scale_model(3.0), repository, "a", 2)
    if not loaded:
        save_model(build_scale_model(2.0), repository, "b", 2)
    remove = _OnLog("model 'a' version 2 ready", lambda: shutil.rmtree(repository / "b" / "2"))
    logging.getLogger("inprocserve._model").addHandler(remove)
    caplog.set_level(logging.INFO, logger="inprocserve")
    try:
        problems = server.refresh()
    finally:
        logging.getLogger("inprocserve._model").removeHandler(remove)
    assert remove.action is None  # (it ran)
    assert problems == []
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    b = server.status()["models"]["b"]["versions"]
    assert all(v["state"] == "ready" and v.get("reload_error") is None for v in b.values())
    assert server.refresh() == []
    assert server.models["b"] == [1]
    assert server.predict("b", np.ones((1, 4), np.float32)).version == 1


def test_a_slow_copy_in_place_fails_twice_at_most_not_at_every_poll(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    whole = build_mlp_model((4, 64, 4), seed=3).SerializeToString()
    target = repository / "scale" / "2" / "model.onnx"
    target.parent.mkdir()
    caplog.set_level(logging.ERROR, logger="inprocserve")
    with target.open("wb") as copy:  # a copy over a slow link: the poller refreshes after every chunk
        for start in range(0, len(whole), len(whole) // 10):
            copy.write(whole[start : start + len(whole) // 10])
            copy.flush()
            server.refresh()
    failures = [r.getMessage() for r in caplog.records if "failed to load" in r.getMessage()]
    assert 1 <= len(failures) <= 2, failures
    # once the files stop changing it loads: at the next refresh, or the one after (one poll later)
    for _ in range(2):
        if server.models == {"scale": [2]}:
            break
        assert server.refresh() == []
    assert server.models == {"scale": [2]}
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == 2


def test_a_file_renamed_in_while_its_sessions_build_never_mixes_two_files(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A deploy tool writes model.onnx.tmp and renames it over model.onnx while a reload builds the pool's
    # sessions (by path, one after the other): the version must not serve sessions of two files.
    target = save_model(build_scale_model(1.0), repository, "scale", 1)
    pool = inprocserve.PoolConfig(size=3, share_session=False, intra_op_threads=1)
    server = make_server(repository, config=inprocserve.ModelConfig(pool=pool))

    def deploy(factor: float) -> None:
        partial = target.with_name("model.onnx.tmp")
        partial.write_bytes(build_scale_model(factor).SerializeToString())
        os.replace(partial, target)

    real_session = _ort_backend._ort().InferenceSession
    built: list[str] = []

    def session_while_deploying(path: str, *args: Any, **kwargs: Any) -> Any:
        built.append(path)
        if len(built) == 2:  # the release after the one being loaded lands between two session builds
            deploy(3.0)
        return real_session(path, *args, **kwargs)

    deploy(2.0)
    monkeypatch.setattr(_ort_backend._ort(), "InferenceSession", session_while_deploying)
    assert server.refresh() == []
    monkeypatch.undo()
    version = server.status()["models"]["scale"]["versions"]["1"]
    assert version["state"] == "ready"
    with concurrent.futures.ThreadPoolExecutor(6) as pool_of_callers:
        answers = set(pool_of_callers.map(lambda _: float(one(server)["y"][0, 0]), range(300)))
    assert answers == {3.0}
    assert server.refresh() == []  # loaded from the file as it is: nothing left to reload


def test_a_file_that_keeps_changing_while_it_loads_is_loaded_once_it_stops(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    real_session = _ort_backend._ort().InferenceSession
    factor = iter(range(2, 100))
    written: list[float] = []

    def session_while_deploying(path: str, *args: Any, **kwargs: Any) -> Any:
        session = real_session(path, *args, **kwargs)
        partial = target.with_name("model.onnx.tmp")
        written.append(float(next(factor)))
        partial.write_bytes(build_scale_model(written[-1]).SerializeToString())
        os.replace(partial, target)  # a release lands during every load
        return session

    monkeypatch.setattr(_ort_backend._ort(), "InferenceSession", session_while_deploying)
    partial = target.with_name("model.onnx.tmp")
    partial.write_bytes(build_scale_model(1.5).SerializeToString())
    os.replace(partial, target)
    (problem,) = server.refresh()
    assert "kept changing while it loaded (3 attempts)" in problem
    assert "as loaded before keeps serving" in problem
    assert float(one(server)["y"][0, 0]) == 1.0
    monkeypatch.undo()
    assert server.refresh() == []  # the deploys stopped: the file as it is now loads
    assert float(one(server)["y"][0, 0]) == written[-1]


def renamed_input_model(factor: float) -> Any:
    model = build_scale_model(factor)
    model.graph.input[0].name = "features"
    model.graph.node[0].input[0] = "features"
    return model


def test_an_incompatible_rewrite_of_the_serving_version_is_refused_like_a_new_version(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # The compatibility gate holds an incompatible new version back; the same model renamed over the file of
    # the version that serves (same number) must not go live unchecked either, breaking every caller.
    target = save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    partial = target.with_name("model.onnx.tmp")
    partial.write_bytes(renamed_input_model(2.0).SerializeToString())
    os.replace(partial, target)
    with caplog.at_level(logging.ERROR, logger="inprocserve"):
        (problem,) = server.refresh()
    assert "not compatible with the loaded copy" in problem
    assert "input 'x' is gone" in problem
    assert "server.load('scale', version=1)" in problem
    assert "version 1 as loaded before keeps serving" in problem
    assert float(one(server)["y"][0, 0]) == 1.0  # callers sending x keep working
    assert "not compatible" in server.status()["models"]["scale"]["versions"]["1"]["reload_error"]
    assert server.refresh() == []  # said once, tried again when the file changes
    # on purpose, by hand: the new file serves
    assert server.load("scale", version=1) == 1
    assert float(server.predict("scale", {"features": np.ones((1, 4), np.float32)})["y"][0, 0]) == 2.0
    assert server.status()["models"]["scale"]["versions"]["1"]["reload_error"] is None


def test_a_compatible_rewrite_of_the_serving_version_still_reloads(
    repository: Path, make_server: ServerFactory
) -> None:
    target = save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    partial = target.with_name("model.onnx.tmp")
    partial.write_bytes(build_scale_model(5.0).SerializeToString())
    os.replace(partial, target)
    assert server.refresh() == []
    assert float(one(server)["y"][0, 0]) == 5.0


def test_a_batch_scored_in_parts_is_answered_by_one_copy_when_its_version_is_rewritten(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # predict_many sends a batch larger than a request in parts, and makes them agree on one version; a
    # release renamed over that version's file between two parts keeps its number: the one answer joined
    # rows of the old model and of the new one, all labelled version 1.
    from inprocserve import _scoring

    target = save_model(build_scale_model(1.0), repository, "scale", 1)
    batching = inprocserve.BatchingConfig(max_batch_size=4, max_request_rows=4)
    server = make_server(repository, config=inprocserve.ModelConfig(batching=batching))
    real_wait = _scoring._wait
    answered: list[int] = []

    def wait_then_deploy(*args: Any, **kwargs: Any) -> Any:
        answer = real_wait(*args, **kwargs)
        answered.append(1)
        if len(answered) == 2:  # a new release lands after the second part is answered
            partial = target.with_name("model.onnx.tmp")
            partial.write_bytes(build_scale_model(2.0).SerializeToString())
            os.replace(partial, target)
            assert server.refresh() == []
        return answer

    monkeypatch.setattr(_scoring, "_wait", wait_then_deploy)
    (answer,) = server.predict_many("scale", iter([np.ones((24, 4), np.float32)]), max_in_flight=1)
    assert answer.version == 1
    assert set(answer["y"][:, 0].tolist()) == {2.0}  # every row from the file that serves now


def test_a_failed_load_by_path_leaves_the_repository_model_hot_reloaded(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    broken = tmp_path / "builds" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not a model")
    with pytest.raises(inprocserve.ModelLoadError):
        server.load("scale", path=broken)  # a build of my own that does not load: nothing changes
    save_model(build_scale_model(2.0), repository, "scale", 2)
    assert server.refresh() == []
    assert server.models == {"scale": [2]}
    assert one(server).version == 2


def test_a_model_loaded_by_name_after_one_loaded_by_path_is_hot_reloaded_again(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    mine = save_model(build_scale_model(10.0), tmp_path / "builds", "scale", 1)
    server = make_server(repository)
    server.unload("scale")
    server.load("scale", path=mine)
    server.unload("scale")
    assert server.load("scale") == 1  # back to the repository's versions and policy
    assert float(one(server)["y"][0, 0]) == 1.0
    save_model(build_scale_model(2.0), repository, "scale", 2)
    assert server.refresh() == []
    assert server.models == {"scale": [2]}


def test_a_version_loaded_by_name_after_a_load_by_path_hands_the_model_back_to_the_repository(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    # as plain load(name) does: after load(name, version=N) the model stayed out of every later refresh, so the
    # next release was never served (and a removed one never retired) until a restart
    save_model(build_scale_model(1.0), repository, "scale", 1)
    mine = save_model(build_scale_model(10.0), tmp_path / "builds", "scale", 1)
    server = make_server(repository)
    assert server.load("scale", path=mine, version=9) == 9  # my build, beside the repository's version 1
    assert server.load("scale", version=1) == 1  # the repository's, to compare with
    save_model(build_scale_model(2.0), repository, "scale", 2)  # the next release
    assert server.refresh() == []
    assert server.models == {"scale": [2, 9]}  # (mine serves as loaded until I unload it)
    assert float(one(server)["y"][0, 0]) == 2.0
    assert float(server.predict("scale", np.ones((1, 4), np.float32), version=9)["y"][0, 0]) == 10.0
    nine = save_model(build_scale_model(9.0), repository, "scale", 9)
    server.load("scale", version=9)  # the repository's 9 over mine: hot reloaded as any other from now on
    past_the_tick(nine)
    save_model(build_scale_model(90.0), repository, "scale", 9)
    assert server.refresh() == []
    assert float(server.predict("scale", np.ones((1, 4), np.float32), version=9)["y"][0, 0]) == 90.0


def test_a_failed_load_by_path_of_a_model_unloaded_by_hand_leaves_it_unloaded(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    server.unload("scale")
    broken = tmp_path / "builds" / "model.onnx"
    broken.parent.mkdir()
    broken.write_bytes(b"not a model")
    with pytest.raises(inprocserve.ModelLoadError):
        server.load("scale", path=broken)
    assert server.refresh() == []
    assert server.models == {}


def test_closing_a_server_during_a_hot_reload_loads_no_version_after_the_one_in_progress(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions 2 to 5 arrive at once and close() is called while 2 loads: it waits for that load, not for
    3, 4 and 5 to be loaded (each as long as a release takes to load and warm up) and then unloaded."""
    server, loads, go_on, refreshing = _refreshing_four_new_versions(repository, make_server, monkeypatch)
    closing = threading.Thread(target=server.close)
    closing.start()
    try:
        wait_until(server._registry._stop.is_set, timeout_s=5.0)  # the close has told the refresh to stop
    finally:
        go_on.set()
        refreshing.join(30)
        closing.join(30)
    assert loads == [2]


def test_a_version_that_failed_on_a_config_passed_to_load_is_tried_again_on_the_next_config(
    repository: Path, make_server: ServerFactory
) -> None:
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    wrong = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(inputs_file="missing.npz"))
    with pytest.raises(inprocserve.ModelLoadError, match=r"missing\.npz"):
        server.load("scale", config=wrong)  # version 1 keeps serving as it was loaded; version 2 failed
    assert server.load("scale", config=inprocserve.ModelConfig()) == 2  # the files are the same, the config not
    assert server.models == {"scale": [2]}
    assert one(server).version == 2
    assert server.status()["models"]["scale"]["versions"]["2"]["state"] == "ready"


def test_a_poll_while_the_serving_versions_file_is_written_again_keeps_it_serving(
    repository: Path, make_server: ServerFactory
) -> None:
    """A file replaced by deleting it and writing it again (tar -x over the release, rm then cp) is missing for a
    moment: a poll then retired version 2, and version 1 (loaded again for it) answered until the next poll."""
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    clock = ManualClock()
    server = make_server(repository, clock=clock)
    file = repository / "scale" / "2" / "model.onnx"
    release = file.read_bytes()
    file.unlink()
    server._registry.refresh(settle_empty_configs=True)  # a poll between the two
    assert server.models == {"scale": [2]} and one(server).version == 2
    file.write_bytes(release)
    assert server._registry.refresh(settle_empty_configs=True) == []
    assert server.models == {"scale": [2]} and one(server).version == 2
    file.unlink()  # removed for good: retired once it has stayed missing a while
    server._registry.refresh(settle_empty_configs=True)
    assert server.models == {"scale": [2]}
    clock.advance(2.0)
    server._registry.refresh(settle_empty_configs=True)
    assert server.models == {"scale": [1]} and one(server).version == 1
    file.write_bytes(release)
    assert server.refresh() == [] and server.models == {"scale": [2]}
    file.unlink()
    server.refresh()  # a refresh asked for takes the repository as it is
    assert server.models == {"scale": [1]}


def _runs_without_a_limit(busy_repository: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``busy``'s runs have no time limit (``pool.max_run_s`` off), and a refresh waits 0.2 s (not 30) for a
    version it stopped serving before leaving it to drain on a thread of its own."""
    monkeypatch.setattr(_registry, "_RELOAD_DRAIN_S", 0.2)
    (busy_repository / "busy" / "config.toml").write_text("[pool]\nmax_run_s = 0\n")


def _stuck_in_a_drain(
    server: inprocserve.Server, busy_repository: Path, hold_session: SessionHolder
) -> tuple[Any, Any]:
    """A run of ``busy`` version 1 that does not end (until the test lets it go), then a refresh to a version 2:
    version 1 is left draining. Returns the held run and version 1."""
    held = hold_session(server, at_most_s=30)
    draining = server._registry.loaded["busy"][1]
    save_model(build_busy_model(), busy_repository, "busy", 2)
    server.refresh()
    return held, draining


def test_a_stuck_run_of_a_replaced_version_does_not_stop_hot_reload(
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: SessionHolder,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # With pool.max_run_s off, a refresh waited without limit for the replaced version's run to end, holding the
    # lifecycle lock: hot reload of every model stopped behind one stuck run
    _runs_without_a_limit(busy_repository, monkeypatch)
    server = make_server(busy_repository)
    held = hold_session(server, at_most_s=30)  # a run that does not end (until the test lets it go)
    save_model(build_busy_model(), busy_repository, "busy", 2)
    refreshing = threading.Thread(target=server.refresh)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        refreshing.start()
        refreshing.join(10)
        stopped = refreshing.is_alive()
        held.let_go()  # (so that the old code's refresh ends)
        refreshing.join(30)
    assert not stopped, "the refresh waited for the stuck run"
    assert server.models == {"busy": [2]}
    assert held.future.result(timeout=30)["y"].shape == (3000, 512)  # the stuck run was not cut: it ended
    assert [r.getMessage() for r in caplog.records if "still running" in r.getMessage()] == [
        "model 'busy' version 1: a run is still running 0.2 s after it stopped serving (pool.max_run_s is off); "
        "the refresh goes on, and the version is unloaded when its last run ends"
    ]


def test_a_config_toml_whose_default_version_fails_to_reload_applies_its_rollout_with_its_policy(
    repository: Path, make_server: ServerFactory
) -> None:
    # The version policy of the new file applied while its rollout did not (routing took the old copy's): the
    # file's parts applied apart, and the stable version it names never took the traffic
    save_model(build_scale_model(1.0), repository, "scale", 1)  # 4 features
    save_model(build_scale_model(2.0, features=8), repository, "scale", 2)
    server = make_server(repository)
    assert server.models == {"scale": [2]}
    np.save(repository / "scale" / "narrow.npy", np.ones((1, 4), np.float32))  # a warm-up version 2 refuses
    (repository / "scale" / "config.toml").write_text(
        'version_policy = "all"\n[warmup]\ninputs_file = "narrow.npy"\n[rollout]\nstable = 1\n'
    )
    problems = server.refresh()
    assert len(problems) == 1 and "(version 2 as loaded before keeps serving)" in problems[0]
    assert server.models == {"scale": [1, 2]}  # the policy
    assert server.predict("scale", np.ones((1, 4), np.float32)).version == 1  # and the rollout, together


def test_a_failed_load_of_a_version_with_a_config_leaves_the_config_in_force(
    repository: Path, make_server: ServerFactory
) -> None:
    # The config= of a load(name, version=N) that failed stayed in force for the model: the next release was
    # loaded on it, and failed as the call had, while the call had changed nothing else
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    wrong = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(inputs_file="missing.npz"))
    with pytest.raises(inprocserve.ModelLoadError, match=r"missing\.npz"):
        server.load("scale", version=1, config=wrong)
    assert one(server).version == 1  # (version 1 keeps serving as it was loaded)
    save_model(build_scale_model(2.0), repository, "scale", 2)  # the next release
    assert server.refresh() == []
    assert server.models == {"scale": [2]}
    assert one(server).version == 2


def test_close_stops_the_stuck_run_of_a_version_a_refresh_left_draining(
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: SessionHolder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A version a refresh left to drain on a thread of its own was no longer loaded: close() waited its
    # timeout_s for that thread and returned with the run going on, its sessions and threads never closed,
    # where close() stops every run still in flight once its wait is over
    _runs_without_a_limit(busy_repository, monkeypatch)
    server = make_server(busy_repository)
    held, _ = _stuck_in_a_drain(server, busy_repository, hold_session)
    assert server.models == {"busy": [2]}
    server.close(timeout_s=0.2)
    held.let_go()  # the run goes on only if close() left its session open
    with pytest.raises(inprocserve.ServerClosedError):
        held.future.result(timeout=30)


def test_the_clean_up_of_an_unclosed_server_stops_the_stuck_run_of_a_version_left_draining(
    busy_repository: Path, hold_session: SessionHolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As close() does: a version a refresh left draining is no longer loaded, and the clean-up of a server
    # nobody closed (a web worker's, at its exit) closed only the loaded ones
    _runs_without_a_limit(busy_repository, monkeypatch)
    server = inprocserve.Server(busy_repository)
    held, draining = _stuck_in_a_drain(server, busy_repository, hold_session)
    del server
    gc.collect()  # (the clean-up runs on a thread of its own)
    wait_until(lambda: draining.state == "unloaded", timeout_s=5)  # (closed: unloaded, its run held or not)
    held.let_go()  # the run goes on only if the clean-up left its session open
    with pytest.raises(inprocserve.ServerClosedError):
        held.future.result(timeout=30)


def test_a_forked_child_neither_waits_for_nor_closes_the_parents_version_left_draining(
    busy_repository: Path,
    make_server: ServerFactory,
    hold_session: SessionHolder,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The child's copy of a version its parent left draining has runs that are the parent's: they never end in
    # the child, whose close() must not wait for them, and the parent's run goes on
    _runs_without_a_limit(busy_repository, monkeypatch)
    server = make_server(busy_repository)
    held, _ = _stuck_in_a_drain(server, busy_repository, hold_session)

    def in_the_child() -> str:
        started = time.monotonic()
        server.close(timeout_s=20)
        return f"{time.monotonic() - started:.1f}"

    assert float(run_in_forked_child(in_the_child)) < 10
    assert held.release()["y"].shape == (3000, 512)  # the parent's run was not stopped


def test_unload_waiting_for_a_stuck_run_does_not_stop_the_hot_reload_of_other_models(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    # unload(name, version) without a timeout_s waits for the version's runs, as documented, but it held the
    # lifecycle lock meanwhile: with one run stuck, every refresh, poll and load of every model waited too
    save_model(build_scale_model(1.0), busy_repository, "scale", 1)
    server = make_server(busy_repository)
    held = hold_session(server, at_most_s=30)  # a run that does not end (until the test lets it go)
    unloading = threading.Thread(target=server.unload, args=("busy", 1))
    unloading.start()
    wait_until(lambda: "busy" not in server.models)  # it stopped serving, and waits for the run
    save_model(build_scale_model(2.0), busy_repository, "scale", 2)
    refreshing = threading.Thread(target=server.refresh)
    refreshing.start()
    refreshing.join(5)
    stopped = refreshing.is_alive()
    still_waiting = unloading.is_alive()
    held.let_go()  # (so that the old code's refresh ends)
    refreshing.join(30)
    unloading.join(30)
    assert not stopped, "the refresh waited for the unload's stuck run"
    assert still_waiting, "unload() returned before the run it waits for ended"
    assert not unloading.is_alive()
    assert server.models == {"scale": [2]}
    assert held.future.result(timeout=30)["y"].shape == (3000, 512)  # the run was not cut: it ended


def test_close_stops_the_stuck_run_an_unload_waits_for(
    busy_repository: Path, make_server: ServerFactory, hold_session: SessionHolder
) -> None:
    # close() waited for the lifecycle lock that the unload held for as long as the run went on: for ever
    server = make_server(busy_repository)
    held = hold_session(server, at_most_s=30)  # a run that does not end (until the test lets it go)
    unloading = threading.Thread(target=server.unload, args=("busy", 1))
    unloading.start()
    wait_until(lambda: "busy" not in server.models)  # it stopped serving, and waits for the run
    closing = threading.Thread(target=server.close, kwargs={"timeout_s": 0.2})
    closing.start()
    closing.join(10)
    stopped = closing.is_alive()
    held.let_go()  # the run goes on only if close() left its session open
    closing.join(30)
    unloading.join(30)
    assert not stopped, "close() waited for the run the unload waits for"
    assert not unloading.is_alive(), "the unload still waits after close() stopped the run"
    with pytest.raises(inprocserve.ServerClosedError):
        held.future.result(timeout=30)


def test_a_release_numbered_as_a_build_loaded_by_path_waits_for_it_with_a_warning(
    repository: Path, tmp_path: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    # A build loaded by path takes the next number (2 here). Release 2 arriving later was never loaded, without
    # a word, and the policy made the build, as "version 2", the default: my build took every request
    save_model(build_scale_model(1.0), repository, "scale", 1)
    mine = save_model(build_scale_model(10.0), tmp_path / "builds", "scale", 1)
    server = make_server(repository)
    assert server.load("scale", path=mine) == 2  # my build, to compare with
    assert server.load("scale", version=1) == 1  # the repository's model again (my build keeps serving)
    save_model(build_scale_model(2.0), repository, "scale", 2)  # the next release, numbered as my build
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        server.refresh()
        server.refresh()
    warnings = [r.getMessage() for r in caplog.records if "loaded by path" in r.getMessage()]
    assert len(warnings) == 1, warnings  # (once, not at every poll)
    assert str(mine) in warnings[0] and str(repository / "scale" / "2" / "model.onnx") in warnings[0]
    assert float(one(server)["y"][0, 0]) == 1.0  # the default is still the repository's version 1
    assert float(server.predict("scale", np.ones((1, 4), np.float32), version=2)["y"][0, 0]) == 10.0
    assert server.load("scale", version=2) == 2  # the release, in place of my build
    assert float(one(server)["y"][0, 0]) == 2.0
