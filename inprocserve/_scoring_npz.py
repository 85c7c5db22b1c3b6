"""Reading a ``.npz`` input of the ``score`` command chunk by chunk, as a ``.npy`` is (memory-mapped): each
member's .npy header (its shape and dtype) is read first and checked against the others and against the model;
then the members are read together, a chunk of rows at a time, from their zip streams.

Read whole, as ``np.load`` reads a member, a small compressed file that expands to more than memory (a member
of zeros declaring 40 GB, honest or a zip bomb's lie) allocated the whole array first and ended in a
``MemoryError`` traceback; read this way, memory follows the chunk, and a member whose data ends before its
header's rows (a truncated file, or a zip entry lying about its size) is an error naming it.
"""

from __future__ import annotations

import math
import tokenize
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from ._array_file import huge_header
from ._errors import InvalidInputError
from ._signature import Signature

__all__ = [
    "CHUNK_BYTES",
    "DAMAGED_FILE",
    "DIRECTORY_LIMIT",
    "ROW_LIMIT",
    "NpzBatches",
    "check_empty_rows",
    "npz_inputs",
    "numpy_reason",
    "read_header",
]

# What zipfile, zlib and numpy raise for a damaged .npy or .npz, beside OSError and ValueError: a header byte
# naming a zip version or compression it does not know (NotImplementedError), a member cut short (EOFError), a
# corrupt deflate stream (zlib.error), a .npy header cut inside its braces (numpy parses it with the tokenize
# module: TokenError). The score command let them out as a traceback instead of its one error line.
DAMAGED_FILE = (zipfile.BadZipFile, NotImplementedError, EOFError, zlib.error, tokenize.TokenError)

# The most bytes a member is read in at once where it cannot be read by rows: a single value, or a whole array
# saved in Fortran order (its rows are not contiguous). Past it, the member is refused by its header, before
# anything is allocated.
_WHOLE_LIMIT = 1 << 30

# The most bytes of one row of a member (a row is never cut): past it, the member is refused by its header. A
# row is read, copied for the request, and answered before the next: one of 1 GiB (a zip bomb's, 1 MiB
# compressed) held 5.3 GB.
ROW_LIMIT = 256 << 20

# The most bytes of rows read at once (every member's rows of a chunk together), and so held in each batch: a
# chunk is cut to fewer rows where its rows are wide (never below one row, or the rows a model takes per run).
# A chunk of the model's rows was read whatever their width: a zip bomb of 16 rows of 64 MiB of zeros (1 MiB
# compressed) held 4.2 GB, and rows of 1 GiB each would have held 16 GiB and more.
CHUNK_BYTES = 16 << 20

# The most bytes of an archive's central directory (its list of members, about 50 bytes and a name each):
# zipfile reads it whole and makes an object of each entry as it opens the file, before a member is read; a
# .npz holds one member per input. A 90 MB archive of a million empty entries held 600 MB as it was opened.
DIRECTORY_LIMIT = 1 << 20

# The most bytes read from a zip stream at a time into an array: zipfile's read(n) joins the pieces it inflates
# into one bytes object, which numpy then wraps, so a member read whole (Fortran order) peaked at twice its size.
_READ_PIECE = 8 << 20


def numpy_reason(error: BaseException) -> str:
    """numpy's words for a file it refuses, less its advice to load a header over its size limit with
    ``allow_pickle=True`` (see :func:`huge_header`)."""
    if isinstance(error, tokenize.TokenError):  # (its words alone, "('EOF in multi-line statement', (2, 0))")
        return f"its .npy header cannot be parsed ({error.args[0]}): the file is damaged; write it again"
    return huge_header(error) or str(error) or type(error).__name__


@dataclass(frozen=True, slots=True)
class _Member:
    """One array of the archive, as its .npy header describes it."""

    info: zipfile.ZipInfo
    name: str  # the array's name, as np.load gives it: the member's name less ".npy"
    shape: tuple[int, ...]
    dtype: np.dtype[Any]
    fortran: bool

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * self.dtype.itemsize

    def where(self, path: Path) -> str:
        return f"input {path}: member {self.info.filename!r}"


def read_header(file: IO[bytes]) -> tuple[tuple[int, ...], bool, np.dtype[Any]]:
    version = np.lib.format.read_magic(file)
    if version not in ((1, 0), (2, 0), (3, 0)):  # (read as 2.0, its length field read 4 bytes of the header)
        raise ValueError(f"its .npy format version {version} is none numpy writes ((1, 0), (2, 0), (3, 0))")
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(file)
    return np.lib.format.read_array_header_2_0(file)


def _members(path: Path, archive: zipfile.ZipFile, signature: Signature) -> list[_Member]:
    """The archive's arrays, each checked by its header, before any data is read.

    Raises:
        InvalidInputError: a member is not a .npy array, holds Python objects, is none of the model's inputs, is
            named twice, claims more bytes than its zip entry holds, or cannot be read by rows and is over
            :data:`_WHOLE_LIMIT` bytes.
    """
    members: dict[str, _Member] = {}
    for info in archive.infolist():
        if info.is_dir():
            continue
        where = f"input {path}: member {info.filename!r}"
        if info.flag_bits & 0x1:  # (zipfile raised RuntimeError "password required": a traceback)
            raise InvalidInputError(f"{where} is encrypted; save the arrays with np.savez, without a password")
        try:
            with archive.open(info) as file:
                shape, fortran, dtype = read_header(file)
                header_bytes = file.tell()
        except (ValueError, OSError, *DAMAGED_FILE) as exc:
            reason = numpy_reason(exc) if str(exc) else f"{type(exc).__name__} (damaged or cut short)"
            raise InvalidInputError(f"{where} is not a .npy array: {reason}") from exc
        if any(axis < 0 for axis in shape):  # (read as no rows at all: an empty answer, and exit 0)
            raise InvalidInputError(
                f"{where} claims shape {tuple(shape)}, with a negative axis: the file is corrupt; write it again "
                "with np.savez"
            )
        if dtype.hasobject:
            raise InvalidInputError(
                f"{where} holds Python objects (an object array), never unpickled; save it as text or numbers "
                "(array.astype(str), array.astype(np.float32))"
            )
        name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
        if name not in signature.input_names:
            # refused here, by its header: every member is read as rows are (a stream each), and predict_many
            # refused it only after the first chunk was read
            takes = ", ".join(spec.describe() for spec in signature.inputs)
            raise InvalidInputError(
                f"{where}: array {name!r} is none of the model's inputs ({takes}); save only those, one array each"
            )
        if name in members:  # (np.load kept the last one without a word)
            raise InvalidInputError(f"{where} is in the archive twice; save each array once, e.g. np.savez(path, x=x)")
        claimed = math.prod(shape) * dtype.itemsize
        if claimed > info.file_size - header_bytes:
            raise InvalidInputError(
                f"{where} claims shape {tuple(shape)} of {dtype} ({claimed:,} bytes) but holds "
                f"{max(info.file_size - header_bytes, 0):,} bytes of data; the file is truncated or corrupt: write "
                "it again with np.savez"
            )
        member = _Member(info, name, tuple(shape), dtype, fortran and len(shape) > 1)
        _check_row_shape(where, member, signature)
        whole = claimed if member.fortran or not shape else member.row_bytes
        limit = _WHOLE_LIMIT if member.fortran or not shape else ROW_LIMIT
        if whole > limit:
            what = "in Fortran order (its rows are not contiguous)" if member.fortran else "one row of"
            raise InvalidInputError(
                f"{where} claims shape {tuple(shape)} of {dtype}: {what} {whole:,} bytes, more than is read at "
                f"once ({limit:,}); "
                + (
                    "save it in C order (np.ascontiguousarray) to have it read by rows"
                    if member.fortran
                    else "the file is corrupt, or not a file of rows"
                )
            )
        members[name] = member
    return list(members.values())


def _check_row_shape(where: str, member: _Member, signature: Signature) -> None:
    """A member's rows must fit the fixed axes its input declares: a chunk is read before predict_many checks it,
    and a header declaring rows of a GB each (a damaged or hostile file: zeros compress a thousandfold) had a
    chunk of them read, many GB, before the model refused them. Only where the ranks agree: predict_many says
    what it makes of another rank.

    Raises:
        InvalidInputError: an axis after the rows differs from the one the input fixes.
    """
    spec = next(spec for spec in signature.inputs if spec.name == member.name)
    if spec.shape is None or len(spec.shape) != len(member.shape) or not member.shape:
        return
    declared = spec.shape[1:]
    if any(isinstance(want, int) and want != got for want, got in zip(declared, member.shape[1:], strict=True)):
        wanted = tuple(want if isinstance(want, int) else "?" for want in declared)
        raise InvalidInputError(
            f"{where} holds rows of shape {member.shape[1:]}, where input {member.name!r} takes rows of shape "
            f"{wanted} ({spec.describe()}): save the input's own array"
        )


def npz_inputs(path: Path, signature: Signature, chunk_rows: int) -> tuple[NpzBatches, int]:
    """The arrays of ``path`` as batches of up to ``chunk_rows`` rows, and fewer where they would hold over
    :data:`CHUNK_BYTES` (a single value, taken whole with every batch, for an input the model takes as one),
    and their rows.

    Raises:
        InvalidInputError: the archive or a member cannot be read, a single value for an input of rows, no
            arrays, or arrays of different rows (when the batches are read: a member cut short, naming it).
    """
    try:
        directory = _directory_bytes(path)
        if directory > DIRECTORY_LIMIT:
            raise InvalidInputError(
                f"input {path}: its zip directory is {directory:,} bytes (tens of thousands of members, where a "
                f".npz holds one per input), more than is read ({DIRECTORY_LIMIT:,}); save only the model's "
                "inputs, e.g. np.savez(path, x=x)"
            )
        archive = zipfile.ZipFile(path)
    except (OSError, *DAMAGED_FILE) as exc:
        raise InvalidInputError(f"input {path} cannot be read as .npz (a zip of .npy arrays): {exc}") from exc
    try:
        members = _members(path, archive, signature)
        # (a single value is taken for an input the model takes as one, rank 0: a scale beside rows, as
        # predict_many takes it)
        single = {spec.name for spec in signature.inputs if spec.shape is not None and len(spec.shape) == 0}
        scalars = [member.name for member in members if not member.shape and member.name not in single]
        if scalars:
            raise InvalidInputError(
                f"input {path}: array {scalars[0]!r} is a single value (0 dimensions); every array needs a "
                "first axis of rows: save it with shape (rows, ...), e.g. np.savez(path, x=x.reshape(1, -1))"
            )
        # checked here, naming the file: predict_many's words ("a batch is an empty mapping", "the inputs of
        # a batch must have the same number of rows") named neither it nor its arrays' origin
        if not members:
            raise InvalidInputError(f"input {path} holds no arrays; save one per input, e.g. np.savez(path, x=x)")
        rows = {member.name: member.shape[0] for member in members if member.shape}
        if len(set(rows.values())) > 1:
            listing = ", ".join(f"{name!r} has {count}" for name, count in rows.items())
            raise InvalidInputError(
                f"input {path}: its arrays must have the same number of rows (one per input row): {listing}"
            )
        total = next(iter(rows.values()), 1)  # (single values alone: one row, as predict_many reads them)
        row_bytes = sum(member.row_bytes for member in members if member.shape)
        check_empty_rows(path, total, row_bytes, what="its arrays' rows")
    except BaseException:
        archive.close()
        raise
    step = signature.fixed_rows or 1  # (a model taking N rows per run is sent multiples of N)
    read_rows = max(step, min(chunk_rows, CHUNK_BYTES // max(row_bytes, 1)) // step * step)
    return NpzBatches(
        _batches(path, archive, members, total, read_rows), row_bytes=row_bytes, batch_rows=read_rows
    ), total


def _directory_bytes(path: Path) -> int:
    """The size its end record gives the central directory of the zip file ``path`` (0 where the record is not
    found: zipfile then says the file is no zip), read before zipfile reads the directory itself."""
    with path.open("rb") as file:
        size = file.seek(0, 2)
        file.seek(max(0, size - (22 + 0xFFFF)))  # (the end record, 22 bytes, and a comment of up to 64 KiB)
        tail = file.read()
        end = tail.rfind(b"PK\x05\x06")
        if end < 0 or len(tail) - end < 22:
            return 0
        directory = int.from_bytes(tail[end + 12 : end + 16], "little")
        # zip64: a locator just before the end record, and a record of 64-bit sizes just before it. zipfile
        # takes that record's size wherever the locator is, whatever the end record says (not only where it
        # says 0xFFFFFFFF): an archive whose end record said 0 had its directory of any size read unchecked
        locator = size - len(tail) + end - 20
        if locator >= 56:
            file.seek(locator)
            found = file.read(20)
            if found[:4] == b"PK\x06\x07":
                file.seek(locator - 56)
                record = file.read(56)
                if record[:4] == b"PK\x06\x06":
                    directory = int.from_bytes(record[40:48], "little")
        return directory


def check_empty_rows(path: Path, rows: int, row_bytes: int, *, what: str) -> None:
    """Rows of no bytes (shape ``(N, 0)``) cost nothing to declare: a header of 10**12 of them, in a file of a
    few hundred bytes, was scored for hours (a model run per chunk of nothing). More such rows than the file
    has bytes are refused.

    Raises:
        InvalidInputError: more rows of no bytes than the file has bytes.
    """
    size = path.stat().st_size
    if row_bytes == 0 and rows > size:
        raise InvalidInputError(
            f"input {path}: {what} hold no values (0 bytes a row), and it declares {rows:,} of them in "
            f"{size:,} bytes: the file is corrupt, or not a file of rows; write it again"
        )


class NpzBatches:
    """The batches of a ``.npz`` input, with ``row_bytes``, the bytes of one row of every member together, and
    ``batch_rows``, the most rows of a batch (what the command bounds the rows in flight by)."""

    def __init__(self, batches: Iterator[dict[str, np.ndarray]], *, row_bytes: int, batch_rows: int) -> None:
        self._batches = batches
        self.row_bytes = row_bytes
        self.batch_rows = batch_rows  # (the most rows of a batch)

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self._batches


def _batches(
    path: Path, archive: zipfile.ZipFile, members: list[_Member], total: int, chunk_rows: int
) -> Iterator[dict[str, np.ndarray]]:
    with archive:
        streams: dict[str, IO[bytes]] = {}
        whole: dict[str, np.ndarray] = {}
        try:
            for member in members:
                stream = archive.open(member.info)
                streams[member.name] = stream
                read_header(stream)
                if member.fortran or not member.shape:  # (bounded by _WHOLE_LIMIT)
                    whole[member.name] = _read(path, member, stream, math.prod(member.shape), 0).reshape(
                        member.shape, order="F" if member.fortran else "C"
                    )
            if not any(member.shape for member in members):
                yield dict(whole)
                return
            for start in range(0, total, chunk_rows):
                stop = min(total, start + chunk_rows)
                batch: dict[str, np.ndarray] = {}
                for member in members:
                    if member.name in whole:
                        value = whole[member.name]
                        batch[member.name] = value if not member.shape else value[start:stop]
                        continue
                    items = (stop - start) * math.prod(member.shape[1:])
                    flat = _read(path, member, streams[member.name], items, start)
                    batch[member.name] = flat.reshape((stop - start, *member.shape[1:]))
                yield batch
        finally:
            for stream in streams.values():
                stream.close()


def _read(path: Path, member: _Member, stream: IO[bytes], items: int, first_row: int) -> np.ndarray:
    """``items`` values of ``member`` from its stream, at row ``first_row``.

    Raises:
        InvalidInputError: the member's data ends before them, or is damaged, naming the member.
    """
    wanted = items * member.dtype.itemsize
    if not wanted:  # (no rows, or a dtype of no bytes: np.frombuffer refuses an empty buffer)
        return np.empty(items, dtype=member.dtype)
    data = np.empty(wanted, dtype=np.uint8)
    got = 0
    try:
        while got < wanted:  # (a piece at a time, into the array: see _READ_PIECE)
            piece = stream.read(min(_READ_PIECE, wanted - got))
            if not piece:
                break
            data[got : got + len(piece)] = np.frombuffer(piece, dtype=np.uint8)
            got += len(piece)
    except (OSError, *DAMAGED_FILE) as exc:
        raise InvalidInputError(
            f"{member.where(path)} cannot be read past row {first_row:,}: {exc or type(exc).__name__}; the file "
            "is damaged: write it again with np.savez"
        ) from exc
    if got < wanted:
        held = first_row + got // max(member.row_bytes, 1)
        rows = member.shape[0] if member.shape else 1
        raise InvalidInputError(
            f"{member.where(path)} ends after {held:,} of the {rows:,} rows its header declares: the file is "
            "truncated or corrupt (its zip entry claims more than it holds): write it again with np.savez"
        )
    return data.view(member.dtype)
