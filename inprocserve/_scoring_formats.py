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
    except ImportError:
        raise ConfigurationError("Parquet files need pyarrow: pip install pyarrow") from None
    return pa, pq


def file_format(path: Path, role: str) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InvalidInputError(f"{role} {path}: unknown format {suffix or '(no extension)'!r}; use one of {FORMATS}")
    return suffix
