"""A relative ``Server(repository="models")`` is the folder of the working directory the server was built in, for
good: a process that changes directory afterwards (a daemonizing server, a test harness, a management command)
polled, refreshed and wrote its control file under another folder, or failed ("model repository 'models' is not
a directory") and never served a new version. Made absolute, not resolved: a link on the path is followed anew
at every scan, so a release switched by a link serves."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, wait_until

CONTROL_FILE = ".inprocserve-control.json"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The working directory the server is built in, holding ``models/fraud/1``; a sibling ``elsewhere`` holds
    a ``models`` folder of its own (another model), which a relative path read after the chdir would find."""
    save_model(build_scale_model(1.0), tmp_path / "project" / "models", "fraud", 1)
    save_model(build_scale_model(5.0), tmp_path / "elsewhere" / "models", "other", 1)
    monkeypatch.chdir(tmp_path / "project")
    return tmp_path / "project"


def test_a_refresh_after_a_chdir_reads_the_folder_the_server_was_built_with(
    project: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server("models", control_interval_s=None)
    assert server.repository == project / "models" and server.repository.is_absolute()
    monkeypatch.chdir(project.parent / "elsewhere")
    save_model(build_scale_model(2.0), project / "models", "fraud", 2)
    assert server.refresh() == []
    assert server.models == {"fraud": [2]}  # (the latest, by the default policy; no 'other' from elsewhere)
    assert server.predict("fraud", [[1.0, 1.0, 1.0, 1.0]]).version == 2


def test_the_poller_after_a_chdir_finds_a_new_version(
    project: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = make_server("models", poll_interval_s=0.05, control_interval_s=None)
    monkeypatch.chdir(project.parent / "elsewhere")
    save_model(build_scale_model(2.0), project / "models", "fraud", 2)
    wait_until(lambda: server.models == {"fraud": [2]})
    assert "other" not in server.status()["models"]


def test_the_control_file_after_a_chdir_is_the_repositorys(
    project: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    save_model(build_scale_model(2.0), project / "models", "fraud", 2)
    every = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.all())
    server = make_server("models", models={"fraud": every}, control_interval_s=0.05)
    monkeypatch.chdir(project.parent / "elsewhere")
    server.switch("fraud", 1)
    assert json.loads((project / "models" / CONTROL_FILE).read_text())["models"]["fraud"]["stable"] == 1
    assert not (project.parent / "elsewhere" / "models" / CONTROL_FILE).exists()
    assert server.predict("fraud", [[1.0, 1.0, 1.0, 1.0]]).version == 1
    assert server.status()["control"]["file"] == str(project / "models" / CONTROL_FILE)


def test_a_link_on_the_path_is_kept_not_resolved(
    project: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A release switched by a link (``current -> releases/a``, then ``releases/b``): the server reads through
    the link at each scan, as it did when the path was kept as given."""
    for release, factor in (("a", 1.0), ("b", 3.0)):
        save_model(build_scale_model(factor), project / "releases" / release, "fraud", 1)
    (project / "current").symlink_to(Path("releases") / "a")
    server = make_server("current", control_interval_s=None)
    assert server.repository == project / "current"
    monkeypatch.chdir(project.parent / "elsewhere")
    (project / "next").symlink_to(Path("releases") / "b")
    (project / "next").replace(project / "current")
    save_model(build_scale_model(3.0), project / "releases" / "b", "fraud", 2)
    assert server.refresh() == []
    assert server.models == {"fraud": [2]}


def test_a_missing_relative_repository_names_the_path_given_and_where_it_was_looked_for(
    project: Path, make_server: ServerFactory
) -> None:
    with pytest.raises(inprocserve.ConfigurationError) as refused:
        make_server("modles")
    said = str(refused.value)
    assert said.startswith(
        f"the model repository 'modles' is not a folder (read from the working directory: {project / 'modles'}): "
    ), said
    with pytest.raises(inprocserve.ConfigurationError) as refused:  # (an absolute path is named once)
        make_server(project / "modles")
    assert str(refused.value).startswith(f"the model repository {str(project / 'modles')!r} is not a folder: ")
