"""Shared tables that a request or a status read walks while another thread changes them.

A walk in Python (a comprehension, a generator expression) can be interrupted between two steps by another
thread (a load, the control-file watcher): a table that changed size meanwhile raises "dictionary changed size
during iteration", one replaced whole is read half old, half new. Each test changes a table on one thread and
walks it on this one for two seconds.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inprocserve import ModelConfig, VersionPolicy
from inprocserve.testing import build_scale_model, save_model

from .conftest import ServerFactory, race_rounds


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


def test_the_control_problem_while_a_retry_replaces_them(
    repository: Path, make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """Status's ``control.error`` (readiness probes and the protocol's model endpoints read it too) joined the
    problems of the control revision by reading the table again for each name it had sorted: a retry that
    replaced the table meanwhile (a version arrived, another went missing) raised a ``KeyError`` (37 reads
    in 2 s here), and the probe answered a 500. Walked here through the property status reads: status itself
    makes system calls that hand the other thread its turn there, not inside the walk, so it hits this seldom
    (1-3 calls in 2 s here, with a switch interval of 10 µs)."""
    caplog.set_level(logging.CRITICAL, logger="inprocserve")  # (the retry logs each problem that changed)
    save_model(build_scale_model(2.0), repository, "scale", 1)
    server = make_server(repository)
    registry = server._registry
    tables = [
        {f"{prefix}{n}": f"model '{prefix}{n}': version 2 is not in the repository (yet)" for n in range(100)}
        for prefix in ("a", "b")
    ]

    def retry(count: int) -> None:
        registry._report_control_problems(dict(tables[count % 2]))

    assert changed_while_walked(retry, lambda: registry.control_problem) == []
    assert server.status()["control"]["error"] is not None


def test_status_and_readiness_while_the_answering_version_reloads(repository: Path, make_server: ServerFactory) -> None:
    """A hot reload swaps the new copy of a version in, then retires the old one. Status copied the table of
    copies, then read each copy's state and health: the old copy, retired meanwhile, showed a served version
    as "unloaded", unhealthy ("... version 12 is unloaded"), and readiness (probes read the same) failed while
    the version answering default traffic reloaded (the soak's lifecycle driver met it; here 4 runs of 4 failed,
    with eleven versions before it and threads taking turns every 10 µs to widen the window)."""
    served = list(range(1, 13))
    for number in served:
        save_model(build_scale_model(float(number)), repository, "scale", number)
    server = make_server(repository, config=ModelConfig(version_policy=VersionPolicy.all()))
    wrong: list[str] = []

    def reload_the_answering_version(count: int) -> None:
        save_model(build_scale_model(100.0 + count), repository, "scale", served[-1])
        assert server.refresh() == []

    def read_status() -> None:
        readiness = server.readiness()
        versions = server.status()["models"]["scale"]["versions"]
        states = {int(n): (v["state"], v["serving"], v["health"]) for n, v in versions.items()}
        if not readiness.ready:
            wrong.append(f"not ready: {readiness.reasons}")
        if states != dict.fromkeys(served, ("ready", True, None)):
            wrong.append(f"status: {states}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # (threads take turns often: the reload lands inside a status read more often)
    try:
        assert changed_while_walked(reload_the_answering_version, read_status, seconds=race_rounds(3, 20)) == []
    finally:
        sys.setswitchinterval(interval)
    assert server.models == {"scale": served}
    assert not wrong, wrong[:3]
