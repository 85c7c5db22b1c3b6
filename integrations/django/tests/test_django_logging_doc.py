"""docs/django.md's ``LOGGING`` example routes the plug-in's own warnings (logger ``inprocserve_django``, not under
``inprocserve``) to its handler: named for ``inprocserve`` alone, they reached stderr bare, through Python's
last-resort handler, whatever handler the project had set up."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from inprocserve.testing import build_scale_model, save_model


def _documented_logging() -> dict[str, Any]:
    """The ``LOGGING`` dict of docs/django.md, "How it is wired", as a settings module holds it."""
    text = (Path(__file__).resolve().parents[3] / "docs" / "django.md").read_text()
    block = text.split("  ```python\n  # settings.py\n", 1)[1].split("  ```", 1)[0]
    namespace: dict[str, Any] = {}
    exec("\n".join(line.removeprefix("  ") for line in block.splitlines()), namespace)
    logging: dict[str, Any] = namespace["LOGGING"]
    return logging


def test_the_documented_logging_takes_the_plug_ins_start_up_warning_to_its_handler(tmp_path: Path) -> None:
    # The EAGER start-up check's repository problems are the plug-in's warnings (a stray folder among the
    # versions here). The documented handler, pointed at stdout, shows where a record went: through the
    # configured handler (stdout) or through Python's last resort (stderr).
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    (folder / "scale" / "notes").mkdir()
    logging = _documented_logging()
    logging["handlers"]["console"]["stream"] = "ext://sys.stdout"
    settings = f"SECRET_KEY = {'k' * 50!r}\nINSTALLED_APPS = ['inprocserve_django']\n"
    settings += f"INPROCSERVE = {{'REPOSITORY': {str(folder)!r}, 'EAGER': True}}\nLOGGING = {logging!r}\n"
    (tmp_path / "logging_doc_settings.py").write_text(settings)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", "logging_doc_settings"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    said = "repository check before the workers start: "
    assert said in done.stdout and "scale/notes" in done.stdout, (done.stdout[-2000:], done.stderr[-2000:])
    assert said not in done.stderr, done.stderr[-2000:]


def test_the_start_up_check_advises_the_setting_that_follows_links(tmp_path: Path) -> None:
    """``models/churn -> ../releases/churn`` under ``EAGER``: the start-up warning said "pass follow_symlinks=True
    to the Server", a Server the plug-in builds; the Django user's way is the setting (as check W002 says)."""
    folder = tmp_path / "models"
    save_model(build_scale_model(2.0), folder, "scale", 1)
    save_model(build_scale_model(3.0), tmp_path / "releases", "churn", 1)
    (folder / "churn").symlink_to(tmp_path / "releases" / "churn")
    settings = f"SECRET_KEY = {'k' * 50!r}\nINSTALLED_APPS = ['inprocserve_django']\n"
    settings += f"INPROCSERVE = {{'REPOSITORY': {str(folder)!r}, 'EAGER': True}}\n"
    (tmp_path / "linked_settings.py").write_text(settings)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", "linked_settings"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    said = [line for line in done.stderr.splitlines() if line.startswith("repository check before the workers")]
    assert said == [
        f"repository check before the workers start: {folder / 'churn'}: the model folder is a symbolic link; "
        "symbolic links are refused; copy the files in, or set INPROCSERVE['FOLLOW_SYMLINKS'] = True"
    ], done.stderr[-2000:]
