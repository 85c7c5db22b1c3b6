"""Checks of a model version's files before any onnxruntime session opens them.

onnxruntime resolves a tensor's external-data ``location`` itself, and versions before 1.24.1 follow it
anywhere: ``../../etc/passwd``, an absolute path, a symlink out of the folder. So the library checks every
external-data reference itself, whatever onnxruntime is installed: the location is relative, resolves
(links followed) inside the version folder, names an existing regular file, and ``offset``/``length`` lie
within it. The ModelProto is read with a small protobuf wire-format walker (below) instead of ``onnx``,
which the core does not depend on; only the fields on the paths to tensors are decoded, so raw weight bytes
are skipped, never copied.

Also here: the symlink policy (symlinked model or version folders and model files are refused unless the
server follows symlinks), the optional ``model.onnx.sha256`` checksum (of the model file and of the
external-data files it lists), and the resolution of files that a model's ``config.toml`` names (warm-up
inputs, drift reference) inside the model folder.
"""

from __future__ import annotations

import codecs
import contextlib
import errno
import hashlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Generic, NamedTuple, TypeVar

from ._brief import brief, brief_text
from ._errors import ModelLoadError
from ._racy import Sighting, changed_long_ago, sighting
from ._regular_file import NotARegularFileError, SymlinkRefusedError, open_regular_file, read_regular_file
from ._remote_model import REMOTE_FILENAME, read_remote_toml
from ._repository import LOAD_LINK_ADVICE

__all__ = [
    "CHECKSUM_SUFFIX",
    "ExternalData",
    "HashingStopped",
    "check_external_data",
    "check_version",
    "external_data",
    "external_data_locations",
    "file_sha256",
    "hashing_stops_on",
    "resolve_model_file",
]

CHECKSUM_SUFFIX = ".sha256"
"""``model.onnx.sha256`` next to ``model.onnx``: the expected digest, in ``sha256sum`` format."""

_MAX_DEPTH = 64  # nested subgraphs deeper than this are refused rather than recursed into

# ModelProto, GraphProto, ... field numbers (onnx/onnx.proto3) on the paths that lead to a TensorProto.
_MODEL_GRAPH, _MODEL_TRAINING_INFO, _MODEL_FUNCTIONS = 7, 20, 25
_TRAINING_GRAPHS = (1, 2)  # TrainingInfoProto.initialization, .algorithm
_GRAPH_NODE, _GRAPH_INITIALIZER, _GRAPH_SPARSE_INITIALIZER = 1, 5, 15
_FUNCTION_NODE, _FUNCTION_ATTRIBUTE_DEFAULTS = 7, 11
_NODE_ATTRIBUTE = 5
_ATTR_TENSOR, _ATTR_GRAPH, _ATTR_TENSORS, _ATTR_GRAPHS, _ATTR_SPARSE, _ATTR_SPARSES = 5, 6, 10, 11, 22, 23
_SPARSE_VALUES, _SPARSE_INDICES = 1, 2
_TENSOR_DIMS, _TENSOR_DATA_TYPE, _TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 1, 2, 8, 13, 14
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL
# Bits per element of TensorProto.DataType; strings (8) have no fixed size.
_BITS = {1: 32, 2: 8, 3: 8, 4: 16, 5: 16, 6: 32, 7: 64, 9: 8, 10: 16, 11: 64, 12: 32, 13: 64, 14: 64, 15: 128, 16: 16}
_BITS.update({17: 8, 18: 8, 19: 8, 20: 8, 21: 4, 22: 4, 23: 4})


_Fail = Callable[[str], ModelLoadError]  # builds the ModelLoadError of one version from a message


class _Malformed(Exception):
    """The bytes are not a well-formed protobuf message."""


class ExternalData:
    """One tensor's external-data reference, as written in the model."""

    __slots__ = ("entries", "expected_bytes", "tensor")

    def __init__(self, tensor: str, entries: dict[str, str], expected_bytes: int | None) -> None:
        self.tensor = tensor
        self.entries = entries
        self.expected_bytes = expected_bytes
        """Bytes the tensor's shape and type need (None for strings or unknown types)."""


def _varint(data: memoryview, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise _Malformed("truncated or overlong varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7


def _fields(data: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """(field number, wire type, value) of each field: a view for length-delimited fields, else an int."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise _Malformed("field number 0")
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, wire, value
        elif wire == 2:
            size, pos = _varint(data, pos)
            if pos + size > len(data):
                raise _Malformed("length-delimited field runs past the end")
            yield number, wire, data[pos : pos + size]
            pos += size
        elif wire in (1, 5):
            width = 8 if wire == 1 else 4
            if pos + width > len(data):
                raise _Malformed("fixed-width field runs past the end")
            yield number, wire, int.from_bytes(data[pos : pos + width], "little")
            pos += width
        elif wire == 3:  # a (deprecated) group: protobuf keeps it as an unknown field, so skip it the same way
            pos = _skip_group(data, pos, number)
        else:
            raise _Malformed(f"unexpected wire type {wire}")


def _skip_group(data: memoryview, pos: int, number: int) -> int:
    """Position after the end-group tag of group ``number`` that starts at ``pos`` (nested groups too)."""
    open_groups = [number]
    while open_groups:
        key, pos = _varint(data, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            _, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            pos += size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
        elif wire == 3:
            open_groups.append(field)
        elif wire == 4 and field == open_groups[-1]:
            open_groups.pop()
        else:
            raise _Malformed("unbalanced group")
        if pos > len(data) or len(open_groups) > _MAX_DEPTH:
            raise _Malformed("group runs past the end or nests too deep")
    return pos


# A field whose wire type does not match its declared type is an unknown field to protobuf, which keeps and
# ignores it; the walker ignores it too (decoding it as the declared type would see data onnxruntime never
# uses, refusing it would refuse models onnxruntime loads). Only the bytes' framing must be well formed.
_EMPTY = memoryview(b"")


def _text(value: int | memoryview) -> str:
    if not isinstance(value, memoryview):
        return ""
    return bytes(value).decode("utf-8", errors="surrogateescape")  # onnx.proto is proto2: no UTF-8 check


def _message(value: int | memoryview) -> memoryview:
    return value if isinstance(value, memoryview) else _EMPTY


def _tensor(data: memoryview, found: list[ExternalData]) -> None:
    name, data_type, location = "", 0, 0
    dims: list[int] = []
    entries: dict[str, str] = {}
    for number, wire, value in _fields(data):
        if number == _TENSOR_NAME:
            name = _text(value)
        elif number == _TENSOR_DATA_TYPE and isinstance(value, int):
            data_type = value
        elif number == _TENSOR_LOCATION and isinstance(value, int):
            location = value
        elif number == _TENSOR_DIMS:
            if isinstance(value, int):
                dims.append(value)
            elif wire == 2:  # packed
                pos = 0
                while pos < len(value):
                    dim, pos = _varint(value, pos)
                    dims.append(dim)
        elif number == _TENSOR_EXTERNAL:
            key = entry = ""
            for sub, _, item in _fields(_message(value)):
                if sub == 1:
                    key = _text(item)
                elif sub == 2:
                    entry = _text(item)
            entries[key] = entry
    if location == _EXTERNAL or entries:
        expected: int | None = None
        bits = _BITS.get(data_type)
        if bits is not None and all(d < 2**62 for d in dims):
            count = 1
            for dim in dims:
                count *= dim
            expected = (count * bits + 7) // 8
        found.append(ExternalData(name, entries, expected))


def _sparse(data: memoryview, found: list[ExternalData]) -> None:
    for number, _, value in _fields(data):
        if number in (_SPARSE_VALUES, _SPARSE_INDICES):
            _tensor(_message(value), found)


def _nodes(data: memoryview, node_field: int, found: list[ExternalData], depth: int) -> None:
    """Walk a GraphProto (or FunctionProto, by ``node_field``): initializers and node attributes."""
    if depth > _MAX_DEPTH:
        raise _Malformed(f"subgraphs nested deeper than {_MAX_DEPTH}")
    for number, _, value in _fields(data):
        if node_field == _GRAPH_NODE and number == _GRAPH_INITIALIZER:
            _tensor(_message(value), found)
        elif node_field == _GRAPH_NODE and number == _GRAPH_SPARSE_INITIALIZER:
            _sparse(_message(value), found)
        elif node_field == _FUNCTION_NODE and number == _FUNCTION_ATTRIBUTE_DEFAULTS:
            _attribute(_message(value), found, depth)
        elif number == node_field:
            for field, _, attribute in _fields(_message(value)):
                if field == _NODE_ATTRIBUTE:
                    _attribute(_message(attribute), found, depth)


def _attribute(data: memoryview, found: list[ExternalData], depth: int) -> None:
    for number, _, value in _fields(data):
        if number in (_ATTR_TENSOR, _ATTR_TENSORS):
            _tensor(_message(value), found)
        elif number in (_ATTR_SPARSE, _ATTR_SPARSES):
            _sparse(_message(value), found)
        elif number in (_ATTR_GRAPH, _ATTR_GRAPHS):
            _nodes(_message(value), _GRAPH_NODE, found, depth + 1)


def _references_in(model_file: Path, *, follow_symlinks: bool = True) -> list[ExternalData]:
    """:func:`external_data` of a model file (none for an empty one), read, not memory-mapped: a mapped file
    that another process truncates (a release copied over it in place, as the docs say not to) kills the
    process with SIGBUS at the first page read past its new end, and the scan runs on the library's own
    threads (a refresh, the poller), not only at a load. A file cut short reads as a short file, which the
    walk refuses as malformed. Reading costs what a load costs anyway: onnxruntime reads the whole file when
    it builds a session.

    Raises:
        OSError: the file cannot be read (:class:`SymlinkRefusedError`: it is a link, not to be followed).
        ValueError: it is not a well-formed ModelProto.
    """
    # (a pipe's open waited for a writer for good; not following a link, the file read is the one checked)
    with open_regular_file(model_file, follow_symlinks=follow_symlinks) as handle:
        data = handle.read()
    return external_data(data) if data else []


def external_data(model: bytes | memoryview) -> list[ExternalData]:
    """Every external-data reference in a serialized ModelProto: initializers, sparse initializers,
    tensor attributes, in the main graph, in subgraphs (If/Loop/Scan), functions and training graphs.

    Raises:
        ValueError: the bytes are not a well-formed ModelProto.
    """
    found: list[ExternalData] = []
    data = memoryview(model)
    try:
        _walk(data, found)
    except _Malformed as exc:
        raise ValueError(f"not a valid ONNX model ({exc})") from None
    finally:
        data.release()
    return found


def _walk(data: memoryview, found: list[ExternalData]) -> None:
    for number, _, value in _fields(data):
        if number == _MODEL_GRAPH:
            _nodes(_message(value), _GRAPH_NODE, found, 0)
        elif number == _MODEL_FUNCTIONS:
            _nodes(_message(value), _FUNCTION_NODE, found, 0)
        elif number == _MODEL_TRAINING_INFO:
            for field, _, graph in _fields(_message(value)):
                if field in _TRAINING_GRAPHS:
                    _nodes(_message(graph), _GRAPH_NODE, found, 0)


# -- checks -----------------------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]{1,20}")


def check_version(model_file: Path, *, model: str, version: int, follow_symlinks: bool = False) -> None:
    """Every check a version's files must pass before onnxruntime opens them. A ``remote.toml`` (a version
    served remotely) is checked for the symlink policy and read, and has no checksum or external data.

    Raises:
        ModelLoadError: a refused symlink; a checksum mismatch of the model file or of an external-data
            file the checksum file lists, or a file it lists missing from the folder; an external-data
            reference that is absolute, escapes the version folder, is missing, or lies outside its file; an
            invalid ``remote.toml`` (the message names the key).
    """

    def fail(message: str) -> ModelLoadError:
        return ModelLoadError(f"model {model!r} version {version}: {message}", model=model, version=version)

    if not follow_symlinks:  # the scan skips linked model folders; this also covers load(path=...)
        for path, what in ((model_file.parent, "version folder"), (model_file, "model file")):
            if path.is_symlink():
                raise fail(_link_refused(what, path))
    if model_file.name == REMOTE_FILENAME:
        try:
            read_remote_toml(model_file, ignored=[])  # (keys it does not know: the load warns of them)
        except ModelLoadError as exc:
            raise fail(str(exc)) from None
        return
    listed = _check_checksum(model_file, fail, follow_symlinks=follow_symlinks)
    checked = check_external_data(model_file, model=model, version=version, follow_symlinks=follow_symlinks)
    if listed is not None:  # (the locations just checked, inside the folder: the model file is not read again)
        _check_listed_external_data(model_file, checked, listed, fail, follow_symlinks=follow_symlinks)


def _link_refused(what: str, path: Path, *, through: bool = False) -> str:
    how = "is reached through a symbolic link (a folder on its path)" if through else "is a symbolic link"
    return f"the {what} {path} {how}, which is refused; copy the files in, or {LOAD_LINK_ADVICE}"


def check_external_data(
    model_file: Path, *, model: str, version: int, follow_symlinks: bool = False
) -> tuple[str, ...]:
    """Refuse a model whose external-data references leave its folder or lie outside their files.

    Returns:
        The locations checked, as the model file names them (one per reference).

    Raises:
        ModelLoadError: the file cannot be read, is not ONNX, or a reference is refused (says which and why).
    """

    def fail(message: str) -> ModelLoadError:
        return ModelLoadError(f"model {model!r} version {version}: {message}", model=model, version=version)

    if not model_file.is_file():
        if model_file.exists():  # (a pipe: read, it waited for a writer for good)
            raise fail(f"model file {model_file} is not a regular file (a folder, a pipe or a device)")
        if model_file.is_symlink():  # (a release folder deleted under a link to its model file)
            raise fail(f"model file {model_file} is a symbolic link to {_target(model_file)}, which does not exist")
        raise fail(f"model file {model_file} does not exist")
    try:
        # (an empty file refers to nothing; onnxruntime says why)
        references = _references_in(model_file, follow_symlinks=follow_symlinks)
    except SymlinkRefusedError:  # (swapped for a link since the caller's check)
        raise fail(_link_refused("model file", model_file)) from None
    except OSError as exc:
        raise fail(f"{model_file} cannot be read: {exc}") from exc
    except ValueError as exc:
        raise fail(f"cannot load {model_file}: it is {exc}") from None
    for reference in references:
        _check_reference(reference, model_file.parent, fail, follow_symlinks=follow_symlinks)
    return tuple(reference.entries.get("location", "") for reference in references)


def _target(link: Path) -> str:
    try:
        return brief_text(os.readlink(link))
    except OSError:  # (replaced since)
        return "a path"


def _check_reference(reference: ExternalData, folder: Path, fail: _Fail, *, follow_symlinks: bool) -> None:
    # The tensor's name and its entries are the model file's bytes (a download, a converter): quoted cut short,
    # a location of 100,000 characters made an error of twice that in status() and the log.
    what = f"tensor {brief(reference.tensor)} keeps its data outside the model"
    location = reference.entries.get("location", "")
    quoted = brief(location)
    if not location:
        raise fail(f"{what} but names no location")
    if "\x00" in location or os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location:
        raise fail(f"{what} at {quoted}: only paths relative to the version folder are allowed")
    if ".." in re.split(r"[/\\]", location):
        raise fail(f"{what} at {quoted}: '..' may not climb out of the version folder")
    root = folder.resolve()
    target = folder / location
    try:
        resolved = resolved_path(target)
    except OSError as exc:  # (a link loop)
        raise fail(f"{what} at {quoted}, which cannot be resolved: {exc.strerror or exc}") from None
    if not resolved.is_relative_to(root):
        raise fail(
            f"{what} at {quoted}, which resolves to {brief_text(str(resolved))}, outside the version folder {root}"
        )
    if not follow_symlinks and resolved != Path(os.path.normpath(root / location)):
        raise fail(
            f"{what} at {quoted} through a symbolic link, which is refused; copy the file in, or {LOAD_LINK_ADVICE}"
        )
    try:
        is_file = resolved.is_file()
    except OSError as exc:  # (a name too long for the file system: ENAMETOOLONG)
        raise fail(f"{what} at {quoted}, which cannot be read: {exc.strerror or exc}") from None
    if not is_file:
        raise fail(f"{what} at {quoted}, which is not a file in the version folder")
    try:  # onnxruntime says only "SystemError : 13" of a file it may not read (a umask that keeps the server out)
        with resolved.open("rb"):
            pass
    except OSError as exc:
        raise fail(f"{what} at {quoted}, which cannot be read: {exc.strerror or exc}") from None
    numbers: dict[str, int] = {}
    for key in ("offset", "length"):
        text = reference.entries.get(key)
        if text is None:
            continue
        if not _DIGITS.fullmatch(text):
            raise fail(f"{what} with {key} {brief(text)}, which is not a non-negative integer")
        numbers[key] = int(text)
    size = resolved.stat().st_size
    offset = numbers.get("offset", 0)
    length = numbers.get("length", reference.expected_bytes)
    if reference.expected_bytes is not None and length is not None and length < reference.expected_bytes:
        raise fail(f"{what}: length {length} is less than the {reference.expected_bytes} bytes its shape needs")
    end = offset + (length or 0)
    if offset > size or end > size:
        raise fail(f"{what}: bytes {offset} to {end} lie beyond the end of {quoted} ({size} bytes)")


_T = TypeVar("_T")


class _PerFile(Generic[_T]):
    """What was derived from each file, for the version of it that it was derived from. Thread-safe.

    One entry per path, replaced when the file changes, so the entries are the files in use (a refresh
    stamps every version at every poll), never their history; the bound only keeps the paths of files long
    gone from piling up. It is far above any repository's count of model files: a bound below that count
    evicts, in a poll that walks the files in a fixed order, each entry just before it is needed again.

    An entry answers once it is settled (:mod:`._racy`): a file rewritten with its old size within the
    timestamp tick of the read (a file system of whole-second times) keeps its stamp, and was trusted for
    the bytes read before. Until then each lookup derives it again; a file changed long ago is settled at once.
    """

    def __init__(self, max_entries: int) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[Sighting, _T]] = {}
        self._max_entries = max_entries
        self.derived = 0
        """How many values were derived (a file read) and put: a count for tests of the cache."""

    def get(self, path: str, stat: os.stat_result) -> tuple[_T | None, Sighting]:
        """The value kept for the file as ``stat`` describes it (None if none is, or it is not settled), and
        the sighting to :meth:`put` a value derived now with (call it before reading the file)."""
        stamp = (stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
        with self._lock:
            entry = self._entries.get(path)
        if entry is not None and entry[0].signature == stamp and entry[0].settled:
            return entry[1], entry[0]
        previous = None if entry is None else entry[0]
        return None, sighting(stamp, previous, now=time.monotonic(), old=changed_long_ago(stat))

    def put(self, path: str, sight: Sighting, value: _T) -> None:
        with self._lock:
            if path not in self._entries and len(self._entries) >= self._max_entries:
                self._entries.pop(next(iter(self._entries)))  # the oldest path
            self._entries[path] = (sight, value)
            self.derived += 1


# About 0.4 KB an entry: 16,384 model files (versions x files) cost 7 MB at most.
_MAX_CACHED_FILES = 16_384
_locations: _PerFile[tuple[str, ...]] = _PerFile(
    _MAX_CACHED_FILES
)  # model file -> the external-data locations it names


def external_data_locations(model_file: Path) -> tuple[str, ...]:
    """The distinct external-data locations a model names, as written (``weights.bin``, ``data/w.bin``).

    For the checks that poll a version's files (a refresh stamps every version) and for the key of the
    optimized-graph cache: the file is walked once per version of it, cached by (inode, size, modification
    time, change time) as :func:`file_sha256` is. Empty when the file cannot be read or is not ONNX: the load's own
    checks say why, and its stamp changes once the file does.
    """
    try:
        stat = model_file.stat()
    except OSError:
        return ()
    key = str(model_file)
    cached, sight = _locations.get(key, stat)
    if cached is not None:
        return cached
    try:
        references = _references_in(model_file)
    except (OSError, ValueError):
        return ()
    found = tuple(sorted({ref.entries["location"] for ref in references if ref.entries.get("location")}))
    _locations.put(key, sight, found)
    return found


# -- checksums --------------------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-fA-F]{64}")
_hashes: _PerFile[str] = _PerFile(_MAX_CACHED_FILES)  # resolved path -> the file's digest


class HashingStopped(Exception):
    """:func:`file_sha256` stopped because the event of :func:`hashing_stops_on` was set."""


_stop_hashing: ContextVar[threading.Event | None] = ContextVar("inprocserve_stop_hashing", default=None)


@contextlib.contextmanager
def hashing_stops_on(event: threading.Event) -> Iterator[None]:
    """Within the block (on this thread), a file's hashing stops with :class:`HashingStopped` at the next MiB
    once ``event`` is set: a server that closes while a load hashes a data file of several GB returns at
    once, instead of holding ``close()`` until the file is read to its end."""
    token = _stop_hashing.set(event)
    try:
        yield
    finally:
        _stop_hashing.reset(token)


def file_sha256(path: Path, *, follow_symlinks: bool = True, within: Path | None = None) -> str:
    """The file's sha256 hex digest, cached by (inode, size, mtime, ctime) so re-checks do not re-read the
    file; a rewrite in place that puts the mtime back (``cp -p``) still moves the ctime, which no one sets,
    and one within the timestamp tick of the read moves nothing: a digest is kept once settled (see
    :class:`_PerFile`). With ``follow_symlinks=False`` no link is followed to it (see :func:`open_regular_file`
    for ``within``), and the digest is of the file opened, looked up by that file's own stat: a link swapped
    in after the caller's checks is refused, never hashed, nor answered from the cache.

    Raises:
        SymlinkRefusedError: a link where none is followed.
        NotARegularFileError: no regular file is there.
        HashingStopped: see :func:`hashing_stops_on`.
        OSError: it cannot be read.
    """
    stop = _stop_hashing.get()
    key = str(path.resolve())
    # (a pipe's open waited for a writer for good)
    with open_regular_file(path, follow_symlinks=follow_symlinks, within=within) as handle:
        cached, sight = _hashes.get(key, os.fstat(handle.fileno()))
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            if stop is not None and stop.is_set():
                raise HashingStopped(f"the hashing of {path} was stopped")
            digest.update(chunk)
    result = digest.hexdigest()
    _hashes.put(key, sight, result)
    return result


def _checksum_text(data: bytes) -> str:
    """A checksum file's text: ``sha256sum``'s ASCII, or text saved by a Windows editor or PowerShell, which
    begin with a byte-order mark (UTF-8, or UTF-16 as ``Out-File`` writes by default)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    # surrogateescape: a file name that is not UTF-8 (``caf\xe9.txt`` of a Latin-1 system) names that file
    # again when the text is a path; replaced by U+FFFD, it named none, and its version failed as incomplete
    return data.decode("utf-8-sig", errors="surrogateescape")


_Listed = dict[tuple[str, ...], tuple[str, str]]
"""The other lines of a checksum file that name a file of the version folder: the path's parts inside the
folder (``("data", "w.bin")``) -> (the digest, the name as the line gives it)."""

_DRIVE = re.compile(r"[A-Za-z]:")
_MAX_CHECKSUM_BYTES = 1 << 20  # a repository's SHA256SUMS of 10,000 files; one longer is refused, not cut short
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPED = {"\\": "\\", "n": "\n", "r": "\r"}


class _Line(NamedTuple):
    """One line of a checksum file in ``sha256sum``'s format."""

    digest: str
    name: str
    parts: tuple[str, ...]
    """The path's parts (see :func:`_parts`)."""
    absolute: bool


def _parts(name: str) -> tuple[str, ...]:
    """A path's parts as ``sha256sum`` writes them or a model names its external data: ``./data/w.bin``,
    ``data\\w.bin`` and ``data//w.bin`` are ``("data", "w.bin")``."""
    return tuple(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


def _is_absolute(name: str) -> bool:
    """Whether a listed name is absolute: ``/srv/...``, or a Windows one (``C:\\models``, ``\\\\host``)."""
    return name.startswith(("/", "\\")) or _DRIVE.match(name) is not None


def _line(words: list[str]) -> _Line | None:
    """The line of a digest and a name (``words``, split once), or None if its first word is no digest. GNU
    ``sha256sum`` writes the line of a name holding a backslash or a line break with a backslash first and
    the name escaped (``\\<digest>  a\\\\b``, ``new\\nline``): a POSIX name, whose backslash is no separator."""
    word, escaped = words[0], words[0].startswith("\\")
    if not _HEX.fullmatch(word[1:] if escaped else word):
        return None
    name = words[1].strip().removeprefix("*") if len(words) > 1 else ""
    if not escaped:
        return _Line(word.lower(), name, _parts(name), _is_absolute(name))
    name = _ESCAPE.sub(lambda match: _ESCAPED.get(match[1], match[0]), name)
    parts = tuple(part for part in name.split("/") if part not in ("", "."))
    return _Line(word[1:].lower(), name, parts, name.startswith("/"))


def _read_listing(text: str, model_file: Path, sidecar: Path, fail: _Fail) -> tuple[str, _Listed]:
    """The digest a checksum file's ``text`` gives ``model_file``, and the other files of its version folder it
    lists. A file of one line gives the model's digest, whatever name it gives. In a file that lists several
    (``sha256sum model.onnx *.data``, a model's SHA256SUMS with ``2/model.onnx``), the line naming
    ``model.onnx`` gives its digest (the first line alone was read: another file's digest, refused as a
    mismatch), and how the lines name the version folder: its ``2/`` in ``2/model.onnx`` makes
    ``2/weights.bin`` this folder's ``weights.bin``, and ``1/weights.bin`` another version's, left out."""
    entries: list[_Line] = []
    for text_line in text.splitlines():
        words = text_line.split(None, 1)
        if not words:
            continue
        line = _line(words)
        if line is None:
            if entries:  # (a line of something else after the digests: not one of them)
                continue
            raise fail(
                f"checksum file {sidecar} does not start with a sha256 hex digest (it starts with "
                f"{words[0][:70]!r}; write: sha256sum model.onnx > model.onnx.sha256)"
            )
        entries.append(line)
    if not entries:
        raise fail(
            f"checksum file {sidecar} does not start with a sha256 hex digest (it starts with nothing; "
            "write: sha256sum model.onnx > model.onnx.sha256)"
        )
    if len(entries) == 1:  # (whatever name it gives: a file checksummed before it was renamed model.onnx)
        return entries[0].digest, {}
    tail = model_file.parts
    for index, line in enumerate(entries):
        # the listed path's parts are the model file's last ones: model.onnx, 2/model.onnx, fraud/2/model.onnx
        # (a repository's SHA256SUMS), never another model's churn/2/model.onnx, which ends alike
        if line.parts and line.parts == tail[-len(line.parts) :]:
            others = entries[:index] + entries[index + 1 :]
            return line.digest, _this_folder(others, line, model_file, sidecar, fail)
    shown_names = ", ".join(repr(line.name[:70]) for line in entries[:5])
    raise fail(
        f"checksum file {sidecar} lists {len(entries)} files ({shown_names}), none of them {model_file.name}; "
        "write: sha256sum model.onnx > model.onnx.sha256"
    )


def _this_folder(entries: list[_Line], model_line: _Line, model_file: Path, sidecar: Path, fail: _Fail) -> _Listed:
    """Of ``entries``, those that name a file of the version folder as ``model_line`` names the model file:
    under the same folder (``2/``, ``/srv/models/m/2/``, none), relative or absolute alike.

    Raises:
        ModelLoadError: two lines give one file (``weights.data`` and ``./weights.data``) different digests,
            of which ``sha256sum -c`` fails one: the first was taken, and a stale line appended after it
            passed here what the deploy's check refused."""
    prefix = model_line.parts[:-1]
    listed: _Listed = {}
    for line in entries:
        inside = line.parts[len(prefix) :]
        if line.parts[: len(prefix)] != prefix or not inside or line.absolute != model_line.absolute:
            continue  # another version's file (a model's SHA256SUMS), another model's, one not under the folder
        if "\x00" in line.name or ".." in inside:
            continue  # (no file's name; a path that climbs out of the folder, never looked at)
        if inside == (sidecar.name,):  # (sha256sum * > model.onnx.sha256 lists it half-written)
            continue
        first = (model_line.digest, model_line.name) if inside == (model_file.name,) else listed.get(inside)
        if first is not None and first[0] != line.digest:
            raise fail(
                f"checksum file {sidecar.name} gives {brief(first[1])} sha256 {first[0]} and {brief(line.name)} "
                f"sha256 {line.digest}, one file; keep one line for it (sha256sum -c {sidecar.name} says which)"
            )
        if first is None:
            listed[inside] = (line.digest, line.name)
    return listed


def _check_checksum(model_file: Path, fail: _Fail, *, follow_symlinks: bool) -> _Listed | None:
    """Check the model file against its checksum file, if it has one, and that every other file of the
    version folder it lists is there; the other files it lists (None without a checksum file)."""
    sidecar = model_file.with_name(model_file.name + CHECKSUM_SUFFIX)
    if not sidecar.exists() and not sidecar.is_symlink():  # (a dangling link is a checksum that cannot be read)
        return None
    try:
        data = read_regular_file(sidecar, _MAX_CHECKSUM_BYTES)  # (a pipe there would hold the load, and its lock)
    except NotARegularFileError:
        raise fail(
            f"checksum file {sidecar} is not a regular file (a folder, a pipe or a device); "
            "write: sha256sum model.onnx > model.onnx.sha256"
        ) from None
    except OSError as exc:
        raise fail(f"checksum file {sidecar} cannot be read: {exc}") from exc
    if len(data) > _MAX_CHECKSUM_BYTES:  # (read cut short, its last line would name a file that is not there)
        raise fail(
            f"checksum file {sidecar} is over {_MAX_CHECKSUM_BYTES >> 20} MiB; list this version's files only: "
            "sha256sum model.onnx *.data > model.onnx.sha256"
        )
    expected, listed = _read_listing(_checksum_text(data), model_file, sidecar, fail)
    _check_digest(model_file, expected, sidecar, fail, what="model file", follow_symlinks=follow_symlinks)
    folder = model_file.parent
    locations = {_parts(location) for location in external_data_locations(model_file)}
    for inside, (_, name) in listed.items():
        # Only a file whose arrival retries the failed version: one the folder holds directly (not hidden, as
        # an editor's swap file is), or one the model names as its external data. Another in a sub-folder or
        # hidden was a failure for good: copied in, the version stayed failed until a restart.
        if inside not in locations and (len(inside) > 1 or inside[0].startswith(".")):
            continue
        # os.path.exists: False, not an error, for a name too long for the file system
        if not os.path.exists(folder.joinpath(*inside)) and not _written_by_loads(inside[-1]):
            raise fail(
                f"checksum file {sidecar.name} lists {brief(name)}, which is not in the version folder {folder} "
                "(a copy not finished?); copy it in, or take its line out"
            )
    return listed


def _written_by_loads(name: str) -> bool:
    """Whether a file of this name is one a load writes and deletes (the optimized-graph cache): listed by a
    ``sha256sum *`` run after a load, it is not the release's, and its going is no missing file."""
    from ._ort_rules import OPTIMIZED_GRAPH  # (here: _ort_rules imports this module's walker, through shapes)

    return OPTIMIZED_GRAPH.fullmatch(name) is not None


def _check_listed_external_data(
    model_file: Path, locations: tuple[str, ...], listed: _Listed, fail: _Fail, *, follow_symlinks: bool
) -> None:
    """Check each external-data file the model names against the digest its checksum file lists for it.
    ``locations`` are the ones :func:`check_external_data` just checked (inside the folder, regular files), not
    read from the model file again: one replaced in between could name a location never checked. One the
    checksum file does not list is not checked."""
    sidecar = model_file.with_name(model_file.name + CHECKSUM_SUFFIX)
    seen: set[tuple[str, ...]] = set()
    for location in locations:
        inside = _parts(location)
        if inside in seen or inside not in listed:
            continue
        seen.add(inside)
        path, digest = model_file.parent / location, listed[inside][0]
        _check_digest(path, digest, sidecar, fail, what="external-data file", follow_symlinks=follow_symlinks)


def _check_digest(path: Path, expected: str, sidecar: Path, fail: _Fail, *, what: str, follow_symlinks: bool) -> None:
    try:
        # not following links: no link below the version folder (checked before, swapped in since: refused)
        actual = file_sha256(path, follow_symlinks=follow_symlinks, within=sidecar.parent)
    except SymlinkRefusedError:
        raise fail(_link_refused(what, path, through=not path.is_symlink())) from None
    except HashingStopped:
        raise fail(f"the server was closed while the {what} {path} was being hashed; it was not loaded") from None
    except NotARegularFileError:
        raise fail(f"{what} {path} is not a regular file (a folder, a pipe or a device)") from None
    except OSError as exc:
        raise fail(f"{what} {path} cannot be read: {exc.strerror or exc}") from None
    if actual != expected:
        raise fail(f"{path} has sha256 {actual}, but {sidecar.name} expects {expected}; the file is refused")


# -- files named in config.toml ---------------------------------------------------------------------------


def resolved_path(path: Path) -> Path:
    """``path.resolve()``, with a symbolic link loop anywhere on it an ``OSError`` (``ELOOP``) on every Python:
    3.11 and 3.12 raise ``RuntimeError`` there, and 3.13 returns the path with the loop left in it (a version
    whose config named such a file then failed later, as a file that could not be read, not naming the
    setting). A link to a missing file, or a missing path, is no loop: its path is returned.

    The result is ``stat()``-ed as 3.11 and 3.12 do: a loop in a folder on the path (``loop/file.npz``) leaves
    3.13's last part no link (it goes on past the loop), so that checking the last part alone passed it."""
    try:
        resolved = path.resolve()
    except RuntimeError:  # (Python before 3.13)
        raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
    try:
        os.stat(resolved)
    except OSError as exc:  # (a missing file is no loop: the caller says what it needs of one)
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), str(path)) from None
    return resolved


def resolve_model_file(folder: Path, name: str, *, what: str, model: str, version: int | None = None) -> Path:
    """``folder / name`` for a file that a model's config names, refused unless it stays inside ``folder``.

    Raises:
        ModelLoadError: ``name`` is absolute, holds a NUL byte, resolves (links followed) outside the model
            folder, or cannot be resolved (a link loop).
    """

    def fail(why: str) -> ModelLoadError:
        return ModelLoadError(
            f"model {model!r}: the {what} {name!r} must be a path inside the model folder {folder}, {why}",
            model=model,
            version=version,
        )

    if "\x00" in name:  # (before resolve(), which raises a bare "ValueError: embedded null byte" of it)
        raise fail("but holds a NUL byte")
    try:
        resolved = resolved_path(folder / name)
    except OSError as exc:  # (a link loop)
        raise fail(f"but cannot be resolved: {exc.strerror or exc}") from None
    if os.path.isabs(name) or not resolved.is_relative_to(folder.resolve()):
        raise fail(f"but resolves to {resolved}")
    return resolved
