"""docs/operations.md's on-call list ("When a version misbehaves"), each step run as the engineer on call types
it, against a server whose rollout comes from ``config.toml``, as the Flask example's does (version 2 a 10 %
canary in ``[rollout.canary]``).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import inprocserve
from inprocserve.testing import build_scale_model, save_model

from .conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
CANARY_IN_CONFIG = '[rollout]\nstrategy = "canary"\nstable = 1\n\n[rollout.canary]\nversion = 2\npercent = 10\n'


def oncall_command(step: str) -> list[str]:
    """The command the on-call list's step ``step`` (its bold title) gives, as words."""
    text = (ROOT / "docs/operations.md").read_text().split("## When a version misbehaves\n", 1)[1]
    item = next(item for item in re.split(r"\n\d+\. ", text.split("\n## ", 1)[0]) if item.startswith(f"**{step}"))
    return shlex.split(re.findall(r"`(python -m inprocserve [^`]+)`", item.replace("\n   ", " "))[0])


def answering_versions(server: inprocserve.Server) -> set[int]:
    rows = [[1.0, 1.0, 1.0, 1.0]]
    return {server.predict("fraud", {"x": rows}, context={"user_id": f"user-{n}"}).version for n in range(200)}


def test_the_bad_canary_step_sends_every_user_to_the_stable_version(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for version in (1, 2):
        save_model(build_scale_model(float(version)), models, "fraud", version)
    (models / "fraud" / "config.toml").write_text(CANARY_IN_CONFIG)
    with inprocserve.Server(repository=models) as server:
        assert answering_versions(server) == {1, 2}  # (the canary answers some of these users)
        command = oncall_command("A canary is bad:")
        assert command[3:] == ["canary", "models/", "fraud", "none"]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, check=True, capture_output=True)
        wait_until(lambda: server.status()["control"]["revision"] == 1)  # (read at the next poll, 0.5 s)
        assert answering_versions(server) == {1}
