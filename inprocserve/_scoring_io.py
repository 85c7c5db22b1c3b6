"""``python -m inprocserve score MODEL INPUT OUTPUT``: read rows from a file, score them with
:meth:`Server.predict_many`, write the answers to a file.

Formats, by file extension: ``.npy`` (one array: the input of a one-input model), ``.npz`` (one array per
input name; answers: one array per output name), ``.csv`` (columns form the float matrix of a one-input model;
a header row is optional and detected; answers: columns ``<output>_<i>``) and ``.parquet`` (like CSV; needs
``pyarrow``). Inputs are read chunk by chunk where the format allows (``.npy`` memory-mapped, CSV and Parquet
streamed); answers are written to a temporary file that replaces OUTPUT only when every row succeeded.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from ._errors import ConfigurationError, InprocserveError, InvalidInputError, ModelNotFoundError
from ._prediction import Prediction
from ._repository import MODEL_FILENAME
from ._scoring import ProgressBar, plan_for_version
from ._server import Server
from ._signature import Signature

__all__ = ["FORMATS", "run_score", "score_file"]

FORMATS = (".npy", ".npz", ".csv", ".parquet")
_MODEL_NAME = "model"  # the name a model loaded from a file is served under


def _pyarrow() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # type: ignore[import-not-found, import-untyped, unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError:
        raise ConfigurationError("Parquet files need pyarrow: pip install pyarrow") from None
    return pa, pq


def _format(path: Path, role: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInputError(f"{role} {path}: unknown format {suffix or '(no extension)'!r}; use one of {FORMATS}")
    return suffix


def _single_input(signature: Signature, path: Path) -> tuple[str, np.dtype[Any], int | None]:
    """Name, dtype and rank of the only input of the model (CSV, Parquet and .npy files hold one matrix)."""
    if len(signature.inputs) != 1:
        names = ", ".join(spec.describe() for spec in signature.inputs)
        raise InvalidInputError(f"{path} holds one matrix, but the model takes several inputs ({names}); use .npz")
    spec = signature.inputs[0]
    dtype = np.dtype(spec.dtype) if spec.dtype is not None and not spec.is_string else np.dtype(np.float32)
    return spec.name, dtype, None if spec.shape is None else len(spec.shape)


def _shape_for(matrix: np.ndarray, rank: int | None) -> np.ndarray:
    return matrix.reshape(len(matrix)) if rank == 1 and matrix.ndim == 2 and matrix.shape[1] == 1 else matrix


# -- reading -------------------------------------------------------------------------------------------------


def read_inputs(
    path: Path, signature: Signature, chunk_rows: int, *, count_rows: bool = True
) -> tuple[Any, int | None]:
    """Open ``path`` as the input of ``predict_many``; returns the input and its row count (if known; a
    CSV file's rows are counted in an extra pass only with ``count_rows``).

    Raises:
        InvalidInputError: the file cannot be read or does not fit the model's inputs.
    """
    suffix = _format(path, "input")
    if not path.is_file():
        raise InvalidInputError(f"input {path} does not exist")
    try:
        if suffix == ".npy":
            _single_input(signature, path)
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # read chunk by chunk as they are scored
            return array, (len(array) if array.ndim else None)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            return arrays, (len(next(iter(arrays.values()))) if arrays else None)
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"input {path} cannot be read: {exc}") from exc
    if suffix == ".csv":
        return _csv_batches(path, signature, chunk_rows), (_count_csv_rows(path) if count_rows else None)
    return _parquet_batches(path, signature, chunk_rows)


def _is_header(line: str) -> bool:
    try:
        [float(field) for field in line.split(",") if field.strip()]
    except ValueError:
        return True
    return False


def _count_csv_rows(path: Path) -> int:
    """Data lines (non-blank, header excluded), counted in one fast pass for the progress bar."""
    rows = 0
    with path.open("rb") as file:
        first = file.readline()
        header = _is_header(first.decode("utf-8", errors="replace"))
        rows += 0 if header or not first.strip() else 1
        for line in file:
            if line.strip():
                rows += 1
    return rows


def _csv_batches(path: Path, signature: Signature, chunk_rows: int) -> Iterator[np.ndarray]:
    name, dtype, rank = _single_input(signature, path)
    with path.open(encoding="utf-8", newline="") as file:
        first = file.readline()
        lines: Iterator[str] = file if _is_header(first) else itertools.chain([first], file)
        line_number = 1 if _is_header(first) else 0
        while True:
            block = [line for line in itertools.islice(lines, chunk_rows) if line.strip()]
            if not block:
                return
            try:
                matrix = np.loadtxt(block, delimiter=",", dtype=dtype, ndmin=2)
            except ValueError as exc:
                raise InvalidInputError(
                    f"input {path}, data lines {line_number + 1}..{line_number + len(block)}: {exc} "
                    f"(every column must be a number for input {name!r})"
                ) from exc
            line_number += len(block)
            yield _shape_for(matrix, rank)


def _parquet_batches(path: Path, signature: Signature, chunk_rows: int) -> tuple[Iterator[np.ndarray], int]:
    name, dtype, rank = _single_input(signature, path)
    _, pq = _pyarrow()
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise InvalidInputError(f"input {path} cannot be read as Parquet: {exc}") from exc

    def batches() -> Iterator[np.ndarray]:
        for batch in table.iter_batches(batch_size=chunk_rows):
            try:
                columns = [column.to_numpy(zero_copy_only=False) for column in batch.columns]
                matrix = np.column_stack(columns).astype(dtype, casting="same_kind")
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(
                    f"input {path}: columns cannot form the matrix of input {name!r}: {exc}"
                ) from exc
            yield _shape_for(matrix, rank)

    return batches(), int(table.metadata.num_rows)


# -- writing -------------------------------------------------------------------------------------------------


def _columns(answer: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Each output flattened to ``(rows, k)`` and named ``<output>_0 .. <output>_<k-1>``."""
    columns: list[tuple[str, np.ndarray]] = []
    for output, values in answer.items():
        matrix = np.asarray(values)
        matrix = matrix.reshape(len(matrix), -1) if matrix.ndim else matrix.reshape(1, 1)
        columns.extend((f"{output}_{index}", matrix[:, index]) for index in range(matrix.shape[1]))
    return columns


def _fmt(values: np.ndarray) -> str:
    kind = values.dtype.kind
    return "%.9g" if kind == "f" else "%d" if kind in "iub" else "%s"


class _Writer:
    """Writes answers in order into a temporary file; ``commit`` moves it over the output."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.format = _format(path, "output")
        if not path.parent.is_dir():
            raise InvalidInputError(f"output folder {path.parent} does not exist")
        # Created on first write with the process's usual permissions; unique per process and writer.
        self._temp = path.parent / f".{path.name}.{os.getpid()}.{id(self):x}.partial"
        self._parts: dict[str, list[np.ndarray]] = {}
        self._text: TextIO | None = None
        self._parquet: Any = None
        self._fmts: list[str] = []

    def write(self, answer: Prediction) -> None:
        if self.format in (".npy", ".npz"):
            for output, values in answer.items():
                self._parts.setdefault(output, []).append(np.asarray(values))
            if self.format == ".npy" and len(self._parts) != 1:
                raise InvalidInputError(f"the model has {len(self._parts)} outputs; write them to a .npz file")
            return
        columns = _columns(answer)
        if self.format == ".csv":
            if self._text is None:
                self._text = self._temp.open("w", encoding="utf-8", newline="")
                self._text.write(",".join(name for name, _ in columns) + "\n")
                self._fmts = [_fmt(values) for _, values in columns]
            np.savetxt(self._text, np.column_stack([values for _, values in columns]), delimiter=",", fmt=self._fmts)
            return
        pa, pq = _pyarrow()
        table = pa.table(dict(columns))
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._temp, table.schema)
        self._parquet.write_table(table)

    def commit(self) -> None:
        if self.format in (".npy", ".npz"):
            arrays = {name: np.concatenate(parts) for name, parts in self._parts.items()}
            with self._temp.open("wb") as file:
                self._save(file, arrays)
        elif self.format == ".csv" and self._text is None:
            self._temp.write_text("")  # no rows: an empty file
        self._close_streams()
        os.replace(self._temp, self.path)

    def _save(self, file: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
        if self.format == ".npz":
            np.savez(file, **arrays)  # type: ignore[arg-type]  # numpy stubs do not type **arrays
        elif arrays:
            np.save(file, next(iter(arrays.values())), allow_pickle=False)

    def _close_streams(self) -> None:
        if self._text is not None:
            self._text.close()
            self._text = None
        if self._parquet is not None:
            self._parquet.close()
            self._parquet = None

    def discard(self) -> None:
        self._close_streams()
        with contextlib.suppress(FileNotFoundError):
            self._temp.unlink()


# -- the command ---------------------------------------------------------------------------------------------


def _open_model(server: Server, model: Path, name: str | None) -> str:
    """Load ``model`` (a .onnx file, a folder holding model.onnx, or a repository) into ``server``."""
    file = model / MODEL_FILENAME if model.is_dir() else model
    if file.is_file():
        server.load(_MODEL_NAME, path=file)
        return _MODEL_NAME
    if not model.is_dir():
        raise ModelNotFoundError(f"model {model} does not exist (give a .onnx file, a version folder or a repository)")
    served = server.models
    if name is None:
        if len(served) != 1:
            raise ModelNotFoundError(
                f"the repository {model} serves {sorted(served) or 'no models'}; pick one with --name"
            )
        name = next(iter(served))
    if name not in served:
        raise server._not_found(name, None)  # names the servable models, and why this one failed to load
    return name


def score_file(
    model: str | Path,
    inputs: str | Path,
    output: str | Path,
    *,
    name: str | None = None,
    version: int | None = None,
    batch_rows: int | None = None,
    progress: bool = True,
) -> int:
    """Score every row of ``inputs`` with ``model`` and write the answers to ``output``; returns the rows.

    Raises:
        InprocserveError: the model, the files or a row could not be scored (``output`` is left untouched).
    """
    model_path, input_path, output_path = Path(model), Path(inputs), Path(output)
    _format(input_path, "input")
    _format(output_path, "output")
    is_repository = model_path.is_dir() and not (model_path / MODEL_FILENAME).is_file()
    with Server(model_path if is_repository else None) as server:  # a broken sibling model does not matter
        served = _open_model(server, model_path, name)
        signature, limit = _loaded(server, served, version, batch_rows)
        isatty = getattr(sys.stderr, "isatty", None)
        bar = ProgressBar(sys.stderr) if progress and isatty is not None and isatty() else None
        source, total = read_inputs(input_path, signature, limit, count_rows=bar is not None)

        def report(done_rows: int, _total_rows: int | None) -> None:
            assert bar is not None
            bar(done_rows, total)  # the file's own row count: CSV and Parquet are read as streams of batches

        writer = _Writer(output_path)
        rows = 0
        try:
            for answer in server.predict_many(
                served, source, version=version, batch_rows=batch_rows, progress=report if bar else None
            ):
                writer.write(answer)
                rows += len(next(iter(answer.values()))) if len(answer) else 0
            writer.commit()
        except BaseException:
            writer.discard()
            raise
        finally:
            if bar is not None:
                bar.close()
    return rows


def _loaded(server: Server, model: str, version: int | None, batch_rows: int | None) -> tuple[Signature, int]:
    """The signature of the version that will answer, and the rows to read from a streamed file at a time:
    one request of ``predict_many``'s plan (the command is part of the library, so it may look at the
    loaded version).

    Raises:
        ValueError: ``batch_rows`` is not a positive int, or more than one request may carry.
    """
    routes = server._routes[model]
    target = routes.default if version is None else routes.versions.get(version)
    if target is None:
        raise server._not_found(model, version)
    assert target.signature is not None
    plan = plan_for_version(target, batch_rows=batch_rows, max_in_flight=None, timeout_s=None)
    rows = plan.request_rows or plan.chunk_rows or target.config.batching.max_batch_size
    return target.signature, rows


def run_score(args: argparse.Namespace) -> int:
    """The ``score`` subcommand: 0 when every row was scored and written, 1 otherwise (with a message)."""
    started = time.perf_counter()
    try:
        rows = score_file(
            args.model,
            args.input,
            args.output,
            name=args.name,
            version=args.version,
            batch_rows=args.batch_rows,
            progress=not args.quiet,
        )
    except (InprocserveError, ValueError, OSError) as exc:
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
        print(f"error: {exc}{notes}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    if not args.quiet:
        print(
            f"scored {rows:,} rows in {seconds:.2f}s ({rows / seconds:,.0f} rows/s) -> {args.output}", file=sys.stderr
        )
    return 0
