"""``python -m inprocserve score`` on hostile or unusual files: a .npz member that expands to more than memory
(a zip bomb) and a large honest one, a Parquet file of one large row group, answers that change width."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from inprocserve.testing import build_scale_model, save_model

from .conftest import run_python
from .test_scoring_io_hardening import _score, write_npy_bytes


@pytest.fixture
def scale_file(tmp_path: Path) -> Path:
    return save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)


def _zip64_member(path: Path, name: str, data: bytes, *, declared_size: int) -> None:
    """A .npz of one deflated member holding ``data`` whose zip entry declares ``declared_size`` bytes once
    expanded (a zip bomb's claim: the archive's sizes are not checked until the member is read to its end)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    packed = packer.compress(data) + packer.flush()
    crc, filename = zlib.crc32(data), name.encode()
    sizes = struct.pack("<HHQQ", 1, 16, declared_size, len(packed))  # the zip64 extra field
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(filename), 20)
    central = struct.pack(
        "<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF, len(filename), 20, 0,
        0, 0, 0, 0,
    )  # fmt: skip
    body = local + filename + sizes + packed
    directory = central + filename + sizes
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(directory), len(body), 0)
    path.write_bytes(body + directory + end)


def test_an_npz_member_expanding_to_more_than_memory_is_an_error_naming_it_not_a_memory_error(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 64 KiB of zeros whose header and zip entry declare a TiB: np.load allocated the TiB first (MemoryError,
    # a traceback) before reading a byte of it
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4), np.float32))
    header["shape"] = (2**36, 4)
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    data = member.getvalue() + bytes(4096 * 16)
    _zip64_member(tmp_path / "x.npz", "x.npy", data, declared_size=len(member.getvalue()) + 2**40)
    tracemalloc.start()
    try:
        assert _score("--batch-rows", "1024", scale_file, tmp_path / "x.npz", tmp_path / "y.npz") == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000, f"{peak:,} bytes at the peak"
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {tmp_path / 'x.npz'}: member 'x.npy' ends after 4,096 of the ")
    assert "truncated or corrupt" in err
    assert not (tmp_path / "y.npz").exists()
    assert not list(tmp_path.glob("*.partial"))


def _peak_bytes(*args: Path | str) -> int:
    tracemalloc.start()
    try:
        assert _score(*args) == 0
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_compressed_npz_is_read_chunk_by_chunk_as_a_npy_is(tmp_path: Path, scale_file: Path) -> None:
    # read whole, its 2.6 MB (and as many again for the bytes they were read from) were held at once, where a
    # .npy of them is memory-mapped: a member of 40 GB ended in a MemoryError
    x = np.tile(np.arange(4, dtype=np.float32), (160_000, 1))
    np.save(tmp_path / "x.npy", x)
    np.savez_compressed(tmp_path / "x.npz", x=x)
    _peak_bytes(scale_file, tmp_path / "x.npy", tmp_path / "y.parquet")  # (the imports of a first run)
    as_npy = _peak_bytes("--batch-rows", "4096", scale_file, tmp_path / "x.npy", tmp_path / "y.parquet")
    as_npz = _peak_bytes("--batch-rows", "4096", scale_file, tmp_path / "x.npz", tmp_path / "z.parquet")
    assert as_npz < as_npy + x.nbytes / 4, f"{as_npz:,} bytes at the peak ({as_npy:,} for the .npy): read whole"
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(tmp_path / "z.parquet")
    assert table.num_rows == 160_000
    np.testing.assert_array_equal(table.column("y_3").to_numpy(), np.full(160_000, 6.0, np.float32))


_ARROW_PEAK = """
import sys
import pyarrow
from onnx import TensorProto, helper, numpy_helper

from inprocserve.__main__ import main
status = main(["score", "--quiet", "--batch-rows", "1024", *sys.argv[1:]])
print(status, pyarrow.default_memory_pool().max_memory())
"""


def _arrow_peak(tmp_path: Path, rows: int) -> int:
    """The most memory pyarrow held in a run over a Parquet file of one row group of ``rows`` rows of 8 columns,
    ended by a null in its second batch of 1024 rows."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    model = save_model(build_scale_model(2.0, features=8), tmp_path / "models", "wide", 1)
    values = np.random.default_rng(0).standard_normal((rows, 8)).astype(np.float32)
    columns = {f"f{i}": pa.array(values[:, i]) for i in range(8)}
    mask = np.zeros(rows, bool)
    mask[1500] = True
    columns["f0"] = pa.array(values[:, 0], mask=mask)
    path = tmp_path / f"x{rows}.parquet"
    pq.write_table(pa.table(columns), path, row_group_size=rows, compression="none")
    done = run_python(_ARROW_PEAK, str(model), str(path), str(tmp_path / "y.csv"))
    status, peak = done.stdout.split()
    assert status == "1", done.stderr
    assert "column 'f0' has a null (missing value) at row 1501" in done.stderr
    return int(peak)


def test_a_parquet_row_group_is_read_in_batches_not_whole(tmp_path: Path) -> None:
    # pyarrow's ParquetFile read each column's chunk of a row group whole, before its first batch: memory
    # followed the row group (a file of one row group, as many writers make, held at once), not --batch-rows
    small, large = _arrow_peak(tmp_path, 150_000), _arrow_peak(tmp_path, 600_000)
    assert large < small * 1.5, f"{large:,} bytes held by pyarrow at the peak, {small:,} for a quarter of the rows"


def _widening_model(tmp_path: Path) -> Path:
    """x (float [batch, 2]) -> y (float [batch, open]): x repeated as often as the largest value of its request,
    so its width changes from one chunk to the next (an open output axis sized by the data)."""
    most = helper.make_node("ReduceMax", ["x"], ["most"], keepdims=0)
    graph = helper.make_graph(
        [
            most,
            helper.make_node("Cast", ["most"], ["times"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["times", "one_shape"], ["times_1"]),
            helper.make_node("Concat", ["one", "times_1"], ["repeats"], axis=0),
            helper.make_node("Tile", ["x", "repeats"], ["y"]),
        ],
        "widening",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "width"])],
        initializer=[
            numpy_helper.from_array(np.array([1], np.int64), "one"),
            numpy_helper.from_array(np.array([1], np.int64), "one_shape"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    return save_model(model, tmp_path / "models", "widening", 1)


@pytest.mark.parametrize("suffix", [".npy", ".npz", ".csv", ".parquet"])
def test_an_answer_whose_width_changes_between_chunks_fails_at_that_chunk(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # the .npy/.npz answers were joined only at the end, after every row was scored ("all the input array
    # dimensions except for the concatenation axis must match exactly"); a CSV file's end was a traceback
    # (numpy's "fmt has wrong shape"), a Parquet file's pyarrow's words, naming neither the output nor the rows
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    model = _widening_model(tmp_path)
    x = np.ones((1000, 2), np.float32)
    x[500:] = 2  # from row 501 (a request of chunks of 10 starts there), 4 values per row where 2 were before
    np.save(tmp_path / "x.npy", x)
    assert _score("--batch-rows", "10", model, tmp_path / "x.npy", tmp_path / f"y{suffix}") == 1
    err = capsys.readouterr().err
    assert (
        "error: output 'y' answers 4 values per row (shape (4,)) for input rows 501..510, where the rows before "
        "have 2 values per row (shape (2,))" in err
    ), err
    assert not (tmp_path / f"y{suffix}").exists()
    assert not list(tmp_path.glob("*.partial"))


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_an_output_given_as_a_symbolic_link_is_written_through_it(
    tmp_path: Path, scale_file: Path, suffix: str
) -> None:
    # the answers were renamed over the link itself: the link was replaced by a plain file, and the file it
    # pointed to (a shared folder's, a release's "current") kept its old answers
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / f"answers{suffix}"
    target.write_text("old answers")
    (tmp_path / f"y{suffix}").symlink_to(target)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.save(tmp_path / "x.npy", x)
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / f"y{suffix}") == 0
    assert (tmp_path / f"y{suffix}").is_symlink() and (tmp_path / f"y{suffix}").resolve() == target
    written = np.load(target) if suffix == ".npy" else np.loadtxt(target, delimiter=",", skiprows=1)
    np.testing.assert_array_equal(written, x * 2)
    assert not list(tmp_path.glob("*.partial")) and not list(target.parent.glob("*.partial"))


def test_a_failed_run_leaves_the_file_an_output_link_points_to_whole(tmp_path: Path, scale_file: Path) -> None:
    (tmp_path / "shared").mkdir()
    target = tmp_path / "shared" / "answers.csv"
    target.write_text("old answers")
    (tmp_path / "y.csv").symlink_to(target)
    (tmp_path / "x.csv").write_text("1,2,3,4\n1,2,3\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    assert (tmp_path / "y.csv").is_symlink() and target.read_text() == "old answers"
    assert not list(tmp_path.glob("*.partial")) and not list(target.parent.glob("*.partial"))


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_npy_header_cut_inside_its_braces_is_an_error_line_not_a_traceback(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # numpy parses the header with the tokenize module, whose TokenError ("EOF in multi-line statement") went
    # out as a traceback: a damaged byte in a header's closing brace was enough
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), ".ljust(63) + "\n"
    data = b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(48)
    assert _score(scale_file, write_npy_bytes(tmp_path, data, suffix), tmp_path / "y.npy") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {tmp_path / f'x{suffix}'}") and "EOF in multi-line statement" in err, err
    assert not (tmp_path / "y.npy").exists()


def test_a_parquet_page_that_cannot_be_read_is_an_error_naming_the_file_and_row(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # pyarrow's words alone ("Couldn't deserialize thrift: ...") named neither the file nor where in it
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    x = np.arange(400, dtype=np.float32).reshape(100, 4)
    pq.write_table(pa.table({f"c{i}": x[:, i] for i in range(4)}), tmp_path / "x.parquet", row_group_size=50)
    page = pq.ParquetFile(tmp_path / "x.parquet").metadata.row_group(0).column(2).data_page_offset
    data = bytearray((tmp_path / "x.parquet").read_bytes())
    data[page : page + 8] = b"\xff" * 8  # the page header of column c2
    (tmp_path / "x.parquet").write_bytes(bytes(data))
    assert _score("--batch-rows", "10", scale_file, tmp_path / "x.parquet", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    where = f"error: input {tmp_path / 'x.parquet'} cannot be read as Parquet (reading its rows from row 1): "
    assert err.startswith(where) and "the file is damaged or was not written whole" in err, err
    assert err.count("\n") == 1, err  # (one line: pyarrow's words ran over three)
    assert not (tmp_path / "y.csv").exists()


def test_an_npz_array_that_is_none_of_the_models_inputs_is_refused_before_any_row_is_read(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # read as rows are, each array is a stream held open: a file of thousands of members (ids, labels) held
    # thousands, and predict_many refused them only after the first chunk was read
    arrays = {f"id{i}": np.arange(3) for i in range(2000)}
    np.savez_compressed(tmp_path / "x.npz", x=np.ones((3, 4), np.float32), **arrays)  # type: ignore[arg-type]
    assert _score(scale_file, tmp_path / "x.npz", tmp_path / "y.npy") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {tmp_path / 'x.npz'}: member 'id0.npy': array 'id0' is none of the ")
    assert "inputs (x: tensor(float) [batch, 4])" in err and "predict_many" not in err, err


def test_an_npz_holding_an_array_twice_is_refused_not_scored_on_either(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # np.load took the last of two members of one name without a word: which rows were scored depended on
    # the order a tool appended them in
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as archive, pytest.warns(UserWarning, match="Duplicate name"):
        for value in (1, 2):
            member = io.BytesIO()
            np.lib.format.write_array(member, np.full((3, 4), value, np.float32))
            archive.writestr("x.npy", member.getvalue())
    assert _score(scale_file, tmp_path / "x.npz", tmp_path / "y.npy") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {tmp_path / 'x.npz'}: member 'x.npy' is in the archive twice"), err
    assert not (tmp_path / "y.npy").exists()


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_npy_and_npz_answers_are_spooled_to_disk_not_held_until_the_end(
    tmp_path: Path, scale_file: Path, suffix: str
) -> None:
    # collected in memory and joined at the end, the answers of a large input (a .npy memory-mapped, a .npz read
    # chunk by chunk) were held whole, twice over at the join: a 40 GB input ran out of memory at its end
    pytest.importorskip("pyarrow")
    x = np.tile(np.arange(4, dtype=np.float32), (160_000, 1))
    np.save(tmp_path / "x.npy", x)
    for warm in ("warm.npy", "warm.parquet"):  # (the imports of a first run)
        _peak_bytes(scale_file, tmp_path / "x.npy", tmp_path / warm)
    streamed = _peak_bytes("--batch-rows", "4096", scale_file, tmp_path / "x.npy", tmp_path / "y.parquet")
    collected = _peak_bytes("--batch-rows", "4096", scale_file, tmp_path / "x.npy", tmp_path / f"y{suffix}")
    assert collected < streamed + x.nbytes / 4, f"{collected:,} bytes at the peak ({streamed:,} for Parquet)"
    answers = np.load(tmp_path / "y.npy") if suffix == ".npy" else np.load(tmp_path / "y.npz")["y"]
    np.testing.assert_array_equal(answers, x * 2)
    assert not [path.name for path in tmp_path.iterdir() if path.name.startswith(".")], "a spool file was left"


def test_an_npz_member_whose_rows_the_model_cannot_take_is_refused_by_its_header(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a chunk is read before predict_many checks it: a header declaring rows of a GB each (a damaged or hostile
    # file, zeros that compress a thousandfold) had 16 rows read, 16 GB, before the model's [batch, 4] refused them
    header = np.lib.format.header_data_from_array_1_0(np.zeros((1, 4), np.float32))
    header["shape"] = (300, 250_000_000)
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, header)
    data = member.getvalue() + bytes(1 << 16)
    _zip64_member(tmp_path / "x.npz", "x.npy", data, declared_size=len(member.getvalue()) + 300 * 10**9)
    assert _score(scale_file, tmp_path / "x.npz", tmp_path / "y.npz") == 1
    err = capsys.readouterr().err
    assert err.startswith(
        f"error: input {tmp_path / 'x.npz'}: member 'x.npy' holds rows of shape (250000000,), where input 'x' "
        "takes rows of shape (4,)"
    ), err
