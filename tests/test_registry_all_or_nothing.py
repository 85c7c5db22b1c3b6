"""A load that fails part-way changes nothing that serves: the registry's all-or-nothing loads."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve._control import ControlFile
from inprocserve._registry import Registry
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def test_a_failed_load_of_a_model_with_a_config_changes_nothing_that_serves(
    repository: Path, make_server: ServerFactory
) -> None:
    # Version 2 takes 3 features, version 1 takes 4: the warm-up inputs fit version 1 only
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0, features=3), repository, "scale", 2)
    np.save(repository / "scale" / "warm.npy", np.ones((1, 4), np.float32))
    every = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository, models={"scale": every})
    assert server.models == {"scale": [1, 2]}
    tight = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(),
        batching=inprocserve.BatchingConfig(max_request_rows=1),
        warmup=inprocserve.WarmupConfig(inputs_file="warm.npy"),
    )
    with pytest.raises(inprocserve.ModelLoadError, match=r"version 2 .*expected size 3 on axis 1"):
        server.load("scale", config=tight)
    # Nothing changed: version 1 still takes two rows (the old configuration), as version 2 does
    assert server.models == {"scale": [1, 2]}
    assert server.predict("scale", np.ones((2, 4), np.float32), version=1).version == 1
    assert server.predict("scale", np.ones((2, 3), np.float32), version=2).version == 2
    # ... and the configuration the call failed with is not in force for the next refresh either
    assert server.refresh() == []
    assert server.predict("scale", np.ones((2, 4), np.float32), version=1).version == 1


@pytest.mark.parametrize("version", [None, 1])
def test_a_failed_load_keeps_a_model_unloaded_by_hand_out_of_the_next_refresh(
    repository: Path, make_server: ServerFactory, version: int | None
) -> None:
    # An operator takes a model out of service, then tries it on a new configuration, which fails ("nothing
    # changed"): the load had already forgotten the hand unload, so the next refresh served the model again.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    np.save(repository / "scale" / "warm.npy", np.ones((1, 3), np.float32))  # fits neither version
    every = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server(repository, models={"scale": every})
    server.unload("scale")
    warmed = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.all(), warmup=inprocserve.WarmupConfig(inputs_file="warm.npy")
    )
    with pytest.raises(inprocserve.ModelLoadError, match="warm-up"):
        server.load("scale", version=version, config=warmed)
    assert server.refresh() == []
    assert server.models == {}


def test_a_load_of_a_version_not_in_the_repository_keeps_a_model_unloaded_by_hand_out_of_service(
    repository: Path, make_server: ServerFactory
) -> None:
    # An operator takes a model out of service, then mistypes the version to try (there is no version 9):
    # ModelNotFoundError, yet the load had forgotten the hand unload first, so the next refresh served it again.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    server = make_server(repository)
    server.unload("scale")
    with pytest.raises(inprocserve.ModelNotFoundError, match="no version 9"):
        server.load("scale", version=9)
    assert server.refresh() == []
    assert server.models == {}


def test_a_failed_load_of_a_model_with_a_config_changes_nothing_when_the_version_that_fails_is_the_fleets(
    repository: Path, make_server: ServerFactory
) -> None:
    # The fleet serves version 1 (its control file's stable) while version 2 is the latest. An operator took the
    # model out of service, then loads it on a configuration whose warm-up inputs fit version 2 only: the
    # all-or-nothing part built version 2 and left out version 1, which the sync after it then failed to build,
    # so the call raised yet left the model serving version 2 on the new configuration, kept for every refresh.
    save_model(build_scale_model(1.0, features=3), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    np.save(repository / "scale" / "warm.npy", np.ones((1, 4), np.float32))
    ControlFile(repository).set_model("scale", lambda state: replace(state, stable=1))
    server = make_server(repository, control_interval_s=None)
    assert server.models == {"scale": [1, 2]}
    server.unload("scale")
    warmed = inprocserve.ModelConfig(warmup=inprocserve.WarmupConfig(inputs_file="warm.npy"))
    with pytest.raises(inprocserve.ModelLoadError, match=r"version 1 .*expected size 3 on axis 1"):
        server.load("scale", config=warmed)
    assert server.models == {}
    assert server.refresh() == []
    assert server.models == {}


def test_a_load_with_a_config_whose_policy_selects_no_version_changes_nothing(
    repository: Path, make_server: ServerFactory
) -> None:
    # A mistyped policy (version 9 of a model with versions 1 and 2) on a tighter configuration: the call
    # raised "its version_policy selects none of the versions", yet the configuration stayed in force, version 2
    # reloaded on it (two rows refused) and kept on it through every refresh.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)
    server = make_server(repository, control_interval_s=None)
    mistyped = inprocserve.ModelConfig(
        version_policy=inprocserve.VersionPolicy.specific(9),
        batching=inprocserve.BatchingConfig(max_request_rows=1),
    )
    with pytest.raises(inprocserve.ModelLoadError, match=r"selects none of the versions in the repository \(1, 2\)"):
        server.load("scale", config=mistyped)
    assert server.models == {"scale": [2]}
    assert server.predict("scale", np.ones((2, 4), np.float32)).version == 2
    assert server.refresh() == []
    assert server.predict("scale", np.ones((2, 4), np.float32)).version == 2


def test_a_refresh_that_comes_while_a_load_with_a_config_stages_its_versions_serves_them_on_that_config(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A periodic sync (the poller, a control revision) that runs while ``load(name, config=...)`` has built
    its versions on the new configuration but not yet published them must not load them again on the old one:
    the lifecycle lock makes it wait for the load, and it then reads the configuration the load put in force.
    Only the registry's build of one version is held, so the refresh is sure to come in the middle."""
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    new = inprocserve.ModelConfig(batching=inprocserve.BatchingConfig(max_batch_size=8))
    staged, go_on = threading.Event(), threading.Event()
    build = Registry._build

    def held(self: Registry, name: str, number: int, path: Path, config: Any, **kw: Any) -> Any:
        built = build(self, name, number, path, config, **kw)
        if config is new and not staged.is_set():
            staged.set()
            go_on.wait(10)
        return built

    monkeypatch.setattr(Registry, "_build", held)
    errors: list[BaseException] = []

    def run(call: Callable[[], object]) -> threading.Thread:
        def target() -> None:
            try:
                call()
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=target)
        thread.start()
        return thread

    loading = run(lambda: server.load("scale", config=new))
    assert staged.wait(10)
    # the version file changes as the load stages: the refresh would reload it, on whichever config it reads
    save_model(build_scale_model(3.0), repository, "scale", 1)
    refreshing = run(server.refresh)
    refreshing.join(0.2)
    assert refreshing.is_alive()  # waits for the load
    go_on.set()
    loading.join(10)
    refreshing.join(10)
    assert not errors
    status = server.status()["models"]["scale"]["versions"]["1"]
    assert status["max_batch_size"] == 8
    server.refresh()
    assert server.status()["models"]["scale"]["versions"]["1"]["max_batch_size"] == 8
    assert server.predict("scale", np.ones((1, 4), np.float32))["y"].tolist() == [[3.0] * 4]
