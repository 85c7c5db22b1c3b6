"""Helpers for tests of applications that use inprocserve: tiny real ONNX models and a manual clock.

The model builders write genuine ONNX files that onnxruntime loads and runs; they need the ``onnx``
package (``pip install "inprocserve[testing]"``). Nothing here fakes the runtime.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
import os
import secrets
import shutil
import stat
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ModelNotFoundError
from ._repository import validate_model_name

__all__ = [
    "ManualClock",
    "build_add_model",
    "build_gather_model",
    "build_mlp_model",
    "build_scale_model",
    "build_sum_model",
    "save_model",
]

_OPSET = 17
_IR_VERSION = 9  # readable by every onnxruntime release this library supports


class ManualClock:
    """A monotonic clock that moves only when told to: pass it as ``clock=`` to step deadlines by hand.

    Raises:
        ValueError: ``start`` is NaN or infinite.
    """

    def __init__(self, start: float = 1000.0) -> None:
        if not math.isfinite(_real("start", start)):
            raise ValueError(f"ManualClock start must be a finite number of seconds, got {start!r}")
        self._now = float(start)
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (0 allowed).

        Raises:
            ValueError: ``seconds`` is negative, NaN or infinite, or would take the clock past float's range
                (a monotonic clock never goes back, and a step to infinity or NaN would make every deadline
                compare false).
        """
        if not (math.isfinite(_real("seconds", seconds)) and seconds >= 0):
            raise ValueError(f"ManualClock.advance takes a finite number of seconds >= 0, got {seconds!r}")
        with self._lock:
            now = self._now + float(seconds)
            if not math.isfinite(now):  # (finite steps past float's range: as bad as a step to infinity)
                raise ValueError(f"ManualClock.advance({seconds!r}) from {self._now!r} would make the clock infinite")
            self._now = now


def _real(what: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{what} must be a number of seconds, got {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:  # (an int beyond float's range: not finite, as the callers' ValueError says)
        return math.inf


def _count(what: str, value: object, *, minimum: int = 1) -> int:
    """``value`` if it is a whole number >= ``minimum``, else a ``TypeError`` or ``ValueError`` saying so."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a whole number, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return int(value)


def _onnx() -> Any:
    try:
        import onnx
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise ImportError('inprocserve.testing model builders need onnx: pip install "inprocserve[testing]"') from exc
    return onnx


def _model(nodes: list[Any], inputs: list[Any], outputs: list[Any], initializers: Sequence[Any] = ()) -> Any:
    onnx = _onnx()
    graph = onnx.helper.make_graph(nodes, "inprocserve-test", inputs, outputs, list(initializers))
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", _OPSET)])
    model.ir_version = _IR_VERSION
    onnx.checker.check_model(model)
    return model


def save_model(model: Any, repository: str | Path, name: str, version: int = 1) -> Path:
    """Write an ONNX ``ModelProto`` to ``<repository>/<name>/<version>/model.onnx``; returns that path.

    A server watching the repository sees the version whole or not at all: a new model or version folder
    appears with its model.onnx in it, and a model.onnx saved over is replaced in one step.

    Raises:
        ValueError: ``name`` is not a model name the repository accepts (one path component of letters,
            digits, ``.``, ``_`` and ``-``), or ``version`` is below 1.
        TypeError: ``model`` is not a ``ModelProto`` (such as its serialized bytes), ``name`` is not a ``str``
            or ``version`` not a whole number.
    """
    if not callable(getattr(model, "SerializeToString", None)):  # (checked before any folder is made)
        hint = " (for serialized bytes: onnx.load_model_from_string(data))" if isinstance(model, bytes) else ""
        raise TypeError(f"save_model needs an onnx.ModelProto{hint}, got {type(model).__name__}")
    try:
        validate_model_name(name)
    except ModelNotFoundError as exc:
        raise ValueError(str(exc)) from None
    version = _count("version", version)
    path = Path(repository) / name / str(version) / "model.onnx"
    data = model.SerializeToString()
    # A new model or version folder is made aside and renamed into place with its model.onnx in it: made first,
    # it was there without one, and a server watching the repository that scanned in between logged "missing
    # model.onnx" (or "has no version folder") and refresh() returned it as a problem.
    Path(repository).mkdir(parents=True, exist_ok=True)
    for folder in (path.parent.parent, path.parent):
        if not os.path.lexists(folder):
            if _saved_in_a_new_folder(data, folder, path):
                return path
            break  # (made meanwhile by another writer: the file is written into it)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then renamed over model.onnx (atomic within its folder): written in place, a server polling
    # the repository that opened the file meanwhile read it empty or half-written, and a copy of the repository
    # made with hard links was rewritten too. (A dot-file: the repository's scans skip it.) Created with the
    # mode write_bytes gives (0666 less the umask), not mkstemp's 0600; over an existing file, with its mode, as
    # the write in place kept it (a model.onnx made 0600 became readable by every user when saved over).
    try:
        kept_mode: int | None = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        kept_mode = None
    temporary = path.with_name(f".model.onnx.{secrets.token_hex(8)}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        if kept_mode is not None:
            os.chmod(temporary, kept_mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return path


def _saved_in_a_new_folder(data: bytes, folder: Path, path: Path) -> bool:
    """Write ``data`` at ``path`` inside ``folder``, which does not exist yet: built as a dot-folder beside it
    (the repository's scans skip those), then renamed to ``folder``. False, with nothing left behind, when
    ``folder`` was made meanwhile."""
    staging = folder.with_name(f".{folder.name}.{secrets.token_hex(8)}.tmp")
    staged = staging / path.relative_to(folder)
    try:
        staged.parent.mkdir(parents=True)
        descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        try:
            os.rename(staging, folder)
        except OSError:
            if not os.path.lexists(folder):
                raise
            shutil.rmtree(staging, ignore_errors=True)
            return False
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return True


def build_scale_model(factor: float = 2.0, *, features: int = 4, offset: float = 0.0) -> Any:
    """``y = x * factor + offset`` on float32 ``x[batch, features]``: easy to check, distinct per version.

    Raises:
        ValueError: ``features`` is below 1.
    """
    features = _count("features", features)
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    inits = [
        onnx.numpy_helper.from_array(np.array(factor, dtype=np.float32), "factor"),
        onnx.numpy_helper.from_array(np.array(offset, dtype=np.float32), "offset"),
    ]
    nodes = [helper.make_node("Mul", ["x", "factor"], ["scaled"]), helper.make_node("Add", ["scaled", "offset"], ["y"])]
    return _model(
        nodes,
        [helper.make_tensor_value_info("x", tp.FLOAT, ["batch", features])],
        [helper.make_tensor_value_info("y", tp.FLOAT, ["batch", features])],
        inits,
    )


def build_add_model(*, sequence: bool = False) -> Any:
    """Two inputs: ``total = a + b`` (float32) and ``count = n * 2`` (int64).

    With ``sequence`` the float inputs are ``[batch, seq]`` with a dynamic ``seq`` axis, for tests of
    grouping and padding of requests of different lengths.
    """
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    shape: list[Any] = ["batch", "seq"] if sequence else ["batch", 3]
    inits = [onnx.numpy_helper.from_array(np.array(2, dtype=np.int64), "two")]
    nodes = [helper.make_node("Add", ["a", "b"], ["total"]), helper.make_node("Mul", ["n", "two"], ["count"])]
    return _model(
        nodes,
        [
            helper.make_tensor_value_info("a", tp.FLOAT, shape),
            helper.make_tensor_value_info("b", tp.FLOAT, shape),
            helper.make_tensor_value_info("n", tp.INT64, ["batch", 1]),
        ],
        [
            helper.make_tensor_value_info("total", tp.FLOAT, shape),
            helper.make_tensor_value_info("count", tp.INT64, ["batch", 1]),
        ],
        inits,
    )


def build_gather_model(*, table_rows: int = 10, width: int = 4) -> Any:
    """``rows = table[index]`` with int64 ``index[batch]``, ``table`` holding ``0, 1, 2 ...`` row by row.

    An index outside ``-table_rows..table_rows-1`` passes validation but fails inside onnxruntime — a real
    poisoned request (``table_rows`` itself is the smallest such index). A negative index within range
    counts from the end, as in ONNX ``Gather``: ``-1`` is the last row.

    Raises:
        ValueError: ``table_rows`` or ``width`` is below 1.
    """
    table_rows, width = _count("table_rows", table_rows), _count("width", width)
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    table = np.arange(table_rows * width, dtype=np.float32).reshape(table_rows, width)
    return _model(
        [helper.make_node("Gather", ["table", "index"], ["rows"], axis=0)],
        [helper.make_tensor_value_info("index", tp.INT64, ["batch"])],
        [helper.make_tensor_value_info("rows", tp.FLOAT, ["batch", width])],
        [onnx.numpy_helper.from_array(table, "table")],
    )


def build_sum_model(*, features: int = 4, fixed_batch: int | None = None) -> Any:
    """``total = sum(x)`` over every element: the output has no batch axis, so the model cannot batch.

    With ``fixed_batch`` the input's batch axis is fixed to that size instead of dynamic.

    Raises:
        ValueError: ``features`` or ``fixed_batch`` is below 1.
    """
    features = _count("features", features)
    if fixed_batch is not None:
        fixed_batch = _count("fixed_batch", fixed_batch)
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    batch: Any = fixed_batch if fixed_batch is not None else "batch"
    return _model(
        [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0)],
        [helper.make_tensor_value_info("x", tp.FLOAT, [batch, features])],
        [helper.make_tensor_value_info("total", tp.FLOAT, [])],
    )


def build_mlp_model(
    dims: Sequence[int] = (16, 32, 2), *, softmax: bool = True, seed: int = 0, input_name: str = "x"
) -> Any:
    """A float32 multi-layer perceptron ``Gemm -> Relu -> ... -> Gemm [-> Softmax]`` with seeded weights.

    ``dims`` lists layer widths from the input features to the outputs; the output is named ``y``.

    Raises:
        ValueError: ``dims`` has fewer than two widths (the input features and the outputs), or a width
            below 1.
    """
    dims = [_count(f"dims[{index}]", width) for index, width in enumerate(dims)]
    if len(dims) < 2:
        raise ValueError(
            f"build_mlp_model needs at least two widths in dims (input features, ..., outputs), got {dims}"
        )
    onnx = _onnx()
    helper, tp = onnx.helper, onnx.TensorProto
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    previous = input_name
    layers = list(itertools.pairwise(dims))
    for index, (fan_in, fan_out) in enumerate(layers):
        weight = (rng.standard_normal((fan_in, fan_out)) / np.sqrt(fan_in)).astype(np.float32)
        bias = (rng.standard_normal(fan_out) * 0.01).astype(np.float32)
        inits += [onnx.numpy_helper.from_array(weight, f"w{index}"), onnx.numpy_helper.from_array(bias, f"b{index}")]
        nodes.append(helper.make_node("Gemm", [previous, f"w{index}", f"b{index}"], [f"h{index}"]))
        previous = f"h{index}"
        if index < len(layers) - 1:
            nodes.append(helper.make_node("Relu", [previous], [f"r{index}"]))
            previous = f"r{index}"
    nodes.append(
        helper.make_node("Softmax", [previous], ["y"], axis=1)
        if softmax
        else helper.make_node("Identity", [previous], ["y"])
    )
    return _model(
        nodes,
        [helper.make_tensor_value_info(input_name, tp.FLOAT, ["batch", dims[0]])],
        [helper.make_tensor_value_info("y", tp.FLOAT, ["batch", dims[-1]])],
        inits,
    )
