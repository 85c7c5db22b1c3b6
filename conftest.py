"""A guard for every test in the repository: a test still running well past pytest-timeout's limit is stuck
where that limit's signal cannot reach it (the main thread inside onnxruntime, a gRPC wait, any C call that
does not return to Python), and would hold the whole run until CI's own limit ends it with no word of where.
The guard prints every thread's stack and ends the test process: pytest-xdist reports the test that was
running as crashed, starts a fresh worker, and the run goes on.

One daemon thread, started before the first test and alive until the process ends (tests that count threads
compare counts taken inside the test, so a thread older than the test is never theirs).

That thread needs the GIL, and a process can be stuck holding it: a thread in ``sys._current_frames()``
whose allocation ran the collector, which freed a ``threading.local`` and waited for the runtime's lock the
thread itself held (CPython gh-106883, in the 3.11.7 this project runs; 3.12 collects only between
bytecodes). A fresh-clone run of ``make test`` sat so for 40 minutes, every thread waiting. So each test also
arms faulthandler's watchdog, a C thread that needs no GIL, a minute later: it writes every thread's stack
to the worker's own stderr (not pytest's capture) and ends the process.
"""

from __future__ import annotations

import faulthandler
import os
import sys
import threading
import time
from collections.abc import Generator
from typing import TextIO

import pytest

from tests.processes import keep_gunicorns_apart

STUCK_AFTER_S = 300.0
"""Seconds a test may take before the guard ends its process, or twice the test's pytest-timeout if that is
longer (``make soak`` gives an hour); none where the timeout is off (``--timeout=0``, a debugging session),
nor once pdb is entered (as pytest-timeout's).
pytest-timeout's limit (120 s in ``make test``) is the one a test should meet; this is the last resort, for
a test whose timeout could not fire."""


def _stuck_after_s(item: pytest.Item) -> float | None:
    """How long ``item`` may run before the guard ends it, ``None`` for never (see :data:`STUCK_AFTER_S`).
    The test's timeout is read as pytest-timeout reads it: its marker, ``--timeout``, ``PYTEST_TIMEOUT``, the ini."""
    marker = item.get_closest_marker("timeout")
    if marker is not None and marker.args:
        timeout = marker.args[0]
    else:
        timeout = item.config.getoption("timeout", None)
        if timeout is None:
            timeout = os.environ.get("PYTEST_TIMEOUT")
        if timeout is None:
            try:
                timeout = item.config.getini("timeout")
            except ValueError:  # (pytest-timeout not loaded: -p no:timeout)
                timeout = STUCK_AFTER_S / 2
    try:
        seconds = float(timeout or 0)
    except (TypeError, ValueError):
        return STUCK_AFTER_S
    return max(STUCK_AFTER_S, 2 * seconds) if seconds > 0 else None


class _StuckTestGuard:
    """Ends the process when one test has run for longer than it may (reset by every test that starts)."""

    def __init__(self, config: pytest.Config) -> None:
        self._config = config
        self._changed = threading.Condition()
        self._test: str | None = None
        self._after_s = STUCK_AFTER_S
        self._started = 0.0
        self._debugging = False  # pdb was entered: the process is a debugger's, never ended from then on
        self._thread = threading.Thread(target=self._watch, name="stuck-test-guard", daemon=True)
        self._thread.start()

    def running(self, test: str | None, after_s: float | None = None) -> None:
        """``test`` started and may run ``after_s`` (``None``: watch nothing)."""
        with self._changed:
            self._test = test if after_s is not None and not self._debugging else None
            self._after_s = after_s or STUCK_AFTER_S
            self._started = time.monotonic()
            self._changed.notify()

    def stand_down(self) -> None:
        """A debugger holds the process: watch no test from now on, as pytest-timeout stops its own then."""
        with self._changed:
            self._debugging = True
            self._test = None
            self._changed.notify()

    def _watch(self) -> None:
        with self._changed:
            while True:
                if self._test is None:
                    self._changed.wait()
                    continue
                left = self._started + self._after_s - time.monotonic()
                if left > 0:
                    self._changed.wait(left)
                    continue
                self._end(self._test)

    def _end(self, test: str) -> None:
        capture = self._config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            try:
                capture.suspend_global_capture(in_=True)
            except Exception:  # (the report matters more than the capture's state)
                pass
        err = sys.__stderr__
        assert err is not None
        err.write(f"\n{'+' * 30} {test} still running after {self._after_s:g} s: every thread's stack {'+' * 30}\n")
        err.flush()
        faulthandler.dump_traceback(file=err, all_threads=True)
        err.write(f"{'+' * 30} ending this test process {'+' * 30}\n")
        err.flush()
        os._exit(1)


GIL_STUCK_GRACE_S = 60.0
"""How long after the guard's own limit faulthandler's C thread ends a process the guard could not end."""

_guard: _StuckTestGuard | None = None
_fault_file: TextIO | None = None  # the worker's own stderr, not pytest's capture of it


def _own_stderr(config: pytest.Config) -> TextIO:
    """A file on the process's stderr as it was before pytest captured it (its file descriptor 2 is the
    capture's file while a test runs, which a process that ends never shows)."""
    capture = config.pluginmanager.getplugin("capturemanager")
    fd = getattr(getattr(getattr(capture, "_global_capturing", None), "err", None), "targetfd_save", None)
    if not isinstance(fd, int):
        fd = sys.__stderr__.fileno() if sys.__stderr__ is not None else 2
    return open(os.dup(fd), "w", closefd=True)  # (held for the whole session)


def pytest_configure(config: pytest.Config) -> None:
    global _guard, _fault_file
    keep_gunicorns_apart()  # (see tests/processes.py: here, to reach the gunicorns of integrations/ too)
    if _guard is None:
        _guard = _StuckTestGuard(config)
    if _fault_file is None:
        _fault_file = _own_stderr(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None, None, None]:
    after_s = _stuck_after_s(item)
    if _guard is not None:
        _guard.running(item.nodeid, after_s)
        if after_s is not None and not _guard._debugging and _fault_file is not None:
            faulthandler.dump_traceback_later(after_s + GIL_STUCK_GRACE_S, exit=True, file=_fault_file)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        if _guard is not None:
            _guard.running(None)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session ends: no watchdog is left armed on the stderr copy, which is closed (not left to the
    interpreter's exit, which warned of an unclosed file)."""
    global _fault_file
    faulthandler.cancel_dump_traceback_later()
    if _fault_file is not None:
        _fault_file.close()
        _fault_file = None


def pytest_enter_pdb(config: pytest.Config, pdb: object) -> None:
    """pdb was entered (``breakpoint()``, ``--pdb``, ``--trace``): a developer at its prompt is no stuck test,
    and pytest-timeout's limit stood down for it, but the guard ended the process after 300 s at the prompt."""
    faulthandler.cancel_dump_traceback_later()
    if _guard is not None:
        _guard.stand_down()
