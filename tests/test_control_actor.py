"""Who a control revision names when the caller does not (``updated_by``): cron jobs and containers often have
no terminal and no ``USER``, and their uid may have no account; the trail read ``unknown@host:pid`` there."""

from __future__ import annotations

import errno
import json
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from inprocserve._control import CONTROL_FILENAME, default_actor
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory

USER_VARIABLES = ("LOGNAME", "USER", "LNAME", "USERNAME")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def no_terminal_and_no_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """A process started by cron or a container's runtime: no controlling terminal, no user variables."""

    def no_terminal() -> str:
        raise OSError(errno.ENXIO, "No such device or address")  # what os.getlogin() raises there

    monkeypatch.setattr(os, "getlogin", no_terminal)
    for variable in USER_VARIABLES:
        monkeypatch.delenv(variable, raising=False)


def tail() -> str:
    return f"@{socket.gethostname()}:{os.getpid()}"


def test_the_user_variables_are_read_in_getpass_order(
    no_terminal_and_no_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    for variable in reversed(USER_VARIABLES):  # each one set wins over those set before it
        monkeypatch.setenv(variable, variable.lower())
        assert default_actor() == variable.lower() + tail()


def test_without_user_variables_the_uids_account_names_the_writer(no_terminal_and_no_user: None) -> None:
    assert default_actor() == pwd.getpwuid(os.getuid()).pw_name + tail()


def test_a_uid_without_an_account_is_named_by_its_number(
    no_terminal_and_no_user: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container run as an arbitrary uid (``docker run --user 12345``, OpenShift) has no passwd entry:
    ``pwd.getpwuid`` raises KeyError there (a real uid without one: the test below, where it can set one)."""

    def no_account(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_account)
    assert default_actor() == f"uid{os.getuid()}" + tail()


def unused_uid() -> int:
    uid = 54321
    while True:
        try:
            pwd.getpwuid(uid)
        except KeyError:
            return uid
        uid += 1


ACTOR_CHILD = """
import os, pwd, sys
from inprocserve._control import default_actor
os.setuid(int(sys.argv[1]))  # (after the imports: the interpreter may lie in a folder only root can read)
print(default_actor())
"""


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="only root can become a uid")
def test_a_process_whose_uid_has_no_account_is_named_by_its_number() -> None:
    uid = unused_uid()
    env = {name: value for name, value in os.environ.items() if name not in USER_VARIABLES}
    env["PYTHONPATH"] = str(ROOT)
    result = subprocess.run(
        [sys.executable, "-c", ACTOR_CHILD, str(uid)],
        env=env, cwd="/", stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False,
        start_new_session=True,  # (a new session: no controlling terminal, as under cron)
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().startswith(f"uid{uid}@{socket.gethostname()}:"), result.stdout


def test_a_switch_without_an_actor_records_the_fallback(
    no_terminal_and_no_user: None, repository: Path, make_server: ServerFactory
) -> None:
    for version in (1, 2):
        save_model(build_scale_model(float(version)), repository, "scale", version)
    make_server(repository, control_interval_s=None).switch("scale", 1)
    written = json.loads((repository / CONTROL_FILENAME).read_text())
    assert written["updated_by"] == pwd.getpwuid(os.getuid()).pw_name + tail()
