"""The examples run with one command each and report what they promise."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(script: str, **env: str) -> str:
    result = subprocess.run(
        [sys.executable, str(ROOT / script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr  # gunicorn logs (e.g. a worker killed by a signal) go to stderr


def test_flask_fraud_demo_under_gunicorn() -> None:
    out = run("examples/flask_fraud/run.py", FRAUD_DEMO_REQUESTS="20")
    assert "320 answered, 0 failed" in out
    assert "canary share" in out and "'canary'" in out
    assert "users who saw both versions: 0" in out  # sticky assignment
    assert "shadow v3:" in out and "label agreement" in out
    assert "was sent" not in out  # no gunicorn worker died by a signal


def test_django_recommend_example() -> None:
    out = run("examples/django_recommend/run.py")
    assert "300 interleaved pages" in out
    assert "users preferred ranker B" in out


def test_core_demo() -> None:
    out = run("examples/demo.py")
    assert "failed requests: 0" in out
    assert "InvalidInputError: model 'fraud' version 1: input 'x': expected size" in out
