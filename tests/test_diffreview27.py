"""Review of the gate's stand-in (a15aeae): with a policy that selects several versions, a compatible version
found with an incompatible newer one becomes the default. Where the version answering default traffic is a
stable version an operator named (``switch``, ``[rollout] stable``), that one keeps answering: the hold's
warning must say so, not that the stand-in serves."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from inprocserve import ModelConfig, RolloutConfig, VersionPolicy
from inprocserve._control import Control, ControlFile, ModelControl
from inprocserve.testing import save_model

from .conftest import ServerFactory
from .test_compatibility import renamed, rows

ALL = ModelConfig(version_policy=VersionPolicy.all())


def _drop(repository: Path, version: int, *, compatible: bool) -> None:
    save_model(renamed("x" if compatible else "features", seed=version), repository, "m", version)


def _warning(caplog: pytest.LogCaptureFixture) -> str:
    [warning] = [r.getMessage() for r in caplog.records if "not compatible" in r.getMessage()]
    return warning


def test_an_operator_s_stable_version_keeps_serving_and_the_warning_says_so(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    server.switch("m", 1)  # the operator holds the fleet on version 1
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.refresh() == []
    assert server.predict("m", {"x": rows()}).version == 1
    assert server.status()["models"]["m"]["answering_version"] == 1
    warning = _warning(caplog)
    assert "version 3 is not compatible with version 1, which keeps serving by default" in warning, warning
    assert "version 2" not in warning, warning


def test_a_stable_version_the_gate_named_keeps_serving_while_a_canary_runs_and_the_warning_says_so(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """The gate's name does not advance while an operator's canary runs: version 2 keeps answering."""
    _drop(repository, 1, compatible=True)
    _drop(repository, 2, compatible=True)

    def gate_named_with_a_canary(control: Control) -> Control:
        state = ModelControl(stable=2, stable_by_gate=2, canary_version=1, canary_percent=10)
        return dataclasses.replace(control, models={"m": state})

    ControlFile(repository).update(gate_named_with_a_canary, actor="operator")
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.refresh() == []
    server.sync_control()
    assert server.status()["models"]["m"]["answering_version"] == 2
    assert ControlFile(repository).read().models["m"].stable == 2
    warning = _warning(caplog)
    assert "version 4 is not compatible with version 2, which keeps serving by default" in warning, warning
    assert "version 3" not in warning, warning


def test_the_configured_stable_version_keeps_serving_and_the_warning_says_so(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    _drop(repository, 1, compatible=True)
    config = ModelConfig(version_policy=VersionPolicy.all(), rollout=RolloutConfig(stable=1))
    server = make_server(repository, poll_interval_s=None, config=config)
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    with caplog.at_level("WARNING", logger="inprocserve"):
        assert server.refresh() == []
    assert server.predict("m", {"x": rows()}).version == 1
    warning = _warning(caplog)
    assert "version 3 is not compatible with version 1, which keeps serving by default" in warning, warning
    assert "version 2" not in warning, warning


def test_a_compatible_version_serves_when_the_version_serving_goes_in_the_same_poll(
    repository: Path, make_server: ServerFactory
) -> None:
    """A deploy that syncs a snapshot of the repository (1 gone, 2 and 3 new) in one go serves 2 and holds 3
    back, as dropped a poll apart (3, which breaks 1's callers, served)."""
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=True)
    _drop(repository, 3, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    server.refresh()
    assert server.predict("m", {"x": rows()}).version == 2
    assert server.predict("m", {"features": rows()}, version=3).version == 3  # held, still servable by number
    named = ControlFile(repository).read().models["m"]
    assert (named.stable, named.stable_by_gate) == (2, 2)  # the fleet is named 2 too
    server.refresh()  # from now on 3 is judged against 2, which serves
    assert server.predict("m", {"x": rows()}).version == 2


def test_the_gate_s_version_gone_in_the_poll_that_brings_a_compatible_and_an_incompatible_one(
    repository: Path, make_server: ServerFactory
) -> None:
    """Version 1 named by the gate (2 held against it); then 1 removed in the poll that brings 3 (compatible
    with 1) and 4 (not): the name's removal and its advance both come due; the fleet ends named 3, which
    serves, with 4 held."""
    _drop(repository, 1, compatible=True)
    server = make_server(repository, poll_interval_s=None, config=ALL)
    _drop(repository, 2, compatible=False)
    server.refresh()
    named = ControlFile(repository).read().models["m"]
    assert (named.stable, named.stable_by_gate) == (1, 1)
    _drop(repository, 3, compatible=True)
    _drop(repository, 4, compatible=False)
    shutil.rmtree(repository / "m" / "1")
    server.refresh()
    assert server.predict("m", {"x": rows()}).version == 3
    server.refresh()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.stable_by_gate) == (3, 3)
    assert server.predict("m", {"x": rows()}).version == 3
    assert server.predict("m", {"features": rows()}, version=4).version == 4
