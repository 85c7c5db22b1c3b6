"""``python -m inprocserve score``: the file formats' edge cases (quoting, byte order marks, blank lines,
empty inputs, float64 digits, hostile .npz headers, fsync around the rename), each with real models and CLI runs."""

from __future__ import annotations

import csv
import io
import os
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from inprocserve.__main__ import main
from inprocserve.testing import build_add_model, build_scale_model, save_model

from .test_scoring_fixed_rows import build_fixed_rows_model


@pytest.fixture
def scale_file(tmp_path: Path) -> Path:
    return save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)


def _save(model: object, tmp_path: Path, name: str) -> Path:
    model.ir_version = 8  # type: ignore[attr-defined]
    return save_model(model, tmp_path / "models", name, 1)


def _label_model(tmp_path: Path, labels: list[str]) -> Path:
    """x (float, one per row) -> label (string): labels[int(x)]."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["xi"], to=TensorProto.INT64),
            helper.make_node(
                "LabelEncoder",
                ["xi"],
                ["label"],
                domain="ai.onnx.ml",
                keys_int64s=list(range(len(labels))),
                values_strings=labels,
            ),
        ],
        "labels",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor_value_info("label", TensorProto.STRING, ["batch"])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 2)], ir_version=9
    )
    return _save(model, tmp_path, "labels")


def _identity_model(tmp_path: Path, element: int, shape: list[str | int]) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", element, shape)],
        [helper.make_tensor_value_info("y", element, shape)],
    )
    return _save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), tmp_path, "identity"
    )


def _score(*args: Path | str) -> int:
    return main(["score", "--quiet", *(str(arg) for arg in args)])


def write_npy_bytes(folder: Path, data: bytes, suffix: str) -> Path:
    """``data``, the bytes of a hand-made (damaged) ``.npy``, written as ``x.npy``, or as the member ``x.npy`` of
    ``x.npz`` when ``suffix`` is ``".npz"``; returns the file's path."""
    path = folder / f"x{suffix}"
    if suffix == ".npy":
        path.write_bytes(data)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", data)
    return path


# -- 1. CSV output quotes what needs quoting ------------------------------------------------------------------


def test_csv_string_answers_with_commas_quotes_and_line_breaks_stay_one_field(tmp_path: Path) -> None:
    labels = ["fraud, likely", 'say "hi"', "two\nlines", "carriage\rreturn", "plain"]
    model = _label_model(tmp_path, labels)
    (tmp_path / "x.csv").write_text("".join(f"{i}\n" for i in range(len(labels))))
    assert _score(model, tmp_path / "x.csv", tmp_path / "y.csv") == 0
    with (tmp_path / "y.csv").open(newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    assert rows == [["label_0"], *([label] for label in labels)]


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_string_answers_in_npy_and_npz_are_text_arrays_not_pickles(tmp_path: Path, suffix: str) -> None:
    # onnxruntime answers strings as an object array: np.savez pickled it (readable only with allow_pickle=True)
    # and np.save refused it, after every row had been scored
    labels = ["fraud", "ok", "ok, but late"]
    model = _label_model(tmp_path, labels)
    np.save(tmp_path / "x.npy", np.array([0, 1, 2, 1], np.float32))
    assert _score(model, tmp_path / "x.npy", tmp_path / f"y{suffix}") == 0
    loaded = np.load(tmp_path / f"y{suffix}", allow_pickle=False)
    answers = loaded if suffix == ".npy" else loaded["label"]
    assert answers.dtype.kind == "U" and answers.tolist() == ["fraud", "ok", "ok, but late", "ok"]


def test_a_csv_with_every_field_quoted_is_read(tmp_path: Path, scale_file: Path) -> None:
    # csv.QUOTE_ALL, pandas' to_csv(quoting=csv.QUOTE_ALL) and database exports quote numbers too
    x = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
    with (tmp_path / "x.csv").open("w", newline="") as file:
        writer = csv.writer(file, quoting=csv.QUOTE_ALL)
        writer.writerow(["a", "b", "c", "d"])
        writer.writerows(x.tolist())
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.npy") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2)


# -- 2. a byte order mark is not a header ---------------------------------------------------------------------


def test_csv_with_a_byte_order_mark_and_no_header_keeps_its_first_row(
    tmp_path: Path, scale_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = "".join(f"{i},{i},{i},{i}\n" for i in range(1, 6))
    (tmp_path / "x.csv").write_bytes(b"\xef\xbb\xbf" + rows.encode())  # what Excel's "CSV UTF-8" writes
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["score", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]) == 0
    out = np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(out[:, 0], [2, 4, 6, 8, 10])
    assert "5/5 rows" in capsys.readouterr().err  # the row count for the bar skips the mark too


# -- 3. blank lines are skipped, however many -----------------------------------------------------------------


def test_a_run_of_blank_lines_longer_than_a_chunk_does_not_end_the_input(tmp_path: Path, scale_file: Path) -> None:
    # More blank lines than any chunk the command reads (a chunk is at most a few hundred rows).
    text = "a,b,c,d\n1,1,1,1\n" + "\n" * 3000 + "   \n" + "".join(f"{i},{i},{i},{i}\n" for i in range(2, 6))
    (tmp_path / "x.csv").write_text(text)
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 0
    out = np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(out[:, 0], [2, 4, 6, 8, 10])


def test_error_line_numbers_count_blank_lines_and_the_header(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.csv").write_text("a,b,c,d\n1,2,3,4\n\n\n\n5,6,seven,8\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert "line 6:" in err and "seven" in err  # the file's line, as an editor numbers it
    assert not (tmp_path / "y.csv").exists()


def test_a_line_with_another_number_of_columns_is_named(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines = "".join(f"{i},{i},{i},{i}\n" for i in range(40)) + "1,2,3\n" + "4,4,4,4\n"
    (tmp_path / "x.csv").write_text("a,b,c,d\n" + lines)
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert "line 42: 3 columns where the lines before have 4" in err


def test_a_csv_that_is_not_utf8_is_an_error_naming_the_file_and_line(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Saved by Excel as "CSV" in a Western locale (cp1252): a no-break space in a number, on line 251
    lines = ["a,b,c,d"] + [f"{i},{i},{i},{i}" for i in range(300)]
    lines[250] = "1,2,3,4\xa0"
    (tmp_path / "x.csv").write_bytes("\n".join(lines).encode("cp1252"))
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert f"input {tmp_path / 'x.csv'}, line 251: not UTF-8 text (byte 0xa0" in err
    assert "save the file as UTF-8" in err
    assert not (tmp_path / "y.csv").exists()


# -- 4. an empty input gives a valid empty output -------------------------------------------------------------


def test_an_empty_npy_gives_a_loadable_npy_and_npz_of_zero_rows(tmp_path: Path, scale_file: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((0, 4), np.float32))
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / "y.npy") == 0
    out = np.load(tmp_path / "y.npy")
    assert out.shape == (0, 4) and out.dtype == np.float32
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / "y.npz") == 0
    with np.load(tmp_path / "y.npz") as data:
        assert data.files == ["y"] and data["y"].shape == (0, 4) and data["y"].dtype == np.float32


def test_a_header_only_csv_gives_a_header_only_csv_and_an_empty_parquet(tmp_path: Path, scale_file: Path) -> None:
    (tmp_path / "x.csv").write_text("a,b,c,d\n\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 0
    assert (tmp_path / "y.csv").read_text() == "y_0,y_1,y_2,y_3\n"
    pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.parquet") == 0
    table = pq.read_table(tmp_path / "y.parquet")
    assert table.num_rows == 0 and table.column_names == ["y_0", "y_1", "y_2", "y_3"]
    assert all(field.type == pa.float32() for field in table.schema)
    assert not list(tmp_path.glob("*.partial"))


def test_an_empty_input_to_an_output_with_an_open_axis_gives_it_size_zero(tmp_path: Path) -> None:
    # Exported models often name or leave open an output axis past the rows ([batch, unk__3]): nothing sizes
    # it in an empty answer, which still loads, with the output's dtype and rank.
    model = _identity_model(tmp_path, TensorProto.FLOAT, ["batch", "k"])
    np.save(tmp_path / "x.npy", np.zeros((0, 3), np.float32))
    assert _score(model, tmp_path / "x.npy", tmp_path / "y.npy") == 0
    empty = np.load(tmp_path / "y.npy")
    assert (empty.shape, empty.dtype) == ((0, 0), np.float32)
    assert _score(model, tmp_path / "x.npy", tmp_path / "y.csv") == 0
    assert (tmp_path / "y.csv").read_text() == "\n"  # a header of no columns: the output has none to name


# -- 5. float64 digits, 0-d and hostile .npz members, fsync ---------------------------------------------------


def test_float64_csv_answers_read_back_exactly(tmp_path: Path) -> None:
    model = _identity_model(tmp_path, TensorProto.DOUBLE, ["batch", 1])
    x = np.array([[1234567.891234567], [0.1234567890123], [1 / 3]])
    np.save(tmp_path / "x.npy", x)
    assert _score(model, tmp_path / "x.npy", tmp_path / "y.csv") == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1, ndmin=2), x)


def test_a_zero_dimensional_npz_array_is_a_clear_error(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "x.npz", x=np.float32(1))
    assert _score(scale_file, tmp_path / "x.npz", tmp_path / "y.npz") == 1
    err = capsys.readouterr().err
    assert err.startswith("error:") and "'x' is a single value" in err and "reshape" in err


@pytest.mark.parametrize(
    ("arrays", "problem"),
    [
        ({}, "holds no arrays; save one per input, e.g. np.savez(path, x=x)"),
        (
            {"a": np.ones((3, 3), np.float32), "b": np.ones((4, 3), np.float32)},
            "its arrays must have the same number of rows (one per input row): 'a' has 3, 'b' has 4",
        ),
    ],
)
def test_an_npz_without_arrays_or_with_arrays_of_different_rows_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arrays: dict[str, np.ndarray], problem: str
) -> None:
    model = save_model(build_add_model(), tmp_path / "models", "add", 1)
    np.savez(tmp_path / "x.npz", **arrays)  # type: ignore[arg-type]
    assert _score(model, tmp_path / "x.npz", tmp_path / "y.npz") == 1
    assert capsys.readouterr().err == f"error: input {tmp_path / 'x.npz'}: {problem}\n".replace(": holds", " holds")


def test_an_npz_member_claiming_a_huge_shape_is_refused_before_loading(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    member = io.BytesIO()
    np.lib.format.write_array_header_1_0(member, {"descr": "<f4", "fortran_order": False, "shape": (2**50, 4)})
    member.write(b"\0" * 64)
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as archive:
        archive.writestr("x.npy", member.getvalue())
    assert _score(scale_file, tmp_path / "x.npz", tmp_path / "y.npz") == 1  # no MemoryError
    err = capsys.readouterr().err
    assert err.startswith("error:") and "claims shape" in err and "truncated or corrupt" in err


def test_a_file_that_is_not_numpy_is_refused_without_advice_to_unpickle_it(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.npy").write_text("1,2,3,4\n5,6,7,8\n")  # a CSV saved under the wrong name
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / "y.npy") == 1
    err = capsys.readouterr().err
    assert f"input {tmp_path / 'x.npy'}: not a .npy or .npz file (it starts with b'1,2,3,4\\n')" in err
    assert "allow_pickle" not in err and "unsafely" not in err


def test_a_valid_compressed_npz_still_scores(tmp_path: Path, scale_file: Path) -> None:
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.savez_compressed(tmp_path / "x.npz", x=x)  # the header check reads compressed members too
    assert _score(scale_file, tmp_path / "x.npz", tmp_path / "y.npz") == 0
    with np.load(tmp_path / "y.npz") as data:
        np.testing.assert_array_equal(data["y"], x * 2)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".parquet"])
def test_the_output_is_fsynced_before_it_replaces_output(
    tmp_path: Path, scale_file: Path, monkeypatch: pytest.MonkeyPatch, suffix: str
) -> None:
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    synced: list[int] = []  # inode numbers of the files fsynced
    replaced: list[tuple[str, bool]] = []  # (source name, whether it was fsynced first)
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fsync(fd)

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        replaced.append((os.path.basename(source), os.stat(source).st_ino in synced))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    np.save(tmp_path / "x.npy", np.ones((5, 4), np.float32))
    assert _score(scale_file, tmp_path / "x.npy", tmp_path / f"y{suffix}") == 0
    assert len(replaced) == 1 and replaced[0][0].endswith(".partial")
    assert replaced[0][1], "the temporary output was not fsynced before it replaced OUTPUT"
    # and the folder after the rename, so the new name itself survives a crash
    assert synced[-1] == (tmp_path).stat().st_ino, "the output's folder was not fsynced after the rename"


@pytest.mark.parametrize("first", ["1,NA,3,4", "NA,NA,NA,NA", "1,2,3,null", "1,2,#N/A,4", "#DIV/0!,1,2,3"])
def test_a_first_line_of_numbers_and_missing_markers_is_data_not_a_header(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], first: str
) -> None:
    (tmp_path / "x.csv").write_text(f"{first}\n2,3,4,5\n4,5,6,7\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1  # a loud error, not a row dropped
    err = capsys.readouterr().err
    assert (
        "line 1:" in err
        and "a first line is a header only when a field of it is a name, neither a number nor a missing-value marker"
        in err
    )


@pytest.mark.parametrize(
    "first", ["0.5,1.2.5,3,4", "0.5,1.25,3,4O", "0.5,1.25,3,4kg", "0.5,1.25,3,4\x00", "-1,+2,.5,5-"]
)
def test_a_first_line_with_a_malformed_number_is_a_bad_line_not_a_header(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], first: str
) -> None:
    # a field that was no number was taken for a column's name: the first row was dropped without a word
    # (exit 0), every answer a row off, while the same line anywhere else was an error naming it
    (tmp_path / "x.csv").write_text(f"{first}\n5,6,7,8\n9,10,11,12\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert f"input {tmp_path / 'x.csv'}, line 1:" in err and "not names" in err
    assert not (tmp_path / "y.csv").exists()


@pytest.mark.parametrize(
    "header",
    ['"amount", age ,x3,n', "id,0,1,2", "country,2019,2020,2021", "x_0,x_1,x_2,x_3", "_id,1st,2nd,3rd", "é,b,c,d"],
)
def test_a_header_with_a_name_is_skipped(tmp_path: Path, scale_file: Path, header: str) -> None:
    (tmp_path / "x.csv").write_text(f"{header}\n2,3,4,5\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1), [4, 6, 8, 10])


@pytest.mark.parametrize("header", ["a,b,c", "a,b,c,d,e", '"a,b",c,d,e,f'])
def test_a_header_naming_another_number_of_columns_than_the_rows_hold_is_an_error(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], header: str
) -> None:
    # a column missing from the header (or the rows) was skipped without a word: every column was then
    # read under its neighbour's name by whoever reads the file with its header
    (tmp_path / "x.csv").write_text(f"{header}\n\n2,3,4,5\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert "the header (line 1) names" in err and "line 3 holds 4" in err
    assert not (tmp_path / "y.csv").exists()


@pytest.mark.parametrize("header", ['"a,b",c,d,e', "a,b,c,d,", "a,b,c,d,,"])
def test_a_header_counts_its_columns_as_csv_reads_them(tmp_path: Path, scale_file: Path, header: str) -> None:
    # a quoted name may hold a comma; a spreadsheet's trailing separators name no column
    (tmp_path / "x.csv").write_text(f"{header}\n2,3,4,5\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 0
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1), [4, 6, 8, 10])


@pytest.mark.parametrize(("line", "number"), [("#5,6,7,8", 3), ("5,6,7,8 # checked", 3), ("#0,1,2,3", 1)])
def test_a_csv_line_with_a_hash_is_an_error_not_a_comment(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], line: str, number: int
) -> None:
    # numpy's loadtxt takes '#' for a comment by default: the line was dropped (or cut short) without a word,
    # and every output row after it answered another input row
    lines = ["1,2,3,4", "2,3,4,5", "4,5,6,7"]
    lines.insert(number - 1, line)  # (a first line starting with '#' is no header either)
    (tmp_path / "x.csv").write_text("\n".join(lines) + "\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    assert f"line {number}:" in capsys.readouterr().err
    assert not (tmp_path / "y.csv").exists()


def test_a_null_in_a_parquet_column_is_an_error_naming_it(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # to_numpy() makes a null NaN, which was scored as a value; CSV refuses its missing markers (NA, null)
    pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [1.0, 2.0, 3.0] for name in "abc"}
    columns["d"] = [1, None, 3]  # an int64 column with a null
    pq.write_table(pa.table(columns), tmp_path / "x.parquet")
    assert _score(scale_file, tmp_path / "x.parquet", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert "column 'd' has a null (missing value) at row 2" in err and "Traceback" not in err
    assert not (tmp_path / "y.csv").exists()


@pytest.mark.parametrize(("values", "kind"), [(["1.5", "2", "3"], "string"), ([[1.0], [2.0], [3.0]], "list<")])
def test_a_parquet_column_that_is_not_numbers_is_an_error_naming_it(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], values: list[object], kind: str
) -> None:
    # numpy's cast of the whole batch said "Cannot cast array data from dtype('O') to dtype('float32')"
    pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns: dict[str, list[object]] = {name: [1.0, 2.0, 3.0] for name in "abc"}
    columns["amount"] = values
    pq.write_table(pa.table(columns), tmp_path / "x.parquet")
    assert _score(scale_file, tmp_path / "x.parquet", tmp_path / "y.csv") == 1
    err = capsys.readouterr().err
    assert f"input {tmp_path / 'x.parquet'}: column 'amount' holds {kind}" in err and "not numbers" in err
    assert not (tmp_path / "y.csv").exists()


@pytest.mark.parametrize(
    ("text", "line"), [("1,2,3,4\n5,6,7,8\n1,2,3,-1e39\n", 3), ("a,b,c,d\n1,2,3,4\n1e39,2,3,4\n", 3)]
)
def test_a_csv_number_beyond_float32_is_an_error_naming_its_line_not_infinity(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], text: str, line: int
) -> None:
    # numpy parsed it straight into float32, which made it infinity: "inf" answers and exit 0, where the same
    # value in a .npy file is refused
    (tmp_path / "x.csv").write_text(text)
    assert (
        main(
            ["score", "--quiet", "--batch-rows", "2", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]
        )
        == 1
    )
    err = capsys.readouterr().err
    assert f"input {tmp_path / 'x.csv'}, line {line}, column " in err
    assert "beyond what float32 holds" in err and "it would be scored as infinity" in err
    assert not (tmp_path / "y.csv").exists()
    # infinity and NaN written as such are values, as in a .npy file
    (tmp_path / "x.csv").write_text("1,2,inf,nan\n3.4e38,-3.4e38,0,1\n")
    assert _score(scale_file, tmp_path / "x.csv", tmp_path / "y.csv") == 0
    answers = np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1)
    assert np.isinf(answers[0, 2]) and np.isnan(answers[0, 3]) and np.isinf(answers[1, 0])  # (2 * 3.4e38)


def test_a_parquet_number_beyond_float32_is_an_error_naming_its_column_and_row_not_infinity(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {name: [1.0, 2.0, 3.0] for name in "abc"}
    columns["d"] = [1.0, 2.0, 1e39]
    pq.write_table(pa.table(columns), tmp_path / "x.parquet")
    args = [
        "score",
        "--quiet",
        "--batch-rows",
        "2",
        str(scale_file),
        str(tmp_path / "x.parquet"),
        str(tmp_path / "y.csv"),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "column 'd', row 3: 1e+39 is beyond what float32 holds" in err and "it would be scored as infinity" in err
    assert not (tmp_path / "y.csv").exists()


def test_a_parquet_integer_beyond_an_int32_input_is_an_error_naming_its_column_and_row_not_wrapped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # numpy's cast of the matrix wrapped 5000000000 around to 705032704, scored with exit 0
    pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow as pa
    import pyarrow.parquet as pq

    model = _identity_model(tmp_path, TensorProto.INT32, ["batch", 2])
    pq.write_table(pa.table({"a": [1, 2, 3], "b": [3, 4, 5_000_000_000]}), tmp_path / "x.parquet")
    args = ["score", "--quiet", "--batch-rows", "2", str(model), str(tmp_path / "x.parquet"), str(tmp_path / "y.csv")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "column 'b' holds 5000000000 at row 3, which int32 does not hold" in err
    assert not (tmp_path / "y.csv").exists()


def test_a_model_without_a_batch_axis_in_its_answers_is_refused_with_a_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from inprocserve.testing import build_sum_model

    model = save_model(build_sum_model(features=4), tmp_path / "models", "sum", 1)  # one total for all rows
    np.save(tmp_path / "x.npy", np.ones((3, 4), np.float32))
    assert _score(model, tmp_path / "x.npy", tmp_path / "y.npy") == 1  # (a TypeError traceback)
    err = capsys.readouterr().err
    assert err.startswith("error:") and "without a batch axis" in err and "Traceback" not in err
    assert not (tmp_path / "y.npy").exists()


def test_a_model_with_a_fixed_batch_of_one_scores_a_one_row_file(tmp_path: Path) -> None:
    # its output's first axis is fixed, but it is the input's: one output row per input row
    model = _identity_model(tmp_path, TensorProto.FLOAT, [1, 4])
    np.save(tmp_path / "x.npy", np.arange(4, dtype=np.float32).reshape(1, 4))
    assert _score(model, tmp_path / "x.npy", tmp_path / "y.npy") == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), [[0, 1, 2, 3]])


@pytest.mark.parametrize("name", ["file", "allow_pickle"])
def test_an_output_named_like_an_argument_of_savez_is_written_to_the_npz(tmp_path: Path, name: str) -> None:
    # np.savez(file, **answers) took such an output for its argument: "file" failed with a TypeError after
    # every row was scored, "allow_pickle" was left out of the file and the command exited 0
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], [name]), helper.make_node("Neg", ["x"], ["y"])],
        "outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["batch", 2]) for out in (name, "y")],
    )
    model = _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path, "m")
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.save(tmp_path / "x.npy", x)
    assert _score(model, tmp_path / "x.npy", tmp_path / "y.npz") == 0
    with np.load(tmp_path / "y.npz", allow_pickle=False) as answers:
        assert sorted(answers.files) == sorted([name, "y"])
        np.testing.assert_array_equal(answers[name], x)
        np.testing.assert_array_equal(answers["y"], -x)


def test_a_csv_whose_lines_change_width_between_blocks_is_refused_for_an_open_feature_axis(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # read a block at a time, each block was checked only against itself: two exports joined, the second with a
    # column more, were scored each at its own width (a model answering a sum per row exited 0; this one broke
    # the CSV writer with a traceback). A change at line 4097 falls between blocks of any power of two rows.
    model = _identity_model(tmp_path, TensorProto.FLOAT, ["batch", "features"])
    (tmp_path / "x.csv").write_text("1,2\n" * 4096 + "1,2,3\n" * 4096)
    assert _score(model, tmp_path / "x.csv", tmp_path / "y.csv") == 1
    assert "x.csv, line 4097: 3 columns where the lines before have 2" in capsys.readouterr().err
    assert not (tmp_path / "y.csv").exists()


def test_a_csv_whose_lines_end_in_a_carriage_return_alone_has_all_its_rows_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Excel for Mac's "CSV (Macintosh)": the rows, read right, were counted as one line, and a model taking 4
    # rows per run refused the file ("1 rows are not a multiple of 4"); the progress bar showed 8/1
    model = _save(build_fixed_rows_model(4), tmp_path, "four")
    x = np.arange(32, dtype=np.float32).reshape(8, 4)
    (tmp_path / "x.csv").write_text("".join(",".join(f"{v:g}" for v in row) + "\r" for row in x), newline="")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["score", str(model), str(tmp_path / "x.csv"), str(tmp_path / "y.npz")]) == 0
    assert "100.0% 8/8 rows" in capsys.readouterr().err
    with np.load(tmp_path / "y.npz") as answers:
        np.testing.assert_array_equal(answers["y"], x * x)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_npy_header_over_numpys_size_limit_is_refused_without_advice_to_unpickle(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str], suffix: str
) -> None:
    # numpy's refusal went out as it is: "fully trust the .npy file using allow_pickle=True", advice to load a
    # hostile file unsafely, which the command cannot even do
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }" + " " * 100_000 + "\n"
    data = b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode() + bytes(48)
    assert _score(scale_file, write_npy_bytes(tmp_path, data, suffix), tmp_path / "y.npy") == 1
    err = capsys.readouterr().err
    assert "header is larger than numpy reads safely" in err and "allow_pickle" not in err
    assert not (tmp_path / "y.npy").exists()
