"""Dynamic INT8 quantization of a model, with a report of what it changed: size, speed and accuracy.

Wraps onnxruntime's ``quantize_dynamic`` (weights stored as INT8, activations quantized on the fly), then
measures both models side by side in one run on the same synthesized inputs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ._backend import raised_by_signal_handler
from ._cli_common import raise_if_stopped
from ._declared_shapes import session_signature
from ._errors import ModelLoadError
from ._extras import require
from ._signature import MOST_MADE_UP_RANK, PROBE_INNER_SIZES, Signature

__all__ = ["AccuracyRefusedError", "quantize"]


def _session(path: Path) -> Any:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # a failed run is reported as ModelLoadError; onnxruntime's own line is noise
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _signature(session: Any, source: Path) -> Signature:
    """The signature of ``session``, a session of ``source``, its inputs that the file declares with no shape
    taken as of any rank (onnxruntime reports them as ``[]``, as a scalar)."""
    return session_signature(session.get_inputs(), session.get_outputs(), source)


def _made_up_shape(signature: Signature, session: Any) -> tuple[int, int]:
    """The length of the model's dynamic inner axes in the compared inputs, and the axes of its inputs of any
    rank: the first of :meth:`Signature.made_up_inner_sizes`, at the first of :meth:`Signature.made_up_ranks`,
    that one row of zeros runs on (a convolution over time fails on one step, a MatMul on a scalar, and such
    a model could not be compared at all), else 1 and 0 (the comparison then reports the failure)."""
    for rank in signature.made_up_ranks():
        for size in signature.made_up_inner_sizes():
            try:
                session.run(None, signature.synthesize(1, size, any_rank=rank))
            except Exception as exc:
                if raised_by_signal_handler(exc):  # (a task's time limit, not this length's failure)
                    raise
                continue
            return size, rank
    return 1, 0


def _inputs(
    signature: Signature, rows: int, rng: np.random.Generator, made_up: tuple[int, int]
) -> dict[str, np.ndarray]:
    inner_size, rank = made_up
    feeds = signature.synthesize(rows, inner_size, any_rank=rank)
    for name, array in feeds.items():  # random numbers where the model takes floats, zeros elsewhere
        if array.dtype.kind == "f":
            feeds[name] = rng.standard_normal(array.shape).astype(array.dtype)
    return feeds


class AccuracyRefusedError(ModelLoadError):
    """The quantized model's answers are too far from the original's: NaN or infinite where the original's are
    numbers (or the other way round), or further off than ``max_abs_diff``. ``report`` is the comparison, its
    ``refused`` saying why; the target was not written."""

    report: dict[str, Any]


def _refusals(accuracy: dict[str, Any], *, max_abs_diff: float | None, allow_not_finite: bool) -> list[str]:
    """Why the answers compared in ``accuracy`` are not good enough to write the quantized model (none: they are).

    Refused by default: values NaN or infinite in one model only. A NaN score served where the original answers
    a number is no rounding difference (a fraud score of NaN passes every threshold test as false); the report
    counted them and the model was renamed into place with exit status 0, which a deploy script reads as fit to
    ship. On random inputs a model whose own answers are NaN for some (``Log`` of a negative input) can flip at
    the edge of its domain: ``allow_not_finite`` is the operator's call for it."""
    refused = []
    for output, figures in accuracy.items():
        if figures.get("not_finite_in_one_only") and not allow_not_finite:
            refused.append(
                f"{output}: {figures['not_finite_in_one_only']} value(s) NaN or infinite in one model only "
                "(--allow-not-finite writes it anyway)"
            )
        if max_abs_diff is not None and figures.get("max_abs_diff", 0.0) > max_abs_diff:
            refused.append(
                f"{output}: max abs diff {figures['max_abs_diff']:.4g} is more than --max-abs-diff {max_abs_diff:g}"
            )
    return refused


def _run(session: Any, feeds: dict[str, np.ndarray], source: Path, *, quantized: bool) -> list[Any]:
    """One run on synthesized inputs; a failure is the model's, told as such (onnxruntime's own exceptions
    would reach the command line as a traceback).

    Raises:
        ModelLoadError: the run failed (says which model, and on what inputs).
    """
    try:
        return session.run(None, feeds)  # type: ignore[no-any-return]
    except Exception as exc:
        if raised_by_signal_handler(exc):  # (a task's time limit stopped the run: not the model's failure)
            raise
        shapes = ", ".join(f"{name} {list(array.shape)}" for name, array in feeds.items())
        if quantized:
            problem = f"the quantized model of {source} fails to run where the original runs"
        else:
            problem = (
                f"cannot compare {source} with its quantized model: it does not run on the synthesized inputs "
                "(random floats, zeros elsewhere; other dynamic axes than the batch axis as long as the first of "
                f"{', '.join(map(str, (1, *PROBE_INNER_SIZES)))} that runs, else 1; an input of any rank a "
                f"scalar, or of the first of 1 to {MOST_MADE_UP_RANK} axes that runs)"
            )
        raise ModelLoadError(f"{problem}: {shapes}: {str(exc).strip()}") from exc


def _rows(feeds: dict[str, np.ndarray]) -> int:
    """The rows in synthesized inputs: those asked for where the batch axis is dynamic, else the model's
    fixed size of it (1 for a scalar input, which has no rows)."""
    return next((int(array.shape[0]) for array in feeds.values() if array.ndim), 1)


def _rows_per_second(
    session: Any, feeds: dict[str, np.ndarray], seconds: float, source: Path, *, quantized: bool
) -> float:
    _run(session, feeds, source, quantized=quantized)
    rows = _rows(feeds)
    runs, started = 0, time.perf_counter()
    while runs == 0 or time.perf_counter() - started < seconds:  # at least one timed run: a rate above 0
        raise_if_stopped()  # (a stop signal that onnx's or onnxruntime's C code swallowed: see raise_if_stopped)
        session.run(None, feeds)
        runs += 1
    return runs * rows / (time.perf_counter() - started)


def _same_file(source: Path, target: Path) -> bool:
    """Whether writing ``target`` would overwrite ``source``: the same path once links are resolved, or
    (when the target exists) the same file through a hard link."""
    if source.resolve() == target.resolve():
        return True
    try:
        return os.path.samefile(source, target)
    except OSError:  # one of them does not exist: they cannot be one file
        return False


def _check(source: Path, target: Path, sample_rows: int, seconds: float) -> None:
    if isinstance(sample_rows, bool) or not isinstance(sample_rows, int) or sample_rows < 1:
        raise ValueError(f"sample_rows must be an int >= 1, not {sample_rows!r}")
    finite = isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
    if not (finite and seconds > 0):
        raise ValueError(f"seconds must be a finite number > 0, not {seconds!r}")
    if _same_file(source, target):
        raise ValueError(
            f"the target {target} is the source model itself; write the quantized model to another file "
            "(quantizing in place would replace the model and compare it with itself)"
        )
    if target.is_dir():  # (found before quantizing: the rename over it failed, naming the temporary file)
        raise IsADirectoryError(
            f"the target {target} is a folder; give the file to write, such as {target / source.name}"
        )
    if not target.parent.is_dir():
        # (a file where the folder goes: "does not exist; create it first" sent the user to create what exists)
        existing = next((folder for folder in target.parents if folder.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NotADirectoryError(
                f"the target's folder {existing} is a file, not a folder; give a TARGET in a folder, or move the "
                "file away"
            )
        raise FileNotFoundError(f"the target's folder {target.parent} does not exist; create it first")


# onnxruntime's quantizer turns a Conv into a ConvInteger of int8 weights, which the CPU build of onnxruntime had
# no kernel for until late 2025 (microsoft/onnxruntime#26585): on 1.17.3, the floor, the quantized model of any
# convolutional network failed to load ("Could not find an implementation for ConvInteger(10)") and quantize
# failed. There its convolutions stay float32, the rest is quantized, and the report says so.
LEFT_IN_FLOAT32_REASON = (
    "this onnxruntime has no ConvInteger kernel for int8 weights, so its convolutions stay float32; "
    "a newer onnxruntime quantizes them too"
)


@functools.cache
def int8_convolutions_load() -> bool:
    """Whether this onnxruntime's CPU build loads a ConvInteger of uint8 inputs and int8 weights, what its
    quantizer makes of a Conv (a session of one such node: cached, asked once per process)."""
    import onnx
    import onnxruntime

    helper, types = onnx.helper, onnx.TensorProto
    graph = helper.make_graph(
        [helper.make_node("ConvInteger", ["x", "w"], ["y"])],
        "int8_convolution",
        [helper.make_tensor_value_info("x", types.UINT8, [1, 1, 1])],
        [helper.make_tensor_value_info("y", types.INT32, None)],
        [helper.make_tensor("w", types.INT8, [1, 1, 1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 10)])
    model.ir_version = 8
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # (the refusal is the answer, not an error to print)
    try:
        onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if type(exc).__name__ == "NotImplemented":  # "Could not find an implementation for ConvInteger(10)"
            return False
        raise
    return True


def _op_types(source: Path) -> set[str]:
    """The operator types of the model's graph and of the graphs inside its nodes (a Loop's, an If's)."""
    import onnx

    found: set[str] = set()
    graphs = [onnx.load(str(source), load_external_data=False).graph]
    while graphs:
        for node in graphs.pop().node:
            found.add(node.op_type)
            for attribute in node.attribute:
                graphs.extend([attribute.g] if attribute.HasField("g") else [])
                graphs.extend(attribute.graphs)
    return found


def _left_in_float32(source: Path) -> dict[str, str]:
    """The operator types left float32 by this onnxruntime (see ``LEFT_IN_FLOAT32_REASON``), with why.

    Raises:
        ModelLoadError: onnx cannot read the source (not a model file, a truncated one).
    """
    if int8_convolutions_load():
        return {}
    try:
        op_types = _op_types(source)
    except Exception as exc:  # (onnx's own words say what is wrong with the file)
        raise ModelLoadError(f"cannot quantize {source}: {exc}") from exc
    return {"Conv": LEFT_IN_FLOAT32_REASON} if "Conv" in op_types else {}


def _temporary_path(target: Path) -> Path:
    """A new name for the quantized model beside ``target``, hidden, until it is renamed over ``target``."""
    return target.parent / f".{target.name}.{secrets.token_hex(8)}.tmp"


def _write_quantized(tools: Any, source: Path, path: Path, *, left_in_float32: set[str]) -> None:
    """Quantize ``source`` into the new file ``path`` (made here), all but the operator types of
    ``left_in_float32``; the caller renames it, or removes it whatever is raised, and from the moment it calls
    this: a stop signal may end the call between the file's making and the code that would remove it.

    Raises:
        ModelLoadError: the source cannot be loaded or quantized.
        FileExistsError: ``path`` exists (not this call's file: never removed).
    """
    # not mkstemp: its file is private (0600), and a served model must stay readable as any new file is
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        import onnxruntime.quantization.registry

        op_types = (
            [op for op in onnxruntime.quantization.registry.IntegerOpsRegistry if op not in left_in_float32]
            if left_in_float32
            else None  # (the quantizer's own choice: every type it quantizes dynamically)
        )
        tools.quantize_dynamic(str(source), str(path), op_types_to_quantize=op_types, weight_type=tools.QuantType.QInt8)
        with path.open("rb") as written:
            os.fsync(written.fileno())
    except Exception as exc:
        raise ModelLoadError(f"cannot quantize {source}: {exc}") from exc


def quantize(
    source: Path,
    target: Path,
    *,
    sample_rows: int = 256,
    seconds: float = 1.0,
    max_abs_diff: float | None = None,
    allow_not_finite: bool = False,
) -> dict[str, Any]:
    """Quantize ``source`` into ``target`` and compare them. Needs ``pip install 'inprocserve[quantize]'``.

    The quantized model is written to a temporary file in ``target``'s folder and renamed over ``target``
    only once it has loaded and been measured, and its answers are close enough to the original's: no value
    NaN or infinite in one model only (unless ``allow_not_finite``), no float output further off than
    ``max_abs_diff`` (when given). A failure or a refusal leaves ``target`` as it was.

    Raises:
        ValueError: ``target`` is ``source`` (also through a link), ``sample_rows`` is not an int >= 1 or
            ``seconds`` is not a finite number > 0.
        FileNotFoundError: ``target``'s folder does not exist.
        NotADirectoryError: ``target``'s folder (or one above it) is a file.
        IsADirectoryError: ``target`` is a folder.
        OSError: the temporary file cannot be written in ``target``'s folder, or renamed into place.
        ModelLoadError: the source cannot be loaded or quantized, the quantized model cannot be loaded, or
            either does not run on the synthesized inputs (the message names their shapes).
        AccuracyRefusedError: the answers are too far off (a ``ModelLoadError``; its ``report`` says why).
        ImportError: onnx is missing (the message names the ``quantize`` extra).
    """
    _check(source, target, sample_rows, seconds)
    # onnxruntime's quantization tools import onnx, which only the "quantize" extra installs
    tools = require("onnxruntime.quantization", extra="quantize", feature="quantize")
    left_in_float32 = _left_in_float32(source)
    written = _temporary_path(target)
    try:
        # (made inside the try: a Ctrl-C between the file's making and a try that began after it left the file
        # behind, seen under load once the call had returned and before its result was assigned)
        _write_quantized(tools, source, written, left_in_float32=set(left_in_float32))
        raise_if_stopped()
        report = _compare(source, written, sample_rows=sample_rows, seconds=seconds)
        report["left_in_float32"] = left_in_float32
        report["refused"] = _refusals(report["accuracy"], max_abs_diff=max_abs_diff, allow_not_finite=allow_not_finite)
        report["written"] = not report["refused"]
        if report["refused"]:
            refusal = AccuracyRefusedError(
                f"the quantized model answers too far from the original on {report['sample_rows']} random rows: "
                f"{'; '.join(report['refused'])}; {target} was not written"
            )
            refusal.report = {"source": str(source), "target": str(target), **report}
            raise refusal
        raise_if_stopped()  # (never put in place the model of a run that was stopped)
        os.replace(written, target)
    except BaseException as exc:
        if not isinstance(exc, FileExistsError):  # (the name was another's: its file is not this run's to remove)
            written.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # make the new name durable too, where the platform allows it
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return {"source": str(source), "target": str(target), **report}


def _has_float16_weights(source: Path) -> bool:
    """Whether the model holds float16 weights, which onnxruntime's dynamic quantization turns into a model
    that does not load ("Type 'tensor(float16)' of input parameter ... of operator (DequantizeLinear) ... is
    invalid"), an error that does not say why."""
    try:
        import onnx

        model = onnx.load(str(source), load_external_data=False)
    except Exception:  # (the load error itself is reported as it is)
        return False
    return any(tensor.data_type == onnx.TensorProto.FLOAT16 for tensor in model.graph.initializer)


def _scores(answer: Any) -> Any:
    """A ZipMap's maps (skl2onnx's classifiers: one map of class scores per row) as a rows x classes matrix in
    the first map's order, so they are compared as class scores are; any other answer as it is. Left out of
    the comparison, a scikit-learn classifier's report had no accuracy line at all."""
    if isinstance(answer, list) and answer and all(isinstance(row, Mapping) for row in answer):
        keys = list(answer[0])
        if all(list(row) == keys for row in answer):
            return np.array([[row[key] for key in keys] for row in answer], dtype=np.float64)
    return answer


def _differences(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """The largest difference of two float answers where both are numbers, and how many values are NaN or
    infinite in one answer but not the same in the other. Over every value, one NaN (a ``Log`` or ``Sqrt`` of
    a negative random input, NaN in both models) made the difference NaN: "max abs diff nan", and
    ``"max_abs_diff": NaN`` in ``--json``, which is not JSON (jq refused the report)."""
    finite = np.isfinite(a) & np.isfinite(b)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # (NaN in both, or the same infinity: the same answer)
    return {
        "max_abs_diff": float(np.max(np.abs(a[finite] - b[finite]), initial=0.0)),
        "not_finite_in_one_only": int(np.count_nonzero(~finite & ~same)),
    }


def _compare(source: Path, target: Path, *, sample_rows: int, seconds: float) -> dict[str, Any]:
    try:
        original, quantized = _session(source), _session(target)
    except Exception as exc:
        hint = (
            "; dynamic INT8 quantization takes float32 weights and this model's are float16 (a half-precision "
            "export): quantize its float32 export, or serve the float16 model as it is"
            if _has_float16_weights(source)
            else ""
        )
        raise ModelLoadError(f"cannot load the quantized model of {source}: {exc}{hint}") from exc
    rng = np.random.default_rng(0)
    signature = _signature(original, source)
    made_up = _made_up_shape(signature, original)
    sample = _inputs(signature, sample_rows, rng, made_up)
    expected = _run(original, sample, source, quantized=False)
    got = _run(quantized, sample, source, quantized=True)
    accuracy: dict[str, Any] = {}
    for spec, a, b in zip(original.get_outputs(), expected, got, strict=True):
        a, b = _scores(a), _scores(b)
        if isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype.kind != "f" and a.shape == b.shape:
            # a classifier's labels (skl2onnx's output_label, integers or text): how many are the same
            accuracy[spec.name] = {"agreement": float(np.mean(a == b)) if a.size else 1.0}
            continue
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype.kind == "f" and a.shape == b.shape):
            continue
        entry = _differences(a, b)
        if a.ndim == 2 and a.shape[1] >= 2:
            entry["label_agreement"] = float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))
        accuracy[spec.name] = entry
    # Reported by the rows the model took, not the rows asked for: a model whose batch axis is fixed (at 3, say)
    # takes 3 rows whatever is asked, and was said to be compared on 256 rows and timed at batches of 1 and 64.
    speed = {}
    for rows in (1, 64):
        feeds = _inputs(signature, rows, rng, made_up)
        if f"batch_{_rows(feeds)}" in speed:
            continue
        before = _rows_per_second(original, feeds, seconds, source, quantized=False)  # side by side, in this run
        after = _rows_per_second(quantized, feeds, seconds, source, quantized=True)
        speed[f"batch_{_rows(feeds)}"] = {
            "before_rows_per_s": before,
            "after_rows_per_s": after,
            "ratio": after / before,
        }
    return {
        "bytes_before": source.stat().st_size,
        "bytes_after": target.stat().st_size,
        "size_ratio": target.stat().st_size / source.stat().st_size,
        "speed": speed,
        "accuracy": accuracy,
        "sample_rows": _rows(sample),
        "sample_shapes": {name: list(array.shape) for name, array in sample.items()},
    }
