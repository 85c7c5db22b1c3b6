"""The backend seam: a version served by a backend that is not onnxruntime, through the same batcher.

``NumpyBackend`` is a real, if small, second implementation of the ``Backend`` protocol (numpy computes
``y = 2 * x``), the shape a remote or GPU backend takes: the batcher merges, bisects, passes deadlines and
the parent span, and never learns what runs the batch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve import BatchingConfig, InvalidInputError, ModelConfig
from inprocserve._model import ModelVersion
from inprocserve._request import Request, Route
from inprocserve._rollout import Decision
from inprocserve._signature import Signature, TensorSpec
from inprocserve.testing import build_scale_model, save_model

_FLOAT = np.dtype(np.float32)


class NumpyBackend:
    """``y = 2 * x`` on numpy, with one runner per ``concurrency``. Refuses negative inputs the way a
    runtime refuses bad values (``InvalidInputError``), and records what every run was given."""

    def __init__(self, *, concurrency: int = 1) -> None:
        self.model = "double"
        self.version = 1
        self.signature: Signature | None = None
        self._concurrency = concurrency
        self.runs: list[tuple[int, float | None, Any]] = []  # rows, timeout_s, parent of each run
        self.warmed: list[Any] = []
        self.gate = threading.Event()  # a run waits for it: tests hold the runner busy while others queue
        self.gate.set()
        self.running = threading.Event()
        self.closed = False

    @property
    def kind(self) -> str:
        return "numpy"

    @property
    def concurrency(self) -> int:
        return self._concurrency

    @property
    def providers(self) -> list[str]:
        return ["numpy"]

    def prepare(self, warmup: Callable[[Any], None] | None = None, *, probe_rows: int = 1) -> Signature:
        if self.signature is None:
            self.signature = Signature(
                [TensorSpec("x", "tensor(float)", _FLOAT, (None, 4))],
                [TensorSpec("y", "tensor(float)", _FLOAT, (None, 4))],
            )
            for runner in self.runners():
                if warmup is not None:
                    warmup(runner)
                self.warmed.append(runner)
        return self.signature

    def runners(self) -> list[Any]:
        return [f"runner-{index}" for index in range(self._concurrency)]

    def run(
        self, runner: Any, feeds: Mapping[str, np.ndarray], *, timeout_s: float | None = None, parent: Any = None
    ) -> list[np.ndarray]:
        x = feeds["x"]
        self.running.set()
        assert self.gate.wait(timeout=30)
        self.runs.append((len(x), timeout_s, parent))
        if (x < 0).any():
            raise InvalidInputError("negative inputs are refused", model=self.model, version=self.version)
        return [x * 2]

    def health(self) -> str | None:
        return "closed" if self.closed else None

    def status(self) -> dict[str, Any]:
        return {"runs": len(self.runs)}

    def close(self) -> None:
        self.closed = True


def resolve(request: Request) -> None:
    """The server's deliver hook, reduced to resolving the future."""
    assert request.future is not None
    if request.error is not None:
        request.future.set_exception(request.error)
    else:
        request.future.set_result(request.outputs)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[ModelVersion, NumpyBackend]]:
    backend = NumpyBackend()
    config = ModelConfig(batching=BatchingConfig(max_batch_size=8, max_delay_s=0.0))
    version = ModelVersion("double", 1, tmp_path / "1" / "model.onnx", config, deliver=resolve, backend=backend)
    version.load()
    yield version, backend
    version.retire(timeout_s=10)


def request(rows: int, value: float, *, deadline: float | None = None, future: bool = True) -> Request:
    route = Route("double", 1, "stable", "test", f"r{value}", [], Decision(1, "stable", "test"))
    arrays = {"x": np.full((rows, 4), value, dtype=np.float32)}
    return Request(arrays, rows, route, deadline, Future() if future else None)


def test_a_version_loads_warms_up_and_reports_its_backend(served: tuple[ModelVersion, NumpyBackend]) -> None:
    version, backend = served
    assert version.state == "ready" and backend.warmed == ["runner-0"]
    status = version.status()
    assert status["backend"] == "numpy" and status["health"] is None
    assert status["providers"] == ["numpy"] and status["backend_status"]["runs"] >= 1
    version.retire(timeout_s=10)
    assert backend.closed and version.status()["health"] == "closed"


def test_an_idle_request_runs_inline_with_its_own_span_as_parent(served: tuple[ModelVersion, NumpyBackend]) -> None:
    version, backend = served
    assert version.batcher is not None
    lone = request(2, 1.5, deadline=version.batcher._clock() + 60, future=False)
    lone.span = span = object()
    before = len(backend.runs)
    version.batcher.submit(lone, run_inline=True)
    version.batcher.wait(lone)
    np.testing.assert_array_equal(lone.outputs["y"], np.full((2, 4), 3.0))  # type: ignore[index]
    rows, timeout_s, parent = backend.runs[before]
    assert rows == 2 and parent is span
    assert timeout_s is not None and 0 < timeout_s <= 60  # the backend enforces the deadline


def test_queued_requests_are_merged_and_a_refused_one_is_bisected_out(
    served: tuple[ModelVersion, NumpyBackend],
) -> None:
    version, backend = served
    batcher = version.batcher
    assert batcher is not None
    backend.gate.clear()
    backend.running.clear()
    first = request(1, 1.0)
    holder = threading.Thread(target=batcher.submit, args=(first,), kwargs={"run_inline": True})
    holder.start()
    assert backend.running.wait(timeout=30)  # the only runner is busy: what follows queues
    before = len(backend.runs)
    queued = [request(1, 2.0), request(2, -1.0), request(3, 4.0)]
    for each in queued:
        batcher.submit(each, run_inline=True)
    backend.gate.set()
    holder.join(timeout=30)
    results = [each.future.exception(timeout=30) or each.future.result() for each in queued]  # type: ignore[union-attr]
    assert isinstance(results[1], InvalidInputError)  # only the refused request fails
    np.testing.assert_array_equal(results[0]["y"], np.full((1, 4), 4.0))
    np.testing.assert_array_equal(results[2]["y"], np.full((3, 4), 8.0))
    merged_rows = [rows for rows, _, _ in backend.runs[before + 1 :]]
    assert merged_rows[0] == 6  # one merged run first, then the bisection down to the bad request
    assert all(timeout_s is None for _, timeout_s, _ in backend.runs[before:])  # none had a deadline
    assert first.future.result(timeout=30)["y"].shape == (1, 4)  # type: ignore[union-attr]


def test_onnxruntime_is_the_default_backend(repository: Path) -> None:
    path = save_model(build_scale_model(), repository, "scale")
    version = ModelVersion("scale", 1, path, ModelConfig(), deliver=resolve)
    version.load()
    try:
        status = version.status()
        assert status["backend"] == "onnxruntime" and status["health"] is None
        assert status["providers"] == status["backend_status"]["providers"] == ["CPUExecutionProvider"]
        assert status["intra_op_threads"] == status["backend_status"]["intra_op_threads"]
    finally:
        version.retire(timeout_s=10)
    assert "unloaded" in (version.status()["health"] or "")


def test_only_the_onnxruntime_backend_imports_onnxruntime() -> None:
    """On the serving path; the ``quantize`` command is an offline tool that builds its own sessions."""
    package = Path(inprocserve.__file__).parent
    importers = sorted(
        path.name
        for path in package.rglob("*.py")
        if any(
            line.strip().startswith(("import onnxruntime", "from onnxruntime"))
            for line in path.read_text(encoding="utf-8").splitlines()
        )
    )
    assert importers == ["_ort_backend.py", "_quantize.py"]
