"""The stuck-test guard of the repository's root conftest.py, run by a pytest of its own on a folder whose
conftest is the guard with a limit of 2 s instead of 300 s (pytest-timeout's 1 s doubled is less)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GUARD_S = 2

STOPPED_AT_A_BREAKPOINT = """
def test_looked_at_in_pdb():
    seen = 1
    breakpoint()
    assert seen == 1
"""


def guarded_folder(folder: Path, tests: str) -> Path:
    guard = (ROOT / "conftest.py").read_text()
    assert "\nSTUCK_AFTER_S = 300.0\n" in guard
    (folder / "conftest.py").write_text(guard.replace("\nSTUCK_AFTER_S = 300.0\n", f"\nSTUCK_AFTER_S = {GUARD_S}.0\n"))
    (folder / "pytest.ini").write_text("[pytest]\ntimeout = 1\n")
    (folder / "test_it.py").write_text(tests)
    return folder


def read_until(child: subprocess.Popen[bytes], text: bytes) -> bytes:
    """What ``child`` wrote until ``text`` (or its end, or 60 s: a run that never gets there)."""
    assert child.stdout is not None
    seen = b""
    ends = time.monotonic() + 60
    while text not in seen and time.monotonic() < ends:
        ready, _, _ = select.select([child.stdout], [], [], 1.0)
        if ready:
            chunk = os.read(child.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen


def test_a_test_stopped_at_a_breakpoint_is_not_ended_while_pdb_waits(tmp_path: Path) -> None:
    """pytest-timeout stands down while pdb's prompt waits for a developer; the guard did not, and ended the
    process at its prompt (every thread's stack, exit status 1)."""
    folder = guarded_folder(tmp_path, STOPPED_AT_A_BREAKPOINT)
    command = [sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:django", "test_it.py"]
    child = subprocess.Popen(
        command, cwd=folder, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        shown = read_until(child, b"(Pdb)")
        assert b"(Pdb)" in shown, shown.decode(errors="replace")
        time.sleep(3 * GUARD_S)  # (a developer reading the code at the prompt)
        rest, _ = child.communicate(b"c\n", timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    output = (shown + rest).decode(errors="replace")
    assert child.returncode == 0, output
    assert "1 passed" in output and "ending this test process" not in output, output


SLOWER_THAN_THE_GUARD = f"""
import time

def test_slow_but_allowed():
    time.sleep({3 * GUARD_S})
"""


def test_a_test_the_timeout_of_the_environment_allows_is_not_ended(tmp_path: Path) -> None:
    """pytest-timeout takes ``PYTEST_TIMEOUT`` over the ini's value (0: off, a debugging session); the guard
    read the ini alone and ended a test that the timeout allowed."""
    folder = guarded_folder(tmp_path, SLOWER_THAN_THE_GUARD)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django", "test_it.py"]
    for allowed in ("0", "60"):
        environment = {**os.environ, "PYTEST_TIMEOUT": allowed}
        run = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=120)
        assert run.returncode == 0, (allowed, run.stdout + run.stderr)
        assert "1 passed" in run.stdout and "ending this test process" not in run.stderr, (allowed, run.stdout)
