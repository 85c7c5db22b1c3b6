"""Writing the ``score`` command's answers: in order, into a temporary file beside OUTPUT that is fsynced and
renamed over it only when every row was scored (``.npy``/``.npz`` spooled to unnamed temporary files as the
answers come, text included, and saved at the end, never pickled; CSV and Parquet written as the answers come)."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, BinaryIO, TextIO

import numpy as np

from ._errors import InvalidInputError
from ._scoring_formats import file_format, pyarrow_modules
from ._signature import Signature, TensorSpec

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


def _per_row(shape: tuple[int, ...]) -> str:
    """An answer's row, in words: ``4 values per row (shape (4,))``."""
    return f"{math.prod(shape)} values per row (shape {shape})"


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
        InvalidInputError: the output holds other Python objects (a ZipMap's maps are made a matrix before).
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


def _map_value_dtype(spec: TensorSpec) -> np.dtype[Any]:
    """The numpy dtype of a sequence of maps' values: ZipMap's ``seq(map(string,tensor(float)))`` holds float32
    (written as ``%.9g``, read back exactly); any other value type as float64."""
    return np.dtype(np.float32 if spec.onnx_type.endswith(",tensor(float)))") else np.float64)


def _map_matrix(output: str, maps: Any, keys: tuple[Any, ...], dtype: np.dtype[Any]) -> np.ndarray:
    """A ZipMap's maps, one per row, as a ``(rows, len(keys))`` matrix in the order of ``keys``.

    Raises:
        InvalidInputError: a map's keys are not ``keys`` (the first map's), so no column could hold its values.
    """
    matrix = np.empty((len(maps), len(keys)), dtype=dtype)
    for row, mapping in enumerate(maps):
        if not isinstance(mapping, Mapping) or tuple(mapping) != keys:
            found = tuple(mapping) if isinstance(mapping, Mapping) else type(mapping).__name__
            raise InvalidInputError(
                f"output {output!r} answered a map with keys {found!r}, unlike the first row's {keys!r}: "
                "the columns are the first map's keys"
            )
        matrix[row] = tuple(mapping.values())
    return matrix


class AnswerWriter:
    """Writes answers in order into a temporary file, created at once; ``commit`` moves it over the output.

    Raises:
        InvalidInputError: OUTPUT's folder does not exist or cannot be written.
    """

    def __init__(self, path: Path, signature: Signature) -> None:
        self.path = path
        self.format = file_format(path, "output")
        self.signature = signature
        # Written through a symbolic link (and a folder that is one): renamed over the link itself, the answers
        # replaced it with a plain file, and the file it pointed to kept its old answers.
        self._target = Path(os.path.realpath(path))
        if not self._target.parent.is_dir():
            raise InvalidInputError(f"output folder {self._target.parent} does not exist")
        # Beside the file it replaces (a rename within one file system), with the process's usual permissions;
        # unique per process and writer.
        self._temp = self._target.parent / f".{self._target.name}.{os.getpid()}.{id(self):x}.partial"
        self._parts: dict[str, _Spool] = {}  # each output's answers for a .npy/.npz file
        self._text: TextIO | None = None
        self._csv: Any = None
        self._parquet: Any = None
        self._fmts: list[str] = []
        self._written = False
        self._maps = {spec.name: spec for spec in signature.outputs if spec.is_maps_per_row}
        self._row_shapes: dict[str, tuple[int, ...]] = {}  # each output's shape of a row, from the first chunk
        self._rows = 0  # rows answered so far
        self._keys: dict[str, tuple[Any, ...]] = {}
        """Each ZipMap output's keys (the classes), from its first map: its columns, in that order."""
        try:
            # Now, before the first row: a .npy/.npz is written only at the end, so a folder that cannot be
            # written (permissions, a read-only mount) failed after every row had been scored, naming this
            # hidden file rather than OUTPUT. Last, so that nothing can interrupt this writer once it exists
            # but before its caller holds it to discard it.
            self._temp.touch(exist_ok=False)
            _keep_mode_of(self._target, self._temp, writing=True)
        except OSError as exc:
            folder = self._target.parent
            raise InvalidInputError(f"output {path} cannot be written in {folder}: {exc.strerror or exc}") from exc
        except BaseException:  # stopped (Ctrl-C, SIGTERM) as the file was made: it is nobody's to remove
            with contextlib.suppress(OSError):
                self._temp.unlink()
            raise

    def _tabular(self, answer: Mapping[str, Any]) -> dict[str, Any]:
        """``answer`` with each ZipMap output (a list of maps, one per row) made a ``(rows, classes)`` matrix."""
        if not self._maps:
            return dict(answer)
        tabular = dict(answer)
        for output, spec in self._maps.items():
            maps = answer.get(output)
            if maps is None:
                continue
            if output not in self._keys:
                if not maps:
                    continue  # no row yet: the first map gives the columns
                first = maps[0]
                self._keys[output] = tuple(first) if isinstance(first, Mapping) else ()
            tabular[output] = _map_matrix(output, maps, self._keys[output], _map_value_dtype(spec))
        return tabular

    def write(self, answer: Mapping[str, Any]) -> None:
        self._check_widths(answer)
        self._written = True
        if self.format in (".npy", ".npz"):
            for output, values in self._tabular(answer).items():
                if isinstance(values, list) and not values:
                    continue  # a ZipMap's maps for no rows, before any map named its columns
                if output not in self._parts:
                    self._parts[output] = _Spool(self._target.parent)
                self._parts[output].add(_storable(output, np.asarray(values)))
            if self.format == ".npy" and len(self._parts) != 1:
                raise InvalidInputError(f"the model has {len(self._parts)} outputs; write them to a .npz file")
            return
        tabular = self._tabular(answer)
        columns = _columns({k: v for k, v in tabular.items() if k not in self._maps})
        for output in self._maps:  # (after the tensors: the column order of every chunk is the first's)
            if output in self._keys:
                matrix = tabular[output]
                columns.extend((f"{output}_{key}", matrix[:, i]) for i, key in enumerate(self._keys[output]))
        if self.format == ".csv":
            self._write_csv(columns)
            return
        pa, pq = pyarrow_modules()
        table = pa.table(dict(columns))
        if self._parquet is None:
            self._parquet = pq.ParquetWriter(self._temp, table.schema)
        self._parquet.write_table(table)

    def _check_widths(self, answer: Mapping[str, Any]) -> None:
        """Each output's rows keep the shape of the first chunk's, checked as each chunk comes.

        Raises:
            InvalidInputError: an output's rows changed shape (a model with an open output axis sized by its
                request), naming the output, the chunk's input rows and both shapes. The answers were joined
                only at the end, after every row was scored (.npy/.npz), or failed on numpy's or pyarrow's
                words, naming neither the output nor the rows (CSV, Parquet).
        """
        rows = 0
        for output, values in answer.items():
            if output in self._maps or not isinstance(values, np.ndarray) or not values.ndim:
                continue  # (a ZipMap's maps: their keys are checked by _map_matrix)
            rows, tail = len(values), values.shape[1:]
            first = self._row_shapes.setdefault(output, tail)
            if tail != first:
                raise InvalidInputError(
                    f"output {output!r} answers {_per_row(tail)} for input rows {self._rows + 1}.."
                    f"{self._rows + rows}, where the rows before have {_per_row(first)}: the model sizes an open "
                    "axis of its answer by the request, so its answers cannot form one file (nothing was written); "
                    "score every row in one chunk (--batch-rows as many as the rows), or call server.predict_many "
                    "from Python"
                )
        self._rows += rows

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
        alone = len(columns) == 1
        for row in zip(*cells, strict=True):
            # Python 3.11's csv quotes a "\r" only when it is in the line terminator: quote such a row whole. So
            # is a lone column's answer of spaces alone, which would be a line that readers skip as blank.
            quoted = any("\r" in cell for cell in row) or (alone and not row[0].strip())
            (quote_all if quoted else self._csv).writerow(row)

    def commit(self) -> None:
        if not self._written:  # an empty input: zero rows, with the outputs' dtypes and columns
            self.write(self.signature.empty_answer())
        if self.format in (".npy", ".npz"):
            arrays: dict[str, _Spool | np.ndarray] = dict(self._parts)
            for output, keys in self._keys.items():  # the classes a ZipMap's columns stand for, in order
                arrays.setdefault(f"{output}_keys", np.array(keys))
            with self._temp.open("wb") as file:
                self._save(file, arrays)
        self._close_streams()
        _fsync(self._temp)  # the data is on disk before the name points at it (a crash leaves old or new)
        _keep_mode_of(self._target, self._temp)
        os.replace(self._temp, self._target)
        _fsync_folder(self._target.parent)  # and so is the rename itself

    def _save(self, file: BinaryIO, arrays: dict[str, _Spool | np.ndarray]) -> None:
        if self.format == ".npz":
            _savez(file, arrays)
        elif arrays:
            _write_array(file, next(iter(arrays.values())))

    def _close_streams(self) -> None:
        """Close every stream, each even if one before failed (a full disk fails a flush again); then raise
        the first failure."""
        failure: OSError | None = None
        closers: list[Any] = [self._text, self._parquet, *self._parts.values()]
        self._text = self._parquet = None
        for stream in closers:
            if stream is None:
                continue
            try:
                stream.close()
            except OSError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure

    def discard(self) -> None:
        """Remove the answers written so far, whatever closing their streams raises: the disk filled up as
        a spool was flushed, and its close, flushing again, failed before the hidden file was removed."""
        try:
            with contextlib.suppress(OSError):
                self._close_streams()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._temp.unlink()


def _keep_mode_of(target: Path, temp: Path, *, writing: bool = False) -> None:
    """Give ``temp``, about to replace ``target``, ``target``'s permissions if it exists: scores kept at 0600
    (readable by their owner only) were replaced by a file of the umask's mode (0644: readable by every user
    of the machine). A new OUTPUT gets the process's usual permissions. ``writing``: while the answers are
    written (from before the first row), the owner may also read and write it: given a read-only OUTPUT's
    0444 then, writing the answers was refused, where a rename replaces a read-only file."""
    try:
        mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        return
    os.chmod(temp, mode | stat.S_IRUSR | stat.S_IWUSR if writing else mode)


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


def _savez(file: BinaryIO, arrays: dict[str, _Spool | np.ndarray]) -> None:
    """``np.savez(file, **arrays)``, written as numpy writes it (one uncompressed ``<name>.npy`` each), but
    with the outputs' names never taken for its arguments: an output named ``file`` failed with a TypeError
    after every row was scored, and one named ``allow_pickle`` was left out of the file without a word."""
    with zipfile.ZipFile(file, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                _write_array(member, array)


def _write_array(file: IO[bytes], array: _Spool | np.ndarray) -> None:
    if isinstance(array, _Spool):
        array.save(file)
    else:
        np.lib.format.write_array(file, np.asanyarray(array), allow_pickle=False)


class _Spool:
    """One output's answers for a ``.npy``/``.npz`` file, chunk after chunk, in an unnamed temporary file beside
    OUTPUT (gone with the process, however it ends), written out after a .npy header at the end. Collected in
    memory and joined at the end, the answers of a large input (a .npy memory-mapped, a .npz read chunk by
    chunk) were held whole, twice over at the join: memory followed the file, not the chunk. Text (numpy's
    ``U`` or ``S``) is spooled at each chunk's own width ("7" then "123456"), noted per chunk, and widened to
    the widest chunk's as it is written out, a chunk at a time (it was held in memory, for that width)."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder
        self._file: IO[bytes] | None = None
        self._dtype: np.dtype[Any] | None = None
        self._row_shape: tuple[int, ...] = ()
        self._rows = 0
        self._held: list[np.ndarray] = []
        self._text_chunks: list[tuple[np.dtype[Any], int]] = []
        """Each text chunk's dtype (its width) and rows, in the order they are in the file."""

    def add(self, part: np.ndarray) -> None:
        if part.dtype.kind == "V" or not part.ndim or self._held:
            self._held.append(part)
            return
        if self._file is None:
            self._file = tempfile.TemporaryFile(dir=self._folder)
            self._dtype, self._row_shape = part.dtype, part.shape[1:]
        # (the rows' shape is checked chunk by chunk: AnswerWriter._check_widths)
        if part.dtype.kind in "US":
            self._dtype = np.result_type(self._dtype, part.dtype)  # the widest so far
            self._text_chunks.append((part.dtype, len(part)))
            self._file.write(np.ascontiguousarray(part).tobytes())
        else:
            self._file.write(np.ascontiguousarray(part, dtype=self._dtype).tobytes())
        self._rows += len(part)

    def save(self, file: IO[bytes]) -> None:
        """Write the answers as one .npy array."""
        if self._file is None or self._dtype is None:
            np.lib.format.write_array(file, np.concatenate(self._held), allow_pickle=False)
            return
        header = {
            "descr": np.lib.format.dtype_to_descr(self._dtype),
            "fortran_order": False,
            "shape": (self._rows, *self._row_shape),
        }
        try:
            np.lib.format.write_array_header_1_0(file, header)
        except ValueError:  # (a header over 64 KiB: a dtype of many fields)
            np.lib.format.write_array_header_2_0(file, header)
        self._file.seek(0)
        if not self._text_chunks:
            shutil.copyfileobj(self._file, file, 1 << 16)
            return
        values_per_row = math.prod(self._row_shape)
        for dtype, rows in self._text_chunks:
            count = rows * values_per_row
            chunk = np.frombuffer(self._file.read(dtype.itemsize * count), dtype=dtype, count=count)
            file.write(chunk.astype(self._dtype).tobytes())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
