"""``python -m inprocserve score`` on a .npz whose zip64 records say what its end record does not: zipfile takes
the zip64 record's directory size wherever its locator is, so the directory bound must read it there too."""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inprocserve._scoring_npz import DIRECTORY_LIMIT
from inprocserve.testing import build_scale_model, save_model

from .test_scoring_io_hardening import _score


def _zip64_directory(path: Path, *, end_record_size: int) -> int:
    """Rewrite the zip ``path`` with a zip64 end record and locator before its end record, the end record's
    directory size replaced by ``end_record_size`` (the zip64 record keeps the true one); returns the true one."""
    data = path.read_bytes()
    end = data.rfind(b"PK\x05\x06")
    sig, disk, disk_cd, _, count, size, offset, _ = struct.unpack("<4s4H2LH", data[end : end + 22])
    zip64 = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, size, offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, end, 1)
    record = struct.pack("<4s4H2LH", sig, disk, disk_cd, count, count, end_record_size, offset, 0)
    path.write_bytes(data[:end] + zip64 + locator + record)
    return size


def test_a_directory_over_the_limit_is_refused_whatever_the_end_record_says_beside_zip64(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the end record said 0 bytes, the zip64 record 1.3 MB: the bound read only the first, and zipfile the
    # second, making an object of each of 25,001 entries
    model = save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    path = tmp_path / "x.npz"
    np.savez(path, x=np.arange(40, dtype=np.float32).reshape(10, 4))
    with zipfile.ZipFile(path, "a") as archive:
        for index in range(25_000):
            archive.writestr(zipfile.ZipInfo(f"d{index}/"), b"")
    size = _zip64_directory(path, end_record_size=0)
    assert len(zipfile.ZipFile(path).infolist()) == 25_001  # (zipfile reads it: the zip64 record's size)
    assert _score(model, path, tmp_path / "y.npz") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {path}: its zip directory is {size:,} bytes"), err
    assert f"more than is read ({DIRECTORY_LIMIT:,})" in err
    assert not (tmp_path / "y.npz").exists()


def test_an_honest_zip64_directory_is_still_read(tmp_path: Path) -> None:
    model = save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)
    path = tmp_path / "x.npz"
    rows = np.arange(40, dtype=np.float32).reshape(10, 4)
    np.savez(path, x=rows)
    _zip64_directory(path, end_record_size=0xFFFFFFFF)
    assert _score(model, path, tmp_path / "y.npz") == 0
    assert np.array_equal(np.load(tmp_path / "y.npz")["y"], rows * 2)
