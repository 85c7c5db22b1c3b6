"""Hot reload under load: good, corrupt, half-copied and incompatible versions dropped into a polled
repository while threads keep predicting. Every answer must be right for the version that gave it."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import numpy as np

import inprocserve
from inprocserve.testing import build_scale_model

from ..conftest import ServerFactory
from .conftest import Tally, deadline_after, joined, report, soak_seconds

THREADS = 8


def factor_of(version: int) -> float:
    return float(version % 7 + 1)


def drop_atomically(repository: Path, version: int, content: bytes) -> None:
    """Copy as docs/repository.md says: into a temporary folder, then rename it into place."""
    staging = repository / f".staging-{version}"
    staging.mkdir()
    (staging / "model.onnx").write_bytes(content)
    staging.rename(repository / "m" / str(version))


def test_hot_reload_under_load_with_bad_versions(repository: Path, make_server: ServerFactory) -> None:
    (repository / "m").mkdir()
    drop_atomically(repository, 1, build_scale_model(factor_of(1)).SerializeToString())
    config = inprocserve.ModelConfig(version_policy=inprocserve.VersionPolicy.latest(2))
    server = make_server(repository, config=config, poll_interval_s=0.05)
    end = deadline_after(soak_seconds())
    tallies: list[Tally] = []
    versions_seen: set[int] = set()

    def worker(index: int) -> None:
        tally = Tally()
        tallies.append(tally)
        rng = np.random.default_rng(index)
        while deadline_after(0) < end:
            x = rng.standard_normal((int(rng.integers(1, 5)), 4)).astype(np.float32)
            result = tally.outcome(server.predict, "m", {"x": x}, timeout_s=30)
            if result is None:
                continue
            versions_seen.add(result.version)
            if not np.array_equal(result["y"], x * np.float32(factor_of(result.version))):
                tally.wrong.append(f"version {result.version}: {result['y']!r} for {x!r}")
            tally.counts["answered"] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    dropped = {"good": 0, "corrupt": 0, "half_copied": 0, "incompatible": 0, "completed_copies": 0}
    version = 1
    while deadline_after(0) < end:
        version += 1
        kind = ("good", "corrupt", "half_copied", "good", "incompatible")[version % 5]
        good = build_scale_model(factor_of(version)).SerializeToString()
        if kind == "good":
            drop_atomically(repository, version, good)
        elif kind == "corrupt":
            drop_atomically(repository, version, os.urandom(256))
        elif kind == "half_copied":  # a copy in progress, seen by the poller; finished a little later
            folder = repository / "m" / str(version)
            folder.mkdir()
            (folder / "model.onnx").write_bytes(good[: len(good) // 2])
            time.sleep(0.15)
            (folder / "model.onnx").write_bytes(good)
            dropped["completed_copies"] += 1
        else:  # a valid model whose input has another width: callers' 4-wide rows no longer fit it
            drop_atomically(repository, version, build_scale_model(2.0, features=5).SerializeToString())
        dropped[kind] += 1
        time.sleep(0.1)
        if version % 10 == 0:  # keep the folder small: drop old versions too (they must drain, not fail)
            for old in sorted(int(p.name) for p in (repository / "m").iterdir())[:-3]:
                shutil.rmtree(repository / "m" / str(old))
    total = joined(threads, tallies)
    report(
        "hot_reload_under_load",
        {
            "threads": THREADS,
            "versions_dropped": version - 1,
            **dropped,
            **total.counts,
            "versions_answering": len(versions_seen),
            "wrong": len(total.wrong),
            "untyped": len(total.untyped),
        },
    )
    assert not total.wrong, total.wrong[:3]
    assert not total.untyped, total.untyped[:3]
    assert total.counts["answered"] > 0
    # Refusals allowed while versions come and go: shedding, a retired version's requests (ServerClosedError)
    # or a moment without a servable version (ModelNotFoundError). Never InvalidInputError: the compatibility
    # gate keeps an incompatible version from becoming the default, so callers' 4-wide rows always fit.
    allowed = {"answered", "QueueFullError", "PoolExhaustedError", "ServerClosedError"}
    assert set(total.counts) <= allowed | {"ModelNotFoundError"}, total.counts
    status = server.status()["models"]["m"]["versions"]
    corrupt, half_copied = 1, 2  # version % 5 of each kind
    for number, state in status.items():
        assert int(number) % 5 != corrupt or state["state"] == "failed", (number, state)  # never served
        assert state["state"] != "failed" or int(number) % 5 in (corrupt, half_copied), (number, state)
    # a half-copied version failed while its copy was in progress and was loaded once the copy finished
    if dropped["half_copied"] >= 2:
        assert any(v % 5 == half_copied for v in versions_seen), sorted(versions_seen)
