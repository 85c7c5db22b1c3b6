"""The compatibility gate when one poll finds several new versions: with a policy that selects several
(``VersionPolicy.all()``), version 2 (compatible with the version serving) and version 3 (not) dropped together
put 2 live and hold 3. Before, the gate held the newest, 3, and kept the old default: 2 never served, while the
same two versions dropped a poll apart put 2 live."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inprocserve import ModelConfig, Server, VersionPolicy
from inprocserve._control import Control, ControlFile, ModelControl
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .test_compatibility import renamed, rows
from .test_fleet_hold import _answering

ALL = ModelConfig(version_policy=VersionPolicy.all())


def _drop(repository: Path, version: int, *, compatible: bool) -> None:
    """Version ``version`` of ``m``: taking ``x`` as version 1 does (compatible), or ``features`` (not)."""
    save_model(renamed("x" if compatible else "features", seed=version), repository, "m", version)


def _on_version_1(repository: Path, make_server: ServerFactory, workers: int = 1, **kwargs: object) -> list[Server]:
    _drop(repository, 1, compatible=True)
    return [make_server(repository, poll_interval_s=None, **kwargs) for _ in range(workers)]


def _stable(repository: Path) -> tuple[int | None, bool]:
    state = ControlFile(repository).read().models["m"]
    return state.stable, state.gate_named


def test_a_compatible_version_dropped_with_an_incompatible_newer_one_serves(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    [server] = _on_version_1(repository, make_server, config=ALL)
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.refresh() == []
    assert server.predict("m", {"x": rows()}).version == 2
    assert server.predict("m", {"features": rows()}, version=3).version == 3  # (held, still servable pinned)
    status = server.status()["models"]["m"]
    assert (status["default_version"], status["answering_version"]) == (2, 2)
    assert status["versions"]["3"]["compatible"] is False
    assert server.models == {"m": [1, 2, 3]}
    [warning] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    assert "version 3 is not compatible with version 1" in warning, warning
    assert "version 2, compatible with it, serves by default" in warning, warning
    assert "version 2 is named the stable version in the fleet's control file" in warning, warning
    assert _stable(repository) == (2, True)  # (the version serving is the fleet's, not the old default)


def test_with_the_default_policy_only_the_newest_is_selected_and_held(
    repository: Path, make_server: ServerFactory
) -> None:
    [server] = _on_version_1(repository, make_server)
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    server.refresh()
    assert server.predict("m", {"x": rows()}).version == 1
    assert server.models == {"m": [1, 3]}
    assert server.status()["models"]["m"]["versions"]["3"]["compatible"] is False
    assert _stable(repository) == (1, True)


def test_the_fleet_is_named_the_version_serving_and_a_later_compatible_one_goes_live(
    repository: Path, make_server: ServerFactory
) -> None:
    first, second = _on_version_1(repository, make_server, workers=2, config=ALL)
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    first.refresh()
    assert _stable(repository) == (2, True)
    second.sync_control()
    started = make_server(repository, poll_interval_s=None, config=ALL)
    assert _answering(first, second, started) == [2, 2, 2]
    second.refresh()  # (its own gate: 3 held against 2, nothing written)
    assert ControlFile(repository).read().revision == 1
    # 3 is judged against the version serving, 2, from now on: still held; 4, compatible with 2, goes live.
    _drop(repository, 4, compatible=True)
    first.refresh()
    assert _stable(repository) == (4, True)
    for worker in (second, started):
        worker.sync_control()
    assert _answering(first, second, started) == [4, 4, 4]
    assert [w.predict("m", {"x": rows()}).version for w in (first, second, started)] == [4, 4, 4]
    assert first.status()["models"]["m"]["versions"]["3"]["compatible"] is False


def test_a_stable_version_the_gate_named_advances_to_the_compatible_one(
    repository: Path, make_server: ServerFactory
) -> None:
    _drop(repository, 1, compatible=True)

    def gate_named(control: Control) -> Control:
        return dataclasses.replace(control, models={"m": ModelControl(stable=1, stable_by_gate=1)})

    ControlFile(repository).update(gate_named, actor="compatibility gate (earlier worker)")
    first, second = (make_server(repository, poll_interval_s=None, config=ALL) for _ in range(2))
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    first.refresh()
    assert _stable(repository) == (2, True)
    second.sync_control()
    assert _answering(first, second) == [2, 2]
    assert [w.predict("m", {"x": rows()}).version for w in (first, second)] == [2, 2]
    assert first.predict("m", {"features": rows()}, version=3).version == 3
    assert first.status()["models"]["m"]["versions"]["3"]["compatible"] is False


def test_a_canary_s_version_is_never_the_default_in_place_of_a_held_one(
    repository: Path, make_server: ServerFactory
) -> None:
    """Only a version the policy selects stands in for the held one: a canary's version 2 (loaded for the
    canary, past a policy of versions 1 and 3) is compatible with 1 but stays the canary's; 1 keeps the default."""
    _drop(repository, 1, compatible=True)
    _drop(repository, 2, compatible=True)

    def canary(control: Control) -> Control:
        return dataclasses.replace(
            control, models={"m": ModelControl(stable=None, canary_version=2, canary_percent=10)}
        )

    ControlFile(repository).update(canary, actor="operator")
    policy = ModelConfig(version_policy=VersionPolicy.specific(1, 3))
    server = make_server(repository, poll_interval_s=None, config=policy)
    _drop(repository, 3, compatible=False)
    server.refresh()
    status = server.status()["models"]["m"]
    assert (status["default_version"], status["answering_version"]) == (1, 1)
    assert _stable(repository) == (1, True)
