"""Event-loop callers given up at any moment: ``asyncio.wait_for`` running out, tasks cancelled as their
iteration's group is formed, ``timeout_s`` deadlines as short as a run, against a local version (merged and run
on the loop or by a worker) and a remote one (its HTTP call cut short), with ``predict`` callers alongside.

Every answer must be onnxruntime's for the caller's own rows, every refusal typed; afterwards nothing is left in
flight or queued, and the server still answers.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

import inprocserve
from inprocserve.testing import build_mlp_model, save_model

from ..conftest import ServerFactory
from ..test_remote_flask import RemoteApp
from .conftest import Tally, deadline_after, joined, report, soak_seconds

FEATURES = 16
LOOPS = 2
PLAIN_CALLERS = 2


@pytest.fixture(scope="module")
def remote_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RemoteApp]:
    served = tmp_path_factory.mktemp("served") / "models"
    save_model(build_mlp_model((FEATURES, 32, 3), seed=3), served, "fraud", 3)
    app = RemoteApp(served)
    yield app
    app.stop()


def test_callers_given_up_at_any_moment_leave_every_other_answer_right(
    repository: Path, make_server: ServerFactory, remote_app: RemoteApp
) -> None:
    local_path = save_model(build_mlp_model((FEATURES, 32, 3), seed=3), repository, "local", 1)
    (repository / "remote" / "1").mkdir(parents=True)
    (repository / "remote" / "1" / "remote.toml").write_text(
        f'url = "{remote_app.url}"\nmodel = "fraud"\nversion = "3"\n'
    )
    raw = ort.InferenceSession(str(local_path), providers=["CPUExecutionProvider"])  # both serve these weights
    raw_lock = threading.Lock()
    server = make_server(repository)
    end = deadline_after(soak_seconds())
    tallies: list[Tally] = []

    def check(tally: Tally, model: str, x: np.ndarray, result: inprocserve.Prediction) -> None:
        with raw_lock:
            expected = raw.run(None, {"x": x})
        for node, want in zip(raw.get_outputs(), expected, strict=True):
            if not np.allclose(result[node.name], want, rtol=1e-5, atol=1e-6):
                tally.wrong.append(f"{model} {node.name}: {result[node.name]!r} != {want!r}")
        tally.counts["answered"] += 1

    def rows(rng: np.random.Generator) -> tuple[str, np.ndarray]:
        model = "remote" if rng.random() < 0.4 else "local"
        return model, rng.standard_normal((int(rng.integers(1, 5)), FEATURES)).astype(np.float32)

    async def one(tally: Tally, rng: np.random.Generator) -> None:
        model, x = rows(rng)
        deadline: dict[str, Any] = {"timeout_s": float(rng.uniform(0.0005, 0.02))} if rng.random() < 0.3 else {}
        given_up = float(rng.uniform(0.0005, 0.02)) if rng.random() < 0.3 else None
        try:
            result = await asyncio.wait_for(server.apredict(model, {"x": x}, **deadline), given_up)
        except (TimeoutError, asyncio.CancelledError) as exc:
            tally.counts[type(exc).__name__] += 1
            return
        except inprocserve.InprocserveError as exc:
            tally.counts[type(exc).__name__] += 1
            return
        except Exception as exc:
            tally.untyped.append(repr(exc))
            return
        check(tally, model, x, result)

    async def loop_caller(tally: Tally, rng: np.random.Generator) -> None:
        while deadline_after(0) < end:
            tasks = [asyncio.ensure_future(one(tally, rng)) for _ in range(int(rng.integers(1, 16)))]
            if rng.random() < 0.3:  # some given up as this iteration's groups form
                await asyncio.sleep(0)
                for task in tasks:
                    if rng.random() < 0.3:
                        task.cancel()
            for outcome in await asyncio.gather(*tasks, return_exceptions=True):
                if isinstance(outcome, asyncio.CancelledError):
                    tally.counts["CancelledError"] += 1

    def worker(index: int) -> None:
        tally = Tally()
        tallies.append(tally)
        rng = np.random.default_rng(index)
        if index < LOOPS:
            asyncio.run(loop_caller(tally, rng))
            return
        while deadline_after(0) < end:
            model, x = rows(rng)
            timeout_s = float(rng.uniform(0.0005, 0.02)) if rng.random() < 0.5 else None
            result = tally.outcome(server.predict, model, {"x": x}, timeout_s=timeout_s)
            if result is not None:
                check(tally, model, x, result)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(LOOPS + PLAIN_CALLERS)]
    for thread in threads:
        thread.start()
    total = joined(threads, tallies)

    def busy() -> dict[str, tuple[int, int]]:
        models = server.status()["models"]
        return {
            name: (state["in_flight"], state["queued_rows"])
            for name in ("local", "remote")
            for state in models[name]["versions"].values()
        }

    settled = deadline_after(30)
    while any(counts != (0, 0) for counts in busy().values()) and deadline_after(0) < settled:
        threading.Event().wait(0.01)
    left = busy()
    report("interrupted_callers", {**total.counts, "left": left, "wrong": len(total.wrong)})
    assert not total.wrong, total.wrong[:3]
    assert not total.untyped, total.untyped[:3]
    assert left == {"local": (0, 0), "remote": (0, 0)}, left
    allowed = {"answered", "CancelledError", "TimeoutError", "DeadlineExceededError", "QueueFullError"}
    assert set(total.counts) <= allowed | {"PoolExhaustedError"}, total.counts
    assert total.counts["answered"] > 0 and total.counts["CancelledError"] > 0
    x = np.ones((2, FEATURES), np.float32)
    for model in ("local", "remote"):  # still serving
        check(Tally(), model, x, server.predict(model, {"x": x}))
