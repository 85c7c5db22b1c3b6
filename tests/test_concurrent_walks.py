"""Shared tables that a request or a status read walks while another thread changes them.

A walk in Python (a comprehension, a generator expression) can be interrupted between two steps by another
thread (a load, the control-file watcher): a table that changed size meanwhile raises "dictionary changed size
during iteration", one replaced whole is read half old, half new. Each test changes a table on one thread and
walks it on this one for two seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory


def changed_while_walked(
    change: Callable[[int], object], walk: Callable[[], object], seconds: float = 2.0
) -> list[str]:
    """Walk with ``walk`` for ``seconds`` while another thread calls ``change(0)``, ``change(1)``, ...; the
    errors the walks raised."""
    stop = threading.Event()
    failed: list[BaseException] = []

    def changing() -> None:
        count = 0
        try:
            while not stop.is_set():
                change(count)
                count += 1
        except BaseException as exc:  # (the test fails on it below, not silently in a thread)
            failed.append(exc)

    changer = threading.Thread(target=changing)
    changer.start()
    errors: list[str] = []
    try:
        until = time.monotonic() + seconds
        while time.monotonic() < until and not failed:
            try:
                walk()
            except (RuntimeError, KeyError) as exc:
                errors.append(repr(exc))
    finally:
        stop.set()
        changer.join()
    assert not failed, failed
    return errors


def test_the_servable_models_while_another_thread_loads_and_unloads_one(
    repository: Path, tmp_path: Path, make_server: ServerFactory
) -> None:
    """``Server.models`` walked the registry's routing table in a comprehension: a model published or unloaded
    by another thread meanwhile made it raise "dictionary changed size during iteration" (40 walks in 2 s
    here, of 34 loads). The protocol's model metadata and model readiness endpoints read it on every call, and
    every unknown model's error names the servable ones from it."""
    for number in range(10):
        save_model(build_scale_model(2.0), repository, f"m{number}", 1)
    extra = save_model(build_scale_model(3.0), tmp_path / "elsewhere", "extra", 1)
    server = make_server(repository)

    def load_or_unload(count: int) -> None:
        if count % 2:
            server.unload("extra")
        else:
            server.load("extra", path=extra)
        time.sleep(0.001)  # (another thread's walk runs between a load and the unload after it)

    assert changed_while_walked(load_or_unload, lambda: server.models) == []
    assert set(server.models) <= {f"m{number}" for number in range(10)} | {"extra"}
