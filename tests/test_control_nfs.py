"""The control file on a share that fails: what NFS (``ESTALE``) and permissions (``EACCES``) do to readers,
writers and the admin endpoints.

Neither error can be made here (no NFS server; the tests run as root, whom permission bits do not stop), so
each test makes the one system call that would fail raise it, and nothing else is stood in for: real servers,
real models, a real control file."""

from __future__ import annotations

import errno
import os
import pathlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve._control as control_module
from inprocserve import web
from inprocserve._control import CONTROL_FILENAME
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

X = np.ones((1, 4), np.float32)


@pytest.fixture
def fleet(repository: Path) -> Path:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    return repository


@pytest.mark.parametrize("code", [errno.EACCES, errno.ESTALE])
def test_an_admin_change_whose_repository_folder_cannot_be_looked_at_is_refused_with_a_message(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    # Path.is_dir passes EACCES (a parent folder this user may not search) and ESTALE (a share's folder
    # replaced on the server) through as a plain OSError: the admin endpoints answered it 500, with nothing
    # for the operator, instead of a refusal that says what failed.
    server = make_server(fleet, control_interval_s=None)
    real_stat = pathlib.Path.stat

    def stat(self: Path, **kwargs: Any) -> os.stat_result:
        if self == fleet:  # (the one call that fails: a stand-in for the share or the permission)
            raise OSError(code, os.strerror(code), str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    answer = web.admin_answer(server, "kill", "scale", b"", actor="ops")
    assert (answer.status, answer.body["error"]) == (409, "configuration")
    assert "the repository folder cannot be looked at" in answer.body["message"]
    assert os.strerror(code) in answer.body["message"] and "nothing was changed" in answer.body["message"]
    monkeypatch.undo()
    assert server.predict("scale", X).version == 2  # nothing was written: no kill switch
    assert web.admin_answer(server, "kill", "scale", b"", actor="ops").status == 200


def test_a_repository_folder_that_cannot_be_looked_at_as_the_control_file_is_read_is_a_control_error(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No control file (revision 0), and the folder's check that tells "absent" from "not there" fails (its
    # folder replaced on the share's server meanwhile): a plain OSError came out of sync_control (and out of
    # the control-file watcher's read), not the control error every other failed read is.
    server = make_server(fleet, control_interval_s=None)
    real_stat = pathlib.Path.stat

    def stat(self: Path, **kwargs: Any) -> os.stat_result:
        if self == fleet:  # (the one call that fails: a stand-in for the share)
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert server.sync_control() == 0  # revision 0 stays in force
    error = server.status()["control"]["error"]
    assert "the repository folder cannot be looked at (Stale file handle" in error


def test_a_control_file_replaced_by_another_host_as_a_worker_starts_is_read_again(
    fleet: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On NFS, a read that races another host's rename of the control file over the one it opened fails with
    # ESTALE (its file handle names a file the server removed). The worker logged an ERROR and reported
    # control.error for a whole interval, and one starting at that moment routed no request
    # (ControlStateUnknownError) until its next read. The file is there, whole: it is opened again.
    make_server(fleet, control_interval_s=None).switch("scale", 1, actor="alice")
    real_read = control_module.read_regular_file
    stale: list[Path] = []

    def read_regular_file(path: Path, limit: int) -> bytes:
        if not stale:  # (the one call that fails: a stand-in for the NFS server's answer)
            stale.append(path)
            raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(path))
        return real_read(path, limit)

    monkeypatch.setattr(control_module, "read_regular_file", read_regular_file)
    worker = make_server(fleet, control_interval_s=60)
    assert stale == [fleet / CONTROL_FILENAME]
    assert worker.predict("scale", X).version == 1  # the fleet's switch, at once
    assert worker.status()["control"]["error"] is None
    # a handle stale at every open (the share itself gone bad) is still reported, after one more try only
    stale.clear()

    def always_stale(path: Path, limit: int) -> bytes:
        stale.append(path)
        raise OSError(errno.ESTALE, os.strerror(errno.ESTALE), str(path))

    monkeypatch.setattr(control_module, "read_regular_file", always_stale)
    assert worker.sync_control() == 1
    assert len(stale) == 2
    assert "cannot be read: [Errno 116] Stale file handle" in worker.status()["control"]["error"]


def test_the_cli_given_a_repository_it_cannot_look_at_says_so_in_one_line(
    fleet: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # An operator's `python -m inprocserve kill /srv/team/models fraud` under a folder their user may not
    # search (EACCES) ended in a PermissionError traceback from its first check of the folder.
    from inprocserve.__main__ import main

    real_stat = pathlib.Path.stat

    def stat(self: Path, **kwargs: Any) -> os.stat_result:
        if self == fleet:  # (the one call that fails: a stand-in for the permission, which root has)
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real_stat(self, **kwargs)

    monkeypatch.setattr(pathlib.Path, "stat", stat)
    assert main(["kill", str(fleet), "scale"]) == 2
    assert capsys.readouterr().err == (
        f"error: the model repository {fleet} cannot be looked at (Permission denied): a parent folder this user "
        "may not search? nothing was written\n"
    )
    monkeypatch.undo()
    assert not (fleet / CONTROL_FILENAME).exists()
