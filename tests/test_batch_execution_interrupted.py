"""A batch run that a ``BaseException`` stops (gevent's ``Timeout``, ``SystemExit``, ``KeyboardInterrupt``
raised by a backend's code) on a worker thread: its callers are answered with an error, never left waiting.

Real onnxruntime; only the backend's ``run`` is patched, to raise for the requests the test marks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import inprocserve
from inprocserve._ort_backend import OnnxruntimeBackend

from .conftest import ServerFactory

MARK = 777.0


class GeventLikeTimeout(BaseException):
    """What ``gevent.Timeout`` is: a ``BaseException``, so ``except Exception`` lets it through."""


@pytest.fixture
def stopped_runs(monkeypatch: pytest.MonkeyPatch) -> list[type[BaseException]]:
    """Each run whose first row starts with ``MARK`` raises the next exception type of the returned list."""
    raising: list[type[BaseException]] = []
    run = OnnxruntimeBackend.run

    def stopping(self: OnnxruntimeBackend, runner: Any, feeds: Any, **kwargs: Any) -> Any:
        x = feeds.get("x")
        if raising and x is not None and x.ndim == 2 and len(x) and x[0, 0] == MARK:
            raise raising.pop(0)("stopped from inside the run")
        return run(self, runner, feeds, **kwargs)

    monkeypatch.setattr(OnnxruntimeBackend, "run", stopping)
    return raising


@pytest.mark.parametrize("kind", [GeventLikeTimeout, SystemExit, KeyboardInterrupt])
def test_a_batch_stopped_by_a_base_exception_answers_its_callers_with_an_error(
    scale_repository: Path,
    make_server: ServerFactory,
    stopped_runs: list[type[BaseException]],
    kind: type[BaseException],
) -> None:
    """``server.submit(...).result()`` waited forever: the worker logged "worker ... failed" and went on, but
    the batch's futures were never answered."""
    server = make_server(scale_repository)
    marked = np.ones((1, 4), np.float32)
    marked[0, 0] = MARK
    stopped_runs.append(kind)
    future = server.submit("scale", {"x": marked})
    with pytest.raises(inprocserve.InferenceError, match=f"interrupted by {kind.__name__}"):
        future.result(timeout=5)
    # the worker still serves
    answer = server.submit("scale", {"x": np.ones((1, 4), np.float32)}).result(timeout=10)
    np.testing.assert_allclose(answer["y"], np.full((1, 4), 2.0, np.float32))
