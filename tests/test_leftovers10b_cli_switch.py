"""The CLI's first ``switch`` of a model (no stable version named yet): what it loads to find the version
that serves now, and the rollback target it records."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from inprocserve import ModelConfig, VersionPolicy
from inprocserve.__main__ import main
from inprocserve._control import ControlFile
from inprocserve.testing import build_mlp_model, build_scale_model, save_model

from .conftest import ServerFactory
from .test_remote_retries import Scripted
from .test_remote_retries import scripted as scripted  # (the fixture: a scripted model server until teardown)


def test_a_first_switch_asks_the_remote_version_serving_now_once(
    repository: Path, scripted: Scripted, capsys: pytest.CaptureFixture[str]
) -> None:
    # Version 2, the newest, runs on a remote server: the switch asked it for its signature to find the version
    # answering, then again to compare with it (each ask costs a connect, or its timeout when it is down).
    save_model(build_scale_model(1.0), repository, "scale", 1)
    remote = repository / "scale" / "2" / "remote.toml"
    remote.parent.mkdir()
    remote.write_text(f'url = "http://127.0.0.1:{scripted.server_port}"\nmodel = "scale"\n')
    (repository / "scale" / "config.toml").write_text('version_policy = "all"\n')
    assert main(["inspect", str(remote)]) == 0  # asks it once
    one_ask, scripted.gets = scripted.gets, 0
    assert main(["switch", str(repository), "scale", "1"]) == 0, capsys.readouterr().err
    assert ControlFile(repository).read().models["scale"].previous_stable == 2
    assert scripted.gets == one_ask


def test_a_first_switch_without_load_check_records_the_version_serving_to_roll_back_to(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    # Version 3 renames the input: the gate holds it back, and workers answer with 2. `switch --no-load-check
    # m 1` recorded 3, the policy's newest, to roll back to: a rollback sent every worker to the version that
    # breaks every caller, and that never served.
    save_model(build_mlp_model((4, 8, 2), input_name="x"), repository, "m", 1)
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.all()), poll_interval_s=None)
    save_model(build_mlp_model((4, 8, 2), seed=1, input_name="x"), repository, "m", 2)
    server.refresh()
    save_model(build_mlp_model((4, 8, 2), seed=2, input_name="features"), repository, "m", 3)
    server.refresh()
    (repository / "m" / "config.toml").write_text('version_policy = "all"\n')
    assert server.status()["models"]["m"]["answering_version"] == 2
    assert main(["switch", "--no-load-check", str(repository), "m", "1"]) == 0, capsys.readouterr().err
    assert ControlFile(repository).read().models["m"].previous_stable == 2


def test_a_first_switch_without_load_check_records_a_version_that_does_not_load_here_but_serves(
    repository: Path,
    scripted: Scripted,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Version 3 is served by a model server that the fleet calls with a token from its environment; the shell
    # the switch runs in has no token, so version 3 does not load here. `switch --no-load-check scale 1` skipped
    # it and recorded 2, which never answered, to roll back to: a rollback sent the fleet to version 2.
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(3.0), repository, "scale", 2)
    _served_with_the_fleets_token(repository, scripted, 3, monkeypatch)
    (repository / "scale" / "config.toml").write_text('version_policy = "all"\n')
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.all()), poll_interval_s=None)
    assert server.status()["models"]["scale"]["answering_version"] == 3
    monkeypatch.delenv("SCALE_TOKEN")  # (the operator's shell)
    assert main(["switch", "--no-load-check", str(repository), "scale", "1"]) == 0
    assert ControlFile(repository).read().models["scale"].previous_stable == 3
    err = capsys.readouterr().err
    assert "version 3 does not load here" in err and "'SCALE_TOKEN' is not set" in err
    assert "nothing was written" not in err  # (it was)


def test_a_switch_away_from_a_version_that_does_not_load_here_does_not_say_nothing_was_written(
    repository: Path, scripted: Scripted, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Version 2, serving now, needs a token this shell does not have: the switch to 1 is written (exit 0), not
    # compared with 2, and its warning said "...; nothing was written (servers would fail to load it too ...)".
    save_model(build_scale_model(1.0), repository, "scale", 1)
    _served_with_the_fleets_token(repository, scripted, 2, monkeypatch, token=None)  # (this shell has none)
    assert main(["switch", str(repository), "scale", "1"]) == 0
    assert ControlFile(repository).read().models["scale"].stable == 1
    err = capsys.readouterr().err
    assert "version 2, which serves now, does not load here" in err and "'SCALE_TOKEN' is not set" in err
    assert "nothing was written" not in err


def test_without_load_check_the_gate_still_holds_back_a_version_after_one_that_does_not_load_here(
    repository: Path,
    scripted: Scripted,
    make_server: ServerFactory,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Version 2 does not load here (its token is the fleet's); 3 loads and is taken after it, and 4, which takes
    # 5 columns, is held back by the workers' gate: 3 answers, and is recorded to roll back to (not 4, the newest).
    save_model(build_scale_model(1.0), repository, "scale", 1)
    _served_with_the_fleets_token(repository, scripted, 2, monkeypatch)
    save_model(build_scale_model(3.0), repository, "scale", 3)
    (repository / "scale" / "config.toml").write_text('version_policy = "all"\n')
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.all()), poll_interval_s=None)
    save_model(build_scale_model(4.0, features=5), repository, "scale", 4)
    server.refresh()
    assert server.status()["models"]["scale"]["answering_version"] == 3
    # The worker's gate named 3 the stable version in the control file (see test_fleet_hold.py); taken out by
    # hand, the first switch works the version serving out from the versions again, as the workers' gate did.
    control_file = ControlFile(repository)
    assert control_file.read().models["scale"].stable == 3
    control_file.update(lambda control: dataclasses.replace(control, models={}))
    monkeypatch.delenv("SCALE_TOKEN")  # (the operator's shell)
    assert main(["switch", "--no-load-check", str(repository), "scale", "1"]) == 0
    assert ControlFile(repository).read().models["scale"].previous_stable == 3
    assert "version 2 does not load here" in capsys.readouterr().err


def _served_with_the_fleets_token(
    repository: Path,
    scripted: Scripted,
    version: int,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None = "Bearer fleet",
) -> None:
    """Version ``version`` of ``scale``: served by the scripted model server, which the fleet calls with a token
    from its environment (``SCALE_TOKEN``, set to ``token`` here; ``None``: unset), which a shell without it
    cannot load."""
    monkeypatch.setenv("INPROCSERVE_REMOTE_ENV", "SCALE_TOKEN")
    if token is None:
        monkeypatch.delenv("SCALE_TOKEN", raising=False)
    else:
        monkeypatch.setenv("SCALE_TOKEN", token)
    remote = repository / "scale" / str(version) / "remote.toml"
    remote.parent.mkdir()
    remote.write_text(
        f'url = "http://127.0.0.1:{scripted.server_port}"\nmodel = "scale"\n'
        '[headers_from_env]\nAuthorization = "SCALE_TOKEN"\n'
    )
