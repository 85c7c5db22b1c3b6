"""Reading the array files a model's ``config.toml`` names (warm-up inputs, a drift reference): ``.npz``
archives of named arrays, or a ``.npy`` of one array.

Whatever lies there is read safely: only a regular file (a pipe would hold the load: see
:mod:`._regular_file`), never unpickled, and a half-copied or damaged file (numpy's ``EOFError``, zlib's
error, a broken header's TokenError, a header claiming terabytes, an empty file) is an error naming the file,
not the model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._regular_file import open_regular_file

__all__ = ["UnreadableArrayFileError", "huge_header", "load_arrays", "not_numpy_file"]


class UnreadableArrayFileError(Exception):
    """The file cannot be read as arrays; the message says why (the caller names the file)."""


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGIC = b"PK\x03\x04"  # (an empty archive starts PK\x05\x06)


def not_numpy_file(head: bytes) -> str | None:
    """Why a file starting with ``head`` (its first 8 bytes or more) is neither a .npy nor a .npz, or ``None``.

    numpy takes any other file for a pickle, and with ``allow_pickle=False`` refuses a text file, a CSV
    renamed .npy or a half-written header with "This file contains pickled (object) data. If you trust the
    file you can load it unsafely using the `allow_pickle=` keyword argument": advice to unpickle a file that
    is not even a pickle, and a code-execution risk where one is."""
    if not head:
        # said here: numpy 2 raises EOFError, but numpy 1.x takes an empty file for a pickle too
        # ("Cannot load file containing pickled data when allow_pickle=False")
        return "the file is empty (a copy not yet finished?); write the arrays with np.save or np.savez"
    if head.startswith((_NPY_MAGIC, _ZIP_MAGIC, b"PK\x05\x06")):
        return None
    what = (
        "a Python pickle, never loaded: unpickling runs code" if head[:1] == b"\x80" else f"it starts with {head[:8]!r}"
    )
    return f"not a .npy or .npz file ({what}); write the arrays with np.save or np.savez"


def huge_header(error: BaseException) -> str | None:
    """What to say of numpy's refusal of a .npy header over its size limit (``None`` for another error): numpy
    refuses it "unless you fully trust the .npy file using allow_pickle=True", advice to load a damaged or
    hostile file unsafely, which this library never does."""
    if not (isinstance(error, ValueError) and "max_header_size" in str(error)):
        return None
    return (
        "its .npy header is larger than numpy reads safely (np.save writes a few hundred bytes): the file is "
        "damaged, or was not written by np.save; write the arrays with np.save or np.savez"
    )


_OBJECTS = (
    "{what} holds Python objects (an object array), never unpickled; save it as text or numbers "
    "(array.astype(str), array.astype(np.float32))"
)


def load_arrays(path: Path, *, pickled: list[str] | None = None) -> np.ndarray | dict[str, np.ndarray]:
    """A ``.npy``'s array, or a ``.npz``'s arrays by name.

    ``pickled``: where to list, instead of refusing the file, the members of a ``.npz`` that hold Python objects
    (an object array, as pandas' ``.values`` of a text column is), which would need unpickling; they are left out.
    A ``.npy`` of such an array is listed as ``""`` (its one array, which has no name) and read as no arrays.

    Raises:
        UnreadableArrayFileError: not a regular file, unreadable, half-copied, damaged, or pickled objects.
    """
    try:
        # opened here, so that it is closed when numpy fails on it (a half-copied archive)
        with open_regular_file(path) as handle:
            reason = not_numpy_file(handle.read(8))
            if reason is not None:
                raise UnreadableArrayFileError(reason)
            handle.seek(0)
            try:
                loaded = np.load(handle, allow_pickle=False)  # never unpickle
            except ValueError as exc:  # (a .npy is read here: its object array is refused at once)
                if not _pickled(exc):
                    raise
                if pickled is None:
                    raise UnreadableArrayFileError(_OBJECTS.format(what="the array")) from None
                pickled.append("")
                return {}
            if isinstance(loaded, np.ndarray):  # a .npy (np.save)
                return loaded
            with loaded:
                arrays: dict[str, np.ndarray] = {}
                for key in loaded.files:
                    try:
                        arrays[key] = loaded[key]
                    except ValueError as exc:
                        if not _pickled(exc):  # numpy's refusal of an object array's pickle
                            raise
                        if pickled is None:
                            raise UnreadableArrayFileError(_OBJECTS.format(what=f"array {key!r}")) from None
                        pickled.append(key)
                return arrays
    except UnreadableArrayFileError:
        raise
    except Exception as exc:  # (numpy's parsing of a damaged file raises many kinds: TokenError, zlib.error...)
        reason = huge_header(exc)
        if reason is not None:
            raise UnreadableArrayFileError(reason) from exc
        raise UnreadableArrayFileError(f"{type(exc).__name__}: {exc}") from exc


def _pickled(error: ValueError) -> bool:
    """Whether numpy refused an object array's pickle; its refusal of a header over its size limit also names
    ``allow_pickle`` (and was reported as an object array)."""
    return "allow_pickle" in str(error) and huge_header(error) is None
