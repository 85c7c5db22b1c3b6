"""A relative ``REPOSITORY`` (``"models"``, where docs/django.md writes ``BASE_DIR / "models"``) is read from the
working directory: found by ``manage.py runserver`` in the project's folder, "not a directory" under a server that
systemd, a container or a test runner starts elsewhere. The refusal says where it looked and what to write."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings

from inprocserve.testing import build_scale_model, save_model


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A project folder holding ``models/fraud/1``; the tests start the app from a sibling folder."""
    save_model(build_scale_model(2.0), tmp_path / "project" / "models", "fraud", 1)
    (tmp_path / "elsewhere").mkdir()
    return tmp_path / "project"


def test_a_relative_repository_found_from_the_project_folder_serves(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(project)
    with override_settings(INPROCSERVE={"REPOSITORY": "models"}):
        response = Client().get("/-/inprocserve/ready")
    assert response.status_code == 200, response.content


def test_a_relative_repository_missing_from_the_working_directory_names_it_and_base_dir(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said "INPROCSERVE['REPOSITORY'] (models) is not a directory. Create it, or point REPOSITORY at the
    # folder that holds your models": the folder is there, beside settings.py, and the message named neither the
    # working directory it was looked for in nor BASE_DIR.
    elsewhere = project.parent / "elsewhere"
    monkeypatch.chdir(elsewhere)
    with override_settings(INPROCSERVE={"REPOSITORY": "models"}), pytest.raises(ImproperlyConfigured) as refused:
        Client().get("/-/inprocserve/ready")  # (the middleware checks the settings as a server loads the app)
    said = str(refused.value)
    assert "inprocserve.E001" in said, said
    assert f"a relative path is read from the working directory, here {elsewhere / 'models'}" in said, said
    assert "BASE_DIR / 'models'" in said, said


def test_an_absolute_repository_that_is_missing_keeps_its_message(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = project / "nothing-here"
    with override_settings(INPROCSERVE={"REPOSITORY": missing}), pytest.raises(ImproperlyConfigured) as refused:
        Client().get("/-/inprocserve/ready")
    said = str(refused.value)
    assert f"INPROCSERVE['REPOSITORY'] ({missing}) is not a directory." in said, said
    assert "working directory" not in said, said


def test_a_home_relative_repository_says_that_tilde_is_not_expanded(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # It said to write BASE_DIR / '~/models': a folder named ~ under the project, where the models are in the home
    # folder (Python's paths, and so the server, never expand ~).
    monkeypatch.setenv("HOME", str(project))  # (project/models is ~/models)
    monkeypatch.chdir(project.parent / "elsewhere")
    with override_settings(INPROCSERVE={"REPOSITORY": "~/models"}), pytest.raises(ImproperlyConfigured) as refused:
        Client().get("/-/inprocserve/ready")
    said = str(refused.value)
    assert "inprocserve.E001" in said, said
    assert "~ is not expanded" in said, said
    assert "Path('~/models').expanduser()" in said, said
    assert "BASE_DIR / '~/models'" not in said, said
    with override_settings(INPROCSERVE={"REPOSITORY": Path("~/models").expanduser()}):  # (what it says works)
        assert Client().get("/-/inprocserve/ready").status_code == 200


def test_a_relative_repository_stays_the_folder_it_was_when_the_server_was_built(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server kept the relative path: after a chdir (a test's, a job runner's) its next poll read another
    folder, ``refresh()`` answered ``["model repository 'models' is not a directory"]`` and a new version was
    never found. It is the folder of the working directory the server was built in, as Flask's is of init_app."""
    from inprocserve_django import get_server

    monkeypatch.chdir(project)
    with override_settings(INPROCSERVE={"REPOSITORY": "models"}):
        assert Client().get("/-/inprocserve/ready").status_code == 200
        monkeypatch.chdir(project.parent / "elsewhere")
        save_model(build_scale_model(3.0), project / "models", "fraud", 2)
        assert get_server().refresh() == []
        assert get_server().models == {"fraud": [2]}  # (the latest, by the default policy)
