"""Review of the gate's mark as the version it named (stable_by_gate): what may advance it, and who reads it."""

from __future__ import annotations

from pathlib import Path

from inprocserve.__main__ import main
from inprocserve._control import ControlFile

from .conftest import ServerFactory
from .test_fleet_hold import _answering
from .test_fleet_hold3 import _drop, _gate_named, _stable


def _policy(repository: Path, policy: str) -> None:
    (repository / "m" / "config.toml").write_text(f"version_policy = {policy}\n")


def test_a_version_loaded_by_hand_is_not_named_the_fleet_s_stable_version_when_the_policy_selects_none(
    repository: Path, make_server: ServerFactory
) -> None:
    """Versions 1 and 2 selected, 2 (incompatible) held, 1 named by the gate. An operator loads version 3
    (compatible) by hand on one worker to try it; then a typo in config.toml makes the policy select nothing.
    The worker's next poll must not name its hand-loaded version 3 the fleet's stable version."""
    _drop(repository, 1, compatible=True)
    _policy(repository, "{ specific = [1, 2] }")
    running = make_server(repository, poll_interval_s=None)
    _drop(repository, 2, compatible=False)
    running.refresh()
    running.sync_control()
    assert _stable(repository) == (1, True)
    _drop(repository, 3, compatible=True)
    assert running.load("m", version=3) == 3
    running.refresh()
    assert _stable(repository) == (1, True)  # (the policy selects 1 and 2: no advance)
    _policy(repository, "{ specific = [12] }")  # the typo
    running.refresh()
    running.sync_control()
    assert ControlFile(repository).read().models["m"].stable == 1
    assert _answering(running) == [1]


def test_the_kill_switch_stops_experiments_and_the_gate_s_name_still_follows_a_compatible_version(
    repository: Path, make_server: ServerFactory
) -> None:
    """What the docs say: the kill switch does not freeze the stable version; the gate's name advances under it."""
    [running] = _gate_named(repository, make_server)
    assert main(["kill", str(repository), "m"]) == 0
    running.sync_control()
    _drop(repository, 3, compatible=True)
    running.refresh()
    running.sync_control()
    state = ControlFile(repository).read().models["m"]
    assert (state.stable, state.gate_named, state.kill) == (3, True, True), state
    assert _answering(running) == [3]
