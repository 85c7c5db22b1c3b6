"""A real gunicorn (no --preload) whose worker is replaced while the repository is mid-change.

Without ``--preload`` every worker runs the app's start-up checks when it loads Django. A worker replaced
while a ``config.toml`` was saved with a typo (EAGER), or while the repository folder was briefly gone (any
mode), failed them, and gunicorn halted the whole server ("Worker failed to boot"). A replaced worker now
starts and serves the model once the repository is valid again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from inprocserve.testing import build_scale_model, save_model
from tests.ports import listening_socket
from tests.processes import stop_process

TESTS = Path(__file__).parent
GOOD = "[batching]\nmax_batch_size = 8\n"
TYPO = "[batching\nmax_batch_size = 8\n"


def _call(base: str, path: str) -> tuple[int, Any]:
    body = json.dumps({"rows": [[1.0, 2.0, 3.0, 4.0]]}).encode() if path == "/score" else None
    try:
        with urllib.request.urlopen(urllib.request.Request(base + path, data=body), timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def _until(check: Any, what: str, log: Path, seconds: float = 15.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = check()
        except OSError:  # (not listening yet)
            value = None
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} within {seconds}s:\n{log.read_text()}")


@pytest.mark.parametrize("change", ["config.toml typo, EAGER", "folder gone, lazy"])
def test_a_worker_replaced_while_the_repository_is_mid_change_does_not_stop_gunicorn(
    tmp_path: Path, change: str
) -> None:
    """A config.toml saved with a typo fails EAGER's check in ready(); a folder briefly gone (a release
    swapped in by two renames) fails the middleware's settings check (E001) in any mode."""
    pytest.importorskip("gunicorn")
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    config_toml = repository / "scale" / "config.toml"
    config_toml.write_text(GOOD)
    eager = "EAGER" in change
    (tmp_path / "replaced_settings.py").write_text(
        "from testproject_settings import *  # noqa: F403\n"
        f"INPROCSERVE = {{'REPOSITORY': {str(repository)!r}, 'EAGER': {eager}, 'POLL_INTERVAL_S': 0.2}}\n"
        # (disable_existing_loggers left at its default: with the hook, the master had made inprocserve's
        # loggers, and each worker's dictConfig disabled them: the replaced worker's error was lost)
        "LOGGING = {'version': 1, 'handlers': {'err': {'class': 'logging.StreamHandler'}},"
        " 'root': {'handlers': ['err'], 'level': 'WARNING'}}\n"
    )
    conf = tmp_path / "gunicorn.conf.py"  # EAGER with the hook, lazy without
    conf.write_text("from inprocserve.gunicorn import post_worker_init  # noqa: F401\n" if eager else "")
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "replaced_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), *sys.path]),
    }
    listener = listening_socket()  # handed to gunicorn: no other process can take its port first
    base = f"http://127.0.0.1:{listener.getsockname()[1]}"
    command = [sys.executable, "-m", "gunicorn", "-c", str(conf), "--workers", "1"]
    command += ["--bind", f"fd://{listener.fileno()}"]
    command += ["--max-requests", "4", "django.core.wsgi:get_wsgi_application()"]  # recycled every 4 requests
    log = tmp_path / "gunicorn.log"
    aside = tmp_path / "models-previous"
    with listener, log.open("w") as out:
        master = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path, pass_fds=[listener.fileno()]
        )
    try:
        _until(lambda: _call(base, "/score")[0] == 200, "the first worker serves", log)
        if eager:
            config_toml.write_text(TYPO)
        else:
            repository.rename(aside)
        # requests recycle the worker: its replacements load Django while the repository is mid-change
        _until(lambda: _call(base, "/score") and "repository check failed" in log.read_text(), "a replacement", log)
        for _ in range(8):  # served, or the model not (404), or no server yet (the folder is gone)
            assert _call(base, "/score")[0] in (200, 404, 500), log.read_text()
        assert master.poll() is None, log.read_text()
        if eager:
            config_toml.write_text(GOOD)
        else:
            aside.rename(repository)
        _, body = _until(lambda: (r := _call(base, "/score"))[0] == 200 and r, "served again", log)
        assert body["version"] == 1 and master.poll() is None, log.read_text()
    finally:
        stop_process(master)
