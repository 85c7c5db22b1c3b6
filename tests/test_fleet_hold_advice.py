"""What status and the log advise when the compatibility gate's fleet-wide hold could not be written to the
control file (FLEET NOT HELD): advice that works where it is given, followed here as an operator would."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest

from inprocserve.__main__ import main
from inprocserve._cli_status import summarize
from inprocserve._control import ControlFile

from .conftest import ServerFactory
from .test_fleet_hold import _answering, _version_1_then_an_incompatible_2


def _hand_ways(text: str) -> str:
    """The part of a FLEET NOT HELD text (or warning) that says how to name the version by hand."""
    match = re.search(r"(?:named by hand: |name it \()(.*)", text)
    assert match is not None, text
    return match.group(1)


def test_with_a_control_file_that_is_a_symbolic_link_the_advice_is_config_toml_which_holds_the_fleet(
    repository: Path,
    make_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The control file is a symbolic link (a ConfigMap), so the gate cannot name version 1 in it: status and
    the log advised ``python -m inprocserve switch --force REPOSITORY m 1``, which fails the same way (exit
    status 2, "is a symbolic link ... Nothing was changed"). They advise config.toml's ``[rollout] stable``,
    and following it holds the fleet: the failure is gone from status and a worker that starts serves 1."""
    managed = tmp_path / "managed.json"
    managed.write_text('{"revision": 0, "models": {}}\n')
    (repository / ".inprocserve-control.json").symlink_to(managed)
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        running.refresh()
    error = running.status()["models"]["m"]["fleet_hold_error"]
    assert error is not None and "symbolic link" in error, error
    [warning] = [r.getMessage() for r in caplog.records if "could not be named" in r.getMessage()]
    [line] = [line for line in summarize(running.status()) if "FLEET NOT HELD" in line]
    for advice in (_hand_ways(error), _hand_ways(warning), _hand_ways(line)):
        assert "[rollout] stable = 1 in the model's config.toml" in advice, advice
        assert "switch --force" not in advice, advice

    # (what the advice used to be: it fails)
    assert main(["switch", "--force", str(repository), "m", "1"]) == 2
    assert "symbolic link" in capsys.readouterr().err

    (repository / "m" / "config.toml").write_text("[rollout]\nstable = 1\n")
    running.refresh()
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
    assert not any("FLEET NOT HELD" in line for line in summarize(running.status()))
    starting = make_server(repository, poll_interval_s=None)
    assert _answering(running, starting) == [1, 1]


def test_where_the_cli_can_write_the_control_file_the_advice_names_both_ways(
    repository: Path, make_server: ServerFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    """A failure the CLI does not share (the file's lock held by a stuck writer when the gate tried): status
    names config.toml's way and the switch, as the log does, and the switch it names holds the fleet."""
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    with ControlFile(repository)._locked():
        running.refresh()
    error = running.status()["models"]["m"]["fleet_hold_error"]
    assert error is not None and "is held by" in error, error
    advice = _hand_ways(error)
    assert "[rollout] stable = 1 in the model's config.toml" in advice, advice
    assert "`python -m inprocserve switch --force REPOSITORY m 1`" in advice, advice

    assert main(["switch", "--force", str(repository), "m", "1"]) == 0
    capsys.readouterr()
    state = ControlFile(repository).read().models["m"]
    assert state.stable == 1, state
    running.sync_control()
    assert running.status()["models"]["m"]["fleet_hold_error"] is None


def _gate_warning(caplog: pytest.LogCaptureFixture) -> str:
    [warning] = [r.getMessage() for r in caplog.records if "is not compatible with version" in r.getMessage()]
    return warning


def test_with_a_control_file_that_is_a_symbolic_link_the_gate_s_first_warning_advises_what_works_there(
    repository: Path,
    make_server: ServerFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The gate's warning (before FLEET NOT HELD) said version 1 "is named the stable version in the fleet's
    control file" and "To promote version 2 ...: `python -m inprocserve switch --force REPOSITORY m 2`", though
    the file is a symbolic link that neither the gate nor the switch writes (exit status 2, nothing changed).
    It says so, and its advice, followed, promotes version 2 on every worker."""
    managed = tmp_path / "managed.json"
    managed.write_text('{"revision": 0, "models": {}}\n')
    (repository / ".inprocserve-control.json").symlink_to(managed)
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        running.refresh()
    warning = _gate_warning(caplog)
    assert "switch --force" not in warning and "switch(..., force=True)" not in warning, warning
    assert "is named the stable version in the fleet's control file" not in warning, warning
    assert "cannot name version 1 in the fleet's control file (.inprocserve-control.json, a symbolic link)" in (
        warning
    ), warning
    assert "(pin version=2, or [rollout] stable = 2 in its config.toml to promote it)" in warning, warning
    assert "name it ([rollout] stable = 1 in the model's config.toml;" in warning, warning
    assert main(["switch", "--force", str(repository), "m", "2"]) == 2  # (what it advised: it fails)
    assert "symbolic link" in capsys.readouterr().err

    (repository / "m" / "config.toml").write_text("[rollout]\nstable = 2\n")  # (what it advises now)
    running.refresh()
    starting = make_server(repository, poll_interval_s=None)
    assert _answering(running, starting) == [2, 2]


def test_with_a_linked_control_file_naming_a_version_not_loaded_the_advice_is_that_file_where_it_is_managed(
    repository: Path, make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The managed control file names version 3, not in the repository: the warning advised the switch (which
    refuses a link) and config.toml (outranked by the control file's name): its one way is that file."""
    managed = tmp_path / "managed.json"
    managed.write_text('{"revision": 1, "models": {"m": {"stable": 3}}}\n')
    (repository / ".inprocserve-control.json").symlink_to(managed)
    [running] = _version_1_then_an_incompatible_2(repository, make_server)
    with caplog.at_level(logging.WARNING, logger="inprocserve"):
        running.refresh()
    warning = _gate_warning(caplog)
    assert "switch --force" not in warning and "switch(..., force=True)" not in warning, warning
    assert "config.toml" not in warning and "forced" not in warning, warning
    assert "(pin version=2, or stable = 2 in the fleet's control file where it is managed to promote it)" in (
        warning
    ), warning
    assert "name it (stable = 1 in the fleet's control file where it is managed, as it names version 3;" in (warning), (
        warning
    )
    managed.write_text('{"revision": 2, "models": {"m": {"stable": 1}}}\n')  # (what it advises)
    running.sync_control()
    starting = make_server(repository, poll_interval_s=None)
    assert _answering(running, starting) == [1, 1]
