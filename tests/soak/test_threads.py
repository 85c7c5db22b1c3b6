"""Many threads, every answer checked against onnxruntime itself."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

import inprocserve
from inprocserve.testing import build_add_model, build_mlp_model, save_model

from ..conftest import ServerFactory
from .conftest import Tally, deadline_after, joined, report, soak_seconds

THREADS = 16


def raw_session(path: Path) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def test_many_threads_every_answer_checked_against_onnxruntime(repository: Path, make_server: ServerFactory) -> None:
    mlp_path = save_model(build_mlp_model((16, 32, 4), seed=5), repository, "mlp", 1)
    add_path = save_model(build_add_model(), repository, "add", 1)
    raw = {"mlp": raw_session(mlp_path), "add": raw_session(add_path)}
    raw_lock = threading.Lock()
    server = make_server(repository)
    end = deadline_after(soak_seconds())
    tallies: list[Tally] = []

    def request(rng: np.random.Generator) -> tuple[str, dict[str, np.ndarray]]:
        rows = int(rng.integers(1, 9))
        if rng.random() < 0.5:
            return "mlp", {"x": rng.standard_normal((rows, 16)).astype(np.float32)}
        return "add", {
            "a": rng.standard_normal((rows, 3)).astype(np.float32),
            "b": rng.standard_normal((rows, 3)).astype(np.float32),
            "n": rng.integers(-1000, 1000, (rows, 1)).astype(np.int64),
        }

    def check(tally: Tally, model: str, feeds: dict[str, np.ndarray], result: inprocserve.Prediction) -> None:
        with raw_lock:
            expected = raw[model].run(None, feeds)
        names = [node.name for node in raw[model].get_outputs()]
        for name, want in zip(names, expected, strict=True):
            if not np.allclose(result[name], want, rtol=1e-5, atol=1e-6) or result[name].shape != want.shape:
                tally.wrong.append(f"{model} {name}: {result[name]!r} != {want!r}")
        tally.counts["answered"] += 1

    def submitted(model: str, feeds: dict[str, np.ndarray]) -> inprocserve.Prediction:
        return server.submit(model, feeds, timeout_s=30).result(timeout=60)

    def worker(index: int) -> None:
        tally = Tally()
        tallies.append(tally)
        rng = np.random.default_rng(index)
        loop = asyncio.new_event_loop() if index % 4 == 3 else None
        try:
            while deadline_after(0) < end:
                model, feeds = request(rng)
                if index % 4 == 1:  # futures
                    result = tally.outcome(submitted, model, feeds)
                elif loop is not None:  # asyncio callers
                    result = tally.outcome(loop.run_until_complete, server.apredict(model, feeds, timeout_s=30))
                else:
                    result = tally.outcome(server.predict, model, feeds, timeout_s=30)
                if result is not None:
                    check(tally, model, feeds, result)
        finally:
            if loop is not None:
                loop.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    for thread in threads:
        thread.start()
    total = joined(threads, tallies)
    report("threads", {"threads": THREADS, **total.counts, "wrong": len(total.wrong), "untyped": len(total.untyped)})
    assert not total.wrong, total.wrong[:3]
    assert not total.untyped, total.untyped[:3]
    assert total.counts["answered"] > THREADS  # every thread got answers
    # shedding under load is allowed (and counted); any other refusal of valid input is a defect
    assert set(total.counts) <= {"answered", "QueueFullError", "PoolExhaustedError"}, total.counts
