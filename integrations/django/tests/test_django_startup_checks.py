"""A bad INPROCSERVE setting under a real gunicorn fails the start-up, as `manage.py check` reports it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from inprocserve.testing import build_scale_model, save_model

TESTS = Path(__file__).parent


def start_gunicorn(tmp_path: Path, inprocserve_setting: str) -> subprocess.CompletedProcess[str]:
    """gunicorn (2 workers) serving the test project with ``INPROCSERVE = {...}``; returns once it exits (a
    start-up that succeeds is stopped by the timeout: that is the failure this test looks for)."""
    pytest.importorskip("gunicorn")
    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    (tmp_path / "startup_settings.py").write_text(
        "from testproject_settings import *  # noqa: F403\n"
        f"INPROCSERVE = {{'REPOSITORY': {str(repository)!r}, {inprocserve_setting}}}\n"
    )
    environment = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "startup_settings",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(TESTS), *sys.path]),
    }
    command = [sys.executable, "-m", "gunicorn", "--workers", "2", "--bind", "127.0.0.1:0"]
    command += ["django.core.wsgi:get_wsgi_application()"]
    try:
        return subprocess.run(command, env=environment, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(
            f"gunicorn started with a bad setting (it was a 500 at each request): {exc.stderr!r}"
        ) from None


def test_a_bad_setting_stops_gunicorn_at_start_up_with_the_checks_message(tmp_path: Path) -> None:
    result = start_gunicorn(tmp_path, "'SHADOW_BUDGET': 5")
    assert result.returncode != 0
    assert "ImproperlyConfigured" in result.stderr
    assert "inprocserve.E011: INPROCSERVE['SHADOW_BUDGET'] must be a share of time in (0, 1], got 5" in result.stderr


def test_a_model_not_yet_in_the_repository_does_not_stop_the_start_up(tmp_path: Path) -> None:
    """E002 is the repository's state, which the server tolerates (it serves what it finds, /ready waits for
    the required models): refused at start-up, a model deployed after the code, or a model folder removed
    before its settings, stopped every worker (a recycled one too: the whole site down)."""
    from django.core.handlers.wsgi import WSGIHandler
    from django.test import override_settings
    from inprocserve_django import reset_server

    import inprocserve

    repository = tmp_path / "models"
    save_model(build_scale_model(2.0), repository, "scale", 1)
    setting = {
        "REPOSITORY": str(repository),
        "MODELS": {"ranker": inprocserve.ModelConfig()},
        "REQUIRED_MODELS": ["ranker"],
    }
    with override_settings(INPROCSERVE=setting):
        try:
            WSGIHandler()  # builds the middleware, as gunicorn loading the application does
        finally:
            reset_server()
