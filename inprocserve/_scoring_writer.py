"""Writing the ``score`` command's answers: in order, into a temporary file beside OUTPUT that is fsynced and
renamed over it only when every row was scored (``.npy``/``.npz`` collected and saved at the end, never
pickled; CSV and Parquet written as the answers come)."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from ._errors import InvalidInputError
from ._scoring_formats import file_format, pyarrow_modules
from ._signature import Signature

__all__ = ["AnswerWriter"]


def _columns(answer: Mapping[str, Any]) -> list[tuple[str, np.ndarray]]:
    """Each output flattened to ``(rows, k)`` and named ``<output>_0 .. <output>_<k-1>``."""
    columns: list[tuple[str, np.ndarray]] = []
    for output, values in answer.items():
        matrix = np.asarray(values)
        # shape[1:] and not -1: a zero-row answer still has its k columns
        matrix = matrix.reshape(matrix.shape[0], math.prod(matrix.shape[1:])) if matrix.ndim else matrix.reshape(1, 1)
        columns.extend((f"{output}_{index}", matrix[:, index]) for index in range(matrix.shape[1]))
    return columns


def _fmt(values: np.ndarray) -> str:
    kind = values.dtype.kind
    if kind == "f":
        return "%.17g" if values.dtype.itemsize > 4 else "%.9g"  # enough digits to read back the same number
    return "%d" if kind in "iub" else "%s"


def _storable(output: str, values: np.ndarray) -> np.ndarray:
    """``values`` as an array .npy/.npz store without pickling: a string output (onnxruntime answers it as an
    array of Python ``str`` objects) as numpy text. np.savez pickled object arrays, so a string model's .npz
    could be read back only with ``allow_pickle=True`` (and not by this command), and np.save refused them
    after every row had been scored.

    Raises:
        InvalidInputError: the output holds other Python objects (a sequence of maps, as ZipMap answers).
    """
    if not values.dtype.hasobject:
        return values
    odd = next((value for value in values.flat if not isinstance(value, str)), None)
    if odd is not None:
        raise InvalidInputError(
            f"output {output!r} holds Python objects ({type(odd).__name__}), which a .npy or .npz file can hold "
            "only as a pickle; write the answers to a .csv or .parquet file"
        )
    return values.astype(np.str_)


class AnswerWriter:
    """Writes answers in order into a temporary file, created at once; ``commit`` moves it over the output.

    Raises:
        InvalidInputError: OUTPUT's folder does not exist or cannot be written.
    """

    def __init__(self, path: Path, signature: Signature) -> None:
        self.path = path
        self.format = file_format(path, "output")
        self.signature = signature
        if not path.parent.is_dir():
            raise InvalidInputError(f"output folder {path.parent} does not exist")
        # Created on first write with the process's usual permissions; unique per process and writer.
        self._temp = path.parent / f".{path.name}.{os.getpid()}.{id(self):x}.partial"
        try:
            # Now, before the first row: a .npy/.npz is written only at the end, so a folder that cannot be
            # written (permissions, a read-only mount) failed after every row had been scored, naming this
            # hidden file rather than OUTPUT.
            self._temp.touch(exist_ok=False)
        except OSError as exc:
            raise InvalidInputError(f"output {path} cannot be written in {path.parent}: {exc.strerror or exc}") from exc
        self._parts: dict[str, list[np.ndarray]] = {}
        self._text: TextIO | None = None
        self._csv: Any = None
        self._parquet: Any = None
        self._fmts: list[str] = []
        self._written = False

    def write(self, answer: Mapping[str, Any]) -> None:
        self._written = True
        if self.format in (".npy", ".npz"):
            for output, values in answer.items():
                self._parts.setdefault(output, []).append(_storable(output, np.asarray(values)))
            if self.format == ".npy" and len(self._parts) != 1:
                raise InvalidInputError(f"the model has {len(self._parts)} outputs; write them to a .npz file")
            return
        columns = _columns(answer)
        if self.format == ".csv":
            self._write_csv(columns)
            return
        pa, pq = pyarrow_modules()
        table = pa.table(dict(columns))
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._temp, table.schema)
        self._parquet.write_table(table)

    def _write_csv(self, columns: list[tuple[str, np.ndarray]]) -> None:
        if self._text is None:
            self._text = self._temp.open("w", encoding="utf-8", newline="")
            # Quoted only where needed: a string answer holding a comma, quote or line break stays one field.
            self._csv = csv.writer(self._text, lineterminator="\n")
            self._csv.writerow([name for name, _ in columns])
            self._fmts = [_fmt(values) for _, values in columns]
        if not any(fmt == "%s" for fmt in self._fmts):  # numbers only: numpy's writer, a row at a time
            if columns:
                matrix = np.column_stack([values for _, values in columns])
                np.savetxt(self._text, matrix, delimiter=",", fmt=self._fmts)
            return
        cells = [
            [fmt % value for value in values.tolist()] for fmt, (_, values) in zip(self._fmts, columns, strict=True)
        ]
        quote_all = csv.writer(self._text, lineterminator="\n", quoting=csv.QUOTE_ALL)
        for row in zip(*cells, strict=True):
            # Python 3.11's csv quotes a "\r" only when it is in the line terminator: quote such a row whole.
            (quote_all if any("\r" in cell for cell in row) else self._csv).writerow(row)

    def commit(self) -> None:
        if not self._written:  # an empty input: zero rows, with the outputs' dtypes and columns
            self.write(self.signature.empty_answer())
        if self.format in (".npy", ".npz"):
            arrays = {name: np.concatenate(parts) for name, parts in self._parts.items()}
            with self._temp.open("wb") as file:
                self._save(file, arrays)
        self._close_streams()
        _fsync(self._temp)  # the data is on disk before the name points at it (a crash leaves old or new)
        os.replace(self._temp, self.path)
        _fsync_folder(self.path.parent)  # and so is the rename itself

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


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable; where folders cannot be opened or synced (some file systems,
    Windows), the rename stands as the OS left it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
