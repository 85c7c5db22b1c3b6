"""Dynamic INT8 quantization of a model, with a report of what it changed: size, speed and accuracy.

Wraps onnxruntime's ``quantize_dynamic`` (weights stored as INT8, activations quantized on the fly), then
measures both models side by side in one run on the same synthesized inputs.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ModelLoadError
from ._extras import require

__all__ = ["quantize"]


def _session(path: Path) -> Any:
    import onnxruntime

    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _inputs(session: Any, rows: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    from ._signature import Signature

    signature = Signature.from_nodes(session.get_inputs(), session.get_outputs())
    feeds = signature.synthesize(rows)
    for name, array in feeds.items():  # random numbers where the model takes floats, zeros elsewhere
        if array.dtype.kind == "f":
            feeds[name] = rng.standard_normal(array.shape).astype(array.dtype)
    return feeds


def _rows_per_second(session: Any, feeds: dict[str, np.ndarray], seconds: float) -> float:
    session.run(None, feeds)
    rows = next(iter(feeds.values())).shape[0] if feeds else 1
    runs, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * rows / (time.perf_counter() - started)


def quantize(source: Path, target: Path, *, sample_rows: int = 256, seconds: float = 1.0) -> dict[str, Any]:
    """Quantize ``source`` into ``target`` and compare them. Needs ``pip install 'inprocserve[quantize]'``.

    Raises:
        ModelLoadError: the source cannot be loaded or quantized.
        ImportError: onnx is missing (the message names the ``quantize`` extra).
    """
    # onnxruntime's quantization tools import onnx, which only the "quantize" extra installs
    tools = require("onnxruntime.quantization", extra="quantize", feature="quantize")
    try:
        tools.quantize_dynamic(str(source), str(target), weight_type=tools.QuantType.QInt8)
    except Exception as exc:
        raise ModelLoadError(f"cannot quantize {source}: {exc}") from exc
    original, quantized = _session(source), _session(target)
    rng = np.random.default_rng(0)
    sample = _inputs(original, sample_rows, rng)
    expected, got = original.run(None, sample), quantized.run(None, sample)
    accuracy: dict[str, Any] = {}
    for spec, a, b in zip(original.get_outputs(), expected, got, strict=True):
        if not (isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.shape == b.shape):
            continue
        entry: dict[str, Any] = {"max_abs_diff": float(np.max(np.abs(a - b))) if a.size else 0.0}
        if a.ndim == 2 and a.shape[1] >= 2:
            entry["label_agreement"] = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        accuracy[spec.name] = entry
    speed = {}
    for rows in (1, 64):
        feeds = _inputs(original, rows, rng)
        before = _rows_per_second(original, feeds, seconds)  # measured side by side, in this run
        after = _rows_per_second(quantized, feeds, seconds)
        speed[f"batch_{rows}"] = {"before_rows_per_s": before, "after_rows_per_s": after, "ratio": after / before}
    return {
        "source": str(source),
        "target": str(target),
        "bytes_before": source.stat().st_size,
        "bytes_after": target.stat().st_size,
        "size_ratio": target.stat().st_size / source.stat().st_size,
        "speed": speed,
        "accuracy": accuracy,
        "sample_rows": sample_rows,
    }
