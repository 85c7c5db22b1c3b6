"""Reading the array files a model's ``config.toml`` names (warm-up inputs, a drift reference): ``.npz``
archives of named arrays, or a ``.npy`` of one array.

Whatever lies there is read safely: only a regular file (a pipe would hold the load: see
:mod:`._regular_file`), never unpickled, and a half-copied or damaged file (numpy's ``EOFError``, zlib's
error, a broken header's TokenError, a header claiming terabytes) is an error naming the file, not the
model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ._regular_file import open_regular_file

__all__ = ["UnreadableArrayFileError", "load_arrays"]


class UnreadableArrayFileError(Exception):
    """The file cannot be read as arrays; the message says why (the caller names the file)."""


def load_arrays(path: Path) -> np.ndarray | dict[str, np.ndarray]:
    """A ``.npy``'s array, or a ``.npz``'s arrays by name.

    Raises:
        UnreadableArrayFileError: not a regular file, unreadable, half-copied, damaged, or pickled objects.
    """
    try:
        # opened here, so that it is closed when numpy fails on it (a half-copied archive)
        with open_regular_file(path) as handle:
            loaded = np.load(handle, allow_pickle=False)  # never unpickle
            if isinstance(loaded, np.ndarray):  # a .npy (np.save)
                return loaded
            with loaded:
                return {key: loaded[key] for key in loaded.files}
    except Exception as exc:  # (numpy's parsing of a damaged file raises many kinds: TokenError, zlib.error...)
        raise UnreadableArrayFileError(f"{type(exc).__name__}: {exc}") from exc
