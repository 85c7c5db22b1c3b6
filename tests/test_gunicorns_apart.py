"""The gunicorns the tests start share no state through the user's home: gunicorn 27's control socket, at one
path per user (``~/.gunicorn/gunicorn.ctl``), which each master takes from the others, is off in them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.processes import gunicorn_has_control_socket


def test_a_gunicorn_started_as_the_tests_start_them_opens_no_control_socket(tmp_path: Path) -> None:
    if not gunicorn_has_control_socket():
        pytest.skip("this gunicorn (before 27) opens no control socket")
    (tmp_path / "app.py").write_text("def app(environ, start_response):\n    return []\n")
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", "app:app"],
        cwd=tmp_path, env=dict(os.environ), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    settings = [line for line in result.stdout.splitlines() if line.startswith("control_socket")]
    assert any(re.fullmatch(r"control_socket_disable\s*=\s*True", line) for line in settings), settings
