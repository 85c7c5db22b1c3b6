"""``python -m inprocserve score`` on .npy, .npz and Parquet files it did not write: headers that lie (a
negative axis, more data than the file holds, rows of no bytes by the trillion), an object array, an encrypted
member, rows so wide that a chunk of them is gigabytes (a zip bomb), a damaged Parquet footer."""

from __future__ import annotations

import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from inprocserve._scoring_npz import DIRECTORY_LIMIT, ROW_LIMIT
from inprocserve.testing import build_scale_model, save_model

from .test_cli_score_hostile_files import _zip64_member
from .test_scoring_io_hardening import _score, write_npy_bytes


@pytest.fixture
def scale_file(tmp_path: Path) -> Path:
    return save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)


@pytest.fixture
def open_file(tmp_path: Path) -> Path:
    """``y = 2x`` on ``x[batch, f]``: rows of any width."""
    model = build_scale_model(2.0)
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[1].dim_param = "f"
    return save_model(model, tmp_path / "models", "open", 1)


def _header(shape: tuple[int, ...], descr: str = "<f4", *, fortran: bool = False) -> bytes:
    """A .npy header (format 1.0) declaring ``shape`` of ``descr``, whatever data follows it."""
    text = f"{{'descr': {descr!r}, 'fortran_order': {fortran}, 'shape': {shape!r}, }}"
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode()


_ROWS = np.arange(40, dtype=np.float32).reshape(10, 4)


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_header_with_a_negative_axis_is_refused_not_scored_as_no_rows(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # a .npz's was read as no rows: an empty answer file, and exit 0
    path = write_npy_bytes(tmp_path, _header((-5, 4)) + _ROWS.tobytes(), suffix)
    assert _score(scale_file, path, tmp_path / "y.npz") == 1
    assert "claims shape (-5, 4), with a negative axis: the file is corrupt" in _error(capsys)
    assert not (tmp_path / "y.npz").exists()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_trillion_rows_of_no_bytes_are_refused_not_scored_for_hours(
    tmp_path: Path, open_file: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # 128 bytes declaring 10**12 rows of shape (0,): a model run per chunk of nothing, for hours
    path = write_npy_bytes(tmp_path, _header((10**12, 0)), suffix)
    assert _score(open_file, path, tmp_path / "y.npy") == 1
    err = _error(capsys)
    assert "rows hold no values (0 bytes a row), and it declares 1,000,000,000,000 of them in" in err
    assert "the file is corrupt, or not a file of rows" in err


def test_a_few_rows_of_no_bytes_are_still_scored(tmp_path: Path, open_file: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 0), np.float32))
    assert _score(open_file, tmp_path / "x.npy", tmp_path / "y.npy") == 0
    assert np.load(tmp_path / "y.npy").shape == (3, 0)


@pytest.mark.parametrize(
    ("data", "claim"),
    [
        (
            _header((1000, 4)) + _ROWS.tobytes(),
            "claims shape (1000, 4) of float32 (16,000 bytes) but the file holds 160",
        ),
        (
            _header((10, 4), "<f8") + _ROWS.tobytes(),
            "claims shape (10, 4) of float64 (320 bytes) but the file holds 160",
        ),
        (_header((10, 4)) + _ROWS.tobytes()[:-7], "claims shape (10, 4) of float32 (160 bytes) but the file holds 153"),
        (_header((10**12, 4)) + _ROWS.tobytes(), "(16,000,000,000,000 bytes) but the file holds 160 bytes"),
    ],
    ids=["more-rows", "wider-dtype", "truncated", "trillion-rows"],
)
def test_a_npy_header_claiming_more_than_the_file_holds_says_so(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], data: bytes, claim: str
) -> None:
    # numpy's words were "mmap length is greater than file size": nothing of what is wrong, or what to do
    (tmp_path / "x.npy").write_bytes(data)
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / "y.npy") == 1
    err = _error(capsys)
    assert claim in err
    assert "the file is truncated or corrupt: write it again with np.save" in err


def test_a_npy_of_python_objects_is_refused_as_such_never_unpickled(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # refused by numpy's memory map as "Array can't be memory-mapped: Python objects in dtype."
    np.save(tmp_path / "x.npy", np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / "y.npy") == 1
    err = _error(capsys)
    assert "holds Python objects (an object array), never unpickled; save it as text or numbers" in err


def test_an_encrypted_npz_member_is_an_error_line_not_a_traceback(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # zipfile's RuntimeError ("password required for extraction") left the command as a traceback
    path = write_npy_bytes(tmp_path, _header((10, 4)) + _ROWS.tobytes(), ".npz")
    data = bytearray(path.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):  # the general purpose flags' bit 0
        data[data.find(signature) + offset] |= 1
    path.write_bytes(bytes(data))
    assert _score(scale_file, path, tmp_path / "y.npz") == 1
    assert "member 'x.npy' is encrypted; save the arrays with np.savez, without a password" in _error(capsys)


def test_a_npz_row_over_the_row_limit_is_refused_by_its_header(
    tmp_path: Path, open_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # one row of 1 GiB, 1 MiB compressed, was read, copied and answered whole: 5.3 GB
    columns = ROW_LIMIT // 4 + 1
    header = _header((1, columns))
    _zip64_member(tmp_path / "x.npz", "x.npy", header + bytes(4096), declared_size=len(header) + columns * 4)
    assert _score(open_file, tmp_path / "x.npz", tmp_path / "y.npz") == 1
    err = _error(capsys)
    assert f"one row of {columns * 4:,} bytes, more than is read at once ({ROW_LIMIT:,})" in err


def _wide_npz(path: Path, rows: int, columns: int, *, fortran: bool = False) -> int:
    """A compressed .npz of ``rows`` zero rows of ``columns`` float32 (written a row at a time); their bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive, archive.open("x.npy", "w") as member:
        member.write(_header((rows, columns), fortran=fortran))
        zero = bytes(columns * 4)
        for _ in range(rows):
            member.write(zero)
    return rows * columns * 4


def _traced_peak(*args: Path | str) -> int:
    tracemalloc.start()
    try:
        assert _score(*args) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_wide_npz_rows_are_read_and_kept_in_flight_by_bytes_not_by_the_models_rows(
    tmp_path: Path, open_file: Path
) -> None:
    # 64 rows of 4 MiB of zeros (256 KiB compressed): a chunk of the model's rows, and a window of such chunks
    # in flight, were read ahead whatever their width: 16 rows of 64 MiB held 4.2 GB
    size = _wide_npz(tmp_path / "x.npz", 64, 1 << 20)
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 4), np.float32))
    _traced_peak(open_file, tmp_path / "small.npz", tmp_path / "small_y.npz")  # (the imports of a first run)
    peak = _traced_peak(open_file, tmp_path / "x.npz", tmp_path / "y.npz")
    # 121 MiB in most runs, quiet or loaded; 168 MiB once at a load average of 7, where the answers of the 16 MiB
    # chunks in flight (at most four) waited to be written beside their rows and the next chunk read. A chunk cut
    # by the model's rows (the whole file here) held 768 MiB.
    assert peak < size * 3 / 4, f"{peak:,} bytes at the peak for a file of {size:,}"
    answers = np.load(tmp_path / "y.npz", mmap_mode="r")["y"]
    assert answers.shape == (64, 1 << 20)


def test_a_fortran_order_npz_member_is_read_whole_once_not_twice(tmp_path: Path, open_file: Path) -> None:
    # zipfile's read(n) joined its inflated pieces into one bytes object, wrapped by numpy: twice the member
    # (a large member beside the 64 MiB the command keeps in flight: 256 MiB of zeros, 256 KiB compressed)
    size = _wide_npz(tmp_path / "x.npz", 256, 1 << 18, fortran=True)
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 4), np.float32))
    _traced_peak(open_file, tmp_path / "small.npz", tmp_path / "small_y.npz")  # (the imports of a first run)
    peak = _traced_peak(open_file, tmp_path / "x.npz", tmp_path / "y.npz")
    assert peak < size * 1.6, f"{peak:,} bytes at the peak for a member of {size:,}"


def test_a_parquet_footer_that_cannot_be_read_is_one_error_line(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pyarrow's "Couldn't deserialize thrift: ..." ends in a line break: the error was two lines
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({name: [1.0] for name in "abcd"}), tmp_path / "x.parquet")
    data = bytearray((tmp_path / "x.parquet").read_bytes())
    footer = int.from_bytes(data[-8:-4], "little")
    for index in range(len(data) - 8 - footer, len(data) - 8, 7):
        data[index] ^= 0x5A
    (tmp_path / "x.parquet").write_bytes(bytes(data))
    assert _score(scale_file, tmp_path / "x.parquet", tmp_path / "y.npy") == 1
    err = _error(capsys)
    assert err.startswith(f"error: input {tmp_path / 'x.parquet'} cannot be read as Parquet: ")
    assert err.rstrip().endswith("the file is damaged or was not written whole")


def test_a_npz_of_tens_of_thousands_of_entries_is_refused_before_its_directory_is_read(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # zipfile made an object of each entry as it opened the file: a million empty ones (90 MB) held 600 MB
    path = tmp_path / "x.npz"
    np.savez(path, x=_ROWS)
    with zipfile.ZipFile(path, "a") as archive:
        for index in range(25_000):
            archive.writestr(zipfile.ZipInfo(f"d{index}/"), b"")
    assert _score(scale_file, path, tmp_path / "y.npz") == 1
    err = _error(capsys)
    assert err.startswith(f"error: input {path}: its zip directory is ")
    assert f"more than is read ({DIRECTORY_LIMIT:,}); save only the model's inputs" in err
