"""The stuck-test guard of the repository's root conftest.py, run by a pytest of its own on a folder whose
conftest is the guard with a limit of 2 s instead of 300 s (pytest-timeout's 1 s doubled is less), and
faulthandler's a second after it instead of a minute."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from .conftest import run_in_forked_child

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
    assert "\nSTUCK_AFTER_S = 300.0\n" in guard and "\nGIL_STUCK_GRACE_S = 60.0\n" in guard
    guard = guard.replace("\nSTUCK_AFTER_S = 300.0\n", f"\nSTUCK_AFTER_S = {GUARD_S}.0\n")
    (folder / "conftest.py").write_text(guard.replace("\nGIL_STUCK_GRACE_S = 60.0\n", "\nGIL_STUCK_GRACE_S = 1.0\n"))
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


def start_pytest(command: list[str], folder: Path, environment: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        command, cwd=folder, env=environment, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def test_a_test_the_timeout_of_the_environment_allows_is_not_ended(tmp_path: Path) -> None:
    """pytest-timeout takes ``PYTEST_TIMEOUT`` over the ini's value (0: off, a debugging session); the guard
    read the ini alone and ended a test that the timeout allowed."""
    folder = guarded_folder(tmp_path, SLOWER_THAN_THE_GUARD)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:django", "test_it.py"]
    # (side by side: each sleeps past the guard's limit, and a loaded machine took 19 s for both in turn)
    runs = {
        allowed: start_pytest(command, folder, {**os.environ, "PYTEST_TIMEOUT": allowed}) for allowed in ("0", "60")
    }
    try:
        for allowed, child in runs.items():
            stdout, stderr = child.communicate(timeout=120)
            assert child.returncode == 0, (allowed, stdout + stderr)
            assert "1 passed" in stdout and "ending this test process" not in stderr, (allowed, stdout)
    finally:
        for child in runs.values():
            if child.poll() is None:
                child.kill()
                child.wait()


FRAMES_READ_WHILE_LOCALS_ARE_COLLECTED = """
import gc, sys, threading
sys.path.insert(0, sys.argv[1])
from tests.frames import frame_of

others = [threading.Thread(target=threading.Event().wait, daemon=True) for _ in range(4)]
for thread in others:
    thread.start()

class Holder:
    pass

gc.set_threshold(1, 1, 1)  # a collection at almost every allocation
main = threading.main_thread().ident
for _ in range(20_000):
    holder = Holder()
    holder.local, holder.itself = threading.local(), holder  # a cycle: freed by the collector
    del holder
    assert frame_of(main) is not None
print("read")
"""


def test_frame_of_reads_a_threads_frame_where_sys_current_frames_deadlocks() -> None:
    """Tests that wait for a thread to reach a function poll its frame from another thread. Read with
    sys._current_frames() alone, a collection inside it that frees a threading.local deadlocks Python 3.11
    with the GIL held (CPython gh-106883): a fresh-clone run of the suite sat 40 minutes so, the stuck-test
    guard's thread waiting with the rest. This loop deadlocks at once through sys._current_frames()."""
    run = subprocess.run(
        [sys.executable, "-c", FRAMES_READ_WHILE_LOCALS_ARE_COLLECTED, str(ROOT)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0 and run.stdout.strip() == "read", run.stdout + run.stderr


def test_a_forked_child_that_hangs_reports_where() -> None:
    """``run_in_forked_child`` ends a hung child with its alarm and shows the stack it hung in (the guard's
    watchdog, armed for this test, cannot be asked for in the child: it would wait for the parent's)."""
    held = threading.Lock()
    held.acquire()  # held at the fork by this thread: never released in the child

    def waits_for_the_held_lock() -> str:
        held.acquire()
        return "acquired"

    with pytest.raises(AssertionError) as failure:
        run_in_forked_child(waits_for_the_held_lock, timeout_s=1)
    message = str(failure.value)
    assert "killed by signal 14 after 1 s (a hang: its stack follows)" in message
    assert "in waits_for_the_held_lock" in message and "Current thread" in message
