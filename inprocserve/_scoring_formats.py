"""The file formats of the ``score`` command, by extension, shared by its readers and its writer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._errors import ConfigurationError, InvalidInputError

__all__ = ["FORMATS", "file_format", "pyarrow_modules"]

FORMATS = (".npy", ".npz", ".csv", ".parquet")


def pyarrow_modules() -> tuple[Any, Any]:
    try:
        import pyarrow as pa  # type: ignore[import-not-found, import-untyped, unused-ignore]
        import pyarrow.parquet as pq  # type: ignore[import-not-found, import-untyped, unused-ignore]
    except ImportError as exc:
        if exc.name in ("pyarrow", "pyarrow.parquet"):
            raise ConfigurationError("Parquet files need pyarrow: pip install pyarrow") from None
        # Installed but refusing to load, e.g. "pyarrow requires NumPy 2.0 or newer, found 1.24.2" (pip
        # installs the newest pyarrow beside numpy 1.x): "pip install pyarrow" would only say it is there.
        raise ConfigurationError(
            f"Parquet files need pyarrow, which is installed but cannot be imported: {exc} "
            "(install a pyarrow that works with the installed packages, e.g. an older one for numpy 1.x)"
        ) from exc
    return pa, pq


def file_format(path: Path, role: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInputError(f"{role} {path}: unknown format {suffix or '(no extension)'!r}; use one of {FORMATS}")
    return suffix
