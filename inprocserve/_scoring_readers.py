"""Reading the ``score`` command's input files as ``predict_many`` inputs: ``.npy`` (memory-mapped), ``.npz``
(one array per input, read chunk by chunk: :mod:`._scoring_npz`), CSV and Parquet (streamed in batches
of one request, every row a row: a header detected, missing values and text refused by line or row)."""

from __future__ import annotations

import csv
import functools
import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from ._array_file import not_numpy_file
from ._backend import raised_by_signal_handler
from ._errors import InvalidInputError
from ._scoring_columns import (
    ColumnPlan,
    first_integer_outside,
    needs_named_columns,
    pandas_index_columns,
    plan_columns,
    to_float,
)
from ._scoring_formats import file_format, pyarrow_modules
from ._scoring_npz import DAMAGED_FILE, check_empty_rows, npz_inputs, numpy_reason, read_header
from ._signature import Signature

__all__ = ["read_inputs"]

_HEADER_PROBE = 1 << 16  # characters of a first line read to tell a header from data
_HEADER_LIMIT = 8 << 20  # characters of a header line (columns named in it), or of a first line of unknown columns


def _single_input(signature: Signature, path: Path) -> tuple[str, np.dtype[Any], int | None]:
    """Name, dtype and rank of the only input of the model (a .npy file, or a CSV or Parquet file read as one
    matrix, holds one)."""
    if len(signature.inputs) != 1:
        names = ", ".join(spec.describe() for spec in signature.inputs)
        raise InvalidInputError(
            f"{path} holds one matrix, but the model takes several inputs ({names}); use .npz (one array per "
            "input), or a CSV or Parquet file with a column named after each input"
        )
    spec = signature.inputs[0]
    dtype = np.dtype(spec.dtype) if spec.dtype is not None and not spec.is_string else np.dtype(np.float32)
    return spec.name, dtype, None if spec.shape is None else len(spec.shape)


def _shape_for(matrix: np.ndarray, rank: int | None) -> np.ndarray:
    return matrix.reshape(len(matrix)) if rank == 1 and matrix.ndim == 2 and matrix.shape[1] == 1 else matrix


def read_inputs(
    path: Path, signature: Signature, chunk_rows: int, *, count_rows: bool = True
) -> tuple[Any, int | None]:
    """Open ``path`` as the input of ``predict_many``; returns the input and its row count (if known; a
    CSV file's rows are counted in an extra pass only with ``count_rows``).

    Raises:
        InvalidInputError: the file cannot be read or does not fit the model's inputs.
    """
    suffix = file_format(path, "input")
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
            _check_npy(path)
            array = np.load(path, mmap_mode="r", allow_pickle=False)  # read chunk by chunk as they are scored
            return array, (len(array) if array.ndim else None)
        if suffix == ".npz":
            return npz_inputs(path, signature, chunk_rows)  # (read chunk by chunk, as a .npy is)
    except InvalidInputError:
        raise  # already says what is wrong with the file
    except (OSError, ValueError, *DAMAGED_FILE) as exc:
        raise InvalidInputError(f"input {path} cannot be read: {numpy_reason(exc)}") from exc
    if suffix == ".csv":
        try:
            plan = _csv_plan(path, signature)  # (before the first row: a header that does not fit names it)
        except UnicodeDecodeError as exc:
            raise _not_utf8(path) or InvalidInputError(f"input {path} is not UTF-8 text: {exc}") from exc
        total = _count_csv_rows(path) if count_rows else None
        return _csv_batches(path, signature, plan, chunk_rows), total
    return _parquet_batches(path, signature, chunk_rows)


def _check_npy(path: Path) -> None:
    """A .npy input's header against its file, before it is memory-mapped: numpy's own refusals said "Array
    can't be memory-mapped: Python objects in dtype." (an object array: what to do?) and "mmap length is greater
    than file size" (a truncated file, or a header claiming more rows than it holds), and a shape with a
    negative axis, or of 10**12 rows of no bytes, was taken.

    Raises:
        InvalidInputError: an object array, a negative axis, more data claimed than the file holds, or more rows
            of no bytes than the file has bytes.
        ValueError: numpy cannot read the header (said by the caller, naming the file).
    """
    with path.open("rb") as file:
        shape, _, dtype = read_header(file)
        data_bytes = path.stat().st_size - file.tell()
    if dtype.hasobject:
        raise InvalidInputError(
            f"input {path} holds Python objects (an object array), never unpickled; save it as text or numbers "
            "(array.astype(str), array.astype(np.float32))"
        )
    if any(axis < 0 for axis in shape):
        raise InvalidInputError(
            f"input {path}: its header claims shape {tuple(shape)}, with a negative axis: the file is corrupt; "
            "write it again with np.save"
        )
    claimed = math.prod(shape) * dtype.itemsize
    if claimed > data_bytes:
        raise InvalidInputError(
            f"input {path}: its header claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but the file "
            f"holds {max(data_bytes, 0):,} bytes of data; the file is truncated or corrupt: write it again with "
            "np.save"
        )
    if shape:
        check_empty_rows(path, shape[0], math.prod(shape[1:]) * dtype.itemsize, what="its array's rows")


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
    return any(field and field not in _MISSING_MARKERS and _is_name(field) for field in fields)


def _is_name(field: str) -> bool:
    """Whether a field of a first line is a column's name: not a number, and not starting like one (a digit, a
    sign, a point) or with a character that is not printable. A first data line holding a malformed number
    (``1.2.5``, ``4O`` for ``40``, ``4kg``, a NUL byte) was taken for a header and dropped without a word, every
    answer then a row off, while the same line anywhere else is an error naming it. "#": a spreadsheet's error
    value (#N/A, #DIV/0!) is a marker, not a name, for the same reason."""
    first = field[0]
    return not (first.isdigit() or first in "+-.#" or not first.isprintable()) and not _is_number(field)


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
    """Data rows (non-blank, header excluded), counted for the progress bar: lines, in one fast pass, unless the
    file quotes a field, which may break a row over several lines (the total then exceeded the rows, and a
    finished run's bar stopped short of 100 %); such a file's rows are counted by the csv module."""
    rows = 0
    with path.open("rb") as file:
        # (a long line is read a probe at a time: this pass runs before any row is scored, and the reading
        # refuses such a line by its length)
        pieces = iter(functools.partial(file.readline, _HEADER_PROBE), b"")
        first = next(pieces, b"")
        # -sig: a byte order mark is no header
        ended = first.endswith(b"\n")
        cut = len(first) >= _HEADER_PROBE and not ended
        header = _is_header(_whole_fields(first.decode("utf-8-sig", errors="replace"), cut=cut))
        filled = bool(first.strip())  # whether the line read so far holds more than spaces
        for line in pieces:
            if ended:
                rows += filled
                filled = False
            filled = filled or bool(line.strip())
            ended = line.endswith(b"\n")
        rows += filled
        rows -= header
        # quotes after the first line, looked for a block at a time: a test on each line tripled this pass
        # (0.12 s to 0.42 s for a million unquoted rows); and a line ended by "\r" alone (Excel for Mac's "CSV
        # (Macintosh)"), which this pass does not end a line at: such a file's 8 rows were counted as 1, a
        # model taking 4 rows per run refused it ("1 rows are not a multiple of 4"), and the bar showed 8/1
        file.seek(len(first))
        quoted, lone_cr = False, _lone_cr(first)
        for block in iter(lambda: file.read(1 << 20), b""):
            quoted = quoted or b'"' in block
            lone_cr = lone_cr or _lone_cr(block)
    if not quoted and not lone_cr:
        return rows
    with path.open(encoding="utf-8-sig", errors="replace", newline="") as text:
        source = _Lines(text, path=path, limit=_HEADER_PROBE)
        reader = csv.reader(source)
        if header:
            next(reader, None)
        try:
            return sum(1 for row in reader if not _blank(row, source.last))
        except (csv.Error, InvalidInputError):  # (a broken quote, a long line: the reading names it; the bar keeps
            return rows  # the lines)


def _lone_cr(data: bytes) -> bool:
    """Whether ``data`` holds a "\\r" not followed by "\\n" (one at its end may be a "\\r\\n" cut: so taken)."""
    return b"\r" in data.replace(b"\r\n", b"")


def _whole_fields(line: str, *, cut: bool) -> str:
    """The fields of a first line read in part (``cut``: :data:`_HEADER_PROBE` characters of a longer one), less
    the field cut at its end: a number cut short may read as a name (``inf`` as ``in``, and its line as a
    header)."""
    return line[: max(line.rfind(","), 0)] if cut else line


class _Lines:
    """A CSV file's lines for ``csv.reader``, keeping the last one read: the line a one-line row came from.

    ``limit``: the most characters a line may hold (see :func:`_line_limit`); a longer one is refused as it is
    read, before it is held whole (:class:`InvalidInputError`, naming it)."""

    def __init__(self, file: TextIO, *, path: Path | None = None, limit: int | None = None) -> None:
        self._file = file
        self._path = path
        self.limit = limit
        self.count = 0  # lines read
        self.last = ""

    def __iter__(self) -> _Lines:
        return self

    def __next__(self) -> str:
        if self.limit is None:
            line = next(self._file)
        else:
            line = self._file.readline(self.limit + 1)
            if not line:
                raise StopIteration
            if len(line) > self.limit:
                raise _too_long(self._path, self.count + 1, self.limit)
        self.count += 1
        self.last = line
        return line


def _line_limit(columns: int, field: int) -> int:
    """The most characters a line of ``columns`` fields of ``field`` characters at most may hold. Read whole, a
    line of a 100 MB file with no line break took 3.7 GB to parse before it was refused, and a 1 GB one ended
    the process out of memory."""
    return columns * (field + 1) + 2  # (+1: the separator; +2: "\r\n")


# The characters of a number in a CSV file read as a matrix: a float written in full is 24, padded for a
# fixed-width export a few more.
_NUMBER_CHARS = 1024


def _too_long(path: Path | None, line: int, limit: int) -> InvalidInputError:
    return InvalidInputError(
        f"input {path}, line {line}: over {limit:,} characters, more than a line of the model's columns needs (a "
        "file whose line breaks were lost?); every line is one row"
    )


def _matrix_columns(signature: Signature) -> int | None:
    """The columns of a CSV line read as the matrix of the model's one input, if its shape fixes them."""
    shape = signature.inputs[0].shape
    if shape is not None and len(shape) == 1:
        return 1
    if shape is not None and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    return None


def _blank(row: list[str], line: str) -> bool:
    """Whether ``row``, read from ``line`` (its last line), is a blank line to skip: no field, or one field
    from a line of nothing but spaces. A quoted empty or blank text (``""``, ``" "``, as pandas and the csv
    module write an empty text in a file of one column) is a row: its field is empty but its line is not, and
    skipped, its row was left out of the answers, which then had fewer rows than the input without a word
    (or, in a column of numbers, were scored without the row where it was to be refused as a missing value)."""
    return not row or (len(row) == 1 and not line.strip())


def _csv_batches(path: Path, signature: Signature, plan: ColumnPlan | None, chunk_rows: int) -> Iterator[Any]:
    try:
        if plan is None:
            yield from _csv_matrices(path, signature, chunk_rows)
        else:
            yield from _csv_named(path, plan, chunk_rows)
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


def _csv_plan(path: Path, signature: Signature) -> ColumnPlan | None:
    """The inputs' columns named by the file's header (:mod:`._scoring_columns`), or ``None``: the file is
    read as the matrix of a one-input numeric model.

    Raises:
        InvalidInputError: the model needs named columns (several inputs, or text) and the file's first line
            does not name them.
    """
    with path.open(encoding="utf-8-sig", newline="") as file:
        # A model of several inputs or of text reads its columns by name: its first line is the header, even
        # when it looks like data (a row of text and numbers does): "no column for input 'age'" names it.
        # (a probe of its start: a line that long is no header's, and the reader refuses it by its length)
        probe = "" if needs_named_columns(signature) else file.readline(_HEADER_PROBE)
        cut = len(probe) >= _HEADER_PROBE and not probe.endswith(("\n", "\r"))
        if not needs_named_columns(signature) and not _is_header(_whole_fields(probe, cut=cut)):
            return None
        file.seek(0)
        reader = csv.reader(_Lines(file, path=path, limit=_HEADER_LIMIT), strict=True)
        try:
            header = next(reader, [])
        except csv.Error as exc:
            raise _bad_csv_syntax(path, 1, exc) from None
    return plan_columns(signature, header, str(path))


def _csv_named(path: Path, plan: ColumnPlan, chunk_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The file's rows in chunks, each input taken from its named columns; blank lines are skipped.

    Raises:
        InvalidInputError: a quote opened and never closed (the rest of the file would be one field, its rows
            never scored), text after a closing quote, or a field over the csv module's limit, naming the line.
    """
    with path.open(encoding="utf-8-sig", newline="") as file:
        source = _Lines(file, path=path)
        reader = csv.reader(source, strict=True)
        next(reader, None)  # the header (read by _csv_plan)
        source.limit = _line_limit(plan.width, csv.field_size_limit())  # (the csv module's limit on a field)
        while True:
            rows: list[list[str]] = []
            lines: list[int] = []  # the file's line number where each row starts (a quoted field may break lines)
            while len(rows) < chunk_rows:
                start = reader.line_num + 1
                try:
                    row = next(reader, None)
                except csv.Error as exc:
                    raise _bad_csv_syntax(path, start, exc) from None
                if row is None:
                    break
                if _blank(row, source.last):
                    continue
                rows.append(row)
                lines.append(start)
            if not rows:
                return
            yield plan.arrays(rows, lines, str(path))


def _bad_csv_syntax(path: Path, line: int, error: csv.Error) -> InvalidInputError:
    if "field limit" in str(error):
        problem = (
            f"a field of over {csv.field_size_limit()} characters (a quote opened and never closed makes the rest "
            "of the file one field; a text that long is read from a Parquet or .npz file)"
        )
    elif "end of data" in str(error):
        problem = "a quote opened here is never closed (the rest of the file would be one field, its rows unscored)"
    else:
        problem = f"{error} (fix the quoting of that line)"
    return InvalidInputError(f"input {path}, line {line}: {problem}")


def _csv_matrices(path: Path, signature: Signature, chunk_rows: int) -> Iterator[np.ndarray]:
    name, dtype, rank = _single_input(signature, path)
    # A narrower float is read as float64, then checked to fit: numpy's parse into float32 made 1e39 infinity
    # without a word (exit 0, "inf" answers), where the same value in a .npy file is refused.
    parsed = np.dtype(np.float64) if dtype.kind == "f" and dtype.itemsize < 8 else dtype
    # utf-8-sig: a byte order mark (Excel writes one) is dropped, not taken as part of a header.
    with path.open(encoding="utf-8-sig", newline="") as file:
        columns = _matrix_columns(signature)
        known = None if columns is None else _line_limit(columns, _NUMBER_CHARS)
        first = next(_Lines(file, path=path, limit=_HEADER_LIMIT if known is None else known), "")
        header = _is_header(first)
        named = _header_columns(first) if header else None  # checked against the first data line's columns
        # (else every line holds as many fields as the first; a blank first line says nothing of them)
        fields = _header_columns(first)
        limit = known or (_line_limit(fields, _NUMBER_CHARS) if fields else _HEADER_LIMIT)
        block_columns = None  # the first block's: numpy checks a block's lines against each other, not blocks
        # (read by the file's readline, with no step in Python per line: a _Lines here cost a third more time)
        rest = iter(functools.partial(file.readline, limit + 1), "")
        lines = rest if header else itertools.chain([first], rest)
        line_number = 1 if header else 0  # the file's line number of the last line read, blank lines included
        while True:
            block: list[str] = []
            numbers: list[int] = []  # the file's line number of each line in block
            for line in lines:  # skip blank lines, however many; only the end of the file ends the input
                line_number += 1
                if len(line) > limit:
                    raise _too_long(path, line_number, limit)
                if line.strip():
                    block.append(line)
                    numbers.append(line_number)
                    if len(block) == chunk_rows:
                        break
            if not block:
                return
            try:
                # comments=None: numpy's default would drop a line that starts with '#' and cut one at a '#'
                matrix = np.loadtxt(block, delimiter=",", dtype=parsed, ndmin=2, comments=None, quotechar=_QUOTE)
            except ValueError as exc:
                raise _bad_csv_line(path, name, dtype, block, numbers, exc) from exc  # (in the input's type)
            if parsed.kind == "f":
                beyond = _written_beyond_float64(matrix, block)
                if beyond is not None:  # (1e400 parsed as infinity already: taken for an "inf" written so)
                    row, column, text = beyond
                    where = f"input {path}, line {numbers[row]}, column {column + 1}"
                    raise _beyond_float(where, text, dtype, name)
            if parsed != dtype:
                cast, index = to_float(matrix, dtype)
                if index is not None:
                    row, column = divmod(index, matrix.shape[1])
                    where = f"input {path}, line {numbers[row]}, column {column + 1}"
                    raise _beyond_float(where, matrix[row, column], dtype, name)
                matrix = cast
            if named is not None:
                if matrix.shape[1] != named:
                    raise InvalidInputError(
                        f"input {path}: the header (line 1) names {named} columns, line {numbers[0]} holds "
                        f"{matrix.shape[1]}: the columns would not be the ones their names say (a column missing "
                        "or added on one side); fix the header or the rows"
                    )
                named = None
            if block_columns is not None and matrix.shape[1] != block_columns:
                # (a model whose feature axis is open took each block at its own width: a file of two exports
                # joined, the second with a column more, was scored with exit 0)
                raise InvalidInputError(
                    f"input {path}, line {numbers[0]}: {matrix.shape[1]} columns where the lines before have "
                    f"{block_columns} (every line must hold the same number of columns, each a number, for input "
                    f"{name!r})"
                )
            block_columns = matrix.shape[1]
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
            " (a first line is a header only when a field of it is a name, neither a number nor a missing-value "
            "marker, nor starting like a number: 4kg and 1.2.5 are bad numbers, not names)"
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


def _written_beyond_float64(matrix: np.ndarray, block: list[str]) -> tuple[int, int, str] | None:
    """The first field of ``block`` (CSV lines) that numpy read as infinity though it is not written as one
    (``inf``, ``-Infinity``): a number beyond even float64 (``1e400``), whose row and column in ``matrix``
    and text are returned; else ``None``. Each line holding an infinity is parsed again, only then."""
    infinite = np.isinf(matrix)
    if not infinite.any():
        return None
    parsed: dict[int, list[str]] = {}
    for row, column in zip(*np.nonzero(infinite), strict=True):
        row, column = int(row), int(column)
        fields = parsed.get(row)
        if fields is None:
            fields = parsed[row] = next(csv.reader([block[row]], quotechar=_QUOTE), [])
        text = fields[column].strip() if column < len(fields) else ""
        if text.lstrip("+-").lower() not in ("inf", "infinity"):
            return row, column, _shown_text(text)
    return None


def _shown_text(text: str) -> str:
    """A field's text in a message: cut short (a field can be a whole line long)."""
    return text if len(text) <= 40 else text[:40] + "..."


def _beyond_float(where: str, value: object, dtype: np.dtype[Any], name: str) -> InvalidInputError:
    """The error for a number too large for the input's float type, which numpy's cast makes infinity."""
    return InvalidInputError(
        f"{where}: {value} is beyond what {dtype} holds (about ±{np.finfo(dtype).max:.4g}), the type of input "
        f"{name!r}: it would be scored as infinity; scale or clip it"
    )


_PARQUET_BUFFER = 1 << 20  # bytes read at a time from a column's chunk (a page is read whole: 1 MiB by default)


def _parquet_batches(path: Path, signature: Signature, chunk_rows: int) -> tuple[Iterator[Any], int]:
    pa, pq = pyarrow_modules()
    try:
        # Buffered, not pre-buffered: pyarrow read each column's chunk of a row group whole before its first
        # batch, so memory followed the row group (one of the whole file, as many writers make), not the batch
        table = pq.ParquetFile(path, buffer_size=_PARQUET_BUFFER, pre_buffer=False)
    except Exception as exc:  # pyarrow raises its own error types
        words = " ".join(str(exc).split())  # (a damaged footer's thrift error ends in a line break: two lines)
        raise InvalidInputError(
            f"input {path} cannot be read as Parquet: {words}; the file is damaged or was not written whole"
        ) from exc
    plan = plan_columns(signature, table.schema_arrow.names, str(path))
    if plan is not None:
        return _parquet_named(path, table, plan, chunk_rows), int(table.metadata.num_rows)
    name, dtype, rank = _single_input(signature, path)
    # a frame's index that df.to_parquet() wrote as a column is no feature: pandas reads it back as the index
    index = pandas_index_columns(table.schema_arrow)
    features = [field.name for field in table.schema_arrow if field.name not in index]
    for field in table.schema_arrow:
        if field.name in index:
            continue
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
        for batch in _arrow_batches(path, table, chunk_rows, features if index else None):
            if not batch.num_rows:
                continue  # an empty row group: a request needs at least one row
            for column_name, column in zip(batch.schema.names, batch.columns, strict=True):
                if column.null_count:  # to_numpy() would make them NaN, scored as if they were values
                    row = first_row + column.is_null().to_numpy(zero_copy_only=False).argmax()
                    raise InvalidInputError(
                        f"input {path}: column {column_name!r} has a null (missing value) at row {row}; every "
                        f"value must be a number for input {name!r} (fill or drop missing values first)"
                    )
            beyond = None
            try:
                columns = [column.to_numpy(zero_copy_only=False) for column in batch.columns]
                stacked = np.column_stack(columns)
                if dtype.kind == "f" and stacked.dtype.kind in "iuf":  # (checked to fit: numpy's cast makes infinity)
                    matrix, beyond = to_float(stacked, dtype)
                else:
                    matrix = stacked.astype(dtype, casting="same_kind")
            except (TypeError, ValueError) as exc:
                raise InvalidInputError(
                    f"input {path}: columns cannot form the matrix of input {name!r}: {exc}"
                ) from exc
            outside = first_integer_outside(stacked.ravel(), dtype)  # (numpy's cast wraps it around)
            if outside is not None:
                column = outside % stacked.shape[1]
                _check_integer_range(stacked[:, column], dtype, path, batch.schema.names[column], first_row)
            if beyond is not None:
                row, column = divmod(beyond, stacked.shape[1])
                where = f"input {path}: column {batch.schema.names[column]!r}, row {first_row + row}"
                raise _beyond_float(where, stacked[row, column], dtype, name)
            first_row += batch.num_rows
            yield _shape_for(matrix, rank)

    return batches(), int(table.metadata.num_rows)


def _arrow_batches(path: Path, table: Any, chunk_rows: int, columns: list[str] | None) -> Iterator[Any]:
    """The record batches of ``table`` (a ``ParquetFile``), each pyarrow error in reading one (a damaged page,
    a codec it lacks) an error naming the file and the rows it was reading: pyarrow's words alone ("Couldn't
    deserialize thrift", "Unexpected end of stream") named neither.

    Raises:
        InvalidInputError: a batch cannot be read.
    """
    first_row = 1
    batches = table.iter_batches(batch_size=chunk_rows, columns=columns)
    while True:
        try:
            batch = next(batches, None)
        except Exception as exc:  # pyarrow raises its own error types (ArrowInvalid, ArrowNotImplementedError...)
            if raised_by_signal_handler(exc):  # (a task's time limit as it read: not the file's fault)
                raise
            words = " ".join(str(exc).split())  # (pyarrow's run over lines: the command's error is one)
            raise InvalidInputError(
                f"input {path} cannot be read as Parquet (reading its rows from row {first_row}): {words}; the file "
                "is damaged or was not written whole"
            ) from exc
        if batch is None:
            return
        first_row += batch.num_rows
        yield batch


def _parquet_named(path: Path, table: Any, plan: ColumnPlan, chunk_rows: int) -> Iterator[dict[str, np.ndarray]]:
    """The file's row groups in batches, each input taken from its named columns."""
    pa, _ = pyarrow_modules()
    fields = table.schema_arrow
    for spec in plan.inputs:  # checked before the first row is read, by name
        for position, label in zip(spec.positions, spec.labels, strict=True):
            kind = fields.field(position).type
            kind = kind.value_type if pa.types.is_dictionary(kind) else kind
            if spec.dtype == np.dtype(object):
                view = getattr(pa.types, "is_string_view", None)  # (pyarrow 16 and later)
                fits = pa.types.is_string(kind) or pa.types.is_large_string(kind) or bool(view and view(kind))
                wanted = "text"
            elif spec.dtype == np.dtype(np.bool_):  # (or 1 and 0, as a CSV file's and a frame's column may be)
                fits, wanted = pa.types.is_boolean(kind) or pa.types.is_integer(kind), "booleans, or 1 and 0"
            elif spec.dtype.kind in "iu":
                fits, wanted = pa.types.is_integer(kind) or pa.types.is_boolean(kind), "integers"
            else:
                fits = pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
                wanted = "numbers"
            if not fits:
                raise InvalidInputError(
                    f"input {path}: column {label!r} holds {kind} values; input {spec.name!r} takes "
                    f"{'text' if spec.dtype == np.dtype(object) else f'{spec.dtype} ({wanted})'}: convert the column"
                )
    first_row = 1
    for batch in _arrow_batches(path, table, chunk_rows, None):
        if not batch.num_rows:
            continue  # an empty row group: a request needs at least one row
        arrays: dict[str, np.ndarray] = {}
        for spec in plan.inputs:
            columns = []
            for position, label in zip(spec.positions, spec.labels, strict=True):
                column = batch.column(position)
                if column.null_count:  # to_numpy() would make them NaN or None, scored as if they were values
                    row = first_row + column.is_null().to_numpy(zero_copy_only=False).argmax()
                    raise InvalidInputError(
                        f"input {path}: column {label!r} has a null (missing value) at row {row}; input "
                        f"{spec.name!r} needs a value in every row (fill or drop missing values first)"
                    )
                if spec.dtype == np.dtype(object):
                    # (a dictionary-encoded column, pandas' category, decodes here 13 times faster than to_pylist)
                    columns.append(column.to_numpy(zero_copy_only=False).astype(object, copy=False))
                else:
                    values = column.to_numpy(zero_copy_only=False)
                    if spec.dtype.kind == "b" and values.dtype.kind in "iu":
                        values = _flags(values, path, label, first_row, spec.name)
                    _check_integer_range(values, spec.dtype, path, label, first_row)  # (its own message)
                    if spec.dtype.kind == "f" and values.dtype.kind in "iuf":
                        values = _checked_float(values, spec.dtype, path, label, first_row)
                    try:
                        columns.append(values.astype(spec.dtype, casting="same_kind"))
                    except (TypeError, ValueError) as exc:
                        raise InvalidInputError(
                            f"input {path}: column {label!r} cannot be read as {spec.dtype} for input "
                            f"{spec.name!r}: {exc}"
                        ) from exc
            if spec.rank == 1:
                arrays[spec.name] = columns[0]
            else:
                arrays[spec.name] = np.stack(columns, axis=1) if len(columns) > 1 else columns[0].reshape(-1, 1)
        first_row += batch.num_rows
        yield arrays


def _flags(values: np.ndarray, path: Path, label: str, first_row: int, name: str) -> np.ndarray:
    """An integer column of 1 and 0 read into a boolean input (numpy's cast would make any other integer True).

    Raises:
        InvalidInputError: another integer, naming column and row.
    """
    other = (values != 0) & (values != 1)
    if other.any():
        index = int(other.argmax())
        raise InvalidInputError(
            f"input {path}: column {label!r} holds {values[index]} at row {first_row + index}; input {name!r} "
            "takes booleans: true/false, or 1/0"
        )
    return np.asarray(values == 1)


def _checked_float(values: np.ndarray, dtype: np.dtype[Any], path: Path, label: str, first_row: int) -> np.ndarray:
    """A number column read into a narrower float input (float64 into float16), each value checked to fit.

    Raises:
        InvalidInputError: a value its type cannot hold (numpy's cast makes it infinity), naming column and row.
    """
    cast, index = to_float(values, dtype)
    if index is not None:
        raise InvalidInputError(
            f"input {path}: column {label!r} holds {values[index]} at row {first_row + index}, beyond what {dtype} "
            f"holds (±{np.finfo(dtype).max}): it would be scored as infinity"
        )
    return cast


def _check_integer_range(values: np.ndarray, dtype: np.dtype[Any], path: Path, label: str, first_row: int) -> None:
    """An integer column read into a narrower integer input must fit it (numpy's cast wraps around silently).

    Raises:
        InvalidInputError: a value does not fit, naming its column and row.
    """
    index = first_integer_outside(values, dtype)
    if index is not None:
        info = np.iinfo(dtype)
        raise InvalidInputError(
            f"input {path}: column {label!r} holds {values[index]} at row {first_row + index}, which {dtype} "
            f"does not hold ({info.min} to {info.max})"
        )
