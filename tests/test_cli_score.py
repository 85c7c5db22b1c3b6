"""``python -m inprocserve score MODEL INPUT OUTPUT`` on .npy, .npz, CSV and Parquet files."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import pytest

from inprocserve.__main__ import main
from inprocserve.testing import build_add_model, build_gather_model, build_mlp_model, build_scale_model, save_model

from .conftest import run_python
from .interruptible import STOPPED_WHILE_ONNXRUNTIME_LOADS, interruptible, signal_dropped_as_it_loads
from .test_repository_isolation import _without_file_access_override
from .toolkit_models import CLASSES, build_string_label_classifier


def _x(rows: int = 150) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, 4)).astype(np.float32)


@pytest.fixture
def scale_file(tmp_path: Path) -> Path:
    return save_model(build_scale_model(2.0), tmp_path / "models", "scale", 1)


def _no_leftovers(folder: Path) -> None:
    assert not list(folder.glob("*.partial")), "a temporary output file was left behind"


def test_npy_in_npy_out(tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    x = _x()
    np.save(tmp_path / "x.npy", x)
    assert main(["score", str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), x * 2)
    assert "scored 150 rows" in capsys.readouterr().err
    _no_leftovers(tmp_path)


def test_an_npz_zipped_by_an_unknown_zip_version_is_one_error_line(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a damaged archive: zipfile's NotImplementedError (and EOFError, for a member cut short) went out as a
    # traceback instead of the command's error line
    np.savez(tmp_path / "x.npz", x=_x())
    data = bytearray((tmp_path / "x.npz").read_bytes())
    entry = data.index(b"PK\x01\x02")  # the member's central directory entry
    data[entry + 6] = 210  # "version needed to extract": 21.0
    (tmp_path / "x.npz").write_bytes(bytes(data))
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.npz"), str(tmp_path / "y.npy")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: input {tmp_path / 'x.npz'} cannot be read as .npz") and "zip file version" in err
    assert not (tmp_path / "y.npy").exists()


def test_npz_maps_inputs_and_outputs_by_name(tmp_path: Path) -> None:
    save_model(build_add_model(), tmp_path / "models", "add", 1)
    a = _x(70)[:, :3]
    np.savez(tmp_path / "in.npz", a=a, b=a + 1, n=np.arange(70, dtype=np.int64).reshape(70, 1))
    # A repository with one model: the model is found by itself; a version folder works too.
    assert (
        main(["score", "--quiet", str(tmp_path / "models"), str(tmp_path / "in.npz"), str(tmp_path / "out.npz")]) == 0
    )
    with np.load(tmp_path / "out.npz") as out:
        assert sorted(out.files) == ["count", "total"]
        np.testing.assert_array_equal(out["total"], a + (a + 1))
        np.testing.assert_array_equal(out["count"].ravel(), np.arange(70) * 2)


@pytest.mark.parametrize("header", [True, False])
def test_csv_in_csv_out(tmp_path: Path, scale_file: Path, header: bool) -> None:
    x = _x(130)
    np.savetxt(tmp_path / "x.csv", x, delimiter=",", header="a,b,c,d" if header else "", comments="", fmt="%.9g")
    if not header:  # numpy writes an empty first line for an empty header
        (tmp_path / "x.csv").write_text((tmp_path / "x.csv").read_text().lstrip("\n"))
    args = ["score", "--quiet", "--batch-rows", "32", str(scale_file.parent), str(tmp_path / "x.csv")]
    assert main([*args, str(tmp_path / "y.csv")]) == 0
    lines = (tmp_path / "y.csv").read_text().splitlines()
    assert lines[0] == "y_0,y_1,y_2,y_3"
    np.testing.assert_array_equal(np.loadtxt(tmp_path / "y.csv", delimiter=",", skiprows=1, dtype=np.float32), x * 2)


def test_csv_column_for_a_one_dimensional_input(tmp_path: Path) -> None:
    path = save_model(build_gather_model(table_rows=10, width=2), tmp_path / "models", "gather", 1)
    (tmp_path / "index.csv").write_text("index\n3\n0\n9\n")
    assert main(["score", "--quiet", str(path), str(tmp_path / "index.csv"), str(tmp_path / "rows.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "rows.npy"), [[6, 7], [0, 1], [18, 19]])


def test_a_bad_row_fails_and_leaves_no_output(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "x.csv").write_text("1,2,3,4\n5,6,seven,8\n")
    (tmp_path / "y.csv").write_text("previous answers\n")
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]) == 1
    err = capsys.readouterr().err
    assert "line 2:" in err and "seven" in err and "each a number" in err
    assert (tmp_path / "y.csv").read_text() == "previous answers\n"  # untouched
    _no_leftovers(tmp_path)


def test_clear_errors_for_what_cannot_be_scored(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", _x())
    # 2: it could not run (the top-level help's meaning)
    assert main(["score", str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.txt")]) == 2
    assert "unknown format '.txt'" in capsys.readouterr().err
    assert main(["score", str(scale_file), str(tmp_path / "missing.npy"), str(tmp_path / "y.npy")]) == 2
    assert "missing.npy does not exist" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "nowhere"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]) == 2
    assert "MODEL" in capsys.readouterr().err
    # OUTPUT's folder missing (a typo): found only after the model loaded, and reported as a failure to score (1)
    assert main(["score", str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "typo" / "y.npy")]) == 2
    assert f"OUTPUT's folder {tmp_path / 'typo'} does not exist; create it first" in capsys.readouterr().err
    np.save(tmp_path / "narrow.npy", _x()[:, :3])
    assert main(["score", str(scale_file), str(tmp_path / "narrow.npy"), str(tmp_path / "y.npy")]) == 1
    assert "expected size 4 on axis 1" in capsys.readouterr().err
    save_model(build_add_model(), tmp_path / "models", "add", 1)
    (tmp_path / "x.csv").write_text("1,2,3\n")
    add = tmp_path / "models" / "add" / "1"
    assert main(["score", str(add), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]) == 1
    assert "no column for the model's input a: tensor(float) [batch, 3]" in capsys.readouterr().err
    assert main(["score", str(tmp_path / "models"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]) == 1
    assert "pick one with --name" in capsys.readouterr().err
    assert (
        main(
            [
                "score",
                "--quiet",
                "--name",
                "scale",
                str(tmp_path / "models"),
                str(tmp_path / "x.npy"),
                str(tmp_path / "y.npy"),
            ]
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _x() * 2)
    _no_leftovers(tmp_path)


def test_parquet_round_trip(tmp_path: Path, scale_file: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    import pyarrow.parquet as pq

    x = _x(90)
    pq.write_table(pa.table({f"f{i}": x[:, i] for i in range(4)}), tmp_path / "x.parquet")
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.parquet"), str(tmp_path / "y.parquet")]) == 0
    table = pq.read_table(tmp_path / "y.parquet")
    assert table.column_names == ["y_0", "y_1", "y_2", "y_3"]
    np.testing.assert_array_equal(np.column_stack([table[name].to_numpy() for name in table.column_names]), x * 2)


def test_parquet_without_pyarrow_names_the_package(
    tmp_path: Path, scale_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # makes `import pyarrow` fail as if it were not installed
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    np.save(tmp_path / "x.npy", _x())
    assert main(["score", str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.parquet")]) == 1
    assert "pip install pyarrow" in capsys.readouterr().err
    _no_leftovers(tmp_path)


def test_parquet_with_a_pyarrow_that_cannot_load_says_why_not_to_install_it(
    tmp_path: Path, scale_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # What pip leaves beside numpy 1.x for pyarrow>=14: the newest pyarrow, whose import refuses that numpy.
    # "pip install pyarrow" would only answer that it is already installed.
    broken = tmp_path / "site" / "pyarrow"
    broken.mkdir(parents=True)
    (broken / "__init__.py").write_text('raise ImportError("pyarrow requires NumPy 2.0 or newer, found 1.24.2")\n')
    for name in [name for name in sys.modules if name == "pyarrow" or name.startswith("pyarrow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    np.save(tmp_path / "x.npy", _x())
    assert main(["score", str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.parquet")]) == 1
    error = capsys.readouterr().err
    assert "installed but cannot be imported: pyarrow requires NumPy 2.0 or newer, found 1.24.2" in error
    assert "pip install pyarrow" not in error
    assert not (tmp_path / "y.parquet").exists()


def test_the_module_entry_point(tmp_path: Path, scale_file: Path) -> None:
    x = _x(300)
    np.save(tmp_path / "x.npy", x)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inprocserve",
            "score",
            str(scale_file),
            str(tmp_path / "x.npy"),
            str(tmp_path / "y.npz"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "scored 300 rows" in result.stderr and "\r" not in result.stderr  # no bar when stderr is not a terminal
    with np.load(tmp_path / "y.npz") as out:
        np.testing.assert_array_equal(out["y"], x * 2)


# (SIGHUP: an ssh session dropped or a terminal closed; not on Windows)
_STOPS = [(signal.SIGTERM, 143), (signal.SIGINT, 130), *([(signal.SIGHUP, 129)] if hasattr(signal, "SIGHUP") else [])]


def _stoppable() -> None:
    """``preexec_fn``: Ctrl-C's signal as a terminal gives it, and a hangup's default action (a test run under
    ``nohup`` ignores SIGHUP, and its children with it)."""
    interruptible()
    if hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


@pytest.mark.parametrize(("stop", "status"), _STOPS)
def test_a_run_stopped_by_a_signal_leaves_no_partial_file(tmp_path: Path, stop: signal.Signals, status: int) -> None:
    # a cron line's `timeout`, `docker stop` or Ctrl-C while a large file is being scored into a CSV
    model = save_model(build_mlp_model((16, 512, 512, 2)), tmp_path / "models", "mlp", 1)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((400_000, 16)).astype(np.float32))
    command = [
        sys.executable,
        "-m",
        "inprocserve",
        "score",
        str(model),
        str(tmp_path / "x.npy"),
        str(tmp_path / "y.csv"),
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, preexec_fn=_stoppable)
    try:
        deadline = time.monotonic() + 60
        while not list(tmp_path.glob("*.partial")):  # answers are being written
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before it could be stopped"
            time.sleep(0.01)
        process.send_signal(stop)
        _, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == status
    assert err.strip().splitlines() == [
        f"error: stopped by {stop.name} before every row was scored; {tmp_path / 'y.csv'} was not written"
    ]
    assert not (tmp_path / "y.csv").exists()
    _no_leftovers(tmp_path)


def _run_stopped(
    script: str, stop: signal.Signals, status: int, model: Path, output: Path
) -> subprocess.CompletedProcess[str]:
    """Score x.npy (beside ``output``) into ``output`` with ``script`` (a program that runs the command and
    stops it with ``stop`` somewhere); check that it said it was stopped, exited ``status`` and left nothing."""
    np.save(output.parent / "x.npy", _x())
    command = [sys.executable, "-c", script, str(int(stop)), "score", str(model)]
    result = subprocess.run(
        [*command, str(output.parent / "x.npy"), str(output)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=_stoppable,
    )
    assert (result.returncode, result.stderr.strip().splitlines()[-1:]) == (
        status,
        [f"error: stopped by {stop.name} before every row was scored; {output} was not written"],
    )
    assert not output.exists()
    _no_leftovers(output.parent)
    return result


_STOPPED_WHILE_ONNXRUNTIME_LOADS = STOPPED_WHILE_ONNXRUNTIME_LOADS


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_run_stopped_while_onnxruntime_loads_says_it_was_stopped(
    tmp_path: Path, scale_file: Path, stop: signal.Signals, status: int
) -> None:
    # onnxruntime's module init turns the signal's exception into "ImportError: initialization failed": the
    # command said "cannot load" the model, exit 1 (a cron job alerting on a model that is fine)
    _run_stopped(_STOPPED_WHILE_ONNXRUNTIME_LOADS, stop, status, scale_file, tmp_path / "y.npy")


# Runs the command with the signal sent the moment the temporary output file exists, as a busy machine's
# scheduler may leave the process right after it makes the file (a stop then came before the command held the
# writer that removes it: the file was left, in one CI run of the test above).
_STOPPED_AS_THE_OUTPUT_FILE_IS_MADE = """
import os, pathlib, runpy, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # (see tests/interruptible.py)
signal_number = int(sys.argv.pop(1))
touch = pathlib.Path.touch
def touch_then_stop(self, *args, **kwargs):
    touch(self, *args, **kwargs)
    if self.name.endswith(".partial"):
        os.kill(os.getpid(), signal_number)
pathlib.Path.touch = touch_then_stop
runpy.run_module("inprocserve", run_name="__main__")
"""


@pytest.mark.parametrize(("stop", "status"), _STOPS)
def test_a_run_stopped_as_its_output_file_is_made_leaves_no_partial_file(
    tmp_path: Path, scale_file: Path, stop: signal.Signals, status: int
) -> None:
    _run_stopped(_STOPPED_AS_THE_OUTPUT_FILE_IS_MADE, stop, status, scale_file, tmp_path / "y.csv")


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_a_hangup_under_nohup_leaves_the_run_going(tmp_path: Path, scale_file: Path) -> None:
    # nohup ignores SIGHUP so that a run outlives the session: the command must not take it up again
    np.save(tmp_path / "x.npy", _x())
    command = [sys.executable, "-c", _STOPPED_AS_THE_OUTPUT_FILE_IS_MADE, str(int(signal.SIGHUP)), "score", "--quiet"]
    result = subprocess.run(
        [*command, str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, signal.SIG_IGN),
    )
    assert result.returncode == 0, result.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _x() * 2)


_SIGNAL_DROPPED_AS_THE_MODEL_LOADS = signal_dropped_as_it_loads("inprocserve._scoring_io", "_loaded")


@pytest.mark.parametrize(("stop", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_stop_whose_exception_python_dropped_still_stops_the_run(
    tmp_path: Path, scale_file: Path, stop: signal.Signals, status: int
) -> None:
    # the run went on to the end and exited 0, OUTPUT written; after a SIGTERM lost so, every later one was
    # ignored too (raised once), and only SIGKILL ended the run
    result = _run_stopped(_SIGNAL_DROPPED_AS_THE_MODEL_LOADS, stop, status, scale_file, tmp_path / "y.npy")
    # the finalizer's exception was dropped (the signal is raised in it): the command says so in its one line,
    # and Python's "Exception ignored in" with a traceback, which read as a crash, is not shown
    assert "Exception ignored in" not in result.stderr and "Traceback" not in result.stderr, result.stderr


@pytest.mark.skipif(sys.platform != "linux", reason="needs a folder even root cannot write to: Linux's /sys")
def test_an_output_folder_that_cannot_be_written_fails_before_any_row_is_scored(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Why the folder refuses: a sysfs mounted read-write refuses a new file to anyone (Permission denied); a
    # container's /sys is mounted read-only (Docker, Podman, Kubernetes), which refuses it first.
    causes = ["Permission denied"]
    if os.geteuid() == 0:
        folder = Path("/sys")
        causes.append("Read-only file system")
    else:
        folder = tmp_path / "read-only"
        folder.mkdir(mode=0o500)
    # the input's last line is bad: scoring every row first (a .npy is written at the end) reported it instead
    (tmp_path / "x.csv").write_text("".join(f"{i},{i},{i},{i}\n" for i in range(2000)) + "1,2,3,four\n")
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.csv"), str(folder / "y.npy")]) == 1
    err = capsys.readouterr().err
    assert err in [f"error: output {folder / 'y.npy'} cannot be written in {folder}: {cause}\n" for cause in causes]


@pytest.mark.parametrize("output", ["answers.npy", "answers"])
def test_an_output_that_is_a_folder_is_refused_before_any_row_is_scored(
    tmp_path: Path, scale_file: Path, output: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # every row was scored, then the rename onto the folder failed naming the hidden temporary file (exit 1)
    (tmp_path / output).mkdir()
    (tmp_path / "x.csv").write_text("1,2,3,4\n1,2,3,four\n")  # (a bad row: a run that scored it would say so)
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / output)]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: output {tmp_path / output} is a folder; name a file to write the answers to, e.g. "
        f"{tmp_path / output / 'answers.csv'}\n"
    )
    assert not any((tmp_path / output).iterdir())
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("name", ["x.csv", "x.npy"])
def test_an_output_that_is_the_input_is_refused_and_the_rows_kept(
    tmp_path: Path, scale_file: Path, name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = tmp_path / name
    if name.endswith(".csv"):
        rows.write_text("1,2,3,4\n5,6,7,8\n")
    else:
        np.save(rows, _x(3))
    before = rows.read_bytes()
    assert main(["score", "--quiet", str(scale_file), str(rows), str(tmp_path / "." / name)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: output {tmp_path / '.' / name} is the input file; write the answers to another file " + (
        "(the rows would be lost)\n"
    )
    assert rows.read_bytes() == before
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("rows", ["0", "-5", "ten"])
def test_a_batch_rows_that_is_not_a_positive_number_is_a_usage_error(
    tmp_path: Path, scale_file: Path, rows: str, capsys: pytest.CaptureFixture[str]
) -> None:
    np.save(tmp_path / "x.npy", _x(3))
    with pytest.raises(SystemExit) as stopped:
        main(["score", "--batch-rows", rows, str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert stopped.value.code == 2  # could not run, as for any bad flag (it was 1: "a row could not be scored")
    assert "argument --batch-rows:" in capsys.readouterr().err


def test_an_infinity_written_as_such_in_a_csv_matrix_is_scored(tmp_path: Path, scale_file: Path) -> None:
    # (the check above reads the text of a field numpy took for infinity: "inf", "-Infinity", quoted or not,
    # are infinities written so, and scored as such)
    (tmp_path / "x.csv").write_text('1,2,3,4\ninf,-Infinity,"+inf",4\n')
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / "y.npy")]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy")[1], [np.inf, -np.inf, np.inf, 8.0])


@pytest.mark.parametrize("value", ["1e400", "-1e400"])
def test_a_number_beyond_even_float64_in_a_csv_matrix_is_refused_not_scored_as_infinity(
    tmp_path: Path, scale_file: Path, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "1e39" is refused (float32 cannot hold it), but "1e400" was scored as inf with exit 0: it is infinite
    # already as the float64 it is first read into, and so was taken for an "inf" written as such
    (tmp_path / "x.csv").write_text(f"1,2,3,4\n{value},2,3,4\n")
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]) == 1
    assert "line 2, column 1" in capsys.readouterr().err
    assert not (tmp_path / "y.csv").exists()


def test_an_output_kept_private_stays_private_when_replaced(tmp_path: Path, scale_file: Path) -> None:
    # scores of customers written to a file only its owner may read: the run replaced it with a file that
    # every user of the machine may read (the umask's 0644)
    np.save(tmp_path / "x.npy", _x(3))
    answers = tmp_path / "scores.npy"
    answers.touch(mode=0o600)
    answers.chmod(0o600)
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "x.npy"), str(answers)]) == 0
    np.testing.assert_array_equal(np.load(answers), _x(3) * 2)
    assert oct(answers.stat().st_mode & 0o777) == oct(0o600)


def test_a_read_only_output_is_replaced_and_stays_read_only(tmp_path: Path, scale_file: Path) -> None:
    # answers kept read-only (0444: nothing changes them by mistake, a new run replaces them, as a rename over a
    # file may): the hidden file took OUTPUT's mode before the first row, and writing the answers to it was
    # refused ("Permission denied"), where runs before replaced OUTPUT
    np.save(tmp_path / "x.npy", _x(3))
    answers = tmp_path / "scores.npy"
    np.save(answers, np.zeros(1, np.float32))
    answers.chmod(0o444)
    score = "import sys; from inprocserve.__main__ import main; sys.exit(main(sys.argv[1:]))"
    command = ["score", "--quiet", str(scale_file), str(tmp_path / "x.npy"), str(answers)]
    done = run_python(score, *command, prefix=_without_file_access_override(tmp_path))
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(np.load(answers), _x(3) * 2)
    assert oct(answers.stat().st_mode & 0o777) == oct(0o444)
    _no_leftovers(tmp_path)


@pytest.mark.parametrize(
    ("flags", "model", "refusal"),
    [
        (["--name", "fraud"], "file", "--name fraud does not fit MODEL {model}, which is model 'churn' version 3"),
        (["--name", "fraud"], "folder", "--name fraud does not fit MODEL {model}, which is model 'churn' version 3"),
        (["--version", "2"], "folder", "--version 2 does not fit MODEL {model}, which is model 'churn' version 3"),
        (["--version", "3"], "loose", "--version 3 does not fit MODEL {model}, which is a model file outside a"),
    ],
)
def test_a_name_or_version_that_the_model_path_contradicts_is_refused(
    tmp_path: Path, flags: list[str], model: str, refusal: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # A job's "--name fraud" beside a MODEL that pointed at churn's version folder scored churn, exit 0: --name
    # was ignored for a file or a version folder (and --version 3 failed with "model 'model' has no servable
    # version 3", even where the folder was version 3)
    file = save_model(build_scale_model(2.0), tmp_path / "models", "churn", 3)
    loose = tmp_path / "churn.onnx"
    loose.write_bytes(file.read_bytes())
    given = {"file": file, "folder": file.parent, "loose": loose}[model]
    np.save(tmp_path / "x.npy", _x(3))
    argv = ["score", "--quiet", *flags, str(given), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: " + refusal.format(model=given)), err
    assert not (tmp_path / "y.npy").exists()
    # what the path says anyway is not refused, and scores that model
    assert main(["score", "--quiet", "--name", "churn", "--version", "3", str(file.parent), *argv[-2:]]) == 0
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _x(3) * 2)


DISK_FULL = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # (a write past the limit is then an OSError, as on a full disk)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
from inprocserve.__main__ import main
sys.exit(main(["score", "--quiet", *sys.argv[1:]]))
"""


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_disk_that_fills_up_is_an_error_naming_the_output(tmp_path: Path, scale_file: Path, suffix: str) -> None:
    # "error: [Errno 27] File too large" (or "No space left on device"), naming no file: the input's disk?
    if suffix == ".parquet":
        pytest.importorskip("pyarrow", reason="Parquet support is optional: pip install pyarrow")
    np.save(tmp_path / "x.npy", np.ones((20_000, 4), np.float32))  # 320 kB of answers: past the 64 kB limit
    answers = tmp_path / f"scores{suffix}"
    done = run_python(DISK_FULL, str(scale_file), str(tmp_path / "x.npy"), str(answers))
    assert done.returncode == 1, done.stderr
    assert "File too large" in done.stderr and f"writing the answers to {answers}" in done.stderr, done.stderr
    assert not answers.exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_a_disk_that_fills_up_leaves_no_partial_file(tmp_path: Path, scale_file: Path, suffix: str) -> None:
    np.save(tmp_path / "x.npy", np.ones((20_000, 4), np.float32))  # 320 kB of answers: past the 64 kB limit
    answers = tmp_path / f"scores{suffix}"
    done = run_python(DISK_FULL, str(scale_file), str(tmp_path / "x.npy"), str(answers))
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("error: ") and "File too large" in done.stderr, done.stderr
    assert not answers.exists()
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("version", ["0", "-1", "two"])
def test_a_version_that_is_not_a_positive_number_is_a_usage_error(
    tmp_path: Path, scale_file: Path, version: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # "--version 0" loaded the model, then failed with exit 1 and "version must be a positive int, got 0",
    # naming no flag; "--version two" was already a usage error
    np.save(tmp_path / "x.npy", _x(3))
    repository = str(tmp_path / "models")
    with pytest.raises(SystemExit) as stopped:
        main(["score", "--version", version, repository, str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
    assert stopped.value.code == 2
    assert "argument --version:" in capsys.readouterr().err
    assert not (tmp_path / "y.npy").exists()


def test_an_input_that_exists_but_is_no_file_is_named_as_such(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rows.csv").mkdir()  # (the error said "does not exist")
    assert main(["score", "--quiet", str(scale_file), str(tmp_path / "rows.csv"), str(tmp_path / "y.csv")]) == 1
    assert capsys.readouterr().err == f"error: input {tmp_path / 'rows.csv'} is a folder; give a file of rows\n"
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.csv")
        assert main(["score", "--quiet", str(scale_file), str(tmp_path / "pipe.csv"), str(tmp_path / "y.csv")]) == 1
        assert "pipe.csv is not a regular file; give a file of rows" in capsys.readouterr().err


def test_a_broken_model_in_the_repository_only_matters_when_chosen(
    tmp_path: Path, scale_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "models" / "broken" / "1" / "model.onnx"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not onnx")
    np.save(tmp_path / "x.npy", _x())
    models, x, y = str(tmp_path / "models"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")
    assert main(["score", "--quiet", "--name", "scale", models, x, y]) == 0
    assert main(["score", "--quiet", "--name", "broken", models, x, y]) == 1
    assert "it failed to load" in capsys.readouterr().err


def test_the_progress_bar_on_a_terminal_knows_the_csv_total(
    tmp_path: Path, scale_file: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savetxt(tmp_path / "x.csv", _x(100), delimiter=",", header="a,b,c,d", comments="", fmt="%.9g")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["score", "--batch-rows", "10", str(scale_file), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]) == 0
    err = capsys.readouterr().err
    assert "100.0% 100/100 rows" in err  # the total comes from the file, though it is read as a stream
    assert "scored 100 rows" in err


def test_version_scores_a_version_on_disk_that_the_policy_does_not_serve(tmp_path: Path) -> None:
    repository = tmp_path / "models"
    save_model(build_scale_model(1.0), repository, "scale", 1)
    save_model(build_scale_model(2.0), repository, "scale", 2)  # the latest: the only one served live
    np.save(tmp_path / "x.npy", _x())
    assert (
        main(["score", "--quiet", "--version", "1", str(repository), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")])
        == 0
    )
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), _x() * 1.0)
    assert (
        main(["score", "--quiet", "--version", "3", str(repository), str(tmp_path / "x.npy"), str(tmp_path / "z.npy")])
        == 1
    )


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_a_scikit_learn_classifier_s_zipmap_is_written_as_a_column_per_class(tmp_path: Path, suffix: str) -> None:
    # skl2onnx exports every classifier with its scores as a ZipMap (a list of maps, one per row): the
    # command refused such models ("without a batch axis"), though each row has its map.
    model = save_model(build_string_label_classifier(), tmp_path / "models", "classifier", 1)
    x = _x(23)
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / f"out{suffix}"
    argv = ["score", "--quiet", "--batch-rows", "5", str(model), str(tmp_path / "x.npy"), str(out)]
    assert main(argv) == 0
    labels, maps = onnxruntime.InferenceSession(str(model)).run(None, {"X": x})
    scores = np.array([[row[name] for name in CLASSES] for row in maps], np.float32)
    if suffix == ".csv":
        lines = out.read_text().splitlines()
        assert lines[0].split(",") == ["output_label_0"] + [f"output_probability_{name}" for name in CLASSES]
        assert [line.split(",")[0] for line in lines[1:]] == labels.tolist()
        written = np.array([[float(v) for v in line.split(",")[1:]] for line in lines[1:]], np.float32)
        np.testing.assert_array_equal(written, scores)  # %.9g: float32 read back exactly
    else:
        with np.load(out) as answers:  # (no pickle needed)
            assert answers["output_label"].tolist() == labels.tolist()
            assert answers["output_probability_keys"].tolist() == CLASSES
            np.testing.assert_array_equal(answers["output_probability"], scores)
    _no_leftovers(tmp_path)


def test_a_stop_that_python_discards_prints_no_traceback_and_still_stops(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGTERM whose handler runs inside a ``__del__`` or a weakref callback (CI saw one in the import
    system's module-lock callback) has its exception discarded by Python, which printed "Exception ignored"
    and a traceback on stderr, beside the command's own one-line message. The stop still ends the command
    (``raise_if_stopped``); other discarded exceptions are still shown."""
    from inprocserve._cli_common import Terminated, raise_if_stopped, unwind_on_sigterm

    shown: list[BaseException | None] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda unraisable: shown.append(unraisable.exc_value))

    class StoppedAsItEnds:
        def __del__(self) -> None:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100_000):  # the handler runs here, on this (the main) thread: its exception is dropped
                pass

    class FailsAsItEnds:
        def __del__(self) -> None:
            raise ValueError("a bug of its own")

    with pytest.raises(Terminated), unwind_on_sigterm():
        StoppedAsItEnds()  # (freed at once: no reference is kept)
        FailsAsItEnds()
        raise_if_stopped()
    assert [type(error) for error in shown] == [ValueError]
    assert sys.unraisablehook is not None and sys.unraisablehook.__name__ == "<lambda>"  # put back


@pytest.mark.parametrize("terminal", [False, True])  # on a terminal, rows are counted first for the bar
@pytest.mark.parametrize(
    ("model", "text", "line"),
    [
        (build_scale_model(2.0), "{long}\n1,2,3,4\n", 1),  # x: [batch, 4], read as a matrix
        (build_scale_model(2.0), "a,b,c,d\n1,2,3,4\n5,6,7,8\n{long}\n", 4),
        (build_scale_model(2.0), 'a,b,c,d\n"1",2,3,4\n{long}\n', 3),  # a quote: counted by the csv module
        (build_add_model(), "a_0,a_1,a_2,b_0,b_1,b_2,n\n1,2,3,4,5,6,7\n{long}\n", 3),  # columns by name
    ],
)
def test_a_csv_line_longer_than_a_row_is_refused_by_its_length_before_it_is_held_whole(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    model: Any,
    text: str,
    line: int,
    terminal: bool,
) -> None:
    # a file whose line breaks were lost: its one line was read whole and parsed (3.7 GB for 100 MB), and a
    # 1 GB one ended the process out of memory; a matrix's long first line was blamed on the good line after it
    path = save_model(model, tmp_path / "models", "m", 1)
    long = "1.5," * 2_500_000 + "1"  # 10 MB, one line
    (tmp_path / "x.csv").write_text(text.format(long=long))
    del long
    monkeypatch.setattr(sys.stderr, "isatty", lambda: terminal, raising=False)
    tracemalloc.start()
    try:
        assert main(["score", str(path), str(tmp_path / "x.csv"), str(tmp_path / "y.csv")]) == 1
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8_000_000, f"{peak:,} bytes at the peak: the line was held whole"
    err = capsys.readouterr().err
    assert f"x.csv, line {line}: over " in err and "characters, more than a line of the model's columns needs" in err
    assert not (tmp_path / "y.csv").exists()
    _no_leftovers(tmp_path)


def test_a_wide_first_line_read_in_part_is_still_told_from_a_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # its first characters tell a header from data: "inf" cut to "in" there would read as a name, and the row
    # as a header, not counted in the bar's total
    model = save_model(build_scale_model(2.0, features=40_000), tmp_path / "models", "wide", 1)
    before = 65536 // 2 - 1  # fields "1," before the one the probe of 65536 characters cuts after "in"
    row = ["1"] * 40_000
    row[before] = " " * (65536 - 2 * before - len("in")) + "inf"
    (tmp_path / "x.csv").write_text(",".join(row) + "\n" + ",".join(["2"] * 40_000) + "\n")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    assert main(["score", str(model), str(tmp_path / "x.csv"), str(tmp_path / "y.npy")]) == 0
    expected = np.full((2, 40_000), 2.0, dtype=np.float32)
    expected[1] = 4
    expected[0, before] = np.inf
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), expected)
    assert "100.0% 2/2 rows" in capsys.readouterr().err


def _number_as_text_model() -> Any:
    """y = x as text (``tensor(string) [batch, 1]``): "7" for 7, "123456" for 123456, so the answers of a
    chunk of small numbers are narrower than those of a chunk of large ones."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING)],
        "as-text",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["batch", 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
def test_text_answers_to_npy_or_npz_are_spooled_not_held(tmp_path: Path, suffix: str) -> None:
    """A text output's answers were held in memory until the end (their width changes from chunk to chunk:
    "7" then "123456"), then joined into one copy more: memory followed the input, not the chunk, where a
    number output's is spooled to disk. Each chunk is now spooled at its own width and widened as it is
    written out once the widest is known."""
    path = save_model(_number_as_text_model(), tmp_path / "models", "as-text", 1)
    x = np.arange(200_000, dtype=np.float32).reshape(-1, 1)  # widths 1 to 6 characters: 4.8 MB as numpy text
    np.save(tmp_path / "x.npy", x)
    expected = onnxruntime.InferenceSession(str(path)).run(None, {"x": x})[0].astype(np.str_)
    del x
    out = tmp_path / f"y{suffix}"
    np.save(tmp_path / "few.npy", np.arange(10, dtype=np.float32).reshape(-1, 1))
    assert main(["score", "--quiet", str(path), str(tmp_path / "few.npy"), str(out)]) == 0  # (imports done)
    tracemalloc.start()
    try:
        assert main(["score", "--quiet", "--batch-rows", "4096", str(path), str(tmp_path / "x.npy"), str(out)]) == 0
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    if suffix == ".npy":
        answers = np.load(out, allow_pickle=False)
    else:
        with np.load(out, allow_pickle=False) as archive:
            answers = archive["y"]
    assert answers.dtype == expected.dtype == np.dtype("<U6")
    np.testing.assert_array_equal(answers, expected)
    assert peak < 4_000_000, f"{peak:,} bytes at the peak: the text answers were held whole"  # (2.1 MB here)
    _no_leftovers(tmp_path)


@pytest.mark.parametrize("rows", ["5000", "99999999999999999999"])
def test_a_batch_rows_past_what_one_request_may_carry_names_the_flag(
    tmp_path: Path, scale_file: Path, rows: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # the refusal spoke predict_many's words ("batch_rows=5000 is more than ..."), naming no flag of the command
    # and no limit to give instead; it is refused as the model's other refusals of --batch-rows are (exit 1: the
    # limit is the model's config, known once it loaded)
    np.save(tmp_path / "x.npy", _x(3))
    assert main(["score", "--batch-rows", rows, str(scale_file), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")]) == 1
    assert capsys.readouterr().err == (
        f"error: --batch-rows {rows}: model 'model' version 1 takes at most 4096 rows per request "
        "(batching.max_request_rows, else max_queue_rows); give --batch-rows 4096 or less, or drop it\n"
    )
    assert not (tmp_path / "y.npy").exists()


def test_a_batch_rows_past_the_limit_of_a_model_told_its_rows_are_independent_gives_no_advice_to_tell_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A model that takes a scale beside its rows, with rows_independent = "yes" already in its config.toml: a
    # --batch-rows past one request's rows was refused with the advice to set rows_independent = 'yes', which
    # the operator had set (the advice is for a model whose input cannot be cut into chunks at all).
    from .test_scoring_verdicts import build_threshold_model

    save_model(build_threshold_model(), tmp_path, "scaled", 1)
    (tmp_path / "scaled" / "config.toml").write_text('[batching]\nrows_independent = "yes"\n')
    np.savez(tmp_path / "in.npz", x=np.ones((3, 4), np.float32), scale=np.float32(5))
    command = ["score", "--quiet", "--batch-rows", "5000", str(tmp_path), str(tmp_path / "in.npz")]
    assert main([*command, str(tmp_path / "out.npz")]) == 1
    assert capsys.readouterr().err == (
        "error: --batch-rows 5000: model 'scaled' version 1 takes at most 4096 rows per request "
        "(batching.max_request_rows, else max_queue_rows); give --batch-rows 4096 or less, or drop it\n"
    )
