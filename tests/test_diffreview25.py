"""Review of the worker following its own gate's write at once, and of a failed advance shown in status."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from inprocserve._control import ControlFile

from .conftest import ServerFactory, run_in_forked_child
from .test_diffreview22 import synced_beside_a_sibling_s_write
from .test_fleet_hold import lock_waits
from .test_fleet_hold3 import _drop, _stable
from .test_fleet_hold4 import X, _gate_named_without_a_watcher


def test_a_new_advance_after_one_whose_version_was_withdrawn_waits_for_the_lock(
    repository: Path, make_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Version 3's advance fails (the lock stuck), then version 3 is withdrawn (a bad release deleted): nothing is
    due any more. Version 4 (compatible) is a new advance: its first try waits for the lock as a new name's does
    (another worker of the fleet holds it for a moment as it writes). It took the lock only if free, failed at
    once, and the fleet stayed on version 1 with FLEET NOT HELD on this worker, for good after a single earlier
    failure of another advance."""
    running = _gate_named_without_a_watcher(repository, make_server)
    _drop(repository, 3, compatible=True)
    waited = lock_waits(monkeypatch)
    with ControlFile(repository)._locked():
        running.refresh()
    assert waited == [0.5] and _stable(repository) == (1, True)
    shutil.rmtree(repository / "m" / "3")
    running.refresh()
    assert running.status()["models"]["m"]["fleet_hold_error"] is None

    _drop(repository, 4, compatible=True)
    held, release = threading.Event(), threading.Event()

    def another_writer() -> None:
        with ControlFile(repository)._locked():
            held.set()
            release.wait(0.2)

    writer = threading.Thread(target=another_writer)
    writer.start()
    held.wait(5)
    running.refresh()
    writer.join()
    assert waited == [0.5], waited  # (no new wait ran out)
    assert _stable(repository) == (4, True)
    assert running.status()["models"]["m"]["fleet_hold_error"] is None
    assert running.predict("m", X).version == 4


def test_a_worker_forked_from_a_master_whose_advance_failed_waits_for_a_sibling_s_write(
    repository: Path, make_server: ServerFactory
) -> None:
    """A ``--preload`` master's advance of the gate's name (1 to 3) failed, the lock stuck then. Its workers, forked
    at once, inherit the advance and all try it at their first read: they contend, and a first try waits for the
    lock (0.5 s), as it does for the gate's name. Inheriting the master's failure made it take the lock only if
    free: the worker that found a sibling's write in progress failed, and showed the fleet not held."""
    master = _gate_named_without_a_watcher(repository, make_server)
    _drop(repository, 3, compatible=True)
    with ControlFile(repository)._locked():
        master.refresh()
    assert master.status()["models"]["m"]["fleet_hold_error"] is not None

    assert run_in_forked_child(lambda: synced_beside_a_sibling_s_write(master, repository), timeout_s=20) == "3 None"
