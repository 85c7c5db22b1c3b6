"""The load's check that each row's answer is its own, on a backend that works in the feeds it is given: the
check runs one 2-row input alone, together and beside copies, and must compare the rows it meant to run."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from inprocserve import BatchingConfig, ModelConfig
from inprocserve._model import ModelVersion
from inprocserve._signature import Signature, TensorSpec

_FLOAT = np.dtype(np.float32)


class _ArrayBackend:
    """A backend of one runner whose model is ``compute`` on numpy, for the load's check alone."""

    def __init__(self, compute: Callable[[np.ndarray], list[np.ndarray]], outputs: dict[str, int]) -> None:
        self.compute = compute
        self.signature: Signature | None = None
        self._outputs = outputs

    model = "m"
    version = 1
    kind = "numpy"
    concurrency = 1
    providers: ClassVar[list[str]] = ["numpy"]

    def prepare(self, warmup: Callable[[Any], None] | None = None, *, probe_rows: int = 1) -> Signature:
        if self.signature is None:
            self.signature = Signature(
                [TensorSpec("x", "tensor(float)", _FLOAT, (None, 4))],
                [TensorSpec(name, "tensor(float)", _FLOAT, (None, width)) for name, width in self._outputs.items()],
            )
        return self.signature

    def runners(self) -> list[Any]:
        return ["runner"]

    def run(
        self, runner: Any, feeds: Mapping[str, np.ndarray], *, timeout_s: float | None = None, parent: Any = None
    ) -> list[np.ndarray]:
        return self.compute(feeds["x"])

    def health(self) -> str | None:
        return None

    def status(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _verdict(tmp_path: Path, backend: _ArrayBackend) -> dict[str, Any]:
    config = ModelConfig(batching=BatchingConfig(max_batch_size=8, max_delay_s=0.0))
    version = ModelVersion("m", 1, tmp_path / "1" / "model.onnx", config, deliver=lambda request: None, backend=backend)
    version.load()
    try:
        return version.status()
    finally:
        version.retire(timeout_s=10)


def _centred_in_place(x: np.ndarray) -> list[np.ndarray]:
    x -= x.mean(axis=0, keepdims=True)  # (a batch statistic, computed in the feed it was given)
    return [x]


def test_a_backend_that_centres_its_feed_in_place_is_found_to_centre_on_its_batch(tmp_path: Path) -> None:
    """Run alone on views of the 2-row input, each row was centred to 0 in that input, so the run of both rows
    centred zeros too and agreed: a model whose every answer depends on the other rows of its run merged
    requests."""
    status = _verdict(tmp_path, _ArrayBackend(_centred_in_place, {"y": 4}))
    assert status["batchable"] is False, status
    assert "rows run together differs from the same rows run alone" in status["unbatchable_reason"]
