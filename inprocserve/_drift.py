"""Input and output drift: compare what a model version sees now with a reference distribution.

Per numeric feature (each column of each input, and of each output), a reference sample — from a file in
the model folder, or captured from the first requests — defines decile bins. Requests are gathered into
tumbling windows of ``window`` rows; each full window is scored on a background thread, never on the
request path (a :class:`DriftScorer`, which the server starts and closes), with the population stability
index (PSI) and, for continuous features, the two-sample Kolmogorov-Smirnov statistic. A window whose PSI
(or KS) crosses the threshold marks the version as drifting and is logged once.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from . import _fork
from ._config import DriftConfig
from ._errors import ModelLoadError
from ._integrity import resolve_model_file

__all__ = ["DriftMonitor", "DriftScorer", "drain", "ks_statistic", "psi"]

logger = logging.getLogger(__name__)

_EPSILON = 1e-4  # floor for empty bins, so PSI stays finite
_CONTINUOUS_ABOVE = 20  # features with more distinct reference values than this get a KS statistic


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index between two bin-proportion vectors."""
    e = np.maximum(expected, _EPSILON)
    a = np.maximum(actual, _EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(reference_sorted: np.ndarray, sample: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical CDFs."""
    sample = np.sort(sample)
    points = np.concatenate([reference_sorted, sample])
    cdf_reference = np.searchsorted(reference_sorted, points, side="right") / reference_sorted.size
    cdf_sample = np.searchsorted(sample, points, side="right") / sample.size
    return float(np.max(np.abs(cdf_reference - cdf_sample)))


def _columns(arrays: Mapping[str, Any], names: list[str], prefix: str) -> dict[str, np.ndarray]:
    """Numeric features of a batch of rows: ``name`` for 1-D arrays, ``name[j]`` per column otherwise."""
    features: dict[str, np.ndarray] = {}
    for name in names:
        array = arrays.get(name)
        if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf" or array.ndim == 0:
            continue
        flat = array.reshape(array.shape[0], -1).astype(np.float64, copy=False)
        if flat.shape[1] == 1 and array.ndim == 1:
            features[f"{prefix}{name}"] = flat[:, 0]
        else:
            for column in range(flat.shape[1]):
                features[f"{prefix}{name}[{column}]"] = flat[:, column]
    return features


class _Feature:
    __slots__ = ("continuous", "edges", "expected", "reference")

    def __init__(self, values: np.ndarray, bins: int) -> None:
        values = values[np.isfinite(values)]
        self.reference = np.sort(values)
        quantiles = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1]) if values.size else np.array([])
        self.edges = np.unique(quantiles)
        self.expected = self._proportions(values)
        self.continuous = np.unique(values).size > _CONTINUOUS_ABOVE

    def _proportions(self, values: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(self.edges, values, side="right"), minlength=self.edges.size + 1)
        return counts / max(1, values.size)


class DriftMonitor:
    """Drift state of one model version. Thread-safe: ``observe`` is called from request threads."""

    def __init__(
        self, config: DriftConfig, *, model: str, version: int, inputs: list[str], outputs: list[str], folder: Path
    ) -> None:
        self.config = config
        self.model = model
        self.version = version
        self._inputs = inputs
        self._outputs = outputs
        self._lock = threading.Lock()
        self._pending: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
        self._pending_rows = 0
        self._features: dict[str, _Feature] | None = None
        self._capture: list[tuple[Mapping[str, Any], Mapping[str, Any]]] = []
        self._captured_rows = 0
        self.windows = 0
        self.last: dict[str, dict[str, float]] = {}
        self.drifting = False
        if config.reference_file:
            path = resolve_model_file(
                folder, config.reference_file, what="drift reference file", model=model, version=version
            )
            self._features = self._reference_from_file(path)

    def _reference_from_file(self, path: Path) -> dict[str, _Feature]:
        try:
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        except (OSError, ValueError) as exc:
            raise ModelLoadError(
                f"model {self.model!r} version {self.version}: drift reference {path} cannot be read: {exc}",
                model=self.model,
                version=self.version,
            ) from exc
        features = self._build(_columns(arrays, self._inputs, "") | _columns(arrays, self._outputs, "output:"))
        if not features:
            raise ModelLoadError(
                f"model {self.model!r} version {self.version}: drift reference {path} holds none of the model's "
                f"inputs or outputs ({', '.join(self._inputs + self._outputs)})",
                model=self.model,
                version=self.version,
            )
        return features

    def _build(self, columns: Mapping[str, np.ndarray]) -> dict[str, _Feature]:
        names = list(columns)[: self.config.max_features]
        return {name: _Feature(columns[name], self.config.bins) for name in names}

    def observe(self, arrays: Mapping[str, Any], outputs: Mapping[str, Any], rows: int, *, scorer: DriftScorer) -> None:
        """Note one answered request (cheap: keeps references); full windows are scored on ``scorer``."""
        with self._lock:
            if self._features is None:
                if self._captured_rows >= self.config.capture_reference:
                    # The reference is being built on the background thread: never start another; these rows
                    # open the first window, scored once the reference is ready (nothing is lost meanwhile).
                    self._pending.append((arrays, outputs))
                    self._pending_rows += rows
                    return
                self._capture.append((arrays, outputs))
                self._captured_rows += rows
                if self._captured_rows < self.config.capture_reference:
                    return
                captured, self._capture = self._capture, []
                scorer.submit(self._finish_capture, captured)
                return
            self._pending.append((arrays, outputs))
            self._pending_rows += rows
            if self._pending_rows < self.config.window:
                return
            window, self._pending, self._pending_rows = self._pending, [], 0
        scorer.submit(self._score, window)

    def _stack(self, window: list[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> dict[str, np.ndarray]:
        parts: dict[str, list[np.ndarray]] = {}
        for arrays, outputs in window:
            for name, values in (
                _columns(arrays, self._inputs, "") | _columns(outputs, self._outputs, "output:")
            ).items():
                parts.setdefault(name, []).append(values)
        return {name: np.concatenate(values) for name, values in parts.items()}

    def _finish_capture(self, captured: list[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        features = self._build(self._stack(captured))
        with self._lock:
            self._features = features
            window = None
            if self._pending_rows >= self.config.window:  # rows that came while the reference was built
                window, self._pending, self._pending_rows = self._pending, [], 0
        logger.info(
            "model %r version %s: drift reference captured from the first %d rows (%d features)",
            self.model,
            self.version,
            self._captured_rows,
            len(features),
        )
        if window is not None:
            self._score(window)  # this is the background thread already

    def _score(self, window: list[tuple[Mapping[str, Any], Mapping[str, Any]]]) -> None:
        features = self._features
        assert features is not None
        columns = self._stack(window)
        scores: dict[str, dict[str, float]] = {}
        for name, feature in features.items():
            values = columns.get(name)
            if values is None:
                continue
            values = values[np.isfinite(values)]
            if not values.size:
                continue
            score = {"psi": psi(feature.expected, feature._proportions(values))}
            if feature.continuous and feature.reference.size:
                score["ks"] = ks_statistic(feature.reference, values)
            scores[name] = score
        config = self.config
        drifting = [
            name
            for name, score in scores.items()
            if score["psi"] > config.psi_threshold
            or (config.ks_threshold is not None and score.get("ks", 0) > config.ks_threshold)
        ]
        with self._lock:
            self.last = scores
            self.windows += 1
            self.drifting = bool(drifting)
        if drifting:
            worst = max(drifting, key=lambda name: scores[name]["psi"])
            logger.warning(
                "model %r version %s is drifting: %d feature(s) over the threshold in the last window of %d rows; "
                "worst %s (PSI %.3f)",
                self.model,
                self.version,
                len(drifting),
                config.window,
                worst,
                scores[worst]["psi"],
            )

    def status(self) -> dict[str, Any]:
        with self._lock:
            last = dict(self.last)
            return {
                "reference": "file" if self.config.reference_file else "captured",
                "reference_ready": self._features is not None,
                "windows": self.windows,
                "drifting": self.drifting,
                "max_psi": max((s["psi"] for s in last.values()), default=None),
                "features": last,
                "psi_threshold": self.config.psi_threshold,
                "ks_threshold": self.config.ks_threshold,
            }

    def observations(self) -> list[tuple[str, float, dict[str, Any]]]:
        values = []
        with self._lock:
            last = dict(self.last)
        for name, score in last.items():
            attributes = {
                "inprocserve.model.name": self.model,
                "inprocserve.model.version": self.version,
                "inprocserve.drift.feature": name,
            }
            values.append(("psi", score["psi"], attributes))
            if "ks" in score:
                values.append(("ks", score["ks"], attributes))
        return values


# -- the background thread that scores windows, owned by the server that starts it ------------------------

_STOP = object()
_scorers: weakref.WeakSet[DriftScorer] = weakref.WeakSet()


class DriftScorer:
    """Scores the drift windows of one server's monitors on one thread, off the request path.

    Thread-safe. The thread starts lazily with the first window (again in a forked child) and
    :meth:`close` stops and joins it after the window it is scoring; windows submitted after that are dropped.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._lock = threading.Lock()
        self._closed = False
        _scorers.add(self)
        _fork.register(self)

    def submit(self, function: Callable[[Any], None], argument: Any) -> None:
        """Run ``function(argument)`` on the scoring thread."""
        with self._lock:
            if self._closed:
                return
            self._jobs.put((function, argument))
            if self._worker is None:
                self._worker = threading.Thread(target=self._work, name="inprocserve-drift", daemon=True)
                self._worker.start()

    def _work(self) -> None:
        while True:
            function, argument = self._jobs.get()
            if function is _STOP:
                return
            try:
                function(argument)
            except Exception:  # a bad window must not stop drift scoring for every other version
                logger.exception("drift scoring failed")

    def drain(self, timeout_s: float = 10.0) -> bool:
        """Wait until every window submitted so far has been scored; ``False`` on timeout (or if closed)."""
        done = threading.Event()
        self.submit(lambda _: done.set(), None)
        return done.wait(timeout_s)

    def close(self, *, timeout_s: float = 5.0) -> None:
        """Stop the thread after the window it is scoring (idempotent). Queued windows are dropped."""
        with self._lock:
            self._closed = True
            worker, self._worker = self._worker, None
            if worker is not None:
                self._jobs.put((_STOP, None))
        if worker is not None and worker.is_alive() and worker is not threading.current_thread():
            worker.join(timeout=timeout_s)

    def _after_fork_in_child(self) -> None:
        self._jobs = queue.SimpleQueue()
        self._worker = None
        self._lock = threading.Lock()


def drain(timeout_s: float = 10.0) -> bool:
    """Wait until every open scorer has scored the windows submitted so far (for tests and shutdown)."""
    return all(scorer.drain(timeout_s) for scorer in list(_scorers) if not scorer._closed)


def _stop_all() -> None:
    """At exit: stop the threads of scorers nobody closed, before the interpreter finalizes (a daemon
    thread inside numpy during finalization can crash the process)."""
    for scorer in list(_scorers):
        scorer.close()


atexit.register(_stop_all)
