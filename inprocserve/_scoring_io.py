"""``python -m inprocserve score MODEL INPUT OUTPUT``: read rows from a file, score them with
:meth:`Server.predict_many`, write the answers to a file.

Formats, by file extension: ``.npy`` (one array: the input of a one-input model), ``.npz`` (one array per
input name; answers: one array per output name), ``.csv`` (columns form the float matrix of a one-input model;
a header row is optional and detected; answers: columns ``<output>_<i>``) and ``.parquet`` (like CSV; needs
``pyarrow``). Inputs are read chunk by chunk where the format allows (``.npy`` memory-mapped, CSV and Parquet
streamed); answers are written to a temporary file that is fsynced and replaces OUTPUT (whose folder is then
fsynced) only when every row succeeded. An input with no rows gives an empty output of the same form (zero
rows, the outputs' dtypes/columns).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import itertools
import math
import os
import signal
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, TextIO

import numpy as np

from ._array_file import not_numpy_file
from ._cli_common import Terminated, interrupted_by, unwind_on_sigterm
from ._errors import ConfigurationError, InprocserveError, InvalidInputError, ModelNotFoundError
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


def _check_paths(inputs: Path, output: Path) -> None:
    """Both files' formats are known, and OUTPUT is not INPUT.

    Raises:
        InvalidInputError: an unknown extension, or OUTPUT naming the INPUT file (``score m rows.csv rows.csv``,
            a slip of tab completion, replaced the rows with their answers and exited 0).
    """
    _format(inputs, "input")
    _format(output, "output")
    with contextlib.suppress(OSError):  # (no OUTPUT yet: not the same file)
        if os.path.samefile(inputs, output):
            raise InvalidInputError(
                f"output {output} is the input file; write the answers to another file (the rows would be lost)"
            )


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
    if not path.is_file():  # (a folder or a pipe exists: "does not exist" sent the user looking for a typo)
        what = "does not exist" if not path.exists() else "is a folder" if path.is_dir() else "is not a regular file"
        raise InvalidInputError(f"input {path} {what}; give a file of rows")
    try:
        if suffix == ".npy":
            _single_input(signature, path)
            with path.open("rb") as file:
                reason = not_numpy_file(file.read(8))
            if reason is not None:
                raise InvalidInputError(f"input {path}: {reason}")
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # read chunk by chunk as they are scored
            return array, (len(array) if array.ndim else None)
        if suffix == ".npz":
            _check_npz_members(path)
            with np.load(path, allow_pickle=False) as data:
                arrays = {name: data[name] for name in data.files}
            scalars = [name for name, array in arrays.items() if array.ndim == 0]
            if scalars:
                raise InvalidInputError(
                    f"input {path}: array {scalars[0]!r} is a single value (0 dimensions); every array needs a "
                    "first axis of rows: save it with shape (rows, ...), e.g. np.savez(path, x=x.reshape(1, -1))"
                )
            # checked here, naming the file: predict_many's words ("a batch is an empty mapping", "the inputs of
            # a batch must have the same number of rows") named neither it nor its arrays' origin
            if not arrays:
                raise InvalidInputError(f"input {path} holds no arrays; save one per input, e.g. np.savez(path, x=x)")
            rows = {name: len(array) for name, array in arrays.items()}
            if len(set(rows.values())) > 1:
                listing = ", ".join(f"{name!r} has {count}" for name, count in rows.items())
                raise InvalidInputError(
                    f"input {path}: its arrays must have the same number of rows (one per input row): {listing}"
                )
            return arrays, next(iter(rows.values()))
    except InvalidInputError:
        raise  # already says what is wrong with the file
    except (OSError, ValueError) as exc:
        raise InvalidInputError(f"input {path} cannot be read: {exc}") from exc
    if suffix == ".csv":
        return _csv_batches(path, signature, chunk_rows), (_count_csv_rows(path) if count_rows else None)
    return _parquet_batches(path, signature, chunk_rows)


def _check_npz_members(path: Path) -> None:
    """Reads each member's .npy header (not its data) and refuses a member whose header claims more bytes than
    the member holds: ``np.load`` would otherwise allocate the claimed shape first (a corrupt or hostile file
    ends in a ``MemoryError``).

    Raises:
        InvalidInputError: a member is not a readable .npy array, or its shape does not fit its size.
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInputError(f"input {path} cannot be read as .npz (a zip of .npy arrays): {exc}") from exc
    with archive:
        for member in archive.infolist():
            if member.is_dir():
                continue
            try:
                with archive.open(member) as file:
                    version = np.lib.format.read_magic(file)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(file)
                    else:
                        shape, _, dtype = np.lib.format.read_array_header_2_0(file)
                    header_bytes = file.tell()
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise InvalidInputError(f"input {path}: member {member.filename!r} is not a .npy array: {exc}") from exc
            if dtype.hasobject:
                continue  # np.load refuses it with its own message (allow_pickle=False)
            claimed = math.prod(shape) * dtype.itemsize
            if claimed > member.file_size - header_bytes:
                raise InvalidInputError(
                    f"input {path}: member {member.filename!r} claims shape {tuple(shape)} of {dtype} "
                    f"({claimed:,} bytes) but holds {max(member.file_size - header_bytes, 0):,} bytes of data; "
                    "the file is truncated or corrupt: write it again with np.savez"
                )


# A field may be quoted, as CSV allows ("1.5"): Python's csv.QUOTE_ALL, pandas' to_csv(quoting=...) and
# database exports quote every field, and such a file failed on its first data line ('could not convert
# string '"1.5"' to float32'), though its header (whose quotes were stripped) was recognised.
_QUOTE = '"'

_MISSING_MARKERS = frozenset({"na", "n/a", "null", "none", "-", "?"})


def _is_header(line: str) -> bool:
    """Whether the first line names the columns: one of its fields is a name, neither a number nor a
    missing-value marker or spreadsheet error (``id,0,1,2`` and ``country,2019,2020`` are headers). A first
    line of numbers and markers only (``1,NA``, ``1,#N/A``) is data, and a bad line if numpy cannot read it:
    taking it for a header would drop a row without a word."""
    if line.lstrip().startswith("#"):  # not a comment (no line is one): data, and an error naming the line
        return False
    fields = [field.strip().strip('"').lower() for field in line.split(",")]
    # "#": a spreadsheet's error value (#N/A, #DIV/0!, #VALUE!) is a marker too, not a name: taken for one, a
    # first row holding Excel's #N/A was dropped without a word, while the same row on line 2 was an error
    return any(
        field and field not in _MISSING_MARKERS and not field.startswith("#") and not _is_number(field)
        for field in fields
    )


def _header_columns(line: str) -> int:
    """How many columns a header line names (as CSV reads it: a quoted name may hold a comma), not counting
    empty fields at its end (a spreadsheet's trailing separators). A header naming more or fewer columns than
    the rows hold was skipped without a word, though a column was missing or added on one side."""
    fields = next(csv.reader([line]), [])
    while fields and not fields[-1].strip():
        fields.pop()
    return len(fields)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


def _count_csv_rows(path: Path) -> int:
    """Data lines (non-blank, header excluded), counted in one fast pass for the progress bar."""
    rows = 0
    with path.open("rb") as file:
        first = file.readline()
        header = _is_header(first.decode("utf-8-sig", errors="replace"))  # -sig: a byte order mark is no header
        rows += 0 if header or not first.strip() else 1
        for line in file:
            if line.strip():
                rows += 1
    return rows


def _csv_batches(path: Path, signature: Signature, chunk_rows: int) -> Iterator[np.ndarray]:
    try:
        yield from _csv_matrices(path, signature, chunk_rows)
    except UnicodeDecodeError as exc:  # read ahead in blocks: its position says nothing of the line
        raise _not_utf8(path) or InvalidInputError(f"input {path} is not UTF-8 text: {exc}") from exc


def _not_utf8(path: Path) -> InvalidInputError | None:
    """The error for a CSV file that is not UTF-8 (Excel's "CSV" in a Western locale is cp1252, "Unicode
    text" UTF-16), naming the first line that is not, found line by line: only on this error path. Without
    it the command printed Python's ``'utf-8' codec can't decode byte 0xe9 in position 1``, naming neither
    the file nor the line."""
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return InvalidInputError(
                    f"input {path}, line {number}: not UTF-8 text (byte 0x{line[exc.start]:02x} at byte "
                    f"{exc.start + 1} of the line); save the file as UTF-8 (in Excel: CSV UTF-8)"
                )
    return None  # pragma: no cover - the file changed since it failed to decode


def _csv_matrices(path: Path, signature: Signature, chunk_rows: int) -> Iterator[np.ndarray]:
    name, dtype, rank = _single_input(signature, path)
    # utf-8-sig: a byte order mark (Excel writes one) is dropped, not taken as part of a header.
    with path.open(encoding="utf-8-sig", newline="") as file:
        first = file.readline()
        header = _is_header(first)
        named = _header_columns(first) if header else None  # checked against the first data line's columns
        lines: Iterator[str] = file if header else itertools.chain([first], file)
        line_number = 1 if header else 0  # the file's line number of the last line read, blank lines included
        while True:
            block: list[str] = []
            numbers: list[int] = []  # the file's line number of each line in block
            for line in lines:  # skip blank lines, however many; only the end of the file ends the input
                line_number += 1
                if line.strip():
                    block.append(line)
                    numbers.append(line_number)
                    if len(block) == chunk_rows:
                        break
            if not block:
                return
            try:
                # comments=None: numpy's default would drop a line that starts with '#' and cut one at a '#'
                matrix = np.loadtxt(block, delimiter=",", dtype=dtype, ndmin=2, comments=None, quotechar=_QUOTE)
            except ValueError as exc:
                raise _bad_csv_line(path, name, dtype, block, numbers, exc) from exc
            if named is not None:
                if matrix.shape[1] != named:
                    raise InvalidInputError(
                        f"input {path}: the header (line 1) names {named} columns, line {numbers[0]} holds "
                        f"{matrix.shape[1]}: the columns would not be the ones their names say (a column missing "
                        "or added on one side); fix the header or the rows"
                    )
                named = None
            yield _shape_for(matrix, rank)


def _bad_csv_line(
    path: Path, name: str, dtype: np.dtype[Any], block: list[str], numbers: list[int], error: ValueError
) -> InvalidInputError:
    """The error for a chunk of CSV lines numpy could not read, naming the first bad line of the file (found
    line by line: only on this error path) and what is wrong with it."""
    columns = None
    for line, number in zip(block, numbers, strict=True):
        try:
            row = np.loadtxt([line], delimiter=",", dtype=dtype, ndmin=2, comments=None, quotechar=_QUOTE)
        except ValueError as exc:
            problem = str(exc)
        else:
            if columns is None or row.shape[1] == columns:
                columns = row.shape[1]
                continue
            problem = f"{row.shape[1]} columns where the lines before have {columns}"
        hint = (
            " (a first line is a header only when a field of it is a name, neither a number nor a missing-value marker)"
            if number == 1
            else ""
        )
        return InvalidInputError(
            f"input {path}, line {number}: {problem} (every line must hold the same number of columns, each a "
            f"number, for input {name!r}){hint}"
        )
    return InvalidInputError(  # pragma: no cover - numpy refused the chunk but accepts each line of it
        f"input {path}, lines {numbers[0]}..{numbers[-1]}: {error} (every column must be a number for input {name!r})"
    )


def _parquet_batches(path: Path, signature: Signature, chunk_rows: int) -> tuple[Iterator[np.ndarray], int]:
    name, dtype, rank = _single_input(signature, path)
    _, pq = _pyarrow()
    try:
        table = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises its own error types
        raise InvalidInputError(f"input {path} cannot be read as Parquet: {exc}") from exc
    pa, _ = _pyarrow()
    for field in table.schema_arrow:
        kind = field.type.value_type if pa.types.is_dictionary(field.type) else field.type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)):
            # found here, by name: numpy's cast of the whole batch said only "Cannot cast array data from
            # dtype('O') to dtype('float32')", naming neither the column nor its type
            raise InvalidInputError(
                f"input {path}: column {field.name!r} holds {field.type} values, not numbers; every column must be "
                f"a number for input {name!r} (convert the column, or drop it)"
            )

    def batches() -> Iterator[np.ndarray]:
        first_row = 1
        for batch in table.iter_batches(batch_size=chunk_rows):
            if not batch.num_rows:
                continue  # an empty row group: a request needs at least one row
            for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
                if column.null_count:  # to_numpy() would make them NaN, scored as if they were values
                    row = first_row + column.is_null().to_numpy(zero_copy_only=False).argmax()
                    raise InvalidInputError(
                        f"input {path}: column {column_name!r} has a null (missing value) at row {row}; every "
                        f"value must be a number for input {name!r} (fill or drop missing values first)"
                    )
            first_row += batch.num_rows
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


class _Writer:
    """Writes answers in order into a temporary file, created at once; ``commit`` moves it over the output.

    Raises:
        InvalidInputError: OUTPUT's folder does not exist or cannot be written.
    """

    def __init__(self, path: Path, signature: Signature) -> None:
        self.path = path
        self.format = _format(path, "output")
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
        pa, pq = _pyarrow()
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


# -- the command ---------------------------------------------------------------------------------------------


def _open_model(server: Server, model: Path, name: str | None, version: int | None = None) -> str:
    """Load ``model`` (a .onnx file, a folder holding model.onnx, or a repository) into ``server``; from a
    repository, ``version`` is loaded whether or not the model's version policy serves it (a policy is about
    live traffic; an offline job may score any version on disk)."""
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
    if version is not None and version not in served.get(name, []):
        server.load(name, version=version)  # ModelNotFoundError if it is not on disk, ModelLoadError if broken
        return name
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
    _check_paths(input_path, output_path)
    is_repository = model_path.is_dir() and not (model_path / MODEL_FILENAME).is_file()
    with Server(model_path if is_repository else None) as server:  # a broken sibling model does not matter
        served = _open_model(server, model_path, name, version)
        signature, limit = _loaded(server, served, version, batch_rows)
        # an output with no first axis (a total), or a fixed one unlike the inputs' (which give the rows)
        firsts = {spec.shape[0] for spec in signature.inputs if spec.shape}
        unbatched = [
            spec.describe()
            for spec in signature.outputs
            if spec.shape is not None
            and (not spec.shape or (not spec.has_dynamic_batch and spec.shape[0] not in firsts))
        ]
        if unbatched:  # its answers have no row per input row to write
            raise InvalidInputError(
                f"model {served!r} answers {', '.join(unbatched)}, without a batch axis: the score command writes "
                "one output row per input row; call server.predict_many (or predict) from Python for such a model"
            )
        isatty = getattr(sys.stderr, "isatty", None)
        bar = ProgressBar(sys.stderr) if progress and isatty is not None and isatty() else None
        source, total = read_inputs(input_path, signature, limit, count_rows=bar is not None)

        def report(done_rows: int, _total_rows: int | None) -> None:
            assert bar is not None
            bar(done_rows, total)  # the file's own row count: CSV and Parquet are read as streams of batches

        writer = _Writer(output_path, signature)
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


def _stopped(interruption: BaseException, output: str) -> int:
    """Stopped from outside: the temporary file is gone and OUTPUT untouched; one line, not a traceback."""
    stop = signal.SIGINT if isinstance(interruption, KeyboardInterrupt) else signal.SIGTERM
    print(f"error: stopped by {stop.name} before every row was scored; {output} was not written", file=sys.stderr)
    return 128 + stop.value  # what a shell reports for a command ended by that signal


def run_score(args: argparse.Namespace) -> int:
    """The ``score`` subcommand: 0 when every row was scored and written; 1 when the model or a row could not
    be scored; 2 when it could not run (MODEL, INPUT or OUTPUT's folder missing, a file format it does not
    know, OUTPUT is INPUT); 130 or 143 when stopped by SIGINT (Ctrl-C) or SIGTERM (OUTPUT untouched, no
    temporary file left)."""
    started = time.perf_counter()
    for path, what in ((Path(args.model), "MODEL"), (Path(args.input), "INPUT")):
        if not path.exists():
            print(f"error: {what} {path} does not exist", file=sys.stderr)
            return 2
    if not Path(args.output).parent.is_dir():  # (found only once the model had loaded: exit 1, after minutes)
        print(f"error: OUTPUT's folder {Path(args.output).parent} does not exist; create it first", file=sys.stderr)
        return 2
    try:
        _check_paths(Path(args.input), Path(args.output))
    except InvalidInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with unwind_on_sigterm():
            rows = score_file(
                args.model,
                args.input,
                args.output,
                name=args.name,
                version=args.version,
                batch_rows=args.batch_rows,
                progress=not args.quiet,
            )
    except (KeyboardInterrupt, Terminated) as exc:
        return _stopped(exc, args.output)
    except Exception as exc:
        interruption = interrupted_by(exc)  # (the signal's exception made into another on its way out)
        if interruption is not None:
            return _stopped(interruption, args.output)
        if not isinstance(exc, InprocserveError | ValueError | OSError):
            raise
        notes = "".join(f" ({note})" for note in getattr(exc, "__notes__", ()))
        print(f"error: {exc}{notes}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    if not args.quiet:
        print(
            f"scored {rows:,} rows in {seconds:.2f}s ({rows / seconds:,.0f} rows/s) -> {args.output}", file=sys.stderr
        )
    return 0
